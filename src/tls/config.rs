//! TLS contexts: a server's certificate chain, key, ALPN list and client verification;
//! a client's roots, verification, client certificate and ALPN; both checked when made,
//! so a bad file is refused by name before any connection depends on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The oldest protocol version a context accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl Version {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            Version::Tls12 => rustls::ALL_VERSIONS,
            Version::Tls13 => TLS13_ONLY,
        }
    }
}

/// What a server context is made of.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// PEM: the certificate chain, leaf first.
    pub certfile: PathBuf,
    /// PEM: the leaf's private key.
    pub keyfile: PathBuf,
    /// Application protocols offered, most preferred first (empty: no ALPN).
    pub alpn_protocols: Vec<Vec<u8>>,
    /// PEM: the CAs that client certificates must chain to (None: clients are not asked).
    pub client_cafile: Option<PathBuf>,
    /// With `client_cafile`: refuse clients without a certificate (else it is optional).
    pub client_cert_required: bool,
    /// The oldest version accepted.
    pub minimum_version: Version,
    /// TLS 1.3 session tickets sent after each handshake (0: no resumption by ticket).
    pub session_tickets: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// What a client context is made of.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// PEM: the CAs trusted to sign servers' certificates (None: the system's roots).
    pub cafile: Option<PathBuf>,
    /// Check the server's certificate and name (false only when asked by name).
    pub verify: bool,
    /// Application protocols offered, most preferred first.
    pub alpn_protocols: Vec<Vec<u8>>,
    /// PEM files of a client certificate chain and its key, for servers that ask.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The oldest version accepted.
    pub minimum_version: Version,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// Why a context could not be made.
#[derive(Debug)]
pub enum ConfigError {
    /// A file could not be read.
    File(PathBuf, std::io::Error),
    /// A file, or the combination, is not usable: `reason` names the kind for code,
    /// the message says what and which file.
    Invalid {
        /// A short constant for code (`BAD_CERTIFICATE_FILE`, `KEY_MISMATCH`, ...).
        reason: &'static str,
        /// What was wrong, naming the file.
        message: String,
    },
}

fn invalid(reason: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { reason, message }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// What a TLS listener gives each of its sessions.
#[derive(Debug)]
pub struct ServerContext {
    /// rustls's configuration, shared by every session.
    pub config: Arc<ServerConfig>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// What a TLS client gives each of its connections.
#[derive(Debug)]
pub struct ClientContext {
    /// rustls's configuration, shared by every connection (and its resumption cache).
    pub config: Arc<ClientConfig>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

impl ServerContext {
    /// A server context: the chain and key are loaded and checked against each other.
    pub fn new(settings: &ServerSettings) -> Result<ServerContext, ConfigError> {
        Ok(ServerContext {
            config: server_config(settings)?,
            handshake_timeout: settings.handshake_timeout,
        })
    }
}

impl ClientContext {
    /// A client context: the roots are loaded (or the system's found), the client
    /// certificate checked against its key.
    pub fn new(settings: &ClientSettings) -> Result<ClientContext, ConfigError> {
        Ok(ClientContext {
            config: client_config(settings)?,
            handshake_timeout: settings.handshake_timeout,
        })
    }
}

fn server_config(settings: &ServerSettings) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = provider();
    let chain = load_certificates(&settings.certfile)?;
    let key = load_key(&settings.keyfile)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(settings.minimum_version.versions())
        .map_err(|err| invalid("UNSUPPORTED", err.to_string()))?;
    let builder = match &settings.client_cafile {
        None => builder.with_no_client_auth(),
        Some(cafile) => {
            let roots = Arc::new(root_store(cafile)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if settings.client_cert_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|err| {
                invalid(
                    "BAD_CA_FILE",
                    format!("{}: cannot verify clients with it: {err}", cafile.display()),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| key_error(err, settings.certfile.as_path(), &settings.keyfile))?;
    config.alpn_protocols = settings.alpn_protocols.clone();
    config.send_tls13_tickets = settings.session_tickets;
    Ok(Arc::new(config))
}

fn client_config(settings: &ClientSettings) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(settings.minimum_version.versions())
        .map_err(|err| invalid("UNSUPPORTED", err.to_string()))?;
    let builder = if settings.verify {
        let roots = match &settings.cafile {
            Some(cafile) => root_store(cafile)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let mut config = match &settings.client_cert {
        None => builder.with_no_client_auth(),
        Some((certfile, keyfile)) => {
            let chain = load_certificates(certfile)?;
            let key = load_key(keyfile)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| key_error(err, certfile, keyfile))?
        }
    };
    config.alpn_protocols = settings.alpn_protocols.clone();
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|err| ConfigError::File(path.to_path_buf(), err))
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            invalid(
                "BAD_CERTIFICATE_FILE",
                format!("{}: not a PEM certificate file: {err}", path.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(invalid(
            "BAD_CERTIFICATE_FILE",
            format!(
                "{}: no certificate found (expected a PEM file with \
                 -----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        invalid(
            "BAD_KEY_FILE",
            format!(
                "{}: no private key found ({err}; expected a PEM file with \
                 -----BEGIN PRIVATE KEY----- or an RSA/EC key)",
                path.display()
            ),
        )
    })
}

fn key_error(err: rustls::Error, certfile: &Path, keyfile: &Path) -> ConfigError {
    match err {
        rustls::Error::InconsistentKeys(_) => invalid(
            "KEY_MISMATCH",
            format!(
                "{}: this key does not belong to the certificate in {}",
                keyfile.display(),
                certfile.display()
            ),
        ),
        other => invalid(
            "BAD_KEY_FILE",
            format!(
                "{} / {}: unusable certificate or key: {other}",
                certfile.display(),
                keyfile.display()
            ),
        ),
    }
}

fn root_store(cafile: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(cafile)? {
        roots.add(certificate).map_err(|err| {
            invalid(
                "BAD_CA_FILE",
                format!("{}: not a usable CA certificate: {err}", cafile.display()),
            )
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(invalid(
            "NO_SYSTEM_ROOTS",
            format!(
                "no system CA certificates could be loaded ({why}); pass cafile=, or set \
                 SSL_CERT_FILE"
            ),
        ));
    }
    Ok(roots)
}

/// Accepts any server certificate: only for `insecure_skip_verify=True`. The handshake
/// signatures are still checked, so the peer holds the key of what it presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

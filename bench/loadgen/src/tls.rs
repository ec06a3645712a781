//! TLS on the load generator's connections (`--tls CAFILE [--sni NAME]`).
//!
//! One client configuration for every server measured, so every server does the same
//! work: TLS 1.3 only, the single cipher suite TLS13_AES_128_GCM_SHA256 and the single
//! key exchange X25519 (offering only these forces the server's choice), no resumption
//! (every connection is a full handshake; tickets a server sends are read and dropped),
//! and the server's certificate checked against CAFILE for NAME.
//!
//! `Stream` holds one `Session` per connection when TLS is on and routes its sends and
//! receives through it; the plain path never enters this module. The byte accounting and
//! the pattern check stay in `Stream`: only plaintext goes in and comes out here.

use std::io::{self, BufRead, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::sys;
use benchsys::RecordWriter;

/// What every TLS connection of a run is opened with.
pub struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Client {
    /// The client configuration: roots from the PEM file `cafile`, SNI and the name
    /// checked against the certificate `sni`.
    pub fn new(cafile: &str, sni: &str) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(cafile).map_err(|e| format!("--tls {cafile}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--tls {cafile}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("--tls {cafile}: not a usable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("--tls {cafile}: no certificate in the file"));
        }
        let provider = CryptoProvider {
            cipher_suites: vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
            kx_groups: vec![aws_lc_rs::kx_group::X25519],
            ..aws_lc_rs::default_provider()
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| format!("--sni {sni}: not a server name: {e}"))?;
        Ok(Client {
            config: Arc::new(config),
            name,
        })
    }

    /// A new client session; its ClientHello waits queued until the first `write_records`.
    pub fn session(&self) -> Result<Session, String> {
        let conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("TLS session: {e}"))?;
        Ok(Session {
            conn,
            peer_closed: false,
        })
    }
}

/// One connection's TLS state.
pub struct Session {
    conn: ClientConnection,
    /// The server's close_notify has been received.
    pub peer_closed: bool,
}

impl Session {
    /// Takes what it can of `plain` for encryption and returns how much: less than all
    /// when rustls's buffer is full (`write_records` makes room), and before the
    /// handshake has finished only up to its plaintext buffer, sent once it has.
    pub fn write_plain(&mut self, plain: &[u8]) -> Result<usize, String> {
        self.conn
            .writer()
            .write(plain)
            .map_err(|e| format!("TLS write: {e}"))
    }

    /// Writes queued records (handshake, data, alerts) to the socket: true once none is
    /// left, false when the socket is full (its EPOLLOUT edge brings the caller back).
    pub fn write_records(&mut self, fd: &OwnedFd) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut RecordWriter(fd)) {
                Ok(_) => {}
                Err(e) if sys::would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Hands the front of `ciphertext` to rustls (as much as it takes at once: at most
    /// about one record) and processes it, advancing `ciphertext`. An empty slice is the
    /// TCP EOF. The plaintext it yields waits in `plaintext` and must be taken before the
    /// next call (rustls refuses ciphertext while its plaintext buffer is full).
    pub fn feed(&mut self, ciphertext: &mut &[u8]) -> Result<(), String> {
        let fed = self
            .conn
            .read_tls(ciphertext)
            .map_err(|e| format!("TLS: {e}"))?;
        if fed == 0 && !ciphertext.is_empty() {
            // rustls takes nothing more once the peer's close_notify has come.
            return Err(format!(
                "TLS: the server sent {} bytes after its close_notify",
                ciphertext.len()
            ));
        }
        match self.conn.process_new_packets() {
            Ok(state) => {
                self.peer_closed |= state.peer_has_closed();
                Ok(())
            }
            Err(e) => Err(format!("TLS: {e}")),
        }
    }

    /// The next chunk of decrypted plaintext, empty when there is none now. A TCP EOF
    /// without close_notify is not reported here: the caller checks `peer_closed`.
    pub fn plaintext(&mut self) -> &[u8] {
        self.conn.reader().into_first_chunk().unwrap_or(&[])
    }

    /// Drops `n` bytes of `plaintext` once they are checked.
    pub fn consume(&mut self, n: usize) {
        self.conn.reader().consume(n);
    }

    /// Queues close_notify: the end of our data, sent before our FIN.
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// Whether records are still queued for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }
}

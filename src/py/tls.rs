//! `hamanet.TLSServerContext`, `hamanet.TLSClientContext` and `hamanet.TLSInfo`: TLS
//! contexts made from PEM files (checked when made, refused by file name), and what a
//! session's handshake settled.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use super::convert::{self, repr, type_name};
use super::errors::{os_error, TLSError};
use crate::tls::{
    ClientContext, ClientSettings, ConfigError, ServerContext, ServerSettings, TlsInfo, Version,
};

/// How long a handshake may take unless the context says otherwise.
const DEFAULT_HANDSHAKE_TIMEOUT: f64 = 10.0;
/// TLS 1.3 tickets a server sends after each handshake unless told otherwise (as OpenSSL).
const DEFAULT_SESSION_TICKETS: usize = 2;

/// A server's TLS settings, for `Server.open(port, tls=...)`: every session on that
/// listener is TLS. Made from PEM files; a file that is missing or unusable is refused
/// here, by name.
#[pyclass(module = "hamanet", name = "TLSServerContext", frozen)]
pub struct PyTlsServerContext {
    pub(super) context: Arc<ServerContext>,
    settings: ServerSettings,
}

#[pymethods]
impl PyTlsServerContext {
    #[new]
    #[pyo3(signature = (
        certfile, keyfile, *, alpn_protocols=None, client_cafile=None,
        client_cert_required=true, minimum_version=None, handshake_timeout=None,
        session_tickets=None,
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        certfile: &Bound<'_, PyAny>,
        keyfile: &Bound<'_, PyAny>,
        alpn_protocols: Option<&Bound<'_, PyAny>>,
        client_cafile: Option<&Bound<'_, PyAny>>,
        client_cert_required: bool,
        minimum_version: Option<&Bound<'_, PyAny>>,
        handshake_timeout: Option<&Bound<'_, PyAny>>,
        session_tickets: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let settings = ServerSettings {
            certfile: file_path(certfile, "certfile")?,
            keyfile: file_path(keyfile, "keyfile")?,
            alpn_protocols: alpn(alpn_protocols)?,
            client_cafile: client_cafile
                .map(|path| file_path(path, "client_cafile"))
                .transpose()?,
            client_cert_required,
            minimum_version: version(minimum_version)?,
            session_tickets: match session_tickets {
                Some(count) => convert::size(count, "session_tickets", 0..=16)?,
                None => DEFAULT_SESSION_TICKETS,
            },
            handshake_timeout: handshake(handshake_timeout)?,
        };
        let context = ServerContext::new(&settings).map_err(config_error)?;
        Ok(PyTlsServerContext {
            context: Arc::new(context),
            settings,
        })
    }

    fn __repr__(&self) -> String {
        let s = &self.settings;
        let clients = match &s.client_cafile {
            None => String::new(),
            Some(path) => format!(
                ", client_cafile={:?}, client_cert_required={}",
                path.display().to_string(),
                if s.client_cert_required {
                    "True"
                } else {
                    "False"
                }
            ),
        };
        format!(
            "TLSServerContext(certfile={:?}, keyfile={:?}{clients}, alpn_protocols={:?}, \
             minimum_version={:?})",
            s.certfile.display().to_string(),
            s.keyfile.display().to_string(),
            alpn_names(&s.alpn_protocols),
            version_name(s.minimum_version),
        )
    }
}

/// A client's TLS settings, for `Client.connect(host, port, tls=...)`. The server's
/// certificate is verified by default, against `cafile` or the system's roots, and must
/// be valid for the name connected to; only `insecure_skip_verify=True` turns that off.
#[pyclass(module = "hamanet", name = "TLSClientContext", frozen)]
pub struct PyTlsClientContext {
    pub(super) context: Arc<ClientContext>,
    settings: ClientSettings,
}

#[pymethods]
impl PyTlsClientContext {
    #[new]
    #[pyo3(signature = (
        cafile=None, *, alpn_protocols=None, certfile=None, keyfile=None,
        minimum_version=None, handshake_timeout=None, insecure_skip_verify=false,
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        cafile: Option<&Bound<'_, PyAny>>,
        alpn_protocols: Option<&Bound<'_, PyAny>>,
        certfile: Option<&Bound<'_, PyAny>>,
        keyfile: Option<&Bound<'_, PyAny>>,
        minimum_version: Option<&Bound<'_, PyAny>>,
        handshake_timeout: Option<&Bound<'_, PyAny>>,
        insecure_skip_verify: bool,
    ) -> PyResult<Self> {
        let client_cert = match (certfile, keyfile) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                Some((file_path(cert, "certfile")?, file_path(key, "keyfile")?))
            }
            _ => {
                return Err(PyValueError::new_err(
                    "a client certificate needs both certfile and keyfile (or neither)",
                ))
            }
        };
        let settings = ClientSettings {
            cafile: cafile.map(|path| file_path(path, "cafile")).transpose()?,
            verify: !insecure_skip_verify,
            alpn_protocols: alpn(alpn_protocols)?,
            client_cert,
            minimum_version: version(minimum_version)?,
            handshake_timeout: handshake(handshake_timeout)?,
        };
        let context = ClientContext::new(&settings).map_err(config_error)?;
        Ok(PyTlsClientContext {
            context: Arc::new(context),
            settings,
        })
    }

    fn __repr__(&self) -> String {
        let s = &self.settings;
        let roots = match (&s.cafile, s.verify) {
            (_, false) => "insecure_skip_verify=True".to_string(),
            (Some(path), true) => format!("cafile={:?}", path.display().to_string()),
            (None, true) => "cafile=None (system roots)".to_string(),
        };
        format!(
            "TLSClientContext({roots}, alpn_protocols={:?}, minimum_version={:?})",
            alpn_names(&s.alpn_protocols),
            version_name(s.minimum_version),
        )
    }
}

/// What a session's TLS handshake settled (`session.tls`).
#[pyclass(module = "hamanet", name = "TLSInfo", frozen)]
pub struct PyTlsInfo {
    info: TlsInfo,
}

impl PyTlsInfo {
    pub(super) fn new(info: &TlsInfo) -> Self {
        PyTlsInfo { info: info.clone() }
    }
}

#[pymethods]
impl PyTlsInfo {
    /// The protocol version: `"TLSv1.3"` or `"TLSv1.2"`.
    #[getter]
    fn version(&self) -> &'static str {
        self.info.version
    }

    /// The cipher suite's IANA name, such as `"TLS_AES_128_GCM_SHA256"`.
    #[getter]
    fn cipher(&self) -> &str {
        &self.info.cipher
    }

    /// The application protocol ALPN chose, or None.
    #[getter]
    fn alpn_protocol(&self) -> Option<String> {
        let protocol = self.info.alpn_protocol.as_deref()?;
        Some(String::from_utf8_lossy(protocol).into_owned())
    }

    /// The server name: the SNI a client sent (on a server), or the name a client asked
    /// for (on a client). None if there was none.
    #[getter]
    fn server_name(&self) -> Option<&str> {
        self.info.server_name.as_deref()
    }

    /// The peer's certificate, DER-encoded, or None if it presented none.
    #[getter]
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let leaf = self.info.peer_certificates.first()?;
        Some(PyBytes::new(py, leaf))
    }

    /// The peer's certificate chain, DER-encoded, leaf first (empty if none).
    #[getter]
    fn peer_certificates<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let chain = self.info.peer_certificates.iter();
        PyList::new(py, chain.map(|cert| PyBytes::new(py, cert)))
    }

    fn __repr__(&self) -> String {
        let quoted = |text: Option<&str>| text.map_or("None".to_string(), |t| format!("{t:?}"));
        format!(
            "TLSInfo(version={:?}, cipher={:?}, alpn_protocol={}, server_name={}, \
             peer_certificates={})",
            self.info.version,
            self.info.cipher,
            quoted(self.alpn_protocol().as_deref()),
            quoted(self.info.server_name.as_deref()),
            self.info.peer_certificates.len()
        )
    }
}

/// A file argument: a `str` or an `os.PathLike`.
fn file_path(value: &Bound<'_, PyAny>, name: &str) -> PyResult<PathBuf> {
    let path = value.py().import("os")?.call_method1("fspath", (value,));
    let text = path.ok().and_then(|path| {
        let text = path.cast::<PyString>().ok()?.to_str().ok()?.to_owned();
        (!text.is_empty()).then_some(text)
    });
    text.map(PathBuf::from).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "{name} must be the path of a PEM file (a str or os.PathLike), not {}",
            repr(value)
        ))
    })
}

/// `alpn_protocols`: a list of protocol names, such as `["h2", "http/1.1"]`.
fn alpn(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Vec<u8>>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    if value.is_instance_of::<PyString>() || value.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "alpn_protocols must be a list of protocol names, such as [\"h2\", \
             \"http/1.1\"], not the single {}: write [{}]",
            type_name(value),
            repr(value)
        )));
    }
    let mut protocols = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        let name: Vec<u8> = if let Ok(text) = item.cast::<PyString>() {
            text.to_str()?.as_bytes().to_vec()
        } else if let Ok(bytes) = item.cast::<PyBytes>() {
            bytes.as_bytes().to_vec()
        } else {
            return Err(PyTypeError::new_err(format!(
                "each ALPN protocol must be a str or bytes, not {}",
                type_name(&item)
            )));
        };
        if name.is_empty() || name.len() > 255 {
            return Err(PyValueError::new_err(format!(
                "an ALPN protocol name must be 1 to 255 bytes long, got {}",
                repr(&item)
            )));
        }
        protocols.push(name);
    }
    Ok(protocols)
}

/// `minimum_version`: `"TLSv1.2"`, `"TLSv1.3"`, or `ssl.TLSVersion.TLSv1_2` / `TLSv1_3`.
fn version(value: Option<&Bound<'_, PyAny>>) -> PyResult<Version> {
    let Some(value) = value else {
        return Ok(Version::default());
    };
    // An `ssl.TLSVersion` is an IntEnum whose name says it; a str is the name itself.
    let name: Option<String> = if value.is_instance_of::<PyString>() {
        value.extract().ok()
    } else {
        value.getattr("name").and_then(|name| name.extract()).ok()
    };
    match name.as_deref() {
        Some("TLSv1.2" | "TLSv1_2") => Ok(Version::Tls12),
        Some("TLSv1.3" | "TLSv1_3") => Ok(Version::Tls13),
        _ => Err(PyValueError::new_err(format!(
            "minimum_version must be \"TLSv1.2\" or \"TLSv1.3\" (or ssl.TLSVersion.TLSv1_2 / \
             TLSv1_3; older versions are not supported), got {}",
            repr(value)
        ))),
    }
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::Tls12 => "TLSv1.2",
        Version::Tls13 => "TLSv1.3",
    }
}

fn handshake(value: Option<&Bound<'_, PyAny>>) -> PyResult<std::time::Duration> {
    match value {
        Some(value) => convert::timeout(value, "handshake_timeout"),
        None => Ok(std::time::Duration::from_secs_f64(
            DEFAULT_HANDSHAKE_TIMEOUT,
        )),
    }
}

fn alpn_names(protocols: &[Vec<u8>]) -> Vec<String> {
    protocols
        .iter()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// A context that cannot be made: the file's own `OSError` (with its name), or a
/// `TLSError` whose message names the file and whose `reason` says what was wrong.
fn config_error(err: ConfigError) -> PyErr {
    match err {
        ConfigError::File(path, err) => os_error(&err, Some(&path.display().to_string())),
        ConfigError::Invalid { reason, message } => TLSError::with_reason(reason, message),
    }
}

/// The `tls=` argument of `open()`: None, or a `TLSServerContext`.
pub(super) fn server_context(
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Arc<ServerContext>>> {
    let Some(value) = value.filter(|value| !value.is_none()) else {
        return Ok(None);
    };
    match value.cast::<PyTlsServerContext>() {
        Ok(context) => Ok(Some(Arc::clone(&context.get().context))),
        Err(_) => Err(wrong_context(value, "TLSServerContext(certfile, keyfile)")),
    }
}

/// The `tls=` argument of `connect()`: None, or a `TLSClientContext`.
pub(super) fn client_context(
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Arc<ClientContext>>> {
    let Some(value) = value.filter(|value| !value.is_none()) else {
        return Ok(None);
    };
    match value.cast::<PyTlsClientContext>() {
        Ok(context) => Ok(Some(Arc::clone(&context.get().context))),
        Err(_) => Err(wrong_context(value, "TLSClientContext(cafile=...)")),
    }
}

fn wrong_context(value: &Bound<'_, PyAny>, make: &str) -> PyErr {
    let hint = if type_name(value).contains("SSLContext") {
        "; hamanet does its TLS in Rust and cannot use an ssl.SSLContext"
    } else {
        ""
    };
    PyTypeError::new_err(format!(
        "tls must be a hamanet.{make} (or None), not {}{hint}",
        type_name(value)
    ))
}

//! Client connections: `connect` (blocking, in detached slices), `connect_nowait` (the
//! reactor finishes it), and the adoption of the socket as a session.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::callbacks::{own_callbacks, Callbacks};
use super::convert;
use super::errors::{os_error, resolve_error, LifecycleError};
use super::inner::{wait_in_slices, LoopInner, Phase};
use super::session::PySession;
use super::tls::client_context;
use crate::shared::{lock, Adoption, Arrival, SessionCore};
use crate::sys::address::{self, Address};
use crate::sys::net;
use crate::tls::{server_name, ClientContext, Handshake, TlsStream};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;

/// Where a connect goes, how long it may take, and the TLS it speaks there.
pub(super) struct Remote {
    host: String,
    port: u16,
    timeout: Duration,
    tls: Option<ClientTls>,
}

/// A TLS client's context and the server name it sends and checks.
struct ClientTls {
    context: Arc<ClientContext>,
    name: ServerName<'static>,
}

impl ClientTls {
    fn stream(&self) -> io::Result<TlsStream> {
        TlsStream::client(&self.context, self.name.clone())
    }
}

impl Remote {
    /// The checked arguments of a connect call.
    pub(super) fn from_python(
        host: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        (tls, server_hostname): (Option<&Bound<'_, PyAny>>, Option<&Bound<'_, PyAny>>),
    ) -> PyResult<Remote> {
        let host = convert::host(host)?;
        let server_hostname = server_hostname.filter(|name| !name.is_none());
        let tls = match client_context(tls)? {
            Some(context) => {
                let name = match server_hostname {
                    Some(name) => convert::host(name)?,
                    None => host.clone(),
                };
                let name = server_name(&name).map_err(PyValueError::new_err)?;
                Some(ClientTls { context, name })
            }
            None if server_hostname.is_some() => {
                return Err(PyValueError::new_err(
                    "server_hostname is only for TLS connections: pass tls= as well",
                ))
            }
            None => None,
        };
        Ok(Remote {
            host,
            port: convert::port(port)?,
            timeout: convert::timeout(timeout, "timeout")?,
            tls,
        })
    }
}

/// `Loop.connect`: resolves `host`, connects (blocking, detached, in slices), completes
/// the TLS handshake if asked, and adopts the socket as a session.
pub(super) fn connect(
    py: Python<'_>,
    inner: &Arc<LoopInner>,
    remote: Remote,
    callbacks: Option<&Bound<'_, PyTuple>>,
) -> PyResult<Py<PySession>> {
    check_can_connect(inner)?;
    let own = own_callbacks(callbacks)?;
    let addrs = resolve(py, &remote.host, remote.port)?;
    let addrs: Vec<Address> = addrs.into_iter().map(Address::Inet).collect();
    let context = format!("{}:{}", remote.host, remote.port);
    let to = (addrs.as_slice(), remote.timeout, remote.tls.as_ref());
    connect_any(py, inner, to, &context, own)
}

/// `Loop.connect_nowait`: starts the connect and leaves the rest (and the TLS
/// handshake) to the reactor.
pub(super) fn connect_nowait(
    py: Python<'_>,
    inner: &Arc<LoopInner>,
    remote: Remote,
    callbacks: Option<&Bound<'_, PyTuple>>,
) -> PyResult<Py<PySession>> {
    let Remote {
        host,
        port,
        timeout,
        tls,
    } = remote;
    let own = own_callbacks(callbacks)?;
    inner.check_not_forked("connect_nowait()")?;
    if inner.phase() != Phase::Running {
        return Err(LifecycleError::new_err(
            "cannot connect_nowait(): it is not running (a Server must be started first; \
             a stopped one cannot be reused)",
        ));
    }
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "connect_nowait() needs an IP address, not {host:?}: resolving a name \
             would block; resolve it first (socket.getaddrinfo) or use connect()"
        ))
    })?;
    let context = format!("{host}:{port}");
    let addr = Address::Inet(std::net::SocketAddr::new(ip, port));
    let fd = net::connect_start(&addr, &inner.config.options)
        .map_err(|e| os_error(&e, Some(&context)))?;
    let local = address::local_addr(fd.as_fd()).map_err(|e| os_error(&e, Some(&context)))?;
    let tls = match &tls {
        Some(tls) => Some(Box::new(
            tls.stream().map_err(|e| os_error(&e, Some(&context)))?,
        )),
        None => None,
    };
    let socket = Socket {
        fd,
        connect_deadline: Some(Instant::now() + timeout),
        tls,
    };
    adopt_socket(py, inner, (addr, local), socket, "connect_nowait", own)
}

/// `Loop.connect_unix`.
pub(super) fn connect_unix(
    py: Python<'_>,
    inner: &Arc<LoopInner>,
    path: &Bound<'_, PyAny>,
    timeout: &Bound<'_, PyAny>,
    callbacks: Option<&Bound<'_, PyTuple>>,
) -> PyResult<Py<PySession>> {
    let path = convert::unix_path(path)?;
    let timeout = convert::timeout(timeout, "timeout")?;
    check_can_connect(inner)?;
    let own = own_callbacks(callbacks)?;
    let context = path.display().to_string();
    connect_any(
        py,
        inner,
        (&[Address::Unix(path)], timeout, None),
        &context,
        own,
    )
}

/// Resolves `host` (detached: a lookup may take a while); a name that does not resolve
/// raises `socket.gaierror`, as the `socket` module does.
pub(super) fn resolve(py: Python<'_>, host: &str, port: u16) -> PyResult<Vec<SocketAddr>> {
    py.detach(|| address::resolve(host, port))
        .map_err(|err| resolve_error(py, err, host))
}

pub(super) fn check_can_connect(inner: &LoopInner) -> PyResult<()> {
    inner.check_not_forked("connect()")?;
    if inner.phase() != Phase::Running {
        return Err(LifecycleError::new_err(
            "cannot connect(): the client is not running (it was stopped); create a new Client",
        ));
    }
    if inner.on_reactor_thread() {
        return Err(LifecycleError::new_err(
            "connect() blocks until connected, so it cannot be called from a handler \
             callback (it would stall the reactor); call it from another thread",
        ));
    }
    Ok(())
}

/// A client socket on its way to the reactor.
struct Socket {
    fd: OwnedFd,
    /// Still connecting, until this deadline.
    connect_deadline: Option<Instant>,
    /// Its TLS connection, handshaking (`connect_nowait`) or done (`connect`).
    tls: Option<Box<TlsStream>>,
}

/// Makes the `Session` of a client socket and hands the socket to the reactor, which
/// finishes a connect (and a TLS handshake) still in progress. The `Session` waits in
/// `pending` until the reactor reports it opened (or failed).
fn adopt_socket(
    py: Python<'_>,
    inner: &Arc<LoopInner>,
    (peer, local): (Address, Address),
    socket: Socket,
    method: &str,
    own: Option<Arc<Callbacks>>,
) -> PyResult<Py<PySession>> {
    let limits = inner.config.limits;
    let reactor = inner.pick_reactor();
    let core = SessionCore::new(Arc::clone(&reactor.shared), peer, local, limits);
    if let Some(tls) = socket.tls.as_deref().filter(|tls| !tls.is_handshaking()) {
        // Handshaken on this thread: readable from the returned session at once.
        core.set_tls(tls.info());
    }
    let session = Py::new(py, PySession::new(Arc::clone(&core), inner.framer.clone()))?;
    lock(&inner.pending).insert(core.id, (session.clone_ref(py), own));
    let adoption = Adoption {
        core: Arc::clone(&core),
        fd: socket.fd,
        arrival: Arrival::Connect(socket.connect_deadline),
        tls: socket.tls,
    };
    if !reactor.shared.adopt(adoption) {
        lock(&inner.pending).remove(&core.id);
        return Err(LifecycleError::new_err(format!(
            "cannot {method}(): the client stopped"
        )));
    }
    Ok(session)
}

/// Tries each address in turn until one connects within the shared deadline; then
/// completes the TLS handshake, if asked, within the context's handshake timeout.
fn connect_any(
    py: Python<'_>,
    inner: &Arc<LoopInner>,
    (addrs, timeout, tls): (&[Address], Duration, Option<&ClientTls>),
    context: &str,
    own: Option<Arc<Callbacks>>,
) -> PyResult<Py<PySession>> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    for addr in addrs {
        let fd = match connect_one(py, inner, addr, deadline) {
            Ok(fd) => fd,
            Err(ConnectFailure::Python(err)) => return Err(err),
            Err(ConnectFailure::Os(err)) => {
                last_error = Some(err);
                continue;
            }
        };
        let addresses = address::peer_addr(fd.as_fd()).and_then(|peer| {
            let local = match addr {
                Address::Unix(_) => Address::Unix(PathBuf::new()),
                Address::Inet(_) => address::local_addr(fd.as_fd())?,
            };
            Ok((peer, local))
        });
        let (peer, local) = match addresses {
            Ok(pair) => pair,
            Err(err) => {
                last_error = Some(err);
                continue;
            }
        };
        let tls = match tls {
            Some(tls) => Some(Box::new(handshake(py, inner, &fd, tls, context)?)),
            None => None,
        };
        let socket = Socket {
            fd,
            connect_deadline: None,
            tls,
        };
        return adopt_socket(py, inner, (peer, local), socket, "connect", own);
    }
    let err = last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::TimedOut));
    Err(os_error(&err, Some(context)))
}

/// Why a connect attempt ended: an OS error (try the next address) or a Python one
/// (Ctrl-C, a `stop()`: give up).
enum ConnectFailure {
    Os(io::Error),
    Python(PyErr),
}

/// Between two waits of a connect: Ctrl-C, or a `stop()` of the client from another
/// thread, ends it (the socket is closed; nothing is registered, so no callback follows).
fn check_interrupted(py: Python<'_>, inner: &LoopInner) -> Result<(), ConnectFailure> {
    py.check_signals().map_err(ConnectFailure::Python)?;
    if inner.phase() == Phase::Stopped {
        return Err(ConnectFailure::Python(LifecycleError::new_err(
            "connect() was cancelled: the client was stopped while it connected",
        )));
    }
    Ok(())
}

/// One connect attempt, waiting in short detached slices so Ctrl-C or `stop()`
/// interrupts it.
fn connect_one(
    py: Python<'_>,
    inner: &LoopInner,
    addr: &Address,
    deadline: Instant,
) -> Result<OwnedFd, ConnectFailure> {
    let options = &inner.config.options;
    let timed_out = || {
        let err = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        Err(ConnectFailure::Os(err))
    };
    let fd = loop {
        match py.detach(|| net::connect_start(addr, options)) {
            Ok(fd) => break fd,
            // A Unix listener's backlog is full: try again until the deadline.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return timed_out();
                }
                py.detach(|| std::thread::sleep(Duration::from_millis(10)));
                check_interrupted(py, inner)?;
            }
            Err(err) => return Err(ConnectFailure::Os(err)),
        }
    };
    let ready = wait_in_slices(
        py,
        deadline,
        |slice| net::connect_wait(fd.as_fd(), slice).map_err(ConnectFailure::Os),
        |py| check_interrupted(py, inner),
    )?;
    if !ready {
        return timed_out();
    }
    match net::take_error(fd.as_fd()).map_err(ConnectFailure::Os)? {
        None => Ok(fd),
        Some(err) => Err(ConnectFailure::Os(err)),
    }
}

/// A client's TLS handshake on the calling thread, in detached steps and short waits (so
/// Ctrl-C or `stop()` interrupts it), within the context's handshake timeout. A refusal
/// raises `TLSError`.
fn handshake(
    py: Python<'_>,
    inner: &LoopInner,
    fd: &OwnedFd,
    tls: &ClientTls,
    context: &str,
) -> PyResult<TlsStream> {
    let mut stream = tls.stream().map_err(|e| os_error(&e, Some(context)))?;
    let deadline = Instant::now() + stream.handshake_timeout;
    loop {
        let step = py.detach(|| stream.handshake_step(fd.as_fd()));
        let writable = match step.map_err(|e| os_error(&e, Some(context)))? {
            Handshake::Done => return Ok(stream),
            Handshake::WantRead => false,
            Handshake::WantWrite => true,
        };
        let ready = wait_in_slices(
            py,
            deadline,
            |slice| net::wait_ready(fd.as_fd(), writable, slice).map_err(ConnectFailure::Os),
            |py| check_interrupted(py, inner),
        );
        match ready {
            Ok(true) => {}
            Ok(false) => {
                let message = format!(
                    "the TLS handshake did not finish within {:.1}s",
                    stream.handshake_timeout.as_secs_f64()
                );
                let err = io::Error::new(io::ErrorKind::TimedOut, message);
                return Err(os_error(&err, Some(context)));
            }
            Err(ConnectFailure::Os(err)) => return Err(os_error(&err, Some(context))),
            Err(ConnectFailure::Python(err)) => return Err(err),
        }
    }
}

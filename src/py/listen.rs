//! Listening: a TCP or Unix listener for every reactor of the loop, shared (one socket in
//! every reactor's epoll, its sessions handed to each in turn) or, with `reuse_port`, one
//! SO_REUSEPORT socket per reactor; or a listening socket someone else bound, adopted.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::connect::resolve;
use super::convert::{self, address_object, optional_timeout, C_INT_MAX};
use super::errors::{os_error, LifecycleError};
use super::inner::{LoopInner, Phase};
use super::tls::server_context;
use crate::shared::{Command, Listener, Placement, SocketFile};
use crate::sys::address::{self, Address};
use crate::sys::file;
use crate::sys::net::{self, SocketOptions};
use crate::tls::ServerContext;

/// How long a connection to a `proxy_protocol` listener has to send its header unless
/// `proxy_timeout` says otherwise: a proxy sends it at once, so this only bounds what a
/// stray or hostile client can hold (a socket, a slot in `max_connections`).
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a TCP listener is made, beside its address.
pub(super) struct Listening<'a, 'py> {
    pub(super) backlog: &'a Bound<'py, PyAny>,
    pub(super) reuse_port: bool,
    pub(super) dual_stack: bool,
    pub(super) accepting: Accepting<'a, 'py>,
}

/// What a listener's sessions go through before they open, as the Python call gave it.
pub(super) struct Accepting<'a, 'py> {
    /// A `TLSServerContext`: every session is TLS.
    pub(super) tls: Option<&'a Bound<'py, PyAny>>,
    /// Every connection starts with a PROXY protocol header.
    pub(super) proxy_protocol: bool,
    /// How long it has to send it (None: [`DEFAULT_PROXY_TIMEOUT`]).
    pub(super) proxy_timeout: Option<&'a Bound<'py, PyAny>>,
}

impl Accepting<'_, '_> {
    /// The TLS context and the PROXY header's deadline, checked.
    fn check(&self) -> PyResult<(Option<Arc<ServerContext>>, Option<Duration>)> {
        let tls = server_context(self.tls)?;
        let timeout = match self.proxy_timeout {
            Some(value) if !value.is_none() => optional_timeout(value, "proxy_timeout")?,
            _ => None,
        };
        if timeout.is_some() && !self.proxy_protocol {
            return Err(PyValueError::new_err(
                "proxy_timeout is the PROXY header's deadline: it needs proxy_protocol=True",
            ));
        }
        let proxy_header = self
            .proxy_protocol
            .then(|| timeout.unwrap_or(DEFAULT_PROXY_TIMEOUT));
        Ok((tls, proxy_header))
    }
}

/// Binds and listens on `host:port`; returns the bound address.
pub(super) fn listen<'py>(
    py: Python<'py>,
    inner: &LoopInner,
    host: &Bound<'py, PyAny>,
    port: &Bound<'py, PyAny>,
    how: Listening<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let Listening {
        backlog,
        reuse_port,
        dual_stack,
        accepting,
    } = how;
    let port = convert::port(port)?;
    let host = convert::host(host)?;
    let backlog = convert::size(backlog, "backlog", 1..=C_INT_MAX)? as i32;
    let (tls, proxy_header) = accepting.check()?;
    inner.check_running("open()")?;
    let addr = resolve(py, &host, port)?[0];
    let context = format!("{host}:{port}");
    let reactors = inner.reactors.len();
    let options = SocketOptions {
        reuse_port,
        ..inner.config.options.clone()
    };
    let (fds, placement) = py
        .detach(|| {
            let first = net::listen(addr, backlog, dual_stack, &options)?;
            if !reuse_port {
                return Ok((share(first, reactors)?, Placement::Spread));
            }
            // Asked for SO_REUSEPORT: one listener per reactor on the same address,
            // and the kernel spreads the connections over them by their addresses.
            let mut bound = addr;
            if let Address::Inet(inet) = address::local_addr(first.as_fd())? {
                bound = inet; // the port the kernel picked for port 0
            }
            let mut fds = vec![first];
            for _ in 1..reactors {
                fds.push(net::listen(bound, backlog, dual_stack, &options)?);
            }
            Ok((fds, Placement::Here))
        })
        .map_err(|e| os_error(&e, Some(&context)))?;
    add_listeners(
        py,
        inner,
        fds,
        ListenerSpec {
            placement,
            tls,
            proxy_header,
            socket_file: SocketFile::Ours,
        },
        &context,
    )
}

/// Binds and listens on a Unix domain socket at `path`; returns the path.
pub(super) fn listen_unix<'py>(
    py: Python<'py>,
    inner: &LoopInner,
    path: &Bound<'py, PyAny>,
    backlog: &Bound<'py, PyAny>,
    accepting: Accepting<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let path = convert::unix_path(path)?;
    let backlog = convert::size(backlog, "backlog", 1..=C_INT_MAX)? as i32;
    let (tls, proxy_header) = accepting.check()?;
    inner.check_running("open_unix()")?;
    let context = path.display().to_string();
    let fd = py
        .detach(|| net::listen_unix(&path, backlog))
        .map_err(|e| os_error(&e, Some(&context)))?;
    let fds = share(fd, inner.reactors.len()).map_err(|e| os_error(&e, Some(&context)))?;
    add_listeners(
        py,
        inner,
        fds,
        ListenerSpec {
            placement: Placement::Spread,
            tls,
            proxy_header,
            socket_file: SocketFile::Ours,
        },
        &context,
    )
}

/// Serves a listening socket someone else bound (`fd`, which stays theirs): a copy of it
/// in every reactor's epoll, as for `listen_unix`. Its Unix socket file, if any, is left
/// alone when the loop stops: whoever bound it removes it.
pub(super) fn listen_socket<'py>(
    py: Python<'py>,
    inner: &LoopInner,
    fd: &Bound<'py, PyAny>,
    accepting: Accepting<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let fd = convert::descriptor(fd, "sock", "a listening socket or its file descriptor")?;
    let (tls, proxy_header) = accepting.check()?;
    inner.check_running("open_socket()")?;
    let context = format!("open_socket(fd {fd})");
    let copy = file::duplicate(fd).map_err(|e| os_error(&e, Some(&context)))?;
    let adopted = net::adopt_listener(copy, &inner.config.options).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => PyValueError::new_err(format!(
            "open_socket() takes a listening TCP or Unix stream socket: {e}"
        )),
        _ => os_error(&e, Some(&context)),
    })?;
    let fds = share(adopted, inner.reactors.len()).map_err(|e| os_error(&e, Some(&context)))?;
    add_listeners(
        py,
        inner,
        fds,
        ListenerSpec {
            placement: Placement::Spread,
            tls,
            proxy_header,
            socket_file: SocketFile::Theirs,
        },
        &context,
    )
}

/// What the listeners one call makes (one per reactor) share, beside their sockets.
struct ListenerSpec {
    placement: Placement,
    tls: Option<Arc<ServerContext>>,
    proxy_header: Option<Duration>,
    socket_file: SocketFile,
}

/// Has every reactor close its listeners, once it has accepted what is queued, and waits
/// until they have (at most [`STOP_ACCEPTING_WAIT`]): from then on `session_count` counts
/// every session a drain must wait for, the last accepted ones included. On the loop's own
/// handler thread, which a reactor may need to finish its turn, and before `start()`
/// (the listeners close as it starts), it only asks.
pub(super) fn stop_accepting(py: Python<'_>, inner: &LoopInner) -> PyResult<()> {
    inner.check_not_forked("stop_accepting()")?;
    let wait = inner.phase() == Phase::Running && !inner.on_handler_thread();
    let (done, acknowledged) = std::sync::mpsc::channel();
    let mut asked = 0;
    for slot in &inner.reactors {
        let done = wait.then(|| done.clone());
        asked += usize::from(slot.shared.submit(Command::StopAccepting(done)));
    }
    drop(done); // a reactor that stops without serving the command drops its sender
    if wait {
        let deadline = Instant::now() + STOP_ACCEPTING_WAIT;
        py.detach(move || {
            for _ in 0..asked {
                let left = deadline.saturating_duration_since(Instant::now());
                if acknowledged.recv_timeout(left).is_err() {
                    break; // stopped meanwhile, or held by a callback: nothing to wait for
                }
            }
        });
    }
    Ok(())
}

/// The longest `stop_accepting()` waits for the reactors: each serves the command in its
/// next turn, unless a callback holds it up.
const STOP_ACCEPTING_WAIT: Duration = Duration::from_secs(5);

/// Hands listener `i` of `fds` (all on one address) to reactor `i`; returns the
/// bound address.
fn add_listeners<'py>(
    py: Python<'py>,
    inner: &LoopInner,
    fds: Vec<OwnedFd>,
    spec: ListenerSpec,
    context: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let ListenerSpec {
        placement,
        tls,
        proxy_header,
        socket_file,
    } = spec;
    let mut object = None;
    for (fd, slot) in fds.into_iter().zip(&inner.reactors) {
        let bound = address::local_addr(fd.as_fd()).map_err(|e| os_error(&e, Some(context)))?;
        if object.is_none() {
            object = Some(address_object(py, &bound)?);
        }
        let listener = Listener {
            fd,
            addr: bound,
            placement,
            tls: tls.clone(),
            proxy_header,
            socket_file,
        };
        if !slot.shared.submit(Command::Listen(listener)) {
            return Err(LifecycleError::new_err("cannot open(): it has stopped"));
        }
    }
    object.ok_or_else(|| LifecycleError::new_err("cannot open(): no reactor"))
}

/// One listener for `reactors` reactors: the same socket in each one's epoll (a copy of
/// the fd each), so whichever reactor is waiting accepts, and hands the sessions to the
/// reactors in turn. Without SO_REUSEPORT, as the user asked: nobody else can bind the
/// port.
fn share(listener: OwnedFd, reactors: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(reactors);
    for _ in 1..reactors {
        fds.push(listener.try_clone()?);
    }
    fds.insert(0, listener);
    Ok(fds)
}

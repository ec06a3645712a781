//! Datagram endpoints opened from Python: `Loop.open_udp` (a bound UDP socket) and
//! `Loop.connect_udp` (bound and connected to one peer), their options, and the socket's
//! way to a reactor. Each endpoint lives on one reactor (the loop's reactors in turn).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::callbacks::{own_callbacks, Callbacks};
use super::connect::resolve;
use super::convert::{self, type_name};
use super::datagram::PyDatagramEndpoint;
use super::errors::{os_error, LifecycleError};
use super::inner::LoopInner;
use super::options::{endpoint_options, EndpointOptions};
use crate::shared::{lock, Binding, DatagramCore};
use crate::sys::address::{self, Address};
use crate::sys::datagram;

/// `Loop.open_udp`: binds `host:port` (port 0 picks a free one).
pub(super) fn open_udp(
    py: Python<'_>,
    inner: &LoopInner,
    (host, port): (&Bound<'_, PyAny>, &Bound<'_, PyAny>),
    callbacks: Option<&Bound<'_, PyTuple>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyDatagramEndpoint>> {
    let host = convert::host(host)?;
    let port = convert::port(port)?;
    let options = endpoint_options("open_udp", options)?;
    let own = own_callbacks(callbacks)?;
    inner.check_running("open_udp()")?;
    let addr = resolve(py, &host, port)?[0];
    if options.socket.dual_stack && addr.is_ipv4() {
        return Err(PyValueError::new_err(format!(
            "dual_stack=True is for an IPv6 endpoint (host='::'), which then takes IPv4 \
             too; {host:?} is IPv4"
        )));
    }
    let context = format!("{host}:{port}");
    let fd = py
        .detach(|| datagram::bind(addr, &options.socket))
        .map_err(|e| os_error(&e, Some(&context)))?;
    let local = bound_to(&fd, &context)?;
    register(py, inner, fd, (local, None), options, own)
}

/// `Loop.connect_udp`: a socket bound to `local_addr` (by default any local address, a
/// free port) and connected to `host:port`, trying `host`'s addresses in turn.
pub(super) fn connect_udp(
    py: Python<'_>,
    inner: &LoopInner,
    (host, port): (&Bound<'_, PyAny>, &Bound<'_, PyAny>),
    local_addr: Option<&Bound<'_, PyAny>>,
    callbacks: Option<&Bound<'_, PyTuple>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyDatagramEndpoint>> {
    let host = convert::host(host)?;
    let port = convert::port(port)?;
    if port == 0 {
        return Err(PyValueError::new_err(
            "port must be between 1 and 65535 for connect_udp() (0 is no peer's port)",
        ));
    }
    let options = endpoint_options("connect_udp", options)?;
    let own = own_callbacks(callbacks)?;
    let local = local_addr
        .filter(|local| !local.is_none())
        .map(|local| local_address(py, local))
        .transpose()?;
    inner.check_running("connect_udp()")?;
    let context = format!("{host}:{port}");
    let mut last_error = None;
    for peer in resolve(py, &host, port)? {
        let bind_to = match local {
            Some(local) if local.is_ipv4() != peer.is_ipv4() => continue,
            Some(local) => local,
            None if peer.is_ipv4() => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let connected = py.detach(|| {
            let fd = datagram::bind(bind_to, &options.socket)?;
            datagram::connect(fd.as_fd(), peer)?;
            Ok::<_, std::io::Error>(fd)
        });
        match connected {
            Ok(fd) => {
                let local = bound_to(&fd, &context)?;
                return register(py, inner, fd, (local, Some(peer)), options, own);
            }
            Err(err) => last_error = Some(err),
        }
    }
    let err = last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "local_addr and the peer are of different address families (IPv4 and IPv6)",
        )
    });
    Err(os_error(&err, Some(&context)))
}

/// `connect_udp(local_addr=(host, port))`.
fn local_address(py: Python<'_>, local: &Bound<'_, PyAny>) -> PyResult<SocketAddr> {
    let pair = local
        .cast::<PyTuple>()
        .ok()
        .filter(|tuple| tuple.len() == 2)
        .ok_or_else(|| {
            PyTypeError::new_err(format!(
                "local_addr must be a (host, port) tuple such as ('127.0.0.1', 0), not {}",
                type_name(local)
            ))
        })?;
    let host = convert::host(&pair.get_item(0)?)?;
    let port = convert::port(&pair.get_item(1)?)?;
    Ok(resolve(py, &host, port)?[0])
}

/// The address `fd` is bound to (the port the kernel picked for port 0, the address it
/// chose for a connected socket).
fn bound_to(fd: &OwnedFd, context: &str) -> PyResult<SocketAddr> {
    match address::local_addr(fd.as_fd()).map_err(|e| os_error(&e, Some(context)))? {
        Address::Inet(inet) => Ok(inet),
        Address::Unix(_) => Err(PyValueError::new_err("a UDP socket has an IP address")),
    }
}

/// Makes the `DatagramEndpoint` of a bound socket and hands the socket to a reactor; the
/// object waits in `pending_endpoints` until the reactor reports it registered.
fn register(
    py: Python<'_>,
    inner: &LoopInner,
    fd: OwnedFd,
    addresses: (SocketAddr, Option<SocketAddr>),
    options: EndpointOptions,
    own: Option<Arc<Callbacks>>,
) -> PyResult<Py<PyDatagramEndpoint>> {
    let reactor = inner.pick_reactor();
    let dual_stack = options.socket.dual_stack;
    let core = DatagramCore::new(
        Arc::clone(&reactor.shared),
        addresses,
        options.limits,
        dual_stack,
    );
    let endpoint = Py::new(py, PyDatagramEndpoint::new(Arc::clone(&core)))?;
    lock(&inner.pending_endpoints).insert(core.id, (endpoint.clone_ref(py), own));
    let id = core.id;
    if !reactor.shared.bind(Binding { core, fd }) {
        // Freed outside the lock: freeing may run Python code.
        let forgotten = lock(&inner.pending_endpoints).remove(&id);
        drop(forgotten);
        return Err(LifecycleError::new_err(
            "cannot open a datagram endpoint: it has stopped; create a new one",
        ));
    }
    Ok(endpoint)
}

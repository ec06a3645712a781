//! `hamanet.DatagramEndpoint`: the Python view of one UDP socket, and the destinations
//! its `sendto` takes.
//!
//! Every method is safe from any Python thread: it touches only the endpoint's shared
//! state and queues the endpoint for the reactor, which sends the queue with `sendmmsg`.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use super::connect::resolve;
use super::convert::{self, address_object, repr, type_name};
use super::errors::datagram_refused;
use super::view::chunk;
use crate::shared::DatagramCore;
use crate::sys::address::Address;

/// One UDP socket, bound (and perhaps connected). Users get it from `open_udp` or
/// `connect_udp`; handlers receive it in the datagram callbacks.
///
/// Instances accept arbitrary attributes, the place for the user's state.
#[pyclass(module = "hamanet", name = "DatagramEndpoint", frozen, dict, weakref)]
pub struct PyDatagramEndpoint {
    core: Arc<DatagramCore>,
}

impl PyDatagramEndpoint {
    /// Wraps an endpoint core.
    pub fn new(core: Arc<DatagramCore>) -> PyDatagramEndpoint {
        PyDatagramEndpoint { core }
    }

    /// The shared state behind this object.
    pub fn core(&self) -> &Arc<DatagramCore> {
        &self.core
    }

    fn queue(&self, data: &Bound<'_, PyAny>, to: Option<SocketAddr>, what: &str) -> PyResult<()> {
        let data = chunk(data, what)?;
        self.core
            .send(data.as_slice(), to)
            .map_err(|refusal| datagram_refused(refusal, what, self.core.id))
    }
}

#[pymethods]
impl PyDatagramEndpoint {
    /// Queues `data` (any bytes-like object) as one datagram to `addr`, a `(host, port)`
    /// tuple (`(host, port, flowinfo, scope_id)` for IPv6) as the callbacks give it;
    /// returns at once. The reactor sends the queue at the end of its wakeup, many
    /// datagrams per syscall. On a connected endpoint `addr` must be None or its peer.
    #[pyo3(signature = (data, addr))]
    fn sendto(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let to = destination(py, &self.core, addr)?;
        self.queue(data, to, "sendto")
    }

    /// Queues `data` as one datagram to the connected peer (`Client.connect_udp`).
    fn send(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.queue(data, None, "send")
    }

    /// Sends what is queued, then closes the socket; `on_datagram_close(endpoint, None)`
    /// follows. Idempotent.
    fn close(&self) {
        self.core.close();
    }

    /// Drops what is queued and closes at once. Idempotent.
    fn abort(&self) {
        self.core.abort();
    }

    /// Stops reading: datagrams wait in the kernel's receive buffer (`recv_buffer`), which
    /// drops what does not fit, until `resume_reading()`. Idempotent.
    fn pause_reading(&self) {
        self.core.pause_reading();
    }

    /// Resumes reading; what waited in the kernel is delivered next. Idempotent.
    fn resume_reading(&self) {
        self.core.resume_reading();
    }

    /// True while `pause_reading()` is in force.
    #[getter]
    fn reading_paused(&self) -> bool {
        self.core.state().read_paused
    }

    /// The endpoint's id, unique within the process.
    #[getter]
    fn id(&self) -> u64 {
        self.core.id
    }

    /// The bound address: `(host, port)`, or `(host, port, flowinfo, scope_id)` for IPv6.
    #[getter]
    fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        address_object(py, &Address::Inet(self.core.local))
    }

    /// The peer of a connected endpoint (`connect_udp`), else None.
    #[getter]
    fn peer_addr<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.core
            .peer
            .map(|peer| address_object(py, &Address::Inet(peer)))
            .transpose()
    }

    /// The most bytes of one received datagram that are kept: a longer one is truncated
    /// and reported to `on_datagram_error` as a `DatagramTruncatedError`.
    #[getter]
    fn max_datagram_size(&self) -> usize {
        self.core.limits.max_datagram_size
    }

    /// `(max_send_queue, max_send_queue_bytes)`: the send queue's bounds.
    #[getter]
    fn send_queue_limits(&self) -> (usize, usize) {
        (self.core.limits.max_queue, self.core.limits.max_queue_bytes)
    }

    /// Datagrams queued and not yet handed to the kernel.
    #[getter]
    fn send_queue_size(&self) -> usize {
        self.core.queued().0
    }

    /// Bytes of them.
    #[getter]
    fn send_queue_bytes(&self) -> usize {
        self.core.queued().1
    }

    /// True once `close()` or `abort()` was called, or the loop stopped: sends fail.
    #[getter]
    fn closing(&self) -> bool {
        self.core.state().is_closing()
    }

    /// True once the socket is closed (`on_datagram_close` is delivered or about to be).
    #[getter]
    fn closed(&self) -> bool {
        self.core.state().closed
    }

    fn __repr__(&self) -> String {
        let state = self.core.state();
        let shown = if state.closed {
            "closed"
        } else if state.is_closing() {
            "closing"
        } else {
            "open"
        };
        let peer = self
            .core
            .peer
            .map_or_else(String::new, |peer| format!(" peer={peer}"));
        format!(
            "<hamanet.DatagramEndpoint id={} local={}{peer} {shown}>",
            self.core.id, self.core.local
        )
    }
}

/// The destination `addr` names for `core`'s socket (None: the connected peer). A name
/// is resolved (blocking, as `socket.sendto` does); an address of a family the socket
/// cannot reach, or another peer than a connected endpoint's, is a `ValueError`.
fn destination(
    py: Python<'_>,
    core: &DatagramCore,
    addr: &Bound<'_, PyAny>,
) -> PyResult<Option<SocketAddr>> {
    if addr.is_none() {
        return Ok(None);
    }
    let Ok(tuple) = addr.cast::<PyTuple>() else {
        let hint = if addr.is_instance_of::<PyList>() {
            " (a list was given: pass tuple(addr))"
        } else {
            ""
        };
        return Err(PyTypeError::new_err(format!(
            "addr must be a (host, port) tuple such as ('127.0.0.1', 9999), as the datagram \
             callbacks give it, not {}{hint}",
            type_name(addr)
        )));
    };
    if !matches!(tuple.len(), 2 | 4) {
        return Err(PyTypeError::new_err(format!(
            "addr must be (host, port), or (host, port, flowinfo, scope_id) for IPv6, not a \
             tuple of {}: {}",
            tuple.len(),
            repr(addr)
        )));
    }
    let host_item = tuple.get_item(0)?;
    // An IP literal, as the callbacks give addresses, parses without a copy or a lookup.
    let literal = host_item
        .cast::<PyString>()
        .ok()
        .and_then(|text| text.to_str().ok()?.parse::<IpAddr>().ok());
    let host = match literal {
        Some(_) => String::new(),
        None => convert::host(&host_item)?,
    };
    let port = convert::port(&tuple.get_item(1)?)?;
    if port == 0 {
        return Err(PyValueError::new_err(format!(
            "cannot send to port 0 ({}): a destination port is between 1 and 65535",
            repr(addr)
        )));
    }
    let (flowinfo, scope_id) = if tuple.len() == 4 {
        let number = |index, name| {
            let value = tuple.get_item(index)?;
            convert::size(&value, name, 0..=u32::MAX as usize).map(|n| n as u32)
        };
        (number(2, "flowinfo")?, number(3, "scope_id")?)
    } else {
        (0, 0)
    };
    let candidates = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => resolve(py, &host, port)?,
    };
    let reachable = candidates
        .iter()
        .find_map(|&candidate| reach(core, candidate));
    let Some(mut to) = reachable else {
        let host = literal.map_or(host, |ip| ip.to_string());
        return Err(PyValueError::new_err(unreachable_family(
            core,
            &host,
            &candidates,
        )));
    };
    if let SocketAddr::V6(v6) = &mut to {
        if tuple.len() == 4 {
            *v6 = SocketAddrV6::new(*v6.ip(), port, flowinfo, scope_id);
        }
    }
    match core.peer {
        None => Ok(Some(to)),
        Some(peer) if same_peer(peer, to) => Ok(None),
        Some(peer) => Err(PyValueError::new_err(format!(
            "cannot sendto() {}: datagram endpoint {} is connected to {peer} and sends only \
             there (the kernel would drop other peers' replies); pass None or its \
             peer_addr, or use an unconnected endpoint (open_udp)",
            repr(addr),
            core.id
        ))),
    }
}

/// `to` as `core`'s socket can send to it: an IPv4 address from a dual-stack IPv6 socket
/// as a mapped address; None if the socket's family cannot reach it.
fn reach(core: &DatagramCore, to: SocketAddr) -> Option<SocketAddr> {
    match (core.local, to) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => Some(to),
        (SocketAddr::V6(_), SocketAddr::V4(v4)) if core.dual_stack => Some(SocketAddr::V6(
            SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        )),
        _ => None,
    }
}

fn same_peer(peer: SocketAddr, to: SocketAddr) -> bool {
    peer.ip() == to.ip() && peer.port() == to.port()
}

/// Why none of `candidates` (what `host` means) can be reached from `core`'s socket.
fn unreachable_family(core: &DatagramCore, host: &str, candidates: &[SocketAddr]) -> String {
    let wanted = match candidates.first() {
        Some(SocketAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    let what = if candidates.len() == 1 && candidates[0].ip().to_string() == host {
        format!("{host} is an {wanted} address")
    } else {
        format!("{host:?} resolves to {wanted} addresses only")
    };
    let (family, fix) = match core.local {
        SocketAddr::V4(_) => (
            "IPv4",
            "open an IPv6 endpoint (host='::1', or '::' for every interface) to reach it",
        ),
        SocketAddr::V6(_) => (
            "IPv6 only",
            "open it with dual_stack=True (host='::') to reach IPv4 addresses too, or use \
             an IPv4 endpoint",
        ),
    };
    format!(
        "cannot send to {host:?}: {what}, and datagram endpoint {} is {family} (bound to \
         {}); {fix}",
        core.id, core.local
    )
}

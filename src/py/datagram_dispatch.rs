//! What a datagram endpoint's handler is told: a wakeup's datagrams in one
//! `on_datagrams(endpoint, [(data, addr), ...])` call (or one `on_datagram` call each),
//! errors and truncated datagrams through `on_datagram_error`, and `on_datagram_close`.
//! Attached, on whichever thread runs the handler.
//!
//! A callback that raises is logged and counted, and the endpoint stays open: it serves
//! every peer at once, so one datagram that upsets the handler must not cut off the rest
//! (a session, which has one peer, is aborted instead).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::callbacks::{Callback, Callbacks};
use super::convert::address_object;
use super::dispatch::{CountOnDrop, Dispatcher};
use super::errors::{close_reason, os_error, DatagramTruncatedError};
use super::sessions::EndpointEntry;
use crate::reactor::{DatagramFailure, ReceivedDatagram};
use crate::shared::{lock, DatagramCore};
use crate::sys::address::Address;

/// Peers whose Python address one batch keeps, to give each its one tuple.
const SENDERS_KEPT: usize = 16;

/// The Python address of each sender, made once per batch for each of its first
/// [`SENDERS_KEPT`] peers: a server's batch usually comes from a few peers in turn
/// (clients with several in flight), and the tuple and its host string cost more than the
/// datagram's own `bytes`.
struct Senders<'py> {
    py: Python<'py>,
    known: Vec<(SocketAddr, Bound<'py, PyAny>)>,
}

impl<'py> Senders<'py> {
    fn of(&mut self, from: Option<SocketAddr>) -> PyResult<Bound<'py, PyAny>> {
        let Some(from) = from else {
            return Ok(self.py.None().into_bound(self.py));
        };
        if let Some((_, object)) = self.known.iter().find(|(addr, _)| *addr == from) {
            return Ok(object.clone());
        }
        let object = address_object(self.py, &Address::Inet(from))?;
        if self.known.len() < SENDERS_KEPT {
            self.known.push((from, object.clone()));
        }
        Ok(object)
    }
}

impl<'py> Dispatcher<'_, 'py> {
    /// The entry of a newly registered endpoint: the object its `open_udp` returned.
    pub(super) fn endpoint_opened(&self, core: &Arc<DatagramCore>) -> Option<EndpointEntry> {
        let (endpoint, callbacks) = lock(&self.inner.pending_endpoints).remove(&core.id)?;
        Some(EndpointEntry {
            endpoint,
            callbacks,
            unhandled_logged: false,
        })
    }

    /// One wakeup's datagrams for the endpoint of `entry`: `items`, whose bytes are in
    /// `bytes`. The whole ones go to `on_datagrams` as one list of `(data, addr)` (or one
    /// by one to `on_datagram`); each truncated one to `on_datagram_error`, after them.
    pub(super) fn datagrams(
        &mut self,
        entry: &mut EndpointEntry,
        loop_callbacks: &Callbacks,
        bytes: &[u8],
        items: &[ReceivedDatagram],
    ) {
        let py = self.py;
        if given_up(entry) {
            // Closed by the handler earlier: its later input is not delivered.
            return;
        }
        let own = entry.callbacks.clone();
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        let mut senders = Senders {
            py,
            known: Vec::new(),
        };
        let made = (|| -> PyResult<_> {
            let mut whole = Vec::with_capacity(items.len());
            let mut truncated = Vec::new();
            for item in items {
                let data = PyBytes::new(py, &bytes[item.range.clone()]);
                let addr = senders.of(item.from)?;
                if item.truncated {
                    truncated.push((data, addr, item.size));
                } else {
                    whole.push(PyTuple::new(py, [data.into_any(), addr])?);
                }
            }
            Ok((whole, truncated))
        })();
        let (whole, truncated) = match made {
            Ok(made) => made,
            Err(err) => {
                // Out of memory, as good as: say so rather than lose it silently.
                self.endpoint_failed(entry, Callback::OnDatagrams, err);
                return;
            }
        };
        if !whole.is_empty() {
            if let Some(callback) = &callbacks[Callback::OnDatagrams] {
                match PyList::new(py, whole) {
                    Ok(batch) => {
                        let batch = [batch.into_any()];
                        self.call_with(entry, Callback::OnDatagrams, callback, &batch);
                    }
                    Err(err) => self.endpoint_failed(entry, Callback::OnDatagrams, err),
                }
            } else if let Some(callback) = &callbacks[Callback::OnDatagram] {
                for pair in whole {
                    // A datagram after the handler closed the endpoint is not delivered.
                    if given_up(entry) {
                        break;
                    }
                    let (data, addr) = (pair.get_item(0), pair.get_item(1));
                    if let (Ok(data), Ok(addr)) = (data, addr) {
                        self.call_with(entry, Callback::OnDatagram, callback, &[data, addr]);
                    }
                }
            }
        }
        let max = entry.endpoint.get().core().limits.max_datagram_size;
        for (data, addr, size) in truncated {
            let exc = truncated_error(py, (data, addr), size, max);
            match exc {
                Ok(exc) => self.datagram_error(entry, callbacks, exc),
                Err(err) => self.endpoint_failed(entry, Callback::OnDatagramError, err),
            }
        }
    }

    /// An error of the endpoint's socket or of a datagram it sent: an `OSError` of the
    /// errno's own subclass (`ConnectionRefusedError` for ICMP port unreachable), whose
    /// `addr` names the peer concerned, goes to `on_datagram_error`.
    pub(super) fn datagram_failed(
        &mut self,
        entry: &mut EndpointEntry,
        loop_callbacks: &Callbacks,
        failure: &DatagramFailure,
    ) {
        let py = self.py;
        let own = entry.callbacks.clone();
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        let context = match (failure.sending, failure.peer) {
            (true, Some(peer)) => format!("sending to {peer}"),
            (true, None) => "sending".to_owned(),
            (false, Some(peer)) => format!("from {peer} (reported on receiving)"),
            (false, None) => "reported on receiving".to_owned(),
        };
        let exc = os_error(&failure.error, Some(&context))
            .into_value(py)
            .into_any();
        let exc = exc.into_bound(py);
        let addr = failure
            .peer
            .map(|peer| address_object(py, &Address::Inet(peer)))
            .transpose();
        match addr.and_then(|addr| exc.setattr("addr", addr)) {
            Ok(()) => self.datagram_error(entry, callbacks, exc),
            Err(err) => self.endpoint_failed(entry, Callback::OnDatagramError, err),
        }
    }

    /// `on_datagram_close(endpoint, exc)`: `exc` None for a clean close.
    pub(super) fn endpoint_closed(
        &mut self,
        entry: &mut EndpointEntry,
        loop_callbacks: &Callbacks,
        error: Option<&io::Error>,
    ) {
        let own = entry.callbacks.clone();
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        if let Some(callback) = &callbacks[Callback::OnDatagramClose] {
            let reason = match error {
                Some(err) => close_reason(self.py, err),
                None => self.py.None(),
            };
            let reason = [reason.into_bound(self.py)];
            self.call_with(entry, Callback::OnDatagramClose, callback, &reason);
        }
    }

    /// Hands `exc` to `on_datagram_error`; without one, says so on the `hamanet` logger
    /// (once per endpoint: errors can come as fast as datagrams, and are counted anyway).
    fn datagram_error(
        &mut self,
        entry: &mut EndpointEntry,
        callbacks: &Callbacks,
        exc: Bound<'py, PyAny>,
    ) {
        if given_up(entry) {
            return;
        }
        if let Some(callback) = &callbacks[Callback::OnDatagramError] {
            self.call_with(entry, Callback::OnDatagramError, callback, &[exc]);
            return;
        }
        if std::mem::replace(&mut entry.unhandled_logged, true) {
            return;
        }
        let id = entry.endpoint.get().core().id;
        self.report.warning(&format!(
            "hamanet: datagram endpoint {id}: {exc}; its handler has no on_datagram_error, \
             so this endpoint's later errors are only counted (stats()['datagram_errors'], \
             ['datagrams_truncated'])"
        ));
    }

    /// Calls `callback(endpoint, *args)`; an exception is logged, and the endpoint stays
    /// open.
    fn call_with(
        &mut self,
        entry: &mut EndpointEntry,
        which: Callback,
        callback: &Py<PyAny>,
        args: &[Bound<'py, PyAny>],
    ) {
        let py = self.py;
        let endpoint = entry.endpoint.bind(py).clone().into_any();
        let id = entry.endpoint.get().core().id;
        let result = self.busy.during(which, id, || {
            let mut all = Vec::with_capacity(1 + args.len());
            all.push(endpoint);
            all.extend(args.iter().cloned());
            PyTuple::new(py, all).and_then(|args| callback.bind(py).call1(args))
        });
        if let Err(err) = result {
            self.endpoint_failed(entry, which, err);
        }
    }

    /// Handler code raised for the endpoint of `entry`: `KeyboardInterrupt` and
    /// `SystemExit` stop the loop as always; anything else is logged and counted.
    fn endpoint_failed(&mut self, entry: &EndpointEntry, which: Callback, err: PyErr) {
        let py = self.py;
        if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
            self.handler_failed(which, None, err);
            return;
        }
        // Counted after it is reported: whoever sees the count can read the log line.
        let _counted = CountOnDrop(&self.inner.handler_errors);
        let id = entry.endpoint.get().core().id;
        let message = format!(
            "hamanet: {} raised for datagram endpoint {id}; the endpoint stays open",
            which.name()
        );
        let exc = err.into_value(py).into_any();
        self.report.log(intern!(py, "error"), &message, Some(exc));
    }
}

/// The `DatagramTruncatedError` for a datagram of `size` bytes of which the kernel kept
/// `data` (its first `max` bytes).
fn truncated_error<'py>(
    py: Python<'py>,
    (data, addr): (Bound<'py, PyBytes>, Bound<'py, PyAny>),
    size: usize,
    max: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let message = format!(
        "a datagram of {size} bytes from {} is longer than this endpoint's \
         max_datagram_size of {max}: the kernel kept its first {max} bytes (exc.data) and \
         dropped the rest; open the endpoint with a larger max_datagram_size (up to 65535) \
         to receive it whole",
        addr.repr()?
    );
    let exc = DatagramTruncatedError::new_err((libc::EMSGSIZE, message))
        .into_value(py)
        .into_bound(py)
        .into_any();
    exc.setattr("addr", addr)?;
    exc.setattr("size", size)?;
    exc.setattr("data", data)?;
    exc.setattr("max_datagram_size", max)?;
    Ok(exc)
}

/// Whether the handler has given the endpoint up (`close()`/`abort()`).
fn given_up(entry: &EndpointEntry) -> bool {
    entry.endpoint.get().core().state().given_up()
}

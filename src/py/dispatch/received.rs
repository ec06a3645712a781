//! Received bytes, handed over: lent to `on_recv` as a memoryview (and what a view kept
//! past the call costs), or cut into messages for `on_message`/`on_messages`.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::{framing_failed, given_up, Dispatcher};
use crate::py::callbacks::{Callback, Callbacks};
use crate::py::sessions::Entry;
use crate::py::view::{Loan, ReceivedBytes, Returned};

/// Whether the warning about a received view kept past `on_recv` was given (once per
/// process: it is about how a handler class is written).
static OUTLIVED_WARNED: AtomicBool = AtomicBool::new(false);

impl<'py> Dispatcher<'_, 'py> {
    /// `on_recv` with `data` lent as a memoryview for the call. A view of it that the
    /// handler kept is put on the `outlived` list (and warned about, once).
    pub(super) fn lend(&mut self, entry: &mut Entry, callback: &Py<PyAny>, data: &[u8]) {
        let py = self.py;
        let loan = Loan::new(py, data, self.spare_lender.take());
        let view = match &loan {
            Ok(loan) => Ok(loan.view().clone()),
            Err(err) => Err(err.clone_ref(py)),
        };
        self.call(entry, Callback::OnRecv, callback, |s| Ok((s, view?)));
        let returned = loan.map(Loan::end);
        if let Ok(Returned::Spare(lender)) = returned {
            self.spare_lender = Some(lender);
        } else if let Ok(Returned::Outlived(lender)) = returned {
            if !OUTLIVED_WARNED.swap(true, Ordering::Relaxed) {
                self.report.warning(
                    "hamanet: a view of received bytes outlived on_recv (a slice kept, or an \
                     array made from it); hamanet keeps the buffer it points into alive until \
                     it is released, up to a whole turn's reads: copy what you keep, with \
                     bytes(data[start:end])",
                );
            }
            self.outlived.push(lender);
        }
    }

    /// The lenders of received bytes that a view outlived since the last call: their
    /// memory must be handed to them ([`ReceivedBytes::keep`]) before it is reused.
    pub(in crate::py) fn take_outlived(&mut self) -> Vec<Py<ReceivedBytes>> {
        std::mem::take(&mut self.outlived)
    }

    /// Cuts `data` into messages with the session's decoder and hands them over: all at
    /// once to `on_messages`, else one by one to `on_message`. A framing error closes the
    /// session (after the messages before it), and `on_close` gets a `FramingError`.
    pub(super) fn deliver_messages(
        &mut self,
        entry: &mut Entry,
        callbacks: &Callbacks,
        data: &[u8],
    ) {
        let py = self.py;
        let Some(decoder) = entry.decoder.as_mut() else {
            return;
        };
        let mut messages: Vec<Bound<'py, PyBytes>> = Vec::new();
        let result = decoder.feed(data, |message| messages.push(PyBytes::new(py, message)));
        self.call_message_callbacks(entry, callbacks, messages);
        if let Err(err) = result {
            framing_failed(entry, &err);
        }
    }

    /// Hands over messages cut elsewhere (by the worker pool's reactor side): `data`
    /// holds them back to back, each ending at the next of `ends`.
    pub(in crate::py) fn framed(
        &mut self,
        entry: &mut Entry,
        loop_callbacks: &Callbacks,
        data: &[u8],
        ends: &[usize],
    ) {
        if given_up(entry) {
            return;
        }
        let own = entry.callbacks.clone();
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        let mut start = 0;
        let messages = ends
            .iter()
            .map(|&end| {
                let message = PyBytes::new(self.py, &data[start..end]);
                start = end;
                message
            })
            .collect();
        self.call_message_callbacks(entry, callbacks, messages);
    }

    fn call_message_callbacks(
        &mut self,
        entry: &mut Entry,
        callbacks: &Callbacks,
        messages: Vec<Bound<'py, PyBytes>>,
    ) {
        let py = self.py;
        if messages.is_empty() {
            return;
        }
        if let Some(callback) = &callbacks[Callback::OnMessages] {
            let batch = PyList::new(py, messages);
            self.call(entry, Callback::OnMessages, callback, |s| Ok((s, batch?)));
        } else if let Some(callback) = &callbacks[Callback::OnMessage] {
            for message in messages {
                // A message after a close (by the handler, or for an error) is not delivered.
                if self
                    .call(entry, Callback::OnMessage, callback, |s| Ok((s, message)))
                    .is_none()
                    || given_up(entry)
                {
                    break;
                }
            }
        }
    }
}

//! The delivery of one turn's events to the handler's callbacks, on the reactor thread and
//! attached: which callbacks (the session's own handler's or the loop's), in what order,
//! and what a callback that raises does to its session.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::callbacks::{Callback, Callbacks};
use super::errors::{close_reason, FramingError, SessionClosedError};
use super::inner::LoopInner;
use super::report::Report;
use super::session::PySession;
use super::sessions::SessionTable;
use crate::framing::{FrameDecoder, Framer};
use crate::reactor::{Event, Reactor};
use crate::shared::{lock, SessionCore};
use crate::sys::epoll::Token;

/// Whether `err` is the `SessionClosedError` of writing to `core` after the reactor
/// ended its connection (not after the user's own `close()`/`abort()`).
fn ended_by_peer(py: Python<'_>, err: &PyErr, core: &SessionCore) -> bool {
    if !err.is_instance_of::<SessionClosedError>(py) {
        return false;
    }
    let state = core.state();
    state.closed && !state.given_up()
}

/// The handler layer of one reactor thread, for the thread's whole life.
pub(super) struct Dispatcher<'a, 'py> {
    pub(super) py: Python<'py>,
    pub(super) inner: &'a LoopInner,
    pub(super) report: Report<'py>,
    pub(super) table: &'a mut SessionTable,
}

impl<'py> Dispatcher<'_, 'py> {
    /// Delivers one event to the callbacks of its session's own handler, if it has one,
    /// else to `loop_callbacks`.
    pub(super) fn deliver(&mut self, reactor: &Reactor, loop_callbacks: &Callbacks, event: &Event) {
        let own = match event {
            Event::Opened { token, session } => self.open(*token, session),
            Event::ConnectFailed { session, error } => {
                let pending = lock(&self.inner.pending).remove(&session.id);
                let Some((object, own)) = pending else {
                    return;
                };
                let callbacks = own.as_deref().unwrap_or(loop_callbacks);
                return self.connect_failed(session.id, error.as_ref(), object, callbacks);
            }
            Event::Received { token, .. }
            | Event::Eof { token }
            | Event::Drained { token }
            | Event::PauseWriting { token }
            | Event::ResumeWriting { token }
            | Event::Closed { token, .. } => self
                .table
                .get(*token)
                .and_then(|entry| entry.callbacks.clone()),
            Event::Timer { .. } | Event::AcceptPaused { .. } => None,
        };
        self.deliver_to(reactor, own.as_deref().unwrap_or(loop_callbacks), event);
    }

    /// Enters a newly opened session in the table (with the `Session` its connect call
    /// returned, or a new one for an accepted connection); returns its own callbacks.
    fn open(&mut self, token: Token, session: &Arc<SessionCore>) -> Option<Arc<Callbacks>> {
        let py = self.py;
        let framer = &self.inner.framer;
        let pending = lock(&self.inner.pending).remove(&session.id);
        let pending = match pending {
            Some(pending) => pending,
            None => match Py::new(py, PySession::new(Arc::clone(session), framer.clone())) {
                Ok(object) => (object, None),
                Err(err) => {
                    self.report.error("creating the Session", session.id, &err);
                    session.abort();
                    return None;
                }
            },
        };
        let own = pending.1.clone();
        let decoder = framer
            .as_ref()
            .map(|framer| Box::new(FrameDecoder::new(Framer::clone(framer))));
        self.table.insert(token, pending, decoder);
        own
    }

    /// `on_close` for a connect that never completed.
    fn connect_failed(
        &mut self,
        session_id: u64,
        error: Option<&io::Error>,
        object: Py<PySession>,
        callbacks: &Callbacks,
    ) {
        let py = self.py;
        let Some(callback) = &callbacks[Callback::OnClose] else {
            return;
        };
        let reason = match error {
            Some(err) => close_reason(py, err),
            None => py.None(),
        };
        let busy = &self.inner.busy;
        let result = busy.during(Callback::OnClose, session_id, || {
            callback.call1(py, (object, reason))
        });
        if let Err(err) = result {
            self.handler_failed(Callback::OnClose, None, err);
        }
    }

    fn deliver_to(&mut self, reactor: &Reactor, callbacks: &Callbacks, event: &Event) {
        let py = self.py;
        match event {
            Event::Opened { token, .. } => {
                // Even if the user already closed it (right after `connect()` returned):
                // a session that was connected gets its `on_connect` before `on_close`.
                if let Some(callback) = &callbacks[Callback::OnConnect] {
                    self.call(*token, Callback::OnConnect, callback, |s| Ok((s,)));
                }
            }
            Event::Received { token, range } => {
                if self.given_up(*token) {
                    // Closed by the handler earlier in this batch: its later input is not delivered.
                    return;
                }
                let data = reactor.received(range.clone());
                if self.inner.framer.is_some() {
                    self.deliver_messages(*token, callbacks, data);
                } else if let Some(callback) = &callbacks[Callback::OnRecv] {
                    let data = PyBytes::new(py, data);
                    self.call(*token, Callback::OnRecv, callback, |s| Ok((s, data)));
                }
            }
            Event::Eof { token } => {
                let keep_open = match &callbacks[Callback::OnEof] {
                    Some(callback) if !self.given_up(*token) => {
                        let result = self.call(*token, Callback::OnEof, callback, |s| Ok((s,)));
                        // Even the truth of the result is handler code (`__bool__`).
                        match result.map(|value| value.is_truthy()) {
                            Some(Ok(keep)) => keep,
                            Some(Err(err)) => {
                                self.fail_session(*token, Callback::OnEof, err);
                                false
                            }
                            None => false,
                        }
                    }
                    _ => false,
                };
                if !keep_open {
                    if let Some(entry) = self.table.get(*token) {
                        entry.session.get().core().close();
                    }
                }
            }
            Event::Drained { token } => self.notify(*token, Callback::OnSend, callbacks),
            Event::PauseWriting { token } => {
                self.notify(*token, Callback::OnPauseWriting, callbacks)
            }
            Event::ResumeWriting { token } => {
                self.notify(*token, Callback::OnResumeWriting, callbacks)
            }
            Event::Closed { token, error } => {
                let Some(entry) = self.table.remove(*token) else {
                    return;
                };
                let Some(callback) = &callbacks[Callback::OnClose] else {
                    return;
                };
                let reason: Py<PyAny> = match (entry.error, error) {
                    (Some(raised), _) => raised.into_value(py).into_any(),
                    (None, Some(err)) => close_reason(py, err),
                    (None, None) => py.None(),
                };
                let session = entry.session.bind(py);
                let id = session.get().core().id;
                let result = self.inner.busy.during(Callback::OnClose, id, || {
                    callback.call1(py, (session, reason))
                });
                if let Err(err) = result {
                    // The session is closed already: only log (or stop on an interrupt).
                    self.handler_failed(Callback::OnClose, None, err);
                }
            }
            Event::ConnectFailed { .. } => {} // delivered by `deliver`
            Event::Timer { id } => {
                let Some((callback, args)) = lock(&self.inner.timers).remove(id) else {
                    return; // cancelled after it came due
                };
                let busy = &self.inner.busy;
                let result = busy.during(Callback::Timer, 0, || callback.call1(py, args.bind(py)));
                if let Err(err) = result {
                    self.handler_failed(Callback::Timer, None, err);
                }
            }
            Event::AcceptPaused { error } => {
                self.report.warning(&format!(
                    "hamanet: accept failed ({error}); accepting pauses and retries every \
                     100 ms until descriptors or memory free up; queued connections wait \
                     in the backlog"
                ));
            }
        }
    }

    /// Cuts `data` into messages with the session's decoder and hands them over: all at
    /// once to `on_messages`, else one by one to `on_message`. A framing error closes the
    /// session (after the messages before it), and `on_close` gets a `FramingError`.
    fn deliver_messages(&mut self, token: Token, callbacks: &Callbacks, data: &[u8]) {
        let py = self.py;
        let Some(entry) = self.table.get(token) else {
            return;
        };
        let Some(decoder) = entry.decoder.as_mut() else {
            return;
        };
        let mut messages: Vec<Bound<'py, PyBytes>> = Vec::new();
        let result = decoder.feed(data, |message| messages.push(PyBytes::new(py, message)));
        self.call_message_callbacks(token, callbacks, messages);
        if let Err(err) = result {
            if let Some(entry) = self.table.get(token) {
                entry
                    .error
                    .get_or_insert_with(|| FramingError::new_err(err.to_string()));
                entry.session.get().core().close();
            }
        }
    }

    fn call_message_callbacks(
        &mut self,
        token: Token,
        callbacks: &Callbacks,
        messages: Vec<Bound<'py, PyBytes>>,
    ) {
        let py = self.py;
        if messages.is_empty() {
            return;
        }
        if let Some(callback) = &callbacks[Callback::OnMessages] {
            let batch = PyList::new(py, messages);
            self.call(token, Callback::OnMessages, callback, |s| Ok((s, batch?)));
        } else if let Some(callback) = &callbacks[Callback::OnMessage] {
            for message in messages {
                // A message after a close (by the handler, or for an error) is not delivered.
                if self
                    .call(token, Callback::OnMessage, callback, |s| Ok((s, message)))
                    .is_none()
                    || self.given_up(token)
                {
                    break;
                }
            }
        }
    }

    /// Whether the handler has given the session up (`close()`/`abort()`), so it wants no
    /// more of its events. A session the *reactor* closed this turn (a reset, say) still
    /// gets what it read before: that data arrived, and is delivered before `on_close`.
    fn given_up(&mut self, token: Token) -> bool {
        self.table
            .get(token)
            .is_none_or(|entry| entry.session.get().core().state().given_up())
    }

    /// Calls a `callback(session)` notification, if overridden and the session is open.
    fn notify(&mut self, token: Token, which: Callback, callbacks: &Callbacks) {
        if let Some(callback) = &callbacks[which] {
            if !self.given_up(token) {
                self.call(token, which, callback, |s| Ok((s,)));
            }
        }
    }

    /// Calls a callback for the session at `token`; on an exception, logs it and aborts
    /// that session (the exception becomes `on_close`'s argument).
    fn call<A>(
        &mut self,
        token: Token,
        which: Callback,
        callback: &Py<PyAny>,
        args: impl FnOnce(Bound<'py, PySession>) -> PyResult<A>,
    ) -> Option<Bound<'py, PyAny>>
    where
        A: pyo3::call::PyCallArgs<'py>,
    {
        let py = self.py;
        let entry = self.table.get(token)?;
        let session = entry.session.bind(py).clone();
        let id = entry.session.get().core().id;
        let result = self.inner.busy.during(which, id, || {
            args(session).and_then(|args| callback.bind(py).call1(args))
        });
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.fail_session(token, which, err);
                None
            }
        }
    }

    /// Handler code raised for the session at `token`: log it and abort that session,
    /// whose `on_close` then receives the exception.
    fn fail_session(&mut self, token: Token, which: Callback, err: PyErr) {
        let py = self.py;
        let Some(entry) = self.table.get(token) else {
            return;
        };
        let core = Arc::clone(entry.session.get().core());
        if ended_by_peer(py, &err, &core) {
            // The callback wrote to its own session, whose connection ended in this
            // very turn (a reset, say) and let the SessionClosedError out: a consequence
            // of the peer, not a fault of the handler, and `on_close` reports the cause.
            return;
        }
        entry.error.get_or_insert_with(|| err.clone_ref(py));
        core.abort();
        self.handler_failed(which, Some(core.id), err);
    }

    /// Routes an exception raised by handler code: `KeyboardInterrupt` and `SystemExit`
    /// stop the loop and surface from `join()`; anything else is logged.
    fn handler_failed(&mut self, which: Callback, session: Option<u64>, err: PyErr) {
        let py = self.py;
        self.inner.handler_errors.fetch_add(1, Ordering::Relaxed);
        if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
            let mut failure = lock(&self.inner.failure);
            if failure.is_none() {
                *failure = Some(err);
            }
            drop(failure);
            self.inner.request_stop(Duration::from_secs(1));
            return;
        }
        let name = which.name();
        match session {
            Some(id) => self.report.error(name, id, &err),
            None => {
                let exc = err.into_value(py).into_any();
                self.report.log(
                    intern!(py, "error"),
                    &format!("hamanet: {name} raised"),
                    Some(exc),
                );
            }
        }
    }

    /// A callback called `fork()` and returned in the child, onto the parent's reactor: the
    /// child cannot go on turning it (the parent's sockets and epoll are shared), so it
    /// ends here, as a `multiprocessing` child ends after its target, with status 0.
    pub(super) fn end_forked_child(&self) -> ! {
        self.report.warning(
            "hamanet: a callback forked, and the child returned from it onto the parent's \
             reactor; the child exits now (end it yourself with os._exit() in the callback)",
        );
        let py = self.py;
        for stream in ["stdout", "stderr"] {
            if let Ok(stream) = py.import("sys").and_then(|sys| sys.getattr(stream)) {
                let _ = stream.call_method0("flush");
            }
        }
        // SAFETY: `_exit` ends the process at once; nothing of the parent's state is run.
        unsafe { libc::_exit(0) }
    }
}

//! What the handler is told, and how: the calls to its callbacks for one session's
//! notices (the session's own handler's, or the loop's), for timers and for loop-level
//! reports, and what a callback that raises does to its session. Attached, on whichever
//! thread runs the handler: the reactor thread, or a worker of the pool. How received
//! bytes are handed over (lent as views, or cut into messages) is `received`.

mod received;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::framing::{FrameDecoder, FrameError};
use crate::py::callbacks::{Busy, Callback, Callbacks};
use crate::py::errors::{close_reason, FramingError, SessionClosedError};
use crate::py::inner::LoopInner;
use crate::py::report::Report;
use crate::py::session::PySession;
use crate::py::sessions::Entry;
use crate::py::view::ReceivedBytes;
use crate::shared::{lock, SessionCore};
use crate::sys::address::Address;

/// What happened to an open session, for its handler, in the order the reactor saw it.
#[derive(Debug)]
pub(super) enum Notice<'a> {
    /// Bytes arrived.
    Received(&'a [u8]),
    /// The peer sent FIN.
    Eof,
    /// The write buffer emptied.
    Drained,
    /// The write buffer rose past the high watermark.
    PauseWriting,
    /// The write buffer fell to the low watermark.
    ResumeWriting,
    /// The session closed, for this reason if it failed.
    Closed(Option<&'a io::Error>),
}

/// Whether `err` is the `SessionClosedError` of writing to `core` after the reactor
/// ended its connection (not after the user's own `close()`/`abort()`).
fn ended_by_peer(py: Python<'_>, err: &PyErr, core: &SessionCore) -> bool {
    if !err.is_instance_of::<SessionClosedError>(py) {
        return false;
    }
    let state = core.state();
    state.closed && !state.given_up()
}

/// Adds one to a counter when dropped.
pub(super) struct CountOnDrop<'a>(pub(super) &'a std::sync::atomic::AtomicU64);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The handler layer of one thread that runs handler code.
pub(super) struct Dispatcher<'a, 'py> {
    pub(super) py: Python<'py>,
    pub(super) inner: &'a LoopInner,
    pub(super) report: Report<'py>,
    /// What this thread is running, for `stop()`'s report of a callback that holds it up.
    pub(super) busy: &'a Busy,
    /// Received bytes lent to `on_recv` that a view still points into: the caller keeps
    /// their memory for them ([`Dispatcher::take_outlived`]).
    pub(super) outlived: Vec<Py<ReceivedBytes>>,
    /// A lender no one refers to any more, for the next loan.
    spare_lender: Option<Py<ReceivedBytes>>,
}

impl<'a, 'py> Dispatcher<'a, 'py> {
    /// The handler layer of a thread attached as `py`, busy as `busy` says.
    pub(super) fn new(py: Python<'py>, inner: &'a LoopInner, busy: &'a Busy) -> Self {
        Dispatcher {
            py,
            inner,
            report: Report::new(py),
            busy,
            outlived: Vec::new(),
            spare_lender: None,
        }
    }

    /// The entry of a newly opened session: the `Session` its connect call returned, or a
    /// new one for an accepted connection. None if no `Session` could be made (the
    /// session is then aborted).
    pub(super) fn open(&self, session: &Arc<SessionCore>) -> Option<Entry> {
        let py = self.py;
        let framer = &self.inner.framer;
        let pending = lock(&self.inner.pending).remove(&session.id);
        let (object, callbacks) = match pending {
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
        Some(Entry {
            session: object,
            callbacks,
            error: None,
            decoder: framer
                .as_deref()
                .map(|framer| Box::new(FrameDecoder::new(framer.clone()))),
        })
    }

    /// `on_connect`, even if the user already closed the session (right after
    /// `connect()` returned): a session that was connected gets it before `on_close`.
    pub(super) fn connected(&mut self, entry: &mut Entry, loop_callbacks: &Callbacks) {
        let own = entry.callbacks.clone();
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        if let Some(callback) = &callbacks[Callback::OnConnect] {
            self.call(entry, Callback::OnConnect, callback, |s| Ok((s,)));
        }
    }

    /// Tells the session's handler of `notice`.
    pub(super) fn notify(
        &mut self,
        entry: &mut Entry,
        loop_callbacks: &Callbacks,
        notice: Notice<'_>,
    ) {
        let py = self.py;
        let own = entry.callbacks.clone();
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        match notice {
            Notice::Received(data) => {
                if given_up(entry) {
                    // Closed by the handler earlier: its later input is not delivered.
                    return;
                }
                if entry.decoder.is_some() {
                    self.deliver_messages(entry, callbacks, data);
                } else if let Some(callback) = &callbacks[Callback::OnRecv] {
                    if callbacks.recv_views {
                        self.lend(entry, callback, data);
                    } else {
                        let data = PyBytes::new(py, data);
                        self.call(entry, Callback::OnRecv, callback, |s| Ok((s, data)));
                    }
                }
            }
            Notice::Eof => {
                let keep_open = match &callbacks[Callback::OnEof] {
                    Some(callback) if !given_up(entry) => {
                        let result = self.call(entry, Callback::OnEof, callback, |s| Ok((s,)));
                        // Even the truth of the result is handler code (`__bool__`).
                        match result.map(|value| value.is_truthy()) {
                            Some(Ok(keep)) => keep,
                            Some(Err(err)) => {
                                self.fail_session(entry, Callback::OnEof, err);
                                false
                            }
                            None => false,
                        }
                    }
                    _ => false,
                };
                if !keep_open {
                    entry.session.get().core().close();
                }
            }
            Notice::Drained => self.tell(entry, Callback::OnSend, callbacks),
            Notice::PauseWriting => self.tell(entry, Callback::OnPauseWriting, callbacks),
            Notice::ResumeWriting => self.tell(entry, Callback::OnResumeWriting, callbacks),
            Notice::Closed(error) => {
                let Some(callback) = &callbacks[Callback::OnClose] else {
                    return;
                };
                let reason: Py<PyAny> = match (entry.error.take(), error) {
                    (Some(raised), _) => raised.into_value(py).into_any(),
                    (None, Some(err)) => close_reason(py, err),
                    (None, None) => py.None(),
                };
                let session = entry.session.bind(py);
                let id = session.get().core().id;
                let result = self.busy.during(Callback::OnClose, id, || {
                    callback.call1(py, (session, reason))
                });
                if let Err(err) = result {
                    // The session is closed already: only log (or stop on an interrupt).
                    self.handler_failed(Callback::OnClose, None, err);
                }
            }
        }
    }

    /// `on_close` for a connect that never completed (or was never registered), and for
    /// an accepted TLS session whose handshake failed (a `Session` made for the purpose:
    /// the handler learns of it, though `on_connect` never ran). An accepted session
    /// cancelled by a stop (`reason` None) is not reported: nobody ever saw it.
    pub(super) fn connect_failed(
        &mut self,
        session: &Arc<SessionCore>,
        reason: Py<PyAny>,
        loop_callbacks: &Callbacks,
    ) {
        let py = self.py;
        let pending = lock(&self.inner.pending).remove(&session.id);
        let (object, own) = match pending {
            Some(pending) => pending,
            None if reason.is_none(py) => return,
            None => {
                let framer = self.inner.framer.clone();
                match Py::new(py, PySession::new(Arc::clone(session), framer)) {
                    Ok(object) => (object, None),
                    Err(err) => {
                        self.report.error("creating the Session", session.id, &err);
                        return;
                    }
                }
            }
        };
        let callbacks = own.as_deref().unwrap_or(loop_callbacks);
        let Some(callback) = &callbacks[Callback::OnClose] else {
            return;
        };
        let result = self.busy.during(Callback::OnClose, session.id, || {
            callback.call1(py, (object, reason))
        });
        if let Err(err) = result {
            self.handler_failed(Callback::OnClose, None, err);
        }
    }

    /// The reason `on_close` gets for a connect that failed with `error` (None: cancelled).
    pub(super) fn connect_error(&self, error: Option<&io::Error>) -> Py<PyAny> {
        match error {
            Some(err) => close_reason(self.py, err),
            None => self.py.None(),
        }
    }

    /// Runs timer `id`'s callback, unless it was cancelled after it came due.
    pub(super) fn timer(&mut self, id: u64) {
        let py = self.py;
        let Some((callback, args)) = lock(&self.inner.timers).remove(&id) else {
            return;
        };
        let result = self
            .busy
            .during(Callback::Timer, 0, || callback.call1(py, args.bind(py)));
        if let Err(err) = result {
            self.handler_failed(Callback::Timer, None, err);
        }
    }

    /// Says that accepting paused for `error` (out of descriptors or memory).
    pub(super) fn accept_paused(&self, error: &io::Error) {
        self.report.warning(&format!(
            "hamanet: accept failed ({error}); accepting pauses and retries every 100 ms \
             until descriptors or memory free up; queued connections wait in the backlog"
        ));
    }

    /// A connection to a `proxy_protocol` listener was closed for its header: said once
    /// a second at most (the reactor counts the rest), since a flood of them is possible.
    pub(super) fn proxy_refused(&self, peer: &Address, error: &io::Error, unreported: u64) {
        let more = match unreported {
            0 => String::new(),
            n => format!(" ({n} more since the last such warning)"),
        };
        self.report.warning(&format!(
            "hamanet: connection from {peer} closed before it became a session: {error}{more}"
        ));
    }

    /// Calls a `callback(session)` notification, if overridden and the session is open.
    fn tell(&mut self, entry: &mut Entry, which: Callback, callbacks: &Callbacks) {
        if let Some(callback) = &callbacks[which] {
            if !given_up(entry) {
                self.call(entry, which, callback, |s| Ok((s,)));
            }
        }
    }

    /// Calls a callback for the session of `entry`; on an exception, logs it and aborts
    /// that session (the exception becomes `on_close`'s argument).
    fn call<A>(
        &mut self,
        entry: &mut Entry,
        which: Callback,
        callback: &Py<PyAny>,
        args: impl FnOnce(Bound<'py, PySession>) -> PyResult<A>,
    ) -> Option<Bound<'py, PyAny>>
    where
        A: pyo3::call::PyCallArgs<'py>,
    {
        let py = self.py;
        let session = entry.session.bind(py).clone();
        let id = entry.session.get().core().id;
        let result = self.busy.during(which, id, || {
            args(session).and_then(|args| callback.bind(py).call1(args))
        });
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.fail_session(entry, which, err);
                None
            }
        }
    }

    /// Handler code raised for the session of `entry`: log it and abort that session,
    /// whose `on_close` then receives the exception.
    fn fail_session(&mut self, entry: &mut Entry, which: Callback, err: PyErr) {
        let py = self.py;
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
    pub(super) fn handler_failed(&mut self, which: Callback, session: Option<u64>, err: PyErr) {
        let py = self.py;
        // Counted after it is reported: whoever sees the count can read the log line.
        let _counted = CountOnDrop(&self.inner.handler_errors);
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

    /// A callback called `fork()` and returned in the child, onto the parent's reactor or
    /// pool: the child cannot go on running it (the parent's sockets and epoll are
    /// shared, and its other threads did not survive the fork), so it ends here, as a
    /// `multiprocessing` child ends after its target, with status 0.
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

/// The session's stream broke its framing: it closes, and `on_close` gets a
/// `FramingError` (unless a callback's own exception came first).
pub(super) fn framing_failed(entry: &mut Entry, err: &FrameError) {
    entry
        .error
        .get_or_insert_with(|| FramingError::new_err(err.to_string()));
    entry.session.get().core().close();
}

/// Whether the handler has given the session up (`close()`/`abort()`), so it wants no
/// more of its events. A session the *reactor* closed (a reset, say) still gets what it
/// read before: that data arrived, and is delivered before `on_close`.
fn given_up(entry: &Entry) -> bool {
    entry.session.get().core().state().given_up()
}

//! The reactor thread: turns (detached) and the delivery of each turn's events to the
//! handler's callbacks (attached, once per wakeup).
//!
//! The thread attaches to the interpreter once, for its whole life, and detaches only
//! around [`Reactor::turn`] (the wait and every socket syscall). Creating a thread state
//! per wakeup would cost more than the callbacks themselves.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyConnectionAbortedError, PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::epoll::Token;
use crate::errors::{close_reason, FramingError, SessionClosedError};
use crate::framing::{FrameDecoder, Framer};
use crate::py_loop::LoopInner;
use crate::py_session::PySession;
use crate::reactor::{Event, Reactor};
use crate::session::{lock, LoopShared, SessionCore};

/// The names of the handler callbacks, in the order `Loop` receives them.
pub const CALLBACK_NAMES: [&str; 9] = [
    "on_connect",
    "on_recv",
    "on_send",
    "on_eof",
    "on_close",
    "on_pause_writing",
    "on_resume_writing",
    "on_message",
    "on_messages",
];

/// A handler callback, numbered as in [`CALLBACK_NAMES`], or a timer's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Callback {
    OnConnect,
    OnRecv,
    OnSend,
    OnEof,
    OnClose,
    OnPauseWriting,
    OnResumeWriting,
    OnMessage,
    OnMessages,
    Timer,
}

impl Callback {
    const ALL: [Callback; 10] = [
        Callback::OnConnect,
        Callback::OnRecv,
        Callback::OnSend,
        Callback::OnEof,
        Callback::OnClose,
        Callback::OnPauseWriting,
        Callback::OnResumeWriting,
        Callback::OnMessage,
        Callback::OnMessages,
        Callback::Timer,
    ];

    /// How logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Callback::Timer => "a timer callback",
            handler => CALLBACK_NAMES[handler as usize],
        }
    }
}

/// Which callback the reactor thread is running, and since when: what a `stop()` kept
/// waiting by a callback that does not return names in its log line. A few relaxed
/// atomic stores per callback; a reader may see a mix of two callbacks, which only
/// blurs a log line.
pub struct Busy {
    origin: Instant,
    /// Nanoseconds from `origin` to the callback's start, plus one; 0 when idle.
    since: AtomicU64,
    which: AtomicU8,
    session: AtomicU64,
}

impl Busy {
    pub fn new() -> Busy {
        Busy {
            origin: Instant::now(),
            since: AtomicU64::new(0),
            which: AtomicU8::new(0),
            session: AtomicU64::new(0),
        }
    }

    /// Runs `call` (a callback of `session`, 0 for none) marked as busy with `which`.
    fn during<R>(&self, which: Callback, session: u64, call: impl FnOnce() -> R) -> R {
        self.which.store(which as u8, Ordering::Relaxed);
        self.session.store(session, Ordering::Relaxed);
        let since = self.origin.elapsed().as_nanos() as u64 + 1;
        self.since.store(since, Ordering::Release);
        let result = call();
        self.since.store(0, Ordering::Release);
        result
    }

    /// The callback running now (its name and session id, 0 for none) and for how long.
    pub fn current(&self) -> Option<(&'static str, u64, Duration)> {
        let since = self.since.load(Ordering::Acquire);
        if since == 0 {
            return None;
        }
        let which = Callback::ALL
            .get(usize::from(self.which.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Callback::Timer);
        let started = Duration::from_nanos(since - 1);
        let running = self.origin.elapsed().saturating_sub(started);
        Some((which.name(), self.session.load(Ordering::Relaxed), running))
    }
}

/// The handler's callbacks, indexed by [`Callback`] (in [`CALLBACK_NAMES`] order), each
/// `None` when the handler does not override it, so an unused callback costs nothing per
/// event.
pub struct Callbacks([Option<Py<PyAny>>; CALLBACK_NAMES.len()]);

impl Callbacks {
    /// No callbacks at all (what a loop whose handler was cleared by the GC keeps).
    pub fn none() -> Callbacks {
        Callbacks(std::array::from_fn(|_| None))
    }

    /// Shows the garbage collector each callable held (they usually reference the
    /// handler, which may reference the Server: a cycle only the GC can free).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for callback in &self.0 {
            visit.call(callback)?;
        }
        Ok(())
    }

    /// From a tuple in [`CALLBACK_NAMES`] order, `None` for callbacks not overridden.
    pub fn from_tuple(callbacks: &Bound<'_, PyTuple>) -> PyResult<Callbacks> {
        if callbacks.len() != CALLBACK_NAMES.len() {
            return Err(PyValueError::new_err(format!(
                "callbacks must be a tuple of {} callables or None: {}",
                CALLBACK_NAMES.len(),
                CALLBACK_NAMES.join(", ")
            )));
        }
        let mut out = Callbacks::none();
        for (index, slot) in out.0.iter_mut().enumerate() {
            let item = callbacks.get_item(index)?;
            *slot = (!item.is_none()).then(|| item.unbind());
        }
        Ok(out)
    }
}

impl std::ops::Index<Callback> for Callbacks {
    type Output = Option<Py<PyAny>>;

    /// The handler's callable for `which` (always `None` for [`Callback::Timer`], whose
    /// callables live with their timers).
    fn index(&self, which: Callback) -> &Option<Py<PyAny>> {
        const NONE: &Option<Py<PyAny>> = &None;
        self.0.get(which as usize).unwrap_or(NONE)
    }
}

/// One session's Python object and what the handler layer remembers about it.
struct Entry {
    generation: u32,
    session: Py<PySession>,
    /// The session's own handler, if it has one (`connect_nowait(handler=...)`), in
    /// place of the loop's.
    callbacks: Option<Arc<Callbacks>>,
    /// The exception a callback raised, handed to `on_close` instead of the OS's reason.
    error: Option<PyErr>,
    /// The session's framing state, when the loop frames (boxed: most loops do not, and
    /// an idle session should cost as little as it can).
    decoder: Option<Box<FrameDecoder>>,
}

/// A session returned by a connect call and not yet opened, with its own callbacks.
pub type PendingSession = (Py<PySession>, Option<Arc<Callbacks>>);

/// Python objects of open sessions, indexed like the reactor's slots.
#[derive(Default)]
struct SessionTable {
    entries: Vec<Option<Entry>>,
}

impl SessionTable {
    fn insert(
        &mut self,
        token: Token,
        (session, callbacks): PendingSession,
        decoder: Option<Box<FrameDecoder>>,
    ) {
        let index = token.slot();
        if self.entries.len() <= index {
            self.entries.resize_with(index + 1, || None);
        }
        self.entries[index] = Some(Entry {
            generation: token.generation(),
            session,
            callbacks,
            error: None,
            decoder,
        });
    }

    fn get(&mut self, token: Token) -> Option<&mut Entry> {
        match self.entries.get_mut(token.slot()) {
            Some(Some(entry)) if entry.generation == token.generation() => Some(entry),
            _ => None,
        }
    }

    fn remove(&mut self, token: Token) -> Option<Entry> {
        let slot = self.entries.get_mut(token.slot())?;
        match slot {
            Some(entry) if entry.generation == token.generation() => slot.take(),
            _ => None,
        }
    }
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

/// Marks the loop finished when the reactor thread ends, however it ends (a panic
/// included), so `join()` returns and later calls are refused instead of waiting forever.
struct FinishOnExit(Arc<LoopShared>);

impl Drop for FinishOnExit {
    fn drop(&mut self) {
        drop(self.0.close_queue());
        self.0.update_status(|status| status.finished = true);
    }
}

/// The reactor thread's body.
pub fn run(mut reactor: Reactor, inner: Arc<LoopInner>) {
    let finish = FinishOnExit(Arc::clone(&inner.shared));
    Python::attach(move |py| {
        // Give Python's view of this thread the same name as the OS's, so log records
        // (`%(threadName)s`) and `threading.current_thread()` say where handlers run.
        let named = py.import("threading").and_then(|threading| {
            threading
                .call_method0("current_thread")?
                .setattr("name", "hamanet-reactor")
        });
        if let Err(err) = named {
            err.print(py);
        }
        let mut table = SessionTable::default();
        let logger = py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", ("hamanet",)))
            .map(Bound::unbind)
            .inspect_err(|err| err.print(py))
            .ok();
        let mut dispatcher = Dispatcher {
            py,
            inner: &inner,
            logger,
            table: &mut table,
        };
        loop {
            if let Err(err) = py.detach(|| reactor.turn()) {
                dispatcher.log_fatal(&err);
                reactor.abort_all(&err);
            }
            // Read after the wait, so a handler swapped while the reactor slept is the one
            // that gets this wakeup's events.
            let callbacks = Arc::clone(&lock(&inner.callbacks));
            reactor.set_notify_drained(callbacks[Callback::OnSend].is_some());
            let batch = reactor.take_batch();
            for event in &batch {
                dispatcher.deliver(&reactor, &callbacks, event);
                if let Event::Closed { .. } | Event::ConnectFailed { .. } = event {
                    inner.shared.session_closed();
                }
                if inner.shared.is_forked_copy() {
                    dispatcher.end_forked_child();
                }
            }
            reactor.recycle_batch(batch);
            if reactor.is_finished() {
                break;
            }
        }
        drop(table);
        // A client session whose registration the stop overtook was never opened; its
        // user still holds it and gets the one `on_close` every session gets.
        let never_opened = std::mem::take(&mut *lock(&inner.pending));
        let callbacks = Arc::clone(&lock(&inner.callbacks));
        for (session, own) in never_opened.into_values() {
            let callbacks = own.as_deref().unwrap_or(&callbacks);
            if let Some(callback) = &callbacks[Callback::OnClose] {
                let reason = PyConnectionAbortedError::new_err(
                    "the client stopped before the connection was registered",
                );
                if let Err(err) = callback.call1(py, (session, reason.into_value(py))) {
                    err.print(py);
                }
            }
        }
        // Python objects are released attached, and outside the locks (freeing them may
        // run Python code that takes those locks).
        let timers = std::mem::take(&mut *lock(&inner.timers));
        drop(timers);
        drop(callbacks);
        drop(inner);
        drop(reactor);
    });
    drop(finish);
}

struct Dispatcher<'a, 'py> {
    py: Python<'py>,
    inner: &'a LoopInner,
    logger: Option<Py<PyAny>>,
    table: &'a mut SessionTable,
}

impl<'py> Dispatcher<'_, 'py> {
    /// Delivers one event to the callbacks of its session's own handler, if it has one,
    /// else to `loop_callbacks`.
    fn deliver(&mut self, reactor: &Reactor, loop_callbacks: &Callbacks, event: &Event) {
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
                    self.log_error("creating the Session", session.id, &err);
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
                self.log_warning(&format!(
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
            Some(id) => self.log_error(name, id, &err),
            None => {
                let exc = err.into_value(py).into_any();
                self.log(
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
    fn end_forked_child(&self) -> ! {
        self.log_warning(
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

    fn log_error(&self, name: &str, id: u64, err: &PyErr) {
        let py = self.py;
        let message = format!("hamanet: {name} raised for session {id}; that session is aborted");
        let exc = err.clone_ref(py).into_value(py).into_any();
        self.log(intern!(py, "error"), &message, Some(exc));
    }

    fn log_warning(&self, message: &str) {
        self.log(intern!(self.py, "warning"), message, None);
    }

    fn log_fatal(&self, err: &io::Error) {
        let message = format!("hamanet: the reactor failed ({err}); every session is aborted");
        self.log(intern!(self.py, "error"), &message, None);
    }

    /// Logs on the `hamanet` logger, with `exc`'s traceback when given. The message is
    /// preformatted and passed without arguments, so `%` in it is harmless.
    fn log(
        &self,
        level: &Bound<'py, pyo3::types::PyString>,
        message: &str,
        exc: Option<Py<PyAny>>,
    ) {
        let py = self.py;
        let Some(logger) = &self.logger else {
            // No logging module: say it on stderr rather than not at all.
            eprintln!("{message}");
            if let Some(exc) = exc {
                PyErr::from_value(exc.into_bound(py)).print(py);
            }
            return;
        };
        let result = (|| -> PyResult<()> {
            let kwargs = PyDict::new(py);
            if let Some(exc) = exc {
                kwargs.set_item(intern!(py, "exc_info"), exc)?;
            }
            logger
                .bind(py)
                .call_method(level, (message,), Some(&kwargs))?;
            Ok(())
        })();
        if let Err(err) = result {
            // Logging itself failed (a broken handler on the logger): print it rather than
            // lose both errors.
            err.print(py);
        }
    }
}

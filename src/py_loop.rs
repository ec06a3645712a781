//! `hamanet._hamanet.Loop`: a reactor on its own thread plus the handler callbacks it
//! drives. `hamanet.Server` and `hamanet.Client` are thin Python classes over it.
//!
//! The reactor thread attaches to the interpreter once, for its whole life, and detaches
//! only around [`Reactor::turn`] (the wait and every socket syscall). Each wakeup's events
//! are then delivered under that one attach: one GIL crossing per wakeup, not per event.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::epoll::Token;
use crate::errors::{close_reason, os_error, LifecycleError};
use crate::net::{self, SocketOptions};
use crate::py_session::PySession;
use crate::reactor::{Event, Reactor};
use crate::session::{lock, Command, LoopShared, LoopStatus, SessionCore};

/// How long a blocking wait runs before it returns to Python so Ctrl-C is seen promptly.
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// The handler's callbacks, each `None` when the handler does not override it, so an
/// unused callback costs nothing per event.
struct Callbacks {
    on_connect: Option<Py<PyAny>>,
    on_recv: Option<Py<PyAny>>,
    on_send: Option<Py<PyAny>>,
    on_eof: Option<Py<PyAny>>,
    on_close: Option<Py<PyAny>>,
}

impl Callbacks {
    fn from_tuple(callbacks: &Bound<'_, PyTuple>) -> PyResult<Callbacks> {
        if callbacks.len() != 5 {
            return Err(PyValueError::new_err(
                "callbacks must be (on_connect, on_recv, on_send, on_eof, on_close)",
            ));
        }
        let get = |i: usize| -> PyResult<Option<Py<PyAny>>> {
            let item = callbacks.get_item(i)?;
            Ok((!item.is_none()).then(|| item.unbind()))
        };
        Ok(Callbacks {
            on_connect: get(0)?,
            on_recv: get(1)?,
            on_send: get(2)?,
            on_eof: get(3)?,
            on_close: get(4)?,
        })
    }
}

/// Where the loop is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Created,
    Running,
    Stopped,
}

/// Everything the Python-facing object and the reactor thread share.
struct LoopInner {
    shared: Arc<LoopShared>,
    options: SocketOptions,
    phase: Mutex<Phase>,
    reactor: Mutex<Option<Reactor>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: OnceLock<ThreadId>,
    callbacks: Mutex<Arc<Callbacks>>,
    /// Client sessions whose Python object exists (returned by `connect`) but whose
    /// `Opened` event has not been delivered yet.
    pending: Mutex<HashMap<u64, Py<PySession>>>,
    /// `KeyboardInterrupt`/`SystemExit` raised by a handler, re-raised by `wait()`.
    failure: Mutex<Option<PyErr>>,
}

impl LoopInner {
    fn phase(&self) -> Phase {
        *lock(&self.phase)
    }

    fn on_reactor_thread(&self) -> bool {
        self.thread_id.get() == Some(&std::thread::current().id())
    }
}

/// A reactor thread and its handler. Not for direct use: see `hamanet.Server`/`Client`.
#[pyclass(module = "hamanet._hamanet", name = "Loop", frozen)]
pub struct PyLoop {
    inner: Arc<LoopInner>,
}

#[pymethods]
impl PyLoop {
    #[new]
    #[pyo3(signature = (callbacks, *, nodelay=true, keepalive=false, recv_buffer=None, send_buffer=None))]
    fn new(
        callbacks: &Bound<'_, PyTuple>,
        nodelay: bool,
        keepalive: bool,
        recv_buffer: Option<usize>,
        send_buffer: Option<usize>,
    ) -> PyResult<PyLoop> {
        for (name, value) in [("recv_buffer", recv_buffer), ("send_buffer", send_buffer)] {
            if value == Some(0) {
                return Err(PyValueError::new_err(format!(
                    "{name} must be a positive number of bytes (or None for the kernel default)"
                )));
            }
        }
        let options = SocketOptions {
            nodelay,
            keepalive,
            recv_buffer,
            send_buffer,
            reuse_port: false,
        };
        let reactor = Reactor::new(options.clone()).map_err(|e| os_error(&e, None))?;
        Ok(PyLoop {
            inner: Arc::new(LoopInner {
                shared: Arc::clone(reactor.shared()),
                options,
                phase: Mutex::new(Phase::Created),
                reactor: Mutex::new(Some(reactor)),
                thread: Mutex::new(None),
                thread_id: OnceLock::new(),
                callbacks: Mutex::new(Arc::new(Callbacks::from_tuple(callbacks)?)),
                pending: Mutex::new(HashMap::new()),
                failure: Mutex::new(None),
            }),
        })
    }

    /// Replaces the handler's callbacks; takes effect from the next wakeup.
    fn set_callbacks(&self, callbacks: &Bound<'_, PyTuple>) -> PyResult<()> {
        let callbacks = Arc::new(Callbacks::from_tuple(callbacks)?);
        let old = std::mem::replace(&mut *lock(&self.inner.callbacks), callbacks);
        drop(old); // attached: the old callables may be freed here
        Ok(())
    }

    /// Binds and listens on `host:port`; returns the bound `(host, port)`.
    #[pyo3(signature = (host, port, backlog, reuse_port))]
    fn listen<'py>(
        &self,
        py: Python<'py>,
        host: &str,
        port: u16,
        backlog: i32,
        reuse_port: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if self.inner.phase() == Phase::Stopped {
            return Err(LifecycleError::new_err(
                "cannot open(): this server was stopped; create a new Server to listen again",
            ));
        }
        let context = format!("{host}:{port}");
        let addr = py
            .detach(|| net::resolve(host, port))
            .map_err(|e| os_error(&e, Some(&context)))?[0];
        let options = SocketOptions {
            reuse_port,
            ..self.inner.options.clone()
        };
        let fd = py
            .detach(|| net::listen(addr, backlog, &options))
            .map_err(|e| os_error(&e, Some(&context)))?;
        let bound = net::local_addr(fd.as_fd()).map_err(|e| os_error(&e, Some(&context)))?;
        if !self.inner.shared.submit(Command::Listen(fd, bound)) {
            return Err(LifecycleError::new_err(
                "cannot open(): the server has stopped",
            ));
        }
        (bound.ip().to_string(), bound.port()).into_pyobject(py)
    }

    /// Starts the reactor thread.
    fn start(&self) -> PyResult<()> {
        let mut phase = lock(&self.inner.phase);
        match *phase {
            Phase::Created => {}
            Phase::Running => {
                return Err(LifecycleError::new_err(
                    "start() was already called; it runs until stop()",
                ))
            }
            Phase::Stopped => {
                return Err(LifecycleError::new_err(
                    "cannot start(): it was stopped; create a new one to run again",
                ))
            }
        }
        let reactor = lock(&self.inner.reactor)
            .take()
            .ok_or_else(|| LifecycleError::new_err("the reactor is gone; create a new one"))?;
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new()
            .name("hamanet-reactor".into())
            .spawn(move || run(reactor, inner))
            .map_err(|e| os_error(&e, Some("starting the reactor thread")))?;
        // set() only fails if already set, and this is the only place that sets it.
        let _ = self.inner.thread_id.set(handle.thread().id());
        *lock(&self.inner.thread) = Some(handle);
        *phase = Phase::Running;
        Ok(())
    }

    /// Asks the reactor to stop: stop accepting, flush every session and close it, abort
    /// what has not flushed after `timeout` seconds. Returns at once; `wait()` waits.
    fn stop(&self, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout, "timeout")?;
        let mut phase = lock(&self.inner.phase);
        match *phase {
            Phase::Created => {
                *phase = Phase::Stopped;
                // Never started: dropping the reactor closes its listeners, and marking the
                // queue closed makes later calls fail cleanly.
                drop(lock(&self.inner.reactor).take());
                self.inner
                    .shared
                    .update_status(|status| status.finished = true);
            }
            Phase::Running => {
                *phase = Phase::Stopped;
                self.inner
                    .shared
                    .submit(Command::Stop(Instant::now() + timeout));
            }
            Phase::Stopped => {}
        }
        Ok(())
    }

    /// Waits up to `timeout` seconds for the reactor to finish; returns whether it has.
    /// Re-raises a `KeyboardInterrupt`/`SystemExit` that a handler raised.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        if self.inner.phase() == Phase::Created {
            return Err(LifecycleError::new_err("cannot wait: call start() first"));
        }
        let done = self.wait_until(py, timeout, |status| status.finished)?;
        if done {
            if let Some(handle) = lock(&self.inner.thread).take() {
                // The thread has set `finished` as its last act; this join is immediate.
                let _ = py.detach(|| handle.join());
            }
            if let Some(err) = lock(&self.inner.failure).take() {
                return Err(err);
            }
        }
        Ok(done)
    }

    /// Waits up to `timeout` seconds until no session is open (or the loop finished).
    fn wait_idle(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        self.wait_until(py, timeout, |status| {
            status.sessions == 0 || status.finished
        })
    }

    /// Connects to `host:port`, waiting up to `timeout` seconds; returns the `Session`.
    fn connect(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        timeout: f64,
    ) -> PyResult<Py<PySession>> {
        let timeout = seconds(timeout, "timeout")?;
        if self.inner.phase() != Phase::Running {
            return Err(LifecycleError::new_err(
                "cannot connect(): the client is not running (it was stopped); create a new Client",
            ));
        }
        if self.inner.on_reactor_thread() {
            return Err(LifecycleError::new_err(
                "connect() blocks until connected, so it cannot be called from a handler \
                 callback (it would stall the reactor); call it from another thread",
            ));
        }
        let context = format!("{host}:{port}");
        let deadline = Instant::now() + timeout;
        let addrs = py
            .detach(|| net::resolve(host, port))
            .map_err(|e| os_error(&e, Some(&context)))?;
        let mut last_error = None;
        for addr in addrs {
            match connect_one(py, addr, &self.inner.options, deadline) {
                Ok(fd) => {
                    let peer = net::peer_addr(fd.as_fd());
                    let local = net::local_addr(fd.as_fd());
                    let (peer, local) = match (peer, local) {
                        (Ok(peer), Ok(local)) => (peer, local),
                        (Err(e), _) | (_, Err(e)) => {
                            last_error = Some(e);
                            continue;
                        }
                    };
                    let core = SessionCore::new(Arc::clone(&self.inner.shared), peer, local);
                    let session = Py::new(py, PySession::new(Arc::clone(&core)))?;
                    lock(&self.inner.pending).insert(core.id, session.clone_ref(py));
                    if !self.inner.shared.adopt(Arc::clone(&core), fd) {
                        lock(&self.inner.pending).remove(&core.id);
                        return Err(LifecycleError::new_err(
                            "cannot connect(): the client stopped",
                        ));
                    }
                    return Ok(session);
                }
                Err(ConnectFailure::Python(err)) => return Err(err),
                Err(ConnectFailure::Os(err)) => last_error = Some(err),
            }
        }
        let err = last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::TimedOut));
        Err(os_error(&err, Some(&context)))
    }

    /// Whether the caller runs on this loop's reactor thread (inside a handler callback).
    fn on_reactor_thread(&self) -> bool {
        self.inner.on_reactor_thread()
    }

    /// Sessions currently open.
    #[getter]
    fn session_count(&self) -> usize {
        self.inner.shared.status().sessions
    }

    /// `"created"`, `"running"` or `"stopped"` (stop requested or finished).
    #[getter]
    fn phase(&self) -> &'static str {
        match self.inner.phase() {
            Phase::Created => "created",
            Phase::Running => "running",
            Phase::Stopped => "stopped",
        }
    }

    /// Whether the reactor thread has finished (or never ran and was stopped).
    #[getter]
    fn finished(&self) -> bool {
        self.inner.shared.status().finished
    }
}

impl PyLoop {
    fn wait_until(
        &self,
        py: Python<'_>,
        timeout: f64,
        done: impl Fn(&LoopStatus) -> bool + Sync,
    ) -> PyResult<bool> {
        let timeout = seconds(timeout, "timeout")?;
        let deadline = Instant::now() + timeout;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(SIGNAL_SLICE);
            if py.detach(|| self.inner.shared.wait_for(slice, &done)) {
                return Ok(true);
            }
            py.check_signals()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

enum ConnectFailure {
    Os(io::Error),
    Python(PyErr),
}

/// One connect attempt, waiting in short detached slices so Ctrl-C interrupts it.
fn connect_one(
    py: Python<'_>,
    addr: SocketAddr,
    options: &SocketOptions,
    deadline: Instant,
) -> Result<std::os::fd::OwnedFd, ConnectFailure> {
    let fd = py
        .detach(|| net::connect_start(addr, options))
        .map_err(ConnectFailure::Os)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectFailure::Os(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
        let ready = py
            .detach(|| net::connect_wait(fd.as_fd(), left.min(SIGNAL_SLICE)))
            .map_err(ConnectFailure::Os)?;
        if ready {
            return match net::take_error(fd.as_fd()).map_err(ConnectFailure::Os)? {
                None => Ok(fd),
                Some(err) => Err(ConnectFailure::Os(err)),
            };
        }
        py.check_signals().map_err(ConnectFailure::Python)?;
    }
}

/// One session's Python object and what the handler layer remembers about it.
struct Entry {
    generation: u32,
    session: Py<PySession>,
    /// The exception a callback raised, handed to `on_close` instead of the OS's reason.
    error: Option<PyErr>,
}

/// Python objects of open sessions, indexed like the reactor's slots.
#[derive(Default)]
struct SessionTable {
    entries: Vec<Option<Entry>>,
}

impl SessionTable {
    fn insert(&mut self, token: Token, session: Py<PySession>) {
        let index = token.slot();
        if self.entries.len() <= index {
            self.entries.resize_with(index + 1, || None);
        }
        self.entries[index] = Some(Entry {
            generation: token.generation(),
            session,
            error: None,
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
fn run(mut reactor: Reactor, inner: Arc<LoopInner>) {
    let finish = FinishOnExit(Arc::clone(&inner.shared));
    Python::attach(|py| {
        let mut table = SessionTable::default();
        let logger = py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", ("hamanet",)))
            .map(Bound::unbind)
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
            reactor.set_notify_drained(callbacks.on_send.is_some());
            let batch = reactor.take_batch();
            for event in &batch {
                dispatcher.deliver(&reactor, &callbacks, event);
            }
            reactor.recycle_batch(batch);
            if reactor.is_finished() {
                break;
            }
        }
        // Session objects are Python objects: release them while attached.
        drop(table);
        lock(&inner.pending).clear();
    });
    drop(reactor);
    drop(finish);
}

struct Dispatcher<'a, 'py> {
    py: Python<'py>,
    inner: &'a LoopInner,
    logger: Option<Py<PyAny>>,
    table: &'a mut SessionTable,
}

impl<'py> Dispatcher<'_, 'py> {
    fn deliver(&mut self, reactor: &Reactor, callbacks: &Callbacks, event: &Event) {
        let py = self.py;
        match event {
            Event::Opened { token, session } => {
                let pending = lock(&self.inner.pending).remove(&session.id);
                let object = match pending {
                    Some(object) => object,
                    None => match Py::new(py, PySession::new(Arc::clone(session))) {
                        Ok(object) => object,
                        Err(err) => {
                            self.log_error("creating the Session", session.id, &err);
                            session.abort();
                            return;
                        }
                    },
                };
                self.table.insert(*token, object);
                if let Some(callback) = &callbacks.on_connect {
                    self.call(*token, "on_connect", callback, |s| (s,).into_pyobject(py));
                }
            }
            Event::Received { token, range } => {
                let Some(callback) = &callbacks.on_recv else {
                    return;
                };
                if self.is_closing(*token) {
                    // Closed earlier in this batch: its later input is not delivered.
                    return;
                }
                let data = PyBytes::new(py, reactor.received(range.clone()));
                self.call(*token, "on_recv", callback, |s| (s, data).into_pyobject(py));
            }
            Event::Eof { token } => {
                let keep_open = match &callbacks.on_eof {
                    Some(callback) if !self.is_closing(*token) => self
                        .call(*token, "on_eof", callback, |s| (s,).into_pyobject(py))
                        .is_some_and(|result| result.is_truthy().unwrap_or(false)),
                    _ => false,
                };
                if !keep_open {
                    if let Some(entry) = self.table.get(*token) {
                        entry.session.get().core().close();
                    }
                }
            }
            Event::Drained { token } => {
                if let Some(callback) = &callbacks.on_send {
                    if !self.is_closing(*token) {
                        self.call(*token, "on_send", callback, |s| (s,).into_pyobject(py));
                    }
                }
            }
            Event::Closed { token, error } => {
                let Some(entry) = self.table.remove(*token) else {
                    return;
                };
                let Some(callback) = &callbacks.on_close else {
                    return;
                };
                let reason: Py<PyAny> = match (entry.error, error) {
                    (Some(raised), _) => raised.into_value(py).into_any(),
                    (None, Some(err)) => close_reason(py, err),
                    (None, None) => py.None(),
                };
                let session = entry.session.bind(py);
                if let Err(err) = callback.call1(py, (session, reason)) {
                    self.handler_failed("on_close", entry.session.get().core().id, err);
                }
            }
        }
    }

    fn is_closing(&mut self, token: Token) -> bool {
        self.table
            .get(token)
            .is_none_or(|entry| entry.session.get().core().outbox().is_closing())
    }

    /// Calls a callback for the session at `token`; on an exception, logs it and aborts
    /// that session (the exception becomes `on_close`'s argument).
    fn call<A>(
        &mut self,
        token: Token,
        name: &str,
        callback: &Py<PyAny>,
        args: impl FnOnce(Bound<'py, PySession>) -> PyResult<A>,
    ) -> Option<Bound<'py, PyAny>>
    where
        A: pyo3::call::PyCallArgs<'py>,
    {
        let py = self.py;
        let entry = self.table.get(token)?;
        let session = entry.session.bind(py).clone();
        let result = args(session).and_then(|args| callback.bind(py).call1(args));
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                let core = Arc::clone(entry.session.get().core());
                let is_exit = err.is_instance_of::<PyKeyboardInterrupt>(py)
                    || err.is_instance_of::<PySystemExit>(py);
                if !is_exit {
                    self.log_error(name, core.id, &err);
                }
                if let Some(entry) = self.table.get(token) {
                    entry.error.get_or_insert_with(|| err.clone_ref(py));
                }
                core.abort();
                if is_exit {
                    self.handler_failed(name, core.id, err);
                }
                None
            }
        }
    }

    /// A callback raised where the session cannot simply be aborted (`on_close`), or raised
    /// `KeyboardInterrupt`/`SystemExit`, which stop the loop and surface from `join()`.
    fn handler_failed(&mut self, name: &str, id: u64, err: PyErr) {
        let py = self.py;
        if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
            let mut failure = lock(&self.inner.failure);
            if failure.is_none() {
                *failure = Some(err);
            }
            drop(failure);
            let mut phase = lock(&self.inner.phase);
            *phase = Phase::Stopped;
            drop(phase);
            self.inner
                .shared
                .submit(Command::Stop(Instant::now() + Duration::from_secs(1)));
        } else {
            self.log_error(name, id, &err);
        }
    }

    fn log_error(&self, name: &str, id: u64, err: &PyErr) {
        let py = self.py;
        let message = format!("hamanet: {name} raised for session {id}; that session is aborted");
        self.log(&message, Some(err.clone_ref(py).into_value(py).into_any()));
    }

    fn log_fatal(&self, err: &io::Error) {
        self.log(
            &format!("hamanet: the reactor failed ({err}); every session is aborted"),
            None,
        );
    }

    /// Logs at ERROR on the `hamanet` logger, with `exc`'s traceback when given. The
    /// message is preformatted and passed without arguments, so `%` in it is harmless.
    fn log(&self, message: &str, exc: Option<Py<PyAny>>) {
        let py = self.py;
        let Some(logger) = &self.logger else { return };
        let result = (|| -> PyResult<()> {
            let kwargs = PyDict::new(py);
            if let Some(exc) = exc {
                kwargs.set_item(intern!(py, "exc_info"), exc)?;
            }
            logger
                .bind(py)
                .call_method(intern!(py, "error"), (message,), Some(&kwargs))?;
            Ok(())
        })();
        if let Err(err) = result {
            // Logging itself failed (a broken handler on the logger): print it rather than
            // lose both errors.
            err.print(py);
        }
    }
}

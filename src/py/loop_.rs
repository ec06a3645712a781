//! `hamanet._hamanet.Loop`: a reactor on its own thread plus the handler callbacks it
//! drives. `hamanet.Server` and `hamanet.Client` are thin Python classes over it. Each
//! method checks its arguments and the loop's phase, then hands the work on: the threads
//! to `thread`, listeners to `listen`, connects to `connect`, scheduled callbacks to
//! `timer`, counters to `stats`, its making to `options`, and what it shares with its
//! threads to `inner`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::bind;
use super::callbacks::Callbacks;
use super::connect;
use super::convert;
use super::datagram::PyDatagramEndpoint;
use super::driven;
use super::inner::{LoopInner, Phase};
use super::listen;
use super::options::make_loop;
use super::report::Report;
use super::session::PySession;
use super::stats;
use super::thread;
use super::timer::{schedule, schedule_at, session_core, PyTimerHandle};
use crate::shared::{lock, Command};

/// A reactor thread and its handler. Not for direct use: see `hamanet.Server`/`Client`.
#[pyclass(module = "hamanet._hamanet", name = "Loop", frozen)]
pub struct PyLoop {
    inner: Arc<LoopInner>,
}

#[pymethods]
impl PyLoop {
    /// `owner` ("Server" or "Client") names the caller in errors; `options` are those
    /// listed in `OPTIONS`, checked in `options.rs`. The handler's callbacks come with
    /// `set_callbacks`, before `start()`.
    #[new]
    #[pyo3(signature = (owner="Loop", **options))]
    fn new(owner: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<PyLoop> {
        let inner = make_loop(owner, options)?;
        Ok(PyLoop {
            inner: Arc::new(inner),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.inner.traverse(&visit)
    }

    fn __clear__(&self) {
        self.inner.clear();
    }

    /// Replaces the handler's callbacks; takes effect from the next wakeup.
    fn set_callbacks(&self, callbacks: &Bound<'_, PyTuple>) -> PyResult<()> {
        let callbacks = Arc::new(Callbacks::from_tuple(callbacks)?);
        let old = std::mem::replace(&mut *lock(&self.inner.callbacks), callbacks);
        drop(old); // attached: the old callables may be freed here
        Ok(())
    }

    /// Binds and listens on `host:port`; returns the bound address. With `tls` (a
    /// `TLSServerContext`) every session it accepts is TLS; with `proxy_protocol` each
    /// connection must start with a PROXY header (within `proxy_timeout` seconds).
    #[pyo3(signature = (host, port, backlog, reuse_port, dual_stack, tls=None,
        proxy_protocol=false, proxy_timeout=None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn listen<'py>(
        &self,
        py: Python<'py>,
        host: &Bound<'py, PyAny>,
        port: &Bound<'py, PyAny>,
        backlog: &Bound<'py, PyAny>,
        reuse_port: bool,
        dual_stack: bool,
        tls: Option<&Bound<'py, PyAny>>,
        proxy_protocol: bool,
        proxy_timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let accepting = listen::Accepting {
            tls,
            proxy_protocol,
            proxy_timeout,
        };
        let how = listen::Listening {
            backlog,
            reuse_port,
            dual_stack,
            accepting,
        };
        listen::listen(py, &self.inner, host, port, how)
    }

    /// Binds and listens on a Unix domain socket at `path`; returns the path. `tls`,
    /// `proxy_protocol` and `proxy_timeout` as for `listen`.
    #[pyo3(signature = (path, backlog, tls=None, proxy_protocol=false, proxy_timeout=None))]
    fn listen_unix<'py>(
        &self,
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
        backlog: &Bound<'py, PyAny>,
        tls: Option<&Bound<'py, PyAny>>,
        proxy_protocol: bool,
        proxy_timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let accepting = listen::Accepting {
            tls,
            proxy_protocol,
            proxy_timeout,
        };
        listen::listen_unix(py, &self.inner, path, backlog, accepting)
    }

    /// Serves a listening socket someone else bound (`sock`, a socket or its descriptor,
    /// which stays theirs); returns its address. `tls`, `proxy_protocol` and
    /// `proxy_timeout` as for `listen`.
    #[pyo3(signature = (sock, tls=None, proxy_protocol=false, proxy_timeout=None))]
    fn listen_socket<'py>(
        &self,
        py: Python<'py>,
        sock: &Bound<'py, PyAny>,
        tls: Option<&Bound<'py, PyAny>>,
        proxy_protocol: bool,
        proxy_timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let accepting = listen::Accepting {
            tls,
            proxy_protocol,
            proxy_timeout,
        };
        listen::listen_socket(py, &self.inner, sock, accepting)
    }

    /// Closes every listener, once what is queued is accepted, and goes on serving the
    /// sessions; returns when every reactor has done so (see `listen::stop_accepting`).
    fn stop_accepting(&self, py: Python<'_>) -> PyResult<()> {
        listen::stop_accepting(py, &self.inner)
    }

    /// Binds a datagram (UDP) endpoint to `host:port` on one of the reactors; `callbacks`,
    /// if given, are its own handler's. `options` are those of `UDP_OPTIONS`.
    #[pyo3(signature = (host, port, callbacks=None, options=None))]
    fn open_udp(
        &self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        callbacks: Option<&Bound<'_, PyTuple>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyDatagramEndpoint>> {
        bind::open_udp(py, &self.inner, (host, port), callbacks, options)
    }

    /// A datagram endpoint connected to `host:port` (bound to `local_addr`, or any).
    #[pyo3(signature = (host, port, local_addr=None, callbacks=None, options=None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn connect_udp(
        &self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        local_addr: Option<&Bound<'_, PyAny>>,
        callbacks: Option<&Bound<'_, PyTuple>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyDatagramEndpoint>> {
        let address = (host, port);
        bind::connect_udp(py, &self.inner, address, local_addr, callbacks, options)
    }

    /// Starts the reactor thread (or threads, and the worker pool).
    fn start(&self) -> PyResult<()> {
        thread::start(&self.inner)
    }

    /// Asks the reactor to stop: stop accepting, flush every session and close it, abort
    /// what has not flushed after `timeout` seconds. Returns at once (`wait()` waits)
    /// with the timeout in seconds.
    fn stop(&self, timeout: &Bound<'_, PyAny>) -> PyResult<f64> {
        let timeout = convert::seconds(timeout, "timeout")?;
        if self.inner.is_forked_copy() {
            return Ok(timeout.as_secs_f64()); // nothing runs here to stop
        }
        let mut phase = lock(&self.inner.phase);
        match *phase {
            Phase::Created => {
                *phase = Phase::Stopped;
                // Never started: dropping the reactor closes its listeners (and removes
                // Unix socket files).
                for slot in &self.inner.reactors {
                    let reactor = lock(&slot.reactor).take();
                    if let Some(mut reactor) = reactor {
                        reactor.shutdown_unstarted();
                    }
                    slot.shared.update_status(|status| status.finished = true);
                }
            }
            Phase::Running | Phase::Stopped => {
                drop(phase);
                self.inner.request_stop(timeout);
            }
        }
        Ok(timeout.as_secs_f64())
    }

    /// Starts the loop without a thread of its own, for another event loop to drive:
    /// returns the epoll fd that loop waits on (readable: call `drive()`).
    fn start_driven(&self) -> PyResult<i32> {
        driven::start(&self.inner)
    }

    /// Serves what is ready, delivering the events to the handler on this thread; returns
    /// how many seconds may pass before the next call if the epoll fd stays quiet (None:
    /// until it is readable), or -1.0 once the reactor has finished: then stop waiting on
    /// the fd and call `finish_driven()`.
    fn drive(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let next = match driven::drive(py, &self.inner) {
            driven::Next::After(wait) => wait,
            driven::Next::Finished => Some(-1.0),
        };
        self.raise_failure()?;
        Ok(next)
    }

    /// Reports an exception that handler code raised where hamanet did not call it
    /// itself (an async callback's task): logged and counted in `handler_errors` as a
    /// callback's is. Aborting the session is the caller's part.
    #[pyo3(signature = (callback, session, exc))]
    fn report_handler_error(
        &self,
        py: Python<'_>,
        callback: &str,
        session: Option<u64>,
        exc: Bound<'_, PyAny>,
    ) {
        Report::new(py).handler_error(callback, session, exc);
        // Counted after it is reported: whoever sees the count can read the log line.
        self.inner.handler_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Winds a driven loop up once `drive()` said it finished: closes the reactor (and
    /// its epoll fd) and marks the loop finished.
    fn finish_driven(&self, py: Python<'_>) {
        driven::finish(py, &self.inner);
    }

    /// Waits up to `timeout` seconds for the reactor to finish; returns whether it has.
    /// Re-raises a `KeyboardInterrupt`/`SystemExit` that a handler raised.
    fn wait(&self, py: Python<'_>, timeout: &Bound<'_, PyAny>) -> PyResult<bool> {
        let timeout = convert::seconds(timeout, "timeout")?;
        let done = thread::join(py, &self.inner, timeout)?;
        self.raise_failure()?;
        Ok(done)
    }

    /// Waits up to `timeout` seconds until no session or endpoint is open (or the loop
    /// finished).
    /// Re-raises a `KeyboardInterrupt`/`SystemExit` that a handler raised.
    fn wait_idle(&self, py: Python<'_>, timeout: &Bound<'_, PyAny>) -> PyResult<bool> {
        let timeout = convert::seconds(timeout, "timeout")?;
        if self.inner.is_forked_copy() {
            return Ok(true);
        }
        let idle = self.inner.wait_until(py, timeout, |status| {
            (status.sessions == 0 && status.endpoints == 0) || status.finished
        })?;
        self.raise_failure()?;
        Ok(idle)
    }

    /// Connects to `host:port`, waiting up to `timeout` seconds; returns the `Session`.
    /// `callbacks`, if given, are the session's own handler's (else the loop's). With
    /// `tls` (a `TLSClientContext`) it also completes the TLS handshake, checking the
    /// certificate against `server_hostname` (by default `host`).
    #[pyo3(signature = (host, port, timeout, callbacks=None, tls=None, server_hostname=None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn connect(
        &self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        callbacks: Option<&Bound<'_, PyTuple>>,
        tls: Option<&Bound<'_, PyAny>>,
        server_hostname: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PySession>> {
        let remote = connect::Remote::from_python(host, port, timeout, (tls, server_hostname))?;
        connect::connect(py, &self.inner, remote, callbacks)
    }

    /// Starts connecting to `ip:port` and returns the `Session` at once; the reactor
    /// finishes the connect. `on_connect` follows when it completes; if it fails, times
    /// out or is cancelled by `close()`, `on_close` comes instead (with the error, or
    /// None). Never blocks, so it may be called from a callback. `callbacks`, if given,
    /// are the session's own handler's (else the loop's).
    #[pyo3(signature = (host, port, timeout, callbacks=None, tls=None, server_hostname=None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn connect_nowait(
        &self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        callbacks: Option<&Bound<'_, PyTuple>>,
        tls: Option<&Bound<'_, PyAny>>,
        server_hostname: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PySession>> {
        let remote = connect::Remote::from_python(host, port, timeout, (tls, server_hostname))?;
        connect::connect_nowait(py, &self.inner, remote, callbacks)
    }

    /// Connects to the Unix domain socket at `path`; returns the `Session`.
    #[pyo3(signature = (path, timeout, callbacks=None))]
    fn connect_unix(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        callbacks: Option<&Bound<'_, PyTuple>>,
    ) -> PyResult<Py<PySession>> {
        connect::connect_unix(py, &self.inner, path, timeout, callbacks)
    }

    /// Runs `callback(*args)` at `when` (`time.monotonic()` clock; `now` is the caller's
    /// reading of it), on the handler's thread; with a pool, in `session`'s order if
    /// given. Safe from any thread.
    #[pyo3(signature = (when, callback, args, now, session=None))]
    fn call_at(
        &self,
        when: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        now: f64,
        session: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyTimerHandle> {
        let when = convert::moment(when, "when")?;
        let session = session_core(session)?;
        schedule_at(&self.inner, when, now, (callback, args), session)
    }

    /// Runs `callback(*args)` after `delay` seconds (see `call_at`).
    #[pyo3(signature = (delay, callback, args, now, session=None))]
    fn call_later(
        &self,
        delay: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        now: f64,
        session: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyTimerHandle> {
        let delay = convert::seconds(delay, "delay")?;
        let session = session_core(session)?;
        let when = now + delay.as_secs_f64();
        schedule_at(&self.inner, when, now, (callback, args), session)
    }

    /// Runs `callback(*args)` in the next batch, waking the reactor if it waits (see
    /// `call_at`).
    #[pyo3(signature = (callback, args, now, session=None))]
    fn call_soon(
        &self,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        now: f64,
        session: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyTimerHandle> {
        let session = session_core(session)?;
        schedule(
            &self.inner,
            now,
            (callback, args),
            session,
            Command::CallSoon,
        )
    }

    /// Runs `function(*args)` on a worker of the pool and sets its result (or exception)
    /// on `future`, a `concurrent.futures.Future`.
    fn run_in_worker(
        &self,
        function: Py<PyAny>,
        args: Py<PyTuple>,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        self.inner.run_in_worker(function, args, future)
    }

    /// Scheduled callbacks that have not run and were not cancelled.
    #[getter]
    fn timers_pending(&self) -> usize {
        lock(&self.inner.timers).len()
    }

    /// Counters, cheap enough to read often.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats::loop_stats(py, &self.inner)
    }

    /// The callback the reactor thread is running now, as `(name, session_id, seconds)`
    /// (`session_id` 0 for a timer), or None between callbacks.
    fn busy_callback(&self) -> Option<(&'static str, u64, f64)> {
        self.inner.busy_callback()
    }

    /// Whether the caller runs this loop's handler code (on its reactor thread or one of
    /// its workers), where waiting for the loop to finish would wait forever.
    fn on_handler_thread(&self) -> bool {
        self.inner.on_handler_thread()
    }

    /// Sessions currently open.
    #[getter]
    fn session_count(&self) -> usize {
        if self.inner.is_forked_copy() {
            return 0;
        }
        self.inner.status().sessions
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
        self.inner.is_forked_copy() || self.inner.status().finished
    }

    /// In a forked child: releases this copy of the loop. Closes the child's copies of
    /// the sockets a running reactor held (or drops a reactor that never started), so the
    /// parent's connections and listeners are not kept alive by the child. Idempotent.
    fn forget_after_fork(&self) {
        self.inner.forget_after_fork();
    }
}

impl PyLoop {
    /// Raises, once, the `KeyboardInterrupt`/`SystemExit` a handler raised.
    fn raise_failure(&self) -> PyResult<()> {
        let failure = lock(&self.inner.failure).take();
        failure.map_or(Ok(()), Err)
    }
}

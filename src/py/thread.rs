//! The reactor thread's body: it turns the reactor detached, then hands each turn's events
//! to the handler, either calling it itself (attached, once per wakeup) or, with a worker
//! pool, queueing the events on the sessions' lanes without ever attaching.
//!
//! Without a pool the thread attaches to the interpreter once, for its whole life, and
//! detaches only around [`Reactor::turn`] (the wait and every socket syscall): creating a
//! thread state per wakeup would cost more than the callbacks themselves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyConnectionAbortedError, PyRuntimeError};
use pyo3::prelude::*;

use super::callbacks::Callback;
use super::dispatch::{Dispatcher, Notice};
use super::errors::{os_error, LifecycleError};
use super::inner::{LoopInner, Phase, ReactorSlot};
use super::pool::Pool;
use super::report::Report;
use super::sessions::{Entry, Known, TokenTable};
use super::view::keep_for;
use crate::reactor::{Event, Reactor};
use crate::shared::{lock, LoopShared};

/// Marks the loop finished when the reactor thread ends, however it ends (a panic
/// included), so `join()` returns and later calls are refused instead of waiting forever.
struct FinishOnExit(Arc<LoopShared>);

impl Drop for FinishOnExit {
    fn drop(&mut self) {
        drop(self.0.close_queue());
        self.0.update_status(|status| status.finished = true);
    }
}

/// Gives Python's view of this thread the same name as the OS's, so log records
/// (`%(threadName)s`) and `threading.current_thread()` say where handlers run.
pub(super) fn name_python_thread(py: Python<'_>, name: &str) {
    let named = py.import("threading").and_then(|threading| {
        threading
            .call_method0("current_thread")?
            .setattr("name", name)
    });
    if let Err(err) = named {
        err.print(py);
    }
}

/// Starts a reactor thread for each reactor (and the worker pool, if there is one).
pub(super) fn start(inner: &Arc<LoopInner>) -> PyResult<()> {
    let mut phase = inner.claim_start()?;
    if let Some(pool) = &inner.pool {
        pool.start(inner)
            .map_err(|e| os_error(&e, Some("starting the worker threads")))?;
    }
    inner
        .running_reactors
        .store(inner.reactors.len(), Ordering::Relaxed);
    for (index, slot) in inner.reactors.iter().enumerate() {
        let reactor = lock(&slot.reactor)
            .take()
            .ok_or_else(|| LifecycleError::new_err("the reactor is gone; create a new one"))?;
        let thread_inner = Arc::clone(inner);
        let name = match inner.reactors.len() {
            1 => "hamanet-reactor".to_owned(),
            _ => format!("hamanet-reactor-{index}"),
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(reactor, thread_inner, index))
            .map_err(|e| os_error(&e, Some("starting a reactor thread")))?;
        *lock(&slot.thread) = Some(handle);
    }
    *phase = Phase::Running;
    Ok(())
}

/// Waits up to `timeout` for the reactor threads to finish, then joins them; returns
/// whether they have.
pub(super) fn join(py: Python<'_>, inner: &LoopInner, timeout: Duration) -> PyResult<bool> {
    if inner.is_forked_copy() {
        return Ok(true); // nothing runs here to wait for
    }
    if inner.phase() == Phase::Created {
        return Err(LifecycleError::new_err("cannot wait: call start() first"));
    }
    let done = inner.wait_until(py, timeout, |status| status.finished)?;
    if done {
        // NOTE: never hold a lock across `detach`: a thread holding the GIL could
        // block on it while this one waits for the GIL, and both would hang.
        let handles: Vec<_> = (inner.reactors.iter())
            .filter_map(|slot| lock(&slot.thread).take())
            .collect();
        for handle in handles {
            // The thread has set `finished` as its last act; this join is immediate.
            if py.detach(|| handle.join()).is_err() {
                return Err(PyRuntimeError::new_err(
                    "the hamanet reactor thread panicked, and its sessions were dropped; \
                     this is a bug in hamanet, please report it with the panic message \
                     printed above",
                ));
            }
        }
    }
    Ok(done)
}

/// The body of the thread of reactor `index`.
pub(super) fn run(reactor: Reactor, inner: Arc<LoopInner>, index: usize) {
    let slot = &inner.reactors[index];
    let finish = FinishOnExit(Arc::clone(&slot.shared));
    let reactor = match &inner.pool {
        Some(pool) => run_with_pool(reactor, &inner, slot, pool),
        None => Python::attach(|py| run_attached(py, reactor, &inner, slot)),
    };
    // The last reactor thread to end finishes the loop: the pool's queued work, and the
    // `on_close` of client sessions that never opened.
    let last = inner.running_reactors.fetch_sub(1, Ordering::AcqRel) == 1;
    if last {
        if let Some(pool) = &inner.pool {
            pool.finish(reactor.stop_deadline().unwrap_or_else(Instant::now));
            pool.drop_leftovers();
        }
    }
    Python::attach(|py| {
        if last {
            close_never_opened(py, &inner);
            // Python objects are released attached, and outside the locks (freeing them
            // may run Python code that takes those locks).
            let timers = std::mem::take(&mut *lock(&inner.timers));
            drop(timers);
        }
        drop(reactor);
    });
    drop(finish);
}

/// Without a pool: the handler is called on this thread, a whole batch per attach.
fn run_attached(
    py: Python<'_>,
    mut reactor: Reactor,
    inner: &LoopInner,
    slot: &ReactorSlot,
) -> Reactor {
    if let Some(name) = std::thread::current().name() {
        name_python_thread(py, name);
    }
    let mut known = Known::default();
    let mut dispatcher = Dispatcher::new(py, inner, &slot.busy);
    loop {
        let (turned, turning) = py.detach(|| {
            let started = Instant::now();
            (reactor.turn(), started.elapsed())
        });
        let attached = Instant::now();
        if let Err(err) = turned {
            dispatcher.report.fatal(&err);
            reactor.abort_all(&err);
        }
        deliver(&mut dispatcher, &mut reactor, &mut known, inner);
        let attached = attached.elapsed();
        slot.times.add(
            turning.saturating_sub(reactor.last_wait()) + attached,
            attached,
        );
        if reactor.is_finished() {
            break;
        }
    }
    drop(known); // attached: the entries hold Python objects
    reactor
}

/// Hands one turn's events to the handler, attached, in order: what a reactor thread
/// without a pool does after each turn, and what a driven reactor does after each
/// `drive()`.
pub(super) fn deliver(
    dispatcher: &mut Dispatcher<'_, '_>,
    reactor: &mut Reactor,
    known: &mut Known,
    inner: &LoopInner,
) {
    let entries = &mut known.sessions;
    // Read after the wait, so a handler swapped while the reactor slept is the one
    // that gets this wakeup's events.
    let callbacks = Arc::clone(&lock(&inner.callbacks));
    reactor.set_notify_drained(callbacks[Callback::OnSend].is_some());
    let mut batch = reactor.take_batch();
    for event in batch.drain(..) {
        match event {
            Event::Opened { token, session } => {
                if let Some(entry) = dispatcher.open(&session) {
                    dispatcher.connected(entries.insert(token, entry), &callbacks);
                }
            }
            Event::Received { token, range } => {
                if let Some(entry) = entries.get(token) {
                    let data = reactor.received(range);
                    dispatcher.notify(entry, &callbacks, Notice::Received(data));
                }
            }
            Event::Closed { token, error } => {
                if let Some(mut entry) = entries.remove(token) {
                    dispatcher.notify(&mut entry, &callbacks, Notice::Closed(error.as_ref()));
                }
                reactor.shared().session_closed();
            }
            Event::ConnectFailed { session, error } => {
                let reason = dispatcher.connect_error(error.as_ref());
                dispatcher.connect_failed(&session, reason, &callbacks);
                reactor.shared().session_closed();
            }
            Event::Timer { id } => dispatcher.timer(id),
            // Nothing was held back: this thread delivers input only while reading.
            Event::ReadingResumed { .. } => {}
            // Only with a pool (`StopCloses::Handler`).
            Event::Stopping { .. } => {}
            Event::AcceptPaused { error } => dispatcher.accept_paused(&error),
            Event::ProxyRefused {
                peer,
                error,
                unreported,
            } => dispatcher.proxy_refused(&peer, &error, unreported),
            Event::EndpointOpened { token, endpoint } => {
                if let Some(entry) = dispatcher.endpoint_opened(&endpoint) {
                    known.endpoints.insert(token, entry);
                }
            }
            Event::Datagrams { token, datagrams } => {
                if let Some(entry) = known.endpoints.get(token) {
                    let (bytes, items) = reactor.datagrams(datagrams);
                    dispatcher.datagrams(entry, &callbacks, bytes, items);
                }
            }
            Event::DatagramFailed { token, failure } => {
                if let Some(entry) = known.endpoints.get(token) {
                    dispatcher.datagram_failed(entry, &callbacks, &failure);
                }
            }
            Event::EndpointClosed { token, error } => {
                if let Some(mut entry) = known.endpoints.remove(token) {
                    dispatcher.endpoint_closed(&mut entry, &callbacks, error.as_ref());
                }
                reactor.shared().endpoint_closed();
            }
            // Only with a pool (`StopCloses::Handler`).
            Event::EndpointStopping { .. } => {}
            Event::Eof { token } => notify(dispatcher, entries, token, &callbacks, Notice::Eof),
            Event::Drained { token } => {
                notify(dispatcher, entries, token, &callbacks, Notice::Drained)
            }
            Event::PauseWriting { token } => {
                notify(dispatcher, entries, token, &callbacks, Notice::PauseWriting)
            }
            Event::ResumeWriting { token } => notify(
                dispatcher,
                entries,
                token,
                &callbacks,
                Notice::ResumeWriting,
            ),
        }
        if inner.is_forked_copy() {
            dispatcher.end_forked_child();
        }
    }
    let outlived = dispatcher.take_outlived();
    if !outlived.is_empty() {
        // A handler kept a view into this turn's reads: the read memory goes with it.
        keep_for(outlived, reactor.take_received_memory());
    }
    reactor.recycle_batch(batch);
}

fn notify(
    dispatcher: &mut Dispatcher<'_, '_>,
    entries: &mut TokenTable<Entry>,
    token: crate::sys::epoll::Token,
    callbacks: &super::callbacks::Callbacks,
    notice: Notice<'_>,
) {
    if let Some(entry) = entries.get(token) {
        dispatcher.notify(entry, callbacks, notice);
    }
}

/// With a pool: this thread only turns the reactor and queues each turn's events on the
/// lanes; it never attaches (so never waits for the GIL a handler holds) until the end.
fn run_with_pool(
    mut reactor: Reactor,
    inner: &LoopInner,
    slot: &ReactorSlot,
    pool: &Pool,
) -> Reactor {
    let mut lanes = TokenTable::default();
    loop {
        let started = Instant::now();
        if let Err(err) = reactor.turn() {
            Python::attach(|py| Report::new(py).fatal(&err));
            reactor.abort_all(&err);
        }
        let on_send = lock(&inner.callbacks)[Callback::OnSend].is_some();
        reactor.set_notify_drained(on_send);
        let mut batch = reactor.take_batch();
        pool.distribute(&reactor, &mut batch, &mut lanes, inner);
        reactor.recycle_batch(batch);
        let busy = started.elapsed().saturating_sub(reactor.last_wait());
        slot.times.add(busy, Duration::ZERO);
        if reactor.is_finished() {
            break;
        }
    }
    // Every session of this reactor has closed, so its lanes are gone from the table.
    drop(lanes);
    reactor
}

/// A client session whose registration the stop overtook was never opened; its user
/// still holds it and gets the one `on_close` every session gets. So does a datagram
/// endpoint (its `on_datagram_close(endpoint, None)`: the stop closed it).
pub(super) fn close_never_opened(py: Python<'_>, inner: &LoopInner) {
    let never_opened = std::mem::take(&mut *lock(&inner.pending));
    let never_bound = std::mem::take(&mut *lock(&inner.pending_endpoints));
    let callbacks = Arc::clone(&lock(&inner.callbacks));
    for (endpoint, own) in never_bound.into_values() {
        let callbacks = own.as_deref().unwrap_or(&callbacks);
        if let Some(callback) = &callbacks[Callback::OnDatagramClose] {
            if let Err(err) = callback.call1(py, (endpoint, py.None())) {
                err.print(py);
            }
        }
    }
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
}

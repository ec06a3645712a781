//! What a `Loop` and its reactor thread share: the loop's phase, its handler's callbacks,
//! the sessions a connect call returned before they opened, scheduled callbacks, framing,
//! and the handler errors to report. The `Loop` class and the thread both depend on this
//! module; it depends on neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::callbacks::{Busy, Callbacks};
use super::errors::LifecycleError;
use super::pool::Pool;
use super::sessions::{PendingEndpoint, PendingSession};
use crate::framing::Framer;
use crate::reactor::{LoopConfig, Reactor};
use crate::shared::{lock, Command, LoopShared, LoopStatus};

/// How long a blocking wait runs before it returns to Python so Ctrl-C is seen promptly.
pub(super) const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// A timer's callback and its positional arguments.
pub(super) type ScheduledCall = (Py<PyAny>, Py<PyTuple>);

/// Where the loop is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    Created,
    Running,
    Stopped,
}

/// One reactor of a loop (`reactors=N` makes N), and its thread.
pub(super) struct ReactorSlot {
    /// What the reactor shares with other threads.
    pub(super) shared: Arc<LoopShared>,
    /// The reactor until `start()` moves it to its thread.
    pub(super) reactor: Mutex<Option<Reactor>>,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// The callback its thread is running, if any (without a worker pool).
    pub(super) busy: Busy,
    /// Where its thread's time goes, for the serial fraction.
    pub(super) times: TurnTimes,
}

impl ReactorSlot {
    pub(super) fn new(reactor: Reactor) -> ReactorSlot {
        ReactorSlot {
            shared: Arc::clone(reactor.shared()),
            reactor: Mutex::new(Some(reactor)),
            thread: Mutex::new(None),
            busy: Busy::new(),
            times: TurnTimes::default(),
        }
    }
}

/// A reactor thread's time: busy (turning the reactor, outside `epoll_wait`, and calling
/// the handler) and, of that, attached to the interpreter (holding the GIL on a GIL
/// build). Their ratio is the serial fraction that bounds what more reactors can gain.
#[derive(Default)]
pub(super) struct TurnTimes {
    busy_ns: AtomicU64,
    attached_ns: AtomicU64,
}

impl TurnTimes {
    /// Adds one wakeup's busy time, of which `attached` was spent attached.
    pub(super) fn add(&self, busy: Duration, attached: Duration) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(nanos(busy), Ordering::Relaxed);
        self.attached_ns
            .fetch_add(nanos(attached), Ordering::Relaxed);
    }

    /// `(busy, attached)` in nanoseconds since the reactor started.
    pub(super) fn read(&self) -> (u64, u64) {
        (
            self.busy_ns.load(Ordering::Relaxed),
            self.attached_ns.load(Ordering::Relaxed),
        )
    }
}

/// Everything the Python-facing object and the reactor threads share.
pub(super) struct LoopInner {
    /// At least one.
    pub(super) reactors: Vec<ReactorSlot>,
    /// The reactor the next client session goes to (round robin).
    pub(super) next_reactor: AtomicUsize,
    /// Reactor threads still running: the last one to end finishes the loop.
    pub(super) running_reactors: AtomicUsize,
    pub(super) config: LoopConfig,
    pub(super) phase: Mutex<Phase>,

    pub(super) callbacks: Mutex<Arc<Callbacks>>,
    /// Client sessions whose Python object exists (returned by `connect`) but whose
    /// `Opened` event has not been delivered yet.
    pub(super) pending: Mutex<HashMap<u64, PendingSession>>,
    /// Datagram endpoints whose Python object exists (returned by `open_udp`) but whose
    /// registration has not been delivered yet.
    pub(super) pending_endpoints: Mutex<HashMap<u64, PendingEndpoint>>,
    /// Scheduled callbacks and their arguments, by timer id.
    pub(super) timers: Mutex<HashMap<u64, ScheduledCall>>,
    pub(super) next_timer: AtomicU64,
    /// How sessions' streams are cut into messages, if they are.
    pub(super) framer: Option<Arc<Framer>>,
    /// Exceptions raised by handler code (callbacks and timers).
    pub(super) handler_errors: AtomicU64,
    /// `KeyboardInterrupt`/`SystemExit` raised by a handler, re-raised by `wait()`.
    pub(super) failure: Mutex<Option<PyErr>>,
    /// The worker pool that runs the handler, if the loop has one (`workers=N`).
    pub(super) pool: Option<Arc<Pool>>,
    /// The reactor and its sessions between two `drive()` calls, for a loop driven by
    /// another event loop (`start_driven()`); None otherwise, and during a drive.
    pub(super) driven: Mutex<Option<super::driven::Driven>>,
}

impl LoopInner {
    /// The first reactor: where timers not bound to a session go, and what a forked child
    /// checks (all of a loop's reactors are born in the same process).
    pub(super) fn first(&self) -> &ReactorSlot {
        &self.reactors[0]
    }

    /// The reactor for a new client session: each in turn.
    pub(super) fn pick_reactor(&self) -> &ReactorSlot {
        let next = self.next_reactor.fetch_add(1, Ordering::Relaxed);
        &self.reactors[next % self.reactors.len()]
    }

    /// Whether this is a forked child's dead copy of the loop (one atomic load, no lock).
    pub(super) fn is_forked_copy(&self) -> bool {
        self.first().shared.is_forked_copy()
    }

    pub(super) fn phase(&self) -> Phase {
        if self.is_forked_copy() {
            // Without touching the lock, which the fork may have caught held.
            return Phase::Stopped;
        }
        *lock(&self.phase)
    }

    /// Marks the loop stopped and asks every reactor to stop within `timeout`. Stopping
    /// already, a second request can shorten the deadline (never extend it).
    pub(super) fn request_stop(&self, timeout: Duration) {
        *lock(&self.phase) = Phase::Stopped;
        let deadline = Instant::now() + timeout;
        for slot in &self.reactors {
            slot.shared.submit(Command::Stop(deadline));
        }
    }

    /// The phase, locked, for `start()` to move to `Running`: refused unless the loop
    /// is freshly made (started already, stopped, or a forked child's copy).
    pub(super) fn claim_start(&self) -> PyResult<MutexGuard<'_, Phase>> {
        self.check_not_forked("start()")?;
        let phase = lock(&self.phase);
        match *phase {
            Phase::Created => Ok(phase),
            Phase::Running => Err(LifecycleError::new_err(
                "start() was already called; it runs until stop()",
            )),
            Phase::Stopped => Err(LifecycleError::new_err(
                "cannot start(): it was stopped; create a new one to run again",
            )),
        }
    }

    /// Refuses use of a forked child's copy of this loop.
    pub(super) fn check_not_forked(&self, what: &str) -> PyResult<()> {
        if self.is_forked_copy() {
            return Err(LifecycleError::new_err(format!(
                "cannot {what}: this server or client belongs to the process this one was \
                 forked from (its reactor thread does not survive fork()); create a new \
                 one in the child"
            )));
        }
        Ok(())
    }

    pub(super) fn on_reactor_thread(&self) -> bool {
        self.reactors
            .iter()
            .any(|slot| slot.shared.is_turned_by_this_thread())
    }

    /// Whether the caller runs handler code of this loop: on one of its reactor threads,
    /// or on a worker of its pool. Such a caller must not wait for the loop to finish.
    pub(super) fn on_handler_thread(&self) -> bool {
        self.on_reactor_thread()
            || self
                .pool
                .as_ref()
                .is_some_and(|pool| pool.is_worker_thread())
    }

    pub(super) fn check_running(&self, what: &str) -> PyResult<()> {
        self.check_not_forked(what)?;
        match self.phase() {
            Phase::Stopped => Err(LifecycleError::new_err(format!(
                "cannot {what}: it was stopped; create a new one"
            ))),
            _ => Ok(()),
        }
    }

    /// The status of the whole loop: sessions open on every reactor, and whether every
    /// reactor has finished.
    pub(super) fn status(&self) -> LoopStatus {
        let mut total = LoopStatus {
            sessions: 0,
            endpoints: 0,
            finished: true,
        };
        for slot in &self.reactors {
            let status = slot.shared.status();
            total.sessions += status.sessions;
            total.endpoints += status.endpoints;
            total.finished &= status.finished;
        }
        total
    }

    /// Waits up to `timeout` until `done(status)` holds for every reactor; returns
    /// whether it came true.
    pub(super) fn wait_until(
        &self,
        py: Python<'_>,
        timeout: Duration,
        done: impl Fn(&LoopStatus) -> bool + Sync,
    ) -> PyResult<bool> {
        let deadline = Instant::now() + timeout;
        wait_in_slices(
            py,
            deadline,
            |slice| {
                // Reactors already done return at once; one not done takes the slice.
                let end = Instant::now() + slice;
                Ok(self.reactors.iter().all(|slot| {
                    let left = end.saturating_duration_since(Instant::now());
                    slot.shared.wait_for(left, &done)
                }))
            },
            |py| py.check_signals(),
        )
    }

    /// The garbage collector's visit of what the loop holds: the callbacks and the
    /// scheduled calls. `try_lock`: the collector must not block; a lock held right now
    /// belongs to a thread that is using the loop, which is then not garbage anyway.
    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(callbacks) = self.callbacks.try_lock() {
            callbacks.traverse(visit)?;
        }
        if let Ok(timers) = self.timers.try_lock() {
            for (callback, args) in timers.values() {
                visit.call(callback)?;
                visit.call(args)?;
            }
        }
        Ok(())
    }

    /// Drops the callbacks and scheduled calls (the collector breaking a cycle). Taken
    /// out under the locks, freed after them: freeing may run Python code.
    pub(super) fn clear(&self) {
        let callbacks = std::mem::replace(&mut *lock(&self.callbacks), Arc::new(Callbacks::none()));
        let timers = std::mem::take(&mut *lock(&self.timers));
        drop((callbacks, timers));
    }

    /// The callback that has been running longest now, on a reactor thread or a worker,
    /// as `(name, session_id, seconds)` (`session_id` 0 for a timer), or None.
    pub(super) fn busy_callback(&self) -> Option<(&'static str, u64, f64)> {
        let workers = self.pool.as_ref().and_then(|pool| pool.longest_busy());
        let reactors = self.reactors.iter().filter_map(|slot| slot.busy.current());
        let (name, session, running) = reactors
            .chain(workers)
            .max_by_key(|(_, _, running)| *running)?;
        Some((name, session, running.as_secs_f64()))
    }

    /// In a forked child: releases this copy of the loop. Closes the child's copies of
    /// the sockets a running reactor held (or drops a reactor that never started), so the
    /// parent's connections and listeners are not kept alive by the child. Idempotent.
    pub(super) fn forget_after_fork(&self) {
        if !self.is_forked_copy() {
            return;
        }
        for slot in &self.reactors {
            // try_lock: a lock the fork caught held stays held; then nothing is dropped.
            let unstarted = slot.reactor.try_lock().ok().and_then(|mut r| r.take());
            match unstarted {
                Some(reactor) => drop(reactor),
                None => slot.shared.close_fork_copies(),
            }
        }
    }

    /// Hands `function(*args)` to the worker pool, whose worker sets its result (or
    /// exception) on `future`.
    pub(super) fn run_in_worker(
        &self,
        function: Py<PyAny>,
        args: Py<PyTuple>,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let Some(pool) = &self.pool else {
            return Err(LifecycleError::new_err(
                "run_in_worker() needs a worker pool: create the Server or Client with \
                 workers=N (N >= 1)",
            ));
        };
        self.check_running("run_in_worker()")?;
        pool.submit_job(function, args, future);
        Ok(())
    }
}

/// Waits until `ready(slice)` says so or `deadline` passes, detached in slices of at most
/// [`SIGNAL_SLICE`] so that Ctrl-C (and whatever else `between` checks) is seen promptly.
/// Returns whether it became ready. The one place a Python-facing call waits.
pub(super) fn wait_in_slices<E>(
    py: Python<'_>,
    deadline: Instant,
    mut ready: impl FnMut(Duration) -> Result<bool, E> + Send,
    mut between: impl FnMut(Python<'_>) -> Result<(), E>,
) -> Result<bool, E>
where
    E: Send,
{
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(SIGNAL_SLICE);
        if py.detach(|| ready(slice))? {
            return Ok(true);
        }
        between(py)?;
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

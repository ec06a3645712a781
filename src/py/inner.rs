//! What a `Loop` and its reactor thread share: the loop's phase, its handler's callbacks,
//! the sessions a connect call returned before they opened, scheduled callbacks, framing,
//! and the handler errors to report. The `Loop` class and the thread both depend on this
//! module; it depends on neither.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::callbacks::{Busy, Callbacks};
use super::errors::LifecycleError;
use super::pool::Pool;
use super::sessions::PendingSession;
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

/// Everything the Python-facing object and the reactor thread share.
pub(super) struct LoopInner {
    pub(super) shared: Arc<LoopShared>,
    pub(super) config: LoopConfig,
    pub(super) phase: Mutex<Phase>,
    pub(super) reactor: Mutex<Option<Reactor>>,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,

    pub(super) callbacks: Mutex<Arc<Callbacks>>,
    /// Client sessions whose Python object exists (returned by `connect`) but whose
    /// `Opened` event has not been delivered yet.
    pub(super) pending: Mutex<HashMap<u64, PendingSession>>,
    /// Scheduled callbacks and their arguments, by timer id.
    pub(super) timers: Mutex<HashMap<u64, ScheduledCall>>,
    pub(super) next_timer: AtomicU64,
    /// How sessions' streams are cut into messages, if they are.
    pub(super) framer: Option<Arc<Framer>>,
    /// Exceptions raised by handler code (callbacks and timers).
    pub(super) handler_errors: AtomicU64,
    /// `KeyboardInterrupt`/`SystemExit` raised by a handler, re-raised by `wait()`.
    pub(super) failure: Mutex<Option<PyErr>>,
    /// The callback the reactor thread is running, if any.
    pub(super) busy: Busy,
    /// The worker pool that runs the handler, if the loop has one (`workers=N`).
    pub(super) pool: Option<Arc<Pool>>,
}

impl LoopInner {
    pub(super) fn phase(&self) -> Phase {
        if self.shared.is_forked_copy() {
            // Without touching the lock, which the fork may have caught held.
            return Phase::Stopped;
        }
        *lock(&self.phase)
    }

    /// Marks the loop stopped and asks the reactor to stop within `timeout`. Stopping
    /// already, a second request can shorten the deadline (never extend it).
    pub(super) fn request_stop(&self, timeout: Duration) {
        *lock(&self.phase) = Phase::Stopped;
        self.shared.submit(Command::Stop(Instant::now() + timeout));
    }

    /// Refuses use of a forked child's copy of this loop.
    pub(super) fn check_not_forked(&self, what: &str) -> PyResult<()> {
        if self.shared.is_forked_copy() {
            return Err(LifecycleError::new_err(format!(
                "cannot {what}: this server or client belongs to the process this one was \
                 forked from (its reactor thread does not survive fork()); create a new \
                 one in the child"
            )));
        }
        Ok(())
    }

    pub(super) fn on_reactor_thread(&self) -> bool {
        self.shared.is_turned_by_this_thread()
    }

    /// Whether the caller runs handler code of this loop: on its reactor thread, or on a
    /// worker of its pool. Such a caller must not wait for the loop to finish.
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

    /// Waits up to `timeout` until `done(status)`; returns whether it came true.
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
            |slice| Ok(self.shared.wait_for(slice, &done)),
            |py| py.check_signals(),
        )
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

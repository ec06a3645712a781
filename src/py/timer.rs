//! Scheduled callbacks: `call_at`, `call_later` and `call_soon_threadsafe` queue one, and
//! a [`PyTimerHandle`] cancels it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;

use super::convert::capped_duration;
use super::errors::LifecycleError;
use super::inner::{LoopInner, ScheduledCall};
use super::session::PySession;
use crate::shared::{lock, Command, SessionCore};
use pyo3::exceptions::PyTypeError;

/// A scheduled callback; `cancel()` it to keep it from running.
#[pyclass(module = "hamanet", name = "TimerHandle", frozen)]
pub struct PyTimerHandle {
    id: u64,
    when: f64,
    inner: Arc<LoopInner>,
}

#[pymethods]
impl PyTimerHandle {
    /// Keeps the callback from running, if it has not run yet. Safe from any thread.
    fn cancel(&self) {
        // Taken out before anything else happens: freeing the callable may run Python
        // code, which must not find the timers lock held.
        let entry = lock(&self.inner.timers).remove(&self.id);
        if entry.is_some() {
            // Whichever reactor holds it forgets it; the others have nothing to forget.
            for slot in &self.inner.reactors {
                slot.shared.submit(Command::CancelTimer(self.id));
            }
            if let Some(pool) = &self.inner.pool {
                pool.unbind_timer(self.id);
            }
        }
        drop(entry);
    }

    /// True until the callback has run or been cancelled.
    fn pending(&self) -> bool {
        lock(&self.inner.timers).contains_key(&self.id)
    }

    /// When it is (or was) due, on the `time.monotonic()` clock.
    fn when(&self) -> f64 {
        self.when
    }

    fn __repr__(&self) -> String {
        let state = if self.pending() { "pending" } else { "done" };
        format!("<hamanet.TimerHandle when={:.3} {state}>", self.when)
    }
}

/// Queues `callback(*args)` for the reactor thread under a new timer id, with the
/// command `command(id)` that says when it runs.
pub(super) fn schedule(
    inner: &Arc<LoopInner>,
    when: f64,
    (callback, args): ScheduledCall,
    session: Option<Arc<SessionCore>>,
    command: impl FnOnce(u64) -> Command,
) -> PyResult<PyTimerHandle> {
    inner.check_running("schedule a callback")?;
    let id = inner.next_timer.fetch_add(1, Ordering::Relaxed);
    lock(&inner.timers).insert(id, (callback, args));
    if let (Some(pool), Some(session)) = (&inner.pool, &session) {
        // Bound before the reactor can report it due.
        pool.bind_timer(id, session.token());
    }
    // A session's timer runs on its reactor (in its order); the others on the first.
    let reactor = session
        .as_ref()
        .map_or(&inner.first().shared, |s| s.shared());
    if !reactor.submit(command(id)) {
        lock(&inner.timers).remove(&id);
        return Err(LifecycleError::new_err(
            "cannot schedule a callback: it has stopped",
        ));
    }
    Ok(PyTimerHandle {
        id,
        when,
        inner: Arc::clone(inner),
    })
}

/// Schedules `callback(*args)` at `when`, given that it is `now` (both on the
/// `time.monotonic()` clock).
pub(super) fn schedule_at(
    inner: &Arc<LoopInner>,
    when: f64,
    now: f64,
    call: ScheduledCall,
    session: Option<Arc<SessionCore>>,
) -> PyResult<PyTimerHandle> {
    let start = Instant::now();
    // A `when` in the past stays in the past, so past timers still run in `when` order.
    let at = if when >= now {
        start + capped_duration(when - now)
    } else {
        start
            .checked_sub(capped_duration(now - when))
            .unwrap_or(start)
    };
    schedule(inner, when, call, session, |id| Command::Timer(id, at))
}

/// The session a scheduled callback must keep order with (`session=`), if given: its
/// reactor runs the callback, and with a worker pool its lane.
pub(super) fn session_core(
    session: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Arc<SessionCore>>> {
    let Some(session) = session.filter(|session| !session.is_none()) else {
        return Ok(None);
    };
    let session = session.cast::<PySession>().map_err(|_| {
        PyTypeError::new_err(format!(
            "session must be a hamanet.Session (whose callbacks this one keeps order with), \
             not '{}'",
            session
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    Ok(Some(Arc::clone(session.get().core())))
}

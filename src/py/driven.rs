//! A reactor driven by another event loop (asyncio's, for `hamanet.aio`): no thread of
//! its own. The outer loop waits on the reactor's epoll fd (readable whenever the reactor
//! has readiness to serve, its waker included) and calls `drive()`, which turns the
//! reactor without waiting and delivers the batch on the calling thread, attached, as a
//! reactor thread would; `drive()` then says when to call again if nothing becomes
//! readable (a timer, a deadline, work cut short by a budget).

use std::sync::atomic::Ordering;
use std::time::Instant;

use pyo3::prelude::*;

use super::dispatch::Dispatcher;
use super::errors::LifecycleError;
use super::inner::{LoopInner, Phase};
use super::sessions::Known;
use super::thread::{close_never_opened, deliver};
use crate::reactor::Reactor;
use crate::shared::lock;

/// The reactor of a driven loop and the Python side of its sessions, between drives.
pub(super) struct Driven {
    reactor: Reactor,
    known: Known,
}

/// Starts the loop without a thread; returns the epoll fd to wait on.
pub(super) fn start(inner: &LoopInner) -> PyResult<i32> {
    if inner.reactors.len() != 1 || inner.pool.is_some() {
        return Err(LifecycleError::new_err(
            "a loop driven by asyncio runs one reactor and no worker pool: its handlers \
             run on the asyncio thread (use reactors=1, workers=0)",
        ));
    }
    let mut phase = inner.claim_start()?;
    let slot = &inner.reactors[0];
    let reactor = lock(&slot.reactor)
        .take()
        .ok_or_else(|| LifecycleError::new_err("the reactor is gone; create a new one"))?;
    let fd = reactor.epoll_fd();
    inner.running_reactors.store(1, Ordering::Relaxed);
    *lock(&inner.driven) = Some(Driven {
        reactor,
        known: Known::default(),
    });
    *phase = Phase::Running;
    Ok(fd)
}

/// What a drive says to the outer loop.
pub(super) enum Next {
    /// Call again when the epoll fd is readable, or after this many seconds.
    After(Option<f64>),
    /// The reactor has finished: stop waiting on its fd, then call `finish_driven()`
    /// (which closes the fd: a loop must not be left watching a closed number).
    Finished,
}

/// One driven turn and its delivery. A call made from inside a callback of this very
/// delivery does nothing (`After(None)`: the drive in progress decides).
pub(super) fn drive(py: Python<'_>, inner: &LoopInner) -> Next {
    let Some(mut driven) = lock(&inner.driven).take() else {
        return Next::After(None);
    };
    let slot = &inner.reactors[0];
    let mut dispatcher = Dispatcher::new(py, inner, &slot.busy);
    let started = Instant::now();
    if let Err(err) = driven.reactor.turn_now() {
        dispatcher.report.fatal(&err);
        driven.reactor.abort_all(&err);
    }
    deliver(
        &mut dispatcher,
        &mut driven.reactor,
        &mut driven.known,
        inner,
    );
    let busy = started.elapsed();
    slot.times.add(busy, busy);
    let finished = driven.reactor.is_finished();
    let next = if finished {
        driven.reactor.shared().leave_reactor_thread();
        Next::Finished
    } else {
        Next::After(driven.reactor.park().map(|wait| wait.as_secs_f64()))
    };
    *lock(&inner.driven) = Some(driven);
    next
}

/// After `Next::Finished`, what a reactor thread does when it ends: the `on_close` of
/// client sessions that never opened, the timers dropped, the reactor (and its epoll fd)
/// closed, the loop marked finished.
pub(super) fn finish(py: Python<'_>, inner: &LoopInner) {
    let driven = lock(&inner.driven).take();
    let Some(Driven { reactor, known }) = driven else {
        return;
    };
    drop(known); // attached: the entries hold Python objects
    inner.running_reactors.store(0, Ordering::Relaxed);
    close_never_opened(py, inner);
    let timers = std::mem::take(&mut *lock(&inner.timers));
    drop(timers);
    let shared = std::sync::Arc::clone(reactor.shared());
    drop(reactor);
    drop(shared.close_queue());
    shared.update_status(|status| status.finished = true);
}

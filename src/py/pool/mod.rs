//! The worker pool (`workers=N`): handler callbacks run on N threads instead of the
//! reactor's, and the reactor thread never waits for them (in this mode it never even
//! attaches to the interpreter while it runs).
//!
//! Each session has a **lane**: its work, in the order the reactor produced it. A lane is
//! run by one worker at a time, so a session's callbacks never overlap and never reorder;
//! different lanes run in parallel wherever the GIL is released (or always, on a
//! free-threaded build). Received bytes queued in a lane are bounded: past the backlog the
//! reactor stops reading that session until its handler catches up, so TCP pushes back on
//! the peer and nothing is dropped. Timers run on one loop lane (in order), or on a
//! session's lane when scheduled with `session=`; each `run_in_worker` job has a lane of
//! its own.

mod distribute;
mod lane;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::callbacks::Busy;
use super::inner::LoopInner;
use crate::shared::lock;
use crate::sys::epoll::Token;
use lane::Lane;
use lane::{Queue, Work};

/// Lanes waiting for a worker.
#[derive(Default)]
struct Ready {
    lanes: VecDeque<Arc<Lane>>,
    /// No more work will come: workers exit once the queue is empty.
    closing: bool,
}

/// The pool: its threads, the lanes ready to run, and its counters.
pub(super) struct Pool {
    ready: Mutex<Ready>,
    ready_changed: Condvar,
    /// Signalled when the pool runs out of work, for `finish`.
    idle_changed: Condvar,
    /// One per worker: what it runs now, for `stop()`'s report of a callback that does
    /// not return.
    pub(super) busy: Vec<Busy>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The workers' thread ids, set once when they start.
    thread_ids: std::sync::OnceLock<Vec<std::thread::ThreadId>>,
    /// Received bytes a session may have queued before its reading is held.
    backlog: usize,
    /// The loop's lane: timers without a session, reports.
    loop_lane: Arc<Lane>,
    /// Timers scheduled with `session=`: their session's token.
    timer_sessions: Mutex<HashMap<u64, Token>>,
    /// Past the stop deadline: only what every session is owed still runs.
    discarding: AtomicBool,
    /// Emptied received-bytes buffers, for the reactor threads to fill again.
    spare: Mutex<Vec<Vec<u8>>>,
    queued: AtomicUsize,
    busy_workers: AtomicUsize,
    longest_wait_ns: AtomicU64,
}

/// The pool's counters, for `stats()`.
pub(super) struct PoolStats {
    pub(super) workers: usize,
    pub(super) queued: usize,
    pub(super) busy: usize,
    pub(super) longest_wait: Duration,
}

impl Pool {
    /// A pool of `workers` threads (started by [`Pool::start`]); a session's reading is
    /// held while more than `backlog` received bytes wait for its handler.
    pub(super) fn new(workers: usize, backlog: usize) -> Pool {
        Pool {
            ready: Mutex::new(Ready::default()),
            ready_changed: Condvar::new(),
            idle_changed: Condvar::new(),
            busy: (0..workers).map(|_| Busy::new()).collect(),
            threads: Mutex::new(Vec::new()),
            thread_ids: std::sync::OnceLock::new(),
            backlog,
            loop_lane: Lane::new(None),
            timer_sessions: Mutex::new(HashMap::new()),
            discarding: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
            queued: AtomicUsize::new(0),
            busy_workers: AtomicUsize::new(0),
            longest_wait_ns: AtomicU64::new(0),
        }
    }

    /// Starts the worker threads.
    pub(super) fn start(self: &Arc<Self>, inner: &Arc<LoopInner>) -> io::Result<()> {
        let mut threads = lock(&self.threads);
        for index in 0..self.busy.len() {
            let (pool, inner) = (Arc::clone(self), Arc::clone(inner));
            let handle = std::thread::Builder::new()
                .name(format!("hamanet-worker-{index}"))
                .spawn(move || worker::work(&pool, &inner, index))?;
            threads.push(handle);
        }
        let _ = self
            .thread_ids
            .set(threads.iter().map(|t| t.thread().id()).collect());
        Ok(())
    }

    /// Whether the caller is one of the workers.
    pub(super) fn is_worker_thread(&self) -> bool {
        let me = std::thread::current().id();
        self.thread_ids.get().is_some_and(|ids| ids.contains(&me))
    }

    /// The longest-running callback of any worker: its name, session id and duration.
    pub(super) fn longest_busy(&self) -> Option<(&'static str, u64, Duration)> {
        self.busy
            .iter()
            .filter_map(Busy::current)
            .max_by_key(|(_, _, running)| *running)
    }

    /// The counters.
    pub(super) fn stats(&self) -> PoolStats {
        PoolStats {
            workers: self.busy.len(),
            queued: self.queued.load(Ordering::Relaxed),
            busy: self.busy_workers.load(Ordering::Relaxed),
            longest_wait: Duration::from_nanos(self.longest_wait_ns.load(Ordering::Relaxed)),
        }
    }

    /// Runs timer `id` on the lane of the session of `token` (not the loop's).
    pub(super) fn bind_timer(&self, id: u64, token: Token) {
        lock(&self.timer_sessions).insert(id, token);
    }

    /// Forgets the session of a cancelled timer.
    pub(super) fn unbind_timer(&self, id: u64) {
        lock(&self.timer_sessions).remove(&id);
    }

    /// Queues `function(*args)` on a lane of its own; its outcome goes to `future`.
    pub(super) fn submit_job(&self, function: Py<PyAny>, args: Py<PyTuple>, future: Py<PyAny>) {
        let job = Work::Job {
            function,
            args,
            future,
        };
        self.push(&Lane::new(None), job);
    }

    fn schedule(&self, lane: &Arc<Lane>, mut queue: std::sync::MutexGuard<'_, Queue>) {
        if queue.scheduled {
            return;
        }
        queue.scheduled = true;
        queue.since = Some(Instant::now());
        drop(queue);
        lock(&self.ready).lanes.push_back(Arc::clone(lane));
        self.ready_changed.notify_one();
    }

    /// The next lane to run; None once the pool is closing and nothing is left.
    fn next_lane(&self) -> Option<Arc<Lane>> {
        let mut ready = lock(&self.ready);
        loop {
            if let Some(lane) = ready.lanes.pop_front() {
                self.busy_workers.fetch_add(1, Ordering::Relaxed);
                let since = lock(&lane.queue).since;
                if let Some(since) = since {
                    let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.longest_wait_ns.fetch_max(waited, Ordering::Relaxed);
                }
                return Some(lane);
            }
            if ready.closing {
                return None;
            }
            ready = self
                .ready_changed
                .wait(ready)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// A worker is done with a lane for now.
    fn lane_done(&self) {
        self.busy_workers.fetch_sub(1, Ordering::Relaxed);
        if self.is_idle(&lock(&self.ready)) {
            self.idle_changed.notify_all();
        }
    }

    /// No lane waits and no worker runs one (`ready` is the locked ready queue).
    fn is_idle(&self, ready: &Ready) -> bool {
        ready.lanes.is_empty() && self.busy_workers.load(Ordering::Relaxed) == 0
    }

    /// After the reactor finished: lets the queued work run until `deadline`, then only
    /// what every session is owed (`on_connect`, `on_close`), then ends the workers and
    /// waits for them. A callback that does not return keeps it waiting: nothing can
    /// interrupt it. Detached.
    pub(super) fn finish(&self, deadline: Instant) {
        let mut ready = lock(&self.ready);
        loop {
            let idle = self.is_idle(&ready);
            let left = deadline.saturating_duration_since(Instant::now());
            if idle || left.is_zero() {
                break;
            }
            ready = self
                .idle_changed
                .wait_timeout(ready, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        self.discarding.store(true, Ordering::Relaxed);
        ready.closing = true;
        drop(ready);
        self.ready_changed.notify_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            // A worker that panicked has printed why; the others still end cleanly.
            let _ = thread.join();
        }
    }

    /// Drops what is left once the workers are gone (the loop's lane: its timers),
    /// attached, since it may hold Python objects, and outside the locks.
    pub(super) fn drop_leftovers(&self) {
        let entry = lock(&self.loop_lane.entry).take();
        let items = std::mem::take(&mut lock(&self.loop_lane.queue).items);
        Python::attach(|_py| drop((entry, items)));
    }
}

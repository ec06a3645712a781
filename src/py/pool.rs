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

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::callbacks::{Busy, Callback};
use super::dispatch::{framing_failed, Dispatcher, Notice};
use super::inner::LoopInner;
use super::report::Report;
use super::sessions::{Entry, TokenTable};
use crate::framing::{FrameDecoder, FrameError, Framer};
use crate::reactor::{Event, Reactor, READ_BUDGET};
use crate::shared::{lock, SessionCore};
use crate::sys::epoll::Token;

/// At most this many items of one lane run before the worker lets other lanes go first.
const LANE_TURN: usize = 64;

/// Received-bytes buffers kept for reuse: a buffer freed by a worker and allocated again by
/// the reactor would go back to the kernel and fault in again on every large read.
const SPARE_BUFFERS: usize = 64;

/// One piece of work for a lane.
pub(super) enum Work {
    Opened(Arc<SessionCore>),
    Received(Vec<u8>),
    /// Messages cut by the lane's decoder: back to back in `data`, each ending at the
    /// next of `ends`.
    Messages {
        data: Vec<u8>,
        ends: Vec<usize>,
    },
    /// The stream broke its framing after the messages before this.
    FramingFailed(FrameError),
    Eof,
    Drained,
    PauseWriting,
    ResumeWriting,
    /// The session closed (this one, of the reactor whose count it leaves).
    Closed(Option<Arc<SessionCore>>, Option<io::Error>),
    ConnectFailed(Arc<SessionCore>, Option<io::Error>),
    Timer(u64),
    AcceptPaused(io::Error),
    /// Reading resumed: nothing to run, but held input may go now.
    ReadingResumed,
    /// The loop stops: close the session, now that its handler has had what came before.
    Stop,
    /// `run_in_worker`: `function(*args)`, its outcome set on `future`.
    Job {
        function: Py<PyAny>,
        args: Py<PyTuple>,
        future: Py<PyAny>,
    },
}

impl Work {
    /// Input from the peer: bytes or messages (and a framing error found in them).
    fn is_input(&self) -> bool {
        matches!(
            self,
            Work::Received(_) | Work::Messages { .. } | Work::FramingFailed(_)
        )
    }

    /// Whether it still runs after the stop deadline: what every session is owed
    /// (`on_connect` before `on_close`, and `on_close`), not what its data would cause.
    fn owed(&self) -> bool {
        matches!(
            self,
            Work::Opened(_) | Work::Closed(..) | Work::ConnectFailed(..) | Work::Stop
        )
    }
}

/// A lane's queue, under its lock.
#[derive(Default)]
struct Queue {
    items: VecDeque<Work>,
    /// Received bytes queued and not yet handled.
    bytes: usize,
    /// In the ready queue, or being run: whoever adds work to an unscheduled lane
    /// schedules it.
    scheduled: bool,
    /// When it was last scheduled, for the longest wait for a worker.
    since: Option<Instant>,
    /// The reactor holds this session's reading until the backlog drains.
    holding: bool,
    /// The stream broke its framing: reading stays held until the session closes.
    framing_failed: bool,
}

/// One session's (or the loop's, or a job's) work, run in order by one worker at a time.
pub(super) struct Lane {
    queue: Mutex<Queue>,
    /// The session's Python side: taken out by the worker that runs the lane, and put
    /// back before the lane can be scheduled again (so the next worker finds it).
    entry: Mutex<Option<Entry>>,
    /// The session whose reading the backlog holds, if it is a session's lane.
    core: Option<Arc<SessionCore>>,
    /// The session's framing state, when the loop frames: the reactor thread cuts the
    /// messages (the lock is only ever taken there), so an oversize message stops the
    /// reading at once and the workers get whole messages.
    decoder: Mutex<Option<FrameDecoder>>,
}

impl Lane {
    /// The next work to run, or None if there is none or only input that must wait.
    ///
    /// Input waits while the user has paused reading (`pause_reading()` after the reactor
    /// had read it): it is delivered after `resume_reading()`, and so is the EOF behind
    /// it. Other notices pass it, as they would pass input still in the kernel without
    /// a pool (`on_resume_writing`, say, which may be what resumes reading). A session
    /// that closes meanwhile drops that input, as a paused session drops unread input,
    /// so that its `on_close` comes.
    fn next_work(&self, queue: &mut Queue, pool: &Pool) -> Option<Work> {
        let paused = || {
            self.core
                .as_ref()
                .is_some_and(|core| core.state().read_paused)
        };
        if !matches!(queue.items.front(), Some(work) if work.is_input()) || !paused() {
            return queue.items.pop_front();
        }
        let closing = queue
            .items
            .iter()
            .any(|work| matches!(work, Work::Closed(..)));
        if closing {
            while let Some(Work::Received(data) | Work::Messages { data, .. }) = queue.items.front()
            {
                queue.bytes = queue.bytes.saturating_sub(data.len());
                queue.items.pop_front();
                pool.queued.fetch_sub(1, Ordering::Relaxed);
            }
            return queue.items.pop_front();
        }
        let passing = queue
            .items
            .iter()
            .position(|work| !work.is_input() && !matches!(work, Work::Eof))?;
        queue.items.remove(passing)
    }

    fn new(core: Option<Arc<SessionCore>>) -> Arc<Lane> {
        Lane::framed(core, None)
    }

    fn framed(core: Option<Arc<SessionCore>>, framer: Option<&Framer>) -> Arc<Lane> {
        Arc::new(Lane {
            queue: Mutex::new(Queue::default()),
            entry: Mutex::new(None),
            core,
            decoder: Mutex::new(framer.map(|framer| FrameDecoder::new(framer.clone()))),
        })
    }
}

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
                .spawn(move || work(&pool, &inner, index))?;
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

    /// Hands one turn's events to the lanes (reactor thread, detached). `lanes` maps the
    /// reactor's tokens to the sessions' lanes.
    pub(super) fn distribute(
        &self,
        reactor: &Reactor,
        batch: &mut Vec<Event>,
        lanes: &mut TokenTable<Arc<Lane>>,
        inner: &LoopInner,
    ) {
        for event in batch.drain(..) {
            let (token, work) = match event {
                Event::Opened { token, session } => {
                    let core = Some(Arc::clone(&session));
                    let lane = lanes.insert(token, Lane::framed(core, inner.framer.as_deref()));
                    self.push(lane, Work::Opened(session));
                    continue;
                }
                Event::Received { token, range } => {
                    if let Some(lane) = lanes.get(token) {
                        self.push_bytes(lane, reactor.received(range));
                    }
                    continue;
                }
                Event::Closed { token, error } => {
                    match lanes.remove(token) {
                        Some(lane) => self.push(&lane, Work::Closed(lane.core.clone(), error)),
                        // Never entered (no `Session` could be made): nothing to tell.
                        None => reactor.shared().session_closed(),
                    }
                    continue;
                }
                Event::ConnectFailed { session, error } => {
                    self.push(&Lane::new(None), Work::ConnectFailed(session, error));
                    continue;
                }
                Event::Timer { id } => {
                    let session = lock(&self.timer_sessions).remove(&id);
                    let lane = session.and_then(|token| lanes.get(token).cloned());
                    self.push(lane.as_ref().unwrap_or(&self.loop_lane), Work::Timer(id));
                    continue;
                }
                Event::AcceptPaused { error } => {
                    self.push(&self.loop_lane, Work::AcceptPaused(error));
                    continue;
                }
                Event::Eof { token } => (token, Work::Eof),
                Event::Drained { token } => (token, Work::Drained),
                Event::PauseWriting { token } => (token, Work::PauseWriting),
                Event::ResumeWriting { token } => (token, Work::ResumeWriting),
                Event::ReadingResumed { token } => (token, Work::ReadingResumed),
                Event::Stopping { token } => (token, Work::Stop),
            };
            if let Some(lane) = lanes.get(token) {
                self.push(lane, work);
            }
        }
    }

    fn push(&self, lane: &Arc<Lane>, work: Work) {
        let mut queue = lock(&lane.queue);
        queue.items.push_back(work);
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.schedule(lane, queue);
    }

    /// Queues received bytes, with the bytes queued before them if those wait still (one
    /// `on_recv` for both), and holds the session's reading past the backlog.
    fn push_bytes(&self, lane: &Arc<Lane>, data: &[u8]) {
        let mut decoder = lock(&lane.decoder);
        if let Some(decoder) = decoder.as_mut() {
            return self.push_messages(lane, decoder, data);
        }
        drop(decoder);
        let mut queue = lock(&lane.queue);
        queue.bytes += data.len();
        match queue.items.back_mut() {
            // One on_recv gets at most what one wakeup reads without a pool.
            Some(Work::Received(waiting)) if waiting.len() + data.len() <= READ_BUDGET => {
                waiting.extend_from_slice(data);
            }
            _ => {
                let mut buffer = lock(&self.spare).pop().unwrap_or_default();
                buffer.extend_from_slice(data);
                queue.items.push_back(Work::Received(buffer));
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hold_past_backlog(lane, &mut queue);
        self.schedule(lane, queue);
    }

    /// Holds the session's reading while more than the backlog waits for its handler.
    fn hold_past_backlog(&self, lane: &Lane, queue: &mut Queue) {
        if queue.bytes > self.backlog && !queue.holding {
            if let Some(core) = &lane.core {
                queue.holding = true;
                core.hold_reading();
            }
        }
    }

    /// Keeps an emptied buffer for the next read, up to [`SPARE_BUFFERS`] of them.
    fn recycle(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() <= 2 * READ_BUDGET {
            buffer.clear();
            let mut spare = lock(&self.spare);
            if spare.len() < SPARE_BUFFERS {
                spare.push(buffer);
            }
        }
    }

    /// Cuts `data` into messages and queues them; a framing error holds the session's
    /// reading for good (the worker closes it once the messages before have been
    /// delivered).
    fn push_messages(&self, lane: &Arc<Lane>, decoder: &mut FrameDecoder, data: &[u8]) {
        let mut bytes = lock(&self.spare).pop().unwrap_or_default();
        let mut ends = Vec::new();
        let result = decoder.feed(data, |message| {
            bytes.extend_from_slice(message);
            ends.push(bytes.len());
        });
        let mut queue = lock(&lane.queue);
        if !ends.is_empty() {
            queue.bytes += bytes.len();
            match queue.items.back_mut() {
                Some(Work::Messages { data, ends: before })
                    if data.len() + bytes.len() <= READ_BUDGET =>
                {
                    let offset = data.len();
                    data.extend_from_slice(&bytes);
                    before.extend(ends.iter().map(|end| end + offset));
                }
                _ => {
                    queue.items.push_back(Work::Messages { data: bytes, ends });
                    self.queued.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Err(err) = result {
            queue.items.push_back(Work::FramingFailed(err));
            self.queued.fetch_add(1, Ordering::Relaxed);
            if let Some(core) = &lane.core {
                queue.holding = true;
                queue.framing_failed = true;
                core.hold_reading();
            }
        }
        self.hold_past_backlog(lane, &mut queue);
        self.schedule(lane, queue);
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
        let ready = lock(&self.ready);
        if ready.lanes.is_empty() && self.busy_workers.load(Ordering::Relaxed) == 0 {
            self.idle_changed.notify_all();
        }
    }

    /// After the reactor finished: lets the queued work run until `deadline`, then only
    /// what every session is owed (`on_connect`, `on_close`), then ends the workers and
    /// waits for them. A callback that does not return keeps it waiting: nothing can
    /// interrupt it. Detached.
    pub(super) fn finish(&self, deadline: Instant) {
        let mut ready = lock(&self.ready);
        loop {
            let idle = ready.lanes.is_empty() && self.busy_workers.load(Ordering::Relaxed) == 0;
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

    /// What is left once the workers are gone (the loop's lane: its timers), taken out
    /// to be dropped attached: it may hold Python objects.
    pub(super) fn leftovers(&self) -> (Option<Entry>, VecDeque<Work>) {
        let entry = lock(&self.loop_lane.entry).take();
        let items = std::mem::take(&mut lock(&self.loop_lane.queue).items);
        (entry, items)
    }
}

/// A worker thread's body: attached for its life, detached while it waits for work.
fn work(pool: &Pool, inner: &Arc<LoopInner>, index: usize) {
    Python::attach(|py| {
        super::thread::name_python_thread(py, &format!("hamanet-worker-{index}"));
        let mut dispatcher = Dispatcher {
            py,
            inner,
            report: Report::new(py),
            busy: &pool.busy[index],
        };
        while let Some(lane) = py.detach(|| pool.next_lane()) {
            run_lane(pool, inner, &mut dispatcher, &lane);
            pool.lane_done();
        }
    });
}

/// Runs a lane's work in order, up to [`LANE_TURN`] items before other lanes get a turn.
fn run_lane(pool: &Pool, inner: &LoopInner, dispatcher: &mut Dispatcher<'_, '_>, lane: &Arc<Lane>) {
    let callbacks = Arc::clone(&lock(&inner.callbacks));
    let mut entry = lock(&lane.entry).take();
    let mut ran = 0;
    loop {
        let work = {
            let mut queue = lock(&lane.queue);
            let next = if ran < LANE_TURN {
                lane.next_work(&mut queue, pool)
            } else {
                None
            };
            match next {
                Some(work) => work,
                None => {
                    // The entry goes back before the lane can be scheduled again.
                    *lock(&lane.entry) = entry.take();
                    queue.scheduled = false;
                    if ran >= LANE_TURN && !queue.items.is_empty() {
                        // Its turn is over: other lanes first, then the rest of it.
                        pool.schedule(lane, queue);
                    }
                    return;
                }
            }
        };
        pool.queued.fetch_sub(1, Ordering::Relaxed);
        ran += 1;
        let received = match &work {
            Work::Received(data) | Work::Messages { data, .. } => data.len(),
            _ => 0,
        };
        if work.owed() || !pool.discarding.load(Ordering::Relaxed) {
            if let Some(buffer) = run(dispatcher, &callbacks, &mut entry, work) {
                pool.recycle(buffer);
            }
        } else if let Work::Job { future, .. } = work {
            // Never to run: its waiter learns so rather than waiting forever.
            if let Err(err) = future.bind(dispatcher.py).call_method0("cancel") {
                dispatcher.handler_failed(Callback::Job, None, err);
            }
        }
        if received > 0 {
            release_backlog(pool, lane, received);
        }
        if inner.is_forked_copy() {
            dispatcher.end_forked_child();
        }
    }
}

/// The handler has taken `handled` bytes: once the backlog is down to half, the reactor
/// reads the session again.
fn release_backlog(pool: &Pool, lane: &Lane, handled: usize) {
    let mut queue = lock(&lane.queue);
    queue.bytes = queue.bytes.saturating_sub(handled);
    if queue.holding && !queue.framing_failed && queue.bytes <= pool.backlog / 2 {
        queue.holding = false;
        drop(queue);
        if let Some(core) = &lane.core {
            core.release_reading();
        }
    }
}

/// Runs one piece of work; returns the buffer of received bytes it is done with.
fn run(
    dispatcher: &mut Dispatcher<'_, '_>,
    callbacks: &super::callbacks::Callbacks,
    entry: &mut Option<Entry>,
    work: Work,
) -> Option<Vec<u8>> {
    let notice = match work {
        Work::Opened(session) => {
            *entry = dispatcher.open(&session);
            if let Some(entry) = entry {
                entry.decoder = None; // the lane's decoder, on the reactor thread, frames
            }
            if let Some(entry) = entry {
                dispatcher.connected(entry, callbacks);
            }
            return None;
        }
        Work::Closed(session, error) => {
            if let Some(mut closed) = entry.take() {
                dispatcher.notify(&mut closed, callbacks, Notice::Closed(error.as_ref()));
            }
            if let Some(session) = session {
                session.shared().session_closed();
            }
            return None;
        }
        Work::ConnectFailed(session, error) => {
            let reason = dispatcher.connect_error(error.as_ref());
            dispatcher.connect_failed(&session, reason, callbacks);
            session.shared().session_closed();
            return None;
        }
        Work::Timer(id) => {
            dispatcher.timer(id);
            return None;
        }
        Work::AcceptPaused(error) => {
            dispatcher.accept_paused(&error);
            return None;
        }
        Work::Job {
            function,
            args,
            future,
        } => {
            run_job(dispatcher, &function, &args, &future);
            return None;
        }
        Work::Received(data) => {
            if let Some(entry) = entry {
                dispatcher.notify(entry, callbacks, Notice::Received(&data));
            }
            return Some(data);
        }
        Work::ReadingResumed => return None,
        Work::Stop => {
            if let Some(entry) = entry {
                entry.session.get().core().close();
            }
            return None;
        }
        Work::Messages { data, ends } => {
            if let Some(entry) = entry {
                dispatcher.framed(entry, callbacks, &data, &ends);
            }
            return Some(data);
        }
        Work::FramingFailed(err) => {
            if let Some(entry) = entry {
                framing_failed(entry, &err);
            }
            return None;
        }
        Work::Eof => Notice::Eof,
        Work::Drained => Notice::Drained,
        Work::PauseWriting => Notice::PauseWriting,
        Work::ResumeWriting => Notice::ResumeWriting,
    };
    if let Some(entry) = entry {
        dispatcher.notify(entry, callbacks, notice);
    }
    None
}

/// `function(*args)`, its result or exception set on `future` (unless it was cancelled).
fn run_job(
    dispatcher: &mut Dispatcher<'_, '_>,
    function: &Py<PyAny>,
    args: &Py<PyTuple>,
    future: &Py<PyAny>,
) {
    let py = dispatcher.py;
    let future = future.bind(py);
    let outcome = (|| -> PyResult<()> {
        if !future
            .call_method0("set_running_or_notify_cancel")?
            .is_truthy()?
        {
            return Ok(()); // cancelled while it waited
        }
        let result = dispatcher
            .busy
            .during(Callback::Job, 0, || function.bind(py).call1(args.bind(py)));
        match result {
            Ok(value) => future.call_method1("set_result", (value,))?,
            Err(err) => future.call_method1("set_exception", (err.into_value(py),))?,
        };
        Ok(())
    })();
    if let Err(err) = outcome {
        dispatcher.handler_failed(Callback::Job, None, err);
    }
}

//! The workers: each attached for its life, detached while it waits, running one lane at
//! a time through the same dispatch code as the reactor thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::lane::{Lane, Work};
use super::Pool;
use crate::py::callbacks::{Callback, Callbacks};
use crate::py::dispatch::{framing_failed, Dispatcher, Notice};
use crate::py::inner::LoopInner;
use crate::py::sessions::{EndpointEntry, Entry};
use crate::py::view::keep_for;
use crate::shared::lock;

/// At most this many items of one lane run before the worker lets other lanes go first.
const LANE_TURN: usize = 64;

/// A worker thread's body: attached for its life, detached while it waits for work.
pub(super) fn work(pool: &Pool, inner: &Arc<LoopInner>, index: usize) {
    Python::attach(|py| {
        crate::py::thread::name_python_thread(py, &format!("hamanet-worker-{index}"));
        let mut dispatcher = Dispatcher::new(py, inner, &pool.busy[index]);
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
    let mut endpoint = lock(&lane.endpoint).take();
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
                    *lock(&lane.endpoint) = endpoint.take();
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
        let received = work.input_size();
        if work.owed() || !pool.discarding.load(Ordering::Relaxed) {
            let entries = (&mut entry, &mut endpoint);
            if let Some(buffer) = run(dispatcher, &callbacks, entries, work) {
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
        if let Some(reader) = &lane.reader {
            reader.release();
        }
    }
}

/// Runs one piece of work; returns the buffer of received bytes it is done with.
fn run(
    dispatcher: &mut Dispatcher<'_, '_>,
    callbacks: &Callbacks,
    (entry, endpoint): (&mut Option<Entry>, &mut Option<EndpointEntry>),
    work: Work,
) -> Option<Vec<u8>> {
    let notice = match work {
        Work::EndpointOpened(core) => {
            *endpoint = dispatcher.endpoint_opened(&core);
            return None;
        }
        Work::Datagrams { data, items } => {
            if let Some(endpoint) = endpoint {
                dispatcher.datagrams(endpoint, callbacks, &data, &items);
            }
            return Some(data);
        }
        Work::DatagramFailed(failure) => {
            if let Some(endpoint) = endpoint {
                dispatcher.datagram_failed(endpoint, callbacks, &failure);
            }
            return None;
        }
        Work::EndpointClosed(core, error) => {
            if let Some(mut closed) = endpoint.take() {
                dispatcher.endpoint_closed(&mut closed, callbacks, error.as_ref());
            }
            if let Some(core) = core {
                core.shared().endpoint_closed();
            }
            return None;
        }
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
        Work::ProxyRefused(peer, error, unreported) => {
            dispatcher.proxy_refused(&peer, &error, unreported);
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
            let outlived = dispatcher.take_outlived();
            if !outlived.is_empty() {
                // A view of these bytes outlived the callback: they go with it.
                keep_for(outlived, data);
                return None;
            }
            return Some(data);
        }
        Work::ReadingResumed => return None,
        Work::Stop => {
            if let Some(entry) = entry {
                entry.session.get().core().close();
            }
            if let Some(endpoint) = endpoint {
                endpoint.endpoint.get().core().close();
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

//! The reactor side of the pool: each turn's events queued on the sessions' lanes, with
//! received bytes coalesced, framed and bounded by the backlog. Reactor threads only,
//! detached.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::lane::{Lane, Queue, Work, DATAGRAM_OVERHEAD};
use super::Pool;
use crate::framing::FrameDecoder;
use crate::py::inner::LoopInner;
use crate::py::sessions::TokenTable;
use crate::reactor::{Event, Reactor, ReceivedDatagram, DATAGRAM_BUDGET, READ_BUDGET};
use crate::shared::lock;

/// Received-bytes buffers kept for reuse: a buffer freed by a worker and allocated again by
/// the reactor would go back to the kernel and fault in again on every large read.
const SPARE_BUFFERS: usize = 64;

impl Pool {
    /// Hands one turn's events to the lanes (reactor thread, detached). `lanes` maps the
    /// reactor's tokens to the sessions' lanes.
    pub(crate) fn distribute(
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
                        Some(lane) => self.push(&lane, Work::Closed(lane.session(), error)),
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
                Event::EndpointOpened { token, endpoint } => {
                    let lane = lanes.insert(token, Lane::for_endpoint(Arc::clone(&endpoint)));
                    self.push(lane, Work::EndpointOpened(endpoint));
                    continue;
                }
                Event::Datagrams { token, datagrams } => {
                    if let Some(lane) = lanes.get(token) {
                        let (bytes, items) = reactor.datagrams(datagrams);
                        self.push_datagrams(lane, bytes, items);
                    }
                    continue;
                }
                Event::EndpointClosed { token, error } => {
                    match lanes.remove(token) {
                        Some(lane) => {
                            let work = Work::EndpointClosed(lane.datagram_endpoint(), error);
                            self.push(&lane, work);
                        }
                        None => reactor.shared().endpoint_closed(),
                    }
                    continue;
                }
                Event::DatagramFailed { token, failure } => (token, Work::DatagramFailed(failure)),
                Event::EndpointStopping { token } => (token, Work::Stop),
                Event::AcceptPaused { error } => {
                    self.push(&self.loop_lane, Work::AcceptPaused(error));
                    continue;
                }
                Event::ProxyRefused {
                    peer,
                    error,
                    unreported,
                } => {
                    let work = Work::ProxyRefused(peer, error, unreported);
                    self.push(&self.loop_lane, work);
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

    pub(super) fn push(&self, lane: &Arc<Lane>, work: Work) {
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

    /// Queues a wakeup's datagrams (their bytes copied out of the arena), with the
    /// datagrams queued before them if those wait still (one `on_datagrams` for both, up
    /// to a turn's budget), and holds the endpoint's reading past the backlog.
    fn push_datagrams(&self, lane: &Arc<Lane>, bytes: &[u8], items: &[ReceivedDatagram]) {
        let size: usize = items.iter().map(|item| item.range.len()).sum();
        let mut queue = lock(&lane.queue);
        queue.bytes += size + items.len() * DATAGRAM_OVERHEAD;
        match queue.items.back_mut() {
            Some(Work::Datagrams {
                data,
                items: waiting,
            }) if waiting.len() + items.len() <= DATAGRAM_BUDGET
                && data.len() + size <= READ_BUDGET =>
            {
                copy_datagrams(data, waiting, bytes, items);
            }
            _ => {
                let mut data = lock(&self.spare).pop().unwrap_or_default();
                let mut own = Vec::with_capacity(items.len());
                copy_datagrams(&mut data, &mut own, bytes, items);
                queue.items.push_back(Work::Datagrams { data, items: own });
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hold_past_backlog(lane, &mut queue);
        self.schedule(lane, queue);
    }

    /// Holds the session's (or endpoint's) reading while more than the backlog waits for
    /// its handler.
    fn hold_past_backlog(&self, lane: &Lane, queue: &mut Queue) {
        if queue.bytes > self.backlog && !queue.holding {
            if let Some(reader) = &lane.reader {
                queue.holding = true;
                reader.hold();
            }
        }
    }

    /// Keeps an emptied buffer for the next read, up to [`SPARE_BUFFERS`] of them.
    pub(super) fn recycle(&self, mut buffer: Vec<u8>) {
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
        // The spare buffer goes back unless it is queued itself: only a partial message
        // arrived, or these messages joined the ones still waiting.
        let mut unused = Some(bytes);
        if !ends.is_empty() {
            let bytes = unused.take().unwrap_or_default();
            queue.bytes += bytes.len();
            match queue.items.back_mut() {
                Some(Work::Messages { data, ends: before })
                    if data.len() + bytes.len() <= READ_BUDGET =>
                {
                    let offset = data.len();
                    data.extend_from_slice(&bytes);
                    before.extend(ends.iter().map(|end| end + offset));
                    unused = Some(bytes);
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
            if let Some(reader) = &lane.reader {
                queue.holding = true;
                queue.framing_failed = true;
                reader.hold();
            }
        }
        self.hold_past_backlog(lane, &mut queue);
        self.schedule(lane, queue);
        if let Some(buffer) = unused {
            self.recycle(buffer);
        }
    }
}

/// Appends the datagrams `items` (whose ranges index `bytes`) to `data` and `into`, each
/// item's range rebased onto `data`.
fn copy_datagrams(
    data: &mut Vec<u8>,
    into: &mut Vec<ReceivedDatagram>,
    bytes: &[u8],
    items: &[ReceivedDatagram],
) {
    for item in items {
        let start = data.len();
        data.extend_from_slice(&bytes[item.range.clone()]);
        into.push(ReceivedDatagram {
            range: start..data.len(),
            ..item.clone()
        });
    }
}

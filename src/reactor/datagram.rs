//! Datagram endpoints: registering a bound UDP socket, reading a wakeup's datagrams with
//! `recvmmsg` into the turn's arena, sending the queue with `sendmmsg`, closing.
//!
//! An endpoint reads at most [`DATAGRAM_BUDGET`] datagrams (or [`READ_BUDGET`] bytes) per
//! turn and is re-queued, as a session is, when cut short; its datagrams go into the
//! same arena as the sessions' bytes, within the same [`ARENA_LIMIT`]. Errors (an ICMP
//! error on a connected endpoint, a datagram the kernel refuses) are reported and the
//! endpoint goes on.

use std::net::SocketAddr;

use super::event::{DatagramFailure, ReceivedDatagram};
use super::*;
use crate::shared::{Binding, DatagramCore, DatagramState};
use crate::sys::datagram::{self, Received, BATCH};

/// Most datagrams one endpoint reads in one turn before others get their go.
pub const DATAGRAM_BUDGET: usize = 256;

/// Most arena bytes one `recvmmsg` call sets aside: each datagram it may bring needs a
/// slot of `max_datagram_size` bytes (the kernel cannot be told to pack them), so at the
/// default of 64 KiB a call takes up to 16 datagrams, and at 2 KiB the full [`BATCH`].
const RECV_RESERVE: usize = 1024 * 1024;

pub(super) struct DatagramSlot {
    pub(super) generation: u32,
    pub(super) fd: OwnedFd,
    pub(super) core: Arc<DatagramCore>,
    /// The turn in which it last read (so a re-queued endpoint that is also reported
    /// ready reads once per turn, and its handler gets one batch).
    pub(super) read_turn: u64,
    /// On the `again` list already.
    pub(super) requeued: bool,
    /// A send found the kernel's buffer full: `EPOLLOUT` is watched until there is room.
    pub(super) send_blocked: bool,
}

/// The endpoint in `token`'s slot, if the slot still holds that endpoint.
pub(super) fn endpoint_slot(slots: &mut [Slot], token: Token) -> Option<&mut DatagramSlot> {
    match slots.get_mut(token.slot()) {
        Some(Slot::Datagram(s)) if s.generation == token.generation() => Some(s),
        _ => None,
    }
}

impl Reactor {
    /// The datagrams of an [`Event::Datagrams`], and the turn's received bytes that their
    /// ranges index.
    pub fn datagrams(&self, range: Range<usize>) -> (&[u8], &[ReceivedDatagram]) {
        (self.arena.get(0..self.arena.len()), &self.datagrams[range])
    }

    pub(super) fn is_endpoint(&self, token: Token, core: &Arc<DatagramCore>) -> bool {
        matches!(
            self.slots.get(token.slot()),
            Some(Slot::Datagram(s)) if s.generation == token.generation() && Arc::ptr_eq(&s.core, core)
        )
    }

    pub(super) fn endpoint_tokens(&self) -> Vec<Token> {
        self.tokens(|slot| matches!(slot, Slot::Datagram(_)))
    }

    /// Registers a bound UDP socket as an endpoint. Datagrams that arrived before are
    /// reported by the registration itself (epoll reports a ready socket when added).
    pub(super) fn register_endpoint(&mut self, Binding { core, fd }: Binding) {
        let (index, generation) = self.allocate();
        let token = Token::new(index as u32, generation);
        core.set_token(token);
        self.batch.push(Event::EndpointOpened {
            token,
            endpoint: Arc::clone(&core),
        });
        if let Err(err) = self.poller.add_endpoint(fd.as_fd(), token) {
            // Only when the kernel is out of memory: the handler hears it closed.
            self.vacate(token);
            core.state().mark_closed();
            self.batch.push(Event::EndpointClosed {
                token,
                error: Some(err),
            });
            return;
        }
        self.slots[index] = Slot::Datagram(DatagramSlot {
            generation,
            fd,
            core,
            read_turn: 0,
            requeued: false,
            send_blocked: false,
        });
        self.endpoints += 1;
        if self.stop_deadline.is_some() {
            self.close_endpoint_for_stop(token);
        }
    }

    /// Readiness of an endpoint: room to send, datagrams or an error to read.
    pub(super) fn endpoint_ready(&mut self, token: Token, readiness: Readiness) {
        if readiness.writable {
            if let Some(slot) = endpoint_slot(&mut self.slots, token) {
                slot.send_blocked = false;
                // Back to reading only (see `Poller::watch_endpoint`); if this fails the
                // endpoint only wakes more often than it must.
                let _ = self.poller.watch_endpoint(slot.fd.as_fd(), token, false);
            }
        }
        if readiness.readable || readiness.error {
            self.read_endpoint(token, readiness.error);
        }
        if readiness.writable {
            self.flush_endpoint(token);
        }
    }

    /// Reads what has arrived, a `recvmmsg` at a time, into the arena: until `EAGAIN`, or
    /// the endpoint's budget is spent (then it is served again next turn). Everything is
    /// one [`Event::Datagrams`], followed by the error that stopped it, if one did.
    pub(super) fn read_endpoint(&mut self, token: Token, error_reported: bool) {
        let turn = self.turn;
        let arena_full = self.arena.len() >= ARENA_LIMIT;
        let Some(slot) = endpoint_slot(&mut self.slots, token) else {
            return;
        };
        if slot.read_turn == turn {
            requeue(&mut self.again, &mut slot.requeued, token);
            return;
        }
        {
            let state = slot.core.state();
            if state.is_closing() {
                return;
            }
            if state.reading_held() {
                drop(state);
                if error_reported {
                    // An error is news of its own: it does not wait for the resume.
                    self.take_endpoint_error(token);
                }
                return;
            }
        }
        if arena_full {
            requeue(&mut self.again, &mut slot.requeued, token);
            return;
        }
        slot.read_turn = turn;
        let slot_size = slot.core.limits.max_datagram_size;
        let per_call = (RECV_RESERVE / slot_size).clamp(1, BATCH);
        // NOTE: a batch shorter than asked proves the queue empty (as a short read does a
        // stream's), except on a connected endpoint: there recvmmsg stops short at an
        // ICMP error as well, leaving it pending without a new edge, so it reads on
        // until EAGAIN or the error.
        let short_batch_drains = slot.core.peer.is_none();
        let first = self.datagrams.len();
        let (mut count, mut bytes) = (0, 0);
        let mut failure = None;
        loop {
            let wanted = per_call.min(DATAGRAM_BUDGET - count);
            let base = self.arena.len();
            let fd = slot.fd.as_fd();
            let (received, scratch) = (&mut self.datagrams, &mut self.recv_scratch);
            scratch.clear();
            let kept = self.arena.fill_with(wanted * slot_size, |buf| {
                datagram::recv_batch(fd, buf, slot_size, scratch)?;
                Ok::<_, io::Error>(pack(buf, slot_size, scratch, base, received))
            });
            self.stats.datagram_recv_calls += 1;
            match kept {
                Ok(kept) => {
                    let arrived = self.recv_scratch.len();
                    count += arrived;
                    bytes += kept;
                    if count >= DATAGRAM_BUDGET || bytes >= READ_BUDGET {
                        requeue(&mut self.again, &mut slot.requeued, token);
                        break;
                    }
                    if arrived < wanted && short_batch_drains {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    // What is queued behind the error raises no new edge.
                    requeue(&mut self.again, &mut slot.requeued, token);
                    failure = Some((err, slot.core.peer));
                    break;
                }
            }
        }
        let last = self.datagrams.len();
        if last > first {
            let truncated = self.datagrams[first..last]
                .iter()
                .filter(|d| d.truncated)
                .count();
            self.stats.datagrams_in += count as u64;
            self.stats.datagram_bytes_in += bytes as u64;
            self.stats.datagrams_truncated += truncated as u64;
            self.batch.push(Event::Datagrams {
                token,
                datagrams: first..last,
            });
        }
        if let Some((error, peer)) = failure {
            self.endpoint_failed(token, error, peer, false);
        }
    }

    /// Reports an error the socket holds (`SO_ERROR`), if it holds one.
    fn take_endpoint_error(&mut self, token: Token) {
        let Some(slot) = endpoint_slot(&mut self.slots, token) else {
            return;
        };
        let peer = slot.core.peer;
        if let Ok(Some(error)) = net::take_error(slot.fd.as_fd()) {
            self.endpoint_failed(token, error, peer, false);
        }
    }

    fn endpoint_failed(
        &mut self,
        token: Token,
        error: io::Error,
        peer: Option<SocketAddr>,
        sending: bool,
    ) {
        self.stats.datagram_errors += 1;
        self.batch.push(Event::DatagramFailed {
            token,
            failure: DatagramFailure {
                error,
                peer,
                sending,
            },
        });
    }

    /// Sends the queue (unless the kernel's buffer is full), then acts on a close or
    /// abort request and on reading resumed.
    pub(super) fn flush_endpoint(&mut self, token: Token) {
        let Some(slot) = endpoint_slot(&mut self.slots, token) else {
            return;
        };
        let core = Arc::clone(&slot.core);
        let mut state = core.state();
        state.queued = false;
        if state.closed {
            return;
        }
        self.stats.datagrams_dropped += std::mem::take(&mut state.refused);
        if state.abort_requested {
            drop(state);
            self.release_endpoint(token, None);
            return;
        }
        if std::mem::take(&mut state.read_resume_pending) {
            // What arrived while reading was paused raised its edge then.
            requeue(&mut self.again, &mut slot.requeued, token);
            self.batch.push(Event::ReadingResumed { token });
        }
        let mut failed = Vec::new();
        if !slot.send_blocked && !state.queue.is_empty() {
            let blocked = send_queue(slot.fd.as_fd(), &mut state, &mut self.stats, &mut failed);
            if blocked {
                slot.send_blocked = true;
                // If this fails, the next send (any write, or the next turn's) retries.
                let _ = self.poller.watch_endpoint(slot.fd.as_fd(), token, true);
            }
        }
        let close_now = state.close_requested && state.queue.is_empty();
        drop(state);
        for (error, to) in failed {
            self.endpoint_failed(token, error, to.or(core.peer), true);
        }
        if close_now {
            self.release_endpoint(token, None);
        }
    }

    /// Frees the endpoint's slot and closes its socket; what is still queued is dropped
    /// (and counted).
    pub(super) fn release_endpoint(&mut self, token: Token, error: Option<io::Error>) {
        if endpoint_slot(&mut self.slots, token).is_none() {
            return;
        }
        let Slot::Datagram(slot) = self.vacate(token) else {
            return;
        };
        let dropped = slot.core.state().mark_closed();
        self.stats.datagrams_dropped += dropped as u64;
        drop(slot.fd);
        debug_assert!(
            self.endpoints > 0,
            "more endpoints released than registered"
        );
        self.endpoints = self.endpoints.saturating_sub(1);
        self.batch.push(Event::EndpointClosed { token, error });
    }

    /// Closes an endpoint because the reactor stops: itself (after sending its queue), or
    /// by telling the handler layer to (see [`StopCloses`]).
    pub(super) fn close_endpoint_for_stop(&mut self, token: Token) {
        match self.config.stop_closes {
            StopCloses::Handler => self.batch.push(Event::EndpointStopping { token }),
            StopCloses::Reactor => {
                if let Some(slot) = endpoint_slot(&mut self.slots, token) {
                    slot.core.state().close_requested = true;
                    self.flush_endpoint(token);
                }
            }
        }
    }

    /// At the stop deadline: closes every endpoint still open, with `TimedOut` for one
    /// whose queue could not be sent by then.
    pub(super) fn close_endpoints_at_deadline(&mut self) {
        for token in self.endpoint_tokens() {
            let Some(slot) = endpoint_slot(&mut self.slots, token) else {
                continue;
            };
            let queued = slot.core.state().queue.len();
            let error = (queued > 0).then(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("stop() timed out before {queued} queued datagrams were sent"),
                )
            });
            self.release_endpoint(token, error);
        }
    }
}

/// Moves each datagram `recv_batch` put in a slot of `buf` down to follow the one before,
/// so the arena keeps only their bytes, and records where each landed (`base` is `buf`'s
/// place in the arena). Returns the bytes kept.
fn pack(
    buf: &mut [u8],
    slot: usize,
    received: &[Received],
    base: usize,
    into: &mut Vec<ReceivedDatagram>,
) -> usize {
    let mut end = 0;
    for (i, datagram) in received.iter().enumerate() {
        let start = i * slot;
        buf.copy_within(start..start + datagram.len, end);
        into.push(ReceivedDatagram {
            range: base + end..base + end + datagram.len,
            from: datagram.from,
            size: datagram.size,
            truncated: datagram.truncated,
        });
        end += datagram.len;
    }
    end
}

/// Sends the queue, one `sendmmsg` per [`BATCH`] datagrams, until it is empty or the
/// kernel's buffer is full (returns true then; the rest stays queued). A datagram the
/// kernel refuses is dropped and its error put in `failed`; the ones after it go on.
fn send_queue(
    fd: std::os::fd::BorrowedFd<'_>,
    state: &mut DatagramState,
    stats: &mut Stats,
    failed: &mut Vec<(io::Error, Option<SocketAddr>)>,
) -> bool {
    while !state.queue.is_empty() {
        let pending = state.bytes.pending();
        let mut offset = 0;
        let batch = state.queue.iter().take(BATCH).map(|outgoing| {
            let bytes = &pending[offset..offset + outgoing.len];
            offset += outgoing.len;
            (bytes, outgoing.to)
        });
        let result = datagram::send_batch(fd, batch);
        stats.datagram_send_calls += 1;
        match result {
            Ok(0) => return false, // cannot happen for a non-empty batch; never spin
            Ok(sent) => {
                let bytes: usize = state.queue.drain(..sent).map(|o| o.len).sum();
                state.bytes.consume(bytes);
                stats.datagrams_out += sent as u64;
                stats.datagram_bytes_out += bytes as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            Err(err) => {
                if let Some(refused) = state.queue.pop_front() {
                    state.bytes.consume(refused.len);
                    stats.datagrams_dropped += 1;
                    failed.push((err, refused.to));
                }
            }
        }
    }
    false
}

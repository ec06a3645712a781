//! A datagram endpoint's state as shared between the reactor thread and any thread that
//! sends on it: its bounded send queue, and what it has been asked to do.
//!
//! As with a session, other threads own nothing but a `DatagramCore`: they append to its
//! queue under a short lock and queue the endpoint once for the reactor (a
//! [`Command::AttendEndpoint`]), which sends the whole queue with `sendmmsg` and does every
//! close itself.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::session::next_id;
use super::{lock, Command, LoopShared};
use crate::buffer::WriteBuffer;
use crate::sys::datagram::max_payload;
use crate::sys::epoll::Token;

/// An endpoint's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramLimits {
    /// The most bytes of one received datagram that are kept; the kernel truncates a
    /// longer one, and the handler is told.
    pub max_datagram_size: usize,
    /// The most datagrams the send queue holds.
    pub max_queue: usize,
    /// The most bytes the send queue holds.
    pub max_queue_bytes: usize,
}

impl DatagramLimits {
    /// Every datagram IPv4 or IPv6 can carry is received whole (65,535 is above both
    /// largest payloads); a queue that absorbs a few batches of replies.
    pub const DEFAULT: DatagramLimits = DatagramLimits {
        max_datagram_size: 65_535,
        max_queue: 4096,
        max_queue_bytes: 4 * 1024 * 1024,
    };
}

impl Default for DatagramLimits {
    fn default() -> DatagramLimits {
        DatagramLimits::DEFAULT
    }
}

/// Why an endpoint refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramRefusal {
    /// `close()` or `abort()` was called, or the loop stopped.
    Closed,
    /// The send queue is full (by count or by bytes); the datagram was not queued.
    Full {
        /// Datagrams queued.
        queued: usize,
        /// Bytes queued.
        queued_bytes: usize,
        /// The refused datagram's size.
        size: usize,
        /// The endpoint's limits.
        limits: DatagramLimits,
    },
    /// Longer than a UDP datagram to that address can be.
    TooLarge {
        /// Its size.
        size: usize,
        /// The largest payload for the address's family.
        max: usize,
    },
    /// No destination: the endpoint is not connected, so each datagram needs an address.
    NoDestination,
}

/// One queued datagram: its length in the queue's bytes, and where it goes (`None`: the
/// connected peer).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    /// Its size.
    pub len: usize,
    /// Its destination.
    pub to: Option<SocketAddr>,
}

/// What an endpoint's other threads share with the reactor, under one short lock.
#[derive(Debug, Default)]
pub struct DatagramState {
    /// The queued datagrams' bytes, back to back, in `queue`'s order.
    pub bytes: WriteBuffer,
    /// The queued datagrams, oldest first.
    pub queue: VecDeque<Outgoing>,
    /// `close()` was requested: send the queue, then close.
    pub close_requested: bool,
    /// `abort()` was requested: drop the queue, close now.
    pub abort_requested: bool,
    /// The reactor has closed the socket; nothing more will happen.
    pub closed: bool,
    /// The endpoint is in the reactor's command queue already.
    pub queued: bool,
    /// `pause_reading()` is in force.
    pub read_paused: bool,
    /// The handler is behind (the worker pool's backlog for this endpoint is full).
    pub backlog_full: bool,
    /// Reading resumed: the reactor must look at the socket itself, since what arrived
    /// meanwhile raised its edge already.
    pub read_resume_pending: bool,
    /// Datagrams refused for a full queue since the reactor last looked (its statistics).
    pub refused: u64,
}

impl DatagramState {
    /// Whether reading is held, by the user or by the worker pool's backlog.
    pub fn reading_held(&self) -> bool {
        self.read_paused || self.backlog_full
    }

    /// Whether the user asked for the endpoint to end (`close()` or `abort()`).
    pub fn given_up(&self) -> bool {
        self.close_requested || self.abort_requested
    }

    /// Whether the endpoint is closed or on its way to closing.
    pub fn is_closing(&self) -> bool {
        self.closed || self.given_up()
    }

    /// Drops the queue; returns how many datagrams were in it.
    pub fn drop_queue(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        self.bytes.clear();
        dropped
    }

    /// The socket is closed (or will never be registered): nothing more will be sent.
    /// Returns how many queued datagrams that drops.
    pub fn mark_closed(&mut self) -> usize {
        self.closed = true;
        self.drop_queue()
    }
}

/// One datagram endpoint's identity and the state other threads may touch.
pub struct DatagramCore {
    /// Unique within the process (sessions and endpoints share the numbering).
    pub id: u64,
    /// The local address it is bound to.
    pub local: SocketAddr,
    /// The peer of a connected endpoint.
    pub peer: Option<SocketAddr>,
    /// Its limits, fixed when it is opened.
    pub limits: DatagramLimits,
    /// An IPv6 socket that takes IPv4 too (as mapped addresses).
    pub dual_stack: bool,
    token: AtomicU64,
    state: Mutex<DatagramState>,
    shared: Arc<LoopShared>,
}

impl std::fmt::Debug for DatagramCore {
    // Not derived: the loop it points to holds queued commands that point back to it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramCore")
            .field("id", &self.id)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl DatagramCore {
    /// A new endpoint of the loop behind `shared`, bound to `local` (and connected to
    /// `peer`, if given).
    pub fn new(
        shared: Arc<LoopShared>,
        (local, peer): (SocketAddr, Option<SocketAddr>),
        limits: DatagramLimits,
        dual_stack: bool,
    ) -> Arc<DatagramCore> {
        Arc::new(DatagramCore {
            id: next_id(),
            local,
            peer,
            limits,
            dual_stack,
            token: AtomicU64::new(u64::MAX),
            state: Mutex::new(DatagramState::default()),
            shared,
        })
    }

    /// The loop this endpoint belongs to.
    pub fn shared(&self) -> &Arc<LoopShared> {
        &self.shared
    }

    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, DatagramState> {
        lock(&self.state)
    }

    pub(crate) fn set_token(&self, token: Token) {
        self.token.store(token.0, Ordering::Release);
    }

    pub(crate) fn token(&self) -> Token {
        Token(self.token.load(Ordering::Acquire))
    }

    /// Queues `data` for `to` (`None`: the connected peer); the reactor sends the queue at
    /// the end of its turn. Safe from any thread. All of the datagram or none is queued.
    pub fn send(
        self: &Arc<Self>,
        data: &[u8],
        to: Option<SocketAddr>,
    ) -> Result<(), DatagramRefusal> {
        if self.shared.is_forked_copy() {
            // Checked before locking: a lock held at the fork stays held in the child.
            return Err(DatagramRefusal::Closed);
        }
        let Some(destination) = to.or(self.peer) else {
            return Err(DatagramRefusal::NoDestination);
        };
        let max = max_payload(&destination);
        if data.len() > max {
            return Err(DatagramRefusal::TooLarge {
                size: data.len(),
                max,
            });
        }
        let mut state = self.state();
        if state.is_closing() {
            return Err(DatagramRefusal::Closed);
        }
        let limits = self.limits;
        let (queued, queued_bytes) = (state.queue.len(), state.bytes.len());
        if queued >= limits.max_queue || data.len() > limits.max_queue_bytes - queued_bytes {
            state.refused += 1;
            // Queued, so that the reactor counts the refusal even with nothing to send.
            self.queue(state);
            return Err(DatagramRefusal::Full {
                queued,
                queued_bytes,
                size: data.len(),
                limits,
            });
        }
        state.bytes.extend(data);
        state.queue.push_back(Outgoing {
            len: data.len(),
            to,
        });
        if !self.queue(state) {
            return Err(DatagramRefusal::Closed);
        }
        Ok(())
    }

    /// Datagrams and bytes queued and not yet handed to the kernel.
    pub fn queued(&self) -> (usize, usize) {
        let state = self.state();
        (state.queue.len(), state.bytes.len())
    }

    /// Requests a close: the queue is sent, then the socket closed. Idempotent.
    pub fn close(self: &Arc<Self>) {
        let mut state = self.state();
        if !state.is_closing() {
            state.close_requested = true;
            self.queue(state);
        }
    }

    /// Requests an immediate close: the queue is dropped. Idempotent.
    pub fn abort(self: &Arc<Self>) {
        let mut state = self.state();
        if !state.closed && !state.abort_requested {
            state.abort_requested = true;
            self.queue(state);
        }
    }

    /// Stops reading until `resume_reading`: datagrams wait in the kernel's receive
    /// buffer, which drops what does not fit. Idempotent.
    pub fn pause_reading(&self) {
        self.state().read_paused = true;
    }

    /// Resumes reading. Idempotent.
    pub fn resume_reading(self: &Arc<Self>) {
        let mut state = self.state();
        if state.read_paused && !state.closed {
            state.read_paused = false;
            state.read_resume_pending = true;
            self.queue(state);
        }
    }

    /// Holds reading while the handler is behind (the worker pool's backlog), apart from
    /// the user's `pause_reading()`. Reactor thread.
    pub fn hold_reading(&self) {
        self.state().backlog_full = true;
    }

    /// Ends [`DatagramCore::hold_reading`]: reading goes on unless the user paused it.
    pub fn release_reading(self: &Arc<Self>) {
        let mut state = self.state();
        if state.backlog_full && !state.closed {
            state.backlog_full = false;
            if !state.read_paused {
                state.read_resume_pending = true;
                self.queue(state);
            }
        }
    }

    /// Puts the endpoint on the reactor's queue unless it is there already. Returns
    /// `false` when the loop has finished, so nothing will ever act on it.
    fn queue(self: &Arc<Self>, mut state: MutexGuard<'_, DatagramState>) -> bool {
        if state.queued {
            return true;
        }
        // NOTE: locked while the command is queued, as a session is: the lock order
        // state -> queue is the only one.
        if self
            .shared
            .submit(Command::AttendEndpoint(Arc::clone(self)))
        {
            state.queued = true;
            return true;
        }
        state.mark_closed();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::epoll::{Poller, Waker};

    fn endpoint(limits: DatagramLimits) -> Arc<DatagramCore> {
        let poller = Poller::new().expect("epoll");
        let waker = Waker::new(&poller).expect("waker");
        let shared = Arc::new(LoopShared::new(waker, poller.raw_fd()));
        let local = "127.0.0.1:9".parse().expect("addr");
        DatagramCore::new(shared, (local, None), limits, false)
    }

    #[test]
    fn the_queue_is_bounded_by_count_and_by_bytes() {
        let limits = DatagramLimits {
            max_queue: 3,
            max_queue_bytes: 100,
            ..DatagramLimits::DEFAULT
        };
        let core = endpoint(limits);
        let to = Some("127.0.0.1:7".parse().expect("addr"));
        core.send(&[1; 60], to).expect("first");
        let refused = core.send(&[2; 41], to).expect_err("over the bytes");
        assert!(matches!(
            refused,
            DatagramRefusal::Full {
                queued: 1,
                queued_bytes: 60,
                size: 41,
                ..
            }
        ));
        core.send(&[3; 40], to).expect("exactly to the byte limit");
        core.send(&[], to).expect("an empty datagram is a datagram");
        let refused = core.send(&[], to).expect_err("over the count");
        assert!(matches!(refused, DatagramRefusal::Full { queued: 3, .. }));
        assert_eq!(core.queued(), (3, 100));
        assert_eq!(core.state().refused, 2);
    }

    #[test]
    fn a_datagram_needs_a_destination_and_a_size_udp_can_carry() {
        let core = endpoint(DatagramLimits::DEFAULT);
        assert_eq!(core.send(b"x", None), Err(DatagramRefusal::NoDestination));
        let v4 = Some("127.0.0.1:7".parse().expect("addr"));
        let refused = core.send(&vec![0; 65_508], v4).expect_err("too large");
        assert_eq!(
            refused,
            DatagramRefusal::TooLarge {
                size: 65_508,
                max: 65_507
            }
        );
        core.close();
        assert_eq!(core.send(b"x", v4), Err(DatagramRefusal::Closed));
    }
}

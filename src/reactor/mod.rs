//! The reactor: owns the listeners and session sockets, turns epoll
//! readiness into a batch of events, and performs every accept, read, send and close.
//!
//! One call to [`Reactor::turn`] is one wakeup. It runs the commands other threads queued,
//! flushes what handlers wrote during the previous batch (one send per session), waits,
//! then accepts and reads everything that became ready. The batch it leaves behind is
//! handed to the handlers in one go; nothing in this module knows about Python.
//!
//! Fairness: a session reads at most [`READ_BUDGET`] bytes per turn (a datagram endpoint
//! as much, or [`DATAGRAM_BUDGET`] datagrams) and the whole turn at most [`ARENA_LIMIT`];
//! a session (or endpoint, or listener) cut short is re-queued and served next
//! turn without waiting for a new edge, which edge-triggered epoll would never send.
//!
//! This file holds the reactor and the turn itself; its configuration is in `config`, its
//! events in `event`, and each phase of a turn lives beside it:
//! `slots` (the slot table and its generations), `accept` (listeners), `refusal` (peers
//! over `max_connections`), `connect` (connects the reactor finishes), `tls` (handshakes,
//! and a TLS session's reads and sends), `read`, `flush`, `close` (releasing a session),
//! `datagram` (UDP endpoints: recvmmsg, sendmmsg, their close), `proxy_header` (a
//! PROXY protocol header awaited before a session exists), `idle` (the idle timeout),
//! `deadlines` (what comes due, and when the next thing does) and `stop`.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::ReadArena;
use crate::shared::{
    Adoption, Arrival, Command, IdleTimeout, Listener, LoopShared, Placement, SessionCore,
    SocketFile, Stats,
};
use crate::sys::address::{self, Address};
use crate::sys::datagram::Received;
use crate::sys::epoll::{Events, Poller, Readiness, Token, Waker};
use crate::sys::net;
use crate::timers::TimerQueue;
use crate::tls::{TlsFailure, TlsStream};

mod accept;
mod close;
mod config;
mod connect;
mod datagram;
#[cfg(test)]
mod datagram_tests;
mod deadlines;
#[cfg(test)]
mod driven_tests;
mod event;
mod flush;
mod idle;
mod proxy_header;
#[cfg(test)]
mod proxy_tests;
mod read;
mod refusal;
mod slots;
mod stop;
#[cfg(test)]
mod tests;
mod tls;
#[cfg(test)]
mod tls_tests;

pub use config::{LoopConfig, Siblings, StopCloses};
pub use datagram::DATAGRAM_BUDGET;
pub use event::{DatagramFailure, Event, ReceivedDatagram};

use accept::close_listener;
use close::{discard_input, CloseKind};
use datagram::{endpoint_slot, DatagramSlot};
use deadlines::LazyDeadlines;
use idle::IdleSweep;
use proxy_header::{AwaitingHeader, ProxyHeaders};
use slots::{forget_open_session, Origin, Phase, SessionSlot, Slot};
use tls::receive_tls;

/// Most bytes one session may read in one turn before others get their go.
pub const READ_BUDGET: usize = 256 * 1024;
/// Most bytes all sessions together may read in one turn (plus one session's budget).
pub const ARENA_LIMIT: usize = 4 * 1024 * 1024;
/// The buffer that unwanted input is read away into, and a TLS session's ciphertext
/// read into (its plaintext goes on into the arena).
const SCRATCH_SIZE: usize = 64 * 1024;
/// Most connections one listener accepts in one turn.
const ACCEPT_BUDGET: usize = 256;
/// Events taken from the kernel per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// How long accepting pauses after the process ran out of file descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Unread input discarded at a graceful close before giving up (then close sends RST).
const DISCARD_LIMIT: usize = 256 * 1024;
/// How long a connection refused by `max_connections` may take to finish sending (its
/// input is read away meanwhile) before it is closed anyway.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Most refused connections lingering at once; past it a refused connection is closed
/// after reading away only what has already arrived.
const REFUSALS_LINGERING_MAX: usize = 256;
/// Idle sessions are looked for at a quarter of the shortest idle timeout, within these.
const IDLE_SWEEP_MIN: Duration = Duration::from_millis(10);
const IDLE_SWEEP_MAX: Duration = Duration::from_secs(1);

/// The epoll reactor.
pub struct Reactor {
    poller: Poller,
    events: Events,
    shared: Arc<LoopShared>,
    config: LoopConfig,
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    arena: ReadArena,
    /// The turn's datagrams, their bytes in the arena.
    datagrams: Vec<ReceivedDatagram>,
    /// What one `recvmmsg` reported, before it joins `datagrams`.
    recv_scratch: Vec<Received>,
    scratch: Vec<u8>,
    batch: Vec<Event>,
    commands: Vec<Command>,
    /// Tokens cut short by a budget last turn, to serve again this turn.
    again: Vec<Token>,
    turn: u64,
    sessions: usize,
    endpoints: usize,
    notify_drained: bool,
    stop_deadline: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Whether the current run of accept pauses has been reported.
    accept_pause_reported: bool,
    timers: TimerQueue,
    /// The shortest idle timeout in force (the loop's or a session's), and when to look
    /// for idle sessions next.
    idle: IdleSweep,
    /// The deadlines of sessions connecting or handshaking, by token and the phase the
    /// deadline is for: an entry whose session has left that phase is stale.
    opening: LazyDeadlines<(u64, Phase)>,
    /// Refused connections lingering, with their deadlines (in deadline order).
    refusals: VecDeque<(Instant, Token)>,
    /// Connections awaiting their PROXY header.
    proxy: ProxyHeaders,
    /// The time of the last wakeup: one clock read per turn serves every session.
    now: Instant,
    stats: Stats,
    finished: bool,
    /// How long the last turn waited in `epoll_wait`.
    last_wait: Duration,
}

impl std::fmt::Debug for Reactor {
    // A summary: the full state (every slot, the read arena) would drown it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("turn", &self.turn)
            .field("sessions", &self.sessions)
            .field("slots", &self.slots.len())
            .field("stop_deadline", &self.stop_deadline)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// A reactor with its own epoll instance and waker.
    pub fn new(config: LoopConfig) -> io::Result<Reactor> {
        let poller = Poller::new()?;
        let waker = Waker::new(&poller)?;
        let shared = Arc::new(LoopShared::new(waker, poller.raw_fd()));
        let now = Instant::now();
        Ok(Reactor {
            poller,
            events: Events::with_capacity(EVENTS_PER_WAIT),
            shared,
            idle: IdleSweep::new(config.idle_timeout, now),
            opening: LazyDeadlines::default(),
            refusals: VecDeque::new(),
            proxy: ProxyHeaders::default(),
            config,
            slots: Vec::new(),
            vacant: Vec::new(),
            arena: ReadArena::with_capacity(64 * 1024),
            datagrams: Vec::new(),
            recv_scratch: Vec::new(),
            scratch: vec![0; SCRATCH_SIZE],
            batch: Vec::new(),
            commands: Vec::new(),
            again: Vec::new(),
            turn: 0,
            sessions: 0,
            endpoints: 0,
            notify_drained: false,
            stop_deadline: None,
            accept_paused_until: None,
            accept_pause_reported: false,
            timers: TimerQueue::default(),
            now,
            stats: Stats::default(),
            finished: false,
            last_wait: Duration::ZERO,
        })
    }

    /// What other threads use to reach this reactor.
    pub fn shared(&self) -> &Arc<LoopShared> {
        &self.shared
    }

    /// What the loop is configured with.
    pub fn config(&self) -> &LoopConfig {
        &self.config
    }

    /// Whether to report [`Event::Drained`] (only worth it when a handler listens).
    pub fn set_notify_drained(&mut self, notify: bool) {
        self.notify_drained = notify;
    }

    /// The events of the last turn.
    pub fn batch(&self) -> &[Event] {
        &self.batch
    }

    /// Takes the events of the last turn (their `Arc`s and errors move to the caller).
    pub fn take_batch(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.batch)
    }

    /// Gives back a drained batch vector so its capacity is reused.
    pub fn recycle_batch(&mut self, mut batch: Vec<Event>) {
        batch.clear();
        if self.batch.is_empty() {
            self.batch = batch;
        }
    }

    /// Bytes received this turn, by an [`Event::Received`] range.
    pub fn received(&self, range: Range<usize>) -> &[u8] {
        self.arena.get(range)
    }

    /// Takes the memory holding this turn's received bytes, for views of them that a
    /// handler kept; the ranges of this turn's events are void from then on, and the
    /// next turn reads into new memory.
    pub fn take_received_memory(&mut self) -> Vec<u8> {
        self.arena.take_memory()
    }

    /// How long the last turn waited in `epoll_wait` (not busy).
    pub fn last_wait(&self) -> Duration {
        self.last_wait
    }

    /// When a stop in progress aborts what has not flushed, if a stop is in progress.
    pub fn stop_deadline(&self) -> Option<Instant> {
        self.stop_deadline
    }

    /// Whether the reactor has stopped for good (after a stop, once every session closed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// One wakeup: run queued commands (sends, closes, new sessions), wait for readiness,
    /// serve it (accept, read, flush), then whatever came due.
    pub fn turn(&mut self) -> io::Result<()> {
        self.turn_waiting(true)
    }

    /// [`Reactor::turn`] without waiting: serves what is ready now. For a reactor driven
    /// by another event loop, which waits on [`Reactor::epoll_fd`] itself and calls this
    /// when it is readable or when [`Reactor::park`] says.
    pub fn turn_now(&mut self) -> io::Result<()> {
        self.turn_waiting(false)
    }

    /// Ends a driven turn: until the next [`Reactor::turn_now`] the reactor counts as
    /// waiting, so commands other threads queue wake it through the epoll fd, and the
    /// calling thread no longer counts as the reactor's (it runs other code). Returns how
    /// long the driving loop may wait if the fd stays quiet: zero when work was cut short
    /// by a budget or commands are queued already, else until the next timer, connect or
    /// idle deadline (None: only readiness will bring work).
    pub fn park(&mut self) -> Option<Duration> {
        self.shared.leave_reactor_thread();
        let commands_queued = self.shared.begin_poll();
        if commands_queued || !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        self.until_next_deadline()
    }

    /// The epoll instance's fd: readable when this reactor has readiness to serve (its
    /// waker included), for an outer event loop to wait on.
    pub fn epoll_fd(&self) -> std::os::fd::RawFd {
        self.poller.raw_fd()
    }

    fn turn_waiting(&mut self, may_wait: bool) -> io::Result<()> {
        self.shared.enter_reactor_thread();
        self.arena.reset();
        self.datagrams.clear();
        self.batch.clear();
        self.turn += 1;
        self.run_commands();
        if self.check_stop() {
            return Ok(());
        }
        self.wait_for_readiness(may_wait)?;
        self.run_commands();
        self.serve_cut_short();
        for i in 0..self.events.len() {
            let readiness = self.events.get(i);
            self.handle(readiness);
        }
        self.run_deadlines();
        self.check_stop();
        self.shared.publish_stats(&self.stats);
        Ok(())
    }

    /// Waits for readiness: not at all when this turn already has work, else until the
    /// next deadline. A command queued meanwhile wakes it.
    fn wait_for_readiness(&mut self, may_wait: bool) -> io::Result<()> {
        let busy = !may_wait || !self.batch.is_empty() || !self.again.is_empty();
        let mut timeout = if busy {
            Some(Duration::ZERO)
        } else {
            self.until_next_deadline()
        };
        if self.shared.begin_poll() {
            timeout = Some(Duration::ZERO);
        }
        let before = Instant::now();
        let waited = self.poller.wait(&mut self.events, timeout);
        self.shared.end_poll();
        waited?;
        self.now = Instant::now();
        self.last_wait = self.now.saturating_duration_since(before);
        Ok(())
    }

    /// Serves first what was cut short last turn: a session stopped by its budget has a
    /// full receive window and gets no new edge, so behind busy peers with fresh edges it
    /// would otherwise wait for as long as they keep the arena full.
    fn serve_cut_short(&mut self) {
        let again = std::mem::take(&mut self.again);
        for token in again {
            if let Some(session) = session_slot(&mut self.slots, token) {
                session.requeued = false;
                self.read(token, false);
            } else if let Some(endpoint) = endpoint_slot(&mut self.slots, token) {
                endpoint.requeued = false;
                self.read_endpoint(token, false);
            } else if let Some(Slot::Listener { .. }) = self.slots.get(token.slot()) {
                self.accept_ready(token);
            }
        }
    }

    fn handle(&mut self, readiness: Readiness) {
        let token = readiness.token;
        if token == Token::WAKER {
            self.shared.reset_waker();
            return;
        }
        match self.slots.get(token.slot()) {
            Some(slot) if slot.generation() != token.generation() => {}
            Some(Slot::Listener { .. }) => self.accept_ready(token),
            Some(Slot::Refused { .. }) => self.discard_refused(token),
            Some(Slot::AwaitingHeader(_)) => {
                self.read_proxy_header(token, readiness.read_closed || readiness.error)
            }
            Some(Slot::Datagram(_)) => self.endpoint_ready(token, readiness),
            // A connect in progress reports its end as writable, or as an error.
            Some(Slot::Session(session))
                if session.phase == Phase::Connecting
                    && (readiness.writable || readiness.error || readiness.read_closed) =>
            {
                self.finish_connect(token, readiness)
            }
            Some(Slot::Session(session)) if session.phase == Phase::Connecting => {}
            Some(Slot::Session(_)) => {
                // Read first: data that arrived before a reset is still readable and is
                // delivered before the error that ends the session.
                if readiness.readable || readiness.read_closed || readiness.error {
                    self.read(token, readiness.read_closed);
                }
                if readiness.writable || readiness.error {
                    self.flush(token);
                }
                if readiness.error {
                    self.check_error(token);
                }
            }
            _ => {}
        }
    }

    fn run_commands(&mut self) {
        self.shared.take_commands(&mut self.commands);
        let mut commands = std::mem::take(&mut self.commands);
        for command in commands.drain(..) {
            match command {
                Command::Attend(core) => {
                    let token = core.token();
                    if self.is_session(token, &core) {
                        self.flush(token);
                    }
                }
                Command::Adopt(Adoption {
                    core,
                    fd,
                    arrival,
                    tls,
                }) => {
                    let (origin, connect_deadline) = match arrival {
                        Arrival::Connect(deadline) => (Origin::Adopted, deadline),
                        Arrival::HandedOver => (Origin::HandedOver, None),
                    };
                    let registered = self.register(fd, core, origin, connect_deadline, tls);
                    if let Some(token) = registered {
                        if self.stop_deadline.is_some() {
                            self.close_for_stop(token);
                        }
                    }
                }
                Command::AttendEndpoint(core) => {
                    let token = core.token();
                    if self.is_endpoint(token, &core) {
                        self.flush_endpoint(token);
                    }
                }
                Command::Bind(binding) => self.register_endpoint(binding),
                Command::Listen(listener) => self.add_listener(listener),
                Command::StopAccepting(done) => {
                    self.close_listeners(true);
                    if let Some(done) = done {
                        let _ = done.send(()); // the waiter may have given up
                    }
                }
                Command::Stop(deadline) => self.begin_stop(deadline),
                Command::Timer(id, when) => self.timers.insert(id, when),
                Command::CallSoon(id) => {
                    self.stats.calls_soon += 1;
                    self.batch.push(Event::Timer { id });
                }
                Command::CancelTimer(id) => self.timers.cancel(id),
            }
        }
        self.commands = commands;
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // Its fds close right after this: a forked child must not close those numbers.
        self.shared.reactor_done();
    }
}

/// Puts a session on the list to serve next turn, once however often it is asked.
fn requeue(again: &mut Vec<Token>, requeued: &mut bool, token: Token) {
    if !*requeued {
        *requeued = true;
        again.push(token);
    }
}

/// The session in `token`'s slot, if the slot still holds that session (a free function
/// so callers can borrow other fields of the reactor alongside).
fn session_slot(slots: &mut [Slot], token: Token) -> Option<&mut SessionSlot> {
    match slots.get_mut(token.slot()) {
        Some(Slot::Session(s)) if s.generation == token.generation() => Some(s),
        _ => None,
    }
}

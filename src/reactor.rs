//! The reactor (the seed's NetIO): owns the listeners and session sockets, turns epoll
//! readiness into a batch of events, and performs every accept, read, send and close.
//!
//! One call to [`Reactor::turn`] is one wakeup. It runs the commands other threads queued,
//! flushes what handlers wrote during the previous batch (one send per session), waits,
//! then accepts and reads everything that became ready. The batch it leaves behind is
//! handed to the handlers in one go; nothing in this module knows about Python.
//!
//! Fairness: a session reads at most [`READ_BUDGET`] bytes per turn and the whole turn at
//! most [`ARENA_LIMIT`]; a session (or listener) cut short is re-queued and served next
//! turn without waiting for a new edge, which edge-triggered epoll would never send.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::ReadArena;
use crate::epoll::{Events, Poller, Readiness, Token, Waker};
use crate::net::{self, Address, SocketOptions};
use crate::session::{Command, LoopShared, SessionCore, Stats, WriteLimits};
use crate::timers::TimerQueue;

/// Most bytes one session may read in one turn before others get their go.
pub const READ_BUDGET: usize = 256 * 1024;
/// Most bytes all sessions together may read in one turn (plus one session's budget).
pub const ARENA_LIMIT: usize = 4 * 1024 * 1024;
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

/// What a loop is configured with.
#[derive(Clone, Debug, Default)]
pub struct LoopConfig {
    /// Socket options for listeners and sessions.
    pub options: SocketOptions,
    /// Each new session's write-buffer limits.
    pub limits: WriteLimits,
    /// Close a session after this long without traffic (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Accept at most this many sessions at once; more are accepted and closed at once.
    pub max_connections: Option<usize>,
}

/// What happened to a session during a turn, in the order it happened.
pub enum Event {
    /// A connection was accepted, or a connected client socket was adopted.
    Opened {
        /// The session's token.
        token: Token,
        /// The session, for the handler layer to wrap.
        session: Arc<SessionCore>,
    },
    /// Bytes arrived: everything this session read this turn, in order.
    Received {
        /// The session's token.
        token: Token,
        /// Where the bytes are in [`Reactor::received`].
        range: Range<usize>,
    },
    /// The peer sent FIN. The session stays open until something closes it.
    Eof {
        /// The session's token.
        token: Token,
    },
    /// The write buffer drained to the kernel (reported when asked for, see
    /// [`Reactor::set_notify_drained`]).
    Drained {
        /// The session's token.
        token: Token,
    },
    /// The write buffer rose above its high watermark (after the reactor sent what it
    /// could).
    PauseWriting {
        /// The session's token.
        token: Token,
    },
    /// The write buffer fell to its low watermark after a `PauseWriting`.
    ResumeWriting {
        /// The session's token.
        token: Token,
    },
    /// A connect that never completed ended: refused, timed out, or cancelled by
    /// `close()`/`abort()`/stop (`error` is `None`). The session was never opened.
    ConnectFailed {
        /// The session, which the handler layer knows only by its core.
        session: Arc<SessionCore>,
        /// Why, unless the user cancelled it.
        error: Option<io::Error>,
    },
    /// The session is closed and its slot freed; `error` is `None` for a clean close.
    Closed {
        /// The session's token.
        token: Token,
        /// Why it closed, if not cleanly.
        error: Option<io::Error>,
    },
    /// A timer (or a `call_soon_threadsafe`) is due.
    Timer {
        /// The id it was scheduled with.
        id: u64,
    },
    /// Accepting paused: the process ran out of file descriptors or memory. Reported once
    /// per episode (until an accept succeeds again).
    AcceptPaused {
        /// What accept said.
        error: io::Error,
    },
}

struct SessionSlot {
    generation: u32,
    fd: OwnedFd,
    core: Arc<SessionCore>,
    /// epoll has reported the peer's FIN (`EPOLLRDHUP`). Sticky, because that edge is
    /// reported once: until EOF is read, a short read no longer proves the socket drained.
    fin_reported: bool,
    /// The peer's FIN has been read; there is nothing more to read.
    eof: bool,
    /// The turn in which this session last read, so a session that is both re-queued and
    /// reported ready reads once.
    read_turn: u64,
    /// When bytes last moved in either direction (for the idle timeout).
    last_active: Instant,
    /// The session is on the `again` list already.
    requeued: bool,
    /// A non-blocking connect is still in progress: nothing is read or sent yet.
    connecting: bool,
    /// The connection failed while reading was paused, with input still unread: that
    /// input is delivered after `resume_reading()`, then the session closes with this.
    broken: Option<io::Error>,
}

enum Slot {
    Vacant {
        generation: u32,
    },
    Listener {
        generation: u32,
        fd: OwnedFd,
        addr: Address,
    },
    /// A connection refused by `max_connections`: FIN sent, its input read away until the
    /// peer's EOF (or a deadline), so the peer sees a clean EOF rather than RST.
    Refused {
        generation: u32,
        fd: OwnedFd,
        discarded: usize,
    },
    Session(SessionSlot),
}

impl Slot {
    fn generation(&self) -> u32 {
        match self {
            Slot::Vacant { generation }
            | Slot::Listener { generation, .. }
            | Slot::Refused { generation, .. } => *generation,
            Slot::Session(session) => session.generation,
        }
    }
}

/// How a close treats the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CloseKind {
    /// FIN after every queued byte (the socket's own buffer is already flushed to it).
    Graceful,
    /// RST, dropping whatever the kernel still holds.
    Abortive,
    /// The connection is already dead (reset, or an error); just release it.
    Dead,
}

/// The epoll reactor.
pub struct Reactor {
    poller: Poller,
    events: Events,
    shared: Arc<LoopShared>,
    config: LoopConfig,
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    arena: ReadArena,
    scratch: Vec<u8>,
    batch: Vec<Event>,
    commands: Vec<Command>,
    /// Tokens cut short by a budget last turn, to serve again this turn.
    again: Vec<Token>,
    turn: u64,
    sessions: usize,
    notify_drained: bool,
    stop_deadline: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Whether the current run of accept pauses has been reported.
    accept_pause_reported: bool,
    timers: TimerQueue,
    /// The shortest idle timeout in force (the loop's or a session's), and when to look
    /// for idle sessions next.
    idle: IdleSweep,
    /// Sessions still connecting, with their deadlines.
    connecting: Vec<(Instant, Token)>,
    /// Refused connections lingering, with their deadlines (in deadline order).
    refusals: VecDeque<(Instant, Token)>,
    /// The time of the last wakeup: one clock read per turn serves every session.
    now: Instant,
    stats: Stats,
    finished: bool,
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
            connecting: Vec::new(),
            refusals: VecDeque::new(),
            config,
            slots: Vec::new(),
            vacant: Vec::new(),
            arena: ReadArena::with_capacity(64 * 1024),
            scratch: vec![0; 16 * 1024],
            batch: Vec::new(),
            commands: Vec::new(),
            again: Vec::new(),
            turn: 0,
            sessions: 0,
            notify_drained: false,
            stop_deadline: None,
            accept_paused_until: None,
            accept_pause_reported: false,
            timers: TimerQueue::default(),
            now,
            stats: Stats::default(),
            finished: false,
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

    /// Whether the reactor has stopped for good (after a stop, once every session closed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// One wakeup: run queued commands and flush, wait for readiness, accept and read.
    pub fn turn(&mut self) -> io::Result<()> {
        self.shared.enter_reactor_thread();
        self.arena.reset();
        self.batch.clear();
        self.turn += 1;
        self.run_commands();
        if self.check_stop() {
            return Ok(());
        }

        let busy = !self.batch.is_empty() || !self.again.is_empty();
        let mut timeout = if busy {
            Some(Duration::ZERO)
        } else {
            self.until_next_deadline()
        };
        if self.shared.begin_poll() {
            timeout = Some(Duration::ZERO);
        }
        let waited = self.poller.wait(&mut self.events, timeout);
        self.shared.end_poll();
        waited?;
        self.now = Instant::now();

        self.run_commands();
        // What was cut short last turn goes first: a session stopped by its budget has
        // a full receive window and gets no new edge, so behind busy peers with fresh
        // edges it would otherwise wait for as long as they keep the arena full.
        let again = std::mem::take(&mut self.again);
        for token in again {
            if let Some(session) = session_slot(&mut self.slots, token) {
                session.requeued = false;
                self.read(token, false);
            } else if let Some(Slot::Listener { .. }) = self.slots.get(token.slot()) {
                self.accept_ready(token);
            }
        }
        for i in 0..self.events.len() {
            let readiness = self.events.get(i);
            self.handle(readiness);
        }
        if self
            .accept_paused_until
            .is_some_and(|until| self.now >= until)
        {
            self.accept_paused_until = None;
            for token in self.listener_tokens() {
                self.accept_ready(token);
            }
        }
        if !self.connecting.is_empty() {
            self.expire_connects();
        }
        if !self.refusals.is_empty() {
            self.expire_refusals();
        }
        if self.idle.next.is_some_and(|at| self.now >= at) {
            self.close_idle_sessions();
        }
        let (batch, stats) = (&mut self.batch, &mut self.stats);
        self.timers.pop_due(self.now, |id| {
            stats.timers_fired += 1;
            batch.push(Event::Timer { id });
        });
        self.check_stop();
        self.shared.publish_stats(&self.stats);
        Ok(())
    }

    /// Releases a reactor that never ran: queued listeners are closed (Unix socket files
    /// removed) without accepting anything, and every later command is refused.
    pub fn shutdown_unstarted(&mut self) {
        self.stop_deadline = Some(Instant::now());
        self.finish();
    }

    /// Closes every session at once with RST and finishes (for a fatal error). Events
    /// this turn already produced stay in the batch, so each session gets its `Closed`.
    pub fn abort_all(&mut self, error: &io::Error) {
        self.close_listeners();
        self.close_refusals();
        for token in self.session_tokens() {
            let error = io::Error::new(error.kind(), error.to_string());
            self.release(token, CloseKind::Abortive, Some(error));
        }
        self.finish();
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
            // A connect in progress reports its end as writable, or as an error.
            Some(Slot::Session(session))
                if session.connecting
                    && (readiness.writable || readiness.error || readiness.read_closed) =>
            {
                self.finish_connect(token, readiness)
            }
            Some(Slot::Session(session)) if session.connecting => {}
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

    /// A non-blocking connect ended: open the session (and serve what is already there),
    /// or release it with the connect's error.
    fn finish_connect(&mut self, token: Token, readiness: Readiness) {
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        match net::take_error(session.fd.as_fd()) {
            Ok(None) => {
                session.connecting = false;
                let core = Arc::clone(&session.core);
                self.connecting.retain(|(_, pending)| *pending != token);
                self.batch.push(Event::Opened {
                    token,
                    session: core,
                });
                // Writes made while connecting, and a reply that came with the handshake.
                self.flush(token);
                if readiness.readable || readiness.read_closed {
                    self.read(token, readiness.read_closed);
                }
            }
            Ok(Some(err)) | Err(err) => self.release(token, CloseKind::Dead, Some(err)),
        }
    }

    /// Ends the connects whose deadline has passed, with `TimedOut`.
    fn expire_connects(&mut self) {
        let now = self.now;
        let expired: Vec<Token> = self
            .connecting
            .iter()
            .filter(|(deadline, _)| *deadline <= now)
            .map(|(_, token)| *token)
            .collect();
        for token in expired {
            let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            self.release(token, CloseKind::Dead, Some(error));
        }
    }

    fn run_commands(&mut self) {
        self.shared.take_commands(&mut self.commands);
        let mut commands = std::mem::take(&mut self.commands);
        for command in commands.drain(..) {
            match command {
                Command::Flush(core) => {
                    let token = core.token();
                    if self.is_session(token, &core) {
                        self.flush(token);
                    }
                }
                Command::Adopt(core, fd, connect_deadline) => {
                    // `LoopShared::adopt` already counted it in the status.
                    let registered = self.register(fd, Arc::clone(&core), false, connect_deadline);
                    if let Some(token) = registered {
                        if self.stop_deadline.is_some() {
                            core.outbox().close_requested = true;
                            self.flush(token);
                        }
                    }
                }
                Command::Listen(fd, addr) => self.add_listener(fd, addr),
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

    fn is_session(&self, token: Token, core: &Arc<SessionCore>) -> bool {
        matches!(
            self.slots.get(token.slot()),
            Some(Slot::Session(s)) if s.generation == token.generation() && Arc::ptr_eq(&s.core, core)
        )
    }

    fn session(&mut self, token: Token) -> Option<&mut SessionSlot> {
        session_slot(&mut self.slots, token)
    }

    fn allocate(&mut self) -> (usize, u32) {
        if let Some(index) = self.vacant.pop() {
            let index = index as usize;
            // Wrapping is harmless: a token would have to survive 2^32 reuses of its slot.
            (index, self.slots[index].generation().wrapping_add(1))
        } else {
            self.slots.push(Slot::Vacant { generation: 0 });
            (self.slots.len() - 1, 1)
        }
    }

    /// A slot (still vacant) for `fd`, registered for read readiness; `None`, the slot
    /// given back, when epoll refuses (only possible when the kernel is out of memory).
    fn allocate_reader(&mut self, fd: std::os::fd::BorrowedFd<'_>) -> Option<(usize, Token)> {
        let (index, generation) = self.allocate();
        let token = Token::new(index as u32, generation);
        if self.poller.add_reader(fd, token).is_err() {
            self.slots[index] = Slot::Vacant { generation };
            self.vacant.push(index as u32);
            return None;
        }
        Some((index, token))
    }

    fn add_listener(&mut self, fd: OwnedFd, addr: Address) {
        if self.stop_deadline.is_some() {
            // Opened as the server stopped: close it at once, as stop closes the others.
            remove_unix_socket_file(fd, addr);
            return;
        }
        let Some((index, token)) = self.allocate_reader(fd.as_fd()) else {
            return;
        };
        self.slots[index] = Slot::Listener {
            generation: token.generation(),
            fd,
            addr,
        };
        // Connections may already be queued: an edge for them will not come.
        self.accept_ready(token);
    }

    /// Registers a session socket; `count` says whether to add it to the status count
    /// (adopted sessions were counted when they were queued).
    fn register(
        &mut self,
        fd: OwnedFd,
        core: Arc<SessionCore>,
        count: bool,
        connect_deadline: Option<Instant>,
    ) -> Option<Token> {
        let (index, generation) = self.allocate();
        let token = Token::new(index as u32, generation);
        core.set_token(token);
        if self.poller.add_stream(fd.as_fd(), token).is_err() {
            // Only possible when the kernel is out of memory: the socket is dropped.
            self.slots[index] = Slot::Vacant { generation };
            self.vacant.push(index as u32);
            let mut outbox = core.outbox();
            outbox.closed = true;
            outbox.buffer.clear();
            if !count {
                self.shared.update_status(|status| status.sessions -= 1);
            }
            return None;
        }
        core.set_fd(Some(fd.as_raw_fd()));
        self.slots[index] = Slot::Session(SessionSlot {
            generation,
            fd,
            core: Arc::clone(&core),
            fin_reported: false,
            eof: false,
            read_turn: 0,
            last_active: self.now,
            requeued: false,
            connecting: connect_deadline.is_some(),
            broken: None,
        });
        self.sessions += 1;
        self.stats.sessions_total += 1;
        if count {
            self.shared.update_status(|status| status.sessions += 1);
        }
        match connect_deadline {
            // Opened once the connect completes: epoll reports it writable (or failed).
            Some(deadline) => self.connecting.push((deadline, token)),
            None => self.batch.push(Event::Opened {
                token,
                session: core,
            }),
        }
        Some(token)
    }

    fn accept_ready(&mut self, token: Token) {
        if self.accept_paused_until.is_some() || self.stop_deadline.is_some() {
            return;
        }
        let Some(Slot::Listener { fd, .. }) = self.slots.get(token.slot()) else {
            return;
        };
        // A TCP listener tells how many connections are queued: exactly those are
        // accepted, and any arriving meanwhile raise a new edge. A Unix listener cannot
        // tell, so it is accepted from until EAGAIN.
        let queued = net::queued_connections(fd.as_fd());
        for _ in 0..queued.map_or(ACCEPT_BUDGET, |n| n.min(ACCEPT_BUDGET)) {
            let Some(Slot::Listener { fd, addr, .. }) = self.slots.get(token.slot()) else {
                return;
            };
            let listen_addr = addr.clone();
            match net::accept(fd.as_fd()) {
                Ok(Some((stream, peer))) => {
                    self.accept_pause_reported = false;
                    self.open_accepted(stream, peer, listen_addr);
                }
                Ok(None) => return,
                Err(err) => {
                    // The connection stays queued in the kernel; retry after a pause
                    // instead of spinning on an accept that cannot succeed (out of fds
                    // or memory) or giving up on the backlog until a new edge (anything
                    // else `net::accept` did not already retry).
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.stats.accept_pauses += 1;
                    if !self.accept_pause_reported {
                        self.accept_pause_reported = true;
                        self.batch.push(Event::AcceptPaused { error: err });
                    }
                    return;
                }
            }
        }
        if queued.is_none_or(|n| n > ACCEPT_BUDGET) {
            // The budget ran out with connections possibly left, which raise no new edge.
            self.again.push(token);
        }
    }

    fn open_accepted(&mut self, stream: OwnedFd, peer: Option<Address>, listen_addr: Address) {
        self.stats.accepted += 1;
        if self
            .config
            .max_connections
            .is_some_and(|max| self.sessions >= max)
        {
            self.stats.refused_by_limit += 1;
            self.refuse(stream);
            return;
        }
        let (peer, local) = match listen_addr {
            // A Unix peer is unnamed; the local address is the listener's path.
            Address::Unix(_) => (Address::Unix(Default::default()), listen_addr),
            Address::Inet(inet) => {
                // A peer that reset before we got here may have no address: drop it.
                let Some(peer) = peer.or_else(|| net::peer_addr(stream.as_fd()).ok()) else {
                    return;
                };
                let local = if inet.ip().is_unspecified() {
                    match net::local_addr(stream.as_fd()) {
                        Ok(local) => local,
                        Err(_) => return,
                    }
                } else {
                    listen_addr
                };
                (peer, local)
            }
        };
        let core = SessionCore::new(Arc::clone(&self.shared), peer, local, self.config.limits);
        self.register(stream, core, true, None);
    }

    /// Turns away a connection over `max_connections`: FIN at once keeps the backlog
    /// moving and tells the peer plainly, but closing a socket with unread input sends RST,
    /// which can destroy that FIN before the peer reads it. So the refused socket lingers
    /// (bounded in number, time and bytes) while its input is read away.
    fn refuse(&mut self, stream: OwnedFd) {
        if net::shutdown_write(stream.as_fd()).is_err() {
            return;
        }
        if self.refusals.len() >= REFUSALS_LINGERING_MAX {
            discard_input(stream.as_fd(), &mut self.scratch, DISCARD_LIMIT);
            return;
        }
        let Some((index, token)) = self.allocate_reader(stream.as_fd()) else {
            return;
        };
        // Input already queued is reported by the first wait: registering checks it.
        self.slots[index] = Slot::Refused {
            generation: token.generation(),
            fd: stream,
            discarded: 0,
        };
        self.refusals.push_back((self.now + REFUSAL_LINGER, token));
    }

    /// Reads away a refused connection's input; closes it at the peer's EOF, on an error,
    /// or once it has sent more than a graceful close would read away.
    fn discard_refused(&mut self, token: Token) {
        let Some(Slot::Refused { fd, discarded, .. }) = self.slots.get_mut(token.slot()) else {
            return;
        };
        let done = loop {
            match net::recv(fd.as_fd(), &mut self.scratch) {
                Ok(0) => break true,
                Ok(n) => {
                    *discarded += n;
                    if *discarded >= DISCARD_LIMIT {
                        break true;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if done {
            self.free_refused(token);
        }
    }

    /// Closes the refusals whose linger time is over.
    fn expire_refusals(&mut self) {
        while let Some(&(deadline, token)) = self.refusals.front() {
            if deadline > self.now {
                break;
            }
            self.refusals.pop_front();
            self.free_refused(token);
        }
    }

    /// Closes a refused connection (if `token` still names one) and frees its slot.
    fn free_refused(&mut self, token: Token) {
        if !matches!(self.slots.get(token.slot()), Some(Slot::Refused { generation, .. }) if *generation == token.generation())
        {
            return;
        }
        let slot = std::mem::replace(
            &mut self.slots[token.slot()],
            Slot::Vacant {
                generation: token.generation(),
            },
        );
        self.vacant.push(token.slot() as u32);
        self.refusals.retain(|(_, pending)| *pending != token);
        drop(slot);
    }

    fn read(&mut self, token: Token, read_closed: bool) {
        let turn = self.turn;
        let arena_full = self.arena.len() >= ARENA_LIMIT;
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        session.fin_reported |= read_closed;
        if session.eof || session.connecting {
            return;
        }
        if session.read_turn == turn {
            // Read already this turn (it was re-queued from the last), and now an edge
            // reports what arrived since, a FIN perhaps: that edge will not come again,
            // so read next turn.
            requeue(&mut self.again, &mut session.requeued, token);
            return;
        }
        {
            let outbox = session.core.outbox();
            if outbox.read_paused || outbox.is_closing() {
                return;
            }
        }
        if arena_full {
            requeue(&mut self.again, &mut session.requeued, token);
            return;
        }
        session.read_turn = turn;
        let read_closed = session.fin_reported;
        let start = self.arena.len();
        let mut eof = false;
        let mut error = None;
        let mut budget_spent = false;
        loop {
            let want = READ_BUDGET - (self.arena.len() - start);
            match self
                .arena
                .fill_with(want, |buf| net::recv(session.fd.as_fd(), buf))
            {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) if n == want => {
                    // Budget spent with data possibly left: serve again next turn.
                    requeue(&mut self.again, &mut session.requeued, token);
                    budget_spent = true;
                    break;
                }
                // NOTE: a short read proves the receive queue empty at that moment, and
                // any later arrival raises a new edge, so the extra EAGAIN read is skipped;
                // unless FIN was reported, which raises no further edge and must be read.
                Ok(_) if !read_closed => break,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        if eof {
            session.eof = true;
        }
        let end = self.arena.len();
        if end > start {
            session.last_active = self.now;
            self.stats.bytes_in += (end - start) as u64;
            self.batch.push(Event::Received {
                token,
                range: start..end,
            });
        }
        let both_finished = eof && session.core.outbox().fin_sent;
        if session.broken.is_some() && !budget_spent {
            // What arrived before the failure is in this batch; now report the failure.
            let err = session.broken.take();
            self.release(token, CloseKind::Dead, err);
        } else if let Some(err) = error {
            self.release(token, CloseKind::Dead, Some(err));
        } else if eof {
            self.batch.push(Event::Eof { token });
            if both_finished {
                // Our FIN went out earlier: with the peer's, nothing is left to happen.
                self.release(token, CloseKind::Graceful, None);
            }
        }
    }

    /// Ends a session whose socket reports an error that neither a read nor a send has
    /// surfaced: after the peer's EOF nothing reads any more, and with an empty buffer
    /// nothing sends, yet a later RST must still end the session.
    fn check_error(&mut self, token: Token) {
        let Some(session) = self.session(token) else {
            return;
        };
        if let Ok(Some(err)) = net::take_error(session.fd.as_fd()) {
            self.fail(token, err);
        }
    }

    /// The connection failed (a send or the socket reported `err`). If input the peer
    /// sent before the failure is still unread (past a read budget, or under
    /// `pause_reading()`), the session is kept to deliver it, next turn or after the
    /// resume, then closes with `err`; otherwise it closes now.
    fn fail(&mut self, token: Token, err: io::Error) {
        if let Some(session) = session_slot(&mut self.slots, token) {
            let mut outbox = session.core.outbox();
            let unread = || net::unread_bytes(session.fd.as_fd()).is_ok_and(|n| n > 0);
            if !outbox.is_closing() && !session.eof && unread() {
                // Nothing can be sent any more: later writes are refused.
                outbox.connection_lost = true;
                outbox.buffer.clear();
                let paused = outbox.read_paused;
                drop(outbox);
                session.broken.get_or_insert(err);
                if !paused {
                    requeue(&mut self.again, &mut session.requeued, token);
                }
                return;
            }
        }
        self.release(token, CloseKind::Dead, Some(err));
    }

    /// Sends what the session has buffered (one send), then acts on its close, abort or
    /// shutdown request once the buffer is empty.
    fn flush(&mut self, token: Token) {
        let notify_drained = self.notify_drained;
        let now = self.now;
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        let fd = session.fd.as_fd();
        let core = Arc::clone(&session.core);
        let mut outbox = core.outbox();
        outbox.queued = false;
        if outbox.closed {
            return;
        }
        if outbox.abort_requested {
            drop(outbox);
            self.release(token, CloseKind::Abortive, None);
            return;
        }
        if session.connecting {
            // Nothing can be sent yet; closing cancels the connect.
            if outbox.close_requested {
                drop(outbox);
                self.release(token, CloseKind::Dead, None);
            }
            return;
        }
        if std::mem::take(&mut outbox.read_resume_pending) {
            // Data that arrived while reading was paused raised no new edge.
            requeue(&mut self.again, &mut session.requeued, token);
        }
        if session.broken.is_some() {
            // The connection is gone; only unread input is left, for after the resume.
            if outbox.close_requested {
                drop(outbox);
                let err = session.broken.take();
                self.release(token, CloseKind::Dead, err);
            }
            return;
        }
        if let Some(err) = outbox.send_error.take() {
            drop(outbox);
            self.fail(token, err);
            return;
        }
        self.stats.writes += std::mem::take(&mut outbox.writes);
        let sent_directly = std::mem::take(&mut outbox.sent_directly);
        if sent_directly > 0 {
            self.stats.sends += 1;
            self.stats.bytes_out += sent_directly as u64;
            session.last_active = now;
        }
        let had_bytes = sent_directly > 0 || !outbox.buffer.is_empty();
        if !outbox.buffer.is_empty() && !std::mem::take(&mut outbox.kernel_full) {
            self.stats.sends += 1;
            match net::send(fd, outbox.buffer.pending()) {
                Ok(n) => {
                    outbox.buffer.consume(n);
                    self.stats.bytes_out += n as u64;
                    session.last_active = now;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    drop(outbox);
                    self.fail(token, err);
                    return;
                }
            }
        }
        if std::mem::take(&mut outbox.idle_timeout_changed) {
            if let Some(Some(timeout)) = outbox.idle_timeout {
                self.idle.note(timeout, now);
            }
        }
        let buffered = outbox.buffer.len();
        if !outbox.writing_paused && buffered > outbox.limits.high {
            outbox.writing_paused = true;
            self.batch.push(Event::PauseWriting { token });
        } else if outbox.writing_paused && buffered <= outbox.limits.low {
            outbox.writing_paused = false;
            self.batch.push(Event::ResumeWriting { token });
        }
        if buffered > 0 {
            // The kernel's buffer is full; EPOLLOUT will report room.
            return;
        }
        if outbox.close_requested {
            drop(outbox);
            self.release(token, CloseKind::Graceful, None);
            return;
        }
        if outbox.shutdown_requested && !outbox.fin_sent {
            outbox.fin_sent = true;
            if let Err(err) = net::shutdown_write(fd) {
                drop(outbox);
                self.release(token, CloseKind::Dead, Some(err));
                return;
            }
            if session.eof {
                // Both directions are finished: nothing can happen on it any more.
                drop(outbox);
                self.release(token, CloseKind::Graceful, None);
                return;
            }
        }
        drop(outbox);
        if had_bytes && notify_drained {
            self.batch.push(Event::Drained { token });
        }
    }

    /// Frees the session's slot, closes its socket and reports [`Event::Closed`].
    fn release(&mut self, token: Token, kind: CloseKind, error: Option<io::Error>) {
        let index = token.slot();
        let slot = std::mem::replace(
            &mut self.slots[index],
            Slot::Vacant {
                generation: token.generation(),
            },
        );
        let Slot::Session(session) = slot else {
            self.slots[index] = slot;
            return;
        };
        self.vacant.push(index as u32);
        session.core.set_fd(None);
        {
            let mut outbox = session.core.outbox();
            outbox.closed = true;
            outbox.buffer.clear();
        }
        match kind {
            CloseKind::Abortive => {
                // If this fails the close below is graceful instead; nothing is lost.
                let _ = net::set_linger_zero(session.fd.as_fd());
            }
            CloseKind::Graceful if !session.eof => {
                // Unread input would make close() send RST, which can destroy data still
                // in flight to the peer; read it away first (bounded).
                discard_input(session.fd.as_fd(), &mut self.scratch, DISCARD_LIMIT);
            }
            CloseKind::Graceful | CloseKind::Dead => {}
        }
        drop(session.fd);
        self.sessions -= 1;
        if session.connecting {
            // Never opened: the handler layer knows it only by its core.
            self.connecting.retain(|(_, pending)| *pending != token);
            let core = session.core;
            self.batch.push(Event::ConnectFailed {
                session: core,
                error,
            });
            return;
        }
        // The status count drops when the consumer has delivered this event (see
        // `LoopShared::session_closed`), so `join()` cannot return before `on_close` ran.
        self.batch.push(Event::Closed { token, error });
    }

    fn request_close(&mut self, token: Token) {
        if let Some(session) = self.session(token) {
            session.core.outbox().close_requested = true;
            self.flush(token);
        }
    }

    fn listener_tokens(&self) -> Vec<Token> {
        self.tokens(|slot| matches!(slot, Slot::Listener { .. }))
    }

    fn session_tokens(&self) -> Vec<Token> {
        self.tokens(|slot| matches!(slot, Slot::Session(_)))
    }

    fn tokens(&self, keep: impl Fn(&Slot) -> bool) -> Vec<Token> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| keep(slot))
            .map(|(index, slot)| Token::new(index as u32, slot.generation()))
            .collect()
    }

    /// Closes every lingering refused connection (at stop).
    fn close_refusals(&mut self) {
        while let Some((_, token)) = self.refusals.pop_front() {
            self.free_refused(token);
        }
    }

    fn close_listeners(&mut self) {
        for token in self.listener_tokens() {
            let index = token.slot();
            let slot = std::mem::replace(
                &mut self.slots[index],
                Slot::Vacant {
                    generation: token.generation(),
                },
            );
            self.vacant.push(index as u32);
            if let Slot::Listener { fd, addr, .. } = slot {
                remove_unix_socket_file(fd, addr);
            }
        }
    }

    /// Closes every session that has seen no traffic for its idle timeout, and schedules
    /// the next look.
    fn close_idle_sessions(&mut self) {
        let default = self.config.idle_timeout;
        let mut idle = Vec::new();
        // The shortest timeout still in force: once the sessions with short ones are gone,
        // the sweeps slow down again.
        let mut shortest = default;
        for (index, slot) in self.slots.iter().enumerate() {
            if let Slot::Session(session) = slot {
                let timeout = session.core.outbox().idle_timeout.unwrap_or(default);
                if let Some(timeout) = timeout {
                    shortest = Some(shortest.map_or(timeout, |s| s.min(timeout)));
                    if self.now.saturating_duration_since(session.last_active) >= timeout {
                        idle.push((Token::new(index as u32, session.generation), timeout));
                    }
                }
            }
        }
        self.idle.shortest = shortest;
        for (token, timeout) in idle {
            self.stats.idle_timeouts += 1;
            let error = io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no traffic for {:.3}s (idle timeout)",
                    timeout.as_secs_f64()
                ),
            );
            self.release(token, CloseKind::Graceful, Some(error));
        }
        self.idle.swept(self.now);
    }

    fn begin_stop(&mut self, deadline: Instant) {
        if let Some(current) = self.stop_deadline {
            // Stopping already: a later stop can only make the wait shorter.
            self.stop_deadline = Some(current.min(deadline));
            return;
        }
        self.stop_deadline = Some(deadline);
        self.close_listeners();
        self.close_refusals();
        for token in self.session_tokens() {
            self.request_close(token);
        }
    }

    /// Aborts what is left at the stop deadline and finishes once nothing is left.
    /// Returns whether the reactor has finished.
    fn check_stop(&mut self) -> bool {
        let Some(deadline) = self.stop_deadline else {
            return false;
        };
        if self.sessions > 0 && Instant::now() >= deadline {
            for token in self.session_tokens() {
                let error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    "stop() timed out before the session's buffer was sent",
                );
                self.release(token, CloseKind::Abortive, Some(error));
            }
        }
        if self.sessions == 0 && !self.finished {
            self.finish();
        }
        self.finished
    }

    fn finish(&mut self) {
        self.finished = true;
        self.again.clear();
        for command in self.shared.close_queue() {
            match command {
                Command::Adopt(core, _fd, _) => {
                    let mut outbox = core.outbox();
                    outbox.closed = true;
                    outbox.buffer.clear();
                    self.shared.update_status(|status| status.sessions -= 1);
                }
                Command::Listen(fd, addr) => remove_unix_socket_file(fd, addr),
                _ => {}
            }
        }
    }

    fn until_next_deadline(&mut self) -> Option<Duration> {
        let next = [
            self.stop_deadline,
            self.accept_paused_until,
            self.idle.next,
            self.timers.next_deadline(),
            self.connecting.iter().map(|(deadline, _)| *deadline).min(),
            self.refusals.front().map(|(deadline, _)| *deadline),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // Its fds close right after this: a forked child must not close those numbers.
        self.shared.reactor_done();
    }
}

/// When to look for idle sessions: at a quarter of the shortest idle timeout in force
/// (the loop's or any session's), so a session is closed within 1.25 timeouts of its
/// last traffic without a timer per session.
struct IdleSweep {
    shortest: Option<Duration>,
    next: Option<Instant>,
}

impl IdleSweep {
    fn new(timeout: Option<Duration>, now: Instant) -> IdleSweep {
        IdleSweep {
            shortest: timeout,
            next: timeout.map(|t| now + Self::interval(t)),
        }
    }

    fn interval(timeout: Duration) -> Duration {
        (timeout / 4).clamp(IDLE_SWEEP_MIN, IDLE_SWEEP_MAX)
    }

    /// A session's own timeout: sweep often enough for it too.
    fn note(&mut self, timeout: Duration, now: Instant) {
        if self.shortest.is_none_or(|shortest| timeout < shortest) {
            self.shortest = Some(timeout);
            let next = now + Self::interval(timeout);
            if self.next.is_none_or(|at| next < at) {
                self.next = Some(next);
            }
        }
    }

    fn swept(&mut self, now: Instant) {
        self.next = self.shortest.map(|timeout| now + Self::interval(timeout));
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

/// Reads and drops up to `limit` bytes of what has arrived on `fd`, so that closing it
/// does not send RST for unread input.
fn discard_input(fd: std::os::fd::BorrowedFd<'_>, scratch: &mut [u8], limit: usize) {
    let mut discarded = 0;
    while discarded < limit {
        match net::recv(fd, scratch) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// Closes a listener; for a Unix socket also removes its file, which would otherwise
/// outlive the server and need removing by hand (it is the file this listener bound).
fn remove_unix_socket_file(fd: OwnedFd, addr: Address) {
    drop(fd);
    if let Address::Unix(path) = addr {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpStream};
    use std::thread::JoinHandle;

    /// A reactor on its own thread whose plain-Rust "handler" echoes every byte and closes
    /// a session at the peer's EOF. The thread returns a log of what happened.
    fn echo_reactor() -> (SocketAddr, Arc<LoopShared>, JoinHandle<Vec<String>>) {
        let (mut reactor, addr) = listening_reactor(LoopConfig::default());
        let shared = Arc::clone(reactor.shared());
        let thread = std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut sessions: Vec<Option<Arc<SessionCore>>> = Vec::new();
            while !reactor.is_finished() {
                reactor.turn().expect("turn");
                for event in reactor.batch() {
                    match event {
                        Event::Opened { token, session } => {
                            if sessions.len() <= token.slot() {
                                sessions.resize(token.slot() + 1, None);
                            }
                            sessions[token.slot()] = Some(Arc::clone(session));
                            log.push("opened".to_owned());
                        }
                        Event::Received { token, range } => {
                            let session = sessions[token.slot()].as_ref().expect("session");
                            session
                                .write(reactor.received(range.clone()))
                                .expect("write");
                        }
                        Event::Eof { token } => {
                            sessions[token.slot()].as_ref().expect("session").close();
                            log.push("eof".to_owned());
                        }
                        Event::Drained { .. }
                        | Event::ConnectFailed { .. }
                        | Event::PauseWriting { .. }
                        | Event::ResumeWriting { .. }
                        | Event::Timer { .. }
                        | Event::AcceptPaused { .. } => {}
                        Event::Closed { token, error } => {
                            sessions[token.slot()] = None;
                            reactor.shared().session_closed();

                            log.push(format!("closed {:?}", error.as_ref().map(|e| e.kind())));
                        }
                    }
                }
            }
            log
        });
        (addr, shared, thread)
    }

    fn stop(shared: &LoopShared, thread: JoinHandle<Vec<String>>) -> Vec<String> {
        assert!(shared.submit(Command::Stop(Instant::now() + Duration::from_secs(5))));
        let log = thread.join().expect("reactor thread");
        assert!(shared.status().sessions == 0);
        log
    }

    #[test]
    fn echoes_bytes_in_order_and_closes_after_peer_eof() {
        let (addr, shared, thread) = echo_reactor();
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let payload = pattern(1, 3_000_000);
        let writer = {
            let mut stream = stream.try_clone().expect("clone");
            let payload = payload.clone();
            std::thread::spawn(move || {
                stream.write_all(&payload).expect("send");
                stream.shutdown(Shutdown::Write).expect("shutdown");
            })
        };
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed).expect("read to EOF");
        writer.join().expect("writer");
        assert!(echoed == payload, "echo differs from what was sent");
        let log = stop(&shared, thread);
        assert_eq!(log, ["opened", "eof", "closed None"]);
    }

    #[test]
    fn sessions_never_see_each_others_bytes() {
        let (addr, shared, thread) = echo_reactor();
        let clients: Vec<_> = (0..20u8)
            .map(|seed| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    let payload = pattern(u32::from(seed), 200_000);
                    let mut sender = stream.try_clone().expect("clone");
                    let expected = payload.clone();
                    let writer = std::thread::spawn(move || {
                        sender.write_all(&payload).expect("send");
                        sender.shutdown(Shutdown::Write).expect("shutdown");
                    });
                    let mut echoed = Vec::new();
                    stream.read_to_end(&mut echoed).expect("read");
                    writer.join().expect("writer");
                    echoed == expected
                })
            })
            .collect();
        for client in clients {
            assert!(
                client.join().expect("client"),
                "a session got bytes that were not its own"
            );
        }
        let log = stop(&shared, thread);
        assert_eq!(log.iter().filter(|line| *line == "closed None").count(), 20);
    }

    /// `len` bytes unique to `seed` that never repeat with a short period, so bytes
    /// misplaced by any distance (or taken from another session) are seen.
    fn pattern(seed: u32, len: u32) -> Vec<u8> {
        (0..len)
            .map(|i| ((i ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B1) >> 24) as u8)
            .collect()
    }

    /// Raises this process's open-file limit to at least `want` (machines default to 1024).
    fn ensure_open_files(want: u64) {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit to fill.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(got, 0);
        if limit.rlim_cur < want {
            assert!(
                limit.rlim_max >= want,
                "the hard open-file limit is below {want}"
            );
            limit.rlim_cur = want;
            // SAFETY: `limit` is a valid rlimit within the hard limit.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        }
    }

    /// A reactor listening on a free loopback port.
    fn listening_reactor(config: LoopConfig) -> (Reactor, SocketAddr) {
        let reactor = Reactor::new(config).expect("reactor");
        let any_port = "127.0.0.1:0".parse().expect("addr");
        let listener = net::listen(any_port, 64, false, &reactor.config().options).expect("listen");
        let bound = net::local_addr(listener.as_fd()).expect("addr");
        let Address::Inet(addr) = bound else {
            panic!("not inet")
        };
        assert!(reactor.shared().submit(Command::Listen(listener, bound)));
        (reactor, addr)
    }

    /// Turns the reactor until a session opens; returns it.
    fn next_opened(reactor: &mut Reactor) -> Arc<SessionCore> {
        let mut session = None;
        turn_until(reactor, |event| match event {
            Event::Opened { session: core, .. } => {
                session = Some(Arc::clone(core));
                true
            }
            _ => false,
        });
        session.expect("session")
    }

    /// Turns the reactor on this thread until `done` has seen what it waits for. A tick
    /// timer (id 0) keeps any one turn from blocking for long.
    fn turn_until(reactor: &mut Reactor, mut done: impl FnMut(&Event) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let tick = Instant::now() + Duration::from_millis(5);
            reactor.shared().submit(Command::Timer(0, tick));
            reactor.turn().expect("turn");
            // Every event of the batch is shown to `done`, also those after the awaited one.
            let seen = reactor
                .batch()
                .iter()
                .fold(false, |seen, event| done(event) | seen);
            if seen {
                return;
            }
        }
        panic!("the awaited event never came");
    }

    #[test]
    fn a_queue_longer_than_the_accept_budget_is_accepted_whole() {
        // More connections queued before the first turn than it accepts (the listener is
        // served when it is registered and again for its first edge): the ones left raise
        // no new edge, so the listener must come back by itself.
        let count = 2 * ACCEPT_BUDGET + 44;
        ensure_open_files(2 * count as u64 + 64);
        let mut reactor = Reactor::new(LoopConfig::default()).expect("reactor");
        let options = reactor.config().options.clone();
        let any_port = "127.0.0.1:0".parse().expect("addr");
        let listener = net::listen(any_port, 1024, false, &options).expect("listen");
        let bound = net::local_addr(listener.as_fd()).expect("addr");
        // Non-blocking connects: a kernel whose backlog cap (somaxconn) is too small
        // fails the test below with the reason instead of hanging a connect.
        let clients: Vec<OwnedFd> = (0..count)
            .map(|_| net::connect_start(&bound, &options).expect("connect"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut queued = net::queued_connections(listener.as_fd());
        while queued != Some(count) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            queued = net::queued_connections(listener.as_fd());
        }
        assert_eq!(
            queued,
            Some(count),
            "the accept queue must hold {count} connections (is net.core.somaxconn lower?)"
        );
        assert!(reactor.shared().submit(Command::Listen(listener, bound)));
        let mut opened = 0;
        turn_until(&mut reactor, |event| {
            opened += usize::from(matches!(event, Event::Opened { .. }));
            opened == count
        });
        assert_eq!(reactor.stats.accepted, count as u64);
        drop(clients);
    }

    #[test]
    fn idle_sessions_are_closed_with_timed_out_and_timers_fire_in_order() {
        let config = LoopConfig {
            idle_timeout: Some(Duration::from_millis(50)),
            ..LoopConfig::default()
        };
        let (mut reactor, addr) = listening_reactor(config);
        let now = Instant::now();
        reactor
            .shared()
            .submit(Command::Timer(2, now + Duration::from_millis(20)));
        reactor
            .shared()
            .submit(Command::Timer(1, now + Duration::from_millis(10)));
        reactor
            .shared()
            .submit(Command::Timer(3, now + Duration::from_millis(30)));
        reactor.shared().submit(Command::CancelTimer(3));
        let _silent = TcpStream::connect(addr).expect("connect");

        let mut fired = Vec::new();
        turn_until(&mut reactor, |event| match event {
            Event::Timer { id } if *id > 0 => {
                fired.push(*id);
                false
            }
            Event::Closed { error, .. } => {
                let kind = error.as_ref().map(io::Error::kind);
                assert_eq!(kind, Some(io::ErrorKind::TimedOut));
                true
            }
            _ => false,
        });
        assert_eq!(
            fired,
            [1, 2],
            "deadline order, the cancelled timer never fires"
        );
        assert_eq!(reactor.shared().stats().idle_timeouts, 1);
    }

    #[test]
    fn a_peer_that_does_not_read_pauses_writing_until_it_drains() {
        let (mut reactor, addr) = listening_reactor(LoopConfig::default());
        let mut peer = TcpStream::connect(addr).expect("connect");
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");

        let session = next_opened(&mut reactor);
        let payload = pattern(0, 8_000_000);
        session.write(&payload).expect("write");
        let cap = session.outbox().limits.max;
        let err = session.write(&vec![0u8; cap]).expect_err("past the cap");
        assert!(matches!(err, crate::session::Refusal::Full { .. }));
        turn_until(&mut reactor, |event| {
            matches!(event, Event::PauseWriting { .. })
        });

        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 8_000_000];
            peer.read_exact(&mut got).expect("read everything");
            got
        });
        turn_until(&mut reactor, |event| {
            matches!(event, Event::ResumeWriting { .. })
        });
        turn_until(&mut reactor, |_| reader.is_finished());
        assert!(reader.join().expect("reader") == payload, "bytes differ");
    }

    #[test]
    fn stop_closes_open_sessions_gracefully() {
        let (addr, shared, thread) = echo_reactor();
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(b"ping").expect("send");
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).expect("echo");
        let log = stop(&shared, thread);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("EOF after stop");
        assert!(rest.is_empty());
        assert_eq!(log, ["opened", "closed None"]);
    }

    #[test]
    fn a_refused_peer_that_sent_first_reads_eof_and_the_refusal_is_freed() {
        let config = LoopConfig {
            max_connections: Some(1),
            ..LoopConfig::default()
        };
        let (mut reactor, addr) = listening_reactor(config);
        let _held = TcpStream::connect(addr).expect("connect");
        turn_until(&mut reactor, |event| matches!(event, Event::Opened { .. }));
        let mut refused = TcpStream::connect(addr).expect("connect");
        refused
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The request is in the server's queue before the reactor accepts and refuses it.
        refused.write_all(&[b'x'; 50_000]).expect("send");
        turn_until(&mut reactor, |_| reactor_refused(&refused));
        let reader = std::thread::spawn(move || {
            let mut rest = Vec::new();
            refused.read_to_end(&mut rest).map(|_| rest.len())
        });
        turn_until(&mut reactor, |_| reader.is_finished());
        assert_eq!(reader.join().expect("reader").expect("EOF, not RST"), 0);
        refused_slots_drain(&mut reactor);
    }

    /// Whether the server has shut `peer`'s connection down for writing (FIN seen).
    fn reactor_refused(peer: &TcpStream) -> bool {
        let mut byte = [0u8; 1];
        peer.set_nonblocking(true).expect("nonblocking");
        let eof = matches!(peer.peek(&mut byte), Ok(0));
        peer.set_nonblocking(false).expect("blocking");
        eof
    }

    /// Turns until no refused connection lingers (the peer closed, or the linger ended).
    fn refused_slots_drain(reactor: &mut Reactor) {
        turn_until(reactor, |_| true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reactor.refusals.is_empty() {
            assert!(Instant::now() < deadline, "a refusal never ended");
            reactor.turn().expect("turn");
        }
        assert!(!reactor
            .slots
            .iter()
            .any(|slot| matches!(slot, Slot::Refused { .. })));
    }

    #[test]
    fn idle_sweeps_stop_once_the_session_with_a_short_timeout_is_gone() {
        let (mut reactor, addr) = listening_reactor(LoopConfig::default());
        let _peer = TcpStream::connect(addr).expect("connect");
        let session = next_opened(&mut reactor);
        session.set_idle_timeout(Some(Duration::from_millis(20)));
        turn_until(&mut reactor, |event| matches!(event, Event::Closed { .. }));
        assert!(reactor.idle.next.is_some(), "swept while the session lived");
        let deadline = Instant::now() + Duration::from_secs(10);
        while reactor.idle.next.is_some() {
            assert!(
                Instant::now() < deadline,
                "idle sweeps went on with no timeout in force"
            );
            reactor
                .shared()
                .submit(Command::Timer(0, Instant::now() + Duration::from_millis(5)));
            reactor.turn().expect("turn");
        }
    }
}

//! A session's state as shared between the reactor thread and any thread that writes to it,
//! and the command queue through which those threads reach the reactor.
//!
//! The reactor thread owns the socket; other threads own nothing but a `SessionCore`. They
//! append to its write buffer and set request flags under a short lock, then queue the
//! session once for the reactor, which does every send and close itself. No lock here is
//! ever held while Python runs or while the reactor waits.

use std::cell::Cell;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::buffer::WriteBuffer;
use crate::epoll::{Token, Waker};
use crate::fork::{close_epoll_copy, Epoch};
use crate::net::Address;

/// A session's write-buffer limits.
///
/// Above `high` buffered bytes the handler's `on_pause_writing` is called, and once the
/// buffer has drained to `low` or below, `on_resume_writing`. `max` is the hard cap: a
/// write that would take the buffer past it is refused, so a peer that never reads
/// cannot grow the process's memory without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// The high watermark in bytes.
    pub high: usize,
    /// The low watermark in bytes.
    pub low: usize,
    /// The most bytes the buffer may hold.
    pub max: usize,
}

impl WriteLimits {
    /// asyncio's watermarks, and a cap generous enough for any single ordinary write.
    pub const DEFAULT: WriteLimits = WriteLimits {
        high: 64 * 1024,
        low: 16 * 1024,
        max: 128 * 1024 * 1024,
    };

    /// Checked limits; the error names what is wrong.
    pub fn new(high: usize, low: usize, max: usize) -> Result<WriteLimits, String> {
        if low > high {
            return Err(format!(
                "the low watermark ({low}) must not exceed the high one ({high})"
            ));
        }
        if high > max {
            return Err(format!(
                "the high watermark ({high}) must not exceed max_write_buffer ({max})"
            ));
        }
        if max == 0 {
            return Err("max_write_buffer must be at least 1 byte".to_owned());
        }
        Ok(WriteLimits { high, low, max })
    }
}

impl Default for WriteLimits {
    fn default() -> WriteLimits {
        WriteLimits::DEFAULT
    }
}

/// A session's idle timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdleTimeout {
    /// The loop's (`idle_timeout=` of the Server or Client).
    #[default]
    Loop,
    /// None: the session never times out.
    Never,
    /// Its own.
    After(Duration),
}

impl IdleTimeout {
    /// The timeout in force, given the loop's.
    pub fn resolve(self, loop_default: Option<Duration>) -> Option<Duration> {
        match self {
            IdleTimeout::Loop => loop_default,
            IdleTimeout::Never => None,
            IdleTimeout::After(after) => Some(after),
        }
    }
}

/// Why a session refused a write or another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `close()` or `abort()` was called, or the connection is gone.
    Closed,
    /// `shutdown_write()` was called: the write side is closed, reading goes on.
    WriteShut,
    /// The write would take the buffer past its hard cap; nothing was buffered.
    Full {
        /// Bytes buffered before the write.
        buffered: usize,
        /// The size of the refused write.
        size: usize,
        /// The cap.
        max: usize,
    },
}

/// What a session's other threads share with the reactor, under one short lock: the write
/// buffer, what the session has been asked to do (close, abort, shut down, pause reading,
/// new limits, an idle timeout) and what the reactor has done about it.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Bytes written and not yet taken by the kernel.
    pub buffer: WriteBuffer,
    /// `close()` was requested: flush, then close.
    pub close_requested: bool,
    /// `abort()` was requested: drop the buffer, close with RST.
    pub abort_requested: bool,
    /// `shutdown_write()` was requested: flush, then send FIN.
    pub shutdown_requested: bool,
    /// The reactor has sent FIN.
    pub fin_sent: bool,
    /// The reactor has closed the socket; nothing more will happen.
    pub closed: bool,
    /// The connection failed while reading was paused: nothing can be sent, and the
    /// session closes once the input that arrived before is delivered.
    pub connection_lost: bool,
    /// The session is in the reactor's queue already (so a burst of writes queues it once).
    pub queued: bool,
    /// The write-buffer limits.
    pub limits: WriteLimits,
    /// The reactor has told the handler to pause writing (buffer above `limits.high`).
    pub writing_paused: bool,
    /// `pause_reading()` is in force: the reactor reads nothing from this session.
    pub read_paused: bool,
    /// `resume_reading()` was called: the reactor must look at the socket itself, since
    /// data that arrived while paused raised its edge already.
    pub read_resume_pending: bool,
    /// This session's own idle timeout, if it overrides the loop's.
    pub idle_timeout: IdleTimeout,
    /// `idle_timeout` changed since the reactor last looked.
    pub idle_timeout_changed: bool,
    /// `write()` calls since the last flush (for the coalescing statistics).
    pub writes: u64,
    /// Bytes a large write sent at once, bypassing the buffer, since the last flush (for
    /// the statistics and `on_send`).
    pub sent_directly: usize,
    /// A direct send found the kernel's send buffer full: EPOLLOUT will report room, and
    /// a send before that would only say EAGAIN.
    pub kernel_full: bool,
    /// A direct send failed: the flush ends the session with this error.
    pub send_error: Option<std::io::Error>,
}

impl SessionState {
    /// Why a write now would be refused, if it would.
    pub fn write_refusal(&self) -> Option<Refusal> {
        if self.is_ending() {
            Some(Refusal::Closed)
        } else if self.shutdown_requested {
            Some(Refusal::WriteShut)
        } else {
            None
        }
    }

    /// The socket is closed (or will never be registered): nothing more will be sent.
    pub fn mark_closed(&mut self) {
        self.closed = true;
        self.buffer.clear();
    }

    /// Whether the user asked for the session to end (`close()` or `abort()`).
    pub fn given_up(&self) -> bool {
        self.close_requested || self.abort_requested
    }

    /// Whether the session is closed or on its way to closing.
    pub fn is_closing(&self) -> bool {
        self.closed || self.given_up()
    }

    /// Whether the session is closing or its connection was lost (while input is still
    /// to be delivered): either way nothing more can be written.
    pub fn is_ending(&self) -> bool {
        self.is_closing() || self.connection_lost
    }
}

/// One connection's identity and the state other threads may touch.
pub struct SessionCore {
    /// Unique within the process, never reused.
    pub id: u64,
    /// The remote address.
    pub peer: Address,
    /// The local address.
    pub local: Address,
    token: AtomicU64,
    /// The socket while the reactor holds it open, else -1. Read only on the reactor
    /// thread, where it cannot be closed underneath the reader (see `write_all`).
    fd: AtomicI32,
    state: Mutex<SessionState>,
    shared: Arc<LoopShared>,
}

/// Writes at least this large skip the write buffer when they can: sent straight from the
/// caller's bytes, they save a copy that costs more than the syscall saved by coalescing.
const EAGER_SEND_MIN: usize = 16 * 1024;

thread_local! {
    /// The loop whose reactor this thread turns, if any (compared, never dereferenced).
    static REACTOR_OF_THIS_THREAD: Cell<*const LoopShared> = const { Cell::new(std::ptr::null()) };
}

/// Locks `mutex`, ignoring poisoning: every critical section in this crate is a few
/// field updates that a panic cannot leave half-done in a way that matters more than
/// taking the whole reactor down would.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

impl SessionCore {
    /// A new session of the loop behind `shared`.
    pub fn new(
        shared: Arc<LoopShared>,
        peer: Address,
        local: Address,
        limits: WriteLimits,
    ) -> Arc<SessionCore> {
        Arc::new(SessionCore {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            token: AtomicU64::new(u64::MAX),
            fd: AtomicI32::new(-1),
            state: Mutex::new(SessionState {
                limits,
                ..SessionState::default()
            }),
            shared,
        })
    }

    /// The loop this session belongs to.
    pub fn shared(&self) -> &Arc<LoopShared> {
        &self.shared
    }

    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    pub(crate) fn set_token(&self, token: Token) {
        self.token.store(token.0, Ordering::Release);
    }

    pub(crate) fn token(&self) -> Token {
        Token(self.token.load(Ordering::Acquire))
    }

    /// Records the socket the reactor registered (`Some`) or is about to close (`None`).
    pub(crate) fn set_fd(&self, fd: Option<RawFd>) {
        self.fd.store(fd.unwrap_or(-1), Ordering::Relaxed);
    }

    /// Buffers `bytes` for sending. Safe from any thread.
    pub fn write(self: &Arc<Self>, bytes: &[u8]) -> Result<(), Refusal> {
        self.write_all(&[bytes])
    }

    /// Buffers several pieces atomically: all or none, and no other thread's write lands
    /// between them.
    pub fn write_all(self: &Arc<Self>, pieces: &[&[u8]]) -> Result<(), Refusal> {
        if self.shared.is_forked_copy() {
            // Checked before locking: a lock held at the fork stays held in the child.
            return Err(Refusal::Closed);
        }
        let size: usize = pieces.iter().map(|piece| piece.len()).sum();
        let mut state = self.state();
        if let Some(refusal) = state.write_refusal() {
            return Err(refusal);
        }
        let buffered = state.buffer.len();
        if size > state.limits.max.saturating_sub(buffered) {
            return Err(Refusal::Full {
                buffered,
                size,
                max: state.limits.max,
            });
        }
        if size == 0 {
            return Ok(());
        }
        let mut pieces = pieces;
        if let ([piece], true) = (pieces, state.buffer.is_empty() && size >= EAGER_SEND_MIN) {
            let fd = self.fd.load(Ordering::Relaxed);
            // NOTE: the fd is only used on the reactor thread, which alone closes it and is
            // busy running this caller, so it cannot be closed (and reused) meanwhile.
            if fd >= 0 && self.shared.is_turned_by_this_thread() {
                let sent = match crate::net::send_raw(fd, piece) {
                    Ok(sent) => sent,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        state.kernel_full = true;
                        0
                    }
                    // The peer is gone: the flush reports it (the first error after an
                    // RST is the informative ECONNRESET; a retry would only say EPIPE).
                    Err(err) => {
                        state.send_error = Some(err);
                        0
                    }
                };
                state.kernel_full |= sent > 0 && sent < piece.len();
                state.sent_directly += sent;
                pieces = &[];
                state.buffer.extend(&piece[sent..]);
            }
        }
        for piece in pieces {
            state.buffer.extend(piece);
        }
        state.writes += 1;
        if !self.queue(state) {
            return Err(Refusal::Closed);
        }
        Ok(())
    }

    /// Stops reading from the socket until `resume_reading`; the kernel's receive window
    /// then pushes back on the peer. Idempotent.
    pub fn pause_reading(&self) {
        self.state().read_paused = true;
    }

    /// Resumes reading; data that arrived while paused is delivered next. Idempotent.
    pub fn resume_reading(self: &Arc<Self>) {
        let mut state = self.state();
        if state.read_paused && !state.closed {
            state.read_paused = false;
            state.read_resume_pending = true;
            self.queue(state);
        }
    }

    /// Replaces the write-buffer limits with what `update` makes of the current ones, in
    /// one step (concurrent updates cannot overwrite each other); the reactor then
    /// re-evaluates pause/resume at once.
    pub fn update_write_limits<E>(
        self: &Arc<Self>,
        update: impl FnOnce(WriteLimits) -> Result<WriteLimits, E>,
    ) -> Result<(), E> {
        let mut state = self.state();
        state.limits = update(state.limits)?;
        if !state.closed {
            self.queue(state);
        }
        Ok(())
    }

    /// Overrides the loop's idle timeout for this session (`None`: never times out).
    pub fn set_idle_timeout(self: &Arc<Self>, timeout: Option<Duration>) {
        let mut state = self.state();
        state.idle_timeout = match timeout {
            Some(after) => IdleTimeout::After(after),
            None => IdleTimeout::Never,
        };
        state.idle_timeout_changed = true;
        if !state.closed {
            self.queue(state);
        }
    }

    /// Requests a graceful close: everything buffered is sent, then FIN. Idempotent.
    pub fn close(self: &Arc<Self>) {
        let mut state = self.state();
        if !state.is_closing() {
            state.close_requested = true;
            self.queue(state);
        }
    }

    /// Requests an abortive close: the buffer is dropped and the peer gets RST. Idempotent.
    pub fn abort(self: &Arc<Self>) {
        let mut state = self.state();
        if !state.closed && !state.abort_requested {
            state.abort_requested = true;
            state.buffer.clear();
            self.queue(state);
        }
    }

    /// Requests a half-close: everything buffered is sent, then FIN; reading goes on.
    pub fn shutdown_write(self: &Arc<Self>) {
        let mut state = self.state();
        if state.write_refusal().is_none() {
            state.shutdown_requested = true;
            self.queue(state);
        }
    }

    /// Bytes buffered and not yet handed to the kernel.
    pub fn buffered(&self) -> usize {
        self.state().buffer.len()
    }

    /// Puts the session on the reactor's queue unless it is there already. Returns
    /// `false` when the loop has finished, so nothing will ever act on the session.
    fn queue(self: &Arc<Self>, mut state: MutexGuard<'_, SessionState>) -> bool {
        if state.queued {
            return true;
        }
        // NOTE: the state stays locked while the command is queued, so a concurrent
        // writer that finds `queued` set can rely on the command being there. The lock
        // order state -> queue is the only one: the reactor never holds the queue lock
        // while it locks a session's state.
        if self.shared.submit(Command::Attend(Arc::clone(self))) {
            state.queued = true;
            return true;
        }
        state.mark_closed();
        false
    }
}

/// What other threads ask of the reactor.
pub enum Command {
    /// The session wants the reactor's attention: bytes to send, a close, abort or
    /// shutdown request, reading resumed, new limits or idle timeout.
    Attend(Arc<SessionCore>),
    /// Register a client socket as a session: connected already (`Client.connect`), or
    /// still connecting until the deadline (`Client.connect_nowait`).
    Adopt(Arc<SessionCore>, OwnedFd, Option<Instant>),
    /// Start accepting on a listening socket.
    Listen(OwnedFd, Address),
    /// Stop: close listeners, flush and close every session, abort what is left at the
    /// deadline, then finish.
    Stop(Instant),
    /// Report [`crate::reactor::Event::Timer`] with this id at this instant.
    Timer(u64, Instant),
    /// Report [`crate::reactor::Event::Timer`] with this id in the coming batch.
    CallSoon(u64),
    /// Forget the timer with this id, if it has not fired.
    CancelTimer(u64),
}

/// Counters the reactor publishes once per turn, cheap for any thread to read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Sessions ever opened (accepted or connected).
    pub sessions_total: u64,
    /// Connections accepted by listeners.
    pub accepted: u64,
    /// Connections accepted and closed at once because `max_connections` was reached.
    pub refused_by_limit: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes handed to the kernel.
    pub bytes_out: u64,
    /// `write()` calls that buffered bytes.
    pub writes: u64,
    /// `send` syscalls that carried them: `writes - sends` were coalesced away.
    pub sends: u64,
    /// Sessions closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Times accepting paused because the process ran out of fds or memory.
    pub accept_pauses: u64,
    /// Timers (`call_later`, `call_at`) that came due.
    pub timers_fired: u64,
    /// `call_soon_threadsafe` callbacks handed to the handler layer.
    pub calls_soon: u64,
}

/// Counters that `join()` and friends wait on.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStatus {
    /// Sessions accepted or adopted whose `Event::Closed` has not been delivered yet.
    pub sessions: usize,
    /// The reactor thread has returned.
    pub finished: bool,
}

/// Commands waiting for the reactor. `closed` is set, under the same lock, when the reactor
/// takes the queue for the last time, so no command can be queued after that and be lost.
#[derive(Default)]
struct Queue {
    commands: Vec<Command>,
    closed: bool,
}

/// What the reactor thread shares with every other thread.
pub struct LoopShared {
    queue: Mutex<Queue>,
    stats: Mutex<Stats>,
    /// Set by the reactor just before it may block in `epoll_wait`; whoever finds it set
    /// after queueing a command clears it and wakes the reactor. Writes made by handlers
    /// on the reactor thread itself find it clear, so the hot path never touches the
    /// eventfd.
    polling: AtomicBool,
    /// Closed (dropped) when the queue closes: session objects that outlive the loop
    /// keep `LoopShared` alive, and must not keep an fd open with it.
    waker: Mutex<Option<Waker>>,
    status: Mutex<LoopStatus>,
    status_changed: Condvar,
    /// The fork epoch the loop was made in: in a forked child it is a dead copy.
    born: Epoch,
    /// The reactor's epoll fd, whose registrations a forked child closes.
    epoll_fd: RawFd,
    /// The reactor thread has ended and closed its fds (nothing for a child to close).
    reactor_done: AtomicBool,
    /// A forked child has closed its copies of the reactor's fds.
    copies_closed: AtomicBool,
}

impl LoopShared {
    /// Shares `waker`, which must be registered with the reactor's poller, whose epoll fd
    /// is `epoll_fd`.
    pub fn new(waker: Waker, epoll_fd: RawFd) -> LoopShared {
        LoopShared {
            born: Epoch::now(),
            epoll_fd,
            reactor_done: AtomicBool::new(false),
            copies_closed: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            stats: Mutex::new(Stats::default()),
            polling: AtomicBool::new(false),
            waker: Mutex::new(Some(waker)),
            status: Mutex::new(LoopStatus::default()),
            status_changed: Condvar::new(),
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Whether this is a forked child's copy of a loop whose reactor stayed in the parent.
    pub fn is_forked_copy(&self) -> bool {
        self.born.is_past()
    }

    /// The reactor has finished with its fds (reactor thread, as it ends).
    pub(crate) fn reactor_done(&self) {
        self.reactor_done.store(true, Ordering::Release);
    }

    /// In a forked child: closes the child's copies of the sockets of a reactor that was
    /// running in the parent, so that the parent's connections and listeners end when the
    /// parent closes them. Only once, and never for a reactor that had finished.
    pub fn close_fork_copies(&self) {
        if !self.is_forked_copy()
            || self.reactor_done.load(Ordering::Acquire)
            || self.copies_closed.swap(true, Ordering::AcqRel)
        {
            return;
        }
        close_epoll_copy(self.epoll_fd);
    }

    /// Queues a command and wakes the reactor if it is (about to be) blocked.
    /// Returns `false` when the loop has finished and will never run it (or is a forked
    /// child's copy, whose reactor stayed in the parent).
    pub fn submit(&self, command: Command) -> bool {
        if self.is_forked_copy() {
            return false;
        }
        {
            let mut queue = self.lock_queue();
            if queue.closed {
                return false;
            }
            queue.commands.push(command);
        }
        if self.polling.swap(false, Ordering::SeqCst) {
            if let Some(waker) = &*lock(&self.waker) {
                // A failed eventfd write cannot happen for a valid eventfd; if it did,
                // the reactor would still run the command at its next wakeup.
                let _ = waker.wake();
            }
        }
        true
    }

    /// Hands a connected socket to the reactor. The session counts as open from here on,
    /// before the reactor has registered it, so `join()` cannot miss it.
    pub fn adopt(
        &self,
        core: Arc<SessionCore>,
        fd: OwnedFd,
        connect_deadline: Option<Instant>,
    ) -> bool {
        self.update_status(|status| status.sessions += 1);
        let accepted = self.submit(Command::Adopt(core, fd, connect_deadline));
        if !accepted {
            self.update_status(|status| status.sessions -= 1);
        }
        accepted
    }

    /// Marks the calling thread as the one that turns this loop's reactor.
    pub(crate) fn enter_reactor_thread(self: &Arc<Self>) {
        REACTOR_OF_THIS_THREAD.with(|current| current.set(Arc::as_ptr(self)));
    }

    /// Whether the calling thread turns this loop's reactor (is inside its callbacks).
    pub fn is_turned_by_this_thread(&self) -> bool {
        REACTOR_OF_THIS_THREAD.with(|current| std::ptr::eq(current.get(), self))
    }

    /// The consumer of the reactor's events has delivered an `Event::Closed`: only now
    /// does the session stop counting as open for those waiting on the status.
    pub fn session_closed(&self) {
        self.update_status(|status| status.sessions -= 1);
    }

    /// Moves every queued command into `into` (reactor thread).
    pub(crate) fn take_commands(&self, into: &mut Vec<Command>) {
        std::mem::swap(&mut self.lock_queue().commands, into);
    }

    /// Takes the commands for the last time: every later `submit` is refused (reactor
    /// thread, when it finishes).
    pub(crate) fn close_queue(&self) -> Vec<Command> {
        let mut queue = self.lock_queue();
        queue.closed = true;
        drop(lock(&self.waker).take());
        std::mem::take(&mut queue.commands)
    }

    /// Announces that the reactor may block; returns whether commands are already queued,
    /// in which case it must not.
    pub(crate) fn begin_poll(&self) -> bool {
        self.polling.store(true, Ordering::SeqCst);
        !self.lock_queue().commands.is_empty()
    }

    /// The reactor is awake again.
    pub(crate) fn end_poll(&self) {
        self.polling.store(false, Ordering::SeqCst);
    }

    /// Re-arms the waker after it fired (reactor thread).
    pub(crate) fn reset_waker(&self) {
        if let Some(waker) = &*lock(&self.waker) {
            waker.reset();
        }
    }

    /// The counters as of the reactor's last turn.
    pub fn stats(&self) -> Stats {
        *lock(&self.stats)
    }

    pub(crate) fn publish_stats(&self, stats: &Stats) {
        *lock(&self.stats) = *stats;
    }

    /// The current status.
    pub fn status(&self) -> LoopStatus {
        *lock(&self.status)
    }

    pub(crate) fn update_status(&self, update: impl FnOnce(&mut LoopStatus)) {
        let mut status = lock(&self.status);
        update(&mut status);
        // Waiters only wait for "no sessions" or "finished": waking them on every open
        // and close would cost a futex call and a context switch per connection.
        if status.sessions == 0 || status.finished {
            self.status_changed.notify_all();
        }
    }

    /// Blocks until `done(status)` holds or `timeout` passes; returns whether it holds.
    /// Waiters are woken only when no session is open or the loop has finished, so `done`
    /// must become true only in one of those states.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&LoopStatus) -> bool) -> bool {
        let guard = lock(&self.status);
        let (guard, _) = self
            .status_changed
            .wait_timeout_while(guard, timeout, |status| !done(status))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        done(&guard)
    }
}

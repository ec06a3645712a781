//! What a loop's reactor thread shares with every other thread: the command queue through
//! which they reach it, the counters it publishes, and the status `join()` waits on.

use std::cell::Cell;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{lock, DatagramCore, SessionCore};
use crate::sys::address::Address;
use crate::sys::epoll::Waker;
use crate::sys::fork::{close_epoll_copy, Epoch};
use crate::tls::{ServerContext, TlsStream};

thread_local! {
    /// The loop whose reactor this thread turns, if any (compared, never dereferenced).
    static REACTOR_OF_THIS_THREAD: Cell<*const LoopShared> = const { Cell::new(std::ptr::null()) };
}

/// What other threads ask of the reactor.
#[derive(Debug)]
pub enum Command {
    /// The session wants the reactor's attention: bytes to send, a close, abort or
    /// shutdown request, reading resumed, new limits or idle timeout.
    Attend(Arc<SessionCore>),
    /// Register a socket that arrives from elsewhere as a session.
    Adopt(Adoption),
    /// The datagram endpoint wants the reactor's attention: datagrams to send, a close or
    /// abort request, reading resumed.
    AttendEndpoint(Arc<DatagramCore>),
    /// Register a bound (and perhaps connected) UDP socket as a datagram endpoint.
    Bind(Binding),
    /// Start accepting on a listening socket.
    Listen(Listener),
    /// Close every listener, once what is queued is accepted, and go on serving the
    /// sessions (a drain's first step); then tell whoever waits, if anyone does.
    StopAccepting(Option<std::sync::mpsc::Sender<()>>),
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

/// A socket handed to a reactor as a session.
#[derive(Debug)]
pub struct Adoption {
    /// The session it becomes.
    pub core: Arc<SessionCore>,
    /// The connected (or connecting) socket.
    pub fd: OwnedFd,
    /// Where it comes from.
    pub arrival: Arrival,
    /// Its TLS connection, handshaking or done, for a TLS session.
    pub tls: Option<Box<TlsStream>>,
}

/// A UDP socket handed to a reactor as a datagram endpoint.
#[derive(Debug)]
pub struct Binding {
    /// The endpoint it becomes.
    pub core: Arc<DatagramCore>,
    /// The bound socket.
    pub fd: OwnedFd,
}

/// A listening socket handed to a reactor, and what its sessions get.
#[derive(Debug)]
pub struct Listener {
    /// The listening socket.
    pub fd: OwnedFd,
    /// What it is bound to.
    pub addr: Address,
    /// Where its sessions live.
    pub placement: Placement,
    /// For a TLS listener, what each of its sessions handshakes with.
    pub tls: Option<Arc<ServerContext>>,
    /// For a listener behind a load balancer, how long each connection has to send its
    /// PROXY protocol header (before anything else, a TLS handshake included).
    pub proxy_header: Option<Duration>,
    /// Who removes its Unix socket file (nothing to remove for TCP).
    pub socket_file: SocketFile,
}

/// Who bound a listener, and so removes its Unix socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFile {
    /// This loop did: the file goes when the listener closes.
    Ours,
    /// Someone else did, and handed the listener over with `open_socket()`, keeping a copy
    /// (a supervisor whose children take turns serving it): the file stays theirs.
    Theirs,
}

/// How a socket handed to a reactor as a session arrives. Either way it counts as open in
/// the reactor's status from the moment it is queued, so `join()` cannot miss it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// From a connect call: connected already (`Client.connect`), or still connecting
    /// until this deadline (`Client.connect_nowait`).
    Connect(Option<Instant>),
    /// Accepted by another reactor of the loop, which counted it in the loop's
    /// `open_sessions` already.
    HandedOver,
}

/// Where the sessions a listener accepts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the reactor that accepted them (a listener of its own, such as one of a
    /// SO_REUSEPORT group, where the kernel already spread the connections).
    Here,
    /// On each of the loop's reactors in turn (a listener every reactor shares, accepted
    /// by whichever was waiting).
    Spread,
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
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS sessions that failed: a handshake refused or timed out, a protocol error, a
    /// stream truncated without `close_notify`.
    pub tls_failures: u64,
    /// Connections to a `proxy_protocol` listener closed for their PROXY header: missing,
    /// malformed, oversized, or not complete in time.
    pub proxy_refused: u64,
    /// Datagrams received (whole or truncated).
    pub datagrams_in: u64,
    /// Bytes of them kept (of a truncated one, what its slot held).
    pub datagram_bytes_in: u64,
    /// Datagrams handed to the kernel.
    pub datagrams_out: u64,
    /// Bytes of them.
    pub datagram_bytes_out: u64,
    /// Datagrams received longer than the endpoint's `max_datagram_size`, cut by the kernel.
    pub datagrams_truncated: u64,
    /// Datagrams that were not sent: refused for a full send queue, failed in the kernel,
    /// or queued when their endpoint was aborted.
    pub datagrams_dropped: u64,
    /// Errors reported to datagram handlers (an ICMP error, a failed send).
    pub datagram_errors: u64,
    /// `recvmmsg` calls: `datagrams_in` per call is the batching on the receiving side.
    pub datagram_recv_calls: u64,
    /// `sendmmsg` calls: `datagrams_out` per call is the batching on the sending side.
    pub datagram_send_calls: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.sessions_total += other.sessions_total;
        self.accepted += other.accepted;
        self.refused_by_limit += other.refused_by_limit;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.writes += other.writes;
        self.sends += other.sends;
        self.idle_timeouts += other.idle_timeouts;
        self.accept_pauses += other.accept_pauses;
        self.timers_fired += other.timers_fired;
        self.calls_soon += other.calls_soon;
        self.tls_handshakes += other.tls_handshakes;
        self.tls_failures += other.tls_failures;
        self.proxy_refused += other.proxy_refused;
        self.datagrams_in += other.datagrams_in;
        self.datagram_bytes_in += other.datagram_bytes_in;
        self.datagrams_out += other.datagrams_out;
        self.datagram_bytes_out += other.datagram_bytes_out;
        self.datagrams_truncated += other.datagrams_truncated;
        self.datagrams_dropped += other.datagrams_dropped;
        self.datagram_errors += other.datagram_errors;
        self.datagram_recv_calls += other.datagram_recv_calls;
        self.datagram_send_calls += other.datagram_send_calls;
    }
}

/// Counters that `join()` and friends wait on.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStatus {
    /// Sessions accepted or adopted whose `Event::Closed` has not been delivered yet.
    pub sessions: usize,
    /// Datagram endpoints bound whose `Event::EndpointClosed` has not been delivered yet.
    pub endpoints: usize,
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

impl std::fmt::Debug for LoopShared {
    // Not derived: queued commands point to sessions, which point back here.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopShared")
            .field("status", &self.status())
            .field("stats", &self.stats())
            .field("queued_commands", &self.lock_queue().commands.len())
            .finish_non_exhaustive()
    }
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

    /// Queues a socket for this reactor to register as a session, counted as open at
    /// once. Returns false if the reactor has stopped (the socket is dropped).
    pub fn adopt(&self, adoption: Adoption) -> bool {
        self.update_status(|status| status.sessions += 1);
        let accepted = self.submit(Command::Adopt(adoption));
        if !accepted {
            self.session_closed();
        }
        accepted
    }

    /// Queues a UDP socket for this reactor to register as a datagram endpoint, counted as
    /// open at once. Returns false if the reactor has stopped (the socket is dropped).
    pub fn bind(&self, binding: Binding) -> bool {
        self.update_status(|status| status.endpoints += 1);
        let accepted = self.submit(Command::Bind(binding));
        if !accepted {
            self.endpoint_closed();
        }
        accepted
    }

    /// A datagram endpoint stops counting as open: its `Event::EndpointClosed` has been
    /// delivered, or it was never registered.
    pub fn endpoint_closed(&self) {
        self.update_status(|status| {
            debug_assert!(status.endpoints > 0, "more endpoints closed than opened");
            status.endpoints = status.endpoints.saturating_sub(1);
        });
    }

    /// Marks the calling thread as the one that turns this loop's reactor.
    pub(crate) fn enter_reactor_thread(self: &Arc<Self>) {
        REACTOR_OF_THIS_THREAD.with(|current| current.set(Arc::as_ptr(self)));
    }

    /// The calling thread no longer turns this loop's reactor: for a reactor driven by
    /// another event loop, whose thread goes on to other work between turns (and may
    /// outlive this loop, whose address a later one may then reuse).
    pub(crate) fn leave_reactor_thread(&self) {
        REACTOR_OF_THIS_THREAD.with(|current| {
            if std::ptr::eq(current.get(), self) {
                current.set(std::ptr::null());
            }
        });
    }

    /// Whether the calling thread turns this loop's reactor (is inside its callbacks).
    pub fn is_turned_by_this_thread(&self) -> bool {
        REACTOR_OF_THIS_THREAD.with(|current| std::ptr::eq(current.get(), self))
    }

    /// A session stops counting as open for those waiting on the status: the consumer of
    /// the reactor's events has delivered its `Event::Closed` (only then, so `join()`
    /// cannot return before `on_close` ran), or it was never registered.
    pub fn session_closed(&self) {
        self.update_status(|status| {
            // A miscount is a bug; wrapping would make `join()` wait forever for it.
            debug_assert!(status.sessions > 0, "more sessions closed than opened");
            status.sessions = status.sessions.saturating_sub(1);
        });
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
        // Waiters only wait for "nothing open" or "finished": waking them on every open
        // and close would cost a futex call and a context switch per connection.
        if (status.sessions == 0 && status.endpoints == 0) || status.finished {
            self.status_changed.notify_all();
        }
    }

    /// Blocks until `done(status)` holds or `timeout` passes; returns whether it holds.
    /// Waiters are woken only when no session or endpoint is open or the loop has
    /// finished, so `done` must become true only in one of those states.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&LoopStatus) -> bool) -> bool {
        let guard = lock(&self.status);
        let (guard, _) = self
            .status_changed
            .wait_timeout_while(guard, timeout, |status| !done(status))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        done(&guard)
    }
}

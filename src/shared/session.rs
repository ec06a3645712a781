//! A session's state as shared between the reactor thread and any thread that writes to it.
//!
//! The reactor thread owns the socket; other threads own nothing but a `SessionCore`. They
//! append to its write buffer and set request flags under a short lock, then queue the
//! session once for the reactor (a [`Command::Attend`]), which does every send and close
//! itself. No lock here is ever held while Python runs or while the reactor waits.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::{lock, Command, IdleTimeout, LoopShared, WriteLimits};
use crate::buffer::{FileSegment, WriteBuffer};
use crate::proxy::ProxyInfo;
use crate::sys::address::Address;
use crate::sys::epoll::Token;
use crate::tls::TlsInfo;

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
    /// The handler is behind (the worker pool's backlog for this session is full): the
    /// reactor reads nothing from it until the backlog drains.
    pub backlog_full: bool,
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

    /// Whether reading is held, by the user (`pause_reading()`) or by the backlog.
    pub fn reading_held(&self) -> bool {
        self.read_paused || self.backlog_full
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
    /// The socket while the reactor holds it open, else -1 (always -1 for a TLS session,
    /// whose bytes must go through its encryption). Read only on the reactor thread,
    /// where it cannot be closed underneath the reader (see `write_all`).
    fd: AtomicI32,
    state: Mutex<SessionState>,
    shared: Arc<LoopShared>,
    /// What the TLS handshake settled, once it has (never, for a plain session). Boxed: a
    /// plain session pays a pointer for it, not the whole record.
    tls: OnceLock<Box<TlsInfo>>,
    /// What its PROXY header said beside the addresses, for a session accepted behind a
    /// proxy (set before it opens). Boxed for the same reason.
    proxy: OnceLock<Box<ProxyInfo>>,
}

impl std::fmt::Debug for SessionCore {
    // Not derived: the loop it points to holds queued commands that point back to sessions.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("token", &self.token())
            .finish_non_exhaustive()
    }
}

/// Writes at least this large skip the write buffer when they can: sent straight from the
/// caller's bytes, they save a copy that costs more than the syscall saved by coalescing.
const EAGER_SEND_MIN: usize = 16 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new id for a session or a datagram endpoint: one numbering for both, so an id in a
/// log line names one thing.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl SessionCore {
    /// A new session of the loop behind `shared`.
    pub fn new(
        shared: Arc<LoopShared>,
        peer: Address,
        local: Address,
        limits: WriteLimits,
    ) -> Arc<SessionCore> {
        Arc::new(SessionCore {
            id: next_id(),
            peer,
            local,
            token: AtomicU64::new(u64::MAX),
            fd: AtomicI32::new(-1),
            state: Mutex::new(SessionState {
                limits,
                ..SessionState::default()
            }),
            shared,
            tls: OnceLock::new(),
            proxy: OnceLock::new(),
        })
    }

    /// What the TLS handshake settled: `None` for a plain session, or until it is done.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.get().map(|info| &**info)
    }

    /// Records what the handshake settled (the reactor, once, when it completes).
    pub(crate) fn set_tls(&self, info: TlsInfo) {
        let _ = self.tls.set(Box::new(info));
    }

    /// What the PROXY header said: `None` unless accepted by a `proxy_protocol` listener.
    pub fn proxy(&self) -> Option<&ProxyInfo> {
        self.proxy.get().map(|info| &**info)
    }

    /// Records the PROXY header (the reactor, once, before the session opens).
    pub(crate) fn set_proxy(&self, info: ProxyInfo) {
        let _ = self.proxy.set(Box::new(info));
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
        // The cap is on memory: files queued by `send_file` count only toward the marks.
        let buffered = state.buffer.bytes_len();
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
            if fd >= 0 && self.shared.is_turned_by_this_thread() {
                // SAFETY: `fd` is this session's socket, published by the reactor thread,
                // which alone closes it (and unpublishes it first) and is busy running this
                // caller: it is open, and it is this session's, for the whole call.
                let sent = match unsafe { crate::sys::net::send_raw(fd, piece) } {
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

    /// Queues part of a regular file, to be sent after everything written before and
    /// before anything written after. Safe from any thread.
    pub fn send_file(self: &Arc<Self>, segment: FileSegment) -> Result<(), Refusal> {
        if self.shared.is_forked_copy() {
            return Err(Refusal::Closed);
        }
        let mut state = self.state();
        if let Some(refusal) = state.write_refusal() {
            return Err(refusal);
        }
        if segment.remaining == 0 {
            return Ok(());
        }
        state.buffer.push_file(segment);
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

    /// Holds reading while the handler is behind (the worker pool's backlog is full, or
    /// hamanet.aio awaits an async callback of this session),
    /// apart from the user's `pause_reading()`. Reactor thread.
    pub fn hold_reading(&self) {
        self.state().backlog_full = true;
    }

    /// Ends [`SessionCore::hold_reading`]: reading goes on unless the user paused it.
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

    /// Resumes reading; data that arrived while paused is delivered next. Idempotent.
    pub fn resume_reading(self: &Arc<Self>) {
        let mut state = self.state();
        if state.read_paused && !state.closed {
            state.read_paused = false;
            // Even with the backlog full: the input held back by the pause is what
            // drains it.
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

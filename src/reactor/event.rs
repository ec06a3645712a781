//! What a turn tells the handler layer: its events, in the order they happened.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use crate::shared::SessionCore;
use crate::sys::epoll::Token;

/// What happened to a session during a turn, in the order it happened.
#[derive(Debug)]
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
    /// Reading resumed (`resume_reading()`, or a held backlog released): input that a
    /// handler layer held back while reading was paused may go now.
    ReadingResumed {
        /// The session's token.
        token: Token,
    },
    /// The reactor is stopping and leaves closing this session to the handler layer
    /// ([`StopCloses::Handler`]).
    Stopping {
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

//! What a turn tells the handler layer: its events, in the order they happened.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::shared::{DatagramCore, SessionCore};
use crate::sys::address::Address;
use crate::sys::epoll::Token;

/// What happened to a session or a datagram endpoint during a turn, in the order it
/// happened.
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
    /// A connection to a `proxy_protocol` listener was closed for its PROXY header
    /// (missing, malformed, oversized, or late) before it became a session. Reported at
    /// most once a second per reactor: `unreported` counts those closed since the last
    /// report without one (all are in the `proxy_refused` statistic).
    ProxyRefused {
        /// The connection's real peer (the proxy, or whoever connected).
        peer: Address,
        /// What was wrong.
        error: io::Error,
        /// Refusals since the last report that were not reported.
        unreported: u64,
    },
    /// A datagram endpoint was registered.
    EndpointOpened {
        /// The endpoint's token.
        token: Token,
        /// The endpoint, for the handler layer to find its own object by.
        endpoint: Arc<DatagramCore>,
    },
    /// Datagrams arrived: everything this endpoint read this turn, in order.
    Datagrams {
        /// The endpoint's token.
        token: Token,
        /// Which of the turn's datagrams ([`crate::reactor::Reactor::datagrams`]).
        datagrams: Range<usize>,
    },
    /// The endpoint's socket reported an error (an ICMP error on a connected endpoint),
    /// or a datagram could not be sent. The endpoint stays open.
    DatagramFailed {
        /// The endpoint's token.
        token: Token,
        /// What failed.
        failure: DatagramFailure,
    },
    /// The reactor is stopping and leaves closing this endpoint to the handler layer.
    EndpointStopping {
        /// The endpoint's token.
        token: Token,
    },
    /// The endpoint is closed and its slot freed; `error` is `None` for a clean close.
    EndpointClosed {
        /// The endpoint's token.
        token: Token,
        /// Why, if not cleanly (a stop whose deadline came before the queue was sent).
        error: Option<io::Error>,
    },
}

/// One datagram received this turn.
#[derive(Debug, Clone)]
pub struct ReceivedDatagram {
    /// Where its bytes are among the turn's received bytes.
    pub range: Range<usize>,
    /// Who sent it.
    pub from: Option<SocketAddr>,
    /// Its size as sent: more than `range.len()` if it was truncated.
    pub size: usize,
    /// Longer than the endpoint's `max_datagram_size`: the kernel kept only `range`.
    pub truncated: bool,
}

/// An error of a datagram endpoint, and what it was about.
#[derive(Debug)]
pub struct DatagramFailure {
    /// The error.
    pub error: io::Error,
    /// The address concerned: a failed datagram's destination, or a connected endpoint's
    /// peer.
    pub peer: Option<SocketAddr>,
    /// Whether a send failed (else the socket reported it on receiving).
    pub sending: bool,
}

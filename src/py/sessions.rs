//! The Python side of the open sessions and datagram endpoints: each session's `Session`
//! object, own callbacks, the error a callback raised, and framing state; each endpoint's
//! `DatagramEndpoint`; and a table that finds them by token.

use std::sync::Arc;

use pyo3::prelude::*;

use super::callbacks::Callbacks;
use super::datagram::PyDatagramEndpoint;
use super::session::PySession;
use crate::framing::FrameDecoder;
use crate::sys::epoll::Token;

/// One session's Python object and what the handler layer remembers about it.
pub(super) struct Entry {
    pub(super) session: Py<PySession>,
    /// The session's own handler, if it has one (`connect_nowait(handler=...)`), in
    /// place of the loop's.
    pub(super) callbacks: Option<Arc<Callbacks>>,
    /// The exception a callback raised, handed to `on_close` instead of the OS's reason.
    pub(super) error: Option<PyErr>,
    /// The session's framing state, when the loop frames (boxed: most loops do not, and
    /// an idle session should cost as little as it can).
    pub(super) decoder: Option<Box<FrameDecoder>>,
}

/// A session returned by a connect call and not yet opened, with its own callbacks.
pub type PendingSession = (Py<PySession>, Option<Arc<Callbacks>>);

/// One datagram endpoint's Python object and what the handler layer remembers about it.
pub(super) struct EndpointEntry {
    pub(super) endpoint: Py<PyDatagramEndpoint>,
    /// The endpoint's own handler (`open_udp(handler=...)`), in place of the loop's.
    pub(super) callbacks: Option<Arc<Callbacks>>,
    /// An error was logged because the handler has no `on_datagram_error` (once per
    /// endpoint: later ones are only counted).
    pub(super) unhandled_logged: bool,
}

/// An endpoint returned by `open_udp`/`connect_udp` and not yet registered by its reactor.
pub type PendingEndpoint = (Py<PyDatagramEndpoint>, Option<Arc<Callbacks>>);

/// What one thread that delivers a reactor's events knows: its open sessions and
/// endpoints, by token (slots are shared, so a token finds at most one of them).
#[derive(Default)]
pub(super) struct Known {
    pub(super) sessions: TokenTable<Entry>,
    pub(super) endpoints: TokenTable<EndpointEntry>,
}

/// Values kept per open session, indexed like the reactor's slots; a token of a slot's
/// earlier session finds nothing.
pub(super) struct TokenTable<T> {
    entries: Vec<Option<(u32, T)>>,
}

impl<T> Default for TokenTable<T> {
    fn default() -> Self {
        TokenTable {
            entries: Vec::new(),
        }
    }
}

impl<T> TokenTable<T> {
    /// Keeps `value` for the session of `token`; returns it, in place.
    pub(super) fn insert(&mut self, token: Token, value: T) -> &mut T {
        let index = token.slot();
        if self.entries.len() <= index {
            self.entries.resize_with(index + 1, || None);
        }
        &mut self.entries[index].insert((token.generation(), value)).1
    }

    /// The value of the session of `token`.
    pub(super) fn get(&mut self, token: Token) -> Option<&mut T> {
        match self.entries.get_mut(token.slot()) {
            Some(Some((generation, value))) if *generation == token.generation() => Some(value),
            _ => None,
        }
    }

    /// Takes the value of the session of `token` out.
    pub(super) fn remove(&mut self, token: Token) -> Option<T> {
        let slot = self.entries.get_mut(token.slot())?;
        match slot {
            Some((generation, _)) if *generation == token.generation() => {
                slot.take().map(|(_, value)| value)
            }
            _ => None,
        }
    }
}

//! The Python side of the open sessions: each one's `Session` object, own callbacks, the
//! error a callback raised, and framing state, in a table indexed like the reactor's slots.

use std::sync::Arc;

use pyo3::prelude::*;

use super::callbacks::Callbacks;
use super::session::PySession;
use crate::framing::FrameDecoder;
use crate::sys::epoll::Token;

/// One session's Python object and what the handler layer remembers about it.
pub(super) struct Entry {
    pub(super) generation: u32,
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

/// Python objects of open sessions, indexed like the reactor's slots.
#[derive(Default)]
pub(super) struct SessionTable {
    entries: Vec<Option<Entry>>,
}

impl SessionTable {
    pub(super) fn insert(
        &mut self,
        token: Token,
        (session, callbacks): PendingSession,
        decoder: Option<Box<FrameDecoder>>,
    ) {
        let index = token.slot();
        if self.entries.len() <= index {
            self.entries.resize_with(index + 1, || None);
        }
        self.entries[index] = Some(Entry {
            generation: token.generation(),
            session,
            callbacks,
            error: None,
            decoder,
        });
    }

    pub(super) fn get(&mut self, token: Token) -> Option<&mut Entry> {
        match self.entries.get_mut(token.slot()) {
            Some(Some(entry)) if entry.generation == token.generation() => Some(entry),
            _ => None,
        }
    }

    pub(super) fn remove(&mut self, token: Token) -> Option<Entry> {
        let slot = self.entries.get_mut(token.slot())?;
        match slot {
            Some(entry) if entry.generation == token.generation() => slot.take(),
            _ => None,
        }
    }
}

//! What a loop is configured with, and how its reactors find each other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::shared::{LoopShared, WriteLimits};
use crate::sys::net::SocketOptions;

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
    /// Sessions open in every reactor made with (a clone of) this configuration: what
    /// `max_connections` limits when one loop has several reactors.
    pub open_sessions: Arc<AtomicUsize>,
    /// The reactors made with (a clone of) this configuration, over which connections
    /// accepted from a shared listener are spread.
    pub siblings: Arc<Siblings>,
    /// Who closes the sessions when the reactor stops.
    pub stop_closes: StopCloses,
}

/// Who closes the sessions when the reactor stops (before its deadline; at the deadline
/// the reactor aborts what is left either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopCloses {
    /// The reactor: it flushes each session and closes it.
    #[default]
    Reactor,
    /// The handler layer, told by [`Event::Stopping`]: a worker pool closes each session
    /// once its handler has been given the input queued before the stop, so that what it
    /// writes in reply is still sent.
    Handler,
}

/// The reactors of one loop, for spreading accepted sessions over them.
#[derive(Debug, Default)]
pub struct Siblings {
    reactors: std::sync::OnceLock<Vec<Arc<LoopShared>>>,
    next: AtomicUsize,
}

impl Siblings {
    /// Names the loop's reactors (once, after they are all made).
    pub fn set(&self, reactors: Vec<Arc<LoopShared>>) {
        let _ = self.reactors.set(reactors);
    }

    /// The reactor that should own the next accepted session, each in turn; None when
    /// that is `me` (or the loop has one reactor).
    pub(super) fn next_owner(&self, me: &Arc<LoopShared>) -> Option<&Arc<LoopShared>> {
        let reactors = self.reactors.get().filter(|all| all.len() > 1)?;
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        let owner = &reactors[next % reactors.len()];
        (!Arc::ptr_eq(owner, me)).then_some(owner)
    }
}

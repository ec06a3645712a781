//! What other threads touch: a session's and a datagram endpoint's shared core and state,
//! the loop's command queue, its counters and status. The reactor owns the sockets; everything here is what it shares,
//! each piece behind a short lock that is never held while Python runs or the reactor waits.

mod datagram;
mod limits;
mod loop_;
mod session;

use std::sync::{Mutex, MutexGuard};

pub use datagram::{DatagramCore, DatagramLimits, DatagramRefusal, DatagramState, Outgoing};
pub use limits::{IdleTimeout, LimitsError, WriteLimits};
pub use loop_::{
    Adoption, Arrival, Binding, Command, Listener, LoopShared, LoopStatus, Placement, SocketFile,
    Stats,
};
pub use session::{Refusal, SessionCore, SessionState};

/// Locks `mutex`, ignoring poisoning: every critical section in this crate is a few
/// field updates that a panic cannot leave half-done in a way that matters more than
/// taking the whole reactor down would.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

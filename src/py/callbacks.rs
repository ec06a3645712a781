//! The handler's callbacks as the reactor thread calls them: one table indexed by
//! [`Callback`], and [`Busy`], which says which one runs now.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The names of the handler callbacks, in the order `Loop` receives them.
pub const CALLBACK_NAMES: [&str; 13] = [
    "on_connect",
    "on_recv",
    "on_send",
    "on_eof",
    "on_close",
    "on_pause_writing",
    "on_resume_writing",
    "on_message",
    "on_messages",
    "on_datagrams",
    "on_datagram",
    "on_datagram_error",
    "on_datagram_close",
];

/// A handler callback, numbered as in [`CALLBACK_NAMES`], or a timer's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Callback {
    OnConnect,
    OnRecv,
    OnSend,
    OnEof,
    OnClose,
    OnPauseWriting,
    OnResumeWriting,
    OnMessage,
    OnMessages,
    OnDatagrams,
    OnDatagram,
    OnDatagramError,
    OnDatagramClose,
    Timer,
    /// A `run_in_worker` job.
    Job,
}

impl Callback {
    const ALL: [Callback; 15] = [
        Callback::OnConnect,
        Callback::OnRecv,
        Callback::OnSend,
        Callback::OnEof,
        Callback::OnClose,
        Callback::OnPauseWriting,
        Callback::OnResumeWriting,
        Callback::OnMessage,
        Callback::OnMessages,
        Callback::OnDatagrams,
        Callback::OnDatagram,
        Callback::OnDatagramError,
        Callback::OnDatagramClose,
        Callback::Timer,
        Callback::Job,
    ];

    /// How logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Callback::Timer => "a timer callback",
            Callback::Job => "a run_in_worker() job",
            handler => CALLBACK_NAMES[handler as usize],
        }
    }
}

/// Which callback the reactor thread is running, and since when: what a `stop()` kept
/// waiting by a callback that does not return names in its log line. A few relaxed
/// atomic stores per callback; a reader may see a mix of two callbacks, which only
/// blurs a log line.
pub struct Busy {
    origin: Instant,
    /// Nanoseconds from `origin` to the callback's start, plus one; 0 when idle.
    since: AtomicU64,
    which: AtomicU8,
    session: AtomicU64,
}

impl Busy {
    pub fn new() -> Busy {
        Busy {
            origin: Instant::now(),
            since: AtomicU64::new(0),
            which: AtomicU8::new(0),
            session: AtomicU64::new(0),
        }
    }

    /// Runs `call` (a callback of `session`, 0 for none) marked as busy with `which`.
    pub(super) fn during<R>(&self, which: Callback, session: u64, call: impl FnOnce() -> R) -> R {
        self.which.store(which as u8, Ordering::Relaxed);
        self.session.store(session, Ordering::Relaxed);
        let since = self.origin.elapsed().as_nanos() as u64 + 1;
        self.since.store(since, Ordering::Release);
        let result = call();
        self.since.store(0, Ordering::Release);
        result
    }

    /// The callback running now (its name and session id, 0 for none) and for how long.
    pub fn current(&self) -> Option<(&'static str, u64, Duration)> {
        let since = self.since.load(Ordering::Acquire);
        if since == 0 {
            return None;
        }
        let which = Callback::ALL
            .get(usize::from(self.which.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Callback::Timer);
        let started = Duration::from_nanos(since - 1);
        let running = self.origin.elapsed().saturating_sub(started);
        Some((which.name(), self.session.load(Ordering::Relaxed), running))
    }
}

/// The handler's callbacks, indexed by [`Callback`] (in [`CALLBACK_NAMES`] order), each
/// `None` when the handler does not override it, so an unused callback costs nothing per
/// event; and how `on_recv` wants its bytes.
pub struct Callbacks {
    callables: [Option<Py<PyAny>>; CALLBACK_NAMES.len()],
    /// `on_recv` gets a memoryview lent for the call (the handler's `recv_views`), not a
    /// new `bytes`.
    pub recv_views: bool,
}

impl Callbacks {
    /// No callbacks at all (what a loop whose handler was cleared by the GC keeps).
    pub fn none() -> Callbacks {
        Callbacks {
            callables: std::array::from_fn(|_| None),
            recv_views: false,
        }
    }

    /// Shows the garbage collector each callable held (they usually reference the
    /// handler, which may reference the Server: a cycle only the GC can free).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for callback in &self.callables {
            visit.call(callback)?;
        }
        Ok(())
    }

    /// From a tuple in [`CALLBACK_NAMES`] order, `None` for callbacks not overridden,
    /// followed by the handler's `recv_views` flag (what `hamanet`'s `bound_callbacks`
    /// makes).
    pub fn from_tuple(callbacks: &Bound<'_, PyTuple>) -> PyResult<Callbacks> {
        if callbacks.len() != CALLBACK_NAMES.len() + 1 {
            return Err(PyValueError::new_err(format!(
                "callbacks must be a tuple of {} callables or None ({}), then recv_views",
                CALLBACK_NAMES.len(),
                CALLBACK_NAMES.join(", ")
            )));
        }
        let mut out = Callbacks::none();
        for (index, slot) in out.callables.iter_mut().enumerate() {
            let item = callbacks.get_item(index)?;
            *slot = (!item.is_none()).then(|| item.unbind());
        }
        out.recv_views = callbacks.get_item(CALLBACK_NAMES.len())?.is_truthy()?;
        Ok(out)
    }
}

impl std::ops::Index<Callback> for Callbacks {
    type Output = Option<Py<PyAny>>;

    /// The handler's callable for `which` (always `None` for [`Callback::Timer`], whose
    /// callables live with their timers).
    fn index(&self, which: Callback) -> &Option<Py<PyAny>> {
        const NONE: &Option<Py<PyAny>> = &None;
        self.callables.get(which as usize).unwrap_or(NONE)
    }
}

/// A session's own callbacks, from the tuple `hamanet`'s `bound_callbacks` makes.
pub(super) fn own_callbacks(
    callbacks: Option<&Bound<'_, PyTuple>>,
) -> PyResult<Option<Arc<Callbacks>>> {
    callbacks
        .map(|tuple| Callbacks::from_tuple(tuple).map(Arc::new))
        .transpose()
}

//! A lane: one session's or datagram endpoint's (or the loop's, or a job's) work, in the
//! reactor's order, and the rule for what runs next (input waits while the user paused
//! reading).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::Pool;
use crate::framing::{FrameDecoder, FrameError, Framer};
use crate::py::sessions::{EndpointEntry, Entry};
use crate::reactor::{DatagramFailure, ReceivedDatagram};
use crate::shared::{DatagramCore, SessionCore};
use crate::sys::address::Address;

/// What one queued datagram counts in a lane's backlog beside its bytes, so that a flood
/// of tiny (or empty) datagrams is bounded too: about what it costs in Python.
pub(super) const DATAGRAM_OVERHEAD: usize = 64;

/// One piece of work for a lane.
pub(super) enum Work {
    Opened(Arc<SessionCore>),
    Received(Vec<u8>),
    /// Messages cut by the lane's decoder: back to back in `data`, each ending at the
    /// next of `ends`.
    Messages {
        data: Vec<u8>,
        ends: Vec<usize>,
    },
    /// The stream broke its framing after the messages before this.
    FramingFailed(FrameError),
    /// A datagram endpoint was registered.
    EndpointOpened(Arc<DatagramCore>),
    /// Datagrams, their bytes back to back in `data` (each item's range indexes it).
    Datagrams {
        data: Vec<u8>,
        items: Vec<ReceivedDatagram>,
    },
    DatagramFailed(DatagramFailure),
    /// The endpoint closed (this one, of the reactor whose count it leaves).
    EndpointClosed(Option<Arc<DatagramCore>>, Option<io::Error>),
    Eof,
    Drained,
    PauseWriting,
    ResumeWriting,
    /// The session closed (this one, of the reactor whose count it leaves).
    Closed(Option<Arc<SessionCore>>, Option<io::Error>),
    ConnectFailed(Arc<SessionCore>, Option<io::Error>),
    Timer(u64),
    AcceptPaused(io::Error),
    /// A connection was turned away for its PROXY header (and `u64` more unreported).
    ProxyRefused(Address, io::Error, u64),
    /// Reading resumed: nothing to run, but held input may go now.
    ReadingResumed,
    /// The loop stops: close the session, now that its handler has had what came before.
    Stop,
    /// `run_in_worker`: `function(*args)`, its outcome set on `future`.
    Job {
        function: Py<PyAny>,
        args: Py<PyTuple>,
        future: Py<PyAny>,
    },
}

impl Work {
    /// Input from the peer: bytes, messages or datagrams (and a framing error found in
    /// them).
    pub(super) fn is_input(&self) -> bool {
        self.is_delivery() || matches!(self, Work::FramingFailed(_))
    }

    /// Input that a handler is handed (and that counts in the backlog).
    fn is_delivery(&self) -> bool {
        matches!(
            self,
            Work::Received(_) | Work::Messages { .. } | Work::Datagrams { .. }
        )
    }

    /// What it counts in the lane's backlog.
    pub(super) fn input_size(&self) -> usize {
        match self {
            Work::Received(data) | Work::Messages { data, .. } => data.len(),
            Work::Datagrams { data, items } => data.len() + items.len() * DATAGRAM_OVERHEAD,
            _ => 0,
        }
    }

    /// Whether it still runs after the stop deadline: what every session is owed
    /// (`on_connect` before `on_close`, and `on_close`), not what its data would cause.
    pub(super) fn owed(&self) -> bool {
        matches!(
            self,
            Work::Opened(_)
                | Work::Closed(..)
                | Work::ConnectFailed(..)
                | Work::Stop
                | Work::EndpointOpened(_)
                | Work::EndpointClosed(..)
        )
    }
}

/// A lane's queue, under its lock.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) items: VecDeque<Work>,
    /// Received bytes queued and not yet handled.
    pub(super) bytes: usize,
    /// In the ready queue, or being run: whoever adds work to an unscheduled lane
    /// schedules it.
    pub(super) scheduled: bool,
    /// When it was last scheduled, for the longest wait for a worker.
    pub(super) since: Option<Instant>,
    /// The reactor holds this session's reading until the backlog drains.
    pub(super) holding: bool,
    /// The stream broke its framing: reading stays held until the session closes.
    pub(super) framing_failed: bool,
}

/// Whose reading a lane's backlog holds: a session's or a datagram endpoint's.
pub(super) enum Reader {
    Session(Arc<SessionCore>),
    Endpoint(Arc<DatagramCore>),
}

impl Reader {
    pub(super) fn hold(&self) {
        match self {
            Reader::Session(core) => core.hold_reading(),
            Reader::Endpoint(core) => core.hold_reading(),
        }
    }

    pub(super) fn release(&self) {
        match self {
            Reader::Session(core) => core.release_reading(),
            Reader::Endpoint(core) => core.release_reading(),
        }
    }

    fn paused(&self) -> bool {
        match self {
            Reader::Session(core) => core.state().read_paused,
            Reader::Endpoint(core) => core.state().read_paused,
        }
    }
}

/// One session's or endpoint's (or the loop's, or a job's) work, run in order by one
/// worker at a time.
pub(crate) struct Lane {
    pub(super) queue: Mutex<Queue>,
    /// The session's Python side: taken out by the worker that runs the lane, and put
    /// back before the lane can be scheduled again (so the next worker finds it).
    pub(super) entry: Mutex<Option<Entry>>,
    /// The same for a datagram endpoint's lane.
    pub(super) endpoint: Mutex<Option<EndpointEntry>>,
    /// The session or endpoint whose reading the backlog holds, if it is one's lane.
    pub(super) reader: Option<Reader>,
    /// The session's framing state, when the loop frames: the reactor thread cuts the
    /// messages (the lock is only ever taken there), so an oversize message stops the
    /// reading at once and the workers get whole messages.
    pub(super) decoder: Mutex<Option<FrameDecoder>>,
}

impl Lane {
    /// The next work to run, or None if there is none or only input that must wait.
    ///
    /// Input waits while the user has paused reading (`pause_reading()` after the reactor
    /// had read it): it is delivered after `resume_reading()`, and so is the EOF behind
    /// it. Other notices pass it, as they would pass input still in the kernel without
    /// a pool (`on_resume_writing`, say, which may be what resumes reading). A session
    /// that closes meanwhile drops that input, as a paused session drops unread input,
    /// so that its `on_close` comes.
    pub(super) fn next_work(&self, queue: &mut Queue, pool: &Pool) -> Option<Work> {
        let paused = || self.reader.as_ref().is_some_and(Reader::paused);
        if !matches!(queue.items.front(), Some(work) if work.is_input()) || !paused() {
            return queue.items.pop_front();
        }
        let closing = queue
            .items
            .iter()
            .any(|work| matches!(work, Work::Closed(..) | Work::EndpointClosed(..)));
        if closing {
            while let Some(work) = queue.items.front().filter(|work| work.is_delivery()) {
                queue.bytes = queue.bytes.saturating_sub(work.input_size());
                queue.items.pop_front();
                pool.queued.fetch_sub(1, Ordering::Relaxed);
            }
            return queue.items.pop_front();
        }
        let passing = queue
            .items
            .iter()
            .position(|work| !work.is_input() && !matches!(work, Work::Eof))?;
        queue.items.remove(passing)
    }

    pub(super) fn new(core: Option<Arc<SessionCore>>) -> Arc<Lane> {
        Lane::framed(core, None)
    }

    pub(super) fn framed(core: Option<Arc<SessionCore>>, framer: Option<&Framer>) -> Arc<Lane> {
        Lane::with_reader(core.map(Reader::Session), framer)
    }

    /// A datagram endpoint's lane.
    pub(super) fn for_endpoint(core: Arc<DatagramCore>) -> Arc<Lane> {
        Lane::with_reader(Some(Reader::Endpoint(core)), None)
    }

    fn with_reader(reader: Option<Reader>, framer: Option<&Framer>) -> Arc<Lane> {
        Arc::new(Lane {
            queue: Mutex::new(Queue::default()),
            entry: Mutex::new(None),
            endpoint: Mutex::new(None),
            reader,
            decoder: Mutex::new(framer.map(|framer| FrameDecoder::new(framer.clone()))),
        })
    }

    /// The session of a session's lane.
    pub(super) fn session(&self) -> Option<Arc<SessionCore>> {
        match &self.reader {
            Some(Reader::Session(core)) => Some(Arc::clone(core)),
            _ => None,
        }
    }

    /// The endpoint of an endpoint's lane.
    pub(super) fn datagram_endpoint(&self) -> Option<Arc<DatagramCore>> {
        match &self.reader {
            Some(Reader::Endpoint(core)) => Some(Arc::clone(core)),
            _ => None,
        }
    }
}

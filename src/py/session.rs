//! `hamanet.Session`: the Python view of one connection.
//!
//! Every method is safe from any Python thread: it touches only the session's shared
//! state and queues the session for the reactor, which does the actual I/O.

use std::os::fd::AsFd;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::convert::{self, address_object, optional_size, optional_timeout, MAX_SIZE};
use super::errors::{os_error, refused, FramingError};
use super::tls::PyTlsInfo;
use super::view::{chunk, Chunk};
use crate::buffer::FileSegment;
use crate::framing::Framer;
use crate::shared::{SessionCore, WriteLimits};
use crate::sys;

/// One TCP connection. Users never construct it; handlers receive it.
///
/// Instances accept arbitrary attributes (`session.state = ...`), the place for the
/// user's per-session state.
#[pyclass(module = "hamanet", name = "Session", frozen, dict, weakref)]
pub struct PySession {
    core: Arc<SessionCore>,
    /// The loop's framer, for `write_frame`.
    framer: Option<Arc<Framer>>,
}

impl PySession {
    /// Wraps a session core of a loop that frames with `framer`.
    pub fn new(core: Arc<SessionCore>, framer: Option<Arc<Framer>>) -> PySession {
        PySession { core, framer }
    }

    /// The shared state behind this object.
    pub fn core(&self) -> &Arc<SessionCore> {
        &self.core
    }
}

#[pymethods]
impl PySession {
    /// Buffers `data` (any bytes-like object) for sending; returns at once. The reactor
    /// sends everything written during one batch of callbacks in a single syscall.
    fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let chunk = chunk(data, "write")?;
        self.core
            .write(chunk.as_slice())
            .map_err(|r| refused(r, "write", self.core.id))
    }

    /// Sends `payload` as one message of the server's framing: with its length header
    /// (`LengthPrefixed`), its delimiter (`Delimiter`), or as is (`FixedSize`, which
    /// checks the size). Atomic, like `writelines`.
    fn write_frame(&self, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(framer) = &self.framer else {
            return Err(FramingError::new_err(
                "write_frame() needs framing: pass framing=hamanet.framing.LengthPrefixed() \
                 (or Delimiter, FixedSize) to the Server or Client; use write() otherwise",
            ));
        };
        let payload = chunk(payload, "write_frame")?;
        let (prefix, suffix) = framer
            .envelope(payload.as_slice())
            .map_err(|why| FramingError::new_err(format!("cannot write_frame(): {why}")))?;
        self.core
            .write_all(&[&prefix, payload.as_slice(), &suffix])
            .map_err(|r| refused(r, "write_frame", self.core.id))
    }

    /// Buffers every bytes-like item of `chunks`, atomically: no other thread's write can
    /// land between them.
    fn writelines(&self, chunks: &Bound<'_, PyAny>) -> PyResult<()> {
        let pieces = chunks
            .try_iter()?
            // Each is copied as it comes (bytes excepted): taking the next may run
            // Python code (a generator) that changes or resizes an earlier one.
            .map(|item| chunk(&item?, "writelines").map(Chunk::detached))
            .collect::<PyResult<Vec<_>>>()?;
        self.core
            .write_all(&pieces.iter().map(Chunk::as_slice).collect::<Vec<_>>())
            .map_err(|r| refused(r, "writelines", self.core.id))
    }

    /// Queues `count` bytes of the regular file `file` (a binary file object, or a
    /// descriptor number) from `offset` (all that follows it when `count` is None), to be
    /// sent after everything written before and before anything written after, by the
    /// kernel (`sendfile(2)`): the bytes never enter Python or the write buffer. They
    /// count toward the watermarks (`write_buffer_size`, `on_pause_writing`), not the hard
    /// cap; `on_send` comes once they are sent. The file is duplicated, so the caller may
    /// close it at once. Returns the count queued. A file truncated meanwhile ends the
    /// session with an error, since the peer was promised those bytes.
    #[pyo3(signature = (file, offset = 0, count = None))]
    fn sendfile(
        &self,
        file: &Bound<'_, PyAny>,
        offset: i128,
        count: Option<i128>,
    ) -> PyResult<u64> {
        let segment = file_segment(file, offset, count)?;
        let count = segment.remaining;
        self.core
            .send_file(segment)
            .map_err(|r| refused(r, "sendfile", self.core.id))?;
        Ok(count)
    }

    /// Sends everything buffered, then closes (FIN). `on_close(session, None)` follows.
    /// Idempotent.
    fn close(&self) {
        self.core.close();
    }

    /// Drops the buffer and closes at once with RST. Idempotent.
    fn abort(&self) {
        self.core.abort();
    }

    /// Sends everything buffered, then FIN (half-close); the session can still receive.
    fn shutdown_write(&self) {
        self.core.shutdown_write();
    }

    /// The session's id, unique within the process.
    #[getter]
    fn id(&self) -> u64 {
        self.core.id
    }

    /// The peer's address: `(host, port)`, `(host, port, flowinfo, scope_id)` for IPv6,
    /// or the path for a Unix socket (`""` for an unnamed peer). Behind a PROXY-protocol
    /// balancer (`proxy_protocol=True`), the client's address as its header gave it.
    #[getter]
    fn peer_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        address_object(py, &self.core.peer)
    }

    /// The local address, in the same shape as `peer_addr`. Behind a PROXY-protocol
    /// balancer, the address the client connected to (the header's destination).
    #[getter]
    fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        address_object(py, &self.core.local)
    }

    /// For a session accepted by a `proxy_protocol` listener, the proxy's own address
    /// (the connection's real peer; `peer_addr` and `local_addr` are then the client's
    /// connection as the proxy saw it). None for any other session.
    #[getter]
    fn proxy_addr<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.core
            .proxy()
            .map(|info| address_object(py, &info.proxy))
            .transpose()
    }

    /// For a session accepted by a `proxy_protocol` listener, its PROXY header's TLVs as
    /// `{type: bytes}` (empty for a version 1 header; a type sent twice keeps its last
    /// value). None for any other session.
    #[getter]
    fn proxy_tlvs<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(info) = self.core.proxy() else {
            return Ok(None);
        };
        let tlvs = PyDict::new(py);
        for tlv in &info.tlvs {
            tlvs.set_item(tlv.kind, PyBytes::new(py, &tlv.value))?;
        }
        Ok(Some(tlvs))
    }

    /// Stops reading: no `on_recv` until `resume_reading()`, and the kernel's receive
    /// window pushes back on the peer. Idempotent.
    fn pause_reading(&self) {
        self.core.pause_reading();
    }

    /// Resumes reading; data that arrived meanwhile is delivered next. Idempotent.
    fn resume_reading(&self) {
        self.core.resume_reading();
    }

    /// Holds reading while hamanet.aio awaits this session's async callback: apart from
    /// the user's `pause_reading()`, which neither this nor its release touches.
    fn _hold_reading(&self) {
        self.core.hold_reading();
    }

    /// Ends `_hold_reading()`: reading goes on unless the user paused it.
    fn _release_reading(&self) {
        self.core.release_reading();
    }

    /// True while `pause_reading()` is in force.
    #[getter]
    fn reading_paused(&self) -> bool {
        self.core.state().read_paused
    }

    /// True between `on_pause_writing` and `on_resume_writing`.
    #[getter]
    fn writing_paused(&self) -> bool {
        self.core.state().writing_paused
    }

    /// Sets the write-buffer watermarks and hard cap, in bytes. An argument left out
    /// keeps its value, except `low`, which follows asyncio and becomes `high // 4`
    /// when only `high` is given.
    #[pyo3(signature = (high=None, low=None, max=None))]
    fn set_write_buffer_limits(
        &self,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
        max: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let limit = |value: Option<&Bound<'_, PyAny>>, name, least| match value {
            Some(value) => optional_size(value, name, least..=MAX_SIZE),
            None => Ok(None),
        };
        let (high, low, max) = (
            limit(high, "high", 0)?,
            limit(low, "low", 0)?,
            limit(max, "max", 1)?,
        );
        self.core
            .update_write_limits(|current| {
                let low = low.unwrap_or(match high {
                    Some(high) => high / 4,
                    None => current.low,
                });
                let high = high.unwrap_or(current.high);
                WriteLimits::new(high, low, max.unwrap_or(current.max))
            })
            .map_err(|err| PyValueError::new_err(err.describe(["low", "high", "max"])))
    }

    /// `(low, high, max)`: the watermarks and the hard cap, in bytes.
    fn get_write_buffer_limits(&self) -> (usize, usize, usize) {
        let limits = self.core.state().limits;
        (limits.low, limits.high, limits.max)
    }

    /// Closes this session after `seconds` without traffic (`None`: never), overriding
    /// the server's `idle_timeout`.
    fn set_idle_timeout(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let timeout = optional_timeout(seconds, "idle timeout")?;
        self.core.set_idle_timeout(timeout);
        Ok(())
    }

    /// Bytes written and not yet handed to the kernel.
    #[getter]
    fn write_buffer_size(&self) -> usize {
        self.core.buffered()
    }

    /// True once `close()` or `abort()` was called or the connection ended: writes fail.
    /// What the TLS handshake settled (a `TLSInfo`); None for a plain session, and for a
    /// TLS one until its handshake is done.
    #[getter]
    fn tls(&self) -> Option<PyTlsInfo> {
        self.core.tls().map(PyTlsInfo::new)
    }

    #[getter]
    fn closing(&self) -> bool {
        self.core.state().is_ending()
    }

    /// True once the socket is closed (`on_close` is delivered or about to be).
    #[getter]
    fn closed(&self) -> bool {
        self.core.state().closed
    }

    fn __repr__(&self) -> String {
        let state = self.core.state();
        let shown = if state.closed {
            "closed"
        } else if state.is_closing() {
            "closing"
        } else {
            "open"
        };
        format!(
            "<hamanet.Session id={} peer={} {}>",
            self.core.id, self.core.peer, shown
        )
    }
}

/// The part of `file` that `sendfile(file, offset, count)` asks for, checked.
fn file_segment(
    file: &Bound<'_, PyAny>,
    offset: i128,
    count: Option<i128>,
) -> PyResult<FileSegment> {
    let takes = "a file opened in binary mode (open(path, 'rb')) or its descriptor";
    let fd = convert::descriptor(file, "file", takes)?;
    let owned = sys::file::duplicate(fd).map_err(|err| os_error(&err, Some("sendfile()")))?;
    let readable = sys::file::readable_size(owned.as_fd());
    let size = match readable.map_err(|err| os_error(&err, Some("sendfile()")))? {
        Ok(size) => size,
        Err(kind) => {
            return Err(PyValueError::new_err(format!(
                "sendfile() needs a regular file open for reading, and fd {fd} is {kind}: \
                 open it with open(path, 'rb'), or read it and write() the bytes"
            )))
        }
    };
    let offset = size_arg(offset, "offset")?;
    if offset > size {
        return Err(PyValueError::new_err(format!(
            "sendfile() offset {offset} is past the end of the file ({size} bytes)"
        )));
    }
    let count = match count {
        None => size - offset,
        Some(count) => {
            let count = size_arg(count, "count")?;
            if count > size - offset {
                return Err(PyValueError::new_err(format!(
                    "sendfile() count {count} is more than the file holds after offset \
                     {offset} ({} bytes of {size})",
                    size - offset
                )));
            }
            count
        }
    };
    Ok(FileSegment::new(owned, offset, count))
}

/// A non-negative integer argument of `sendfile()`.
fn size_arg(value: i128, name: &str) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| {
        PyValueError::new_err(format!("sendfile() {name} must be 0 or more, not {value}"))
    })
}

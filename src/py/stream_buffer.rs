//! `hamanet._hamanet.StreamBuffer`: the receive buffer of `hamanet.aio`'s asyncio-style
//! streams, with the separator search in Rust (memchr's `memmem`), so a `readline()` or
//! `readuntil()` costs one search over the bytes that are new, not a Python loop.

use memchr::memmem;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::view::chunk;

/// Received bytes waiting to be read. Reads take from the front; the consumed front is
/// dropped in one move once it is larger than what is left, so a long stream of small
/// reads costs no quadratic shuffling.
#[pyclass(module = "hamanet", name = "StreamBuffer")]
#[derive(Default)]
pub struct PyStreamBuffer {
    data: Vec<u8>,
    start: usize,
}

impl PyStreamBuffer {
    fn pending(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Takes the first `n` bytes (at most what is there) as a `bytes`.
    fn take<'py>(&mut self, py: Python<'py>, n: usize) -> Bound<'py, PyBytes> {
        let n = n.min(self.data.len() - self.start);
        let taken = PyBytes::new(py, &self.data[self.start..self.start + n]);
        self.start += n;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        } else if self.start > self.data.len() - self.start {
            self.data.drain(..self.start);
            self.start = 0;
        }
        taken
    }
}

#[pymethods]
impl PyStreamBuffer {
    #[new]
    fn new() -> Self {
        PyStreamBuffer::default()
    }

    /// Appends received bytes: any bytes-like object, a view lent by `recv_views` too
    /// (copied here once, straight from the reactor's buffer).
    fn feed(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.data.extend_from_slice(chunk(data, "feed")?.as_slice());
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.data.len() - self.start
    }

    /// Takes up to `n` bytes from the front (all of them for `n < 0`).
    fn read<'py>(&mut self, py: Python<'py>, n: isize) -> Bound<'py, PyBytes> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.take(py, n)
    }

    /// The offset of the first `separator` at or after `start`, or -1.
    #[pyo3(signature = (separator, start=0))]
    fn find(&self, separator: &[u8], start: usize) -> PyResult<isize> {
        if separator.is_empty() {
            return Err(PyValueError::new_err(
                "Separator should be at least one-byte string",
            ));
        }
        let pending = self.pending();
        let found = pending
            .get(start..)
            .and_then(|rest| memmem::find(rest, separator))
            .map_or(-1, |at| (start + at) as isize);
        Ok(found)
    }
}

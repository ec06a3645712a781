//! Bytes-like objects without copies, both ways: the read-only `memoryview` that a handler
//! with `recv_views = True` gets onto received bytes (lent for the length of its
//! `on_recv`), and the borrowing of any bytes-like argument of `write()` for the length of
//! the call. The Python edge's buffer-protocol `unsafe` lives here.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};

/// Received bytes lent to Python: what a `recv_views` handler's memoryview is a view of.
///
/// It exports views only while the callback runs. A view derived from the lent one that
/// outlives the callback (a slice kept, a numpy array made from it) still points into
/// the reactor's buffer; [`Loan::end`] finds it, and the caller then hands this object
/// that buffer's memory to keep ([`keep_for`]): the view goes on reading the
/// bytes that were received, never what a later read put there.
#[pyclass(module = "hamanet._hamanet", name = "ReceivedBytes", frozen)]
pub struct ReceivedBytes {
    /// The address of the first byte, as an integer: the memory is the reactor's (or a
    /// worker's) and outlives every export, as [`Loan`] and `keep` arrange.
    start: usize,
    len: usize,
    /// Whether new views may be made: only during the callback.
    lendable: AtomicBool,
    /// Views exported and not yet released.
    exports: AtomicUsize,
    /// The memory `start` points into, once a view outlived the callback.
    kept: OnceLock<Arc<Vec<u8>>>,
}

/// Hands `memory`, which holds the bytes each of `lenders` lent, to them to keep for the
/// views that outlived their callbacks (attached: the lenders are dropped here).
pub(super) fn keep_for(lenders: Vec<Py<ReceivedBytes>>, memory: Vec<u8>) {
    let memory = Arc::new(memory);
    for lender in lenders {
        let lender = lender.get();
        debug_assert!({
            let range = memory.as_ptr_range();
            range.start as usize <= lender.start && lender.start + lender.len <= range.end as usize
        });
        let _ = lender.kept.set(Arc::clone(&memory));
    }
}

#[pymethods]
impl ReceivedBytes {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        if !this.lendable.load(Ordering::Acquire) {
            return Err(PyBufferError::new_err(
                "received bytes are lent to on_recv only while it runs: copy what you keep \
                 there, with bytes(data) or bytes(data[start:end])",
            ));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "received bytes are read-only: copy them with bytearray(data) to change them",
            ));
        }
        // SAFETY: `view` is the Py_buffer Python asked this object to fill. The bytes at
        // `start..start + len` stay valid while it is exported: during the callback they
        // are the reactor's (or the worker's) and untouched until it returns; an export
        // still alive after it gets their memory kept by this object, which each export
        // holds a reference to (`obj`, set by PyBuffer_FillInfo).
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.start as *mut c_void,
                this.len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if filled != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }

    fn __repr__(&self) -> String {
        format!("<hamanet received bytes, {} bytes>", self.len)
    }
}

/// One `on_recv` call's view of received bytes.
pub(super) struct Loan<'py> {
    lender: Bound<'py, ReceivedBytes>,
    view: Bound<'py, PyMemoryView>,
}

impl<'py> Loan<'py> {
    /// A read-only memoryview onto `data`, which must stay untouched until [`Loan::end`]
    /// (or, if that returns the lender, for as long as the lender lives).
    pub(super) fn new(py: Python<'py>, data: &[u8]) -> PyResult<Loan<'py>> {
        let lender = Bound::new(
            py,
            ReceivedBytes {
                start: data.as_ptr() as usize,
                len: data.len(),
                lendable: AtomicBool::new(true),
                exports: AtomicUsize::new(0),
                kept: OnceLock::new(),
            },
        )?;
        let view = PyMemoryView::from(lender.as_any())?;
        Ok(Loan { lender, view })
    }

    /// The view to hand the callback.
    pub(super) fn view(&self) -> &Bound<'py, PyMemoryView> {
        &self.view
    }

    /// Takes the view back: it is released, so a handler that kept it gets ValueError
    /// on its next use. Returns the lender if a view derived from it is still alive; its
    /// memory must then be kept for it.
    pub(super) fn end(self) -> Option<Py<ReceivedBytes>> {
        let py = self.view.py();
        let lender = self.lender.get();
        lender.lendable.store(false, Ordering::Release);
        // Fails (BufferError) only while the view has exports of its own, a numpy array
        // made from it, say: the count below sees those as well.
        let _ = self.view.call_method0(intern!(py, "release"));
        drop(self.view);
        (lender.exports.load(Ordering::Acquire) > 0).then(|| self.lender.unbind())
    }
}

/// A bytes-like argument of `write()` and its kin, borrowed for the length of the call.
pub(super) enum Chunk<'py> {
    Bytes(Bound<'py, PyBytes>),
    /// Any other C-contiguous buffer (bytearray, memoryview, a lent view...).
    Borrowed(PyBuffer<u8>),
    /// A buffer whose bytes are not contiguous, gathered.
    Copied(Vec<u8>),
}

impl Chunk<'_> {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Bytes(bytes) => bytes.as_bytes(),
            // SAFETY: the buffer is C-contiguous (checked when it was taken) and exported
            // to us until `self` drops, so its memory cannot be freed or resized
            // meanwhile; the caller holds the GIL (the `'py` borrow) and does not release
            // it while using the slice, so no Python code can change the bytes under it
            // (without the GIL, as on a free-threaded build, a concurrent writer races
            // this read exactly as it races `socket.send`).
            Chunk::Borrowed(buffer) => unsafe {
                std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes())
            },
            Chunk::Copied(vec) => vec,
        }
    }
}

/// Borrows `data`, any bytes-like object, for `method` (named in the error).
pub(super) fn chunk<'py>(data: &Bound<'py, PyAny>, method: &str) -> PyResult<Chunk<'py>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(Chunk::Bytes(bytes.clone()));
    }
    let buffer = PyBuffer::<u8>::get(data).or_else(|_| {
        // Any other buffer (array.array('i'), a memoryview of floats...) is sent as its
        // raw bytes, as socket.send does: seen through a byte-format memoryview.
        let as_bytes =
            PyMemoryView::from(data)?.call_method1(intern!(data.py(), "cast"), ("B",))?;
        PyBuffer::<u8>::get(&as_bytes)
    });
    match buffer {
        Ok(buffer) if buffer.is_c_contiguous() => Ok(Chunk::Borrowed(buffer)),
        Ok(buffer) => Ok(Chunk::Copied(buffer.to_vec(data.py())?)),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{method}() takes a bytes-like object (bytes, bytearray, memoryview, array: \
             anything with the buffer protocol), not '{}'; encode text first, e.g. \
             text.encode()",
            data.get_type().name()?
        ))),
    }
}

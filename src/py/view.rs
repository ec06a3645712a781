//! Bytes-like objects without copies, both ways: the read-only `memoryview` that a handler
//! with `recv_views = True` gets onto received bytes (lent for the length of its
//! `on_recv`), and the borrowing of any bytes-like argument of `write()` for the length of
//! the call. The Python edge's buffer-protocol `unsafe` lives here.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
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
    /// worker's) and outlives every export, as [`Loan`] and [`keep_for`] arrange. Set
    /// anew when a lender nobody else holds is reused for the next loan.
    start: AtomicUsize,
    len: AtomicUsize,
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
            let start = lender.start.load(Ordering::Relaxed);
            let end = start + lender.len.load(Ordering::Relaxed);
            range.start as usize <= start && end <= range.end as usize
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
                this.start.load(Ordering::Relaxed) as *mut c_void,
                this.len.load(Ordering::Relaxed) as ffi::Py_ssize_t,
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
        format!(
            "<hamanet received bytes, {} bytes>",
            self.len.load(Ordering::Relaxed)
        )
    }
}

/// One `on_recv` call's view of received bytes.
pub(super) struct Loan<'py> {
    lender: Bound<'py, ReceivedBytes>,
    view: Bound<'py, PyMemoryView>,
}

/// What became of a loan's lender once the view was taken back.
pub(super) enum Returned {
    /// A view derived from it is still alive: its memory must be kept ([`keep_for`]).
    Outlived(Py<ReceivedBytes>),
    /// Nothing refers to it any more: it may serve the next loan.
    Spare(Py<ReceivedBytes>),
    /// Something holds the lender itself (`data.obj`): it lends nothing more.
    Held,
}

impl<'py> Loan<'py> {
    /// A read-only memoryview onto `data`, which must stay untouched until [`Loan::end`]
    /// (or, if that says `Outlived`, for as long as the lender lives). `spare`: a lender
    /// a previous loan returned, reused to save an allocation.
    pub(super) fn new(
        py: Python<'py>,
        data: &[u8],
        spare: Option<Py<ReceivedBytes>>,
    ) -> PyResult<Loan<'py>> {
        let lender = match spare {
            Some(spare) => {
                let spare = spare.into_bound(py);
                let this = spare.get();
                this.start.store(data.as_ptr() as usize, Ordering::Relaxed);
                this.len.store(data.len(), Ordering::Relaxed);
                this.lendable.store(true, Ordering::Release);
                spare
            }
            None => Bound::new(
                py,
                ReceivedBytes {
                    start: AtomicUsize::new(data.as_ptr() as usize),
                    len: AtomicUsize::new(data.len()),
                    lendable: AtomicBool::new(true),
                    exports: AtomicUsize::new(0),
                    kept: OnceLock::new(),
                },
            )?,
        };
        let view = PyMemoryView::from(lender.as_any())?;
        Ok(Loan { lender, view })
    }

    /// The view to hand the callback.
    pub(super) fn view(&self) -> &Bound<'py, PyMemoryView> {
        &self.view
    }

    /// Takes the view back: it is released, so a handler that kept it gets ValueError
    /// on its next use, and says what became of the lender.
    pub(super) fn end(self) -> Returned {
        let py = self.view.py();
        let lender = self.lender.get();
        lender.lendable.store(false, Ordering::Release);
        // The view is ours alone and is the lender's only export: nobody kept anything,
        // and dropping it releases it, without the cost of a call to `release()`.
        if !(sole_reference(self.view.as_any()) && lender.exports.load(Ordering::Acquire) == 1) {
            // Fails (BufferError) only while the view has exports of its own, a numpy
            // array made from it, say: the count below sees those as well.
            let _ = self.view.call_method0(intern!(py, "release"));
        }
        drop(self.view);
        if lender.exports.load(Ordering::Acquire) > 0 {
            Returned::Outlived(self.lender.unbind())
        } else if sole_reference(self.lender.as_any()) {
            Returned::Spare(self.lender.unbind())
        } else {
            Returned::Held
        }
    }
}

/// Whether `object` is referred to by its `Bound` alone. On a free-threaded build a
/// reference count read from one thread is not exact, so there it always says no (the
/// callers then take the slower, always-correct path).
fn sole_reference(object: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `object` is a live object (the `Bound` holds a reference), and where the
    // GIL exists and is held its reference count is exact and cannot change under us.
    refcounts_exact(object.py()) && unsafe { ffi::Py_REFCNT(object.as_ptr()) == 1 }
}

/// Whether this interpreter's reference counts are exact while the GIL is held: not on a
/// free-threaded build (Py_GIL_DISABLED), whose counts other threads change without it.
/// Asked once; an interpreter that cannot say is taken to be free-threaded.
fn refcounts_exact(py: Python<'_>) -> bool {
    static EXACT: OnceLock<bool> = OnceLock::new();
    *EXACT.get_or_init(|| {
        py.import("sysconfig")
            .and_then(|sysconfig| sysconfig.call_method1("get_config_var", ("Py_GIL_DISABLED",)))
            .and_then(|value| value.is_truthy())
            .is_ok_and(|free_threaded| !free_threaded)
    })
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
    /// The chunk, copied unless it is `bytes` (immutable): for a caller that runs Python
    /// code before it is done with the chunk (the next step of an iterator), which could
    /// change a borrowed buffer's bytes, or need to resize it.
    pub(super) fn detached(self) -> Self {
        match self {
            Chunk::Borrowed(buffer) => Chunk::Copied(Chunk::Borrowed(buffer).as_slice().to_vec()),
            other => other,
        }
    }

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
    let buffer = match PyBuffer::<u8>::get(data) {
        // A released memoryview (one kept past its on_recv, say): ValueError, as from
        // socket.send, not the TypeError below.
        Err(err) if err.is_instance_of::<PyValueError>(data.py()) => return Err(err),
        Err(_) => {
            // Any other buffer (array.array('i'), a memoryview of floats...) is sent as
            // its raw bytes, as socket.send does: seen through a byte-format memoryview.
            PyMemoryView::from(data)
                .and_then(|view| view.call_method1(intern!(data.py(), "cast"), ("B",)))
                .and_then(|as_bytes| PyBuffer::<u8>::get(&as_bytes))
        }
        ok => ok,
    };
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

//! `hamanet.framing`'s framers: `Delimiter`, `LengthPrefixed` and `FixedSize`, Python
//! objects over a checked [`Framer`]. Their arguments are checked here (the kind of value)
//! and in [`Framer::new`] (the value); `framing.py` only re-exports them.

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple};

use super::convert::{repr, Given};
use crate::framing::{Framer, FramerSpec, DEFAULT_MAX_LINE, DEFAULT_MAX_MESSAGE, MAX_MESSAGE};

/// Base of the framers; use one of the subclasses.
#[pyclass(module = "hamanet.framing", name = "Framing", subclass, frozen)]
pub struct PyFraming {
    framer: Arc<Framer>,
}

impl PyFraming {
    /// The checked framer.
    pub(super) fn framer(&self) -> &Arc<Framer> {
        &self.framer
    }

    fn checked(spec: FramerSpec) -> PyResult<PyFraming> {
        let framer = Framer::new(spec).map_err(PyValueError::new_err)?;
        Ok(PyFraming {
            framer: Arc::new(framer),
        })
    }
}

#[pymethods]
impl PyFraming {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Err(PyTypeError::new_err(
            "Framing is the base of the framers: use hamanet.framing.Delimiter, \
             LengthPrefixed or FixedSize",
        ))
    }
}

/// Messages end with `delimiter` (`b"\r\n"` by default), which is dropped unless
/// `keep_delimiter`. `max_length` bounds a message (delimiter excluded).
#[pyclass(extends = PyFraming, module = "hamanet.framing", name = "Delimiter", frozen)]
pub struct PyDelimiter;

#[pymethods]
impl PyDelimiter {
    #[new]
    #[pyo3(
        signature = (delimiter=Given::ABSENT, *, max_length=Given::ABSENT, keep_delimiter=Given::ABSENT),
        text_signature = "(delimiter=b'\\r\\n', *, max_length=65536, keep_delimiter=False)"
    )]
    fn new(
        delimiter: Given<'_>,
        max_length: Given<'_>,
        keep_delimiter: Given<'_>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let delimiter = match &delimiter.0 {
            None => b"\r\n".to_vec(),
            Some(value) => delimiter_bytes(value)?,
        };
        let spec = FramerSpec::Delimiter {
            delimiter,
            max_length: length(max_length.0.as_ref(), "max_length", DEFAULT_MAX_LINE)?,
            keep: flag(keep_delimiter.0.as_ref(), "keep_delimiter")?,
        };
        Ok(PyClassInitializer::from(PyFraming::checked(spec)?).add_subclass(PyDelimiter))
    }

    /// The bytes that end every message.
    #[getter]
    fn delimiter<'py>(slf: PyRef<'py, Self>) -> Bound<'py, PyBytes> {
        let FramerSpec::Delimiter { delimiter, .. } = spec(&slf) else {
            unreachable!("a Delimiter holds a delimiter framer")
        };
        PyBytes::new(slf.py(), delimiter)
    }

    /// The longest message, delimiter excluded.
    #[getter]
    fn max_length(slf: PyRef<'_, Self>) -> usize {
        max_length_of(spec(&slf))
    }

    /// Whether messages keep their delimiter.
    #[getter]
    fn keep_delimiter(slf: PyRef<'_, Self>) -> bool {
        matches!(spec(&slf), FramerSpec::Delimiter { keep: true, .. })
    }

    fn __repr__(slf: PyRef<'_, Self>) -> String {
        let FramerSpec::Delimiter {
            delimiter,
            max_length,
            keep,
        } = spec(&slf)
        else {
            unreachable!("a Delimiter holds a delimiter framer")
        };
        let delimiter = repr(PyBytes::new(slf.py(), delimiter).as_any());
        let keep = if *keep { ", keep_delimiter=True" } else { "" };
        format!("Delimiter({delimiter}, max_length={max_length}{keep})")
    }
}

/// Each message starts with its length as an unsigned `header_size`-byte integer (1, 2, 4
/// or 8; `byteorder` "big" or "little"), counting the header itself when
/// `includes_header`. `max_length` bounds the payload: 16 MiB by default, and no more than
/// the header can carry (255 bytes for a 1-byte header, 65535 for 2 bytes, less the header
/// itself with `includes_header`).
#[pyclass(extends = PyFraming, module = "hamanet.framing", name = "LengthPrefixed", frozen)]
pub struct PyLengthPrefixed;

#[pymethods]
impl PyLengthPrefixed {
    #[new]
    #[pyo3(
        signature = (
            header_size=Given::ABSENT, *, byteorder=Given::ABSENT, includes_header=Given::ABSENT,
            max_length=None,
        ),
        text_signature = "(header_size=4, *, byteorder='big', includes_header=False, max_length=None)"
    )]
    fn new(
        header_size: Given<'_>,
        byteorder: Given<'_>,
        includes_header: Given<'_>,
        max_length: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let header_size = header_size.0.as_ref();
        let header = match header_size {
            None => 4,
            Some(value) if value.is_instance_of::<PyBool>() || value.extract::<i64>().is_err() => {
                return Err(PyTypeError::new_err(format!(
                    "header_size must be an int (1, 2, 4 or 8), not {}",
                    repr(value)
                )))
            }
            Some(value) => usize::try_from(value.extract::<i64>()?).unwrap_or(0),
        };
        if ![1, 2, 4, 8].contains(&header) {
            let given = header_size.map_or_else(|| "4".to_owned(), repr);
            return Err(PyValueError::new_err(format!(
                "header_size must be 1, 2, 4 or 8, got {given}"
            )));
        }
        let big_endian = match &byteorder.0 {
            None => true,
            Some(value) => match value.cast::<PyString>().map(|s| s.to_string()) {
                Ok(order) if order == "big" => true,
                Ok(order) if order == "little" => false,
                Ok(_) => {
                    return Err(PyValueError::new_err(format!(
                        "byteorder must be 'big' or 'little', got {}",
                        repr(value)
                    )))
                }
                Err(_) => {
                    return Err(PyTypeError::new_err(format!(
                        "byteorder must be 'big' or 'little', not {}",
                        repr(value)
                    )))
                }
            },
        };
        let includes_header = flag(includes_header.0.as_ref(), "includes_header")?;
        let max_length = match max_length {
            // The header's own range bounds what arrives; write_frame says so by name.
            None => DEFAULT_MAX_MESSAGE,
            Some(value) => {
                let largest = header_capacity(header, includes_header);
                let max_length = length(Some(value), "max_length", DEFAULT_MAX_MESSAGE)?;
                if max_length > largest {
                    let counted = if includes_header {
                        " less the header it counts"
                    } else {
                        ""
                    };
                    return Err(PyValueError::new_err(format!(
                        "max_length must be at most {largest}, got {max_length}: a \
                         {header}-byte length header cannot announce more than {} \
                         bytes{counted}; use a larger header_size",
                        header_capacity(header, false)
                    )));
                }
                max_length
            }
        };
        let spec = FramerSpec::LengthPrefixed {
            header,
            big_endian,
            includes_header,
            max_length,
        };
        Ok(PyClassInitializer::from(PyFraming::checked(spec)?).add_subclass(PyLengthPrefixed))
    }

    /// The size of the length header in bytes.
    #[getter]
    fn header_size(slf: PyRef<'_, Self>) -> usize {
        match spec(&slf) {
            FramerSpec::LengthPrefixed { header, .. } => *header,
            _ => unreachable!("a LengthPrefixed holds a length-prefixed framer"),
        }
    }

    /// "big" or "little".
    #[getter]
    fn byteorder(slf: PyRef<'_, Self>) -> &'static str {
        match spec(&slf) {
            FramerSpec::LengthPrefixed {
                big_endian: false, ..
            } => "little",
            _ => "big",
        }
    }

    /// Whether the length counts the header itself.
    #[getter]
    fn includes_header(slf: PyRef<'_, Self>) -> bool {
        matches!(
            spec(&slf),
            FramerSpec::LengthPrefixed {
                includes_header: true,
                ..
            }
        )
    }

    /// The longest payload, header excluded.
    #[getter]
    fn max_length(slf: PyRef<'_, Self>) -> usize {
        max_length_of(spec(&slf))
    }

    fn __repr__(slf: PyRef<'_, Self>) -> String {
        let FramerSpec::LengthPrefixed {
            header,
            big_endian,
            includes_header,
            max_length,
        } = spec(&slf)
        else {
            unreachable!("a LengthPrefixed holds a length-prefixed framer")
        };
        let order = if *big_endian { "big" } else { "little" };
        let includes = if *includes_header { "True" } else { "False" };
        format!(
            "LengthPrefixed({header}, byteorder='{order}', includes_header={includes}, \
             max_length={max_length})"
        )
    }
}

/// Every message is exactly `size` bytes.
#[pyclass(extends = PyFraming, module = "hamanet.framing", name = "FixedSize", frozen)]
pub struct PyFixedSize;

#[pymethods]
impl PyFixedSize {
    #[new]
    fn new(size: &Bound<'_, PyAny>) -> PyResult<PyClassInitializer<Self>> {
        let spec = FramerSpec::Fixed {
            size: length(Some(size), "size", 0)?,
        };
        Ok(PyClassInitializer::from(PyFraming::checked(spec)?).add_subclass(PyFixedSize))
    }

    /// The size of every message.
    #[getter]
    fn size(slf: PyRef<'_, Self>) -> usize {
        match spec(&slf) {
            FramerSpec::Fixed { size } => *size,
            _ => unreachable!("a FixedSize holds a fixed-size framer"),
        }
    }

    fn __repr__(slf: PyRef<'_, Self>) -> String {
        format!("FixedSize({})", Self::size(slf))
    }
}

fn spec<'a, T: pyo3::PyClass<BaseType = PyFraming>>(slf: &'a PyRef<'_, T>) -> &'a FramerSpec {
    slf.as_super().framer.spec()
}

fn max_length_of(spec: &FramerSpec) -> usize {
    match spec {
        FramerSpec::Delimiter { max_length, .. }
        | FramerSpec::LengthPrefixed { max_length, .. } => *max_length,
        FramerSpec::Fixed { size } => *size,
    }
}

/// The largest length a `header`-byte header can announce, less the header itself when
/// it counts it.
fn header_capacity(header: usize, includes_header: bool) -> usize {
    let largest = if header >= 8 {
        usize::MAX
    } else {
        (1usize << (8 * header)) - 1
    };
    largest - if includes_header { header } else { 0 }
}

/// A delimiter: `bytes`, `bytearray` or `memoryview` (its bytes are copied).
fn delimiter_bytes(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(text) = value.cast::<PyString>() {
        let encoded = repr(PyBytes::new(value.py(), text.to_str()?.as_bytes()).as_any());
        return Err(PyTypeError::new_err(format!(
            "delimiter must be bytes, not str: write {encoded}, not {}",
            repr(value)
        )));
    }
    let bytes_like = value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>()
        || value.is_instance_of::<PyMemoryView>();
    if !bytes_like {
        return Err(PyTypeError::new_err(format!(
            "delimiter must be bytes, not '{}'",
            value.get_type().name()?
        )));
    }
    let bytes = value.py().get_type::<PyBytes>().call1((value,))?;
    Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
}

/// A length: a positive int (any object with `__index__`, not a `bool`), `default` if not
/// given. Its bounds are checked by [`Framer::new`].
fn length(value: Option<&Bound<'_, PyAny>>, name: &str, default: usize) -> PyResult<usize> {
    let Some(value) = value else {
        return Ok(default);
    };
    if value.is_instance_of::<PyBool>() || !value.hasattr("__index__")? {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not '{}' ({})",
            value.get_type().name()?,
            repr(value)
        )));
    }
    let index = value
        .py()
        .import("operator")?
        .call_method1("index", (value,))?;
    match index.extract::<i128>() {
        Ok(n) if n < 1 => Err(PyValueError::new_err(format!(
            "{name} must be a positive int, got {}",
            repr(&index)
        ))),
        // Past any usize: past the 1 TiB bound too, which `Framer::new` reports.
        Ok(n) => Ok(usize::try_from(n).unwrap_or(MAX_MESSAGE + 1)),
        Err(_) if index.lt(0)? => Err(PyValueError::new_err(format!(
            "{name} must be a positive int, got {}",
            repr(&index)
        ))),
        Err(_) => Ok(MAX_MESSAGE + 1),
    }
}

/// True or False (and nothing else), `false` if not given.
fn flag(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<bool> {
    match value {
        None => Ok(false),
        Some(value) => value
            .cast::<PyBool>()
            .map(|flag| flag.is_true())
            .map_err(|_| {
                PyTypeError::new_err(format!("{name} must be True or False, not {}", repr(value)))
            }),
    }
}

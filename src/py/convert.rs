//! Python values to Rust ones and back: ints, durations, hosts, paths, addresses. Every
//! argument the Python API takes is checked here, once: the error is a `TypeError` for
//! the wrong kind of value and a `ValueError` for a wrong value, and it names the
//! argument and what was given. `hamanet`'s Python classes forward their arguments as
//! they got them.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use crate::sys::address::Address;

/// The largest size the kernel takes as a C `int` (socket buffers, the listen backlog).
pub(super) const C_INT_MAX: usize = i32::MAX as usize;
/// The largest size a Python `int` index may be (`sys.maxsize`).
pub(super) const MAX_SIZE: usize = isize::MAX as usize;

/// The type name `value` shows in an error, quoted as Python's `repr` quotes it.
pub(super) fn type_name(value: &Bound<'_, PyAny>) -> String {
    let name = value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string());
    format!("'{name}'")
}

/// `repr(value)`, for an error message.
pub(super) fn repr(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map_or_else(|_| "<unprintable>".to_owned(), |repr| repr.to_string())
}

/// An argument exactly as given, None included (`Option<&Bound>` would read an explicit
/// None as left out); [`Given::ABSENT`] is the signature default for "left out".
pub(super) struct Given<'py>(pub(super) Option<Bound<'py, PyAny>>);

impl Given<'_> {
    /// The argument was left out.
    pub(super) const ABSENT: Given<'static> = Given(None);
}

impl<'a, 'py> FromPyObject<'a, 'py> for Given<'py> {
    type Error = PyErr;

    fn extract(value: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Given(Some(value.to_owned())))
    }
}

/// Whether `value` is an `int` and not a `bool` (which Python counts as one).
fn is_int(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>()
}

/// An `int` in `range` (a `bool` is not one).
pub(super) fn size(
    value: &Bound<'_, PyAny>,
    name: &str,
    range: RangeInclusive<usize>,
) -> PyResult<usize> {
    if !is_int(value) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            type_name(value)
        )));
    }
    in_range(value, name, range)
}

/// None, or an `int` in `range`.
pub(super) fn optional_size(
    value: &Bound<'_, PyAny>,
    name: &str,
    range: RangeInclusive<usize>,
) -> PyResult<Option<usize>> {
    if value.is_none() {
        return Ok(None);
    }
    if !is_int(value) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int or None, not {}",
            type_name(value)
        )));
    }
    in_range(value, name, range).map(Some)
}

fn in_range(value: &Bound<'_, PyAny>, name: &str, range: RangeInclusive<usize>) -> PyResult<usize> {
    match value.extract::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        // Negative, or beyond any usize: out of range either way.
        _ => Err(PyValueError::new_err(format!(
            "{name} must be between {} and {}, got {}",
            range.start(),
            range.end(),
            repr(value)
        ))),
    }
}

/// A file descriptor: an int, or what an object's `fileno()` returns (a socket, a file).
/// `what` is the argument's name and `takes` what the call accepts, for the `TypeError`.
pub(super) fn descriptor(value: &Bound<'_, PyAny>, what: &str, takes: &str) -> PyResult<i32> {
    let number = if is_int(value) {
        value.clone()
    } else if value.hasattr("fileno")? {
        value.call_method0("fileno")?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be {takes}, not {}",
            type_name(value)
        )));
    };
    if !is_int(&number) {
        return Err(PyTypeError::new_err(format!(
            "{what}.fileno() must return an int, not {}",
            type_name(&number)
        )));
    }
    Ok(in_range(&number, what, 0..=C_INT_MAX)? as i32)
}

/// A port number; 0 asks the kernel for a free one.
pub(super) fn port(value: &Bound<'_, PyAny>) -> PyResult<u16> {
    if !is_int(value) {
        return Err(PyTypeError::new_err(format!(
            "port must be an int, not {}",
            type_name(value)
        )));
    }
    value.extract::<u16>().map_err(|_| {
        PyValueError::new_err(format!(
            "port must be between 0 and 65535 (0 picks a free port), got {}",
            repr(value)
        ))
    })
}

/// A host: an IP address or a name to resolve.
pub(super) fn host(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(host) = value.cast::<PyString>() else {
        return Err(PyTypeError::new_err(format!(
            "host must be a str such as '127.0.0.1', not {}",
            type_name(value)
        )));
    };
    let host = host.to_str()?;
    if host.is_empty() {
        return Err(PyValueError::new_err(
            "host must not be empty; use '127.0.0.1' for loopback or '0.0.0.0' to listen on \
             every interface",
        ));
    }
    if host.contains('\0') {
        return Err(PyValueError::new_err(format!(
            "host must not contain a NUL character, got {}",
            repr(value)
        )));
    }
    Ok(host.to_owned())
}

/// A Unix socket's path: a `str` or `os.PathLike`, not empty, without NUL.
pub(super) fn unix_path(value: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    let path = value.py().import("os")?.call_method1("fspath", (value,))?;
    let text = match path.cast::<PyString>() {
        Ok(text) => text.to_str()?.to_owned(),
        Err(_) => String::new(), // bytes paths are refused below, as an empty one is
    };
    if text.is_empty() {
        return Err(PyValueError::new_err(format!(
            "path must be a non-empty filesystem path, got {}",
            repr(&path)
        )));
    }
    if text.contains('\0') {
        return Err(PyValueError::new_err(format!(
            "path must not contain a NUL character (abstract Unix socket names are not \
             supported), got {}",
            repr(&path)
        )));
    }
    Ok(PathBuf::from(text))
}

/// A number of seconds: an `int` or a `float` (not a `bool`).
fn number(value: &Bound<'_, PyAny>, name: &str, or_none: &str) -> PyResult<f64> {
    if !(is_int(value) || value.is_instance_of::<PyFloat>()) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a number of seconds{or_none}, not {}",
            type_name(value)
        )));
    }
    // An int too large for a float is past any deadline: infinite, refused below.
    Ok(value.extract::<f64>().unwrap_or(f64::INFINITY))
}

/// A number of seconds >= 0.
pub(super) fn seconds(value: &Bound<'_, PyAny>, name: &str) -> PyResult<Duration> {
    let seconds = number(value, name, "")?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {}",
            repr(value)
        )));
    }
    Ok(capped_duration(seconds))
}

/// A number of seconds > 0 (a zero timeout would give up at once).
pub(super) fn timeout(value: &Bound<'_, PyAny>, name: &str) -> PyResult<Duration> {
    let seconds = number(value, name, "")?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds > 0, got {}",
            repr(value)
        )));
    }
    Ok(capped_duration(seconds))
}

/// None (no timeout), or a number of seconds > 0.
pub(super) fn optional_timeout(value: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<Duration>> {
    if value.is_none() {
        return Ok(None);
    }
    let seconds = number(value, name, " or None")?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds > 0 (or None for no timeout), got {}",
            repr(value)
        )));
    }
    Ok(Some(capped_duration(seconds)))
}

/// A moment on the `time.monotonic()` clock: a finite `int` or `float`.
pub(super) fn moment(value: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    if !(is_int(value) || value.is_instance_of::<PyFloat>()) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a time.monotonic() value, not {}",
            repr(value)
        )));
    }
    match value.extract::<f64>() {
        Ok(moment) if moment.is_finite() => Ok(moment),
        _ => Err(PyValueError::new_err(format!(
            "{name} must be a finite time, got {}",
            repr(value)
        ))),
    }
}

/// `value` seconds, at most about 31 years: far enough to mean "never", near enough that
/// adding it to `Instant::now()` cannot overflow.
pub(super) fn capped_duration(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.0, 1e9))
}

/// An address as the `socket` module shows it: `(host, port)` for IPv4,
/// `(host, port, flowinfo, scope_id)` for IPv6, the path (a str) for a Unix socket.
pub(super) fn address_object<'py>(py: Python<'py>, addr: &Address) -> PyResult<Bound<'py, PyAny>> {
    Ok(match addr {
        Address::Inet(SocketAddr::V4(v4)) => (v4.ip().to_string(), v4.port())
            .into_pyobject(py)?
            .into_any(),
        Address::Inet(SocketAddr::V6(v6)) => {
            (v6.ip().to_string(), v6.port(), v6.flowinfo(), v6.scope_id())
                .into_pyobject(py)?
                .into_any()
        }
        Address::Unix(path) => path.to_string_lossy().into_pyobject(py)?.into_any(),
    })
}

//! Python values to Rust ones and back: sizes, durations, framing specs, addresses. Each
//! conversion checks its value and names it in the error.

use std::net::SocketAddr;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::framing::Framer;
use crate::sys::address::Address;

pub(super) fn positive(value: Option<usize>, name: &str) -> PyResult<Option<usize>> {
    if value == Some(0) {
        return Err(PyValueError::new_err(format!(
            "{name} must be at least 1, or None"
        )));
    }
    Ok(value)
}

/// A framer from the spec tuple that `hamanet.framing`'s classes make:
/// `("delimiter", bytes, max_length, keep)`, `("length", header_size, big_endian,
/// includes_header, max_length)` or `("fixed", size)`.
pub(super) fn framer_from_spec(spec: &Bound<'_, PyTuple>) -> PyResult<Framer> {
    let kind: String = spec.get_item(0)?.extract()?;
    let framer = match kind.as_str() {
        "delimiter" => Framer::Delimiter {
            delimiter: spec.get_item(1)?.extract()?,
            max_length: spec.get_item(2)?.extract()?,
            keep: spec.get_item(3)?.extract()?,
        },
        "length" => Framer::LengthPrefixed {
            header: spec.get_item(1)?.extract()?,
            big_endian: spec.get_item(2)?.extract()?,
            includes_header: spec.get_item(3)?.extract()?,
            max_length: spec.get_item(4)?.extract()?,
        },
        "fixed" => Framer::Fixed {
            size: spec.get_item(1)?.extract()?,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown framing {other:?}; use hamanet.framing.Delimiter, LengthPrefixed or \
                 FixedSize"
            )))
        }
    };
    framer.validate().map_err(PyValueError::new_err)?;
    Ok(framer)
}

/// A number of seconds >= 0.
pub(super) fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {value}"
        )));
    }
    Ok(capped_duration(value))
}

/// A number of seconds > 0 (a zero timeout would close everything at once).
pub(super) fn timeout_seconds(value: f64, name: &str) -> PyResult<Duration> {
    if !value.is_finite() || value <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds > 0 (or None for no timeout), got {value}"
        )));
    }
    Ok(capped_duration(value))
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

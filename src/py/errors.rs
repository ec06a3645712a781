//! The one place where Rust errors become Python exceptions.
//!
//! OS errors become `OSError` built from `(errno, strerror[, context])`, which Python turns
//! into the matching subclass (`ConnectionRefusedError`, `TimeoutError`, ...) with `errno`
//! set, so callers can test `err.errno == errno.EADDRINUSE` as with the `socket` module.

use std::io;

use pyo3::create_exception;
use pyo3::exceptions::{PyBufferError, PyConnectionError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::shared::{DatagramRefusal, Refusal};
use crate::sys::address::ResolveError;
use crate::tls::TlsFailure;

create_exception!(
    hamanet,
    SessionClosedError,
    PyConnectionError,
    "The session is closed (or its write side is shut down) and cannot take this call."
);
create_exception!(
    hamanet,
    WriteBufferFullError,
    PyBufferError,
    "A write would take the session's buffer past its hard cap (max_write_buffer); nothing \
     of it was buffered."
);
create_exception!(
    hamanet,
    FramingError,
    PyValueError,
    "A session's byte stream broke its framing (a message over max_length, a bad length \
     header), or a payload cannot be sent as one message; the session is closed."
);
create_exception!(
    hamanet,
    DatagramQueueFullError,
    PyBufferError,
    "A datagram endpoint's send queue is full (max_send_queue datagrams or \
     max_send_queue_bytes bytes): the kernel is not taking datagrams as fast as they are \
     sent. The datagram was not queued."
);
create_exception!(
    hamanet,
    DatagramTruncatedError,
    PyOSError,
    "A datagram arrived longer than the endpoint's max_datagram_size and the kernel kept \
     only its first max_datagram_size bytes (`data`); `size` is how long it was, `addr` who \
     sent it. Passed to on_datagram_error, never delivered as if whole."
);
create_exception!(
    hamanet,
    EndpointClosedError,
    PyConnectionError,
    "The datagram endpoint is closed (close() or abort() was called, or its server or \
     client stopped) and cannot send."
);
create_exception!(
    hamanet,
    LifecycleError,
    PyRuntimeError,
    "A Server or Client method was called in a state that does not allow it, such as \
     start() twice or use after stop()."
);

create_exception!(
    hamanet,
    TLSError,
    PyOSError,
    "A TLS handshake or session failed: an untrusted, expired or wrong-host certificate, \
     nothing in common with the peer, a peer that does not speak TLS, a stream truncated \
     without close_notify; or a TLS context could not be made from its files. `reason` \
     names the kind (UNKNOWN_CA, CERT_EXPIRED, HOSTNAME_MISMATCH, NOT_TLS, TRUNCATED, ...)."
);

impl TLSError {
    /// A `TLSError` with its `reason` attribute set.
    pub fn with_reason(reason: &str, message: String) -> PyErr {
        Python::attach(|py| {
            let err = TLSError::new_err(message);
            // Setting an attribute on a fresh OSError instance cannot fail.
            let _ = err.value(py).setattr("reason", reason);
            err
        })
    }
}

/// An `OSError` (of the errno's own subclass) for `err`; `context` names what was being
/// done (an address, usually) and is shown after the message. A TLS failure becomes a
/// `TLSError`.
pub fn os_error(err: &io::Error, context: Option<&str>) -> PyErr {
    if let Some(failure) = err.get_ref().and_then(|e| e.downcast_ref::<TlsFailure>()) {
        return TLSError::with_reason(failure.reason, with_context(&failure.message, context));
    }
    let code = err.raw_os_error().or_else(|| errno_for_kind(err.kind()));
    match (code, context) {
        (Some(code), Some(context)) => {
            PyOSError::new_err((code, strerror(err, code), context.to_owned()))
        }
        (Some(code), None) => PyOSError::new_err((code, strerror(err, code))),
        (None, _) if err.kind() == io::ErrorKind::InvalidInput => {
            PyValueError::new_err(with_context(&err.to_string(), context))
        }
        (None, _) => PyOSError::new_err(with_context(&err.to_string(), context)),
    }
}

/// `socket.gaierror` for a name that did not resolve, as the `socket` module raises it:
/// `(code, "message: 'host'")`.
pub fn resolve_error(py: Python<'_>, err: ResolveError, host: &str) -> PyErr {
    match err {
        ResolveError::Lookup { code, message } => {
            let gaierror = py
                .import("socket")
                .and_then(|socket| socket.getattr("gaierror"));
            match gaierror {
                Ok(gaierror) => PyErr::from_type(
                    gaierror
                        .cast_into()
                        .unwrap_or_else(|_| py.get_type::<PyOSError>()),
                    (code, format!("{message}: {host:?}")),
                ),
                Err(err) => err,
            }
        }
        ResolveError::Io(err) => os_error(&err, Some(host)),
    }
}

/// The exception instance handed to `on_close` for a session that ended with `err`.
pub fn close_reason(py: Python<'_>, err: &io::Error) -> Py<PyAny> {
    os_error(err, None).into_value(py).into_any()
}

/// `SessionClosedError` for a refused request on session `id`.
pub fn refused(refusal: Refusal, what: &str, id: u64) -> PyErr {
    let message = match refusal {
        Refusal::Closed => format!(
            "cannot {what}: session {id} is closed (close() or abort() was called, or the \
             connection ended); check session.closing before writing"
        ),
        Refusal::WriteShut => format!(
            "cannot {what}: session {id}'s write side was shut down with shutdown_write(); \
             it can still receive but no longer send"
        ),
        Refusal::Full {
            buffered,
            size,
            max,
        } => {
            return WriteBufferFullError::new_err(format!(
                "cannot {what} {size} bytes: session {id} already buffers {buffered} bytes \
                 and its max_write_buffer is {max}; nothing was written. Wait for \
                 on_resume_writing (the peer is not reading fast enough) or raise the cap \
                 with set_write_buffer_limits(max=...)"
            ))
        }
    };
    SessionClosedError::new_err(message)
}

/// The exception for a datagram endpoint `id` refusing `what` (`sendto`, `send`).
pub fn datagram_refused(refusal: DatagramRefusal, what: &str, id: u64) -> PyErr {
    match refusal {
        DatagramRefusal::Closed => EndpointClosedError::new_err(format!(
            "cannot {what}(): datagram endpoint {id} is closed (close() or abort() was \
             called, or its server or client stopped); check endpoint.closing first"
        )),
        DatagramRefusal::Full {
            queued,
            queued_bytes,
            size,
            limits,
        } => {
            let full = if queued >= limits.max_queue {
                format!("holds {queued} datagrams already, its max_send_queue",)
            } else {
                format!(
                    "holds {queued_bytes} bytes already and this datagram of {size} would \
                     pass its max_send_queue_bytes of {}",
                    limits.max_queue_bytes
                )
            };
            DatagramQueueFullError::new_err(format!(
                "cannot {what}(): the send queue of datagram endpoint {id} {full}; the \
                 datagram was not queued. The kernel is taking datagrams slower than they \
                 are sent: send less at a time (the queue goes out at the end of each \
                 wakeup), drop or retry later, or open the endpoint with a larger \
                 max_send_queue / max_send_queue_bytes"
            ))
        }
        DatagramRefusal::TooLarge { size, max } => PyOSError::new_err((
            libc::EMSGSIZE,
            format!(
                "cannot {what}() a datagram of {size} bytes: a UDP datagram to that address \
                 carries at most {max} bytes; split it (or use a stream)"
            ),
        )),
        DatagramRefusal::NoDestination => PyValueError::new_err(format!(
            "cannot {what}() without an address: datagram endpoint {id} is not connected; \
             use sendto(data, (host, port)), or Client.connect_udp() for an endpoint with \
             a fixed peer"
        )),
    }
}

fn strerror(err: &io::Error, code: i32) -> String {
    if err.raw_os_error().is_some() {
        nix::errno::Errno::from_raw(code).desc().to_owned()
    } else {
        err.to_string()
    }
}

fn with_context(message: &str, context: Option<&str>) -> String {
    match context {
        Some(context) => format!("{message}: {context}"),
        None => message.to_owned(),
    }
}

/// Errors made here rather than by a syscall still get the errno their kind implies, so
/// Python picks the right `OSError` subclass.
fn errno_for_kind(kind: io::ErrorKind) -> Option<i32> {
    Some(match kind {
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        io::ErrorKind::ConnectionReset => libc::ECONNRESET,
        io::ErrorKind::ConnectionAborted => libc::ECONNABORTED,
        io::ErrorKind::BrokenPipe => libc::EPIPE,
        io::ErrorKind::NotConnected => libc::ENOTCONN,
        io::ErrorKind::AddrInUse => libc::EADDRINUSE,
        io::ErrorKind::AlreadyExists => libc::EEXIST,
        _ => return None,
    })
}

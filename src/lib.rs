//! hamanet's native core: an edge-triggered epoll reactor with sessions and buffers in
//! Rust, driving Python handler objects with batched received bytes.
//!
//! The module map, from the bottom up (each layer uses only the ones above it):
//!
//! ```text
//! sys/        syscalls only: epoll + waker, sockets, what fork() leaves behind
//! buffer      the write buffer          timers    the timer wheel's heap
//! framing     streams cut into messages (private fields, checked constructors)
//! proxy       the PROXY protocol header a load balancer sends first (v1 and v2)
//! shared/     what other threads touch: a session's core and state, the command
//!             queue, counters and status
//! reactor/    the reactor: Reactor::turn is the table of contents, one file per phase
//! py/         the Python edge (the `python` feature): Loop, Session, TimerHandle, and
//!             the reactor thread that calls the handler
//! ```
//!
//! Everything above `py/` has no Python in it and is tested by `cargo test` alone; without
//! the `python` feature the crate is that core, as the fuzz targets in `fuzz/` use it. This
//! file only assembles the `hamanet._hamanet` module.

#[cfg(not(target_os = "linux"))]
compile_error!("hamanet is built on epoll and runs on Linux only");

pub mod buffer;
pub mod framing;
pub mod proxy;
#[cfg(feature = "python")]
mod py;
pub mod reactor;
pub mod shared;
pub mod sys;
pub mod timers;
pub mod tls;

#[cfg(feature = "python")]
use pyo3::prelude::*;

/// The extension module `hamanet._hamanet`.
///
/// NOTE: `gil_used = true` because hamanet has not been tested on a free-threaded
/// interpreter (3.13t and later): there it asks for the GIL rather than claim a safety that
/// no test has shown. Its shared state is behind Rust locks, so lifting this should take
/// a test run on such a build, not a redesign.
#[cfg(feature = "python")]
#[pymodule(gil_used = true)]
fn _hamanet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<py::loop_::PyLoop>()?;
    m.add_class::<py::session::PySession>()?;
    m.add_class::<py::datagram::PyDatagramEndpoint>()?;
    m.add_class::<py::timer::PyTimerHandle>()?;
    m.add_class::<py::framing::PyFraming>()?;
    m.add_class::<py::framing::PyDelimiter>()?;
    m.add_class::<py::framing::PyLengthPrefixed>()?;
    m.add_class::<py::framing::PyFixedSize>()?;
    m.add_class::<py::tls::PyTlsServerContext>()?;
    m.add_class::<py::tls::PyTlsClientContext>()?;
    m.add_class::<py::tls::PyTlsInfo>()?;
    m.add_class::<py::stream_buffer::PyStreamBuffer>()?;
    m.add_function(wrap_pyfunction!(py::options::check_framing, m)?)?;
    m.add(
        "SessionClosedError",
        py.get_type::<py::errors::SessionClosedError>(),
    )?;
    m.add(
        "LifecycleError",
        py.get_type::<py::errors::LifecycleError>(),
    )?;
    m.add("FramingError", py.get_type::<py::errors::FramingError>())?;
    m.add("TLSError", py.get_type::<py::errors::TLSError>())?;
    m.add(
        "WriteBufferFullError",
        py.get_type::<py::errors::WriteBufferFullError>(),
    )?;
    m.add(
        "DatagramQueueFullError",
        py.get_type::<py::errors::DatagramQueueFullError>(),
    )?;
    m.add(
        "DatagramTruncatedError",
        py.get_type::<py::errors::DatagramTruncatedError>(),
    )?;
    m.add(
        "EndpointClosedError",
        py.get_type::<py::errors::EndpointClosedError>(),
    )?;

    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("READ_BUDGET", reactor::READ_BUDGET)?;
    m.add("OPTIONS", py::options::defaults(py)?)?;
    m.add("UDP_OPTIONS", py::options::udp_defaults(py)?)?;
    m.add("DATAGRAM_BUDGET", reactor::DATAGRAM_BUDGET)?;
    m.add("MAX_MESSAGE", framing::MAX_MESSAGE)?;
    m.add("DEFAULT_MAX_LINE", framing::DEFAULT_MAX_LINE)?;
    m.add("DEFAULT_MAX_MESSAGE", framing::DEFAULT_MAX_MESSAGE)?;
    m.add(
        "CALLBACK_NAMES",
        pyo3::types::PyTuple::new(py, py::callbacks::CALLBACK_NAMES)?,
    )?;
    Ok(())
}

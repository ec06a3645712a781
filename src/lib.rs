//! hamanet's native core: an edge-triggered epoll reactor with sessions and buffers in
//! Rust, driving Python handler objects with batched received bytes.
//!
//! The reactor core (`epoll`, `net`, `buffer`, `session`, `reactor`, `timers`, `framing`)
//! has no Python in it and is tested by `cargo test` alone; `py_loop`, `py_dispatch`,
//! `py_session` and `errors` are the Python edge, built with the default `python` feature,
//! and this file only assembles the `hamanet._hamanet` module. Without that feature the
//! crate is the core alone, as the fuzz targets in `fuzz/` use it.

#[cfg(not(target_os = "linux"))]
compile_error!("hamanet is built on epoll and runs on Linux only");

pub mod buffer;
pub mod epoll;
#[cfg(feature = "python")]
mod errors;
pub mod fork;
pub mod framing;
pub mod net;
#[cfg(feature = "python")]
mod py_dispatch;
#[cfg(feature = "python")]
mod py_loop;
#[cfg(feature = "python")]
mod py_session;
pub mod reactor;
pub mod session;
pub mod timers;

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
    m.add_class::<py_loop::PyLoop>()?;
    m.add_class::<py_session::PySession>()?;
    m.add_class::<py_loop::PyTimerHandle>()?;
    m.add(
        "SessionClosedError",
        py.get_type::<errors::SessionClosedError>(),
    )?;
    m.add("LifecycleError", py.get_type::<errors::LifecycleError>())?;
    m.add("FramingError", py.get_type::<errors::FramingError>())?;
    m.add(
        "WriteBufferFullError",
        py.get_type::<errors::WriteBufferFullError>(),
    )?;

    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("READ_BUDGET", reactor::READ_BUDGET)?;
    m.add(
        "CALLBACK_NAMES",
        pyo3::types::PyTuple::new(py, py_dispatch::CALLBACK_NAMES)?,
    )?;
    Ok(())
}

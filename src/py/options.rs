//! A `Server`'s or `Client`'s options, and a datagram endpoint's: their names, defaults
//! and checks, in one place.
//! `hamanet`'s Python classes take them as `**options` and pass them on untouched; their
//! signatures (for `help()`) are built from [`OPTIONS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyTuple, PyType};

use super::callbacks::Callbacks;
use super::convert::{optional_size, optional_timeout, repr, size, C_INT_MAX, MAX_SIZE};
use super::errors::os_error;
use super::framing::PyFraming;
use super::inner::{LoopInner, Phase, ReactorSlot};
use super::pool::Pool;
use crate::framing::Framer;
use crate::reactor::{LoopConfig, Reactor, StopCloses};
use crate::shared::{DatagramLimits, WriteLimits};
use crate::sys::datagram::DatagramOptions;
use crate::sys::net::SocketOptions;

/// Every option, in the order `help()` lists them.
pub const OPTIONS: [&str; 13] = [
    "nodelay",
    "keepalive",
    "recv_buffer",
    "send_buffer",
    "write_high",
    "write_low",
    "max_write_buffer",
    "idle_timeout",
    "max_connections",
    "framing",
    "workers",
    "worker_backlog",
    "reactors",
];

/// The most reactor threads a loop may have.
pub const MAX_REACTORS: usize = 256;

/// The most worker threads a loop may have: far more than cores, so a pool for blocking
/// calls can be large, but not so many that a typo exhausts the process.
pub const MAX_WORKERS: usize = 1024;

/// Received bytes a session may have waiting for a busy worker before the reactor stops
/// reading it, unless `worker_backlog` says otherwise.
pub const DEFAULT_WORKER_BACKLOG: usize = 1024 * 1024;

/// The names the write-limit errors use for the watermarks and the cap.
const LIMIT_NAMES: [&str; 3] = ["write_low", "write_high", "max_write_buffer"];

/// `(name, default)` for every option, for the Python classes' signatures.
pub fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let socket = SocketOptions::default();
    let limits = WriteLimits::DEFAULT;
    let none = py.None().into_bound(py);
    let values: [Bound<'_, PyAny>; 13] = [
        socket.nodelay.into_pyobject(py)?.to_owned().into_any(),
        socket.keepalive.into_pyobject(py)?.to_owned().into_any(),
        none.clone(),
        none.clone(),
        limits.high.into_pyobject(py)?.into_any(),
        limits.low.into_pyobject(py)?.into_any(),
        limits.max.into_pyobject(py)?.into_any(),
        none.clone(),
        none.clone(),
        none,
        0usize.into_pyobject(py)?.into_any(),
        DEFAULT_WORKER_BACKLOG.into_pyobject(py)?.into_any(),
        1usize.into_pyobject(py)?.into_any(),
    ];
    let pairs = OPTIONS
        .iter()
        .zip(values)
        .map(|(name, value)| PyTuple::new(py, [PyString::new(py, name).into_any(), value]))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, pairs)
}

/// What the options configure: the reactor, and the framer if sessions are framed.
pub struct LoopOptions {
    /// The reactor's configuration.
    pub config: LoopConfig,
    /// How sessions' streams are cut into messages, if they are.
    pub framer: Option<Arc<Framer>>,
    /// Worker threads that run the handler (0: the reactor thread runs it).
    pub workers: usize,
    /// Received bytes a session may have waiting for a worker before its reading is held.
    pub worker_backlog: usize,
    /// Reactor threads, each with its own epoll and sessions.
    pub reactors: usize,
}

/// Checks `options` (as given to `owner`, "Server" or "Client"); what is not given takes
/// its default.
pub fn loop_options(owner: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<LoopOptions> {
    let get = |name: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        match options {
            Some(options) => options.get_item(name),
            None => Ok(None),
        }
    };
    if let Some(options) = options {
        for name in options.keys() {
            let name: String = name.extract()?;
            if !OPTIONS.contains(&name.as_str()) {
                if UDP_OPTIONS.contains(&name.as_str()) {
                    return Err(PyTypeError::new_err(format!(
                        "{owner}() got the option {name:?}, which belongs to datagram \
                         endpoints: pass it to open_udp() or connect_udp()"
                    )));
                }
                return Err(unknown_option(options.py(), owner, &name, &OPTIONS));
            }
        }
    }
    let mut socket = SocketOptions::default();
    if let Some(value) = get("nodelay")? {
        socket.nodelay = value.is_truthy()?;
    }
    if let Some(value) = get("keepalive")? {
        socket.keepalive = value.is_truthy()?;
    }
    let kernel_size = |name| -> PyResult<Option<usize>> {
        get(name)?.map_or(Ok(None), |value| optional_size(&value, name, 1..=C_INT_MAX))
    };
    socket.recv_buffer = kernel_size("recv_buffer")?;
    socket.send_buffer = kernel_size("send_buffer")?;

    let mut limits = WriteLimits::DEFAULT;
    if let Some(value) = get("write_high")? {
        limits.high = size(&value, "write_high", 0..=MAX_SIZE)?;
    }
    if let Some(value) = get("write_low")? {
        limits.low = size(&value, "write_low", 0..=MAX_SIZE)?;
    }
    if let Some(value) = get("max_write_buffer")? {
        limits.max = size(&value, "max_write_buffer", 1..=MAX_SIZE)?;
    }
    let limits = WriteLimits::new(limits.high, limits.low, limits.max)
        .map_err(|err| PyValueError::new_err(err.describe(LIMIT_NAMES)))?;

    let idle_timeout = match get("idle_timeout")? {
        Some(value) => optional_timeout(&value, "idle_timeout")?,
        None => None,
    };
    let max_connections = match get("max_connections")? {
        Some(value) => optional_size(&value, "max_connections", 1..=MAX_SIZE)?,
        None => None,
    };
    let framer = match get("framing")? {
        Some(value) => match check_framing(&value, "framing")? {
            Some(framing) => Some(Arc::clone(framing.cast::<PyFraming>()?.get().framer())),
            None => None,
        },
        None => None,
    };
    let workers = match get("workers")? {
        Some(value) => size(&value, "workers", 0..=MAX_WORKERS)?,
        None => 0,
    };
    let worker_backlog = match get("worker_backlog")? {
        Some(value) => size(&value, "worker_backlog", 1..=MAX_SIZE)?,
        None => DEFAULT_WORKER_BACKLOG,
    };
    let reactors = match get("reactors")? {
        Some(value) => size(&value, "reactors", 1..=MAX_REACTORS)?,
        None => 1,
    };
    Ok(LoopOptions {
        workers,
        worker_backlog,
        reactors,
        config: LoopConfig {
            options: socket,
            limits,
            idle_timeout,
            max_connections,
            open_sessions: Default::default(),
            siblings: Default::default(),
            stop_closes: Default::default(),
        },
        framer,
    })
}

/// Every option of `open_udp` and `connect_udp`, in the order `help()` lists them.
pub const UDP_OPTIONS: [&str; 8] = [
    "max_datagram_size",
    "max_send_queue",
    "max_send_queue_bytes",
    "recv_buffer",
    "send_buffer",
    "reuse_port",
    "dual_stack",
    "broadcast",
];

/// `(name, default)` for every option, for the Python methods' signatures.
pub fn udp_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let limits = DatagramLimits::DEFAULT;
    let none = py.None().into_bound(py);
    let no = false.into_pyobject(py)?.to_owned().into_any();
    let values: [Bound<'_, PyAny>; 8] = [
        limits.max_datagram_size.into_pyobject(py)?.into_any(),
        limits.max_queue.into_pyobject(py)?.into_any(),
        limits.max_queue_bytes.into_pyobject(py)?.into_any(),
        none.clone(),
        none,
        no.clone(),
        no.clone(),
        no,
    ];
    let pairs = UDP_OPTIONS
        .iter()
        .zip(values)
        .map(|(name, value)| PyTuple::new(py, [PyString::new(py, name).into_any(), value]))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, pairs)
}

/// What an endpoint's options configure.
pub(super) struct EndpointOptions {
    pub(super) limits: DatagramLimits,
    pub(super) socket: DatagramOptions,
}

/// Checks `options` (as given to `method`); what is not given takes its default.
pub(super) fn endpoint_options(
    method: &str,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<EndpointOptions> {
    let get = |name: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        options.map_or(Ok(None), |options| options.get_item(name))
    };
    if let Some(options) = options {
        for name in options.keys() {
            let name: String = name.extract()?;
            if !UDP_OPTIONS.contains(&name.as_str()) {
                return Err(unknown_option(options.py(), method, &name, &UDP_OPTIONS));
            }
        }
    }
    let mut limits = DatagramLimits::DEFAULT;
    if let Some(value) = get("max_datagram_size")? {
        limits.max_datagram_size = size(&value, "max_datagram_size", 1..=65_535)?;
    }
    if let Some(value) = get("max_send_queue")? {
        limits.max_queue = size(&value, "max_send_queue", 1..=MAX_SIZE)?;
    }
    if let Some(value) = get("max_send_queue_bytes")? {
        limits.max_queue_bytes = size(&value, "max_send_queue_bytes", 1..=MAX_SIZE)?;
    }
    let kernel_size = |name| -> PyResult<Option<usize>> {
        get(name)?.map_or(Ok(None), |value| optional_size(&value, name, 1..=C_INT_MAX))
    };
    let flag = |name| -> PyResult<bool> { get(name)?.map_or(Ok(false), |v| v.is_truthy()) };
    let socket = DatagramOptions {
        recv_buffer: kernel_size("recv_buffer")?,
        send_buffer: kernel_size("send_buffer")?,
        reuse_port: flag("reuse_port")?,
        dual_stack: flag("dual_stack")?,
        broadcast: flag("broadcast")?,
    };
    Ok(EndpointOptions { limits, socket })
}

/// A `TypeError` for an option `name` that `owner` does not have among `known`, naming
/// the closest one.
pub(super) fn unknown_option(py: Python<'_>, owner: &str, name: &str, known: &[&str]) -> PyErr {
    let close = py
        .import("difflib")
        .and_then(|difflib| difflib.call_method1("get_close_matches", (name, known, 1)))
        .and_then(|matches| matches.get_item(0))
        .and_then(|best| best.extract::<String>());
    let quoted = |text: &str| repr(PyString::new(py, text).as_any());
    let hint = close.map_or_else(
        |_| String::new(),
        |best| format!("; did you mean {}?", quoted(&best)),
    );
    PyTypeError::new_err(format!(
        "{owner}() got an unknown option {}{hint} (options: {})",
        quoted(name),
        known.join(", ")
    ))
}

/// `framing` if it is a framer (`hamanet.framing.Delimiter`, ...) or None; else a
/// `TypeError` that says what to pass (the framer's class itself, say, instead of an
/// instance). `name` is the argument's name in the message.
#[pyfunction]
#[pyo3(signature = (framing, name="framing"))]
pub fn check_framing<'py>(
    framing: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if framing.is_none() {
        return Ok(None);
    }
    if framing.is_instance_of::<PyFraming>() {
        return Ok(Some(framing.clone()));
    }
    let base = framing.py().get_type::<PyFraming>();
    if let Ok(class) = framing.cast::<PyType>() {
        if class.is_subclass(&base)? {
            let class_name = class.name()?.to_string();
            let example = match class_name.as_str() {
                "Delimiter" => "Delimiter(b'\\n')".to_owned(),
                "FixedSize" => "FixedSize(16)".to_owned(),
                other => format!("{other}()"),
            };
            return Err(PyTypeError::new_err(format!(
                "{name} must be a framer instance, not the class {class_name} itself: \
                 instantiate it, e.g. {name}={example}"
            )));
        }
    }
    let text = framing
        .cast::<PyString>()
        .map(|s| s.to_string().into_bytes());
    let bytes = framing
        .cast::<PyBytes>()
        .map(|b| b.as_bytes().to_vec())
        .or_else(|_| framing.cast::<PyByteArray>().map(|b| b.to_vec()));
    let type_name = framing.get_type().name()?.to_string();
    if let Some(delimiter) = text.ok().or(bytes.ok()).filter(|d| !d.is_empty()) {
        let delimiter = repr(PyBytes::new(framing.py(), &delimiter).as_any());
        return Err(PyTypeError::new_err(format!(
            "{name} must be a hamanet.framing.Delimiter, LengthPrefixed or FixedSize, not \
             '{type_name}': for messages ending with {delimiter}, pass \
             {name}=hamanet.framing.Delimiter({delimiter})"
        )));
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be a hamanet.framing.Delimiter, LengthPrefixed or FixedSize, not \
         '{type_name}'"
    )))
}

/// The loop that `owner`'s ("Server" or "Client") `options` make: its reactors, one
/// configuration they share, and the worker pool if one is asked for.
pub(super) fn make_loop(owner: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<LoopInner> {
    let LoopOptions {
        mut config,
        framer,
        workers,
        worker_backlog,
        reactors,
    } = loop_options(owner, options)?;
    let pool = (workers > 0).then(|| Arc::new(Pool::new(workers, worker_backlog)));
    if pool.is_some() {
        // The pool closes each session once its handler has had its queued input.
        config.stop_closes = StopCloses::Handler;
    }
    let reactors = (0..reactors)
        .map(|_| Reactor::new(config.clone()).map(ReactorSlot::new))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| os_error(&e, None))?;
    let shared = reactors
        .iter()
        .map(|slot| Arc::clone(&slot.shared))
        .collect();
    config.siblings.set(shared);
    Ok(LoopInner {
        reactors,
        next_reactor: AtomicUsize::new(0),
        running_reactors: AtomicUsize::new(0),
        config,
        phase: Mutex::new(Phase::Created),
        callbacks: Mutex::new(Arc::new(Callbacks::none())),
        pending: Mutex::new(HashMap::new()),
        pending_endpoints: Mutex::new(HashMap::new()),
        timers: Mutex::new(HashMap::new()),
        next_timer: AtomicU64::new(1),
        framer,
        handler_errors: AtomicU64::new(0),
        failure: Mutex::new(None),
        pool,
        driven: Mutex::new(None),
    })
}

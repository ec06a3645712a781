//! How the reactor thread reports: through the `hamanet` logger, or on stderr when logging
//! itself is missing or broken, so that no handler error goes unsaid.

use std::io;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// The `hamanet` logger, looked up once when the reactor thread starts.
pub(super) struct Report<'py> {
    py: Python<'py>,
    logger: Option<Py<PyAny>>,
}

impl<'py> Report<'py> {
    /// Looks the logger up; without one, reports go to stderr.
    pub(super) fn new(py: Python<'py>) -> Report<'py> {
        let logger = py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", ("hamanet",)))
            .map(Bound::unbind)
            .inspect_err(|err| err.print(py))
            .ok();
        Report { py, logger }
    }

    /// A callback raised for session `id`, which is aborted.
    pub(super) fn error(&self, name: &str, id: u64, err: &PyErr) {
        let py = self.py;
        let message = format!("hamanet: {name} raised for session {id}; that session is aborted");
        let exc = err.clone_ref(py).into_value(py).into_any();
        self.log(intern!(py, "error"), &message, Some(exc));
    }

    /// An exception handler code raised: for a session (which the caller aborts), or not.
    pub(super) fn handler_error(
        &self,
        callback: &str,
        session: Option<u64>,
        exc: Bound<'py, PyAny>,
    ) {
        match session {
            Some(id) => self.error(callback, id, &PyErr::from_value(exc)),
            None => self.log(
                intern!(self.py, "error"),
                &format!("hamanet: {callback} raised"),
                Some(exc.unbind()),
            ),
        }
    }

    /// A warning, without a traceback.
    pub(super) fn warning(&self, message: &str) {
        self.log(intern!(self.py, "warning"), message, None);
    }

    /// The reactor itself failed.
    pub(super) fn fatal(&self, err: &io::Error) {
        let message = format!("hamanet: the reactor failed ({err}); every session is aborted");
        self.log(intern!(self.py, "error"), &message, None);
    }

    /// Logs on the `hamanet` logger, with `exc`'s traceback when given. The message is
    /// preformatted and passed without arguments, so `%` in it is harmless.
    pub(super) fn log(&self, level: &Bound<'py, PyString>, message: &str, exc: Option<Py<PyAny>>) {
        let py = self.py;
        let Some(logger) = &self.logger else {
            // No logging module: say it on stderr rather than not at all.
            eprintln!("{message}");
            if let Some(exc) = exc {
                PyErr::from_value(exc.into_bound(py)).print(py);
            }
            return;
        };
        let result = (|| -> PyResult<()> {
            let kwargs = PyDict::new(py);
            if let Some(exc) = exc {
                kwargs.set_item(intern!(py, "exc_info"), exc)?;
            }
            logger
                .bind(py)
                .call_method(level, (message,), Some(&kwargs))?;
            Ok(())
        })();
        if let Err(err) = result {
            // Logging itself failed (a broken handler on the logger): print it rather than
            // lose both errors.
            err.print(py);
        }
    }
}

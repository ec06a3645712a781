//! The reactor thread's body: it turns the reactor detached and delivers each turn's events
//! attached, once per wakeup.
//!
//! The thread attaches to the interpreter once, for its whole life, and detaches only
//! around [`Reactor::turn`] (the wait and every socket syscall). Creating a thread state
//! per wakeup would cost more than the callbacks themselves.

use std::sync::Arc;

use pyo3::exceptions::PyConnectionAbortedError;
use pyo3::prelude::*;

use super::callbacks::Callback;
use super::dispatch::Dispatcher;
use super::inner::LoopInner;
use super::report::Report;
use super::sessions::SessionTable;
use crate::reactor::{Event, Reactor};
use crate::shared::{lock, LoopShared};

/// Marks the loop finished when the reactor thread ends, however it ends (a panic
/// included), so `join()` returns and later calls are refused instead of waiting forever.
struct FinishOnExit(Arc<LoopShared>);

impl Drop for FinishOnExit {
    fn drop(&mut self) {
        drop(self.0.close_queue());
        self.0.update_status(|status| status.finished = true);
    }
}

/// The reactor thread's body.
pub(super) fn run(mut reactor: Reactor, inner: Arc<LoopInner>) {
    let finish = FinishOnExit(Arc::clone(&inner.shared));
    Python::attach(move |py| {
        // Give Python's view of this thread the same name as the OS's, so log records
        // (`%(threadName)s`) and `threading.current_thread()` say where handlers run.
        let named = py.import("threading").and_then(|threading| {
            threading
                .call_method0("current_thread")?
                .setattr("name", "hamanet-reactor")
        });
        if let Err(err) = named {
            err.print(py);
        }
        let mut table = SessionTable::default();
        let mut dispatcher = Dispatcher {
            py,
            inner: &inner,
            report: Report::new(py),
            table: &mut table,
        };
        loop {
            if let Err(err) = py.detach(|| reactor.turn()) {
                dispatcher.report.fatal(&err);
                reactor.abort_all(&err);
            }
            // Read after the wait, so a handler swapped while the reactor slept is the one
            // that gets this wakeup's events.
            let callbacks = Arc::clone(&lock(&inner.callbacks));
            reactor.set_notify_drained(callbacks[Callback::OnSend].is_some());
            let batch = reactor.take_batch();
            for event in &batch {
                dispatcher.deliver(&reactor, &callbacks, event);
                if let Event::Closed { .. } | Event::ConnectFailed { .. } = event {
                    inner.shared.session_closed();
                }
                if inner.shared.is_forked_copy() {
                    dispatcher.end_forked_child();
                }
            }
            reactor.recycle_batch(batch);
            if reactor.is_finished() {
                break;
            }
        }
        drop(table);
        // A client session whose registration the stop overtook was never opened; its
        // user still holds it and gets the one `on_close` every session gets.
        let never_opened = std::mem::take(&mut *lock(&inner.pending));
        let callbacks = Arc::clone(&lock(&inner.callbacks));
        for (session, own) in never_opened.into_values() {
            let callbacks = own.as_deref().unwrap_or(&callbacks);
            if let Some(callback) = &callbacks[Callback::OnClose] {
                let reason = PyConnectionAbortedError::new_err(
                    "the client stopped before the connection was registered",
                );
                if let Err(err) = callback.call1(py, (session, reason.into_value(py))) {
                    err.print(py);
                }
            }
        }
        // Python objects are released attached, and outside the locks (freeing them may
        // run Python code that takes those locks).
        let timers = std::mem::take(&mut *lock(&inner.timers));
        drop(timers);
        drop(callbacks);
        drop(inner);
        drop(reactor);
    });
    drop(finish);
}

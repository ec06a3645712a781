//! `Loop.stats()`: every reactor's counters summed, each reactor's own, and the pool's.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::inner::LoopInner;
use crate::shared::Stats;

/// Counters, cheap enough to read often.
pub(super) fn loop_stats<'py>(py: Python<'py>, inner: &LoopInner) -> PyResult<Bound<'py, PyDict>> {
    inner.check_not_forked("read stats()")?;
    let mut total = Stats::default();
    let (mut busy_ns, mut attached_ns) = (0u64, 0u64);
    let each = PyList::empty(py);
    for slot in &inner.reactors {
        let stats = slot.shared.stats();
        let (busy, attached) = slot.times.read();
        let status = slot.shared.status();
        let one = stats_dict(py, &stats, (status.sessions, status.endpoints))?;
        one.set_item("busy_us", busy / 1000)?;
        one.set_item("attached_us", attached / 1000)?;
        each.append(one)?;
        total += stats;
        busy_ns += busy;
        attached_ns += attached;
    }
    let status = inner.status();
    let dict = stats_dict(py, &total, (status.sessions, status.endpoints))?;
    dict.set_item("busy_us", busy_ns / 1000)?;
    dict.set_item("attached_us", attached_ns / 1000)?;
    dict.set_item(
        "handler_errors",
        inner.handler_errors.load(Ordering::Relaxed),
    )?;
    let pool = inner.pool.as_ref().map(|pool| pool.stats());
    let workers = pool.as_ref().map_or(0, |pool| pool.workers);
    dict.set_item("workers", workers)?;
    dict.set_item("worker_queued", pool.as_ref().map_or(0, |pool| pool.queued))?;
    dict.set_item("workers_busy", pool.as_ref().map_or(0, |pool| pool.busy))?;
    let longest = pool.map_or(0, |pool| pool.longest_wait.as_micros());
    dict.set_item(
        "worker_wait_max_us",
        u64::try_from(longest).unwrap_or(u64::MAX),
    )?;
    dict.set_item("reactors", each)?;
    Ok(dict)
}

/// The counters of one reactor, or of all of them summed.
fn stats_dict<'py>(
    py: Python<'py>,
    stats: &Stats,
    (sessions_open, endpoints_open): (usize, usize),
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("sessions_open", sessions_open)?;
    dict.set_item("sessions_total", stats.sessions_total)?;
    dict.set_item("accepted", stats.accepted)?;
    dict.set_item("refused_by_limit", stats.refused_by_limit)?;
    dict.set_item("bytes_in", stats.bytes_in)?;
    dict.set_item("bytes_out", stats.bytes_out)?;
    dict.set_item("writes", stats.writes)?;
    dict.set_item("sends", stats.sends)?;
    dict.set_item("writes_coalesced", stats.writes.saturating_sub(stats.sends))?;
    dict.set_item("idle_timeouts", stats.idle_timeouts)?;
    dict.set_item("accept_pauses", stats.accept_pauses)?;
    dict.set_item("timers_fired", stats.timers_fired)?;
    dict.set_item("calls_soon", stats.calls_soon)?;
    dict.set_item("tls_handshakes", stats.tls_handshakes)?;
    dict.set_item("tls_failures", stats.tls_failures)?;
    dict.set_item("proxy_refused", stats.proxy_refused)?;
    dict.set_item("endpoints_open", endpoints_open)?;
    dict.set_item("datagrams_in", stats.datagrams_in)?;
    dict.set_item("datagram_bytes_in", stats.datagram_bytes_in)?;
    dict.set_item("datagrams_out", stats.datagrams_out)?;
    dict.set_item("datagram_bytes_out", stats.datagram_bytes_out)?;
    dict.set_item("datagrams_truncated", stats.datagrams_truncated)?;
    dict.set_item("datagrams_dropped", stats.datagrams_dropped)?;
    dict.set_item("datagram_errors", stats.datagram_errors)?;
    dict.set_item("datagram_recv_calls", stats.datagram_recv_calls)?;
    dict.set_item("datagram_send_calls", stats.datagram_send_calls)?;
    Ok(dict)
}

//! The idle timeout: sweeps at a quarter of the shortest timeout in force.

use super::*;

impl Reactor {
    /// Closes every session that has seen no traffic for its idle timeout, and schedules
    /// the next look.
    pub(super) fn close_idle_sessions(&mut self) {
        let default = self.config.idle_timeout;
        let mut idle = Vec::new();
        // The shortest timeout still in force: once the sessions with short ones are gone,
        // the sweeps slow down again.
        let mut shortest = default;
        for (index, slot) in self.slots.iter().enumerate() {
            if let Slot::Session(session) = slot {
                let timeout = session.core.state().idle_timeout.resolve(default);
                if let Some(timeout) = timeout {
                    shortest = Some(shortest.map_or(timeout, |s| s.min(timeout)));
                    if self.now.saturating_duration_since(session.last_active) >= timeout {
                        idle.push((Token::new(index as u32, session.generation), timeout));
                    }
                }
            }
        }
        self.idle.shortest = shortest;
        for (token, timeout) in idle {
            self.stats.idle_timeouts += 1;
            let error = io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no traffic for {:.3}s (idle timeout)",
                    timeout.as_secs_f64()
                ),
            );
            self.release(token, CloseKind::Graceful, Some(error));
        }
        self.idle.swept(self.now);
    }
}

/// When to look for idle sessions: at a quarter of the shortest idle timeout in force
/// (the loop's or any session's), so a session is closed within 1.25 timeouts of its
/// last traffic without a timer per session.
pub(super) struct IdleSweep {
    pub(super) shortest: Option<Duration>,
    pub(super) next: Option<Instant>,
}

impl IdleSweep {
    pub(super) fn new(timeout: Option<Duration>, now: Instant) -> IdleSweep {
        IdleSweep {
            shortest: timeout,
            next: timeout.map(|t| now + Self::interval(t)),
        }
    }

    pub(super) fn interval(timeout: Duration) -> Duration {
        (timeout / 4).clamp(IDLE_SWEEP_MIN, IDLE_SWEEP_MAX)
    }

    /// A session's own timeout: sweep often enough for it too.
    pub(super) fn note(&mut self, timeout: Duration, now: Instant) {
        if self.shortest.is_none_or(|shortest| timeout < shortest) {
            self.shortest = Some(timeout);
            let next = now + Self::interval(timeout);
            if self.next.is_none_or(|at| next < at) {
                self.next = Some(next);
            }
        }
    }

    pub(super) fn swept(&mut self, now: Instant) {
        self.next = self.shortest.map(|timeout| now + Self::interval(timeout));
    }
}

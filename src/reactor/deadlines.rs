//! Deadlines: what came due this turn (accepting after a pause, connects, handshakes,
//! PROXY headers, lingering refusals, idle sessions, timers), and when the next one is.

use super::*;

impl Reactor {
    /// Whatever came due: accepting after a pause, connects, handshakes, PROXY headers
    /// and refusals past their deadlines, idle sessions, timers.
    pub(super) fn run_deadlines(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|until| self.now >= until)
        {
            self.accept_paused_until = None;
            for token in self.listener_tokens() {
                self.accept_ready(token);
            }
        }
        if !self.opening.is_empty() {
            self.expire_openings();
        }
        if self.proxy.next_deadline().is_some_and(|at| at <= self.now) {
            self.expire_proxy_headers();
        }
        if !self.refusals.is_empty() {
            self.expire_refusals();
        }
        if self.idle.next.is_some_and(|at| self.now >= at) {
            self.close_idle_sessions();
        }
        let (batch, stats) = (&mut self.batch, &mut self.stats);
        self.timers.pop_due(self.now, |id| {
            stats.timers_fired += 1;
            batch.push(Event::Timer { id });
        });
    }

    /// How long until the next deadline of any kind (None: there is none).
    pub(super) fn until_next_deadline(&mut self) -> Option<Duration> {
        let next = [
            self.stop_deadline,
            self.accept_paused_until,
            self.idle.next,
            self.timers.next_deadline(),
            self.opening.iter().map(|(deadline, _)| *deadline).min(),
            self.refusals.front().map(|(deadline, _)| *deadline),
            self.proxy.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }
}

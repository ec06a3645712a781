//! Deadlines: what came due this turn (accepting after a pause, connects, handshakes,
//! PROXY headers, lingering refusals, idle sessions, timers), and when the next one is.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;

/// Deadlines of things that mostly end before them (a connect, a handshake, a header
/// awaited), soonest first. An entry stays when its thing ends early, since finding it
/// would cost a search per end, which a flood of them would make quadratic: whoever
/// pops it checks whether it still stands. So memory is bounded by how many begin
/// within one timeout.
pub(super) struct LazyDeadlines<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K> Default for LazyDeadlines<K> {
    fn default() -> Self {
        LazyDeadlines {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> LazyDeadlines<K> {
    pub(super) fn push(&mut self, deadline: Instant, key: K) {
        self.heap.push(Reverse((deadline, key)));
    }

    /// The soonest deadline (perhaps of a thing ended since: an early look, no more).
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// Takes the soonest entry due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<K> {
        match self.heap.peek() {
            Some(Reverse((deadline, _))) if *deadline <= now => {
                self.heap.pop().map(|Reverse((_, key))| key)
            }
            _ => None,
        }
    }

    /// Takes every entry, due or not.
    pub(super) fn take_all(&mut self) -> Vec<K> {
        let heap = std::mem::take(&mut self.heap);
        heap.into_iter().map(|Reverse((_, key))| key).collect()
    }
}

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
        self.expire_openings();
        self.expire_proxy_headers();
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
            self.opening.next(),
            self.refusals.front().map(|(deadline, _)| *deadline),
            self.proxy.deadlines.next(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_soonest_first_and_the_rest_wait() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut deadlines = LazyDeadlines::default();
        for (ms, key) in [(30, 'c'), (10, 'a'), (20, 'b'), (40, 'd')] {
            deadlines.push(at(ms), key);
        }
        assert_eq!(deadlines.next(), Some(at(10)));
        let mut due = Vec::new();
        while let Some(key) = deadlines.pop_due(at(30)) {
            due.push(key);
        }
        assert_eq!(due, ['a', 'b', 'c']);
        assert_eq!(deadlines.next(), Some(at(40)));
        assert_eq!(deadlines.take_all(), ['d']);
        assert_eq!(deadlines.next(), None);
        assert_eq!(deadlines.pop_due(at(100)), None);
    }
}

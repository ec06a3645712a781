//! The reactor's timers: deadlines by id, earliest first, with cheap cancellation.
//!
//! Callbacks live with the handler layer; here a timer is only an id and an instant, so
//! the reactor reports `Timer { id }` when one is due and knows nothing of what it runs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::Instant;

/// Pending timers.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Cancelled ids still in the heap; skipped (and forgotten) when they come due.
    cancelled: HashSet<u64>,
}

impl TimerQueue {
    /// Schedules timer `id` for `when`.
    pub fn insert(&mut self, id: u64, when: Instant) {
        self.heap.push(Reverse((when, id)));
    }

    /// Cancels timer `id`. A cancelled timer stays in the heap until it comes due or
    /// until cancelled ones are half the heap, when the heap is rebuilt without them; so
    /// memory stays proportional to the live timers however many are cancelled.
    pub fn cancel(&mut self, id: u64) {
        self.cancelled.insert(id);
        if self.cancelled.len() > 64 && self.cancelled.len() * 2 > self.heap.len() {
            let cancelled = std::mem::take(&mut self.cancelled);
            self.heap.retain(|Reverse((_, id))| !cancelled.contains(id));
        }
    }

    /// When the earliest live timer is due.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((when, id))) = self.heap.peek().copied() {
            if self.cancelled.remove(&id) {
                self.heap.pop();
                continue;
            }
            return Some(when);
        }
        self.cancelled.clear();
        None
    }

    /// Removes and returns the ids due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant, mut due: impl FnMut(u64)) {
        while let Some(Reverse((when, id))) = self.heap.peek().copied() {
            if when > now {
                break;
            }
            self.heap.pop();
            if !self.cancelled.remove(&id) {
                due(id);
            }
        }
        if self.heap.is_empty() {
            self.cancelled.clear();
        }
    }

    /// Timers still pending (cancelled ones not yet discarded included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order_and_skips_cancelled() {
        let start = Instant::now();
        let mut timers = TimerQueue::default();
        timers.insert(1, start + Duration::from_millis(30));
        timers.insert(2, start + Duration::from_millis(10));
        timers.insert(3, start + Duration::from_millis(20));
        timers.cancel(3);
        assert_eq!(
            timers.next_deadline(),
            Some(start + Duration::from_millis(10))
        );
        let mut fired = Vec::new();
        timers.pop_due(start + Duration::from_millis(25), |id| fired.push(id));
        assert_eq!(fired, [2]);
        assert_eq!(
            timers.next_deadline(),
            Some(start + Duration::from_millis(30))
        );
        timers.pop_due(start + Duration::from_secs(1), |id| fired.push(id));
        assert_eq!(fired, [2, 1]);
        assert!(timers.is_empty());
    }

    #[test]
    fn cancelled_timers_do_not_accumulate() {
        let start = Instant::now();
        let mut timers = TimerQueue::default();
        timers.insert(0, start + Duration::from_secs(1));
        for id in 1..=10_000 {
            timers.insert(id, start + Duration::from_secs(3600));
            timers.cancel(id);
        }
        assert!(timers.len() < 200, "{} timers kept", timers.len());
        assert!(timers.cancelled.len() < 200);
        assert_eq!(timers.next_deadline(), Some(start + Duration::from_secs(1)));
    }
}

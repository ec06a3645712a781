//! The measured window: warmup, then `duration` of counting, with the server's CPU time
//! sampled at both edges, then a drain where nothing new is started.

use std::time::{Duration, Instant};

use crate::report::server_cpu_ticks;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Warmup,
    Measure,
    /// Nothing new is started; what is in flight must still come back.
    Drain,
}

pub struct Window {
    pub phase: Phase,
    warmup_end: Instant,
    duration: Duration,
    server_pid: Option<u32>,
    measure_start: Option<Instant>,
    measure_end: Option<Instant>,
    cpu_start: Option<u64>,
    cpu_end: Option<u64>,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration, server_pid: Option<u32>) -> Self {
        Window {
            phase: Phase::Warmup,
            warmup_end: Instant::now() + warmup,
            duration,
            server_pid,
            measure_start: None,
            measure_end: None,
            cpu_start: None,
            cpu_end: None,
        }
    }

    /// Moves to the next phase when its time has come. `ready` holds the window shut
    /// until every connection is up, so a slow start never lands inside it.
    pub fn tick(&mut self, now: Instant, ready: bool) -> Result<(), String> {
        match self.phase {
            Phase::Warmup if ready && now >= self.warmup_end => {
                self.cpu_start = server_cpu_ticks(self.server_pid)?;
                self.measure_start = Some(Instant::now());
                self.phase = Phase::Measure;
            }
            Phase::Measure if self.measure_start.is_some_and(|s| now >= s + self.duration) => {
                self.cpu_end = server_cpu_ticks(self.server_pid)?;
                self.measure_end = Some(Instant::now());
                self.phase = Phase::Drain;
            }
            _ => {}
        }
        Ok(())
    }

    pub fn measuring(&self) -> bool {
        self.phase == Phase::Measure
    }

    /// New work is started during warmup and measurement, not during the drain.
    pub fn starting(&self) -> bool {
        self.phase != Phase::Drain
    }

    /// Seconds the window lasted and the server CPU ticks spent in it.
    pub fn result(&self) -> (f64, Option<u64>) {
        let secs = match (self.measure_start, self.measure_end) {
            (Some(s), Some(e)) => (e - s).as_secs_f64(),
            _ => 0.0,
        };
        let cpu = match (self.cpu_start, self.cpu_end) {
            (Some(s), Some(e)) => Some(e.saturating_sub(s)),
            _ => None,
        };
        (secs, cpu)
    }
}

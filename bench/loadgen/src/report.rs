//! What a run measured, the server CPU samples taken at the window's edges, and the one
//! JSON line the runner parses.

use std::fmt::Write as _;
use std::time::Duration;

/// CPU time (user + system, all threads) of the server process, in clock ticks.
///
/// Sampled by the load generator itself at the exact instants the measured window opens
/// and closes, so the CPU time and the message count cover the same interval.
pub fn server_cpu_ticks(pid: Option<u32>) -> Result<Option<u64>, String> {
    let Some(pid) = pid else { return Ok(None) };
    let path = format!("/proc/{pid}/stat");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("server process gone? {path}: {e}"))?;
    // The command name (field 2) may contain spaces: fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(format!("unparsable {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    let tick = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or(format!("unparsable {path}"))
    };
    Ok(Some(tick(11)? + tick(12)?))
}

/// Latency samples in nanoseconds.
#[derive(Default)]
pub struct Latencies {
    ns: Vec<u64>,
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.ns.push(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// The p-th percentile (0..=100) in microseconds, by the nearest-rank method.
    fn percentile_us(sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }

    /// (p50, p99) in microseconds.
    pub fn summary(mut self) -> (f64, f64) {
        self.ns.sort_unstable();
        (
            Self::percentile_us(&self.ns, 50.0),
            Self::percentile_us(&self.ns, 99.0),
        )
    }
}

/// The result line: a flat JSON object of numbers and one string.
pub struct Report {
    fields: Vec<(&'static str, String)>,
}

impl Report {
    pub fn new(mode: &str) -> Self {
        Report {
            fields: vec![("mode", format!("\"{mode}\""))],
        }
    }

    pub fn int(mut self, key: &'static str, v: u64) -> Self {
        self.fields.push((key, v.to_string()));
        self
    }

    pub fn float(mut self, key: &'static str, v: f64) -> Self {
        let v = if v.is_finite() {
            format!("{v:.3}")
        } else {
            "null".to_string()
        };
        self.fields.push((key, v));
        self
    }

    /// The fields every mode reports: `messages` completed in `seconds`, their rate and
    /// latency percentiles, and the bytes checked (a run that reports had no error).
    pub fn measured(
        self,
        messages: u64,
        seconds: f64,
        latencies: Latencies,
        bytes_verified: u64,
    ) -> Self {
        let (p50, p99) = latencies.summary();
        self.int("messages", messages)
            .float("seconds", seconds)
            .float("msgs_per_s", messages as f64 / seconds)
            .float("p50_us", p50)
            .float("p99_us", p99)
            .int("errors", 0)
            .int("bytes_verified", bytes_verified)
    }

    pub fn opt_int(self, key: &'static str, v: Option<u64>) -> Self {
        match v {
            Some(v) => self.int(key, v),
            None => self,
        }
    }

    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "\"{k}\": {v}");
        }
        out.push('}');
        out
    }
}

/// Prints an event line (`{"event": ...}`) and flushes it at once, so the runner can act
/// on it (e.g. read the server's RSS) while the load generator waits.
pub fn event(name: &str, extra: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A runner that went away is noticed on the final line; nothing to do about it here.
    let _ = writeln!(out, "{{\"event\": \"{name}\"{extra}}}");
    let _ = out.flush();
}

//! The per-session limits a loop applies: write-buffer watermarks and cap, idle timeout.

use std::time::Duration;

/// A session's write-buffer limits.
///
/// Above `high` buffered bytes the handler's `on_pause_writing` is called, and once the
/// buffer has drained to `low` or below, `on_resume_writing`. `max` is the hard cap: a
/// write that would take the buffer past it is refused, so a peer that never reads
/// cannot grow the process's memory without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// The high watermark in bytes.
    pub high: usize,
    /// The low watermark in bytes.
    pub low: usize,
    /// The most bytes the buffer may hold.
    pub max: usize,
}

impl WriteLimits {
    /// asyncio's watermarks, and a cap generous enough for any single ordinary write.
    pub const DEFAULT: WriteLimits = WriteLimits {
        high: 64 * 1024,
        low: 16 * 1024,
        max: 128 * 1024 * 1024,
    };

    /// Checked limits.
    pub fn new(high: usize, low: usize, max: usize) -> Result<WriteLimits, LimitsError> {
        if low > high {
            return Err(LimitsError::LowAboveHigh { low, high });
        }
        if high > max {
            return Err(LimitsError::HighAboveMax { high, max });
        }
        if max == 0 {
            return Err(LimitsError::NoRoom);
        }
        Ok(WriteLimits { high, low, max })
    }
}

/// Why write limits were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsError {
    /// The low watermark is above the high one.
    LowAboveHigh {
        /// The low watermark.
        low: usize,
        /// The high watermark.
        high: usize,
    },
    /// The high watermark is above the hard cap.
    HighAboveMax {
        /// The high watermark.
        high: usize,
        /// The cap.
        max: usize,
    },
    /// A cap of 0 bytes would refuse every write.
    NoRoom,
}

impl LimitsError {
    /// The error in the words of the caller, whose arguments for the low and high
    /// watermarks and the cap are named `names`.
    pub fn describe(&self, [low_name, high_name, max_name]: [&str; 3]) -> String {
        match *self {
            LimitsError::LowAboveHigh { low, high } => format!(
                "{low_name} ({low}) must not exceed {high_name} ({high}): writing resumes \
                 below the low watermark after pausing above the high one"
            ),
            LimitsError::HighAboveMax { high, max } => {
                format!("{high_name} ({high}) must not exceed {max_name} ({max})")
            }
            LimitsError::NoRoom => format!("{max_name} must be at least 1 byte"),
        }
    }
}

impl Default for WriteLimits {
    fn default() -> WriteLimits {
        WriteLimits::DEFAULT
    }
}

/// A session's idle timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdleTimeout {
    /// The loop's (`idle_timeout=` of the Server or Client).
    #[default]
    Loop,
    /// None: the session never times out.
    Never,
    /// Its own.
    After(Duration),
}

impl IdleTimeout {
    /// The timeout in force, given the loop's.
    pub fn resolve(self, loop_default: Option<Duration>) -> Option<Duration> {
        match self {
            IdleTimeout::Loop => loop_default,
            IdleTimeout::Never => None,
            IdleTimeout::After(after) => Some(after),
        }
    }
}

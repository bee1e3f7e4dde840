//! Time as the pure core sees it: plain milliseconds, and human durations (`"10s"`, `"250ms"`).
//!
//! The core never reads a clock. Callers pass `now` as milliseconds on a monotonic or wall-clock
//! axis of their choice; every function here is a pure function of its arguments.

use std::fmt;
use std::time::Duration;

/// A point in time in milliseconds (the caller picks the epoch, usually the Unix epoch).
pub type Millis = u64;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// The number part was missing or not a number.
    #[error("invalid duration {0:?}: expected a number followed by ms, s, m or h (e.g. \"10s\")")]
    Invalid(String),
    /// The value does not fit in a `Duration` of milliseconds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"10m"`, `"2h"` or a bare `"0"` into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::Invalid(text.to_string()))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::Invalid(text.to_string()))?;
    let unit_ms = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(DurationError::Invalid(text.to_string())),
    };
    let ms = value * unit_ms;
    if !ms.is_finite() || ms > 1e15 {
        return Err(DurationError::TooLarge(text.to_string()));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// Formats a duration the way [`parse_duration`] reads it, choosing the largest exact unit.
pub fn format_duration(duration: Duration) -> String {
    HumanDuration(duration).to_string()
}

/// Display adapter for [`format_duration`].
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Milliseconds in a duration, saturating at `u64::MAX`.
pub fn millis(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage_with_the_text() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(parse_duration("10"), Err(DurationError::Invalid(t)) if t == "10"));
        assert!(matches!(parse_duration("ten s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse_duration("5d"), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse_duration("1e400s"),
            Err(DurationError::Invalid(_)) | Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "10s", "10m", "2h", "0s", "1500ms"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
    }
}

//! Log lines that a flood (a failing backend under load, a hostile client) could repeat thousands
//! of times a second: each call site lets one line through per interval and counts the rest, and
//! the next line let through says how many were left out. The detail an operator needs stays in
//! the log without the log becoming the bottleneck.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One call site's budget: at most one line per `interval`.
#[derive(Debug)]
pub struct LogLimit {
    /// Milliseconds between lines let through.
    interval_ms: u64,
    /// When the last line was let through, in ms since [`epoch`] (+1, so 0 means never).
    last: AtomicU64,
    /// Lines left out since the last one let through.
    suppressed: AtomicU64,
}

/// The process's reference instant for [`LogLimit`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    /// A budget of one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(left_out)` when a line may be logged now (with the number of lines left out since
    /// the last one), `None` when it is to be left out.
    pub fn admit(&self) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let mut limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.admit(), None);
        }
        let open = LogLimit::new(Duration::ZERO);
        assert_eq!(open.admit(), Some(0));
        assert_eq!(open.admit(), Some(0));
        // After the interval the count of what was left out comes with the next line.
        limit.last.store(1, Ordering::Relaxed);
        limit.interval_ms = 0;
        assert_eq!(limit.admit(), Some(5));
    }
}

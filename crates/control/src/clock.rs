//! The coordinator's clock: wall-clock milliseconds for timestamps, derived from tokio's monotonic
//! clock so that tests with a paused runtime (`tokio::time::pause`) control time completely.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_core::time::Millis;
use tokio::time::Instant;

/// Milliseconds since the Unix epoch, advancing with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: Millis,
    start: Instant,
}

impl Clock {
    /// A clock anchored at the current wall-clock time.
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            wall_at_start: wall,
            start: Instant::now(),
        }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> Millis {
        self.wall_at_start + self.start.elapsed().as_millis() as u64
    }

    /// The tokio instant of a timestamp of this clock.
    pub fn instant_of(&self, at: Millis) -> Instant {
        self.start + Duration::from_millis(at.saturating_sub(self.wall_at_start))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

//! The soak's clock: milliseconds since the soak began, shared by clients, backends and the
//! migration driver (one process), so a request's send time and a VM's drain window compare.

use tokio::time::Instant;

/// Milliseconds since the start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the start.
    pub fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

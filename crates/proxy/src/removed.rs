//! Backends a reload (or the API) removed while connections to them were still open. A removed
//! backend is out of its pool's snapshot at once, so it gets no new work; what is open to it keeps
//! going until it ends or the grace passes. Then its long-lived work (L4 connections, WebSocket
//! tunnels) is told to close, its idle upstream connections are retired, and it is forgotten.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use handover_core::api::RemovedBackendStatus;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::BackendRuntime;

/// One removed backend that still drains.
#[derive(Debug)]
pub struct Removed {
    /// Its live state (connections still hold it too).
    pub backend: Arc<BackendRuntime>,
    /// The address it had when removed.
    pub address: SocketAddr,
    /// When it was removed.
    pub since: Instant,
    /// How long its connections may stay.
    pub grace: Duration,
}

/// What `status` shows of a removed backend.
pub type RemovedStatus = RemovedBackendStatus;

impl Removed {
    /// A backend removed at `since`.
    pub fn new(backend: Arc<BackendRuntime>, address: SocketAddr, since: Instant, grace: Duration) -> Self {
        Self {
            backend,
            address,
            since,
            grace,
        }
    }

    /// What `status` shows of it.
    pub fn status(&self) -> RemovedStatus {
        let elapsed = self.since.elapsed();
        RemovedBackendStatus {
            address: self.address.to_string(),
            vm: self.backend.vm.clone(),
            active: self.backend.active(),
            removed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            grace_left_ms: u64::try_from(self.grace.saturating_sub(elapsed).as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Forgets the removed backends with nothing open; closes what is still open to those whose grace
/// passed, and forgets them too.
pub fn sweep(removed: &mut Vec<Removed>, pool: &str, now: Instant) {
    removed.retain(|r| {
        let active = r.backend.active();
        if active == 0 {
            info!(pool, backend = %r.address, vm = %r.backend.vm, "removed backend drained");
            return false;
        }
        if now.saturating_duration_since(r.since) >= r.grace {
            warn!(pool, backend = %r.address, vm = %r.backend.vm, active, grace = ?r.grace, "removal grace over; closing what is still open to the removed backend");
            r.backend.close_long_lived();
            return false;
        }
        true
    });
}

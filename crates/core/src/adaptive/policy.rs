//! The adaptive part of a pool's drain policy: whether the closed loop and switchover quiescence
//! are on, and their tunables with their defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Adaptive drain and switchover quiescence settings (`drain = { adaptive, quiesce, ... }`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveDrain {
    /// `adaptive`: move the VM's share between a full drain and `target` from the migration's
    /// progress.
    #[serde(rename = "adaptive")]
    pub enabled: bool,
    /// `quiesce`: no new work at all from `quiesce_lead` before the predicted switchover.
    pub quiesce: bool,
    /// `quiesce_lead` (2 s): how long before the predicted switchover quiescence begins. It must
    /// cover the progress poll interval, the notice to every balancer, and the requests in flight.
    #[serde(with = "crate::config::serde_duration")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, default = "2s", example = "2s"))]
    pub quiesce_lead: Duration,
    /// `quiesce_hold` (5 s): the longest `handover migrate` holds QEMU's switchover while requests
    /// to the VM are still in flight.
    #[serde(with = "crate::config::serde_duration")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, default = "5s", example = "5s"))]
    pub quiesce_hold: Duration,
    /// `max_slowdown` (0.05): how much longer than a full drain's the copy may take in exchange for
    /// the share the VM keeps (0.05: at most 5 % longer, by the pre-copy model).
    pub max_slowdown: f64,
    /// `give_back_step` (0.25): the largest rise of the level (the fraction of `target` kept) in
    /// one decision when the copy converges with room to spare.
    pub give_back_step: f64,
    /// `give_back_interval` (1 s): the least time between two rises.
    #[serde(with = "crate::config::serde_duration")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, default = "1s", example = "1s"))]
    pub give_back_interval: Duration,
    /// `stall_passes` (2): passes in a row that leave at least 95 % of the previous pass to copy
    /// before the level is halved.
    pub stall_passes: u32,
}

impl Default for AdaptiveDrain {
    fn default() -> Self {
        Self {
            enabled: false,
            quiesce: false,
            quiesce_lead: Duration::from_secs(2),
            quiesce_hold: Duration::from_secs(5),
            max_slowdown: 0.05,
            give_back_step: 0.25,
            give_back_interval: Duration::from_secs(1),
            stall_passes: 2,
        }
    }
}

impl AdaptiveDrain {
    /// Whether a controller runs for the VM (adaptive, quiescence, or both).
    pub fn is_active(&self) -> bool {
        self.enabled || self.quiesce
    }
}

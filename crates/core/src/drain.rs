//! The drain policy: how much of its normal share of *new* work a VM keeps while it migrates.
//!
//! `target` is a share of the VM's **normal share** of new connections (L4) or requests (L7):
//! 0.0 sends it nothing new, 0.25 sends it a quarter of what it got before the notice. The weight
//! that produces this share depends on the other backends' weights; `weights.rs` solves for it.
//! Existing connections are never touched by a drain; `keep` says what else keeps flowing. With
//! `adaptive` or `quiesce` on, the share is further scaled by the level the controller chose
//! ([`crate::adaptive`]), carried in the drain command.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::adaptive::{AdaptiveDrain, Level};
use crate::model::{DrainShape, Keep};
use crate::time::{Millis, millis};

/// A pool's drain policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DrainPolicy {
    /// Share of the VM's normal share of new work it keeps while draining, in `[0, 1]`.
    pub target: f64,
    /// Step straight to `target`, or fall linearly over `window`.
    pub shape: DrainShape,
    /// Length of the linear fall (unused for `step`).
    #[serde(with = "crate::config::serde_duration")]
    pub window: Duration,
    /// What existing traffic keeps going to the VM.
    pub keep: Keep,
    /// Adaptive drain and switchover quiescence (off by default).
    #[serde(default)]
    pub adaptive: AdaptiveDrain,
    /// Opt-in: this long after the drain began, long-lived work still open to the VM (WebSocket
    /// tunnels, L4 connections, idle HTTP/1.1 and HTTP/2 upstream connections) is closed in the
    /// least harmful way its protocol has, so that clients reconnect elsewhere before the
    /// blackout. `None` (the default) never closes anything.
    #[serde(default, with = "crate::config::serde_duration::option")]
    pub long_lived_close_after: Option<Duration>,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        Self {
            target: 0.0,
            shape: DrainShape::Step,
            window: Duration::ZERO,
            keep: Keep::Connections,
            adaptive: AdaptiveDrain::default(),
            long_lived_close_after: None,
        }
    }
}

impl DrainPolicy {
    /// The share of normal new work the VM keeps `elapsed_ms` after the drain began.
    ///
    /// Always in `[target, 1]`, non-increasing in time, equal to `target` once the window passed.
    pub fn share_at(&self, elapsed_ms: Millis) -> f64 {
        let target = self.target.clamp(0.0, 1.0);
        match self.shape {
            DrainShape::Step => target,
            DrainShape::Linear => {
                let window = millis(self.window);
                if window == 0 || elapsed_ms >= window {
                    target
                } else {
                    let progress = elapsed_ms as f64 / window as f64;
                    1.0 - (1.0 - target) * progress
                }
            }
        }
    }

    /// The share `elapsed_ms` after the drain began under the controller's `level`: scaled by it
    /// when this policy is adaptive or quiesces, the plain share otherwise. Always in `[0, target]`
    /// once the shape's window passed.
    pub fn share_with(&self, elapsed_ms: Millis, level: Option<Level>) -> f64 {
        let share = self.share_at(elapsed_ms);
        match level {
            Some(level) if self.adaptive.is_active() => share * level.get(),
            _ => share,
        }
    }

    /// Whether the share still changes after `elapsed_ms` (so weights must be recomputed later).
    pub fn is_moving_at(&self, elapsed_ms: Millis) -> bool {
        self.shape == DrainShape::Linear && elapsed_ms < millis(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(target: f64, window_ms: u64) -> DrainPolicy {
        DrainPolicy {
            target,
            shape: DrainShape::Linear,
            window: Duration::from_millis(window_ms),
            keep: Keep::Connections,
            adaptive: AdaptiveDrain::default(),
            long_lived_close_after: None,
        }
    }

    #[test]
    fn step_drain_goes_straight_to_target() {
        let policy = DrainPolicy {
            target: 0.25,
            ..DrainPolicy::default()
        };
        assert_eq!(policy.share_at(0), 0.25);
        assert_eq!(policy.share_at(10_000), 0.25);
        assert!(!policy.is_moving_at(0));
    }

    #[test]
    fn linear_drain_falls_over_its_window() {
        let policy = linear(0.0, 1000);
        assert_eq!(policy.share_at(0), 1.0);
        assert!((policy.share_at(500) - 0.5).abs() < 1e-9);
        assert_eq!(policy.share_at(1000), 0.0);
        assert_eq!(policy.share_at(5000), 0.0);
        assert!(policy.is_moving_at(999));
        assert!(!policy.is_moving_at(1000));
    }

    #[test]
    fn the_level_scales_an_adaptive_drain_and_is_ignored_otherwise() {
        let mut policy = DrainPolicy {
            target: 0.5,
            ..DrainPolicy::default()
        };
        assert_eq!(policy.share_with(0, Some(Level::new(0.5))), 0.5);
        policy.adaptive.enabled = true;
        assert_eq!(policy.share_with(0, Some(Level::new(0.5))), 0.25);
        assert_eq!(policy.share_with(0, Some(Level::ZERO)), 0.0);
        assert_eq!(policy.share_with(0, None), 0.5);
    }

    #[test]
    fn linear_drain_to_partial_target_stops_at_target() {
        let policy = linear(0.25, 1000);
        assert!((policy.share_at(500) - 0.625).abs() < 1e-9);
        assert_eq!(policy.share_at(2000), 0.25);
    }
}

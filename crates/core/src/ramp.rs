//! The ramp policy: how a VM's share of new work comes back after its migration ends.
//!
//! Envoy's slow-start formula, applied to the VM's weight:
//! `weight(t) = W · max(min_percent/100, (t / window)^(1 / aggression))`, and `W` once `t ≥ window`.
//! Unlike HAProxy and Envoy, handover also ramps after a drain, not only after a failure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::{Millis, millis};

/// A pool's ramp policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RampPolicy {
    /// Length of the ramp; zero restores full weight at once.
    #[serde(with = "crate::config::serde_duration")]
    pub window: Duration,
    /// Shape: 1.0 is linear, above 1 ramps fast early, below 1 ramps slowly early.
    pub aggression: f64,
    /// Floor of the weight multiplier during the ramp, in percent.
    pub min_percent: f64,
}

impl Default for RampPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_percent: 10.0,
        }
    }
}

impl RampPolicy {
    /// The weight multiplier `elapsed_ms` after the ramp began: in `(0, 1]`, non-decreasing, 1 at the window.
    pub fn factor_at(&self, elapsed_ms: Millis) -> f64 {
        let window = millis(self.window);
        if window == 0 || elapsed_ms >= window {
            return 1.0;
        }
        let time_factor = elapsed_ms.max(1) as f64 / window as f64;
        let aggression = if self.aggression.is_finite() && self.aggression > 0.0 {
            self.aggression
        } else {
            1.0
        };
        let floor = (self.min_percent / 100.0).clamp(0.0, 1.0);
        time_factor.powf(1.0 / aggression).max(floor).min(1.0)
    }

    /// Whether the ramp is over `elapsed_ms` after it began.
    pub fn is_done_at(&self, elapsed_ms: Millis) -> bool {
        elapsed_ms >= millis(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ramp(window_ms: u64, aggression: f64, min_percent: f64) -> RampPolicy {
        RampPolicy {
            window: Duration::from_millis(window_ms),
            aggression,
            min_percent,
        }
    }

    #[test]
    fn linear_ramp_reaches_full_weight_after_window() {
        let policy = ramp(10_000, 1.0, 10.0);
        assert_eq!(policy.factor_at(0), 0.1);
        assert!((policy.factor_at(5_000) - 0.5).abs() < 1e-9);
        assert_eq!(policy.factor_at(10_000), 1.0);
        assert!(policy.is_done_at(10_000));
        assert!(!policy.is_done_at(9_999));
    }

    #[test]
    fn aggressive_ramp_rises_faster_early() {
        let gentle = ramp(10_000, 1.0, 0.0);
        let aggressive = ramp(10_000, 2.0, 0.0);
        assert!(aggressive.factor_at(2_500) > gentle.factor_at(2_500));
        assert!((aggressive.factor_at(2_500) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn zero_window_restores_at_once() {
        assert_eq!(ramp(0, 1.0, 10.0).factor_at(0), 1.0);
    }

    proptest! {
        #[test]
        fn ramp_is_monotone_bounded_and_ends_at_full_weight(
            window in 0u64..100_000,
            aggression in 0.05f64..20.0,
            min_percent in 0.0f64..=100.0,
            mut times in proptest::collection::vec(0u64..200_000, 1..50),
        ) {
            let policy = ramp(window, aggression, min_percent);
            times.sort_unstable();
            let mut previous = 0.0;
            for t in times {
                let f = policy.factor_at(t);
                prop_assert!(f > 0.0 || (min_percent == 0.0 && window > 0));
                prop_assert!(f <= 1.0);
                prop_assert!(f >= previous - 1e-12, "ramp fell from {previous} to {f} at {t}");
                previous = f;
            }
            prop_assert_eq!(policy.factor_at(window), 1.0);
            prop_assert_eq!(policy.factor_at(window + 1), 1.0);
        }
    }
}

//! Backend health, as HAProxy and Envoy do it, plus what they lack: tolerance of a migration's
//! blackout.
//!
//! - **Active checks**: `fall` consecutive failed checks mark a backend down, `rise` consecutive
//!   successes bring it back.
//! - **Passive checks** (outlier ejection): `consecutive_failures` failed connects or 5xx answers on
//!   real traffic eject a backend for `ejection`.
//! - **Migration-aware**: while the backend's VM migrates (and for the grace after its migration
//!   ends), a failure streak is *suppressed* (counted, not held against the backend) for at most
//!   `tolerance_ms` from its first failure. A VM that is still failing after that is marked down as
//!   usual: the tolerance is for the blackout, not for a dead VM.
//!
//! A backend that becomes available again records when, so the pool ramps it back (slow start
//! after recovery).

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// Active-check thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckThresholds {
    /// Consecutive successes to come back up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
}

/// Passive-check (outlier) policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive failures on real traffic that eject the backend.
    pub consecutive_failures: u32,
    /// How long an ejection lasts.
    pub ejection_ms: u64,
}

/// Whether failures are expected now: `Some(bound)` while the VM migrates or just finished,
/// where `bound` is how long a failure streak may last and still be suppressed.
pub type Tolerance = Option<u64>;

/// Up or down by active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passing.
    Up,
    /// Failed `fall` checks in a row.
    Down,
}

/// A change of availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// Active checks marked the backend down.
    Down,
    /// Active checks brought it back.
    Up,
    /// Passive checks ejected it.
    Ejected,
}

/// What was done with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Counted against the backend.
    Counted,
    /// Expected (migration blackout): counted as suppressed only.
    Suppressed,
}

/// Health of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    /// Up or down by active checks.
    pub health: Health,
    /// Consecutive successful checks (while down).
    successes: u32,
    /// Consecutive failed checks (counted ones).
    failures: u32,
    /// Consecutive failures on real traffic.
    passive_failures: u32,
    /// Ejected by passive checks until this time.
    pub ejected_until: Option<Millis>,
    /// When the current streak of failures (checks or traffic) began.
    streak_since: Option<Millis>,
    /// When the backend last became available again (for the recovery ramp).
    pub recovered_at: Option<Millis>,
    /// Failures suppressed because of a migration, in total.
    pub suppressed_total: u64,
    /// Times marked down or ejected, in total.
    pub outages_total: u64,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            health: Health::Up,
            successes: 0,
            failures: 0,
            passive_failures: 0,
            ejected_until: None,
            streak_since: None,
            recovered_at: None,
            suppressed_total: 0,
            outages_total: 0,
        }
    }
}

impl HealthState {
    /// Whether the backend may receive new work at `now`.
    pub fn available(&self, now: Millis) -> bool {
        self.health == Health::Up && self.ejected_until.is_none_or(|until| until <= now)
    }

    /// `up`, `down` or `ejected`.
    pub fn label(&self, now: Millis) -> &'static str {
        match (self.health, self.ejected_until.is_some_and(|until| until > now)) {
            (Health::Down, _) => "down",
            (Health::Up, true) => "ejected",
            (Health::Up, false) => "up",
        }
    }

    /// Records an active check.
    pub fn record_check(
        &mut self,
        ok: bool,
        now: Millis,
        thresholds: CheckThresholds,
        tolerance: Tolerance,
    ) -> (Option<HealthChange>, Option<FailureVerdict>) {
        if ok {
            self.streak_since = None;
            self.failures = 0;
            if self.health == Health::Down {
                self.successes += 1;
                if self.successes >= thresholds.rise.max(1) {
                    self.health = Health::Up;
                    self.successes = 0;
                    self.recovered_at = Some(now);
                    return (Some(HealthChange::Up), None);
                }
            }
            return (None, None);
        }
        self.successes = 0;
        if self.suppress(now, tolerance) {
            return (None, Some(FailureVerdict::Suppressed));
        }
        self.failures += 1;
        if self.health == Health::Up && self.failures >= thresholds.fall.max(1) {
            self.health = Health::Down;
            self.outages_total += 1;
            self.recovered_at = None;
            return (Some(HealthChange::Down), Some(FailureVerdict::Counted));
        }
        (None, Some(FailureVerdict::Counted))
    }

    /// Records the outcome of real traffic (a connect, or a response's status class).
    pub fn record_traffic(
        &mut self,
        ok: bool,
        now: Millis,
        policy: Option<OutlierPolicy>,
        tolerance: Tolerance,
    ) -> (Option<HealthChange>, Option<FailureVerdict>) {
        if ok {
            self.passive_failures = 0;
            if self.failures == 0 {
                self.streak_since = None;
            }
            return (None, None);
        }
        if self.suppress(now, tolerance) {
            return (None, Some(FailureVerdict::Suppressed));
        }
        let Some(policy) = policy else {
            return (None, Some(FailureVerdict::Counted));
        };
        self.passive_failures += 1;
        if self.passive_failures >= policy.consecutive_failures.max(1) && self.available(now) {
            self.passive_failures = 0;
            self.ejected_until = Some(now + policy.ejection_ms);
            self.outages_total += 1;
            return (Some(HealthChange::Ejected), Some(FailureVerdict::Counted));
        }
        (None, Some(FailureVerdict::Counted))
    }

    /// Ends an ejection whose time is over; returns whether the backend came back.
    pub fn expire_ejection(&mut self, now: Millis) -> bool {
        match self.ejected_until {
            Some(until) if until <= now => {
                self.ejected_until = None;
                if self.health == Health::Up {
                    self.recovered_at = Some(now);
                }
                true
            }
            _ => false,
        }
    }

    /// Whether this failure falls in a tolerated blackout: the streak began at most `bound` ago
    /// while failures were expected.
    fn suppress(&mut self, now: Millis, tolerance: Tolerance) -> bool {
        let since = *self.streak_since.get_or_insert(now);
        match tolerance {
            Some(bound) if now.saturating_sub(since) <= bound => {
                self.suppressed_total += 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: CheckThresholds = CheckThresholds { rise: 2, fall: 3 };

    #[test]
    fn fall_failures_mark_down_and_rise_successes_bring_back() {
        let mut h = HealthState::default();
        assert_eq!(h.record_check(false, 0, T, None).0, None);
        assert_eq!(h.record_check(false, 100, T, None).0, None);
        assert_eq!(h.record_check(false, 200, T, None).0, Some(HealthChange::Down));
        assert!(!h.available(200));
        assert_eq!(h.record_check(true, 300, T, None).0, None);
        assert_eq!(h.record_check(true, 400, T, None).0, Some(HealthChange::Up));
        assert_eq!(h.recovered_at, Some(400));
        assert!(h.available(400));
        assert_eq!(h.outages_total, 1);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut h = HealthState::default();
        h.record_check(false, 0, T, None);
        h.record_check(false, 1, T, None);
        h.record_check(true, 2, T, None);
        h.record_check(false, 3, T, None);
        h.record_check(false, 4, T, None);
        assert!(h.available(4));
    }

    #[test]
    fn failures_during_a_migration_blackout_are_suppressed() {
        let mut h = HealthState::default();
        for t in [0, 100, 200, 300] {
            assert_eq!(
                h.record_check(false, t, T, Some(1000)),
                (None, Some(FailureVerdict::Suppressed))
            );
        }
        assert!(h.available(300));
        assert_eq!(h.suppressed_total, 4);
        h.record_check(true, 400, T, Some(1000));
        assert_eq!(h.recovered_at, None, "never down, so no recovery ramp");
    }

    #[test]
    fn the_tolerance_is_bounded_a_dead_vm_still_goes_down() {
        let mut h = HealthState::default();
        let mut change = None;
        for t in (0..=3000).step_by(100) {
            if let (Some(c), _) = h.record_check(false, t, T, Some(1000)) {
                change = Some((c, t));
                break;
            }
        }
        assert_eq!(
            change,
            Some((HealthChange::Down, 1300)),
            "3 counted failures after the 1 s tolerance"
        );
    }

    #[test]
    fn passive_failures_eject_for_a_while() {
        let policy = Some(OutlierPolicy {
            consecutive_failures: 3,
            ejection_ms: 5000,
        });
        let mut h = HealthState::default();
        h.record_traffic(false, 0, policy, None);
        h.record_traffic(false, 1, policy, None);
        assert_eq!(
            h.record_traffic(false, 2, policy, None).0,
            Some(HealthChange::Ejected)
        );
        assert!(!h.available(3));
        assert_eq!(h.label(3), "ejected");
        assert!(!h.expire_ejection(4000));
        assert!(h.expire_ejection(5002));
        assert!(h.available(5002));
        assert_eq!(h.recovered_at, Some(5002));
    }

    #[test]
    fn passive_failures_during_a_migration_are_suppressed() {
        let policy = Some(OutlierPolicy {
            consecutive_failures: 1,
            ejection_ms: 5000,
        });
        let mut h = HealthState::default();
        assert_eq!(
            h.record_traffic(false, 0, policy, Some(500)).1,
            Some(FailureVerdict::Suppressed)
        );
        assert!(h.available(0));
    }
}

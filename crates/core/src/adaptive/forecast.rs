//! The pre-copy model the controller decides with (`research/migration_model.md` §2.1): each pass
//! sends what the guest dirtied during the one before, and QEMU switches over at the end of the
//! first pass that leaves at most `bandwidth × downtime-limit` to copy.
//!
//! Dirtying is modelled as `background + per_level × level` bytes per second: the part that the
//! balancer controls scales with the VM's share of new work; the rest (kernel, timers, long-lived
//! connections a drain never touches) does not. Pure functions, no state.

/// Passes the forecast follows before it calls a copy endless.
const MAX_PASSES: u32 = 10_000;

/// What the guest dirties, as the controller currently believes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirtyModel {
    /// Bytes per second dirtied whatever the balancer does (at level 0).
    pub background: f64,
    /// Bytes per second added per unit of level (level 1 = the drain target).
    pub per_level: f64,
}

impl DirtyModel {
    /// Bytes per second dirtied at `level`.
    pub fn rate(&self, level: f64) -> f64 {
        self.background + self.per_level * level
    }
}

/// The copy as it stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyState {
    /// Copy bandwidth, bytes per second.
    pub bandwidth: f64,
    /// QEMU switches over when a pass leaves at most this many bytes (`bandwidth × downtime-limit`).
    pub threshold: f64,
    /// Bytes still to send in the current pass.
    pub remaining: f64,
    /// Bytes already dirtied since the current pass began (sent again in the next pass).
    pub dirtied: f64,
}

/// Seconds until the switchover if the guest dirties `rate` bytes per second from now on: the rest
/// of this pass, then one pass of what each pass dirtied, until a pass leaves at most `threshold`.
/// `None` when that never happens (the copy does not converge).
pub fn switchover_in(copy: &CopyState, rate: f64) -> Option<f64> {
    let bandwidth = copy.bandwidth;
    if bandwidth.is_nan() || bandwidth <= 0.0 || !rate.is_finite() {
        return None;
    }
    let mut elapsed = copy.remaining.max(0.0) / bandwidth;
    let mut next = copy.dirtied.max(0.0) + rate.max(0.0) * elapsed;
    for _ in 0..MAX_PASSES {
        if next <= copy.threshold {
            return Some(elapsed);
        }
        if rate >= bandwidth {
            return None;
        }
        let pass = next / bandwidth;
        elapsed += pass;
        next = rate * pass;
    }
    None
}

/// The highest level (in `[0, 1]`) at which the switchover still comes within `budget` seconds —
/// or no later than with a full drain, whatever the budget: a level that delays nothing costs
/// nothing.
///
/// The forecast is the discrete one of [`switchover_in`], so a level at which the current pass is
/// the last anyway costs nothing, and one that makes the guest dirty just more than the threshold
/// costs a whole extra pass. A guest whose background alone reaches the bandwidth cannot converge
/// whatever the balancer does: the answer is then 0 (a full drain, the least the balancer can add).
pub fn allowed_level(model: &DirtyModel, copy: &CopyState, budget: f64) -> f64 {
    let Some(drained) = switchover_in(copy, model.rate(0.0)) else {
        return 0.0;
    };
    if model.per_level.is_nan() || model.per_level <= 0.0 {
        // Dirtying does not follow the share: keeping it costs nothing.
        return 1.0;
    }
    let budget = budget.max(drained) + 1e-9;
    let fits = |level: f64| switchover_in(copy, model.rate(level)).is_some_and(|t| t <= budget);
    if fits(1.0) {
        return 1.0;
    }
    // The forecast grows with the level: bisect for the highest level that fits.
    let (mut low, mut high) = (0.0, 1.0);
    for _ in 0..40 {
        let mid = (low + high) / 2.0;
        if fits(mid) {
            low = mid;
        } else {
            high = mid;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn copy(bandwidth_mib: f64, remaining_mib: f64) -> CopyState {
        CopyState {
            bandwidth: bandwidth_mib * MIB,
            threshold: bandwidth_mib * MIB * 0.3,
            remaining: remaining_mib * MIB,
            dirtied: 0.0,
        }
    }

    #[test]
    fn an_idle_guest_switches_over_at_the_end_of_its_pass() {
        let c = copy(12.0, 90.0);
        assert!((switchover_in(&c, 0.0).unwrap() - 7.5).abs() < 1e-9);
    }

    #[test]
    fn a_busy_guest_needs_more_passes_and_one_as_fast_as_the_copy_never_ends() {
        let c = copy(12.0, 90.0);
        let busy = switchover_in(&c, 4.0 * MIB).unwrap();
        // 90 MiB, then 30, 10, 3.3 (≤ 3.6): 7.5 + 2.5 + 0.83 s.
        assert!((busy - (7.5 + 2.5 + 10.0 / 12.0)).abs() < 1e-6, "{busy}");
        assert_eq!(switchover_in(&c, 12.0 * MIB), None);
    }

    #[test]
    fn the_allowed_level_keeps_the_copy_within_the_slowdown() {
        let model = DirtyModel {
            background: 0.0,
            per_level: 6.0 * MIB,
        };
        let c = copy(12.0, 90.0);
        let drained = switchover_in(&c, 0.0).unwrap();
        for slowdown in [0.0, 0.05, 0.1, 0.5] {
            let level = allowed_level(&model, &c, drained * (1.0 + slowdown));
            let at = switchover_in(&c, model.rate(level)).unwrap();
            assert!(at <= drained * (1.0 + slowdown) + 1e-6, "{slowdown}: {at} s");
            let above = switchover_in(&c, model.rate((level + 0.01).min(1.0)));
            assert!(level == 1.0 || above.is_none_or(|t| t > drained * (1.0 + slowdown)));
        }
        // No slowdown at all still allows what ends with this pass: 90 MiB in 7.5 s, 3.6 MiB of room.
        let level = allowed_level(&model, &c, 0.0);
        assert!((model.rate(level) * 7.5 - 3.6 * MIB).abs() < 1024.0, "{level}");
        // A budget shorter than a full drain's is no reason to drain more than fully.
        assert_eq!(allowed_level(&model, &c, -5.0), level);
    }

    #[test]
    fn a_copy_that_ends_with_this_pass_allows_the_full_level() {
        let model = DirtyModel {
            background: 0.0,
            per_level: 6.0 * MIB,
        };
        // 1 MiB left at 320 MiB/s: nothing the guest dirties in 3 ms exceeds 96 MiB.
        assert_eq!(allowed_level(&model, &copy(320.0, 1.0), 0.0), 1.0);
    }

    #[test]
    fn background_dirtying_beyond_the_bandwidth_allows_only_a_full_drain() {
        let model = DirtyModel {
            background: 20.0 * MIB,
            per_level: 1.0 * MIB,
        };
        assert_eq!(allowed_level(&model, &copy(12.0, 90.0), 1e9), 0.0);
    }
}

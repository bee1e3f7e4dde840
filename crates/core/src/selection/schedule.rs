//! The smooth weighted schedule: a table of backend indexes in which each backend appears in
//! proportion to its effective weight, spread evenly (earliest-deadline-first interleaving, the
//! same smoothness as nginx's smooth weighted round robin).
//!
//! Built once per weight change, off the hot path: `O(L log n)` for a table of `L` slots.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Smallest table; small pools get fine-grained shares (≈0.1 %).
pub const MIN_SLOTS: usize = 1024;
/// Largest table.
pub const MAX_SLOTS: usize = 1 << 18;

/// Builds the schedule for these effective weights (empty if none is positive).
pub fn build(weights: &[f64]) -> Vec<u32> {
    let eligible: Vec<(usize, f64)> = weights
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, w)| *w > 0.0 && w.is_finite())
        .collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let total: f64 = eligible.iter().map(|(_, w)| w).sum();
    let target_len = (eligible.len() * 16).clamp(MIN_SLOTS, MAX_SLOTS);
    let counts: Vec<(usize, usize)> = eligible
        .iter()
        .map(|(i, w)| (*i, ((w / total) * target_len as f64).round().max(1.0) as usize))
        .collect();
    let len: usize = counts.iter().map(|(_, c)| c).sum();

    #[derive(PartialEq)]
    struct Next {
        deadline: f64,
        period: f64,
        index: usize,
    }
    impl Eq for Next {}
    impl Ord for Next {
        fn cmp(&self, other: &Self) -> Ordering {
            // Min-heap on deadline, then on index for determinism.
            other
                .deadline
                .total_cmp(&self.deadline)
                .then_with(|| other.index.cmp(&self.index))
        }
    }
    impl PartialOrd for Next {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    let mut heap: BinaryHeap<Next> = counts
        .iter()
        .map(|(index, count)| {
            let period = len as f64 / *count as f64;
            Next {
                deadline: period / 2.0,
                period,
                index: *index,
            }
        })
        .collect();
    let mut schedule = Vec::with_capacity(len);
    while schedule.len() < len {
        let mut next = heap.pop().expect("heap holds every eligible backend");
        schedule.push(next.index as u32);
        next.deadline += next.period;
        heap.push(next);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_weights() {
        let schedule = build(&[1.0, 2.0, 1.0]);
        let count = |i: u32| schedule.iter().filter(|&&s| s == i).count();
        assert_eq!(count(1), 2 * count(0));
        assert_eq!(count(0), count(2));
    }

    #[test]
    fn the_schedule_is_smooth() {
        // In any window of 12 slots, weights 1:1:1 give each backend 4 ± 1.
        let schedule = build(&[1.0, 1.0, 1.0]);
        for window in schedule.windows(12) {
            for b in 0..3u32 {
                let n = window.iter().filter(|&&s| s == b).count();
                assert!((3..=5).contains(&n), "{window:?}");
            }
        }
    }

    #[test]
    fn tiny_weights_still_get_a_slot() {
        let schedule = build(&[1e-6, 1.0]);
        assert!(schedule.contains(&0));
    }

    #[test]
    fn large_pools_are_bounded() {
        let weights = vec![1.0; 100_000];
        let schedule = build(&weights);
        assert!(schedule.len() <= MAX_SLOTS + 100_000);
        assert!(schedule.len() >= 100_000);
    }
}

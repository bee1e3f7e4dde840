//! Backend selection: one [`Selector`] per pool snapshot, built off the hot path from the solved
//! effective weights, and read lock-free on every pick.
//!
//! - [`schedule`]: the smooth weighted schedule every algorithm samples from.
//! - [`round_robin`]: walks the schedule with one atomic cursor (smooth weighted round robin).
//! - [`least_connections`]: fewest active connections per unit of weight.
//! - [`p2c`]: power of two choices over peak-EWMA latency times outstanding work.
//!
//! Live load (active connections, latency) is read through [`LoadSource`], so the algorithms stay
//! pure and are tested without sockets.

pub mod least_connections;
pub mod p2c;
pub mod round_robin;
pub mod schedule;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Algorithm;

/// Live load of a pool's backends, by index.
pub trait LoadSource {
    /// Active connections (L4) plus in-flight requests (L7) of a backend.
    fn active(&self, index: usize) -> u64;
    /// Peak-EWMA latency of a backend in nanoseconds (0 when unknown).
    fn latency_ns(&self, index: usize) -> u64;
}

/// Loads held in plain vectors, for tests and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticLoad {
    /// Active count per backend.
    pub active: Vec<u64>,
    /// Latency per backend in nanoseconds.
    pub latency_ns: Vec<u64>,
}

impl LoadSource for StaticLoad {
    fn active(&self, index: usize) -> u64 {
        self.active.get(index).copied().unwrap_or(0)
    }
    fn latency_ns(&self, index: usize) -> u64 {
        self.latency_ns.get(index).copied().unwrap_or(0)
    }
}

/// An immutable selector over one set of effective weights, with an atomic cursor.
#[derive(Debug)]
pub struct Selector {
    algorithm: Algorithm,
    weights: Vec<f64>,
    schedule: Vec<u32>,
    cursor: AtomicU64,
}

impl Selector {
    /// Builds a selector. `cursor` carries the position of the previous selector over, so that a
    /// rebuild during a ramp does not restart the schedule from its first slot.
    pub fn build(algorithm: Algorithm, weights: &[f64], cursor: u64) -> Self {
        Self {
            algorithm,
            weights: weights.to_vec(),
            schedule: schedule::build(weights),
            cursor: AtomicU64::new(cursor),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Effective weights the selector was built from.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Length of the weighted schedule (0 when no backend can take new work).
    pub fn schedule_len(&self) -> usize {
        self.schedule.len()
    }

    /// The cursor, to carry over into the next selector.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// Whether a backend may receive new work.
    pub fn is_eligible(&self, index: usize) -> bool {
        self.weights.get(index).is_some_and(|w| *w > 0.0)
    }

    /// Picks a backend for new work; `None` when no backend can take it.
    /// `random` is any random 64-bit value (used by P2C only).
    #[inline]
    pub fn pick(&self, load: &impl LoadSource, random: u64) -> Option<usize> {
        self.pick_excluding(load, random, &[])
    }

    /// Picks a backend that is not in `excluded` (backends a connect already failed on).
    pub fn pick_excluding(&self, load: &impl LoadSource, random: u64, excluded: &[usize]) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        match self.algorithm {
            Algorithm::RoundRobin => round_robin::pick(&self.schedule, &self.cursor, excluded),
            Algorithm::LeastConnections => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                least_connections::pick(&self.weights, load, start, excluded)
            }
            Algorithm::P2cEwma => p2c::pick(&self.schedule, &self.weights, load, random, excluded),
        }
    }
}

/// A fast, non-cryptographic mix of a 64-bit value (splitmix64), used to derive random draws.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(selector: &Selector, load: &StaticLoad, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; selector.weights().len()];
        for i in 0..picks {
            counts[selector.pick(load, mix64(i as u64)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn every_algorithm_skips_zero_weight_backends() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2cEwma,
        ] {
            let selector = Selector::build(algorithm, &[0.0, 1.0, 1.0], 0);
            let c = counts(&selector, &StaticLoad::default(), 3000);
            assert_eq!(c[0], 0, "{algorithm:?}");
            assert!(c[1] > 0 && c[2] > 0, "{algorithm:?}: {c:?}");
        }
    }

    #[test]
    fn no_eligible_backend_gives_none() {
        let selector = Selector::build(Algorithm::RoundRobin, &[0.0, 0.0], 0);
        assert_eq!(selector.pick(&StaticLoad::default(), 1), None);
        assert_eq!(
            Selector::build(Algorithm::RoundRobin, &[], 0).pick(&StaticLoad::default(), 1),
            None
        );
    }

    #[test]
    fn exclusion_moves_a_retry_to_another_backend() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2cEwma,
        ] {
            let selector = Selector::build(algorithm, &[1.0, 1.0, 1.0], 0);
            for r in 0..50 {
                let pick = selector.pick_excluding(&StaticLoad::default(), mix64(r), &[0, 2]);
                assert_eq!(pick, Some(1), "{algorithm:?}");
            }
            assert_eq!(
                selector.pick_excluding(&StaticLoad::default(), 7, &[0, 1, 2]),
                None
            );
        }
    }

    #[test]
    fn the_cursor_carries_over_between_selectors() {
        let a = Selector::build(Algorithm::RoundRobin, &[1.0, 1.0], 0);
        for _ in 0..5 {
            a.pick(&StaticLoad::default(), 0);
        }
        let b = Selector::build(Algorithm::RoundRobin, &[1.0, 1.0], a.cursor());
        assert_eq!(b.cursor(), 5);
    }
}

//! Counters and histograms the coordinator keeps for `/metrics`.

use std::collections::BTreeMap;

/// A Prometheus-style cumulative histogram with fixed bucket bounds (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Buckets for durations from 10 ms to 1 h.
    pub fn seconds() -> Self {
        let bounds = vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            3600.0,
        ];
        let counts = vec![0; bounds.len()];
        Self {
            bounds,
            counts,
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// Cumulative counts per bound.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                total += c;
                (*b, total)
            })
            .collect()
    }
}

/// What the coordinator counts.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Notices by (notice, outcome).
    pub notices: BTreeMap<(String, String), u64>,
    /// Finished migrations by how they ended.
    pub migrations_ended: BTreeMap<String, u64>,
    /// Wait for drained, in seconds.
    pub drain_wait: Histogram,
    /// Time spent in each phase, in seconds, by phase.
    pub phase_seconds: BTreeMap<String, Histogram>,
    /// Failed calls per balancer.
    pub balancer_errors: BTreeMap<String, u64>,
    /// Whether the last call to each balancer succeeded.
    pub balancer_up: BTreeMap<String, bool>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            notices: BTreeMap::new(),
            migrations_ended: BTreeMap::new(),
            drain_wait: Histogram::seconds(),
            phase_seconds: BTreeMap::new(),
            balancer_errors: BTreeMap::new(),
            balancer_up: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Records the result of one call to a balancer.
    pub fn balancer_call(&mut self, name: &str, ok: bool) {
        self.balancer_up.insert(name.to_string(), ok);
        if !ok {
            *self.balancer_errors.entry(name.to_string()).or_default() += 1;
        }
    }

    /// Records time spent in a phase.
    pub fn phase_time(&mut self, phase: &str, seconds: f64) {
        self.phase_seconds
            .entry(phase.to_string())
            .or_insert_with(Histogram::seconds)
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::seconds();
        h.observe(0.02);
        h.observe(0.02);
        h.observe(7.0);
        h.observe(10_000.0);
        let c = h.cumulative();
        assert_eq!(c[0], (0.01, 0));
        assert_eq!(c[1], (0.025, 2));
        assert_eq!(c.last().unwrap().1, 3, "above the last bound only +Inf counts it");
        assert_eq!(h.count, 4);
    }
}

//! Guest memory as the migration sees it: which pages were dirtied since the last sync.
//!
//! - [`DirtyLog`]: the exact set, page by page (request fidelity), cleared in O(1) at each sync.
//! - [`HotSet`]: the *expected* number of distinct pages among `n` writes drawn from the same
//!   Zipf law the request fidelity samples (flow fidelity): Σ m_b (1 − e^(−n p_b)) over buckets of
//!   ranks with similar probability. It saturates at the hot set's size, which is why a pass's
//!   dirty volume depends on its length (QEMU's `calc-dirty-rate` documentation warns of exactly this).

/// Distinct pages dirtied since the last sync.
#[derive(Debug, Clone)]
pub struct DirtyLog {
    generation: Vec<u32>,
    current: u32,
    count: u64,
}

impl DirtyLog {
    /// A log over `pages` pages.
    pub fn new(pages: usize) -> Self {
        Self {
            generation: vec![0; pages],
            current: 1,
            count: 0,
        }
    }

    /// Marks a page dirty.
    #[inline]
    pub fn mark(&mut self, page: usize) {
        if let Some(g) = self.generation.get_mut(page)
            && *g != self.current
        {
            *g = self.current;
            self.count += 1;
        }
    }

    /// Distinct pages since the last sync.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Syncs: returns the count and starts a new, empty log.
    pub fn sync(&mut self) -> u64 {
        let count = self.count;
        self.count = 0;
        self.current += 1;
        count
    }
}

/// Expected distinct pages among writes to a Zipf-weighted hot set.
#[derive(Debug, Clone)]
pub struct HotSet {
    /// (pages in the bucket, probability of each of its pages).
    buckets: Vec<(f64, f64)>,
}

impl HotSet {
    /// A hot set of `pages` pages written with Zipf exponent `s` (the law `Rng::zipf` samples).
    pub fn new(pages: u64, s: f64) -> Self {
        let pages = pages.max(1);
        let top = pages as f64 + 1.0;
        let cdf = |x: f64| -> f64 {
            if (s - 1.0).abs() < 1e-9 {
                x.ln() / top.ln()
            } else {
                let a = 1.0 - s;
                (x.powf(a) - 1.0) / (top.powf(a) - 1.0)
            }
        };
        let mut buckets = Vec::new();
        let mut start = 1.0f64;
        while start < top {
            let end = (start * 1.25).max(start + 1.0).floor().min(top);
            let mass = cdf(end) - cdf(start);
            let count = end - start;
            buckets.push((count, mass / count));
            start = end;
        }
        Self { buckets }
    }

    /// Expected distinct pages among `writes` writes.
    pub fn distinct(&self, writes: f64) -> f64 {
        self.buckets
            .iter()
            .map(|(count, p)| count * -(-writes * p).exp_m1())
            .sum()
    }
}

/// Expected distinct pages among `writes` uniform writes to `pages` pages.
pub fn distinct_uniform(pages: f64, writes: f64) -> f64 {
    if pages <= 0.0 {
        0.0
    } else {
        pages * -(-writes / pages).exp_m1()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, Stream};

    #[test]
    fn the_log_counts_distinct_pages_and_clears_at_sync() {
        let mut log = DirtyLog::new(10);
        for p in [1, 2, 2, 3, 1] {
            log.mark(p);
        }
        assert_eq!(log.sync(), 3);
        log.mark(2);
        assert_eq!(log.count(), 1);
    }

    #[test]
    fn the_expectation_matches_sampling() {
        for s in [0.0, 0.8, 1.0, 1.2] {
            let pages = 20_000u64;
            let hot = HotSet::new(pages, s);
            for writes in [1_000.0, 20_000.0, 200_000.0] {
                let mut rng = Rng::new(9, Stream::Pages);
                let mut log = DirtyLog::new(pages as usize);
                for _ in 0..writes as u64 {
                    log.mark(rng.zipf(pages, s) as usize);
                }
                let expected = hot.distinct(writes);
                let measured = log.count() as f64;
                assert!(
                    (expected - measured).abs() / measured < 0.03,
                    "s={s} writes={writes}: {expected} vs {measured}"
                );
            }
        }
        assert!((distinct_uniform(1000.0, 1e9) - 1000.0).abs() < 1e-6);
    }
}

//! Latency percentiles from every sample (microseconds), nearest rank.

/// The percentiles reported, in milliseconds (0 without samples).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Sorts the samples and reads the percentiles off them.
    pub fn of(samples_us: &mut [u32]) -> Self {
        if samples_us.is_empty() {
            return Self::default();
        }
        samples_us.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples_us.len() as f64).ceil() as usize).clamp(1, samples_us.len());
            f64::from(samples_us[rank - 1]) / 1000.0
        };
        Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }
}

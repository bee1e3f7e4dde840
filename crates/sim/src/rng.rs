//! Deterministic random numbers: xoshiro256** seeded through splitmix64, one independent stream
//! per (seed, purpose), so that two policies run with the same seed see the same arrivals, service
//! times and dirtied pages (common random numbers) and differ only by what the policy changes.

/// A random stream.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// What a stream is used for (each gets its own, so changing one use does not shift another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Connection arrivals.
    Arrivals = 1,
    /// Requests per connection and think times.
    Sessions = 2,
    /// Service times.
    Service = 3,
    /// Pages a request dirties.
    Pages = 4,
    /// Background dirtying.
    Background = 5,
    /// Random choices of the balancer (P2C).
    Balancer = 6,
    /// Per-VM heterogeneity in fleet runs.
    Fleet = 7,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream `stream` of run `seed`.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let mut x =
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            s: [
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
            ],
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Exponential with this mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with this mean and coefficient of variation (`cv = 0` is the constant `mean`).
    pub fn lognormal(&mut self, mean: f64, cv: f64) -> f64 {
        if cv <= 0.0 {
            return mean;
        }
        let sigma2 = (1.0 + cv * cv).ln();
        let mu = mean.ln() - sigma2 / 2.0;
        (mu + sigma2.sqrt() * self.normal()).exp()
    }

    /// Geometric number of trials (at least 1) with this mean.
    pub fn geometric(&mut self, mean: f64) -> u64 {
        if mean <= 1.0 {
            return 1;
        }
        let p = 1.0 / mean;
        1 + (self.unit().ln() / (1.0 - p).ln()).floor() as u64
    }

    /// A rank in `0..n` from a (bounded, continuous-approximation) Zipf law with exponent `s`;
    /// `s = 0` is uniform.
    pub fn zipf(&mut self, n: u64, s: f64) -> u64 {
        if n <= 1 {
            return 0;
        }
        // Inverse CDF of a density ∝ x^-s on [1, n + 1): ranks are the integer parts.
        let u = self.unit();
        let top = n as f64 + 1.0;
        let x = if (s - 1.0).abs() < 1e-9 {
            top.powf(u)
        } else {
            let a = 1.0 - s;
            (((top.powf(a) - 1.0) * u) + 1.0).powf(1.0 / a)
        };
        ((x.floor() as u64).max(1) - 1).min(n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_independent() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, Stream::Arrivals).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::new(7, Stream::Arrivals).next_u64(),
            Rng::new(7, Stream::Service).next_u64()
        );
        assert_ne!(
            Rng::new(7, Stream::Arrivals).next_u64(),
            Rng::new(8, Stream::Arrivals).next_u64()
        );
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = Rng::new(1, Stream::Service);
        let n = 200_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        assert!((mean(&mut || rng.exponential(2.0)) - 2.0).abs() < 0.03);
        let mut rng = Rng::new(2, Stream::Service);
        assert!((mean(&mut || rng.lognormal(5.0, 1.0)) - 5.0).abs() < 0.1);
        let mut rng = Rng::new(3, Stream::Sessions);
        assert!((mean(&mut || rng.geometric(4.0) as f64) - 4.0).abs() < 0.05);
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let mut rng = Rng::new(4, Stream::Pages);
        let mut counts = [0u64; 100];
        for _ in 0..100_000 {
            counts[rng.zipf(100, 1.0) as usize] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[90]);
        let mut rng = Rng::new(5, Stream::Pages);
        let uniform: Vec<u64> = (0..10_000).map(|_| rng.zipf(10, 0.0)).collect();
        assert!(uniform.iter().all(|r| *r < 10));
        assert!(uniform.iter().filter(|r| **r == 9).count() > 800);
    }
}

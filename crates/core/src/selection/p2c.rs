//! Power of two choices over peak-EWMA latency: draw two backends from the weighted schedule, and
//! take the one with the lower `(latency + 1ms) × (active + 1) / weight`. Weighted draws mean a
//! draining backend (weight 0) is never drawn and a ramping one is drawn less often.

use super::{LoadSource, mix64};

/// Latency floor so that a backend with no samples yet is compared on outstanding work alone.
const LATENCY_FLOOR_NS: f64 = 1_000_000.0;

/// Picks the better of two weighted draws.
pub fn pick(
    schedule: &[u32],
    weights: &[f64],
    load: &impl LoadSource,
    random: u64,
    excluded: &[usize],
) -> Option<usize> {
    let len = schedule.len() as u64;
    if len == 0 {
        return None;
    }
    let mut draws = random;
    let mut draw = || {
        draws = mix64(draws);
        schedule[(draws % len) as usize] as usize
    };
    let mut candidates = [usize::MAX; 2];
    let mut found = 0;
    for _ in 0..8 {
        let c = draw();
        if !excluded.contains(&c) && !candidates[..found].contains(&c) {
            candidates[found] = c;
            found += 1;
            if found == 2 {
                break;
            }
        }
    }
    if found == 0 {
        // Every draw hit an excluded backend: fall back to any eligible one.
        return (0..weights.len()).find(|i| weights[*i] > 0.0 && !excluded.contains(i));
    }
    if found == 1 {
        return Some(candidates[0]);
    }
    let cost = |i: usize| {
        (load.latency_ns(i) as f64 + LATENCY_FLOOR_NS) * (load.active(i) as f64 + 1.0) / weights[i]
    };
    let (a, b) = (candidates[0], candidates[1]);
    Some(if cost(b) < cost(a) { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::{StaticLoad, schedule};

    #[test]
    fn prefers_the_faster_backend() {
        let weights = [1.0, 1.0];
        let table = schedule::build(&weights);
        let load = StaticLoad {
            active: vec![0, 0],
            latency_ns: vec![50_000_000, 1_000_000],
        };
        let mut counts = [0; 2];
        for r in 0..2000 {
            counts[pick(&table, &weights, &load, r, &[]).unwrap()] += 1;
        }
        assert!(counts[1] > counts[0] * 2, "{counts:?}");
    }
}

//! Weighted least connections: the eligible backend with the fewest active connections per unit of
//! effective weight. Ties rotate through a moving start offset so equal backends share the work.
//! Cost is one pass over the pool per pick.

use super::LoadSource;

/// Picks the backend minimising `(active + 1) / weight`.
pub fn pick(weights: &[f64], load: &impl LoadSource, start: u64, excluded: &[usize]) -> Option<usize> {
    let n = weights.len();
    if n == 0 {
        return None;
    }
    let offset = (start % n as u64) as usize;
    let mut best: Option<(usize, f64, f64)> = None;
    // Two plain ranges rather than `(offset + step) % n`: no division per backend.
    for index in (offset..n).chain(0..offset) {
        let weight = weights[index];
        if weight <= 0.0 || excluded.contains(&index) {
            continue;
        }
        let demand = load.active(index) as f64 + 1.0;
        // demand / weight < best_demand / best_weight, without a division.
        let better = match best {
            None => true,
            Some((_, best_demand, best_weight)) => demand * best_weight < best_demand * weight,
        };
        if better {
            best = Some((index, demand, weight));
        }
    }
    best.map(|(index, _, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::StaticLoad;

    #[test]
    fn picks_the_least_loaded_per_weight() {
        let load = StaticLoad {
            active: vec![5, 2, 9],
            latency_ns: vec![],
        };
        assert_eq!(pick(&[1.0, 1.0, 1.0], &load, 0, &[]), Some(1));
        // Backend 2 has 10 per 4 units = 2.5 per unit; backend 1 has 3 per unit.
        assert_eq!(pick(&[1.0, 1.0, 4.0], &load, 0, &[]), Some(2));
    }

    #[test]
    fn ties_rotate() {
        let load = StaticLoad::default();
        let picks: Vec<_> = (0..3)
            .map(|s| pick(&[1.0, 1.0, 1.0], &load, s, &[]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }
}

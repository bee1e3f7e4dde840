//! Effective weights of a pool's backends, solved from each backend's configured weight and its
//! VM's phase.
//!
//! - A stable backend keeps its weight; a ramping one gets `weight × ramp factor`.
//! - A draining backend must receive `share × its normal share` of new work, where its normal share
//!   is `weight / Σ weights`. Its effective weight is solved so that this holds exactly, whatever the
//!   weights of the others: with `S` the sum of the draining backends' target shares and `O` the sum
//!   of the others' effective weights, `eff = target_share × O / (1 − S)`.
//! - If every available backend drains (`O = 0`), they keep their configured weights: handover
//!   never refuses service because of a migration.
//!
//! No effective weight ever exceeds the configured weight.

/// How one backend takes part in weight solving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightState {
    /// Configured weight times this factor in `(0, 1]` (1.0 when stable, the ramp factor when ramping).
    Scaled(f64),
    /// Draining: should receive `share` (in `[0, 1]`) of its normal share of new work.
    Draining {
        /// Fraction of the normal share.
        share: f64,
    },
    /// Not eligible for new work at all (down).
    Excluded,
}

/// One backend's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightInput {
    /// Configured weight.
    pub weight: u32,
    /// Phase-derived state.
    pub state: WeightState,
}

/// Solved weights of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Solved {
    /// Effective weight of each backend, in input order; 0 means no new work.
    pub weights: Vec<f64>,
    /// Every available backend is draining, so they serve new work anyway.
    pub fallback: bool,
}

/// Solves the effective weights of a pool.
pub fn solve(inputs: &[WeightInput]) -> Solved {
    let normal_total: f64 = inputs
        .iter()
        .filter(|i| i.state != WeightState::Excluded)
        .map(|i| f64::from(i.weight))
        .sum();
    let others: f64 = inputs
        .iter()
        .map(|i| match i.state {
            WeightState::Scaled(f) => f64::from(i.weight) * f.clamp(0.0, 1.0),
            _ => 0.0,
        })
        .sum();
    let draining_share: f64 = inputs
        .iter()
        .map(|i| match i.state {
            WeightState::Draining { share } => share.clamp(0.0, 1.0) * f64::from(i.weight) / normal_total,
            _ => 0.0,
        })
        .sum();
    let any_draining = inputs
        .iter()
        .any(|i| matches!(i.state, WeightState::Draining { .. }));
    let fallback = any_draining && others <= 0.0;

    let weights = inputs
        .iter()
        .map(|i| {
            let w = f64::from(i.weight);
            match i.state {
                WeightState::Excluded => 0.0,
                WeightState::Scaled(f) => w * f.clamp(0.0, 1.0),
                WeightState::Draining { .. } if fallback => w,
                WeightState::Draining { share } => {
                    let target_share = share.clamp(0.0, 1.0) * w / normal_total;
                    if target_share <= 0.0 || draining_share >= 1.0 {
                        0.0
                    } else {
                        (target_share * others / (1.0 - draining_share)).min(w)
                    }
                }
            }
        })
        .collect();
    Solved { weights, fallback }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input(weight: u32, state: WeightState) -> WeightInput {
        WeightInput { weight, state }
    }

    fn shares(weights: &[f64]) -> Vec<f64> {
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }

    #[test]
    fn full_drain_gives_zero_weight() {
        let solved = solve(&[
            input(1, WeightState::Draining { share: 0.0 }),
            input(1, WeightState::Scaled(1.0)),
            input(1, WeightState::Scaled(1.0)),
        ]);
        assert_eq!(solved.weights, vec![0.0, 1.0, 1.0]);
        assert!(!solved.fallback);
    }

    #[test]
    fn partial_drain_gives_the_target_fraction_of_the_normal_share() {
        let solved = solve(&[
            input(1, WeightState::Draining { share: 0.25 }),
            input(1, WeightState::Scaled(1.0)),
            input(1, WeightState::Scaled(1.0)),
        ]);
        let s = shares(&solved.weights);
        assert!((s[0] - 0.25 / 3.0).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn partial_drain_holds_with_unequal_weights() {
        let solved = solve(&[
            input(3, WeightState::Draining { share: 0.5 }),
            input(1, WeightState::Scaled(1.0)),
            input(6, WeightState::Scaled(1.0)),
        ]);
        let s = shares(&solved.weights);
        assert!((s[0] - 0.5 * 0.3).abs() < 1e-12, "{s:?}");
        assert!((s[2] / s[1] - 6.0).abs() < 1e-9, "others keep their ratio: {s:?}");
    }

    #[test]
    fn every_backend_draining_still_serves() {
        let solved = solve(&[
            input(2, WeightState::Draining { share: 0.0 }),
            input(1, WeightState::Draining { share: 0.0 }),
        ]);
        assert!(solved.fallback);
        assert_eq!(solved.weights, vec![2.0, 1.0]);
    }

    #[test]
    fn excluded_backends_get_nothing_and_do_not_trigger_fallback() {
        let solved = solve(&[
            input(1, WeightState::Excluded),
            input(1, WeightState::Draining { share: 0.0 }),
        ]);
        assert!(solved.fallback, "the only available backend drains: it serves");
        assert_eq!(solved.weights, vec![0.0, 1.0]);
    }

    #[test]
    fn ramping_scales_the_weight() {
        let solved = solve(&[
            input(4, WeightState::Scaled(0.5)),
            input(4, WeightState::Scaled(1.0)),
        ]);
        assert_eq!(solved.weights, vec![2.0, 4.0]);
    }

    fn arb_state() -> impl Strategy<Value = WeightState> {
        prop_oneof![
            (0.0f64..=1.0).prop_map(WeightState::Scaled),
            (0.0f64..=1.0).prop_map(|share| WeightState::Draining { share }),
            Just(WeightState::Excluded),
        ]
    }

    proptest! {
        #[test]
        fn effective_weight_never_exceeds_the_configured_weight(
            inputs in proptest::collection::vec((1u32..10_000, arb_state()), 1..40)
        ) {
            let inputs: Vec<WeightInput> = inputs.into_iter().map(|(w, s)| input(w, s)).collect();
            let solved = solve(&inputs);
            for (i, (eff, input)) in solved.weights.iter().zip(&inputs).enumerate() {
                prop_assert!(eff.is_finite() && *eff >= 0.0, "backend {i}: {eff}");
                prop_assert!(*eff <= f64::from(input.weight) + 1e-9, "backend {i}: {eff} > {}", input.weight);
            }
            let available = inputs.iter().any(|i| i.state != WeightState::Excluded);
            let total: f64 = solved.weights.iter().sum();
            if available && !solved.fallback {
                // Draining backends get exactly their target share of new work.
                let normal: f64 = inputs.iter().filter(|i| i.state != WeightState::Excluded).map(|i| f64::from(i.weight)).sum();
                for (eff, input) in solved.weights.iter().zip(&inputs) {
                    if let WeightState::Draining { share } = input.state
                        && total > 0.0
                    {
                        let want = share * f64::from(input.weight) / normal;
                        prop_assert!((eff / total - want).abs() < 1e-6, "got {} want {want}", eff / total);
                    }
                }
            }
            if solved.fallback {
                prop_assert!(total > 0.0, "fallback must serve");
            }
        }
    }
}

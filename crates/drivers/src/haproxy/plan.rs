//! What handover wants each HAProxy server to be, from the VMs' desired states: pure, so it is
//! tested without HAProxy.
//!
//! Per HAProxy backend that holds a migrating VM:
//! - a full drain (target 0) is `set server B/S state drain`, other weights untouched;
//! - a partial target, a linear drain or a ramp needs exact shares, which HAProxy's `N%` cannot give
//!   (it is integer arithmetic on the configured weight: 25% of weight 1 is 0), so every server of
//!   the backend gets an absolute weight solved by `core::weights`, scaled into HAProxy's 0..256;
//! - when the backend's VMs are all stable again, every server it touched goes back to its
//!   configured weight and out of drain. Backends handover never touched are left alone.

use std::net::SocketAddr;

use handover_core::command::Effect;
use handover_core::weights::{self, WeightInput, WeightState};

/// HAProxy's largest weight.
pub const MAX_WEIGHT: u32 = 256;

/// A server as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    /// Configured weight.
    pub initial_weight: u32,
    /// Its VM's effect now (stable for servers of no VM).
    pub effect: Effect,
    /// The address it must have.
    pub address: SocketAddr,
}

/// What a server must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Administrative drain.
    pub draining: bool,
    /// Weight.
    pub weight: u32,
    /// Address.
    pub address: SocketAddr,
}

/// Targets of the servers of one backend, in input order; `None` when nothing in the backend is
/// migrating and handover never touched it.
pub fn plan_backend(servers: &[PlanInput], touched: bool) -> Option<Vec<Target>> {
    let active = servers.iter().any(|s| s.effect != Effect::STABLE);
    if !active && !touched {
        return None;
    }
    let at_rest = |s: &PlanInput| Target {
        draining: false,
        weight: s.initial_weight,
        address: s.address,
    };
    if !active {
        return Some(servers.iter().map(at_rest).collect());
    }
    let inputs: Vec<WeightInput> = servers
        .iter()
        .map(|s| WeightInput {
            weight: s.initial_weight,
            state: s.effect.state,
        })
        .collect();
    let solved = weights::solve(&inputs);
    let full_drain_only = !solved.fallback
        && servers.iter().all(|s| match s.effect.state {
            WeightState::Scaled(f) => f >= 1.0,
            WeightState::Draining { share } => share <= 0.0,
            WeightState::Excluded => true,
        });
    if full_drain_only {
        return Some(
            servers
                .iter()
                .map(|s| Target {
                    draining: matches!(s.effect.state, WeightState::Draining { .. }),
                    ..at_rest(s)
                })
                .collect(),
        );
    }
    let max_initial = servers.iter().map(|s| s.initial_weight).max().unwrap_or(1).max(1);
    let scale = f64::from((MAX_WEIGHT / max_initial).max(1));
    Some(
        servers
            .iter()
            .zip(&solved.weights)
            .map(|(s, w)| {
                let weight = (w * scale).round().clamp(0.0, f64::from(MAX_WEIGHT)) as u32;
                // A positive share must not round to nothing.
                let weight = if *w > 0.0 { weight.max(1) } else { weight };
                let draining =
                    !solved.fallback && matches!(s.effect.state, WeightState::Draining { .. }) && *w <= 0.0;
                Target {
                    draining,
                    weight,
                    address: s.address,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use handover_core::phase::Phase;

    use super::*;

    fn server(weight: u32, state: WeightState) -> PlanInput {
        let phase = match state {
            WeightState::Draining { .. } => Phase::Draining,
            WeightState::Scaled(f) if f < 1.0 => Phase::Ramping,
            _ => Phase::Stable,
        };
        PlanInput {
            initial_weight: weight,
            effect: Effect {
                state,
                phase,
                moving: false,
            },
            address: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn an_untouched_backend_at_rest_is_left_alone() {
        assert_eq!(plan_backend(&[server(1, WeightState::Scaled(1.0))], false), None);
        let restored = plan_backend(&[server(3, WeightState::Scaled(1.0))], true).unwrap();
        assert_eq!((restored[0].draining, restored[0].weight), (false, 3));
    }

    #[test]
    fn a_full_drain_uses_the_drain_state_and_keeps_weights() {
        let t = plan_backend(
            &[
                server(1, WeightState::Draining { share: 0.0 }),
                server(2, WeightState::Scaled(1.0)),
            ],
            false,
        )
        .unwrap();
        assert_eq!((t[0].draining, t[0].weight), (true, 1));
        assert_eq!((t[1].draining, t[1].weight), (false, 2));
    }

    #[test]
    fn a_partial_target_is_exact_with_scaled_weights() {
        let t = plan_backend(
            &[
                server(1, WeightState::Draining { share: 0.25 }),
                server(1, WeightState::Scaled(1.0)),
                server(1, WeightState::Scaled(1.0)),
            ],
            false,
        )
        .unwrap();
        let total: u32 = t.iter().map(|t| t.weight).sum();
        let share = f64::from(t[0].weight) / f64::from(total);
        assert!((share - 0.25 / 3.0).abs() < 0.005, "{t:?}");
        assert!(t.iter().all(|t| !t.draining && t.weight <= MAX_WEIGHT));
    }

    #[test]
    fn a_ramp_step_scales_the_weight() {
        let t = plan_backend(
            &[
                server(1, WeightState::Scaled(0.1)),
                server(1, WeightState::Scaled(1.0)),
            ],
            true,
        )
        .unwrap();
        assert_eq!((t[0].weight, t[1].weight), (26, 256));
    }

    #[test]
    fn every_server_draining_still_serves() {
        let t = plan_backend(
            &[
                server(1, WeightState::Draining { share: 0.0 }),
                server(1, WeightState::Draining { share: 0.0 }),
            ],
            false,
        )
        .unwrap();
        assert!(t.iter().all(|t| !t.draining && t.weight > 0), "{t:?}");
    }
}

//! A balancing policy over a migration's timeline, read through handover's own code: the phase
//! command the balancer holds at each moment goes through `core::command::effect` (drain shape,
//! adaptive level, ramp, deadline) and `core::weights::solve` (exact target shares), exactly as in
//! the proxy.

use handover_core::adaptive::Level;
use handover_core::command::{Effect, Policies, effect};
use handover_core::drain::DrainPolicy;
use handover_core::phase::{EndReason, PhaseCommand};
use handover_core::ramp::RampPolicy;
use handover_core::weights::{self, WeightInput, WeightState};

use crate::scenario::PolicySpec;

/// When the balancer heard what.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The prepare.
    pub notice_at: f64,
    /// The copy began.
    pub started_at: f64,
    /// The migration ended (completed after the blackout, or cancelled).
    pub ended_at: Option<f64>,
    /// How it ended.
    pub reason: EndReason,
    /// The adaptive controller's level changes: (from when, level), in time order.
    pub levels: Vec<(f64, Level)>,
}

impl Timeline {
    /// A timeline with no level changes.
    pub fn new(notice_at: f64, started_at: f64) -> Self {
        Self {
            notice_at,
            started_at,
            ended_at: None,
            reason: EndReason::Completed,
            levels: Vec::new(),
        }
    }

    /// The level at `t` (none before the controller's first change).
    pub fn level_at(&self, t: f64) -> Option<Level> {
        self.levels
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, level)| *level)
    }

    /// Records a level from `t` on, when it differs from the one in force.
    pub fn set_level(&mut self, t: f64, level: Level) {
        if self.level_at(t) != Some(level) {
            self.levels.push((t, level));
        }
    }
}

/// A policy ready to be evaluated.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its specification.
    pub spec: PolicySpec,
    drain: DrainPolicy,
    ramp: RampPolicy,
}

impl Policy {
    /// From a scenario's specification.
    pub fn new(spec: &PolicySpec) -> Self {
        let drain = DrainPolicy {
            target: spec.target,
            shape: spec.shape,
            window: spec.drain_window.0,
            keep: spec.keep,
            adaptive: spec.adaptive_drain(),
            long_lived_close_after: None,
        };
        let ramp = RampPolicy {
            window: spec.ramp_window.0,
            aggression: spec.aggression,
            min_percent: spec.min_percent,
        };
        Self {
            spec: spec.clone(),
            drain,
            ramp,
        }
    }

    /// The drain policy (with its adaptive settings).
    pub fn drain(&self) -> &DrainPolicy {
        &self.drain
    }

    /// The migrating backend's effect at time `t`.
    pub fn effect_at(&self, t: f64, timeline: &Timeline) -> Effect {
        if !self.spec.aware || t < timeline.notice_at {
            return Effect::STABLE;
        }
        let policies = Policies {
            drain: &self.drain,
            ramp: &self.ramp,
            restore: self.spec.restore,
        };
        let ms = |seconds: f64| (seconds.max(0.0) * 1000.0) as u64;
        match timeline.ended_at {
            Some(end) if t >= end => effect(
                policies,
                PhaseCommand::Ramp {
                    elapsed_ms: 0,
                    reason: timeline.reason,
                },
                ms(t - end),
            ),
            _ => {
                let command = PhaseCommand::Drain {
                    elapsed_ms: 0,
                    migrating: t >= timeline.started_at,
                    deadline_in_ms: u64::MAX / 4,
                    level: timeline.level_at(t),
                };
                effect(policies, command, ms(t - timeline.notice_at))
            }
        }
    }

    /// Effective weights of `count` equal backends, backend 0 migrating, at time `t`.
    pub fn weights_at(&self, t: f64, timeline: &Timeline, count: usize) -> (Vec<f64>, bool) {
        let migrating = self.effect_at(t, timeline);
        let inputs: Vec<WeightInput> = (0..count)
            .map(|i| WeightInput {
                weight: 1,
                state: if i == 0 {
                    migrating.state
                } else {
                    WeightState::Scaled(1.0)
                },
            })
            .collect();
        (weights::solve(&inputs).weights, migrating.moving)
    }

    /// The migrating backend's share of new work at time `t`.
    pub fn share_at(&self, t: f64, timeline: &Timeline, count: usize) -> f64 {
        let (weights, _) = self.weights_at(t, timeline, count);
        let total: f64 = weights.iter().sum();
        if total > 0.0 { weights[0] / total } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scenario::Dur;

    fn spec(aware: bool, target: f64, ramp_window: u64) -> PolicySpec {
        toml::from_str::<PolicySpec>(&format!("name = \"p\"\naware = {aware}\ntarget = {target}"))
            .map(|mut p| {
                p.ramp_window = Dur(Duration::from_secs(ramp_window));
                p
            })
            .unwrap()
    }

    #[test]
    fn shares_follow_the_timeline() {
        let mut timeline = Timeline::new(10.0, 12.0);
        timeline.ended_at = Some(20.0);
        let drain = Policy::new(&spec(true, 0.0, 10));
        assert!((drain.share_at(5.0, &timeline, 4) - 0.25).abs() < 1e-12);
        assert_eq!(drain.share_at(11.0, &timeline, 4), 0.0);
        let mid_ramp = drain.share_at(25.0, &timeline, 4);
        assert!(mid_ramp > 0.05 && mid_ramp < 0.2, "{mid_ramp}");
        assert!((drain.share_at(31.0, &timeline, 4) - 0.25).abs() < 1e-12);
        let reduce = Policy::new(&spec(true, 0.25, 0));
        assert!((reduce.share_at(15.0, &timeline, 4) - 0.0625).abs() < 1e-9);
        let unaware = Policy::new(&spec(false, 0.0, 0));
        assert!((unaware.share_at(15.0, &timeline, 4) - 0.25).abs() < 1e-12);
    }
}

//! What a [`PhaseCommand`] means for one backend's share of new work over time, under a drain and
//! ramp policy. Every balancer that applies commands (the embedded proxy, the HAProxy and nginx
//! drivers) uses this one function, so they all drain, ramp and restore the same way.

use crate::drain::DrainPolicy;
use crate::model::RestoreMode;
use crate::phase::{EndReason, Phase, PhaseCommand};
use crate::ramp::RampPolicy;
use crate::weights::WeightState;

/// A balancer restores a drained VM by itself this long after its deadline if no command came.
pub const LOCAL_DEADLINE_GRACE_MS: u64 = 1000;

/// The policies a command is read with.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'a> {
    /// Drain policy.
    pub drain: &'a DrainPolicy,
    /// Ramp policy.
    pub ramp: &'a RampPolicy,
    /// Restore after failed, cancelled or deadline.
    pub restore: RestoreMode,
}

/// How a backend takes part at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effect {
    /// Its input to weight solving.
    pub state: WeightState,
    /// The phase it shows.
    pub phase: Phase,
    /// The weight still changes with time (so it must be recomputed later).
    pub moving: bool,
}

impl Effect {
    /// Full share, stable.
    pub const STABLE: Effect = Effect {
        state: WeightState::Scaled(1.0),
        phase: Phase::Stable,
        moving: false,
    };
}

/// The effect of `command`, received `since_ms` ago.
pub fn effect(policies: Policies<'_>, command: PhaseCommand, since_ms: u64) -> Effect {
    match command {
        PhaseCommand::Stable => Effect::STABLE,
        PhaseCommand::Drain {
            elapsed_ms,
            migrating,
            deadline_in_ms,
            level,
        } => {
            if since_ms >= deadline_in_ms.saturating_add(LOCAL_DEADLINE_GRACE_MS) {
                // Nobody ended this migration: restore as the policy says for a missed deadline.
                let ramp_elapsed = since_ms - deadline_in_ms - LOCAL_DEADLINE_GRACE_MS;
                return ramp(policies, ramp_elapsed, EndReason::Deadline);
            }
            Effect {
                state: WeightState::Draining {
                    share: policies
                        .drain
                        .share_with(elapsed_ms.saturating_add(since_ms), level),
                },
                phase: if migrating {
                    Phase::Migrating
                } else {
                    Phase::Draining
                },
                // Moving until the local deadline, which must be noticed.
                moving: true,
            }
        }
        PhaseCommand::Ramp { elapsed_ms, reason } => {
            ramp(policies, elapsed_ms.saturating_add(since_ms), reason)
        }
    }
}

fn ramp(policies: Policies<'_>, elapsed: u64, reason: EndReason) -> Effect {
    if (reason != EndReason::Completed && policies.restore == RestoreMode::Immediate)
        || policies.ramp.is_done_at(elapsed)
    {
        Effect::STABLE
    } else {
        Effect {
            state: WeightState::Scaled(policies.ramp.factor_at(elapsed)),
            phase: Phase::Ramping,
            moving: true,
        }
    }
}

/// The same command `by` milliseconds later: elapsed times advanced, time to the deadline reduced
/// (to save it, or to pass it on without restarting its clocks).
pub fn aged(command: PhaseCommand, by: u64) -> PhaseCommand {
    match command {
        PhaseCommand::Drain {
            elapsed_ms,
            migrating,
            deadline_in_ms,
            level,
        } => PhaseCommand::Drain {
            elapsed_ms: elapsed_ms.saturating_add(by),
            migrating,
            deadline_in_ms: deadline_in_ms.saturating_sub(by),
            level,
        },
        PhaseCommand::Ramp { elapsed_ms, reason } => PhaseCommand::Ramp {
            elapsed_ms: elapsed_ms.saturating_add(by),
            reason,
        },
        PhaseCommand::Stable => PhaseCommand::Stable,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::adaptive::{AdaptiveDrain, Level};
    use crate::model::{DrainShape, Keep};

    fn policies<'a>(drain: &'a DrainPolicy, ramp: &'a RampPolicy, restore: RestoreMode) -> Policies<'a> {
        Policies { drain, ramp, restore }
    }

    #[test]
    fn a_drain_is_restored_locally_after_its_deadline() {
        let drain = DrainPolicy::default();
        let ramp = RampPolicy {
            window: Duration::from_secs(10),
            ..RampPolicy::default()
        };
        let p = policies(&drain, &ramp, RestoreMode::Ramp);
        let command = PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: true,
            deadline_in_ms: 5_000,
            level: None,
        };
        assert_eq!(effect(p, command, 5_999).phase, Phase::Migrating);
        let restored = effect(p, command, 6_000);
        assert_eq!(restored.phase, Phase::Ramping);
        assert_eq!(effect(p, command, 16_000), Effect::STABLE);
    }

    #[test]
    fn a_linear_drain_continues_from_its_elapsed_time() {
        let drain = DrainPolicy {
            target: 0.0,
            shape: DrainShape::Linear,
            window: Duration::from_secs(10),
            keep: Keep::Connections,
            adaptive: AdaptiveDrain::default(),
            long_lived_close_after: None,
        };
        let ramp = RampPolicy::default();
        let p = policies(&drain, &ramp, RestoreMode::Ramp);
        let command = PhaseCommand::Drain {
            elapsed_ms: 5_000,
            migrating: false,
            deadline_in_ms: 60_000,
            level: None,
        };
        assert_eq!(effect(p, command, 0).state, WeightState::Draining { share: 0.5 });
    }

    #[test]
    fn an_adaptive_drain_applies_the_commanded_level_and_never_exceeds_its_target() {
        let drain = DrainPolicy {
            target: 0.5,
            adaptive: AdaptiveDrain {
                enabled: true,
                ..AdaptiveDrain::default()
            },
            ..DrainPolicy::default()
        };
        let ramp = RampPolicy::default();
        let p = policies(&drain, &ramp, RestoreMode::Ramp);
        let drain_at = |level| PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: true,
            deadline_in_ms: 60_000,
            level,
        };
        for (level, share) in [
            (None, 0.5),
            (Some(Level::FULL), 0.5),
            (Some(Level::new(0.2)), 0.1),
            (Some(Level::ZERO), 0.0),
        ] {
            assert_eq!(
                effect(p, drain_at(level), 0).state,
                WeightState::Draining { share }
            );
        }
    }

    #[test]
    fn failures_restore_at_once_when_the_policy_says_immediate() {
        let drain = DrainPolicy::default();
        let ramp = RampPolicy::default();
        let command = PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Failed,
        };
        assert_eq!(
            effect(policies(&drain, &ramp, RestoreMode::Immediate), command, 0),
            Effect::STABLE
        );
        assert_eq!(
            effect(policies(&drain, &ramp, RestoreMode::Ramp), command, 0).phase,
            Phase::Ramping
        );
    }

    #[test]
    fn aging_moves_elapsed_and_deadline() {
        let command = PhaseCommand::Drain {
            elapsed_ms: 100,
            migrating: false,
            deadline_in_ms: 1_000,
            level: Some(Level::new(0.5)),
        };
        assert_eq!(
            aged(command, 300),
            PhaseCommand::Drain {
                elapsed_ms: 400,
                migrating: false,
                deadline_in_ms: 700,
                level: Some(Level::new(0.5)),
            }
        );
    }
}

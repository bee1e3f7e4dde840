//! What a notice (or the passing of time) makes of a VM's fleet-wide state, decided with `core`'s
//! migration registry so that a fleet moves through the same phases, deadlines, ramps and capacity
//! guard as a single node. Pure: the caller reads etcd, decides here, and writes the result with a
//! compare-and-swap.
//!
//! The registry is built for one decision from what etcd holds: the pools of every node that serves
//! the VM (deadline: the shortest; ramp: the longest; the guard of each pool) and the phases of the
//! other VMs in migration (for the guard).

use std::collections::BTreeMap;
use std::time::Duration;

use handover_core::config::{GuardAction, GuardConfig};
use handover_core::migration::{
    NoticeError, NoticeOptions, Outcome, PoolTopology, Registry, RegistryDefaults, RegistrySnapshot, Topology,
};
use handover_core::model::VmId;
use handover_core::phase::{Notice, Phase, VmState};
use handover_core::time::Millis;

use crate::records::ServesRecord;

/// The result of a notice: what to reply and what to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What the registry said (applied, unchanged).
    pub outcome: Outcome,
    /// Phase before.
    pub previous: Phase,
    /// The new state to write (`None`: nothing to write).
    pub state: Option<VmState>,
}

/// What time does to a VM's fleet-wide state.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Write this state (the deadline passed: ramping back).
    Write(VmState),
    /// The VM is stable again: delete its notice.
    Delete,
}

fn registry(
    vm: &VmId,
    current: Option<&VmState>,
    others: &BTreeMap<VmId, VmState>,
    serving: &[ServesRecord],
    default_deadline: Duration,
) -> Registry {
    let pools = serving
        .iter()
        .flat_map(|s| {
            s.pools.iter().map(move |p| PoolTopology {
                name: format!("{}/{}", s.node, p.name),
                backend_vms: p.vms.clone(),
                guard: GuardConfig {
                    min_active: p.min_active,
                    max_concurrent: p.max_concurrent,
                    on_violation: GuardAction::Refuse,
                },
                deadline: Duration::from_millis(p.deadline_ms),
                ramp_window: Duration::from_millis(p.ramp_ms),
                restore: p.restore,
                // The fleet decides phases; a level comes with the state the node running the
                // VM's controller writes.
                adaptive: Default::default(),
            })
        })
        .collect();
    let mut registry = Registry::new(
        Topology { pools },
        RegistryDefaults {
            deadline: default_deadline,
            history_limit: 16,
        },
    );
    // Migration ids are local bookkeeping: the fleet's states carry none.
    let strip = |s: &VmState| VmState {
        migration: None,
        queued_since: None,
        ..s.clone()
    };
    let mut vms: Vec<(VmId, VmState)> = others
        .iter()
        .filter(|(v, _)| *v != vm)
        .map(|(v, s)| (v.clone(), strip(s)))
        .collect();
    if let Some(current) = current {
        vms.push((vm.clone(), strip(current)));
    }
    registry.restore(RegistrySnapshot {
        vms,
        queue: Vec::new(),
        history: Vec::new(),
        next_id: 1,
    });
    registry
}

/// What etcd holds around one VM's decision.
#[derive(Debug, Clone, Copy)]
pub struct Fleetwide<'a> {
    /// The other VMs in migration, with their fleet-wide state (for the capacity guard).
    pub others: &'a BTreeMap<VmId, VmState>,
    /// The nodes that serve the VM, with their pools.
    pub serving: &'a [ServesRecord],
    /// Deadline when no serving pool gives one (`migration.deadline`).
    pub default_deadline: Duration,
}

/// Decides a notice for `vm` whose fleet-wide state is `current` (`None`: stable).
pub fn decide(
    vm: &VmId,
    notice: Notice,
    now: Millis,
    options: NoticeOptions,
    current: Option<&VmState>,
    fleet: Fleetwide<'_>,
) -> Result<Decision, NoticeError> {
    let mut registry = registry(vm, current, fleet.others, fleet.serving, fleet.default_deadline);
    let previous = registry.phase(vm);
    let outcome = registry.apply(vm, notice, now, options)?;
    let state = match &outcome {
        Outcome::Applied(_) => registry.vm(vm).map(|s| VmState {
            migration: None,
            ..s.clone()
        }),
        Outcome::Unchanged { .. } | Outcome::Queued { .. } => None,
    };
    Ok(Decision {
        outcome,
        previous,
        state,
    })
}

/// What time makes of `vm`'s fleet-wide state at `now`.
pub fn due(
    vm: &VmId,
    current: &VmState,
    now: Millis,
    serving: &[ServesRecord],
    default_deadline: Duration,
) -> Due {
    let mut registry = registry(vm, Some(current), &BTreeMap::new(), serving, default_deadline);
    if registry.tick(now).is_empty() {
        return Due::Nothing;
    }
    match registry.vm(vm) {
        Some(s) if s.phase != Phase::Stable => Due::Write(VmState {
            migration: None,
            ..s.clone()
        }),
        _ => Due::Delete,
    }
}

#[cfg(test)]
mod tests {
    use handover_core::model::RestoreMode;
    use handover_core::phase::EndReason;

    use super::*;
    use crate::records::ServedPool;

    fn fw<'a>(others: &'a BTreeMap<VmId, VmState>, serving: &'a [ServesRecord]) -> Fleetwide<'a> {
        Fleetwide {
            others,
            serving,
            default_deadline: Duration::from_secs(600),
        }
    }

    fn vm(name: &str) -> VmId {
        VmId::new(name).unwrap()
    }

    fn serving(node: &str, deadline_ms: u64, ramp_ms: u64, max_concurrent: Option<usize>) -> ServesRecord {
        ServesRecord {
            node: node.to_string(),
            pools: vec![ServedPool {
                name: "web".into(),
                vms: vec![vm("vm-a"), vm("vm-b"), vm("vm-c")],
                deadline_ms,
                ramp_ms,
                restore: RestoreMode::Ramp,
                min_active: 0,
                max_concurrent,
                drained_threshold: 0,
            }],
        }
    }

    #[test]
    fn prepare_takes_the_shortest_deadline_of_the_serving_nodes() {
        let nodes = [
            serving("lb-1", 60_000, 1000, None),
            serving("lb-2", 30_000, 5000, None),
        ];
        let d = decide(
            &vm("vm-a"),
            Notice::Prepare,
            1000,
            NoticeOptions::default(),
            None,
            fw(&BTreeMap::new(), &nodes),
        )
        .unwrap();
        let state = d.state.unwrap();
        assert_eq!(d.previous, Phase::Stable);
        assert_eq!(state.phase, Phase::Draining);
        assert_eq!(state.deadline_at, Some(31_000));
        assert_eq!(state.migration, None);
    }

    #[test]
    fn completed_ramps_for_the_longest_window_then_time_deletes_the_notice() {
        let nodes = [
            serving("lb-1", 60_000, 1000, None),
            serving("lb-2", 60_000, 5000, None),
        ];
        let prepare = |now| {
            decide(
                &vm("vm-a"),
                Notice::Prepare,
                now,
                NoticeOptions::default(),
                None,
                fw(&BTreeMap::new(), &nodes),
            )
            .unwrap()
            .state
            .unwrap()
        };
        let draining = prepare(0);
        let completed = decide(
            &vm("vm-a"),
            Notice::Completed,
            2000,
            NoticeOptions::default(),
            Some(&draining),
            fw(&BTreeMap::new(), &nodes),
        )
        .unwrap()
        .state
        .unwrap();
        assert_eq!(completed.phase, Phase::Ramping);
        assert_eq!(completed.ramp_until, Some(7000));
        assert_eq!(
            due(&vm("vm-a"), &completed, 6999, &nodes, Duration::from_secs(600)),
            Due::Nothing
        );
        assert_eq!(
            due(&vm("vm-a"), &completed, 7000, &nodes, Duration::from_secs(600)),
            Due::Delete
        );
        // A drained VM whose deadline passed ramps back, ended by the deadline.
        match due(&vm("vm-a"), &draining, 60_000, &nodes, Duration::from_secs(600)) {
            Due::Write(state) => {
                assert_eq!(state.phase, Phase::Ramping);
                assert_eq!(state.end_reason, Some(EndReason::Deadline));
            }
            other => panic!("expected a deadline, got {other:?}"),
        }
    }

    #[test]
    fn an_end_notice_without_a_migration_and_the_guard_are_refused() {
        let nodes = [serving("lb-1", 60_000, 1000, Some(1))];
        let err = decide(
            &vm("vm-a"),
            Notice::Completed,
            0,
            NoticeOptions::default(),
            None,
            fw(&BTreeMap::new(), &nodes),
        )
        .unwrap_err();
        assert!(matches!(err, NoticeError::NotMigrating { .. }));
        let draining = decide(
            &vm("vm-b"),
            Notice::Prepare,
            0,
            NoticeOptions::default(),
            None,
            fw(&BTreeMap::new(), &nodes),
        )
        .unwrap()
        .state
        .unwrap();
        let others = BTreeMap::from([(vm("vm-b"), draining)]);
        let err = decide(
            &vm("vm-a"),
            Notice::Prepare,
            0,
            NoticeOptions::default(),
            None,
            fw(&others, &nodes),
        )
        .unwrap_err();
        assert!(matches!(err, NoticeError::Refused { .. }), "{err}");
    }

    #[test]
    fn a_repeated_prepare_writes_nothing() {
        let nodes = [serving("lb-1", 60_000, 1000, None)];
        let draining = decide(
            &vm("vm-a"),
            Notice::Prepare,
            0,
            NoticeOptions::default(),
            None,
            fw(&BTreeMap::new(), &nodes),
        )
        .unwrap()
        .state
        .unwrap();
        let again = decide(
            &vm("vm-a"),
            Notice::Prepare,
            10,
            NoticeOptions::default(),
            Some(&draining),
            fw(&BTreeMap::new(), &nodes),
        )
        .unwrap();
        assert_eq!(again.state, None);
        assert!(matches!(again.outcome, Outcome::Unchanged { .. }));
    }
}

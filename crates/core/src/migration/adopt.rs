//! Taking a VM's phase from elsewhere: in a fleet, the phase of a VM is the shared store's (etcd),
//! and each node's registry *adopts* it rather than deciding it. The registry keeps its own history
//! record of the migration, the deadline it was given (so the node restores the VM locally at that
//! deadline even when the store cannot be reached), and its own ramp length (each node ramps per
//! its own pools).

use super::{Cause, Registry, Transition};
use crate::model::VmId;
use crate::phase::{EndReason, Notice, Phase, VmState};
use crate::time::Millis;

impl Registry {
    /// Makes `state` (`None`: stable, the store has no notice) this registry's state of `vm`.
    /// Returns the transition when the phase changed; the caller applies
    /// [`Registry::command_for`] to its balancers either way.
    pub fn adopt(&mut self, vm: &VmId, state: Option<VmState>, now: Millis) -> Option<Transition> {
        let local = self.vms.get(vm).cloned();
        let from = local.as_ref().map_or(Phase::Stable, |s| s.phase);
        let Some(mut state) = state else {
            return match from {
                // The store forgot a migration this node still holds drained (it ended while this
                // node was away): end it here too, with the ramp.
                Phase::Draining | Phase::Migrating => {
                    Some(self.end(vm, EndReason::Completed, now, Cause::Notice(Notice::Completed)))
                }
                // A ramp ends by itself at its own end; a stable VM stays stable.
                Phase::Ramping | Phase::Stable => None,
            };
        };
        if state.phase.is_drained() && state.deadline_at.is_some_and(|d| d <= now) {
            // Its deadline passed and the store does not know yet (it could not be written):
            // restore locally as the deadline says, never drain again.
            return from
                .is_drained()
                .then(|| self.end(vm, EndReason::Deadline, now, Cause::Deadline));
        }
        let same_migration = local
            .as_ref()
            .is_some_and(|l| l.phase.is_drained() && l.drain_started_at == state.drain_started_at);
        let mut id = local.as_ref().and_then(|l| l.migration);
        if state.phase.is_drained() && !same_migration {
            if from.is_drained()
                && let Some(old) = id
            {
                // Another migration began while this node missed the end of the last one.
                let record = self.record_mut(old);
                record.ended_at.get_or_insert(now);
                record.end.get_or_insert(EndReason::Completed);
            }
            let new = self.new_record(vm);
            self.record_mut(new).prepared_at = state.drain_started_at;
            id = Some(new);
        }
        if let Some(id) = id.filter(|id| self.history.iter().any(|r| r.id == *id)) {
            let record = self.record_mut(id);
            match state.phase {
                Phase::Migrating => {
                    record.started_at.get_or_insert(state.since);
                }
                Phase::Ramping | Phase::Stable if from.is_drained() => {
                    record.ended_at = Some(state.since);
                    record.end = state.end_reason;
                }
                _ => {}
            }
        }
        if state.phase == Phase::Ramping {
            let reason = state.end_reason.unwrap_or(EndReason::Completed);
            let started = state.ramp_started_at.unwrap_or(state.since);
            state.ramp_until = Some(started.saturating_add(self.ramp_ms_of(vm, reason)));
        }
        state.migration = id;
        state.queued_since = None;
        let to = state.phase;
        let command = state.command_at(now);
        let readdress = state.readdress.clone();
        let origin = state.origin;
        self.vms.insert(vm.clone(), state);
        (to != from).then(|| Transition {
            vm: vm.clone(),
            from,
            to,
            cause: Cause::Notice(match to {
                Phase::Draining => Notice::Prepare,
                Phase::Migrating => Notice::Started,
                _ => Notice::Completed,
            }),
            command,
            migration: id,
            readdress,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::migration::{NoticeOptions, Registry, RegistryDefaults, Topology};
    use crate::model::VmId;
    use crate::phase::{Notice, Phase, PhaseCommand};

    fn registry() -> Registry {
        Registry::new(
            Topology::default(),
            RegistryDefaults {
                deadline: Duration::from_secs(60),
                history_limit: 10,
            },
        )
    }

    #[test]
    fn an_adopted_drain_keeps_the_stores_deadline_and_is_restored_locally_at_it() {
        let vm = VmId::new("vm-a").unwrap();
        // What another node decided and wrote to the store.
        let mut other = registry();
        other
            .apply(&vm, Notice::Prepare, 1000, NoticeOptions::default())
            .unwrap();
        let shared = other.vm(&vm).cloned();
        let mut local = registry();
        let t = local.adopt(&vm, shared, 1500).expect("a transition");
        assert_eq!((t.from, t.to), (Phase::Stable, Phase::Draining));
        assert_eq!(local.vm(&vm).unwrap().deadline_at, Some(61_000));
        assert!(matches!(
            local.command_for(&vm, 1500),
            PhaseCommand::Drain { elapsed_ms: 500, .. }
        ));
        assert_eq!(local.history().count(), 1);
        // The store is unreachable at the deadline: the local tick restores the VM.
        let ticked = local.tick(61_000);
        assert_eq!(ticked.len(), 1);
        assert_eq!(local.phase(&vm), Phase::Stable);
        // The same state arriving late (the store came back) does not drain it again.
        assert!(local.adopt(&vm, other.vm(&vm).cloned(), 62_000).is_none());
        assert_eq!(local.phase(&vm), Phase::Stable);
    }

    #[test]
    fn a_vm_the_store_forgot_while_drained_here_is_ended() {
        let vm = VmId::new("vm-a").unwrap();
        let mut other = registry();
        other
            .apply(&vm, Notice::Prepare, 0, NoticeOptions::default())
            .unwrap();
        let mut local = registry();
        local.adopt(&vm, other.vm(&vm).cloned(), 10);
        let t = local.adopt(&vm, None, 20).expect("ended");
        assert_eq!(t.from, Phase::Draining);
        assert_ne!(local.phase(&vm), Phase::Draining);
        assert!(local.adopt(&VmId::new("vm-b").unwrap(), None, 20).is_none());
    }
}

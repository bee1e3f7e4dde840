//! The desired state a driven balancer (HAProxy, nginx) keeps for each VM: the last phase command,
//! when it arrived, and the VM's address change. The driver's own loop turns it into weights and
//! re-sends them while they move, and whenever the balancer forgot them (a reload).

use std::collections::HashMap;

use handover_core::command::{Effect, Policies, effect};
use handover_core::config::DrivenPolicy;
use handover_core::model::VmId;
use handover_core::phase::{Phase, PhaseCommand, Readdress};
use handover_core::time::millis;
use tokio::time::Instant;

/// Desired state of every VM a driver was told about.
#[derive(Debug, Default)]
pub struct Desired {
    commands: HashMap<VmId, (PhaseCommand, Instant)>,
    readdress: HashMap<VmId, Readdress>,
}

impl Desired {
    /// Records a command (a stable one forgets the VM's phase).
    pub fn set(&mut self, vm: &VmId, command: PhaseCommand) {
        match command {
            PhaseCommand::Stable => {
                self.commands.remove(vm);
            }
            _ => {
                self.commands.insert(vm.clone(), (command, Instant::now()));
            }
        }
    }

    /// Records an address change.
    pub fn set_readdress(&mut self, vm: &VmId, change: Readdress) {
        self.readdress.insert(vm.clone(), change);
    }

    /// The VM's address change, if any.
    pub fn readdress(&self, vm: &VmId) -> Option<&Readdress> {
        self.readdress.get(vm)
    }

    /// The effect of the VM's command now.
    pub fn effect(&self, vm: &VmId, policy: &DrivenPolicy) -> Effect {
        match self.commands.get(vm) {
            Some((command, received)) => effect(policies(policy), *command, millis(received.elapsed())),
            None => Effect::STABLE,
        }
    }

    /// Forgets VMs whose command has fully played out; returns whether any weight still moves.
    pub fn settle(&mut self, policy: &DrivenPolicy) -> bool {
        let p = policies(policy);
        self.commands.retain(|_, (command, received)| {
            effect(p, *command, millis(received.elapsed())).phase != Phase::Stable
        });
        self.commands
            .values()
            .any(|(command, received)| effect(p, *command, millis(received.elapsed())).moving)
    }

    /// Whether any VM is not stable.
    pub fn any_active(&self) -> bool {
        !self.commands.is_empty()
    }
}

fn policies(policy: &DrivenPolicy) -> Policies<'_> {
    Policies {
        drain: &policy.drain,
        ramp: &policy.ramp,
        restore: policy.restore,
    }
}

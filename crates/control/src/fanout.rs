//! The balancers the coordinator drives, each with its own timeout, and the calls it makes to them:
//! every call bounded, calls to different balancers at once, so that one slow or dead balancer
//! never delays the others past its timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use handover_core::api::{Applied, BalancerResult, DrainStatus};
use handover_core::balancer::{Balancer, BalancerError};
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};

/// A balancer and how long it may take to answer.
#[derive(Clone)]
pub struct BalancerSlot {
    /// The balancer.
    pub balancer: Arc<dyn Balancer>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// A remote handover node (it never forwards further).
    pub is_peer: bool,
}

impl std::fmt::Debug for BalancerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerSlot")
            .field("name", &self.balancer.name())
            .field("kind", &self.balancer.kind())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Applies a command made at `changed_at`, then the address change if there is one, on one
/// balancer. Not bounded here: the caller bounds it with the slot's timeout.
pub async fn call(
    slot: &BalancerSlot,
    vm: &VmId,
    command: PhaseCommand,
    changed_at: handover_core::time::Millis,
    readdress: Option<&Readdress>,
) -> Result<Applied, BalancerError> {
    let applied = slot.balancer.apply_changed_at(vm, command, changed_at).await?;
    match readdress {
        Some(change) if applied.serves => slot.balancer.set_addresses(vm, change).await,
        _ => Ok(applied),
    }
}

/// The result of a call that answered.
pub fn answered(slot: &BalancerSlot, applied: Applied, elapsed: Duration) -> BalancerResult {
    BalancerResult {
        name: slot.balancer.name().to_string(),
        kind: slot.balancer.kind().to_string(),
        serves: Some(applied.serves),
        applied: applied.serves,
        error: None,
        elapsed_ms: elapsed.as_millis() as u64,
        backends: applied.backends,
        active: None,
        drained: None,
        pending: false,
    }
}

/// The result for a balancer that was not told (an error, or not called): `serves` is what is
/// known without its answer; `pending` when it gets the phase later.
pub fn not_told(
    slot: &BalancerSlot,
    error: Option<String>,
    serves: Option<bool>,
    pending: bool,
    elapsed: Duration,
) -> BalancerResult {
    BalancerResult {
        name: slot.balancer.name().to_string(),
        kind: slot.balancer.kind().to_string(),
        serves,
        applied: false,
        error,
        elapsed_ms: elapsed.as_millis() as u64,
        backends: Vec::new(),
        active: None,
        drained: None,
        pending,
    }
}

/// Asks the given balancers in parallel how much traffic still reaches a VM, each within its
/// timeout; results in the order given.
pub async fn drain_all(slots: &[&BalancerSlot], vm: &VmId) -> Vec<Result<DrainStatus, BalancerError>> {
    join_all(slots.iter().map(|slot| async move {
        match tokio::time::timeout(slot.timeout, slot.balancer.drain_status(vm)).await {
            Ok(result) => result,
            Err(_) => Err(BalancerError::Timeout(slot.timeout.as_millis() as u64)),
        }
    }))
    .await
}

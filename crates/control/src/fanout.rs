//! Telling every balancer at once, each bounded by its own timeout, so that one slow or dead
//! balancer never delays the others past its timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use handover_core::api::{BalancerResult, DrainStatus};
use handover_core::balancer::{Balancer, BalancerError};
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};
use tokio::time::Instant;

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

/// Applies a command (and an address change, if any) on one balancer within its timeout.
pub async fn apply_one(
    slot: &BalancerSlot,
    vm: &VmId,
    command: PhaseCommand,
    readdress: Option<&Readdress>,
) -> BalancerResult {
    let started = Instant::now();
    let call = async {
        let applied = slot.balancer.apply(vm, command).await?;
        match readdress {
            Some(change) if applied.serves => slot.balancer.set_addresses(vm, change).await,
            _ => Ok(applied),
        }
    };
    let outcome = match tokio::time::timeout(slot.timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(BalancerError::Timeout(slot.timeout.as_millis() as u64)),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let name = slot.balancer.name().to_string();
    let kind = slot.balancer.kind().to_string();
    match outcome {
        Ok(applied) => BalancerResult {
            name,
            kind,
            serves: Some(applied.serves),
            applied: applied.serves,
            error: None,
            elapsed_ms,
            backends: applied.backends,
            active: None,
            drained: None,
        },
        Err(error) => BalancerResult {
            name,
            kind,
            serves: None,
            applied: false,
            error: Some(error.to_string()),
            elapsed_ms,
            backends: Vec::new(),
            active: None,
            drained: None,
        },
    }
}

/// Applies a command on every balancer in parallel; results come back in slot order.
pub async fn apply_all(
    slots: &[BalancerSlot],
    vm: &VmId,
    command: PhaseCommand,
    readdress: Option<&Readdress>,
) -> Vec<BalancerResult> {
    join_all(slots.iter().map(|slot| apply_one(slot, vm, command, readdress))).await
}

/// Asks every balancer in parallel how much traffic still reaches a VM.
pub async fn drain_all(slots: &[BalancerSlot], vm: &VmId) -> Vec<Result<DrainStatus, BalancerError>> {
    join_all(slots.iter().map(|slot| async move {
        match tokio::time::timeout(slot.timeout, slot.balancer.drain_status(vm)).await {
            Ok(result) => result,
            Err(_) => Err(BalancerError::Timeout(slot.timeout.as_millis() as u64)),
        }
    }))
    .await
}

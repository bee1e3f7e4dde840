//! The one trait that joins the two roles of handover: a **balancer** (the embedded proxy, a remote
//! handover node, an HAProxy instance) that the **migration module** identifies, notifies and hears
//! from.
//!
//! A balancer says which VMs it serves (`apply` answers `serves: false` for a VM it does not know),
//! applies the desired [`PhaseCommand`] for a VM, and reports how much traffic still reaches it.
//! Commands carry the whole desired state, so re-applying one (after a retry, or after the balancer
//! restarted) is always safe.

use std::future::Future;
use std::pin::Pin;

use crate::api::{Applied, BackendChange, BalancerStatus, DrainStatus, Leftover, VmPhase};
use crate::model::VmId;
use crate::phase::{PhaseCommand, Readdress};

/// A boxed future, so balancers can be held as `dyn Balancer`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a balancer could not be told or asked something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalancerError {
    /// No answer in time.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The balancer could not be reached (refused, reset, no socket).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The balancer answered, with a refusal.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The balancer answered something that is not its protocol.
    #[error("bad answer: {0}")]
    Protocol(String),
}

/// A load balancer that handover's migration module drives.
pub trait Balancer: Send + Sync {
    /// Unique name in replies, logs and metrics.
    fn name(&self) -> &str;

    /// What kind of balancer this is (`embedded`, `peer`, `haproxy`...).
    fn kind(&self) -> &'static str;

    /// Applies the desired state of one VM. Answers `serves: false`, changing nothing, for a VM it
    /// does not serve.
    fn apply<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>>;

    /// Applies the desired state of one VM, as changed at `changed_at` (ms since the epoch) by the
    /// node that drives its migration. A remote node uses it to refuse a command older than what
    /// it knows (one that was in flight while it was frozen); others ignore it.
    fn apply_changed_at<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
        changed_at: crate::time::Millis,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        let _ = changed_at;
        self.apply(vm, command)
    }

    /// Moves the VM's backends to new addresses (after a migration that changed its IP). Open
    /// connections to the old addresses are kept; new work goes to the new ones.
    fn set_addresses<'a>(
        &'a self,
        vm: &'a VmId,
        change: &'a Readdress,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>>;

    /// How much traffic still reaches the VM: open connections (L4) plus in-flight requests (L7).
    fn drain_status<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<DrainStatus, BalancerError>>;

    /// Every pool the balancer runs, with its backends.
    fn status(&self) -> BoxFuture<'_, Result<BalancerStatus, BalancerError>>;

    /// Adds, re-weights or removes one backend of one of its pools (backends managed through the
    /// API). Balancers that cannot take backends this way refuse.
    fn set_backend<'a>(&'a self, change: &'a BackendChange) -> BoxFuture<'a, Result<(), BalancerError>> {
        let _ = change;
        Box::pin(async move {
            Err(BalancerError::Rejected(format!(
                "a {} balancer does not take backends through the API",
                self.kind()
            )))
        })
    }

    /// Whether it serves the VM as far as its configuration says, without asking it (`None`: only
    /// an answer can tell, as for a remote node). A balancer known to serve a VM that cannot be
    /// reached is told later, never taken for one that does not serve it.
    fn serves_known(&self, _vm: &VmId) -> Option<bool> {
        None
    }

    /// What it finds changed for a VM that this process never told it (a drain left by an earlier
    /// run that died), read once at start so that the registry can adopt it.
    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<Leftover>, BalancerError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The phase of every VM its migration module knows (a remote handover node), so that a node
    /// that starts learns what happened while it was down. `None` for a plain balancer.
    fn phases(&self) -> BoxFuture<'_, Result<Option<Vec<VmPhase>>, BalancerError>> {
        Box::pin(async { Ok(None) })
    }
}

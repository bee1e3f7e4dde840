//! The node's own balancers, as the fleet sees them: the fleet's watcher hands them the fleet-wide
//! state of a VM and asks how much traffic still reaches it. `handover run` implements this over
//! its coordinator (which keeps deadlines locally and applies through the `Balancer` trait).

use handover_core::api::{BalancerResult, DrainStatus};
use handover_core::balancer::BoxFuture;
use handover_core::model::VmId;
use handover_core::phase::VmState;

/// This node's own balancers.
pub trait LocalNode: Send + Sync {
    /// Applies the fleet's state of a VM (`None`: the fleet has no notice for it, it is stable) to
    /// this node's own balancers; returns each balancer's result.
    fn adopt<'a>(&'a self, vm: &'a VmId, state: Option<VmState>) -> BoxFuture<'a, Vec<BalancerResult>>;

    /// How much traffic still reaches the VM through this node's own balancers.
    fn drain<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, DrainStatus>;
}

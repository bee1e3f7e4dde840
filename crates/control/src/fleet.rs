//! The seam between the coordinator and a fleet on etcd (`handover-fleet`): in fleet mode a notice
//! is committed to etcd by the fleet and every node's watcher applies it to its own balancers
//! (through [`Coordinator::adopt`](crate::Coordinator::adopt)), including this node's; the
//! coordinator's own fan-out then only tells local balancers (there are no `[[peers]]`). The
//! fleet's metrics reach `/metrics` as an [`ApiState`](crate::api::ApiState) metric source.

use handover_core::adaptive::Level;
use handover_core::api::fleet::FleetView;
use handover_core::api::{BackendChange, NoticeRequest, NoticeResponse};
use handover_core::balancer::BoxFuture;
use handover_core::model::VmId;

use crate::coordinator::CoordinatorError;

/// What the coordinator and the API ask of a fleet.
pub trait FleetHook: Send + Sync {
    /// Handles a notice for the whole fleet (instead of the peers' fan-out).
    fn notice<'a>(
        &'a self,
        vm: &'a VmId,
        request: &'a NoticeRequest,
    ) -> BoxFuture<'a, Result<NoticeResponse, CoordinatorError>>;

    /// Writes the adaptive drain's level this node's controller chose for a draining or migrating
    /// VM into the fleet, so every serving node applies it.
    fn publish_level<'a>(&'a self, vm: &'a VmId, level: Level) -> BoxFuture<'a, Result<(), String>>;

    /// Connections and requests still reaching a VM through the other nodes of the fleet (for
    /// quiescence), as their acknowledgements say.
    fn in_flight_elsewhere<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<u64, String>>;

    /// The fleet as etcd holds it (`GET /v1/fleet`, `handover fleet`), as JSON.
    fn view(&self) -> BoxFuture<'_, Result<FleetView, String>>;

    /// Hands a backend change made through this node's API (and applied here) to every node of
    /// the fleet; `Err` says why it could not be written to etcd.
    fn backend<'a>(&'a self, change: &'a BackendChange) -> BoxFuture<'a, Result<(), String>>;
}

//! The JSON of `GET /v1/fleet` (what `handover fleet` prints): every node of an etcd fleet with
//! its lease, VMs and acknowledgements, and every VM in migration. `handover-fleet` reads these
//! from etcd; they live here so that the control API can describe them without depending on it.

use serde::{Deserialize, Serialize};

use crate::adaptive::Level;
use crate::api::BackendReport;
use crate::model::VmId;
use crate::phase::{Notice, Phase};
use crate::time::Millis;

/// A node's acknowledgement of a VM's notice (`vm/<vm>/acks/<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckRecord {
    /// The node.
    pub node: String,
    /// The notice generation it applied.
    pub generation: i64,
    /// The phase its balancers now apply.
    pub phase: Phase,
    /// Whether every one of its balancers that serves the VM took the command.
    pub applied: bool,
    /// Open connections plus in-flight requests to the VM through this node.
    pub active: u64,
    /// Whether `active` is at or under the node's drained threshold.
    pub drained: bool,
    /// Why a balancer of the node could not apply it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was written.
    pub at: Millis,
    /// The node's backends of the VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendReport>,
}

/// The whole fleet, as etcd holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetView {
    /// The node that answered.
    pub answered_by: String,
    /// The etcd members it uses.
    pub etcd: Vec<String>,
    /// Every registered node, by name.
    pub nodes: Vec<NodeView>,
    /// Every VM in migration.
    pub notices: Vec<NoticeView>,
}

/// One registered node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// Its name.
    pub node: String,
    /// Its control API.
    pub control: String,
    /// Its lease (hex, as etcdctl prints it).
    pub lease: String,
    /// Seconds left on the lease (`None`: expired).
    pub lease_ttl_s: Option<i64>,
    /// When it registered.
    pub registered_at: Millis,
    /// The VMs it serves.
    pub vms: Vec<VmId>,
    /// Its last acknowledgement of each VM in migration.
    pub acks: Vec<AckView>,
}

/// A node's acknowledgement of one VM's notice.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckView {
    /// The VM.
    pub vm: VmId,
    /// The acknowledgement.
    #[serde(flatten)]
    pub ack: AckRecord,
    /// Whether it acknowledges the notice's current generation.
    pub current: bool,
}

/// A VM in migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoticeView {
    /// The VM.
    pub vm: VmId,
    /// Its fleet-wide phase.
    pub phase: Phase,
    /// The last notice.
    pub notice: Option<Notice>,
    /// The notice's generation (etcd mod revision).
    pub generation: i64,
    /// Who wrote it.
    pub by: String,
    /// When.
    pub at: Millis,
    /// Its deadline (drained phases).
    pub deadline_at: Option<Millis>,
    /// The adaptive drain's level the fleet applies (the fraction of the drain target the VM
    /// keeps), when a node's controller chose one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
}

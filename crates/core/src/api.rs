//! The JSON shapes of the control API, shared by the server (`handover run`), its clients
//! (`handover notify`, `handover status`) and the peer driver, so both ends agree by construction.
//!
//! Timestamps are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

pub mod fleet;

use crate::migration::{MigrationProgress, MigrationRecord};
use crate::model::{Algorithm, VmId};
use crate::phase::{Notice, Phase};
use crate::time::Millis;

/// Body of `POST /v1/vms/{vm}/migration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NoticeRequest {
    /// The notice: prepare, started, completed, failed or cancelled.
    pub phase: Notice,
    /// Hold the reply until the VM is drained (or the timeout passes).
    #[serde(default)]
    pub wait_drained: bool,
    /// Longest wait for drained, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Drained means at most this many connections and in-flight requests (defaults to the pools').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// Overrides the pools' deadline for this migration, in milliseconds (1 s to 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 604_800_000))]
    pub deadline_ms: Option<u64>,
    /// `completed` only: the VM's new IP (every backend keeps its port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_ip_address))]
    pub new_ip: Option<std::net::IpAddr>,
    /// `completed` only: explicit moves, configured address → new address.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::socket_address_map))]
    pub addresses: std::collections::BTreeMap<std::net::SocketAddr, std::net::SocketAddr>,
}

impl NoticeRequest {
    /// A notice with no options.
    pub fn new(phase: Notice) -> Self {
        Self {
            phase,
            wait_drained: false,
            timeout_ms: None,
            threshold: None,
            deadline_ms: None,
            new_ip: None,
            addresses: std::collections::BTreeMap::new(),
        }
    }
}

/// Reply of `PUT /v1/vms/{vm}/migration/progress`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressReply {
    /// The progress was recorded on the VM's migration.
    pub recorded: bool,
    /// Where the VM's adaptive drain stands, for a VM whose pools adapt or quiesce (after its
    /// controller's first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<crate::migration::AdaptiveStatus>,
}

/// What one balancer did with a notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BalancerResult {
    /// Balancer name.
    pub name: String,
    /// Balancer kind (`embedded`, `peer`, `haproxy`).
    pub kind: String,
    /// Whether it serves the VM; absent when it could not be asked.
    pub serves: Option<bool>,
    /// Whether it applied the command.
    pub applied: bool,
    /// Why it could not be told, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds the call took.
    pub elapsed_ms: u64,
    /// Its backends of the VM after applying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendReport>,
    /// Connections and in-flight requests still reaching the VM through it (after a wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<u64>,
    /// Whether it reached the drained threshold (after a wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
    /// Not told yet (unreachable, or not answering): it is sent the VM's current phase as soon
    /// as it answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// A VM's phase on a node's migration module, as a peer fetches it when it starts
/// (`GET /v1/balancer/phases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmPhase {
    /// The VM.
    pub vm: VmId,
    /// What balancers must apply for it now.
    pub command: crate::phase::PhaseCommand,
    /// When its phase was last changed by the node that drives its migration (ms since the Unix
    /// epoch; the registry's `changed_at`): the newer of two nodes' views wins.
    pub since: Millis,
}

/// What a driven balancer holds for a VM that this process never told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftover {
    /// The VM.
    pub vm: VmId,
    /// What was found (`server be/s1 in DRAIN`).
    pub found: String,
}

/// Outcome of a wait for drained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainReport {
    /// Every balancer serving the VM reached the threshold.
    pub drained: bool,
    /// The timeout passed first.
    pub timed_out: bool,
    /// How long the wait took.
    pub waited_ms: u64,
    /// The threshold used.
    pub threshold: u64,
    /// Connections and in-flight requests still reaching the VM, over all balancers.
    pub active: u64,
    /// The ones that remain (on timeout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remaining: Vec<ConnectionReport>,
}

/// Reply of `POST /v1/vms/{vm}/migration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoticeResponse {
    /// The VM.
    pub vm: VmId,
    /// The notice.
    pub notice: Notice,
    /// `applied`, `unchanged` or `queued`.
    pub outcome: String,
    /// Phase before the notice.
    pub previous_phase: Phase,
    /// Phase after the notice.
    pub phase: Phase,
    /// Migration id.
    pub migration: Option<u64>,
    /// Why nothing changed, or why the prepare was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Every balancer that was asked, with its result.
    pub balancers: Vec<BalancerResult>,
    /// The wait for drained, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
}

/// Error body of every failed API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The field of the request that was wrong, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Balancer results, when the error came after asking them (e.g. no balancer serves the VM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balancers: Vec<BalancerResult>,
}

/// A backend of a VM as a balancer reports it after applying a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackendReport {
    /// Pool (or HAProxy backend) name.
    pub pool: String,
    /// Backend address (or HAProxy server name).
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// Effective weight now.
    pub effective_weight: f64,
    /// Phase the balancer applies.
    pub phase: Phase,
    /// Open connections plus in-flight requests.
    pub active: u64,
}

/// What a balancer answers to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Applied {
    /// Whether the balancer serves this VM (nothing was changed if not).
    pub serves: bool,
    /// Its backends of the VM.
    pub backends: Vec<BackendReport>,
}

/// A connection or request still reaching a draining VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionReport {
    /// Balancer that carries it (filled in by the coordinator).
    #[serde(default)]
    pub balancer: String,
    /// Pool.
    pub pool: String,
    /// Backend address.
    pub backend: String,
    /// Client address.
    pub client: String,
    /// `tcp` for an L4 connection, `http` for an in-flight request.
    pub kind: String,
    /// For requests: method and path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// How long it has been open, in milliseconds.
    pub age_ms: u64,
}

/// How much traffic reaches a VM through one balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainStatus {
    /// Whether the balancer serves the VM.
    pub serves: bool,
    /// Open connections (L4) plus in-flight requests (L7).
    pub active: u64,
    /// What they are (bounded list).
    pub remaining: Vec<ConnectionReport>,
}

/// One backend in a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackendStatus {
    /// Index in the pool's configuration.
    pub index: usize,
    /// Current address.
    pub address: String,
    /// VM.
    pub vm: VmId,
    /// Configured weight.
    pub weight: u32,
    /// Effective weight now.
    pub effective_weight: f64,
    /// Share of the pool's new work it is getting now, in `[0, 1]`.
    pub share: f64,
    /// Phase applied to its VM.
    pub phase: Phase,
    /// Health (`up`, `down`).
    pub health: String,
    /// Open L4 connections plus in-flight L7 requests.
    pub active: u64,
    /// L4 connections accepted in total.
    pub connections_total: u64,
    /// L7 requests sent in total.
    pub requests_total: u64,
    /// Failed connects and upstream errors in total.
    pub failures_total: u64,
    /// Failures (checks or traffic) tolerated because the VM was migrating, in total.
    #[serde(default)]
    pub suppressed_failures_total: u64,
    /// Times marked down or ejected, in total.
    #[serde(default)]
    pub outages_total: u64,
}

/// One pool in a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStatus {
    /// Pool name.
    pub name: String,
    /// Selection algorithm.
    pub algorithm: Algorithm,
    /// Every available backend is draining, so they serve anyway.
    pub fallback: bool,
    /// Backends.
    pub backends: Vec<BackendStatus>,
    /// Backends a reload or the API removed that still have connections open (they get no new
    /// work).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedBackendStatus>,
}

/// A removed backend whose connections are still open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemovedBackendStatus {
    /// Its address.
    pub address: String,
    /// Its VM.
    pub vm: VmId,
    /// Connections and requests still open to it.
    pub active: u64,
    /// Milliseconds since it was removed.
    pub removed_ms: u64,
    /// Milliseconds until what is still open is closed.
    pub grace_left_ms: u64,
}

/// Everything a balancer runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BalancerStatus {
    /// Pools.
    pub pools: Vec<PoolStatus>,
}

/// One VM in `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmView {
    /// VM id.
    pub vm: VmId,
    /// Phase in the migration registry.
    pub phase: Phase,
    /// When that phase began.
    pub since: Option<Millis>,
    /// When the VM is restored if no end notice comes.
    pub deadline_at: Option<Millis>,
    /// Current or last migration id.
    pub migration: Option<u64>,
    /// A prepare waits in the capacity guard's queue.
    pub queued: bool,
    /// Hypervisor progress of the current or last migration, when a source reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MigrationProgress>,
    /// Where its adaptive drain stands (level, decision, λ, quiescence), when a pool of the VM
    /// adapts or quiesces and its current or last migration had a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<crate::migration::AdaptiveStatus>,
    /// Its local backends.
    pub backends: Vec<VmBackendView>,
}

/// A backend of a VM in `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmBackendView {
    /// Pool.
    pub pool: String,
    /// The backend's status.
    #[serde(flatten)]
    pub backend: BackendStatus,
}

/// One migration in `GET /v1/migrations`, with time spent per phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationView {
    /// The record.
    #[serde(flatten)]
    pub record: MigrationRecord,
    /// Milliseconds spent draining (prepare → started or end).
    pub draining_ms: Option<u64>,
    /// Milliseconds spent migrating (started → end).
    pub migrating_ms: Option<u64>,
    /// Milliseconds spent ramping (end → stable).
    pub ramping_ms: Option<u64>,
}

impl MigrationView {
    /// A view of a record at `now`.
    pub fn of(record: &MigrationRecord, now: Millis) -> Self {
        let (draining_ms, migrating_ms, ramping_ms) = record.phase_durations(now);
        Self {
            record: record.clone(),
            draining_ms,
            migrating_ms,
            ramping_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_requests_reject_unknown_fields_and_phases() {
        let ok: NoticeRequest =
            serde_json::from_str(r#"{"phase":"prepare","wait_drained":true,"timeout_ms":30000}"#).unwrap();
        assert_eq!(ok.phase, Notice::Prepare);
        assert!(ok.wait_drained);
        assert!(serde_json::from_str::<NoticeRequest>(r#"{"phase":"prepare","wait":true}"#).is_err());
        assert!(serde_json::from_str::<NoticeRequest>(r#"{"phase":"boom"}"#).is_err());
        assert!(serde_json::from_str::<NoticeRequest>(r#"{}"#).is_err());
    }
}

/// A backend of a pool set or removed through the API (`PUT`/`DELETE
/// /v1/pools/{pool}/backends/{address}`), as one node tells another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackendChange {
    /// The pool.
    pub pool: String,
    /// The backend's address (its identity in the pool).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::SocketAddress))]
    pub address: std::net::SocketAddr,
    /// Its VM and weight; `None` removes it (it drains).
    pub backend: Option<BackendSpec>,
}

/// The body of `PUT /v1/pools/{pool}/backends/{address}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// The VM behind the backend.
    pub vm: VmId,
    /// Weight, 1 to 10000.
    #[serde(default = "default_weight")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000, default = 1))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

//! The load-balancing module's API: what another handover node (a peer) calls on this one. These
//! apply to this node's own balancers and never forward further, so peers cannot loop.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use handover_core::api::{Applied, BalancerStatus, DrainStatus, ErrorBody, VmPhase};
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};

use super::auth::authorize;
use super::{ApiError, ApiState, json, vm_from_path};

/// When the sender changed the VM's phase (`?changed_at=MS`, ms since the epoch).
#[derive(Debug, serde::Deserialize)]
pub struct ChangedAt {
    changed_at: Option<u64>,
}

/// `PUT /v1/balancer/vms/{vm}[?changed_at=MS]`: applies a phase command locally (unless this
/// node knows of a later change of the VM).
#[utoipa::path(
    put,
    path = "/v1/balancer/vms/{vm}",
    tag = "peer",
    params(
        ("vm" = VmId, Path, description = "The VM"),
        ("changed_at" = Option<u64>, Query, description = "When the sending node changed the VM's phase (ms since the Unix epoch); a command older than what this node knows is not applied"),
    ),
    request_body(content = PhaseCommand, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied to this node's own balancers (`serves: false`: none serves the VM, nothing changed), or this node's current view when it knows of a later change", body = Applied),
        (status = 400, description = "The body, `vm` or `changed_at` is not valid; `field` names what", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is longer than 2 MiB", body = ErrorBody),
    )
)]
pub async fn apply(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    query: Result<Query<ChangedAt>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Applied>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let Query(ChangedAt { changed_at }) = query
        .map_err(|e| ApiError::bad_request(format!("changed_at: {}", e.body_text()), Some("changed_at")))?;
    let command: PhaseCommand = json::parse(&json::body(body)?)?;
    command
        .validate()
        .map_err(|(field, message)| ApiError::bad_request(message, Some(field)))?;
    Ok(Json(
        state.coordinator.apply_local(&vm, command, changed_at).await?,
    ))
}

/// `GET /v1/balancer/phases`: the phase of every VM this node's migration module knows (what a
/// peer fetches when it starts, before it serves).
#[utoipa::path(
    get,
    path = "/v1/balancer/phases",
    tag = "peer",
    responses(
        (status = 200, description = "Every VM this node's registry knows, with the command its balancers apply now and when its phase last changed", body = Vec<VmPhase>),
    )
)]
pub async fn phases(State(state): State<Arc<ApiState>>) -> Json<Vec<VmPhase>> {
    Json(state.coordinator.phases())
}

/// `PUT /v1/balancer/vms/{vm}/addresses`: moves a VM's backends locally.
#[utoipa::path(
    put,
    path = "/v1/balancer/vms/{vm}/addresses",
    tag = "peer",
    params(("vm" = VmId, Path, description = "The VM")),
    request_body(content = Readdress, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Moved on this node's own balancers", body = Applied),
        (status = 400, description = "The body or `vm` is not valid; `field` names what", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is longer than 2 MiB", body = ErrorBody),
    )
)]
pub async fn addresses(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Applied>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let change: Readdress = json::parse(&json::body(body)?)?;
    Ok(Json(state.coordinator.readdress_local(&vm, &change).await))
}

/// `GET /v1/balancer/vms/{vm}/drain`: local drain status.
#[utoipa::path(
    get,
    path = "/v1/balancer/vms/{vm}/drain",
    tag = "peer",
    params(("vm" = VmId, Path, description = "The VM")),
    responses(
        (status = 200, description = "Connections and requests still reaching the VM through this node", body = DrainStatus),
        (status = 400, description = "`vm` is not a VM id", body = ErrorBody),
    )
)]
pub async fn drain(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
) -> Result<Json<DrainStatus>, ApiError> {
    let vm = vm_from_path(vm)?;
    Ok(Json(state.coordinator.drain_local(&vm).await))
}

/// `GET /v1/balancer/status`: local pools.
#[utoipa::path(
    get,
    path = "/v1/balancer/status",
    tag = "peer",
    responses((status = 200, description = "This node's pools", body = BalancerStatus))
)]
pub async fn status(State(state): State<Arc<ApiState>>) -> Json<BalancerStatus> {
    Json(state.coordinator.local_status().await)
}

//! The load-balancing module's API: what another handover node (a peer) calls on this one. These
//! apply to this node's own balancers and never forward further, so peers cannot loop.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use handover_core::api::{Applied, BalancerStatus, DrainStatus, VmPhase};
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
pub async fn apply(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    query: Result<Query<ChangedAt>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let Query(ChangedAt { changed_at }) = query
        .map_err(|e| ApiError::bad_request(format!("changed_at: {}", e.body_text()), Some("changed_at")))?;
    let command: PhaseCommand = json::parse(&body)?;
    command
        .validate()
        .map_err(|(field, message)| ApiError::bad_request(message, Some(field)))?;
    Ok(Json(
        state.coordinator.apply_local(&vm, command, changed_at).await?,
    ))
}

/// `GET /v1/balancer/phases`: the phase of every VM this node's migration module knows (what a
/// peer fetches when it starts, before it serves).
pub async fn phases(State(state): State<Arc<ApiState>>) -> Json<Vec<VmPhase>> {
    Json(state.coordinator.phases())
}

/// `PUT /v1/balancer/vms/{vm}/addresses`: moves a VM's backends locally.
pub async fn addresses(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let change: Readdress = json::parse(&body)?;
    Ok(Json(state.coordinator.readdress_local(&vm, &change).await))
}

/// `GET /v1/balancer/vms/{vm}/drain`: local drain status.
pub async fn drain(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
) -> Result<Json<DrainStatus>, ApiError> {
    let vm = vm_from_path(vm)?;
    Ok(Json(state.coordinator.drain_local(&vm).await))
}

/// `GET /v1/balancer/status`: local pools.
pub async fn status(State(state): State<Arc<ApiState>>) -> Json<BalancerStatus> {
    Json(state.coordinator.local_status().await)
}

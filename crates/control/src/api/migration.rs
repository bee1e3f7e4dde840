//! `POST /v1/vms/{vm}/migration`: a migration notice; `PUT .../progress`: hypervisor progress.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use handover_core::api::{NoticeRequest, NoticeResponse};
use handover_core::migration::MigrationProgress;

use super::auth::authorize;
use super::{ApiError, ApiState, json, vm_from_path};

/// Applies a notice; 200 when applied or unchanged, 202 when queued by the capacity guard or
/// pending (no balancer that serves the VM could be told yet).
pub async fn notice(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<NoticeResponse>), ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let request: NoticeRequest = json::parse(&body)?;
    let response = state.coordinator.notice(&vm, &request).await?;
    let status = if response.outcome == "queued" || response.outcome == "pending" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(response)))
}

/// Records hypervisor progress on the VM's current migration (what `handover migrate` reports).
pub async fn progress(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let progress: MigrationProgress = json::parse(&body)?;
    if state.coordinator.record_progress(&vm, progress) {
        Ok(Json(serde_json::json!({ "recorded": true })))
    } else {
        Err(ApiError::not_found(format!(
            "VM {vm} has no migration to record progress on"
        )))
    }
}

//! `POST /v1/vms/{vm}/migration`: a migration notice; `PUT .../progress`: hypervisor progress.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use handover_core::api::{NoticeRequest, NoticeResponse, ProgressReply};
use handover_core::migration::MigrationProgress;

use super::auth::authorize;
use super::{ApiError, ApiState, json, vm_from_path};

/// Applies a notice; 200 when applied or unchanged, 202 when queued by the capacity guard.
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
    let status = if response.outcome == "queued" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(response)))
}

/// Records hypervisor progress on the VM's current migration (what `handover migrate` reports) and
/// answers where the VM's adaptive drain stands: `{"recorded": true, "adaptive": {...}}`, the
/// second only for a VM whose pools adapt or quiesce (level, decision, λ, quiescing, quiesced).
pub async fn progress(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ProgressReply>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let progress: MigrationProgress = json::parse(&body)?;
    if let Err((field, message)) = progress.validate() {
        return Err(ApiError::bad_request(message, Some(field)));
    }
    if state.coordinator.record_progress(&vm, progress).await {
        Ok(Json(ProgressReply {
            recorded: true,
            adaptive: state.coordinator.adaptive_status(&vm),
        }))
    } else {
        Err(ApiError::not_found(format!(
            "VM {vm} has no migration to record progress on"
        )))
    }
}

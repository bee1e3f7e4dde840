//! `POST /v1/vms/{vm}/migration`: a migration notice; `PUT .../progress`: hypervisor progress.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use handover_core::api::{ErrorBody, NoticeRequest, NoticeResponse, ProgressReply};
use handover_core::migration::MigrationProgress;
use handover_core::model::VmId;

use super::auth::authorize;
use super::{ApiError, ApiState, json, vm_from_path};

/// Applies a notice; 200 when applied or unchanged, 202 when queued by the capacity guard or
/// pending (no balancer that serves the VM could be told yet).
#[utoipa::path(
    post,
    path = "/v1/vms/{vm}/migration",
    tag = "migration",
    params(("vm" = VmId, Path, description = "The VM about to migrate, migrating or done")),
    request_body(content = NoticeRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied, or unchanged (`outcome`); every balancer asked, with its answer", body = NoticeResponse),
        (status = 202, description = "A prepare queued by the capacity guard (`outcome: queued`), or a notice kept but not told yet to any balancer that serves the VM (`outcome: pending`; sent as soon as one answers)", body = NoticeResponse),
        (status = 400, description = "The body or `vm` is not valid; `field` names what", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is longer than 2 MiB", body = ErrorBody),
        (status = 404, description = "No balancer serves the VM; `balancers` lists what each answered", body = ErrorBody),
        (status = 409, description = "Refused: by the capacity guard, or no migration in progress for this notice", body = ErrorBody),
        (status = 503, description = "Nothing was applied: the fleet's etcd cannot take the notice, the state file cannot be written, or no balancer that answered serves the VM while some could not be asked", body = ErrorBody),
    )
)]
pub async fn notice(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NoticeResponse>), ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let request: NoticeRequest = json::parse(&json::body(body)?)?;
    let response = state.coordinator.notice(&vm, &request).await?;
    let status = if response.outcome == "queued" || response.outcome == "pending" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(response)))
}

/// Records hypervisor progress on the VM's current migration (what `handover migrate` reports) and
/// answers where the VM's adaptive drain stands: `{"recorded": true, "adaptive": {...}}`, the
/// second only for a VM whose pools adapt or quiesce (level, decision, λ, quiescing, quiesced).
#[utoipa::path(
    put,
    path = "/v1/vms/{vm}/migration/progress",
    tag = "migration",
    params(("vm" = VmId, Path, description = "The migrating VM")),
    request_body(content = MigrationProgress, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded on the VM's current or last migration; `adaptive` says where its adaptive drain stands", body = ProgressReply),
        (status = 400, description = "The body or `vm` is not valid; `field` names what", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is longer than 2 MiB", body = ErrorBody),
        (status = 404, description = "The VM has no migration", body = ErrorBody),
    )
)]
pub async fn progress(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProgressReply>, ApiError> {
    authorize(&state, &headers)?;
    let vm = vm_from_path(vm)?;
    let progress: MigrationProgress = json::parse(&json::body(body)?)?;
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

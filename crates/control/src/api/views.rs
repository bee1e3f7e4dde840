//! Read-only views: VMs, pools, migrations and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use handover_core::api::{ErrorBody, MigrationView, PoolStatus, VmBackendView, VmView};
use handover_core::model::VmId;
use handover_core::phase::Phase;

use super::{ApiError, ApiState, vm_from_path};
use crate::metrics::{self, MetricsInput};

/// Every VM known to the registry or to a local pool.
pub(crate) async fn collect_vms(state: &ApiState) -> Vec<VmView> {
    let local = state.coordinator.local_status().await;
    let history = state.coordinator.history();
    let mut views: BTreeMap<VmId, VmView> = BTreeMap::new();
    for (vm, s) in state.coordinator.vm_states() {
        let progress = s
            .migration
            .and_then(|id| history.iter().rev().find(|r| r.id == id))
            .and_then(|r| r.progress.clone());
        let adaptive = state.coordinator.adaptive_status(&vm);
        views.insert(
            vm.clone(),
            VmView {
                vm,
                phase: s.phase,
                since: Some(s.since),
                deadline_at: s.deadline_at,
                migration: s.migration,
                queued: s.queued_since.is_some(),
                progress,
                adaptive,
                backends: Vec::new(),
            },
        );
    }
    for pool in local.pools {
        for backend in pool.backends {
            let view = views.entry(backend.vm.clone()).or_insert_with(|| VmView {
                vm: backend.vm.clone(),
                phase: Phase::Stable,
                since: None,
                deadline_at: None,
                migration: None,
                queued: false,
                progress: None,
                adaptive: None,
                backends: Vec::new(),
            });
            view.backends.push(VmBackendView {
                pool: pool.name.clone(),
                backend,
            });
        }
    }
    views.into_values().collect()
}

/// `GET /healthz`: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The node is up", content_type = "text/plain", body = String, example = "ok\n"))
)]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /v1/vms`.
#[utoipa::path(
    get,
    path = "/v1/vms",
    tag = "views",
    responses((status = 200, description = "Every VM known to the migration registry or to a local pool", body = Vec<VmView>))
)]
pub async fn vms(State(state): State<Arc<ApiState>>) -> Json<Vec<VmView>> {
    Json(collect_vms(&state).await)
}

/// `GET /v1/vms/{vm}`.
#[utoipa::path(
    get,
    path = "/v1/vms/{vm}",
    tag = "views",
    params(("vm" = VmId, Path, description = "The VM")),
    responses(
        (status = 200, description = "The VM", body = VmView),
        (status = 400, description = "`vm` is not a VM id", body = ErrorBody),
        (status = 404, description = "No local pool serves the VM and it has no migration record", body = ErrorBody),
    )
)]
pub async fn vm(
    State(state): State<Arc<ApiState>>,
    vm: Result<Path<String>, PathRejection>,
) -> Result<Json<VmView>, ApiError> {
    let vm = vm_from_path(vm)?;
    collect_vms(&state)
        .await
        .into_iter()
        .find(|v| v.vm == vm)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "VM {vm} is not served by a local pool and has no migration record"
            ))
        })
}

/// `GET /v1/pools`.
#[utoipa::path(
    get,
    path = "/v1/pools",
    tag = "views",
    responses((status = 200, description = "Every local pool with its backends", body = Vec<PoolStatus>))
)]
pub async fn pools(State(state): State<Arc<ApiState>>) -> Json<Vec<PoolStatus>> {
    Json(state.coordinator.local_status().await.pools)
}

/// `GET /v1/migrations`: newest first.
#[utoipa::path(
    get,
    path = "/v1/migrations",
    tag = "views",
    responses((status = 200, description = "Every migration this node recorded, newest first, with the time spent in each phase", body = Vec<MigrationView>))
)]
pub async fn migrations(State(state): State<Arc<ApiState>>) -> Json<Vec<MigrationView>> {
    let now = state.coordinator.clock().now_ms();
    Json(
        state
            .coordinator
            .history()
            .iter()
            .rev()
            .map(|r| MigrationView::of(r, now))
            .collect(),
    )
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4 (`handover_*` metrics; see the README's Metrics section)",
        content_type = "text/plain",
        body = String
    ))
)]
pub async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let local = state.coordinator.local_status().await;
    let vms = state.coordinator.vm_states();
    let history = state.coordinator.history();
    let stats = state.coordinator.stats();
    let mut text = metrics::render(&MetricsInput {
        local: &local,
        vms: &vms,
        history: &history,
        stats: &stats,
    });
    for source in &state.extra_metrics {
        (source.0)(&mut text);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

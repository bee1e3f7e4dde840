//! Backends through the API, for orchestration that does not write files:
//! `PUT /v1/pools/{pool}/backends/{address}` (`{"vm": "...", "weight": N}`) adds or re-weights a
//! backend, `DELETE` removes it (it drains, as a backend a reload removed). The change is applied
//! here first (and made durable: the reply comes after), then on every peer (`PUT
//! /v1/balancer/backends`, which applies locally only, so peers cannot loop) or, in fleet mode,
//! written to etcd, from where every node of the fleet applies it. The pools and the file that
//! keeps the change across restarts belong to the binary: it hands a [`BackendsHook`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use handover_core::api::{BackendChange, BackendSpec, ErrorBody};
use serde::Serialize;

use super::auth::authorize;
use super::{ApiError, ApiState, json};

/// Why a backend change was refused here (nothing changed).
#[derive(Debug, Clone)]
pub struct BackendsRefusal {
    /// 400 (bad value), 404 (no such pool or backend) or 503 (the change cannot be made durable:
    /// the reply is 503 with `message` alone).
    pub status: u16,
    /// What is wrong.
    pub message: String,
    /// The field at fault (`pool`, `address`, `vm`, `weight`; ignored for a 503).
    pub field: &'static str,
}

/// What applying a change locally returns: what changed (JSON), or why nothing did.
pub type BackendsFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, BackendsRefusal>> + Send>>;

/// Applies one change to this node's pools and makes it durable.
#[derive(Clone)]
pub struct BackendsHook(pub Arc<dyn Fn(BackendChange) -> BackendsFuture + Send + Sync>);

impl std::fmt::Debug for BackendsHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendsHook")
    }
}

/// One peer's answer.
#[derive(Debug, Serialize)]
pub struct PeerResult {
    /// The peer.
    pub name: String,
    /// Whether it applied the change.
    pub applied: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// In fleet mode: whether the change was written to etcd, from where every node applies it.
#[derive(Debug, Serialize)]
pub struct FleetResult {
    /// Written: every node of the fleet applies it (now, or when it starts).
    pub written: bool,
    /// Why not (the other nodes do not have the change; calling again writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply of `PUT`/`DELETE /v1/pools/{pool}/backends/{address}`.
#[derive(Debug, Serialize)]
pub struct BackendsReply {
    /// The change as applied.
    pub change: BackendChange,
    /// What changed on this node.
    pub local: serde_json::Value,
    /// Every peer's answer.
    pub peers: Vec<PeerResult>,
    /// In fleet mode, whether etcd has the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetResult>,
}

fn path_parts(
    parts: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, SocketAddr), ApiError> {
    let Path((pool, address)) = parts.map_err(|e| {
        ApiError::bad_request(
            format!(
                "the path is not /v1/pools/{{pool}}/backends/{{address}} ({})",
                e.body_text()
            ),
            Some("address"),
        )
    })?;
    let address: SocketAddr = address.parse().map_err(|_| {
        ApiError::bad_request(
            format!("address: invalid socket address {address:?} (IP:PORT)"),
            Some("address"),
        )
    })?;
    Ok((pool, address))
}

/// `PUT /v1/pools/{pool}/backends/{address}`.
#[utoipa::path(
    put,
    path = "/v1/pools/{pool}/backends/{address}",
    tag = "operations",
    params(
        ("pool" = String, Path, description = "The pool"),
        ("address" = handover_core::openapi::SocketAddress, Path, description = "The backend's address, IP:PORT or [IPv6]:PORT"),
    ),
    request_body(content = BackendSpec, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied here; what each peer answered, or (`fleet`) whether the fleet's etcd has it", body = Object),
        (status = 400, description = "The address, VM id or weight is not valid; `field` names it", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such pool on this node", body = ErrorBody),
        (status = 413, description = "The body is longer than 2 MiB", body = ErrorBody),
        (status = 503, description = "The change cannot be written to the state directory (`error` says why); nothing changed", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<Arc<ApiState>>,
    parts: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BackendsReply>, ApiError> {
    authorize(&state, &headers)?;
    let (pool, address) = path_parts(parts)?;
    let spec: BackendSpec = json::parse(&body)?;
    check_spec(&spec)?;
    change_everywhere(
        &state,
        BackendChange {
            pool,
            address,
            backend: Some(spec),
        },
    )
    .await
}

/// `DELETE /v1/pools/{pool}/backends/{address}`.
#[utoipa::path(
    delete,
    path = "/v1/pools/{pool}/backends/{address}",
    tag = "operations",
    params(
        ("pool" = String, Path, description = "The pool"),
        ("address" = handover_core::openapi::SocketAddress, Path, description = "The backend's address, IP:PORT or [IPv6]:PORT"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed here (it drains); what each peer answered, or (`fleet`) whether the fleet's etcd has it", body = Object),
        (status = 400, description = "The address is not valid, or it is the pool's last backend; `field` names it", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such pool or backend on this node", body = ErrorBody),
        (status = 503, description = "The change cannot be written to the state directory (`error` says why); nothing changed", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    parts: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<BackendsReply>, ApiError> {
    authorize(&state, &headers)?;
    let (pool, address) = path_parts(parts)?;
    change_everywhere(
        &state,
        BackendChange {
            pool,
            address,
            backend: None,
        },
    )
    .await
}

/// `PUT /v1/balancer/backends` (what a peer calls): applies the change here only.
#[utoipa::path(
    put,
    path = "/v1/balancer/backends",
    tag = "peer",
    request_body(content = BackendChange, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied on this node only", body = Object),
        (status = 400, description = "The body is not valid; `field` names what", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such pool or backend on this node", body = ErrorBody),
        (status = 413, description = "The body is longer than 2 MiB", body = ErrorBody),
        (status = 503, description = "The change cannot be written to the state directory (`error` says why); nothing changed", body = ErrorBody),
    )
)]
pub async fn apply_local(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let change: BackendChange = json::parse(&body)?;
    if let Some(spec) = &change.backend {
        check_spec(spec)?;
    }
    Ok(Json(local(&state, change).await?))
}

/// A VM id and a weight a pool accepts (as the configuration file checks them).
fn check_spec(spec: &BackendSpec) -> Result<(), ApiError> {
    handover_core::model::VmId::new(spec.vm.as_str())
        .map_err(|e| ApiError::bad_request(format!("vm: {e}"), Some("vm")))?;
    if !(1..=10000).contains(&spec.weight) {
        return Err(ApiError::bad_request(
            format!("weight: {} is out of range (1 to 10000)", spec.weight),
            Some("weight"),
        ));
    }
    Ok(())
}

async fn local(state: &ApiState, change: BackendChange) -> Result<serde_json::Value, ApiError> {
    let Some(hook) = &state.backends else {
        return Err(ApiError::not_found("this node has no pools to take backends"));
    };
    (hook.0)(change).await.map_err(|refusal| match refusal.status {
        404 => ApiError::not_found(format!("{}: {}", refusal.field, refusal.message)),
        status if status >= 500 => ApiError::unavailable(refusal.message),
        _ => ApiError::bad_request(
            format!("{}: {}", refusal.field, refusal.message),
            Some(refusal.field),
        ),
    })
}

async fn change_everywhere(state: &ApiState, change: BackendChange) -> Result<Json<BackendsReply>, ApiError> {
    let applied = local(state, change.clone()).await?;
    let peers = state
        .coordinator
        .slots()
        .iter()
        .filter(|slot| slot.is_peer)
        .map(|slot| {
            let change = &change;
            async move {
                let outcome = tokio::time::timeout(slot.timeout, slot.balancer.set_backend(change)).await;
                let error = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {} ms", slot.timeout.as_millis())),
                };
                if let Some(error) = &error {
                    tracing::warn!(peer = slot.balancer.name(), pool = %change.pool, address = %change.address, %error, "a peer did not take the backend change");
                }
                PeerResult {
                    name: slot.balancer.name().to_string(),
                    applied: error.is_none(),
                    error,
                }
            }
        });
    let peers = futures_util::future::join_all(peers).await;
    let fleet = match state.coordinator.fleet() {
        Some(fleet) => Some(match fleet.backend(&change).await {
            Ok(()) => FleetResult {
                written: true,
                error: None,
            },
            Err(error) => {
                tracing::warn!(pool = %change.pool, address = %change.address, %error, "the backend change was applied here but not written to the fleet");
                FleetResult {
                    written: false,
                    error: Some(error),
                }
            }
        }),
        None => None,
    };
    Ok(Json(BackendsReply {
        change,
        local: applied,
        peers,
        fleet,
    }))
}

//! The control API (JSON over HTTP, axum).
//!
//! Migration module: `POST /v1/vms/{vm}/migration`, `PUT /v1/vms/{vm}/migration/progress`,
//! `GET /v1/vms`, `GET /v1/vms/{vm}`,
//! `GET /v1/pools`, `GET /v1/migrations`, `GET /metrics`, `GET /healthz`.
//! Load-balancing module (what peers call): `PUT /v1/balancer/vms/{vm}`, `PUT .../addresses`,
//! `GET /v1/balancer/vms/{vm}/drain`, `GET /v1/balancer/status`, `GET /v1/balancer/phases`.
//!
//! When a token is configured, every mutating call needs `Authorization: Bearer <token>`.

mod auth;
mod error;
mod json;
mod migration;
mod peer;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};

pub use error::ApiError;

use crate::coordinator::Coordinator;

/// What every handler needs.
#[derive(Debug)]
pub struct ApiState {
    /// The migration module.
    pub coordinator: Arc<Coordinator>,
    /// Bearer token for mutating calls.
    pub token: Option<String>,
}

/// The whole router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(views::metrics))
        .route("/v1/vms", get(views::vms))
        .route("/v1/vms/{vm}", get(views::vm))
        .route("/v1/vms/{vm}/migration", post(migration::notice))
        .route("/v1/vms/{vm}/migration/progress", put(migration::progress))
        .route("/v1/pools", get(views::pools))
        .route("/v1/migrations", get(views::migrations))
        .route("/v1/balancer/vms/{vm}", put(peer::apply))
        .route("/v1/balancer/vms/{vm}/addresses", put(peer::addresses))
        .route("/v1/balancer/vms/{vm}/drain", get(peer::drain))
        .route("/v1/balancer/status", get(peer::status))
        .route("/v1/balancer/phases", get(peer::phases))
        .fallback(|| async { ApiError::not_found("no such endpoint; see the README's API section") })
        .with_state(state)
}

/// Parses a VM id from a path segment.
fn vm_from_path(vm: &str) -> Result<handover_core::model::VmId, ApiError> {
    handover_core::model::VmId::new(vm).map_err(|e| ApiError::bad_request(e.to_string(), Some("vm")))
}

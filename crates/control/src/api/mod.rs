//! The control API (JSON over HTTP, axum).
//!
//! Migration module: `POST /v1/vms/{vm}/migration`, `PUT /v1/vms/{vm}/migration/progress`,
//! `GET /v1/vms`, `GET /v1/vms/{vm}`,
//! `GET /v1/pools`, `GET /v1/migrations`, `GET /metrics`, `GET /healthz`.
//! Load-balancing module (what peers call): `PUT /v1/balancer/vms/{vm}`, `PUT .../addresses`,
//! `GET /v1/balancer/vms/{vm}/drain`, `GET /v1/balancer/status`, `GET /v1/balancer/phases`.
//!
//! Dashboard (see [`crate::dashboard`]): `GET /`, `GET /dashboard`, `GET /v1/events`.
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
pub(crate) use views::collect_vms;

use crate::coordinator::Coordinator;

/// What every handler needs.
#[derive(Debug)]
pub struct ApiState {
    /// The migration module.
    pub coordinator: Arc<Coordinator>,
    /// Bearer token for mutating calls.
    pub token: Option<String>,
    /// The dashboard's share history.
    pub shares: Arc<crate::dashboard::ShareHistory>,
    /// More lines for `GET /metrics`, from parts the control plane does not own.
    pub extra_metrics: Vec<MetricSource>,
}

/// Writes Prometheus lines of a part of the node the control plane does not own (the data plane's
/// access logs, say), appended to `GET /metrics`.
#[derive(Clone)]
pub struct MetricSource(pub Arc<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for MetricSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricSource")
    }
}

impl ApiState {
    /// The state of an API over `coordinator`, with an optional bearer token.
    pub fn new(coordinator: Arc<Coordinator>, token: Option<String>) -> Self {
        Self {
            coordinator,
            token,
            shares: Arc::default(),
            extra_metrics: Vec::new(),
        }
    }

    /// Adds a source of metric lines.
    pub fn with_metrics(mut self, source: impl Fn(&mut String) + Send + Sync + 'static) -> Self {
        self.extra_metrics.push(MetricSource(Arc::new(source)));
        self
    }
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
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::not_found("no such endpoint; see the README's API section") })
        .with_state(state)
}

/// Parses a VM id from a path segment.
fn vm_from_path(vm: &str) -> Result<handover_core::model::VmId, ApiError> {
    handover_core::model::VmId::new(vm).map_err(|e| ApiError::bad_request(e.to_string(), Some("vm")))
}

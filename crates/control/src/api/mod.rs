//! The control API (JSON over HTTP, axum).
//!
//! Migration module: `POST /v1/vms/{vm}/migration`, `PUT /v1/vms/{vm}/migration/progress`,
//! `GET /v1/vms`, `GET /v1/vms/{vm}`,
//! `GET /v1/pools`, `GET /v1/migrations`, `GET /v1/fleet`, `GET /metrics`, `GET /healthz`.
//! Operations: `POST /v1/reload` (re-read the configuration file, apply the difference),
//! `PUT`/`DELETE /v1/pools/{pool}/backends/{address}` (backends through the API, on every peer
//! too; a peer applies `PUT /v1/balancer/backends` locally).
//! Load-balancing module (what peers call): `PUT /v1/balancer/vms/{vm}`, `PUT .../addresses`,
//! `GET /v1/balancer/vms/{vm}/drain`, `GET /v1/balancer/status`.
//!
//! Dashboard (see [`crate::dashboard`]): `GET /`, `GET /dashboard`, `GET /v1/events`.
//!
//! When a token is configured, every mutating call needs `Authorization: Bearer <token>`.

mod auth;
mod backends;
mod error;
mod fleet;
mod json;
mod migration;
mod peer;
mod reload;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::routing::{get, post, put};

pub use backends::{BackendsFuture, BackendsHook, BackendsRefusal};
pub use error::ApiError;
pub use reload::{ReloadFuture, ReloadHook};
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
    /// What `POST /v1/reload` runs, where the node has a configuration file.
    pub reload: Option<ReloadHook>,
    /// What applies backends set or removed through the API, where the node has pools.
    pub backends: Option<BackendsHook>,
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
            reload: None,
            backends: None,
        }
    }

    /// Lets the backends API apply changes with `hook`.
    pub fn with_backends(mut self, hook: BackendsHook) -> Self {
        self.backends = Some(hook);
        self
    }

    /// Lets `POST /v1/reload` run `hook`.
    pub fn with_reload(mut self, hook: ReloadHook) -> Self {
        self.reload = Some(hook);
        self
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
        .route("/v1/fleet", get(fleet::fleet))
        .route("/v1/reload", post(reload::reload))
        .route(
            "/v1/pools/{pool}/backends/{address}",
            put(backends::put).delete(backends::delete),
        )
        .route("/v1/balancer/backends", put(backends::apply_local))
        .route("/v1/balancer/vms/{vm}", put(peer::apply))
        .route("/v1/balancer/vms/{vm}/addresses", put(peer::addresses))
        .route("/v1/balancer/vms/{vm}/drain", get(peer::drain))
        .route("/v1/balancer/status", get(peer::status))
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/api.md") })
        .with_state(state)
}

/// The `{vm}` segment of the path as a VM id; a 400 that names `vm` when it is not one (axum's own
/// answer to a segment that is not UTF-8 would be plain text naming no field).
fn vm_from_path(vm: Result<Path<String>, PathRejection>) -> Result<handover_core::model::VmId, ApiError> {
    let Path(vm) = vm.map_err(|e| {
        ApiError::bad_request(
            format!("vm: the path segment is not a VM id ({})", e.body_text()),
            Some("vm"),
        )
    })?;
    handover_core::model::VmId::new(vm).map_err(|e| ApiError::bad_request(e.to_string(), Some("vm")))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use handover_core::api::ErrorBody;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::Clock;

    /// Found by the `control_api_bodies` fuzz target: a `{vm}` segment that is not UTF-8 once
    /// percent-decoded got axum's plain-text 400, which names no field.
    #[tokio::test]
    async fn a_vm_segment_that_is_not_utf8_is_a_json_400_naming_vm() {
        let config = handover_core::config::parse("").unwrap();
        let app = router(Arc::new(ApiState::new(
            Coordinator::new(&config, Vec::new(), Clock::new()),
            None,
        )));
        for (method, uri) in [
            ("POST", "/v1/vms/%FFa/migration"),
            ("PUT", "/v1/vms/%FF/migration/progress"),
            ("GET", "/v1/vms/%C3%28"),
            ("PUT", "/v1/balancer/vms/%FF"),
            ("PUT", "/v1/balancer/vms/%FF/addresses"),
            ("GET", "/v1/balancer/vms/%FF/drain"),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(r#"{"phase":"prepare"}"#))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method} {uri}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let error: ErrorBody = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{method} {uri}: {e}: {}", String::from_utf8_lossy(&body)));
            assert_eq!(error.field.as_deref(), Some("vm"), "{method} {uri}");
        }
    }
}

//! The control API (JSON over HTTP, axum).
//!
//! Migration module: `POST /v1/vms/{vm}/migration`, `PUT /v1/vms/{vm}/migration/progress`,
//! `GET /v1/vms`, `GET /v1/vms/{vm}`,
//! `GET /v1/pools`, `GET /v1/migrations`, `GET /v1/fleet`, `GET /metrics`, `GET /healthz`.
//! Operations: `POST /v1/reload` (re-read the configuration file, apply the difference),
//! `PUT`/`DELETE /v1/pools/{pool}/backends/{address}` (backends through the API, on every peer
//! too; a peer applies `PUT /v1/balancer/backends` locally).
//! Load-balancing module (what peers call): `PUT /v1/balancer/vms/{vm}`, `PUT .../addresses`,
//! `GET /v1/balancer/vms/{vm}/drain`, `GET /v1/balancer/status`, `GET /v1/balancer/phases`.
//!
//! Dashboard (see [`crate::dashboard`]): `GET /`, `GET /dashboard`, `GET /v1/events`.
//! The contract of all of them, as OpenAPI 3.1: `GET /v1/openapi.json` (see [`openapi`]).
//!
//! When a token is configured, every mutating call needs `Authorization: Bearer <token>`.

mod auth;
mod backends;
mod error;
mod fleet;
mod json;
mod migration;
pub mod openapi;
mod peer;
mod reload;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The whole router: every route of [`routes`], then a JSON 404 for anything else.
pub fn router(state: Arc<ApiState>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async {
            ApiError::not_found("no such endpoint; see GET /v1/openapi.json or docs/api.md")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::method_not_allowed(
                "this path does not serve this method (the Allow header lists those it does)",
            )
        })
        .with_state(state)
}

/// Every route of the control API with its OpenAPI operation: the one list both the router and
/// the document ([`openapi::document`]) are built from. A route joins it only through
/// [`routes!`], which takes a handler with a `#[utoipa::path]` (method, path, parameters,
/// bodies and replies), so a route cannot be served without being described.
pub(crate) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(views::healthz))
        .routes(routes!(views::metrics))
        .routes(routes!(openapi::serve))
        .routes(routes!(views::vms))
        .routes(routes!(views::vm))
        .routes(routes!(migration::notice))
        .routes(routes!(migration::progress))
        .routes(routes!(views::pools))
        .routes(routes!(views::migrations))
        .routes(routes!(fleet::fleet))
        .routes(routes!(peer::apply))
        .routes(routes!(peer::addresses))
        .routes(routes!(peer::drain))
        .routes(routes!(peer::status))
        .routes(routes!(reload::reload))
        .routes(routes!(backends::put, backends::delete))
        .routes(routes!(backends::apply_local))
        .routes(routes!(peer::phases))
        .merge(crate::dashboard::routes())
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

    fn app() -> Router {
        let config = handover_core::config::parse("").unwrap();
        router(Arc::new(ApiState::new(
            Coordinator::new(&config, Vec::new(), Clock::new()),
            None,
        )))
    }

    /// axum's own 405 had an empty body, which is not the error body the document promises.
    #[tokio::test]
    async fn a_method_the_path_does_not_serve_is_a_json_405_with_allow() {
        let request = Request::builder()
            .method("DELETE")
            .uri("/v1/vms")
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let allow = response
            .headers()
            .get("allow")
            .expect("an Allow header")
            .to_str()
            .unwrap();
        assert!(allow.contains("GET"), "{allow}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(
            error.error.contains("does not serve this method"),
            "{}",
            error.error
        );
    }

    /// axum's own answer to a body over its 2 MiB limit was plain text.
    #[tokio::test]
    async fn a_body_over_the_limit_is_a_json_413() {
        let mut body = br#"{"phase":"prepare","note":""#.to_vec();
        body.resize(3 << 20, b'x');
        let request = Request::builder()
            .method("POST")
            .uri("/v1/vms/vm-a/migration")
            .header("content-length", body.len())
            .body(Body::from(body))
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let error: ErrorBody = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        assert!(
            error.error.starts_with("the request body cannot be read"),
            "{}",
            error.error
        );
    }
}

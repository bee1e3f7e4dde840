//! `POST /v1/reload`: re-reads the node's configuration file and applies the difference (what
//! `SIGHUP` and `handover reload` do). The control plane does not own the file, the listeners or
//! the pools: the binary hands it a [`ReloadHook`] that does the work and says what changed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;

use handover_core::api::ErrorBody;

use super::auth::authorize;
use super::{ApiError, ApiState};

/// What a reload returns: what changed (JSON), or why nothing did.
pub type ReloadFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>;

/// Runs one reload.
#[derive(Clone)]
pub struct ReloadHook(pub Arc<dyn Fn() -> ReloadFuture + Send + Sync>);

impl std::fmt::Debug for ReloadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadHook")
    }
}

#[utoipa::path(
    post,
    path = "/v1/reload",
    tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied (or unchanged): what changed, and every listener's address", body = Object),
        (status = 400, description = "The file is not valid or changes what needs a restart; nothing changed (`field`: `config`)", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 404, description = "This node was not started from a configuration file", body = ErrorBody),
    )
)]
/// `POST /v1/reload`: 200 with what changed; 400 naming the file's errors when it is not valid
/// (nothing changed); 404 where the node cannot reload (no file: a node embedded in a test).
pub async fn reload(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let Some(hook) = &state.reload else {
        return Err(ApiError::not_found(
            "this node has no configuration file to reload",
        ));
    };
    match (hook.0)().await {
        Ok(change) => Ok(Json(change)),
        Err(error) => Err(ApiError::bad_request(
            format!("reload refused, nothing changed: {error}"),
            Some("config"),
        )),
    }
}

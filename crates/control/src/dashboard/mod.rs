//! The dashboard: a page for a person watching a maintenance wave, served by the control API on
//! its own bind (`GET /` and `GET /dashboard`), read-only, with its assets embedded in the binary
//! (no CDN: it works offline).
//!
//! The page is fed by `GET /v1/events`, a server-sent event stream: first a `history` event with
//! the share of new work of every VM over the last minutes (sampled each second), then a
//! `snapshot` event every half second with every pool and backend, every VM (phase, deadline,
//! the hypervisor's progress), the last migrations with their phase durations, and every balancer
//! this node tells (up, errors), plus the newest share sample. Not here: what the numbers mean
//! (`api::views`, `core::api`).

mod history;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;
use handover_core::api::{MigrationView, PoolStatus, VmView};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use history::ShareHistory;

use crate::api::ApiState;

/// How often a snapshot is pushed to an open page.
const PUSH_EVERY: Duration = Duration::from_millis(500);
/// How many finished migrations a snapshot carries.
const RECENT_MIGRATIONS: usize = 12;

/// One balancer this node tells, as the page shows it.
#[derive(Debug, Serialize)]
struct BalancerView {
    name: String,
    kind: &'static str,
    /// Its last call succeeded (absent before the first call).
    up: Option<bool>,
    /// Calls that failed.
    errors: u64,
}

/// Everything the page shows, at one instant.
#[derive(Debug, Serialize)]
struct Snapshot {
    now_ms: u64,
    vms: Vec<VmView>,
    pools: Vec<PoolStatus>,
    migrations: Vec<MigrationView>,
    balancers: Vec<BalancerView>,
    sample: Option<history::Sample>,
}

/// The dashboard's routes (merged into the API's list, [`crate::api`]).
pub(crate) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(stylesheet))
        .routes(routes!(events))
}

/// `GET /`: to the dashboard.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((
        status = 307,
        description = "To the dashboard",
        headers(("location" = String, description = "`/dashboard`"))
    ))
)]
async fn root() -> Redirect {
    Redirect::temporary("/dashboard")
}

/// `GET /dashboard`: the page.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's page (read-only, no token needed)", content_type = "text/html", body = String))
)]
async fn page() -> Response {
    asset("text/html; charset=utf-8", include_str!("assets/index.html"))
}

/// `GET /dashboard/app.js`: the page's script.
#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String))
)]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

/// `GET /dashboard/style.css`: the page's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard/style.css",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css", body = String))
)]
async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

/// One embedded file.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn snapshot(state: &ApiState) -> Snapshot {
    let coordinator = &state.coordinator;
    let now = coordinator.clock().now_ms();
    let stats = coordinator.stats();
    let balancers = coordinator
        .slots()
        .iter()
        .map(|slot| {
            let name = slot.balancer.name().to_string();
            BalancerView {
                up: stats.balancer_up.get(&name).copied(),
                errors: stats.balancer_errors.get(&name).copied().unwrap_or(0),
                kind: slot.balancer.kind(),
                name,
            }
        })
        .collect();
    Snapshot {
        now_ms: now,
        vms: crate::api::collect_vms(state).await,
        pools: coordinator.local_status().await.pools,
        migrations: coordinator
            .history()
            .iter()
            .rev()
            .take(RECENT_MIGRATIONS)
            .map(|r| MigrationView::of(r, now))
            .collect(),
        balancers,
        sample: state.shares.latest(),
    }
}

/// `GET /v1/events`: the history, then a snapshot every [`PUSH_EVERY`].
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "dashboard",
    responses((
        status = 200,
        description = "Server-sent events that never end: first `history` (the share of new work of \
every VM over the last minutes, one sample a second), then `snapshot` every half second (every \
pool, VM, recent migration and balancer, and the newest share sample); each event's `data` is one \
JSON object",
        content_type = "text/event-stream",
        body = String
    ))
)]
async fn events(
    axum::extract::State(state): axum::extract::State<Arc<ApiState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    state.shares.ensure_sampling(state.coordinator.clone());
    let stream = futures_util::stream::unfold((state, true), |(state, first)| async move {
        let event = if first {
            Event::default().event("history").json_data(state.shares.all())
        } else {
            tokio::time::sleep(PUSH_EVERY).await;
            Event::default()
                .event("snapshot")
                .json_data(snapshot(&state).await)
        };
        let event = event.unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
        Some((Ok(event), (state, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

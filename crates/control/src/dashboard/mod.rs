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

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use futures_util::Stream;
use handover_core::api::{MigrationView, PoolStatus, VmView};
use serde::Serialize;

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

/// The dashboard's routes (merged into the API router).
pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route(
            "/dashboard",
            get(asset(
                "text/html; charset=utf-8",
                include_str!("assets/index.html"),
            )),
        )
        .route(
            "/dashboard/app.js",
            get(asset(
                "text/javascript; charset=utf-8",
                include_str!("assets/app.js"),
            )),
        )
        .route(
            "/dashboard/style.css",
            get(asset("text/css; charset=utf-8", include_str!("assets/style.css"))),
        )
        .route("/v1/events", get(events))
}

/// A handler that serves one embedded file.
fn asset(
    content_type: &'static str,
    body: &'static str,
) -> impl Fn() -> std::future::Ready<axum::response::Response> + Clone + Send + 'static {
    move || {
        std::future::ready(
            ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body).into_response(),
        )
    }
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

//! `control_api_bodies`: requests to the control API, through the router `handover run` serves
//! (`handover_control::api::router`), in process (`tower::ServiceExt::oneshot`), over a coordinator
//! whose balancer is the embedded proxy's pools of a small configuration, its background loop
//! (deadlines, ramp ends, queued prepares) running as in `handover run`, on a paused clock.
//!
//! The input is a session, one request per line: `METHOD PATH [BODY]` (a leading `-` sends it
//! without the bearer token), or `WAIT MS` to let time pass (up to two minutes; the clock
//! jumps from one timer to the next, so waiting costs no real time). Every request must get an answer
//! below 500, never a panic; a 400 is JSON that names the field at fault (or says the body as a
//! whole is wrong); a request answered 4xx changes nothing that the API shows; a 2xx answer that
//! says it is JSON is JSON. (`GET /v1/events` never ends: its first two events are read.)

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use handover_control::api::{ApiState, router};
use handover_control::{BalancerSlot, Clock, Coordinator};
use handover_core::api::{BalancerStatus, ErrorBody};
use handover_core::config::{Config, parse};
use handover_core::migration::MigrationRecord;
use handover_core::model::VmId;
use handover_core::phase::VmState;
use handover_proxy::{EmbeddedBalancer, Pools};
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "fuzz";

/// Two pools over three VMs, a capacity guard that queues, a sticky cookie, a linear drain.
const CONFIG: &str = r#"
[control]
bind = "127.0.0.1:0"
token = "fuzz"

[migration]
deadline = "10m"
drain_timeout = "2s"

[pools.web]
algorithm = "round_robin"
drain = { target = 0.25, shape = "linear", window = "5s", keep = "sessions" }
ramp = { window = "10s", aggression = 2.0, min_percent = 5 }
guard = { min_active = 1, max_concurrent = 1, on_violation = "queue" }
sticky = { cookie = "hv" }
deadline = "1m"
backends = [
  { address = "127.0.0.1:9001", vm = "vm-a" },
  { address = "127.0.0.1:9002", vm = "vm-b" },
  { address = "127.0.0.1:9003", vm = "vm-c", weight = 2 },
]

[pools.db]
algorithm = "least_connections"
restore = "immediate"
drain = { target = 0.0 }
backends = [
  { address = "127.0.0.1:5432", vm = "vm-a" },
  { address = "[::1]:6432", vm = "vm-b" },
]
"#;

/// The longest a `WAIT` lets time pass: longer than the ramps and the web pool's deadline; the
/// background loop wakes at least once a second, so each waited second costs a loop.
const MAX_WAIT_MS: u64 = 120_000;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| parse(CONFIG).expect("the target's configuration is valid"))
}

/// One step of a session.
enum Step {
    Request {
        method: Method,
        uri: Uri,
        body: Vec<u8>,
        authorized: bool,
    },
    Wait(Duration),
}

fn step_of(line: &[u8]) -> Option<Step> {
    let (authorized, line) = match line.strip_prefix(b"-") {
        Some(rest) => (false, rest),
        None => (true, line),
    };
    let mut parts = line.splitn(3, |b| *b == b' ');
    let first = parts.next()?;
    let second = parts.next()?;
    if first == b"WAIT" {
        let ms: u64 = std::str::from_utf8(second).ok()?.trim().parse().ok()?;
        return Some(Step::Wait(Duration::from_millis(ms.min(MAX_WAIT_MS))));
    }
    Some(Step::Request {
        method: Method::from_bytes(first).ok()?,
        uri: Uri::try_from(second).ok()?,
        body: parts.next().unwrap_or_default().to_vec(),
        authorized,
    })
}

/// Sends one request; returns its status, whether its body is JSON by its type, and the body (of
/// an event stream, its first two events).
async fn send(
    app: &axum::Router,
    method: Method,
    uri: Uri,
    body: Vec<u8>,
    authorized: bool,
) -> (StatusCode, bool, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if authorized {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    let request = request
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("method and URI are valid");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = response.into_body();
    let bytes = if content_type.starts_with("text/event-stream") {
        // Endless: the first events are enough (the history, then a snapshot).
        let mut bytes = Vec::new();
        for _ in 0..2 {
            if let Some(Ok(frame)) = body.frame().await
                && let Ok(data) = frame.into_data()
            {
                bytes.extend_from_slice(&data);
            }
        }
        bytes
    } else {
        body.collect()
            .await
            .expect("a response body is in memory")
            .to_bytes()
            .to_vec()
    };
    (status, content_type.starts_with("application/json"), bytes)
}

/// What the API shows of the node's state (`/v1/vms`, `/v1/pools`, `/v1/migrations` and
/// `/v1/balancer/status` are views of these), compared without rendering it.
#[derive(PartialEq)]
struct Visible {
    vms: Vec<(VmId, VmState)>,
    history: Vec<MigrationRecord>,
    local: BalancerStatus,
}

async fn visible_state(coordinator: &Coordinator) -> Visible {
    Visible {
        vms: coordinator.vm_states(),
        history: coordinator.history(),
        local: coordinator.local_status().await,
    }
}

/// Every view of the API still answers, in JSON.
async fn views_answer(app: &axum::Router) {
    for path in ["/v1/vms", "/v1/pools", "/v1/migrations", "/v1/balancer/status"] {
        let (status, _, body) = send(app, Method::GET, Uri::from_static(path), Vec::new(), false).await;
        assert_eq!(status, StatusCode::OK, "GET {path}");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
            "GET {path} is not JSON"
        );
    }
}

/// Lets the background loop finish what became due at this instant, or what the last request
/// woke it for (a queued prepare admitted once another migration ended), as it would between two
/// requests to a running node.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn session(steps: Vec<Step>) {
    let config = config();
    let pools = Pools::new(config);
    let slots = vec![BalancerSlot {
        balancer: Arc::new(EmbeddedBalancer::new("embedded", pools)),
        timeout: Duration::from_secs(5),
        is_peer: false,
    }];
    let coordinator = Coordinator::new(config, slots, Clock::new());
    tokio::spawn(coordinator.clone().run(CancellationToken::new()));
    let app = router(Arc::new(ApiState::new(
        coordinator.clone(),
        Some(TOKEN.to_string()),
    )));
    for step in steps {
        let (method, uri, body, authorized) = match step {
            Step::Wait(duration) => {
                tokio::time::sleep(duration).await;
                settle().await;
                continue;
            }
            Step::Request {
                method,
                uri,
                body,
                authorized,
            } => (method, uri, body, authorized),
        };
        settle().await;
        let before = visible_state(&coordinator).await;
        let what = format!("{method} {uri}");
        let sent = body.clone();
        let (status, json, answer) = send(&app, method, uri.clone(), body, authorized).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(!status.is_server_error(), "{what} answered {status}: {text}");
        if status == StatusCode::BAD_REQUEST {
            let error: ErrorBody = serde_json::from_slice(&answer)
                .unwrap_or_else(|e| panic!("{what}: a 400 that is not an error body ({e}): {text}"));
            assert!(!error.error.is_empty(), "{what}: a 400 without a message");
            // Only a body that is not one JSON object has no field to blame.
            let object = serde_json::from_slice::<serde_json::Value>(&sent).is_ok_and(|v| v.is_object());
            assert!(
                error.field.as_deref().is_some_and(|f| !f.is_empty()) || !object,
                "{what}: a 400 that names no field: {text}"
            );
            if let Some(field) = &error.field {
                assert!(
                    error.error.to_lowercase().contains(&field.to_lowercase()),
                    "{what}: the message leaves out the field: {text}"
                );
            }
        }
        if status.is_client_error() {
            let after = visible_state(&coordinator).await;
            assert!(
                before == after,
                "{what} answered {status} but changed the node's state: {text}"
            );
        }
        if status.is_success() && json {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&answer).is_ok(),
                "{what} answered {status} with a body that is not JSON: {text}"
            );
        }
    }
    settle().await;
    views_answer(&app).await;
}

fuzz_target!(|data: &[u8]| {
    let steps: Vec<Step> = data.split(|b| *b == b'\n').take(16).filter_map(step_of).collect();
    if steps.is_empty() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(session(steps));
});

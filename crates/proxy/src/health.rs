//! Active health checks: one task per pool with a `health` section, checking each backend's
//! *current* address (it may move after a migration) every `interval`: a TCP connect, or
//! an HTTP GET whose status must match. Results go to the pool, which decides (with the migration
//! in mind) whether the backend is up, down, or in a tolerated blackout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use handover_core::config::{CheckKind, HealthCheckConfig};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::descriptors;
use crate::pools::{Pool, Pools};

/// Starts the checks of every pool (present and future: a reload may add pools or backends, or
/// give a pool a `health` section). One task per pool follows its current snapshot.
pub fn spawn_checks(pools: &Arc<Pools>, cancel: &CancellationToken, tasks: &TaskTracker) {
    let pools = pools.clone();
    let (cancel, inner) = (cancel.clone(), tasks.clone());
    tasks.spawn(async move {
        let mut running: Vec<(Arc<Pool>, CancellationToken)> = Vec::new();
        loop {
            let current = pools.all();
            running.retain(|(pool, token)| {
                let keep = current.iter().any(|p| Arc::ptr_eq(p, pool));
                if !keep {
                    token.cancel();
                }
                keep
            });
            for pool in current.iter() {
                if !running.iter().any(|(p, _)| Arc::ptr_eq(p, pool)) {
                    let token = cancel.child_token();
                    inner.spawn(pool_checks(pool.clone(), token.clone()));
                    running.push((pool.clone(), token));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW) => {}
                _ = cancel.cancelled() => return,
            }
        }
    });
}

/// How often the checks look for pools a reload added or removed.
const FOLLOW: Duration = Duration::from_millis(500);

/// One pool's checks: every backend of its current snapshot once per `interval`, the checks spread
/// over the interval; a backend a reload added is checked from the next round on.
async fn pool_checks(pool: Arc<Pool>, cancel: CancellationToken) {
    loop {
        let Some(config) = pool.config().health.clone() else {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW) => continue,
                _ = cancel.cancelled() => return,
            }
        };
        let backends = pool.backends();
        let count = backends.len().max(1) as u32;
        let started = tokio::time::Instant::now();
        for (index, backend) in backends.into_iter().enumerate() {
            // Spread the checks over one interval instead of firing them all at once.
            let at = started + config.interval * index as u32 / count;
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = cancel.cancelled() => return,
            }
            let address = pool
                .snapshot()
                .entries
                .iter()
                .find(|e| Arc::ptr_eq(&e.backend, &backend))
                .map(|e| e.address);
            let Some(address) = address else { continue };
            let (pool, config) = (pool.clone(), config.clone());
            tokio::spawn(async move {
                match check(address, &config).await {
                    Some(ok) => {
                        if !ok {
                            debug!(pool = %pool.name, backend = %address, "health check failed");
                        }
                        pool.record_check(&backend, ok);
                    }
                    None => {
                        debug!(pool = %pool.name, backend = %address, "health check skipped: handover is out of descriptors")
                    }
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + config.interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Runs one check: `Some(true)` when it passes within the timeout, `Some(false)` when it fails,
/// `None` when it could not be run because handover itself is out of descriptors (that says
/// nothing about the backend).
pub async fn check(address: SocketAddr, config: &HealthCheckConfig) -> Option<bool> {
    let exhausted = std::sync::atomic::AtomicBool::new(false);
    let run = async {
        let stream = match descriptors::connect(address).await {
            Ok(stream) => stream,
            Err(e) => {
                exhausted.store(
                    descriptors::is_exhaustion(&e),
                    std::sync::atomic::Ordering::Relaxed,
                );
                return None;
            }
        };
        match &config.check {
            CheckKind::Tcp => Some(true),
            CheckKind::Http { path, expect } => {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .ok()?;
                tokio::spawn(connection);
                let request = Request::get(path.as_str())
                    .header(header::HOST, address.to_string())
                    .header(header::CONNECTION, "close")
                    .header(header::USER_AGENT, "handover-health-check")
                    .body(Empty::<Bytes>::new())
                    .ok()?;
                let response = sender.send_request(request).await.ok()?;
                Some(expect.matches(response.status().as_u16()))
            }
        }
    };
    let passed = matches!(tokio::time::timeout(config.timeout, run).await, Ok(Some(true)));
    if !passed && exhausted.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    Some(passed)
}

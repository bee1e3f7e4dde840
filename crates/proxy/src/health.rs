//! Active health checks: one task per backend of every pool with a `health` section, checking the
//! backend's *current* address (it may move after a migration) every `interval`: a TCP connect, or
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

/// Starts the checks of every pool that has them.
pub fn spawn_checks(pools: &Pools, cancel: &CancellationToken, tasks: &TaskTracker) {
    for pool in pools.all() {
        let Some(config) = pool.config.health.clone() else {
            continue;
        };
        let count = pool.backends.len().max(1) as u32;
        for index in 0..pool.backends.len() {
            // Spread the first checks over one interval instead of firing them all at once.
            let offset = config.interval * index as u32 / count;
            tasks.spawn(check_loop(
                pool.clone(),
                index,
                config.clone(),
                offset,
                cancel.clone(),
            ));
        }
    }
}

async fn check_loop(
    pool: Arc<Pool>,
    index: usize,
    config: HealthCheckConfig,
    offset: Duration,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep(offset) => {}
        _ = cancel.cancelled() => return,
    }
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let address = pool.snapshot().entries[index].address;
        match check(address, &config).await {
            Some(ok) => {
                if !ok {
                    debug!(pool = %pool.config.name, backend = %address, "health check failed");
                }
                pool.record_check(index, ok);
            }
            None => {
                debug!(pool = %pool.config.name, backend = %address, "health check skipped: handover is out of descriptors")
            }
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

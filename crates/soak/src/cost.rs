//! What durability costs per notice: the same notices (prepare, then completed, VM after VM, one
//! at a time and then 8 at a time) to a node without a state file and to one with a state file,
//! whose replies wait for the write, fsync, rename and directory fsync.

use std::path::Path;
use std::time::Duration;

use handover_core::api::{NoticeRequest, NoticeResponse};
use handover_core::phase::Notice;
use handover_drivers::ControlClient;
use tokio::time::Instant;

use crate::report::percentile;
use crate::world::{Node, free_port, node_config};

/// Latencies of one node's notices.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cost {
    /// `none` or `state file`.
    pub durability: &'static str,
    /// Notices sent one at a time.
    pub sequential: usize,
    /// Their p50 and p99, ms.
    pub sequential_p50_ms: f64,
    /// p99, ms.
    pub sequential_p99_ms: f64,
    /// Notices sent 8 at a time.
    pub concurrent: usize,
    /// Their p50, ms.
    pub concurrent_p50_ms: f64,
    /// Their p99, ms.
    pub concurrent_p99_ms: f64,
}

/// Measures both nodes, `rounds` prepare/completed pairs per VM each.
pub async fn measure(
    bin: &Path,
    work: &Path,
    http: &[std::net::SocketAddr],
    tcp: &[std::net::SocketAddr],
) -> anyhow::Result<Vec<Cost>> {
    let mut costs = Vec::new();
    for durable in [false, true] {
        let dir = work.join(if durable { "cost-durable" } else { "cost-none" });
        std::fs::create_dir_all(&dir)?;
        let ports = [free_port()?, free_port()?, free_port()?];
        let state = dir.join("state.json");
        let config = node_config(ports, None, http, tcp, durable.then_some(state.as_path()), None);
        let node = Node::start(
            if durable { "cost-durable" } else { "cost-none" },
            bin,
            &dir,
            &config,
            None,
        )?;
        let client = ControlClient::new(&node.control, None, Duration::from_secs(10));
        let vms = http.len();
        let mut sequential = Vec::new();
        for round in 0..10 {
            for vm in 0..vms {
                for notice in [Notice::Prepare, Notice::Completed] {
                    sequential.push(timed(&client, vm, notice).await?);
                }
            }
            let _ = round;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut concurrent = Vec::new();
        for _ in 0..10 {
            for notice in [Notice::Prepare, Notice::Completed] {
                let calls = (0..vms.min(8)).map(|vm| {
                    let client = client.clone();
                    tokio::spawn(async move { timed(&client, vm, notice).await })
                });
                let handles: Vec<_> = calls.collect();
                for handle in handles {
                    concurrent.push(handle.await??);
                }
            }
        }
        costs.push(Cost {
            durability: if durable { "state file" } else { "none" },
            sequential: sequential.len(),
            sequential_p50_ms: percentile(&mut sequential.clone(), 50.0),
            sequential_p99_ms: percentile(&mut sequential, 99.0),
            concurrent: concurrent.len(),
            concurrent_p50_ms: percentile(&mut concurrent.clone(), 50.0),
            concurrent_p99_ms: percentile(&mut concurrent, 99.0),
        });
        drop(node);
    }
    Ok(costs)
}

async fn timed(client: &ControlClient, vm: usize, notice: Notice) -> anyhow::Result<f64> {
    let started = Instant::now();
    let _: (http::StatusCode, NoticeResponse) = client
        .post(
            &format!("/v1/vms/vm-{vm:02}/migration"),
            &NoticeRequest::new(notice),
        )
        .await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

//! `drain.long_lived.close_after` for the work that is not WebSocket (that is in `websocket.rs`):
//! an L4 connection to a drained VM is closed that long after the drain began (never before, and
//! never without the opt-in), the other VMs' connections are untouched, and the wait for drained
//! then ends drained.

mod common;

use std::time::{Duration, Instant};

use common::backends::TcpClient;
use common::{notice, tcp_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_connection_to_a_drained_vm_is_closed_after_close_after() {
    let (node, _backends) =
        tcp_node("drain = { target = 0.0, long_lived = { close_after = \"1500ms\" } }").await;
    let proxy = node.listener("tcp");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(TcpClient::connect(proxy).await);
    }
    let started = Instant::now();
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 15000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before close_after: {:?}",
        started.elapsed()
    );
    for client in &mut clients {
        let vm = client.vm.clone();
        let echoed = client.echo("after").await;
        if vm == "vm-a" {
            assert_eq!(echoed, None, "vm-a's connection was closed");
        } else {
            assert_eq!(echoed.as_deref(), Some(format!("{vm} after").as_str()));
        }
    }
    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_opt_in_an_l4_connection_outlives_the_drain() {
    let (node, _backends) = tcp_node("drain = { target = 0.0 }").await;
    let proxy = node.listener("tcp");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(TcpClient::connect(proxy).await);
    }
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 2500}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["timed_out"], true, "{reply}");
    assert_eq!(reply["drain"]["remaining"][0]["kind"], "tcp", "{reply}");
    for client in &mut clients {
        let vm = client.vm.clone();
        assert_eq!(
            client.echo("still").await.as_deref(),
            Some(format!("{vm} still").as_str())
        );
    }
}

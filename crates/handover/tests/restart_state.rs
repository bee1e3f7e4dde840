//! A restart restores every kind of state the state file keeps, before the node serves: a VM's
//! moved address, a prepare queued by the capacity guard (admitted after the restart when the
//! migration ahead of it ends), and a backend ejected by outlier detection.

mod common;

use std::time::Duration;

use common::backends::{TcpBackend, vm_counts};
use common::{Node, eventually, notice, tcp_config};

async fn backend_field(node: &Node, vm: &str, field: &str) -> serde_json::Value {
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    pools[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == vm)
        .unwrap()[field]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_moved_addresses_queued_prepares_and_ejections() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("handover.json");
    let old_a = TcpBackend::start("vm-a").await;
    let moved_to: std::net::SocketAddr = format!("127.0.0.2:{}", old_a.address.port()).parse().unwrap();
    let _new_a = TcpBackend::start_on("vm-a-moved", moved_to).await;
    let b = TcpBackend::start("vm-b").await;
    let c = TcpBackend::start("vm-c").await;
    let mut d = TcpBackend::start("vm-d").await;
    let addresses = [old_a.address, b.address, c.address, d.address];
    let config = format!(
        "[state]\nfile = \"{}\"\n\n{}",
        state.display(),
        tcp_config(
            &addresses,
            "deadline = \"120s\"\nramp = { window = \"0s\" }\nguard = { max_concurrent = 1, on_violation = \"queue\" }\noutlier = { consecutive_failures = 2, ejection = \"120s\" }"
        )
    );
    let node = Node::start(&config);

    // vm-a moved to 127.0.0.2.
    assert_eq!(node.notice("vm-a", notice("prepare")).await.0, 200);
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "completed", "new_ip": "127.0.0.2"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // vm-b drains; vm-c's prepare waits for it in the guard's queue.
    assert_eq!(node.notice("vm-b", notice("prepare")).await.0, 200);
    let (status, reply) = node.notice("vm-c", notice("prepare")).await;
    assert_eq!(status, 202, "queued: {reply}");
    // vm-d stops answering; failed connects on real traffic eject it for two minutes.
    d.stop().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let _ = vm_counts(node.listener("tcp"), 8, 1).await;
            backend_field(&node, "vm-d", "health").await == "ejected"
        })
        .await,
        "vm-d is ejected"
    );
    // Wait until the state file holds all of it (it is written within 250 ms of a change).
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(&state).is_ok_and(|text| {
                let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let pool = &saved["pools"][0];
                text.contains("127.0.0.2")
                    && saved["registry"]["queue"]
                        .as_array()
                        .is_some_and(|q| q.len() == 1)
                    && pool["ejected"].as_array().is_some_and(|e| e.len() == 1)
            })
        })
        .await,
        "the state file: {:?}",
        std::fs::read_to_string(&state)
    );
    drop(node);

    let node = Node::start(&config);
    // Restored before serving: every answer below comes from the first requests after the start.
    assert_eq!(
        backend_field(&node, "vm-a", "address").await,
        moved_to.to_string(),
        "vm-a's move survived the restart"
    );
    assert_eq!(
        backend_field(&node, "vm-d", "health").await,
        "ejected",
        "so did vm-d's ejection"
    );
    assert_eq!(node.phase("vm-b").await, "draining");
    let vms = node.vms().await;
    let queued = vms.iter().find(|v| v.vm.as_str() == "vm-c").unwrap();
    assert!(queued.queued, "vm-c's prepare is still queued");
    assert_eq!(queued.phase.to_string(), "stable");
    let counts = vm_counts(node.listener("tcp"), 60, 10).await;
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["vm-a-moved", "vm-c"],
        "new connections: moved vm-a and vm-c, not draining vm-b, not ejected vm-d: {counts:?}"
    );

    // The queued prepare is admitted once vm-b's migration ends.
    assert_eq!(node.notice("vm-b", notice("completed")).await.0, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.phase("vm-c").await == "draining"
        })
        .await
    );
    d = TcpBackend::start_on("vm-d", addresses[3]).await;
    drop(d);
}

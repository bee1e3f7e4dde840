//! A migration with no end notice is restored at its deadline; a failed one is restored at once
//! where the pool says so; history records every phase with its timestamp.

mod common;

use std::time::{Duration, Instant};

use common::backends::vm_counts;
use common::{eventually, notice, tcp_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_without_an_end_notice_is_restored_at_the_deadline() {
    let (node, _backends) = tcp_node("deadline = \"3s\"\nramp = { window = \"1s\" }").await;
    // The deadline runs from the prepare's arrival, which is after `sent`.
    let sent = Instant::now();
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    // Well inside the 3 s deadline even on a loaded machine (three batches of 30 connects).
    let counts = vm_counts(node.listener("tcp"), 90, 30).await;
    assert_eq!(counts.get("vm-a"), None);

    // Restored after the deadline without any notice, and not before it: the first time the
    // phase is seen to have left draining is at least 3 s after the prepare was sent.
    let left_draining = loop {
        let phase = node.phase("vm-a").await;
        if phase != "draining" {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(20), "never restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        left_draining >= Duration::from_millis(3000),
        "restored {left_draining:?} after the prepare, before its deadline"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );
    let counts = vm_counts(node.listener("tcp"), 300, 30).await;
    let a = counts.get("vm-a").copied().unwrap_or(0) as f64 / 300.0;
    assert!(
        (a - 1.0 / 3.0).abs() < 0.05,
        "vm-a is back at full share: {counts:?}"
    );

    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    let m = &migrations[0];
    assert_eq!(m["vm"], "vm-a");
    assert_eq!(m["end"], "deadline");
    let prepared = m["prepared_at"].as_u64().unwrap();
    let ended = m["ended_at"].as_u64().unwrap();
    assert!(
        // Not before the deadline; the upper bound leaves room for a loaded machine.
        (3000..8000).contains(&(ended - prepared)),
        "ended {} ms after prepare",
        ended - prepared
    );
    assert!(
        m["stable_at"].as_u64().unwrap() >= ended + 1000,
        "the ramp took its window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_restores_the_vm() {
    let (node, _backends) = tcp_node("restore = \"immediate\"\nramp = { window = \"30s\" }").await;
    node.notice("vm-a", notice("prepare")).await;
    node.notice("vm-a", notice("started")).await;
    assert_eq!(node.phase("vm-a").await, "migrating");
    let (status, reply) = node.notice("vm-a", notice("failed")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["phase"], "stable",
        "restore = immediate skips the ramp after a failure"
    );
    let backend = &reply["balancers"][0]["backends"][0];
    assert_eq!(backend["effective_weight"], 1.0);
    let counts = vm_counts(node.listener("tcp"), 300, 30).await;
    let a = counts.get("vm-a").copied().unwrap_or(0) as f64 / 300.0;
    assert!((a - 1.0 / 3.0).abs() < 0.05, "{counts:?}");

    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(migrations[0]["end"], "failed");
    assert!(migrations[0]["started_at"].is_u64());
    assert!(migrations[0]["migrating_ms"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_ramps_back_by_default() {
    let (node, _backends) = tcp_node("ramp = { window = \"2s\" }").await;
    node.notice("vm-a", notice("prepare")).await;
    let (_, reply) = node.notice("vm-a", notice("failed")).await;
    assert_eq!(reply["phase"], "ramping");
    let weight = reply["balancers"][0]["backends"][0]["effective_weight"]
        .as_f64()
        .unwrap();
    assert!(weight < 0.5, "the ramp starts low: {weight}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_queues_a_prepare_and_admits_it_when_another_migration_ends() {
    let (node, _backends) = tcp_node("guard = { max_concurrent = 1, on_violation = \"queue\" }").await;
    let (status, _) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200);
    let output = node.cli(&["notify", "vm-b", "prepare"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(4), "exit 4 means queued: {stdout}");
    assert!(stdout.contains("queued"), "{stdout}");
    assert!(
        stdout.contains("pool p already has 1 migration in progress (vm-a); max_concurrent = 1"),
        "{stdout}"
    );
    let vms = node.vms().await;
    let b = vms.iter().find(|v| v.vm.as_str() == "vm-b").unwrap();
    assert!(b.queued);
    assert_eq!(b.phase.to_string(), "stable");

    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(3), || async {
            node.phase("vm-b").await == "draining"
        })
        .await
    );
    let counts = vm_counts(node.listener("tcp"), 90, 30).await;
    assert_eq!(
        counts.get("vm-b"),
        None,
        "the admitted drain is applied: {counts:?}"
    );
}

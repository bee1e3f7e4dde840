//! Health checks that understand migrations, VMs that change address, and runtime state that
//! survives a restart, all through the real binary and real sockets.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::backends::{HttpBackend, HttpClient, TcpBackend, TcpClient, vm_counts};
use common::{Node, eventually, notice, pool_toml, tcp_config};

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

async fn health_of(node: &Node, vm: &str) -> String {
    backend_field(node, vm, "health")
        .await
        .as_str()
        .unwrap()
        .to_string()
}

fn share(counts: &std::collections::BTreeMap<String, usize>, vm: &str) -> f64 {
    counts.get(vm).copied().unwrap_or(0) as f64 / counts.values().sum::<usize>() as f64
}

const TCP_CHECK: &str =
    "health = { kind = \"tcp\", interval = \"100ms\", timeout = \"200ms\", rise = 2, fall = 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_listening_goes_down_and_ramps_back_when_it_returns() {
    let mut backends = [
        TcpBackend::start("vm-a").await,
        TcpBackend::start("vm-b").await,
        TcpBackend::start("vm-c").await,
    ];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&tcp_config(
        &addresses,
        &format!("{TCP_CHECK}\nramp = {{ window = \"3s\" }}"),
    ));
    assert!(
        eventually(Duration::from_secs(2), || async {
            health_of(&node, "vm-a").await == "up"
        })
        .await
    );

    backends[0].stop().await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-a").await == "down"
        })
        .await
    );
    let counts = vm_counts(node.listener("tcp"), 200, 20).await;
    assert_eq!(counts.get("vm-a"), None, "{counts:?}");
    let failures_before = backend_field(&node, "vm-a", "failures_total")
        .await
        .as_u64()
        .unwrap();
    let _ = vm_counts(node.listener("tcp"), 100, 20).await;
    assert_eq!(
        backend_field(&node, "vm-a", "failures_total")
            .await
            .as_u64()
            .unwrap(),
        failures_before,
        "a down backend is not even tried"
    );

    backends[0] = TcpBackend::start_on("vm-a", addresses[0]).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-a").await == "up"
        })
        .await
    );
    let early = share(&vm_counts(node.listener("tcp"), 150, 30).await, "vm-a");
    assert!(
        early < 0.2,
        "it ramps back instead of taking a full share at once: {early:.3}"
    );
    // The ramp (3 s) began before vm-a was seen up, so 3 s from here it is over whatever the
    // load. (`effective_weight` in /v1/pools is not a usable event: after a health ramp it stays
    // just under the full weight until the pool's weights are next recomputed.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = share(&vm_counts(node.listener("tcp"), 600, 30).await, "vm-a");
    assert!(
        (late - 1.0 / 3.0).abs() < 0.05,
        "full share after the ramp: {late:.3}"
    );
    assert_eq!(backend_field(&node, "vm-a", "outages_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_expecting_200_marks_a_backend_answering_500_down() {
    let backends = [HttpBackend::start("vm-a").await, HttpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let pool = pool_toml(
        "p",
        "health = { kind = \"http\", path = \"/health\", expect = 200, interval = \"100ms\", rise = 1, fall = 2 }",
        &addresses,
    );
    let node = Node::start(&format!(
        "[control]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{pool}"
    ));
    backends[0].health_status.store(500, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-a").await == "down"
        })
        .await
    );
    let mut client = HttpClient::connect(node.listener("web")).await;
    for _ in 0..40 {
        assert_eq!(client.get("/").await.body, "vm-b");
    }
    backends[1].health_status.store(503, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-b").await == "down"
        })
        .await
    );
    let answer = client.get("/").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("(2 of 2 down)"), "{}", answer.body);
    backends[0].health_status.store(200, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-a").await == "up"
        })
        .await
    );
    assert_eq!(client.get("/").await.body, "vm-a");
}

/// Stops vm-a (connections refused), like a switchover blackout, until vm-a's counter `field`
/// reaches `at_least` — the event the test is about, however slowly the checks run on a loaded
/// machine — then starts it again and waits until it is up; returns whether it was ever seen down.
async fn blackout(
    node: &Node,
    backends: &mut [TcpBackend],
    address: std::net::SocketAddr,
    field: &str,
    at_least: u64,
) -> bool {
    backends[0].stop().await;
    let started = Instant::now();
    let mut went_down = false;
    loop {
        // The counter first, then the health: once the counter shows the event, the health read
        // after it is the state that event left (vm-a stays stopped until the loop ends).
        let reached = backend_field(node, "vm-a", field).await.as_u64().unwrap() >= at_least;
        went_down |= health_of(node, "vm-a").await == "down";
        if reached {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{field} of vm-a did not reach {at_least}: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backends[0] = TcpBackend::start_on("vm-a", address).await;
    let back = Instant::now();
    loop {
        let health = health_of(node, "vm-a").await;
        went_down |= health == "down";
        if health == "up" && back.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(20), "vm-a is not up again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    went_down
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackout_during_a_migration_is_not_an_outage_but_the_same_outage_outside_one_is() {
    let mut backends = vec![TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&tcp_config(
        &addresses,
        &format!("{TCP_CHECK}\nblackout_grace = \"1s\"\nramp = {{ window = \"1s\" }}"),
    ));
    assert!(
        eventually(Duration::from_secs(2), || async {
            health_of(&node, "vm-a").await == "up"
        })
        .await
    );

    node.notice("vm-a", notice("prepare")).await;
    node.notice("vm-a", notice("started")).await;
    // The blackout lasts until at least two checks (`fall`) failed: outside a migration, an outage.
    let went_down = blackout(&node, &mut backends, addresses[0], "suppressed_failures_total", 2).await;
    let (_, reply) = node.notice("vm-a", notice("completed")).await;
    assert!(!went_down, "the migration's blackout marked vm-a down");
    assert_eq!(
        reply["phase"], "ramping",
        "the ramp comes from the completed migration"
    );
    assert_eq!(backend_field(&node, "vm-a", "outages_total").await, 0);
    let suppressed = backend_field(&node, "vm-a", "suppressed_failures_total")
        .await
        .as_u64()
        .unwrap();
    assert!(
        suppressed >= 2,
        "the blackout's failed checks were counted as suppressed: {suppressed}"
    );
    let metrics = node.client(None).get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("handover_backend_suppressed_failures_total{pool=\"p\""),
        "{metrics}"
    );

    // Once the migration and its grace are over, the same outage is an outage.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        blackout(&node, &mut backends, addresses[0], "outages_total", 1).await,
        "outside a migration the same outage marks vm-a down"
    );
    assert_eq!(backend_field(&node, "vm-a", "outages_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_still_dead_after_its_migration_is_marked_down() {
    let mut backends = [TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&tcp_config(
        &addresses,
        &format!("{TCP_CHECK}\nblackout_grace = \"500ms\""),
    ));
    node.notice("vm-a", notice("prepare")).await;
    node.notice("vm-a", notice("started")).await;
    backends[0].stop().await;
    // Tolerated for 500 ms, then counted: down well before the migration ends.
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-a").await == "down"
        })
        .await
    );
    assert_eq!(node.phase("vm-a").await, "migrating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_with_a_new_address_moves_new_connections_and_keeps_old_ones() {
    let old = TcpBackend::start("vm-a").await;
    let other = TcpBackend::start("vm-b").await;
    // The VM's new home: same port, another loopback IP.
    let moved_to: std::net::SocketAddr = format!("127.0.0.2:{}", old.address.port()).parse().unwrap();
    let new = TcpBackend::start_on("vm-a-moved", moved_to).await;
    let node = Node::start(&tcp_config(&[old.address, other.address], ""));

    let mut existing = TcpClient::connect(node.listener("tcp")).await;
    while existing.vm != "vm-a" {
        existing = TcpClient::connect(node.listener("tcp")).await;
    }
    let connections_before = backend_field(&node, "vm-a", "connections_total")
        .await
        .as_u64()
        .unwrap();
    assert_eq!(node.cli(&["notify", "vm-a", "prepare"]).status.code(), Some(0));
    let output = node.cli(&["notify", "vm-a", "completed", "--new-ip", "127.0.0.2"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert_eq!(
        backend_field(&node, "vm-a", "address").await,
        moved_to.to_string()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = vm_counts(node.listener("tcp"), 120, 20).await;
    assert!(
        counts.get("vm-a-moved").copied().unwrap_or(0) > 0,
        "new connections reach the new address: {counts:?}"
    );
    assert_eq!(
        counts.get("vm-a"),
        None,
        "none goes to the old address: {counts:?}"
    );
    assert_eq!(
        existing.echo("still there").await.as_deref(),
        Some("vm-a still there"),
        "the old connection is kept"
    );
    let connections_after = backend_field(&node, "vm-a", "connections_total")
        .await
        .as_u64()
        .unwrap();
    assert!(
        connections_after > connections_before,
        "same backend identity, same counters"
    );
    let vms = node.vms().await;
    assert_eq!(
        vms.iter().find(|v| v.vm.as_str() == "vm-a").unwrap().backends[0]
            .backend
            .address,
        moved_to.to_string()
    );

    // A move only makes sense with completed.
    let (status, body) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "new_ip": "127.0.0.3"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "new_ip");
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_a_vm_drains_keeps_it_draining_and_the_migration_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").join("handover.json");
    let mut backends = [
        TcpBackend::start("vm-a").await,
        TcpBackend::start("vm-b").await,
        TcpBackend::start("vm-c").await,
    ];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let config = format!(
        "[state]\nfile = \"{}\"\n\n{}",
        state.display(),
        tcp_config(
            &addresses,
            "deadline = \"60s\"\nramp = { window = \"1s\" }\nhealth = { kind = \"tcp\", interval = \"1s\", rise = 2, fall = 1 }"
        )
    );
    let node = Node::start(&config);
    let (status, _) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200);
    backends[2].stop().await;
    assert!(
        eventually(Duration::from_secs(4), || async {
            health_of(&node, "vm-c").await == "down"
        })
        .await
    );
    let before: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    drop(node);
    assert!(state.exists(), "the state file was written");

    let node = Node::start(&config);
    assert_eq!(
        node.phase("vm-a").await,
        "draining",
        "the drain survived the restart"
    );
    assert_eq!(
        health_of(&node, "vm-c").await,
        "down",
        "so did vm-c's outage, before any new check"
    );
    let counts = vm_counts(node.listener("tcp"), 150, 30).await;
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["vm-b"],
        "only vm-b takes new connections: {counts:?}"
    );
    let after: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(after[0]["prepared_at"], before[0]["prepared_at"]);
    assert_eq!(after[0]["id"], before[0]["id"]);

    let (status, reply) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["previous_phase"], "draining");
    assert!(
        eventually(Duration::from_secs(4), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );
    backends[2] = TcpBackend::start_on("vm-c", addresses[2]).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            health_of(&node, "vm-c").await == "up"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_moved_aside_and_handover_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("handover.json");
    std::fs::write(&state, "{ not json").unwrap();
    let backends = [TcpBackend::start("vm-a").await];
    let config = format!(
        "[state]\nfile = \"{}\"\n\n{}",
        state.display(),
        tcp_config(&[backends[0].address], "")
    );
    let node = Node::start(&config);
    assert!(dir.path().join("handover.corrupt").exists());
    assert!(node.log().contains("state file is not valid"), "{}", node.log());
    assert_eq!(node.phase("vm-a").await, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_on_real_traffic_eject_a_backend_for_a_while() {
    let mut backends = [TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&tcp_config(
        &addresses,
        "outlier = { consecutive_failures = 2, ejection = \"1s\" }\nramp = { window = \"0s\" }",
    ));
    backends[0].stop().await;
    // Clients are still served (the failed connect is retried elsewhere) while vm-a is ejected.
    let counts = vm_counts(node.listener("tcp"), 40, 1).await;
    assert_eq!(counts.get("vm-b"), Some(&40), "{counts:?}");
    assert_eq!(health_of(&node, "vm-a").await, "ejected");
    let failures = backend_field(&node, "vm-a", "failures_total")
        .await
        .as_u64()
        .unwrap();
    assert_eq!(
        failures, 2,
        "after two failures vm-a is not tried again while ejected"
    );
    backends[0] = TcpBackend::start_on("vm-a", addresses[0]).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            health_of(&node, "vm-a").await == "up"
        })
        .await
    );
    let counts = vm_counts(node.listener("tcp"), 100, 10).await;
    assert!(
        counts.get("vm-a").copied().unwrap_or(0) > 30,
        "back after the ejection: {counts:?}"
    );
}

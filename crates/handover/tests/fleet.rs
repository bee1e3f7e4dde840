//! A fleet of real `handover run` processes on a real etcd (Debian's etcd-server, started here on
//! ephemeral ports), with no `[[peers]]`: issue 15's "what must be shown", 1 to 5.
//!
//! 1. A prepare sent to one of three nodes drains the VM on all three; the reply lists three
//!    acknowledgements; completed (sent to another node) ramps it back everywhere.
//! 2. A node started after the prepare sends none of its first 1,000 connections to the VM.
//! 3. A node SIGKILLed during a migration is reported by the next notice within ack_timeout; once
//!    restarted it has the current phase before it serves.
//! 4. The etcd leader of a three-member cluster killed during a migration: notices still complete
//!    after the re-election, and a VM is restored at its deadline.
//! 5. All of etcd stopped: a notice fails with a clear error, deadlines restore locally, and every
//!    node converges when etcd returns; a node paused across a compaction resyncs when resumed.
//!
//! And issue 16's fleet part: the adaptive drain's level, chosen by the node that hears the
//! migration's progress, is written into the notice, so every node applies the same share; and
//! quiescence counts what the other nodes still have in flight to the VM.

mod common;

#[path = "../../fleet/tests/common/etcd.rs"]
mod etcd;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backends::{TcpBackend, TcpClient, vm_counts};
use common::harness;
use common::{Node, eventually, notice};
use etcd::Etcd;

fn main() {
    harness::main(vec![
        harness::test_async(
            "a_prepare_to_one_node_drains_the_vm_on_all_three_and_completed_ramps_it_back",
            a_prepare_to_one_node_drains_the_vm_on_all_three_and_completed_ramps_it_back,
        )
        .needs(etcd_available),
        harness::test_async(
            "a_node_started_after_the_prepare_sends_none_of_its_first_1000_connections_to_the_vm",
            a_node_started_after_the_prepare_sends_none_of_its_first_1000_connections_to_the_vm,
        )
        .needs(etcd_available),
        harness::test_async(
            "a_node_killed_during_a_migration_is_reported_within_ack_timeout_and_converges_when_restarted",
            a_node_killed_during_a_migration_is_reported_within_ack_timeout_and_converges_when_restarted,
        )
        .needs(etcd_available),
        harness::test_async(
            "notices_complete_after_the_etcd_leader_is_killed_and_deadlines_still_restore",
            notices_complete_after_the_etcd_leader_is_killed_and_deadlines_still_restore,
        )
        .needs(etcd_available),
        harness::test_async(
            "with_etcd_stopped_notices_fail_deadlines_restore_locally_and_nodes_converge_when_it_returns",
            with_etcd_stopped_notices_fail_deadlines_restore_locally_and_nodes_converge_when_it_returns,
        )
        .needs(etcd_available),
        harness::test_async(
            "a_node_paused_across_a_compaction_resyncs_when_resumed",
            a_node_paused_across_a_compaction_resyncs_when_resumed,
        )
        .needs(etcd_available),
        harness::test_async(
            "an_adaptive_level_chosen_on_one_node_reaches_every_node_through_etcd",
            an_adaptive_level_chosen_on_one_node_reaches_every_node_through_etcd,
        )
        .needs(etcd_available),
        harness::test_async(
            "quiescence_waits_for_what_another_node_still_has_in_flight_to_the_vm",
            quiescence_waits_for_what_another_node_still_has_in_flight_to_the_vm,
        )
        .needs(etcd_available),
    ]);
}

/// A node named `name` in front of the given backends, in the fleet on `etcd`; ack_timeout is
/// generous (a busy machine) except where a test measures it.
fn config(etcd: &Etcd, name: &str, backends: &[(&str, SocketAddr)]) -> String {
    config_with(etcd, name, backends, "5s")
}

fn config_with(etcd: &Etcd, name: &str, backends: &[(&str, SocketAddr)], ack_timeout: &str) -> String {
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n\
         [fleet]\netcd = {}\nnode = \"{name}\"\nlease = \"4s\"\nack_timeout = \"{ack_timeout}\"\n\n\
         [pools.p]\ndrain = {{ target = 0.0 }}\nramp = {{ window = \"2s\" }}\n",
        etcd.toml_endpoints()
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.p.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text
}

async fn backends() -> Vec<TcpBackend> {
    vec![
        TcpBackend::start("vm-a").await,
        TcpBackend::start("vm-b").await,
        TcpBackend::start("vm-c").await,
    ]
}

fn pairs(backends: &[TcpBackend]) -> Vec<(&'static str, SocketAddr)> {
    ["vm-a", "vm-b", "vm-c"]
        .into_iter()
        .zip(backends.iter().map(|b| b.address))
        .collect()
}

/// The phase a node's own pool applies to a VM.
async fn pool_phase(node: &Node, vm: &str) -> String {
    let Ok(pools) = node
        .client(None)
        .get::<serde_json::Value>("/v1/balancer/status")
        .await
    else {
        return String::new();
    };
    pools["pools"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["vm"] == vm)
        .and_then(|b| b["phase"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Sends a notice until it is answered 200 (etcd electing a leader or starting answers 503).
async fn until_applied(node: &Node, vm: &str, phase: &str, timeout: Duration) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, reply) = node.notice(vm, notice(phase)).await;
        if status == 200 || Instant::now() >= deadline {
            return (status, reply);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(reply: &serde_json::Value) -> Vec<String> {
    reply["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// Whether etcd and etcdctl are here and work.
fn etcd_available() -> Result<(), harness::Lack> {
    harness::program("etcd", "--version", "etcd-server")?;
    harness::program("etcdctl", "version", "etcd-client")
}

async fn a_prepare_to_one_node_drains_the_vm_on_all_three_and_completed_ramps_it_back() {
    let etcd = Etcd::single();
    let backends = backends().await;
    let nodes: Vec<Node> = ["lb-1", "lb-2", "lb-3"]
        .iter()
        .map(|name| Node::start(&config(&etcd, name, &pairs(&backends))))
        .collect();

    let (status, reply) = nodes[0]
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(names(&reply), ["lb-1", "lb-2", "lb-3"], "{reply}");
    for b in reply["balancers"].as_array().unwrap() {
        assert_eq!(b["kind"], "fleet", "{reply}");
        assert_eq!(b["applied"], true, "{reply}");
        assert_eq!(b["backends"][0]["phase"], "draining", "{reply}");
    }
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    for node in &nodes {
        assert_eq!(pool_phase(node, "vm-a").await, "draining");
        assert_eq!(vm_counts(node.listener("tcp"), 30, 10).await.get("vm-a"), None);
    }
    // handover fleet lists the three nodes and their acknowledgements.
    let output = nodes[1].cli(&["fleet", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(view["nodes"].as_array().unwrap().len(), 3, "{view}");
    assert_eq!(view["notices"][0]["vm"], "vm-a", "{view}");
    assert!(
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["acks"][0]["current"] == true),
        "{view}"
    );

    // The end of the migration reaches another node: the fleet agrees.
    let (status, reply) = nodes[1].notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["previous_phase"], "draining", "{reply}");
    assert_eq!(reply["phase"], "ramping", "{reply}");
    assert_eq!(names(&reply).len(), 3, "{reply}");
    for b in reply["balancers"].as_array().unwrap() {
        assert_eq!(b["backends"][0]["phase"], "ramping", "{reply}");
    }
    for node in &nodes {
        assert!(
            eventually(Duration::from_secs(10), || async {
                pool_phase(node, "vm-a").await == "stable"
            })
            .await
        );
    }
    // lb-1 sent one notice, lb-2 the other; each counts the time to its last acknowledgement.
    for node in &nodes[..2] {
        let metrics = node.client(None).get_text("/metrics").await.unwrap();
        assert!(
            metrics.contains("handover_fleet_ack_seconds_count 1\n"),
            "{metrics}"
        );
        assert!(metrics.contains("handover_fleet_registered 1\n"), "{metrics}");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            let metrics = nodes[2].client(None).get_text("/metrics").await.unwrap();
            metrics.contains("handover_fleet_nodes 3\n")
        })
        .await
    );
}

async fn a_node_started_after_the_prepare_sends_none_of_its_first_1000_connections_to_the_vm() {
    let etcd = Etcd::single();
    let backends = backends().await;
    let first = Node::start(&config(&etcd, "lb-1", &pairs(&backends)));
    let (status, reply) = first.notice("vm-b", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    let late = Node::start(&config(&etcd, "lb-4", &pairs(&backends)));
    let counts = vm_counts(late.listener("tcp"), 1000, 50).await;
    assert_eq!(counts.get("vm-b"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 1000, "{counts:?}");
}

async fn a_node_killed_during_a_migration_is_reported_within_ack_timeout_and_converges_when_restarted() {
    let etcd = Etcd::single();
    let backends = backends().await;
    let a = Node::start(&config_with(&etcd, "lb-1", &pairs(&backends), "1s"));
    let b = Node::start(&config_with(&etcd, "lb-2", &pairs(&backends), "1s"));
    let c = Node::start(&config_with(&etcd, "lb-3", &pairs(&backends), "1s"));
    let (status, reply) = a.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    c.signal("KILL");

    let sent = Instant::now();
    let (status, reply) = b.notice("vm-a", notice("started")).await;
    let took = sent.elapsed();
    assert_eq!(status, 200, "{reply}");
    // ack_timeout is 1 s: the reply never waits much past it for the dead node (its 4 s lease
    // expires 2.7 s after the kill at the earliest; the bound leaves a loaded machine room).
    assert!(took < Duration::from_secs(3), "{took:?}");
    let dead = reply["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lb-3")
        .cloned()
        .unwrap_or_else(|| panic!("lb-3 is not listed: {reply}"));
    assert_eq!(dead["applied"], false, "{reply}");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.contains("no acknowledgement within 1000 ms") || error.contains("lease expired"),
        "{error}"
    );
    drop(c);

    // Restarted, it has the current phase before its listener serves (join precedes the data
    // plane), and its ready file is written only after that.
    let started = Instant::now();
    let c = Node::start(&config_with(&etcd, "lb-3", &pairs(&backends), "1s"));
    assert_eq!(pool_phase(&c, "vm-a").await, "migrating", "{}", c.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(vm_counts(c.listener("tcp"), 30, 10).await.get("vm-a"), None);
}

async fn notices_complete_after_the_etcd_leader_is_killed_and_deadlines_still_restore() {
    let mut etcd = Etcd::cluster(3);
    let backends = backends().await;
    let a = Node::start(&config(&etcd, "lb-1", &pairs(&backends)));
    let b = Node::start(&config(&etcd, "lb-2", &pairs(&backends)));
    let (status, reply) = a.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    let deadline_sent = Instant::now();
    let (status, reply) = a
        .notice(
            "vm-b",
            serde_json::json!({"phase": "prepare", "deadline_ms": 4000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");

    let leader = etcd.leader().expect("a leader");
    etcd.kill(leader);
    // During the election a notice may be refused (503); it completes once a leader is elected.
    let (status, reply) = until_applied(&b, "vm-a", "started", Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["phase"], "migrating", "{reply}");
    assert!(
        reply["balancers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["applied"] == true),
        "{reply}\n{}\n{}",
        a.log(),
        b.log()
    );
    let (status, reply) = a.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");

    // vm-b's deadline (4 s) restores it on both nodes, leader or not.
    for node in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(15), || async {
                matches!(pool_phase(node, "vm-b").await.as_str(), "ramping" | "stable")
            })
            .await
        );
    }
    assert!(
        deadline_sent.elapsed() >= Duration::from_secs(4),
        "{:?}",
        deadline_sent.elapsed()
    );
    assert!(
        deadline_sent.elapsed() < Duration::from_secs(12),
        "{:?}",
        deadline_sent.elapsed()
    );
}

async fn with_etcd_stopped_notices_fail_deadlines_restore_locally_and_nodes_converge_when_it_returns() {
    let mut etcd = Etcd::single();
    let backends = backends().await;
    let a = Node::start(&config(&etcd, "lb-1", &pairs(&backends)));
    let b = Node::start(&config(&etcd, "lb-2", &pairs(&backends)));
    let prepared = Instant::now();
    let (status, reply) = a
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "deadline_ms": 3000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = a.notice("vm-c", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    etcd.kill_all();

    let (status, reply) = b.notice("vm-b", notice("prepare")).await;
    assert_eq!(status, 503, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("etcd cannot be reached") && error.contains("not applied"),
        "{error}"
    );
    assert_eq!(pool_phase(&a, "vm-b").await, "stable");
    assert_eq!(pool_phase(&b, "vm-b").await, "stable");

    // Both keep their last state; vm-a's deadline restores it on each node by itself.
    for node in [&a, &b] {
        assert_eq!(pool_phase(node, "vm-c").await, "draining");
        assert!(
            eventually(Duration::from_secs(10), || async {
                matches!(pool_phase(node, "vm-a").await.as_str(), "ramping" | "stable")
            })
            .await
        );
    }
    assert!(
        prepared.elapsed() >= Duration::from_secs(3),
        "{:?}",
        prepared.elapsed()
    );

    // etcd back: a notice to the other node ends vm-c, and both converge.
    etcd.restart_all();
    let (status, reply) = until_applied(&b, "vm-c", "completed", Duration::from_secs(15)).await;
    assert_eq!(status, 200, "{reply}");
    for node in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                pool_phase(node, "vm-c").await == "stable"
            })
            .await,
            "{}",
            node.log()
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                pool_phase(node, "vm-a").await == "stable"
            })
            .await
        );
    }
}

async fn a_node_paused_across_a_compaction_resyncs_when_resumed() {
    let etcd = Etcd::single();
    let backends = backends().await;
    let a = Node::start(&config(&etcd, "lb-1", &pairs(&backends)));
    let b = Node::start(&config(&etcd, "lb-2", &pairs(&backends)));
    b.signal("STOP");
    let (status, reply) = a.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = a.notice("vm-a", notice("started")).await;
    assert_eq!(status, 200, "{reply}");
    let text = etcd
        .etcdctl(&["get", "/handover/v1/notices/vm-a", "-w", "json"])
        .unwrap();
    let revision = serde_json::from_str::<serde_json::Value>(&text).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    etcd.etcdctl(&["compact", &revision.to_string()]).unwrap();
    // Paused longer than its lease (4 s), as a frozen VM or a long GC pause would be.
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.signal("CONT");
    assert!(
        eventually(Duration::from_secs(10), || async {
            pool_phase(&b, "vm-a").await == "migrating"
        })
        .await,
        "{}",
        b.log()
    );
    // Its lease expired while it was paused: it registered again and acknowledges.
    assert!(
        eventually(Duration::from_secs(30), || async {
            let (_, r) = a.notice("vm-a", notice("started")).await;
            r["balancers"]
                .as_array()
                .is_some_and(|l| l.len() == 2 && l.iter().all(|x| x["applied"] == true))
        })
        .await,
        "{}\n{}",
        a.notice("vm-a", notice("started")).await.1,
        b.log()
    );
}

/// vm-a's share of new work on a node's own pool (0 when the node cannot be asked).
async fn share_of_vm_a(node: &Node) -> f64 {
    let Ok(pools) = node
        .client(None)
        .get::<serde_json::Value>("/v1/balancer/status")
        .await
    else {
        return 0.0;
    };
    pools["pools"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["vm"] == "vm-a")
        .and_then(|b| b["share"].as_f64())
        .unwrap_or_default()
}

async fn an_adaptive_level_chosen_on_one_node_reaches_every_node_through_etcd() {
    const MIB: u64 = 1024 * 1024;
    let etcd = Etcd::single();
    let backends = backends().await;
    let nodes: Vec<Node> = ["lb-1", "lb-2"]
        .iter()
        .map(|name| {
            Node::start(&config(&etcd, name, &pairs(&backends)).replace(
                "drain = { target = 0.0 }",
                "drain = { target = 0.5, adaptive = true }",
            ))
        })
        .collect();
    let (status, reply) = until_applied(&nodes[0], "vm-a", "started", Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{reply}");
    // Both nodes apply the target: half of vm-a's normal share.
    let mut at_target = 0.0;
    for node in &nodes {
        assert!(
            eventually(Duration::from_secs(10), || async {
                pool_phase(node, "vm-a").await == "migrating"
            })
            .await
        );
        let share = share_of_vm_a(node).await;
        assert!(share > 0.0, "vm-a has no share on {}", node.control);
        at_target = share;
    }

    // lb-1 hears the progress (as from `handover migrate`): 90 MiB left at 12 MiB/s while the
    // guest dirties 8 MiB/s at the target. Its controller lowers the level.
    let progress = serde_json::json!({
        "status": "active",
        "remaining_bytes": 90 * MIB,
        "total_bytes": 128 * MIB,
        "mbps": 12.0 * 8.0 * 1.048576,
        "passes": 1,
        "downtime_limit_ms": 300,
        "max_bandwidth": 12 * MIB,
        "dirty_probe": {"bytes_per_s": (8 * MIB) as f64, "window_ms": 1000, "at": common::now_ms()},
    });
    let reply: serde_json::Value = nodes[0]
        .client(None)
        .put("/v1/vms/vm-a/migration/progress", &progress)
        .await
        .unwrap();
    assert_eq!(reply["adaptive"]["decision"], "reduce", "{reply}");
    let level = reply["adaptive"]["level"].as_f64().unwrap();
    assert!(level > 0.0 && level < 1.0, "{reply}");

    // The level went through etcd: lb-2, which heard no progress, applies the same share.
    let expected = level * at_target;
    for node in &nodes {
        assert!(
            eventually(Duration::from_secs(10), || async {
                (share_of_vm_a(node).await - expected).abs() < 1e-3
            })
            .await,
            "share {} on {}, expected {expected}",
            share_of_vm_a(node).await,
            node.control
        );
    }
    let output = nodes[1].cli(&["fleet", "--json"]);
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(view["notices"][0]["vm"], "vm-a", "{view}");
    assert_eq!(view["notices"][0]["level"], level, "{view}");
    assert_eq!(view["notices"][0]["by"], "lb-1", "{view}");

    // The end of the migration reaches both and takes the level away.
    let (status, reply) = nodes[1].notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    for node in &nodes {
        assert!(
            eventually(Duration::from_secs(10), || async {
                pool_phase(node, "vm-a").await == "stable"
            })
            .await
        );
    }
}

/// What `handover migrate` reports near the end of a copy: 1 MiB left at 12 MiB/s, so the
/// switchover is forecast well within the quiescence lead.
fn progress_near_the_switchover() -> serde_json::Value {
    const MIB: u64 = 1024 * 1024;
    serde_json::json!({
        "status": "active",
        "remaining_bytes": MIB,
        "total_bytes": 128 * MIB,
        "mbps": 12.0 * 8.0 * 1.048576,
        "passes": 3,
        "downtime_limit_ms": 300,
        "max_bandwidth": 12 * MIB,
    })
}

/// What the fleet's acknowledgements say is still in flight to vm-a through `node_name`.
async fn acked_active(asked: &Node, node_name: &str) -> Option<u64> {
    let view: serde_json::Value = asked.client(None).get("/v1/fleet").await.ok()?;
    view["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node_name)?["acks"]
        .as_array()?
        .iter()
        .find(|a| a["vm"] == "vm-a")?["active"]
        .as_u64()
}

async fn quiescence_waits_for_what_another_node_still_has_in_flight_to_the_vm() {
    let etcd = Etcd::single();
    let backends = backends().await;
    let nodes: Vec<Node> = ["lb-1", "lb-2"]
        .iter()
        .map(|name| {
            Node::start(&config(&etcd, name, &pairs(&backends)).replace(
                "drain = { target = 0.0 }",
                "drain = { target = 0.5, adaptive = true, quiesce = true }",
            ))
        })
        .collect();
    // A connection to vm-a through lb-2, open before the migration (and kept through it).
    let mut held = None;
    for _ in 0..60 {
        let client = TcpClient::connect(nodes[1].listener("tcp")).await;
        if client.vm == "vm-a" {
            held = Some(client);
            break;
        }
    }
    let mut held = held.expect("a connection to vm-a through lb-2");
    let (status, reply) = until_applied(&nodes[0], "vm-a", "started", Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{reply}");
    // lb-2's acknowledgement says the connection is still there.
    assert!(
        eventually(Duration::from_secs(10), || async {
            acked_active(&nodes[0], "lb-2").await.is_some_and(|n| n >= 1)
        })
        .await,
        "lb-2 never acknowledged the open connection"
    );

    // lb-1 hears the end of the copy is near: vm-a quiesces, but is not quiesced while lb-2
    // still carries a connection to it (lb-1 itself carries none).
    let reply: serde_json::Value = nodes[0]
        .client(None)
        .put("/v1/vms/vm-a/migration/progress", &progress_near_the_switchover())
        .await
        .unwrap();
    assert_eq!(reply["adaptive"]["quiescing"], true, "{reply}");
    assert!(reply["adaptive"]["quiesced_at"].is_null(), "{reply}");
    assert_eq!(
        held.echo("still here").await.as_deref(),
        Some("vm-a still here"),
        "the connection was kept"
    );

    // Once the connection closes, the next progress finds the VM quiesced.
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let reply: serde_json::Value = nodes[0]
                .client(None)
                .put("/v1/vms/vm-a/migration/progress", &progress_near_the_switchover())
                .await
                .unwrap();
            reply["adaptive"]["quiesced_at"].is_u64()
        })
        .await,
        "vm-a never quiesced after lb-2's connection closed"
    );
}

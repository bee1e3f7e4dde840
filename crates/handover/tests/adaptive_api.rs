//! Adaptive drain through the control API of real nodes: the level chosen from a progress report
//! on one node travels in the drain command, so its peer's data plane applies the same share; the
//! reply to a progress report says where the drain stands; bad progress and bad levels are refused
//! with the field named, and change nothing; a VM is not called quiesced while a peer that serves
//! it hangs.

mod common;

use common::backends::TcpBackend;
use common::{Node, eventually};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

fn node_config(backends: &[(&str, std::net::SocketAddr)], peers: &[(&str, &str)]) -> String {
    let mut text = String::from(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [pools.web]\ndrain = { target = 0.5, adaptive = true }\nramp = { window = \"1s\" }\n",
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    for (name, url) in peers {
        text.push_str(&format!(
            "\n[[peers]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"1s\"\n"
        ));
    }
    text
}

/// vm-a's share of new work on a node's own pool.
async fn share_of_vm_a(node: &Node) -> f64 {
    let pools: serde_json::Value = node.client(None).get("/v1/balancer/status").await.unwrap();
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == "vm-a")
        .and_then(|b| b["share"].as_f64())
        .unwrap()
}

/// What `handover migrate` reports while copying 90 MiB at 12 MiB/s with a probe of `dirty_mib`.
fn progress(dirty_mib: u64, at: u64) -> serde_json::Value {
    serde_json::json!({
        "status": "active",
        "remaining_bytes": 90 * MIB,
        "total_bytes": 128 * MIB,
        "mbps": 12.0 * 8.0 * 1.048576,
        "passes": 1,
        "downtime_limit_ms": 300,
        "max_bandwidth": 12 * MIB,
        "dirty_probe": {"bytes_per_s": (dirty_mib * MIB) as f64, "window_ms": 1000, "at": at},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_chosen_on_one_node_is_applied_by_its_peer() {
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let node_b = Node::start(&node_config(&[("vm-a", a.address), ("vm-b", b.address)], &[]));
    let node_a = Node::start(&node_config(
        &[("vm-a", a.address), ("vm-b", b.address)],
        &[("node-b", &node_b.control)],
    ));
    let (status, reply) = node_a.notice("vm-a", common::notice("started")).await;
    assert_eq!(status, 200, "{reply}");
    // At the target: half of vm-a's normal half.
    for node in [&node_a, &node_b] {
        assert!((share_of_vm_a(node).await - 0.25).abs() < 1e-9);
    }

    // The guest dirties 8 MiB/s at the target while 12 MiB/s are copied: the level falls.
    let reply: serde_json::Value = node_a
        .client(None)
        .put("/v1/vms/vm-a/migration/progress", &progress(8, common::now_ms()))
        .await
        .unwrap();
    assert_eq!(reply["recorded"], true, "{reply}");
    let adaptive = &reply["adaptive"];
    assert_eq!(adaptive["decision"], "reduce", "{reply}");
    let level = adaptive["level"].as_f64().unwrap();
    assert!(level > 0.0 && level < 0.5, "{reply}");
    assert_eq!(adaptive["settings"]["adaptive"], true, "{reply}");

    // Both data planes give vm-a the same, lower share (level × target × its normal half): the
    // level travelled to the peer.
    let expected = level * 0.5 * 0.5;
    for node in [&node_a, &node_b] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                (share_of_vm_a(node).await - expected).abs() < 1e-3
            })
            .await,
            "share {} on {}, expected {expected}",
            share_of_vm_a(node).await,
            node.control
        );
    }
    let vms: serde_json::Value = node_a.client(None).get("/v1/vms/vm-a").await.unwrap();
    assert_eq!(vms["adaptive"]["level"], level, "{vms}");
    assert_eq!(vms["adaptive"]["quiescing"], false, "{vms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_progress_and_bad_levels_are_refused_with_the_field_and_change_nothing() {
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let node = Node::start(&node_config(&[("vm-a", a.address), ("vm-b", b.address)], &[]));
    let (status, _) = node.notice("vm-a", common::notice("started")).await;
    assert_eq!(status, 200);

    let mut bad = progress(8, common::now_ms());
    bad["dirty_probe"]["bytes_per_s"] = serde_json::json!(-5.0);
    let error = node
        .client(None)
        .put::<_, serde_json::Value>("/v1/vms/vm-a/migration/progress", &bad)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("400") || text.contains("dirty_probe"), "{text}");
    assert!(text.contains("dirty_probe.bytes_per_s"), "{text}");

    // A peer command with a level outside 0..1.
    let error = node
        .client(None)
        .put::<_, serde_json::Value>(
            "/v1/balancer/vms/vm-a",
            &serde_json::json!({"action": "drain", "elapsed_ms": 0, "migrating": true, "deadline_in_ms": 60000, "level": 1.5}),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("level"), "{error}");

    // Nothing changed: vm-a is still at its target, and nothing was recorded.
    assert!((share_of_vm_a(&node).await - 0.25).abs() < 1e-9);
    let vm: serde_json::Value = node.client(None).get("/v1/vms/vm-a").await.unwrap();
    assert!(vm.get("adaptive").is_none(), "{vm}");
}

/// What `handover migrate` reports near the end of a copy: 1 MiB left at 12 MiB/s, so the
/// switchover is forecast well within the quiescence lead.
fn progress_near_the_switchover() -> serde_json::Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_is_not_called_quiesced_while_a_peer_that_serves_it_hangs() {
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let quiescing = |peers: &[(&str, &str)]| {
        node_config(&[("vm-a", a.address), ("vm-b", b.address)], peers)
            .replace("adaptive = true }", "adaptive = true, quiesce = true }")
    };
    let node_b = Node::start(&quiescing(&[]));
    let node_a = Node::start(&quiescing(&[("node-b", &node_b.control)]));
    let (status, reply) = node_a.notice("vm-a", common::notice("started")).await;
    assert_eq!(status, 200, "{reply}");

    // node-b hangs: what reaches vm-a through it cannot be seen, so however little node-a
    // itself carries (nothing), vm-a quiesces but is not quiesced.
    node_b.signal("STOP");
    for _ in 0..3 {
        let reply: serde_json::Value = node_a
            .client(None)
            .put("/v1/vms/vm-a/migration/progress", &progress_near_the_switchover())
            .await
            .unwrap();
        assert_eq!(reply["adaptive"]["quiescing"], true, "{reply}");
        assert!(reply["adaptive"]["quiesced_at"].is_null(), "{reply}");
    }

    // Once node-b answers again (and carries nothing to vm-a), vm-a is quiesced.
    node_b.signal("CONT");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let reply: serde_json::Value = node_a
                .client(None)
                .put("/v1/vms/vm-a/migration/progress", &progress_near_the_switchover())
                .await
                .unwrap();
            reply["adaptive"]["quiesced_at"].is_u64()
        })
        .await,
        "vm-a never quiesced after node-b answered again"
    );
}

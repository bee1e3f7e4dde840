//! Two handover processes as peers: one notice reaches both, the reply lists both results; an
//! unreachable peer is reported within its timeout without holding up the others; a VM only a peer
//! serves is found through it; a peer restores a VM by itself if the node that drained it dies.

mod common;

use std::time::{Duration, Instant};

use common::backends::{TcpBackend, vm_counts};
use common::{Node, eventually, notice};

fn node_config(pool: &str, backends: &[(&str, std::net::SocketAddr)], peers: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"{pool}\"\n\n[pools.{pool}]\ndrain = {{ target = 0.0 }}\nramp = {{ window = \"1s\" }}\n"
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.{pool}.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    for (name, url) in peers {
        text.push_str(&format!(
            "\n[[peers]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"500ms\"\n"
        ));
    }
    text
}

async fn pool_phase(node: &Node, vm: &str) -> String {
    let pools: serde_json::Value = node.client(None).get("/v1/balancer/status").await.unwrap();
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == vm)
        .map(|b| b["phase"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_prepare_reaches_both_nodes_and_the_reply_lists_both() {
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let c = TcpBackend::start("vm-c").await;
    let node_b = Node::start(&node_config(
        "edge",
        &[("vm-a", a.address), ("vm-b", b.address)],
        &[],
    ));
    let node_a = Node::start(&node_config(
        "core",
        &[("vm-a", a.address), ("vm-c", c.address)],
        &[("node-b", &node_b.control)],
    ));

    let (status, reply) = node_a
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let balancers = reply["balancers"].as_array().unwrap();
    assert_eq!(balancers.len(), 2, "{reply}");
    assert_eq!(balancers[0]["name"], "embedded");
    assert_eq!(balancers[0]["applied"], true);
    assert_eq!(balancers[1]["name"], "node-b");
    assert_eq!(balancers[1]["kind"], "peer");
    assert_eq!(balancers[1]["serves"], true);
    assert_eq!(balancers[1]["applied"], true);
    assert_eq!(balancers[1]["backends"][0]["phase"], "draining");
    assert_eq!(reply["drain"]["drained"], true);

    // Both data planes now keep new connections away from vm-a.
    assert_eq!(pool_phase(&node_b, "vm-a").await, "draining");
    assert_eq!(vm_counts(node_b.listener("tcp"), 60, 20).await.get("vm-a"), None);
    assert_eq!(vm_counts(node_a.listener("tcp"), 60, 20).await.get("vm-a"), None);

    let (status, reply) = node_a.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["balancers"][1]["backends"][0]["phase"], "ramping");
    assert!(
        eventually(Duration::from_secs(5), || async {
            pool_phase(&node_b, "vm-a").await == "stable"
        })
        .await
    );

    // A VM that only the peer serves is identified through it.
    let (status, reply) = node_a.notice("vm-b", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["balancers"][0]["serves"], false);
    assert_eq!(reply["balancers"][1]["serves"], true);
    assert_eq!(pool_phase(&node_b, "vm-b").await, "draining");

    // A VM nobody serves is unknown, and the reply says what each balancer answered.
    let (status, reply) = node_a.notice("vm-x", notice("prepare")).await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["balancers"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_reported_and_does_not_block_the_others() {
    let a = TcpBackend::start("vm-a").await;
    let c = TcpBackend::start("vm-c").await;
    let node_b = Node::start(&node_config("edge", &[("vm-a", a.address)], &[]));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A peer that accepts connections but never answers: the worst case for a timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let node_a = Node::start(&node_config(
        "core",
        &[("vm-a", a.address), ("vm-c", c.address)],
        &[
            ("node-b", &node_b.control),
            ("dead", &format!("http://{dead}")),
            ("silent", &silent_url),
        ],
    ));

    let started = Instant::now();
    let (status, reply) = node_a.notice("vm-a", notice("prepare")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert!(
        took < Duration::from_millis(1500),
        "bounded by the 500 ms peer timeout, took {took:?}"
    );
    let by_name = |name: &str| {
        reply["balancers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("embedded")["applied"], true);
    assert_eq!(by_name("node-b")["applied"], true);
    assert!(
        by_name("dead")["error"].as_str().unwrap().contains("unreachable"),
        "{reply}"
    );
    assert!(
        by_name("silent")["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 500 ms"),
        "{reply}"
    );

    let metrics = node_a.client(None).get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("handover_balancer_up{balancer=\"dead\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_balancer_up{balancer=\"node-b\"} 1"),
        "{metrics}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_comes_back_is_told_the_current_phase() {
    let a = TcpBackend::start("vm-a").await;
    let c = TcpBackend::start("vm-c").await;
    // Reserve node B's control port, start A pointing at it while B is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_url = format!("http://127.0.0.1:{port}");
    let node_a = Node::start(&node_config(
        "core",
        &[("vm-a", a.address), ("vm-c", c.address)],
        &[("node-b", &b_url)],
    ));
    let (status, reply) = node_a.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200);
    assert!(reply["balancers"][1]["error"].is_string());

    let config_b = node_config("edge", &[("vm-a", a.address)], &[]).replace(
        "bind = \"127.0.0.1:0\"\n\n[[listeners]]",
        &format!("bind = \"127.0.0.1:{port}\"\n\n[[listeners]]"),
    );
    let node_b = Node::start(&config_b);
    assert!(
        eventually(Duration::from_secs(10), || async {
            pool_phase(&node_b, "vm-a").await == "draining"
        })
        .await,
        "the retry applied the drain on the peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restores_the_vm_itself_if_the_draining_node_dies() {
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let node_b = Node::start(&node_config(
        "edge",
        &[("vm-a", a.address), ("vm-b", b.address)],
        &[],
    ));
    let node_a = Node::start(&node_config(
        "core",
        &[("vm-a", a.address)],
        &[("node-b", &node_b.control)],
    ));
    let (status, _) = node_a
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "deadline_ms": 1000}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(pool_phase(&node_b, "vm-a").await, "draining");
    drop(node_a);
    // Deadline (1 s) plus the local grace (1 s) plus the ramp (1 s).
    assert!(
        eventually(Duration::from_secs(8), || async {
            pool_phase(&node_b, "vm-a").await == "stable"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_moves_is_moved_on_every_node() {
    let a = TcpBackend::start("vm-a").await;
    let node_b = Node::start(&node_config("edge", &[("vm-a", a.address)], &[]));
    let node_a = Node::start(&node_config(
        "core",
        &[("vm-a", a.address)],
        &[("node-b", &node_b.control)],
    ));
    node_a.notice("vm-a", notice("prepare")).await;
    let (status, reply) = node_a
        .notice(
            "vm-a",
            serde_json::json!({"phase": "completed", "new_ip": "127.0.0.9"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let moved = format!("127.0.0.9:{}", a.address.port());
    assert_eq!(reply["balancers"][0]["backends"][0]["address"], moved.as_str());
    assert_eq!(
        reply["balancers"][1]["backends"][0]["address"],
        moved.as_str(),
        "{reply}"
    );
    let pools: serde_json::Value = node_b.client(None).get("/v1/balancer/status").await.unwrap();
    assert_eq!(pools["pools"][0]["backends"][0]["address"], moved.as_str());
}

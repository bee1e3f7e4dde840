//! Two drain behaviours that only skippable or no tests covered: `drain.keep = "in-flight"`
//! (idle upstream keep-alive connections to the draining VM are closed at once, requests in
//! flight still finish) and the pool's `fallback` (every backend draining: they serve anyway, and
//! `/v1/pools` says so).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::backends::{HttpBackend, HttpClient};
use common::{Node, eventually, notice, pool_toml};

fn config(addresses: &[std::net::SocketAddr], pool_extra: &str) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
        pool_toml("p", pool_extra, addresses)
    )
}

/// Requests on one client connection until vm-a has answered one and `at_least` upstream
/// connections to vm-a are open, so that the proxy holds an idle keep-alive connection to vm-a.
async fn idle_upstream_to_vm_a(node: &Node, vm_a: &HttpBackend, at_least: u64) -> HttpClient {
    let mut client = HttpClient::connect(node.listener("web")).await;
    let mut answered_by_a = false;
    for _ in 0..100 {
        answered_by_a |= client.get("/").await.body == "vm-a";
        if answered_by_a && vm_a.open.load(Ordering::Relaxed) >= at_least {
            return client;
        }
    }
    panic!(
        "no idle upstream connection to vm-a: {} open",
        vm_a.open.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_in_flight_closes_idle_upstream_connections_to_the_draining_vm_and_lets_requests_finish() {
    let backends = [HttpBackend::start("vm-a").await, HttpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(
        &addresses,
        "drain = { target = 0.0, keep = \"in-flight\" }",
    ));
    // A slow request in flight to vm-a when the drain begins.
    let proxy = node.listener("web");
    let slow = tokio::spawn(async move {
        let mut slow_client = HttpClient::connect(proxy).await;
        loop {
            let answer = slow_client.get("/slow?ms=6000").await;
            if answer.body == "vm-a" {
                return answer;
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(40), || async {
            common::active_by_vm(&node).await.get("vm-a") == Some(&1)
        })
        .await,
        "a slow request is in flight to vm-a"
    );
    // And beside it an idle keep-alive connection to vm-a.
    let mut client = idle_upstream_to_vm_a(&node, &backends[0], 2).await;

    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    // Idle connections to vm-a close at once; the one carrying the slow request stays.
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends[0].open.load(Ordering::Relaxed) <= 1
        })
        .await,
        "idle upstream connections to vm-a were not closed: {} open",
        backends[0].open.load(Ordering::Relaxed)
    );
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200, "the request in flight finished");
    // Once it finished, nothing is left open to vm-a, and new requests go to vm-b.
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends[0].open.load(Ordering::Relaxed) == 0
        })
        .await,
        "{} open",
        backends[0].open.load(Ordering::Relaxed)
    );
    for _ in 0..10 {
        assert_eq!(client.get("/").await.body, "vm-b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_connections_leaves_idle_upstream_connections_open() {
    // The contrast: with the default keep the idle upstream connection outlives the prepare.
    let backends = [HttpBackend::start("vm-a").await, HttpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(&addresses, "drain = { target = 0.0 }"));
    let _client = idle_upstream_to_vm_a(&node, &backends[0], 1).await;
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        backends[0].open.load(Ordering::Relaxed) >= 1,
        "keep = connections closed the idle upstream connection"
    );
}

async fn fallback(node: &Node) -> bool {
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    pools[0]["fallback"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_draining_is_reported_as_fallback_and_still_served() {
    let backends = [HttpBackend::start("vm-a").await, HttpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(&addresses, "drain = { target = 0.0 }"));
    assert!(!fallback(&node).await);

    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert!(!fallback(&node).await, "vm-b still serves");
    let mut client = HttpClient::connect(node.listener("web")).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.body, "vm-b");
    }

    let (status, reply) = node.notice("vm-b", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert!(fallback(&node).await, "every backend drains");
    // Never refuse service: both draining VMs answer.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = HttpClient::connect(node.listener("web")).await.get("/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        seen.insert(answer.body);
    }
    assert!(seen.contains("vm-a") && seen.contains("vm-b"), "{seen:?}");

    let (status, _) = node.notice("vm-b", notice("completed")).await;
    assert_eq!(status, 200);
    assert!(!fallback(&node).await, "vm-b is back");
}

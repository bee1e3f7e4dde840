//! WebSocket through an `http` listener with real peers (Python `websockets`, client and server):
//! messages both ways, a tunnel kept across a `prepare` without the opt-in (and listed as the VM's
//! connection by the wait for drained), closed with 1001 after `drain.long_lived.close_after`
//! with it, new upgrades going to the other VMs while the VM drains, and a listener that does not
//! allow upgrades.

mod common;

use std::collections::BTreeMap;

use common::harness;
use common::ws::{WsClient, WsServer};
use common::{Node, notice, pool_toml};

fn main() {
    harness::main(vec![
        harness::test_async(
            "websocket_messages_flow_both_ways_and_tunnels_count_as_the_vms_connections",
            websocket_messages_flow_both_ways_and_tunnels_count_as_the_vms_connections,
        )
        .needs(common::ws::available),
        harness::test_async(
            "a_tunnel_stays_across_a_prepare_and_new_upgrades_go_to_the_other_vms",
            a_tunnel_stays_across_a_prepare_and_new_upgrades_go_to_the_other_vms,
        )
        .needs(common::ws::available),
        harness::test_async(
            "with_long_lived_close_after_the_tunnel_is_closed_going_away_and_the_vm_drains",
            with_long_lived_close_after_the_tunnel_is_closed_going_away_and_the_vm_drains,
        )
        .needs(common::ws::available),
        harness::test_async(
            "a_listener_without_websocket_passes_the_request_as_a_plain_get",
            a_listener_without_websocket_passes_the_request_as_a_plain_get,
        )
        .needs(common::ws::available),
    ]);
}

/// Three WebSocket servers (vm-a, vm-b, vm-c) behind a node whose listener `web` has `listener`
/// settings and whose pool has `pool` settings.
fn setup(listener: &str, pool: &str) -> (Node, Vec<WsServer>) {
    let servers = vec![
        WsServer::start("vm-a"),
        WsServer::start("vm-b"),
        WsServer::start("vm-c"),
    ];
    let addresses: Vec<_> = servers.iter().map(|s| s.address).collect();
    let config = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{listener}\n\n{}",
        pool_toml("p", pool, &addresses)
    );
    (Node::start(&config), servers)
}

/// Opens `count` tunnels named `prefix0..`; returns which VM each reached.
async fn open_tunnels(client: &mut WsClient, prefix: &str, count: usize) -> BTreeMap<String, String> {
    let mut reached = BTreeMap::new();
    for i in 0..count {
        let id = format!("{prefix}{i}");
        client.open(&id).await.unwrap();
        let reply = client.send(&id, "hello").await.unwrap();
        let (vm, echoed) = reply.split_once(':').unwrap();
        assert_eq!(echoed, "hello");
        reached.insert(id, vm.to_string());
    }
    reached
}

async fn websocket_messages_flow_both_ways_and_tunnels_count_as_the_vms_connections() {
    let (node, _servers) = setup("", "");
    let mut client = WsClient::start(&format!("ws://{}/chat", node.listener("web")));
    let reached = open_tunnels(&mut client, "t", 3).await;
    let vms: std::collections::BTreeSet<_> = reached.values().collect();
    assert_eq!(vms.len(), 3, "each tunnel balanced on its own: {reached:?}");
    for (id, vm) in &reached {
        for n in 0..20 {
            let text = format!("message-{n}-{}", "x".repeat(n * 500));
            assert_eq!(client.send(id, &text).await.unwrap(), format!("{vm}:{text}"));
        }
    }
    // Each tunnel is an active connection of its VM.
    let active = common::active_by_vm(&node).await;
    assert_eq!(active.values().sum::<u64>(), 3, "{active:?}");
}

async fn a_tunnel_stays_across_a_prepare_and_new_upgrades_go_to_the_other_vms() {
    let (node, _servers) = setup("", "");
    let mut client = WsClient::start(&format!("ws://{}/chat", node.listener("web")));
    let reached = open_tunnels(&mut client, "t", 3).await;
    let on_a = reached.iter().find(|(_, vm)| *vm == "vm-a").unwrap().0.clone();

    // Without the opt-in, the wait for drained times out and names the tunnel.
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 1500}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["timed_out"], true, "{reply}");
    let remaining = reply["drain"]["remaining"].as_array().unwrap();
    assert_eq!(remaining.len(), 1, "{reply}");
    assert_eq!(remaining[0]["kind"], "websocket");
    assert_eq!(remaining[0]["request"], "GET /chat");

    // The tunnel still carries messages both ways; new upgrades avoid vm-a.
    assert_eq!(client.send(&on_a, "still").await.unwrap(), "vm-a:still");
    assert_eq!(client.closed_within(&on_a, 1.0).await, None);
    let later = open_tunnels(&mut client, "n", 8).await;
    assert!(!later.values().any(|vm| vm == "vm-a"), "{later:?}");
    assert_eq!(client.send(&on_a, "after").await.unwrap(), "vm-a:after");
    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
}

async fn with_long_lived_close_after_the_tunnel_is_closed_going_away_and_the_vm_drains() {
    let (node, servers) = setup(
        "",
        "drain = { target = 0.0, long_lived = { close_after = \"1s\" } }",
    );
    let mut client = WsClient::start(&format!("ws://{}/chat", node.listener("web")));
    let reached = open_tunnels(&mut client, "t", 3).await;
    let on_a = reached.iter().find(|(_, vm)| *vm == "vm-a").unwrap().0.clone();
    let started = std::time::Instant::now();
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 15000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    assert!(started.elapsed().as_millis() >= 900, "not before close_after");
    // The client saw an orderly close: 1001, going away.
    assert_eq!(client.closed_within(&on_a, 5.0).await.as_deref(), Some("1001"));
    // And so did the server: the proxy's close frame, 1001 too.
    let server_saw = common::eventually(std::time::Duration::from_secs(5), || async {
        servers[0].close_codes() == ["1001"]
    })
    .await;
    assert!(server_saw, "vm-a's server saw {:?}", servers[0].close_codes());
    // The other VMs' tunnels are untouched, and a new client reconnects elsewhere.
    for (id, vm) in reached.iter().filter(|(_, vm)| *vm != "vm-a") {
        assert_eq!(client.send(id, "ok").await.unwrap(), format!("{vm}:ok"));
    }
    let again = open_tunnels(&mut client, "r", 3).await;
    assert!(!again.values().any(|vm| vm == "vm-a"), "{again:?}");
}

async fn a_listener_without_websocket_passes_the_request_as_a_plain_get() {
    let (node, _servers) = setup("websocket = false", "");
    let mut client = WsClient::start(&format!("ws://{}/chat", node.listener("web")));
    let refused = client.open("t0").await.unwrap_err();
    // The websockets server answers a GET without Upgrade with 426.
    assert!(refused.contains("426"), "{refused}");
}

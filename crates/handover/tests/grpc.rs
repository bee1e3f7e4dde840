//! gRPC through handover with real peers (Python `grpcio`, client and servers): the listener takes
//! HTTP/2 by prior knowledge, the pool speaks HTTP/2 to its backends. Unary calls are balanced
//! one by one, a bidirectional stream carries messages both ways and ends with its status
//! (trailers), new calls avoid a draining VM, and a stream in flight to it finishes; a pool that
//! speaks TLS to its backends verifies them against its CA file (or, `insecure`, not at all).

mod common;

use std::collections::BTreeMap;

use common::harness;
use common::ws::{GRPC, WsClient, WsServer};
use common::{Node, notice, pool_toml};

fn main() {
    harness::main(vec![
        harness::test_async(
            "grpc_unary_and_bidirectional_streaming_calls_pass_through",
            grpc_unary_and_bidirectional_streaming_calls_pass_through,
        )
        .needs(common::ws::grpc_available),
        harness::test_async(
            "new_calls_avoid_a_draining_vm_and_a_stream_in_flight_to_it_finishes",
            new_calls_avoid_a_draining_vm_and_a_stream_in_flight_to_it_finishes,
        )
        .needs(common::ws::grpc_available),
        harness::test_async(
            "tls_to_grpc_backends_is_verified_against_the_pools_ca",
            tls_to_grpc_backends_is_verified_against_the_pools_ca,
        )
        .needs(common::ws::grpc_available)
        .needs(common::tls::openssl_available),
    ]);
}

fn setup(pool: &str) -> (Node, Vec<WsServer>) {
    let servers = vec![
        WsServer::start_script(GRPC, "vm-a"),
        WsServer::start_script(GRPC, "vm-b"),
        WsServer::start_script(GRPC, "vm-c"),
    ];
    let addresses: Vec<_> = servers.iter().map(|s| s.address).collect();
    let config = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"grpc\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\n\n{}",
        pool_toml("p", &format!("protocol = \"h2\"\n{pool}"), &addresses)
    );
    (Node::start(&config), servers)
}

/// `count` unary calls: how many each VM answered.
async fn unary_calls(client: &mut WsClient, count: usize) -> BTreeMap<String, usize> {
    let mut by_vm = BTreeMap::new();
    for i in 0..count {
        let line = client.ask(&format!("unary ping-{i}")).await;
        let reply = line.strip_prefix("reply ").unwrap_or_else(|| panic!("{line}"));
        let (vm, echoed) = reply.split_once(':').unwrap();
        assert_eq!(echoed, format!("ping-{i}"));
        *by_vm.entry(vm.to_string()).or_insert(0) += 1;
    }
    by_vm
}

/// Opens a Chat call and says hello: the VM that answered.
async fn open_chat(client: &mut WsClient, id: &str) -> String {
    assert_eq!(client.ask(&format!("open {id}")).await, format!("opened {id}"));
    let line = client.ask(&format!("say {id} hello")).await;
    let reply = line
        .strip_prefix(&format!("reply {id} "))
        .unwrap_or_else(|| panic!("{line}"));
    let (vm, echoed) = reply.split_once(':').unwrap();
    assert_eq!(echoed, "hello");
    vm.to_string()
}

async fn grpc_unary_and_bidirectional_streaming_calls_pass_through() {
    let (node, _servers) = setup("");
    let mut client = WsClient::start_script(GRPC, &node.listener("grpc").to_string());
    let by_vm = unary_calls(&mut client, 9).await;
    assert_eq!(
        by_vm.values().copied().collect::<Vec<_>>(),
        [3, 3, 3],
        "each call balanced: {by_vm:?}"
    );
    let vm = open_chat(&mut client, "c1").await;
    for n in 0..25 {
        let text = format!("m{n}-{}", "y".repeat(n * 200));
        assert_eq!(
            client.ask(&format!("say c1 {text}")).await,
            format!("reply c1 {vm}:{text}")
        );
    }
    // The call ends with the status its trailers carry.
    assert_eq!(client.ask("end c1").await, "ended c1 OK");
}

async fn new_calls_avoid_a_draining_vm_and_a_stream_in_flight_to_it_finishes() {
    let (node, _servers) = setup("");
    let mut client = WsClient::start_script(GRPC, &node.listener("grpc").to_string());
    let mut on_a = None;
    for i in 0..6 {
        let id = format!("s{i}");
        if open_chat(&mut client, &id).await == "vm-a" {
            on_a = Some(id);
            break;
        }
    }
    let on_a = on_a.expect("a stream on vm-a");
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 1000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["drain"]["timed_out"], true,
        "the stream is still open: {reply}"
    );
    assert_eq!(
        reply["drain"]["remaining"][0]["request"], "POST /test.Echo/Chat",
        "{reply}"
    );
    // New calls avoid vm-a...
    let by_vm = unary_calls(&mut client, 12).await;
    assert!(!by_vm.contains_key("vm-a"), "{by_vm:?}");
    // ... while the stream to it goes on and finishes normally.
    for n in 0..5 {
        assert_eq!(
            client.ask(&format!("say {on_a} late-{n}")).await,
            format!("reply {on_a} vm-a:late-{n}")
        );
    }
    assert_eq!(
        client.ask(&format!("end {on_a}")).await,
        format!("ended {on_a} OK")
    );
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
}

async fn tls_to_grpc_backends_is_verified_against_the_pools_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::ca_and_leaf(dir.path(), "backend.test", "backend").unwrap();
    let (other, _, _) = common::tls::ca_and_leaf(dir.path(), "backend.test", "other").unwrap();
    let servers: Vec<WsServer> = ["vm-a", "vm-b", "vm-c"]
        .iter()
        .map(|vm| WsServer::start_script_with(GRPC, vm, &[cert.as_path(), key.as_path()]))
        .collect();
    let addresses: Vec<_> = servers.iter().map(|s| s.address).collect();
    let node_with = |tls: String| {
        Node::start(&format!(
            "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"grpc\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\n\n{}",
            pool_toml(
                "p",
                &format!("protocol = \"h2\"\ntls = {tls}\nretries = 0"),
                &addresses
            )
        ))
    };
    // Verified against the right CA, under the name the pool gives.
    let verified = node_with(format!(
        "{{ ca = \"{}\", server_name = \"backend.test\" }}",
        ca.display()
    ));
    let mut client = WsClient::start_script(GRPC, &verified.listener("grpc").to_string());
    let by_vm = unary_calls(&mut client, 6).await;
    assert_eq!(by_vm.len(), 3, "{by_vm:?}");
    // Against another CA the backends are not trusted: no call gets through.
    let wrong = node_with(format!(
        "{{ ca = \"{}\", server_name = \"backend.test\" }}",
        other.display()
    ));
    let mut client = WsClient::start_script(GRPC, &wrong.listener("grpc").to_string());
    let line = client.ask("unary ping").await;
    assert!(line.starts_with("failed "), "{line}");
    assert!(
        common::log_contains(&wrong, "TLS handshake with", std::time::Duration::from_secs(5)).await,
        "{}",
        wrong.log()
    );
    // Insecure: encrypted, not verified, and said so.
    let insecure = node_with("{ insecure = true }".to_string());
    let mut client = WsClient::start_script(GRPC, &insecure.listener("grpc").to_string());
    assert_eq!(unary_calls(&mut client, 3).await.values().sum::<usize>(), 3);
    assert!(insecure.log().contains("not verified"), "{}", insecure.log());
}

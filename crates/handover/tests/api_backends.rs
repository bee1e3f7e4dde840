//! Backends through the API on two peer nodes (real binaries): `PUT` and `DELETE
//! /v1/pools/{pool}/backends/{address}` on one node reach the other, need the token, refuse bad
//! input naming the field, drain what they remove, and survive a restart of both nodes; a change
//! that cannot be written is refused (503, naming the cause) and changes nothing; in fleet mode a
//! change made through any node reaches every node of the fleet through etcd, those that start
//! later included.

mod common;

#[path = "../../fleet/tests/common/etcd.rs"]
mod etcd;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::backends::TcpBackend;
use common::backends::vm_counts;
use common::disk::{SmallDisk, tmpfs_available};
use common::harness;
use common::lb::free_port;
use common::{Node, eventually};
use handover_drivers::{ClientError, ControlClient};

const TOKEN: &str = "s3cret";

fn config(control: u16, peer: u16, state: &Path, backends: &[(&str, SocketAddr)]) -> String {
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:{control}\"\ntoken = \"{TOKEN}\"\n\n[state]\nfile = \"{}\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [[peers]]\nname = \"peer\"\nurl = \"http://127.0.0.1:{peer}\"\ntoken = \"{TOKEN}\"\ntimeout = \"2s\"\n\n[pools.web]\n",
        state.display()
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text
}

/// The backends of pool `web` on a node: (address, vm, weight).
async fn backends(node: &Node) -> Vec<(String, String, u64)> {
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    pools[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["vm"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A call's status and JSON body, errors included.
async fn call(
    client: &ControlClient,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let result = match method {
        "PUT" => client
            .put::<_, serde_json::Value>(path, &body)
            .await
            .map(|v| (200, v)),
        _ => client.delete::<serde_json::Value>(path).await.map(|v| (200, v)),
    };
    match result {
        Ok(pair) => pair,
        Err(ClientError::Status { status, body }) => (
            status.as_u16(),
            serde_json::json!({"error": body.error, "field": body.field}),
        ),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn main() {
    harness::main(vec![
        harness::test_async(
            "backends_set_through_the_api_reach_the_peer_drain_and_survive_a_restart",
            backends_set_through_the_api_reach_the_peer_drain_and_survive_a_restart,
        ),
        harness::test_async(
            "a_backend_change_that_cannot_be_written_is_refused_with_its_cause_and_changes_nothing",
            a_backend_change_that_cannot_be_written_is_refused_with_its_cause_and_changes_nothing,
        )
        .needs(tmpfs_available),
        harness::test_async(
            "backends_set_through_one_fleet_node_reach_every_node_and_one_started_later",
            backends_set_through_one_fleet_node_reach_every_node_and_one_started_later,
        )
        .needs(etcd_available),
        harness::test_async(
            "without_a_state_file_the_reply_says_the_change_is_written_nowhere",
            without_a_state_file_the_reply_says_the_change_is_written_nowhere,
        ),
    ])
}

/// Whether etcd and etcdctl are here and work (Debian's etcd-server and etcd-client).
fn etcd_available() -> Result<(), harness::Lack> {
    harness::program("etcd", "--version", "etcd-server")?;
    harness::program("etcdctl", "version", "etcd-client")
}

/// A node of the fleet on `etcd` named `name`, with a token, a state file and pool `web`.
fn fleet_config(etcd: &etcd::Etcd, name: &str, state: &Path, backends: &[(&str, SocketAddr)]) -> String {
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[state]\nfile = \"{}\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [fleet]\netcd = {}\nnode = \"{name}\"\nlease = \"4s\"\nack_timeout = \"5s\"\n\n[pools.web]\n",
        state.display(),
        etcd.toml_endpoints()
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text
}

async fn backends_set_through_the_api_reach_the_peer_drain_and_survive_a_restart() {
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let c = TcpBackend::start("vm-c").await;
    let dir = tempfile::tempdir().unwrap();
    let (port_1, port_2) = (free_port(), free_port());
    let base = [("vm-a", a.address), ("vm-b", b.address)];
    let config_1 = config(port_1, port_2, &dir.path().join("one.json"), &base);
    let config_2 = config(port_2, port_1, &dir.path().join("two.json"), &base);
    let mut one = Node::start(&config_1);
    let mut two = Node::start(&config_2);
    let admin = one.client(Some(TOKEN));
    let path_c = format!("/v1/pools/web/backends/{}", c.address);

    // The token is required.
    let (status, _) = call(
        &one.client(None),
        "PUT",
        &path_c,
        serde_json::json!({"vm": "vm-c"}),
    )
    .await;
    assert_eq!(status, 401);

    // Bad input names its field and changes nothing.
    for (path, body, expected, field) in [
        (
            path_c.clone(),
            serde_json::json!({"vm": "vm-c", "weight": 0}),
            400,
            "weight",
        ),
        (path_c.clone(), serde_json::json!({"vm": "not a vm!"}), 400, "vm"),
        (
            path_c.clone(),
            serde_json::json!({"vm": "vm-c", "colour": 1}),
            400,
            "colour",
        ),
        (
            "/v1/pools/web/backends/10.0.0.1".to_string(),
            serde_json::json!({"vm": "vm-c"}),
            400,
            "address",
        ),
        (
            format!("/v1/pools/nope/backends/{}", c.address),
            serde_json::json!({"vm": "vm-c"}),
            404,
            "",
        ),
    ] {
        let (status, reply) = call(&admin, "PUT", &path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body}: {reply}");
        if !field.is_empty() {
            assert_eq!(reply["field"], field, "{path} {body}: {reply}");
        }
    }
    assert_eq!(backends(&one).await.len(), 2);

    // PUT on node one: applied there and on its peer.
    let (status, reply) = call(
        &admin,
        "PUT",
        &path_c,
        serde_json::json!({"vm": "vm-c", "weight": 2}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["local"]["written_to"].as_str(),
        Some(dir.path().join("one.backends.json").to_str().unwrap()),
        "{reply}"
    );
    assert_eq!(reply["peers"][0]["name"], "peer", "{reply}");
    assert_eq!(reply["peers"][0]["applied"], true, "{reply}");
    let expected_c = (c.address.to_string(), "vm-c".to_string(), 2);
    assert!(backends(&one).await.contains(&expected_c));
    assert!(backends(&two).await.contains(&expected_c));
    // New connections reach vm-c through both nodes (weight 2 of 4).
    for node in [&one, &two] {
        let counts = vm_counts(node.listener("tcp"), 80, 8).await;
        assert!(counts.get("vm-c").copied().unwrap_or(0) >= 20, "{counts:?}");
    }
    // `handover status` shows it.
    let status_out = two.cli(&["status"]);
    assert!(String::from_utf8_lossy(&status_out.stdout).contains(&c.address.to_string()));

    // DELETE vm-a on node two: its open connection drains on both nodes, new ones go elsewhere.
    let mut held = common::backends::TcpClient::connect(one.listener("tcp")).await;
    while held.vm != "vm-a" {
        held = common::backends::TcpClient::connect(one.listener("tcp")).await;
    }
    let path_a = format!("/v1/pools/web/backends/{}", a.address);
    let (status, reply) = call(
        &two.client(Some(TOKEN)),
        "DELETE",
        &path_a,
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["peers"][0]["applied"], true, "{reply}");
    for node in [&one, &two] {
        assert!(!backends(node).await.iter().any(|(_, vm, _)| vm == "vm-a"));
        assert_eq!(vm_counts(node.listener("tcp"), 40, 8).await.get("vm-a"), None);
    }
    let pools: serde_json::Value = one.client(None).get("/v1/pools").await.unwrap();
    assert_eq!(pools[0]["removed"][0]["vm"], "vm-a", "{pools}");
    assert_eq!(
        held.echo("still there").await.as_deref(),
        Some("vm-a still there")
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let pools: serde_json::Value = one.client(None).get("/v1/pools").await.unwrap();
            pools[0].get("removed").is_none()
        })
        .await,
        "the removed backend is forgotten once its connection ended"
    );
    // Deleting it again: 404, naming the address.
    let (status, reply) = call(&admin, "DELETE", &path_a, serde_json::json!(null)).await;
    assert_eq!(status, 404, "{reply}");

    // Both nodes restart: the API's backends are still there, vm-a is still gone.
    drop(one);
    drop(two);
    one = Node::start(&config_1);
    two = Node::start(&config_2);
    for node in [&mut one, &mut two] {
        let now = backends(node).await;
        assert!(now.contains(&expected_c), "{now:?}");
        assert!(!now.iter().any(|(_, vm, _)| vm == "vm-a"), "{now:?}");
        let counts = vm_counts(node.listener("tcp"), 40, 8).await;
        assert_eq!(counts.get("vm-a"), None, "{counts:?}");
        assert!(counts.contains_key("vm-c"), "{counts:?}");
    }
}

/// Node two keeps its state on a small disk that fills up: a `PUT` or `DELETE` there is a 503 that
/// names the cause and changes nothing (pools, traffic, the file, the peer); the same change sent
/// to node one is applied there and reported as not applied by two; once there is room again it
/// is applied, and a restart keeps it.
async fn a_backend_change_that_cannot_be_written_is_refused_with_its_cause_and_changes_nothing() {
    let disk = SmallDisk::mount("256k").expect("a small disk for the state file");
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let c = TcpBackend::start("vm-c").await;
    let dir = tempfile::tempdir().unwrap();
    let (port_1, port_2) = (free_port(), free_port());
    let base = [("vm-a", a.address), ("vm-b", b.address)];
    let config_1 = config(port_1, port_2, &dir.path().join("one.json"), &base);
    let config_2 = config(port_2, port_1, &disk.path.join("two.json"), &base);
    let one = Node::start(&config_1);
    let mut two = Node::start(&config_2);
    let path_c = format!("/v1/pools/web/backends/{}", c.address);
    let path_b = format!("/v1/pools/web/backends/{}", b.address);
    let overlay = disk.path.join("two.backends.json");
    let before = backends(&two).await;
    disk.fill();

    // On the node that cannot write: 503 with the cause, nothing changed, nothing sent to the peer.
    for (method, path, body) in [
        ("PUT", &path_c, serde_json::json!({"vm": "vm-c", "weight": 3})),
        ("PUT", &path_b, serde_json::json!({"vm": "vm-b", "weight": 9})),
        ("DELETE", &path_b, serde_json::json!(null)),
    ] {
        let (status, reply) = call(&two.client(Some(TOKEN)), method, path, body).await;
        assert_eq!(status, 503, "{method} {path}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains("not applied")
                && error.contains("No space left on device")
                && error.contains("two.backends.json"),
            "{error}"
        );
        assert_eq!(backends(&two).await, before);
        assert_eq!(backends(&one).await, before);
    }
    assert!(!overlay.exists(), "nothing was written");
    let counts = vm_counts(two.listener("tcp"), 60, 8).await;
    assert!(counts.get("vm-b").copied().unwrap_or(0) > 0, "{counts:?}");
    assert_eq!(counts.get("vm-c"), None, "{counts:?}");
    assert!(
        two.log().contains("cannot keep a backend change"),
        "{}",
        two.log()
    );

    // Sent to node one: applied there, and node two's refusal is in the reply.
    let (status, reply) = call(
        &one.client(Some(TOKEN)),
        "PUT",
        &path_c,
        serde_json::json!({"vm": "vm-c", "weight": 3}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["peers"][0]["applied"], false, "{reply}");
    let error = reply["peers"][0]["error"].as_str().unwrap();
    assert!(error.contains("No space left on device"), "{error}");
    let expected_c = (c.address.to_string(), "vm-c".to_string(), 3);
    assert!(backends(&one).await.contains(&expected_c));
    assert_eq!(backends(&two).await, before);

    // Room again: the same change is applied, written, and kept across a restart.
    disk.free();
    let (status, reply) = call(
        &one.client(Some(TOKEN)),
        "PUT",
        &path_c,
        serde_json::json!({"vm": "vm-c", "weight": 3}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["peers"][0]["applied"], true, "{reply}");
    assert!(backends(&two).await.contains(&expected_c));
    let saved = std::fs::read_to_string(&overlay).unwrap();
    assert!(saved.contains(&c.address.to_string()), "{saved}");
    two.kill();
    drop(two);
    let two = Node::start(&config_2);
    assert!(backends(&two).await.contains(&expected_c));
}

/// Two fleet nodes on one etcd: a `PUT` on one and a `DELETE` on the other reach both (the reply
/// says etcd has them, there are no peers); a third node started afterwards has both before it
/// answers; with etcd gone the change is applied on the node called and the reply says the fleet
/// does not have it.
async fn backends_set_through_one_fleet_node_reach_every_node_and_one_started_later() {
    let mut etcd = etcd::Etcd::single();
    let a = TcpBackend::start("vm-a").await;
    let b = TcpBackend::start("vm-b").await;
    let c = TcpBackend::start("vm-c").await;
    let dir = tempfile::tempdir().unwrap();
    let base = [("vm-a", a.address), ("vm-b", b.address)];
    let one = Node::start(&fleet_config(&etcd, "lb-1", &dir.path().join("one.json"), &base));
    let two = Node::start(&fleet_config(&etcd, "lb-2", &dir.path().join("two.json"), &base));
    let path_a = format!("/v1/pools/web/backends/{}", a.address);
    let path_c = format!("/v1/pools/web/backends/{}", c.address);
    let expected_c = (c.address.to_string(), "vm-c".to_string(), 2);

    let (status, reply) = call(
        &one.client(Some(TOKEN)),
        "PUT",
        &path_c,
        serde_json::json!({"vm": "vm-c", "weight": 2}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["fleet"]["written"], true, "{reply}");
    assert_eq!(reply["peers"], serde_json::json!([]), "{reply}");
    assert!(backends(&one).await.contains(&expected_c));
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends(&two).await.contains(&expected_c)
        })
        .await,
        "lb-2 took the backend set through lb-1: {:?}",
        backends(&two).await
    );
    let counts = vm_counts(two.listener("tcp"), 80, 8).await;
    assert!(counts.get("vm-c").copied().unwrap_or(0) >= 20, "{counts:?}");

    let (status, reply) = call(
        &two.client(Some(TOKEN)),
        "DELETE",
        &path_a,
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["fleet"]["written"], true, "{reply}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !backends(&one).await.iter().any(|(_, vm, _)| vm == "vm-a")
        })
        .await,
        "lb-1 removed the backend deleted through lb-2: {:?}",
        backends(&one).await
    );
    assert_eq!(vm_counts(one.listener("tcp"), 40, 8).await.get("vm-a"), None);
    // The node that made a change wrote it once: seeing it again through etcd changes nothing.
    let applied_c = format!("fleet backend change applied pool=web address={}", c.address);
    assert!(two.log().contains(&applied_c), "{}", two.log());
    assert!(!one.log().contains(&format!(
        "fleet backend change applied pool=web address={}",
        c.address
    )));

    // PUT, DELETE, PUT, DELETE of one backend through one node in a row: both nodes end without
    // it, the other applied each removal, and the node called applied none of its own changes
    // again from the watch (that an older one is never applied after a newer one, whatever the
    // timing, is proven by fleet_backends in the fleet crate).
    let d = TcpBackend::start("vm-d").await;
    let path_d = format!("/v1/pools/web/backends/{}", d.address);
    for (method, body) in [
        ("PUT", serde_json::json!({"vm": "vm-d"})),
        ("DELETE", serde_json::json!(null)),
        ("PUT", serde_json::json!({"vm": "vm-d", "weight": 3})),
        ("DELETE", serde_json::json!(null)),
    ] {
        let (status, reply) = call(&one.client(Some(TOKEN)), method, &path_d, body).await;
        assert_eq!(status, 200, "{method}: {reply}");
    }
    let removed_d = format!(
        "fleet backend change applied pool=web address={} backend=None",
        d.address
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            two.log().matches(&removed_d).count() == 2
        })
        .await,
        "lb-2 applied both removals: {}",
        two.log()
    );
    assert!(!backends(&two).await.iter().any(|(_, vm, _)| vm == "vm-d"));
    assert!(!backends(&one).await.iter().any(|(_, vm, _)| vm == "vm-d"));
    let applied_d = format!("fleet backend change applied pool=web address={}", d.address);
    assert!(!one.log().contains(&applied_d), "{}", one.log());

    // A node that joins afterwards has both changes before it answers.
    let three = Node::start(&fleet_config(
        &etcd,
        "lb-3",
        &dir.path().join("three.json"),
        &base,
    ));
    let now = backends(&three).await;
    assert!(now.contains(&expected_c), "{now:?}");
    assert!(!now.iter().any(|(_, vm, _)| vm == "vm-a"), "{now:?}");
    let saved = std::fs::read_to_string(dir.path().join("three.backends.json")).unwrap();
    assert!(saved.contains(&c.address.to_string()), "{saved}");

    // Without etcd: applied on the node called, and the reply says the fleet does not have it.
    etcd.kill_all();
    let (status, reply) = call(
        &one.client(Some(TOKEN)),
        "PUT",
        &path_c,
        serde_json::json!({"vm": "vm-c", "weight": 5}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["fleet"]["written"], false, "{reply}");
    let error = reply["fleet"]["error"].as_str().unwrap();
    assert!(error.contains("not written to the fleet's etcd"), "{error}");
    assert!(
        backends(&one)
            .await
            .contains(&(c.address.to_string(), "vm-c".to_string(), 5))
    );
    assert!(backends(&two).await.contains(&expected_c));
}

/// A node without `[state]` applies a change but keeps it only until it ends: its reply says so
/// (`local.written_to` is null), and a restart starts from the file again.
async fn without_a_state_file_the_reply_says_the_change_is_written_nowhere() {
    let a = TcpBackend::start("vm-a").await;
    let c = TcpBackend::start("vm-c").await;
    let config = format!(
        "[control]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [pools.web]\n[[pools.web.backends]]\naddress = \"{}\"\nvm = \"vm-a\"\n",
        a.address
    );
    let node = Node::start(&config);
    let (status, reply) = call(
        &node.client(Some(TOKEN)),
        "PUT",
        &format!("/v1/pools/web/backends/{}", c.address),
        serde_json::json!({"vm": "vm-c"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["local"]["written_to"], serde_json::Value::Null, "{reply}");
    assert_eq!(
        reply["local"]["backends_added"][0],
        format!("web/{}", c.address),
        "{reply}"
    );
    assert_eq!(backends(&node).await.len(), 2);
    drop(node);
    let node = Node::start(&config);
    assert_eq!(backends(&node).await.len(), 1);
}

//! Real libvirt live migrations between two libvirt daemons (two "hosts" in their own namespaces,
//! `common::libvirt`), each host with its own handover node; the nodes are each other's
//! `[[peers]]` and both balance the VM's traffic. Each host has handover's hook
//! (`handover libvirt-hook --veto`) and its node watches the host's libvirt events
//! (`[[libvirt]]`). Three migrations of one guest:
//!
//! 1. a → b succeeds: the destination's hook drains the VM on both nodes and libvirt waits while a
//!    connection is still open; nothing is copied before the drain; `started` comes with the copy,
//!    `completed` after the switchover (the source's pause) and not before; then the VM ramps back
//!    on both nodes.
//! 2. b → a is aborted with `virsh domjobabort`: recorded `failed`, the VM restored on both nodes,
//!    the guest still runs on b.
//! 3. b → a with a's node down: the hook vetoes, libvirt refuses, the guest still runs on b.
//!
//! Notices of one migration arrive at the destination's node (its hook and its watcher); those
//! the source's hook and watcher send to the source's node find no migration there and change
//! nothing (logged), so that the second migration, coordinated by the other node, starts clean.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::backends::{TcpBackend, TcpClient, vm_counts};
use common::libvirt::{EventLog, Rig, guest_xml};
use common::skip::skip;
use common::{Node, eventually, now_ms};

const TEST: &str = "libvirt_migration";
const DOMAIN: &str = "web1";

/// A port for node a's control API, known before node a starts (node b needs it as its peer): an
/// ephemeral port the kernel hands out, released just before node b starts and node a binds it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The hook libvirt runs on one host: handover's, in the test's network namespace (where the
/// nodes listen), with `--veto`.
fn hook_script(control: &str) -> String {
    format!(
        "#!/bin/sh\nexec nsenter --net=/proc/{pid}/ns/net {handover} libvirt-hook \
         --control {control} --drain-timeout 20s --veto -- \"$@\"\n",
        pid = std::process::id(),
        handover = common::binary(),
    )
}

fn node_config(control_port: u16, peer: &str, backends: &[(&str, SocketAddr)], uri: &str) -> String {
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:{control_port}\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [pools.web]\ndrain = {{ target = 0.0 }}\nramp = {{ window = \"1s\" }}\n"
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text.push_str(&format!(
        "\n[[peers]]\nname = \"peer\"\nurl = \"{peer}\"\ntimeout = \"2s\"\n\
         \n[[libvirt]]\nuri = \"{uri}\"\n"
    ));
    text
}

/// The phase a node's own data plane applies to a VM's backend.
async fn data_plane_phase(node: &Node, vm: &str) -> String {
    let status: serde_json::Value = node.client(None).get("/v1/balancer/status").await.unwrap();
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == vm)
        .map(|b| b["phase"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn migrations(node: &Node) -> Vec<serde_json::Value> {
    let value: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    value.as_array().unwrap().clone()
}

/// Waits until a node's log has `text`.
async fn log_eventually(node: &Node, text: &str) -> bool {
    eventually(Duration::from_secs(10), || async { node.log().contains(text) }).await
}

/// Runs `virsh migrate` in a thread; returns its output when it ends.
fn migrate(
    from: &common::libvirt::Host,
    to_uri: &str,
    bandwidth_mib: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let uri = from.uri.clone();
    let to = to_uri.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new("virsh")
            .args(["-q", "-c", &uri, "migrate", "--live", DOMAIN, &to])
            .args(["--bandwidth", &bandwidth_mib.to_string()])
            .output()
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_migrations_are_drained_before_the_copy_completed_after_the_switchover_failed_when_aborted_and_vetoed_with_handover_down()
 {
    if let Some(why) = common::libvirt::missing_part() {
        return skip(TEST, &why);
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let build = Command::new(checkout.join("testbed/build-guest"))
        .output()
        .unwrap();
    if !build.status.success() {
        return skip(
            TEST,
            &format!(
                "cannot build the guest: {}",
                String::from_utf8_lossy(&build.stderr).trim()
            ),
        );
    }
    let guest_dir = checkout.join("target/testbed/guest");
    let started = std::time::Instant::now();
    eprintln!("{}", common::libvirt::version());

    let tag = format!("{}", std::process::id());
    let rig = Rig::start(&tag).unwrap_or_else(|e| panic!("the two libvirt daemons: {e}"));
    let [host_a, host_b] = &rig.hosts;
    let events_a = EventLog::follow(host_a);
    let events_b = EventLog::follow(host_b);

    // The guest starts on host a.
    let xml_path = host_a.root.join("web1.xml");
    std::fs::write(&xml_path, guest_xml(DOMAIN, "vm-a", &guest_dir, 48)).unwrap();
    let created = host_a.virsh(&["create", xml_path.to_str().unwrap()]);
    assert!(
        created.status.success(),
        "virsh create: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    // vm-a's service and another VM's, balanced by both nodes.
    let vm_a = TcpBackend::start("vm-a").await;
    let vm_b = TcpBackend::start("vm-b").await;
    let backends = [("vm-a", vm_a.address), ("vm-b", vm_b.address)];
    let port_a = free_port();
    let node_b = Node::start(&node_config(
        0,
        &format!("http://127.0.0.1:{port_a}"),
        &backends,
        &host_b.uri,
    ));
    let node_a = Node::start(&node_config(port_a, &node_b.control, &backends, &host_a.uri));
    for (i, node) in [&node_a, &node_b].into_iter().enumerate() {
        rig.set_hook(i, &hook_script(&node.control)).unwrap();
    }

    let serial = host_a.log_file(&format!("{DOMAIN}.serial"));
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("GUEST READY"))
        })
        .await,
        "the guest booted on host a"
    );

    // ---- 1. a → b succeeds.
    let mut held = TcpClient::connect(node_a.listener("tcp")).await;
    while held.vm != "vm-a" {
        held = TcpClient::connect(node_a.listener("tcp")).await;
    }
    events_a.clear();
    events_b.clear();
    let migration = migrate(host_a, &host_b.uri, 32);
    // The destination's hook prepared the VM on its node, which drained both data planes.
    assert!(
        eventually(Duration::from_secs(30), || async {
            node_b.phase("vm-a").await == "draining" && data_plane_phase(&node_a, "vm-a").await == "draining"
        })
        .await,
        "b's hook drains vm-a on both nodes\n{}",
        node_b.log()
    );
    // libvirt waits for the hook while a connection remains: nothing starts, nothing is copied.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(held.echo("still here").await.as_deref(), Some("vm-a still here"));
    assert!(
        events_b.find("Started Migrated").is_none(),
        "{:?}",
        events_b.all()
    );
    assert!(events_a.find("iteration: '1'").is_none(), "{:?}", events_a.all());
    assert_eq!(host_a.domstate(DOMAIN).as_deref(), Some("running"));
    assert!(
        !vm_counts(node_b.listener("tcp"), 20, 10)
            .await
            .contains_key("vm-a"),
        "no new connection reaches vm-a while it drains"
    );
    let closed_at = now_ms();
    drop(held);
    let output = migration.await.unwrap();
    assert!(
        output.status.success(),
        "virsh migrate a → b: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node_b.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            migrations(&node_b)
                .await
                .first()
                .is_some_and(|m| m["end"] == "completed")
        })
        .await,
        "b recorded the migration completed\n{}",
        node_b.log()
    );
    let record = migrations(&node_b).await[0].clone();
    let at = |field: &str| {
        record[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {record}"))
    };
    let copy_began = events_a
        .find("iteration: '1'")
        .expect("the source's first pass")
        .at_ms;
    let dest_started = events_b
        .find("Started Migrated")
        .expect("destination started")
        .at_ms;
    let switchover = events_a
        .find("Suspended Migrated")
        .expect("the source paused for the switchover")
        .at_ms;
    let resumed = events_b.find("Resumed Migrated").expect("the VM runs on b").at_ms;
    eprintln!(
        "migration a → b: prepared {} drained {} closed {closed_at} | dest started {dest_started} \
         copy began {copy_began} | started {} | switchover {switchover} resumed {resumed} | \
         completed {}",
        at("prepared_at"),
        at("drained_at"),
        at("started_at"),
        at("ended_at")
    );
    assert_eq!(record["drained"], true, "{record}");
    assert!(
        at("drained_at") >= closed_at.saturating_sub(5),
        "drained when the connection closed"
    );
    assert!(dest_started >= closed_at, "libvirt waited for the drain");
    assert!(copy_began >= at("drained_at"), "drained before the copy");
    assert!(at("started_at") <= switchover, "started during the copy");
    assert!(
        at("ended_at") >= switchover,
        "completed only after the switchover began"
    );
    assert_eq!(host_b.domstate(DOMAIN).as_deref(), Some("running"));
    assert_eq!(host_a.domstate(DOMAIN), None, "a transient domain leaves a");
    // It ramps back on both nodes and takes new connections again.
    assert!(
        eventually(Duration::from_secs(15), || async {
            node_b.phase("vm-a").await == "stable"
                && data_plane_phase(&node_a, "vm-a").await == "stable"
                && data_plane_phase(&node_b, "vm-a").await == "stable"
        })
        .await,
        "vm-a ramped back on both nodes"
    );
    let record = migrations(&node_b).await[0].clone();
    assert!(record["stable_at"].as_u64().unwrap() > record["ended_at"].as_u64().unwrap());
    for node in [&node_a, &node_b] {
        assert!(
            vm_counts(node.listener("tcp"), 40, 10)
                .await
                .get("vm-a")
                .copied()
                .unwrap_or(0)
                > 0
        );
    }
    // The end came from b's event watcher; the source's node owned no migration, and its end
    // notices (its watcher's Stopped Migrated) changed nothing there.
    assert!(
        node_b.log().contains("libvirt: Resumed Migrated"),
        "{}",
        node_b.log()
    );
    assert!(
        log_eventually(&node_a, "libvirt: Stopped Migrated").await,
        "{}",
        node_a.log()
    );
    assert!(migrations(&node_a).await.is_empty());

    // ---- 2. b → a, aborted with domjobabort while memory is copied.
    events_a.clear();
    events_b.clear();
    let migration = migrate(host_b, &host_a.uri, 4);
    assert!(
        eventually(Duration::from_secs(30), || async {
            node_a.phase("vm-a").await == "migrating"
                && data_plane_phase(&node_b, "vm-a").await == "migrating"
        })
        .await,
        "a's hook drains vm-a on both nodes and reports the copy\n{}",
        node_a.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            events_b.find("iteration: '1'").is_some()
        })
        .await
    );
    let aborted = host_b.virsh(&["domjobabort", DOMAIN]);
    assert!(
        aborted.status.success(),
        "{}",
        String::from_utf8_lossy(&aborted.stderr)
    );
    let output = migration.await.unwrap();
    assert!(!output.status.success(), "the aborted migration fails");
    assert!(
        eventually(Duration::from_secs(10), || async {
            migrations(&node_a)
                .await
                .first()
                .is_some_and(|m| m["end"] == "failed")
        })
        .await,
        "a recorded the migration failed\n{}",
        node_a.log()
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            node_a.phase("vm-a").await == "stable"
                && data_plane_phase(&node_a, "vm-a").await == "stable"
                && data_plane_phase(&node_b, "vm-a").await == "stable"
        })
        .await,
        "vm-a restored on both nodes"
    );
    // On libvirt 9.0 only a's event watcher can say so (the hook's `release end -` cannot).
    assert!(
        log_eventually(&node_a, "libvirt: Stopped Failed").await,
        "{}",
        node_a.log()
    );
    assert_eq!(
        host_b.domstate(DOMAIN).as_deref(),
        Some("running"),
        "the guest stayed on b"
    );
    assert_eq!(host_a.domstate(DOMAIN), None);
    assert_eq!(
        migrations(&node_b).await.len(),
        1,
        "b's node saw only its own migration"
    );

    // ---- 3. b → a with a's node down: the hook vetoes, libvirt refuses.
    drop(node_a);
    let output = migrate(host_b, &host_a.uri, 32).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "libvirt refuses the migration");
    assert!(stderr.contains("vetoing the migration of vm-a"), "{stderr}");
    assert_eq!(
        host_b.domstate(DOMAIN).as_deref(),
        Some("running"),
        "the guest runs on b"
    );
    assert_eq!(host_a.domstate(DOMAIN), None);
    assert_eq!(node_b.phase("vm-a").await, "stable");
    assert_eq!(migrations(&node_b).await.len(), 1);

    drop(events_a);
    drop(events_b);
    let netns = [host_a.netns.clone(), host_b.netns.clone()];
    drop(rig);
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        netns.iter().all(|n| !listed.contains(n.as_str())),
        "the namespaces are removed: {listed}"
    );
    eprintln!("took {:?}", started.elapsed());
}

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
//! A second test runs the same hosts with the two nodes in an etcd fleet instead of peers
//! (`in_a_fleet_both_hosts_nodes_follow_one_libvirt_migration`): the success and the abort.
//!
//! Notices of one migration arrive at the destination's node (its hook and its watcher); those
//! the source's hook and watcher send to the source's node find no migration there and change
//! nothing (logged), so that the second migration, coordinated by the other node, starts clean.

mod common;

#[path = "../../fleet/tests/common/etcd.rs"]
mod etcd;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::backends::{TcpBackend, TcpClient, vm_counts};
use common::harness::{self, Lack};
use common::libvirt::{
    DOMAIN, EventLog, Rig, data_plane_phase, free_port, guest_xml, hook_script, libvirt_node_config,
    log_eventually, migrate, migrations,
};
use common::{Node, eventually, now_ms};

fn main() {
    harness::main(vec![
        harness::test_async("libvirt_migrations_are_drained_before_the_copy_completed_after_the_switchover_failed_when_aborted_and_vetoed_with_handover_down", libvirt_migrations_are_drained_before_the_copy_completed_after_the_switchover_failed_when_aborted_and_vetoed_with_handover_down).needs(libvirt),
        harness::test_async("in_a_fleet_both_hosts_nodes_follow_one_libvirt_migration", in_a_fleet_both_hosts_nodes_follow_one_libvirt_migration).needs(libvirt).needs(etcd_available),
    ]);
}

/// Node a's or b's configuration, told of the other as its peer.
fn node_config(control_port: u16, peer: &str, backends: &[(&str, SocketAddr)], uri: &str) -> String {
    libvirt_node_config(
        control_port,
        backends,
        uri,
        &format!("[[peers]]\nname = \"peer\"\nurl = \"{peer}\"\ntimeout = \"2s\"\n"),
    )
}

/// What the libvirt rig needs (root, libvirtd, virsh, QEMU, iproute2, util-linux).
fn libvirt() -> Result<(), Lack> {
    common::libvirt::missing_part().map_or(Ok(()), |why| Err(Lack::Missing(why)))
}

/// Whether etcd and etcdctl are here and work.
fn etcd_available() -> Result<(), Lack> {
    harness::program("etcd", "--version", "etcd-server")?;
    harness::program("etcdctl", "version", "etcd-client")
}

async fn libvirt_migrations_are_drained_before_the_copy_completed_after_the_switchover_failed_when_aborted_and_vetoed_with_handover_down()
 {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let build = Command::new(checkout.join("testbed/build-guest"))
        .output()
        .unwrap();
    // scripts/test builds the guest before the tests: a build that fails is a failure.
    assert!(
        build.status.success(),
        "cannot build the guest (testbed/build-guest): {}",
        String::from_utf8_lossy(&build.stderr).trim()
    );
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
    // The end came from b's event watcher; the source's node owned no migration (it followed b's,
    // as a peer does), and its end notices (its watcher's Stopped Migrated) changed nothing there.
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
    let followed = migrations(&node_a).await;
    assert_eq!(followed.len(), 1, "{followed:?}");
    assert_eq!(followed[0]["note"], "followed a peer's drain", "{followed:?}");
    assert_eq!(followed[0]["end"], "completed", "{followed:?}");

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
    // b's node drove only its own migration; it followed a's (newest first).
    let seen_by_b = migrations(&node_b).await;
    assert_eq!(seen_by_b.len(), 2, "{seen_by_b:?}");
    assert_eq!(seen_by_b[0]["note"], "followed a peer's drain", "{seen_by_b:?}");
    assert_eq!(seen_by_b[0]["end"], "failed", "{seen_by_b:?}");
    assert!(seen_by_b[1]["note"].is_null(), "{seen_by_b:?}");

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
    assert_eq!(
        migrations(&node_b).await.len(),
        2,
        "the vetoed migration left no record"
    );

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

/// The same two hosts with the nodes in an etcd fleet instead of peers: the destination's hook
/// and watcher and the source's watcher all tell their own node, and the fleet agrees on one
/// migration — drained on both nodes before the copy, completed after the switchover, ramped back
/// on both; an aborted migration is failed and restored on both.
async fn in_a_fleet_both_hosts_nodes_follow_one_libvirt_migration() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let build = Command::new(checkout.join("testbed/build-guest"))
        .output()
        .unwrap();
    // scripts/test builds the guest before the tests: a build that fails is a failure.
    assert!(
        build.status.success(),
        "cannot build the guest (testbed/build-guest): {}",
        String::from_utf8_lossy(&build.stderr).trim()
    );
    let guest_dir = checkout.join("target/testbed/guest");
    let etcd = etcd::Etcd::single();
    let rig = Rig::start(&format!("{}f", std::process::id()))
        .unwrap_or_else(|e| panic!("the two libvirt daemons: {e}"));
    let [host_a, host_b] = &rig.hosts;
    let events_a = EventLog::follow(host_a);
    let xml_path = host_a.root.join("web1.xml");
    std::fs::write(&xml_path, guest_xml(DOMAIN, "vm-a", &guest_dir, 48)).unwrap();
    let created = host_a.virsh(&["create", xml_path.to_str().unwrap()]);
    assert!(
        created.status.success(),
        "virsh create: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let vm_a = TcpBackend::start("vm-a").await;
    let vm_b = TcpBackend::start("vm-b").await;
    let backends = [("vm-a", vm_a.address), ("vm-b", vm_b.address)];
    let fleet = |name: &str| {
        format!(
            "[fleet]\netcd = {}\nnode = \"{name}\"\nlease = \"4s\"\nack_timeout = \"5s\"\n",
            etcd.toml_endpoints()
        )
    };
    let node_a = Node::start(&libvirt_node_config(0, &backends, &host_a.uri, &fleet("host-a")));
    let node_b = Node::start(&libvirt_node_config(0, &backends, &host_b.uri, &fleet("host-b")));
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
    let both = |phase: &'static str| {
        let (a, b) = (&node_a, &node_b);
        async move {
            eventually(Duration::from_secs(30), || async {
                data_plane_phase(a, "vm-a").await == phase && data_plane_phase(b, "vm-a").await == phase
            })
            .await
        }
    };

    // ---- a → b succeeds.
    let mut held = TcpClient::connect(node_a.listener("tcp")).await;
    while held.vm != "vm-a" {
        held = TcpClient::connect(node_a.listener("tcp")).await;
    }
    events_a.clear();
    let migration = migrate(host_a, &host_b.uri, 32);
    assert!(
        both("draining").await,
        "b's hook drained vm-a on both nodes\n{}",
        node_b.log()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        events_a.find("iteration: '1'").is_none(),
        "nothing copied before the drain: {:?}",
        events_a.all()
    );
    let closed_at = now_ms();
    drop(held);
    let output = migration.await.unwrap();
    assert!(
        output.status.success(),
        "virsh migrate a → b: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        both("stable").await,
        "vm-a ramped back on both nodes\n{}\n{}",
        node_a.log(),
        node_b.log()
    );
    let switchover = events_a
        .find("Suspended Migrated")
        .expect("the source paused for the switchover")
        .at_ms;
    for node in [&node_a, &node_b] {
        let record = migrations(node)
            .await
            .into_iter()
            .next()
            .expect("a migration record");
        assert_eq!(record["end"], "completed", "{record}");
        let at = |field: &str| {
            record[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field}: {record}"))
        };
        assert!(
            at("ended_at") >= switchover,
            "completed only after the switchover: {record}"
        );
    }
    // The hook held libvirt until the held connection closed: the copy began after it.
    let copy_began = events_a
        .find("iteration: '1'")
        .expect("the source's first pass")
        .at_ms;
    assert!(
        copy_began >= closed_at,
        "drained before the copy ({copy_began} < {closed_at})"
    );
    assert_eq!(host_b.domstate(DOMAIN).as_deref(), Some("running"));

    // ---- b → a, aborted.
    let events_b = EventLog::follow(host_b);
    let migration = migrate(host_b, &host_a.uri, 4);
    assert!(
        both("migrating").await,
        "a's hook drained vm-a on both nodes\n{}",
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
    assert!(
        !migration.await.unwrap().status.success(),
        "the aborted migration fails"
    );
    assert!(both("stable").await, "vm-a restored on both nodes");
    for node in [&node_a, &node_b] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                migrations(node)
                    .await
                    .first()
                    .is_some_and(|m| m["end"] == "failed")
            })
            .await,
            "recorded failed\n{}",
            node.log()
        );
    }
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
}

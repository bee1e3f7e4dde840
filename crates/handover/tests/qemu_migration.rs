//! Real QEMU live migrations between two local QEMU processes (TCG, disk-less, 64 MiB of random
//! RAM): the QMP watcher drives handover's phases with progress; failures and a vanished QMP socket
//! restore the VM; `handover migrate` drains before it migrates and Ctrl-C cancels and restores.
//! Skipped, with the reason, where QEMU cannot run.

mod common;

use std::time::Duration;

use common::backends::{TcpBackend, TcpClient};
use common::harness;
use common::qemu::{Observer, Qemu, ram_image};
use common::{Node, eventually, log_contains, now_ms, tcp_config};

fn main() {
    harness::main(vec![
        harness::test_async(
            "the_qmp_watcher_drives_prepare_to_completed_with_progress",
            the_qmp_watcher_drives_prepare_to_completed_with_progress,
        )
        .needs(common::qemu::available),
        harness::test_async(
            "a_migration_whose_destination_dies_ends_failed_and_restores_the_vm",
            a_migration_whose_destination_dies_ends_failed_and_restores_the_vm,
        )
        .needs(common::qemu::available),
        harness::test_async(
            "a_migration_to_nowhere_ends_failed_and_restores_the_vm",
            a_migration_to_nowhere_ends_failed_and_restores_the_vm,
        )
        .needs(common::qemu::available),
        harness::test_async(
            "a_qmp_socket_that_disappears_mid_migration_is_restored_at_the_deadline",
            a_qmp_socket_that_disappears_mid_migration_is_restored_at_the_deadline,
        )
        .needs(common::qemu::available),
        harness::test_async(
            "handover_migrate_sends_migrate_only_after_the_vm_is_drained",
            handover_migrate_sends_migrate_only_after_the_vm_is_drained,
        )
        .needs(common::qemu::available),
        harness::test_async(
            "ctrl_c_cancels_the_migration_and_restores_the_vm",
            ctrl_c_cancels_the_migration_and_restores_the_vm,
        )
        .needs(common::qemu::available),
    ]);
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    source: Qemu,
    destination: Qemu,
    _backends: Vec<TcpBackend>,
    node: Node,
}

impl Setup {
    /// A source and a destination QEMU for vm-a, and a node balancing vm-a and vm-b.
    async fn new(pool_extra: &str, watch: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let ram = ram_image(&path);
        let source = Qemu::start(&path, "src", &ram, None);
        let incoming = format!("unix:{}", path.join("migration.sock").display());
        let destination = Qemu::start(&path, "dst", &ram, Some(&incoming));
        // The destination listens for the migration once its socket exists.
        let socket = path.join("migration.sock");
        assert!(
            eventually(Duration::from_secs(20), || async { socket.exists() }).await,
            "no incoming migration socket"
        );
        let backends = vec![TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
        let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
        let mut config = tcp_config(&addresses, pool_extra);
        if watch {
            config.push_str(&format!(
                "\n[[qmp]]\nsocket = \"{}\"\nvm = \"vm-a\"\npoll_interval = \"200ms\"\n",
                source.qmp.display()
            ));
        }
        let node = Node::start(&config);
        if watch {
            assert!(
                log_contains(&node, "QMP connected", Duration::from_secs(10)).await,
                "{}",
                node.log()
            );
        }
        Setup {
            _dir: dir,
            dir: path,
            source,
            destination,
            _backends: backends,
            node,
        }
    }

    fn uri(&self) -> String {
        format!("unix:{}", self.dir.join("migration.sock").display())
    }
}

async fn migration(node: &Node) -> serde_json::Value {
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    migrations[0].clone()
}

async fn the_qmp_watcher_drives_prepare_to_completed_with_progress() {
    let setup = Setup::new("ramp = { window = \"2s\" }", true).await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    observer.prepare_migration(16).await;
    observer
        .execute("migrate", Some(serde_json::json!({"uri": setup.uri()})))
        .await;

    // setup → prepare, active → started: vm-a is drained while its memory is copied.
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "migrating"
        })
        .await,
        "{}",
        node.log()
    );
    let in_flight = eventually(Duration::from_secs(5), || async {
        let vms = node.vms().await;
        let a = vms.iter().find(|v| v.vm.as_str() == "vm-a").unwrap();
        a.progress.as_ref().and_then(|p| p.transferred_bytes).unwrap_or(0) > 0
    })
    .await;
    assert!(in_flight, "progress is recorded while the migration runs");
    let status = node.cli(&["status"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("vm-a migration 1: active"), "{table}");

    assert_eq!(
        observer
            .wait_status(&["completed", "failed"], Duration::from_secs(60))
            .await,
        "completed"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "ramping"
        })
        .await,
        "{}",
        node.log()
    );
    let record = migration(node).await;
    assert_eq!(record["end"], "completed", "{record}");
    let progress = &record["progress"];
    assert_eq!(progress["status"], "completed", "{record}");
    assert!(progress["total_time_ms"].as_u64().unwrap() > 1000, "{record}");
    assert!(progress["downtime_ms"].is_u64(), "{record}");
    assert!(progress["passes"].as_u64().unwrap() >= 1, "{record}");
    assert!(
        progress["transferred_bytes"].as_u64().unwrap() >= 60 << 20,
        "the whole RAM was sent: {record}"
    );
    let (prepared, started, ended) = (
        record["prepared_at"].as_u64().unwrap(),
        record["started_at"].as_u64().unwrap(),
        record["ended_at"].as_u64().unwrap(),
    );
    assert!(prepared <= started && started < ended, "{record}");
    let metrics = node.client(None).get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("handover_migration_transferred_bytes{vm=\"vm-a\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_migration_downtime_seconds{vm=\"vm-a\"}"),
        "{metrics}"
    );
    drop(setup.destination);
}

async fn a_migration_whose_destination_dies_ends_failed_and_restores_the_vm() {
    let mut setup = Setup::new("restore = \"immediate\"", true).await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    observer.prepare_migration(4).await;
    observer
        .execute("migrate", Some(serde_json::json!({"uri": setup.uri()})))
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "migrating"
        })
        .await,
        "{}",
        node.log()
    );
    setup.destination.kill();
    assert_eq!(
        observer
            .wait_status(&["failed", "completed"], Duration::from_secs(30))
            .await,
        "failed"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "stable"
        })
        .await,
        "{}",
        node.log()
    );
    assert_eq!(migration(node).await["end"], "failed");
}

async fn a_migration_to_nowhere_ends_failed_and_restores_the_vm() {
    let setup = Setup::new("ramp = { window = \"1s\" }", true).await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    observer.prepare_migration(16).await;
    let nowhere = format!("unix:{}", setup.dir.join("nobody-listens.sock").display());
    observer
        .execute("migrate", Some(serde_json::json!({"uri": nowhere})))
        .await;
    assert_eq!(
        observer
            .wait_status(&["failed", "completed"], Duration::from_secs(30))
            .await,
        "failed"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            migration(node).await["end"] == "failed"
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "stable"
        })
        .await,
        "{}",
        node.log()
    );
}

async fn a_qmp_socket_that_disappears_mid_migration_is_restored_at_the_deadline() {
    let mut setup = Setup::new("deadline = \"4s\"\nrestore = \"immediate\"", true).await;
    let observer = Observer::connect(&setup.source.observer).await;
    observer.prepare_migration(2).await;
    observer
        .execute("migrate", Some(serde_json::json!({"uri": setup.uri()})))
        .await;
    let node = &setup.node;
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "migrating"
        })
        .await,
        "{}",
        node.log()
    );
    let prepared = migration(node).await["prepared_at"].as_u64().unwrap();
    drop(observer);
    setup.source.kill();
    // No end notice can come: the VM stays drained until its deadline (checked below on the
    // record's own timestamps), not past it.
    assert!(
        eventually(Duration::from_secs(8), || async {
            node.phase("vm-a").await == "stable"
        })
        .await,
        "{}",
        node.log()
    );
    let record = migration(node).await;
    assert_eq!(record["end"], "deadline", "{record}");
    let ended = record["ended_at"].as_u64().unwrap();
    assert!(
        // Not before the deadline; the upper bound leaves room for a loaded machine.
        (4000..8000).contains(&(ended - prepared)),
        "restored {} ms after prepare",
        ended - prepared
    );
    assert!(node.log().contains("QMP connection lost"), "{}", node.log());
}

async fn handover_migrate_sends_migrate_only_after_the_vm_is_drained() {
    let setup = Setup::new("drain = { target = 0.0 }", false).await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    // A client connection to vm-a that ends a second after the prepare.
    let mut client = TcpClient::connect(node.listener("tcp")).await;
    while client.vm != "vm-a" {
        client = TcpClient::connect(node.listener("tcp")).await;
    }
    let args = [
        "migrate",
        "vm-a",
        "--qmp",
        setup.source.qmp.to_str().unwrap(),
        "--uri",
        &setup.uri(),
        "--max-bandwidth",
        "64MiB",
        "--drain-timeout",
        "20s",
        "--control",
        &node.control,
    ]
    .map(str::to_string);
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::binary())
            .args(args)
            .output()
            .unwrap()
    });
    // The CLI's prepare arrived (the event); it then waits for the connection.
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.phase("vm-a").await == "draining"
        })
        .await,
        "{}",
        node.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        observer.status().await,
        "none",
        "nothing may migrate while vm-a still has a connection"
    );
    let closed_at = now_ms();
    drop(client);
    let output = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let setup_at = observer
        .migration_event_ms("setup")
        .expect("QEMU reported the migration's setup");
    let record = migration(node).await;
    let drained_at = record["drained_at"].as_u64().expect("drained");
    assert!(
        drained_at >= closed_at,
        "drained ({drained_at}) only once the connection closed ({closed_at})"
    );
    assert!(
        setup_at >= drained_at,
        "QEMU's migration began ({setup_at}) after drained ({drained_at}): {stdout}"
    );
    assert_eq!(record["end"], "completed", "{record}");
    assert!(
        record["progress"]["transferred_bytes"].as_u64().unwrap() > 60 << 20,
        "{record}"
    );
    let order: Vec<usize> = ["prepare:", "drained after", "migrate: QMP migrate", "completed:"]
        .iter()
        .map(|step| {
            stdout
                .find(step)
                .unwrap_or_else(|| panic!("{step} missing in {stdout}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "steps out of order: {stdout}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "ramping"
        })
        .await,
        "{}",
        node.log()
    );
}

async fn ctrl_c_cancels_the_migration_and_restores_the_vm() {
    let setup = Setup::new("restore = \"immediate\"", false).await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    let child = std::process::Command::new(common::binary())
        .args([
            "migrate",
            "vm-a",
            "--qmp",
            setup.source.qmp.to_str().unwrap(),
            "--uri",
            &setup.uri(),
        ])
        .args(["--max-bandwidth", "2MiB", "--control", &node.control])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    observer.wait_status(&["active"], Duration::from_secs(20)).await;
    assert_eq!(node.phase("vm-a").await, "migrating");
    send_sigint(child.id());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("interrupted: cancelling the QEMU migration"),
        "{stdout}"
    );
    assert_eq!(observer.status().await, "cancelled");
    assert_eq!(migration(node).await["end"], "cancelled");
    assert_eq!(node.phase("vm-a").await, "stable");
}

fn send_sigint(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

//! Adaptive drain and switchover quiescence through the real binary, with progress from real QEMU
//! live migrations (TCG): the QMP watcher's progress and probes drive the controller of a guest
//! that dirties faster than it is copied down to a full drain, an idle guest keeps its target share,
//! and `handover migrate` holds QEMU's switchover until nothing is in flight to the quiescing VM (or
//! its bound passes), then lets it go and restores QEMU's parameters. The guests are either
//! disk-less (random RAM, nothing running) or run a tiny multiboot loop that dirties a range of
//! pages. Under the harness: reported ignored, with the reason, where QEMU cannot run (a failure
//! under `HANDOVER_REQUIRE_ALL=1`).

mod common;

use std::time::Duration;

use common::backends::{TcpBackend, TcpClient};
use common::harness;
use common::qemu::{Observer, Qemu, available, dirtying_kernel, ram_image};
use common::{Node, eventually, log_contains, now_ms, tcp_config};
use handover_core::api::VmView;

fn main() {
    harness::main(vec![
        harness::test_async(
            "a_guest_dirtying_faster_than_its_copy_is_drained_fully_from_real_qmp_progress",
            a_guest_dirtying_faster_than_its_copy_is_drained_fully_from_real_qmp_progress,
        )
        .needs(available),
        harness::test_async(
            "an_idle_guest_keeps_its_target_share_through_a_real_migration",
            an_idle_guest_keeps_its_target_share_through_a_real_migration,
        )
        .needs(available),
        harness::test_async(
            "handover_migrate_holds_the_switchover_until_nothing_is_in_flight",
            handover_migrate_holds_the_switchover_until_nothing_is_in_flight,
        )
        .needs(available),
        harness::test_async(
            "a_copy_shorter_than_the_lead_waits_for_quiescence_at_most_the_bound",
            a_copy_shorter_than_the_lead_waits_for_quiescence_at_most_the_bound,
        )
        .needs(available),
    ])
}

/// A source and a destination QEMU for vm-a, and a node balancing vm-a and vm-b.
struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    source: Qemu,
    _destination: Qemu,
    _backends: Vec<TcpBackend>,
    node: Node,
}

enum Guest {
    /// 64 MiB of random bytes, no code running: nothing is dirtied.
    Idle,
    /// 64 MiB of random bytes and a loop that dirties 256 KiB over and over: a guest at work
    /// (serving the requests still in flight) that converges at once, but never leaves a pass clean.
    Working,
    /// Zeroed RAM and a loop that dirties 8 MiB over and over.
    Dirtying,
}

impl Setup {
    async fn new(guest: Guest, drain: &str, watch: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let incoming = format!("unix:{}", path.join("migration.sock").display());
        let (source, destination) = match guest {
            Guest::Idle => {
                let ram = ram_image(&path);
                (
                    Qemu::start(&path, "src", &ram, None),
                    Qemu::start(&path, "dst", &ram, Some(&incoming)),
                )
            }
            Guest::Working => {
                let ram = ram_image(&path);
                let kernel = dirtying_kernel(&path, 2048, 2048 + 256);
                (
                    Qemu::start_kernel(&path, "src", &kernel, Some(&ram), None),
                    Qemu::start_kernel(&path, "dst", &kernel, Some(&ram), Some(&incoming)),
                )
            }
            Guest::Dirtying => {
                let kernel = dirtying_kernel(&path, 2048, 10 * 1024);
                (
                    Qemu::start_kernel(&path, "src", &kernel, None, None),
                    Qemu::start_kernel(&path, "dst", &kernel, None, Some(&incoming)),
                )
            }
        };
        let socket = path.join("migration.sock");
        assert!(
            eventually(Duration::from_secs(20), || async { socket.exists() }).await,
            "no incoming migration socket"
        );
        let backends = vec![TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
        let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
        let mut config = tcp_config(&addresses, drain);
        if watch {
            config.push_str(&format!(
                "\n[[qmp]]\nsocket = \"{}\"\nvm = \"vm-a\"\npoll_interval = \"250ms\"\n",
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
            _destination: destination,
            _backends: backends,
            node,
        }
    }

    fn uri(&self) -> String {
        format!("unix:{}", self.dir.join("migration.sock").display())
    }

    /// `handover migrate` of vm-a at `bandwidth`, in the background.
    fn migrate(&self, bandwidth: &str) -> tokio::task::JoinHandle<std::process::Output> {
        let args = [
            "migrate",
            "vm-a",
            "--qmp",
            self.source.qmp.to_str().unwrap(),
            "--uri",
            &self.uri(),
            "--max-bandwidth",
            bandwidth,
            "--drain-timeout",
            "1s",
            "--control",
            &self.node.control,
        ]
        .map(str::to_string);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::binary())
                .args(args)
                .output()
                .unwrap()
        })
    }
}

async fn vm_a(node: &Node) -> VmView {
    node.vms()
        .await
        .into_iter()
        .find(|v| v.vm.as_str() == "vm-a")
        .expect("vm-a is served")
}

async fn migration(node: &Node) -> serde_json::Value {
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    migrations[0].clone()
}

async fn a_guest_dirtying_faster_than_its_copy_is_drained_fully_from_real_qmp_progress() {
    let setup = Setup::new(
        Guest::Dirtying,
        "drain = { target = 0.5, adaptive = true }\nrestore = \"immediate\"",
        true,
    )
    .await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    observer
        .wait_until_guest_writes(&setup.dir, 2048 << 10, Duration::from_secs(60))
        .await;
    // 8 MiB re-dirtied all the time, copied at 4 MiB/s: a pass never leaves less than the
    // 1.2 MiB QEMU could send in its 300 ms downtime limit.
    observer.prepare_migration(4).await;
    observer
        .execute("migrate", Some(serde_json::json!({"uri": setup.uri()})))
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            vm_a(node)
                .await
                .adaptive
                .is_some_and(|a| a.latest.level.get() == 0.0)
        })
        .await,
        "the level never reached 0: {:?}\n{}",
        vm_a(node).await.adaptive,
        node.log()
    );
    let vm = vm_a(node).await;
    let adaptive = vm.adaptive.clone().unwrap();
    assert!(
        matches!(
            adaptive.latest.decision.as_str(),
            "cannot_converge" | "not_shrinking"
        ),
        "{adaptive:?}"
    );
    // The embedded proxy applies it: no new connection goes to vm-a.
    let backend = &vm.backends[0].backend;
    assert_eq!(backend.share, 0.0, "{vm:?}");
    for _ in 0..6 {
        assert_eq!(TcpClient::connect(node.listener("tcp")).await.vm, "vm-b");
    }
    // The history shows the start at the target and why it fell; the watcher's probes are in it.
    let record = migration(node).await;
    let steps = record["adaptive"].as_array().unwrap();
    assert_eq!(steps[0]["level"], 1.0, "{record}");
    assert!(steps.iter().any(|s| s["level"] == 0.0), "{record}");
    assert!(
        record["progress"]["dirty_probe"]["bytes_per_s"].as_f64().unwrap() > 4.0 * 1048576.0,
        "the probe saw the 8 MiB re-dirtied every second: {record}"
    );
    assert_eq!(record["progress"]["max_bandwidth"], 4 << 20, "{record}");
    let metrics = node.client(None).get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("handover_migration_adaptive_level{vm=\"vm-a\"} 0"),
        "{metrics}"
    );
    let status = node.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("vm-a adaptive: level 0.00 of the target"), "{text}");
    // It never converges: cancel, and the VM is back.
    observer.execute("migrate_cancel", None).await;
    assert_eq!(
        observer
            .wait_status(&["cancelled"], Duration::from_secs(20))
            .await,
        "cancelled"
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

async fn an_idle_guest_keeps_its_target_share_through_a_real_migration() {
    let setup = Setup::new(Guest::Idle, "drain = { target = 0.5, adaptive = true }", true).await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    observer.prepare_migration(16).await;
    observer
        .execute("migrate", Some(serde_json::json!({"uri": setup.uri()})))
        .await;
    let mut shares = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while observer.status().await != "completed" {
        assert!(tokio::time::Instant::now() < deadline, "no completion");
        let vm = vm_a(node).await;
        if vm.phase.as_str() == "migrating" {
            shares.push(vm.backends[0].backend.share);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Half of its normal share (1/2 of 1/2) for the whole copy of 64 MiB at 16 MiB/s.
    assert!(shares.len() >= 5, "{shares:?}");
    assert!(shares.iter().all(|s| (s - 0.25).abs() < 1e-9), "{shares:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            migration(node).await["end"] == "completed"
        })
        .await
    );
    let record = migration(node).await;
    let steps = record["adaptive"].as_array().unwrap();
    assert!(steps.len() >= 5, "{record}");
    assert!(steps.iter().all(|s| s["level"] == 1.0), "{record}");
}

async fn handover_migrate_holds_the_switchover_until_nothing_is_in_flight() {
    let setup = Setup::new(
        Guest::Working,
        "drain = { target = 0.5, adaptive = true, quiesce = true, quiesce_lead = \"2s\", quiesce_hold = \"20s\" }",
        false,
    )
    .await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    observer
        .wait_until_guest_writes(&setup.dir, 2048 << 10, Duration::from_secs(60))
        .await;
    // A connection to vm-a that stays open: until it closes, something is in flight.
    let mut client = TcpClient::connect(node.listener("tcp")).await;
    while client.vm != "vm-a" {
        client = TcpClient::connect(node.listener("tcp")).await;
    }
    // 64 MiB at 8 MiB/s: quiescence begins about 2 s before the end of an 8 s copy.
    let run = setup.migrate("8MiB");
    assert!(
        eventually(Duration::from_secs(40), || async {
            migration(node).await["hold_started_at"].is_u64()
        })
        .await,
        "no hold: {}\n{}",
        migration(node).await,
        node.log()
    );
    let held_at = now_ms();
    // Held: QEMU does not switch over while the connection is open (a second is enough to see
    // it; the hold lasts as long as the guest dirties a page in every pass).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(observer.status().await, "active", "{}", migration(node).await);
    assert!(observer.migration_event_ms("completed").is_none());
    assert_eq!(
        client.echo("still here").await.as_deref(),
        Some("vm-a still here")
    );
    let parameters = observer.execute("query-migrate-parameters", None).await;
    assert_eq!(parameters["downtime-limit"], 1, "{parameters}");
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
    let record = migration(node).await;
    assert_eq!(record["end"], "completed", "{record}");
    let (quiesce, quiesced, hold_end) = (
        record["quiesce_started_at"].as_u64().unwrap(),
        record["quiesced_at"].as_u64().unwrap(),
        record["hold_ended_at"].as_u64().unwrap(),
    );
    assert!(quiesce <= held_at, "{record}");
    assert!(
        quiesced >= closed_at,
        "quiesced only once the connection closed: {record}"
    );
    // Released once the close was seen (the bound leaves a loaded machine room).
    assert!(hold_end >= quiesced && hold_end - closed_at < 5000, "{record}");
    // QEMU stopped the guest only after the hold was released, and got its parameters back.
    let stop = observer
        .events
        .lock()
        .iter()
        .find(|e| e.name == "STOP")
        .and_then(|e| e.timestamp_us)
        .map(|us| us / 1000)
        .expect("the source stopped for the switchover");
    assert!(
        stop >= closed_at,
        "STOP at {stop}, connection closed at {closed_at}"
    );
    let parameters = observer.execute("query-migrate-parameters", None).await;
    assert_eq!(parameters["downtime-limit"], 300, "{parameters}");
    assert_eq!(parameters["max-bandwidth"], 8 << 20, "{parameters}");
    assert_eq!(parameters["avail-switchover-bandwidth"], 0, "{parameters}");
    for step in [
        "quiescing: holding QEMU's switchover",
        "switchover released after",
        "nothing in flight",
    ] {
        assert!(stdout.contains(step), "{step} missing: {stdout}");
    }
}

async fn a_copy_shorter_than_the_lead_waits_for_quiescence_at_most_the_bound() {
    let setup = Setup::new(
        Guest::Idle,
        "drain = { target = 0.5, adaptive = true, quiesce = true, quiesce_hold = \"2s\" }",
        false,
    )
    .await;
    let node = &setup.node;
    let observer = Observer::connect(&setup.source.observer).await;
    let mut client = TcpClient::connect(node.listener("tcp")).await;
    while client.vm != "vm-a" {
        client = TcpClient::connect(node.listener("tcp")).await;
    }
    // 64 MiB at 1 GiB/s: shorter than the 2 s lead, so quiescence begins before the copy, and
    // the open connection keeps the VM from being quiesced: the copy starts at the 2 s bound.
    let started = now_ms();
    let output = setup.migrate("1GiB").await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("quiescing before the copy") && stdout.contains("still in flight at the bound"),
        "{stdout}"
    );
    let setup_at = observer.migration_event_ms("setup").expect("the copy began");
    let record = migration(node).await;
    let (quiesce, held, released) = (
        record["quiesce_started_at"].as_u64().unwrap(),
        record["hold_started_at"].as_u64().unwrap(),
        record["hold_ended_at"].as_u64().unwrap(),
    );
    assert!(quiesce >= started && held >= quiesce, "{record}");
    assert!(
        (1900..4000).contains(&(released - held)),
        "held {} ms: {record}",
        released - held
    );
    assert!(setup_at >= released, "the copy began after the wait: {record}");
    assert!(record["quiesced_at"].is_null(), "{record}");
    assert_eq!(record["end"], "completed", "{record}");
    // The connection kept working throughout.
    assert_eq!(client.echo("after").await.as_deref(), Some("vm-a after"));
}

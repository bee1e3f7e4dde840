//! Fault injection through the real binary: the migration module keeps the README's promises when a
//! peer hangs (SIGSTOP), a node dies (SIGKILL) and restarts, a driven HAProxy is unreachable or was
//! left in DRAIN by a node that died, notices of one migration reach different nodes, and handover
//! runs out of file descriptors. Each test is one failure of issue 14, named for what now holds.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::backends::{TcpBackend, vm_counts};
use common::harness;
use common::lb::{Haproxy, free_port, haproxy_available};
use common::{Node, eventually, notice};

/// `[control]` on a given port (0 for any).
fn control(port: u16) -> String {
    format!("[control]\nbind = \"127.0.0.1:{port}\"\n\n")
}

fn main() {
    harness::main(vec![
        harness::test_async(
            "fifty_prepares_with_a_hung_peer_drain_locally_at_once_and_answer_within_the_peer_timeout",
            fifty_prepares_with_a_hung_peer_drain_locally_at_once_and_answer_within_the_peer_timeout,
        ),
        harness::test_async(
            "a_prepare_acknowledged_just_before_a_sigkill_is_still_in_force_after_the_restart",
            a_prepare_acknowledged_just_before_a_sigkill_is_still_in_force_after_the_restart,
        ),
        harness::test_async(
            "a_notice_that_cannot_be_saved_is_refused_and_changes_nothing",
            a_notice_that_cannot_be_saved_is_refused_and_changes_nothing,
        ),
        harness::test_async(
            "a_drain_left_in_haproxy_by_a_node_that_died_is_adopted_when_it_restarts_and_ended_by_completed",
            a_drain_left_in_haproxy_by_a_node_that_died_is_adopted_when_it_restarts_and_ended_by_completed,
        )
        .needs(haproxy_available),
        harness::test_async(
            "a_haproxy_drain_is_restored_at_its_original_deadline_by_the_restarted_node",
            a_haproxy_drain_is_restored_at_its_original_deadline_by_the_restarted_node,
        )
        .needs(haproxy_available),
        harness::test_async(
            "a_second_node_driving_the_same_haproxy_restores_it_when_the_draining_node_dies_for_good",
            a_second_node_driving_the_same_haproxy_restores_it_when_the_draining_node_dies_for_good,
        )
        .needs(haproxy_available),
        harness::test_async(
            "a_prepare_while_haproxy_is_unreachable_is_pending_and_applied_when_it_comes_back",
            a_prepare_while_haproxy_is_unreachable_is_pending_and_applied_when_it_comes_back,
        )
        .needs(haproxy_available),
        harness::test_async(
            "notices_of_one_migration_may_go_to_different_nodes_and_a_stale_deadline_never_undoes_a_later_one",
            notices_of_one_migration_may_go_to_different_nodes_and_a_stale_deadline_never_undoes_a_later_one,
        ),
        harness::test_async(
            "a_restarted_node_fetches_the_current_phases_from_its_peers_before_it_serves",
            a_restarted_node_fetches_the_current_phases_from_its_peers_before_it_serves,
        ),
        harness::test_async(
            "running_out_of_descriptors_never_ejects_backends_nor_silences_the_control_api",
            running_out_of_descriptors_never_ejects_backends_nor_silences_the_control_api,
        )
        .needs(prlimit),
        harness::test_async(
            "emfile_on_accept_and_connect_is_handovers_problem_not_the_backends",
            emfile_on_accept_and_connect_is_handovers_problem_not_the_backends,
        )
        .needs(prlimit),
        harness::test_async(
            "deadlines_of_zero_or_beyond_a_week_are_refused_by_the_api_and_the_peer_api",
            deadlines_of_zero_or_beyond_a_week_are_refused_by_the_api_and_the_peer_api,
        ),
        harness::test_async(
            "a_started_for_a_queued_vm_continues_and_ends_the_record_the_guard_opened",
            a_started_for_a_queued_vm_continues_and_ends_the_record_the_guard_opened,
        ),
        harness::test_async(
            "a_state_file_that_is_not_utf8_or_of_another_version_is_moved_aside_not_overwritten",
            a_state_file_that_is_not_utf8_or_of_another_version_is_moved_aside_not_overwritten,
        ),
        harness::test_async(
            "an_unknown_qmp_status_is_ignored_and_no_failed_is_sent_on_reconnect",
            an_unknown_qmp_status_is_ignored_and_no_failed_is_sent_on_reconnect,
        ),
        harness::test(
            "check_reports_every_error_in_one_run",
            check_reports_every_error_in_one_run,
        ),
        harness::test_async(
            "the_recovery_ramp_after_a_health_check_reaches_full_weight",
            the_recovery_ramp_after_a_health_check_reaches_full_weight,
        ),
        harness::test_async(
            "a_node_that_was_frozen_asks_its_peers_for_the_current_phases_when_it_runs_again",
            a_node_that_was_frozen_asks_its_peers_for_the_current_phases_when_it_runs_again,
        ),
        harness::test_async(
            "an_end_notice_at_a_node_that_missed_the_prepare_asks_its_peers_first",
            an_end_notice_at_a_node_that_missed_the_prepare_asks_its_peers_first,
        ),
        harness::test_async(
            "a_peer_command_older_than_what_the_node_knows_is_ignored",
            a_peer_command_older_than_what_the_node_knows_is_ignored,
        ),
        harness::test_async(
            "a_drain_begun_while_a_node_was_frozen_mid_ramp_reaches_it_when_it_runs_again",
            a_drain_begun_while_a_node_was_frozen_mid_ramp_reaches_it_when_it_runs_again,
        ),
        harness::test_async(
            "notices_that_meet_deadlines_falling_due_keep_the_control_plane_answering",
            notices_that_meet_deadlines_falling_due_keep_the_control_plane_answering,
        ),
    ]);
}

/// prlimit (util-linux) runs.
fn prlimit() -> Result<(), harness::Lack> {
    harness::program("prlimit", "--version", "util-linux")
}

/// A peer section.
fn peer(name: &str, url: &str, timeout: &str) -> String {
    format!("\n[[peers]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\n")
}

/// An L4 listener `tcp` in front of pool `p`, whose backends are `(vm, address)`.
fn tcp_pool(pool_extra: &str, backends: &[(String, SocketAddr)]) -> String {
    let mut text = format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pools.p]\n{pool_extra}\n"
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.p.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text
}

/// `n` VMs `vm-00`... on closed loopback ports (their phase is what the tests look at).
fn many_vms(n: usize) -> Vec<(String, SocketAddr)> {
    (0..n)
        .map(|i| {
            (
                format!("vm-{i:02}"),
                format!("127.0.0.1:{}", 20000 + i).parse().unwrap(),
            )
        })
        .collect()
}

/// The phase each backend of the node's pools shows, by VM.
async fn pool_phases(node: &Node) -> std::collections::BTreeMap<String, String> {
    let status: serde_json::Value = node
        .client(None)
        .get("/v1/balancer/status")
        .await
        .expect("balancer status");
    let mut phases = std::collections::BTreeMap::new();
    for pool in status["pools"].as_array().unwrap() {
        for backend in pool["backends"].as_array().unwrap() {
            phases.insert(
                backend["vm"].as_str().unwrap().to_string(),
                backend["phase"].as_str().unwrap().to_string(),
            );
        }
    }
    phases
}

async fn pool_phase(node: &Node, vm: &str) -> String {
    pool_phases(node).await.remove(vm).unwrap_or_default()
}

/// Sends `notice` for every VM at once; returns each reply's status and how long it took.
async fn notice_all(node: &Node, vms: &[String], body: serde_json::Value) -> Vec<(u16, Duration)> {
    let handles: Vec<_> = vms
        .iter()
        .map(|vm| {
            let client = node.client(None);
            let vm = vm.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let status = match client
                    .post::<_, serde_json::Value>(&format!("/v1/vms/{vm}/migration"), &body)
                    .await
                {
                    Ok((status, _)) => status.as_u16(),
                    Err(handover_drivers::ClientError::Status { status, .. }) => status.as_u16(),
                    Err(e) => panic!("notice for {vm} failed: {e}"),
                };
                (status, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

// 1. One hung peer held up every notice: 50 prepares took 2 s each, one after another.
async fn fifty_prepares_with_a_hung_peer_drain_locally_at_once_and_answer_within_the_peer_timeout() {
    let vms = many_vms(50);
    let node_b = Node::start(&format!("{}{}", control(0), tcp_pool("", &vms)));
    let node_a = Node::start(&format!(
        "{}{}{}",
        control(0),
        tcp_pool("", &vms),
        peer("node-b", &node_b.control, "2s")
    ));
    node_b.signal("STOP");
    let names: Vec<String> = vms.iter().map(|(vm, _)| vm.clone()).collect();

    let started = Instant::now();
    let sending = {
        let names = names.clone();
        let client_node = &node_a;
        async move { notice_all(client_node, &names, notice("prepare")).await }
    };
    // While the prepares are in flight, node A's own proxy must already keep new work away from
    // every VM: its drain does not wait for the hung peer.
    let watching = async {
        let drained_at = eventually(Duration::from_secs(60), || async {
            pool_phases(&node_a).await.values().all(|p| p == "draining")
        })
        .await;
        (drained_at, started.elapsed())
    };
    let (replies, (all_drained, drained_after)) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(sending, watching) })
            .await
            .expect("the prepares end");
    let took = started.elapsed();
    assert!(all_drained);
    assert!(replies.iter().all(|(status, _)| *status == 200), "{replies:?}");
    // Every prepare waits up to the peer's 2 s timeout before it answers; the drains were all in
    // force before the first answer came (each reply's time counts from its own send, later than
    // `started`, so this is if anything stricter).
    let fastest = replies.iter().map(|(_, t)| *t).min().unwrap();
    assert!(
        drained_after < fastest,
        "every local drain applied at once, not after the peer: all drained after {drained_after:?}, first reply after {fastest:?}"
    );
    let slowest = replies.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest < Duration::from_secs(4),
        "every reply within the 2 s peer timeout (plus noise), slowest {slowest:?}, all {took:?}"
    );

    // With the peer still hung, later notices do not wait for it again.
    let started = Instant::now();
    let replies = notice_all(&node_a, &names, notice("completed")).await;
    assert!(replies.iter().all(|(status, _)| *status == 200), "{replies:?}");
    let slowest = replies.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a peer known to hang is not waited for again (its timeout is 2 s): slowest {slowest:?} of {:?}",
        started.elapsed()
    );
    assert!(pool_phases(&node_a).await.values().all(|p| p != "draining"));

    // When it runs again it gets the current phase of every VM, without another notice.
    node_b.signal("CONT");
    assert!(
        eventually(Duration::from_secs(15), || async {
            pool_phases(&node_b).await.values().all(|p| p != "draining")
        })
        .await,
        "the peer caught up: {:?}",
        pool_phases(&node_b).await
    );
}

/// Three line-echo backends vm-a, vm-b, vm-c.
async fn three_backends() -> Vec<TcpBackend> {
    vec![
        TcpBackend::start("vm-a").await,
        TcpBackend::start("vm-b").await,
        TcpBackend::start("vm-c").await,
    ]
}

fn named(backends: &[TcpBackend]) -> Vec<(String, SocketAddr)> {
    ["vm-a", "vm-b", "vm-c"]
        .iter()
        .zip(backends)
        .map(|(vm, b)| (vm.to_string(), b.address))
        .collect()
}

fn state_section(path: &Path) -> String {
    format!("\n[state]\nfile = \"{}\"\n", path.display())
}

// 2. An acknowledged prepare was lost on a crash: the state file was written by a periodic check,
// after the reply.
async fn a_prepare_acknowledged_just_before_a_sigkill_is_still_in_force_after_the_restart() {
    let backends = three_backends().await;
    for trial in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "{}{}{}",
            control(0),
            tcp_pool("ramp = { window = \"1s\" }", &named(&backends)),
            state_section(&dir.path().join("state.json"))
        );
        let mut node = Node::start(&config);
        let (status, reply) = node.notice("vm-a", notice("prepare")).await;
        assert_eq!(status, 200, "{reply}");
        node.kill();
        let node = Node::start(&config);
        assert_eq!(
            node.phase("vm-a").await,
            "draining",
            "trial {trial}:\n{}",
            node.log()
        );
        assert_eq!(pool_phase(&node, "vm-a").await, "draining", "trial {trial}");
        let counts = vm_counts(node.listener("tcp"), 30, 10).await;
        assert_eq!(counts.get("vm-a"), None, "trial {trial}: {counts:?}");
    }
}

/// A small tmpfs the test can fill up (root only), unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallDisk { path, _dir: dir })
    }

    /// Writes zeros to `fill` until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("fill")).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

// 2. A full disk: the notice fails with a clear error and changes nothing.
async fn a_notice_that_cannot_be_saved_is_refused_and_changes_nothing() {
    let disk = match SmallDisk::mount("256k") {
        Ok(disk) => disk,
        Err(reason) => panic!("a small disk for the state file: {reason}"),
    };
    let backends = three_backends().await;
    let node = Node::start(&format!(
        "{}{}{}",
        control(0),
        tcp_pool("", &named(&backends)),
        state_section(&disk.path.join("state.json"))
    ));
    disk.fill();
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 503, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("not applied") && error.contains("No space left on device"),
        "{error}"
    );
    assert_eq!(node.phase("vm-a").await, "stable");
    assert_eq!(pool_phase(&node, "vm-a").await, "stable");
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(migrations.as_array().unwrap().len(), 0, "{migrations}");
    let counts = vm_counts(node.listener("tcp"), 60, 20).await;
    assert!(counts.get("vm-a").copied().unwrap_or(0) > 0, "{counts:?}");

    // Once it can be written again, the same notice is applied.
    disk.free();
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(pool_phase(&node, "vm-a").await, "draining");
    let saved = std::fs::read_to_string(disk.path.join("state.json")).unwrap();
    assert!(saved.contains("\"draining\""), "{saved}");
}

/// A `[[haproxy]]` section driving `lb` (s1 → vm-a, s2 → vm-b, s3 → vm-c, by name).
fn haproxy_section(socket: &Path, extra: &str) -> String {
    format!(
        "\n[[haproxy]]\nname = \"lb\"\nsocket = \"{}\"\nvms = {{ \"be/s1\" = \"vm-a\", \"be/s2\" = \"vm-b\", \"be/s3\" = \"vm-c\" }}\nstep = \"250ms\"\nramp = {{ window = \"1s\" }}\n{extra}\n",
        socket.display()
    )
}

fn haproxy_servers(backends: &[TcpBackend]) -> Vec<(&'static str, SocketAddr, u32)> {
    vec![
        ("s1", backends[0].address, 1),
        ("s2", backends[1].address, 1),
        ("s3", backends[2].address, 1),
    ]
}

/// Whether s1 is back: ready (not in drain) at its configured weight.
fn s1_restored(haproxy: &Haproxy) -> bool {
    haproxy.servers()["s1"] == (1, false)
}

// 3. A HAProxy server stayed in DRAIN for ever when handover died mid-drain; restarted without a
// state file, handover answered `completed` with 409.
async fn a_drain_left_in_haproxy_by_a_node_that_died_is_adopted_when_it_restarts_and_ended_by_completed() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let haproxy = Haproxy::start(dir.path(), "lb", &haproxy_servers(&backends));
    let config = format!("{}{}", control(0), haproxy_section(&haproxy.socket, ""));
    let mut node = Node::start(&config);
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert!(haproxy.servers()["s1"].1, "s1 in DRAIN");
    node.kill();

    // Restarted with no state: what HAProxy holds is taken for a migration in progress.
    let node = Node::start(&config);
    assert!(
        haproxy.servers()["s1"].1,
        "still in DRAIN: the migration may still run"
    );
    assert_eq!(node.phase("vm-a").await, "draining", "{}", node.log());
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert!(
        migrations[0]["note"]
            .as_str()
            .unwrap_or("")
            .contains("server be/s1 in DRAIN"),
        "{migrations}"
    );
    let (status, reply) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        eventually(Duration::from_secs(5), || async { s1_restored(&haproxy) }).await,
        "{:?}",
        haproxy.servers()
    );
    let counts = vm_counts(haproxy.frontend, 60, 20).await;
    assert!(counts.get("vm-a").copied().unwrap_or(0) > 0, "{counts:?}");
}

// 3. The deadline restores the VM even if the node that drained it dies: with a state file, the
// restarted node keeps the original deadline.
async fn a_haproxy_drain_is_restored_at_its_original_deadline_by_the_restarted_node() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let haproxy = Haproxy::start(dir.path(), "lb", &haproxy_servers(&backends));
    let config = format!(
        "{}{}{}",
        control(0),
        haproxy_section(&haproxy.socket, ""),
        state_section(&dir.path().join("state.json"))
    );
    let mut node = Node::start(&config);
    let prepared = Instant::now();
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "deadline_ms": 4000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    node.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // HAProxy forgets runtime changes on reload; the restarted node puts the drain back.
    haproxy.reload();
    let node = Node::start(&config);
    assert!(
        haproxy.servers()["s1"].1,
        "drained again before serving: {}",
        node.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || async { s1_restored(&haproxy) }).await,
        "{:?}\n{}",
        haproxy.servers(),
        node.log()
    );
    let restored_after = prepared.elapsed();
    assert!(
        restored_after >= Duration::from_millis(3900),
        "not before the deadline: {restored_after:?}"
    );
    assert!(
        restored_after < Duration::from_secs(12),
        "at the deadline (4 s) plus the 1 s ramp, and a loaded machine's delays: {restored_after:?}"
    );
    // The node's own record: the deadline fell 4 s after the prepare, not 4 s after the restart
    // (which came at least 1 s after it).
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    let m = migrations
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["vm"] == "vm-a")
        .unwrap_or_else(|| panic!("{migrations}"));
    assert_eq!(m["end"], "deadline", "{migrations}");
    let held = m["ended_at"].as_u64().unwrap() - m["prepared_at"].as_u64().unwrap();
    assert!(
        (3900..4900).contains(&held),
        "the deadline counted from the prepare, not from the restart: ended {held} ms after it"
    );
}

// 3. A node that dies for good: another node driving the same HAProxy restores it at the deadline.
async fn a_second_node_driving_the_same_haproxy_restores_it_when_the_draining_node_dies_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let haproxy = Haproxy::start(dir.path(), "lb", &haproxy_servers(&backends));
    let node_b = Node::start(&format!("{}{}", control(0), haproxy_section(&haproxy.socket, "")));
    let mut node_a = Node::start(&format!(
        "{}{}{}",
        control(0),
        haproxy_section(&haproxy.socket, ""),
        peer("node-b", &node_b.control, "1s")
    ));
    let (status, reply) = node_a
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "deadline_ms": 2000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_b.phase("vm-a").await, "draining", "node B follows the drain");
    node_a.kill();
    assert!(haproxy.servers()["s1"].1);
    assert!(
        eventually(Duration::from_secs(8), || async { s1_restored(&haproxy) }).await,
        "{:?}\n{}",
        haproxy.servers(),
        node_b.log()
    );
}

// 4. Prepare while the only balancer serving the VM is unreachable: it was 404 "no balancer serves
// VM" (exit 1), and nothing was drained when HAProxy came back.
async fn a_prepare_while_haproxy_is_unreachable_is_pending_and_applied_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let socket = dir.path().join("lb.sock");
    let node = Node::start(&format!("{}{}", control(0), haproxy_section(&socket, "")));

    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["outcome"], "pending");
    assert_eq!(reply["phase"], "draining");
    let lb = &reply["balancers"][0];
    assert_eq!(lb["serves"], true, "{reply}");
    assert_eq!(lb["pending"], true, "{reply}");
    assert!(lb["error"].as_str().unwrap().contains("unreachable"), "{reply}");
    let output = node.cli(&["notify", "vm-b", "prepare"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(5), "exit 5 means pending: {stdout}");
    assert!(stdout.contains("PENDING"), "{stdout}");
    // A VM nobody serves is still unknown.
    let (status, reply) = node.notice("vm-x", notice("prepare")).await;
    assert_eq!(status, 404, "{reply}");

    let haproxy = Haproxy::start(dir.path(), "lb", &haproxy_servers(&backends));
    assert!(
        eventually(Duration::from_secs(3), || async {
            let s = haproxy.servers();
            s["s1"].1 && s["s2"].1
        })
        .await,
        "applied once HAProxy answers: {:?}",
        haproxy.servers()
    );
    assert_eq!(vm_counts(haproxy.frontend, 30, 10).await.get("vm-a"), None);
}

/// Two nodes that list each other as peers, both in front of the same three backends.
fn twin_config(port: u16, other: &str, extra: &str, backends: &[TcpBackend]) -> String {
    format!(
        "{}{}{}{extra}",
        control(port),
        tcp_pool("ramp = { window = \"1s\" }", &named(backends)),
        peer("other", other, "1s")
    )
}

// 5. Notices of one migration sent to different nodes: `completed` at the other node was 409, and
// the first node's stale deadline later undid a second migration.
async fn notices_of_one_migration_may_go_to_different_nodes_and_a_stale_deadline_never_undoes_a_later_one() {
    let backends = three_backends().await;
    let (port_a, port_b) = (free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let node_a = Node::start(&twin_config(port_a, &url(port_b), "", &backends));
    let node_b = Node::start(&twin_config(port_b, &url(port_a), "", &backends));

    // prepare at A, completed at B.
    let (status, reply) = node_a.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_b.phase("vm-a").await, "draining");
    let (status, reply) = node_b.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    for node in [&node_a, &node_b] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                node.phase("vm-a").await == "stable" && pool_phase(node, "vm-a").await == "stable"
            })
            .await
        );
    }

    // A short migration begun at A and ended at B, then a long one begun at B: A's deadline for
    // the first must not undo the second.
    let (status, _) = node_a
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "deadline_ms": 2000}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(node_b.notice("vm-a", notice("started")).await.0, 200);
    assert_eq!(node_b.notice("vm-a", notice("completed")).await.0, 200);
    assert_eq!(node_b.notice("vm-a", notice("prepare")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    for node in [&node_a, &node_b] {
        assert_eq!(node.phase("vm-a").await, "draining", "{}", node.log());
        assert_eq!(pool_phase(node, "vm-a").await, "draining");
        let counts = vm_counts(node.listener("tcp"), 30, 10).await;
        assert_eq!(counts.get("vm-a"), None, "{counts:?}");
    }
}

// 6. A restarted peer stayed drained until the other node's backed-off retry arrived (28.6 s after
// 33 s down).
async fn a_restarted_node_fetches_the_current_phases_from_its_peers_before_it_serves() {
    let backends = three_backends().await;
    let (port_a, port_b) = (free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let node_a = Node::start(&twin_config(port_a, &url(port_b), "", &backends));
    let config_b = twin_config(
        port_b,
        &url(port_a),
        &state_section(&dir.path().join("b.json")),
        &backends,
    );
    let mut node_b = Node::start(&config_b);
    assert_eq!(node_a.notice("vm-a", notice("prepare")).await.0, 200);
    assert_eq!(pool_phase(&node_b, "vm-a").await, "draining");
    // B saves what it followed (after its reply: A has it on disk).
    let saved = dir.path().join("b.json");
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&saved).is_ok_and(|t| t.contains("\"draining\""))
        })
        .await
    );

    // B dies; the migration ends while it is down (A cannot tell it).
    node_b.kill();
    let (status, reply) = node_a.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    // Long enough for A's retries to B to be seconds apart (the next is due after B is back).
    tokio::time::sleep(Duration::from_secs(8)).await;

    // B restarts from its state file (vm-a draining) and asks A before it serves.
    let node_b = Node::start(&config_b);
    let phase = pool_phase(&node_b, "vm-a").await;
    assert_ne!(phase, "draining", "{}", node_b.log());
    assert!(
        node_b.plain_log().contains("learned_from_peers=1"),
        "{}",
        node_b.plain_log()
    );
    let counts = vm_counts(node_b.listener("tcp"), 60, 20).await;
    assert!(counts.get("vm-a").copied().unwrap_or(0) > 0, "{counts:?}");
}

/// One keep-alive HTTP client sending `GET /` until `stop`; counts answers by status, and errors.
async fn http_load_client(
    address: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, u64) {
    use std::sync::atomic::Ordering;
    let (mut ok, mut not_ok, mut errors) = (0, 0, 0);
    'connection: while !stop.load(Ordering::Relaxed) {
        let stream = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            _ => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(connection);
        while !stop.load(Ordering::Relaxed) {
            let request = http::Request::get("/")
                .header("host", "test")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            // A client waiting in the listen queue is not an error: it waits.
            let answer = tokio::select! {
                answer = sender.send_request(request) => answer,
                _ = async { while !stop.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(50)).await } } => break 'connection,
            };
            match answer {
                Ok(response) => {
                    use http_body_util::BodyExt;
                    let status = response.status().as_u16();
                    let _ = response.into_body().collect().await;
                    if status == 200 {
                        ok += 1;
                    } else {
                        not_ok += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    errors += 1;
                    continue 'connection;
                }
            }
        }
    }
    (ok, not_ok, errors)
}

// 7. handover's own descriptor exhaustion (ulimit -n 256, 400 connections): healthy backends were
// ejected, the control API stopped answering, and the log took up to 268 WARN lines a second.
async fn running_out_of_descriptors_never_ejects_backends_nor_silences_the_control_api() {
    use common::backends::HttpBackend;
    let backends = vec![
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
    ];
    let mut config = format!(
        "{}[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pools.p]\nramp = {{ window = \"1s\" }}\nhealth = {{ kind = \"http\", path = \"/health\", interval = \"300ms\", timeout = \"1s\", rise = 1, fall = 2 }}\noutlier = {{ consecutive_failures = 3, ejection = \"60s\" }}\n",
        control(0)
    );
    for (vm, backend) in ["vm-a", "vm-b", "vm-c"].iter().zip(&backends) {
        config.push_str(&format!(
            "\n[[pools.p.backends]]\naddress = \"{}\"\nvm = \"{vm}\"\n",
            backend.address
        ));
    }
    let node = Node::start_limited(&config, Some(256));
    let web = node.listener("web");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The 400 clients run on a runtime of their own, so the time the API probe measures is
    // handover's, not this test's own scheduler busy with the load.
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the load's runtime")
                .block_on(async move {
                    let clients: Vec<_> = (0..400)
                        .map(|_| tokio::spawn(http_load_client(web, stop.clone())))
                        .collect();
                    let mut results = Vec::new();
                    for client in clients {
                        results.push(client.await.expect("a load client"));
                    }
                    results
                })
        })
    };

    // While 400 clients hold the proxy at its limit, the control API answers, promptly.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut prepared = false;
    while started.elapsed() < Duration::from_secs(6) {
        let asked = Instant::now();
        let health =
            tokio::time::timeout(Duration::from_secs(3), node.client(None).get_text("/healthz")).await;
        assert!(
            matches!(health, Ok(Ok(ref text)) if text.trim() == "ok"),
            "/healthz after {:?}: {health:?}",
            started.elapsed()
        );
        slowest = slowest.max(asked.elapsed());
        if !prepared && started.elapsed() > Duration::from_secs(2) {
            let asked = Instant::now();
            let (status, reply) =
                tokio::time::timeout(Duration::from_secs(5), node.notice("vm-b", notice("prepare")))
                    .await
                    .expect("the prepare is answered in time");
            assert_eq!(status, 200, "{reply}");
            assert_eq!(pool_phase(&node, "vm-b").await, "draining");
            slowest = slowest.max(asked.elapsed());
            prepared = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(slowest < Duration::from_secs(2), "slowest API answer {slowest:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    let results = tokio::task::spawn_blocking(move || load.join().expect("the load's thread"))
        .await
        .unwrap();
    for (ok, not_ok, _) in results {
        served += ok;
        assert_eq!(not_ok, 0, "no 5xx while at the limit");
    }
    assert!(served > 0);

    // No backend was held responsible: none down, none ejected, no failure counted.
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    for backend in pools[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["health"], "up", "{pools}");
        assert_eq!(backend["outages_total"], 0, "{pools}");
        assert_eq!(backend["failures_total"], 0, "{pools}");
    }
    // And the proxy serves everyone again at once.
    let mut client = common::backends::HttpClient::connect(web).await;
    for _ in 0..50 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let log = node.plain_log();
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(warnings <= 10, "{warnings} WARN lines:\n{log}");
}

/// Sets a running process's soft descriptor limit, its hard limit unchanged (util-linux
/// `prlimit --pid`; raising it back needs no privilege).
fn set_nofile(pid: u32, n: u64) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --pid {pid} failed");
}

fn hard_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

fn open_descriptors(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

// 7. Running out for real (the limit lowered under handover while it runs, so accept and connect
// fail with EMFILE): not a backend's failure, accept backs off, the API answers, the log stays calm.
async fn emfile_on_accept_and_connect_is_handovers_problem_not_the_backends() {
    let backends = three_backends().await;
    let node = Node::start(&format!(
        "{}{}",
        control(0),
        tcp_pool(
            "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"1s\", rise = 1, fall = 2 }\noutlier = { consecutive_failures = 2, ejection = \"60s\" }\nconnect_timeout = \"500ms\"",
            &named(&backends)
        )
    ));
    let pid = node.pid();
    let limit = open_descriptors(pid) + 4;
    set_nofile(pid, limit);
    let tcp = node.listener("tcp");
    let clients: Vec<_> = (0..60)
        .map(|_| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(tcp).await.ok()?;
                let mut lines = tokio::io::BufReader::new(stream);
                let mut greeting = String::new();
                use tokio::io::AsyncBufReadExt;
                tokio::time::timeout(Duration::from_secs(8), lines.read_line(&mut greeting))
                    .await
                    .ok()?
                    .ok()?;
                Some(lines)
            })
        })
        .collect();
    for _ in 0..10 {
        let health =
            tokio::time::timeout(Duration::from_secs(2), node.client(None).get_text("/healthz")).await;
        assert!(matches!(health, Ok(Ok(_))), "{health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_nofile(pid, hard_nofile(pid));
    let mut greeted = 0;
    for client in clients {
        greeted += usize::from(client.await.unwrap().is_some());
    }
    assert!(greeted > 0, "some clients were served at the limit");

    // Nothing was held against the backends.
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    for backend in pools[0]["backends"].as_array().unwrap() {
        assert_eq!(backend["health"], "up", "{pools}");
        assert_eq!(backend["outages_total"], 0, "{pools}");
        assert_eq!(backend["failures_total"], 0, "{pools}");
    }
    let counts = vm_counts(tcp, 60, 20).await;
    assert_eq!(counts.values().sum::<usize>(), 60);
    assert_eq!(counts.len(), 3, "every backend serves: {counts:?}");
    let log = node.plain_log();
    assert!(log.contains("out of descriptors"), "{log}");
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(warnings <= 10, "{warnings} WARN lines:\n{log}");
}

// 8. `deadline_ms` and the peer API's `deadline_in_ms` accepted 0 and u64::MAX (a VM drained past
// its pool's deadline with /v1/vms saying stable).
async fn deadlines_of_zero_or_beyond_a_week_are_refused_by_the_api_and_the_peer_api() {
    let backends = three_backends().await;
    let node = Node::start(&format!("{}{}", control(0), tcp_pool("", &named(&backends))));
    for deadline in [0, 999, u64::MAX] {
        let (status, reply) = node
            .notice(
                "vm-a",
                serde_json::json!({"phase": "prepare", "deadline_ms": deadline}),
            )
            .await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["field"], "deadline_ms", "{reply}");
    }
    for deadline in [0, u64::MAX] {
        let body = serde_json::json!({"action": "drain", "elapsed_ms": 0, "migrating": false, "deadline_in_ms": deadline});
        let result: Result<handover_core::api::Applied, _> =
            node.client(None).put("/v1/balancer/vms/vm-a", &body).await;
        match result {
            Err(handover_drivers::ClientError::Status { status, body }) => {
                assert_eq!(status.as_u16(), 400);
                assert_eq!(body.field.as_deref(), Some("deadline_in_ms"));
            }
            other => panic!("deadline_in_ms {deadline} accepted: {other:?}"),
        }
    }
    assert_eq!(node.phase("vm-a").await, "stable");
    assert_eq!(pool_phase(&node, "vm-a").await, "stable");
}

// 8. A `started` for a VM queued by the guard left a history record that never ended.
async fn a_started_for_a_queued_vm_continues_and_ends_the_record_the_guard_opened() {
    let backends = three_backends().await;
    let node = Node::start(&format!(
        "{}{}",
        control(0),
        tcp_pool(
            "guard = { max_concurrent = 1, on_violation = \"queue\" }",
            &named(&backends)
        )
    ));
    assert_eq!(node.notice("vm-a", notice("prepare")).await.0, 200);
    assert_eq!(node.notice("vm-b", notice("prepare")).await.0, 202);
    assert_eq!(node.notice("vm-b", notice("started")).await.0, 200);
    assert_eq!(node.notice("vm-b", notice("completed")).await.0, 200);
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    let of_b: Vec<&serde_json::Value> = migrations
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["vm"] == "vm-b")
        .collect();
    assert_eq!(of_b.len(), 1, "{migrations}");
    assert!(of_b[0]["queued_at"].is_u64(), "{migrations}");
    assert!(of_b[0]["started_at"].is_u64(), "{migrations}");
    assert_eq!(of_b[0]["end"], "completed", "{migrations}");
}

// 8. A state file with invalid UTF-8 or an unknown version was overwritten, not moved aside.
async fn a_state_file_that_is_not_utf8_or_of_another_version_is_moved_aside_not_overwritten() {
    let backends = three_backends().await;
    for (name, content, aside) in [
        ("bytes", b"\xff\xfe not text".to_vec(), "state.corrupt"),
        (
            "version",
            br#"{"version": 99, "saved_at_ms": 0, "future": true}"#.to_vec(),
            "state.v99",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, &content).unwrap();
        let node = Node::start(&format!(
            "{}{}{}",
            control(0),
            tcp_pool("", &named(&backends)),
            state_section(&path)
        ));
        assert_eq!(
            std::fs::read(dir.path().join(aside)).unwrap(),
            content,
            "{name}: kept as it was\n{}",
            node.log()
        );
        assert_eq!(node.notice("vm-a", notice("prepare")).await.0, 200);
        assert!(std::fs::read_to_string(&path).unwrap().contains("draining"));
        assert!(node.plain_log().contains("moved aside"), "{name}");
    }
}

/// A fake QEMU monitor on one accepted connection: greets, answers `query-migrate` with
/// `status` (none when empty) and every other command with `{}`.
async fn fake_qmp(
    stream: tokio::net::UnixStream,
    status: &'static str,
) -> (
    std::sync::Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, write) = stream.into_split();
    let write = std::sync::Arc::new(tokio::sync::Mutex::new(write));
    write
        .lock()
        .await
        .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n")
        .await
        .unwrap();
    let answers = write.clone();
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = request["id"].clone();
            let reply = match (request["execute"].as_str(), status) {
                (Some("query-migrate"), "") => serde_json::json!({"return": {}, "id": id}),
                (Some("query-migrate"), status) => {
                    serde_json::json!({"return": {"status": status}, "id": id})
                }
                _ => serde_json::json!({"return": {}, "id": id}),
            };
            if answers
                .lock()
                .await
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    (write, task)
}

// 8. An unknown QMP MIGRATION status was taken as a running migration, and a spurious `failed`
// was sent on reconnect.
async fn an_unknown_qmp_status_is_ignored_and_no_failed_is_sent_on_reconnect() {
    use tokio::io::AsyncWriteExt;
    let backends = three_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm-a.qmp");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let node = Node::start(&format!(
        "{}{}\n[[qmp]]\nsocket = \"{}\"\nvm = \"vm-a\"\n",
        control(0),
        tcp_pool("", &named(&backends)),
        socket.display()
    ));
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (write, task) = fake_qmp(stream, "").await;
    assert!(
        common::log_contains(&node, "QMP connected", Duration::from_secs(10)).await,
        "{}",
        node.log()
    );
    write
        .lock()
        .await
        .write_all(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 0}, \"event\": \"MIGRATION\", \"data\": {\"status\": \"quantum-tunnelling\"}}\r\n")
        .await
        .unwrap();
    assert!(
        common::log_contains(&node, "unknown migration status ignored", Duration::from_secs(5)).await,
        "{}",
        node.log()
    );
    // QEMU goes away and a QEMU with no migration answers.
    task.abort();
    drop(write);
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (_write, _task) = fake_qmp(stream, "").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.plain_log().matches("QMP connected").count() >= 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = node.client(None).get_text("/metrics").await.unwrap();
    assert!(!metrics.contains("notice=\"failed\""), "{metrics}");
    assert!(!node.plain_log().contains("migration in progress is gone"));
    assert_eq!(node.phase("vm-a").await, "stable");
}

// 8. `handover check` accepted a malformed peer URL, an unusable state file path and a `[[qmp]] vm`
// that no pool serves; errors came over several runs (duplicates only once the rest was fixed).
// (`idle_timeout` on an http listener, then ignored, now closes idle HTTP/2 client connections.)
fn check_reports_every_error_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handover.toml");
    let run_check = || {
        std::process::Command::new(common::binary())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    std::fs::write(
        &config,
        "[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:7001\"\npool = \"p\"\n\n\
         [[listeners]]\nname = \"web\"\nkind = \"tcp\"\nbind = \"127.0.0.1:7001\"\npool = \"p\"\n\n\
         [pools.p]\nramp = { window = \"ten\" }\n\
         [[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\nvm = \"vm-a\"\n\
         [[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\nvm = \"vm-b\"\n",
    )
    .unwrap();
    let output = run_check();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "listeners[1].name: duplicate listener name",
        "listeners[1].bind: 127.0.0.1:7001 is already used",
        "pools.p.ramp.window",
        "pools.p.backends[1].address: duplicate backend address",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing:\n{stderr}");
    }

    std::fs::write(
        &config,
        "[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\nvm = \"vm-a\"\n\n\
         [[qmp]]\nsocket = \"/run/vm-z.qmp\"\nvm = \"vm-z\"\n",
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&run_check().stderr).to_string();
    assert!(stderr.contains("qmp[0].vm: no pool"), "{stderr}");

    std::fs::write(
        &config,
        "[[peers]]\nurl = \"http://node b:9090\"\n[[peers]]\nurl = \"http://node-c:+80\"\n",
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&run_check().stderr).to_string();
    assert!(
        stderr.contains("peers[0].url") && stderr.contains("peers[1].url"),
        "{stderr}"
    );

    for (state, why) in [
        (dir.path().display().to_string(), "is a directory"),
        (
            config.join("state.json").display().to_string(),
            "is not a directory",
        ),
    ] {
        std::fs::write(&config, format!("[state]\nfile = \"{state}\"\n")).unwrap();
        let output = run_check();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{state}: {stderr}");
        assert!(stderr.contains("state.file") && stderr.contains(why), "{stderr}");
    }
}

// 8. The recovery ramp after a health check stopped at an effective weight of 0.98 (its last step
// was never published).
async fn the_recovery_ramp_after_a_health_check_reaches_full_weight() {
    let mut backends = three_backends().await;
    let node = Node::start(&format!(
        "{}{}",
        control(0),
        tcp_pool(
            "ramp = { window = \"1s\" }\nhealth = { kind = \"tcp\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }",
            &named(&backends)
        )
    ));
    let address = backends[0].address;
    backends[0].stop().await;
    let weight_of_a = || async {
        let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
        pools[0]["backends"][0]["effective_weight"].as_f64().unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || async { weight_of_a().await == 0.0 }).await);
    let _back = TcpBackend::start_on("vm-a", address).await;
    assert!(
        eventually(Duration::from_secs(5), || async { weight_of_a().await == 1.0 }).await,
        "stuck at {}",
        weight_of_a().await
    );
}

// 1 and 6. A node that was frozen (SIGSTOP) while the migration ended elsewhere catches up as
// soon as it runs again, without waiting for its peer's next retry.
async fn a_node_that_was_frozen_asks_its_peers_for_the_current_phases_when_it_runs_again() {
    let backends = three_backends().await;
    let (port_a, port_b) = (free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let node_a = Node::start(&twin_config(port_a, &url(port_b), "", &backends));
    let node_b = Node::start(&twin_config(port_b, &url(port_a), "", &backends));
    assert_eq!(node_a.notice("vm-a", notice("prepare")).await.0, 200);
    assert_eq!(pool_phase(&node_b, "vm-a").await, "draining");
    node_b.signal("STOP");
    assert_eq!(node_a.notice("vm-a", notice("completed")).await.0, 200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    node_b.signal("CONT");
    assert!(
        common::log_contains(&node_b, "phases fetched again", Duration::from_secs(3)).await,
        "{}",
        node_b.log()
    );
    assert_ne!(pool_phase(&node_b, "vm-a").await, "draining");
}

// 5. An end notice at a node that never heard of the migration (its peer could not tell it) asks
// its peers before it answers "no migration in progress".
async fn an_end_notice_at_a_node_that_missed_the_prepare_asks_its_peers_first() {
    let backends = three_backends().await;
    let (port_a, port_b) = (free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    // A cannot reach B (a wrong address); B reaches A.
    let node_a = Node::start(&twin_config(port_a, &nowhere, "", &backends));
    let node_b = Node::start(&twin_config(port_b, &url(port_a), "", &backends));
    assert_eq!(node_a.notice("vm-a", notice("prepare")).await.0, 200);
    assert_eq!(node_b.phase("vm-a").await, "stable", "B never heard of it");
    let (status, reply) = node_b.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["previous_phase"], "draining", "{reply}");
    // B drives the end from now on, and tells A.
    assert!(
        eventually(Duration::from_secs(5), || async {
            node_a.phase("vm-a").await != "draining"
        })
        .await
    );
}

// 1 and 5. A peer's command that was in flight while a node was frozen, older than what the node
// learned since, is not applied over it.
async fn a_peer_command_older_than_what_the_node_knows_is_ignored() {
    let backends = three_backends().await;
    let node = Node::start(&format!(
        "{}{}",
        control(0),
        tcp_pool("ramp = { window = \"1s\" }", &named(&backends))
    ));
    let put = |body: serde_json::Value, at: u64| {
        let client = node.client(None);
        async move {
            client
                .put::<_, serde_json::Value>(&format!("/v1/balancer/vms/vm-a?changed_at={at}"), &body)
                .await
                .unwrap()
        }
    };
    let t = common::now_ms();
    let drain =
        serde_json::json!({"action": "drain", "elapsed_ms": 0, "migrating": false, "deadline_in_ms": 60000});
    let ramp = serde_json::json!({"action": "ramp", "elapsed_ms": 0, "reason": "completed"});
    put(drain.clone(), t - 2000).await;
    assert_eq!(node.phase("vm-a").await, "draining");
    put(ramp, t - 1000).await;
    assert_eq!(node.phase("vm-a").await, "ramping");
    // The drain made before the ramp arrives late.
    put(drain, t - 1500).await;
    assert_ne!(node.phase("vm-a").await, "draining");
    assert_ne!(pool_phase(&node, "vm-a").await, "draining");
    assert!(node.plain_log().contains("older than this node's view ignored"));
}

// 1 and 6. A node frozen in the middle of a ramp: when it runs again its ramp ends (a local
// consequence), and the drain its peer began during the freeze still wins.
async fn a_drain_begun_while_a_node_was_frozen_mid_ramp_reaches_it_when_it_runs_again() {
    let backends = three_backends().await;
    let (port_a, port_b) = (free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let node_a = Node::start(&twin_config(port_a, &url(port_b), "", &backends));
    let node_b = Node::start(&twin_config(port_b, &url(port_a), "", &backends));
    assert_eq!(node_a.notice("vm-a", notice("prepare")).await.0, 200);
    assert_eq!(node_a.notice("vm-a", notice("completed")).await.0, 200);
    // B is frozen mid-ramp, or (on a slow machine, the ramp being 1 s) just after it ended:
    // either way it is no longer draining.
    let phase = pool_phase(&node_b, "vm-a").await;
    assert!(phase == "ramping" || phase == "stable", "{phase}");
    node_b.signal("STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node_a.notice("vm-a", notice("prepare")).await.0, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    node_b.signal("CONT");
    // Woken, B notices the freeze at its next run-loop iteration and asks A; on a loaded machine
    // that takes a while, so wait for the event (generously), then for the phase.
    assert!(
        common::log_contains(&node_b, "phases fetched again", Duration::from_secs(5)).await,
        "{}",
        node_b.plain_log()
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            pool_phase(&node_b, "vm-a").await == "draining"
        })
        .await,
        "{}",
        node_b.plain_log()
    );
}

// Found by bench/soak: a notice that met a deadline or a ramp end falling due at the same moment
// deadlocked the control plane (the registry's lock was taken again while held).
async fn notices_that_meet_deadlines_falling_due_keep_the_control_plane_answering() {
    let vms = many_vms(40);
    let node = Node::start(&format!(
        "{}{}",
        control(0),
        tcp_pool("deadline = \"1s\"\nramp = { window = \"1s\" }", &vms)
    ));
    let names: Vec<String> = vms.iter().map(|(vm, _)| vm.clone()).collect();
    // Deadlines and ramp ends fall due all the time while notices keep coming.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let replies = tokio::time::timeout(
            Duration::from_secs(10),
            notice_all(&node, &names, notice("prepare")),
        )
        .await
        .expect("the control plane answers");
        assert!(replies.iter().all(|(s, _)| *s == 200), "{replies:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let health = tokio::time::timeout(Duration::from_secs(3), node.client(None).get_text("/healthz")).await;
    assert!(matches!(health, Ok(Ok(_))), "{health:?}");
}

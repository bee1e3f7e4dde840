//! The libvirt hook, driven exactly as libvirt calls it: `handover libvirt-hook DOMAIN OPERATION
//! SUB-OPERATION EXTRA` with the domain XML on stdin, against a running handover.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::backends::TcpClient;
use common::{eventually, tcp_node};

const XML: &str = r#"<domain type="kvm">
  <name>web1</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <metadata>
    <handover:vm xmlns:handover="urn:handover">vm-a</handover:vm>
  </metadata>
  <memory unit="KiB">1048576</memory>
</domain>"#;

/// Runs the hook as libvirt would; returns its output and how long it took.
fn hook(control: &str, extra: &[&str], libvirt: &[&str], xml: &str) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(common::binary())
        .args(["libvirt-hook", "--control", control])
        .args(extra)
        .arg("--")
        .args(libvirt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(xml.as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    (output, started.elapsed())
}

async fn run_hook(
    control: &str,
    extra: &'static [&'static str],
    libvirt: &'static [&'static str],
) -> (Output, Duration) {
    let control = control.to_string();
    tokio::task::spawn_blocking(move || hook(&control, extra, libvirt, XML))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_begin_waits_for_drained_started_begin_is_started_and_release_migrated_completes() {
    let (node, _backends) = tcp_node("drain = { target = 0.0 }\nramp = { window = \"1s\" }").await;
    let mut client = TcpClient::connect(node.listener("tcp")).await;
    while client.vm != "vm-a" {
        client = TcpClient::connect(node.listener("tcp")).await;
    }
    let control = node.control.clone();
    let pending = tokio::spawn(async move {
        run_hook(
            &control,
            &["--drain-timeout", "10s"],
            &["web1", "migrate", "begin", "-"],
        )
        .await
    });
    // The hook's prepare arrived (the event), and the hook is still waiting for the drain.
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.phase("vm-a").await == "draining"
        })
        .await,
        "the domain maps to vm-a through its metadata"
    );
    assert!(
        !pending.is_finished(),
        "libvirt is held while vm-a has a connection"
    );
    drop(client);
    let (output, _) = pending.await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "stdout is the domain XML for libvirt: it must stay empty"
    );
    assert!(stderr.contains("vm-a drained in"), "{stderr}");

    // started begin comes before the copy: the migration has started, it has not ended.
    let (output, took) = run_hook(&node.control, &[], &["web1", "started", "begin", "-"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(took < Duration::from_secs(3));
    assert_eq!(node.phase("vm-a").await, "migrating");

    // The source's release after the switchover (libvirt >= 10.5 names the reason).
    let (output, _) = run_hook(&node.control, &[], &["web1", "release", "end", "migrated"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(node.phase("vm-a").await, "ramping");
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(migrations[0]["end"], "completed");
    assert_eq!(migrations.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_a_start_fails_the_migration() {
    let (node, _backends) = tcp_node("restore = \"immediate\"").await;
    let (output, _) = run_hook(
        &node.control,
        &["--drain-timeout", "2s"],
        &["web1", "migrate", "begin", "-"],
    )
    .await;
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(node.phase("vm-a").await, "draining");
    let (output, _) = run_hook(&node.control, &[], &["web1", "release", "end", "-"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(migrations[0]["end"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_a_reason_during_the_copy_is_left_to_the_watcher_and_failed_ends_it() {
    let (node, _backends) = tcp_node("restore = \"immediate\"").await;
    for call in [
        &["web1", "migrate", "begin", "-"][..],
        &["web1", "started", "begin", "-"],
    ] {
        let control = node.control.clone();
        let call: Vec<String> = call.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = call.iter().map(String::as_str).collect();
            hook(&control, &["--drain-timeout", "2s"], &args, XML)
        })
        .await
        .unwrap();
    }
    assert_eq!(node.phase("vm-a").await, "migrating");
    // libvirt 9.0: the source's success and the destination's failure both say `-`.
    let (output, _) = run_hook(&node.control, &[], &["web1", "release", "end", "-"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("event watcher"), "{stderr}");
    assert_eq!(node.phase("vm-a").await, "migrating");
    // libvirt >= 10.5: the destination of an aborted migration says `failed`.
    let (output, _) = run_hook(&node.control, &[], &["web1", "release", "end", "failed"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(
        eventually(Duration::from_secs(3), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(migrations[0]["end"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_calls_return_at_once_and_change_nothing() {
    let (node, _backends) = tcp_node("").await;
    for call in [
        &["web1", "prepare", "begin", "-"][..],
        &["web1", "start", "begin", "-"],
        &["web1", "stopped", "end", "-"],
        &["web1", "reconnect", "begin", "-"],
        // A started of a VM that is not migrating (an ordinary boot) is not a migration.
        &["web1", "started", "begin", "-"],
        // Nor is the release of a VM that was shut down.
        &["web1", "release", "end", "shutdown"],
        &["web1", "release", "end", "-"],
    ] {
        let control = node.control.clone();
        let call: Vec<String> = call.iter().map(|s| s.to_string()).collect();
        let (output, took) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = call.iter().map(String::as_str).collect();
            hook(&control, &[], &args, XML)
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(0));
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert!(migrations.as_array().unwrap().is_empty(), "{migrations}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_that_is_down_makes_the_hook_return_promptly() {
    let dead = format!(
        "http://{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    let (output, took) = run_hook(
        &dead,
        &["--drain-timeout", "30s"],
        &["web1", "migrate", "begin", "-"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the migration is not vetoed by default: {stderr}"
    );
    assert!(stderr.contains("cannot prepare vm-a"), "{stderr}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    let (output, took) = run_hook(&dead, &["--veto"], &["web1", "migrate", "begin", "-"]).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "--veto makes libvirt cancel the migration"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("vetoing the migration of vm-a"));
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A black-holed handover (accepts, never answers) is bounded by the drain timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (output, took) = run_hook(
        &url,
        &["--drain-timeout", "1s"],
        &["web1", "migrate", "begin", "-"],
    )
    .await;
    assert_eq!(output.status.code(), Some(0));
    assert!(
        took < Duration::from_secs(10),
        "bounded by drain timeout + margin: {took:?}"
    );
    drop(silent);
}

#[test]
fn bad_hook_input_is_an_error_not_a_hang() {
    let (output, took) = hook(
        "http://127.0.0.1:9",
        &[],
        &["bad name", "migrate", "begin", "-"],
        "<domain><name>bad name</name></domain>",
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot map domain"));
    assert!(took < Duration::from_secs(3));
    let (output, _) = hook(
        "http://127.0.0.1:9",
        &[],
        &["web1", "migrate", "begin", "-"],
        "<domain><metadata>",
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not valid XML"));
}

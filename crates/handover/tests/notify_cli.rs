//! `handover notify --wait-drained` and `handover status`, run as an operator runs them.

mod common;

use std::time::Duration;

use common::backends::TcpClient;
use common::{Node, eventually, tcp_node};

async fn connection_to_vm_a(node: &Node) -> (TcpClient, Vec<TcpClient>) {
    let mut others = Vec::new();
    loop {
        let client = TcpClient::connect(node.listener("tcp")).await;
        if client.vm == "vm-a" {
            return (client, others);
        }
        others.push(client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_times_out_naming_the_connections_that_remain() {
    let (node, _backends) = tcp_node("drain = { target = 0.0 }").await;
    let (client, _others) = connection_to_vm_a(&node).await;
    let control = node.control.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::binary())
            .args([
                "notify",
                "vm-a",
                "prepare",
                "--wait-drained",
                "--timeout",
                "1s",
                "--control",
                &control,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(3),
        "exit 3 means not drained; stdout: {stdout}"
    );
    assert!(stdout.contains("NOT drained"), "{stdout}");
    assert!(
        stdout.contains(&client.local.to_string()),
        "the open client connection is named: {stdout}"
    );
    assert!(stdout.contains("1 still active"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_returns_when_the_last_connection_closes() {
    let (node, _backends) = tcp_node("drain = { target = 0.0 }").await;
    let (client, _others) = connection_to_vm_a(&node).await;
    let control = node.control.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let output = std::process::Command::new(common::binary())
            .args([
                "notify",
                "vm-a",
                "prepare",
                "--wait-drained",
                "--timeout",
                "20s",
                "--control",
                &control,
            ])
            .output()
            .unwrap();
        (output, started.elapsed())
    });
    // The CLI's prepare arrived (the event); the connection then keeps it waiting.
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.phase("vm-a").await == "draining"
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cli.is_finished(), "it waits while the connection is open");
    drop(client);
    let (output, took) = cli.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("drained in"), "{stdout}");
    assert!(
        took < Duration::from_secs(10),
        "it returned once drained: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_phases_weights_and_connections() {
    let (node, _backends) = tcp_node("drain = { target = 0.0 }").await;
    let (_client, _others) = connection_to_vm_a(&node).await;
    let notify = node.cli(&["notify", "vm-a", "prepare"]);
    assert_eq!(
        notify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&notify.stderr)
    );
    let output = node.cli(&["status"]);
    assert_eq!(output.status.code(), Some(0));
    let table = String::from_utf8_lossy(&output.stdout);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("VM") && header.contains("EFFECTIVE") && header.contains("ACTIVE"),
        "{table}"
    );
    let row_a = table
        .lines()
        .find(|l| l.starts_with("vm-a"))
        .expect("a row for vm-a");
    assert!(row_a.contains("draining"), "{row_a}");
    assert!(
        row_a.contains("0.00") && row_a.contains("0.0%"),
        "vm-a gets no new work: {row_a}"
    );
    assert!(
        row_a.trim_end().ends_with('1'),
        "vm-a still has its one connection: {row_a}"
    );
    let row_b = table.lines().find(|l| l.starts_with("vm-b")).unwrap();
    assert!(row_b.contains("stable") && row_b.contains("50.0%"), "{row_b}");

    let json = node.cli(&["status", "--json"]);
    let vms: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(vms[0]["vm"], "vm-a");
    assert_eq!(vms[0]["phase"], "draining");
}

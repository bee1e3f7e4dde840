//! A misbehaving QMP peer cannot break the watcher: garbage lines, a line of 2 MiB, an unknown
//! status, an event without a status and an answer to no command are logged and skipped, and the
//! `completed` that follows them still restores the VM.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backends::TcpBackend;
use common::{Node, eventually, log_contains, tcp_config};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Mutex;

fn event(status: &str) -> String {
    format!(
        "{{\"timestamp\": {{\"seconds\": 1, \"microseconds\": 0}}, \"event\": \"MIGRATION\", \"data\": {{\"status\": \"{status}\"}}}}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_qmp_messages_are_logged_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.qmp");
    let listener = UnixListener::bind(&socket).unwrap();
    let status = Arc::new(Mutex::new("none".to_string()));

    let backends = [TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let mut config = tcp_config(&addresses, "ramp = { window = \"1s\" }");
    config.push_str(&format!(
        "\n[[qmp]]\nsocket = \"{}\"\nvm = \"vm-a\"\npoll_interval = \"100ms\"\n",
        socket.display()
    ));
    let node = Node::start(&config);

    // The fake QEMU: a greeting, answers to every command by id, and the events the test sends.
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (read, write) = stream.into_split();
    let write = Arc::new(Mutex::new(write));
    write.lock().await.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n").await.unwrap();
    let answers = write.clone();
    let current = status.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = request["id"].clone();
            let reply = match request["execute"].as_str().unwrap() {
                "query-migrate" => {
                    let status = current.lock().await.clone();
                    if status == "none" {
                        serde_json::json!({"return": {}, "id": id})
                    } else {
                        serde_json::json!({"return": {"status": status, "total-time": 1234, "downtime": 9,
                            "ram": {"total": 1000, "transferred": 400, "remaining": 600, "dirty-sync-count": 2}}, "id": id})
                    }
                }
                _ => serde_json::json!({"return": {}, "id": id}),
            };
            answers
                .lock()
                .await
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
    });
    assert!(
        log_contains(&node, "QMP connected", Duration::from_secs(10)).await,
        "{}",
        node.log()
    );

    let send = |text: String| {
        let write = write.clone();
        async move { write.lock().await.write_all(text.as_bytes()).await.unwrap() }
    };
    send("this is not json\r\n".into()).await;
    send(format!("{}\r\n", "x".repeat(2 << 20))).await;
    send("[1, 2, 3]\r\n".into()).await;
    *status.lock().await = "active".into();
    send(event("setup")).await;
    // setup → prepare; the poll then reports `active` → started.
    let drained = eventually(Duration::from_secs(5), || async {
        matches!(node.phase("vm-a").await.as_str(), "draining" | "migrating")
    });
    assert!(drained.await, "{}", node.log());
    send(event("brand-new-status")).await;
    send("{\"event\": \"MIGRATION\", \"data\": {}}\r\n".into()).await;
    send("{\"return\": {}, \"id\": 987654}\r\n".into()).await;
    send("{\"event\": \"MIGRATION_PASS\", \"data\": {\"pass\": \"two\"}}\r\n".into()).await;
    *status.lock().await = "completed".into();
    send(event("completed")).await;

    assert!(
        eventually(Duration::from_secs(5), || async {
            node.phase("vm-a").await == "ramping"
        })
        .await,
        "{}",
        node.log()
    );
    let migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    assert_eq!(migrations[0]["end"], "completed");
    assert_eq!(migrations[0]["progress"]["downtime_ms"], 9);
    let log = node.log();
    assert!(log.contains("malformed QMP message ignored"), "{log}");
    assert!(log.contains("oversized QMP line dropped"), "{log}");
    assert!(log.contains("MIGRATION event without a status ignored"), "{log}");
    assert!(log.contains("QMP answer to no pending command ignored"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

//! Access logs through the real binary: one line per L7 request and per L4 connection, in JSON or
//! a text template, to a file reopened on SIGUSR1; and the proof, from the log alone, that no
//! request chose a VM while it was drained for a migration under load.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::backends::{HttpBackend, HttpClient, TcpBackend, TcpClient};
use common::{Node, eventually, notice};

fn config(http: &[SocketAddr], tcp: &[SocketAddr], dir: &Path, ramp: &str) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\n\
         access_log = {{ to = \"{web}\", format = \"json\" }}\n\n\
         [[listeners]]\nname = \"db\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"q\"\n\
         access_log = {{ to = \"{db}\", template = \"{{client}} {{vm}} {{phase}} {{bytes_in}} {{bytes_out}} {{total_ms}} {{error}}\" }}\n\n\
         {}\n{}",
        common::pool_toml("p", ramp, http),
        common::pool_toml("q", "", tcp),
        web = dir.join("web.log").display(),
        db = dir.join("db.log").display(),
    )
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_alone_proves_no_request_chose_the_vm_while_it_was_drained() {
    let dir = tempfile::tempdir().unwrap();
    let http = [
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
    ];
    let tcp = [TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
    let node = Node::start(&config(
        &http.iter().map(|b| b.address).collect::<Vec<_>>(),
        &tcp.iter().map(|b| b.address).collect::<Vec<_>>(),
        dir.path(),
        "ramp = { window = \"2s\" }",
    ));

    // Steady keep-alive load from four clients.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, address) = (stop.clone(), node.listener("web"));
        clients.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(address).await;
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(client.get("/").await.status, 200);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = node
        .notice(
            "vm-a",
            serde_json::json!({ "phase": "prepare", "wait_drained": true, "timeout_ms": 10000 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(node.notice("vm-a", notice("started")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(node.notice("vm-a", notice("completed")).await.0, 200);
    assert!(
        eventually(Duration::from_secs(15), || async {
            node.phase("vm-a").await == "stable"
        })
        .await,
        "vm-a is stable again"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    // One HTTP/2 stream (prior knowledge), logged as such.
    let h2 = curl_h2(node.listener("web"), "/over-h2");
    assert_eq!(h2.as_deref(), Some("200"), "curl --http2-prior-knowledge");
    // A few L4 connections too.
    for _ in 0..4 {
        let mut client = TcpClient::connect(node.listener("db")).await;
        assert!(client.echo("hello").await.is_some());
    }

    let web = dir.path().join("web.log");
    assert!(
        eventually(Duration::from_secs(5), || async {
            json_lines(&web).len() as u64 > answered
        })
        .await,
        "one line per request: {} lines for {answered} requests and one stream",
        json_lines(&web).len()
    );
    let mut lines = json_lines(&web);
    assert_eq!(lines.len() as u64, answered + 1, "exactly one line per request");
    let stream = lines
        .iter()
        .position(|l| l["protocol"] == "http2")
        .expect("the stream's line");
    let stream = lines.remove(stream);
    assert_eq!(
        (stream["status"].as_u64(), stream["target"].as_str()),
        (Some(200), Some("/over-h2")),
        "{stream}"
    );
    assert!(
        stream["vm"].is_string() && stream["bytes_out"].as_u64().unwrap() > 0,
        "{stream}"
    );
    // From here on, only the log.
    fn of_vm<'a>(lines: &'a [serde_json::Value], vm: &'a str) -> impl Iterator<Item = &'a serde_json::Value> {
        lines.iter().filter(move |l| l["vm"] == vm)
    }
    let phases_of_a: std::collections::BTreeSet<&str> = of_vm(&lines, "vm-a")
        .map(|l| l["phase"].as_str().unwrap())
        .collect();
    assert!(
        !phases_of_a.contains("draining") && !phases_of_a.contains("migrating"),
        "a request chose vm-a while it was drained: {phases_of_a:?}"
    );
    assert!(
        phases_of_a.contains("stable") && phases_of_a.contains("ramping"),
        "{phases_of_a:?}"
    );
    // The drain shows in the log as a gap in vm-a's lines while the others went on.
    let a: Vec<String> = of_vm(&lines, "vm-a")
        .map(|l| l["time"].as_str().unwrap().to_string())
        .collect();
    let gap = a
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .max_by_key(|(x, y)| millis(y) - millis(x))
        .unwrap();
    assert!(
        millis(&gap.1) - millis(&gap.0) >= 1400,
        "vm-a's longest gap {gap:?}"
    );
    let others_in_gap = lines
        .iter()
        .filter(|l| l["vm"] != "vm-a")
        .filter(|l| {
            let t = millis(l["time"].as_str().unwrap());
            t > millis(&gap.0) && t < millis(&gap.1)
        })
        .count();
    assert!(
        others_in_gap > 50,
        "the other VMs took the work meanwhile: {others_in_gap}"
    );
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["listener"], "web");
        assert_eq!(line["protocol"], "http");
        assert_eq!(line["method"], "GET");
        assert!(line["bytes_in"].as_u64().unwrap() > 0 && line["bytes_out"].as_u64().unwrap() > 0);
        assert!(
            line["ttfb_ms"].as_f64().unwrap() <= line["total_ms"].as_f64().unwrap(),
            "{line}"
        );
        assert_eq!(line["error"], serde_json::Value::Null);
    }

    let db = dir.path().join("db.log");
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&db).unwrap_or_default().lines().count() == 4
        })
        .await
    );
    for line in std::fs::read_to_string(&db).unwrap().lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert!(fields[1] == "vm-a" || fields[1] == "vm-b", "{line}");
        assert_eq!(fields[2], "stable");
        assert!(fields[3].parse::<u64>().unwrap() >= 6, "{line}");
        assert_eq!(fields[6], "-", "no error: {line}");
    }
}

/// Milliseconds since the epoch of `2026-12-01T09:10:27.747Z` (same day is enough here).
fn millis(time: &str) -> i64 {
    let clock = &time[11..23];
    let h: i64 = clock[0..2].parse().unwrap();
    let m: i64 = clock[3..5].parse().unwrap();
    let s: i64 = clock[6..8].parse().unwrap();
    let ms: i64 = clock[9..12].parse().unwrap();
    let day: i64 = time[8..10].parse().unwrap();
    ((day * 24 + h) * 60 + m) * 60_000 + s * 1000 + ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged_with_why_and_the_file_is_reopened_on_sigusr1() {
    let dir = tempfile::tempdir().unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let tcp = TcpBackend::start("vm-a").await;
    let node = Node::start(&config(&[dead], &[tcp.address], dir.path(), "retries = 0"));
    let web = dir.path().join("web.log");

    let mut client = common::raw::RawClient::connect(node.listener("web")).await;
    client.send(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(client.response().await.unwrap().status, 502);
    let mut client = common::raw::RawClient::connect(node.listener("web")).await;
    client.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(client.response().await.unwrap().status, 400);
    assert!(eventually(Duration::from_secs(5), || async { json_lines(&web).len() == 2 }).await);
    let lines = json_lines(&web);
    assert_eq!(lines[0]["status"], 502);
    assert_eq!(lines[0]["target"], "/nowhere");
    assert_eq!(
        lines[0]["backend"],
        dead.to_string(),
        "the log names the backend the client is not told"
    );
    assert!(
        lines[0]["error"].as_str().unwrap().contains("could be reached"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["status"], 400);
    assert!(
        lines[1]["error"].as_str().unwrap().contains("without Host"),
        "{}",
        lines[1]
    );

    // An HTTP/2 stream the proxy answers itself says why too.
    assert_eq!(
        curl_h2(node.listener("web"), "/h2-nowhere").as_deref(),
        Some("502")
    );
    assert!(eventually(Duration::from_secs(5), || async { json_lines(&web).len() == 3 }).await);
    let stream = &json_lines(&web)[2];
    assert_eq!(
        (stream["protocol"].as_str(), stream["status"].as_u64()),
        (Some("http2"), Some(502)),
        "{stream}"
    );
    assert!(
        stream["error"]
            .as_str()
            .unwrap_or("")
            .contains("could be reached"),
        "{stream}"
    );

    // logrotate: the file is moved away, SIGUSR1, new lines go to a new file at the path.
    let rotated = dir.path().join("web.log.1");
    std::fs::rename(&web, &rotated).unwrap();
    node.signal("USR1");
    assert!(common::log_contains(&node, "reopening the access logs", Duration::from_secs(5)).await);
    assert!(
        eventually(Duration::from_secs(5), || async { web.exists() }).await,
        "reopened at once, before any line"
    );
    let mut client = common::raw::RawClient::connect(node.listener("web")).await;
    client.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(client.response().await.unwrap().status, 502);
    assert!(eventually(Duration::from_secs(5), || async { json_lines(&web).len() == 1 }).await);
    assert_eq!(json_lines(&web)[0]["target"], "/after");
    assert_eq!(json_lines(&rotated).len(), 3, "the rotated file keeps its lines");

    // The metric of dropped lines is there (and zero: the writer kept up).
    let metrics = reqwest_metrics(&node).await;
    assert!(
        metrics.contains("handover_access_log_dropped_total{listener=\"web\"} 0"),
        "{metrics}"
    );
}

/// The status of a GET over HTTP/2 by prior knowledge (curl), or `None` if curl cannot run.
fn curl_h2(address: SocketAddr, path: &str) -> Option<String> {
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
        ])
        .arg(format!("http://{address}{path}"))
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn reqwest_metrics(node: &Node) -> String {
    let address: SocketAddr = node.control.trim_start_matches("http://").parse().unwrap();
    let mut client = common::raw::RawClient::connect(address).await;
    client.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    client.response().await.unwrap().text()
}

#[test]
fn a_bad_access_log_setting_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         access_log = { to = \"stdout\", template = \"{client} {nope}\" }\n\
         [pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"v\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(common::binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listeners[0].access_log.template") && stderr.contains("unknown field {nope}"),
        "{stderr}"
    );
}

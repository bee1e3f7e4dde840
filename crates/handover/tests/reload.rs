//! Reloads of a running node through the real binary, under load: SIGHUP and `handover reload`
//! add, remove and re-weight backends, listeners and pools while keep-alive HTTP clients, clients
//! that open a connection per request and long-lived TCP connections run; nothing fails, nothing
//! breaks, a draining VM stays draining, removed backends drain, new ones get their share. An
//! invalid file, or a change only a restart can make, changes nothing and says why.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::backends::{HttpBackend, TcpBackend, TcpClient};
use common::harness;
use common::{Node, eventually};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

/// What the node is configured with at one step of the test.
#[derive(Clone)]
struct Shape {
    web: Vec<(SocketAddr, &'static str, u32)>,
    tcp: Vec<(SocketAddr, &'static str)>,
    tcp_algorithm: &'static str,
    web_retries: u32,
    /// The `extra` listener and its pool (one backend).
    extra: Option<SocketAddr>,
}

impl Shape {
    fn toml(&self) -> String {
        let mut text = String::from(
            "[control]\nbind = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
             [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"tcp\"\n\n",
        );
        if self.extra.is_some() {
            text.push_str(
                "[[listeners]]\nname = \"extra\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"extra\"\n\n",
            );
        }
        text.push_str(&format!(
            "[pools.web]\nretries = {}\ndrain = {{ target = 0.0 }}\n",
            self.web_retries
        ));
        for (address, vm, weight) in &self.web {
            text.push_str(&format!(
                "[[pools.web.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\nweight = {weight}\n"
            ));
        }
        text.push_str(&format!(
            "\n[pools.tcp]\nalgorithm = \"{}\"\n",
            self.tcp_algorithm
        ));
        for (address, vm) in &self.tcp {
            text.push_str(&format!(
                "[[pools.tcp.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
            ));
        }
        if let Some(address) = self.extra {
            text.push_str(&format!(
                "\n[pools.extra]\n[[pools.extra.backends]]\naddress = \"{address}\"\nvm = \"vm-a\"\n"
            ));
        }
        text
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    by_vm: Mutex<BTreeMap<String, u64>>,
    tcp_echoes: AtomicU64,
    tcp_broken: AtomicU64,
}

impl Tally {
    fn answered(&self, body: &str) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        *self.by_vm.lock().entry(body.to_string()).or_default() += 1;
    }

    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock();
        if errors.len() < 20 {
            errors.push(error);
        }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        self.by_vm.lock().clone()
    }
}

/// One GET on a connection; the body (the VM's name) or why it failed.
async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> Result<String, String> {
    sender.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let request = hyper::Request::get("/")
        .header("host", "test")
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_string();
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    Ok(body)
}

async fn connect(
    address: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A keep-alive client: one connection for the whole test (a failure counts, then it reconnects).
async fn keep_alive_client(address: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            match connect(address).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    tally.fail(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        match get(sender.as_mut().unwrap()).await {
            Ok(body) => tally.answered(&body),
            Err(e) => {
                tally.fail(format!("keep-alive: {e}"));
                sender = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client that opens a new connection for every request.
async fn new_connection_client(address: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let result = match connect(address).await {
            Ok(mut sender) => get(&mut sender).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(body) => tally.answered(&body),
            Err(e) => tally.fail(format!("new connection: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A long-lived TCP connection that echoes a line every 100 ms until stopped; a missing answer
/// counts as broken (and ends it).
async fn long_lived(mut client: TcpClient, tally: Arc<Tally>, stop: Arc<AtomicBool>) -> String {
    let vm = client.vm.clone();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match client.echo(&format!("ping {n}")).await {
            Some(answer) if answer == format!("{vm} ping {n}") => {
                tally.tcp_echoes.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                tally.tcp_broken.fetch_add(1, Ordering::Relaxed);
                tally.fail(format!("tcp connection to {vm} broke: {other:?}"));
                return vm;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vm
}

/// The value of a metric line (exact name with labels), 0 if absent.
async fn metric(node: &Node, line: &str) -> u64 {
    let text = node.client(None).get_text("/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line)
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        })
        .unwrap_or(0)
}

/// Reloads with SIGHUP (waiting until the applied counter moves) or with `handover reload`; returns
/// the listeners' addresses after it.
async fn reload(node: &Node, by_signal: bool, applied_before: u64) -> BTreeMap<String, SocketAddr> {
    const APPLIED: &str = "handover_config_reloads_total{outcome=\"applied\"}";
    if by_signal {
        node.signal("HUP");
        assert!(
            eventually(Duration::from_secs(20), || async {
                metric(node, APPLIED).await > applied_before
            })
            .await,
            "the reload by SIGHUP was not applied:\n{}",
            node.log()
        );
        let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
        assert!(pools.is_array());
        // The ready file is rewritten on every reload; the CLI reply names the addresses too.
        return addresses_from_ready(node);
    }
    let control = node.control.clone();
    let binary = common::binary();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .args(["reload", "--json"])
            .env("HANDOVER_CONTROL", control)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "handover reload failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.log()
    );
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["outcome"], "applied", "{reply}");
    reply["listeners"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn addresses_from_ready(node: &Node) -> BTreeMap<String, SocketAddr> {
    let ready = node.config_path().with_file_name("ready.json");
    let text = std::fs::read_to_string(ready).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
    ready["listeners"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
        .collect()
}

/// The removed backends a pool still drains: (address, active).
async fn removed(node: &Node, pool: &str) -> Vec<(String, u64)> {
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    pools
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["removed"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["active"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn main() {
    harness::main(vec![
        harness::test_async(
            "fifty_reloads_under_load_fail_nothing_and_keep_a_draining_vm_draining",
            fifty_reloads_under_load_fail_nothing_and_keep_a_draining_vm_draining,
        ),
        harness::test_async(
            "an_invalid_config_by_sighup_changes_nothing_and_the_log_and_metric_say_why",
            an_invalid_config_by_sighup_changes_nothing_and_the_log_and_metric_say_why,
        ),
        harness::test_async(
            "a_changed_bind_listens_before_the_old_socket_closes_and_open_connections_go_on",
            a_changed_bind_listens_before_the_old_socket_closes_and_open_connections_go_on,
        ),
    ])
}

async fn fifty_reloads_under_load_fail_nothing_and_keep_a_draining_vm_draining() {
    let web = [
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
        HttpBackend::start("vm-d").await,
    ];
    let tcp = [
        TcpBackend::start("ta").await,
        TcpBackend::start("tb").await,
        TcpBackend::start("tc").await,
    ];
    let extra_backend = HttpBackend::start("extra").await;
    let base = Shape {
        web: vec![
            (web[0].address, "vm-a", 1),
            (web[1].address, "vm-b", 1),
            (web[2].address, "vm-c", 1),
        ],
        tcp: vec![
            (tcp[0].address, "vm-ta"),
            (tcp[1].address, "vm-tb"),
            (tcp[2].address, "vm-tc"),
        ],
        tcp_algorithm: "round_robin",
        web_retries: 2,
        extra: None,
    };
    let node = Node::start_with(&base.toml(), &["--drain-grace", "120s"]);
    let (web_at, tcp_at) = (node.listener("web"), node.listener("tcp"));

    // Load: 8 keep-alive clients, 2 clients opening a connection per request, 6 long-lived TCP
    // connections (two per TCP backend, round robin).
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        load.push(tokio::spawn(keep_alive_client(
            web_at,
            tally.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(new_connection_client(
            web_at,
            tally.clone(),
            stop.clone(),
        )));
    }
    let mut long = Vec::new();
    let mut long_vms = Vec::new();
    for _ in 0..6 {
        let client = TcpClient::connect(tcp_at).await;
        long_vms.push(client.vm.clone());
        long.push(tokio::spawn(long_lived(client, tally.clone(), stop.clone())));
    }
    assert_eq!(
        long_vms.iter().filter(|vm| *vm == "tc").count(),
        2,
        "{long_vms:?}"
    );

    // vm-c drains before the reloads (and its in-flight requests finish).
    let (status, reply) = node
        .notice(
            "vm-c",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 10000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    let vm_c_before = tally.counts().get("vm-c").copied().unwrap_or(0);

    // 50 reloads, alternately by SIGHUP and by `handover reload`.
    let mut shape = base.clone();
    let mut applied = 0;
    let mut vm_d_served = 0;
    let mut extra_served = 0;
    let mut extra_kept = None;
    let mut kept_after_removal = 0;
    for i in 0..50 {
        match i % 5 {
            0 => {
                shape.web.push((web[3].address, "vm-d", 1));
                shape.tcp.retain(|(_, vm)| *vm != "vm-tc");
            }
            1 => {
                shape.web[1].2 = 3;
                shape.extra = Some(extra_backend.address);
            }
            2 => {
                shape.tcp_algorithm = "least_connections";
                shape.web.retain(|(_, vm, _)| *vm != "vm-d");
            }
            3 => {
                shape.extra = None;
                shape.tcp.push((tcp[2].address, "vm-tc"));
                shape.web[1].2 = 1;
            }
            _ => {
                shape.tcp_algorithm = "round_robin";
                shape.web_retries = if shape.web_retries == 2 { 3 } else { 2 };
            }
        }
        std::fs::write(node.config_path(), shape.toml()).unwrap();
        let before_d = tally.counts().get("vm-d").copied().unwrap_or(0);
        let addresses = reload(&node, i % 2 == 0, applied).await;
        applied += 1;
        if i == 0 {
            // tc left the TCP pool: its two connections drain (still counted, still echoing).
            let drained = removed(&node, "tcp").await;
            assert_eq!(drained, vec![(tcp[2].address.to_string(), 2)], "{drained:?}");
        }
        if shape.extra.is_some() {
            // The new listener serves at once.
            let address = addresses["extra"];
            let mut sender = connect(address).await.expect("the new listener accepts");
            assert_eq!(get(&mut sender).await.as_deref(), Ok("extra"));
            extra_served += 1;
            extra_kept = Some(sender);
        } else {
            assert!(!addresses.contains_key("extra"), "{addresses:?}");
            // A keep-alive connection made through the removed listener goes on, served by
            // its removed pool, until the grace passes.
            if let Some(mut sender) = extra_kept.take() {
                assert_eq!(get(&mut sender).await.as_deref(), Ok("extra"), "reload {i}");
                kept_after_removal += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        if shape.web.iter().any(|(_, vm, _)| *vm == "vm-d") {
            vm_d_served += tally.counts().get("vm-d").copied().unwrap_or(0) - before_d;
        }
    }
    assert_eq!(
        metric(&node, "handover_config_reloads_total{outcome=\"applied\"}").await,
        50
    );
    assert_eq!(
        metric(&node, "handover_config_reloads_total{outcome=\"failed\"}").await,
        0
    );
    assert!(vm_d_served > 0, "vm-d got no request while it was configured");
    assert_eq!(
        extra_served, 20,
        "the extra listener is configured after 20 of the reloads"
    );
    assert_eq!(kept_after_removal, 10, "the extra listener was removed 10 times");

    // A last reload adds vm-d again: with vm-c draining it gets about a third of new requests.
    shape.web.push((web[3].address, "vm-d", 1));
    std::fs::write(node.config_path(), shape.toml()).unwrap();
    reload(&node, true, applied).await;
    let before = tally.counts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = tally.counts();
    let delta = |vm: &str| after.get(vm).copied().unwrap_or(0) - before.get(vm).copied().unwrap_or(0);
    let total: u64 = ["vm-a", "vm-b", "vm-c", "vm-d"].iter().map(|vm| delta(vm)).sum();
    let share_d = delta("vm-d") as f64 / total as f64;
    assert!(total > 100, "too little load to judge: {total}");
    assert!(
        (0.2..0.47).contains(&share_d),
        "vm-d's share {share_d:.3} of {total}"
    );

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let mut still = Vec::new();
    for task in long {
        still.push(task.await.unwrap());
    }

    // Nothing failed, nothing broke; vm-c stayed draining and got nothing new.
    let errors = tally.errors.lock().clone();
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "{errors:?}");
    assert_eq!(tally.tcp_broken.load(Ordering::Relaxed), 0, "{errors:?}");
    assert!(tally.tcp_echoes.load(Ordering::Relaxed) > 6 * 20);
    assert_eq!(still.len(), 6);
    assert_eq!(node.phase("vm-c").await, "draining");
    assert_eq!(
        tally.counts().get("vm-c").copied().unwrap_or(0),
        vm_c_before,
        "vm-c got new requests while draining"
    );
    assert!(tally.ok.load(Ordering::Relaxed) > 1000);
    eprintln!(
        "answered {} requests, {} TCP echoes, by VM {:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.tcp_echoes.load(Ordering::Relaxed),
        tally.counts()
    );
}

async fn an_invalid_config_by_sighup_changes_nothing_and_the_log_and_metric_say_why() {
    let a = HttpBackend::start("vm-a").await;
    let b = HttpBackend::start("vm-b").await;
    let shape = Shape {
        web: vec![(a.address, "vm-a", 1), (b.address, "vm-b", 1)],
        tcp: vec![(a.address, "vm-a")],
        tcp_algorithm: "round_robin",
        web_retries: 2,
        extra: None,
    };
    let node = Node::start(&shape.toml());
    let before: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();

    // vm-b's weight 0 is invalid: the whole file is refused.
    let invalid = shape.toml().replace(
        &format!("address = \"{}\"\nvm = \"vm-b\"\nweight = 1", b.address),
        &format!("address = \"{}\"\nvm = \"vm-b\"\nweight = 0", b.address),
    );
    assert_ne!(invalid, shape.toml());
    // A new backend in the same file, to be sure nothing of it is applied.
    let invalid = invalid.replace(
        "\n[pools.tcp]",
        "[[pools.web.backends]]\naddress = \"127.0.0.1:9\"\nvm = \"vm-z\"\n\n[pools.tcp]",
    );
    std::fs::write(node.config_path(), &invalid).unwrap();
    node.signal("HUP");
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(&node, "handover_config_reloads_total{outcome=\"failed\"}").await == 1
        })
        .await,
        "{}",
        node.log()
    );
    assert_eq!(metric(&node, "handover_config_last_reload_failed").await, 1);
    let metrics = node.client(None).get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("handover_config_last_reload_error_info{error=\"")
            && metrics.contains("pools.web.backends[1].weight"),
        "{metrics}"
    );
    let log = node.log();
    assert!(
        log.contains("configuration reload refused") && log.contains("pools.web.backends[1].weight"),
        "{log}"
    );
    let after: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap();
    assert_eq!(strip_counters(&before), strip_counters(&after));

    // The node still serves, both VMs.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let mut sender = connect(node.listener("web")).await.unwrap();
        seen.insert(get(&mut sender).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A change only a restart can make is refused as a whole, by the API too (400, naming it).
    let restart_only = shape.toml().replace(
        "[control]\nbind = \"127.0.0.1:0\"",
        "[control]\nbind = \"127.0.0.1:0\"\ntoken = \"s3cret\"",
    );
    std::fs::write(node.config_path(), restart_only).unwrap();
    let (status, reply) = node
        .client(None)
        .post::<_, serde_json::Value>("/v1/reload", &serde_json::json!({}))
        .await
        .map(|(s, v)| (s.as_u16(), v))
        .unwrap_or_else(|e| match e {
            handover_drivers::ClientError::Status { status, body } => (
                status.as_u16(),
                serde_json::json!({"error": body.error, "field": body.field}),
            ),
            other => panic!("{other}"),
        });
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["field"], "config", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("control.token cannot change without a restart"),
        "{reply}"
    );

    // The valid file again: applied as unchanged (nothing differs from what runs).
    std::fs::write(node.config_path(), shape.toml()).unwrap();
    let (status, reply) = node
        .client(None)
        .post::<_, serde_json::Value>("/v1/reload", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(reply["outcome"], "unchanged", "{reply}");
    assert_eq!(metric(&node, "handover_config_last_reload_failed").await, 0);
}

/// `/v1/pools` without what moves with traffic.
fn strip_counters(pools: &serde_json::Value) -> serde_json::Value {
    let mut pools = pools.clone();
    for pool in pools.as_array_mut().unwrap() {
        for backend in pool["backends"].as_array_mut().unwrap() {
            let backend = backend.as_object_mut().unwrap();
            for key in ["active", "connections_total", "requests_total", "latency_ms"] {
                backend.remove(key);
            }
        }
    }
    pools
}

async fn a_changed_bind_listens_before_the_old_socket_closes_and_open_connections_go_on() {
    let a = HttpBackend::start("vm-a").await;
    let shape = Shape {
        web: vec![(a.address, "vm-a", 1)],
        tcp: vec![(a.address, "vm-a")],
        tcp_algorithm: "round_robin",
        web_retries: 2,
        extra: None,
    };
    let first = common::lb::free_port();
    let config = shape.toml().replacen(
        "name = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"",
        &format!("name = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:{first}\""),
        1,
    );
    let node = Node::start(&config);
    let old: SocketAddr = format!("127.0.0.1:{first}").parse().unwrap();
    let mut kept = connect(old).await.unwrap();
    assert_eq!(get(&mut kept).await.unwrap(), "vm-a");

    // Clients keep connecting to the old address while the bind changes: each either reaches
    // the old socket (before it closes) or is refused only after the new one listens.
    let second = common::lb::free_port();
    let moved = shape.toml().replacen(
        "name = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"",
        &format!("name = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:{second}\""),
        1,
    );
    std::fs::write(node.config_path(), moved).unwrap();
    let (status, reply) = node
        .client(None)
        .post::<_, serde_json::Value>("/v1/reload", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{reply}");
    assert_eq!(
        reply["listeners"]["rebound"],
        serde_json::json!(["web"]),
        "{reply}"
    );
    let new: SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();
    let mut fresh = connect(new).await.unwrap();
    assert_eq!(get(&mut fresh).await.unwrap(), "vm-a");
    // The old socket is closed; the keep-alive connection made through it goes on.
    assert!(
        eventually(Duration::from_secs(5), || async {
            TcpStream::connect(old).await.is_err()
        })
        .await,
        "the old address still accepts"
    );
    for _ in 0..5 {
        assert_eq!(get(&mut kept).await.unwrap(), "vm-a");
    }
}

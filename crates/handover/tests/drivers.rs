//! handover as a pure migration module in front of load balancers people already run: real HAProxy
//! 2.6 and nginx 1.22 from Debian's packages, traffic flowing through them to loopback backends.
//! Skipped, with the reason, where they are not installed.

mod common;

use std::time::{Duration, Instant};

use common::backends::{TcpBackend, TcpClient, vm_counts};
use common::harness;
use common::lb::{Haproxy, Nginx, haproxy_available, nginx_available};
use common::{Node, eventually, log_contains, notice};

fn main() {
    harness::main(vec![
        harness::test_async(
            "haproxy_drain_moves_new_connections_keeps_existing_ones_and_ramps_back_in_steps",
            haproxy_drain_moves_new_connections_keeps_existing_ones_and_ramps_back_in_steps,
        )
        .needs(haproxy_available),
        harness::test_async(
            "haproxy_partial_target_gives_the_expected_share",
            haproxy_partial_target_gives_the_expected_share,
        )
        .needs(haproxy_available),
        harness::test_async(
            "one_prepare_reaches_two_haproxies_and_a_reload_mid_migration_is_repaired_at_a_following_step",
            one_prepare_reaches_two_haproxies_and_a_reload_mid_migration_is_repaired_at_a_following_step,
        )
        .needs(haproxy_available),
        harness::test_async(
            "a_missing_or_garbage_runtime_socket_is_a_clear_error_and_the_others_are_unaffected",
            a_missing_or_garbage_runtime_socket_is_a_clear_error_and_the_others_are_unaffected,
        )
        .needs(haproxy_available),
        harness::test_async(
            "nginx_drain_keeps_existing_connections_and_ramps_back_through_reloads",
            nginx_drain_keeps_existing_connections_and_ramps_back_through_reloads,
        )
        .needs(nginx_available),
        harness::test_async(
            "nginx_partial_target_gives_the_expected_share",
            nginx_partial_target_gives_the_expected_share,
        )
        .needs(nginx_available),
        harness::test_async(
            "haproxy_reports_the_sessions_that_remain_and_when_the_vm_is_drained",
            haproxy_reports_the_sessions_that_remain_and_when_the_vm_is_drained,
        )
        .needs(haproxy_available),
    ]);
}

async fn three_backends() -> Vec<TcpBackend> {
    vec![
        TcpBackend::start("vm-a").await,
        TcpBackend::start("vm-b").await,
        TcpBackend::start("vm-c").await,
    ]
}

/// A `[[haproxy]]` section: s1 mapped by name, s2 and s3 by address.
fn haproxy_section(name: &str, haproxy: &Haproxy, backends: &[TcpBackend], extra: &str) -> String {
    format!(
        "[[haproxy]]\nname = \"{name}\"\nsocket = \"{}\"\nvms = {{ \"be/s1\" = \"vm-a\", \"{}\" = \"vm-b\", \"{}\" = \"vm-c\" }}\nstep = \"250ms\"\n{extra}\n",
        haproxy.socket.display(),
        backends[1].address,
        backends[2].address
    )
}

fn servers(backends: &[TcpBackend]) -> Vec<(&'static str, std::net::SocketAddr, u32)> {
    vec![
        ("s1", backends[0].address, 1),
        ("s2", backends[1].address, 1),
        ("s3", backends[2].address, 1),
    ]
}

const CONTROL: &str = "[control]\nbind = \"127.0.0.1:0\"\n\n";

async fn haproxy_drain_moves_new_connections_keeps_existing_ones_and_ramps_back_in_steps() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let haproxy = Haproxy::start(dir.path(), "lb", &servers(&backends));
    let node = Node::start(&format!(
        "{CONTROL}{}",
        haproxy_section("lb", &haproxy, &backends, "ramp = { window = \"3s\" }")
    ));

    let mut existing = TcpClient::connect(haproxy.frontend).await;
    while existing.vm != "vm-a" {
        existing = TcpClient::connect(haproxy.frontend).await;
    }
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["balancers"][0]["name"], "lb");
    assert_eq!(reply["balancers"][0]["kind"], "haproxy");
    assert_eq!(reply["balancers"][0]["applied"], true);
    assert_eq!(reply["balancers"][0]["backends"][0]["pool"], "be");
    assert_eq!(haproxy.servers()["s1"], (1, true), "s1 is in drain state");

    assert_eq!(
        existing.echo("ping").await.as_deref(),
        Some("vm-a ping"),
        "the established connection keeps working"
    );
    let counts = vm_counts(haproxy.frontend, 300, 20).await;
    assert_eq!(counts.get("vm-a"), None, "{counts:?}");
    assert_eq!(existing.echo("still").await.as_deref(), Some("vm-a still"));

    // Completed: s1's weight rises in steps over the 3 s window, then everything is as configured.
    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let mut weights = Vec::new();
    let mut early = Vec::new();
    while started.elapsed() < Duration::from_millis(3600) {
        // Dated by time, not by index: on a loaded machine the readings may be far apart.
        let at = started.elapsed();
        let s = haproxy.servers();
        weights.push((s["s1"].0, s["s2"].0));
        if at < Duration::from_millis(700) {
            early.push(s["s1"].0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut steps: Vec<u32> = weights.iter().map(|(s1, _)| *s1).collect();
    steps.dedup();
    assert!(steps.len() >= 5, "s1's weight moves in steps: {steps:?}");
    assert!(
        weights.iter().any(|(_, s2)| *s2 == 256),
        "during the ramp the others are scaled: {weights:?}"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            haproxy.servers().values().all(|(w, drain)| *w == 1 && !drain)
        })
        .await,
        "configured weights restored: {:?}",
        haproxy.servers()
    );
    assert!(
        early.iter().all(|w| *w < 128),
        "it starts low: {early:?} of {weights:?}"
    );
}

async fn haproxy_partial_target_gives_the_expected_share() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let haproxy = Haproxy::start(dir.path(), "lb", &servers(&backends));
    let node = Node::start(&format!(
        "{CONTROL}{}",
        haproxy_section("lb", &haproxy, &backends, "drain = { target = 0.25 }")
    ));
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    let counts = vm_counts(haproxy.frontend, 1200, 30).await;
    let relative = counts.get("vm-a").copied().unwrap_or(0) as f64 / 1200.0 / (1.0 / 3.0);
    assert!(
        (relative - 0.25).abs() <= 0.05,
        "vm-a got {relative:.3} of its normal share: {counts:?}"
    );
}

async fn one_prepare_reaches_two_haproxies_and_a_reload_mid_migration_is_repaired_at_a_following_step() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let first = Haproxy::start(dir.path(), "lb1", &servers(&backends));
    let second = Haproxy::start(dir.path(), "lb2", &servers(&backends));
    let node = Node::start(&format!(
        "{CONTROL}{}{}",
        haproxy_section("lb1", &first, &backends, ""),
        haproxy_section("lb2", &second, &backends, "")
    ));
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    let names: Vec<&str> = reply["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["lb1", "lb2"],
        "a node without pools is a pure migration module"
    );
    assert!(
        first.servers()["s1"].1 && second.servers()["s1"].1,
        "both drained s1"
    );

    // A reload makes HAProxy forget the drain; handover puts it back at one of its next steps
    // (every 250 ms): within a second on an idle machine, bounded at 5 s here because the
    // machine running the tests may be loaded. Measured from the new worker answering.
    second.reload();
    let reloaded = Instant::now();
    assert!(eventually(Duration::from_secs(10), || async { second.servers()["s1"].1 }).await);
    assert!(
        reloaded.elapsed() < Duration::from_secs(5),
        "re-applied after {:?}",
        reloaded.elapsed()
    );
    assert!(
        log_contains(&node, "HAProxy reloaded", Duration::from_secs(2)).await,
        "{}",
        node.log()
    );
    assert_eq!(vm_counts(second.frontend, 90, 15).await.get("vm-a"), None);
}

async fn a_missing_or_garbage_runtime_socket_is_a_clear_error_and_the_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let good = Haproxy::start(dir.path(), "good", &servers(&backends));
    // A socket that answers garbage to everything.
    let garbage_path = dir.path().join("garbage.sock");
    let garbage = tokio::net::UnixListener::bind(&garbage_path).unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = garbage.accept().await {
            let mut buffer = [0u8; 256];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(b"HTTP/1.1 418 I'm a teapot\r\n\r\n").await;
        }
    });
    let node = Node::start(&format!(
        "{CONTROL}{}[[haproxy]]\nname = \"missing\"\nsocket = \"{}\"\nserver_name_is_vm = true\n\n[[haproxy]]\nname = \"garbage\"\nsocket = \"{}\"\nserver_name_is_vm = true\n",
        haproxy_section("good", &good, &backends, ""),
        dir.path().join("nothing-here.sock").display(),
        garbage_path.display()
    ));
    let started = Instant::now();
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let by_name = |name: &str| {
        reply["balancers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("good")["applied"], true);
    let missing = by_name("missing")["error"].as_str().unwrap().to_string();
    assert!(
        missing.contains("unreachable") && missing.contains("nothing-here.sock"),
        "{missing}"
    );
    let garbage = by_name("garbage")["error"].as_str().unwrap().to_string();
    assert!(
        garbage.contains("bad answer") && garbage.contains("show servers state"),
        "{garbage}"
    );
    assert!(good.servers()["s1"].1);
}

async fn nginx_drain_keeps_existing_connections_and_ramps_back_through_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let upstream = dir.path().join("upstream.conf");
    let nginx_conf = dir.path().join("nginx.conf");
    let mut section = format!(
        "[[nginx]]\nname = \"ngx\"\nupstream = \"web\"\nfile = \"{}\"\nreload = [\"nginx\", \"-c\", \"{}\", \"-s\", \"reload\"]\nramp = {{ window = \"3s\" }}\nstep = \"500ms\"\n",
        upstream.display(),
        nginx_conf.display()
    );
    for (vm, b) in ["vm-a", "vm-b", "vm-c"].iter().zip(&backends) {
        section.push_str(&format!(
            "[[nginx.servers]]\naddress = \"{}\"\nvm = \"{vm}\"\n",
            b.address
        ));
    }
    let node = Node::start(&format!("{CONTROL}{section}"));
    assert!(
        eventually(Duration::from_secs(5), || async { upstream.exists() }).await,
        "{}",
        node.log()
    );
    let nginx = Nginx::start(dir.path(), "web", &upstream);
    assert_eq!(nginx.config, nginx_conf);

    let mut existing = TcpClient::connect(nginx.frontend).await;
    while existing.vm != "vm-a" {
        existing = TcpClient::connect(nginx.frontend).await;
    }
    let workers = nginx.workers();
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["balancers"][0]["name"], "ngx");
    assert_eq!(reply["balancers"][0]["applied"], true, "{reply}");
    let text = std::fs::read_to_string(&upstream).unwrap();
    assert!(
        text.contains(&format!("server {} weight=1 down;", backends[0].address)),
        "{text}"
    );
    // A reload took effect (the event), then new connections avoid vm-a. The node's start may
    // have failed to reload nginx (not yet running) and retried at a step just before the
    // notice, so the first new workers can be that retry's: count rounds of new connections
    // until none goes to vm-a, for at most 10 s.
    nginx.wait_reloaded(&workers).await;
    let started = Instant::now();
    loop {
        let counts = vm_counts(nginx.frontend, 150, 15).await;
        if !counts.contains_key("vm-a") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "new connections still reach vm-a after 10 s: {counts:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        existing.echo("ping").await.as_deref(),
        Some("vm-a ping"),
        "the old worker keeps the connection"
    );

    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(3600) {
        seen.push(std::fs::read_to_string(&upstream).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.dedup();
    assert!(seen.len() >= 4, "the weights were rewritten in steps: {seen:#?}");
    let last = std::fs::read_to_string(&upstream).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            std::fs::read_to_string(&upstream)
                .unwrap()
                .matches("weight=1;")
                .count()
                == 3
        })
        .await,
        "configured weights at the end: {last}"
    );
}

async fn nginx_partial_target_gives_the_expected_share() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let upstream = dir.path().join("upstream.conf");
    let mut section = format!(
        "[[nginx]]\nname = \"ngx\"\nupstream = \"web\"\nfile = \"{}\"\nreload = [\"nginx\", \"-c\", \"{}\", \"-s\", \"reload\"]\ndrain = {{ target = 0.25 }}\n",
        upstream.display(),
        dir.path().join("nginx.conf").display()
    );
    for (vm, b) in ["vm-a", "vm-b", "vm-c"].iter().zip(&backends) {
        section.push_str(&format!(
            "[[nginx.servers]]\naddress = \"{}\"\nvm = \"{vm}\"\n",
            b.address
        ));
    }
    let node = Node::start(&format!("{CONTROL}{section}"));
    assert!(eventually(Duration::from_secs(5), || async { upstream.exists() }).await);
    let nginx = Nginx::start(dir.path(), "web", &upstream);
    let workers = nginx.workers();
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    nginx.wait_reloaded(&workers).await;
    // The workers seen before the notice may already be those of a reload the node's start set
    // off, so the drain's own reload can still be under way: measure until the share is the
    // target's (each round counts 1200 new requests), for at most 30 s.
    let started = std::time::Instant::now();
    loop {
        let counts = vm_counts(nginx.frontend, 1200, 30).await;
        let relative = counts.get("vm-a").copied().unwrap_or(0) as f64 / 1200.0 / (1.0 / 3.0);
        if (relative - 0.25).abs() <= 0.05 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "vm-a got {relative:.3} of its normal share: {counts:?}"
        );
    }
}

async fn haproxy_reports_the_sessions_that_remain_and_when_the_vm_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let haproxy = Haproxy::start(dir.path(), "lb", &servers(&backends));
    let node = Node::start(&format!(
        "{CONTROL}{}",
        haproxy_section("lb", &haproxy, &backends, "")
    ));
    let mut client = TcpClient::connect(haproxy.frontend).await;
    while client.vm != "vm-a" {
        client = TcpClient::connect(haproxy.frontend).await;
    }
    let (_, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 800}),
        )
        .await;
    let drain = &reply["drain"];
    assert_eq!(drain["drained"], false, "{reply}");
    assert_eq!(drain["active"], 1, "{reply}");
    assert_eq!(drain["remaining"][0]["balancer"], "lb");
    assert_eq!(
        drain["remaining"][0]["client"],
        client.local.to_string(),
        "{reply}"
    );

    // Closed 1.5 s after this point; the node counts its wait from the notice's arrival, a
    // little later, so at least 400 ms even when the notice is slow to arrive.
    let closing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(client);
    });
    let (_, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 10000}),
        )
        .await;
    closing.await.unwrap();
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    assert!(reply["drain"]["waited_ms"].as_u64().unwrap() >= 400, "{reply}");
}

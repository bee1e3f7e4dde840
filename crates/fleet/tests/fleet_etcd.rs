//! The fleet crate against a real etcd (Debian's etcd-server, started by the test): registration,
//! notices committed with compare-and-swap and acknowledged by every serving node, list-then-watch
//! with a re-list after compaction, a node joining mid-migration, etcd unreachable, TLS and
//! username/password. Nodes run in this process with a recording stand-in for their balancers
//! (the `handover` end-to-end tests run real processes with real balancers).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::harness;
use common::local::Recording;
use handover_core::api::NoticeRequest;
use handover_core::config::{Config, parse};
use handover_core::model::VmId;
use handover_core::phase::{Notice, Phase};
use handover_fleet::{FleetNode, NoticeFailure};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() {
    harness::main(vec![
        harness::test_async(
            "a_prepare_reaches_every_serving_node_and_the_reply_lists_each_acknowledgement",
            a_prepare_reaches_every_serving_node_and_the_reply_lists_each_acknowledgement,
        )
        .needs(etcd_available),
        harness::test_async(
            "racing_prepares_are_ordered_by_etcd_and_applied_once",
            racing_prepares_are_ordered_by_etcd_and_applied_once,
        )
        .needs(etcd_available),
        harness::test_async(
            "a_node_that_joins_during_a_migration_applies_it_before_join_returns",
            a_node_that_joins_during_a_migration_applies_it_before_join_returns,
        )
        .needs(etcd_available),
        harness::test_async(
            "a_watch_from_a_compacted_revision_lists_again_and_converges",
            a_watch_from_a_compacted_revision_lists_again_and_converges,
        )
        .needs(etcd_available),
        harness::test_async(
            "a_notice_while_etcd_is_down_fails_clearly_and_changes_nothing",
            a_notice_while_etcd_is_down_fails_clearly_and_changes_nothing,
        )
        .needs(etcd_available),
        harness::test_async(
            "tls_and_user_password_are_taken_as_etcdctl_takes_them",
            tls_and_user_password_are_taken_as_etcdctl_takes_them,
        )
        .needs(etcd_available)
        .needs(openssl),
    ]);
}

/// Whether etcd and etcdctl are here and work.
fn etcd_available() -> Result<(), harness::Lack> {
    harness::program("etcd", "--version", "etcd-server")?;
    harness::program("etcdctl", "version", "etcd-client")
}

/// Whether openssl (the test's certificates) is here and works.
fn openssl() -> Result<(), harness::Lack> {
    harness::program("openssl", "version", "openssl")
}

fn config(endpoints: &str, extra: &str) -> Config {
    parse(&format!(
        "[pools.web]\nramp = {{ window = \"1s\" }}\ndeadline = \"1h\"\n\
         [[pools.web.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-a\"\n\
         [[pools.web.backends]]\naddress = \"127.0.0.1:2\"\nvm = \"vm-b\"\n\
         [[pools.web.backends]]\naddress = \"127.0.0.1:3\"\nvm = \"vm-c\"\n\
         [fleet]\netcd = {endpoints}\nlease = \"2s\"\nack_timeout = \"2s\"\n{extra}"
    ))
    .unwrap()
}

struct TestNode {
    node: Arc<FleetNode>,
    local: Arc<Recording>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl TestNode {
    async fn start(config: &Config, name: &str) -> TestNode {
        let local = Arc::new(Recording::serving(&["vm-a", "vm-b", "vm-c"]));
        let node = FleetNode::new(
            config,
            config.fleet.as_ref().unwrap(),
            name.to_string(),
            format!("http://127.0.0.1:0/{name}"),
            local.clone(),
        )
        .unwrap();
        let revision = node.join(Duration::from_secs(10)).await.expect("join");
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        node.spawn(revision, &cancel, &tasks);
        TestNode {
            node,
            local,
            cancel,
            tasks,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.node.leave().await;
    }
}

fn vm(name: &str) -> VmId {
    VmId::new(name).unwrap()
}

async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

async fn a_prepare_reaches_every_serving_node_and_the_reply_lists_each_acknowledgement() {
    let etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints(), "");
    let nodes = [
        TestNode::start(&config, "lb-1").await,
        TestNode::start(&config, "lb-2").await,
        TestNode::start(&config, "lb-3").await,
    ];
    let reply = nodes[0]
        .node
        .notice(&vm("vm-a"), &NoticeRequest::new(Notice::Prepare))
        .await
        .unwrap();
    assert_eq!(reply.outcome, "applied");
    assert_eq!(reply.phase, Phase::Draining);
    let names: Vec<&str> = reply.balancers.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["lb-1", "lb-2", "lb-3"], "{reply:?}");
    assert!(
        reply.balancers.iter().all(|b| b.applied && b.error.is_none()),
        "{reply:?}"
    );
    for node in &nodes {
        assert_eq!(node.local.phase("vm-a"), Phase::Draining);
    }
    // Another node takes the end of the migration: the fleet agrees.
    let reply = nodes[2]
        .node
        .notice(&vm("vm-a"), &NoticeRequest::new(Notice::Completed))
        .await
        .unwrap();
    assert_eq!(reply.previous_phase, Phase::Draining);
    assert_eq!(reply.phase, Phase::Ramping);
    assert_eq!(reply.balancers.len(), 3);
    for node in &nodes {
        assert_eq!(node.local.phase("vm-a"), Phase::Ramping);
    }
    // After the ramp (1 s) the notice is removed and every node is told the VM is stable.
    assert!(
        eventually(Duration::from_secs(10), || etcd
            .etcdctl(&["get", "/handover/v1/notices/vm-a"])
            .is_ok_and(|t| t.trim().is_empty()))
        .await
    );
    for node in &nodes {
        assert!(
            eventually(Duration::from_secs(5), || node.local.phase("vm-a")
                == Phase::Stable)
            .await
        );
    }
    for node in nodes {
        node.stop().await;
    }
}

async fn racing_prepares_are_ordered_by_etcd_and_applied_once() {
    let etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints(), "");
    let a = TestNode::start(&config, "lb-1").await;
    let b = TestNode::start(&config, "lb-2").await;
    let request = NoticeRequest::new(Notice::Prepare);
    let target = vm("vm-b");
    let (ra, rb) = tokio::join!(a.node.notice(&target, &request), b.node.notice(&target, &request));
    let mut outcomes = vec![ra.unwrap().outcome, rb.unwrap().outcome];
    outcomes.sort();
    assert_eq!(outcomes, ["applied", "unchanged"]);
    // One migration: the notice was written once (version 1 of the key).
    let text = etcd
        .etcdctl(&["get", "/handover/v1/notices/vm-b", "-w", "json"])
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["kvs"][0]["version"], 1, "{text}");
    a.stop().await;
    b.stop().await;
}

async fn a_node_that_joins_during_a_migration_applies_it_before_join_returns() {
    let etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints(), "");
    let first = TestNode::start(&config, "lb-1").await;
    first
        .node
        .notice(&vm("vm-c"), &NoticeRequest::new(Notice::Prepare))
        .await
        .unwrap();
    let local = Arc::new(Recording::serving(&["vm-a", "vm-b", "vm-c"]));
    let late = FleetNode::new(
        &config,
        config.fleet.as_ref().unwrap(),
        "lb-late".into(),
        "http://x:1".into(),
        local.clone(),
    )
    .unwrap();
    late.join(Duration::from_secs(10)).await.unwrap();
    // Nothing else ran: join itself applied the current phase.
    assert_eq!(local.phase("vm-c"), Phase::Draining);
    late.leave().await;
    first.stop().await;
}

async fn a_watch_from_a_compacted_revision_lists_again_and_converges() {
    let etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints(), "");
    let sender = TestNode::start(&config, "lb-1").await;
    let local = Arc::new(Recording::serving(&["vm-a", "vm-b", "vm-c"]));
    let behind = FleetNode::new(
        &config,
        config.fleet.as_ref().unwrap(),
        "lb-behind".into(),
        "http://x:1".into(),
        local.clone(),
    )
    .unwrap();
    let old = behind.join(Duration::from_secs(10)).await.unwrap();
    // While it is not watching, the fleet moves on and etcd compacts its history.
    sender
        .node
        .notice(&vm("vm-a"), &NoticeRequest::new(Notice::Prepare))
        .await
        .unwrap();
    sender
        .node
        .notice(&vm("vm-a"), &NoticeRequest::new(Notice::Started))
        .await
        .unwrap();
    let (_, now) = sender.node.etcd().list("/handover/v1/notices/").await.unwrap();
    sender.node.etcd().compact(now).await.unwrap();
    let relists_before = behind.stats().relists;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    behind.spawn(old, &cancel, &tasks);
    assert!(
        eventually(Duration::from_secs(10), || local.phase("vm-a")
            == Phase::Migrating)
        .await
    );
    assert!(behind.stats().relists > relists_before, "it listed again");
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    behind.leave().await;
    sender.stop().await;
}

async fn a_notice_while_etcd_is_down_fails_clearly_and_changes_nothing() {
    let mut etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints(), "");
    let node = TestNode::start(&config, "lb-1").await;
    etcd.kill_all();
    let started = Instant::now();
    let error = node
        .node
        .notice(&vm("vm-a"), &NoticeRequest::new(Notice::Prepare))
        .await
        .unwrap_err();
    assert!(matches!(error, NoticeFailure::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("not applied"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(node.local.phase("vm-a"), Phase::Stable);
    // A VM nobody serves is refused without a write once etcd is back.
    etcd.restart_all();
    let error = node
        .node
        .notice(&vm("vm-z"), &NoticeRequest::new(Notice::Prepare))
        .await
        .unwrap_err();
    assert!(matches!(error, NoticeFailure::UnknownVm(_)), "{error}");
    assert!(
        etcd.etcdctl(&["get", "/handover/v1/notices/vm-z"])
            .unwrap()
            .trim()
            .is_empty()
    );
    node.stop().await;
}

async fn tls_and_user_password_are_taken_as_etcdctl_takes_them() {
    let etcd = Etcd::single_tls().unwrap_or_else(|e| panic!("etcd with TLS: {e}"));
    etcd.etcdctl(&["user", "add", "root:rootpw"]).unwrap();
    etcd.etcdctl(&["user", "add", "lb:lbpw"]).unwrap();
    etcd.etcdctl(&["role", "add", "handover"]).unwrap();
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "handover",
        "--prefix=true",
        "readwrite",
        "/handover/",
    ])
    .unwrap();
    etcd.etcdctl(&["user", "grant-role", "lb", "handover"]).unwrap();
    etcd.etcdctl(&["auth", "enable"]).unwrap();
    // etcd 3.4 with a trusted CA asks every client for a certificate, as etcdctl's --cert/--key.
    let tls = etcd.tls().unwrap();
    let extra = |password: &str| {
        format!(
            "cacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nuser = \"lb\"\npassword = \"{password}\"\n",
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        )
    };
    // A wrong password is refused with etcd's reason.
    let bad = config(&etcd.toml_endpoints(), &extra("wrong"));
    let local = Arc::new(Recording::serving(&["vm-a"]));
    let node = FleetNode::new(
        &bad,
        bad.fleet.as_ref().unwrap(),
        "lb-1".into(),
        "http://x:1".into(),
        local,
    )
    .unwrap();
    let error = node.join(Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(error.contains("authentication failed"), "{error}");
    // The right one works end to end.
    let good = config(&etcd.toml_endpoints(), &extra("lbpw"));
    let node = TestNode::start(&good, "lb-1").await;
    let reply = node
        .node
        .notice(&vm("vm-a"), &NoticeRequest::new(Notice::Prepare))
        .await
        .unwrap();
    assert_eq!(reply.balancers.len(), 1);
    assert!(reply.balancers[0].applied, "{reply:?}");
    node.stop().await;
}

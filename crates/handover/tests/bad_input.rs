//! Bad configuration, bad API bodies, unknown VMs, bad tokens and bad CLI arguments get clear
//! errors and exit codes, and leave the running state untouched.

mod common;

use std::process::Command;

use common::backends::TcpBackend;
use common::{Node, binary, notice, pool_toml};

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

const BAD: &str = r#"[control]
bind = "127.0.0.1:0"

[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"
pool = "nope"

[pools.web]
algorithm = "fastest"

[[pools.web.backends]]
address = "10.0.0.1"
vm = "vm-a"
"#;

#[test]
fn check_prints_every_error_with_field_and_line() {
    let (_dir, path) = write_config(BAD);
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 8: listeners[0].pool: no pool named \"nope\" (pools: web)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 11: pools.web.algorithm: unknown value \"fastest\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 14: pools.web.backends[0].address: invalid socket address \"10.0.0.1\""),
        "{stderr}"
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert_eq!(stderr.lines().count(), 3, "{stderr}");

    let fixed = BAD
        .replace("\"fastest\"", "\"least_connections\"")
        .replace("10.0.0.1\"", "10.0.0.1:80\"");
    let good = fixed.replace("pool = \"nope\"", "pool = \"web\"");
    let (_dir, path) = write_config(&good);
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 listener, 1 pool, 1 backend, 0 peers)"));
}

#[test]
fn run_refuses_a_bad_config_without_starting() {
    let (dir, path) = write_config(BAD);
    let ready = dir.path().join("ready.json");
    let output = Command::new(binary())
        .args(["run", "--config"])
        .arg(&path)
        .arg("--ready-file")
        .arg(&ready)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(!ready.exists(), "nothing started");
    assert!(String::from_utf8_lossy(&output.stderr).contains("pools.web.algorithm"));
}

#[test]
fn run_names_a_listener_whose_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"web\"\nkind = \"tcp\"\nbind = \"{}\"\npool = \"p\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-a\"\n",
        taken.local_addr().unwrap()
    );
    let (_dir, path) = write_config(&config);
    let output = Command::new(binary())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("listeners[0] (\"web\"): cannot listen on"),
        "{stderr}"
    );
}

#[test]
fn cli_arguments_are_validated() {
    let output = Command::new(binary())
        .args(["notify", "vm-a", "prepared"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown phase \"prepared\""));

    let output = Command::new(binary())
        .args(["notify", "vm-a", "prepare", "--timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid duration \"soon\""));

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = Command::new(binary())
        .args([
            "notify",
            "vm-a",
            "prepare",
            "--control",
            &format!("http://{dead}"),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn snapshot(node: &Node) -> String {
    let vms = node.vms().await;
    let mut migrations: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    // Durations of a phase in progress grow with time; the state is in the timestamps.
    for m in migrations.as_array_mut().unwrap() {
        for key in ["draining_ms", "migrating_ms", "ramping_ms"] {
            m.as_object_mut().unwrap().remove(key);
        }
    }
    let summary: Vec<String> = vms
        .iter()
        .map(|v| {
            format!(
                "{} {} {:?}",
                v.vm,
                v.phase,
                v.backends
                    .iter()
                    .map(|b| b.backend.effective_weight)
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    format!("{summary:?} {migrations}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_and_change_nothing() {
    let backends = [TcpBackend::start("vm-a").await, TcpBackend::start("vm-b").await];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let config = format!(
        "[control]\nbind = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\n{}",
        pool_toml("p", "guard = { min_active = 1 }", &addresses)
    );
    let node = Node::start(&config);
    let token = Some("s3cret");
    let before = snapshot(&node).await;

    // No token, a wrong token.
    let (status, body) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let (status, _) = node
        .notice_with_token("vm-a", notice("prepare"), Some("wrong"))
        .await;
    assert_eq!(status, 401);

    // Malformed bodies name the field.
    let (status, body) = node
        .notice_with_token("vm-a", serde_json::json!({"phase": "boom"}), token)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "phase");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("phase: unknown variant `boom`"),
        "{body}"
    );
    let (status, body) = node
        .notice_with_token(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait": true}),
            token,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("unknown field `wait`"),
        "{body}"
    );
    let (status, body) = node
        .notice_with_token(
            "vm-a",
            serde_json::json!({"phase": "prepare", "timeout_ms": "soon"}),
            token,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "timeout_ms");
    let (status, body) = node.notice_with_token("vm-a", serde_json::json!({}), token).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("missing field `phase`"),
        "{body}"
    );

    // An invalid VM id, an unknown VM, an end without a migration.
    let (status, body) = node.notice_with_token("vm%20a", notice("prepare"), token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "vm");
    let (status, body) = node.notice_with_token("vm-zzz", notice("prepare"), token).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no balancer serves VM vm-zzz")
    );
    assert_eq!(body["balancers"][0]["serves"], false);
    let (status, body) = node.notice_with_token("vm-a", notice("completed"), token).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("vm-a has no migration in progress (phase stable)")
    );

    assert_eq!(
        snapshot(&node).await,
        before,
        "no rejected request changed anything"
    );

    // The guard: draining vm-a is fine, then vm-b would leave nobody active.
    let (status, _) = node.notice_with_token("vm-a", notice("prepare"), token).await;
    assert_eq!(status, 200);
    let middle = snapshot(&node).await;
    let (status, body) = node.notice_with_token("vm-b", notice("prepare"), token).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("draining vm-b would leave pool p with 0 active backends; min_active = 1"),
        "{body}"
    );
    assert_eq!(snapshot(&node).await, middle, "a refused prepare changed nothing");

    // GETs need no token; metrics are served.
    let metrics = node.client(None).get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("handover_backend_phase{pool=\"p\",backend="),
        "{metrics}"
    );
    assert!(metrics.contains("phase=\"draining\"} 1"), "{metrics}");
    assert!(
        metrics.contains("handover_notices_total{notice=\"prepare\",outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_vm_phase{vm=\"vm-a\",phase=\"draining\"} 1"),
        "{metrics}"
    );
}

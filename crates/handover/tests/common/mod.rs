//! Test kit shared by the end-to-end tests: the real `handover` binary started on a temporary
//! configuration, real backends on loopback, and small clients.

#![allow(dead_code)]

pub mod backends;
pub mod disk;
pub mod h2raw;
pub mod harness;
pub mod lb;
pub mod libvirt;
pub mod qemu;
pub mod raw;
pub mod recorder;
pub mod tls;
pub mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use handover_core::api::{NoticeRequest, VmView};
use handover_drivers::{ClientError, ControlClient};

/// Path of the binary under test: this build's, or `HANDOVER_TEST_BIN` (to run a test against
/// another build, e.g. to see a fault test fail on the code before its fix).
pub fn binary() -> String {
    std::env::var("HANDOVER_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_handover").to_string())
}

/// A running `handover run` process.
pub struct Node {
    child: Child,
    /// Control API base URL.
    pub control: String,
    /// Listener addresses by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

#[derive(serde::Deserialize)]
struct Ready {
    control: String,
    listeners: BTreeMap<String, String>,
}

impl Node {
    /// Starts `handover run` on this configuration and waits until it listens.
    pub fn start(config: &str) -> Node {
        Self::spawn(config, &[], None)
    }

    /// The same with more arguments to `handover run` (`--workers 1`, say).
    pub fn start_with(config: &str, args: &[&str]) -> Node {
        Self::spawn(config, args, None)
    }

    /// Starts `handover run` with at most `nofile` open descriptors (soft and hard limit, set by
    /// util-linux's `prlimit` before it executes the binary, so the pid is handover's).
    pub fn start_limited(config: &str, nofile: Option<u64>) -> Node {
        Self::spawn(config, &[], nofile)
    }

    fn spawn(config: &str, args: &[&str], nofile: Option<u64>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("handover.toml");
        std::fs::write(&config_path, config).unwrap();
        let ready: PathBuf = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("handover.log")).unwrap();
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready)
            .args(["--shutdown-grace", "1s"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn handover");
        let mut node = Node {
            child,
            control: String::new(),
            listeners: BTreeMap::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let ready: Ready = serde_json::from_str(&text).expect("ready file is JSON");
                node.control = ready.control;
                node.listeners = ready
                    .listeners
                    .into_iter()
                    .map(|(k, v)| (k, v.parse().unwrap()))
                    .collect();
                return node;
            }
            if let Some(status) = node.child.try_wait().unwrap() {
                panic!("handover exited early with {status}:\n{}", node.log());
            }
            assert!(
                Instant::now() < deadline,
                "handover did not become ready:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The configuration file the node was started with (a test rewrites it, then reloads).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("handover.toml")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("handover.log")).unwrap_or_default()
    }

    /// The node's log so far without its colours (`key=value` fields read as such).
    pub fn plain_log(&self) -> String {
        let log = self.log();
        let mut plain = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An SGR sequence: ESC [ ... m
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// Address of a listener.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// A control-API client.
    pub fn client(&self, token: Option<&str>) -> ControlClient {
        ControlClient::new(&self.control, token.map(str::to_string), Duration::from_secs(30))
    }

    /// Sends a notice; returns the reply as JSON (errors too), with its HTTP status.
    pub async fn notice(&self, vm: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.notice_with_token(vm, body, None).await
    }

    /// Sends a notice with a bearer token.
    pub async fn notice_with_token(
        &self,
        vm: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let result: Result<(http::StatusCode, serde_json::Value), ClientError> = self
            .client(token)
            .post(&format!("/v1/vms/{vm}/migration"), &body)
            .await;
        match result {
            Ok((status, value)) => (status.as_u16(), value),
            Err(ClientError::Status { status, body }) => {
                (status.as_u16(), serde_json::to_value(body).unwrap())
            }
            Err(e) => panic!("notice failed: {e}"),
        }
    }

    /// Sends a typed notice.
    pub async fn send(&self, vm: &str, request: NoticeRequest) -> (u16, serde_json::Value) {
        self.notice(vm, serde_json::to_value(request).unwrap()).await
    }

    /// `GET /v1/vms`.
    pub async fn vms(&self) -> Vec<VmView> {
        self.client(None).get("/v1/vms").await.expect("GET /v1/vms")
    }

    /// The phase a VM has in the registry.
    pub async fn phase(&self, vm: &str) -> String {
        self.vms()
            .await
            .into_iter()
            .find(|v| v.vm.as_str() == vm)
            .map(|v| v.phase.to_string())
            .unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL: no shutdown, no last state write) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the node to stop gracefully (SIGTERM), without waiting.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the node a signal (`TERM`, `USR1`, `STOP`, ...), without waiting.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Whether the process has exited within `timeout`.
    pub fn exited_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a CLI command of the binary against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .env("HANDOVER_CONTROL", &self.control)
            .output()
            .expect("run handover CLI")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Never signal a pid that was already reaped (it may belong to another process by now).
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // A stopped process cannot act on SIGTERM.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simple prepare.
pub fn notice(phase: &str) -> serde_json::Value {
    serde_json::json!({ "phase": phase })
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pool section with three backends of vm-a, vm-b, vm-c.
pub fn pool_toml(name: &str, extra: &str, backends: &[SocketAddr]) -> String {
    let mut text = format!("[pools.{name}]\n{extra}\n");
    for (i, address) in backends.iter().enumerate() {
        let vm = ["vm-a", "vm-b", "vm-c", "vm-d"][i];
        text.push_str(&format!(
            "\n[[pools.{name}.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text
}

/// The configuration of a node with one L4 listener `tcp` routing to pool `p`.
pub fn tcp_config(addresses: &[SocketAddr], pool_extra: &str) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
        pool_toml("p", pool_extra, addresses)
    )
}

/// A node with one L4 listener `tcp` in front of three line-echo backends vm-a, vm-b, vm-c.
pub async fn tcp_node(pool_extra: &str) -> (Node, Vec<backends::TcpBackend>) {
    let backends = vec![
        backends::TcpBackend::start("vm-a").await,
        backends::TcpBackend::start("vm-b").await,
        backends::TcpBackend::start("vm-c").await,
    ];
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    (Node::start(&tcp_config(&addresses, pool_extra)), backends)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until the node's log contains `text`.
pub async fn log_contains(node: &Node, text: &str, timeout: Duration) -> bool {
    eventually(timeout, || async { node.log().contains(text) }).await
}

/// Active connections + requests of each backend of the node's first pool, by VM.
pub async fn active_by_vm(node: &Node) -> BTreeMap<String, u64> {
    let pools: serde_json::Value = node.client(None).get("/v1/pools").await.unwrap_or_default();
    pools[0]["backends"]
        .as_array()
        .map(|backends| {
            backends
                .iter()
                .map(|b| {
                    (
                        b["vm"].as_str().unwrap_or_default().to_string(),
                        b["active"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

//! Real peers written in Python for the tests: servers that announce their port in a file and
//! echo as their VM, and clients driven line by line on stdin — WebSocket (`ws.py`, the
//! `websockets` package) and gRPC (`grpc_peer.py`, `grpcio`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The WebSocket peer script.
pub const WS: &str = "ws.py";
/// The gRPC peer script.
pub const GRPC: &str = "grpc_peer.py";
/// The HTTP/1.1-over-TLS backend script.
pub const TLS_HTTP1: &str = "tls_http1.py";

fn script(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common")).join(name)
}

/// Whether python3 with `websockets` is here.
pub fn available() -> Result<(), super::harness::Lack> {
    super::harness::python_module("websockets", "websockets")
}

/// Whether python3 with `grpcio` is here.
pub fn grpc_available() -> Result<(), super::harness::Lack> {
    super::harness::python_module("grpc", "grpcio")
}

/// A server that answers every message with `NAME:message`.
pub struct WsServer {
    /// Where it listens.
    pub address: SocketAddr,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl WsServer {
    /// The close code of every connection that ended, as the server saw it.
    pub fn close_codes(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("port.closes"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// What the server wrote to its port file's `.SUFFIX` companion (empty if nothing yet).
    pub fn note(&self, suffix: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("port.{suffix}"))).unwrap_or_default()
    }

    /// Starts a WebSocket server on an ephemeral port.
    pub fn start(name: &str) -> WsServer {
        Self::start_script(WS, name)
    }

    /// Starts `script`'s server named `name` on an ephemeral port.
    pub fn start_script(script_name: &str, name: &str) -> WsServer {
        Self::start_script_with(script_name, name, &[])
    }

    /// The same with more arguments after the port file.
    pub fn start_script_with(script_name: &str, name: &str, more: &[&std::path::Path]) -> WsServer {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = std::process::Command::new("python3")
            .arg(script(script_name))
            .args(["server", name])
            .arg(&port_file)
            .args(more)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the WebSocket server");
        let started = Instant::now();
        let address: SocketAddr = loop {
            if let Some(address) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|port| format!("127.0.0.1:{}", port.trim()).parse().ok())
            {
                break address;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the WebSocket server did not start within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        WsServer { address, child, dir }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python client holding several connections (or calls) to one target.
pub struct WsClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl WsClient {
    /// Starts the WebSocket client for `ws://ADDRESS/path`.
    pub fn start(url: &str) -> WsClient {
        Self::start_script(WS, url)
    }

    /// Starts `script`'s client for `target`.
    pub fn start_script(script_name: &str, target: &str) -> WsClient {
        let mut child = Command::new("python3")
            .arg(script(script_name))
            .args(["client", target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the WebSocket client");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        WsClient { child, stdin, lines }
    }

    /// Sends one command line and returns the answer line.
    pub async fn ask(&mut self, command: &str) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        match tokio::time::timeout(Duration::from_secs(30), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("the WebSocket client did not answer {command:?}: {other:?}"),
        }
    }

    /// Opens connection `id`; `Err` with the client's reason.
    pub async fn open(&mut self, id: &str) -> Result<(), String> {
        let line = self.ask(&format!("open {id}")).await;
        if line == format!("opened {id}") {
            Ok(())
        } else {
            Err(line)
        }
    }

    /// Sends `text` on `id` and returns the reply.
    pub async fn send(&mut self, id: &str, text: &str) -> Result<String, String> {
        let line = self.ask(&format!("send {id} {text}")).await;
        match line.strip_prefix(&format!("reply {id} ")) {
            Some(reply) => Ok(reply.to_string()),
            None => Err(line),
        }
    }

    /// The close code if `id` was closed within `seconds`, `None` if it is still open.
    pub async fn closed_within(&mut self, id: &str, seconds: f64) -> Option<String> {
        let line = self.ask(&format!("state {id} {seconds}")).await;
        line.strip_prefix(&format!("closed {id} ")).map(str::to_string)
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

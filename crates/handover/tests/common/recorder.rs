//! Backends that record exactly what their HTTP parser made of the bytes they received: one in
//! process on hyper's parser, and Python servers on theirs (`recorder.py`: the standard library's
//! http.server with a lenient hand-written chunked reader, aiohttp's llhttp, gunicorn). Each answers
//! 200 with `X-Seq: <n>`, the number of the request as it parsed it, so a client can tell whose
//! response it got, and a test can compare what the proxy accepted with what each backend saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as a backend parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number at that backend, from 1.
    pub seq: u64,
    /// The method.
    pub method: String,
    /// The request target as received (origin form).
    pub target: String,
    /// The body, decoded from its framing.
    pub body: Vec<u8>,
}

/// A recording backend.
pub enum Recorder {
    /// hyper's HTTP/1.1 server, in this process.
    Hyper {
        /// Where it listens.
        address: SocketAddr,
        /// What it parsed.
        records: Arc<Mutex<Vec<Record>>>,
        /// The accept loop.
        task: tokio::task::JoinHandle<()>,
    },
    /// A Python server (`recorder.py`).
    Python {
        /// `stdlib`, `aiohttp` or `gunicorn`.
        kind: &'static str,
        /// Where it listens.
        address: SocketAddr,
        /// The process.
        child: Child,
        /// Its JSON-lines log of records.
        log: PathBuf,
        /// Holds the log's directory.
        _dir: tempfile::TempDir,
    },
}

/// Whether python3 is here (the `stdlib` recorder: `http.server`).
pub fn python_stdlib() -> Result<(), super::harness::Lack> {
    super::harness::python_module("http.server", "python3")
}

/// Whether python3 with aiohttp is here.
pub fn aiohttp() -> Result<(), super::harness::Lack> {
    super::harness::python_module("aiohttp", "aiohttp")
}

/// Whether python3 with gunicorn is here.
pub fn gunicorn() -> Result<(), super::harness::Lack> {
    super::harness::python_module("gunicorn", "gunicorn")
}

impl Recorder {
    /// hyper's server on an ephemeral loopback port.
    pub async fn hyper() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let shared = records.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let records = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let records = records.clone();
                        async move {
                            let method = request.method().to_string();
                            let target = request
                                .uri()
                                .path_and_query()
                                .map_or_else(|| request.uri().to_string(), |p| p.to_string());
                            // A body that never completes is no request: nothing is recorded.
                            let Ok(body) = request.into_body().collect().await else {
                                let refused = Response::builder()
                                    .status(400)
                                    .body(Full::new(Bytes::from_static(b"incomplete body")))
                                    .unwrap();
                                return Ok::<_, Infallible>(refused);
                            };
                            let body = body.to_bytes().to_vec();
                            let seq = {
                                let mut records = records.lock().unwrap();
                                let seq = records.len() as u64 + 1;
                                records.push(Record {
                                    seq,
                                    method: method.clone(),
                                    target: target.clone(),
                                    body,
                                });
                                seq
                            };
                            let response = Response::builder()
                                .header("X-Seq", seq.to_string())
                                .body(Full::new(Bytes::from(format!("{seq} {method} {target}"))))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder::Hyper {
            address,
            records,
            task,
        }
    }

    /// A Python server of `kind`; `Err` says why it cannot run here (the harness has checked that
    /// its module is installed: see [`python_stdlib`], [`aiohttp`], [`gunicorn`]).
    pub fn python(kind: &'static str) -> Result<Self, String> {
        let module = match kind {
            "stdlib" => "http.server",
            other => other,
        };
        let probe = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .map_err(|e| format!("python3 cannot run: {e}"))?;
        if !probe.status.success() {
            return Err(format!(
                "python3 has no {module} (pip install {module}): {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("records.jsonl");
        std::fs::write(&log, "").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/recorder.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(kind)
            .arg(&port_file)
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3 cannot run: {e}"))?;
        let started = Instant::now();
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the {kind} recorder did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Listening is announced before the accept loop runs for some servers: wait until it answers.
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{kind} does not accept"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Recorder::Python {
            kind,
            address,
            child,
            log,
            _dir: dir,
        })
    }

    /// Which parser this is.
    pub fn name(&self) -> &'static str {
        match self {
            Recorder::Hyper { .. } => "hyper",
            Recorder::Python { kind, .. } => kind,
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        match self {
            Recorder::Hyper { address, .. } | Recorder::Python { address, .. } => *address,
        }
    }

    /// Every request it parsed so far, in order.
    pub fn records(&self) -> Vec<Record> {
        match self {
            Recorder::Hyper { records, .. } => records.lock().unwrap().clone(),
            Recorder::Python { log, .. } => std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .map(|v| Record {
                    seq: v["seq"].as_u64().unwrap_or(0),
                    method: v["method"].as_str().unwrap_or("").to_string(),
                    target: v["target"].as_str().unwrap_or("").to_string(),
                    body: hex(v["body"].as_str().unwrap_or("")),
                })
                .collect(),
        }
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

impl Drop for Recorder {
    fn drop(&mut self) {
        match self {
            Recorder::Hyper { task, .. } => task.abort(),
            Recorder::Python { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

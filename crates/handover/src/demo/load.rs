//! The demo's load generator, bounded in rate and time:
//! - keep-alive HTTP clients through the L7 listener, each sending a request every few milliseconds;
//!   every answer names the VM that served it, so the share of new requests per VM is measured;
//! - long-lived connections through the L4 listener, opened before the migration, each pinned to
//!   one VM for its whole life and asked for an answer every 250 ms: they show that a drain keeps
//!   existing connections working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The VMs of the demo, in order.
pub const VMS: [&str; 3] = ["vm-a", "vm-b", "vm-c"];

/// Counts per VM, per second and per phase label.
#[derive(Debug, Default)]
pub struct Tally {
    /// New requests answered, per second since start, per VM.
    pub per_second: Vec<[u64; 3]>,
    /// Requests answered per phase label, per VM.
    pub per_phase: Vec<(String, [u64; 3])>,
    /// Requests that failed (error or unexpected answer).
    pub failed: u64,
}

/// One long-lived L4 connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pinned {
    /// The VM it is pinned to (known after its first answer).
    pub vm: Option<usize>,
    /// Answers received.
    pub answers: u64,
    /// Answers received while vm-a was draining or migrating.
    pub answers_while_drained: u64,
    /// Requests that failed: a broken connection.
    pub failures: u64,
}

/// Shared state of the load generator.
#[derive(Debug)]
pub struct Load {
    start: Instant,
    /// Index into `phases` of the label new requests are counted under.
    phase: AtomicUsize,
    phases: Vec<String>,
    /// The counts.
    pub tally: Mutex<Tally>,
    /// Long-lived L4 connections.
    pub pinned: Mutex<Vec<Pinned>>,
}

impl Load {
    /// A load generator that labels its counts with these phase names.
    pub fn new(phases: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            phase: AtomicUsize::new(0),
            phases: phases.iter().map(|p| p.to_string()).collect(),
            tally: Mutex::new(Tally {
                per_phase: phases.iter().map(|p| (p.to_string(), [0; 3])).collect(),
                ..Tally::default()
            }),
            pinned: Mutex::new(Vec::new()),
        })
    }

    /// Whether requests are now counted under a drained phase label.
    fn drained_now(&self) -> bool {
        matches!(
            self.phases[self.phase.load(Ordering::Relaxed)].as_str(),
            "draining" | "migrating"
        )
    }

    /// Counts new requests under this phase label from now on.
    pub fn set_phase(&self, label: &str) {
        if let Some(i) = self.phases.iter().position(|p| p == label) {
            self.phase.store(i, Ordering::Relaxed);
        }
    }

    /// The label a request sent now is counted under.
    fn label_now(&self) -> usize {
        self.phase.load(Ordering::Relaxed)
    }

    fn record(&self, vm: Option<usize>, phase: usize) {
        let second = self.start.elapsed().as_secs() as usize;
        let mut tally = self.tally.lock();
        match vm {
            Some(vm) => {
                if tally.per_second.len() <= second {
                    tally.per_second.resize(second + 1, [0; 3]);
                }
                tally.per_second[second][vm] += 1;
                tally.per_phase[phase].1[vm] += 1;
            }
            None => tally.failed += 1,
        }
    }
}

fn vm_index(body: &[u8]) -> Option<usize> {
    let name = std::str::from_utf8(body).ok()?.trim();
    VMS.iter().position(|v| *v == name)
}

async fn open(address: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(address).await?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn ask(sender: &mut SendRequest<Empty<Bytes>>) -> Option<usize> {
    sender.ready().await.ok()?;
    let request = Request::get("/").header("host", "demo").body(Empty::new()).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    vm_index(&body)
}

/// One keep-alive L7 client: a request every `pause`, reconnecting if the connection breaks.
pub async fn http_client(load: Arc<Load>, address: SocketAddr, pause: Duration, cancel: CancellationToken) {
    let mut sender = None;
    while !cancel.is_cancelled() {
        if sender.is_none() {
            sender = open(address).await.ok();
        }
        // Labelled by the phase when the request is sent, not when it is answered.
        let label = load.label_now();
        let answer = match sender.as_mut() {
            Some(s) => ask(s).await,
            None => None,
        };
        if answer.is_none() {
            sender = None;
        }
        load.record(answer, label);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// One long-lived L4 connection: opened once, asked every 250 ms, closed by the client itself at
/// `close_at` (a session that ends), never reopened.
pub async fn pinned_client(
    load: Arc<Load>,
    address: SocketAddr,
    slot: usize,
    close_at: Instant,
    cancel: CancellationToken,
) {
    let Ok(mut sender) = open(address).await else {
        load.pinned.lock()[slot].failures += 1;
        return;
    };
    while !cancel.is_cancelled() && Instant::now() < close_at {
        let drained = load.drained_now();
        let answer = ask(&mut sender).await;
        {
            let mut pinned = load.pinned.lock();
            let entry = &mut pinned[slot];
            match answer {
                Some(vm) if entry.vm.is_none() || entry.vm == Some(vm) => {
                    entry.vm = Some(vm);
                    entry.answers += 1;
                    if drained {
                        entry.answers_while_drained += 1;
                    }
                }
                _ => entry.failures += 1,
            }
        }
        if answer.is_none() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

//! The steady mixed load: keep-alive HTTP clients, one new connection per request, and long-lived
//! TCP connections that echo a line every 250 ms, through node A, node B and the HAProxy.
//!
//! A request or connection through node B that fails while B is killed or frozen (and for two
//! seconds after it is back) is counted apart, as lost with its node: no balancer keeps a
//! connection through its own crash. Clients stay away from B while it is down, as a load
//! balancer's health check in front of it would make them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::backends::{SENT, VIA};
use crate::clock::Clock;

/// The balancers requests go through, by index.
pub const VIAS: [&str; 3] = ["a", "b", "haproxy"];
/// How long a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// After node B is back, failures through it are still taken for its fault this long.
const RECOVERY_GRACE_MS: u64 = 2000;

/// What the load saw.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered 200.
    pub requests: AtomicU64,
    /// Requests that failed (error, timeout or not 200), not through a node under a fault.
    pub failed: AtomicU64,
    /// Requests through node B that failed while B was killed or frozen.
    pub lost_with_node: AtomicU64,
    /// Long-lived connections opened.
    pub connections: AtomicU64,
    /// Long-lived connections that broke, not through a node under a fault.
    pub broken: AtomicU64,
    /// Long-lived connections through node B that broke while B was killed or frozen.
    pub broken_with_node: AtomicU64,
    /// Lines echoed over long-lived connections.
    pub echoes: AtomicU64,
}

/// Whether node B is under a fault (killed, restarting, frozen).
#[derive(Debug, Default)]
pub struct NodeFault {
    down: AtomicBool,
    back_at: AtomicU64,
}

impl NodeFault {
    /// B goes down now.
    pub fn begin(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// B is back.
    pub fn end(&self, clock: &Clock) {
        self.back_at.store(clock.ms(), Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
    }

    /// Whether a failure through B now is B's fault.
    pub fn covers(&self, clock: &Clock) -> bool {
        self.down.load(Ordering::SeqCst)
            || clock.ms() < self.back_at.load(Ordering::SeqCst) + RECOVERY_GRACE_MS
    }

    /// Whether B is down now.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

/// Everything a load task needs.
#[derive(Clone)]
pub struct Shared {
    /// The counters.
    pub counters: Arc<Counters>,
    /// Node B's fault.
    pub fault: Arc<NodeFault>,
    /// The clock.
    pub clock: Clock,
    /// Set when the load must end.
    pub stop: Arc<AtomicBool>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn waits_for(&self, via: usize) -> bool {
        via == 1 && self.fault.is_down()
    }

    fn request_failed(&self, via: usize) {
        if via == 1 && self.fault.covers(&self.clock) {
            self.counters.lost_with_node.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn connection_broke(&self, via: usize) {
        if via == 1 && self.fault.covers(&self.clock) {
            self.counters.broken_with_node.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.broken.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn request(shared: &Shared, via: usize, close: bool) -> http::Request<Empty<Bytes>> {
    let mut builder = http::Request::get("/")
        .header("host", "soak")
        .header(SENT, shared.clock.ms().to_string())
        .header(VIA, VIAS[via]);
    if close {
        builder = builder.header("connection", "close");
    }
    builder.body(Empty::new()).expect("a valid request")
}

/// Sends one request on a connection; `Some(true)` when answered 200.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    request: http::Request<Empty<Bytes>>,
) -> Option<bool> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, async {
        sender.ready().await.ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        response.into_body().collect().await.ok()?;
        Some(status == http::StatusCode::OK)
    })
    .await;
    response.ok().flatten()
}

async fn connect_http(address: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(address))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// A keep-alive client: a request every `pause` on one connection, a new connection after an error.
pub async fn keep_alive(shared: Shared, via: usize, address: SocketAddr, pause: Duration) {
    while !shared.stopped() {
        if shared.waits_for(via) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Some(mut sender) = connect_http(address).await else {
            shared.request_failed(via);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !shared.stopped() && !shared.waits_for(via) {
            match exchange(&mut sender, request(&shared, via, false)).await {
                Some(true) => {
                    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
                }
                Some(false) => {
                    shared.request_failed(via);
                }
                None => {
                    shared.request_failed(via);
                    break;
                }
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// A new connection per request, `rate` per second.
pub async fn new_connections(shared: Shared, via: usize, address: SocketAddr, rate: f64) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stopped() {
        ticks.tick().await;
        if shared.waits_for(via) {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            // Stamped before the connect: a balancer in front of TCP picks the backend then.
            let request = request(&shared, via, true);
            let answered = match connect_http(address).await {
                Some(mut sender) => exchange(&mut sender, request).await,
                None => None,
            };
            if answered == Some(true) {
                shared.counters.requests.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.request_failed(via);
            }
        });
    }
}

/// A long-lived TCP connection echoing a line every 250 ms; a new one after it breaks.
pub async fn long_lived(shared: Shared, via: usize, address: SocketAddr) {
    while !shared.stopped() {
        if shared.waits_for(via) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Ok(Ok(stream)) = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(address)).await else {
            shared.connection_broke(via);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(REQUEST_TIMEOUT, lines.next_line()).await;
        if !matches!(greeting, Ok(Ok(Some(_)))) {
            shared.connection_broke(via);
            continue;
        }
        let mut n = 0u64;
        loop {
            if shared.stopped() {
                let _ = write.shutdown().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            n += 1;
            let line = format!("ping {n}");
            let echoed = tokio::time::timeout(REQUEST_TIMEOUT, async {
                write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
                lines.next_line().await.ok()?
            })
            .await;
            match echoed {
                Ok(Some(answer)) if answer == line => {
                    shared.counters.echoes.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    shared.connection_broke(via);
                    break;
                }
            }
        }
    }
}

/// Opens `n` idle connections to `address` and holds them for `hold`: the data plane's
/// descriptor budget runs out, new clients wait in the listen queue.
pub async fn flood(address: SocketAddr, n: usize, hold: Duration) -> usize {
    let connects = (0..n).map(|_| async move {
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
            .await
            .ok()
            .and_then(Result::ok)
    });
    let held: Vec<TcpStream> = join_spawned(connects).await.into_iter().flatten().collect();
    let opened = held.len();
    tokio::time::sleep(hold).await;
    drop(held);
    opened
}

/// Runs every future on its own task; the outputs of those that finished.
async fn join_spawned<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

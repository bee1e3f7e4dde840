//! The soak's VMs: for each, an HTTP backend that records every request it gets (which VM, when
//! the client sent it, through which balancer) and a line-echo TCP backend for long-lived
//! connections. Both run in the soak's own process, on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::clock::Clock;

/// Header with the client's send time (ms on the soak's clock).
pub const SENT: &str = "x-soak-sent";
/// Header naming the balancer the request went through (`a`, `b`, `haproxy`).
pub const VIA: &str = "x-soak-via";

/// One request as a backend saw it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The VM's index.
    pub vm: usize,
    /// When the client sent it.
    pub sent_ms: u64,
    /// When it reached the backend.
    pub arrived_ms: u64,
    /// Through which balancer (index into [`crate::load::VIAS`]).
    pub via: usize,
}

/// Every request every backend saw.
pub type Journal = Arc<Mutex<Vec<Seen>>>;

/// The backends of every VM.
pub struct Backends {
    /// HTTP backend of each VM.
    pub http: Vec<SocketAddr>,
    /// Echo backend of each VM.
    pub tcp: Vec<SocketAddr>,
    /// What the HTTP backends saw.
    pub journal: Journal,
}

/// Starts `vms` HTTP and echo backends.
pub async fn start(vms: usize, clock: Clock) -> anyhow::Result<Backends> {
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    for vm in 0..vms {
        http.push(http_backend(vm, journal.clone(), clock).await?);
        tcp.push(echo_backend(vm).await?);
    }
    Ok(Backends { http, tcp, journal })
}

async fn http_backend(vm: usize, journal: Journal, clock: Clock) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let journal = journal.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let journal = journal.clone();
                    async move {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let sent_ms = header(SENT)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or_else(|| clock.ms());
                        let via = header(VIA)
                            .and_then(|v| crate::load::VIAS.iter().position(|name| *name == v))
                            .unwrap_or(0);
                        journal.lock().push(Seen {
                            vm,
                            sent_ms,
                            arrived_ms: clock.ms(),
                            via,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("vm-{vm:02}\n")))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

async fn echo_backend(vm: usize) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                if write.write_all(format!("vm-{vm:02}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(address)
}

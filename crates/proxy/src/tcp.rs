//! The L4 listener: one backend per client connection, chosen from the pool's snapshot; a failed
//! connect is retried on another backend. A migration notice never touches an established
//! connection: it only changes where the *next* connection goes — unless the pool opts in to
//! `drain.long_lived`, which closes the VM's connections that long after its drain began.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::accept::accept_loop;
use crate::access_log::{AccessLog, Entry};
use crate::backend::Traffic;
use crate::descriptors::{self, CONNECT_EXHAUSTED};
use crate::pools::Pool;
use crate::random;
use crate::relay::relay;

/// Settings of one L4 listener.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    /// Listener name (logs).
    pub listener: String,
    /// The pool it routes to.
    pub pool: Arc<Pool>,
    /// Close connections idle this long.
    pub idle_timeout: Option<Duration>,
    /// One line per connection, if configured.
    pub access_log: Option<AccessLog>,
}

/// Accepts connections until cancelled; each is relayed on its own task.
pub async fn serve(
    listener: TcpListener,
    route: Arc<TcpRoute>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let name = route.listener.clone();
    accept_loop(listener, &name, true, cancel, tasks, move |client, peer| {
        let route = route.clone();
        async move { handle(client, peer, &route).await }
    })
    .await;
}

async fn handle(mut client: TcpStream, peer: SocketAddr, route: &TcpRoute) {
    let pool = &route.pool;
    let started = Instant::now();
    let attempts = pool.snapshot().config.retries as usize + 1;
    let mut tried: Vec<usize> = Vec::with_capacity(attempts);
    let mut last_error = None;
    for _ in 0..attempts {
        let (entry, guard) = {
            let snapshot = pool.snapshot();
            let Some(index) = snapshot.pick(random::next_u64(), &tried) else {
                break;
            };
            let entry = snapshot.entries[index].clone();
            let guard = entry
                .backend
                .track(peer, entry.address, Traffic::Tcp, Instant::now());
            (entry, guard)
        };
        let connect = connect(entry.address, pool.snapshot().config.connect_timeout).await;
        match connect {
            Ok(Ok(mut upstream)) => {
                pool.record_traffic(&entry.backend, true);
                let connected = started.elapsed();
                let _ = upstream.set_nodelay(true);
                // The pool's long-lived policy may close the connection (a TCP close is all L4
                // has) once its VM has drained for long enough.
                let closing = entry.backend.long_lived_closed();
                let relayed = tokio::select! {
                    relayed = relay(&mut client, &mut upstream, route.idle_timeout) => relayed,
                    _ = closing => {
                        debug!(listener = %route.listener, backend = %entry.address, client = %peer, "closing a connection: its VM drains and the pool closes long-lived work");
                        Err(std::io::Error::other("closed by the pool's long-lived policy: the VM drains"))
                    }
                };
                if let Err(e) = &relayed {
                    debug!(listener = %route.listener, backend = %entry.address, error = %e, "connection ended with an error");
                }
                drop(guard);
                if let Some(log) = &route.access_log {
                    let (counts, error) = match relayed {
                        Ok(counts) => (counts, None),
                        Err(e) => (Default::default(), Some(e.to_string())),
                    };
                    log.record(Entry {
                        time: SystemTime::now(),
                        client: peer,
                        protocol: "tcp",
                        request: None,
                        status: None,
                        backend: Some((entry.backend.clone(), entry.address)),
                        phase: Some(entry.phase),
                        bytes_in: counts.upstream,
                        bytes_out: counts.downstream,
                        ttfb: Some(connected),
                        total: started.elapsed(),
                        error,
                    });
                }
                return;
            }
            Ok(Err(e)) if descriptors::is_exhaustion(&e) => {
                // handover's own shortage: not the backend's fault, and no other backend would do
                // better now.
                if let Some(suppressed) = CONNECT_EXHAUSTED.ready() {
                    warn!(listener = %route.listener, error = %e, suppressed, "out of descriptors for a backend connection; closing the client connection (not counted against the backend)");
                }
                return;
            }
            Ok(Err(e)) => {
                entry.backend.record_failure();
                pool.record_traffic(&entry.backend, false);
                warn!(listener = %route.listener, backend = %entry.address, error = %e, "connect failed; trying another backend");
                last_error = Some(e.to_string());
            }
            Err(_) => {
                entry.backend.record_failure();
                pool.record_traffic(&entry.backend, false);
                warn!(listener = %route.listener, backend = %entry.address, "connect timed out; trying another backend");
                last_error = Some("connect timed out".to_string());
            }
        }
        drop(guard);
        tried.push(entry.index);
    }
    warn!(listener = %route.listener, client = %peer, tried = tried.len(), "no backend could take the connection; closing it");
    if let Some(log) = &route.access_log {
        log.record(Entry {
            time: SystemTime::now(),
            client: peer,
            protocol: "tcp",
            request: None,
            status: None,
            backend: None,
            phase: None,
            bytes_in: 0,
            bytes_out: 0,
            ttfb: None,
            total: started.elapsed(),
            error: Some(match last_error {
                Some(e) => format!("no backend could take the connection (last: {e})"),
                None => "no backend could take the connection".into(),
            }),
        });
    }
}

/// Connects within `timeout`. Running out of descriptors is waited out (10 ms, doubling) within
/// the same timeout: a connection that ends elsewhere frees one.
async fn connect(address: SocketAddr, timeout: Duration) -> Result<std::io::Result<TcpStream>, ()> {
    let deadline = Instant::now() + timeout;
    let attempt = async {
        let mut pause = Duration::from_millis(10);
        loop {
            match descriptors::connect(address).await {
                Err(e) if descriptors::is_exhaustion(&e) => {
                    // Still short when the time is up: say so, rather than a backend timeout.
                    if Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => Ok(result),
        Err(_) => Err(()),
    }
}

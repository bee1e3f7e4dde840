//! The L4 listener: one backend per client connection, chosen from the pool's snapshot; a failed
//! connect is retried on another backend. A migration notice never touches an established
//! connection: it only changes where the *next* connection goes — unless the pool opts in to
//! `drain.long_lived`, which closes the VM's connections that long after its drain began.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::accept::accept_loop;
use crate::backend::Traffic;
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
    let attempts = pool.config.retries as usize + 1;
    let mut tried: Vec<usize> = Vec::with_capacity(attempts);
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
        let connect =
            tokio::time::timeout(pool.config.connect_timeout, TcpStream::connect(entry.address)).await;
        match connect {
            Ok(Ok(mut upstream)) => {
                pool.record_traffic(entry.backend.index, true);
                let _ = upstream.set_nodelay(true);
                // The pool's long-lived policy may close the connection (a TCP close is all L4
                // has) once its VM has drained for long enough.
                let closing = entry.backend.long_lived_closed();
                tokio::select! {
                    relayed = relay(&mut client, &mut upstream, route.idle_timeout) => {
                        if let Err(e) = relayed {
                            debug!(listener = %route.listener, backend = %entry.address, error = %e, "connection ended with an error");
                        }
                    }
                    _ = closing => {
                        debug!(listener = %route.listener, backend = %entry.address, client = %peer, "closing a connection: its VM drains and the pool closes long-lived work");
                    }
                }
                drop(guard);
                return;
            }
            Ok(Err(e)) => {
                entry.backend.record_failure();
                pool.record_traffic(entry.backend.index, false);
                warn!(listener = %route.listener, backend = %entry.address, error = %e, "connect failed; trying another backend");
            }
            Err(_) => {
                entry.backend.record_failure();
                pool.record_traffic(entry.backend.index, false);
                warn!(listener = %route.listener, backend = %entry.address, "connect timed out; trying another backend");
            }
        }
        drop(guard);
        tried.push(entry.backend.index);
    }
    warn!(listener = %route.listener, client = %peer, tried = tried.len(), "no backend could take the connection; closing it");
}

//! The accept loop both listeners share: every accepted connection is handed to `handle` on its own
//! tracked task, until cancelled. A connection holds a permit of the data plane's descriptor budget
//! ([`descriptors`](crate::descriptors)) for its whole life: with the budget spent, the loop stops
//! accepting until a connection ends. Running out of descriptors anyway (`EMFILE`...) backs off
//! from 10 ms doubling to 1 s, logged once per interval; other accept errors back off briefly
//! instead of spinning. `TCP_NODELAY` is set here only when asked: the HTTP listener sets it
//! itself, and only on connections that carry more than one write.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::descriptors::{self, ACCEPT_EXHAUSTED};

/// First pause after running out of descriptors on accept.
const EXHAUSTED_FIRST: Duration = Duration::from_millis(10);
/// Longest pause after running out of descriptors on accept.
const EXHAUSTED_MAX: Duration = Duration::from_secs(1);

/// Accepts until `cancel` fires; `handle` serves one connection.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &str,
    nodelay: bool,
    cancel: CancellationToken,
    tasks: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = EXHAUSTED_FIRST;
    loop {
        let permit = tokio::select! {
            permit = descriptors::budget().acquire() => permit,
            _ = cancel.cancelled() => return,
        };
        // The control API is waiting for a descriptor: leave the next one to it.
        let accepted = if descriptors::control_plane_waiting() {
            Err(descriptors::deferred())
        } else {
            tokio::select! {
                accepted = listener.accept() => accepted,
                _ = cancel.cancelled() => return,
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = EXHAUSTED_FIRST;
                if nodelay {
                    let _ = stream.set_nodelay(true);
                }
                let serve = handle(stream, peer);
                tasks.spawn(async move {
                    let _permit = permit;
                    serve.await
                });
            }
            Err(e) if descriptors::is_exhaustion(&e) => {
                drop(permit);
                if let Some(suppressed) = ACCEPT_EXHAUSTED.ready() {
                    warn!(listener = %name, error = %e, suppressed, "out of descriptors: accepting backs off (handover's own limit, not a backend's fault)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = cancel.cancelled() => return,
                }
                pause = (pause * 2).min(EXHAUSTED_MAX);
            }
            Err(e) => {
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

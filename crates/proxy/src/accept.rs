//! The accept loop both listeners share: every accepted connection is handed to `handle` on its own
//! tracked task, until cancelled. Accept errors (out of file descriptors and the like) back off
//! briefly instead of spinning. `TCP_NODELAY` is set here only when asked: the HTTP listener sets
//! it itself, and only on connections that carry more than one write.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if nodelay {
                    let _ = stream.set_nodelay(true);
                }
                tasks.spawn(handle(stream, peer));
            }
            Err(e) => {
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

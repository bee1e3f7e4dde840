//! The control API's listener. It keeps a few descriptors in reserve (open on `/dev/null`): when
//! handover runs out of descriptors, one is given up so that the API can still accept a
//! connection, and the reserve is refilled when descriptors are free again. So `/healthz`, a
//! status and a notice still get through while the data plane is at its limit (which its own
//! budget keeps it from reaching, except through what the budget does not count). While the API
//! waits for a descriptor the data plane opens none ([`ControlFirst`]), so a backend connect
//! retried in a loop cannot take the one freed for the API.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use handover_proxy::descriptors::{self, ControlFirst, Throttle};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Descriptors kept for the API's own accepts.
const RESERVE: usize = 8;

/// The longest the API holds the data plane back ([`ControlFirst`]) for one accept.
const CLAIM_FOR_AT_MOST: Duration = Duration::from_millis(200);

/// The control API's listening socket and its reserve.
#[derive(Debug)]
pub struct ControlListener {
    inner: TcpListener,
    reserve: Vec<std::fs::File>,
    exhausted: Throttle,
}

impl ControlListener {
    /// Wraps the bound socket and fills the reserve.
    pub fn new(inner: TcpListener) -> Self {
        let mut listener = Self {
            inner,
            reserve: Vec::with_capacity(RESERVE),
            exhausted: Throttle::default(),
        };
        listener.refill();
        listener
    }

    fn refill(&mut self) {
        while self.reserve.len() < RESERVE {
            match std::fs::File::open("/dev/null") {
                Ok(file) => self.reserve.push(file),
                Err(_) => break,
            }
        }
    }
}

impl axum::serve::Listener for ControlListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        self.refill();
        loop {
            match self.inner.accept().await {
                Ok(accepted) => return accepted,
                Err(e) if descriptors::is_exhaustion(&e) => {
                    // The data plane opens nothing while this is held, so the descriptor given up
                    // here (or the next one a connection's end frees) is the API's.
                    let first = ControlFirst::claim();
                    let used_reserve = self.reserve.pop().is_some();
                    if let Some(suppressed) = self.exhausted.ready() {
                        warn!(error = %e, used_reserve, suppressed, "control API: out of descriptors");
                    }
                    if !used_reserve {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    // Bounded, so that a client that gave up does not hold the data plane back.
                    if let Ok(Ok(accepted)) =
                        tokio::time::timeout(CLAIM_FOR_AT_MOST, self.inner.accept()).await
                    {
                        return accepted;
                    }
                    drop(first);
                }
                // The client gave up before it was accepted: nothing to do.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    warn!(error = %e, "control API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

//! Upstream HTTP/1.1 connections: connect with a timeout, and keep idle keep-alive connections per
//! backend for reuse (newest first). A connection whose peer closed it is dropped on checkout.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

/// The sending half of an upstream connection; requests are forwarded with the client's body.
pub type UpstreamSender = SendRequest<Incoming>;

/// At most this many idle connections are kept per backend.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// An idle connection older than this is not reused (backends close idle keep-alive connections).
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// Why a connection to a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not finish in time.
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    /// The TCP connect failed.
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

#[derive(Debug)]
struct IdleConnection {
    address: SocketAddr,
    sender: UpstreamSender,
    since: Instant,
}

/// Idle keep-alive connections of one backend.
#[derive(Debug, Default)]
pub struct IdleConnections {
    idle: Mutex<Vec<IdleConnection>>,
}

impl IdleConnections {
    /// Takes the newest usable idle connection to `address`.
    pub fn take(&self, address: SocketAddr) -> Option<UpstreamSender> {
        let mut idle = self.idle.lock();
        while let Some(conn) = idle.pop() {
            if conn.address == address && !conn.sender.is_closed() && conn.since.elapsed() < MAX_IDLE_AGE {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection after its response was fully read.
    pub fn put(&self, address: SocketAddr, sender: UpstreamSender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(IdleConnection {
                address,
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection (they close when dropped).
    pub fn clear(&self) {
        self.idle.lock().clear();
    }

    /// Number of idle connections.
    pub fn len(&self) -> usize {
        self.idle.lock().len()
    }

    /// Whether there is no idle connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens a new upstream HTTP/1.1 connection.
pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<UpstreamSender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectError::Io(address, e)),
        Err(_) => return Err(ConnectError::Timeout(address, timeout)),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(address, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(%address, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

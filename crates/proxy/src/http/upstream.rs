//! Upstream HTTP/1.1 connections: opened with a timeout, and kept idle for reuse per worker thread
//! and per backend, newest first. A connection is registered with its worker's event loop, so it
//! is only ever reused by that worker: the idle lists are thread-local and need no lock.
//!
//! An idle connection is not reused when its backend retired idle connections (a drain that keeps
//! only requests in flight, a VM that moved), when it is older than [`MAX_IDLE_AGE`], or when its
//! peer closed it or sent something unasked (seen from the socket's readiness, without a system
//! call in the common case). A sweep per worker closes such connections even if nobody asks.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend::BackendRuntime;
use crate::pools::Pool;
use crate::snapshot::BackendEntry;

/// At most this many idle connections are kept per backend and worker.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// An idle connection older than this is not reused (backends close idle keep-alive connections).
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// Why a connection to a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not finish in time.
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    /// The TCP connect failed.
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, io::Error),
}

/// A connection to a backend, owned by one exchange at a time.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Where it goes.
    pub address: SocketAddr,
    /// Came from the idle list (its peer may have closed it just before the request was sent).
    pub reused: bool,
    /// The backend's idle generation when it was opened.
    generation: u64,
}

struct Idle {
    upstream: Upstream,
    since: Instant,
}

thread_local! {
    /// This worker's idle connections, by backend uid.
    static IDLE: RefCell<Vec<Vec<Idle>>> = const { RefCell::new(Vec::new()) };
}

/// Whether the peer closed the connection or sent bytes nobody asked for. Readiness is checked
/// first; a read is only tried when the socket reports readable.
fn peer_spoke(stream: &TcpStream) -> bool {
    let mut context = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut context) {
        Poll::Pending => false,
        Poll::Ready(Err(_)) => true,
        // Readable is also what a fully read response can leave behind: one read tells.
        Poll::Ready(Ok(())) => {
            !matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

impl Idle {
    fn usable(&self, backend: &BackendRuntime, address: SocketAddr, now: Instant) -> bool {
        self.upstream.address == address
            && self.upstream.generation == backend.idle_generation()
            && now.saturating_duration_since(self.since) < MAX_IDLE_AGE
            && !peer_spoke(&self.upstream.stream)
    }
}

/// The newest usable idle connection to `address`, if this worker has one.
pub fn checkout(backend: &BackendRuntime, address: SocketAddr, now: Instant) -> Option<Upstream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(backend.uid)?;
        while let Some(candidate) = list.pop() {
            if candidate.usable(backend, address, now) {
                let mut upstream = candidate.upstream;
                upstream.reused = true;
                return Some(upstream);
            }
        }
        None
    })
}

/// Keeps a connection whose response was read completely, for the next request.
pub fn checkin(backend: &BackendRuntime, upstream: Upstream, now: Instant) {
    if upstream.generation != backend.idle_generation() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if idle.len() <= backend.uid {
            idle.resize_with(backend.uid + 1, Vec::new);
        }
        let list = &mut idle[backend.uid];
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { upstream, since: now });
        }
    });
}

/// A connection to `entry`'s backend for one request: an idle one of this worker's unless
/// `fresh_only`, else a new one. A connect that fails counts against the backend (its failures and
/// the pool's traffic record) and is returned for the caller to try another backend.
pub async fn obtain(
    pool: &Pool,
    entry: &BackendEntry,
    fresh_only: bool,
    now: Instant,
) -> Result<Upstream, ConnectError> {
    if !fresh_only && let Some(upstream) = checkout(&entry.backend, entry.address, now) {
        return Ok(upstream);
    }
    connect(
        &entry.backend,
        entry.address,
        pool.snapshot().config.connect_timeout,
    )
    .await
    .inspect_err(|_| {
        entry.backend.record_failure();
        pool.record_traffic(&entry.backend, false);
    })
}

/// Opens a new connection.
pub async fn connect(
    backend: &BackendRuntime,
    address: SocketAddr,
    timeout: Duration,
) -> Result<Upstream, ConnectError> {
    let generation = backend.idle_generation();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectError::Io(address, e)),
        Err(_) => return Err(ConnectError::Timeout(address, timeout)),
    };
    // Requests go out in one write when they can; a body streamed in pieces must not wait for
    // acknowledgements (Nagle).
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        stream,
        address,
        reused: false,
        generation,
    })
}

/// Closes this worker's idle connections that can no longer be reused (too old, closed by their
/// peer). Those of retired generations go at their next checkout or here, whichever is first;
/// `generation_of` gives a backend's current generation by uid.
pub fn sweep(now: Instant, generation_of: impl Fn(usize) -> Option<u64>) -> usize {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let mut closed = 0;
        for (uid, list) in idle.iter_mut().enumerate() {
            let before = list.len();
            let generation = generation_of(uid);
            list.retain(|entry| {
                Some(entry.upstream.generation) == generation
                    && now.saturating_duration_since(entry.since) < MAX_IDLE_AGE
                    && !peer_spoke(&entry.upstream.stream)
            });
            closed += before - list.len();
        }
        closed
    })
}

/// Number of idle connections this worker keeps to a backend.
pub fn idle_count(backend: &BackendRuntime) -> usize {
    IDLE.with(|idle| idle.borrow().get(backend.uid).map_or(0, Vec::len))
}

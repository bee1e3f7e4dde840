//! Upstream HTTP/1.1 connections: opened with a timeout (and a TLS handshake where the pool asks
//! for it: the session is kept with the connection), and kept idle for reuse per worker thread
//! and per backend, newest first. A connection is registered with its worker's event loop, so it
//! is only ever reused by that worker: the idle lists are thread-local and need no lock.
//!
//! An idle connection is not reused when its backend retired idle connections (a drain that keeps
//! only requests in flight, a VM that moved), when it is older than [`MAX_IDLE_AGE`], or when its
//! peer closed it or sent something unasked (seen from the socket's readiness, without a system
//! call in the common case). A sweep per worker closes such connections even if nobody asks.
//!
//! [`ConnectError`] says why a connection could not be opened (to HTTP/2 backends too:
//! `h2::to_h2`), and [`ConnectError::record`] is what every path does with it before trying
//! another backend.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::backend_stream::BackendStream;
use crate::backend::BackendRuntime;
use crate::pools::Pool;
use crate::snapshot::BackendEntry;
use crate::tls::upstream::UpstreamTls;

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
    /// The TLS handshake failed (an unverified certificate, a backend that does not speak TLS).
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, io::Error),
    /// The HTTP/2 handshake failed (pools with `protocol = "h2"`).
    #[error("HTTP/2 handshake with {0} failed: {1}")]
    Http2(SocketAddr, hyper::Error),
}

impl ConnectError {
    /// Whether the connect failed because handover is out of descriptors or memory (`EMFILE`,
    /// `ENFILE`, ...): handover's problem, never the backend's.
    pub fn is_exhaustion(&self) -> bool {
        matches!(self, Self::Io(_, io) if crate::descriptors::is_exhaustion(io))
    }

    /// Records a failed connect to `entry`'s backend before the request tries another one, the
    /// same way on every path (HTTP/1.1 or HTTP/2 clients, HTTP/1.1 or HTTP/2 backends):
    /// handover's own shortage ([`Self::is_exhaustion`]) is not counted against the backend and is
    /// logged at most once per interval; any other failure counts against the backend (its
    /// failures and the pool's traffic record) and is logged. Returns the text the "no backend
    /// could be reached" line names as the last error, should no backend be reached.
    pub fn record(&self, listener: &str, pool: &Pool, entry: &BackendEntry) -> String {
        if self.is_exhaustion() {
            if let Some(suppressed) = crate::descriptors::CONNECT_EXHAUSTED.ready() {
                warn!(listener = %listener, error = %self, suppressed, "out of descriptors for a backend connection (not counted against the backend)");
            }
            return format!("handover is out of descriptors ({self})");
        }
        entry.backend.record_failure();
        pool.record_traffic(&entry.backend, false);
        warn!(listener = %listener, backend = %entry.address, error = %self, "trying another backend");
        self.to_string()
    }
}

/// A connection to a backend, owned by one exchange at a time.
#[derive(Debug)]
pub struct Upstream {
    /// The socket, or the TLS session over it.
    pub stream: BackendStream,
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

impl Idle {
    fn usable(&mut self, backend: &BackendRuntime, address: SocketAddr, tls: bool, now: Instant) -> bool {
        self.upstream.address == address
            && self.upstream.generation == backend.idle_generation()
            && self.upstream.stream.is_tls() == tls
            && now.saturating_duration_since(self.since) < MAX_IDLE_AGE
            && !self.upstream.stream.peer_spoke()
    }
}

/// The newest usable idle connection to `address` (TLS or not, as asked), if this worker has one.
pub fn checkout(backend: &BackendRuntime, address: SocketAddr, tls: bool, now: Instant) -> Option<Upstream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(backend.uid)?;
        while let Some(mut candidate) = list.pop() {
            if candidate.usable(backend, address, tls, now) {
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

/// A connection to `entry`'s backend for one request (over TLS with `tls`): an idle one of this
/// worker's unless `fresh_only`, else a new one. A connect or handshake that fails is returned
/// uncounted: the caller records it ([`ConnectError::record`]) and tries another backend.
pub async fn obtain(
    pool: &Pool,
    entry: &BackendEntry,
    tls: Option<&UpstreamTls>,
    fresh_only: bool,
    now: Instant,
) -> Result<Upstream, ConnectError> {
    if !fresh_only && let Some(upstream) = checkout(&entry.backend, entry.address, tls.is_some(), now) {
        return Ok(upstream);
    }
    connect(
        &entry.backend,
        entry.address,
        pool.snapshot().config.connect_timeout,
        tls,
    )
    .await
}

/// Opens a new connection; with `tls`, the handshake is done too, within the same `timeout`.
pub async fn connect(
    backend: &BackendRuntime,
    address: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<Upstream, ConnectError> {
    let generation = backend.idle_generation();
    let deadline = Instant::now() + timeout;
    let tcp = match tokio::time::timeout_at(deadline, crate::descriptors::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectError::Io(address, e)),
        Err(_) => return Err(ConnectError::Timeout(address, timeout)),
    };
    // Requests go out in one write when they can; a body streamed in pieces must not wait for
    // acknowledgements (Nagle).
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        None => BackendStream::Plain(tcp),
        Some(tls) => match tokio::time::timeout_at(deadline, tls.connect(address, tcp)).await {
            Ok(Ok(session)) => BackendStream::Tls(Box::new(session)),
            Ok(Err(e)) => return Err(ConnectError::Tls(address, e)),
            Err(_) => return Err(ConnectError::Timeout(address, timeout)),
        },
    };
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
            list.retain_mut(|entry| {
                Some(entry.upstream.generation) == generation
                    && now.saturating_duration_since(entry.since) < MAX_IDLE_AGE
                    && !entry.upstream.stream.peer_spoke()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every L7 path records a failed connect through [`ConnectError::record`]: handover's own
    /// shortage of descriptors leaves the backend's record untouched, a refused connect counts.
    #[test]
    fn a_connect_failed_for_want_of_descriptors_is_not_counted_against_the_backend_and_others_are() {
        let config = handover_core::config::parse(
            "[control]\nbind = \"127.0.0.1:0\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"v\"\n",
        )
        .unwrap();
        let pool = crate::pools::Pools::new(&config).pool("p").unwrap();
        let entry = pool.snapshot().entries[0].clone();
        let failures = || entry.backend.totals().2;

        let exhausted = ConnectError::Io(entry.address, io::Error::from_raw_os_error(24 /* EMFILE */));
        let why = exhausted.record("web", &pool, &entry);
        assert!(why.starts_with("handover is out of descriptors ("), "{why}");
        assert_eq!(failures(), 0);
        assert!(!entry.backend.is_failing());

        let refused = ConnectError::Io(entry.address, io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(!refused.is_exhaustion());
        assert_eq!(refused.record("web", &pool, &entry), refused.to_string());
        assert_eq!(failures(), 1);
        assert!(entry.backend.is_failing());

        let timed_out = ConnectError::Timeout(entry.address, Duration::from_millis(500));
        assert!(!timed_out.is_exhaustion());
        timed_out.record("web", &pool, &entry);
        assert_eq!(failures(), 2);
    }
}

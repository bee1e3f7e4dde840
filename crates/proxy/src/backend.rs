//! Live state of one backend that outlives every pool snapshot: counters read by the selection
//! algorithms, the list of connections and requests still open to it (to say which remain when a
//! drain times out), and the generation its idle upstream HTTP connections must carry.
//!
//! Its identity is its configured address and VM in its pool; its current address (after a move)
//! lives in snapshots, its weight here (a reload may change it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use handover_core::api::ConnectionReport;
use handover_core::model::VmId;
use parking_lot::Mutex;
use slab::Slab;
use tokio::time::Instant;

/// What is open to a backend.
#[derive(Debug, Clone)]
pub enum Traffic {
    /// An L4 connection.
    Tcp,
    /// An L7 request in flight (HTTP/1.1, or an HTTP/2 stream).
    Http(RequestLine),
    /// A WebSocket tunnel, from the request that opened it.
    WebSocket(RequestLine),
}

/// Method and target of a request, kept inline (no allocation per request) and cut at
/// [`RequestLine::MAX`] bytes: enough to tell an operator which request a drain waits for.
#[derive(Clone, Copy)]
pub struct RequestLine {
    bytes: [u8; RequestLine::MAX],
    len: u8,
}

impl RequestLine {
    /// Longest line kept.
    pub const MAX: usize = 96;

    /// `METHOD target`, cut to [`RequestLine::MAX`] bytes (the cut is marked with `...`).
    pub fn new(method: &str, target: &str) -> Self {
        let mut line = Self {
            bytes: [0; Self::MAX],
            len: 0,
        };
        for part in [method.as_bytes(), b" ", target.as_bytes()] {
            let room = Self::MAX - line.len as usize;
            let take = part.len().min(room);
            line.bytes[line.len as usize..line.len as usize + take].copy_from_slice(&part[..take]);
            line.len += take as u8;
            if take < part.len() {
                line.bytes[Self::MAX - 3..].copy_from_slice(b"...");
                break;
            }
        }
        line
    }

    /// The text (lossy: a target cut inside a UTF-8 sequence shows a replacement character).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.len as usize]).into_owned()
    }
}

impl std::fmt::Debug for RequestLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

#[derive(Debug)]
struct OpenItem {
    client: SocketAddr,
    address: SocketAddr,
    traffic: Traffic,
    since: Instant,
}

/// Live state of one backend.
#[derive(Debug)]
pub struct BackendRuntime {
    /// Pool name.
    pub pool: String,
    /// Its address in the configuration (a migration may move it; see the snapshot's address).
    pub configured: SocketAddr,
    /// The VM behind it.
    pub vm: VmId,
    /// Configured weight (a reload may change it).
    weight: AtomicU32,
    /// Unique in the process: indexes per-worker state kept for this backend (idle connections).
    pub uid: usize,
    /// Open L4 connections plus in-flight L7 requests.
    active: AtomicU64,
    /// L4 connections established in total.
    connections_total: AtomicU64,
    /// L7 requests sent in total.
    requests_total: AtomicU64,
    /// Connect failures and upstream errors in total.
    failures_total: AtomicU64,
    /// Peak-EWMA of response-header latency, nanoseconds.
    latency_ns: AtomicU64,
    /// The last traffic to it failed (a success must then reset the pool's failure streak).
    failing: AtomicBool,
    /// Failures tolerated because the VM was migrating.
    suppressed_total: AtomicU64,
    /// What is open now (a slab: insert and remove are O(1) and allocation-free once warm).
    open: Mutex<Slab<OpenItem>>,
    /// Bumped to retire every idle upstream HTTP connection (they live per worker thread, so the
    /// control plane cannot close them itself; each worker drops those of an older generation).
    idle_generation: AtomicU64,
    /// Wakes long-lived work (tunnels, L4 connections) that must close: the pool's
    /// `drain.long_lived` policy says the VM's time is up.
    long_lived: tokio::sync::Notify,
}

/// Source of [`BackendRuntime::uid`].
static NEXT_UID: AtomicUsize = AtomicUsize::new(0);

impl BackendRuntime {
    /// A backend with no traffic yet.
    pub fn new(pool: &str, configured: SocketAddr, vm: VmId, weight: u32) -> Self {
        Self {
            pool: pool.to_string(),
            configured,
            vm,
            weight: AtomicU32::new(weight),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            active: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            suppressed_total: AtomicU64::new(0),
            open: Mutex::new(Slab::new()),
            idle_generation: AtomicU64::new(0),
            long_lived: tokio::sync::Notify::new(),
        }
    }

    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the configured weight (a reload; the pool then publishes a new snapshot).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// Open L4 connections plus in-flight L7 requests.
    #[inline]
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Peak-EWMA latency in nanoseconds.
    #[inline]
    pub fn latency_ns(&self) -> u64 {
        self.latency_ns.load(Ordering::Relaxed)
    }

    /// Totals: (connections, requests, failures).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.connections_total.load(Ordering::Relaxed),
            self.requests_total.load(Ordering::Relaxed),
            self.failures_total.load(Ordering::Relaxed),
        )
    }

    /// Whether the last traffic to it failed.
    #[inline]
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Marks whether the last traffic to it failed.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Counts a failure tolerated because the VM was migrating.
    pub fn record_suppressed(&self) {
        self.suppressed_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Failures tolerated because the VM was migrating, in total.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }

    /// Counts a failed connect or upstream error.
    pub fn record_failure(&self) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Folds one latency sample into the peak EWMA: a slower sample is taken at once, a faster one
    /// moves the average an eighth of the way.
    pub fn record_latency(&self, sample_ns: u64) {
        let old = self.latency_ns.load(Ordering::Relaxed);
        let new = if sample_ns >= old || old == 0 {
            sample_ns
        } else {
            old - (old - sample_ns) / 8
        };
        self.latency_ns.store(new, Ordering::Relaxed);
    }

    /// Starts tracking a connection or request that began at `since`; it counts as active until
    /// the guard drops.
    pub fn track(
        self: &Arc<Self>,
        client: SocketAddr,
        address: SocketAddr,
        traffic: Traffic,
        since: Instant,
    ) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        match traffic {
            Traffic::Tcp | Traffic::WebSocket(_) => self.connections_total.fetch_add(1, Ordering::Relaxed),
            Traffic::Http(_) => self.requests_total.fetch_add(1, Ordering::Relaxed),
        };
        let item = OpenItem {
            client,
            address,
            traffic,
            since,
        };
        let key = self.open.lock().insert(item);
        ActiveGuard {
            backend: self.clone(),
            key,
        }
    }

    /// The generation idle upstream connections must carry to be reused.
    #[inline]
    pub fn idle_generation(&self) -> u64 {
        self.idle_generation.load(Ordering::Relaxed)
    }

    /// Retires every idle upstream connection to this backend (each worker closes its own).
    pub fn retire_idle(&self) {
        self.idle_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells the long-lived work open to this backend to close (WebSocket tunnels with a close
    /// frame, L4 connections), and retires its idle upstream connections (HTTP/2 ones close with
    /// GOAWAY once their streams end; busy HTTP/1.1 ones close after their response).
    pub fn close_long_lived(&self) {
        self.retire_idle();
        self.long_lived.notify_waiters();
    }

    /// Completes when [`BackendRuntime::close_long_lived`] is called after this was created.
    pub fn long_lived_closed(&self) -> tokio::sync::futures::Notified<'_> {
        self.long_lived.notified()
    }

    /// What is still open to this backend, oldest first, at most `limit` entries.
    pub fn open_items(&self, limit: usize) -> Vec<ConnectionReport> {
        let open = self.open.lock();
        let mut items: Vec<&OpenItem> = open.iter().map(|(_, item)| item).collect();
        items.sort_by_key(|i| i.since);
        items
            .into_iter()
            .take(limit)
            .map(|item| ConnectionReport {
                balancer: String::new(),
                pool: self.pool.clone(),
                backend: item.address.to_string(),
                client: item.client.to_string(),
                kind: match item.traffic {
                    Traffic::Tcp => "tcp".to_string(),
                    Traffic::Http(_) => "http".to_string(),
                    Traffic::WebSocket(_) => "websocket".to_string(),
                },
                request: match &item.traffic {
                    Traffic::Tcp => None,
                    Traffic::Http(line) | Traffic::WebSocket(line) => Some(line.text()),
                },
                age_ms: u64::try_from(item.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// Keeps a connection or request counted as active; dropping it ends it.
#[derive(Debug)]
pub struct ActiveGuard {
    backend: Arc<BackendRuntime>,
    key: usize,
}

impl ActiveGuard {
    /// The backend.
    pub fn backend(&self) -> &Arc<BackendRuntime> {
        &self.backend
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.open.lock().remove(self.key);
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_list_open_traffic() {
        let backend = Arc::new(BackendRuntime::new(
            "web",
            "127.0.0.1:9001".parse().unwrap(),
            VmId::new("vm-a").unwrap(),
            1,
        ));
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let address: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let a = backend.track(client, address, Traffic::Tcp, Instant::now());
        let b = backend.track(
            client,
            address,
            Traffic::Http(RequestLine::new("GET", "/x")),
            Instant::now(),
        );
        assert_eq!(backend.active(), 2);
        let open = backend.open_items(10);
        assert_eq!(open.len(), 2);
        assert_eq!(open[1].request.as_deref(), Some("GET /x"));
        drop(a);
        drop(b);
        assert_eq!(backend.active(), 0);
        assert!(backend.open_items(10).is_empty());
        assert_eq!(backend.totals(), (1, 1, 0));
    }

    #[test]
    fn long_request_lines_are_cut_and_marked() {
        let target = format!("/{}", "a".repeat(200));
        let line = RequestLine::new("GET", &target).text();
        assert_eq!(line.len(), RequestLine::MAX);
        assert!(line.starts_with("GET /aaa"));
        assert!(line.ends_with("..."));
        assert_eq!(RequestLine::new("POST", "/x?y=1").text(), "POST /x?y=1");
    }

    #[test]
    fn latency_is_a_peak_ewma() {
        let backend = BackendRuntime::new(
            "web",
            "127.0.0.1:9001".parse().unwrap(),
            VmId::new("vm-a").unwrap(),
            1,
        );
        backend.record_latency(800);
        backend.record_latency(1600);
        assert_eq!(backend.latency_ns(), 1600, "a slower sample is taken at once");
        backend.record_latency(0);
        assert_eq!(
            backend.latency_ns(),
            1400,
            "a faster one moves an eighth of the way"
        );
    }
}

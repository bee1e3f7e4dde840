//! handover's own file descriptors: running out of them is the proxy's problem, never a backend's.
//!
//! - **A budget for the data plane.** At start the binary sets how many client connections the
//!   listeners may hold at once ([`configure`]): the process's descriptor limit, less what is open
//!   already, less a reserve for the control plane (the API, peers, driven balancers, health
//!   checks, the state file), halved because a proxied connection holds two descriptors (client
//!   and backend). When the budget is spent the accept loops stop accepting until a connection
//!   ends: new clients wait in the listen queue, and the control API keeps answering.
//! - **Exhaustion is local.** `EMFILE`, `ENFILE`, `ENOBUFS` and `ENOMEM` on accept or connect
//!   ([`is_exhaustion`]) say nothing about a backend: they are never counted against it (no
//!   outlier ejection, no failed health check), accept backs off, and they are logged at most once
//!   per [`LOG_EVERY`] with the number of occurrences in between ([`Throttle`]).
//!
//! - **The control plane goes first.** When the control API's accept runs out, it gives up one of
//!   its reserved descriptors and holds [`ControlFirst`] until it has accepted: meanwhile the data
//!   plane opens nothing ([`connect`] fails as exhausted, accept loops back off), so the descriptor
//!   freed for the API is not taken by a proxied connection's retry.
//!
//! Idle upstream keep-alive connections of the HTTP listeners are outside the count (each worker
//! keeps at most a bounded number per backend): the reserve absorbs them, and whatever still runs
//! out is handled as above.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Linux errno values that mean the process or the system ran out of descriptors or buffers.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOBUFS: i32 = 105;
const ENOMEM: i32 = 12;

/// Descriptors kept for the control plane, at least.
pub const MIN_RESERVE: u64 = 64;

/// The longest a repeated message about exhaustion stays quiet.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Whether an I/O error means handover itself ran out of descriptors or buffers.
pub fn is_exhaustion(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// Counts the control-plane accepts waiting for a descriptor ([`ControlFirst`]).
#[derive(Debug, Default)]
struct Gate {
    waiting: AtomicUsize,
}

impl Gate {
    fn claim(&'static self) -> ControlFirst {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        ControlFirst(self)
    }

    fn closed(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) != 0
    }

    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        if self.closed() {
            return Err(deferred());
        }
        TcpStream::connect(address).await
    }
}

/// The process's gate.
static GATE: Gate = Gate {
    waiting: AtomicUsize::new(0),
};

/// Held by the control API while it waits for a descriptor to accept with: the data plane opens
/// none until it is dropped.
#[derive(Debug)]
pub struct ControlFirst(&'static Gate);

impl ControlFirst {
    /// Asks the data plane to open no descriptor until the returned value is dropped.
    pub fn claim() -> Self {
        GATE.claim()
    }
}

impl Drop for ControlFirst {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the control plane is waiting for a descriptor: the data plane should not open one now.
pub fn control_plane_waiting() -> bool {
    GATE.closed()
}

/// The error the data plane sees while the control plane goes first: an exhaustion (`EMFILE`).
pub fn deferred() -> io::Error {
    io::Error::from_raw_os_error(EMFILE)
}

/// Connects to a backend, the data plane's way: while the control plane waits for a descriptor
/// ([`ControlFirst`]) this fails at once as exhausted, without opening a socket.
pub async fn connect(address: SocketAddr) -> io::Result<TcpStream> {
    GATE.connect(address).await
}

/// The data plane's connection budget.
#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    limit: usize,
    /// The budget was found spent (logged once per interval).
    pub full: Throttle,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            full: Throttle::default(),
        }
    }

    /// Waits until one more client connection may be accepted; the connection holds the permit.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return permit;
        }
        if let Some(suppressed) = self.full.ready() {
            tracing::warn!(
                connections = self.limit,
                suppressed,
                "connection budget spent (the descriptor limit less the control plane's reserve): new connections wait in the listen queue until one ends"
            );
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// How many client connections may be held at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many are held now.
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

static BUDGET: OnceLock<Budget> = OnceLock::new();

/// The process's budget (unlimited until [`configure`] is called).
pub fn budget() -> &'static Budget {
    BUDGET.get_or_init(|| Budget::new(Semaphore::MAX_PERMITS))
}

/// What [`configure`] found and decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The descriptor limit (after raising the soft limit to the hard one).
    pub limit: u64,
    /// Descriptors open when the budget was set.
    pub open: u64,
    /// Kept for the control plane.
    pub reserve: u64,
    /// Client connections the listeners may hold at once.
    pub connections: u64,
}

/// Raises the soft descriptor limit to the hard one (as Go's runtime does), then sets the data
/// plane's budget from what is left after the descriptors open now and the control plane's
/// reserve (an eighth of the limit, at least [`MIN_RESERVE`]). Call once, after binding and before
/// the listeners accept.
pub fn configure() -> io::Result<Limits> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut rlimit = getrlimit(Resource::Nofile);
    if let Some(hard) = rlimit.maximum
        && rlimit.current != Some(hard)
    {
        rlimit.current = Some(hard);
        // Not fatal: the current soft limit stays.
        let _ = setrlimit(Resource::Nofile, rlimit);
    }
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let reserve = (limit / 8).max(MIN_RESERVE);
    let connections = limit.saturating_sub(open).saturating_sub(reserve) / 2;
    let connections = connections.clamp(1, Semaphore::MAX_PERMITS as u64);
    let _ = BUDGET.set(Budget::new(connections as usize));
    Ok(Limits {
        limit,
        open,
        reserve,
        connections: budget().limit() as u64,
    })
}

/// A message that is logged at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when the message may be logged now, `n` being how many times it was suppressed
    /// since it last was; `None` (counted) otherwise.
    pub fn ready(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Running out of descriptors on accept (logged once per interval).
pub static ACCEPT_EXHAUSTED: Throttle = Throttle {
    last: Mutex::new(None),
    suppressed: AtomicU64::new(0),
};

/// Running out of descriptors on a connect to a backend (logged once per interval).
pub static CONNECT_EXHAUSTED: Throttle = Throttle {
    last: Mutex::new(None),
    suppressed: AtomicU64::new(0),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_shortages_count_as_exhaustion() {
        for errno in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert!(is_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        // ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH are the backend's (or the network's).
        for errno in [111, 110, 113] {
            assert!(!is_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
    }

    #[tokio::test]
    async fn while_the_control_plane_waits_the_data_plane_opens_nothing() {
        // A gate of the test's own: the process's would hold back other tests' connects.
        let gate: &'static Gate = Box::leak(Box::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let first = gate.claim();
        let second = gate.claim();
        let refused = gate.connect(address).await.unwrap_err();
        assert!(is_exhaustion(&refused), "{refused}");
        drop(first);
        assert!(gate.closed(), "one claim is still held");
        drop(second);
        assert!(!gate.closed());
        gate.connect(address)
            .await
            .expect("connects once no claim is held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeated_message_is_logged_once_per_interval_with_the_count_in_between() {
        let throttle = Throttle::default();
        assert_eq!(throttle.ready(), Some(0));
        for _ in 0..268 {
            assert_eq!(throttle.ready(), None);
        }
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(throttle.ready(), Some(268));
    }

    #[tokio::test]
    async fn a_spent_budget_waits_for_a_connection_to_end() {
        let budget = Budget::new(2);
        let a = budget.acquire().await;
        let _b = budget.acquire().await;
        assert_eq!(budget.in_use(), 2);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.acquire())
                .await
                .is_err()
        );
        drop(a);
        let _c = tokio::time::timeout(Duration::from_millis(50), budget.acquire())
            .await
            .expect("a permit came back");
    }
}

//! The migration driver: workers walk VMs through prepare → started → end, sending each notice to
//! node A or node B at random (one migration's notices often reach different nodes), and record
//! every notice's latency and each VM's drain window (from the prepare's reply to the end notice,
//! or to the deadline for the few migrations that get no end notice).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use handover_core::api::{NoticeRequest, NoticeResponse};
use handover_core::phase::Notice;
use handover_drivers::{ClientError, ControlClient};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::load::NodeFault;

/// The nodes' deadline (`[migration]` and pools), in ms.
pub const DEADLINE_MS: u64 = 10_000;
/// The ramp window, in ms.
pub const RAMP_MS: u64 = 2_000;

/// One notice as the driver saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// When it was sent (soak clock, ms).
    pub at_ms: u64,
    /// Round trip, ms.
    pub latency_ms: f64,
    /// `a` or `b`.
    pub node: &'static str,
    /// The notice.
    pub notice: &'static str,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// `applied`, `unchanged`, `queued`, `pending`, or the error.
    pub outcome: String,
    /// Node B was frozen (SIGSTOP) when it was sent.
    pub peer_hung: bool,
    /// How long B had been frozen then, ms.
    pub hung_for_ms: u64,
}

/// When a VM was drained in the registry: new work sent in between must not reach it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Window {
    /// The VM.
    pub vm: usize,
    /// The prepare's reply came back.
    pub from_ms: u64,
    /// The end notice was sent (or the deadline, less half a second).
    pub to_ms: u64,
}

/// What the driver shares with the fault schedule and the report.
#[derive(Default)]
pub struct Record {
    /// Every notice.
    pub samples: Mutex<Vec<Sample>>,
    /// Every drain window.
    pub windows: Mutex<Vec<Window>>,
    /// Migrations done.
    pub done: AtomicU64,
    /// Notices first sent to node B that had to go to node A (B died meanwhile).
    pub redirected: AtomicU64,
    /// Node B is frozen now.
    pub peer_hung: AtomicBool,
    /// Since when (soak clock, ms).
    pub hung_since_ms: AtomicU64,
}

/// The two nodes' control APIs.
#[derive(Clone)]
pub struct Controls {
    /// Node A (never faulted).
    pub a: ControlClient,
    /// Node B.
    pub b: ControlClient,
}

/// A small xorshift generator (deterministic per seed).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One worker: migrates its VMs one after another until `total` migrations are done.
#[allow(clippy::too_many_arguments)]
pub async fn worker(
    vms: Vec<usize>,
    total: u64,
    controls: Controls,
    record: Arc<Record>,
    fault: Arc<NodeFault>,
    clock: Clock,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    // When each of this worker's VMs may migrate again (after its ramp, or its deadline).
    let mut free_at = vec![0u64; vms.len()];
    let mut turn = 0;
    loop {
        if record.done.fetch_add(1, Ordering::SeqCst) >= total {
            return;
        }
        // The next VM that is free.
        let (slot, vm) = loop {
            let now = clock.ms();
            if let Some(i) = (0..vms.len())
                .map(|k| (turn + k) % vms.len())
                .find(|i| free_at[*i] <= now)
            {
                break (i, vms[i]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        turn = slot + 1;
        let name = format!("vm-{vm:02}");
        let prepared = send(
            &controls,
            &record,
            &fault,
            &clock,
            &mut rng,
            &name,
            Notice::Prepare,
        )
        .await;
        let Some(from_ms) = prepared else {
            free_at[slot] = clock.ms() + DEADLINE_MS + RAMP_MS + 1000;
            continue;
        };
        tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
        send(
            &controls,
            &record,
            &fault,
            &clock,
            &mut rng,
            &name,
            Notice::Started,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        let roll = rng.below(100);
        let to_ms = if roll < 3 {
            // No end notice: the deadline restores it.
            free_at[slot] = from_ms + DEADLINE_MS + RAMP_MS + 1500;
            from_ms + DEADLINE_MS - 500
        } else {
            let end = if roll < 10 {
                Notice::Failed
            } else {
                Notice::Completed
            };
            let to_ms = clock.ms();
            send(&controls, &record, &fault, &clock, &mut rng, &name, end).await;
            free_at[slot] = clock.ms() + RAMP_MS / 2;
            to_ms
        };
        record.windows.lock().push(Window { vm, from_ms, to_ms });
    }
}

/// Sends one notice to A or B (B only while it is up; to A if B cannot be reached); returns when
/// its reply came back, if it was accepted.
async fn send(
    controls: &Controls,
    record: &Record,
    fault: &NodeFault,
    clock: &Clock,
    rng: &mut Rng,
    vm: &str,
    notice: Notice,
) -> Option<u64> {
    let mut to_b = !fault.is_down() && rng.below(10) < 4;
    loop {
        let (client, node) = if to_b {
            (&controls.b, "b")
        } else {
            (&controls.a, "a")
        };
        let at_ms = clock.ms();
        let peer_hung = record.peer_hung.load(Ordering::SeqCst);
        let hung_for_ms = at_ms.saturating_sub(record.hung_since_ms.load(Ordering::SeqCst));
        let started = Instant::now();
        let reply: Result<(http::StatusCode, NoticeResponse), ClientError> = client
            .post(&format!("/v1/vms/{vm}/migration"), &NoticeRequest::new(notice))
            .await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, outcome) = match &reply {
            Ok((status, response)) => (status.as_u16(), response.outcome.clone()),
            Err(ClientError::Status { status, body }) => (status.as_u16(), body.error.clone()),
            Err(e) if to_b => {
                // B went down between the check and the call: A takes the notice.
                record.redirected.fetch_add(1, Ordering::Relaxed);
                let _ = e;
                to_b = false;
                continue;
            }
            Err(e) => (0, e.to_string()),
        };
        record.samples.lock().push(Sample {
            at_ms,
            latency_ms,
            node,
            notice: notice.as_str(),
            status,
            outcome,
            peer_hung: peer_hung && node == "a",
            hung_for_ms: if peer_hung { hung_for_ms } else { 0 },
        });
        return matches!(status, 200 | 202).then(|| clock.ms());
    }
}

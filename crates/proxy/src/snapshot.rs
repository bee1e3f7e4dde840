//! An immutable view of one pool that the hot path reads without locks: every backend's current
//! address, phase and effective weight, and the selector built from those weights. A phase or
//! weight change builds a new snapshot and swaps it in; connections holding the old one finish
//! with it.

use std::net::SocketAddr;
use std::sync::Arc;

use handover_core::config::PoolConfig;
use handover_core::phase::Phase;
use handover_core::selection::{LoadSource, Selector};

use crate::backend::BackendRuntime;

/// One backend as of a snapshot.
#[derive(Debug, Clone)]
pub struct BackendEntry {
    /// Live state (shared by every snapshot).
    pub backend: Arc<BackendRuntime>,
    /// Its place in this snapshot (what the selector and a sticky cookie name).
    pub index: usize,
    /// Where to send traffic.
    pub address: SocketAddr,
    /// Phase applied to its VM.
    pub phase: Phase,
    /// Effective weight (0: no new work).
    pub effective_weight: f64,
    /// Health label: `up`, `down` or `ejected`.
    pub health: &'static str,
    /// Healthy enough for any work (a draining backend is available; a down one is not).
    pub available: bool,
}

/// One pool as of one moment.
#[derive(Debug)]
pub struct PoolSnapshot {
    /// The pool's configuration as of this snapshot (a reload publishes a new one).
    pub config: Arc<PoolConfig>,
    /// Backends, in configuration order.
    pub entries: Vec<BackendEntry>,
    /// Selector over the effective weights.
    pub selector: Selector,
    /// Every available backend is draining, so they serve anyway.
    pub fallback: bool,
}

impl PoolSnapshot {
    /// Picks a backend for new work that is not in `tried`. When no backend with a share of new
    /// work is left (the others failed), a draining backend takes it rather than the client
    /// being refused: a migration never causes a refusal of service.
    pub fn pick(&self, random: u64, tried: &[usize]) -> Option<usize> {
        self.selector.pick_excluding(self, random, tried).or_else(|| {
            self.entries
                .iter()
                .position(|e| e.phase.is_drained() && !tried.contains(&e.index))
        })
    }
}

impl LoadSource for PoolSnapshot {
    #[inline]
    fn active(&self, index: usize) -> u64 {
        self.entries[index].backend.active()
    }

    #[inline]
    fn latency_ns(&self, index: usize) -> u64 {
        self.entries[index].backend.latency_ns()
    }
}

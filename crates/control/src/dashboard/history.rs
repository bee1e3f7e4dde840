//! The share of new work of every VM over the last minutes, sampled once a second from the local
//! pools, so that a page opened in the middle of a migration still draws what came before it.
//! Sampling starts with the first page that asks for events, and costs nothing before.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use crate::coordinator::Coordinator;

/// How often shares are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How many samples are kept (ten minutes).
const KEEP: usize = 600;

/// Every VM's share of new work at one instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// When, in ms since the Unix epoch.
    pub t: u64,
    /// Share of new work (0..1) by series: the VM's name, or `pool/vm` where there are several
    /// pools.
    pub shares: BTreeMap<String, f64>,
}

/// The last [`KEEP`] samples.
#[derive(Debug, Default)]
pub struct ShareHistory {
    /// Oldest first.
    samples: Mutex<VecDeque<Sample>>,
    /// The sampling task runs.
    started: AtomicBool,
}

impl ShareHistory {
    /// Every sample kept, oldest first.
    pub fn all(&self) -> Vec<Sample> {
        self.samples.lock().iter().cloned().collect()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<Sample> {
        self.samples.lock().back().cloned()
    }

    /// Adds a sample, dropping the oldest beyond [`KEEP`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock();
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Starts sampling `coordinator`'s pools once a second, if it has not started yet.
    pub fn ensure_sampling(self: &Arc<Self>, coordinator: Arc<Coordinator>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let history = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(history) = history.upgrade() else { return };
                history.push(sample(&coordinator).await);
                drop(history);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
    }
}

/// One sample of the local pools.
async fn sample(coordinator: &Coordinator) -> Sample {
    let pools = coordinator.local_status().await.pools;
    let several = pools.len() > 1;
    let mut shares = BTreeMap::new();
    for pool in &pools {
        for backend in &pool.backends {
            let key = if several {
                format!("{}/{}", pool.name, backend.vm)
            } else {
                backend.vm.to_string()
            };
            *shares.entry(key).or_insert(0.0) += backend.share;
        }
    }
    Sample {
        t: coordinator.clock().now_ms(),
        shares,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_last_ten_minutes_oldest_first() {
        let history = ShareHistory::default();
        for t in 0..(KEEP as u64 + 5) {
            history.push(Sample {
                t,
                shares: BTreeMap::from([("vm-a".to_string(), 0.5)]),
            });
        }
        let all = history.all();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].t, 5);
        assert_eq!(history.latest().unwrap().t, KEEP as u64 + 4);
    }
}

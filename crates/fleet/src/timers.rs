//! No VM drained forever: when a notice's deadline passes (or its ramp ends), the nodes that serve
//! the VM write what time made of it — ramping after a missed deadline, or no notice at all once
//! stable — with a compare-and-swap on the notice's generation, so exactly one write wins however
//! many nodes try. Each node waits a small offset of its own first, so they rarely all try.
//!
//! This only keeps etcd's state right; the local balancers restore a VM at its deadline by
//! themselves (the coordinator's registry and the balancers' own deadline), etcd or not.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use handover_core::model::VmId;
use handover_core::phase::Phase;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::decide::{Due, due};
use crate::etcd::{EtcdError, delete_op, delete_prefix_op, mod_revision_is, prefix_op, put_op, range_kvs};
use crate::node::{FleetNode, Seen, now_ms};
use crate::records::{NoticeRecord, ServesRecord, decode, encode};

/// How often due notices are looked for.
const TICK: Duration = Duration::from_millis(100);
/// The longest offset a node waits after a notice fell due before it writes.
const MAX_OFFSET_MS: u64 = 300;

impl FleetNode {
    fn offset_ms(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut hasher);
        hasher.finish() % MAX_OFFSET_MS
    }

    /// Writes deadlines and ramp ends into etcd as they fall due, until cancelled.
    pub(crate) async fn run_timers(self: Arc<Self>, cancel: CancellationToken) {
        let offset = self.offset_ms();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = now_ms();
            let due_now: Vec<(VmId, Seen)> = self
                .notices
                .lock()
                .iter()
                .filter(|(vm, seen)| {
                    let state = &seen.record.state;
                    let at = match state.phase {
                        Phase::Draining | Phase::Migrating => state.deadline_at,
                        Phase::Ramping => state.ramp_until,
                        Phase::Stable => Some(0),
                    };
                    self.served.contains_key(*vm) && at.is_some_and(|at| at + offset <= now)
                })
                .map(|(vm, seen)| (vm.clone(), seen.clone()))
                .collect();
            for (vm, seen) in due_now {
                if let Err(e) = self.write_due(&vm, &seen).await {
                    self.stats.lock().etcd_error("timer");
                    debug!(%vm, error = %e, "could not write a due notice; will try again");
                }
            }
        }
    }

    async fn write_due(&self, vm: &VmId, seen: &Seen) -> Result<(), EtcdError> {
        let read = self
            .etcd
            .txn(
                Vec::new(),
                vec![prefix_op(&self.keys.serves_prefix(vm))],
                Vec::new(),
            )
            .await?;
        let serving: Vec<ServesRecord> = range_kvs(&read, 0)
            .iter()
            .filter_map(|kv| decode(&kv.key, &kv.value).ok())
            .collect();
        let key = self.keys.notice(vm);
        let now = now_ms();
        let (ops, what) = match due(vm, &seen.record.state, now, &serving, self.default_deadline) {
            Due::Nothing => return Ok(()),
            Due::Write(state) => {
                let record = NoticeRecord {
                    notice: None,
                    state,
                    by: self.name.clone(),
                    at: now,
                };
                (
                    vec![put_op(&key, encode(&record), 0)],
                    "deadline passed: ramping back",
                )
            }
            Due::Delete => (
                vec![delete_op(&key), delete_prefix_op(&self.keys.acks_prefix(vm))],
                "stable again: notice removed",
            ),
        };
        let response = self
            .etcd
            .txn(vec![mod_revision_is(&key, seen.generation)], ops, Vec::new())
            .await?;
        if response.succeeded {
            info!(%vm, generation = seen.generation, "{what}");
        }
        Ok(())
    }
}

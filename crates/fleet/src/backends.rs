//! Backends set or removed through the API (`PUT`/`DELETE /v1/pools/{pool}/backends/{address}`),
//! shared through etcd: the node that takes the call applies the change locally (durably), then
//! puts it under `backends/<pool>/<address>` (no lease: it outlives the node). Every node lists
//! those keys when it starts, then watches them (through `prefix_watch`), and applies each change
//! to its own pools through a [`BackendSink`] (a node without the pool skips it). A change the sink
//! cannot make now (its state directory is full) is tried again by listing again, with backoff.
//! etcd keeps the last change of each pool and address, and every node applies the changes in
//! etcd's order, so nodes converge on etcd's value even when two nodes change the same backend at
//! once. A node never applies a change older than one it applied or wrote itself: a `PUT` then a
//! `DELETE` of one backend through one node does not bring the backend back for a moment when the
//! node sees its own `PUT` through the watch.

use std::sync::Arc;

use handover_core::api::BackendChange;
use handover_core::balancer::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::etcd::{EtcdError, KeyValue};
use crate::node::FleetNode;
use crate::prefix_watch::{self, Change, PrefixHandler};
use crate::records::{decode, encode};

/// Why a sink did not apply a change.
#[derive(Debug, Clone)]
pub enum SinkRefusal {
    /// The change does not apply to this node (no such pool, the pool's last backend): skipped.
    NotHere(String),
    /// The change could not be made now (e.g. not written): tried again later.
    Failed(String),
}

/// This node's pools, as the fleet hands them backend changes.
pub trait BackendSink: Send + Sync {
    /// Applies one change: whether it changed anything (one already applied changes nothing).
    fn apply<'a>(&'a self, change: &'a BackendChange) -> BoxFuture<'a, Result<bool, SinkRefusal>>;
}

impl FleetNode {
    /// Puts a change made through this node's API where every node sees it; returns the revision.
    pub async fn publish_backend(&self, change: &BackendChange) -> Result<i64, EtcdError> {
        let key = self.keys.backend(&change.pool, &change.address);
        match self.etcd.put(&key, encode(change), 0).await {
            Ok(revision) => {
                self.mark_backend(key.as_bytes(), revision);
                Ok(revision)
            }
            Err(e) => {
                self.stats.lock().etcd_error("backends");
                Err(e)
            }
        }
    }

    /// Records that this node has the change of `key` at `revision` (or a later one).
    fn mark_backend(&self, key: &[u8], revision: i64) {
        let mut revisions = self.backend_revisions.lock();
        let known = revisions.entry(key.to_vec()).or_default();
        *known = (*known).max(revision);
    }

    /// Applies one key's change unless this node has it or a later one; `Err` when it must be
    /// tried again.
    async fn apply_backend(&self, sink: &dyn BackendSink, kv: &KeyValue) -> Result<(), String> {
        let known = self.backend_revisions.lock().get(&kv.key).copied();
        if known.is_some_and(|known| known >= kv.mod_revision) {
            return Ok(());
        }
        apply(sink, kv).await?;
        self.mark_backend(&kv.key, kv.mod_revision);
        Ok(())
    }

    /// Lists every backend change and applies each through `sink`; returns the revision of the
    /// list, or why it must be tried again.
    pub async fn sync_backends(&self, sink: &dyn BackendSink) -> Result<i64, String> {
        let backends = Backends { node: self, sink };
        prefix_watch::list_and_apply(self, &backends)
            .await
            .map_err(|e| e.to_string())
    }

    /// Watches the backend changes from the revision after `start` (0: list first), applying
    /// each through `sink`, until cancelled.
    pub async fn watch_backends(
        self: Arc<Self>,
        sink: Arc<dyn BackendSink>,
        start: i64,
        cancel: CancellationToken,
    ) {
        let backends = Backends {
            node: &self,
            sink: sink.as_ref(),
        };
        prefix_watch::list_then_watch(&self, &backends, start, &cancel).await;
    }
}

/// The backend changes, as the list-then-watch driver hands them to a sink.
struct Backends<'a> {
    node: &'a FleetNode,
    sink: &'a dyn BackendSink,
}

impl PrefixHandler for Backends<'_> {
    const WHAT: &'static str = "backends";
    const LIST_ERROR: &'static str = "backends";
    const WATCH_ERROR: &'static str = "backends";
    /// What was not applied, and why.
    type Refusal = String;

    fn prefix(&self) -> String {
        self.node.keys.backends()
    }

    async fn apply_listed(&self, mut kvs: Vec<KeyValue>, revision: i64) -> Result<(), String> {
        kvs.sort_by_key(|kv| kv.mod_revision);
        for kv in &kvs {
            self.node.apply_backend(self.sink, kv).await?;
        }
        debug!(changes = kvs.len(), revision, "fleet backends listed");
        Ok(())
    }

    async fn apply_change(&self, change: Change) -> Result<(), String> {
        match change {
            // A deleted key (by hand) leaves the nodes as they are.
            Change::Delete(_) => Ok(()),
            Change::Put(kv) => self.node.apply_backend(self.sink, &kv).await,
        }
    }
}

/// Applies one key's change; `Err` when it must be tried again.
async fn apply(sink: &dyn BackendSink, kv: &KeyValue) -> Result<(), String> {
    let change: BackendChange = match decode(&kv.key, &kv.value) {
        Ok(change) => change,
        Err(e) => {
            warn!(error = %e, "ignoring a backend change handover cannot read");
            return Ok(());
        }
    };
    match sink.apply(&change).await {
        Ok(true) => {
            info!(pool = %change.pool, address = %change.address, backend = ?change.backend, "fleet backend change applied");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(SinkRefusal::NotHere(why)) => {
            debug!(pool = %change.pool, address = %change.address, %why, "fleet backend change does not apply here");
            Ok(())
        }
        Err(SinkRefusal::Failed(why)) => Err(format!(
            "the change of {} in pool {} was not applied: {why}",
            change.address, change.pool
        )),
    }
}

//! Backends set or removed through the API (`PUT`/`DELETE /v1/pools/{pool}/backends/{address}`),
//! shared through etcd: the node that takes the call applies the change locally (durably), then
//! puts it under `backends/<pool>/<address>` (no lease: it outlives the node). Every node lists
//! those keys when it starts, then watches them, and applies each change to its own pools through
//! a [`BackendSink`] (a node without the pool skips it). A change the sink cannot make now (its
//! state directory is full) is tried again by listing again, with backoff. etcd keeps the last
//! change of each pool and address, and every node applies the changes in etcd's order, so nodes
//! converge on etcd's value even when two nodes change the same backend at once. A node never
//! applies a change older than one it applied or wrote itself: a `PUT` then a `DELETE` of one
//! backend through one node does not bring the backend back for a moment when the node sees its
//! own `PUT` through the watch.

use std::sync::Arc;

use handover_core::api::BackendChange;
use handover_core::balancer::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::etcd::{EtcdError, EventType, KeyValue, WatchEvent, compacted_revision};
use crate::node::{FleetNode, RETRY_MIN};
use crate::records::{decode, encode};
use crate::watcher::sleep_or_cancel;

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
        let (mut kvs, revision) = self.etcd.list(&self.keys.backends()).await.map_err(|e| {
            self.stats.lock().etcd_error("backends");
            format!("cannot list the fleet's backends: {e}")
        })?;
        kvs.sort_by_key(|kv| kv.mod_revision);
        for kv in &kvs {
            self.apply_backend(sink, kv).await?;
        }
        debug!(changes = kvs.len(), revision, "fleet backends listed");
        Ok(revision)
    }

    /// Watches the backend changes from the revision after `start` (0: list first), applying
    /// each through `sink`, until cancelled.
    pub async fn watch_backends(
        self: Arc<Self>,
        sink: Arc<dyn BackendSink>,
        start: i64,
        cancel: CancellationToken,
    ) {
        let mut revision = start;
        let mut backoff = RETRY_MIN;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            if revision == 0 {
                match self.sync_backends(sink.as_ref()).await {
                    Ok(r) => revision = r,
                    Err(e) => {
                        warn!(error = %e, "fleet backends: will list again");
                        if sleep_or_cancel(&cancel, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut watch = match self.etcd.watch(&self.keys.backends(), revision + 1).await {
                Ok(watch) => {
                    backoff = RETRY_MIN;
                    watch
                }
                Err(e) => {
                    if compacted_revision(&e).is_none() {
                        self.stats.lock().etcd_error("backends");
                        warn!(error = %e, "cannot watch the fleet's backends; will list again");
                        if sleep_or_cancel(&cancel, &mut backoff).await {
                            return;
                        }
                    }
                    revision = 0;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    next = watch.next() => next,
                };
                match next {
                    Ok(WatchEvent::Events(events)) => {
                        let mut failed = None;
                        for event in events {
                            let Some(kv) = event.kv else { continue };
                            // A deleted key (by hand) leaves the nodes as they are.
                            if event.r#type == EventType::Delete as i32 {
                                revision = revision.max(kv.mod_revision);
                                continue;
                            }
                            if let Err(e) = self.apply_backend(sink.as_ref(), &kv).await {
                                failed = Some(e);
                                break;
                            }
                            revision = revision.max(kv.mod_revision);
                        }
                        if let Some(e) = failed {
                            warn!(error = %e, "fleet backends: will list again");
                            if sleep_or_cancel(&cancel, &mut backoff).await {
                                return;
                            }
                            revision = 0;
                            break;
                        }
                    }
                    Ok(WatchEvent::Progress(r)) => revision = revision.max(r),
                    Ok(WatchEvent::Compacted(_)) => {
                        revision = 0;
                        break;
                    }
                    Err(e) => {
                        self.stats.lock().etcd_error("backends");
                        warn!(error = %e, "the fleet's backends watch broke; watching again");
                        if sleep_or_cancel(&cancel, &mut backoff).await {
                            return;
                        }
                        break;
                    }
                }
            }
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

//! List then watch one etcd prefix until cancelled, for the notices and the backends alike: list
//! every key at a revision and hand the snapshot to a [`PrefixHandler`], then watch from the
//! revision after the list and hand it each change. A watch that breaks is opened again from the
//! last revision seen, after a backoff; one whose revision was compacted lists again at once; one
//! that cannot be opened lists again after a backoff (a long absence may span a compaction). What
//! the handler cannot apply now is tried again by listing again, after a backoff. Failed calls to
//! etcd are counted in `handover_fleet_etcd_errors_total` under the handler's operation labels.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::etcd::{EtcdError, EventType, KeyValue, WatchEvent, compacted_revision};
use crate::node::{FleetNode, RETRY_MAX, RETRY_MIN};

/// One watched change of a key under the prefix.
pub(crate) enum Change {
    /// The key was created or changed to this value.
    Put(KeyValue),
    /// The key was deleted (its value is empty).
    Delete(KeyValue),
}

/// What a prefix's keys mean to this node: how a listed snapshot and a watched change apply.
pub(crate) trait PrefixHandler: Sync {
    /// What the prefix holds, for logs ("notices").
    const WHAT: &'static str;
    /// The operation counted when listing the prefix fails.
    const LIST_ERROR: &'static str;
    /// The operation counted when watching the prefix fails.
    const WATCH_ERROR: &'static str;
    /// Why a snapshot or a change could not be applied now (the driver lists again later).
    type Refusal: Display + Send;

    /// The prefix watched.
    fn prefix(&self) -> String;

    /// Applies every key under the prefix as listed at `revision`.
    fn apply_listed(
        &self,
        kvs: Vec<KeyValue>,
        revision: i64,
    ) -> impl Future<Output = Result<(), Self::Refusal>> + Send;

    /// Applies one watched change.
    fn apply_change(&self, change: Change) -> impl Future<Output = Result<(), Self::Refusal>> + Send;
}

/// Why a list was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError<R> {
    /// etcd did not answer the list.
    #[error("cannot list the fleet's {what}: {source}")]
    Etcd {
        /// What the prefix holds.
        what: &'static str,
        /// The failed call.
        source: EtcdError,
    },
    /// The handler could not apply the snapshot now.
    #[error("{0}")]
    Refused(R),
}

/// Lists the prefix and applies the snapshot through `handler`; returns the revision of the list.
pub(crate) async fn list_and_apply<H: PrefixHandler>(
    node: &FleetNode,
    handler: &H,
) -> Result<i64, ListError<H::Refusal>> {
    let (kvs, revision) = match node.etcd.list(&handler.prefix()).await {
        Ok(listed) => listed,
        Err(source) => {
            node.stats.lock().etcd_error(H::LIST_ERROR);
            return Err(ListError::Etcd {
                what: H::WHAT,
                source,
            });
        }
    };
    handler
        .apply_listed(kvs, revision)
        .await
        .map_err(ListError::Refused)?;
    Ok(revision)
}

/// Watches the prefix from the revision after `start` (0: list first), applying every change
/// through `handler`, until cancelled.
pub(crate) async fn list_then_watch<H: PrefixHandler>(
    node: &FleetNode,
    handler: &H,
    start: i64,
    cancel: &CancellationToken,
) {
    let what = H::WHAT;
    let mut revision = start;
    let mut backoff = RETRY_MIN;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if revision == 0 {
            match list_and_apply(node, handler).await {
                Ok(r) => revision = r,
                Err(e) => {
                    match e {
                        ListError::Etcd { source, .. } => {
                            warn!(error = %source, "cannot list the fleet's {what}; will retry");
                        }
                        ListError::Refused(refusal) => {
                            warn!(error = %refusal, "fleet {what}: will list again");
                        }
                    }
                    if sleep_or_cancel(cancel, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let mut watch = match node.etcd.watch(&handler.prefix(), revision + 1).await {
            Ok(watch) => {
                backoff = RETRY_MIN;
                watch
            }
            Err(e) => {
                if let Some(compacted) = compacted_revision(&e) {
                    info!(
                        revision,
                        compacted, "fleet {what}: history compacted past this node; listing again"
                    );
                } else {
                    node.stats.lock().etcd_error(H::WATCH_ERROR);
                    warn!(error = %e, "cannot watch the fleet's {what}; will retry");
                    if sleep_or_cancel(cancel, &mut backoff).await {
                        return;
                    }
                }
                // A long absence may span a compaction; listing again is always correct.
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
                    let mut refused = None;
                    for event in events {
                        let Some(kv) = event.kv else { continue };
                        let at = kv.mod_revision;
                        let change = if event.r#type == EventType::Delete as i32 {
                            Change::Delete(kv)
                        } else {
                            Change::Put(kv)
                        };
                        if let Err(refusal) = handler.apply_change(change).await {
                            refused = Some(refusal);
                            break;
                        }
                        revision = revision.max(at);
                    }
                    if let Some(refusal) = refused {
                        warn!(error = %refusal, "fleet {what}: will list again");
                        if sleep_or_cancel(cancel, &mut backoff).await {
                            return;
                        }
                        revision = 0;
                        break;
                    }
                }
                Ok(WatchEvent::Progress(r)) => revision = revision.max(r),
                Ok(WatchEvent::Compacted(compacted)) => {
                    info!(
                        revision,
                        compacted, "fleet {what}: history compacted past this node; listing again"
                    );
                    revision = 0;
                    break;
                }
                Err(e) => {
                    node.stats.lock().etcd_error(H::WATCH_ERROR);
                    warn!(error = %e, "the fleet's {what} watch broke; watching again");
                    if sleep_or_cancel(cancel, &mut backoff).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Sleeps `backoff` (doubling it up to the maximum); true if cancelled meanwhile.
async fn sleep_or_cancel(cancel: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(RETRY_MAX);
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

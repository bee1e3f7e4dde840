//! Never miss a phase: list every notice at a revision, apply each to the local balancers and
//! acknowledge it, then watch from the revision after the list. A watch that breaks is opened again
//! from the last revision seen; one whose revision was compacted lists again. While etcd cannot be
//! reached the local balancers keep their last state (and their deadlines, which they enforce
//! themselves).
//!
//! Also here: the acknowledgement of a VM is written again whenever the traffic still reaching it
//! through this node changes while it is drained, so the node that sent the notice can wait until
//! every serving node reports it drained.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handover_core::api::BalancerResult;
use handover_core::model::VmId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::etcd::{EtcdError, EventType, KeyValue, WatchEvent, compacted_revision};
use crate::node::{FleetNode, RETRY_MAX, RETRY_MIN, Seen, now_ms};
use crate::records::{AckRecord, NoticeRecord, decode};

/// How often a drained VM's traffic through this node is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(100);

impl FleetNode {
    /// Lists every notice, applies each to the local balancers (a VM with no notice is stable),
    /// and acknowledges them; returns the revision of the list.
    pub(crate) async fn sync(&self) -> Result<i64, EtcdError> {
        let (kvs, revision) = match self.etcd.list(&self.keys.notices()).await {
            Ok(listed) => listed,
            Err(e) => {
                self.stats.lock().etcd_error("list");
                return Err(e);
            }
        };
        self.stats.lock().relists += 1;
        let mut listed: BTreeMap<VmId, Seen> = BTreeMap::new();
        for kv in &kvs {
            if let Some((vm, seen)) = self.parse_notice(kv) {
                listed.insert(vm, seen);
            }
        }
        let before: Vec<VmId> = self.notices.lock().keys().cloned().collect();
        for (vm, seen) in &listed {
            self.apply(vm, Some(seen.clone())).await;
        }
        // Notices deleted while this node was away (or never seen by it): stable.
        for vm in before.iter().chain(self.served.keys()) {
            if !listed.contains_key(vm) {
                self.apply(vm, None).await;
            }
        }
        self.synced.store(true, Ordering::Release);
        debug!(notices = listed.len(), revision, "fleet notices listed");
        Ok(revision)
    }

    fn parse_notice(&self, kv: &KeyValue) -> Option<(VmId, Seen)> {
        let vm = self.keys.vm_of_notice(&kv.key)?;
        match decode::<NoticeRecord>(&kv.key, &kv.value) {
            Ok(record) => Some((
                vm,
                Seen {
                    record,
                    generation: kv.mod_revision,
                    created: kv.create_revision,
                },
            )),
            Err(e) => {
                warn!(error = %e, "ignoring a notice handover cannot read");
                None
            }
        }
    }

    /// Applies the fleet's state of one VM locally and acknowledges it if this node serves it.
    async fn apply(&self, vm: &VmId, seen: Option<Seen>) {
        {
            let mut notices = self.notices.lock();
            match &seen {
                Some(s) => {
                    if notices.get(vm).is_some_and(|old| old.generation >= s.generation) {
                        return;
                    }
                    notices.insert(vm.clone(), s.clone());
                }
                None => {
                    notices.remove(vm);
                }
            }
        }
        if !self.served.contains_key(vm) {
            return;
        }
        let state = seen.as_ref().map(|s| s.record.state.clone());
        let results = self.local.adopt(vm, state.clone()).await;
        let Some(seen) = seen else {
            // The fleet has no notice: nothing to acknowledge; an old acknowledgement is stale.
            if self.acks.lock().remove(vm).is_some()
                && let Err(e) = self
                    .etcd
                    .txn(
                        Vec::new(),
                        vec![crate::etcd::delete_op(&self.keys.ack(vm, &self.name))],
                        Vec::new(),
                    )
                    .await
            {
                debug!(%vm, error = %e, "could not delete a stale acknowledgement");
            }
            return;
        };
        let ack = self.acknowledgement(vm, &seen, &results).await;
        info!(%vm, generation = seen.generation, phase = %ack.phase, "fleet notice applied");
        self.put_ack(vm, &ack).await;
    }

    /// This node's drained threshold for a VM (the smallest of its pools').
    fn threshold(&self, vm: &VmId) -> u64 {
        self.served
            .get(vm)
            .and_then(|pools| pools.iter().map(|p| p.drained_threshold).min())
            .unwrap_or(0)
    }

    async fn acknowledgement(&self, vm: &VmId, seen: &Seen, results: &[BalancerResult]) -> AckRecord {
        let now = now_ms();
        let phase = seen.record.state.command_at(now).phase();
        let errors: Vec<String> = results
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.name)))
            .collect();
        let status = self.local.drain(vm).await;
        AckRecord {
            node: self.name.clone(),
            generation: seen.generation,
            phase,
            applied: errors.is_empty() && results.iter().any(|r| r.applied),
            active: status.active,
            drained: phase.is_drained() && status.active <= self.threshold(vm),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            at: now,
            backends: results.iter().flat_map(|r| r.backends.clone()).collect(),
        }
    }

    /// Lists, then watches the notices from the revision after the list, until cancelled.
    pub(crate) async fn watch_notices(self: Arc<Self>, start: i64, cancel: CancellationToken) {
        let mut revision = start;
        let mut backoff = RETRY_MIN;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            if revision == 0 {
                match self.sync().await {
                    Ok(r) => revision = r,
                    Err(e) => {
                        warn!(error = %e, "cannot list the fleet's notices; will retry");
                        if sleep_or_cancel(&cancel, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut watch = match self.etcd.watch(&self.keys.notices(), revision + 1).await {
                Ok(watch) => {
                    backoff = RETRY_MIN;
                    watch
                }
                Err(e) => {
                    if let Some(compacted) = compacted_revision(&e) {
                        info!(
                            revision,
                            compacted, "fleet history compacted past this node; listing again"
                        );
                        revision = 0;
                        continue;
                    }
                    self.stats.lock().etcd_error("watch");
                    warn!(error = %e, "cannot watch the fleet's notices; will retry");
                    if sleep_or_cancel(&cancel, &mut backoff).await {
                        return;
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
                        for event in events {
                            let Some(kv) = event.kv else { continue };
                            revision = revision.max(kv.mod_revision);
                            if event.r#type == EventType::Delete as i32 {
                                if let Some(vm) = self.keys.vm_of_notice(&kv.key) {
                                    self.apply(&vm, None).await;
                                }
                            } else if let Some((vm, seen)) = self.parse_notice(&kv) {
                                self.apply(&vm, Some(seen)).await;
                            }
                        }
                    }
                    Ok(WatchEvent::Progress(r)) => revision = revision.max(r),
                    Ok(WatchEvent::Compacted(compacted)) => {
                        info!(
                            revision,
                            compacted, "fleet history compacted past this node; listing again"
                        );
                        revision = 0;
                        break;
                    }
                    Err(e) => {
                        self.stats.lock().etcd_error("watch");
                        warn!(error = %e, "the fleet watch broke; watching again");
                        if sleep_or_cancel(&cancel, &mut backoff).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Rewrites the acknowledgement of every drained VM whose traffic through this node changed.
    pub(crate) async fn report_drain(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DRAIN_POLL) => {}
            }
            let draining: Vec<(VmId, AckRecord)> = self
                .acks
                .lock()
                .iter()
                .filter(|(_, a)| a.phase.is_drained())
                .map(|(v, a)| (v.clone(), a.clone()))
                .collect();
            for (vm, ack) in draining {
                let status = self.local.drain(&vm).await;
                let drained = status.active <= self.threshold(&vm);
                if status.active != ack.active || drained != ack.drained {
                    let still_current = self
                        .acks
                        .lock()
                        .get(&vm)
                        .is_some_and(|a| a.generation == ack.generation);
                    if still_current {
                        let ack = AckRecord {
                            active: status.active,
                            drained,
                            at: now_ms(),
                            ..ack
                        };
                        self.put_ack(&vm, &ack).await;
                    }
                }
            }
        }
    }
}

/// Sleeps `backoff` (doubling it up to the maximum); true if cancelled meanwhile.
pub(crate) async fn sleep_or_cancel(cancel: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(RETRY_MAX);
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

//! Never miss a phase: list every notice at a revision, apply each to the local balancers and
//! acknowledge it, then watch from the revision after the list (through `prefix_watch`). A watch
//! that breaks is opened again from the last revision seen; one whose revision was compacted lists
//! again. While etcd cannot be
//! reached the local balancers keep their last state (and their deadlines, which they enforce
//! themselves).
//!
//! Also here: the acknowledgement of a VM is written again whenever the traffic still reaching it
//! through this node changes while it is drained, so the node that sent the notice can wait until
//! every serving node reports it drained.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handover_core::api::BalancerResult;
use handover_core::model::VmId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::etcd::{EtcdError, KeyValue};
use crate::node::{FleetNode, Seen, now_ms};
use crate::prefix_watch::{self, Change, ListError, PrefixHandler};
use crate::records::{AckRecord, NoticeRecord, decode};

/// How often a drained VM's traffic through this node is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(100);

impl FleetNode {
    /// Lists every notice, applies each to the local balancers (a VM with no notice is stable),
    /// and acknowledges them; returns the revision of the list.
    pub(crate) async fn sync(&self) -> Result<i64, EtcdError> {
        prefix_watch::list_and_apply(self, &Notices(self))
            .await
            .map_err(|e| match e {
                ListError::Etcd { source, .. } => source,
                ListError::Refused(never) => match never {},
            })
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

    /// Watches the notices from the revision after `start` (0: list first), until cancelled.
    pub(crate) async fn watch_notices(self: Arc<Self>, start: i64, cancel: CancellationToken) {
        prefix_watch::list_then_watch(&self, &Notices(&self), start, &cancel).await;
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

/// The notices, as the list-then-watch driver hands them to this node.
struct Notices<'a>(&'a FleetNode);

impl PrefixHandler for Notices<'_> {
    const WHAT: &'static str = "notices";
    const LIST_ERROR: &'static str = "list";
    const WATCH_ERROR: &'static str = "watch";
    type Refusal = Infallible;

    fn prefix(&self) -> String {
        self.0.keys.notices()
    }

    async fn apply_listed(&self, kvs: Vec<KeyValue>, revision: i64) -> Result<(), Infallible> {
        let node = self.0;
        node.stats.lock().relists += 1;
        let mut listed: BTreeMap<VmId, Seen> = BTreeMap::new();
        for kv in &kvs {
            if let Some((vm, seen)) = node.parse_notice(kv) {
                listed.insert(vm, seen);
            }
        }
        let before: Vec<VmId> = node.notices.lock().keys().cloned().collect();
        for (vm, seen) in &listed {
            node.apply(vm, Some(seen.clone())).await;
        }
        // Notices deleted while this node was away (or never seen by it): stable.
        for vm in before.iter().chain(node.served.keys()) {
            if !listed.contains_key(vm) {
                node.apply(vm, None).await;
            }
        }
        node.synced.store(true, Ordering::Release);
        debug!(notices = listed.len(), revision, "fleet notices listed");
        Ok(())
    }

    async fn apply_change(&self, change: Change) -> Result<(), Infallible> {
        let node = self.0;
        match change {
            Change::Delete(kv) => {
                if let Some(vm) = node.keys.vm_of_notice(&kv.key) {
                    node.apply(&vm, None).await;
                }
            }
            Change::Put(kv) => {
                if let Some((vm, seen)) = node.parse_notice(&kv) {
                    node.apply(&vm, Some(seen)).await;
                }
            }
        }
        Ok(())
    }
}

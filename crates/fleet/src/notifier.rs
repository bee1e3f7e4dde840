//! Identify and notify: a notice taken by this node becomes the fleet's.
//!
//! 1. One read transaction: the VM's notice (and its generation) and the nodes that serve it.
//! 2. The decision (`decide`), as a single node would make it.
//! 3. One write transaction: *if* the notice is still at the generation read *and* some node still
//!    serves the VM, write the new notice and read the serving nodes again — so "who serves it" and
//!    "what they were told" are one snapshot. Otherwise read again and decide again (two nodes
//!    racing on the same VM are ordered by etcd, never both applied).
//! 4. Wait for the acknowledgements of those nodes (watching `vm/<vm>/`: acknowledgements and
//!    leases that expire), at most `ack_timeout`; with `wait_drained`, until every serving node
//!    reports the VM drained or the drain timeout passes.
//!
//! The node's own balancers are told by its own watcher, like every other node's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use handover_core::api::{BalancerResult, DrainReport, NoticeRequest, NoticeResponse};
use handover_core::migration::{NoticeError, NoticeOptions, Outcome};
use handover_core::model::VmId;
use handover_core::phase::{Notice, Phase, Readdress, VmState};
use handover_core::time::millis;
use tokio::time::Instant;

use crate::decide::{Fleetwide, decide};
use crate::etcd::{
    EtcdError, EventType, KeyValue, WatchEvent, get_op, mod_revision_is, prefix_not_empty, prefix_op, put_op,
    range_kvs,
};
use crate::node::{FleetNode, now_ms};
use crate::records::{AckRecord, NoticeRecord, ServesRecord, decode, encode};

/// Longest wait for drained a caller may ask for.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// How many times a notice is decided again after losing a race before giving up.
const MAX_RACES: usize = 32;

/// Why a notice was not applied.
#[derive(Debug, thiserror::Error)]
pub enum NoticeFailure {
    /// A field of the notice is not acceptable.
    #[error("{message}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The registry's rules refused it (no migration in progress, capacity guard).
    #[error(transparent)]
    Rejected(#[from] NoticeError),
    /// No registered node serves the VM.
    #[error("no node of the fleet serves VM {0}")]
    UnknownVm(VmId),
    /// etcd could not be reached: nothing was applied.
    #[error("the fleet's etcd cannot be reached, so the notice was not applied: {0}")]
    Unavailable(String),
}

impl From<EtcdError> for NoticeFailure {
    fn from(error: EtcdError) -> Self {
        NoticeFailure::Unavailable(error.to_string())
    }
}

/// What the reply needs from the commit.
struct Committed {
    previous: Phase,
    phase: Phase,
    outcome: &'static str,
    note: Option<String>,
    generation: i64,
    created: i64,
    serving: Vec<ServesRecord>,
    /// When etcd committed it (acknowledgements are waited for from here).
    at: Instant,
}

/// Acknowledgements seen while waiting.
#[derive(Default)]
struct Heard {
    acks: BTreeMap<String, (AckRecord, u64)>,
    gone: BTreeSet<String>,
}

impl Heard {
    fn take(
        &mut self,
        vm: &VmId,
        node: &FleetNode,
        kv: &KeyValue,
        deleted: bool,
        generation: i64,
        elapsed_ms: u64,
    ) {
        let Some((kind, name)) = node.keys.classify_vm_key(vm, &kv.key) else {
            return;
        };
        match (kind, deleted) {
            ("serves", true) => {
                self.gone.insert(name.to_string());
            }
            ("acks", false) => {
                if let Ok(ack) = decode::<AckRecord>(&kv.key, &kv.value)
                    && ack.generation >= generation
                {
                    let first = self.acks.get(name).map_or(elapsed_ms, |(_, at)| *at);
                    self.acks.insert(name.to_string(), (ack, first));
                }
            }
            _ => {}
        }
    }
}

fn serving_of(kvs: &[KeyValue]) -> Vec<ServesRecord> {
    kvs.iter()
        .filter_map(|kv| decode(&kv.key, &kv.value).ok())
        .collect()
}

impl FleetNode {
    /// Handles a notice for the whole fleet: commit it to etcd, then wait for the serving nodes.
    pub async fn notice(&self, vm: &VmId, request: &NoticeRequest) -> Result<NoticeResponse, NoticeFailure> {
        let readdress = Readdress {
            new_ip: request.new_ip,
            addresses: request.addresses.clone(),
        };
        if !readdress.is_empty() && request.phase != Notice::Completed {
            let field = if request.new_ip.is_some() {
                "new_ip"
            } else {
                "addresses"
            };
            return Err(NoticeFailure::BadRequest {
                field,
                message: format!("{field}: only a completed notice can move a VM to new addresses"),
            });
        }
        let options = NoticeOptions {
            deadline_ms: request.deadline_ms,
            readdress: Some(readdress).filter(|r| !r.is_empty()),
        };
        let started = Instant::now();
        let committed = match self.commit(vm, request.phase, options).await {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, NoticeFailure::Unavailable(_)) {
                    self.stats.lock().etcd_error("notice");
                }
                return Err(e);
            }
        };
        let wait_drained = request.wait_drained && committed.phase.is_drained();
        let threshold = request.threshold.unwrap_or_else(|| {
            committed
                .serving
                .iter()
                .flat_map(|s| s.pools.iter().map(|p| p.drained_threshold))
                .min()
                .unwrap_or(0)
        });
        let drain_timeout = request
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.drain_timeout)
            .min(MAX_DRAIN_TIMEOUT);
        let heard = self
            .hear(
                vm,
                &committed,
                started,
                wait_drained.then_some((drain_timeout, threshold)),
            )
            .await;
        Ok(self.reply(
            vm,
            request,
            committed,
            heard,
            started,
            wait_drained.then_some(threshold),
        ))
    }

    /// Steps 1–3: read, decide, compare-and-swap; again after a lost race.
    async fn commit(
        &self,
        vm: &VmId,
        notice: Notice,
        options: NoticeOptions,
    ) -> Result<Committed, NoticeFailure> {
        let key = self.keys.notice(vm);
        let serves = self.keys.serves_prefix(vm);
        for _ in 0..MAX_RACES {
            let read = self
                .etcd
                .txn(Vec::new(), vec![get_op(&key), prefix_op(&serves)], Vec::new())
                .await?;
            let current = range_kvs(&read, 0).into_iter().next();
            let serving = serving_of(&range_kvs(&read, 1));
            if serving.is_empty() {
                return Err(NoticeFailure::UnknownVm(vm.clone()));
            }
            let current_state: Option<VmState> = current
                .as_ref()
                .and_then(|kv| decode::<NoticeRecord>(&kv.key, &kv.value).ok())
                .map(|r| r.state);
            let others: BTreeMap<VmId, VmState> = self
                .notices
                .lock()
                .iter()
                .filter(|(v, _)| *v != vm)
                .map(|(v, s)| (v.clone(), s.record.state.clone()))
                .collect();
            let now = now_ms();
            let decision = decide(
                vm,
                notice,
                now,
                options.clone(),
                current_state.as_ref(),
                Fleetwide {
                    others: &others,
                    serving: &serving,
                    default_deadline: self.default_deadline,
                },
            )?;
            let (mod_revision, create_revision) = current
                .as_ref()
                .map_or((0, 0), |kv| (kv.mod_revision, kv.create_revision));
            let Some(state) = decision.state else {
                let note = match decision.outcome {
                    Outcome::Unchanged { note, .. } | Outcome::Queued { reason: note } => Some(note),
                    Outcome::Applied(_) => None,
                };
                return Ok(Committed {
                    previous: decision.previous,
                    phase: decision.previous,
                    outcome: "unchanged",
                    note,
                    generation: mod_revision,
                    created: create_revision,
                    serving,
                    at: Instant::now(),
                });
            };
            let phase = state.phase;
            let record = NoticeRecord {
                notice: Some(notice),
                state,
                by: self.name.clone(),
                at: now,
            };
            let write = self
                .etcd
                .txn(
                    vec![mod_revision_is(&key, mod_revision), prefix_not_empty(&serves)],
                    vec![put_op(&key, encode(&record), 0), prefix_op(&serves)],
                    Vec::new(),
                )
                .await?;
            if write.succeeded {
                let generation = write.header.map_or(0, |h| h.revision);
                return Ok(Committed {
                    previous: decision.previous,
                    phase,
                    outcome: "applied",
                    note: None,
                    generation,
                    created: if create_revision == 0 {
                        generation
                    } else {
                        create_revision
                    },
                    serving: serving_of(&range_kvs(&write, 1)),
                    at: Instant::now(),
                });
            }
            // Another node changed the notice (or the last serving node left): decide again.
        }
        Err(NoticeFailure::Unavailable(format!(
            "{vm}: the notice kept changing under {MAX_RACES} attempts; try again"
        )))
    }

    /// Step 4: the serving nodes' acknowledgements (and, when asked, their drain).
    async fn hear(
        &self,
        vm: &VmId,
        committed: &Committed,
        started: Instant,
        drain: Option<(Duration, u64)>,
    ) -> Heard {
        let expected: BTreeSet<String> = committed.serving.iter().map(|s| s.node.clone()).collect();
        // ack_timeout counts from the commit: a commit slowed by an election does not eat it.
        let ack_deadline = committed.at + self.ack_timeout;
        let deadline = drain.map_or(ack_deadline, |(timeout, _)| (started + timeout).max(ack_deadline));
        let mut heard = Heard::default();
        let generation = committed.generation;
        let elapsed = || millis(started.elapsed());
        let done = |heard: &Heard, now: Instant| {
            let missing = expected
                .iter()
                .any(|n| !heard.gone.contains(n) && !heard.acks.contains_key(n));
            match drain {
                None => !missing || now >= ack_deadline,
                Some((_, threshold)) => {
                    let active: u64 = heard
                        .acks
                        .iter()
                        .filter(|(n, _)| expected.contains(*n) && !heard.gone.contains(*n))
                        .map(|(_, (a, _))| a.active)
                        .sum();
                    (!missing && active <= threshold) || now >= deadline
                }
            }
        };
        let prefix = self.keys.vm(vm);
        // Watch first, from etcd's current revision, then list: a watch from a past revision starts
        // "unsynced" in etcd and gets its first events up to 100 ms late (etcd syncs such
        // watchers every 100 ms); one from now is live at once. The list covers what came before.
        let mut opened = self.etcd.watch(&prefix, 0).await.ok();
        let mut revision = match self.etcd.list(&prefix).await {
            Ok((kvs, revision)) => {
                for kv in &kvs {
                    heard.take(vm, self, kv, false, generation, elapsed());
                }
                // Serving nodes whose registration is already gone.
                for node in &expected {
                    let key = self.keys.serves(vm, node);
                    if !kvs.iter().any(|kv| kv.key == key.as_bytes()) {
                        heard.gone.insert(node.clone());
                    }
                }
                revision
            }
            Err(_) => 0,
        };
        while !done(&heard, Instant::now()) {
            let watch = match opened.take() {
                Some(watch) => Some(watch),
                None if revision > 0 => self.etcd.watch(&prefix, revision + 1).await.ok(),
                None => None,
            };
            let Some(mut watch) = watch else {
                // No watch: look again shortly (etcd is struggling; this is the slow path).
                tokio::time::sleep(
                    Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
                if let Ok((kvs, r)) = self.etcd.list(&prefix).await {
                    revision = r;
                    for kv in &kvs {
                        heard.take(vm, self, kv, false, generation, elapsed());
                    }
                }
                continue;
            };
            loop {
                let next = tokio::time::timeout_at(deadline, watch.next()).await;
                match next {
                    Err(_) => break,
                    Ok(Ok(WatchEvent::Events(events))) => {
                        for event in events {
                            if let Some(kv) = event.kv {
                                revision = revision.max(kv.mod_revision);
                                let deleted = event.r#type == EventType::Delete as i32;
                                heard.take(vm, self, &kv, deleted, generation, elapsed());
                            }
                        }
                    }
                    Ok(Ok(WatchEvent::Progress(r))) => revision = revision.max(r),
                    Ok(Ok(WatchEvent::Compacted(_))) | Ok(Err(_)) => {
                        revision = 0;
                        break;
                    }
                }
                if done(&heard, Instant::now()) {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        heard
    }

    fn reply(
        &self,
        vm: &VmId,
        request: &NoticeRequest,
        committed: Committed,
        heard: Heard,
        started: Instant,
        threshold: Option<u64>,
    ) -> NoticeResponse {
        let mut balancers = Vec::new();
        let mut last_ack = 0;
        let mut complete = true;
        let mut active_total = 0;
        for serving in &committed.serving {
            let node = &serving.node;
            let result = match heard.acks.get(node) {
                Some((ack, at)) => {
                    last_ack = last_ack.max(*at);
                    if !heard.gone.contains(node) {
                        active_total += ack.active;
                    }
                    BalancerResult {
                        name: node.clone(),
                        kind: "fleet".into(),
                        serves: Some(true),
                        applied: ack.applied,
                        error: ack.error.clone(),
                        elapsed_ms: *at,
                        backends: ack.backends.clone(),
                        active: threshold.map(|_| ack.active),
                        drained: threshold.map(|t| ack.active <= t),
                        pending: false,
                    }
                }
                None => {
                    complete = false;
                    let error = if heard.gone.contains(node) {
                        "left the fleet (its lease expired) before acknowledging".to_string()
                    } else {
                        format!("no acknowledgement within {} ms", millis(self.ack_timeout))
                    };
                    BalancerResult {
                        name: node.clone(),
                        kind: "fleet".into(),
                        serves: Some(true),
                        applied: false,
                        error: Some(error),
                        elapsed_ms: millis(started.elapsed()),
                        backends: Vec::new(),
                        active: None,
                        drained: None,
                        pending: false,
                    }
                }
            };
            balancers.push(result);
        }
        {
            let mut stats = self.stats.lock();
            if complete {
                stats.observe_ack(last_ack as f64 / 1000.0);
            } else {
                stats.ack_timeouts += 1;
            }
        }
        let drain = threshold.map(|threshold| {
            let drained = complete && active_total <= threshold;
            DrainReport {
                drained,
                timed_out: !drained,
                waited_ms: millis(started.elapsed()),
                threshold,
                active: active_total,
                remaining: Vec::new(),
            }
        });
        NoticeResponse {
            vm: vm.clone(),
            notice: request.phase,
            outcome: committed.outcome.to_string(),
            previous_phase: committed.previous,
            phase: committed.phase,
            migration: (committed.created > 0).then_some(committed.created as u64),
            note: committed.note,
            balancers,
            drain,
        }
    }
}

//! The migration module: it learns that a VM is about to migrate (from the API, the CLI or an
//! event source), identifies every balancer that serves the VM, notifies each before the migration
//! begins, optionally waits until the VM is drained, and notifies again when the migration ends.
//! Deadlines and ramps come from the registry in `core`; this module adds the clock, the sockets,
//! the retries and durability.
//!
//! A notice goes **validate → decide → persist → deliver → confirm → reply**:
//!
//! - *decide*: the registry (`core`'s reducer) applies it under a short lock, so the capacity guard
//!   sees every other VM's latest phase;
//! - *persist*: with a state file, the change is on disk before anything is told or acknowledged
//!   (if it cannot be written, the change is undone and the notice fails: nothing half-applied);
//! - *deliver*: every balancer is told at once, each within its timeout ([`delivery`]); a balancer
//!   that hangs is not waited for again, and whatever could not be told is retried with the VM's
//!   current phase;
//! - *confirm*: a VM that no balancer is known to serve is identified by the answers; if none
//!   serves it the change is undone (404), and if some could not be asked it is undone too (503:
//!   unreachable is not unknown).
//!
//! Notices of one VM go one after another; notices of different VMs never wait for each other.
//! The peer API's commands take the same path with [`Registry::follow`] as the decision and this
//! node's own balancers as the audience. A fleet mode replaces the peers' part of *deliver*.
//!
//! [`delivery`]: crate::delivery

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::join_all;
use handover_core::api::{
    Applied, BalancerResult, BalancerStatus, ConnectionReport, DrainReport, DrainStatus, NoticeRequest,
    NoticeResponse, VmPhase,
};
use handover_core::balancer::BalancerError;
use handover_core::config::Config;
use handover_core::migration::{
    AdaptiveStatus, MigrationProgress, MigrationRecord, NoticeError, NoticeOptions, Outcome, Registry,
    RegistryDefaults, RegistrySnapshot, Topology, Transition, VmUndo,
};
use handover_core::model::VmId;
use handover_core::phase::{MAX_DEADLINE_MS, Notice, Phase, PhaseCommand, Readdress, VmState};
use handover_core::time::{Millis, millis};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::delivery::{Balancers, Delivery, Scope};
use crate::durable::Durable;
use crate::fanout::{self, BalancerSlot};
use crate::keyed_lock::KeyedLocks;
use crate::stats::Stats;

/// How often drain status is polled while waiting for drained.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// A run-loop iteration this late means the process was frozen (it wakes at least every second).
const FROZEN: Duration = Duration::from_secs(3);
/// Longest an adaptive level's write to the fleet (etcd) holds the VM's notices back.
const LEVEL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for drained a caller may ask for.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Shortest deadline a notice may set: below it no migration could end in time, and the balancers'
/// own enforcement (deadline plus one second) would be most of it.
pub const MIN_DEADLINE_MS: u64 = 1000;

/// Why a notice was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The registry refused it (capacity guard, or no migration in progress).
    #[error(transparent)]
    Rejected(#[from] NoticeError),
    /// A field of the notice is not acceptable.
    #[error("{message}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The fleet's store (etcd) cannot be reached: nothing was applied.
    #[error("{0}")]
    Unavailable(String),
    /// No balancer serves the VM.
    #[error("no balancer serves VM {vm}")]
    UnknownVm {
        /// The VM.
        vm: VmId,
        /// What every balancer answered.
        results: Vec<BalancerResult>,
    },
    /// No balancer that answered serves the VM, and some could not be asked: it may be served
    /// by one of them, so nothing was changed.
    #[error("no balancer that answered serves VM {vm}, and {} could not be asked ({}); nothing was changed: send the notice again when they answer", .unasked.len(), .unasked.join(", "))]
    Unidentified {
        /// The VM.
        vm: VmId,
        /// The balancers that could not be asked.
        unasked: Vec<String>,
        /// What every balancer answered.
        results: Vec<BalancerResult>,
    },
    /// The change could not be made durable (state file): it was undone.
    #[error("the notice was not applied: cannot save the state file: {reason}")]
    NotSaved {
        /// Why.
        reason: String,
    },
}

/// The drained threshold of each VM: the lowest of its pools'.
fn thresholds(config: &Config) -> HashMap<VmId, u64> {
    let mut thresholds: HashMap<VmId, u64> = HashMap::new();
    for pool in &config.pools {
        for backend in &pool.backends {
            let t = thresholds
                .entry(backend.vm.clone())
                .or_insert(pool.drained_threshold);
            *t = (*t).min(pool.drained_threshold);
        }
    }
    thresholds
}

/// The registry and, for each VM, the number of its latest change (deliveries of older changes
/// stand aside).
#[derive(Debug)]
struct Book {
    registry: Registry,
    seq: HashMap<VmId, u64>,
}

impl Book {
    fn bump(&mut self, vm: &VmId) -> u64 {
        let seq = self.seq.entry(vm.clone()).or_insert(0);
        *seq += 1;
        *seq
    }

    fn seq(&self, vm: &VmId) -> u64 {
        self.seq.get(vm).copied().unwrap_or(0)
    }

    /// The delivery of a VM's current phase.
    fn current(&self, vm: &VmId, now: Millis, scope: Scope) -> Delivery {
        let state = self.registry.vm(vm);
        Delivery {
            vm: vm.clone(),
            command: self.registry.command_for(vm, now),
            readdress: state.and_then(|s| s.readdress.clone()),
            seq: self.seq(vm),
            changed_at: self.changed_at(vm),
            scope,
        }
    }

    /// When the VM's phase was last changed by the node that drives it (0 for a VM never seen).
    fn changed_at(&self, vm: &VmId) -> Millis {
        self.registry.vm(vm).map_or(0, |s| s.changed_at)
    }

    /// Due transitions (deadlines, ramp ends, admissions), each as a delivery.
    fn tick(&mut self, now: Millis) -> Vec<(Transition, Option<VmState>, Delivery)> {
        let before: BTreeMap<VmId, VmState> =
            self.registry.vms().map(|(v, s)| (v.clone(), s.clone())).collect();
        let transitions = self.registry.tick(now);
        transitions
            .into_iter()
            .map(|t| {
                let seq = self.bump(&t.vm);
                let delivery = delivery_of(&t, seq, self.changed_at(&t.vm));
                let before = before.get(&t.vm).cloned();
                (t, before, delivery)
            })
            .collect()
    }
}

fn delivery_of(transition: &Transition, seq: u64, changed_at: Millis) -> Delivery {
    Delivery {
        vm: transition.vm.clone(),
        command: transition.command,
        readdress: transition.readdress.clone(),
        seq,
        changed_at,
        scope: if transition.origin.is_local_only() {
            Scope::Local
        } else {
            Scope::All
        },
    }
}

/// The coordinator.
pub struct Coordinator {
    clock: Clock,
    book: Mutex<Book>,
    /// Notices (and peer commands) of one VM go one at a time.
    notices: KeyedLocks<VmId>,
    balancers: Balancers,
    /// Deliveries for the run loop to send (transitions found while handling a notice).
    outbox: Mutex<Vec<Delivery>>,
    durable: OnceLock<Arc<dyn Durable>>,
    drain_timeout: Duration,
    thresholds: Mutex<HashMap<VmId, u64>>,
    /// The threshold a prepare asked for, which quiescence uses too.
    prepare_thresholds: Mutex<HashMap<VmId, u64>>,
    wake: Notify,
    stats: Mutex<Stats>,
    /// In fleet mode: takes notices instead of the fan-out (see [`crate::fleet`]).
    fleet: std::sync::OnceLock<Arc<dyn crate::fleet::FleetHook>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("slots", &self.balancers.slots())
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator over a configuration's pools and the given balancers.
    pub fn new(config: &Config, slots: Vec<BalancerSlot>, clock: Clock) -> Arc<Self> {
        let thresholds = thresholds(config);
        let defaults = RegistryDefaults {
            deadline: config.migration.deadline,
            ..RegistryDefaults::default()
        };
        Arc::new(Self {
            clock,
            book: Mutex::new(Book {
                registry: Registry::new(Topology::from_config(config), defaults),
                seq: HashMap::new(),
            }),
            notices: KeyedLocks::default(),
            balancers: Balancers::new(slots),
            outbox: Mutex::new(Vec::new()),
            durable: OnceLock::new(),
            drain_timeout: config.migration.drain_timeout,
            thresholds: Mutex::new(thresholds),
            prepare_thresholds: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stats: Mutex::new(Stats::default()),
            fleet: std::sync::OnceLock::new(),
        })
    }

    /// Follows a reload: the local pools (their VMs, guards, deadlines, thresholds) are the new
    /// configuration's; every VM keeps its phase, deadline and ramp.
    pub fn reconfigure(&self, config: &Config) {
        *self.thresholds.lock() = thresholds(config);
        self.book
            .lock()
            .registry
            .set_topology(Topology::from_config(config));
    }

    /// Makes every change durable here before it is acknowledged (set once, before serving).
    pub fn set_durable(&self, durable: Arc<dyn Durable>) {
        let _ = self.durable.set(durable);
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The balancers.
    pub fn slots(&self) -> &[BalancerSlot] {
        self.balancers.slots()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().clone()
    }

    /// Every VM the registry has seen, with its state.
    pub fn vm_states(&self) -> Vec<(VmId, VmState)> {
        self.book
            .lock()
            .registry
            .vms()
            .map(|(vm, s)| (vm.clone(), s.clone()))
            .collect()
    }

    /// Migrations, oldest first.
    pub fn history(&self) -> Vec<MigrationRecord> {
        self.book.lock().registry.history().cloned().collect()
    }

    /// Records hypervisor progress on a VM's current migration, and steps its adaptive drain under
    /// the VM's lock (in order with its notices): a new level is saved, then told to every balancer
    /// the VM's changes reach (peers included, or the fleet through etcd) as a drain command
    /// carrying it. While the VM quiesces, every balancer is asked how much still reaches it (see
    /// [`Coordinator::in_flight`]), and the first time that is at most the drained threshold, the
    /// VM is quiesced. False when the VM has no migration.
    pub async fn record_progress(&self, vm: &VmId, progress: MigrationProgress) -> bool {
        if !self.book.lock().registry.record_progress(vm, progress) {
            return false;
        }
        let serial = self.notices.lock(vm).await;
        let now = self.clock.now_ms();
        let adapted = {
            let mut book = self.book.lock();
            book.registry.adapt(vm, now).map(|transition| {
                let seq = book.bump(vm);
                let changed_at = book.changed_at(vm);
                let status = book.registry.adaptive_status(vm);
                (delivery_of(&transition, seq, changed_at), transition, status)
            })
        };
        if let Some((delivery, transition, status)) = adapted {
            if let Err(reason) = self.persist().await {
                // The level is told anyway: it only ever lowers or restores a share, and the
                // balancers' own deadline still bounds it.
                error!(%vm, %reason, "cannot save the state file after an adaptive step");
            }
            if let Some(status) = &status {
                info!(%vm, level = %status.latest.level, decision = %status.latest.decision, lambda = ?status.latest.lambda, "adaptive drain changed the level");
            }
            self.deliver(&delivery).await;
            let level = match transition.command {
                PhaseCommand::Drain { level, .. } => level,
                _ => None,
            };
            if let (Some(fleet), Some(level)) = (self.fleet.get(), level) {
                // Bounded: the VM's notices wait behind this lock. A write that comes too late
                // cannot undo a newer one (it is a compare-and-swap on the notice's generation).
                let written = tokio::time::timeout(LEVEL_WRITE_TIMEOUT, fleet.publish_level(vm, level)).await;
                let failed = match written {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(reason),
                    Err(_) => Some(format!("no answer within {LEVEL_WRITE_TIMEOUT:?}")),
                };
                if let Some(reason) = failed {
                    warn!(%vm, %reason, "cannot write the adaptive level to the fleet; the other nodes keep the last one until the next change");
                }
            }
        }
        drop(serial);
        let (quiescing, quiesced) = {
            let book = self.book.lock();
            (
                book.registry.quiescing(vm),
                book.registry
                    .adaptive_status(vm)
                    .is_some_and(|s| s.quiesced_at.is_some()),
            )
        };
        if quiescing && !quiesced {
            let threshold = self
                .prepare_thresholds
                .lock()
                .get(vm)
                .copied()
                .or_else(|| self.thresholds.lock().get(vm).copied())
                .unwrap_or(0);
            let Some(active) = self.in_flight(vm).await else {
                // A balancer that serves the VM cannot be seen: its traffic is unknown, so the
                // VM is not called quiesced (`handover migrate`'s hold ends at its bound).
                return true;
            };
            let now = self.clock.now_ms();
            if self
                .book
                .lock()
                .registry
                .record_in_flight(vm, now, active, threshold)
            {
                info!(%vm, active, threshold, "quiesced: nothing left in flight to the VM");
            }
        }
        true
    }

    /// What still reaches a VM through every balancer (and, in a fleet, the other nodes, as their
    /// acknowledgements say), for quiescence. A balancer known to hang is not asked (as in the
    /// wait for drained); `None` when one known to serve the VM cannot be seen, or the fleet's
    /// acknowledgements cannot be read.
    async fn in_flight(&self, vm: &VmId) -> Option<u64> {
        let slots = self.slots();
        let mut unseen = false;
        let mut asked = Vec::new();
        for index in 0..slots.len() {
            if self.balancers.hung_since(index).is_some() {
                unseen |= self.balancers.serves_known(index, vm) == Some(true);
            } else {
                asked.push(index);
            }
        }
        let refs: Vec<&BalancerSlot> = asked.iter().map(|i| &slots[*i]).collect();
        let mut active = 0;
        for (index, status) in asked.iter().zip(fanout::drain_all(&refs, vm).await) {
            match status {
                Ok(s) if s.serves => active += s.active,
                Ok(_) => {}
                // A balancer that answers that it cannot tell (nginx) is left out.
                Err(BalancerError::Rejected(_)) => {}
                Err(_) => unseen |= self.balancers.serves_known(*index, vm) == Some(true),
            }
        }
        if unseen {
            return None;
        }
        if let Some(fleet) = self.fleet.get() {
            match fleet.in_flight_elsewhere(vm).await {
                Ok(elsewhere) => active += elsewhere,
                Err(reason) => {
                    warn!(%vm, %reason, "cannot read the fleet's in-flight; quiescence not judged now");
                    return None;
                }
            }
        }
        Some(active)
    }

    /// Where a VM's adaptive drain stands (its current or last migration).
    pub fn adaptive_status(&self, vm: &VmId) -> Option<AdaptiveStatus> {
        self.book.lock().registry.adaptive_status(vm)
    }

    /// The phase of every VM the registry knows, as a peer fetches it when it starts.
    pub fn phases(&self) -> Vec<VmPhase> {
        let now = self.clock.now_ms();
        let book = self.book.lock();
        book.registry
            .vms()
            .map(|(vm, state)| VmPhase {
                vm: vm.clone(),
                command: book.registry.command_for(vm, now),
                since: state.changed_at,
            })
            .collect()
    }

    /// Puts this node in fleet mode: notices go to the fleet (set once, before serving).
    pub fn set_fleet(&self, fleet: Arc<dyn crate::fleet::FleetHook>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<dyn crate::fleet::FleetHook>> {
        self.fleet.get()
    }

    /// Fleet mode: makes the fleet's state of a VM (`None`: stable) this node's, and applies it to
    /// this node's own balancers (each within its timeout, as a notice's delivery). The registry
    /// keeps the fleet's deadline, so the VM is restored here at its deadline even when etcd
    /// cannot be reached. Saved after the balancers are told: etcd has it already.
    pub async fn adopt(self: &Arc<Self>, vm: &VmId, state: Option<VmState>) -> Vec<BalancerResult> {
        let serial = self.notices.lock(vm).await;
        let now = self.clock.now_ms();
        let (before, transition, delivery) = {
            let mut book = self.book.lock();
            let before = book.registry.vm(vm).cloned();
            if before.is_none() && state.is_none() {
                return Vec::new();
            }
            let transition = book.registry.adopt(vm, state, now);
            book.bump(vm);
            (before, transition, book.current(vm, now, Scope::Local))
        };
        if let Some(transition) = &transition {
            self.observe_transition(transition, before.as_ref(), now);
            info!(%vm, from = %transition.from, to = %transition.to, "migration phase changed (fleet)");
        }
        let results = self.deliver(&delivery).await;
        drop(serial);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(reason) = this.persist().await {
                error!(%reason, "cannot save the state file");
            }
        });
        self.wake.notify_one();
        results
    }

    fn validate(&self, request: &NoticeRequest) -> Result<NoticeOptions, CoordinatorError> {
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
            return Err(CoordinatorError::BadRequest {
                field,
                message: format!("{field}: only a completed notice can move a VM to new addresses"),
            });
        }
        if let Some(deadline) = request.deadline_ms
            && !(MIN_DEADLINE_MS..=MAX_DEADLINE_MS).contains(&deadline)
        {
            return Err(CoordinatorError::BadRequest {
                field: "deadline_ms",
                message: format!(
                    "deadline_ms: {deadline} is out of range; expected {MIN_DEADLINE_MS} (1 s) to {MAX_DEADLINE_MS} (7 days)"
                ),
            });
        }
        Ok(NoticeOptions {
            deadline_ms: request.deadline_ms,
            readdress: Some(readdress).filter(|r| !r.is_empty()),
        })
    }

    /// Handles a notice: validate, decide, persist, deliver, confirm, (wait), reply.
    pub async fn notice(
        self: &Arc<Self>,
        vm: &VmId,
        request: &NoticeRequest,
    ) -> Result<NoticeResponse, CoordinatorError> {
        let options = self.validate(request)?;
        if let (Notice::Prepare, Some(threshold)) = (request.phase, request.threshold) {
            self.prepare_thresholds.lock().insert(vm.clone(), threshold);
        }
        if let Some(fleet) = self.fleet.get() {
            // Fleet mode: etcd decides, and every serving node's watcher applies it (this one's
            // through [`Coordinator::adopt`]).
            let result = fleet.notice(vm, request).await;
            let outcome = match &result {
                Ok(response) => response.outcome.clone(),
                Err(CoordinatorError::UnknownVm { .. }) => "unknown_vm".into(),
                Err(CoordinatorError::Unavailable(_)) => "unavailable".into(),
                Err(_) => "rejected".into(),
            };
            self.count_notice(request.phase, &outcome);
            return result;
        }
        let serial = self.notices.lock(vm).await;
        let now = self.clock.now_ms();

        // Decide.
        let decide = |options: NoticeOptions| {
            let (ticked, decided) = {
                let mut book = self.book.lock();
                let ticked = book.tick(now);
                let previous_phase = book.registry.phase(vm);
                let undo = book.registry.undo_point(vm);
                let outcome = book.registry.apply(vm, request.phase, now, options);
                let seq = match &outcome {
                    Ok(_) => book.bump(vm),
                    Err(_) => book.seq(vm),
                };
                let changed_at = book.changed_at(vm);
                (ticked, (previous_phase, undo, outcome, seq, changed_at))
            };
            // Outside the registry's lock: observing a transition reads the registry again.
            self.hand_to_run_loop(ticked);
            decided
        };
        let (mut previous_phase, mut undo, mut outcome, mut seq, mut changed_at) = decide(options.clone());
        if matches!(outcome, Err(NoticeError::NotMigrating { .. })) && self.learn_from_peers(now).await {
            // The migration may have begun at another node while this one could not hear of it
            // (frozen, restarting): what the peers know was taken in, decide again.
            (previous_phase, undo, outcome, seq, changed_at) = decide(options);
        }
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                self.count_notice(request.phase, "rejected");
                return Err(e.into());
            }
        };

        // Persist.
        if let Err(reason) = self.persist().await {
            self.undo(undo).await;
            self.count_notice(request.phase, "not_saved");
            error!(%vm, notice = %request.phase, %reason, "notice refused: the state file cannot be written");
            return Err(CoordinatorError::NotSaved { reason });
        }

        // Deliver and confirm.
        let mut note = None;
        let (outcome_name, results) = match outcome {
            Outcome::Queued { reason } => {
                self.count_notice(request.phase, "queued");
                info!(%vm, %reason, "prepare queued by the capacity guard");
                drop(serial);
                return Ok(self.response(
                    vm,
                    request.phase,
                    "queued",
                    previous_phase,
                    Some(reason),
                    Vec::new(),
                ));
            }
            Outcome::Unchanged { note: why, .. } => {
                drop(serial);
                // Re-assert the current state: a balancer that restarted gets it back.
                let scope = self.scope_of(vm);
                let delivery = self.book.lock().current(vm, now, scope);
                note = Some(why);
                ("unchanged", self.deliver(&delivery).await)
            }
            Outcome::Applied(transition) => {
                let before = undo.state().cloned();
                let delivery = delivery_of(&transition, seq, changed_at);
                let identify = previous_phase == Phase::Stable && !self.known_served(vm);
                if !identify {
                    drop(serial);
                }
                let results = self.deliver(&delivery).await;
                if identify && !results.iter().any(|r| r.serves == Some(true)) {
                    self.undo(undo).await;
                    let unasked: Vec<String> = results
                        .iter()
                        .filter(|r| r.error.is_some() && r.serves != Some(false))
                        .map(|r| format!("{}: {}", r.name, r.error.as_deref().unwrap_or_default()))
                        .collect();
                    return Err(if unasked.is_empty() {
                        self.count_notice(request.phase, "unknown_vm");
                        CoordinatorError::UnknownVm {
                            vm: vm.clone(),
                            results,
                        }
                    } else {
                        self.count_notice(request.phase, "unidentified");
                        CoordinatorError::Unidentified {
                            vm: vm.clone(),
                            unasked,
                            results,
                        }
                    });
                }
                self.observe_transition(&transition, before.as_ref(), now);
                info!(%vm, from = %transition.from, to = %transition.to, notice = %request.phase, "migration phase changed");
                let serving: Vec<&BalancerResult> =
                    results.iter().filter(|r| r.serves == Some(true)).collect();
                if !serving.is_empty() && !serving.iter().any(|r| r.applied) {
                    let names: Vec<&str> = serving.iter().map(|r| r.name.as_str()).collect();
                    note = Some(format!(
                        "not applied yet: {} could not be told; the phase is kept and sent as soon as {}",
                        names.join(", "),
                        if names.len() == 1 {
                            "it answers"
                        } else {
                            "they answer"
                        }
                    ));
                    ("pending", results)
                } else {
                    ("applied", results)
                }
            }
        };
        self.count_notice(request.phase, outcome_name);
        self.wake.notify_one();

        let mut response = self.response(vm, request.phase, outcome_name, previous_phase, note, results);
        if request.wait_drained && response.phase.is_drained() {
            let timeout = request
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(self.drain_timeout)
                .min(MAX_DRAIN_TIMEOUT);
            let threshold = request
                .threshold
                .unwrap_or_else(|| self.thresholds.lock().get(vm).copied().unwrap_or(0));
            let report = self
                .wait_drained(vm, timeout, threshold, &mut response.balancers)
                .await;
            if let Some(id) = response.migration {
                self.book.lock().registry.record_drain_wait(
                    id,
                    self.clock.now_ms(),
                    report.waited_ms,
                    report.drained,
                );
            }
            self.stats
                .lock()
                .drain_wait
                .observe(report.waited_ms as f64 / 1000.0);
            response.drain = Some(report);
        }
        Ok(response)
    }

    fn response(
        &self,
        vm: &VmId,
        notice: Notice,
        outcome: &str,
        previous_phase: Phase,
        note: Option<String>,
        balancers: Vec<BalancerResult>,
    ) -> NoticeResponse {
        let (phase, migration) = {
            let book = self.book.lock();
            (
                book.registry.phase(vm),
                book.registry.vm(vm).and_then(|s| s.migration),
            )
        };
        NoticeResponse {
            vm: vm.clone(),
            notice,
            outcome: outcome.to_string(),
            previous_phase,
            phase,
            migration,
            note,
            balancers,
            drain: None,
        }
    }

    /// Undoes a change of one VM (and saves that), so that a refused notice changes nothing.
    async fn undo(&self, undo: VmUndo) {
        let vm = undo.vm().clone();
        {
            let mut book = self.book.lock();
            book.registry.revert(undo);
            book.bump(&vm);
        }
        self.balancers.forget(&vm);
        if let Err(reason) = self.persist().await {
            warn!(%vm, %reason, "cannot save the state file after undoing a change");
        }
    }

    /// Whether a balancer is known to serve the VM (by its configuration or its last answer).
    fn known_served(&self, vm: &VmId) -> bool {
        (0..self.balancers.slots().len()).any(|i| self.balancers.serves_known(i, vm) == Some(true))
    }

    /// Who hears of a VM's changes from this node.
    fn scope_of(&self, vm: &VmId) -> Scope {
        match self.book.lock().registry.vm(vm) {
            Some(state) if state.origin.is_local_only() => Scope::Local,
            _ => Scope::All,
        }
    }

    async fn persist(&self) -> Result<(), String> {
        match self.durable.get() {
            Some(durable) => durable.persist().await,
            None => Ok(()),
        }
    }

    /// Tells the delivery's balancers at once, each within its timeout (a balancer known not to
    /// answer is not waited for: see [`crate::delivery`]).
    async fn deliver(&self, delivery: &Delivery) -> Vec<BalancerResult> {
        let current = |vm: &VmId| self.book.lock().seq(vm);
        let results = self.balancers.deliver(delivery, &current).await;
        results
            .into_iter()
            .map(|(_, result)| {
                self.account(&result, &delivery.vm);
                result
            })
            .collect()
    }

    /// Counts a call, and logs what could not be told (a balancer already known not to answer is
    /// not logged again for every VM).
    fn account(&self, result: &BalancerResult, vm: &VmId) {
        self.stats
            .lock()
            .balancer_call(&result.name, result.error.is_none());
        if let Some(error) = &result.error
            && self.balancers.should_log(&result.name)
        {
            warn!(balancer = %result.name, %vm, %error, "balancer not told; it is sent the current phase when it answers (logged once per 5 s per balancer)");
        }
    }

    /// Applies a command on this node's own balancers only, and follows it in the registry (the
    /// peer API: the node that sent it drives the migration and has it on disk; this one acts as a
    /// load-balancing module, and its own deadline and later notices agree with the sender). The
    /// registry is saved after the reply.
    /// `changed_at` is when the sender changed the VM's phase; a command older than what this
    /// node knows (one in flight while it was frozen, say) is not applied over it.
    pub async fn apply_local(
        self: &Arc<Self>,
        vm: &VmId,
        command: PhaseCommand,
        changed_at: Option<Millis>,
    ) -> Result<Applied, CoordinatorError> {
        let local = self.balancers.in_scope(Scope::Local);
        let known: Vec<Option<bool>> = local
            .iter()
            .map(|i| self.balancers.serves_known(*i, vm))
            .collect();
        if known.iter().all(|k| *k == Some(false)) {
            return Ok(Applied {
                serves: false,
                backends: Vec::new(),
            });
        }
        let identify = !known.contains(&Some(true));
        let _serial = self.notices.lock(vm).await;
        let now = self.clock.now_ms();
        let at = changed_at.unwrap_or(now);
        let newer = {
            let book = self.book.lock();
            book.registry.is_newer_than(vm, at).then(|| book.changed_at(vm))
        };
        if let Some(since) = newer {
            info!(%vm, %at, %since, "a peer's command older than this node's view ignored");
            return Ok(self.local_view(vm).await);
        }
        let (undo, transition, seq, before) = {
            let mut book = self.book.lock();
            let undo = book.registry.undo_point(vm);
            let before = book.registry.vm(vm).cloned();
            let transition = book.registry.follow(vm, command, now, at);
            let seq = book.bump(vm);
            (undo, transition, seq, before)
        };
        let delivery = Delivery {
            vm: vm.clone(),
            command,
            readdress: None,
            seq,
            changed_at: at,
            scope: Scope::Local,
        };
        let results = self.deliver(&delivery).await;
        let serves = results.iter().any(|r| r.serves == Some(true));
        if identify && !serves {
            self.undo(undo).await;
            return Ok(Applied {
                serves: false,
                backends: Vec::new(),
            });
        }
        // Saved, but not waited for: the node that sent it has it on disk already, and this node
        // asks its peers for the current phases when it starts again.
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(reason) = this.persist().await {
                error!(%reason, "cannot save the state file");
            }
        });
        if let Some(transition) = &transition {
            self.observe_transition(transition, before.as_ref(), now);
            info!(%vm, from = %transition.from, to = %transition.to, "migration phase changed by a peer");
        }
        self.wake.notify_one();
        Ok(Applied {
            serves,
            backends: results.into_iter().flat_map(|r| r.backends).collect(),
        })
    }

    /// What this node's own balancers apply for a VM now (the answer to a command it ignored).
    async fn local_view(&self, vm: &VmId) -> Applied {
        let status = self.local_status().await;
        let backends: Vec<handover_core::api::BackendReport> = status
            .pools
            .into_iter()
            .flat_map(|pool| {
                let name = pool.name;
                pool.backends.into_iter().filter(|b| &b.vm == vm).map(move |b| {
                    handover_core::api::BackendReport {
                        pool: name.clone(),
                        address: b.address,
                        weight: b.weight,
                        effective_weight: b.effective_weight,
                        phase: b.phase,
                        active: b.active,
                    }
                })
            })
            .collect();
        Applied {
            serves: !backends.is_empty(),
            backends,
        }
    }

    /// Moves a VM's backends on this node's own balancers only (the peer API).
    pub async fn readdress_local(&self, vm: &VmId, change: &Readdress) -> Applied {
        let local: Vec<&BalancerSlot> = self.slots().iter().filter(|s| !s.is_peer).collect();
        let answers = join_all(local.iter().map(|slot| async move {
            tokio::time::timeout(slot.timeout, slot.balancer.set_addresses(vm, change)).await
        }))
        .await;
        let mut applied = Applied {
            serves: false,
            backends: Vec::new(),
        };
        for result in answers.into_iter().flatten().flatten() {
            applied.serves |= result.serves;
            applied.backends.extend(result.backends);
        }
        applied
    }

    /// Everything the registry holds, for the state file.
    pub fn export(&self) -> RegistrySnapshot {
        self.book.lock().registry.snapshot()
    }

    /// Restores a saved registry (before serving).
    pub fn import(&self, snapshot: RegistrySnapshot) {
        self.book.lock().registry.restore(snapshot);
    }

    /// Drain status of this node's own balancers only.
    pub async fn drain_local(&self, vm: &VmId) -> DrainStatus {
        let local: Vec<&BalancerSlot> = self.slots().iter().filter(|s| !s.is_peer).collect();
        let statuses = fanout::drain_all(&local, vm).await;
        let mut status = DrainStatus {
            serves: false,
            active: 0,
            remaining: Vec::new(),
        };
        for (slot, s) in local.iter().zip(statuses) {
            if let Ok(s) = s {
                status.serves |= s.serves;
                status.active += s.active;
                status.remaining.extend(s.remaining.into_iter().map(|mut c| {
                    c.balancer = slot.balancer.name().to_string();
                    c
                }));
            }
        }
        status
    }

    /// Pools of this node's own balancers.
    pub async fn local_status(&self) -> BalancerStatus {
        let local: Vec<&BalancerSlot> = self.slots().iter().filter(|s| !s.is_peer).collect();
        let answers = join_all(
            local
                .iter()
                .map(|slot| async move { tokio::time::timeout(slot.timeout, slot.balancer.status()).await }),
        )
        .await;
        BalancerStatus {
            pools: answers
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|s| s.pools)
                .collect(),
        }
    }

    /// Before serving: learns from the peers what changed while this node was down, adopts drains
    /// an earlier run left on driven balancers, saves, and tells this node's own balancers the
    /// current phase of every VM that is not stable (the peers get it in the background, for the
    /// migrations this node drives).
    pub async fn rejoin(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let slots = self.slots();
        let newest = self.fetch_peer_phases().await;
        let learned_vms = self.learn(&newest, now);
        let learned = learned_vms.len();
        // Drains an earlier run left behind, that nothing here knows of.
        let local: Vec<&BalancerSlot> = slots.iter().filter(|s| !s.is_peer).collect();
        let found =
            join_all(local.iter().map(|slot| async move {
                tokio::time::timeout(slot.timeout, slot.balancer.leftovers()).await
            }))
            .await;
        let mut adopted = 0;
        for (slot, answer) in local.iter().zip(found) {
            let leftovers = match answer {
                Ok(Ok(leftovers)) => leftovers,
                Ok(Err(e)) => {
                    warn!(balancer = %slot.balancer.name(), error = %e, "cannot read what this balancer holds at start");
                    continue;
                }
                Err(_) => {
                    warn!(balancer = %slot.balancer.name(), "no answer at start");
                    continue;
                }
            };
            let mut book = self.book.lock();
            for leftover in leftovers {
                if book.registry.vm(&leftover.vm).is_some() || newest.contains_key(&leftover.vm) {
                    continue;
                }
                let note = format!(
                    "adopted at start: {} had {} (left by an earlier run; its start is unknown, so the deadline counts from now)",
                    slot.balancer.name(),
                    leftover.found
                );
                if book
                    .registry
                    .adopt_leftover(&leftover.vm, now, note.clone())
                    .is_some()
                {
                    book.bump(&leftover.vm);
                    adopted += 1;
                    warn!(vm = %leftover.vm, balancer = %slot.balancer.name(), found = %leftover.found, "drain left by an earlier run adopted");
                }
            }
        }
        if learned + adopted > 0
            && let Err(reason) = self.persist().await
        {
            error!(%reason, "cannot save the state file at start");
        }
        // Tell this node's balancers (now) and the peers (in the background).
        let (mine, theirs): (Vec<Delivery>, Vec<Delivery>) = {
            let book = self.book.lock();
            let active: Vec<(&VmId, &VmState)> = book
                .registry
                .vms()
                .filter(|(_, s)| s.phase != Phase::Stable)
                .collect();
            // What the peers changed reaches this node's balancers too (a VM its own state file
            // had draining may be stable by now).
            let mut local: std::collections::BTreeSet<&VmId> = active.iter().map(|(vm, _)| *vm).collect();
            local.extend(learned_vms.iter());
            (
                local
                    .into_iter()
                    .map(|vm| book.current(vm, now, Scope::Local))
                    .collect(),
                active
                    .iter()
                    .filter(|(_, s)| !s.origin.is_local_only())
                    .map(|(vm, _)| book.current(vm, now, Scope::Peers))
                    .collect(),
            )
        };
        let told = mine.len();
        join_all(mine.iter().map(|d| self.deliver(d))).await;
        self.outbox.lock().extend(theirs);
        self.wake.notify_one();
        info!(
            learned_from_peers = learned,
            adopted, told, "phases reconciled before serving"
        );
    }

    /// The newest phase of every VM the peers know (each within its timeout; those that do not
    /// answer are logged and skipped).
    async fn fetch_peer_phases(&self) -> BTreeMap<VmId, VmPhase> {
        let peers: Vec<&BalancerSlot> = self.slots().iter().filter(|s| s.is_peer).collect();
        let answers = join_all(
            peers
                .iter()
                .map(|slot| async move { tokio::time::timeout(slot.timeout, slot.balancer.phases()).await }),
        )
        .await;
        let mut newest: BTreeMap<VmId, VmPhase> = BTreeMap::new();
        for (slot, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(Ok(Some(phases))) => {
                    for phase in phases {
                        if newest.get(&phase.vm).is_none_or(|p| p.since < phase.since) {
                            newest.insert(phase.vm.clone(), phase);
                        }
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    warn!(peer = %slot.balancer.name(), error = %e, "cannot fetch the current phases from this peer")
                }
                Err(_) => {
                    warn!(peer = %slot.balancer.name(), "no answer from this peer for the current phases")
                }
            }
        }
        newest
    }

    /// Follows every phase a peer changed more recently than this node did; returns those VMs.
    fn learn(&self, newest: &BTreeMap<VmId, VmPhase>, now: Millis) -> Vec<VmId> {
        let mut book = self.book.lock();
        let mut learned = Vec::new();
        for (vm, phase) in newest {
            let ours = book.registry.vm(vm).map(|s| s.changed_at);
            if ours.is_none_or(|since| since < phase.since)
                && book
                    .registry
                    .follow(vm, phase.command, now, phase.since)
                    .is_some()
            {
                book.bump(vm);
                learned.push(vm.clone());
            }
        }
        learned
    }

    /// Takes in what the peers that answer know (not those known not to answer), and tells this
    /// node's own balancers what changed; whether anything did.
    async fn learn_from_peers(self: &Arc<Self>, now: Millis) -> bool {
        let peers: Vec<usize> = (0..self.slots().len())
            .filter(|i| self.slots()[*i].is_peer && self.balancers.hung_since(*i).is_none())
            .collect();
        if peers.is_empty() {
            return false;
        }
        let newest = self.fetch_peer_phases().await;
        let learned = self.learn(&newest, now);
        let deliveries: Vec<Delivery> = {
            let book = self.book.lock();
            learned
                .iter()
                .map(|vm| book.current(vm, now, Scope::Local))
                .collect()
        };
        join_all(deliveries.iter().map(|d| self.deliver(d))).await;
        !learned.is_empty()
    }

    /// After this process was frozen (SIGSTOP, a stalled VM), peers may have changed phases it
    /// missed and their retries may be seconds away: it asks them at once and tells its own
    /// balancers what changed.
    async fn catch_up(self: &Arc<Self>, frozen: Duration) {
        let started = Instant::now();
        // Calls that were in flight during the freeze timed out by this process's clock.
        self.balancers.clear_hung();
        let newest = self.fetch_peer_phases().await;
        let now = self.clock.now_ms();
        let learned = self.learn(&newest, now);
        // Told first, saved after: nothing is acknowledged here, and every millisecond counts
        // while the data plane already serves with the phases of before the freeze.
        let deliveries: Vec<Delivery> = {
            let book = self.book.lock();
            learned
                .iter()
                .map(|vm| book.current(vm, now, Scope::Local))
                .collect()
        };
        join_all(deliveries.iter().map(|d| self.deliver(d))).await;
        if !learned.is_empty()
            && let Err(reason) = self.persist().await
        {
            error!(%reason, "cannot save the state file");
        }
        warn!(
            frozen_ms = millis(frozen),
            learned = learned.len(),
            took_ms = millis(started.elapsed()),
            "this node was frozen; phases fetched again from its peers"
        );
    }

    /// Runs deadlines, ramp ends, queued prepares, deliveries and retries until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut last = Instant::now();
        loop {
            let next = self.next_wakeup();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            // The loop wakes at least every second: a much longer gap is a freeze.
            let gap = last.elapsed();
            last = Instant::now();
            if gap > FROZEN && self.slots().iter().any(|s| s.is_peer) {
                tokio::spawn({
                    let this = self.clone();
                    async move { this.catch_up(gap).await }
                });
            }
            let now = self.clock.now_ms();
            let ticked = self.book.lock().tick(now);
            self.hand_to_run_loop(ticked);
            let deliveries: Vec<Delivery> = std::mem::take(&mut *self.outbox.lock());
            if !deliveries.is_empty() {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(reason) = this.persist().await {
                        error!(%reason, "cannot save the state file");
                    }
                    join_all(deliveries.iter().map(|d| this.deliver(d))).await;
                });
            }
            for (index, vms) in self.balancers.retries.start_due(Instant::now()) {
                tokio::spawn(self.clone().retry_round(index, vms));
            }
        }
    }

    /// Logs and counts transitions found by a tick, and queues their deliveries for the run loop.
    /// Never call it with the registry's lock held.
    fn hand_to_run_loop(&self, ticked: Vec<(Transition, Option<VmState>, Delivery)>) {
        if ticked.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let mut outbox = Vec::new();
        for (transition, before, delivery) in ticked {
            self.observe_transition(&transition, before.as_ref(), now);
            info!(vm = %transition.vm, from = %transition.from, to = %transition.to, cause = ?transition.cause, "migration phase changed");
            if transition.needs_fanout() {
                outbox.push(delivery);
            }
        }
        self.outbox.lock().extend(outbox);
        self.wake.notify_one();
    }

    /// One retry round for a balancer: the first VM probes it; once it answers, every other VM it
    /// waits for is sent at once.
    async fn retry_round(self: Arc<Self>, index: usize, vms: Vec<VmId>) {
        let slot = &self.slots()[index];
        let mut answered = false;
        let mut rest = Vec::new();
        for vm in vms {
            let delivery = {
                let book = self.book.lock();
                let scope = match book.registry.vm(&vm) {
                    Some(state) if state.origin.is_local_only() => Scope::Local,
                    _ => Scope::All,
                };
                book.current(&vm, self.clock.now_ms(), scope)
            };
            if !delivery.scope.includes(slot) {
                self.balancers.retries.remove(index, &vm);
                continue;
            }
            if answered {
                rest.push(delivery);
                continue;
            }
            let current = |vm: &VmId| self.book.lock().seq(vm);
            let result = self.balancers.deliver_one(index, &delivery, &current, true).await;
            self.stats
                .lock()
                .balancer_call(&result.name, result.error.is_none());
            match &result.error {
                None => {
                    answered = true;
                    info!(balancer = %result.name, vm = %delivery.vm, "balancer answers again; sending it every phase it missed");
                }
                Some(error) => {
                    if self.balancers.should_log(&result.name) {
                        warn!(balancer = %result.name, vm = %delivery.vm, %error, retry_in = ?self.balancers.retries.backoff(index), "balancer still not answering (logged once per 5 s per balancer)");
                    }
                    break;
                }
            }
        }
        let current = |vm: &VmId| self.book.lock().seq(vm);
        let results = join_all(
            rest.iter()
                .map(|d| self.balancers.deliver_one(index, d, &current, true)),
        )
        .await;
        for result in &results {
            self.stats
                .lock()
                .balancer_call(&result.name, result.error.is_none());
        }
        self.balancers.retries.finish(index, answered);
        self.wake.notify_one();
    }

    fn next_wakeup(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(1);
        if let Some(due) = self.book.lock().registry.next_due() {
            next = next.min(self.clock.instant_of(due));
        }
        if let Some(retry) = self.balancers.retries.next_due() {
            next = next.min(retry);
        }
        next
    }

    async fn wait_drained(
        &self,
        vm: &VmId,
        timeout: Duration,
        threshold: u64,
        results: &mut [BalancerResult],
    ) -> DrainReport {
        let started = Instant::now();
        let deadline = started + timeout;
        let slots = self.slots();
        // The balancers the notice went to, each result with its slot (names are unique).
        let indices: Vec<usize> = results
            .iter()
            .map(|r| {
                slots
                    .iter()
                    .position(|s| s.balancer.name() == r.name)
                    .expect("every result comes from a slot")
            })
            .collect();
        loop {
            // A balancer that hangs is not asked again; one that serves the VM then keeps the VM
            // from counting as drained (its traffic cannot be seen).
            let asked: Vec<usize> = indices
                .iter()
                .copied()
                .filter(|i| self.balancers.hung_since(*i).is_none())
                .collect();
            let refs: Vec<&BalancerSlot> = asked.iter().map(|i| &slots[*i]).collect();
            let statuses = fanout::drain_all(&refs, vm).await;
            let mut by_index: HashMap<usize, _> = asked.into_iter().zip(statuses).collect();
            let mut active = 0;
            let mut unseen = 0;
            let mut remaining: Vec<ConnectionReport> = Vec::new();
            for (&index, result) in indices.iter().zip(results.iter_mut()) {
                let slot = &slots[index];
                let serves =
                    result.serves == Some(true) || self.balancers.serves_known(index, vm) == Some(true);
                match by_index.remove(&index) {
                    Some(Ok(s)) if s.serves => {
                        active += s.active;
                        result.active = Some(s.active);
                        result.drained = Some(s.active <= threshold);
                        remaining.extend(s.remaining.into_iter().map(|mut c| {
                            c.balancer = slot.balancer.name().to_string();
                            c
                        }));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        result.drained = None;
                        if result.error.is_none() {
                            result.error = Some(format!("drain status: {e}"));
                        }
                        // A balancer that answers that it cannot tell (nginx) is left out; one
                        // that cannot be reached may still carry traffic to the VM.
                        if !matches!(e, BalancerError::Rejected(_)) {
                            unseen += usize::from(serves);
                        }
                    }
                    None => {
                        result.drained = None;
                        unseen += usize::from(serves);
                    }
                }
            }
            let waited_ms = millis(started.elapsed());
            if active <= threshold && unseen == 0 {
                return DrainReport {
                    drained: true,
                    timed_out: false,
                    waited_ms,
                    threshold,
                    active,
                    remaining: Vec::new(),
                };
            }
            if Instant::now() >= deadline {
                return DrainReport {
                    drained: false,
                    timed_out: true,
                    waited_ms,
                    threshold,
                    active,
                    remaining,
                };
            }
            tokio::time::sleep(DRAIN_POLL.min(deadline - Instant::now())).await;
        }
    }

    fn observe_transition(&self, transition: &Transition, before: Option<&VmState>, now: Millis) {
        let ended = transition.from.is_drained() && !transition.to.is_drained();
        let reason = ended.then(|| {
            self.book
                .lock()
                .registry
                .vm(&transition.vm)
                .and_then(|s| s.end_reason)
                .map_or("unknown", |r| r.as_str())
                .to_string()
        });
        let mut stats = self.stats.lock();
        if let Some(before) = before
            && before.phase != Phase::Stable
        {
            stats.phase_time(
                before.phase.as_str(),
                now.saturating_sub(before.since) as f64 / 1000.0,
            );
        }
        if let Some(reason) = reason {
            *stats.migrations_ended.entry(reason).or_default() += 1;
        }
    }

    fn count_notice(&self, notice: Notice, outcome: &str) {
        *self
            .stats
            .lock()
            .notices
            .entry((notice.as_str().to_string(), outcome.to_string()))
            .or_default() += 1;
    }
}

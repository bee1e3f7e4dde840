//! The migration module: it learns that a VM is about to migrate (from the API, the CLI or an
//! event source), identifies every balancer that serves the VM by asking all of them at once,
//! notifies each before the migration begins, optionally waits until the VM is drained, and
//! notifies again when the migration ends. Deadlines and ramps come from the registry in `core`;
//! this module adds the clock, the sockets and the retries.
//!
//! A notice is handled as preview → fan-out → commit under one lock, so a notice that no balancer
//! accepts (an unknown VM) changes nothing. The wait for drained happens after the lock is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use handover_core::api::{
    Applied, BackendReport, BalancerResult, BalancerStatus, ConnectionReport, DrainReport, DrainStatus,
    NoticeRequest, NoticeResponse,
};
use handover_core::config::Config;
use handover_core::migration::{
    MigrationProgress, MigrationRecord, NoticeError, NoticeOptions, Outcome, Registry, RegistryDefaults,
    RegistrySnapshot, Topology, Transition,
};
use handover_core::model::VmId;
use handover_core::phase::{Notice, Phase, PhaseCommand, Readdress, VmState};
use handover_core::time::{Millis, millis};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::fanout::{self, BalancerSlot};
use crate::stats::Stats;

/// How often drain status is polled while waiting for drained.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// First retry delay for a balancer that could not be told.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest wait for drained a caller may ask for.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

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
    #[error("no balancer serves VM {vm}{}", unreachable_note(.results))]
    UnknownVm {
        /// The VM.
        vm: VmId,
        /// What every balancer answered.
        results: Vec<BalancerResult>,
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

fn unreachable_note(results: &[BalancerResult]) -> String {
    let unreachable = results.iter().filter(|r| r.error.is_some()).count();
    if unreachable == 0 {
        String::new()
    } else {
        format!(" ({unreachable} balancer(s) could not be asked)")
    }
}

#[derive(Debug, Clone, Copy)]
struct RetryState {
    next_at: Instant,
    backoff: Duration,
}

/// The coordinator.
pub struct Coordinator {
    clock: Clock,
    registry: Mutex<Registry>,
    /// Serialises notices and timer work: preview, fan-out and commit happen as one step.
    serial: tokio::sync::Mutex<()>,
    slots: Vec<BalancerSlot>,
    drain_timeout: Duration,
    thresholds: Mutex<HashMap<VmId, u64>>,
    retries: Mutex<HashMap<(usize, VmId), RetryState>>,
    wake: Notify,
    stats: Mutex<Stats>,
    /// In fleet mode: takes notices instead of the fan-out (see [`crate::fleet`]).
    fleet: std::sync::OnceLock<Arc<dyn crate::fleet::FleetHook>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("slots", &self.slots)
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
            registry: Mutex::new(Registry::new(Topology::from_config(config), defaults)),
            serial: tokio::sync::Mutex::new(()),
            slots,
            drain_timeout: config.migration.drain_timeout,
            thresholds: Mutex::new(thresholds),
            retries: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stats: Mutex::new(Stats::default()),
            fleet: std::sync::OnceLock::new(),
        })
    }

    /// Follows a reload: the local pools (their VMs, guards, deadlines, thresholds) are the new
    /// configuration's; every VM keeps its phase, deadline and ramp.
    pub fn reconfigure(&self, config: &Config) {
        *self.thresholds.lock() = thresholds(config);
        self.registry.lock().set_topology(Topology::from_config(config));
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The balancers.
    pub fn slots(&self) -> &[BalancerSlot] {
        &self.slots
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().clone()
    }

    /// Every VM the registry has seen, with its state.
    pub fn vm_states(&self) -> Vec<(VmId, VmState)> {
        self.registry
            .lock()
            .vms()
            .map(|(vm, s)| (vm.clone(), s.clone()))
            .collect()
    }

    /// Migrations, oldest first.
    pub fn history(&self) -> Vec<MigrationRecord> {
        self.registry.lock().history().cloned().collect()
    }

    /// Records hypervisor progress on a VM's current migration.
    pub fn record_progress(&self, vm: &VmId, progress: MigrationProgress) -> bool {
        self.registry.lock().record_progress(vm, progress)
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
    /// this node's own balancers. The registry keeps the fleet's deadline, so the VM is restored
    /// here at its deadline even when etcd cannot be reached.
    pub async fn adopt(&self, vm: &VmId, state: Option<VmState>) -> Vec<BalancerResult> {
        let _serial = self.serial.lock().await;
        let now = self.clock.now_ms();
        let (before, transition, known) = {
            let mut registry = self.registry.lock();
            let before = registry.vm(vm).cloned();
            let known = before.is_some() || state.is_some();
            (before, registry.adopt(vm, state, now), known)
        };
        if !known {
            return Vec::new();
        }
        if let Some(transition) = &transition {
            self.observe_transition(transition, before.as_ref(), now);
            info!(%vm, from = %transition.from, to = %transition.to, "migration phase changed (fleet)");
        }
        let (command, readdress) = self.desired(vm, now);
        let results = self.fan_out(vm, command, readdress.as_ref()).await;
        self.note_results(vm, &results);
        drop(_serial);
        self.wake.notify_one();
        results
    }

    /// Handles a notice: identify, notify, (wait), reply.
    pub async fn notice(
        &self,
        vm: &VmId,
        request: &NoticeRequest,
    ) -> Result<NoticeResponse, CoordinatorError> {
        if let Some(fleet) = self.fleet.get() {
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
        let options = NoticeOptions {
            deadline_ms: request.deadline_ms,
            readdress: Some(readdress).filter(|r| !r.is_empty()),
        };
        let serial = self.serial.lock().await;
        self.tick_locked().await;
        let now = self.clock.now_ms();
        let previous_phase = self.registry.lock().phase(vm);
        let preview = self
            .registry
            .lock()
            .preview(vm, request.phase, now, options.clone());
        let outcome_name;
        let mut note = None;
        let results;
        match preview {
            Err(e) => {
                self.count_notice(request.phase, "rejected");
                return Err(e.into());
            }
            Ok(Outcome::Queued { reason }) => {
                self.registry
                    .lock()
                    .apply(vm, request.phase, now, options.clone())?;
                self.count_notice(request.phase, "queued");
                info!(%vm, %reason, "prepare queued by the capacity guard");
                let phase = self.registry.lock().phase(vm);
                let migration = self.registry.lock().vm(vm).and_then(|s| s.migration);
                return Ok(NoticeResponse {
                    vm: vm.clone(),
                    notice: request.phase,
                    outcome: "queued".to_string(),
                    previous_phase,
                    phase,
                    migration,
                    note: Some(reason),
                    balancers: Vec::new(),
                    drain: None,
                });
            }
            Ok(Outcome::Unchanged { note: why, .. }) => {
                // Re-assert the current state: a balancer that restarted gets it back.
                let (command, readdress) = self.desired(vm, now);
                results = self.fan_out(vm, command, readdress.as_ref()).await;
                self.registry
                    .lock()
                    .apply(vm, request.phase, now, options.clone())?;
                outcome_name = "unchanged";
                note = Some(why);
            }
            Ok(Outcome::Applied(transition)) => {
                results = self
                    .fan_out(vm, transition.command, transition.readdress.as_ref())
                    .await;
                let serving = results.iter().any(|r| r.serves == Some(true));
                if !serving && previous_phase == Phase::Stable {
                    self.count_notice(request.phase, "unknown_vm");
                    return Err(CoordinatorError::UnknownVm {
                        vm: vm.clone(),
                        results,
                    });
                }
                let before = self.registry.lock().vm(vm).cloned();
                self.registry
                    .lock()
                    .apply(vm, request.phase, now, options.clone())?;
                self.observe_transition(&transition, before.as_ref(), now);
                info!(%vm, from = %transition.from, to = %transition.to, notice = %request.phase, "migration phase changed");
                outcome_name = "applied";
            }
        }
        self.note_results(vm, &results);
        self.count_notice(request.phase, outcome_name);
        let (phase, migration) = {
            let registry = self.registry.lock();
            (registry.phase(vm), registry.vm(vm).and_then(|s| s.migration))
        };
        drop(serial);
        self.wake.notify_one();

        let mut response = NoticeResponse {
            vm: vm.clone(),
            notice: request.phase,
            outcome: outcome_name.to_string(),
            previous_phase,
            phase,
            migration,
            note,
            balancers: results,
            drain: None,
        };
        if request.wait_drained && phase.is_drained() {
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
            if let Some(id) = migration {
                self.registry.lock().record_drain_wait(
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

    /// Applies a command on this node's own balancers only (the peer API: the node that sent it is
    /// the migration module; this one acts as a load-balancing module).
    pub async fn apply_local(&self, vm: &VmId, command: PhaseCommand) -> Applied {
        let local: Vec<BalancerSlot> = self.slots.iter().filter(|s| !s.is_peer).cloned().collect();
        let results = fanout::apply_all(&local, vm, command, None).await;
        let serves = results.iter().any(|r| r.serves == Some(true));
        let backends: Vec<BackendReport> = results.into_iter().flat_map(|r| r.backends).collect();
        Applied { serves, backends }
    }

    /// Moves a VM's backends on this node's own balancers only (the peer API).
    pub async fn readdress_local(&self, vm: &VmId, change: &Readdress) -> Applied {
        let mut applied = Applied {
            serves: false,
            backends: Vec::new(),
        };
        for slot in self.slots.iter().filter(|s| !s.is_peer) {
            if let Ok(Ok(result)) =
                tokio::time::timeout(slot.timeout, slot.balancer.set_addresses(vm, change)).await
            {
                applied.serves |= result.serves;
                applied.backends.extend(result.backends);
            }
        }
        applied
    }

    /// Everything the registry holds, for the state file.
    pub fn export(&self) -> RegistrySnapshot {
        self.registry.lock().snapshot()
    }

    /// Restores a saved registry (before serving).
    pub fn import(&self, snapshot: RegistrySnapshot) {
        self.registry.lock().restore(snapshot);
    }

    /// Drain status of this node's own balancers only.
    pub async fn drain_local(&self, vm: &VmId) -> DrainStatus {
        let local: Vec<&BalancerSlot> = self.slots.iter().filter(|s| !s.is_peer).collect();
        let mut status = DrainStatus {
            serves: false,
            active: 0,
            remaining: Vec::new(),
        };
        for slot in local {
            if let Ok(Ok(s)) = tokio::time::timeout(slot.timeout, slot.balancer.drain_status(vm)).await {
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
        let mut pools = Vec::new();
        for slot in self.slots.iter().filter(|s| !s.is_peer) {
            if let Ok(Ok(status)) = tokio::time::timeout(slot.timeout, slot.balancer.status()).await {
                pools.extend(status.pools);
            }
        }
        BalancerStatus { pools }
    }

    /// Runs deadlines, ramp ends, queued prepares and retries until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let next = self.next_wakeup();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            let _serial = self.serial.lock().await;
            self.tick_locked().await;
            self.retry_due().await;
        }
    }

    fn next_wakeup(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(1);
        if let Some(due) = self.registry.lock().next_due() {
            next = next.min(self.clock.instant_of(due));
        }
        if let Some(retry) = self.retries.lock().values().map(|r| r.next_at).min() {
            next = next.min(retry);
        }
        next
    }

    /// Applies due registry transitions (deadlines, ramp ends, admissions). Caller holds `serial`.
    async fn tick_locked(&self) {
        let now = self.clock.now_ms();
        let (transitions, befores): (Vec<Transition>, Vec<Option<VmState>>) = {
            let mut registry = self.registry.lock();
            let before: BTreeMap<VmId, VmState> =
                registry.vms().map(|(v, s)| (v.clone(), s.clone())).collect();
            let transitions = registry.tick(now);
            let befores = transitions.iter().map(|t| before.get(&t.vm).cloned()).collect();
            (transitions, befores)
        };
        for (transition, before) in transitions.iter().zip(befores) {
            self.observe_transition(transition, before.as_ref(), now);
            info!(vm = %transition.vm, from = %transition.from, to = %transition.to, cause = ?transition.cause, "migration phase changed");
            if transition.needs_fanout() {
                let results = self
                    .fan_out(&transition.vm, transition.command, transition.readdress.as_ref())
                    .await;
                self.note_results(&transition.vm, &results);
            }
        }
    }

    async fn retry_due(&self) {
        let now = Instant::now();
        let due: Vec<(usize, VmId)> = self
            .retries
            .lock()
            .iter()
            .filter(|(_, r)| r.next_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (index, vm) in due {
            let (command, readdress) = self.desired(&vm, self.clock.now_ms());
            let slot = &self.slots[index];
            let result = fanout::apply_one(slot, &vm, command, readdress.as_ref()).await;
            self.stats
                .lock()
                .balancer_call(&result.name, result.error.is_none());
            let mut retries = self.retries.lock();
            if let Some(error) = &result.error {
                if let Some(state) = retries.get_mut(&(index, vm.clone())) {
                    state.backoff = (state.backoff * 2).min(RETRY_MAX);
                    state.next_at = Instant::now() + state.backoff;
                    warn!(balancer = %result.name, %vm, %error, retry_in = ?state.backoff, "balancer still unreachable");
                }
            } else {
                retries.remove(&(index, vm.clone()));
                info!(balancer = %result.name, %vm, "balancer caught up after a retry");
            }
        }
    }

    /// What every balancer must currently have for a VM: its phase command and its addresses.
    fn desired(&self, vm: &VmId, now: Millis) -> (PhaseCommand, Option<Readdress>) {
        let registry = self.registry.lock();
        (
            registry.command_for(vm, now),
            registry.vm(vm).and_then(|s| s.readdress.clone()),
        )
    }

    async fn fan_out(
        &self,
        vm: &VmId,
        command: PhaseCommand,
        readdress: Option<&Readdress>,
    ) -> Vec<BalancerResult> {
        let results = fanout::apply_all(&self.slots, vm, command, readdress).await;
        let mut stats = self.stats.lock();
        for result in &results {
            stats.balancer_call(&result.name, result.error.is_none());
            if let Some(error) = &result.error {
                warn!(balancer = %result.name, %vm, %error, "balancer could not be told; will retry");
            }
        }
        results
    }

    /// Schedules retries for balancers that failed, forgets those that answered.
    fn note_results(&self, vm: &VmId, results: &[BalancerResult]) {
        let mut retries = self.retries.lock();
        for (index, result) in results.iter().enumerate() {
            let key = (index, vm.clone());
            if result.error.is_some() {
                retries.entry(key).or_insert(RetryState {
                    next_at: Instant::now() + RETRY_FIRST,
                    backoff: RETRY_FIRST,
                });
            } else {
                retries.remove(&key);
            }
        }
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
        loop {
            let statuses = fanout::drain_all(&self.slots, vm).await;
            let mut active = 0;
            let mut remaining: Vec<ConnectionReport> = Vec::new();
            for ((slot, status), result) in self.slots.iter().zip(&statuses).zip(results.iter_mut()) {
                match status {
                    Ok(s) if s.serves => {
                        active += s.active;
                        result.active = Some(s.active);
                        result.drained = Some(s.active <= threshold);
                        remaining.extend(s.remaining.iter().cloned().map(|mut c| {
                            c.balancer = slot.balancer.name().to_string();
                            c
                        }));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        result.drained = None;
                        if result.error.is_none() {
                            result.error = Some(format!("drain status: {e}"));
                        }
                    }
                }
            }
            let waited_ms = millis(started.elapsed());
            if active <= threshold {
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
            self.registry
                .lock()
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

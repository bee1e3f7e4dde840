//! The pools of the embedded proxy. Each pool owns, behind one lock, what decides where new work
//! goes: the phase command of each of its VMs (as the migration module last sent it), the current
//! address of each backend, and each backend's health. Any change rebuilds the pool's snapshot; a
//! ticker rebuilds it while a weight moves with time (linear drain, ramp after a migration or after
//! a recovery), ends ejections, and enforces a local deadline so a VM is restored even if the node
//! that drained it never speaks again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use handover_core::api::{Applied, BackendReport, BackendStatus, BalancerStatus, DrainStatus, PoolStatus};
use handover_core::command::{Effect, Policies, aged, effect};
use handover_core::config::{Config, PoolConfig};
use handover_core::health::{
    CheckThresholds, FailureVerdict, HealthChange, HealthState, OutlierPolicy, Tolerance,
};
use handover_core::model::{Keep, VmId};
use handover_core::phase::{Phase, PhaseCommand, Readdress};
use handover_core::selection::Selector;
use handover_core::time::{Millis, millis};
use handover_core::weights::{self, WeightInput, WeightState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::BackendRuntime;
use crate::snapshot::{BackendEntry, PoolSnapshot};

/// Most connections listed in a drain status.
const MAX_LISTED: usize = 100;

/// The last command for a VM and when it arrived.
#[derive(Debug, Clone, Copy)]
struct VmEntry {
    command: PhaseCommand,
    received: Instant,
}

/// What a pool's lock protects.
#[derive(Debug)]
struct PoolState {
    /// Commands of this pool's VMs that are not stable.
    vms: HashMap<VmId, VmEntry>,
    /// Address changes of this pool's VMs.
    readdress: HashMap<VmId, Readdress>,
    /// Current address of each backend.
    addresses: Vec<SocketAddr>,
    /// Health of each backend.
    health: Vec<HealthState>,
    /// What the current snapshot was built from (a tick that finds the same rebuilds nothing).
    basis: Vec<EntryBasis>,
    /// A weight was moving at the last tick: the next one publishes where it stopped (a ramp's
    /// last step is the one that reaches full weight).
    was_moving: bool,
}

/// What one backend's snapshot entry is built from: its weight input (phase share, health, slow
/// start) and what it shows. Equal bases build equal snapshots.
#[derive(Debug, Clone, PartialEq)]
struct EntryBasis {
    input: WeightInput,
    phase: Phase,
    health: &'static str,
    available: bool,
}

/// A pool's saved state, for the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolExport {
    /// Pool name.
    pub name: String,
    /// Commands of VMs that are not stable, as of `saved_at`.
    pub vms: Vec<(VmId, PhaseCommand)>,
    /// Address changes.
    pub readdress: Vec<(VmId, Readdress)>,
    /// Backends marked down by active checks, by index.
    pub down: Vec<usize>,
    /// Backends ejected by passive checks: index and milliseconds left.
    pub ejected: Vec<(usize, u64)>,
}

/// One pool: its configuration, its backends, its state and the current snapshot.
#[derive(Debug)]
pub struct Pool {
    /// Configuration.
    pub config: PoolConfig,
    /// Live state of each backend, in configuration order.
    pub backends: Vec<Arc<BackendRuntime>>,
    snapshot: ArcSwap<PoolSnapshot>,
    state: Mutex<PoolState>,
    /// Origin of the pool's millisecond clock (health timestamps).
    epoch: Instant,
}

impl Pool {
    fn new(config: &PoolConfig) -> Arc<Self> {
        let backends: Vec<Arc<BackendRuntime>> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Arc::new(BackendRuntime::new(&config.name, i, b.vm.clone(), b.weight)))
            .collect();
        let mut state = PoolState {
            vms: HashMap::new(),
            readdress: HashMap::new(),
            addresses: config.backends.iter().map(|b| b.address).collect(),
            health: vec![HealthState::default(); config.backends.len()],
            basis: Vec::new(),
            was_moving: false,
        };
        let epoch = Instant::now();
        state.basis = basis(config, &backends, &state, epoch);
        let snapshot = assemble(config, &backends, &state, 0);
        Arc::new(Self {
            config: config.clone(),
            backends,
            snapshot: ArcSwap::from_pointee(snapshot),
            state: Mutex::new(state),
            epoch,
        })
    }

    /// The current snapshot (a cheap, lock-free load).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<PoolSnapshot>> {
        self.snapshot.load()
    }

    /// Whether a backend of the pool belongs to this VM.
    pub fn serves(&self, vm: &VmId) -> bool {
        self.backends.iter().any(|b| &b.vm == vm)
    }

    fn now_ms(&self) -> Millis {
        millis(self.epoch.elapsed())
    }

    /// Applies a VM's phase command; returns whether the pool serves the VM.
    fn apply(&self, vm: &VmId, command: PhaseCommand) -> bool {
        if !self.serves(vm) {
            return false;
        }
        let mut state = self.state.lock();
        match command {
            PhaseCommand::Stable => {
                state.vms.remove(vm);
            }
            _ => {
                state.vms.insert(
                    vm.clone(),
                    VmEntry {
                        command,
                        received: Instant::now(),
                    },
                );
            }
        }
        self.rebuild(&mut state);
        drop(state);
        if matches!(command, PhaseCommand::Drain { .. }) && self.config.drain.keep == Keep::InFlight {
            for backend in self.backends.iter().filter(|b| &b.vm == vm) {
                backend.retire_idle();
            }
        }
        true
    }

    /// Moves a VM's backends to new addresses. Open connections to the old ones are untouched.
    fn readdress(&self, vm: &VmId, change: &Readdress) -> bool {
        if !self.serves(vm) {
            return false;
        }
        let mut state = self.state.lock();
        for (i, backend) in self.backends.iter().enumerate().filter(|(_, b)| &b.vm == vm) {
            let address = change.apply(self.config.backends[i].address);
            if address != state.addresses[i] {
                info!(pool = %self.config.name, %vm, from = %state.addresses[i], to = %address, "backend moved");
                state.addresses[i] = address;
                backend.retire_idle();
            }
        }
        state.readdress.insert(vm.clone(), change.clone());
        self.rebuild(&mut state);
        true
    }

    /// Records an active health check of backend `index`.
    pub fn record_check(&self, index: usize, ok: bool) {
        let Some(health) = &self.config.health else { return };
        let thresholds = CheckThresholds {
            rise: health.rise,
            fall: health.fall,
        };
        let now = self.now_ms();
        let mut state = self.state.lock();
        let tolerance = self.tolerance(&state, index);
        let (change, verdict) = state.health[index].record_check(ok, now, thresholds, tolerance);
        self.after_health(&mut state, index, change, verdict);
    }

    /// Records the outcome of real traffic to backend `index` (a connect; an HTTP status class).
    #[inline]
    pub fn record_traffic(&self, index: usize, ok: bool) {
        let backend = &self.backends[index];
        if ok && !backend.is_failing() {
            return;
        }
        let policy = self.config.outlier.map(|o| OutlierPolicy {
            consecutive_failures: o.consecutive_failures,
            ejection_ms: millis(o.ejection),
        });
        let now = self.now_ms();
        let mut state = self.state.lock();
        let tolerance = self.tolerance(&state, index);
        let (change, verdict) = state.health[index].record_traffic(ok, now, policy, tolerance);
        backend.set_failing(!ok);
        self.after_health(&mut state, index, change, verdict);
    }

    fn after_health(
        &self,
        state: &mut PoolState,
        index: usize,
        change: Option<HealthChange>,
        verdict: Option<FailureVerdict>,
    ) {
        let backend = &self.backends[index];
        if verdict == Some(FailureVerdict::Suppressed) {
            backend.record_suppressed();
        }
        if let Some(change) = change {
            let address = state.addresses[index];
            match change {
                HealthChange::Down => {
                    warn!(pool = %self.config.name, backend = %address, vm = %backend.vm, "backend is down")
                }
                HealthChange::Ejected => {
                    warn!(pool = %self.config.name, backend = %address, vm = %backend.vm, "backend ejected")
                }
                HealthChange::Up => {
                    info!(pool = %self.config.name, backend = %address, vm = %backend.vm, "backend is up again; ramping back")
                }
            }
            self.rebuild(state);
        }
    }

    /// Failures are expected while the backend's VM drains or migrates, and for the grace after its
    /// migration ended: a failure streak is tolerated for `blackout_grace` from its first failure.
    fn tolerance(&self, state: &PoolState, index: usize) -> Tolerance {
        let grace = millis(self.config.blackout_grace);
        let entry = state.vms.get(&self.backends[index].vm)?;
        match entry.command {
            PhaseCommand::Drain { .. } => Some(grace),
            PhaseCommand::Ramp { elapsed_ms, .. } => {
                let since_end = elapsed_ms.saturating_add(millis(entry.received.elapsed()));
                (since_end <= grace).then_some(grace)
            }
            PhaseCommand::Stable => None,
        }
    }

    /// Ends ejections, forgets settled VMs, rebuilds if a weight moves with time, and closes the
    /// long-lived work of VMs drained for longer than `drain.long_lived.close_after`.
    fn tick(&self) {
        let now = Instant::now();
        let now_ms = self.now_ms();
        let mut state = self.state.lock();
        if let Some(close_after) = self.config.drain.long_lived_close_after {
            for (vm, entry) in &state.vms {
                if let PhaseCommand::Drain { elapsed_ms, .. } = entry.command {
                    let drained_for =
                        elapsed_ms.saturating_add(millis(now.saturating_duration_since(entry.received)));
                    if drained_for >= millis(close_after) {
                        for backend in self.backends.iter().filter(|b| &b.vm == vm) {
                            backend.close_long_lived();
                        }
                    }
                }
            }
        }
        let mut changed = false;
        for health in &mut state.health {
            changed |= health.expire_ejection(now_ms);
        }
        let settled: Vec<VmId> = state
            .vms
            .iter()
            .filter(|(_, entry)| effective(&self.config, Some(entry), now).phase == Phase::Stable)
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in &settled {
            state.vms.remove(vm);
        }
        changed |= !settled.is_empty();
        let moving = self.backends.iter().enumerate().any(|(i, b)| {
            state
                .vms
                .get(&b.vm)
                .is_some_and(|e| effective(&self.config, Some(e), now).moving)
                || recovery_factor(&self.config, &state.health[i], now_ms).1
        });
        let settling = std::mem::replace(&mut state.was_moving, moving) && !moving;
        if changed || moving || settling {
            // A drain is "moving" until its deadline even when its share is constant, and a
            // settled VM leaves the same weights behind: publish only when what the snapshot
            // shows would change (a tick never moves addresses).
            let basis = basis(&self.config, &self.backends, &state, self.epoch);
            if basis != state.basis {
                state.basis = basis;
                self.publish(&state);
            }
        }
    }

    /// Builds and publishes a new snapshot from the current state.
    fn rebuild(&self, state: &mut PoolState) {
        state.basis = basis(&self.config, &self.backends, state, self.epoch);
        self.publish(state);
    }

    fn publish(&self, state: &PoolState) {
        let cursor = self.snapshot.load().selector.cursor();
        self.snapshot
            .store(Arc::new(assemble(&self.config, &self.backends, state, cursor)));
    }

    fn status(&self) -> PoolStatus {
        let outages: Vec<u64> = self.state.lock().health.iter().map(|h| h.outages_total).collect();
        let snapshot = self.snapshot();
        let total: f64 = snapshot.entries.iter().map(|e| e.effective_weight).sum();
        PoolStatus {
            name: self.config.name.clone(),
            algorithm: self.config.algorithm,
            fallback: snapshot.fallback,
            backends: snapshot
                .entries
                .iter()
                .map(|e| {
                    let (connections_total, requests_total, failures_total) = e.backend.totals();
                    BackendStatus {
                        index: e.backend.index,
                        address: e.address.to_string(),
                        vm: e.backend.vm.clone(),
                        weight: e.backend.weight,
                        effective_weight: e.effective_weight,
                        share: if total > 0.0 {
                            e.effective_weight / total
                        } else {
                            0.0
                        },
                        phase: e.phase,
                        health: e.health.to_string(),
                        active: e.backend.active(),
                        connections_total,
                        requests_total,
                        failures_total,
                        suppressed_failures_total: e.backend.suppressed_total(),
                        outages_total: outages[e.backend.index],
                    }
                })
                .collect(),
        }
    }

    fn export(&self) -> PoolExport {
        let now = Instant::now();
        let now_ms = self.now_ms();
        let state = self.state.lock();
        PoolExport {
            name: self.config.name.clone(),
            vms: state
                .vms
                .iter()
                .map(|(vm, e)| (vm.clone(), current_command(e, now)))
                .collect(),
            readdress: state
                .readdress
                .iter()
                .map(|(vm, r)| (vm.clone(), r.clone()))
                .collect(),
            down: state
                .health
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.available(now_ms) && h.ejected_until.is_none())
                .map(|(i, _)| i)
                .collect(),
            ejected: state
                .health
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.ejected_until.filter(|u| *u > now_ms).map(|u| (i, u - now_ms)))
                .collect(),
        }
    }

    fn import(&self, saved: &PoolExport, age_ms: u64) {
        for (vm, change) in &saved.readdress {
            self.readdress(vm, change);
        }
        let now_ms = self.now_ms();
        let mut state = self.state.lock();
        for (vm, command) in &saved.vms {
            if self.serves(vm) {
                state.vms.insert(
                    vm.clone(),
                    VmEntry {
                        command: aged(*command, age_ms),
                        received: Instant::now(),
                    },
                );
            }
        }
        let count = state.health.len();
        for &i in saved.down.iter().filter(|i| **i < count) {
            // Down until `rise` checks pass again.
            state.health[i].record_check(false, now_ms, CheckThresholds { rise: 1, fall: 1 }, None);
        }
        for &(i, left) in saved.ejected.iter().filter(|(i, _)| *i < count) {
            state.health[i].ejected_until = Some(now_ms + left.saturating_sub(age_ms));
        }
        self.rebuild(&mut state);
    }
}

/// A command as it stands `now`: elapsed times advanced, time to the deadline reduced.
fn current_command(entry: &VmEntry, now: Instant) -> PhaseCommand {
    aged(
        entry.command,
        millis(now.saturating_duration_since(entry.received)),
    )
}

/// Every pool of the embedded proxy.
#[derive(Debug)]
pub struct Pools {
    pools: Vec<Arc<Pool>>,
}

impl Pools {
    /// Pools for a configuration: every VM stable, every backend up.
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            pools: config.pools.iter().map(Pool::new).collect(),
        })
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.iter().find(|p| p.config.name == name).cloned()
    }

    /// Every pool.
    pub fn all(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Whether any pool has a backend of this VM.
    pub fn serves(&self, vm: &VmId) -> bool {
        self.pools.iter().any(|p| p.serves(vm))
    }

    /// Applies the desired state of a VM to every pool that holds it.
    pub fn apply(&self, vm: &VmId, command: PhaseCommand) -> Applied {
        let mut serves = false;
        for pool in &self.pools {
            serves |= pool.apply(vm, command);
        }
        Applied {
            serves,
            backends: if serves { self.reports(vm) } else { Vec::new() },
        }
    }

    /// Moves a VM's backends to new addresses in every pool that holds it.
    pub fn readdress(&self, vm: &VmId, change: &Readdress) -> Applied {
        let mut serves = false;
        for pool in &self.pools {
            serves |= pool.readdress(vm, change);
        }
        Applied {
            serves,
            backends: if serves { self.reports(vm) } else { Vec::new() },
        }
    }

    /// How much traffic still reaches a VM.
    pub fn drain_status(&self, vm: &VmId) -> DrainStatus {
        let mut active = 0;
        let mut remaining = Vec::new();
        for pool in &self.pools {
            for backend in pool.backends.iter().filter(|b| &b.vm == vm) {
                active += backend.active();
                if remaining.len() < MAX_LISTED {
                    remaining.extend(backend.open_items(MAX_LISTED - remaining.len()));
                }
            }
        }
        DrainStatus {
            serves: self.serves(vm),
            active,
            remaining,
        }
    }

    /// Every pool with its backends.
    pub fn status(&self) -> BalancerStatus {
        BalancerStatus {
            pools: self.pools.iter().map(|p| p.status()).collect(),
        }
    }

    /// Runs every pool's tick.
    pub fn tick(&self) {
        for pool in &self.pools {
            pool.tick();
        }
    }

    /// Runs [`Pools::tick`] every `period` until cancelled.
    pub async fn run_ticker(self: Arc<Self>, period: Duration, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => self.tick(),
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Every pool's state, for the state file.
    pub fn export(&self) -> Vec<PoolExport> {
        self.pools.iter().map(|p| p.export()).collect()
    }

    /// Restores saved state `age_ms` milliseconds old (pools that no longer exist are skipped).
    pub fn import(&self, saved: &[PoolExport], age_ms: u64) {
        for export in saved {
            match self.pool(&export.name) {
                Some(pool) => pool.import(export, age_ms),
                None => {
                    warn!(pool = %export.name, "saved state of a pool that is no longer configured ignored")
                }
            }
        }
    }

    fn reports(&self, vm: &VmId) -> Vec<BackendReport> {
        self.pools
            .iter()
            .flat_map(|pool| {
                let snapshot = pool.snapshot();
                snapshot
                    .entries
                    .iter()
                    .filter(|e| &e.backend.vm == vm)
                    .map(|e| BackendReport {
                        pool: pool.config.name.clone(),
                        address: e.address.to_string(),
                        weight: e.backend.weight,
                        effective_weight: e.effective_weight,
                        phase: e.phase,
                        active: e.backend.active(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// How a VM's backend takes part in a pool, given the last command and the time.
fn effective(pool: &PoolConfig, entry: Option<&VmEntry>, now: Instant) -> Effect {
    let Some(entry) = entry else { return Effect::STABLE };
    let policies = Policies {
        drain: &pool.drain,
        ramp: &pool.ramp,
        restore: pool.restore,
    };
    effect(
        policies,
        entry.command,
        millis(now.saturating_duration_since(entry.received)),
    )
}

/// Slow start after a recovery: (weight factor, still ramping).
fn recovery_factor(pool: &PoolConfig, health: &HealthState, now_ms: Millis) -> (f64, bool) {
    match health.recovered_at {
        Some(at) if !pool.ramp.is_done_at(now_ms.saturating_sub(at)) => {
            (pool.ramp.factor_at(now_ms.saturating_sub(at)), true)
        }
        _ => (1.0, false),
    }
}

/// Each backend's basis as of now.
fn basis(
    config: &PoolConfig,
    backends: &[Arc<BackendRuntime>],
    state: &PoolState,
    epoch: Instant,
) -> Vec<EntryBasis> {
    let now = Instant::now();
    let now_ms = millis(now.saturating_duration_since(epoch));
    backends
        .iter()
        .enumerate()
        .map(|(i, backend)| {
            let e = effective(config, state.vms.get(&backend.vm), now);
            let health = &state.health[i];
            let available = health.available(now_ms);
            let weight_state = if !available {
                WeightState::Excluded
            } else {
                match e.state {
                    WeightState::Scaled(f) => {
                        WeightState::Scaled(f.min(recovery_factor(config, health, now_ms).0))
                    }
                    other => other,
                }
            };
            EntryBasis {
                input: WeightInput {
                    weight: backend.weight,
                    state: weight_state,
                },
                phase: e.phase,
                health: health.label(now_ms),
                available,
            }
        })
        .collect()
}

/// The snapshot of `state.basis`.
fn assemble(
    config: &PoolConfig,
    backends: &[Arc<BackendRuntime>],
    state: &PoolState,
    cursor: u64,
) -> PoolSnapshot {
    let inputs: Vec<WeightInput> = state.basis.iter().map(|b| b.input).collect();
    let solved = weights::solve(&inputs);
    let entries = backends
        .iter()
        .enumerate()
        .map(|(i, backend)| BackendEntry {
            backend: backend.clone(),
            address: state.addresses[i],
            phase: state.basis[i].phase,
            effective_weight: solved.weights[i],
            health: state.basis[i].health,
            available: state.basis[i].available,
        })
        .collect();
    PoolSnapshot {
        entries,
        selector: Selector::build(config.algorithm, &solved.weights, cursor),
        fallback: solved.fallback,
    }
}

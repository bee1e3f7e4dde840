//! The pools of the embedded proxy. Each pool owns, behind one lock, what decides where new work
//! goes: the phase command of each of its VMs (as the migration module last sent it), the current
//! address of each backend, and each backend's health. Any change rebuilds the pool's snapshot; a
//! ticker rebuilds it while a weight moves with time (linear drain, ramp after a migration or after
//! a recovery), ends ejections, and enforces a local deadline so a VM is restored even if the node
//! that drained it never speaks again.
//!
//! A reload ([`Pools::reconfigure`]) changes pools in place: a pool keeps its identity (its name),
//! a backend keeps its identity (its configured address and VM) with its counters, health and open
//! connections; only a new snapshot is published, so the data plane never takes a lock for it. A
//! removed backend or pool gets no new work at once and is kept (see [`crate::removed`]) until its
//! connections end or the grace passes.

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
use crate::removed::{Removed, RemovedStatus};
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
    /// Configuration (also in every snapshot, for the data plane).
    config: Arc<PoolConfig>,
    /// Live state of each backend, in configuration order.
    backends: Vec<Arc<BackendRuntime>>,
    /// Backends a reload removed that still have connections open.
    removed: Vec<Removed>,
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

/// A pool's snapshot as read by the data plane: cheap to take, to be dropped before a wait.
pub type SnapshotGuard = arc_swap::Guard<Arc<PoolSnapshot>>;

/// One pool: its name, its state and the current snapshot (which carries its configuration and
/// backends).
#[derive(Debug)]
pub struct Pool {
    /// Pool name: its identity (a reload changes the pool of the same name in place).
    pub name: String,
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
            .map(|b| {
                Arc::new(BackendRuntime::new(
                    &config.name,
                    b.address,
                    b.vm.clone(),
                    b.weight,
                ))
            })
            .collect();
        let config = Arc::new(config.clone());
        let mut state = PoolState {
            config: config.clone(),
            backends,
            removed: Vec::new(),
            vms: HashMap::new(),
            readdress: HashMap::new(),
            addresses: config.backends.iter().map(|b| b.address).collect(),
            health: vec![HealthState::default(); config.backends.len()],
            basis: Vec::new(),
            was_moving: false,
        };
        let epoch = Instant::now();
        state.basis = basis(&state, epoch);
        let snapshot = assemble(&state, 0);
        Arc::new(Self {
            name: config.name.clone(),
            snapshot: ArcSwap::from_pointee(snapshot),
            state: Mutex::new(state),
            epoch,
        })
    }

    /// The current snapshot (a cheap, lock-free load).
    #[inline]
    pub fn snapshot(&self) -> SnapshotGuard {
        self.snapshot.load()
    }

    /// The pool's configuration as of now.
    pub fn config(&self) -> Arc<PoolConfig> {
        self.snapshot.load().config.clone()
    }

    /// Live state of each backend, in configuration order, as of now.
    pub fn backends(&self) -> Vec<Arc<BackendRuntime>> {
        self.snapshot
            .load()
            .entries
            .iter()
            .map(|e| e.backend.clone())
            .collect()
    }

    /// Whether a backend of the pool belongs to this VM.
    pub fn serves(&self, vm: &VmId) -> bool {
        self.snapshot.load().entries.iter().any(|e| &e.backend.vm == vm)
    }

    fn now_ms(&self) -> Millis {
        millis(self.epoch.elapsed())
    }

    /// Applies a VM's phase command; returns whether the pool serves the VM.
    fn apply(&self, vm: &VmId, command: PhaseCommand) -> bool {
        let mut state = self.state.lock();
        if !state.backends.iter().any(|b| &b.vm == vm) {
            return false;
        }
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
        if matches!(command, PhaseCommand::Drain { .. }) && state.config.drain.keep == Keep::InFlight {
            for backend in state.backends.iter().filter(|b| &b.vm == vm) {
                backend.retire_idle();
            }
        }
        true
    }

    /// Moves a VM's backends to new addresses. Open connections to the old ones are untouched.
    fn readdress(&self, vm: &VmId, change: &Readdress) -> bool {
        let mut state = self.state.lock();
        if !state.backends.iter().any(|b| &b.vm == vm) {
            return false;
        }
        for i in 0..state.backends.len() {
            let backend = state.backends[i].clone();
            if &backend.vm != vm {
                continue;
            }
            let address = change.apply(backend.configured);
            if address != state.addresses[i] {
                info!(pool = %self.name, %vm, from = %state.addresses[i], to = %address, "backend moved");
                state.addresses[i] = address;
                backend.retire_idle();
            }
        }
        state.readdress.insert(vm.clone(), change.clone());
        self.rebuild(&mut state);
        true
    }

    /// Records an active health check of `backend` (ignored if a reload removed it meanwhile).
    pub fn record_check(&self, backend: &Arc<BackendRuntime>, ok: bool) {
        let now = self.now_ms();
        let mut state = self.state.lock();
        let Some(health) = &state.config.health else {
            return;
        };
        let thresholds = CheckThresholds {
            rise: health.rise,
            fall: health.fall,
        };
        let Some(index) = position(&state, backend) else {
            return;
        };
        let tolerance = self.tolerance(&state, index);
        let (change, verdict) = state.health[index].record_check(ok, now, thresholds, tolerance);
        self.after_health(&mut state, index, change, verdict);
    }

    /// Records the outcome of real traffic to `backend` (a connect; an HTTP status class). A
    /// backend a reload removed meanwhile is no longer judged.
    #[inline]
    pub fn record_traffic(&self, backend: &Arc<BackendRuntime>, ok: bool) {
        if ok && !backend.is_failing() {
            return;
        }
        let now = self.now_ms();
        let mut state = self.state.lock();
        let policy = state.config.outlier.map(|o| OutlierPolicy {
            consecutive_failures: o.consecutive_failures,
            ejection_ms: millis(o.ejection),
        });
        let Some(index) = position(&state, backend) else {
            backend.set_failing(!ok);
            return;
        };
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
        let backend = state.backends[index].clone();
        if verdict == Some(FailureVerdict::Suppressed) {
            backend.record_suppressed();
        }
        if let Some(change) = change {
            let address = state.addresses[index];
            match change {
                HealthChange::Down => {
                    warn!(pool = %self.name, backend = %address, vm = %backend.vm, "backend is down")
                }
                HealthChange::Ejected => {
                    warn!(pool = %self.name, backend = %address, vm = %backend.vm, "backend ejected")
                }
                HealthChange::Up => {
                    info!(pool = %self.name, backend = %address, vm = %backend.vm, "backend is up again; ramping back")
                }
            }
            self.rebuild(state);
        }
    }

    /// Failures are expected while the backend's VM drains or migrates, and for the grace after its
    /// migration ended: a failure streak is tolerated for `blackout_grace` from its first failure.
    fn tolerance(&self, state: &PoolState, index: usize) -> Tolerance {
        let grace = millis(state.config.blackout_grace);
        let entry = state.vms.get(&state.backends[index].vm)?;
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
        crate::removed::sweep(&mut state.removed, &self.name, now);
        let config = state.config.clone();
        if let Some(close_after) = config.drain.long_lived_close_after {
            for (vm, entry) in &state.vms {
                if let PhaseCommand::Drain { elapsed_ms, .. } = entry.command {
                    let drained_for =
                        elapsed_ms.saturating_add(millis(now.saturating_duration_since(entry.received)));
                    if drained_for >= millis(close_after) {
                        for backend in state.backends.iter().filter(|b| &b.vm == vm) {
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
            .filter(|(_, entry)| effective(&config, Some(entry), now).phase == Phase::Stable)
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in &settled {
            state.vms.remove(vm);
        }
        changed |= !settled.is_empty();
        let moving = state.backends.iter().enumerate().any(|(i, b)| {
            state
                .vms
                .get(&b.vm)
                .is_some_and(|e| effective(&config, Some(e), now).moving)
                || recovery_factor(&config, &state.health[i], now_ms).1
        });
        let settling = std::mem::replace(&mut state.was_moving, moving) && !moving;
        if changed || moving || settling {
            // A drain is "moving" until its deadline even when its share is constant, and a
            // settled VM leaves the same weights behind: publish only when what the snapshot
            // shows would change (a tick never moves addresses).
            let basis = basis(&state, self.epoch);
            if basis != state.basis {
                state.basis = basis;
                self.publish(&state);
            }
        }
    }

    /// Builds and publishes a new snapshot from the current state.
    fn rebuild(&self, state: &mut PoolState) {
        state.basis = basis(state, self.epoch);
        self.publish(state);
    }

    fn publish(&self, state: &PoolState) {
        let cursor = self.snapshot.load().selector.cursor();
        self.snapshot.store(Arc::new(assemble(state, cursor)));
    }

    fn status(&self) -> PoolStatus {
        let (outages, removed): (Vec<u64>, Vec<RemovedStatus>) = {
            let state = self.state.lock();
            (
                state.health.iter().map(|h| h.outages_total).collect(),
                state.removed.iter().map(Removed::status).collect(),
            )
        };
        let snapshot = self.snapshot();
        let total: f64 = snapshot.entries.iter().map(|e| e.effective_weight).sum();
        PoolStatus {
            name: self.name.clone(),
            algorithm: snapshot.config.algorithm,
            fallback: snapshot.fallback,
            removed,
            backends: snapshot
                .entries
                .iter()
                .map(|e| {
                    let (connections_total, requests_total, failures_total) = e.backend.totals();
                    BackendStatus {
                        index: e.index,
                        address: e.address.to_string(),
                        vm: e.backend.vm.clone(),
                        weight: e.backend.weight(),
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
                        outages_total: outages.get(e.index).copied().unwrap_or(0),
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
            name: self.name.clone(),
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
            if state.backends.iter().any(|b| &b.vm == vm) {
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

/// What a reload changed in the pools (for its reply and its log).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolsChange {
    /// Pools added.
    pub pools_added: Vec<String>,
    /// Pools removed (their backends drain).
    pub pools_removed: Vec<String>,
    /// Pools whose policies changed (algorithm, drain, ramp, timeouts, health...).
    pub pools_changed: Vec<String>,
    /// Backends added, as `pool/address`.
    pub backends_added: Vec<String>,
    /// Backends removed (they drain), as `pool/address`.
    pub backends_removed: Vec<String>,
    /// Backends whose weight changed, as `pool/address`.
    pub backends_reweighted: Vec<String>,
}

impl PoolsChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Every pool of the embedded proxy.
#[derive(Debug)]
pub struct Pools {
    /// The configured pools (a reload swaps the list; a pool keeps its identity by name).
    pools: ArcSwap<Vec<Arc<Pool>>>,
    /// Pools a reload removed whose backends still have connections open.
    retired: Mutex<Vec<Arc<Pool>>>,
    /// Every configured backend by uid (the workers' sweep asks for their idle generation).
    by_uid: ArcSwap<Vec<Option<Arc<BackendRuntime>>>>,
    /// Serialises reloads.
    reconfiguring: Mutex<()>,
}

impl Pools {
    /// Pools for a configuration: every VM stable, every backend up.
    pub fn new(config: &Config) -> Arc<Self> {
        let pools: Vec<Arc<Pool>> = config.pools.iter().map(Pool::new).collect();
        let by_uid = index_by_uid(&pools);
        Arc::new(Self {
            pools: ArcSwap::from_pointee(pools),
            retired: Mutex::new(Vec::new()),
            by_uid: ArcSwap::from_pointee(by_uid),
            reconfiguring: Mutex::new(()),
        })
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.load().iter().find(|p| p.name == name).cloned()
    }

    /// Every configured pool, as of now.
    pub fn all(&self) -> Arc<Vec<Arc<Pool>>> {
        self.pools.load_full()
    }

    /// The idle-connection generation of a configured backend, by uid (`None`: no longer
    /// configured, so its idle connections are closed).
    pub fn idle_generation_of(&self, uid: usize) -> Option<u64> {
        self.by_uid
            .load()
            .get(uid)
            .and_then(Option::as_ref)
            .map(|backend| backend.idle_generation())
    }

    /// Whether any pool has a backend of this VM.
    pub fn serves(&self, vm: &VmId) -> bool {
        self.pools.load().iter().any(|p| p.serves(vm))
    }

    /// Applies a new configuration's pools: pools of the same name change in place (backends
    /// matched by configured address and VM keep their state, counters and connections), new ones
    /// start with every VM stable, removed pools and backends drain for up to `grace`. Phases are
    /// kept: `phases` gives the command of every VM that is not stable, so that a backend added to
    /// a draining VM starts drained. The caller validated `config` as a whole.
    pub fn reconfigure(
        &self,
        config: &Config,
        grace: Duration,
        phases: &[(VmId, PhaseCommand)],
    ) -> PoolsChange {
        let _serial = self.reconfiguring.lock();
        let mut change = PoolsChange::default();
        let old = self.pools.load_full();
        let mut next = Vec::with_capacity(config.pools.len());
        for pool_config in &config.pools {
            match old.iter().find(|p| p.name == pool_config.name) {
                Some(pool) => {
                    pool.reconfigure(pool_config, grace, &mut change);
                    next.push(pool.clone());
                }
                None => {
                    let pool = Pool::new(pool_config);
                    for (vm, command) in phases {
                        pool.apply(vm, *command);
                    }
                    info!(pool = %pool.name, backends = pool_config.backends.len(), "pool added");
                    change.pools_added.push(pool.name.clone());
                    next.push(pool);
                }
            }
        }
        // Backends added to existing pools take the phase of their VM too.
        for pool in &next {
            for (vm, command) in phases {
                pool.apply_if_unknown(vm, *command);
            }
        }
        let mut retired = self.retired.lock();
        for pool in old
            .iter()
            .filter(|p| !config.pools.iter().any(|c| c.name == p.name))
        {
            info!(pool = %pool.name, ?grace, "pool removed; its connections drain");
            pool.retire(grace);
            change.pools_removed.push(pool.name.clone());
            retired.push(pool.clone());
        }
        drop(retired);
        self.by_uid.store(Arc::new(index_by_uid(&next)));
        self.pools.store(Arc::new(next));
        change
    }

    /// Applies the desired state of a VM to every pool that holds it.
    pub fn apply(&self, vm: &VmId, command: PhaseCommand) -> Applied {
        let mut serves = false;
        for pool in self.pools.load().iter() {
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
        for pool in self.pools.load().iter() {
            serves |= pool.readdress(vm, change);
        }
        Applied {
            serves,
            backends: if serves { self.reports(vm) } else { Vec::new() },
        }
    }

    /// How much traffic still reaches a VM (removed backends that still drain included).
    pub fn drain_status(&self, vm: &VmId) -> DrainStatus {
        let mut active = 0;
        let mut remaining = Vec::new();
        let pools = self.pools.load();
        let retired = self.retired.lock().clone();
        for pool in pools.iter().chain(retired.iter()) {
            for backend in pool.backends_and_removed().iter().filter(|b| &b.vm == vm) {
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
            pools: self.pools.load().iter().map(|p| p.status()).collect(),
        }
    }

    /// Runs every pool's tick (removed pools' too, until their connections ended).
    pub fn tick(&self) {
        for pool in self.pools.load().iter() {
            pool.tick();
        }
        let mut retired = self.retired.lock();
        for pool in retired.iter() {
            pool.tick();
        }
        retired.retain(|pool| {
            let done = pool.state.lock().removed.is_empty();
            if done {
                info!(pool = %pool.name, "removed pool has no connection left");
            }
            !done
        });
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
        self.pools.load().iter().map(|p| p.export()).collect()
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
            .load()
            .iter()
            .flat_map(|pool| {
                let snapshot = pool.snapshot();
                snapshot
                    .entries
                    .iter()
                    .filter(|e| &e.backend.vm == vm)
                    .map(|e| BackendReport {
                        pool: pool.name.clone(),
                        address: e.address.to_string(),
                        weight: e.backend.weight(),
                        effective_weight: e.effective_weight,
                        phase: e.phase,
                        active: e.backend.active(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Every backend of `pools` by uid.
fn index_by_uid(pools: &[Arc<Pool>]) -> Vec<Option<Arc<BackendRuntime>>> {
    let mut by_uid: Vec<Option<Arc<BackendRuntime>>> = Vec::new();
    for pool in pools {
        for backend in pool.state.lock().backends.iter() {
            if by_uid.len() <= backend.uid {
                by_uid.resize(backend.uid + 1, None);
            }
            by_uid[backend.uid] = Some(backend.clone());
        }
    }
    by_uid
}

impl Pool {
    /// Applies a new configuration of this pool (same name). See [`Pools::reconfigure`].
    fn reconfigure(&self, new: &PoolConfig, grace: Duration, change: &mut PoolsChange) {
        let mut state = self.state.lock();
        let policies_changed = {
            let mut old = (*state.config).clone();
            old.backends.clear();
            let mut candidate = new.clone();
            candidate.backends.clear();
            old != candidate
        };
        if !policies_changed && state.config.backends == new.backends {
            return;
        }
        let now = Instant::now();
        let mut backends = Vec::with_capacity(new.backends.len());
        let mut addresses = Vec::with_capacity(new.backends.len());
        let mut health = Vec::with_capacity(new.backends.len());
        let mut kept = vec![false; state.backends.len()];
        for configured in &new.backends {
            let found = state
                .backends
                .iter()
                .position(|b| b.configured == configured.address && b.vm == configured.vm);
            match found {
                Some(i) => {
                    kept[i] = true;
                    let backend = state.backends[i].clone();
                    if backend.weight() != configured.weight {
                        info!(pool = %self.name, backend = %configured.address, from = backend.weight(), to = configured.weight, "backend re-weighted");
                        backend.set_weight(configured.weight);
                        change
                            .backends_reweighted
                            .push(format!("{}/{}", self.name, configured.address));
                    }
                    backends.push(backend);
                    addresses.push(state.addresses[i]);
                    health.push(state.health[i].clone());
                }
                None => {
                    let address = state
                        .readdress
                        .get(&configured.vm)
                        .map_or(configured.address, |r| r.apply(configured.address));
                    info!(pool = %self.name, backend = %configured.address, vm = %configured.vm, weight = configured.weight, "backend added");
                    change
                        .backends_added
                        .push(format!("{}/{}", self.name, configured.address));
                    backends.push(Arc::new(BackendRuntime::new(
                        &self.name,
                        configured.address,
                        configured.vm.clone(),
                        configured.weight,
                    )));
                    addresses.push(address);
                    health.push(HealthState::default());
                }
            }
        }
        let previous = state.backends.clone();
        for (i, backend) in previous.iter().enumerate() {
            if !kept[i] {
                info!(pool = %self.name, backend = %backend.configured, vm = %backend.vm, active = backend.active(), ?grace, "backend removed; its connections drain");
                change
                    .backends_removed
                    .push(format!("{}/{}", self.name, backend.configured));
                backend.retire_idle();
                let removed = Removed::new(backend.clone(), state.addresses[i], now, grace);
                state.removed.push(removed);
            }
        }
        if policies_changed {
            info!(pool = %self.name, "pool policies changed");
            change.pools_changed.push(self.name.clone());
        }
        state.backends = backends;
        state.addresses = addresses;
        state.health = health;
        state.config = Arc::new(new.clone());
        self.rebuild(&mut state);
    }

    /// Applies a VM's command if the pool serves it but holds no command for it (a backend a
    /// reload added to a VM that is not stable).
    fn apply_if_unknown(&self, vm: &VmId, command: PhaseCommand) {
        let known = self.state.lock().vms.contains_key(vm);
        if !known {
            self.apply(vm, command);
        }
    }

    /// A reload removed the whole pool: no listener routes new connections to it any more; the
    /// connections already made through a removed or re-pointed listener keep it, and its
    /// backends (tracked as removed) until they end or `grace` passes.
    fn retire(&self, grace: Duration) {
        let now = Instant::now();
        let mut state = self.state.lock();
        let retiring: Vec<Removed> = state
            .backends
            .iter()
            .zip(state.addresses.iter())
            .map(|(backend, address)| Removed::new(backend.clone(), *address, now, grace))
            .collect();
        state.removed.extend(retiring);
    }

    /// The configured backends and the removed ones that still drain.
    fn backends_and_removed(&self) -> Vec<Arc<BackendRuntime>> {
        let state = self.state.lock();
        let mut all: Vec<Arc<BackendRuntime>> = state.backends.clone();
        for removed in &state.removed {
            if !all.iter().any(|b| Arc::ptr_eq(b, &removed.backend)) {
                all.push(removed.backend.clone());
            }
        }
        all
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
fn basis(state: &PoolState, epoch: Instant) -> Vec<EntryBasis> {
    let config = &state.config;
    let now = Instant::now();
    let now_ms = millis(now.saturating_duration_since(epoch));
    state
        .backends
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
                    weight: backend.weight(),
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
fn assemble(state: &PoolState, cursor: u64) -> PoolSnapshot {
    let inputs: Vec<WeightInput> = state.basis.iter().map(|b| b.input).collect();
    let solved = weights::solve(&inputs);
    let entries = state
        .backends
        .iter()
        .enumerate()
        .map(|(i, backend)| BackendEntry {
            backend: backend.clone(),
            index: i,
            address: state.addresses[i],
            phase: state.basis[i].phase,
            effective_weight: solved.weights[i],
            health: state.basis[i].health,
            available: state.basis[i].available,
        })
        .collect();
    PoolSnapshot {
        config: state.config.clone(),
        entries,
        selector: Selector::build(state.config.algorithm, &solved.weights, cursor),
        fallback: solved.fallback,
    }
}

/// Where a backend is in the pool now (`None`: a reload removed it).
fn position(state: &PoolState, backend: &Arc<BackendRuntime>) -> Option<usize> {
    state.backends.iter().position(|b| Arc::ptr_eq(b, backend))
}

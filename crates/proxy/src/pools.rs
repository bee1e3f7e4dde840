//! The pools of the embedded proxy and the phase each VM is in, as the migration module last
//! commanded. Applying a command rebuilds the snapshots of the pools that hold the VM; a ticker
//! rebuilds them while a weight moves with time (linear drain, ramp), and enforces a local deadline
//! so that a VM is restored even if the node that drained it never speaks again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use handover_core::api::{Applied, BackendReport, BackendStatus, BalancerStatus, DrainStatus, PoolStatus};
use handover_core::config::{Config, PoolConfig};
use handover_core::model::{Keep, RestoreMode, VmId};
use handover_core::phase::{EndReason, Phase, PhaseCommand};
use handover_core::selection::Selector;
use handover_core::time::millis;
use handover_core::weights::{self, WeightInput, WeightState};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::BackendRuntime;
use crate::snapshot::{BackendEntry, PoolSnapshot};

/// How long after its deadline a drained VM is restored locally if no command came.
pub const LOCAL_DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// Most connections listed in a drain status.
const MAX_LISTED: usize = 100;

/// One pool: its configuration, its backends, and the current snapshot.
#[derive(Debug)]
pub struct Pool {
    /// Configuration.
    pub config: PoolConfig,
    /// Live state of each backend, in configuration order.
    pub backends: Vec<Arc<BackendRuntime>>,
    snapshot: ArcSwap<PoolSnapshot>,
}

impl Pool {
    /// The current snapshot (a cheap, lock-free load).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<PoolSnapshot>> {
        self.snapshot.load()
    }

    fn serves(&self, vm: &VmId) -> bool {
        self.backends.iter().any(|b| &b.vm == vm)
    }
}

/// The last command for a VM and when it arrived.
#[derive(Debug, Clone, Copy)]
struct VmEntry {
    command: PhaseCommand,
    received: Instant,
}

/// How a backend takes part in its pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Effective {
    state: WeightState,
    phase: Phase,
    /// The weight still changes with time.
    moving: bool,
}

/// Every pool of the embedded proxy.
#[derive(Debug)]
pub struct Pools {
    pools: Vec<Arc<Pool>>,
    vms: Mutex<HashMap<VmId, VmEntry>>,
}

impl Pools {
    /// Pools for a configuration, every VM stable.
    pub fn new(config: &Config) -> Arc<Self> {
        let pools = config
            .pools
            .iter()
            .map(|pc| {
                let backends: Vec<Arc<BackendRuntime>> = pc
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| Arc::new(BackendRuntime::new(&pc.name, i, b.vm.clone(), b.weight)))
                    .collect();
                let addresses: Vec<SocketAddr> = pc.backends.iter().map(|b| b.address).collect();
                let snapshot = assemble(pc, &backends, &addresses, &HashMap::new(), Instant::now(), 0);
                Arc::new(Pool {
                    config: pc.clone(),
                    backends,
                    snapshot: ArcSwap::from_pointee(snapshot),
                })
            })
            .collect();
        Arc::new(Self {
            pools,
            vms: Mutex::new(HashMap::new()),
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

    /// Every VM of every pool, sorted, without duplicates.
    pub fn vm_ids(&self) -> Vec<VmId> {
        let mut vms: Vec<VmId> = self
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.vm.clone()))
            .collect();
        vms.sort();
        vms.dedup();
        vms
    }

    /// Applies the desired state of a VM to every pool that holds it.
    pub fn apply(&self, vm: &VmId, command: PhaseCommand) -> Applied {
        if !self.serves(vm) {
            return Applied {
                serves: false,
                backends: Vec::new(),
            };
        }
        let now = Instant::now();
        {
            let mut vms = self.vms.lock();
            match command {
                PhaseCommand::Stable => {
                    vms.remove(vm);
                }
                _ => {
                    vms.insert(
                        vm.clone(),
                        VmEntry {
                            command,
                            received: now,
                        },
                    );
                }
            }
            for pool in self.pools.iter().filter(|p| p.serves(vm)) {
                rebuild(pool, &vms, now);
            }
        }
        if matches!(command, PhaseCommand::Drain { .. }) {
            for pool in self
                .pools
                .iter()
                .filter(|p| p.config.drain.keep == Keep::InFlight)
            {
                for backend in pool.backends.iter().filter(|b| &b.vm == vm) {
                    backend.idle.clear();
                }
            }
        }
        Applied {
            serves: true,
            backends: self.reports(vm),
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
            pools: self
                .pools
                .iter()
                .map(|pool| {
                    let snapshot = pool.snapshot();
                    let total: f64 = snapshot.entries.iter().map(|e| e.effective_weight).sum();
                    PoolStatus {
                        name: pool.config.name.clone(),
                        algorithm: pool.config.algorithm,
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
                                    health: "up".to_string(),
                                    active: e.backend.active(),
                                    connections_total,
                                    requests_total,
                                    failures_total,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Rebuilds pools whose weights move with time, restores VMs whose local deadline passed, and
    /// forgets VMs that are back at full weight everywhere.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut vms = self.vms.lock();
        if vms.is_empty() {
            return;
        }
        let mut changed_vms = Vec::new();
        vms.retain(|vm, entry| {
            let settled = self
                .pools
                .iter()
                .filter(|p| p.serves(vm))
                .all(|p| effective(&p.config, Some(entry), now).phase == Phase::Stable);
            if settled {
                changed_vms.push(vm.clone());
            }
            !settled
        });
        for pool in &self.pools {
            let moving = pool.backends.iter().any(|b| {
                changed_vms.contains(&b.vm)
                    || vms
                        .get(&b.vm)
                        .is_some_and(|e| effective(&pool.config, Some(e), now).moving)
            });
            if moving {
                rebuild(pool, &vms, now);
            }
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
fn effective(pool: &PoolConfig, entry: Option<&VmEntry>, now: Instant) -> Effective {
    let Some(entry) = entry else {
        return Effective {
            state: WeightState::Scaled(1.0),
            phase: Phase::Stable,
            moving: false,
        };
    };
    let since = millis(now.saturating_duration_since(entry.received));
    match entry.command {
        PhaseCommand::Stable => Effective {
            state: WeightState::Scaled(1.0),
            phase: Phase::Stable,
            moving: false,
        },
        PhaseCommand::Drain {
            elapsed_ms,
            migrating,
            deadline_in_ms,
        } => {
            let grace = millis(LOCAL_DEADLINE_GRACE);
            if since >= deadline_in_ms.saturating_add(grace) {
                // Nobody ended this migration: restore as the pool says for a missed deadline.
                let ramp_elapsed = since - deadline_in_ms - grace;
                return ramp(pool, ramp_elapsed, EndReason::Deadline);
            }
            let elapsed = elapsed_ms.saturating_add(since);
            Effective {
                state: WeightState::Draining {
                    share: pool.drain.share_at(elapsed),
                },
                phase: if migrating {
                    Phase::Migrating
                } else {
                    Phase::Draining
                },
                // Moving until the local deadline, which must be noticed by the ticker.
                moving: true,
            }
        }
        PhaseCommand::Ramp { elapsed_ms, reason } => ramp(pool, elapsed_ms.saturating_add(since), reason),
    }
}

fn ramp(pool: &PoolConfig, elapsed: u64, reason: EndReason) -> Effective {
    if reason != EndReason::Completed && pool.restore == RestoreMode::Immediate {
        return Effective {
            state: WeightState::Scaled(1.0),
            phase: Phase::Stable,
            moving: false,
        };
    }
    if pool.ramp.is_done_at(elapsed) {
        Effective {
            state: WeightState::Scaled(1.0),
            phase: Phase::Stable,
            moving: false,
        }
    } else {
        Effective {
            state: WeightState::Scaled(pool.ramp.factor_at(elapsed)),
            phase: Phase::Ramping,
            moving: true,
        }
    }
}

fn rebuild(pool: &Pool, vms: &HashMap<VmId, VmEntry>, now: Instant) {
    let current = pool.snapshot.load();
    let addresses: Vec<SocketAddr> = current.entries.iter().map(|e| e.address).collect();
    let next = assemble(
        &pool.config,
        &pool.backends,
        &addresses,
        vms,
        now,
        current.selector.cursor(),
    );
    pool.snapshot.store(Arc::new(next));
}

fn assemble(
    config: &PoolConfig,
    backends: &[Arc<BackendRuntime>],
    addresses: &[SocketAddr],
    vms: &HashMap<VmId, VmEntry>,
    now: Instant,
    cursor: u64,
) -> PoolSnapshot {
    let effectives: Vec<Effective> = backends
        .iter()
        .map(|b| effective(config, vms.get(&b.vm), now))
        .collect();
    let inputs: Vec<WeightInput> = backends
        .iter()
        .zip(&effectives)
        .map(|(b, e)| WeightInput {
            weight: b.weight,
            state: e.state,
        })
        .collect();
    let solved = weights::solve(&inputs);
    let entries = backends
        .iter()
        .zip(addresses)
        .zip(effectives.iter().zip(&solved.weights))
        .map(|((backend, address), (e, w))| BackendEntry {
            backend: backend.clone(),
            address: *address,
            phase: e.phase,
            effective_weight: *w,
        })
        .collect();
    PoolSnapshot {
        entries,
        selector: Selector::build(config.algorithm, &solved.weights, cursor),
        fallback: solved.fallback,
    }
}

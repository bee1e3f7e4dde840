//! HAProxy as a balancer handover drives, through its runtime API.
//!
//! handover keeps the desired state of every VM it was told about and, every `step`, reads
//! `show servers state`, works out what each server must be ([`plan`]) and sends only the commands
//! that differ from what HAProxy has. Because it compares with HAProxy's actual state, a reload
//! (which makes HAProxy forget runtime changes) is repaired at the next step; the new worker's PID
//! in `show info` is logged. Ramps are stepped `set weight`s, since HAProxy does not slow-start
//! after a drain. Drain status comes from `show stat` (current sessions) and `show sess` (who).

pub mod plan;
pub mod runtime;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use handover_core::api::{
    Applied, BackendReport, BackendStatus, BalancerStatus, ConnectionReport, DrainStatus, Leftover,
    PoolStatus,
};
use handover_core::balancer::{Balancer, BalancerError, BoxFuture};
use handover_core::config::{HaproxyConfig, ServerKey};
use handover_core::model::{Algorithm, VmId};
use handover_core::phase::{PhaseCommand, Readdress};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::desired::Desired;
use plan::{PlanInput, plan_backend};
use runtime::{
    Runtime, RuntimeError, ServerState, parse_info, parse_servers_state, parse_sessions, parse_stat,
};

/// What the driver remembers between steps.
#[derive(Debug, Default)]
struct Inner {
    desired: Desired,
    /// Backends whose weights or states handover changed (to restore them at the end).
    touched: HashSet<String>,
    /// VM of each server, resolved once.
    vms: HashMap<(String, String), VmId>,
    /// Each server's address when first seen (its configured one; moves are applied to it).
    original: HashMap<(String, String), SocketAddr>,
    /// Worker PID last seen in `show info`.
    pid: Option<String>,
    /// The last step failed (log the next success once).
    failing: bool,
}

/// One HAProxy instance.
#[derive(Debug)]
pub struct HaproxyBalancer {
    config: HaproxyConfig,
    runtime: Runtime,
    inner: Mutex<Inner>,
}

fn to_balancer_error(error: RuntimeError) -> BalancerError {
    match error {
        RuntimeError::Unreachable(endpoint, reason) => {
            BalancerError::Unreachable(format!("{endpoint}: {reason}"))
        }
        RuntimeError::Timeout(_, _, timeout) => BalancerError::Timeout(timeout.as_millis() as u64),
        RuntimeError::Refused(command, reason) => BalancerError::Rejected(format!("{command}: {reason}")),
        RuntimeError::Garbage(command, reason) => BalancerError::Protocol(format!("{command}: {reason}")),
    }
}

impl HaproxyBalancer {
    /// A driver for one instance.
    pub fn new(config: HaproxyConfig) -> Arc<Self> {
        let runtime = Runtime::new(config.socket.clone(), config.timeout);
        Arc::new(Self {
            config,
            runtime,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// How long one call to this balancer may take (several runtime commands).
    pub fn call_timeout(&self) -> Duration {
        (self.config.timeout * 6).max(Duration::from_secs(2))
    }

    async fn servers(&self) -> Result<Vec<ServerState>, BalancerError> {
        let answer = self
            .runtime
            .command("show servers state")
            .await
            .map_err(to_balancer_error)?;
        parse_servers_state(&answer)
            .map_err(|e| to_balancer_error(RuntimeError::Garbage("show servers state".into(), e)))
    }

    /// The VM of a server, from the configured mapping (resolved once, by name or by address).
    fn vm_of(&self, inner: &mut Inner, server: &ServerState) -> Option<VmId> {
        let key = (server.backend.clone(), server.server.clone());
        let original = *inner.original.entry(key.clone()).or_insert(server.address);
        if let Some(vm) = inner.vms.get(&key) {
            return Some(vm.clone());
        }
        let vm = self
            .config
            .vms
            .iter()
            .find(|(k, _)| match k {
                ServerKey::Name {
                    backend,
                    server: name,
                } => *backend == server.backend && *name == server.server,
                ServerKey::Address(address) => *address == original,
            })
            .map(|(_, vm)| vm.clone())
            .or_else(|| {
                self.config
                    .server_name_is_vm
                    .then(|| VmId::new(server.server.as_str()).ok())
                    .flatten()
            })?;
        inner.vms.insert(key, vm.clone());
        Some(vm)
    }

    /// Notes HAProxy's worker PID; a new one means a reload, which forgot every runtime change.
    async fn note_worker(&self, inner: &mut Inner) {
        let Ok(Ok(info)) = self.runtime.command("show info").await.map(|a| parse_info(&a)) else {
            return;
        };
        let pid = info.get("Pid").cloned();
        if inner.pid.is_some() && pid != inner.pid {
            info!(haproxy = %self.config.name, from = ?inner.pid, to = ?pid, "HAProxy reloaded: re-applying every active phase");
        }
        inner.pid = pid;
    }

    /// Brings HAProxy to the desired state; returns its servers as they are afterwards.
    async fn sync(&self, inner: &mut Inner) -> Result<Vec<ServerState>, BalancerError> {
        self.note_worker(inner).await;
        let servers = self.servers().await?;
        let mut by_backend: BTreeMap<String, Vec<(ServerState, Option<VmId>)>> = BTreeMap::new();
        for server in servers {
            let vm = self.vm_of(inner, &server);
            by_backend
                .entry(server.backend.clone())
                .or_default()
                .push((server, vm));
        }
        let mut changed = false;
        for (backend, members) in &by_backend {
            let inputs: Vec<PlanInput> = members
                .iter()
                .map(|(server, vm)| {
                    let original = inner.original[&(server.backend.clone(), server.server.clone())];
                    let address = vm
                        .as_ref()
                        .and_then(|vm| inner.desired.readdress(vm))
                        .map_or(original, |r| r.apply(original));
                    let effect = vm.as_ref().map_or(handover_core::command::Effect::STABLE, |vm| {
                        inner.desired.effect(vm, &self.config.policy)
                    });
                    PlanInput {
                        initial_weight: server.initial_weight,
                        effect,
                        address,
                    }
                })
                .collect();
            let moved = inputs
                .iter()
                .zip(members)
                .any(|(input, (server, _))| input.address != server.address);
            let Some(targets) = plan_backend(&inputs, inner.touched.contains(backend) || moved) else {
                continue;
            };
            let mut touched = false;
            for ((server, _), target) in members.iter().zip(&targets) {
                let name = format!("{}/{}", server.backend, server.server);
                if target.address != server.address {
                    let command = format!(
                        "set server {name} addr {} port {}",
                        target.address.ip(),
                        target.address.port()
                    );
                    self.runtime.set(&command).await.map_err(to_balancer_error)?;
                    changed = true;
                }
                if target.draining != server.draining {
                    let state = if target.draining { "drain" } else { "ready" };
                    self.runtime
                        .set(&format!("set server {name} state {state}"))
                        .await
                        .map_err(to_balancer_error)?;
                    changed = true;
                }
                if target.weight != server.weight {
                    self.runtime
                        .set(&format!("set weight {name} {}", target.weight))
                        .await
                        .map_err(to_balancer_error)?;
                    changed = true;
                }
                touched |= target.draining || target.weight != server.initial_weight;
            }
            if touched {
                inner.touched.insert(backend.clone());
            } else {
                inner.touched.remove(backend);
            }
        }
        if changed {
            self.servers().await
        } else {
            Ok(by_backend.into_values().flatten().map(|(s, _)| s).collect())
        }
    }

    fn reports(&self, inner: &Inner, vm: &VmId, servers: &[ServerState]) -> Vec<BackendReport> {
        let phase = inner.desired.effect(vm, &self.config.policy).phase;
        servers
            .iter()
            .filter(|s| inner.vms.get(&(s.backend.clone(), s.server.clone())) == Some(vm))
            .map(|s| BackendReport {
                pool: s.backend.clone(),
                address: format!("{} {}", s.server, s.address),
                weight: s.initial_weight,
                effective_weight: if s.draining { 0.0 } else { f64::from(s.weight) },
                phase,
                active: 0,
            })
            .collect()
    }

    /// Re-sends weights while they move, repairs what a reload undid, and ends finished phases.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.policy.step);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let mut inner = self.inner.lock().await;
            if !inner.desired.any_active() && inner.touched.is_empty() {
                continue;
            }
            match self.sync(&mut inner).await {
                Ok(_) => {
                    if inner.failing {
                        info!(haproxy = %self.config.name, "runtime API answers again; state re-applied");
                    }
                    inner.failing = false;
                    inner.desired.settle(&self.config.policy);
                }
                Err(e) => {
                    if !inner.failing {
                        warn!(haproxy = %self.config.name, error = %e, "cannot bring HAProxy to the desired state; retrying");
                    }
                    inner.failing = true;
                }
            }
        }
    }
}

impl Balancer for HaproxyBalancer {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "haproxy"
    }

    fn serves_known(&self, vm: &VmId) -> Option<bool> {
        if self.config.vms.iter().any(|(_, v)| v == vm) {
            Some(true)
        } else if self.config.server_name_is_vm {
            None
        } else {
            Some(false)
        }
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<Leftover>, BalancerError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().await;
            let servers = self.servers().await?;
            let mut found = Vec::new();
            for server in &servers {
                let Some(vm) = self.vm_of(&mut inner, server) else {
                    continue;
                };
                if server.draining || server.weight != server.initial_weight {
                    // Its backend is restored to the configured weights when its VMs are stable.
                    inner.touched.insert(server.backend.clone());
                }
                if server.draining {
                    found.push(Leftover {
                        vm,
                        found: format!("server {}/{} in DRAIN", server.backend, server.server),
                    });
                }
            }
            Ok(found)
        })
    }

    fn apply<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().await;
            if self.serves_known(vm) == Some(true) {
                // Kept even if HAProxy cannot be reached now: the next step applies it.
                inner.desired.set(vm, command);
            }
            let servers = self.servers().await?;
            let serves = servers
                .iter()
                .any(|s| self.vm_of(&mut inner, s).as_ref() == Some(vm));
            if !serves {
                return Ok(Applied {
                    serves: false,
                    backends: Vec::new(),
                });
            }
            inner.desired.set(vm, command);
            let servers = self.sync(&mut inner).await?;
            Ok(Applied {
                serves: true,
                backends: self.reports(&inner, vm, &servers),
            })
        })
    }

    fn set_addresses<'a>(
        &'a self,
        vm: &'a VmId,
        change: &'a Readdress,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().await;
            inner.desired.set_readdress(vm, change.clone());
            let servers = self.sync(&mut inner).await?;
            let backends = self.reports(&inner, vm, &servers);
            Ok(Applied {
                serves: !backends.is_empty(),
                backends,
            })
        })
    }

    fn drain_status<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<DrainStatus, BalancerError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().await;
            let servers = self.servers().await?;
            let mine: HashSet<(String, String)> = servers
                .iter()
                .filter(|s| self.vm_of(&mut inner, s).as_ref() == Some(vm))
                .map(|s| (s.backend.clone(), s.server.clone()))
                .collect();
            drop(inner);
            if mine.is_empty() {
                return Ok(DrainStatus {
                    serves: false,
                    active: 0,
                    remaining: Vec::new(),
                });
            }
            let stat = self
                .runtime
                .command("show stat")
                .await
                .map_err(to_balancer_error)?;
            let rows = parse_stat(&stat)
                .map_err(|e| to_balancer_error(RuntimeError::Garbage("show stat".into(), e)))?;
            let active = rows
                .iter()
                .filter(|r| mine.contains(&(r.backend.clone(), r.server.clone())))
                .map(|r| r.current)
                .sum();
            let sessions = self
                .runtime
                .command("show sess")
                .await
                .map(|a| parse_sessions(&a))
                .unwrap_or_default();
            let remaining = sessions
                .into_iter()
                .filter(|s| mine.contains(&(s.backend.clone(), s.server.clone())))
                .take(100)
                .map(|s| ConnectionReport {
                    balancer: String::new(),
                    pool: s.backend,
                    backend: s.server,
                    client: s.client,
                    kind: "haproxy".to_string(),
                    request: None,
                    age_ms: s.age_ms,
                })
                .collect();
            Ok(DrainStatus {
                serves: true,
                active,
                remaining,
            })
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<BalancerStatus, BalancerError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().await;
            let servers = self.servers().await?;
            let stat = self
                .runtime
                .command("show stat")
                .await
                .map_err(to_balancer_error)?;
            let rows = parse_stat(&stat)
                .map_err(|e| to_balancer_error(RuntimeError::Garbage("show stat".into(), e)))?;
            let mut pools: BTreeMap<String, PoolStatus> = BTreeMap::new();
            for (index, server) in servers.iter().enumerate() {
                let Some(vm) = self.vm_of(&mut inner, server) else {
                    continue;
                };
                let row = rows
                    .iter()
                    .find(|r| r.backend == server.backend && r.server == server.server);
                let effective = if server.draining {
                    0.0
                } else {
                    f64::from(server.weight)
                };
                let pool = pools.entry(server.backend.clone()).or_insert_with(|| PoolStatus {
                    name: format!("{}/{}", self.config.name, server.backend),
                    algorithm: Algorithm::RoundRobin,
                    fallback: false,
                    backends: Vec::new(),
                    removed: Vec::new(),
                });
                pool.backends.push(BackendStatus {
                    index,
                    address: format!("{} {}", server.server, server.address),
                    vm: vm.clone(),
                    weight: server.initial_weight,
                    effective_weight: effective,
                    share: 0.0,
                    phase: inner.desired.effect(&vm, &self.config.policy).phase,
                    health: row
                        .map_or("unknown", |r| {
                            if r.status.starts_with("UP") || r.status == "DRAIN" || r.status == "no check" {
                                "up"
                            } else {
                                "down"
                            }
                        })
                        .to_string(),
                    active: row.map_or(0, |r| r.current),
                    connections_total: row.map_or(0, |r| r.total),
                    requests_total: 0,
                    failures_total: 0,
                    suppressed_failures_total: 0,
                    outages_total: 0,
                });
            }
            let mut pools: Vec<PoolStatus> = pools.into_values().collect();
            for pool in &mut pools {
                let total: f64 = pool.backends.iter().map(|b| b.effective_weight).sum();
                for b in &mut pool.backends {
                    b.share = if total > 0.0 {
                        b.effective_weight / total
                    } else {
                        0.0
                    };
                }
            }
            Ok(BalancerStatus { pools })
        })
    }
}

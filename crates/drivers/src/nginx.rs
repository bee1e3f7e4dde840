//! nginx as a balancer handover drives: handover writes the whole `upstream` block to a file the
//! operator's nginx.conf includes, then runs the reload command (graceful: old workers finish
//! their connections, new workers use the new weights).
//!
//! Limits of nginx open source, which has no runtime API: a drain is `down` (nginx 1.22 has no
//! `drain` server flag; it came to open source in 1.29.6), weights are integers of at least 1, so
//! partial targets and ramps are written as weights scaled by 100, and each ramp step is a reload
//! (every `step`, 1 s by default). nginx cannot report connections per server, so drain status is
//! unknown: a wait for drained ignores nginx (and says so).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use handover_core::api::{Applied, BackendReport, BackendStatus, BalancerStatus, DrainStatus, PoolStatus};
use handover_core::balancer::{Balancer, BalancerError, BoxFuture};
use handover_core::command::Effect;
use handover_core::config::NginxConfig;
use handover_core::model::{Algorithm, VmId};
use handover_core::phase::{PhaseCommand, Readdress};
use handover_core::weights::{self, WeightInput, WeightState};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::desired::Desired;

/// Weights are scaled by this much when a share must be exact.
const SCALE: f64 = 100.0;
/// Longest a reload command may take.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// One server as written.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    address: std::net::SocketAddr,
    weight: u32,
    down: bool,
    effect: Effect,
}

#[derive(Debug, Default)]
struct Inner {
    desired: Desired,
    written: Option<String>,
}

/// One nginx instance.
#[derive(Debug)]
pub struct NginxBalancer {
    config: NginxConfig,
    inner: Mutex<Inner>,
}

impl NginxBalancer {
    /// A driver for one instance.
    pub fn new(config: NginxConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// How long one call may take (a reload).
    pub fn call_timeout(&self) -> Duration {
        RELOAD_TIMEOUT + Duration::from_secs(1)
    }

    fn lines(&self, desired: &Desired) -> Vec<Line> {
        let effects: Vec<Effect> = self
            .config
            .servers
            .iter()
            .map(|s| desired.effect(&s.vm, &self.config.policy))
            .collect();
        let address = |s: &handover_core::config::NginxServer| {
            desired.readdress(&s.vm).map_or(s.address, |r| r.apply(s.address))
        };
        if effects.iter().all(|e| *e == Effect::STABLE) {
            return self
                .config
                .servers
                .iter()
                .zip(effects)
                .map(|(s, effect)| Line {
                    address: address(s),
                    weight: s.weight,
                    down: false,
                    effect,
                })
                .collect();
        }
        let inputs: Vec<WeightInput> = self
            .config
            .servers
            .iter()
            .zip(&effects)
            .map(|(s, e)| WeightInput {
                weight: s.weight,
                state: e.state,
            })
            .collect();
        let solved = weights::solve(&inputs);
        let exact_weights_needed = effects.iter().any(|e| match e.state {
            WeightState::Scaled(f) => f < 1.0,
            WeightState::Draining { share } => share > 0.0,
            WeightState::Excluded => false,
        });
        self.config
            .servers
            .iter()
            .zip(effects)
            .zip(&solved.weights)
            .map(|((s, effect), w)| {
                let down = *w <= 0.0 && !solved.fallback;
                let weight = if exact_weights_needed {
                    ((w * SCALE).round() as u32).max(1)
                } else {
                    s.weight
                };
                Line {
                    address: address(s),
                    weight,
                    down,
                    effect,
                }
            })
            .collect()
    }

    fn render(&self, lines: &[Line]) -> String {
        let mut text = format!(
            "# Written by handover (balancer {:?}); it is rewritten on every migration: do not edit.\nupstream {} {{\n",
            self.config.name, self.config.upstream
        );
        for extra in &self.config.extra {
            text.push_str(&format!("    {extra}\n"));
        }
        for line in lines {
            text.push_str(&format!(
                "    server {} weight={}{};\n",
                line.address,
                line.weight,
                if line.down { " down" } else { "" }
            ));
        }
        text.push_str("}\n");
        text
    }

    /// Writes the file and reloads nginx when the upstream changed.
    async fn sync(&self, inner: &mut Inner) -> Result<Vec<Line>, BalancerError> {
        let lines = self.lines(&inner.desired);
        let text = self.render(&lines);
        if inner.written.as_deref() != Some(text.as_str()) {
            write_atomic(&self.config.file, &text).map_err(|e| {
                BalancerError::Unreachable(format!("cannot write {}: {e}", self.config.file.display()))
            })?;
            self.reload().await?;
            inner.written = Some(text);
        }
        Ok(lines)
    }

    async fn reload(&self) -> Result<(), BalancerError> {
        let mut command = tokio::process::Command::new(&self.config.reload[0]);
        command.args(&self.config.reload[1..]).kill_on_drop(true);
        let output = tokio::time::timeout(RELOAD_TIMEOUT, command.output())
            .await
            .map_err(|_| BalancerError::Timeout(RELOAD_TIMEOUT.as_millis() as u64))?
            .map_err(|e| BalancerError::Unreachable(format!("cannot run {:?}: {e}", self.config.reload)))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(BalancerError::Rejected(format!(
                "{:?} exited with {}: {}",
                self.config.reload,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    fn reports(&self, vm: &VmId, lines: &[Line]) -> Vec<BackendReport> {
        self.config
            .servers
            .iter()
            .zip(lines)
            .filter(|(s, _)| &s.vm == vm)
            .map(|(s, line)| BackendReport {
                pool: self.config.upstream.clone(),
                address: line.address.to_string(),
                weight: s.weight,
                effective_weight: if line.down { 0.0 } else { f64::from(line.weight) },
                phase: line.effect.phase,
                active: 0,
            })
            .collect()
    }

    fn serves(&self, vm: &VmId) -> bool {
        self.config.servers.iter().any(|s| &s.vm == vm)
    }

    /// Writes the upstream at start, then steps weights while they move, until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        {
            let mut inner = self.inner.lock().await;
            match self.sync(&mut inner).await {
                Ok(_) => {
                    info!(nginx = %self.config.name, file = %self.config.file.display(), "upstream written")
                }
                Err(e) => {
                    warn!(nginx = %self.config.name, error = %e, "cannot write the upstream or reload nginx at start")
                }
            }
        }
        let mut interval = tokio::time::interval(self.config.policy.step);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = self.inner.lock().await.written.is_none();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let mut inner = self.inner.lock().await;
            if !inner.desired.any_active() && inner.written.is_some() {
                continue;
            }
            match self.sync(&mut inner).await {
                Ok(_) if failing => {
                    failing = false;
                    info!(nginx = %self.config.name, file = %self.config.file.display(), "upstream written; nginx reloaded after failing")
                }
                Ok(_) => {}
                Err(e) => {
                    failing = true;
                    warn!(nginx = %self.config.name, error = %e, "cannot update nginx; retrying")
                }
            }
            inner.desired.settle(&self.config.policy);
        }
    }
}

/// Replaces `path` whole: written to a temporary file beside it and synced, renamed over it, and
/// the directory synced, so nginx never reads half a file and a crash leaves the old or the new one.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("handover-tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Balancer for NginxBalancer {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "nginx"
    }

    fn serves_known(&self, vm: &VmId) -> Option<bool> {
        Some(self.serves(vm))
    }

    fn apply<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            if !self.serves(vm) {
                return Ok(Applied {
                    serves: false,
                    backends: Vec::new(),
                });
            }
            let mut inner = self.inner.lock().await;
            inner.desired.set(vm, command);
            let lines = self.sync(&mut inner).await?;
            Ok(Applied {
                serves: true,
                backends: self.reports(vm, &lines),
            })
        })
    }

    fn set_addresses<'a>(
        &'a self,
        vm: &'a VmId,
        change: &'a Readdress,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            if !self.serves(vm) {
                return Ok(Applied {
                    serves: false,
                    backends: Vec::new(),
                });
            }
            let mut inner = self.inner.lock().await;
            inner.desired.set_readdress(vm, change.clone());
            let lines = self.sync(&mut inner).await?;
            Ok(Applied {
                serves: true,
                backends: self.reports(vm, &lines),
            })
        })
    }

    fn drain_status<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<DrainStatus, BalancerError>> {
        Box::pin(async move {
            if !self.serves(vm) {
                return Ok(DrainStatus {
                    serves: false,
                    active: 0,
                    remaining: Vec::new(),
                });
            }
            Err(BalancerError::Rejected(
                "nginx open source cannot report connections per server".into(),
            ))
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<BalancerStatus, BalancerError>> {
        Box::pin(async move {
            let inner = self.inner.lock().await;
            let lines = self.lines(&inner.desired);
            let total: f64 = lines
                .iter()
                .filter(|l| !l.down)
                .map(|l| f64::from(l.weight))
                .sum();
            let backends = self
                .config
                .servers
                .iter()
                .zip(&lines)
                .enumerate()
                .map(|(index, (s, line))| {
                    let effective = if line.down { 0.0 } else { f64::from(line.weight) };
                    BackendStatus {
                        index,
                        address: line.address.to_string(),
                        vm: s.vm.clone(),
                        weight: s.weight,
                        effective_weight: effective,
                        share: if total > 0.0 { effective / total } else { 0.0 },
                        phase: line.effect.phase,
                        health: "unknown".to_string(),
                        active: 0,
                        connections_total: 0,
                        requests_total: 0,
                        failures_total: 0,
                        suppressed_failures_total: 0,
                        outages_total: 0,
                    }
                })
                .collect();
            Ok(BalancerStatus {
                pools: vec![PoolStatus {
                    name: format!("{}/{}", self.config.name, self.config.upstream),
                    algorithm: Algorithm::RoundRobin,
                    fallback: false,
                    backends,
                    removed: Vec::new(),
                }],
            })
        })
    }
}

#[cfg(test)]
#[path = "nginx_tests.rs"]
mod tests;

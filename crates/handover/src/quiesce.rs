//! `handover migrate`'s part in adaptive drain and switchover quiescence.
//!
//! Before the copy it asks handover whether the VM adapts (a first progress report with the
//! guest's size and the migration's parameters), and if so measures the guest's dirty rate for a
//! second at the drain target, so that the controller can choose its level before the first pass
//! rather than at its end. During the copy it keeps a probe running and reports it with every
//! progress report. When the controller begins quiescence and the balancers still report requests
//! in flight, it holds QEMU's switchover ([`SwitchoverHold`]) until they report none or the pool's
//! `quiesce_hold` passes; when quiescence begins before the copy (a copy shorter than the lead), it
//! waits the same way before it starts the copy.

use std::time::Duration;

use handover_core::adaptive::{AdaptiveDrain, Probe};
use handover_core::api::ProgressReply;
use handover_core::migration::{AdaptiveStatus, MigrationProgress};
use handover_core::model::VmId;
use handover_drivers::{ClientError, ControlClient};
use handover_sources::qmp::dirty_rate;
use handover_sources::qmp::{Prober, QmpClient, SwitchoverHold};
use tokio::time::Instant;

use crate::migrate::step;

/// How often progress is reported while waiting for quiescence.
const QUIESCE_POLL: Duration = Duration::from_millis(50);

/// Reports progress to handover; the reply says where the VM's adaptive drain stands. Failures
/// are ignored (progress is informative; the deadline is the safety net).
pub async fn report(
    control: &ControlClient,
    vm: &VmId,
    progress: &MigrationProgress,
) -> Option<ProgressReply> {
    let reply: Result<ProgressReply, ClientError> = control
        .put(&format!("/v1/vms/{vm}/migration/progress"), progress)
        .await;
    reply.ok()
}

/// The adaptive drain of one migration, as `handover migrate` drives it.
pub struct Adaptive {
    settings: AdaptiveDrain,
    prober: Option<Prober>,
    parameters: (Option<u64>, Option<u64>),
    memory: Option<u64>,
    probe: Option<Probe>,
    may_hold: bool,
    hold: Option<(SwitchoverHold, Instant)>,
    held_once: bool,
    /// The latest status handover answered.
    pub status: Option<AdaptiveStatus>,
}

impl Adaptive {
    /// Asks handover whether the VM adapts (`None`: it does not), and takes the first probe.
    pub async fn start(control: &ControlClient, vm: &VmId, qmp: &QmpClient, no_hold: bool) -> Option<Self> {
        let parameters = dirty_rate::parameters(qmp).await.unwrap_or((None, None));
        let memory = dirty_rate::memory_size(qmp).await.unwrap_or(None);
        let mut adaptive = Self {
            settings: AdaptiveDrain::default(),
            prober: None,
            parameters,
            memory,
            probe: None,
            may_hold: !no_hold,
            hold: None,
            held_once: false,
            status: None,
        };
        let status = report(control, vm, &adaptive.before_copy_progress())
            .await?
            .adaptive?;
        adaptive.settings = status.settings;
        adaptive.may_hold &= !adaptive.settings.quiesce_hold.is_zero() && adaptive.settings.quiesce;
        adaptive.status = Some(status);
        if adaptive.settings.enabled {
            let mut prober = Prober::new(memory);
            step(
                "adaptive drain: measuring the guest's dirty rate for 1 s at the drain target (calc-dirty-rate)",
            );
            match prober.measure(qmp).await {
                Ok(Some(probe)) => {
                    step(&format!(
                        "dirty rate {:.1} MiB/s",
                        probe.bytes_per_s / (1024.0 * 1024.0)
                    ));
                    adaptive.probe = Some(probe);
                }
                Ok(None) => step("no dirty rate measured in time; the controller waits for QEMU's"),
                Err(e) => step(&format!(
                    "dirty-rate probe failed ({e}); the controller waits for QEMU's"
                )),
            }
            adaptive.prober = Some(prober);
            if let Some(reply) = report(control, vm, &adaptive.before_copy_progress()).await {
                adaptive.status = reply.adaptive;
            }
        }
        if let Some(status) = &adaptive.status {
            step(&crate::status::describe_adaptive(status));
        }
        Some(adaptive)
    }

    /// What is known before the copy: the guest's size, the parameters, the probe.
    fn before_copy_progress(&self) -> MigrationProgress {
        self.enrich(MigrationProgress {
            status: Some("none".to_string()),
            total_bytes: self.memory,
            ..MigrationProgress::default()
        })
    }

    /// A progress report with the parameters, the latest probe and whether the switchover is held.
    pub fn enrich(&self, mut progress: MigrationProgress) -> MigrationProgress {
        progress.max_bandwidth = progress.max_bandwidth.or(self.parameters.0);
        progress.downtime_limit_ms = progress.downtime_limit_ms.or(self.parameters.1);
        progress.dirty_probe = self.probe;
        if self.held_once {
            progress.switchover_held = Some(self.hold.is_some());
        }
        progress
    }

    /// Quiescence began before the copy (a copy shorter than the lead): wait until the VM is
    /// quiesced, at most `quiesce_hold`, before QEMU is told to migrate.
    pub async fn before_copy(&mut self, control: &ControlClient, vm: &VmId) {
        let quiescing = self.status.as_ref().is_some_and(|s| s.quiescing);
        if !quiescing || !self.may_hold {
            return;
        }
        let started = Instant::now();
        let bound = self.settings.quiesce_hold;
        step(&format!(
            "quiescing before the copy: waiting until nothing is in flight to {vm} (at most {})",
            handover_core::time::format_duration(bound)
        ));
        let mut progress = self.before_copy_progress();
        progress.switchover_held = Some(true);
        loop {
            let reply = report(control, vm, &progress).await;
            self.status = reply.and_then(|r| r.adaptive).or(self.status.take());
            let quiesced = self.status.as_ref().is_some_and(|s| s.quiesced_at.is_some());
            if quiesced || started.elapsed() >= bound {
                step(&format!(
                    "{} after {} ms; starting the copy",
                    if quiesced {
                        "quiesced"
                    } else {
                        "still in flight at the bound"
                    },
                    started.elapsed().as_millis()
                ));
                progress.switchover_held = Some(false);
                report(control, vm, &progress).await;
                // One wait per migration: quiescence, once begun, lasts to the end.
                self.held_once = true;
                return;
            }
            tokio::time::sleep(QUIESCE_POLL).await;
        }
    }

    /// During the copy, before a report: advances the probe.
    pub async fn before_report(&mut self, qmp: &QmpClient) {
        if let Some(prober) = self.prober.as_mut()
            && let Ok(Some(probe)) = prober.tick(qmp).await
        {
            self.probe = Some(probe);
        }
    }

    /// During the copy, after a report of `progress`: holds the switchover when quiescence began
    /// with requests still in flight (tightening the hold once the copy is where it would have
    /// switched over), releases it once they are done or the bound passed. Returns whether the
    /// switchover is held (poll faster then).
    pub async fn after_report(
        &mut self,
        qmp: &QmpClient,
        progress: &MigrationProgress,
        reply: Option<ProgressReply>,
    ) -> bool {
        if let Some(status) = reply.and_then(|r| r.adaptive) {
            self.status = Some(status);
        }
        let Some(status) = &self.status else {
            return false;
        };
        let quiesced = status.quiesced_at.is_some();
        let forecast = status.latest.switchover_in_ms;
        if let Some((hold, _)) = self.hold.as_mut() {
            let bandwidth = progress.mbps.map(|m| m * 1e6 / 8.0);
            match hold
                .tighten(
                    qmp,
                    progress.remaining_bytes,
                    bandwidth,
                    progress.passes,
                    forecast,
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => {}
                Err(e) => step(&format!("warning: cannot tighten the hold ({e})")),
            }
        }
        if let Some((_, since)) = &self.hold {
            let bound = since.elapsed() >= self.settings.quiesce_hold;
            if quiesced || bound {
                let waited = since.elapsed().as_millis();
                self.release(qmp).await;
                step(&format!(
                    "switchover released after {waited} ms ({})",
                    if quiesced {
                        "nothing in flight"
                    } else {
                        "the quiesce_hold bound passed with requests still in flight"
                    }
                ));
            }
        } else if status.quiescing && !quiesced && self.may_hold && !self.held_once {
            match SwitchoverHold::hold(qmp).await {
                Ok(hold) => {
                    self.hold = Some((hold, Instant::now()));
                    self.held_once = true;
                    step(&format!(
                        "quiescing: holding QEMU's switchover until nothing is in flight (at most {})",
                        handover_core::time::format_duration(self.settings.quiesce_hold)
                    ));
                }
                Err(e) => step(&format!("cannot hold the switchover ({e}); going on without")),
            }
        }
        self.hold.is_some()
    }

    /// Releases a hold (at the end, or once quiesced).
    pub async fn release(&mut self, qmp: &QmpClient) {
        if let Some((hold, _)) = self.hold.take()
            && let Err(e) = hold.release(qmp).await
        {
            step(&format!(
                "warning: restoring QEMU's migration parameters failed: {e}"
            ));
        }
    }
}

//! The registry's side of adaptive drain: one [`Controller`] per VM that is draining or migrating
//! in a pool whose drain adapts or quiesces, stepped with the migration's latest progress. A new
//! level becomes part of the VM's state and of the drain command every balancer receives; every
//! step is kept in the migration's history (level, λ, what remains, the decision), as are the start
//! of quiescence, the moment nothing was in flight any more, and the hold of the switchover.

use serde::{Deserialize, Serialize};

use super::{Cause, MigrationProgress, MigrationRecord, Registry, Transition};
use crate::adaptive::{AdaptiveDrain, Controller, Level, Reason, Sample};
use crate::model::VmId;
use crate::time::Millis;

/// Steps kept per migration; beyond, the older half is thinned to every other step.
const MAX_ENTRIES: usize = 600;
/// QEMU's page size when the source does not report one.
const DEFAULT_PAGE_SIZE: u64 = 4096;

/// One step of the controller, as the history shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveEntry {
    /// When.
    pub at: Millis,
    /// The level chosen: the fraction of the drain target the VM keeps.
    pub level: Level,
    /// Why.
    pub decision: Reason,
    /// Dirty rate over copy bandwidth at that level, as the controller estimates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// The estimated dirty rate at that level, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_bytes_per_s: Option<f64>,
    /// The copy bandwidth decided with, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_s: Option<f64>,
    /// Bytes still to send in the current pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_bytes: Option<u64>,
    /// Predicted time to the switchover, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_in_ms: Option<u64>,
}

/// Where a VM's adaptive drain stands (`GET /v1/vms`, `handover status`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveStatus {
    /// The latest step.
    #[serde(flatten)]
    pub latest: AdaptiveEntry,
    /// Quiescence is on.
    pub quiescing: bool,
    /// When quiescence began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce_started_at: Option<Millis>,
    /// When nothing was in flight any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesced_at: Option<Millis>,
    /// `handover migrate` holds the switchover now.
    pub holding: bool,
    /// The settings the controller runs with.
    pub settings: AdaptiveDrain,
}

impl Registry {
    /// The adaptive settings of a VM: those of its pools whose drain adapts or quiesces (the
    /// configuration makes them agree).
    pub fn adaptive_of(&self, vm: &VmId) -> Option<AdaptiveDrain> {
        self.topology
            .pools_of(vm)
            .map(|p| p.adaptive)
            .find(AdaptiveDrain::is_active)
    }

    /// Steps the VM's controller with its migration's latest progress. Returns the transition to
    /// fan out when the level changed (the phase stays; the command carries the new level).
    pub fn adapt(&mut self, vm: &VmId, now: Millis) -> Option<Transition> {
        let Some(settings) = self.adaptive_of(vm) else {
            self.controllers.remove(vm);
            return None;
        };
        let state = self.vms.get(vm)?;
        let (phase, id, current) = (state.phase, state.migration, state.level);
        let Some(id) = id.filter(|_| phase.is_drained()) else {
            self.controllers.remove(vm);
            return None;
        };
        let record = self.history.iter().rev().find(|r| r.id == id)?;
        let progress = record.progress.clone()?;
        let resumed_quiescing = record.quiesce_started_at.is_some();
        let controller = match self.controllers.get_mut(vm) {
            Some((migration, controller)) if *migration == id && *controller.policy() == settings => {
                controller
            }
            _ => {
                // A new migration, a restart in the middle of one, or settings a reload changed:
                // go on from the level the balancers hold.
                let controller =
                    Controller::resume(settings, now, current.unwrap_or(Level::FULL), resumed_quiescing);
                self.controllers.insert(vm.clone(), (id, controller));
                &mut self.controllers.get_mut(vm).expect("just inserted").1
            }
        };
        let decision = controller.step(&sample_of(&progress, now));
        let record = self.history.iter_mut().rev().find(|r| r.id == id)?;
        push_entry(
            record,
            AdaptiveEntry {
                at: now,
                level: decision.level,
                decision: decision.reason,
                lambda: decision.lambda,
                dirty_bytes_per_s: decision.dirty_rate,
                bandwidth_bytes_per_s: decision.bandwidth,
                remaining_bytes: decision.remaining.map(|r| r as u64),
                switchover_in_ms: decision.switchover_in_ms,
            },
        );
        if decision.quiescing && record.quiesce_started_at.is_none() {
            record.quiesce_started_at = Some(now);
        }
        match progress.switchover_held {
            Some(true) if record.hold_started_at.is_none() => record.hold_started_at = Some(now),
            Some(false) if record.hold_started_at.is_some() && record.hold_ended_at.is_none() => {
                record.hold_ended_at = Some(now)
            }
            _ => {}
        }
        let level = Some(decision.level);
        if current == level {
            return None;
        }
        let state = self.vms.get_mut(vm).expect("looked up above");
        state.level = level;
        Some(Transition {
            vm: vm.clone(),
            from: phase,
            to: phase,
            cause: Cause::Adaptive,
            command: state.command_at(now),
            migration: Some(id),
            readdress: None,
            // Told where the VM's other changes are: a followed or adopted VM's level stays on
            // this node's own balancers.
            origin: state.origin,
        })
    }

    /// Whether the VM is quiescing now (its current migration's controller said so).
    pub fn quiescing(&self, vm: &VmId) -> bool {
        self.current_record(vm)
            .is_some_and(|r| r.quiesce_started_at.is_some() && r.ended_at.is_none())
    }

    /// Records how much is still in flight to a quiescing VM; the first time it is at most
    /// `threshold`, that is when it was quiesced. Returns whether it is quiesced.
    pub fn record_in_flight(&mut self, vm: &VmId, now: Millis, in_flight: u64, threshold: u64) -> bool {
        let Some(id) = self.vms.get(vm).and_then(|s| s.migration) else {
            return false;
        };
        let Some(record) = self.history.iter_mut().rev().find(|r| r.id == id) else {
            return false;
        };
        if record.quiesce_started_at.is_none() {
            return false;
        }
        if in_flight <= threshold && record.quiesced_at.is_none() {
            record.quiesced_at = Some(now);
        }
        record.quiesced_at.is_some()
    }

    /// Where the VM's adaptive drain stands, when its current or last migration has a step.
    pub fn adaptive_status(&self, vm: &VmId) -> Option<AdaptiveStatus> {
        let settings = self.adaptive_of(vm)?;
        let record = self.current_record(vm)?;
        let latest = record.adaptive.last()?.clone();
        let running = record.ended_at.is_none();
        Some(AdaptiveStatus {
            latest,
            quiescing: running && record.quiesce_started_at.is_some(),
            quiesce_started_at: record.quiesce_started_at,
            quiesced_at: record.quiesced_at,
            holding: running && record.hold_started_at.is_some() && record.hold_ended_at.is_none(),
            settings,
        })
    }

    fn current_record(&self, vm: &VmId) -> Option<&MigrationRecord> {
        let id = self.vms.get(vm)?.migration?;
        self.history.iter().rev().find(|r| r.id == id)
    }
}

/// What the controller reads from a progress report.
pub fn sample_of(progress: &MigrationProgress, now: Millis) -> Sample {
    let copying = matches!(
        progress.status.as_deref(),
        Some("active" | "postcopy-active" | "pre-switchover" | "device" | "wait-unplug")
    );
    let page_size = progress.page_size.filter(|p| *p > 0).unwrap_or(DEFAULT_PAGE_SIZE) as f64;
    Sample {
        at: now,
        copying,
        remaining: if copying {
            progress.remaining_bytes
        } else {
            progress.total_bytes.or(progress.remaining_bytes)
        }
        .map(|b| b as f64),
        bandwidth: progress
            .mbps
            .filter(|m| m.is_finite() && *m > 0.0)
            .map(|m| m * 1e6 / 8.0),
        bandwidth_cap: progress.max_bandwidth.filter(|b| *b > 0).map(|b| b as f64),
        passes: progress.passes,
        pass_dirty_rate: progress.dirty_pages_rate.map(|p| p as f64 * page_size),
        probe: progress.dirty_probe,
        downtime_limit_ms: progress.downtime_limit_ms,
    }
}

fn push_entry(record: &mut MigrationRecord, entry: AdaptiveEntry) {
    record.adaptive.push(entry);
    if record.adaptive.len() > MAX_ENTRIES {
        let half = record.adaptive.len() / 2;
        let mut index = 0;
        record.adaptive.retain(|_| {
            let keep = index >= half || index % 2 == 0;
            index += 1;
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::adaptive::Probe;
    use crate::config::GuardConfig;
    use crate::migration::{NoticeOptions, Outcome, PoolTopology, RegistryDefaults, Topology};
    use crate::model::RestoreMode;
    use crate::phase::{Notice, Phase, PhaseCommand};

    const MIB: u64 = 1024 * 1024;

    fn vm(name: &str) -> VmId {
        VmId::new(name).unwrap()
    }

    fn registry(adaptive: AdaptiveDrain) -> Registry {
        Registry::new(
            Topology {
                pools: vec![PoolTopology {
                    name: "web".into(),
                    backend_vms: vec![vm("vm-a"), vm("vm-b")],
                    guard: GuardConfig::default(),
                    deadline: Duration::from_secs(600),
                    ramp_window: Duration::from_secs(10),
                    restore: RestoreMode::Ramp,
                    adaptive,
                }],
            },
            RegistryDefaults::default(),
        )
    }

    fn adaptive(quiesce: bool) -> AdaptiveDrain {
        AdaptiveDrain {
            enabled: true,
            quiesce,
            ..AdaptiveDrain::default()
        }
    }

    /// 90 MiB left at 12 MiB/s, the guest dirtying `dirty_mib` MiB/s according to a probe.
    fn progress(remaining_mib: u64, dirty_mib: f64, at: Millis) -> MigrationProgress {
        MigrationProgress {
            status: Some("active".into()),
            remaining_bytes: Some(remaining_mib * MIB),
            mbps: Some(12.0 * 8.0 * 1.048576),
            passes: Some(1),
            downtime_limit_ms: Some(300),
            dirty_probe: Some(Probe {
                bytes_per_s: dirty_mib * MIB as f64,
                window_ms: 1000,
                at,
            }),
            ..MigrationProgress::default()
        }
    }

    fn migrating(reg: &mut Registry, a: &VmId) {
        assert!(matches!(
            reg.apply(a, Notice::Started, 1_000, NoticeOptions::default()),
            Ok(Outcome::Applied(_))
        ));
    }

    #[test]
    fn settings_a_reload_changes_mid_migration_take_effect_at_the_next_step() {
        let mut reg = registry(adaptive(false));
        let a = vm("vm-a");
        migrating(&mut reg, &a);
        reg.record_progress(&a, progress(90, 8.0, 2_000));
        let lowered = match reg.adapt(&a, 2_000).expect("the level fell").command {
            PhaseCommand::Drain { level, .. } => level,
            other => panic!("expected a drain, got {other:?}"),
        };
        // The reload turns quiescence on; the copy is near its end.
        reg.set_topology(registry(adaptive(true)).topology);
        reg.record_progress(&a, progress(1, 0.1, 3_000));
        reg.adapt(&a, 3_000);
        let status = reg.adaptive_status(&a).unwrap();
        assert!(status.settings.quiesce, "{status:?}");
        assert!(
            status.quiescing,
            "the new settings are the controller's: {status:?}"
        );
        assert!(reg.vm(&a).unwrap().level < lowered);
    }

    #[test]
    fn a_level_change_becomes_a_drain_command_carrying_it() {
        let mut reg = registry(adaptive(false));
        let a = vm("vm-a");
        migrating(&mut reg, &a);
        assert!(reg.record_progress(&a, progress(90, 8.0, 2_000)));
        let t = reg.adapt(&a, 2_000).expect("the level fell");
        assert_eq!(
            (t.from, t.to, t.cause),
            (Phase::Migrating, Phase::Migrating, Cause::Adaptive)
        );
        let PhaseCommand::Drain {
            level: Some(level), ..
        } = t.command
        else {
            panic!("{:?}", t.command);
        };
        assert!(level < Level::FULL);
        assert_eq!(reg.command_for(&a, 2_000), t.command);
        let record = reg.history().last().unwrap();
        assert_eq!(record.adaptive.len(), 1);
        assert_eq!(record.adaptive[0].decision, Reason::Reduce);
        assert_eq!(record.adaptive[0].remaining_bytes, Some(90 * MIB));
        // The same progress again changes nothing: no command to send.
        assert!(reg.adapt(&a, 2_250).is_none());
        assert_eq!(reg.history().last().unwrap().adaptive.len(), 2);
        let status = reg.adaptive_status(&a).unwrap();
        assert_eq!(status.latest.level, level);
        assert!(!status.quiescing);
    }

    #[test]
    fn a_vm_whose_pools_do_not_adapt_is_left_alone() {
        let mut reg = registry(AdaptiveDrain::default());
        let a = vm("vm-a");
        migrating(&mut reg, &a);
        reg.record_progress(&a, progress(90, 50.0, 2_000));
        assert!(reg.adapt(&a, 2_000).is_none());
        assert!(reg.history().last().unwrap().adaptive.is_empty());
        assert_eq!(reg.vm(&a).unwrap().level, None);
    }

    #[test]
    fn quiescence_is_recorded_with_its_start_and_when_nothing_was_left_in_flight() {
        let mut reg = registry(adaptive(true));
        let a = vm("vm-a");
        migrating(&mut reg, &a);
        reg.record_progress(&a, progress(12, 0.1, 2_000));
        let t = reg.adapt(&a, 2_000).expect("quiesced");
        assert!(matches!(
            t.command,
            PhaseCommand::Drain {
                level: Some(Level::ZERO),
                ..
            }
        ));
        assert!(reg.quiescing(&a));
        assert!(!reg.record_in_flight(&a, 2_100, 3, 1));
        assert!(reg.record_in_flight(&a, 2_200, 1, 1));
        assert!(reg.record_in_flight(&a, 2_300, 4, 1), "quiesced once is quiesced");
        let record = reg.history().last().unwrap();
        assert_eq!(record.quiesce_started_at, Some(2_000));
        assert_eq!(record.quiesced_at, Some(2_200));
        // The hold `handover migrate` reports.
        let mut held = progress(12, 0.1, 2_000);
        held.switchover_held = Some(true);
        reg.record_progress(&a, held.clone());
        reg.adapt(&a, 2_400);
        assert!(reg.adaptive_status(&a).unwrap().holding);
        held.switchover_held = Some(false);
        reg.record_progress(&a, held);
        reg.adapt(&a, 2_900);
        let record = reg.history().last().unwrap();
        assert_eq!(
            (record.hold_started_at, record.hold_ended_at),
            (Some(2_400), Some(2_900))
        );
        // The end of the migration ends quiescence.
        reg.apply(&a, Notice::Completed, 3_000, NoticeOptions::default())
            .unwrap();
        assert!(!reg.quiescing(&a));
        assert!(reg.adapt(&a, 3_000).is_none());
    }

    #[test]
    fn a_restart_goes_on_from_the_level_the_balancers_hold() {
        let mut reg = registry(adaptive(false));
        let a = vm("vm-a");
        migrating(&mut reg, &a);
        reg.record_progress(&a, progress(90, 8.0, 2_000));
        let level = match reg.adapt(&a, 2_000).unwrap().command {
            PhaseCommand::Drain { level, .. } => level,
            other => panic!("{other:?}"),
        };
        let snapshot = reg.snapshot();
        let mut restarted = registry(adaptive(false));
        restarted.restore(snapshot);
        assert_eq!(restarted.command_for(&a, 2_500), reg.command_for(&a, 2_500));
        // Progress with no new measurement: the resumed controller keeps the level.
        let mut later = progress(80, 8.0, 2_000);
        later.dirty_probe = None;
        restarted.record_progress(&a, later);
        assert!(restarted.adapt(&a, 3_000).is_none());
        assert_eq!(restarted.vm(&a).unwrap().level, level);
    }

    #[test]
    fn the_history_of_a_long_migration_is_thinned_not_unbounded() {
        let mut reg = registry(adaptive(false));
        let a = vm("vm-a");
        migrating(&mut reg, &a);
        for i in 0..2_000 {
            reg.record_progress(&a, progress(90, 0.0, 2_000));
            reg.adapt(&a, 2_000 + i * 250);
        }
        let entries = &reg.history().last().unwrap().adaptive;
        assert!(entries.len() <= MAX_ENTRIES, "{}", entries.len());
        assert_eq!(entries.last().unwrap().at, 2_000 + 1_999 * 250);
        assert!(entries.windows(2).all(|w| w[0].at < w[1].at));
    }
}

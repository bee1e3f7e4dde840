//! Adaptive drain in the simulator: `core`'s own [`Controller`], stepped every
//! `progress_interval` with what the engine's `query-migrate` would show, and with dirty-rate
//! probes of the simulated memory (one over the second before the copy starts, as
//! `handover migrate` takes it, then one a second) — the same inputs handover gets from QEMU.
//! The levels it chooses become part of the policy's timeline.

use handover_core::adaptive::{Controller, Level, Probe, Sample};

use crate::policy::Policy;
use crate::precopy::Progress;

/// Window of a dirty-rate probe, seconds (`calc-dirty-rate` with `calc-time` 1).
pub const PROBE_WINDOW: f64 = 1.0;

/// Milliseconds on the controller's clock for simulated seconds.
fn ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

/// The controller of one simulated migration.
#[derive(Debug, Clone)]
pub struct Adaptor {
    controller: Controller,
    interval: f64,
    next_at: f64,
    probes: bool,
    next_probe_at: f64,
    probe: Option<Probe>,
    downtime_limit_ms: u64,
}

impl Adaptor {
    /// The adaptor of a policy whose drain adapts or quiesces, from the notice at `notice_at`.
    pub fn new(policy: &Policy, notice_at: f64, downtime_limit: f64) -> Option<Self> {
        let settings = policy.drain().adaptive;
        if !policy.spec.aware || !settings.is_active() {
            return None;
        }
        Some(Self {
            controller: Controller::new(settings, ms(notice_at)),
            interval: policy.spec.progress_interval.secs().max(0.01),
            next_at: f64::INFINITY,
            probes: policy.spec.probe,
            next_probe_at: f64::INFINITY,
            probe: None,
            downtime_limit_ms: ms(downtime_limit),
        })
    }

    /// When the next step is due.
    pub fn next_at(&self) -> f64 {
        self.next_at
    }

    /// Whether a probe is due at `now` (the caller then measures and calls [`Adaptor::probed`]).
    pub fn probe_due(&self, now: f64) -> bool {
        self.probes && now + 1e-9 >= self.next_probe_at
    }

    /// A probe measured `bytes_per_s` over the window that ended at `now`.
    pub fn probed(&mut self, now: f64, bytes_per_s: f64) {
        self.probe = Some(Probe {
            bytes_per_s,
            window_ms: ms(PROBE_WINDOW),
            at: ms(now),
        });
        self.next_probe_at = now + PROBE_WINDOW;
    }

    /// The step before the copy starts: `first_pass` bytes to send at `bandwidth`, with the probe
    /// of the second before (when the policy probes). Returns the level chosen.
    pub fn before_copy(&mut self, now: f64, first_pass: f64, bandwidth: f64, probe: Option<f64>) -> Level {
        if let Some(rate) = probe.filter(|_| self.probes) {
            self.probed(now, rate);
        }
        self.next_at = now + self.interval;
        self.next_probe_at = now + PROBE_WINDOW;
        let decision = self.controller.step(&Sample {
            at: ms(now),
            copying: false,
            remaining: Some(first_pass),
            bandwidth: None,
            bandwidth_cap: Some(bandwidth),
            passes: None,
            pass_dirty_rate: None,
            probe: self.probe,
            downtime_limit_ms: Some(self.downtime_limit_ms),
        });
        decision.level
    }

    /// A step with the engine's progress at `now`. Returns the level chosen.
    pub fn step(&mut self, now: f64, progress: &Progress) -> Level {
        self.next_at = now + self.interval;
        let decision = self.controller.step(&Sample {
            at: ms(now),
            copying: progress.active,
            remaining: Some(progress.remaining),
            bandwidth: progress.active.then_some(progress.bandwidth),
            bandwidth_cap: Some(progress.bandwidth),
            passes: Some(progress.syncs),
            pass_dirty_rate: Some(progress.dirty_rate),
            probe: self.probe,
            downtime_limit_ms: Some(self.downtime_limit_ms),
        });
        decision.level
    }

    /// No more steps (the migration ended).
    pub fn stop(&mut self) {
        self.next_at = f64::INFINITY;
        self.next_probe_at = f64::INFINITY;
    }
}

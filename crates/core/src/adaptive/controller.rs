//! The adaptive drain controller: a migration's progress in, the VM's level out, with the reason.
//!
//! It learns the guest's dirtying from two kinds of measurement — QEMU's own dirty rate at the end
//! of a pass (`dirty-pages-rate`, only once a pass lasts a second), and a dirty-rate probe
//! (`calc-dirty-rate`, which a source may run at any time) — each attributed to the level the VM
//! had while it was taken. From them and the copy's state it picks the highest level that keeps
//! the copy within `max_slowdown` of a full drain's time (or that lets the current pass be the
//! last), lowers the level at once when it must, and gives share back only step by step, and only
//! after a measurement taken entirely at the lower level shows room. Evidence that the copy is not
//! converging overrides the model: a measured dirty rate at or above the bandwidth drains fully; a
//! pass count of `stall_passes` passes that do not shrink halves the level. With `quiesce`, the
//! level drops to 0 for good once the predicted switchover is `quiesce_lead` away.

use serde::{Deserialize, Serialize};

use super::forecast::{CopyState, DirtyModel, allowed_level, switchover_in};
use super::level::Level;
use super::policy::AdaptiveDrain;
use crate::time::{Millis, millis};

/// Below this level a measurement describes the background only.
const BACKGROUND_LEVEL: f64 = 0.02;
/// A halved level below this becomes a full drain.
const MIN_LEVEL: f64 = 0.05;
/// A pass that leaves at least this share of the previous one did not shrink.
const STALL_SHARE: f64 = 0.95;
/// A rise smaller than this is not worth a command to every balancer.
const MIN_RISE: f64 = 0.05;
/// Nor is a drop smaller than this (unless to a full drain).
const MIN_DROP: f64 = 0.02;
/// From a full drain, the level tried to learn again how much the load dirties.
const EXPLORE_LEVEL: f64 = 0.1;
/// Weight of a new measurement in the running estimates.
const SMOOTHING: f64 = 0.5;
/// QEMU's default `downtime-limit`, when the source does not say.
const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// Level changes kept for averaging (older ones are folded into the first).
const MAX_HISTORY: usize = 4096;

/// A dirty-rate measurement taken by a probe over a window that ended at `at`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Bytes per second dirtied during the window.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0))]
    pub bytes_per_s: f64,
    /// Length of the window, milliseconds.
    pub window_ms: u64,
    /// When the window ended.
    pub at: Millis,
}

/// One look at the migration, as the controller needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Millis,
    /// The copy runs (false before it starts: the sample is a first estimate).
    pub copying: bool,
    /// Bytes still to send in the current pass (before the copy: what the first pass will send).
    pub remaining: Option<f64>,
    /// Measured copy bandwidth, bytes per second.
    pub bandwidth: Option<f64>,
    /// The bandwidth cap (`max-bandwidth`), bytes per second: the estimate before a measurement.
    pub bandwidth_cap: Option<f64>,
    /// Dirty-bitmap syncs so far (QEMU's `dirty-sync-count`).
    pub passes: Option<u64>,
    /// QEMU's dirty rate over its last period, bytes per second.
    pub pass_dirty_rate: Option<f64>,
    /// The latest dirty-rate probe.
    pub probe: Option<Probe>,
    /// QEMU's `downtime-limit`, milliseconds.
    pub downtime_limit_ms: Option<u64>,
}

/// Why the controller chose its level.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No bandwidth or no dirty-rate measurement yet: the level stays where it is.
    Waiting,
    /// The copy converges within the allowed slowdown at this level.
    Keep,
    /// At this level the copy would take too long: lowered.
    Reduce,
    /// The copy converges with room to spare: share given back.
    GiveBack,
    /// The guest dirties memory at least as fast as it is copied: full drain.
    CannotConverge,
    /// What remains to copy did not shrink from pass to pass: halved.
    NotShrinking,
    /// The switchover is near: no new work at all until the migration ends.
    Quiesce,
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Waiting => "waiting",
            Reason::Keep => "keep",
            Reason::Reduce => "reduce",
            Reason::GiveBack => "give_back",
            Reason::CannotConverge => "cannot_converge",
            Reason::NotShrinking => "not_shrinking",
            Reason::Quiesce => "quiesce",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one step decided, and what it was decided from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The level from now on.
    pub level: Level,
    /// Why.
    pub reason: Reason,
    /// The level differs from the one before this step.
    pub changed: bool,
    /// Quiescence is on (from this step or before).
    pub quiescing: bool,
    /// The bandwidth decided with, bytes per second.
    pub bandwidth: Option<f64>,
    /// The dirty rate expected at the new level, bytes per second.
    pub dirty_rate: Option<f64>,
    /// That rate over the bandwidth (λ of the pre-copy model).
    pub lambda: Option<f64>,
    /// Bytes still to send in the current pass.
    pub remaining: Option<f64>,
    /// Predicted time to the switchover at the new level; `None` if unknown or never.
    pub switchover_in_ms: Option<u64>,
}

/// One VM's controller, for one migration.
#[derive(Debug, Clone)]
pub struct Controller {
    policy: AdaptiveDrain,
    level: Level,
    quiescing: bool,
    /// Level changes: (from when, level), oldest first.
    levels: Vec<(Millis, f64)>,
    background: Option<f64>,
    per_level: Option<f64>,
    /// The latest measurement: (bytes/s, average level over its window, start of its window).
    latest: Option<(f64, f64, Millis)>,
    last_probe_at: Option<Millis>,
    last_pass_rate: Option<f64>,
    last_pass_rate_at: Option<Millis>,
    copy_started_at: Option<Millis>,
    pass: Option<u64>,
    pass_started_at: Millis,
    /// What the last sync of the dirty log left to copy, and when it was seen.
    last_pass: Option<(f64, Millis)>,
    stalls: u32,
    last_rise_at: Option<Millis>,
    last_drop_at: Option<Millis>,
    /// The earliest the copy could have ended with a full drain, as forecast at any step of the
    /// copy (ms on the caller's clock, fractional): what `max_slowdown` is measured against.
    drained_finish: Option<f64>,
    /// No try from a full drain before this time.
    explore_at: Millis,
    /// Wait before the next try (doubles after each).
    explore_backoff_ms: u64,
    /// The next measurement of the load's dirtying replaces the estimate instead of smoothing it.
    relearn: bool,
}

impl Controller {
    /// A controller at the drain target (level 1), from `now`.
    pub fn new(policy: AdaptiveDrain, now: Millis) -> Self {
        Self {
            policy,
            level: Level::FULL,
            quiescing: false,
            levels: vec![(now, 1.0)],
            background: None,
            per_level: None,
            latest: None,
            last_probe_at: None,
            last_pass_rate: None,
            last_pass_rate_at: None,
            copy_started_at: None,
            pass: None,
            pass_started_at: now,
            last_pass: None,
            stalls: 0,
            last_rise_at: None,
            last_drop_at: None,
            drained_finish: None,
            explore_at: 0,
            explore_backoff_ms: 2 * millis(policy.give_back_interval).max(1),
            relearn: false,
        }
    }

    /// A controller that goes on from `level` (after a restart in the middle of a migration: it
    /// has learnt nothing yet, and quiescence, once begun, stays).
    pub fn resume(policy: AdaptiveDrain, now: Millis, level: Level, quiescing: bool) -> Self {
        let mut controller = Self::new(policy, now);
        controller.level = if quiescing { Level::ZERO } else { level };
        controller.quiescing = quiescing;
        controller.levels = vec![(now, controller.level.get())];
        if controller.level < Level::FULL {
            controller.last_drop_at = Some(now);
        }
        controller
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Whether quiescence began.
    pub fn quiescing(&self) -> bool {
        self.quiescing
    }

    /// The policy it runs.
    pub fn policy(&self) -> &AdaptiveDrain {
        &self.policy
    }

    /// The dirtying model learnt so far, if any measurement came.
    pub fn model(&self) -> Option<DirtyModel> {
        let per_level = self.per_level?;
        Some(DirtyModel {
            background: self.background.unwrap_or(0.0),
            per_level,
        })
    }

    /// One step: learn from `sample`, then decide.
    pub fn step(&mut self, sample: &Sample) -> Decision {
        let now = sample.at;
        if sample.copying && self.copy_started_at.is_none() {
            self.copy_started_at = Some(now);
            self.pass_started_at = now;
        }
        self.learn(sample);

        let before = self.level;
        let bandwidth = sample
            .bandwidth
            .filter(|b| *b > 0.0)
            .or(sample.bandwidth_cap.filter(|b| *b > 0.0));
        let limit_s = sample.downtime_limit_ms.unwrap_or(DEFAULT_DOWNTIME_LIMIT_MS) as f64 / 1000.0;
        self.follow_passes(sample, bandwidth, limit_s);
        let copy = match (bandwidth, sample.remaining) {
            (Some(bandwidth), Some(remaining)) => Some(CopyState {
                bandwidth,
                threshold: bandwidth * limit_s,
                remaining: remaining.max(0.0),
                dirtied: if sample.copying {
                    self.dirtied_since(self.pass_started_at, now)
                } else {
                    0.0
                },
            }),
            _ => None,
        };

        let (mut level, mut reason) = if self.quiescing {
            (0.0, Reason::Quiesce)
        } else if !self.policy.enabled {
            (1.0, Reason::Keep)
        } else {
            self.choose(now, bandwidth, copy.as_ref())
        };

        let model = self.model();
        let rate_at = |level: f64| model.map(|m| m.rate(level));
        if self.policy.quiesce && !self.quiescing {
            // When would the switchover come if the VM got no new work from now on? (Without a
            // measurement, with no dirtying at all: the earliest it can come.)
            let soon = copy
                .as_ref()
                .and_then(|c| switchover_in(c, rate_at(0.0).unwrap_or(0.0)));
            if soon.is_some_and(|s| s <= self.policy.quiesce_lead.as_secs_f64()) {
                self.quiescing = true;
                level = 0.0;
                reason = Reason::Quiesce;
            }
        }

        let new_level = Level::new(level);
        if new_level != before {
            if new_level < before {
                self.last_drop_at = Some(now);
            } else {
                self.last_rise_at = Some(now);
            }
            self.level = new_level;
            self.push_level(now, new_level.get());
        }
        let dirty_rate = rate_at(self.level.get());
        Decision {
            level: self.level,
            reason,
            changed: new_level != before,
            quiescing: self.quiescing,
            bandwidth,
            dirty_rate,
            lambda: dirty_rate.zip(bandwidth).map(|(d, b)| d / b),
            remaining: sample.remaining,
            switchover_in_ms: copy
                .as_ref()
                .and_then(|c| switchover_in(c, dirty_rate.unwrap_or(0.0)))
                .map(|s| (s * 1000.0).round() as u64),
        }
    }

    /// The level to have, and why, from the evidence and the model (adaptive on, not quiescing).
    fn choose(&mut self, now: Millis, bandwidth: Option<f64>, copy: Option<&CopyState>) -> (f64, Reason) {
        let current = self.level.get();
        let Some(bandwidth) = bandwidth else {
            return (current, Reason::Waiting);
        };
        if let Some((rate, _, _)) = self.latest
            && rate >= bandwidth
        {
            return (0.0, Reason::CannotConverge);
        }
        if self.stalls >= self.policy.stall_passes.max(1) {
            self.stalls = 0;
            let half = current / 2.0;
            return (if half < MIN_LEVEL { 0.0 } else { half }, Reason::NotShrinking);
        }
        let (Some(model), Some(copy)) = (self.model(), copy) else {
            return (current, Reason::Waiting);
        };
        let allowed = allowed_level(&model, copy, self.budget(now, &model, copy));
        if allowed <= current - MIN_DROP || (allowed < MIN_DROP && Level::new(allowed) < self.level) {
            return (allowed, Reason::Reduce);
        }
        if allowed >= current + MIN_RISE && self.may_rise(now) {
            let step = self.policy.give_back_step.clamp(0.0, 1.0);
            return ((current + step).min(allowed), Reason::GiveBack);
        }
        // At a full drain nothing shows how much the load would dirty now (it may have calmed
        // since it was measured): now and then, with a growing pause, try a small level and learn.
        if current < BACKGROUND_LEVEL && allowed < MIN_RISE && now >= self.explore_at && self.may_rise(now) {
            self.explore_at = now + self.explore_backoff_ms;
            self.explore_backoff_ms = self.explore_backoff_ms.saturating_mul(2);
            self.relearn = true;
            let level = EXPLORE_LEVEL
                .min(self.policy.give_back_step)
                .max(BACKGROUND_LEVEL);
            return (level, Reason::GiveBack);
        }
        (current, Reason::Keep)
    }

    /// Seconds the rest of the copy may take: the copy as a whole may take `1 + max_slowdown` times
    /// as long as the earliest full-drain finish forecast so far. Anchoring on that earliest finish
    /// keeps a slowdown spent from being allowed again at every step.
    fn budget(&mut self, now: Millis, model: &DirtyModel, copy: &CopyState) -> f64 {
        let slowdown = self.policy.max_slowdown.max(0.0);
        let Some(drained) = switchover_in(copy, model.rate(0.0)) else {
            return 0.0;
        };
        let Some(start) = self.copy_started_at else {
            // Before the copy: only an estimate of the bandwidth; measure against it alone.
            return drained * (1.0 + slowdown);
        };
        let now_ms = now as f64;
        let finish = now_ms + drained * 1000.0;
        let earliest = self.drained_finish.map_or(finish, |f| f.min(finish));
        self.drained_finish = Some(earliest);
        let start = start as f64;
        let deadline = start + (1.0 + slowdown) * (earliest - start).max(0.0);
        (deadline - now_ms) / 1000.0
    }

    /// A rise needs the give-back interval since the last rise, and a measurement whose window
    /// began after the last drop (so that it shows the lower level, not the one that was too high).
    fn may_rise(&self, now: Millis) -> bool {
        let interval = millis(self.policy.give_back_interval);
        let rested = self
            .last_rise_at
            .is_none_or(|at| now.saturating_sub(at) >= interval);
        let measured_since_drop = match (self.last_drop_at, self.latest) {
            (None, _) => true,
            (Some(drop), Some((_, _, window_start))) => window_start >= drop,
            (Some(_), None) => false,
        };
        rested && measured_since_drop
    }

    /// Takes in any new measurement of the sample.
    fn learn(&mut self, sample: &Sample) {
        if let Some(probe) = sample.probe
            && self.last_probe_at != Some(probe.at)
            && probe.bytes_per_s.is_finite()
            && probe.bytes_per_s >= 0.0
        {
            self.last_probe_at = Some(probe.at);
            let from = probe.at.saturating_sub(probe.window_ms);
            self.measure(probe.bytes_per_s, from, probe.at.max(from + 1));
        }
        // QEMU's rate exists only after a pass over memory; it changes when QEMU recomputes it.
        if sample.copying
            && sample.passes.is_some_and(|p| p >= 2)
            && let Some(rate) = sample.pass_dirty_rate.filter(|r| r.is_finite() && *r >= 0.0)
            && self.last_pass_rate != Some(rate)
        {
            let from = self
                .last_pass_rate_at
                .or(self.copy_started_at)
                .unwrap_or(sample.at);
            self.last_pass_rate = Some(rate);
            self.last_pass_rate_at = Some(sample.at);
            self.measure(rate, from, sample.at.max(from + 1));
        }
    }

    /// A measurement of `rate` bytes/s over `[from, to)`.
    fn measure(&mut self, rate: f64, from: Millis, to: Millis) {
        let level = self.average_level(from, to);
        if level < BACKGROUND_LEVEL {
            self.background = Some(smooth(self.background, rate));
        } else {
            let background = self.background.unwrap_or(0.0);
            let per_level = (rate - background).max(0.0) / level;
            self.per_level = if std::mem::take(&mut self.relearn) {
                Some(per_level)
            } else {
                Some(smooth(self.per_level, per_level))
            };
        }
        self.latest = Some((rate, level, from));
    }

    /// Pass sizes: a pass that leaves as much to copy as the one before counts as a stall. Near
    /// the end of a copy QEMU syncs the dirty log again and again (whenever its estimate of what
    /// remains falls under its threshold), each sync leaving about what the last left: a sync
    /// that leaves at most the switchover threshold (`bandwidth × limit_s`), or that comes too
    /// soon after the last sync for the copy to have sent half of what that left, is not a pass
    /// that stalled.
    fn follow_passes(&mut self, sample: &Sample, bandwidth: Option<f64>, limit_s: f64) {
        let (true, Some(passes)) = (sample.copying, sample.passes) else {
            return;
        };
        if self.pass.is_some_and(|p| passes <= p) {
            return;
        }
        self.pass = Some(passes);
        self.pass_started_at = sample.at;
        // The first sync is the whole of memory; compare the passes of dirtied pages only.
        if passes < 2 {
            return;
        }
        let Some(size) = sample.remaining else {
            return;
        };
        if let Some((previous, at)) = self.last_pass {
            let seconds = sample.at.saturating_sub(at) as f64 / 1000.0;
            let within_threshold = bandwidth.is_some_and(|b| size <= b * limit_s);
            let too_soon = bandwidth.is_some_and(|b| seconds < 0.5 * previous / b);
            if within_threshold {
                self.stalls = 0;
            } else if too_soon {
                // Not a pass: the stall count stands.
            } else if size >= STALL_SHARE * previous {
                self.stalls += 1;
            } else {
                self.stalls = 0;
            }
        }
        self.last_pass = Some((size, sample.at));
    }

    /// Bytes the model says were dirtied during `[from, to)`.
    fn dirtied_since(&self, from: Millis, to: Millis) -> f64 {
        let Some(model) = self.model() else {
            return 0.0;
        };
        let seconds = to.saturating_sub(from) as f64 / 1000.0;
        model.background * seconds + model.per_level * self.average_level(from, to) * seconds
    }

    /// The time-average level over `[from, to)` (the current level for an empty window).
    pub fn average_level(&self, from: Millis, to: Millis) -> f64 {
        if to <= from {
            return self.level.get();
        }
        let mut area = 0.0;
        for (i, (start, level)) in self.levels.iter().enumerate() {
            let end = self.levels.get(i + 1).map_or(Millis::MAX, |(next, _)| *next);
            let start = if i == 0 { Millis::MIN } else { *start };
            let lo = start.max(from);
            let hi = end.min(to);
            if hi > lo {
                area += level * (hi - lo) as f64;
            }
        }
        area / (to - from) as f64
    }

    fn push_level(&mut self, at: Millis, level: f64) {
        self.levels.push((at, level));
        if self.levels.len() > MAX_HISTORY {
            self.levels.remove(0);
        }
    }
}

fn smooth(previous: Option<f64>, value: f64) -> f64 {
    match previous {
        Some(p) => p + SMOOTHING * (value - p),
        None => value,
    }
}

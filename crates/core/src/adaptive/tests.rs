//! The controller against a small pre-copy engine that behaves as QEMU reports (a pass syncs the
//! dirty log, `dirty-pages-rate` is recomputed only after a pass of a second or more), and against
//! arbitrary progress.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

const MIB: f64 = 1024.0 * 1024.0;
const POLL_MS: u64 = 250;

fn policy(adaptive: bool, quiesce: bool) -> AdaptiveDrain {
    AdaptiveDrain {
        enabled: adaptive,
        quiesce,
        ..AdaptiveDrain::default()
    }
}

/// A guest dirtying `background + per_level × level` bytes/s, copied at `bandwidth`.
struct Copy {
    bandwidth: f64,
    background: f64,
    per_level: f64,
    now: u64,
    remaining: f64,
    dirtied: f64,
    passes: u64,
    pass_started: u64,
    rate: Option<f64>,
    rate_at: u64,
    done_at: Option<u64>,
    /// From when the load dirties this many bytes/s per level instead.
    calm: Option<(u64, f64)>,
}

impl Copy {
    fn new(memory_mib: f64, bandwidth_mib: f64, background_mib: f64, per_level_mib: f64) -> Self {
        Self {
            bandwidth: bandwidth_mib * MIB,
            background: background_mib * MIB,
            per_level: per_level_mib * MIB,
            now: 0,
            remaining: memory_mib * MIB,
            dirtied: 0.0,
            passes: 1,
            pass_started: 0,
            rate: None,
            rate_at: 0,
            done_at: None,
            calm: None,
        }
    }

    fn calming(mut self, at_ms: u64, per_level_mib: f64) -> Self {
        self.calm = Some((at_ms, per_level_mib * MIB));
        self
    }

    fn per_level(&self) -> f64 {
        match self.calm {
            Some((at, calm)) if self.now >= at => calm,
            _ => self.per_level,
        }
    }

    /// The true dirty rate over the last second at `level` (what a probe sees, with no noise).
    fn probe(&self, level: f64) -> Probe {
        Probe {
            bytes_per_s: self.background + self.per_level() * level,
            window_ms: 1000,
            at: self.now,
        }
    }

    fn sample(&self, probe: Option<Probe>) -> Sample {
        Sample {
            at: self.now,
            copying: true,
            remaining: Some(self.remaining),
            bandwidth: Some(self.bandwidth),
            bandwidth_cap: Some(self.bandwidth),
            passes: Some(self.passes),
            pass_dirty_rate: Some(self.rate.unwrap_or(0.0)),
            probe,
            downtime_limit_ms: Some(300),
        }
    }

    /// Advances one poll interval at `level`, in 10 ms steps.
    fn advance(&mut self, level: f64) {
        for _ in 0..POLL_MS / 10 {
            if self.done_at.is_some() {
                return;
            }
            self.now += 10;
            let dt = 0.01;
            self.dirtied += (self.background + self.per_level() * level) * dt;
            self.remaining -= self.bandwidth * dt;
            if self.remaining <= 0.0 {
                let pass_ms = self.now - self.pass_started;
                if self.now - self.rate_at >= 1000 {
                    self.rate = Some(self.dirtied / (pass_ms as f64 / 1000.0));
                    self.rate_at = self.now;
                }
                if self.dirtied <= self.bandwidth * 0.3 {
                    self.done_at = Some(self.now);
                    return;
                }
                self.remaining = self.dirtied;
                self.dirtied = 0.0;
                self.passes += 1;
                self.pass_started = self.now;
            }
        }
    }
}

/// Runs a migration under the controller (probing every second when `probes`), up to `limit_s`.
/// Returns the decisions and when the copy ended.
fn run(
    mut copy: Copy,
    mut controller: Controller,
    probes: bool,
    limit_s: u64,
) -> (Vec<Decision>, Option<u64>) {
    let mut decisions = Vec::new();
    // The first probe is taken before the copy starts, as `handover migrate` does.
    let mut last_probe: Option<u64> = None;
    while copy.done_at.is_none() && copy.now < limit_s * 1000 {
        let probe = (probes && last_probe.is_none_or(|at| copy.now >= at + 1000)).then(|| {
            last_probe = Some(copy.now);
            copy.probe(controller.average_level(copy.now.saturating_sub(1000), copy.now))
        });
        let decision = controller.step(&copy.sample(probe));
        decisions.push(decision);
        copy.advance(decision.level.get());
    }
    (decisions, copy.done_at)
}

#[test]
fn an_idle_guest_keeps_the_target_share_for_the_whole_copy() {
    let copy = Copy::new(90.0, 12.0, 0.0, 0.0);
    let (decisions, done) = run(copy, Controller::new(policy(true, false), 0), true, 60);
    assert!(done.is_some());
    assert!(decisions.iter().all(|d| d.level == Level::FULL), "{decisions:?}");
}

#[test]
fn a_copy_that_converges_anyway_keeps_the_target_share() {
    // 90 MiB at 320 MiB/s, the guest dirtying 5 MiB/s at the target: one pass and done.
    let copy = Copy::new(90.0, 320.0, 0.0, 5.0);
    let (decisions, done) = run(copy, Controller::new(policy(true, false), 0), true, 60);
    assert!(done.is_some());
    assert!(decisions.iter().all(|d| d.level == Level::FULL), "{decisions:?}");
}

#[test]
fn a_dirty_heavy_copy_is_reduced_and_stays_near_a_full_drains_time() {
    let drained = run(
        Copy::new(90.0, 12.0, 0.0, 0.0),
        Controller::new(policy(true, false), 0),
        true,
        120,
    )
    .1
    .unwrap();
    let (decisions, done) = run(
        Copy::new(90.0, 12.0, 0.0, 6.0),
        Controller::new(policy(true, false), 0),
        true,
        120,
    );
    let done = done.expect("converges");
    assert!(decisions.iter().any(|d| d.reason == Reason::Reduce));
    assert!(
        done as f64 <= drained as f64 * 1.10,
        "adaptive {done} ms vs drained {drained} ms"
    );
    // ... while keeping some share rather than draining fully.
    assert!(decisions.iter().any(|d| d.level > Level::ZERO));
}

#[test]
fn a_guest_that_dirties_faster_than_the_copy_is_drained_fully() {
    // Background alone beyond the bandwidth: nothing converges; the balancer does what it can.
    let copy = Copy::new(90.0, 12.0, 15.0, 10.0);
    let (decisions, done) = run(copy, Controller::new(policy(true, false), 0), true, 30);
    assert!(done.is_none());
    let last = decisions.last().unwrap();
    assert_eq!(last.level, Level::ZERO);
    assert_eq!(last.reason, Reason::CannotConverge);
}

#[test]
fn give_back_waits_for_a_measurement_at_the_lower_level() {
    let mut c = Controller::new(policy(true, false), 0);
    let base = Sample {
        at: 0,
        copying: true,
        remaining: Some(80.0 * MIB),
        bandwidth: Some(12.0 * MIB),
        passes: Some(1),
        downtime_limit_ms: Some(300),
        ..Sample::default()
    };
    let high = Probe {
        bytes_per_s: 8.0 * MIB,
        window_ms: 1000,
        at: 1000,
    };
    let first = c.step(&Sample {
        at: 1000,
        probe: Some(high),
        ..base
    });
    assert_eq!(first.reason, Reason::Reduce);
    let reduced = first.level;
    // A probe whose window still overlaps the higher level: no rise.
    let overlapping = Probe {
        bytes_per_s: 0.1 * MIB,
        window_ms: 1000,
        at: 1500,
    };
    let d = c.step(&Sample {
        at: 1500,
        probe: Some(overlapping),
        remaining: Some(1.0 * MIB),
        ..base
    });
    assert_eq!(d.level, reduced, "{d:?}");
    // One taken entirely at the lower level, near the end of the pass: share comes back.
    let after = Probe {
        bytes_per_s: 0.1 * MIB,
        window_ms: 1000,
        at: 2000,
    };
    let d = c.step(&Sample {
        at: 2000,
        probe: Some(after),
        remaining: Some(1.0 * MIB),
        ..base
    });
    assert_eq!(d.reason, Reason::GiveBack, "{d:?}");
    assert!(d.level > reduced);
}

#[test]
fn share_comes_back_step_by_step_once_the_copy_converges_with_room() {
    // A long first pass; the load dirties heavily for 3 s (a batch job), then hardly at all.
    let copy = Copy::new(360.0, 12.0, 0.0, 20.0).calming(3000, 0.05);
    let (decisions, done) = run(copy, Controller::new(policy(true, false), 0), true, 120);
    assert!(done.is_some());
    let lowest = decisions.iter().map(|d| d.level).min().unwrap();
    assert!(lowest < Level::new(0.1), "{lowest}");
    let back = decisions
        .iter()
        .position(|d| d.level == Level::FULL && d.reason == Reason::GiveBack)
        .expect("the share came back to the target");
    let rises: Vec<f64> = decisions[..=back]
        .windows(2)
        .map(|w| w[1].level.get() - w[0].level.get())
        .filter(|r| *r > 0.0)
        .collect();
    assert!(rises.iter().all(|r| *r <= 0.25 + 1e-9), "{rises:?}");
    assert!(rises.len() >= 4, "step by step: {rises:?}");
}

#[test]
fn quiescence_drains_fully_a_lead_before_the_predicted_switchover_and_stays() {
    let copy = Copy::new(90.0, 12.0, 0.0, 0.5);
    let (decisions, done) = run(copy, Controller::new(policy(true, true), 0), true, 60);
    let done = done.expect("converges");
    let start = decisions
        .iter()
        .position(|d| d.quiescing)
        .expect("quiescence began");
    let began_at = start as u64 * POLL_MS;
    assert!(
        done.saturating_sub(began_at) >= 2000 - POLL_MS && began_at > 0,
        "quiescence at {began_at} ms, switchover at {done} ms"
    );
    assert!(
        decisions[start..]
            .iter()
            .all(|d| d.level == Level::ZERO && d.reason == Reason::Quiesce)
    );
    // Before it, the share was kept.
    assert!(decisions[..start].iter().all(|d| d.level == Level::FULL));
}

#[test]
fn quiesce_alone_keeps_the_target_until_the_lead() {
    let copy = Copy::new(90.0, 12.0, 0.0, 6.0);
    let (decisions, _) = run(copy, Controller::new(policy(false, true), 0), true, 120);
    let start = decisions.iter().position(|d| d.quiescing).expect("quiesced");
    assert!(decisions[..start].iter().all(|d| d.level == Level::FULL));
    assert!(decisions[start..].iter().all(|d| d.level == Level::ZERO));
}

#[test]
fn a_copy_shorter_than_the_lead_is_quiesced_before_it_starts() {
    let mut c = Controller::new(policy(true, true), 0);
    let d = c.step(&Sample {
        at: 0,
        copying: false,
        remaining: Some(128.0 * MIB),
        bandwidth_cap: Some(1024.0 * MIB),
        ..Sample::default()
    });
    assert!(d.quiescing);
    assert_eq!(d.level, Level::ZERO);
}

#[test]
fn without_bandwidth_or_measurements_the_level_waits() {
    let mut c = Controller::new(policy(true, false), 0);
    let d = c.step(&Sample {
        at: 0,
        copying: true,
        remaining: Some(10.0 * MIB),
        ..Sample::default()
    });
    assert_eq!((d.level, d.reason), (Level::FULL, Reason::Waiting));
    let d = c.step(&Sample {
        at: 250,
        copying: true,
        remaining: Some(10.0 * MIB),
        bandwidth: Some(12.0 * MIB),
        ..Sample::default()
    });
    assert_eq!((d.level, d.reason), (Level::FULL, Reason::Waiting));
}

/// Gap since the last sample, copying, remaining, bandwidth, passes, pass rate, probe.
type RawSample = (
    u64,
    bool,
    Option<f64>,
    Option<f64>,
    Option<u64>,
    Option<f64>,
    Option<(f64, u64)>,
);

fn arbitrary_sample() -> impl Strategy<Value = RawSample> {
    (
        0u64..5_000,
        any::<bool>(),
        proptest::option::of(0.0f64..1e11),
        proptest::option::of(0.0f64..1e10),
        proptest::option::of(0u64..40),
        proptest::option::of(0.0f64..1e10),
        proptest::option::of((0.0f64..1e10, 0u64..5_000)),
    )
}

proptest! {
    #[test]
    fn the_level_stays_within_zero_and_one_whatever_the_progress(
        adaptive in any::<bool>(),
        quiesce in any::<bool>(),
        slowdown in 0.0f64..2.0,
        samples in proptest::collection::vec(arbitrary_sample(), 1..60),
    ) {
        let mut c = Controller::new(AdaptiveDrain { max_slowdown: slowdown, ..policy(adaptive, quiesce) }, 0);
        let mut at = 0;
        let mut quiesced = false;
        for (gap, copying, remaining, bandwidth, passes, rate, probe) in samples {
            at += gap;
            let d = c.step(&Sample {
                at,
                copying,
                remaining,
                bandwidth,
                bandwidth_cap: None,
                passes,
                pass_dirty_rate: rate,
                probe: probe.map(|(bytes_per_s, window_ms)| Probe { bytes_per_s, window_ms, at }),
                downtime_limit_ms: Some(300),
            });
            let level = d.level.get();
            prop_assert!((0.0..=1.0).contains(&level), "{level}");
            prop_assert!(d.lambda.is_none_or(|l| l >= 0.0));
            if !adaptive && !d.quiescing {
                prop_assert_eq!(d.level, Level::FULL);
            }
            // Quiescence is for good.
            if quiesced {
                prop_assert!(d.quiescing && d.level == Level::ZERO);
            }
            quiesced |= d.quiescing;
        }
    }

    #[test]
    fn a_measured_dirty_rate_at_or_above_the_bandwidth_drains_fully_at_once(
        bandwidth in 1e5f64..1e10,
        excess in 1.0f64..10.0,
        remaining in 1e6f64..1e10,
        start_level_steps in 0u32..3,
    ) {
        let mut c = Controller::new(policy(true, false), 0);
        let mut at = 0;
        // Some history first (the level may already be lowered).
        for i in 0..start_level_steps {
            at += 1000;
            c.step(&Sample {
                at, copying: true, remaining: Some(remaining), bandwidth: Some(bandwidth), passes: Some(1),
                probe: Some(Probe { bytes_per_s: bandwidth * 0.2 * f64::from(i + 1), window_ms: 1000, at }),
                ..Sample::default()
            });
        }
        at += 1000;
        let d = c.step(&Sample {
            at, copying: true, remaining: Some(remaining), bandwidth: Some(bandwidth), passes: Some(1),
            probe: Some(Probe { bytes_per_s: bandwidth * excess, window_ms: 1000, at }),
            ..Sample::default()
        });
        prop_assert_eq!(d.level, Level::ZERO);
        prop_assert_eq!(d.reason, Reason::CannotConverge);
    }

    #[test]
    fn passes_that_do_not_shrink_drain_fully(
        pass_mib in 8.0f64..512.0,
        stall_passes in 1u32..4,
        growth in 0.95f64..1.5,
    ) {
        // No dirty-rate figure at all (a source that reports none): only the pass sizes speak.
        let mut c = Controller::new(AdaptiveDrain { stall_passes, ..policy(true, false) }, 0);
        let mut size = pass_mib * MIB;
        let mut at = 0;
        let mut passes = 1;
        let mut level = Level::FULL;
        for _ in 0..(stall_passes as usize + 1) * 6 {
            // A pass lasts as long as the copy takes to send what the last one left.
            at += (size / (10.0 * MIB) * 1000.0) as u64 + 1;
            passes += 1;
            size *= growth;
            level = c.step(&Sample {
                at, copying: true, remaining: Some(size), bandwidth: Some(10.0 * MIB), passes: Some(passes),
                downtime_limit_ms: Some(300), ..Sample::default()
            }).level;
        }
        prop_assert_eq!(level, Level::ZERO);
    }

    #[test]
    fn an_engine_that_cannot_converge_ends_at_a_full_drain(
        bandwidth_mib in 4.0f64..200.0,
        background_share in 1.0f64..3.0,
        per_level_mib in 0.0f64..50.0,
    ) {
        let copy = Copy::new(64.0, bandwidth_mib, bandwidth_mib * background_share, per_level_mib);
        let (decisions, done) = run(copy, Controller::new(policy(true, false), 0), true, 40);
        prop_assert!(done.is_none());
        prop_assert_eq!(decisions.last().unwrap().level, Level::ZERO);
    }

    #[test]
    fn the_share_comes_back_to_the_target_once_the_guest_calms_down(
        bandwidth_mib in 8.0f64..200.0,
        heavy in 1.0f64..4.0,
        calm_share in 0.0f64..0.002,
    ) {
        // Dirtying beyond the bandwidth for 2 s drains fully; then the guest is calm for good
        // during a first pass of 40 s: the level returns to the target before the copy ends.
        let copy = Copy::new(40.0 * bandwidth_mib, bandwidth_mib, 0.0, heavy * bandwidth_mib)
            .calming(2000, calm_share * bandwidth_mib);
        let (decisions, done) = run(copy, Controller::new(policy(true, false), 0), true, 120);
        prop_assert!(done.is_some());
        prop_assert!(decisions.iter().take(4).any(|d| d.level < Level::new(0.05)));
        prop_assert!(decisions.iter().any(|d| d.level == Level::FULL && d.reason == Reason::GiveBack));
    }
}

#[test]
fn the_default_tunables_are_documented_values() {
    let d = AdaptiveDrain::default();
    assert_eq!(d.quiesce_lead, Duration::from_secs(2));
    assert_eq!(d.quiesce_hold, Duration::from_secs(5));
    assert_eq!(d.max_slowdown, 0.05);
    assert_eq!(d.give_back_step, 0.25);
    assert_eq!(d.give_back_interval, Duration::from_secs(1));
    assert_eq!(d.stall_passes, 2);
    assert!(!d.is_active());
}

#[test]
fn syncs_near_the_switchover_threshold_are_not_passes_that_stall() {
    // An idle guest near the end of its copy at 16 MiB/s: QEMU syncs the dirty log at every
    // iteration once its estimate falls under the threshold (16 MiB/s × 300 ms = 4.8 MiB), and
    // each sync leaves about what the last one left. Seen on a real migration: that halved the
    // level of a guest that dirtied nothing.
    let mut c = Controller::new(policy(true, false), 0);
    let mut at = 0;
    for passes in 2..8 {
        at += 250;
        let d = c.step(&Sample {
            at,
            copying: true,
            remaining: Some(4.3 * MIB),
            bandwidth: Some(16.0 * MIB),
            passes: Some(passes),
            downtime_limit_ms: Some(300),
            probe: Some(Probe {
                bytes_per_s: 0.0,
                window_ms: 1000,
                at,
            }),
            ..Sample::default()
        });
        assert_eq!(d.level, Level::FULL, "{d:?}");
        assert_ne!(d.reason, Reason::NotShrinking, "{d:?}");
    }
    // Syncs that come faster than the copy could send the last pass, just above the threshold
    // (14 MiB/s × 300 ms = 4.2 MiB), are not passes either.
    let mut c = Controller::new(policy(true, false), 0);
    for passes in 2..8 {
        let d = c.step(&Sample {
            at: passes * 100,
            copying: true,
            remaining: Some(4.3 * MIB),
            bandwidth: Some(14.0 * MIB),
            passes: Some(passes),
            downtime_limit_ms: Some(300),
            ..Sample::default()
        });
        assert_ne!(d.reason, Reason::NotShrinking, "{d:?}");
    }
    // The same pass sizes, each a whole pass long, above the threshold (at 4 MiB/s: 1.2 MiB) do
    // stall.
    let mut c = Controller::new(policy(true, false), 0);
    let reasons: Vec<Reason> = (2..8)
        .map(|passes| {
            c.step(&Sample {
                at: passes * 1100,
                copying: true,
                remaining: Some(4.3 * MIB),
                bandwidth: Some(4.0 * MIB),
                passes: Some(passes),
                downtime_limit_ms: Some(300),
                ..Sample::default()
            })
            .reason
        })
        .collect();
    assert!(reasons.contains(&Reason::NotShrinking), "{reasons:?}");
}

//! Flow fidelity: the same engine, pass by pass, with the load as rates instead of events — fast
//! enough for fleets (thousands of migrations a second).
//!
//! Connections to the VM arrive at `λ · share(t)` and last `m · (S + think)` on average
//! (exponential), so the open connections `A` follow `dA/dt = λ·share − A/L`; requests reach the VM
//! at `A / (S + think)` (L4) or `Λ · share` (L7). Where the share is constant this is solved
//! exactly; where it moves (a linear drain) it is stepped every 100 ms. Writes of a pass become
//! distinct pages through [`HotSet::distinct`], the expectation of what the request fidelity samples.
//! An adaptive policy's controller is stepped every `progress_interval` (the load is then advanced
//! in those steps, so that its probes see the last second).

use std::collections::VecDeque;

use handover_core::phase::EndReason;

use crate::adaptive::{Adaptor, PROBE_WINDOW};
use crate::memory::{HotSet, distinct_uniform};
use crate::policy::{Policy, Timeline};
use crate::precopy::{Engine, Step};
use crate::run::{RunResult, engine_config};
use crate::scenario::Scenario;

/// Longest step while the share moves.
const MOVING_STEP: f64 = 0.1;

/// Writes and background page-dirtyings of one stretch of time, for probes.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    end: f64,
    writes: f64,
    background: f64,
}

/// One run in flow fidelity (deterministic: the seed is not used).
pub fn run(s: &Scenario, policy: &Policy) -> RunResult {
    let count = s.backends.count;
    let lead = policy.spec.lead_time.secs();
    let mut timeline = Timeline::new(0.0, lead);
    let mut adaptor = Adaptor::new(policy, 0.0, s.migration.downtime_limit.secs());
    // With a controller, the load is advanced in its steps so that probes see the last second.
    let chunk = adaptor.as_ref().map_or(f64::INFINITY, |_| {
        policy.spec.progress_interval.secs().min(PROBE_WINDOW)
    });
    let per_request = s.backends.service_time.secs() + s.traffic.think_time.secs();
    let lifetime = s.traffic.requests_per_connection * per_request;
    let l7 = s.traffic.mode == "l7";
    let lambda = s.connection_rate();
    let total_rate = lambda * s.traffic.requests_per_connection;
    let hot = HotSet::new((s.vm.hot_set.0 / s.vm.page_size.0).max(1.0) as u64, s.vm.zipf);
    let nonzero_pages = s.vm.ram.0 * s.vm.nonzero / s.vm.page_size.0;
    let background_pages_per_s = s.vm.background_dirty.0 / s.vm.page_size.0;
    // Distinct pages of `writes` to the hot set and `background` spread over non-zero memory.
    let distinct = |writes: f64, background: f64| {
        let hot_pages = hot.distinct(writes);
        let background_pages = distinct_uniform(nonzero_pages, background);
        // Both land in non-zero memory: count their overlap once.
        hot_pages + background_pages - hot_pages * background_pages / nonzero_pages.max(1.0)
    };

    // Open connections at the VM before the notice: the steady state at its normal share.
    let mut open = lambda * (1.0 / count as f64) * lifetime;
    let mut now = 0.0;
    let mut writes = 0.0;
    let mut background = 0.0;
    let mut throttle = 0.0;
    let mut recent: VecDeque<Stretch> = VecDeque::new();
    // The VM's share of new work integrated over the copy.
    let mut share_area = 0.0;
    let mut share_time = 0.0;

    // Advances the load from `now` to `to`; returns the request rate at the VM at `to`.
    let mut advance = |now: &mut f64,
                       to: f64,
                       timeline: &Timeline,
                       throttle: f64,
                       writes: &mut f64,
                       background: &mut f64,
                       recent: &mut VecDeque<Stretch>|
     -> f64 {
        let mut rate = 0.0;
        while *now < to {
            let share = policy.share_at(*now, timeline, count);
            let moving = policy.effect_at(*now, timeline).moving;
            let step = if moving {
                (to - *now).min(MOVING_STEP)
            } else {
                to - *now
            }
            .min(chunk);
            let requests = if l7 {
                rate = total_rate * share;
                rate * step
            } else {
                let settled = lambda * share * lifetime;
                let decay = (-step / lifetime.max(1e-9)).exp();
                let served =
                    (settled * step + (open - settled) * lifetime * (1.0 - decay)) / per_request.max(1e-9);
                open = settled + (open - settled) * decay;
                rate = open / per_request.max(1e-9);
                served
            };
            let written = requests * s.vm.pages_per_request * (1.0 - throttle);
            let spread = background_pages_per_s * step * (1.0 - throttle);
            *writes += written;
            *background += spread;
            if *now >= timeline.started_at && timeline.ended_at.is_none() {
                share_area += share * step;
                share_time += step;
            }
            *now += step;
            if chunk.is_finite() {
                recent.push_back(Stretch {
                    end: *now,
                    writes: written,
                    background: spread,
                });
                while recent
                    .front()
                    .is_some_and(|r| r.end <= *now - PROBE_WINDOW - 1e-9)
                {
                    recent.pop_front();
                }
            }
        }
        rate
    };
    // What a probe over the last second sees, bytes/s.
    let probe = |recent: &VecDeque<Stretch>| {
        let (w, b) = recent
            .iter()
            .fold((0.0, 0.0), |(w, b), r| (w + r.writes, b + r.background));
        distinct(w, b) * s.vm.page_size.0 / PROBE_WINDOW
    };

    advance(
        &mut now,
        lead,
        &timeline,
        0.0,
        &mut writes,
        &mut background,
        &mut recent,
    );
    let (mut engine, mut step) = Engine::start(engine_config(s), now, s.vm.ram.0 * s.vm.nonzero);
    if let Some(adaptor) = adaptor.as_mut() {
        let first = engine.outcome.pass_bytes[0];
        let level = adaptor.before_copy(now, first, engine_config(s).bandwidth, Some(probe(&recent)));
        timeline.set_level(now, level);
    }
    writes = 0.0;
    background = 0.0;
    let mut caught = 0.0;
    let mut lost = 0.0;
    loop {
        match step {
            Step::Pass { ends_at } => {
                while let Some(adaptor) = adaptor.as_mut().filter(|a| a.next_at() < ends_at) {
                    let at = adaptor.next_at();
                    advance(
                        &mut now,
                        at,
                        &timeline,
                        throttle,
                        &mut writes,
                        &mut background,
                        &mut recent,
                    );
                    if adaptor.probe_due(now) {
                        adaptor.probed(now, probe(&recent));
                    }
                    let level = adaptor.step(now, &engine.progress(now));
                    timeline.set_level(now, level);
                }
                advance(
                    &mut now,
                    ends_at,
                    &timeline,
                    throttle,
                    &mut writes,
                    &mut background,
                    &mut recent,
                );
                let pages = distinct(writes, background);
                writes = 0.0;
                background = 0.0;
                step = engine.end_of_pass(now, pages * s.vm.page_size.0);
                throttle = engine.throttle();
            }
            Step::Switchover { downtime } => {
                let share = policy.share_at(now, &timeline, count);
                let rate = if l7 {
                    total_rate * share
                } else {
                    open / per_request.max(1e-9)
                };
                // In service or queued when it stops (Little's law), plus what arrives during it.
                caught = rate * (s.backends.service_time.secs() * s.backends.brownout + downtime);
                if !l7 {
                    lost = lambda * share * downtime;
                    caught += lost;
                }
                now += downtime;
                timeline.ended_at = Some(now);
                break;
            }
            Step::Cancelled => {
                timeline.ended_at = Some(now);
                timeline.reason = EndReason::Cancelled;
                break;
            }
        }
    }
    if let Some(adaptor) = adaptor.as_mut() {
        adaptor.stop();
    }
    let migration = engine.outcome.clone();
    let failed = if s.traffic.syn_retransmit.secs() + migration.downtime > s.traffic.request_timeout.secs() {
        lost
    } else {
        0.0
    };
    let end = timeline.ended_at.unwrap_or(now);
    let mut back_to_full = f64::NAN;
    let normal = 1.0 / count as f64;
    let mut t = end;
    while t < end + 3600.0 {
        if policy.share_at(t, &timeline, count) >= 0.9 * normal {
            back_to_full = t - end;
            break;
        }
        t += MOVING_STEP;
    }
    let in_migration = if share_time > 0.0 {
        share_area / share_time
    } else {
        policy.share_at(timeline.started_at, &timeline, count)
    };
    RunResult {
        requests: (total_rate * (end + 5.0)) as u64,
        failed: failed as u64,
        caught_in_blackout: caught,
        lost_syns: lost,
        latency_p50_ms: f64::NAN,
        latency_p99_ms: f64::NAN,
        latency_p999_ms: f64::NAN,
        window_p99_ms: f64::NAN,
        window_max_ms: f64::NAN,
        vm_share_in_migration: in_migration,
        share_kept: in_migration / normal,
        back_to_full_s: back_to_full,
        samples: Vec::new(),
        migration,
    }
}

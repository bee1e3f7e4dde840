//! Flow fidelity: the same engine, pass by pass, with the load as rates instead of events — fast
//! enough for fleets (thousands of migrations a second).
//!
//! Connections to the VM arrive at `λ · share(t)` and last `m · (S + think)` on average
//! (exponential), so the open connections `A` follow `dA/dt = λ·share − A/L`; requests reach the VM
//! at `A / (S + think)` (L4) or `Λ · share` (L7). Where the share is constant this is solved
//! exactly; where it moves (a linear drain) it is stepped every 100 ms. Writes of a pass become
//! distinct pages through [`HotSet::distinct`], the expectation of what the request fidelity samples.

use handover_core::phase::EndReason;

use crate::memory::{HotSet, distinct_uniform};
use crate::policy::{Policy, Timeline};
use crate::precopy::{Engine, Step};
use crate::run::{RunResult, engine_config};
use crate::scenario::Scenario;

/// Longest step while the share moves.
const MOVING_STEP: f64 = 0.1;

/// One run in flow fidelity (deterministic: the seed is not used).
pub fn run(s: &Scenario, policy: &Policy) -> RunResult {
    let count = s.backends.count;
    let lead = policy.spec.lead_time.secs();
    let mut timeline = Timeline {
        notice_at: 0.0,
        started_at: lead,
        ended_at: None,
        reason: EndReason::Completed,
    };
    let per_request = s.backends.service_time.secs() + s.traffic.think_time.secs();
    let lifetime = s.traffic.requests_per_connection * per_request;
    let l7 = s.traffic.mode == "l7";
    let lambda = s.connection_rate();
    let total_rate = lambda * s.traffic.requests_per_connection;
    let hot = HotSet::new((s.vm.hot_set.0 / s.vm.page_size.0).max(1.0) as u64, s.vm.zipf);
    let nonzero_pages = s.vm.ram.0 * s.vm.nonzero / s.vm.page_size.0;
    let background_pages_per_s = s.vm.background_dirty.0 / s.vm.page_size.0;

    // Open connections at the VM before the notice: the steady state at its normal share.
    let mut open = lambda * (1.0 / count as f64) * lifetime;
    let mut now = 0.0;
    let mut writes = 0.0;
    let mut background = 0.0;
    let mut throttle = 0.0;

    // Advances the load from `now` to `to`; returns the request rate at the VM at `to`.
    let mut advance = |now: &mut f64,
                       to: f64,
                       timeline: &Timeline,
                       throttle: f64,
                       writes: &mut f64,
                       background: &mut f64|
     -> f64 {
        let mut rate = 0.0;
        while *now < to {
            let share = policy.share_at(*now, timeline, count);
            let moving = policy.effect_at(*now, timeline).moving;
            let step = if moving {
                (to - *now).min(MOVING_STEP)
            } else {
                to - *now
            };
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
            *writes += requests * s.vm.pages_per_request * (1.0 - throttle);
            *background += background_pages_per_s * step * (1.0 - throttle);
            *now += step;
        }
        rate
    };

    advance(&mut now, lead, &timeline, 0.0, &mut writes, &mut background);
    let (mut engine, mut step) = Engine::start(engine_config(s), now, s.vm.ram.0 * s.vm.nonzero);
    writes = 0.0;
    background = 0.0;
    let mut caught = 0.0;
    let mut lost = 0.0;
    loop {
        match step {
            Step::Pass { ends_at } => {
                advance(
                    &mut now,
                    ends_at,
                    &timeline,
                    throttle,
                    &mut writes,
                    &mut background,
                );
                let hot_pages = hot.distinct(writes);
                let background_pages = distinct_uniform(nonzero_pages, background);
                // Both land in non-zero memory: count their overlap once.
                let pages =
                    hot_pages + background_pages - hot_pages * background_pages / nonzero_pages.max(1.0);
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
    let in_migration = policy.share_at(timeline.started_at + migration.total_time / 2.0, &timeline, count);
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
        back_to_full_s: back_to_full,
        samples: Vec::new(),
        migration,
    }
}

//! What one run shows: QEMU's figures, the client's view of the migration window (latency,
//! failures, requests caught when the blackout began), broken long-lived connections, the VM's
//! share of new work and when it is back; and medians with their spread over repetitions.

use serde::{Deserialize, Serialize};

use crate::run::{MIGRATING, RunRecord};

/// The measures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunMetrics {
    /// Policy name.
    pub policy: String,
    /// Requests per second to the pool.
    pub rate: f64,
    /// Copy bandwidth limit, MiB/s.
    pub max_bandwidth_mib: f64,
    /// Repetition.
    pub repetition: u32,
    /// QEMU's final status.
    pub status: String,
    /// Completed (not failed, not cancelled at the timeout).
    pub converged: bool,
    /// QEMU's total time, ms (to the cancel when it did not converge).
    pub total_time_ms: f64,
    /// QEMU's downtime, ms.
    pub downtime_ms: f64,
    /// STOP on the source to RESUME on the destination, ms.
    pub blackout_ms: f64,
    /// RAM sent, MiB.
    pub transferred_mib: f64,
    /// Passes (dirty-bitmap syncs).
    pub passes: f64,
    /// From the announcement to the copy's start (draining), ms.
    pub lead_ms: f64,
    /// Requests sent during the whole run.
    pub requests: usize,
    /// Of those, failed (no answer, error or not 200).
    pub failed: usize,
    /// Requests sent during the migration window (setup to end).
    pub window_requests: usize,
    /// Of those, failed.
    pub window_failed: usize,
    /// Latency percentiles of requests sent in the window, ms.
    pub window_p50_ms: f64,
    /// 99th.
    pub window_p99_ms: f64,
    /// Slowest.
    pub window_max_ms: f64,
    /// Requests to the migrating VM in flight when its blackout began (or failed across it).
    pub in_flight_at_blackout: usize,
    /// The migrating VM's share of the requests sent in the window.
    pub vm_share_in_window: f64,
    /// The share of its normal new work the balancer gave the VM during the copy, from
    /// handover's record (the drain target times the adaptive level, averaged over the copy; 1
    /// for an unaware balancer). Exact where the requests of a short copy are too few to tell.
    pub share_kept: f64,
    /// How long before the blackout quiescence began, ms (adaptive-quiesce).
    pub quiesce_lead_ms: f64,
    /// How long `handover migrate` held the switchover, ms (0 when it did not).
    pub hold_ms: f64,
    /// The host's 1-minute load average when the run began.
    pub host_load: f64,
    /// Seconds from the end of the migration until the VM has 90 % of its normal share again.
    pub back_to_full_s: f64,
    /// Long-lived connections.
    pub connections: usize,
    /// Of those, broken.
    pub broken_connections: usize,
    /// After completion, the guest answered from the destination alone.
    pub answered_from_destination: Option<bool>,
    /// handover's phases were recorded in order (prepared ≤ drained ≤ started ≤ ended ≤ stable).
    pub phases_in_order: Option<bool>,
}

/// A quantile of unsorted values (NaN when empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[index]
}

/// Measures one run.
pub fn measure(run: &RunRecord) -> RunMetrics {
    let m = &run.migration;
    let vms = 3.0;
    let window_start = m.setup_ms.unwrap_or(f64::NAN);
    let window_end = m.end_ms.unwrap_or(f64::NAN);
    let in_window: Vec<_> = run
        .requests
        .iter()
        .filter(|r| r.start_ms >= window_start && r.start_ms <= window_end)
        .collect();
    let latencies: Vec<f64> = in_window.iter().map(|r| r.latency_ms()).collect();
    let answered: Vec<_> = in_window.iter().filter(|r| r.ok()).collect();
    let to_vm = answered
        .iter()
        .filter(|r| r.vm.as_deref() == Some(MIGRATING))
        .count();
    let in_flight_at_blackout = m.stop_ms.map_or(0, |stop| {
        run.requests
            .iter()
            .filter(|r| r.start_ms <= stop && r.end_ms >= stop)
            .filter(|r| r.vm.as_deref() == Some(MIGRATING) || !r.ok())
            .count()
    });
    let phases_in_order = run.handover.as_ref().map(|view| {
        let r = &view.record;
        let times = [r.prepared_at, r.drained_at, r.started_at, r.ended_at, r.stable_at];
        let present: Vec<u64> = times.iter().flatten().copied().collect();
        r.prepared_at.is_some()
            && r.started_at.is_some()
            && r.ended_at.is_some()
            && present.windows(2).all(|w| w[0] <= w[1])
    });
    RunMetrics {
        policy: run.spec.policy.name.clone(),
        rate: run.spec.rate,
        max_bandwidth_mib: run.spec.settings.max_bandwidth as f64 / 1048576.0,
        repetition: run.spec.repetition,
        status: m.status.clone(),
        converged: m.status == "completed" && !m.timed_out,
        total_time_ms: m.total_time_ms.unwrap_or(f64::NAN),
        downtime_ms: m.downtime_ms.unwrap_or(f64::NAN),
        blackout_ms: match (m.stop_ms, m.resume_ms) {
            (Some(stop), Some(resume)) => resume - stop,
            _ => f64::NAN,
        },
        transferred_mib: m.transferred_bytes.unwrap_or(f64::NAN) / 1048576.0,
        passes: m.passes.unwrap_or(f64::NAN),
        lead_ms: match (m.announced_ms, m.setup_ms) {
            (Some(announced), Some(setup)) => setup - announced,
            _ => 0.0,
        },
        requests: run.requests.len(),
        failed: run.requests.iter().filter(|r| !r.ok()).count(),
        window_requests: in_window.len(),
        window_failed: in_window.iter().filter(|r| !r.ok()).count(),
        window_p50_ms: quantile(&latencies, 0.5),
        window_p99_ms: quantile(&latencies, 0.99),
        window_max_ms: latencies.iter().copied().fold(f64::NAN, f64::max),
        in_flight_at_blackout,
        vm_share_in_window: if answered.is_empty() {
            f64::NAN
        } else {
            to_vm as f64 / answered.len() as f64
        },
        share_kept: share_kept(run),
        host_load: run.host_load.unwrap_or(f64::NAN),
        quiesce_lead_ms: match (
            m.stop_ms,
            run.handover.as_ref().and_then(|v| v.record.quiesce_started_at),
        ) {
            (Some(stop), Some(quiesce)) => stop - quiesce as f64,
            _ => f64::NAN,
        },
        hold_ms: run.handover.as_ref().map_or(0.0, |v| {
            match (v.record.hold_started_at, v.record.hold_ended_at) {
                (Some(start), Some(end)) => end.saturating_sub(start) as f64,
                _ => 0.0,
            }
        }),
        back_to_full_s: back_to_full(run, window_end, 0.9 / vms),
        connections: run.echoes.len(),
        broken_connections: run.echoes.iter().filter(|e| e.broken.is_some()).count(),
        answered_from_destination: run
            .answered_from_destination
            .as_ref()
            .map(|a| a.as_deref() == Ok(MIGRATING)),
        phases_in_order,
    }
}

/// The share of its normal new work the balancer gave the VM over the copy (QEMU's setup to its
/// end): the policy's target times the adaptive level in force, time-averaged.
fn share_kept(run: &RunRecord) -> f64 {
    let policy = &run.spec.policy;
    if !policy.aware {
        return 1.0;
    }
    let m = &run.migration;
    let (Some(start), Some(end)) = (m.setup_ms, m.end_ms) else {
        return f64::NAN;
    };
    let entries = run
        .handover
        .as_ref()
        .map(|v| v.record.adaptive.as_slice())
        .unwrap_or_default();
    if !(policy.adaptive || policy.quiesce) || end <= start {
        return policy.target;
    }
    // The level is 1 until the controller's first step, then each step's until the next.
    let level_at = |t: f64| {
        entries
            .iter()
            .rev()
            .find(|e| e.at as f64 <= t)
            .map_or(1.0, |e| e.level.get())
    };
    let steps = 1000;
    let dt = (end - start) / steps as f64;
    let sum: f64 = (0..steps).map(|i| level_at(start + (i as f64 + 0.5) * dt)).sum();
    policy.target * sum / steps as f64
}

/// Seconds after `end` to the first 3-second window (stepping 0.5 s) in which the migrating VM
/// answered at least `share` of the requests sent; NaN if none before the run ended.
fn back_to_full(run: &RunRecord, end: f64, share: f64) -> f64 {
    const WINDOW_MS: f64 = 3000.0;
    let last = run.requests.iter().map(|r| r.start_ms).fold(f64::NAN, f64::max);
    let mut t = end;
    while t + WINDOW_MS <= last {
        let answered: Vec<_> = run
            .requests
            .iter()
            .filter(|r| r.start_ms >= t && r.start_ms < t + WINDOW_MS && r.ok())
            .collect();
        let to_vm = answered
            .iter()
            .filter(|r| r.vm.as_deref() == Some(MIGRATING))
            .count();
        if !answered.is_empty() && to_vm as f64 / answered.len() as f64 >= share {
            return (t - end) / 1000.0;
        }
        t += 500.0;
    }
    f64::NAN
}

/// Median and range of one measure over repetitions (JSON `null` when there were no values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Spread {
    /// Median.
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    /// Smallest.
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    /// Largest.
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
}

/// JSON has no NaN: serde_json writes it as `null`; read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Spread {
    /// Of these values (non-finite ones are left out).
    pub fn of(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        Self {
            median: quantile(&finite, 0.5),
            min: finite.iter().copied().fold(f64::NAN, f64::min),
            max: finite.iter().copied().fold(f64::NAN, f64::max),
        }
    }
}

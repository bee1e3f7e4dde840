//! The migration benchmark: every (request rate, bandwidth cap) point, every policy, several
//! repetitions (policies interleaved so that drift spreads evenly), each run saved as JSON as soon
//! as it ends; then medians and ranges per point and policy.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::TestbedError;
use crate::balancer::Policy;
use crate::metrics::{RunMetrics, Spread, measure};
use crate::migration::Settings;
use crate::run::{RunRecord, RunSpec, Testbed};

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSpec {
    /// Requests per second to the pool.
    pub rates: Vec<f64>,
    /// Copy bandwidth caps, MiB/s.
    pub bandwidths_mib: Vec<f64>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Repetitions per point and policy.
    pub repetitions: u32,
    /// KiB each request rewrites.
    pub kib: u32,
    /// Long-lived connections.
    pub echo_connections: usize,
    /// Load before each migration, s.
    pub warmup_s: f64,
    /// Load after each migration (at least the ramp window plus 4 s), s.
    pub tail_s: f64,
    /// A migration not done after this is cancelled, s.
    pub timeout_s: f64,
    /// QEMU's downtime limit, ms.
    pub downtime_limit_ms: u64,
}

/// One point and policy over its repetitions.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PointSummary {
    /// Requests per second.
    pub rate: f64,
    /// Cap, MiB/s.
    pub max_bandwidth_mib: f64,
    /// Policy.
    pub policy: String,
    /// Runs measured.
    pub runs: usize,
    /// Runs whose migration completed.
    pub completed: usize,
    /// QEMU total time, s.
    pub total_time_s: Spread,
    /// QEMU downtime, ms.
    pub downtime_ms: Spread,
    /// STOP to RESUME, ms.
    pub blackout_ms: Spread,
    /// Passes.
    pub passes: Spread,
    /// RAM sent, MiB.
    pub transferred_mib: Spread,
    /// Announcement to copy, s.
    pub lead_s: Spread,
    /// Failed requests per run.
    pub failed: Spread,
    /// Latency in the migration window, ms.
    pub window_p50_ms: Spread,
    /// 99th.
    pub window_p99_ms: Spread,
    /// Slowest.
    pub window_max_ms: Spread,
    /// Requests to the VM in flight when the blackout began.
    pub in_flight_at_blackout: Spread,
    /// The VM's share of new work during the copy.
    pub vm_share_in_window: Spread,
    /// The share of its normal new work the balancer gave the VM during the copy.
    #[serde(default = "no_spread")]
    pub share_kept: Spread,
    /// How long before the blackout quiescence began, ms.
    #[serde(default = "no_spread")]
    pub quiesce_lead_ms: Spread,
    /// How long the switchover was held, ms.
    #[serde(default = "no_spread")]
    pub hold_ms: Spread,
    /// The host's 1-minute load average when the runs began.
    #[serde(default = "no_spread")]
    pub host_load: Spread,
    /// Back to 90 % of its share, s after the end.
    pub back_to_full_s: Spread,
    /// Broken long-lived connections per run.
    pub broken_connections: Spread,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What ran.
    pub spec: BenchSpec,
    /// How QEMU ran guests.
    pub accel: String,
    /// Every run's measures.
    pub runs: Vec<RunMetrics>,
    /// Runs that could not be measured, with why.
    pub errors: Vec<String>,
    /// Per point and policy.
    pub summary: Vec<PointSummary>,
}

/// A spread of nothing (summaries saved before a measure existed).
fn no_spread() -> Spread {
    Spread::of(&[])
}

/// Summarises the runs of one point and policy.
pub fn summarise(rate: f64, bandwidth: f64, policy: &str, runs: &[&RunMetrics]) -> PointSummary {
    let of = |f: &dyn Fn(&RunMetrics) -> f64| Spread::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
    let converged = |f: &dyn Fn(&RunMetrics) -> f64| {
        Spread::of(
            &runs
                .iter()
                .filter(|r| r.converged)
                .map(|r| f(r))
                .collect::<Vec<_>>(),
        )
    };
    PointSummary {
        rate,
        max_bandwidth_mib: bandwidth,
        policy: policy.to_string(),
        runs: runs.len(),
        completed: runs.iter().filter(|r| r.converged).count(),
        total_time_s: of(&|r| r.total_time_ms / 1000.0),
        downtime_ms: converged(&|r| r.downtime_ms),
        blackout_ms: converged(&|r| r.blackout_ms),
        passes: of(&|r| r.passes),
        transferred_mib: of(&|r| r.transferred_mib),
        lead_s: of(&|r| r.lead_ms / 1000.0),
        failed: of(&|r| r.failed as f64),
        window_p50_ms: of(&|r| r.window_p50_ms),
        window_p99_ms: of(&|r| r.window_p99_ms),
        window_max_ms: of(&|r| r.window_max_ms),
        in_flight_at_blackout: converged(&|r| r.in_flight_at_blackout as f64),
        vm_share_in_window: of(&|r| r.vm_share_in_window),
        share_kept: of(&|r| r.share_kept),
        quiesce_lead_ms: converged(&|r| r.quiesce_lead_ms),
        hold_ms: of(&|r| r.hold_ms),
        host_load: of(&|r| r.host_load),
        back_to_full_s: converged(&|r| r.back_to_full_s),
        broken_connections: of(&|r| r.broken_connections as f64),
    }
}

/// Runs the benchmark on `testbed`, saving every run under `out/runs/`; `progress` hears of each.
/// Returns the report and, per point, the first repetition of every policy (for the pictures).
pub async fn run(
    testbed: &mut Testbed,
    spec: &BenchSpec,
    out: &Path,
    mut progress: impl FnMut(&str),
) -> Result<(BenchReport, Vec<Vec<RunRecord>>), TestbedError> {
    let runs_dir = out.join("runs");
    std::fs::create_dir_all(&runs_dir).map_err(|e| TestbedError::io(&runs_dir, e))?;
    let points: Vec<(f64, f64)> = spec
        .rates
        .iter()
        .flat_map(|r| spec.bandwidths_mib.iter().map(move |b| (*r, *b)))
        .collect();
    let total = points.len() * spec.policies.len() * spec.repetitions as usize;
    let mut done = 0;
    let mut metrics = Vec::new();
    let mut errors = Vec::new();
    let mut firsts: Vec<Vec<RunRecord>> = vec![Vec::new(); points.len()];
    for repetition in 1..=spec.repetitions {
        for (index, (rate, bandwidth)) in points.iter().enumerate() {
            // Rotate the policy order each repetition.
            let n = spec.policies.len();
            for k in 0..n {
                let policy = &spec.policies[(k + repetition as usize - 1) % n];
                done += 1;
                let run_spec = RunSpec {
                    policy: policy.clone(),
                    rate: *rate,
                    kib: spec.kib,
                    settings: Settings {
                        max_bandwidth: (bandwidth * 1048576.0) as u64,
                        downtime_limit_ms: spec.downtime_limit_ms,
                        timeout_s: spec.timeout_s,
                    },
                    echo_connections: spec.echo_connections,
                    warmup: Duration::from_secs_f64(spec.warmup_s),
                    tail: Duration::from_secs_f64(spec.tail_s.max(policy.ramp_s + 4.0)),
                    repetition,
                };
                let name = format!("{rate}rps-{bandwidth}MiB-{}-{repetition}", policy.name);
                match testbed.run(&run_spec).await {
                    Ok(record) => {
                        let m = measure(&record);
                        progress(&format!(
                            "[{done}/{total}] {name}: {} in {:.2} s, {} passes, {} failed, {} in flight at the blackout, host load {:.1}",
                            m.status,
                            m.total_time_ms / 1000.0,
                            m.passes,
                            m.failed,
                            m.in_flight_at_blackout,
                            m.host_load
                        ));
                        let path = runs_dir.join(format!("{name}.json"));
                        let body = serde_json::json!({ "metrics": &m, "record": &record });
                        std::fs::write(&path, serde_json::to_vec(&body).unwrap_or_default())
                            .map_err(|e| TestbedError::io(&path, e))?;
                        metrics.push(m);
                        if repetition == 1 {
                            firsts[index].push(record);
                        }
                    }
                    Err(e) => {
                        progress(&format!("[{done}/{total}] {name}: not measured: {e}"));
                        errors.push(format!("{name}: {e}"));
                    }
                }
            }
        }
    }
    let mut summary = Vec::new();
    for (rate, bandwidth) in &points {
        for policy in &spec.policies {
            let runs: Vec<&RunMetrics> = metrics
                .iter()
                .filter(|m| m.rate == *rate && m.max_bandwidth_mib == *bandwidth && m.policy == policy.name)
                .collect();
            summary.push(summarise(*rate, *bandwidth, &policy.name, &runs));
        }
    }
    Ok((
        BenchReport {
            spec: spec.clone(),
            accel: format!("{:?}: {}", testbed.accel.0, testbed.accel.1),
            runs: metrics,
            errors,
            summary,
        },
        firsts,
    ))
}

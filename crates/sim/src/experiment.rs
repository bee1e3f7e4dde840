//! Runs a scenario: every sweep point, every policy, every seed (the same seeds for every policy),
//! and summarises each (point, policy) with means and 95 % confidence intervals. A fleet scenario
//! also evacuates hosts VM after VM in flow fidelity and reports the wave per policy.

use serde::Serialize;

use crate::flow;
use crate::policy::Policy;
use crate::request;
use crate::rng::{Rng, Stream};
use crate::run::{RunResult, Sample};
use crate::scenario::{Bytes, Fidelity, Point, Scenario};
use crate::stats::{Estimate, quantile};

/// One policy at one point, over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// Policy name.
    pub policy: String,
    /// Migration total time, s.
    pub total_time_s: Estimate,
    /// Downtime, ms.
    pub downtime_ms: Estimate,
    /// Passes.
    pub passes: Estimate,
    /// Bytes sent, GiB.
    pub sent_gib: Estimate,
    /// Share of runs that completed, %.
    pub converged_pct: f64,
    /// Requests caught in the blackout (and SYNs lost in it).
    pub caught_in_blackout: Estimate,
    /// SYNs lost in the blackout.
    pub lost_syns: Estimate,
    /// Failed requests.
    pub failed: Estimate,
    /// Latency percentiles, ms (request fidelity).
    pub p50_ms: Estimate,
    /// 99th.
    pub p99_ms: Estimate,
    /// 99.9th.
    pub p999_ms: Estimate,
    /// 99th of requests sent during the migration.
    pub window_p99_ms: Estimate,
    /// Slowest request sent during the migration.
    pub window_max_ms: Estimate,
    /// The VM's share of new work during the migration.
    pub vm_share_in_migration: Estimate,
    /// That share over its normal share (1: kept all of it, 0: a full drain).
    pub share_kept: Estimate,
    /// Seconds until the VM is back at 90 % of its share.
    pub back_to_full_s: Estimate,
    /// Highest auto-converge throttle.
    pub max_throttle: Estimate,
}

/// One sweep point.
#[derive(Debug, Clone, Serialize)]
pub struct PointSummary {
    /// Swept fields and their values.
    pub label: Vec<(String, String)>,
    /// λ at the VM's normal share: what its requests write (before the hot set folds repeated
    /// writes into one page) plus background dirtying, over the copy bandwidth.
    pub lambda: f64,
    /// Each policy's summary.
    pub per_policy: Vec<PolicySummary>,
}

/// One policy over a fleet wave.
#[derive(Debug, Clone, Serialize)]
pub struct FleetPolicy {
    /// Policy.
    pub policy: String,
    /// Time to evacuate every host, s.
    pub wave_time_s: f64,
    /// Mean migration time, s.
    pub mean_migration_s: f64,
    /// Longest migration, s.
    pub max_migration_s: f64,
    /// Median blackout of the migrations that completed, ms.
    pub downtime_p50_ms: f64,
    /// 99th percentile blackout, ms.
    pub downtime_p99_ms: f64,
    /// Requests caught in blackouts, over the wave.
    pub caught_in_blackout: f64,
    /// Migrations that did not complete.
    pub not_converged: u64,
}

/// A fleet wave.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Migrations per policy.
    pub migrations: u64,
    /// Hosts.
    pub hosts: usize,
    /// Results.
    pub per_policy: Vec<FleetPolicy>,
}

/// One policy's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyTimeline {
    /// Policy.
    pub policy: String,
    /// Samples in time order.
    pub samples: Vec<Sample>,
}

/// Everything a scenario produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// What it shows.
    pub description: String,
    /// Fidelity.
    pub fidelity: String,
    /// Seeds per (point, policy).
    pub seeds: u64,
    /// Every point.
    pub points: Vec<PointSummary>,
    /// The fleet wave, if any.
    pub fleet: Option<FleetReport>,
    /// Timeline of the first point and seed, per policy (request fidelity): the VM's share of new
    /// work, what is left to copy and every backend's utilisation, sampled over time.
    pub timelines: Vec<PolicyTimeline>,
    /// Simulated migrations in all.
    pub migrations_simulated: u64,
}

/// Runs one (point, policy, seed).
pub fn run_one(scenario: &Scenario, policy: &Policy, seed: u64) -> RunResult {
    match scenario.fidelity {
        Fidelity::Request => request::run(scenario, policy, seed),
        Fidelity::Flow => flow::run(scenario, policy),
    }
}

/// Runs every point, policy and seed; `progress(done, total)` is called after each run.
pub fn run(points: &[Point], seeds: u64, mut progress: impl FnMut(u64, u64)) -> Report {
    let first = &points[0].scenario;
    // Flow fidelity is deterministic: one run per point and policy.
    let seeds = if first.fidelity == Fidelity::Flow {
        1
    } else {
        seeds.max(1)
    };
    let fleet_runs = first
        .fleet
        .as_ref()
        .map_or(0, |f| (f.hosts * f.vms_per_host) as u64)
        * first.policies.len() as u64;
    let total = points.len() as u64 * first.policies.len() as u64 * seeds + fleet_runs;
    let mut done = 0;
    let mut timelines = Vec::new();
    let mut summaries = Vec::new();
    for (index, point) in points.iter().enumerate() {
        let mut per_policy = Vec::new();
        for spec in &point.scenario.policies {
            let policy = Policy::new(spec);
            let mut runs = Vec::new();
            for seed in 1..=seeds {
                let result = run_one(&point.scenario, &policy, seed);
                if index == 0 && seed == 1 && !result.samples.is_empty() {
                    timelines.push(PolicyTimeline {
                        policy: spec.name.clone(),
                        samples: result.samples.clone(),
                    });
                }
                runs.push(result);
                done += 1;
                progress(done, total);
            }
            per_policy.push(summarise(&spec.name, &runs));
        }
        summaries.push(PointSummary {
            label: point.label.clone(),
            lambda: lambda_of(&point.scenario),
            per_policy,
        });
    }
    let fleet = first.fleet.as_ref().map(|_| {
        fleet(first, &mut |n| {
            done += n;
            progress(done, total);
        })
    });
    Report {
        scenario: first.name.clone(),
        description: first.description.clone(),
        fidelity: format!("{:?}", first.fidelity).to_lowercase(),
        seeds,
        points: summaries,
        fleet,
        timelines,
        migrations_simulated: total,
    }
}

/// λ of a scenario at the VM's normal share (see [`PointSummary::lambda`]).
pub fn lambda_of(s: &Scenario) -> f64 {
    let requests = s.connection_rate() * s.traffic.requests_per_connection / s.backends.count as f64;
    let dirty = requests * s.vm.pages_per_request * s.vm.page_size.0 + s.vm.background_dirty.0;
    dirty / s.migration.max_bandwidth.0.min(s.migration.link.0)
}

fn summarise(policy: &str, runs: &[RunResult]) -> PolicySummary {
    let of = |f: &dyn Fn(&RunResult) -> f64| Estimate::of(&runs.iter().map(f).collect::<Vec<_>>());
    let converged =
        runs.iter().filter(|r| r.migration.converged).count() as f64 * 100.0 / runs.len().max(1) as f64;
    PolicySummary {
        policy: policy.to_string(),
        total_time_s: of(&|r| r.migration.total_time),
        downtime_ms: of(&|r| {
            if r.migration.converged {
                r.migration.downtime * 1000.0
            } else {
                f64::NAN
            }
        }),
        passes: of(&|r| f64::from(r.migration.passes)),
        sent_gib: of(&|r| r.migration.bytes_sent / (1024.0 * 1024.0 * 1024.0)),
        converged_pct: converged,
        caught_in_blackout: of(&|r| r.caught_in_blackout),
        lost_syns: of(&|r| r.lost_syns),
        failed: of(&|r| r.failed as f64),
        p50_ms: of(&|r| r.latency_p50_ms),
        p99_ms: of(&|r| r.latency_p99_ms),
        p999_ms: of(&|r| r.latency_p999_ms),
        window_p99_ms: of(&|r| r.window_p99_ms),
        window_max_ms: of(&|r| r.window_max_ms),
        vm_share_in_migration: of(&|r| r.vm_share_in_migration),
        share_kept: of(&|r| r.share_kept),
        back_to_full_s: of(&|r| r.back_to_full_s),
        max_throttle: of(&|r| r.migration.max_throttle),
    }
}

/// Evacuates the fleet once per policy, the same VMs (sizes and loads) for every policy.
fn fleet(base: &Scenario, progress: &mut dyn FnMut(u64)) -> FleetReport {
    let spec = base.fleet.clone().expect("a fleet scenario");
    let mut flow_base = base.clone();
    flow_base.fidelity = Fidelity::Flow;
    let vms = spec.hosts * spec.vms_per_host;
    // Each VM's size and load, drawn once.
    let variants: Vec<Scenario> = (0..vms)
        .map(|i| {
            let mut rng = Rng::new(i as u64 + 1, Stream::Fleet);
            let mut s = flow_base.clone();
            let ram =
                (s.vm.ram.0 * rng.lognormal(1.0, spec.ram_cv)).max(s.vm.hot_set.0 / s.vm.nonzero.max(1e-9));
            s.vm.ram = Bytes(ram.max(s.vm.page_size.0 * 16.0));
            let rate = s.connection_rate() * rng.lognormal(1.0, spec.load_cv);
            s.traffic.connection_rate = Some(rate);
            s.traffic.request_rate = None;
            s.traffic.utilisation = None;
            s.traffic.trace = None;
            s.traffic.trace_arrivals = None;
            s
        })
        .collect();
    let mut per_policy = Vec::new();
    for policy_spec in &base.policies {
        let policy = Policy::new(policy_spec);
        let mut host_times = Vec::with_capacity(spec.hosts);
        let (mut sum, mut max, mut caught, mut failed) = (0.0, 0.0f64, 0.0, 0);
        let mut downtimes_ms = Vec::with_capacity(vms);
        for host in 0..spec.hosts {
            let mut host_time = 0.0;
            for vm in 0..spec.vms_per_host {
                let result = flow::run(&variants[host * spec.vms_per_host + vm], &policy);
                let t = result.migration.total_time;
                host_time += t + policy_spec.lead_time.secs();
                sum += t;
                max = max.max(t);
                caught += result.caught_in_blackout;
                failed += u64::from(!result.migration.converged);
                if result.migration.converged {
                    downtimes_ms.push(result.migration.downtime * 1000.0);
                }
            }
            host_times.push(host_time);
            progress(spec.vms_per_host as u64);
        }
        let wave: f64 = host_times
            .chunks(spec.parallel_hosts)
            .map(|batch| batch.iter().copied().fold(0.0, f64::max))
            .sum();
        per_policy.push(FleetPolicy {
            policy: policy_spec.name.clone(),
            wave_time_s: wave,
            mean_migration_s: sum / vms as f64,
            max_migration_s: max,
            downtime_p50_ms: quantile(&mut downtimes_ms, 0.5),
            downtime_p99_ms: quantile(&mut downtimes_ms, 0.99),
            caught_in_blackout: caught,
            not_converged: failed,
        });
    }
    FleetReport {
        migrations: vms as u64,
        hosts: spec.hosts,
        per_policy,
    }
}

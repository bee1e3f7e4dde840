//! What one run produces, and the engine settings a scenario implies.

use serde::Serialize;

use crate::precopy::{AutoConverge, EngineConfig, Outcome, StopRule};
use crate::scenario::Scenario;

/// A point of a run's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, seconds.
    pub t: f64,
    /// The migrating VM's share of new connections (L4) or requests (L7) in the last interval.
    pub vm_share: f64,
    /// Bytes of the current pass (what is left to copy), 0 when not migrating.
    pub remaining_bytes: f64,
    /// Utilisation of each backend in the last interval (0 to 1).
    pub utilisation: Vec<f64>,
}

/// The result of one run (one seed, one policy, one scenario point).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// The migration, in `query-migrate`'s terms.
    pub migration: Outcome,
    /// Requests that completed or failed.
    pub requests: u64,
    /// Requests slower than the timeout.
    pub failed: u64,
    /// Requests in service at, queued at, or sent to the VM during its blackout, and SYNs lost in it.
    pub caught_in_blackout: f64,
    /// New connections whose SYN was lost in the blackout.
    pub lost_syns: f64,
    /// Latency percentiles of every request (request fidelity; NaN in flow fidelity).
    pub latency_p50_ms: f64,
    /// 99th percentile.
    pub latency_p99_ms: f64,
    /// 99.9th percentile.
    pub latency_p999_ms: f64,
    /// 99th percentile of requests sent during the migration (and 1 s after).
    pub window_p99_ms: f64,
    /// Slowest request sent during the migration.
    pub window_max_ms: f64,
    /// Share of new work the VM got while it migrated.
    pub vm_share_in_migration: f64,
    /// That share over its normal share (1: it kept all of it; 0: a full drain).
    pub share_kept: f64,
    /// Seconds from the end of the migration until the VM is back at 90 % of its normal share.
    pub back_to_full_s: f64,
    /// Timeline samples.
    pub samples: Vec<Sample>,
}

/// The engine settings of a scenario.
pub fn engine_config(s: &Scenario) -> EngineConfig {
    let rule = match s.migration.stop_rule.as_str() {
        "xen" => StopRule::Xen {
            max_iters: 29,
            max_factor: 3.0,
            min_pages: 50,
        },
        _ => StopRule::Qemu,
    };
    let gib = s.vm.ram.0 / (1024.0 * 1024.0 * 1024.0);
    let timeout = match (s.migration.timeout, s.migration.timeout_per_gib) {
        (Some(t), _) => Some(t.secs()),
        (None, Some(per)) => Some(per.secs() * gib.max(1.0)),
        (None, None) => None,
    };
    EngineConfig {
        bandwidth: s.migration.max_bandwidth.0.min(s.migration.link.0),
        link: s.migration.link.0,
        downtime_limit: s.migration.downtime_limit.secs(),
        setup: s.migration.setup_time.secs(),
        device: s.migration.device_time.secs(),
        rule,
        auto_converge: s.migration.auto_converge.then(AutoConverge::default),
        timeout,
        page_size: s.vm.page_size.0,
        ram: s.vm.ram.0,
    }
}

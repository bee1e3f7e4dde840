//! The CI scenario: one loaded guest behind handover is live-migrated with a drain; no client
//! request fails, no established connection breaks, handover's phases come in order, the VM gets no
//! new work while drained, and afterwards the guest answers from the destination alone.

use serde::Serialize;

use crate::metrics::RunMetrics;
use crate::run::{MIGRATING, RunRecord};

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;

/// One property of the run and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// What must hold.
    pub claim: String,
    /// Whether it did.
    pub passed: bool,
    /// What was measured.
    pub detail: String,
}

/// Judges a drained migration run.
pub fn judge(run: &RunRecord, metrics: &RunMetrics) -> Vec<Verdict> {
    let verdict = |claim: &str, passed: bool, detail: String| Verdict {
        claim: claim.to_string(),
        passed,
        detail,
    };
    let failures: Vec<String> = run
        .requests
        .iter()
        .filter(|r| !r.ok())
        .take(5)
        .map(|r| format!("{:?} (status {})", r.error, r.status))
        .collect();
    let on_vm = run
        .echoes
        .iter()
        .filter(|e| e.vm.as_deref() == Some(MIGRATING))
        .count();
    let broken: Vec<String> = run
        .echoes
        .iter()
        .filter_map(|e| e.broken.as_ref().map(|(_, why)| format!("{:?}: {why}", e.vm)))
        .collect();
    let times = run.handover.as_ref().map(|v| {
        let r = &v.record;
        format!(
            "prepared {:?}, drained {:?}, started {:?}, ended {:?} ({:?}), stable {:?}",
            r.prepared_at, r.drained_at, r.started_at, r.ended_at, r.end, r.stable_at
        )
    });
    vec![
        verdict(
            "the live migration completed",
            metrics.converged,
            format!(
                "status {}, total {:.0} ms, downtime {:.0} ms, {:.0} passes, {:.1} MiB sent",
                metrics.status,
                metrics.total_time_ms,
                metrics.downtime_ms,
                metrics.passes,
                metrics.transferred_mib
            ),
        ),
        verdict(
            "no client request failed",
            metrics.requests > 0 && metrics.failed == 0,
            format!(
                "{} requests, {} failed {failures:?}",
                metrics.requests, metrics.failed
            ),
        ),
        verdict(
            "no established connection broke (one or more of them on the migrating VM)",
            on_vm > 0 && broken.is_empty(),
            format!(
                "{} connections, {on_vm} on {MIGRATING}, broken: {broken:?}",
                run.echoes.len()
            ),
        ),
        verdict(
            "handover's phases came in order: prepared, drained, started, ended, stable",
            metrics.phases_in_order == Some(true)
                && run
                    .handover
                    .as_ref()
                    .is_some_and(|v| v.record.drained_at.is_some() && v.record.stable_at.is_some()),
            times.unwrap_or_else(|| "no migration recorded by handover".into()),
        ),
        verdict(
            "the migrating VM got no new request during the copy",
            metrics.window_requests > 0 && metrics.vm_share_in_window == 0.0,
            format!(
                "{} requests sent during the copy, share of {MIGRATING} {:.3}",
                metrics.window_requests, metrics.vm_share_in_window
            ),
        ),
        verdict(
            "after the migration the guest answers from the destination (source stopped)",
            metrics.answered_from_destination == Some(true),
            format!("{:?}", run.answered_from_destination),
        ),
    ]
}

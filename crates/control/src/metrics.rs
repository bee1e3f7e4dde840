//! `/metrics` in the Prometheus text exposition format: per backend (active connections, totals,
//! effective weight, share, phase), per VM (phase, migration progress) and per migration (drain
//! wait, time in each phase, how migrations ended), and per balancer (reachability).

use std::fmt::Write;

use handover_core::api::{BackendStatus, BalancerStatus};
use handover_core::migration::MigrationRecord;
use handover_core::model::VmId;
use handover_core::phase::{Phase, VmState};

use crate::stats::{Histogram, Stats};

/// Everything `/metrics` shows, gathered by the API handler.
#[derive(Debug)]
pub struct MetricsInput<'a> {
    /// Pools of this node's balancers.
    pub local: &'a BalancerStatus,
    /// VM states of the registry.
    pub vms: &'a [(VmId, VmState)],
    /// Migration history (the latest record of each VM gives its progress).
    pub history: &'a [MigrationRecord],
    /// Counters.
    pub stats: &'a Stats,
}

const PHASES: [Phase; 4] = [Phase::Stable, Phase::Draining, Phase::Migrating, Phase::Ramping];

/// Renders the exposition text.
pub fn render(input: &MetricsInput<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let backends: Vec<_> = input
        .local
        .pools
        .iter()
        .flat_map(|pool| pool.backends.iter().map(move |b| (pool.name.as_str(), b)))
        .collect();

    type BackendValue = fn(&BackendStatus) -> f64;
    let per_backend: [(&str, &str, &str, BackendValue); 10] = [
        (
            "handover_backend_active",
            "gauge",
            "Open L4 connections plus in-flight L7 requests.",
            |b| b.active as f64,
        ),
        (
            "handover_backend_connections_total",
            "counter",
            "L4 connections sent to the backend.",
            |b| b.connections_total as f64,
        ),
        (
            "handover_backend_requests_total",
            "counter",
            "L7 requests sent to the backend.",
            |b| b.requests_total as f64,
        ),
        (
            "handover_backend_failures_total",
            "counter",
            "Failed connects and upstream errors.",
            |b| b.failures_total as f64,
        ),
        ("handover_backend_weight", "gauge", "Configured weight.", |b| {
            f64::from(b.weight)
        }),
        (
            "handover_backend_effective_weight",
            "gauge",
            "Weight used for new work now.",
            |b| b.effective_weight,
        ),
        (
            "handover_backend_share",
            "gauge",
            "Share of the pool's new work the backend gets now (0 to 1).",
            |b| b.share,
        ),
        (
            "handover_backend_up",
            "gauge",
            "1 when the backend is up (not down by active checks, not ejected).",
            |b| {
                if b.health == "up" { 1.0 } else { 0.0 }
            },
        ),
        (
            "handover_backend_suppressed_failures_total",
            "counter",
            "Failed checks and traffic tolerated because the VM was migrating.",
            |b| b.suppressed_failures_total as f64,
        ),
        (
            "handover_backend_outages_total",
            "counter",
            "Times the backend was marked down or ejected.",
            |b| b.outages_total as f64,
        ),
    ];
    for (name, kind, help, value) in per_backend {
        family(&mut out, name, kind, help);
        for (pool, b) in &backends {
            sample(
                &mut out,
                name,
                &[("pool", pool), ("backend", &b.address), ("vm", b.vm.as_str())],
                value(b),
            );
        }
    }
    family(
        &mut out,
        "handover_backend_phase",
        "gauge",
        "1 for the migration phase applied to the backend's VM.",
    );
    for (pool, b) in &backends {
        for phase in PHASES {
            let value = if b.phase == phase { 1.0 } else { 0.0 };
            sample(
                &mut out,
                "handover_backend_phase",
                &[
                    ("pool", pool),
                    ("backend", &b.address),
                    ("vm", b.vm.as_str()),
                    ("phase", phase.as_str()),
                ],
                value,
            );
        }
    }
    family(
        &mut out,
        "handover_pool_fallback",
        "gauge",
        "1 when every available backend drains and serves anyway.",
    );
    for pool in &input.local.pools {
        sample(
            &mut out,
            "handover_pool_fallback",
            &[("pool", &pool.name)],
            if pool.fallback { 1.0 } else { 0.0 },
        );
    }

    family(
        &mut out,
        "handover_vm_phase",
        "gauge",
        "1 for the VM's phase in the migration registry.",
    );
    for (vm, state) in input.vms {
        for phase in PHASES {
            sample(
                &mut out,
                "handover_vm_phase",
                &[("vm", vm.as_str()), ("phase", phase.as_str())],
                if state.phase == phase { 1.0 } else { 0.0 },
            );
        }
    }
    family(
        &mut out,
        "handover_vm_queued",
        "gauge",
        "1 when a prepare of the VM waits in the capacity guard's queue.",
    );
    for (vm, state) in input.vms {
        sample(
            &mut out,
            "handover_vm_queued",
            &[("vm", vm.as_str())],
            if state.queued_since.is_some() { 1.0 } else { 0.0 },
        );
    }
    progress_metrics(&mut out, input);
    adaptive_metrics(&mut out, input);

    family(
        &mut out,
        "handover_notices_total",
        "counter",
        "Migration notices received, by notice and outcome.",
    );
    for ((notice, outcome), n) in &input.stats.notices {
        sample(
            &mut out,
            "handover_notices_total",
            &[("notice", notice), ("outcome", outcome)],
            *n as f64,
        );
    }
    family(
        &mut out,
        "handover_migrations_ended_total",
        "counter",
        "Migrations that ended, by how they ended.",
    );
    for (reason, n) in &input.stats.migrations_ended {
        sample(
            &mut out,
            "handover_migrations_ended_total",
            &[("end", reason)],
            *n as f64,
        );
    }
    family(
        &mut out,
        "handover_migration_drain_wait_seconds",
        "histogram",
        "Time from a prepare to drained (or the drain timeout).",
    );
    histogram(
        &mut out,
        "handover_migration_drain_wait_seconds",
        &[],
        &input.stats.drain_wait,
    );
    family(
        &mut out,
        "handover_migration_phase_seconds",
        "histogram",
        "Time VMs spent in each migration phase.",
    );
    for (phase, h) in &input.stats.phase_seconds {
        histogram(
            &mut out,
            "handover_migration_phase_seconds",
            &[("phase", phase)],
            h,
        );
    }
    family(
        &mut out,
        "handover_balancer_up",
        "gauge",
        "1 when the last call to the balancer succeeded.",
    );
    for (name, up) in &input.stats.balancer_up {
        sample(
            &mut out,
            "handover_balancer_up",
            &[("balancer", name)],
            if *up { 1.0 } else { 0.0 },
        );
    }
    family(
        &mut out,
        "handover_balancer_errors_total",
        "counter",
        "Failed calls to the balancer.",
    );
    for (name, n) in &input.stats.balancer_errors {
        sample(
            &mut out,
            "handover_balancer_errors_total",
            &[("balancer", name)],
            *n as f64,
        );
    }
    out
}

fn progress_metrics(out: &mut String, input: &MetricsInput<'_>) {
    type Getter = fn(&handover_core::migration::MigrationProgress) -> Option<f64>;
    let gauges: [(&str, &str, Getter); 7] = [
        (
            "handover_migration_transferred_bytes",
            "Bytes the hypervisor transferred so far.",
            |p| p.transferred_bytes.map(|v| v as f64),
        ),
        (
            "handover_migration_remaining_bytes",
            "Bytes still to send.",
            |p| p.remaining_bytes.map(|v| v as f64),
        ),
        ("handover_migration_total_bytes", "Guest RAM in bytes.", |p| {
            p.total_bytes.map(|v| v as f64)
        }),
        (
            "handover_migration_dirty_pages_rate",
            "Pages the guest dirties per second.",
            |p| p.dirty_pages_rate.map(|v| v as f64),
        ),
        (
            "handover_migration_passes",
            "Passes over guest memory (dirty-bitmap syncs).",
            |p| p.passes.map(|v| v as f64),
        ),
        (
            "handover_migration_expected_downtime_seconds",
            "Downtime QEMU expects.",
            |p| p.expected_downtime_ms.map(|v| v as f64 / 1000.0),
        ),
        (
            "handover_migration_downtime_seconds",
            "Measured downtime of the last migration.",
            |p| p.downtime_ms.map(|v| v as f64 / 1000.0),
        ),
    ];
    for (name, help, get) in gauges {
        family(out, name, "gauge", help);
        for (vm, state) in input.vms {
            let progress = state
                .migration
                .and_then(|id| input.history.iter().rev().find(|r| r.id == id))
                .and_then(|r| r.progress.as_ref());
            if let Some(value) = progress.and_then(get) {
                sample(out, name, &[("vm", vm.as_str())], value);
            }
        }
    }
}

/// Per VM whose migration runs with an adaptive drain or quiescence: the controller's latest step.
fn adaptive_metrics(out: &mut String, input: &MetricsInput<'_>) {
    type Getter = fn(&handover_core::migration::MigrationRecord) -> Option<f64>;
    let gauges: [(&str, &str, Getter); 5] = [
        (
            "handover_migration_adaptive_level",
            "Fraction of its drain target the migrating VM keeps, as the adaptive controller chose it.",
            |r| r.adaptive.last().map(|e| e.level.get()),
        ),
        (
            "handover_migration_adaptive_lambda",
            "Dirty rate over copy bandwidth at the chosen level, as the controller estimates it.",
            |r| r.adaptive.last().and_then(|e| e.lambda),
        ),
        (
            "handover_migration_switchover_forecast_seconds",
            "Time to the switchover the controller forecasts.",
            |r| {
                r.adaptive
                    .last()
                    .and_then(|e| e.switchover_in_ms)
                    .map(|ms| ms as f64 / 1000.0)
            },
        ),
        (
            "handover_migration_quiescing",
            "1 while the VM gets no new work ahead of its switchover.",
            |r| (!r.adaptive.is_empty()).then_some(f64::from(u8::from(r.quiesce_started_at.is_some()))),
        ),
        (
            "handover_migration_switchover_held",
            "1 while handover migrate holds QEMU's switchover for quiescence.",
            |r| {
                (!r.adaptive.is_empty()).then_some(f64::from(u8::from(
                    r.hold_started_at.is_some() && r.hold_ended_at.is_none(),
                )))
            },
        ),
    ];
    for (name, help, get) in gauges {
        family(out, name, "gauge", help);
        for (vm, state) in input.vms {
            let running = state
                .migration
                .and_then(|id| input.history.iter().rev().find(|r| r.id == id))
                .filter(|r| r.ended_at.is_none());
            if let Some(value) = running.and_then(get) {
                sample(out, name, &[("vm", vm.as_str())], value);
            }
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    write_labels(out, labels);
    let _ = writeln!(out, " {}", format_value(value));
}

fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    for (bound, count) in h.cumulative() {
        let le = format_value(bound);
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", &le));
        out.push_str(name);
        out.push_str("_bucket");
        write_labels(out, &with_le);
        let _ = writeln!(out, " {count}");
    }
    let mut inf: Vec<(&str, &str)> = labels.to_vec();
    inf.push(("le", "+Inf"));
    out.push_str(name);
    out.push_str("_bucket");
    write_labels(out, &inf);
    let _ = writeln!(out, " {}", h.count);
    let _ = write!(out, "{name}_sum");
    write_labels(out, labels);
    let _ = writeln!(out, " {}", format_value(h.sum));
    let _ = write!(out, "{name}_count");
    write_labels(out, labels);
    let _ = writeln!(out, " {}", h.count);
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn format_value(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_integers_have_no_fraction() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\n")], 3.0);
        sample(&mut out, "m", &[], 0.25);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\n\"} 3\nm 0.25\n");
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut h = Histogram::seconds();
        h.observe(0.5);
        let mut out = String::new();
        histogram(&mut out, "w", &[("phase", "draining")], &h);
        assert!(
            out.contains("w_bucket{phase=\"draining\",le=\"0.5\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("w_bucket{phase=\"draining\",le=\"+Inf\"} 1\n"));
        assert!(out.contains("w_sum{phase=\"draining\"} 0.5\n"));
        assert!(out.contains("w_count{phase=\"draining\"} 1\n"));
    }
}

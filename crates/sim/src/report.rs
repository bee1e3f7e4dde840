//! The report as a markdown table: one row per (point, policy), means ± 95 % CI.

use std::fmt::Write;

use crate::experiment::Report;
use crate::stats::Estimate;

fn cell(e: &Estimate, digits: usize) -> String {
    if !e.mean.is_finite() {
        return "–".to_string();
    }
    if e.n > 1 && e.ci95 > 0.0 {
        format!("{:.*} ± {:.*}", digits, e.mean, digits, e.ci95)
    } else {
        format!("{:.*}", digits, e.mean)
    }
}

/// Renders the report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", report.scenario);
    if !report.description.is_empty() {
        let _ = writeln!(out, "{}\n", report.description.trim());
    }
    let _ = writeln!(
        out,
        "Fidelity: {}; {} seed{} per point and policy (the same seeds for every policy); ± is the 95 % confidence interval.\n",
        report.fidelity,
        report.seeds,
        if report.seeds == 1 { "" } else { "s" }
    );
    let swept: Vec<String> = report
        .points
        .first()
        .map(|p| p.label.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let request = report.fidelity == "request";
    let numbered = report.points.len() > 1;
    let mut header: Vec<String> = if numbered { vec!["#".into()] } else { Vec::new() };
    header.extend(swept.iter().cloned());
    header.push("λ".into());
    header.extend(
        [
            "policy",
            "total time s",
            "downtime ms",
            "passes",
            "sent GiB",
            "converged",
            "caught in blackout",
            "lost SYNs",
            "VM share while migrating",
            "share kept",
        ]
        .map(String::from),
    );
    if request {
        header.extend(
            [
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "p99 in migration ms",
                "max in migration ms",
                "failed",
            ]
            .map(String::from),
        );
    }
    header.push("back to 90 % s".into());
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for (number, point) in report.points.iter().enumerate() {
        for p in &point.per_policy {
            let mut row: Vec<String> = if numbered {
                vec![format!("{}", number + 1)]
            } else {
                Vec::new()
            };
            row.extend(point.label.iter().map(|(_, v)| v.clone()));
            row.push(format!("{:.2}", point.lambda));
            row.extend([
                p.policy.clone(),
                cell(&p.total_time_s, 2),
                cell(&p.downtime_ms, 1),
                cell(&p.passes, 1),
                cell(&p.sent_gib, 2),
                format!("{:.0} %", p.converged_pct),
                cell(&p.caught_in_blackout, 1),
                cell(&p.lost_syns, 1),
                cell(&p.vm_share_in_migration, 3),
                cell(&p.share_kept, 2),
            ]);
            if request {
                row.extend([
                    cell(&p.p50_ms, 1),
                    cell(&p.p99_ms, 1),
                    cell(&p.p999_ms, 1),
                    cell(&p.window_p99_ms, 1),
                    cell(&p.window_max_ms, 0),
                    cell(&p.failed, 1),
                ]);
            }
            row.push(cell(&p.back_to_full_s, 1));
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    }
    if let Some(fleet) = &report.fleet {
        let _ = writeln!(
            out,
            "\nFleet: {} hosts, {} migrations per policy (flow fidelity).\n\n| policy | wave time min | mean migration s | longest migration s | downtime p50 ms | downtime p99 ms | caught in blackouts | not converged |\n|---|---|---|---|---|---|---|---|",
            fleet.hosts, fleet.migrations
        );
        for p in &fleet.per_policy {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {} |",
                p.policy,
                p.wave_time_s / 60.0,
                p.mean_migration_s,
                p.max_migration_s,
                p.downtime_p50_ms,
                p.downtime_p99_ms,
                p.caught_in_blackout,
                p.not_converged
            );
        }
    }
    out
}

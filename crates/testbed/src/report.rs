//! The benchmark's markdown table: per sweep point and policy, medians with their range over the
//! repetitions.

use std::fmt::Write as _;

use crate::bench::PointSummary;
use crate::metrics::Spread;

fn cell(s: &Spread, digits: usize) -> String {
    if !s.median.is_finite() {
        return "–".into();
    }
    if (s.max - s.min).abs() < f64::EPSILON {
        return format!("{:.*}", digits, s.median);
    }
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

/// The table.
pub fn markdown(points: &[PointSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| req/s | cap MiB/s | policy | runs | completed | total time s | downtime ms | blackout ms | passes | sent MiB | \
         lead s | failed | p50 ms | p99 ms | max ms | in flight at blackout | VM share in copy | share kept | quiesced before blackout s | hold ms | back to 90 % s | broken conns | host load |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(23));
    for p in points {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.rate,
            p.max_bandwidth_mib,
            p.policy,
            p.runs,
            p.completed,
            cell(&p.total_time_s, 2),
            cell(&p.downtime_ms, 0),
            cell(&p.blackout_ms, 0),
            cell(&p.passes, 0),
            cell(&p.transferred_mib, 0),
            cell(&p.lead_s, 1),
            cell(&p.failed, 0),
            cell(&p.window_p50_ms, 0),
            cell(&p.window_p99_ms, 0),
            cell(&p.window_max_ms, 0),
            cell(&p.in_flight_at_blackout, 0),
            cell(&p.vm_share_in_window, 2),
            cell(&p.share_kept, 2),
            cell(
                &Spread {
                    median: p.quiesce_lead_ms.median / 1000.0,
                    min: p.quiesce_lead_ms.min / 1000.0,
                    max: p.quiesce_lead_ms.max / 1000.0,
                },
                1
            ),
            cell(&p.hold_ms, 0),
            cell(&p.back_to_full_s, 1),
            cell(&p.broken_connections, 0),
            cell(&p.host_load, 1),
        );
    }
    out
}

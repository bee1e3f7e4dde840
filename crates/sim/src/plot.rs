//! Pictures (SVG): a sweep's migration time, blackout impact and share kept during the copy per
//! policy, and the first run's timeline (the VM's share of new work and what is left to copy).

use std::path::Path;

use plotters::prelude::*;

use crate::experiment::Report;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// Beyond this many sweep points the x axis shows point numbers (the table names them).
const MAX_NAMED_POINTS: usize = 10;

/// Why a picture could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    /// File.
    pub path: String,
    /// Cause.
    pub message: String,
}

fn error(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Draws the report: a sweep chart when there are several points, else the first run's timeline.
pub fn draw(report: &Report, path: &Path) -> Result<(), PlotError> {
    if report.points.len() > 1 {
        sweep(report, path)
    } else {
        timeline(report, path)
    }
}

/// Migration time (top), requests caught in the blackout (middle) and the share of its normal new
/// work the VM kept during the copy (bottom), per sweep point and policy.
fn sweep(report: &Report, path: &Path) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (960, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(path, e))?;
    let (top, rest) = root.split_vertically(340);
    let (bottom, kept_area) = rest.split_vertically(280);
    let labels: Vec<String> = report
        .points
        .iter()
        .map(|p| {
            let values = p
                .label
                .iter()
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
                .join(", ");
            format!("{values} (λ {:.2})", p.lambda)
        })
        .collect();
    let swept = report.points[0]
        .label
        .iter()
        .map(|(k, _)| k.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let n = labels.len();
    let policies: Vec<String> = report.points[0]
        .per_policy
        .iter()
        .map(|p| p.policy.clone())
        .collect();
    let series = |f: &dyn Fn(&crate::experiment::PolicySummary) -> f64| -> Vec<Vec<(f64, f64)>> {
        (0..policies.len())
            .map(|k| {
                report
                    .points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i as f64, f(&p.per_policy[k])))
                    .filter(|(_, y)| y.is_finite())
                    .collect()
            })
            .collect()
    };
    let time = series(&|p| p.total_time_s.mean);
    // A migration that never completed had no blackout: leave it out rather than plot a zero.
    let caught = series(&|p| {
        if p.converged_pct > 0.0 {
            p.caught_in_blackout.mean
        } else {
            f64::NAN
        }
    });
    let cancelled: Vec<(f64, f64)> = report
        .points
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.per_policy
                .iter()
                .filter(|p| p.converged_pct < 100.0)
                .map(move |_| (i as f64, 0.0))
        })
        .collect();
    let label_of = |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            String::new()
        } else if n > MAX_NAMED_POINTS {
            format!("{}", i as usize + 1)
        } else {
            labels.get(i as usize).cloned().unwrap_or_default()
        }
    };
    let x_range = -0.2..(n as f64 - 0.8).max(0.2);

    // A linear axis up to the slowest migration that completed; runs that did not complete are
    // drawn as crosses on the top edge (their time is the timeout, which would flatten the rest).
    let completed_max = report
        .points
        .iter()
        .flat_map(|p| p.per_policy.iter())
        .filter(|p| p.converged_pct >= 100.0)
        .map(|p| p.total_time_s.mean)
        .fold(0.0f64, f64::max);
    let max = if completed_max > 0.0 {
        completed_max * 1.3
    } else {
        upper(&time)
    };
    let time: Vec<Vec<(f64, f64)>> = time
        .into_iter()
        .map(|line| line.into_iter().map(|(x, y)| (x, y.min(max))).collect())
        .collect();
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: migration time (s) by {swept}", report.scenario),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range.clone(), 0.0..max)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_labels(n.max(2))
        .x_label_formatter(&label_of)
        .y_desc("s")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| error(path, e))?;
    if !cancelled.is_empty() {
        chart
            .draw_series(
                cancelled
                    .into_iter()
                    .map(|(x, _)| Cross::new((x, max), 7, BLACK.stroke_width(2))),
            )
            .map_err(|e| error(path, e))?
            .label("did not complete (cancelled at the timeout; off the scale)")
            .legend(|(x, y)| Cross::new((x + 9, y), 5, BLACK.stroke_width(2)));
    }
    draw_lines(&mut chart, &policies, time, 3, path)?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "requests caught in the blackout (in flight, queued, arriving; lost SYNs)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, 0.0..upper(&caught))
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_labels(n.max(2))
        .x_label_formatter(&label_of)
        .y_desc("requests")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| error(path, e))?;
    draw_lines(&mut chart, &policies, caught, 3, path)?;

    let kept = series(&|p| p.share_kept.mean);
    let mut chart = ChartBuilder::on(&kept_area)
        .caption(
            "share of its normal new work the VM kept during the copy",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.2..(n as f64 - 0.8).max(0.2), 0.0..1.15f64)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_labels(n.max(2))
        .x_label_formatter(&label_of)
        .y_desc("kept")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| error(path, e))?;
    draw_lines(&mut chart, &policies, kept, 3, path)?;
    root.present().map_err(|e| error(path, e))
}

/// The VM's share of new work and the bytes left to copy, over the first run of each policy.
fn timeline(report: &Report, path: &Path) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(path, e))?;
    let (top, bottom) = root.split_vertically(290);
    let end = report
        .timelines
        .iter()
        .flat_map(|line| line.samples.iter().map(|s| s.t))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: the migrating VM's share of new work", report.scenario),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..0.6f64)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("share")
        .draw()
        .map_err(|e| error(path, e))?;
    let names: Vec<String> = report.timelines.iter().map(|line| line.policy.clone()).collect();
    let shares = report
        .timelines
        .iter()
        .map(|line| {
            line.samples
                .iter()
                .filter(|s| s.vm_share.is_finite())
                .map(|s| (s.t, s.vm_share))
                .collect()
        })
        .collect();
    draw_lines(&mut chart, &names, shares, 0, path)?;
    let max_mib = report
        .timelines
        .iter()
        .flat_map(|line| line.samples.iter().map(|s| s.remaining_bytes / 1048576.0))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("left to copy (MiB, current pass)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..max_mib)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("MiB")
        .draw()
        .map_err(|e| error(path, e))?;
    let left = report
        .timelines
        .iter()
        .map(|line| {
            line.samples
                .iter()
                .map(|s| (s.t, s.remaining_bytes / 1048576.0))
                .collect()
        })
        .collect();
    draw_lines(&mut chart, &names, left, 0, path)?;
    root.present().map_err(|e| error(path, e))
}

/// The top of a linear axis that holds every point with some headroom.
fn upper(data: &[Vec<(f64, f64)>]) -> f64 {
    data.iter()
        .flatten()
        .map(|(_, y)| *y)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15
}

/// One line per named series in the shared colours (with `marker`-sized points), and a legend.
fn draw_lines<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    names: &[String],
    data: Vec<Vec<(f64, f64)>>,
    marker: u32,
    path: &Path,
) -> Result<(), PlotError>
where
    Y: Ranged<ValueType = f64>,
{
    for (k, points) in data.into_iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(marker))
            .map_err(|e| error(path, e))?
            .label(names.get(k).cloned().unwrap_or_default())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(path, e))?;
    Ok(())
}

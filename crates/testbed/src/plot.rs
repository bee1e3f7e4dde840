//! The timeline picture of runs side by side (one row per policy): requests answered per second by
//! each VM, with the phases shaded (announced and draining, copying, blackout, ramping), and every
//! request's latency (failed ones marked).

use std::path::Path;

use plotters::prelude::*;

use crate::TestbedError;
use crate::run::RunRecord;

const VM_COLORS: [RGBColor; 3] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
];
const DRAINING: RGBColor = RGBColor(0xff, 0xf1, 0xb8);
const COPYING: RGBColor = RGBColor(0xdd, 0xea, 0xf7);
const BLACKOUT: RGBColor = RGBColor(0x30, 0x30, 0x30);
const RAMPING: RGBColor = RGBColor(0xdf, 0xf2, 0xdc);
const QUIESCING: RGBColor = RGBColor(0xe4, 0xd7, 0xf2);

fn error(path: &Path, e: impl std::fmt::Display) -> TestbedError {
    TestbedError::Failed(format!("cannot draw {}: {e}", path.display()))
}

/// Phase boundaries of a run, in seconds from the copy's start.
struct Phases {
    announced: Option<f64>,
    stop: Option<f64>,
    resume: Option<f64>,
    end: Option<f64>,
    stable: Option<f64>,
    quiesce: Option<f64>,
}

fn phases(run: &RunRecord, origin: f64) -> Phases {
    let s = |ms: Option<f64>| ms.map(|t| (t - origin) / 1000.0);
    let m = &run.migration;
    Phases {
        announced: s(m.announced_ms),
        stop: s(m.stop_ms),
        resume: s(m.resume_ms),
        end: s(m.end_ms),
        stable: s(run
            .handover
            .as_ref()
            .and_then(|v| v.record.stable_at)
            .map(|t| t as f64)),
        quiesce: s(run
            .handover
            .as_ref()
            .and_then(|v| v.record.quiesce_started_at)
            .map(|t| t as f64)),
    }
}

/// Draws `runs` (one row each) to an SVG at `path`, titled `title`.
pub fn timeline(runs: &[RunRecord], title: &str, path: &Path) -> Result<(), TestbedError> {
    if runs.is_empty() {
        return Err(error(path, "no runs"));
    }
    let row_height = 250;
    let root = SVGBackend::new(path, (1200, 60 + row_height * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(path, e))?;
    let (header, body) = root.split_vertically(60);
    header
        .titled(title, ("sans-serif", 18))
        .map_err(|e| error(path, e))?
        .draw(&Text::new(
            "shaded: yellow = announced, draining; blue = copying memory; purple = quiescing; black = blackout; green = ramping back",
            (10, 6),
            ("sans-serif", 13),
        ))
        .map_err(|e| error(path, e))?;
    let rows = body.split_evenly((runs.len(), 1));
    for (run, row) in runs.iter().zip(rows) {
        draw_row(run, &row, path)?;
    }
    root.present().map_err(|e| error(path, e))
}

fn draw_row(
    run: &RunRecord,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    path: &Path,
) -> Result<(), TestbedError> {
    let origin = run
        .migration
        .setup_ms
        .or(run.migration.announced_ms)
        .unwrap_or_else(|| run.requests.first().map_or(0.0, |r| r.start_ms));
    let p = phases(run, origin);
    let first = run
        .requests
        .iter()
        .map(|r| r.start_ms)
        .fold(f64::INFINITY, f64::min);
    let last = run
        .requests
        .iter()
        .map(|r| r.end_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = ((first - origin) / 1000.0, ((last - origin) / 1000.0).max(1.0));
    let (left, right) = area.split_horizontally(760);

    // Requests answered per second, by VM (1-second bins of the request's start).
    let vms = ["vm-a", "vm-b", "vm-c"];
    // Whole seconds only: a last, partial second would look like a drop.
    let bins = ((x1 - x0).floor() as usize).max(1);
    let mut counts = vec![vec![0u32; bins]; vms.len()];
    for r in run.requests.iter().filter(|r| r.ok()) {
        let bin = ((r.start_ms - origin) / 1000.0 - x0).floor() as usize;
        if let (Some(k), true) = (vms.iter().position(|v| r.vm.as_deref() == Some(*v)), bin < bins) {
            counts[k][bin] += 1;
        }
    }
    let top = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.25;
    let title = format!(
        "{} — {} in {:.1} s, {} failed",
        run.spec.policy.name,
        run.migration.status,
        run.migration.total_time_ms.unwrap_or(f64::NAN) / 1000.0,
        run.requests.iter().filter(|r| !r.ok()).count()
    );
    let mut chart = ChartBuilder::on(&left)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(44)
        .build_cartesian_2d(x0..x1, 0.0..top)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("s from the start of the copy")
        .y_desc("answered/s")
        .draw()
        .map_err(|e| error(path, e))?;
    shade(&mut chart, &p, top, x1, path)?;
    for (k, vm) in vms.iter().enumerate() {
        let color = VM_COLORS[k];
        let points = counts[k]
            .iter()
            .enumerate()
            .map(|(i, c)| (x0 + i as f64 + 0.5, f64::from(*c)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| error(path, e))?
            .label(*vm)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(path, e))?;

    // Latency of every request (log scale); failed ones as red crosses at the top.
    let worst = run
        .requests
        .iter()
        .map(|r| r.latency_ms())
        .fold(10.0f64, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption("client latency (ms)", ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(48)
        .build_cartesian_2d(x0..x1, (1.0..worst).log_scale())
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("s")
        .draw()
        .map_err(|e| error(path, e))?;
    shade(&mut chart, &p, worst, x1, path)?;
    chart
        .draw_series(run.requests.iter().filter(|r| r.ok()).map(|r| {
            let k = vms.iter().position(|v| r.vm.as_deref() == Some(*v)).unwrap_or(1);
            Circle::new(
                ((r.start_ms - origin) / 1000.0, r.latency_ms().max(1.0)),
                2,
                VM_COLORS[k].filled(),
            )
        }))
        .map_err(|e| error(path, e))?;
    chart
        .draw_series(run.requests.iter().filter(|r| !r.ok()).map(|r| {
            Cross::new(
                ((r.start_ms - origin) / 1000.0, worst / 1.6),
                5,
                RED.stroke_width(2),
            )
        }))
        .map_err(|e| error(path, e))?;
    Ok(())
}

/// Shades the phases of `p` on a chart whose y axis reaches `top`.
fn shade<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    p: &Phases,
    top: f64,
    x1: f64,
    path: &Path,
) -> Result<(), TestbedError>
where
    Y: Ranged<ValueType = f64>,
{
    let bottom = 1e-9_f64.max(if top > 100.0 { 1.0 } else { 0.0 });
    let band =
        |from: f64, to: f64, color: RGBColor| Rectangle::new([(from, bottom), (to, top)], color.filled());
    let mut bands = Vec::new();
    if let Some(announced) = p.announced {
        bands.push(band(announced, 0.0, DRAINING));
    }
    if let Some(stop) = p.stop {
        bands.push(band(0.0, stop, COPYING));
    } else if let Some(end) = p.end {
        bands.push(band(0.0, end, COPYING));
    }
    if let (Some(quiesce), Some(until)) = (p.quiesce, p.stop.or(p.end)) {
        bands.push(band(quiesce, until, QUIESCING));
    }
    if let (Some(end), Some(stable)) = (p.end, p.stable) {
        bands.push(band(end, stable.min(x1), RAMPING));
    }
    if let (Some(stop), Some(resume)) = (p.stop, p.resume) {
        // At least a visible line for a blackout of a few milliseconds.
        bands.push(band(stop, resume.max(stop + 0.08), BLACKOUT));
    }
    chart.draw_series(bands).map_err(|e| error(path, e))?;
    Ok(())
}

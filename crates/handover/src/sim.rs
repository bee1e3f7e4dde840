//! `handover sim`: runs a scenario and prints a markdown table; optionally JSON and a picture.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Context;
use handover_sim::{experiment, plot, report, scenario};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::SimArgs;
use crate::{EXIT_ERROR, EXIT_OK};

/// Runs the simulation.
pub fn sim(args: &SimArgs) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read {}", args.scenario.display()))?;
    let dir = args.scenario.parent().unwrap_or(std::path::Path::new("."));
    let points = match scenario::parse_in(&text, dir) {
        Ok(points) => points,
        Err(e) => {
            eprintln!("{}: {e}", args.scenario.display());
            return Ok(EXIT_ERROR);
        }
    };
    let seeds = args.seeds.unwrap_or(points[0].scenario.seeds);
    let bar = ProgressBar::new(0);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "  [{elapsed_precise}] {bar:30} {pos}/{len} runs ({per_sec}, {eta} left)",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let report = experiment::run(&points, seeds, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let table = report::markdown(&report);
    println!("{table}");
    println!(
        "Simulated {} migrations in {:.2} s ({:.0} per second, one process).",
        report.migrations_simulated,
        elapsed,
        report.migrations_simulated as f64 / elapsed.max(1e-9)
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::draw(&report, path)?;
    }
    Ok(EXIT_OK)
}

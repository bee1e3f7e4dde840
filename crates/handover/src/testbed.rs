//! `handover testbed check|bench`: real live migrations in a network namespace. The command makes
//! the namespace, runs itself again inside it, and removes the namespace afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use handover_testbed::balancer::Policy;
use handover_testbed::bench::{self, BenchSpec};
use handover_testbed::guest::GuestImage;
use handover_testbed::metrics::measure;
use handover_testbed::migration::Settings;
use handover_testbed::netns::{Netns, is_root};
use handover_testbed::run::{GuestSize, Layout, RunSpec, Testbed};
use handover_testbed::{calibrate, check, plot, report};

use crate::cli::{TestbedBenchArgs, TestbedCalibrateArgs, TestbedCheckArgs, TestbedCommand, TestbedHoldArgs};
use crate::{EXIT_ERROR, EXIT_OK};

/// Runs a testbed subcommand.
pub async fn testbed(command: TestbedCommand) -> anyhow::Result<u8> {
    let place = match &command {
        TestbedCommand::Check(args) => &args.place,
        TestbedCommand::Bench(args) => &args.place,
        TestbedCommand::Calibrate(args) => &args.place,
        TestbedCommand::Hold(args) => &args.place,
    };
    let testbed_dir = find_testbed_dir(place.testbed_dir.as_deref())?;
    let checkout = testbed_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    let guest_dir = checkout.join("target/testbed/guest");
    let netns = Netns::new(&place.netns, &testbed_dir);
    if !netns.inside() {
        if !is_root() {
            bail!("the testbed needs root (network namespace, taps, packages)");
        }
        // Outside the namespace: the build downloads Debian's kernel package.
        GuestImage::build(&testbed_dir, &guest_dir)?;
        netns.up()?;
        let status = netns.run_self_inside();
        let down = netns.down();
        let status = status?;
        down?;
        return Ok(status.code().map_or(EXIT_ERROR, |c| c as u8));
    }
    let default_out = |name: &str| checkout.join("target").join(name);
    let out = place.out.clone().unwrap_or_else(|| match &command {
        TestbedCommand::Check(_) => default_out("testbed/check"),
        TestbedCommand::Bench(_) => default_out("bench/migration"),
        TestbedCommand::Calibrate(_) => default_out("bench/calibration"),
        TestbedCommand::Hold(_) => default_out("bench/hold"),
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let layout = Layout {
        testbed_dir: testbed_dir.clone(),
        guest_dir: guest_dir.clone(),
        work_dir: out.join("work"),
        handover: std::env::current_exe().context("cannot find this program")?,
    };
    let size = GuestSize {
        memory_mib: place.memory_mib,
        buffer_mib: place.buffer_mib,
    };
    eprintln!(
        "booting vm-a, vm-b and vm-c ({} MiB each) in namespace {}",
        size.memory_mib, netns.name
    );
    let image = GuestImage::build(&testbed_dir, &guest_dir)?;
    let mut bed = Testbed::start(layout, image, &netns, size).await?;
    eprintln!("guests up ({:?}: {})", bed.accel.0, bed.accel.1);
    match command {
        TestbedCommand::Check(args) => check(&mut bed, &args, &out).await,
        TestbedCommand::Bench(args) => bench(&mut bed, &args, &out).await,
        TestbedCommand::Calibrate(args) => calibrate(&mut bed, &args, &out).await,
        TestbedCommand::Hold(args) => hold(&mut bed, &args, &out).await,
    }
}

async fn hold(bed: &mut Testbed, args: &TestbedHoldArgs, out: &Path) -> anyhow::Result<u8> {
    if let Some(unknown) = args
        .mechanisms
        .iter()
        .find(|m| !handover_testbed::hold::MECHANISMS.contains(&m.as_str()))
    {
        bail!(
            "--mechanisms: unknown mechanism {unknown:?} (known: {})",
            handover_testbed::hold::MECHANISMS.join(", ")
        );
    }
    let spec = handover_testbed::hold::HoldSpec {
        mechanisms: args.mechanisms.clone(),
        repetitions: args.repetitions,
        rate: args.rate,
        kib: args.kib,
        bandwidth_mib: args.bandwidth,
        hold_s: args.hold,
    };
    let (runs, summary) = handover_testbed::hold::run(bed, &spec, |line| eprintln!("{line}")).await?;
    let table = handover_testbed::hold::markdown(&spec, &summary);
    let body = serde_json::json!({"spec": &spec, "runs": &runs, "summary": &summary});
    std::fs::write(out.join("hold.json"), serde_json::to_vec_pretty(&body)?)?;
    std::fs::write(out.join("hold.md"), &table)?;
    println!("{table}");
    Ok(EXIT_OK)
}

/// `testbed/` from the flag, the current directory or this program's location (target/*/handover).
fn find_testbed_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return std::fs::canonicalize(dir).with_context(|| format!("no testbed directory {}", dir.display()));
    }
    let mut starts = vec![std::env::current_dir()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for start in starts {
        for dir in start.ancestors() {
            if dir.join("testbed/build-guest").is_file() {
                return Ok(dir.join("testbed"));
            }
        }
    }
    bail!("cannot find the repository's testbed/ directory; give --testbed-dir")
}

async fn check(bed: &mut Testbed, args: &TestbedCheckArgs, out: &Path) -> anyhow::Result<u8> {
    let policy = Policy::named("drain").expect("a known policy");
    let spec = RunSpec {
        policy,
        rate: args.rate,
        kib: args.kib,
        settings: Settings {
            max_bandwidth: args.max_bandwidth,
            downtime_limit_ms: 300,
            timeout_s: 120.0,
        },
        echo_connections: 3,
        warmup: Duration::from_secs(3),
        tail: Duration::from_secs(4),
        repetition: 1,
    };
    eprintln!("migrating vm-a with a drain under {} requests/s", args.rate);
    let record = bed.run(&spec).await?;
    let metrics = measure(&record);
    let verdicts = check::judge(&record, &metrics);
    let path = out.join("check.json");
    let body = serde_json::json!({"verdicts": &verdicts, "metrics": &metrics, "record": &record});
    std::fs::write(&path, serde_json::to_vec_pretty(&body)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let picture = out.join("check.svg");
    plot::timeline(
        std::slice::from_ref(&record),
        "testbed check: vm-a migrated with a drain",
        &picture,
    )?;
    let mut passed = true;
    for v in &verdicts {
        println!(
            "{} {}: {}",
            if v.passed { "PASS" } else { "FAIL" },
            v.claim,
            v.detail
        );
        passed &= v.passed;
    }
    println!("results: {} and {}", path.display(), picture.display());
    Ok(if passed { EXIT_OK } else { EXIT_ERROR })
}

async fn bench(bed: &mut Testbed, args: &TestbedBenchArgs, out: &Path) -> anyhow::Result<u8> {
    let policies = args
        .policies
        .iter()
        .map(|name| {
            Policy::named(name).with_context(|| {
                format!(
                    "--policies: unknown policy {name:?} (known: {})",
                    Policy::ALL.join(", ")
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = BenchSpec {
        rates: args.rates.clone(),
        bandwidths_mib: args.bandwidths.clone(),
        policies,
        repetitions: args.repetitions,
        kib: args.kib,
        echo_connections: args.connections,
        warmup_s: args.warmup,
        tail_s: args.tail,
        timeout_s: args.timeout,
        downtime_limit_ms: 300,
    };
    let (report, firsts) = bench::run(bed, &spec, out, |line| eprintln!("{line}")).await?;
    let table = report::markdown(&report.summary);
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("table.md"), &table)?;
    for (runs, (rate, bandwidth)) in firsts.iter().zip(
        spec.rates
            .iter()
            .flat_map(|r| spec.bandwidths_mib.iter().map(move |b| (*r, *b))),
    ) {
        if runs.is_empty() {
            continue;
        }
        let path = out.join(format!("timeline-{rate}rps-{bandwidth}MiB.svg"));
        let title = format!(
            "vm-a migrated at {bandwidth} MiB/s under {rate} requests/s, first repetition of each policy"
        );
        plot::timeline(runs, &title, &path)?;
    }
    println!("{table}");
    println!("guests: {}; results in {}", report.accel, out.display());
    for error in &report.errors {
        println!("not measured: {error}");
    }
    Ok(EXIT_OK)
}

async fn calibrate(bed: &mut Testbed, args: &TestbedCalibrateArgs, out: &Path) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.bench)
        .with_context(|| format!("cannot read {}", args.bench.display()))?;
    let bench: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", args.bench.display()))?;
    let summary: Vec<handover_testbed::bench::PointSummary> =
        serde_json::from_value(bench["summary"].clone())
            .with_context(|| format!("{}: no benchmark summary", args.bench.display()))?;
    let kib = bench["spec"]["kib"]
        .as_u64()
        .context("the benchmark's spec has no kib")? as u32;
    let timeout = bench["spec"]["timeout_s"].as_f64().unwrap_or(45.0);
    let caps: Vec<f64> = summary
        .iter()
        .map(|p| p.max_bandwidth_mib)
        .fold(Vec::new(), |mut caps, c| {
            if !caps.contains(&c) {
                caps.push(c);
            }
            caps
        });
    eprintln!(
        "measuring vm-a's dirty rate at {:?} requests/s and idle migrations at {caps:?} MiB/s",
        args.rates
    );
    let calibration = calibrate::measure(bed, kib, &args.rates, &[1, 3], &caps).await?;
    let predictions = calibrate::predict(&calibration, &summary, timeout)?;
    let table = calibrate::markdown(&calibration, &predictions);
    let body = serde_json::json!({"calibration": &calibration, "predictions": &predictions});
    std::fs::write(out.join("calibration.json"), serde_json::to_vec_pretty(&body)?)?;
    std::fs::write(out.join("calibration.md"), &table)?;
    println!("{table}");
    Ok(EXIT_OK)
}

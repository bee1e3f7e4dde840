//! How to hold QEMU's switchover, measured: vm-a migrated under load while a mechanism that
//! should keep QEMU from stopping the guest is applied for a fixed time from the end of the first
//! pass, then released. Per mechanism: whether the switchover really waited, and what the hold
//! cost (total time, bytes sent, bytes sent inside the blackout, downtime) against no hold at all.
//!
//! Mechanisms: `none` (the baseline), `downtime-0` (`downtime-limit` 0), `threshold`
//! (`downtime-limit` 1 ms and `avail-switchover-bandwidth` 1000 B/s: a one-byte threshold),
//! `threshold-crawl` (that, and `max-bandwidth` 1000 B/s from the start) and `handover` (the
//! threshold, and the crawl only from shortly before the copy would have switched over: what
//! `handover migrate` does, through the same [`SwitchoverHold`]; here, with no controller, the
//! switchover is forecast at the end of the current pass).

use std::fmt::Write as _;
use std::time::Duration;

use handover_sources::qmp::SwitchoverHold;
use serde::Serialize;
use serde_json::{Value, json};

use crate::TestbedError;
use crate::load::HttpLoad;
use crate::metrics::{Spread, quantile};
use crate::migration::Observer;
use crate::now_ms;
use crate::run::Testbed;

/// The mechanisms, by name.
pub const MECHANISMS: [&str; 5] = ["none", "downtime-0", "threshold", "threshold-crawl", "handover"];

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct HoldSpec {
    /// Mechanisms, from [`MECHANISMS`].
    pub mechanisms: Vec<String>,
    /// Repetitions of each.
    pub repetitions: u32,
    /// Requests per second straight to vm-a (each rewrites `kib`).
    pub rate: f64,
    /// KiB each request rewrites.
    pub kib: u32,
    /// Copy bandwidth, MiB/s.
    pub bandwidth_mib: f64,
    /// How long the switchover is held from the end of the first pass, s.
    pub hold_s: f64,
}

/// One measured migration.
#[derive(Debug, Clone, Serialize)]
pub struct HoldRun {
    /// Mechanism.
    pub mechanism: String,
    /// Repetition.
    pub repetition: u32,
    /// QEMU's final status.
    pub status: String,
    /// The switchover came only after the release (for `none`: it came during the window).
    pub held: bool,
    /// From applying the mechanism to the switchover or the release, whichever came first, ms.
    pub held_ms: f64,
    /// QEMU's total time, ms.
    pub total_time_ms: f64,
    /// QEMU's downtime, ms.
    pub downtime_ms: f64,
    /// RAM sent, MiB.
    pub sent_mib: f64,
    /// RAM sent inside the blackout (`ram.downtime-bytes`), MiB.
    pub blackout_mib: f64,
    /// Passes (`dirty-sync-count`).
    pub passes: f64,
    /// Slowest request sent during the migration, ms.
    pub max_latency_ms: f64,
}

/// One mechanism over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct HoldSummary {
    /// Mechanism.
    pub mechanism: String,
    /// Runs.
    pub runs: usize,
    /// Runs whose switchover waited for the release.
    pub held: usize,
    /// Time held, ms.
    pub held_ms: Spread,
    /// Total time, s.
    pub total_time_s: Spread,
    /// Downtime, ms.
    pub downtime_ms: Spread,
    /// Sent, MiB.
    pub sent_mib: Spread,
    /// Sent inside the blackout, MiB.
    pub blackout_mib: Spread,
    /// Passes.
    pub passes: Spread,
}

/// Applies a mechanism; returns what releases it.
enum Applied {
    Nothing,
    Parameters(Value),
    Hold(SwitchoverHold),
}

async fn apply(observer: &Observer, mechanism: &str) -> Result<Applied, TestbedError> {
    let set = |parameters: Value| async move {
        observer
            .execute("migrate-set-parameters", Some(parameters))
            .await
            .map(|_| ())
    };
    Ok(match mechanism {
        "none" => Applied::Nothing,
        "downtime-0" => {
            set(json!({"downtime-limit": 0})).await?;
            Applied::Parameters(json!({"downtime-limit": 300}))
        }
        "threshold" => {
            set(json!({"downtime-limit": 1, "avail-switchover-bandwidth": 1000})).await?;
            Applied::Parameters(json!({"downtime-limit": 300, "avail-switchover-bandwidth": 0}))
        }
        "threshold-crawl" => {
            set(json!({"downtime-limit": 1, "avail-switchover-bandwidth": 1000, "max-bandwidth": 1000}))
                .await?;
            Applied::Parameters(json!({"downtime-limit": 300, "avail-switchover-bandwidth": 0}))
        }
        "handover" => Applied::Hold(
            SwitchoverHold::hold(observer.client())
                .await
                .map_err(|e| TestbedError::Failed(format!("hold: {e}")))?,
        ),
        other => {
            return Err(TestbedError::Failed(format!(
                "unknown mechanism {other:?} (known: {})",
                MECHANISMS.join(", ")
            )));
        }
    })
}

async fn release(observer: &Observer, applied: Applied, bandwidth: u64) -> Result<(), TestbedError> {
    match applied {
        Applied::Nothing => Ok(()),
        Applied::Parameters(mut parameters) => {
            parameters["max-bandwidth"] = json!(bandwidth);
            observer
                .execute("migrate-set-parameters", Some(parameters))
                .await
                .map(|_| ())
        }
        Applied::Hold(hold) => hold
            .release(observer.client())
            .await
            .map_err(|e| TestbedError::Failed(format!("release: {e}"))),
    }
}

/// One migration of vm-a with `mechanism` held for `spec.hold_s` from the end of the first pass.
pub async fn run_one(
    bed: &mut Testbed,
    spec: &HoldSpec,
    mechanism: &str,
    repetition: u32,
) -> Result<HoldRun, TestbedError> {
    let destination = bed.start_destination()?;
    let source = bed.observe_migrating().await?;
    let _destination_observer = Observer::connect(&destination.qemu.observer).await?;
    let vm_a = bed.vms[0].clone();
    let load = HttpLoad {
        target: std::net::SocketAddr::new(vm_a.ip.into(), 80),
        rate: spec.rate,
        kib: spec.kib,
        timeout: Duration::from_secs(20),
    }
    .start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    source
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await?;
    let bandwidth = (spec.bandwidth_mib * 1048576.0) as u64;
    source
        .execute(
            "migrate-set-parameters",
            Some(json!({
                "max-bandwidth": bandwidth,
                "downtime-limit": 300,
                "avail-switchover-bandwidth": 0,
            })),
        )
        .await?;
    let migrate_at = now_ms();
    source
        .execute("migrate", Some(json!({"uri": Testbed::migration_uri()})))
        .await?;
    let mut applied: Option<(Applied, f64)> = None;
    let mut applied_at = f64::NAN;
    let mut released_at = f64::NAN;
    let last = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = source.execute("query-migrate", None).await?;
        let name = status.get("status").and_then(Value::as_str).unwrap_or("none");
        if matches!(name, "completed" | "failed" | "cancelled") {
            break status;
        }
        let syncs = status
            .pointer("/ram/dirty-sync-count")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if applied.is_none() && released_at.is_nan() && name == "active" && syncs >= 2 {
            applied_at = now_ms();
            applied = Some((apply(&source, mechanism).await?, applied_at));
        }
        if let Some((Applied::Hold(hold), _)) = applied.as_mut() {
            let remaining = status.pointer("/ram/remaining").and_then(Value::as_u64);
            let mbps = status.pointer("/ram/mbps").and_then(Value::as_f64);
            // No controller here: forecast the switchover at the end of this pass.
            let bandwidth = mbps.map(|m| m * 1e6 / 8.0);
            let forecast = remaining
                .zip(bandwidth)
                .filter(|(_, b)| *b > 0.0)
                .map(|(r, b)| (r as f64 / b * 1000.0) as u64);
            hold.tighten(source.client(), remaining, bandwidth, Some(syncs), forecast)
                .await
                .map_err(|e| TestbedError::Failed(format!("tighten: {e}")))?;
        }
        if let Some((_, at)) = &applied
            && now_ms() - at >= spec.hold_s * 1000.0
        {
            let (what, _) = applied.take().expect("checked");
            release(&source, what, bandwidth).await?;
            released_at = now_ms();
        }
        if now_ms() - migrate_at > 120_000.0 {
            let _ = source.execute("migrate_cancel", None).await;
        }
    };
    if let Some((what, _)) = applied.take() {
        // The switchover came while held: restore the parameters for the next run.
        let _ = release(&source, what, bandwidth).await;
    }
    let requests = load.stop().await;
    let status = last
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    let completed = status == "completed";
    let stop = source.event_ms("STOP", None).unwrap_or(f64::NAN);
    let number = |pointer: &str| last.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let latencies: Vec<f64> = requests
        .iter()
        .filter(|r| r.start_ms >= migrate_at)
        .map(|r| r.latency_ms())
        .collect();
    let run = HoldRun {
        mechanism: mechanism.to_string(),
        repetition,
        status,
        held: stop.is_finite() && released_at.is_finite() && stop >= released_at,
        held_ms: if applied_at.is_nan() {
            0.0
        } else {
            // f64::min ignores a NaN: the switchover or the release, whichever came first.
            stop.min(released_at) - applied_at
        },
        total_time_ms: number("/total-time"),
        downtime_ms: number("/downtime"),
        sent_mib: number("/ram/transferred") / 1048576.0,
        blackout_mib: number("/ram/downtime-bytes") / 1048576.0,
        passes: number("/ram/dirty-sync-count"),
        max_latency_ms: quantile(&latencies, 1.0),
    };
    bed.after_migration(destination, completed);
    Ok(run)
}

/// Every mechanism, `spec.repetitions` times, interleaved.
pub async fn run(
    bed: &mut Testbed,
    spec: &HoldSpec,
    mut progress: impl FnMut(&str),
) -> Result<(Vec<HoldRun>, Vec<HoldSummary>), TestbedError> {
    let mut runs = Vec::new();
    for repetition in 1..=spec.repetitions {
        for mechanism in &spec.mechanisms {
            let run = run_one(bed, spec, mechanism, repetition).await?;
            progress(&format!(
                "{mechanism} #{repetition}: {} in {:.2} s, {}held {:.0} ms, {:.1} MiB in the blackout",
                run.status,
                run.total_time_ms / 1000.0,
                if run.held { "" } else { "NOT " },
                run.held_ms,
                run.blackout_mib
            ));
            runs.push(run);
        }
    }
    let summary = spec
        .mechanisms
        .iter()
        .map(|mechanism| {
            let of = |f: &dyn Fn(&HoldRun) -> f64| {
                Spread::of(
                    &runs
                        .iter()
                        .filter(|r| &r.mechanism == mechanism)
                        .map(f)
                        .collect::<Vec<_>>(),
                )
            };
            HoldSummary {
                mechanism: mechanism.clone(),
                runs: runs.iter().filter(|r| &r.mechanism == mechanism).count(),
                held: runs
                    .iter()
                    .filter(|r| &r.mechanism == mechanism && r.held)
                    .count(),
                held_ms: of(&|r| r.held_ms),
                total_time_s: of(&|r| r.total_time_ms / 1000.0),
                downtime_ms: of(&|r| r.downtime_ms),
                sent_mib: of(&|r| r.sent_mib),
                blackout_mib: of(&|r| r.blackout_mib),
                passes: of(&|r| r.passes),
            }
        })
        .collect();
    Ok((runs, summary))
}

/// The table.
pub fn markdown(spec: &HoldSpec, summary: &[HoldSummary]) -> String {
    let cell = |s: &Spread, digits: usize| {
        if !s.median.is_finite() {
            "–".to_string()
        } else if (s.max - s.min).abs() < f64::EPSILON {
            format!("{:.*}", digits, s.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                digits, s.median, digits, s.min, digits, s.max
            )
        }
    };
    let mut out = format!(
        "Holding vm-a's switchover for {} s from the end of its first pass, {} requests/s of {} KiB straight to it, copy at {} MiB/s; medians (range) over {} runs each.\n\n\
         | mechanism | runs | switchover waited | held ms | total time s | downtime ms | sent MiB | sent in the blackout MiB | passes |\n|---|---|---|---|---|---|---|---|---|\n",
        spec.hold_s, spec.rate, spec.kib, spec.bandwidth_mib, spec.repetitions
    );
    for s in summary {
        let _ = writeln!(
            out,
            "| {} | {} | {} of {} | {} | {} | {} | {} | {} | {} |",
            s.mechanism,
            s.runs,
            s.held,
            s.runs,
            cell(&s.held_ms, 0),
            cell(&s.total_time_s, 2),
            cell(&s.downtime_ms, 0),
            cell(&s.sent_mib, 0),
            cell(&s.blackout_mib, 1),
            cell(&s.passes, 0),
        );
    }
    out
}

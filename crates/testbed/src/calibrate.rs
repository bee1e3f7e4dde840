//! Calibrating the simulator on the testbed: QEMU's `calc-dirty-rate` on the guest at several
//! request rates and windows gives the background dirty rate and the pages a request dirties
//! (page-sampling mode with the most samples QEMU allows: its dirty-bitmap mode reports 0 under TCG
//! here, and sampling sees only pages whose content changed); idle migrations give the non-zero memory, setup time and copy throughput. The
//! simulator, given those, predicts each benchmark point; the prediction is set beside the measured
//! medians.

use std::time::Duration;

use handover_sim::experiment::run_one;
use handover_sim::memory::HotSet;
use handover_sim::policy::Policy as SimPolicy;
use handover_sim::scenario;
use serde::Serialize;
use serde_json::{Value, json};

use crate::TestbedError;
use crate::balancer::Policy;
use crate::bench::PointSummary;
use crate::load::HttpLoad;
use crate::migration::Settings;
use crate::run::{RunSpec, Testbed};

/// One `calc-dirty-rate` measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DirtySample {
    /// Requests per second to the guest.
    pub rate: f64,
    /// Measurement window, s.
    pub window_s: f64,
    /// QEMU's dirty rate, MiB/s.
    pub dirty_mib_s: f64,
}

/// An idle migration of the guest.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMigration {
    /// Cap, MiB/s.
    pub cap_mib: f64,
    /// Total time, ms.
    pub total_ms: f64,
    /// Setup time, ms.
    pub setup_ms: f64,
    /// Sent, MiB.
    pub transferred_mib: f64,
}

/// What the testbed's guest is, in the simulator's terms.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// The buffer requests rewrite (the hot set), MiB.
    pub buffer_mib: u32,
    /// KiB each request rewrites.
    pub kib: u32,
    /// Every dirty-rate measurement.
    pub samples: Vec<DirtySample>,
    /// Dirtying with no load, MiB/s (mean of the idle samples).
    pub background_mib_s: f64,
    /// Pages a request dirties, fitted over the loaded samples.
    pub pages_per_request: f64,
    /// Root-mean-square error of that fit, MiB/s.
    pub fit_rms_mib_s: f64,
    /// Idle migrations.
    pub idle: Vec<IdleMigration>,
    /// Non-zero share of RAM (what an idle migration sends).
    pub nonzero: f64,
    /// Setup time, ms.
    pub setup_ms: f64,
    /// Copy throughput with no effective cap, MiB/s.
    pub link_mib_s: f64,
}

impl Calibration {
    /// The dirty rate the model expects at `rate` requests/s over a `window_s` window, MiB/s.
    pub fn model_dirty(&self, rate: f64, window_s: f64, pages_per_request: f64) -> f64 {
        let pages = f64::from(self.buffer_mib) * 256.0;
        let hot = HotSet::new(pages as u64, 0.0);
        self.background_mib_s + hot.distinct(rate * pages_per_request * window_s) / 256.0 / window_s
    }
}

/// Measures the guest (vm-a of `bed`): dirty rates at `rates`, idle migrations at `caps`.
pub async fn measure(
    bed: &mut Testbed,
    kib: u32,
    rates: &[f64],
    windows_s: &[u64],
    caps_mib: &[f64],
) -> Result<Calibration, TestbedError> {
    let vm = bed.vms[0].clone();
    let mut samples = Vec::new();
    for rate in rates {
        let load = HttpLoad {
            target: std::net::SocketAddr::new(vm.ip.into(), 80),
            rate: *rate,
            kib,
            timeout: Duration::from_secs(20),
        }
        .start();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for window in windows_s {
            let observer = bed.observe_migrating().await?;
            observer
                .execute(
                    "calc-dirty-rate",
                    Some(json!({"calc-time": window, "mode": "page-sampling", "sample-pages": 16384})),
                )
                .await?;
            let dirty = loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let reply = observer.execute("query-dirty-rate", None).await?;
                if reply.get("status").and_then(Value::as_str) == Some("measured") {
                    break reply
                        .get("dirty-rate")
                        .and_then(Value::as_f64)
                        .unwrap_or(f64::NAN);
                }
            };
            samples.push(DirtySample {
                rate: *rate,
                window_s: *window as f64,
                dirty_mib_s: dirty,
            });
        }
        let records = load.stop().await;
        let failed = records.iter().filter(|r| !r.ok()).count();
        if failed > 0 {
            return Err(TestbedError::Failed(format!(
                "{failed} of {} requests failed at {rate} requests/s: the guest cannot sustain it",
                records.len()
            )));
        }
    }
    let mut idle = Vec::new();
    for cap in caps_mib {
        let spec = RunSpec {
            policy: Policy::named("unaware").expect("known policy"),
            rate: 0.0,
            kib,
            settings: Settings {
                max_bandwidth: (cap * 1048576.0) as u64,
                downtime_limit_ms: 300,
                timeout_s: 60.0,
            },
            echo_connections: 0,
            warmup: Duration::from_secs(1),
            tail: Duration::from_secs(1),
            repetition: 1,
        };
        let run = bed.run(&spec).await?;
        let m = &run.migration;
        idle.push(IdleMigration {
            cap_mib: *cap,
            total_ms: m.total_time_ms.unwrap_or(f64::NAN),
            setup_ms: m.setup_time_ms.unwrap_or(f64::NAN),
            transferred_mib: m.transferred_bytes.unwrap_or(f64::NAN) / 1048576.0,
        });
    }
    Ok(fit(
        bed.vms[0].memory_mib,
        bed.vms[0].buffer_mib,
        kib,
        samples,
        idle,
    ))
}

/// Fits the model to the measurements.
pub fn fit(
    memory_mib: u32,
    buffer_mib: u32,
    kib: u32,
    samples: Vec<DirtySample>,
    idle: Vec<IdleMigration>,
) -> Calibration {
    let idle_samples: Vec<f64> = samples
        .iter()
        .filter(|s| s.rate == 0.0)
        .map(|s| s.dirty_mib_s)
        .collect();
    let background = if idle_samples.is_empty() {
        0.0
    } else {
        idle_samples.iter().sum::<f64>() / idle_samples.len() as f64
    };
    let smallest_idle = idle
        .iter()
        .min_by(|a, b| a.transferred_mib.total_cmp(&b.transferred_mib))
        .cloned();
    let nonzero = smallest_idle.as_ref().map_or(0.5, |m| {
        (m.transferred_mib / f64::from(memory_mib)).clamp(0.01, 1.0)
    });
    let setup_ms = idle.iter().map(|m| m.setup_ms).fold(f64::NAN, f64::min);
    // The uncapped idle migration gives the copy's throughput.
    let link_mib_s = idle
        .iter()
        .max_by(|a, b| a.cap_mib.total_cmp(&b.cap_mib))
        .map_or(f64::NAN, |m| {
            m.transferred_mib / ((m.total_ms - m.setup_ms).max(1.0) / 1000.0)
        });
    let mut calibration = Calibration {
        memory_mib,
        buffer_mib,
        kib,
        samples,
        background_mib_s: background,
        pages_per_request: f64::from(kib) / 4.0,
        fit_rms_mib_s: f64::NAN,
        idle,
        nonzero,
        setup_ms,
        link_mib_s,
    };
    // Pages per request: a grid search from a tenth to twice what a request writes.
    let loaded: Vec<&DirtySample> = calibration.samples.iter().filter(|s| s.rate > 0.0).collect();
    if !loaded.is_empty() {
        let nominal = f64::from(kib) / 4.0;
        let rms = |k: f64| {
            (loaded
                .iter()
                .map(|s| (calibration.model_dirty(s.rate, s.window_s, k) - s.dirty_mib_s).powi(2))
                .sum::<f64>()
                / loaded.len() as f64)
                .sqrt()
        };
        let best = (1..=200)
            .map(|i| nominal * f64::from(i) / 100.0)
            .min_by(|a, b| rms(*a).total_cmp(&rms(*b)))
            .unwrap_or(nominal);
        let error = rms(best);
        calibration.pages_per_request = best;
        calibration.fit_rms_mib_s = error;
    }
    calibration
}

/// The simulator's prediction for one benchmark point and policy.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Requests per second.
    pub rate: f64,
    /// Cap, MiB/s.
    pub max_bandwidth_mib: f64,
    /// Policy (as in the benchmark).
    pub policy: String,
    /// Measured median total time, s.
    pub measured_s: f64,
    /// Measured range, s.
    pub measured_range_s: (f64, f64),
    /// Predicted total time, s.
    pub predicted_s: f64,
    /// Measured median passes.
    pub measured_passes: f64,
    /// Predicted passes.
    pub predicted_passes: f64,
    /// Whether the prediction completed within the timeout.
    pub predicted_converged: bool,
    /// (predicted − measured) / measured.
    pub error: f64,
}

/// The scenario (simulator TOML) of the testbed at one point.
pub fn scenario_text(c: &Calibration, rate: f64, cap_mib: f64, timeout_s: f64) -> String {
    format!(
        r#"name = "testbed at {rate} requests/s, {cap_mib} MiB/s"
fidelity = "flow"
[vm]
ram = "{memory}MiB"
nonzero = {nonzero}
hot_set = "{buffer}MiB"
zipf = 0.0
pages_per_request = {pages}
background_dirty = "{background}KiB"
[migration]
link = "{link}KiB"
max_bandwidth = "{cap}KiB"
downtime_limit = "300ms"
setup_time = "{setup}ms"
device_time = "5ms"
timeout = "{timeout_s}s"
[traffic]
mode = "l7"
request_rate = {rate}
[backends]
count = 3
workers = 4
service_time = "20ms"
[[policies]]
name = "unaware"
aware = false
[[policies]]
name = "drain"
target = 0.0
[[policies]]
name = "reduce-0.25"
target = 0.25
"#,
        memory = c.memory_mib,
        nonzero = c.nonzero.max(f64::from(c.buffer_mib) / f64::from(c.memory_mib)),
        buffer = c.buffer_mib,
        pages = c.pages_per_request,
        background = (c.background_mib_s * 1024.0).round() as u64,
        link = (c.link_mib_s.max(cap_mib.min(c.link_mib_s)) * 1024.0).round() as u64,
        cap = (cap_mib * 1024.0).round() as u64,
        setup = c.setup_ms.max(0.0).round() as u64,
    )
}

/// Predicts every measured (point, policy): HAProxy as the unaware policy, drain-ramp as drain
/// (they differ only after the migration).
pub fn predict(
    c: &Calibration,
    measured: &[PointSummary],
    timeout_s: f64,
) -> Result<Vec<Prediction>, TestbedError> {
    let mut out = Vec::new();
    for point in measured {
        let sim_policy = match point.policy.as_str() {
            "unaware" | "haproxy" => "unaware",
            "drain" | "drain-ramp" => "drain",
            other => other,
        };
        let text = scenario_text(c, point.rate, point.max_bandwidth_mib, timeout_s);
        let scenario = scenario::parse(&text)
            .map_err(|e| TestbedError::Failed(format!("calibrated scenario: {e}\n{text}")))?
            .remove(0)
            .scenario;
        let Some(spec) = scenario.policies.iter().find(|p| p.name == sim_policy) else {
            continue;
        };
        let result = run_one(&scenario, &SimPolicy::new(spec), 1);
        let predicted = result.migration.total_time;
        out.push(Prediction {
            rate: point.rate,
            max_bandwidth_mib: point.max_bandwidth_mib,
            policy: point.policy.clone(),
            measured_s: point.total_time_s.median,
            measured_range_s: (point.total_time_s.min, point.total_time_s.max),
            predicted_s: predicted,
            measured_passes: point.passes.median,
            predicted_passes: f64::from(result.migration.passes),
            predicted_converged: result.migration.converged,
            error: (predicted - point.total_time_s.median) / point.total_time_s.median,
        });
    }
    Ok(out)
}

/// The calibration and the comparison as markdown.
pub fn markdown(c: &Calibration, predictions: &[Prediction]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Guest: {} MiB RAM, {} MiB buffer, {} KiB rewritten per request.\n\n\
         | requests/s to the guest | window s | dirty rate MiB/s (QEMU) | model MiB/s |\n|---|---|---|---|",
        c.memory_mib, c.buffer_mib, c.kib
    );
    for s in &c.samples {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} |",
            s.rate,
            s.window_s,
            s.dirty_mib_s,
            c.model_dirty(s.rate, s.window_s, c.pages_per_request)
        );
    }
    let _ = writeln!(
        out,
        "\nFit: background {:.2} MiB/s, {:.0} pages dirtied per request (a request writes {}), RMS error {:.2} MiB/s; \
         non-zero memory {:.0} % of RAM, setup {:.0} ms, uncapped copy {:.0} MiB/s.\n",
        c.background_mib_s,
        c.pages_per_request,
        c.kib / 4,
        c.fit_rms_mib_s,
        c.nonzero * 100.0,
        c.setup_ms,
        c.link_mib_s
    );
    let _ = writeln!(
        out,
        "| req/s | cap MiB/s | policy | measured total s (median, range) | simulated s | error | measured passes | simulated passes |\n|---|---|---|---|---|---|---|---|"
    );
    for p in predictions {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} ({:.2}–{:.2}) | {:.2}{} | {:+.0} % | {:.0} | {:.0} |",
            p.rate,
            p.max_bandwidth_mib,
            p.policy,
            p.measured_s,
            p.measured_range_s.0,
            p.measured_range_s.1,
            p.predicted_s,
            if p.predicted_converged { "" } else { " (cancelled)" },
            p.error * 100.0,
            p.measured_passes,
            p.predicted_passes
        );
    }
    out
}

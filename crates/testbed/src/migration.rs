//! One QEMU live migration, driven either by `handover migrate` (announced: prepare, wait for
//! drained, migrate, completed) or directly over QMP (unannounced, as an unaware balancer sees it),
//! and observed through a second QMP monitor on each side: QEMU's own figures (`query-migrate`) and
//! the timestamps of its events (setup, STOP on the source, RESUME on the destination, completed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_core::model::Endpoint;
use handover_sources::qmp::{Event, QmpClient};
use serde::Serialize;
use serde_json::{Value, json};

use crate::TestbedError;

/// The testbed's own QMP connection to one QEMU: commands, and every event with QEMU's timestamp.
#[derive(Debug)]
pub struct Observer {
    client: QmpClient,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Observer {
    /// Connects to an observer monitor.
    pub async fn connect(path: &Path) -> Result<Self, TestbedError> {
        let (client, mut events) =
            QmpClient::connect(&Endpoint::Unix(path.to_path_buf()), Duration::from_secs(10))
                .await
                .map_err(|e| TestbedError::Failed(format!("QMP {}: {e}", path.display())))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(event);
            }
        });
        Ok(Self { client, events: seen })
    }

    /// The QMP client itself.
    pub fn client(&self) -> &QmpClient {
        &self.client
    }

    /// Runs a QMP command.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, TestbedError> {
        self.client
            .execute(command, arguments)
            .await
            .map_err(|e| TestbedError::Failed(format!("QMP {command}: {e}")))
    }

    /// QEMU's time (ms since the epoch) of the first event `name` (with `status`, for MIGRATION).
    pub fn event_ms(&self, name: &str, status: Option<&str>) -> Option<f64> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| {
                e.name == name
                    && status.is_none_or(|s| e.data.get("status").and_then(Value::as_str) == Some(s))
            })
            .and_then(|e| e.timestamp_us)
            .map(|us| us as f64 / 1000.0)
    }

    async fn status(&self) -> Result<Value, TestbedError> {
        self.execute("query-migrate", None).await
    }
}

/// How the migration is run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Copy bandwidth limit, bytes/s.
    pub max_bandwidth: u64,
    /// QEMU's downtime limit, ms.
    pub downtime_limit_ms: u64,
    /// Cancel a migration that has not completed after this long.
    pub timeout_s: f64,
}

/// What a migration did, in QEMU's figures and timestamps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationResult {
    /// Final `query-migrate` status (`completed`, `failed`, `cancelled`).
    pub status: String,
    /// Whether the testbed cancelled it at the timeout.
    pub timed_out: bool,
    /// `total-time`, ms.
    pub total_time_ms: Option<f64>,
    /// `downtime`, ms.
    pub downtime_ms: Option<f64>,
    /// `setup-time`, ms.
    pub setup_time_ms: Option<f64>,
    /// `ram.transferred`, bytes.
    pub transferred_bytes: Option<f64>,
    /// `ram.dirty-sync-count` (passes).
    pub passes: Option<f64>,
    /// Highest `ram.dirty-pages-rate` seen while it ran, pages/s.
    pub max_dirty_pages_rate: f64,
    /// When the announcement began (`handover migrate` started), ms.
    pub announced_ms: Option<f64>,
    /// MIGRATION `setup` on the source, ms.
    pub setup_ms: Option<f64>,
    /// STOP on the source (the blackout begins), ms.
    pub stop_ms: Option<f64>,
    /// RESUME on the destination (the blackout ends), ms.
    pub resume_ms: Option<f64>,
    /// MIGRATION `completed` (or the end) on the source, ms.
    pub end_ms: Option<f64>,
    /// `handover migrate`'s exit status and output, when it drove the migration.
    pub driver: Option<(Option<i32>, String)>,
}

/// Runs the migration of the QEMU behind `source` to `uri`; with `handover`, announced through
/// `handover migrate` (binary, control URL, VM, source QMP path for handover, drained threshold).
pub async fn migrate(
    source: &Observer,
    destination: &Observer,
    uri: &str,
    settings: &Settings,
    handover: Option<(&Path, &str, &str, PathBuf, u64)>,
) -> Result<MigrationResult, TestbedError> {
    let mut result = MigrationResult::default();
    source
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await?;
    let mut driver = None;
    if let Some((binary, control, vm, qmp, threshold)) = handover {
        result.announced_ms = Some(crate::now_ms());
        let child = tokio::process::Command::new(binary)
            .arg("migrate")
            .arg(vm)
            .arg("--qmp")
            .arg(&qmp)
            .args(["--uri", uri])
            .args(["--max-bandwidth", &settings.max_bandwidth.to_string()])
            .args(["--downtime-limit", &format!("{}ms", settings.downtime_limit_ms)])
            .args(["--drain-timeout", "5s", "--threshold", &threshold.to_string()])
            .args(["--control", control])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TestbedError::Failed(format!("cannot run handover migrate: {e}")))?;
        driver = Some(tokio::spawn(child.wait_with_output()));
    } else {
        source
            .execute(
                "migrate-set-parameters",
                Some(json!({"max-bandwidth": settings.max_bandwidth, "downtime-limit": settings.downtime_limit_ms})),
            )
            .await?;
        source.execute("migrate", Some(json!({"uri": uri}))).await?;
    }

    // Follow it until it ends; cancel it at the timeout.
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(settings.timeout_s);
    let last = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = source.status().await?;
        if let Some(rate) = status.pointer("/ram/dirty-pages-rate").and_then(Value::as_f64) {
            result.max_dirty_pages_rate = result.max_dirty_pages_rate.max(rate);
        }
        let name = status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_string();
        // Until this run's migration began, a final status is the last one's: a QEMU that was
        // the destination of the previous run reports its incoming migration as completed (and
        // `handover migrate` may still be draining or probing).
        let begun = source.event_ms("MIGRATION", Some("setup")).is_some();
        if !begun && driver.as_ref().is_some_and(|d| d.is_finished()) {
            let output = match driver.take() {
                Some(d) => d.await.ok().and_then(Result::ok),
                None => None,
            };
            return Err(TestbedError::Failed(format!(
                "handover migrate exited before the migration began: {}",
                output.map_or_else(String::new, |o| format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ))
            )));
        }
        if matches!(name.as_str(), "completed" | "failed" | "cancelled") && begun {
            break status;
        }
        // `handover migrate` may still be draining (status none) when nothing started yet.
        if started.elapsed() > timeout && !result.timed_out {
            result.timed_out = true;
            let _ = source.execute("migrate_cancel", None).await;
        }
        if started.elapsed() > timeout + Duration::from_secs(30) {
            return Err(TestbedError::Failed(format!(
                "the migration did not end 30 s after it was cancelled (status {name})"
            )));
        }
    };
    if let Some(driver) = driver {
        let output = tokio::time::timeout(Duration::from_secs(30), driver)
            .await
            .map_err(|_| {
                TestbedError::Failed("handover migrate did not exit after the migration ended".into())
            })?
            .map_err(|e| TestbedError::Failed(format!("handover migrate: {e}")))?
            .map_err(|e| TestbedError::Failed(format!("handover migrate: {e}")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        result.driver = Some((output.status.code(), text));
    }
    let number = |pointer: &str| last.pointer(pointer).and_then(Value::as_f64);
    result.status = last
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    result.total_time_ms = number("/total-time");
    result.downtime_ms = number("/downtime");
    result.setup_time_ms = number("/setup-time");
    result.transferred_bytes = number("/ram/transferred");
    result.passes = number("/ram/dirty-sync-count");
    result.setup_ms = source.event_ms("MIGRATION", Some("setup"));
    result.stop_ms = source.event_ms("STOP", None);
    result.end_ms = source
        .event_ms("MIGRATION", Some(result.status.as_str()))
        .or_else(|| Some(crate::now_ms()));
    // The destination resumes a moment after the source reports completion.
    for _ in 0..50 {
        if result.status != "completed" || destination.event_ms("RESUME", None).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    result.resume_ms = destination.event_ms("RESUME", None);
    Ok(result)
}

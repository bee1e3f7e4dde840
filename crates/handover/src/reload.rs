//! Reloading a running node's configuration (`SIGHUP`, `POST /v1/reload`, `handover reload`):
//! re-read the file, validate the whole of it, refuse what cannot change without a restart, then
//! apply only the difference — listeners bound before anything changes (a port in use, a bad
//! certificate: nothing changes), pools changed in place, the coordinator's view of the pools
//! replaced. Every VM keeps its phase, ramp and deadline; open connections keep going; what was
//! removed drains for the grace.
//!
//! Reloads run one at a time. Each is counted in `handover_config_reloads_total{outcome}`, and the
//! last error is kept for `/metrics` and the log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use handover_control::Coordinator;
use handover_control::api::BackendsRefusal;
use handover_core::api::BackendChange;
use handover_core::config::Config;
use handover_core::phase::{Phase, PhaseCommand};
use handover_proxy::pools::PoolsChange;
use handover_proxy::workers::ListenersChange;
use handover_proxy::{DataPlane, Pools};
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{error, info};

use crate::api_backends::Overlay;
use crate::check::load;

/// What a reload changed (the reply of `POST /v1/reload`).
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// `applied`, or `unchanged` when the file says what already runs.
    pub outcome: &'static str,
    /// Listeners added, removed, rebound, changed, and every listener's address now.
    pub listeners: ListenersChange,
    /// Pools and backends added, removed, changed.
    pub pools: PoolsChange,
    /// How long what was removed keeps its connections.
    pub drain_grace_ms: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Outcomes {
    applied: u64,
    unchanged: u64,
    failed: u64,
    /// The last failure's message, and when it happened.
    last_error: Option<(String, SystemTime)>,
    /// When the last reload succeeded.
    last_success: Option<SystemTime>,
}

/// What a node runs: its file, the backends set through the API, and the two combined.
#[derive(Debug)]
struct Current {
    /// The configuration file as last read.
    file: Config,
    /// Backends set or removed through the API.
    overlay: Overlay,
    /// The file with the overlay applied: what runs.
    effective: Config,
}

/// Reloads one node, and applies the backends set through the API.
pub struct Reloader {
    /// The configuration file (none: the node cannot reload, e.g. `handover demo`).
    path: Option<PathBuf>,
    /// Where the overlay is kept (beside the state file; none: not kept across restarts).
    overlay_path: Option<PathBuf>,
    /// What runs now; held for the whole of a reload or an API change, so they run one at a time.
    current: tokio::sync::Mutex<Current>,
    pools: Arc<Pools>,
    data_plane: Arc<DataPlane>,
    coordinator: Arc<Coordinator>,
    /// How long removed backends, pools and listeners keep their connections.
    grace: Duration,
    /// Rewritten with the listeners' addresses after every reload that changes them.
    ready_file: Mutex<Option<PathBuf>>,
    /// The control API's address (for the ready file).
    control: std::net::SocketAddr,
    outcomes: Mutex<Outcomes>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader of the node started from `file` (read from `path`) with `overlay` applied.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: Option<PathBuf>,
        file: Config,
        overlay: Overlay,
        pools: Arc<Pools>,
        data_plane: Arc<DataPlane>,
        coordinator: Arc<Coordinator>,
        grace: Duration,
        control: std::net::SocketAddr,
    ) -> Arc<Self> {
        let overlay_path = file.state_file.as_deref().map(Overlay::path_for);
        let effective = overlay.apply(&file);
        Arc::new(Self {
            path,
            overlay_path,
            current: tokio::sync::Mutex::new(Current {
                file,
                overlay,
                effective,
            }),
            pools,
            data_plane,
            coordinator,
            grace,
            ready_file: Mutex::new(None),
            control,
            outcomes: Mutex::new(Outcomes::default()),
        })
    }

    /// Keeps `path` (the `--ready-file`) up to date with the listeners' addresses.
    pub fn set_ready_file(&self, path: Option<PathBuf>) {
        *self.ready_file.lock() = path;
    }

    /// Re-reads the file and applies the difference; `Err` says why nothing changed.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let result = self.reload_inner().await;
        let mut outcomes = self.outcomes.lock();
        match &result {
            Ok(report) => {
                if report.outcome == "unchanged" {
                    outcomes.unchanged += 1;
                } else {
                    outcomes.applied += 1;
                }
                outcomes.last_success = Some(SystemTime::now());
                info!(
                    outcome = report.outcome,
                    listeners = ?report.listeners,
                    pools = ?report.pools,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                outcomes.failed += 1;
                outcomes.last_error = Some((e.clone(), SystemTime::now()));
                error!(error = %e, "configuration reload refused; nothing changed");
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<ReloadReport, String> {
        let Some(path) = &self.path else {
            return Err("this node was not started from a configuration file".into());
        };
        let mut current = self.current.lock().await;
        let file = match load(path) {
            Ok(Ok(config)) => config,
            Ok(Err(errors)) => return Err(errors),
            Err(e) => return Err(format!("{e:#}")),
        };
        restart_only(&current.file, &file)?;
        let next = current.overlay.apply(&file);
        if let Some(pool) = next.pools.iter().find(|p| p.backends.is_empty()) {
            return Err(format!(
                "pools.{}: no backend left once the backends removed through the API are taken out (a pool needs at least one)",
                pool.name
            ));
        }
        if next == current.effective {
            current.file = file;
            return Ok(ReloadReport {
                outcome: "unchanged",
                listeners: ListenersChange {
                    addresses: self.data_plane.addresses(),
                    ..ListenersChange::default()
                },
                pools: PoolsChange::default(),
                drain_grace_ms: millis(self.grace),
            });
        }
        // Everything that can fail comes first: binding new listeners, loading certificates.
        let plan = self
            .data_plane
            .plan(&next)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let pools = self.apply_pools(&next);
        let listeners = self.data_plane.reconfigure(plan, self.grace);
        current.file = file;
        current.effective = next;
        drop(current);
        if let Some(path) = self.ready_file.lock().clone()
            && let Err(e) = crate::run::write_ready_file(&path, self.control, &listeners.addresses)
        {
            error!(error = %e, "cannot rewrite the ready file after the reload");
        }
        Ok(ReloadReport {
            outcome: "applied",
            listeners,
            pools,
            drain_grace_ms: millis(self.grace),
        })
    }

    /// The pools and the coordinator take `next`; every VM that is not stable keeps its command
    /// (a backend added to it starts with it).
    fn apply_pools(&self, next: &Config) -> PoolsChange {
        let now = self.coordinator.clock().now_ms();
        let phases: Vec<(handover_core::model::VmId, PhaseCommand)> = self
            .coordinator
            .vm_states()
            .into_iter()
            .filter(|(_, state)| state.phase != Phase::Stable)
            .map(|(vm, state)| (vm, state.command_at(now)))
            .collect();
        let change = self.pools.reconfigure(next, self.grace, &phases);
        self.coordinator.reconfigure(next);
        change
    }

    /// Applies one backend set or removed through the API: checked against what runs, made
    /// durable (when the node has a state file), then applied to the pools. Nothing changes when
    /// it is refused.
    pub async fn set_backend(&self, change: BackendChange) -> Result<PoolsChange, BackendsRefusal> {
        self.change_backend(change, false)
            .await
            .map(Option::unwrap_or_default)
    }

    /// Applies a backend change the fleet hands this node (as [`Self::set_backend`]); `None` when
    /// the node already has exactly that change (its own, seen again through etcd, or one applied
    /// before a restart), which is not written again.
    pub async fn apply_from_fleet(
        &self,
        change: BackendChange,
    ) -> Result<Option<PoolsChange>, BackendsRefusal> {
        self.change_backend(change, true).await
    }

    async fn change_backend(
        &self,
        change: BackendChange,
        skip_known: bool,
    ) -> Result<Option<PoolsChange>, BackendsRefusal> {
        let refuse = |status: u16, field: &'static str, message: String| BackendsRefusal {
            status,
            message,
            field,
        };
        let mut current = self.current.lock().await;
        if skip_known && current.overlay.changes.contains(&change) {
            return Ok(None);
        }
        let Some(pool) = current.effective.pools.iter().find(|p| p.name == change.pool) else {
            return Err(refuse(
                404,
                "pool",
                format!("no pool named {:?} on this node", change.pool),
            ));
        };
        let present = pool.backends.iter().any(|b| b.address == change.address);
        if change.backend.is_none() {
            if !present {
                return Err(refuse(
                    404,
                    "address",
                    format!("pool {} has no backend {}", change.pool, change.address),
                ));
            }
            if pool.backends.len() == 1 {
                return Err(refuse(
                    400,
                    "address",
                    format!(
                        "{} is the last backend of pool {} (a pool needs at least one)",
                        change.address, change.pool
                    ),
                ));
            }
        }
        let mut overlay = current.overlay.clone();
        overlay.record(change.clone());
        let next = overlay.apply(&current.file);
        if let Some(path) = &self.overlay_path {
            let (to_save, at) = (overlay.clone(), path.clone());
            tokio::task::spawn_blocking(move || to_save.save(&at))
                .await
                .map_err(|e| std::io::Error::other(format!("the writer stopped: {e}")))
                .and_then(|written| written)
                .map_err(|e| {
                    error!(file = %path.display(), error = %e, pool = %change.pool, address = %change.address, "cannot keep a backend change; refused, nothing changed");
                    refuse(
                        503,
                        "address",
                        format!(
                            "the backend change was not applied: cannot write {}: {e}",
                            path.display()
                        ),
                    )
                })?;
        }
        let applied = self.apply_pools(&next);
        info!(pool = %change.pool, address = %change.address, backend = ?change.backend, "backend changed through the API");
        current.overlay = overlay;
        current.effective = next;
        Ok(Some(applied))
    }

    /// Where backend changes made through the API are written before the reply (beside the state
    /// file); `None` when the node has no state file and they last until the process ends.
    pub fn backends_file(&self) -> Option<&std::path::Path> {
        self.overlay_path.as_deref()
    }

    /// `handover_config_reloads_total{outcome}` and the last error.
    pub fn metrics(&self, out: &mut String) {
        let outcomes = self.outcomes.lock();
        out.push_str("# HELP handover_config_reloads_total Configuration reloads, by outcome (failed: nothing changed).\n");
        out.push_str("# TYPE handover_config_reloads_total counter\n");
        for (outcome, count) in [
            ("applied", outcomes.applied),
            ("unchanged", outcomes.unchanged),
            ("failed", outcomes.failed),
        ] {
            out.push_str(&format!(
                "handover_config_reloads_total{{outcome=\"{outcome}\"}} {count}\n"
            ));
        }
        out.push_str("# HELP handover_config_last_reload_failed Whether the last reload was refused (1) or succeeded (0).\n");
        out.push_str("# TYPE handover_config_last_reload_failed gauge\n");
        let failed_last = match (&outcomes.last_error, outcomes.last_success) {
            (Some((_, failed)), Some(ok)) => *failed > ok,
            (Some(_), None) => true,
            _ => false,
        };
        out.push_str(&format!(
            "handover_config_last_reload_failed {}\n",
            u8::from(failed_last)
        ));
        if let Some((error, at)) = &outcomes.last_error {
            out.push_str("# HELP handover_config_last_reload_error_info The last refused reload's error.\n");
            out.push_str("# TYPE handover_config_last_reload_error_info gauge\n");
            let seconds = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            out.push_str(&format!(
                "handover_config_last_reload_error_info{{error=\"{}\",at=\"{seconds}\"}} 1\n",
                escape_label(error)
            ));
        }
    }
}

/// The sections a reload cannot change: it refuses the whole file when one differs.
fn restart_only(current: &Config, next: &Config) -> Result<(), String> {
    let mut differ = Vec::new();
    if current.control.bind != next.control.bind {
        differ.push("control.bind");
    }
    if current.control.token != next.control.token {
        differ.push("control.token");
    }
    if current.migration != next.migration {
        differ.push("migration");
    }
    if current.state_file != next.state_file {
        differ.push("state.file");
    }
    if current.peers != next.peers {
        differ.push("peers");
    }
    if current.fleet != next.fleet {
        differ.push("fleet");
    }
    if current.haproxy != next.haproxy {
        differ.push("haproxy");
    }
    if current.nginx != next.nginx {
        differ.push("nginx");
    }
    if current.qmp != next.qmp {
        differ.push("qmp");
    }
    if current.libvirt != next.libvirt {
        differ.push("libvirt");
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} cannot change without a restart (a reload changes listeners and pools only); \
             restart handover, or use `handover run --upgrade-from` to keep the listening sockets",
            differ.join(", ")
        ))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reloads on every SIGHUP until cancelled.
pub async fn on_sighup(reloader: Arc<Reloader>, cancel: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload through the API (handover reload)");
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let _ = reloader.reload().await;
            }
        }
    }
}

/// `handover reload`: asks the node to reload; exit 0 when it did (or nothing changed), 1 when
/// the file was refused (the errors are printed) or the node cannot be reached.
pub async fn reload_command(control: &crate::cli::ControlArgs, json: bool) -> anyhow::Result<u8> {
    let client = handover_drivers::ControlClient::new(
        &control.control,
        control.token.clone(),
        Duration::from_secs(30),
    );
    match client
        .post::<_, serde_json::Value>("/v1/reload", &serde_json::json!({}))
        .await
    {
        Ok((_, reply)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                print!("{}", describe(&reply));
            }
            Ok(crate::EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(crate::EXIT_ERROR)
        }
    }
}

/// The reply as lines a person reads.
fn describe(reply: &serde_json::Value) -> String {
    let mut out = format!("reload: {}\n", reply["outcome"].as_str().unwrap_or("applied"));
    let lists = [
        ("listeners added", &reply["listeners"]["added"]),
        ("listeners removed", &reply["listeners"]["removed"]),
        ("listeners rebound", &reply["listeners"]["rebound"]),
        ("listeners changed", &reply["listeners"]["changed"]),
        ("pools added", &reply["pools"]["pools_added"]),
        ("pools removed", &reply["pools"]["pools_removed"]),
        ("pools changed", &reply["pools"]["pools_changed"]),
        ("backends added", &reply["pools"]["backends_added"]),
        ("backends removed", &reply["pools"]["backends_removed"]),
        ("backends re-weighted", &reply["pools"]["backends_reweighted"]),
    ];
    for (label, list) in lists {
        let items: Vec<&str> = list
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if !items.is_empty() {
            out.push_str(&format!("  {label}: {}\n", items.join(", ")));
        }
    }
    if let Some(addresses) = reply["listeners"]["addresses"].as_array() {
        for pair in addresses {
            if let (Some(name), Some(address)) = (pair[0].as_str(), pair[1].as_str()) {
                out.push_str(&format!("  listener {name}: {address}\n"));
            }
        }
    }
    out
}

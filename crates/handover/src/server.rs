//! Starting and stopping a whole handover node: pools, listeners, the coordinator with its
//! balancers (the embedded proxy and the peers), and the control API. `handover run` and
//! `handover demo` both start a node through here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use handover_control::api::{ApiState, router};
use handover_control::{BalancerSlot, Clock, Coordinator};
use handover_core::config::Config;
use handover_drivers::PeerBalancer;
use handover_drivers::haproxy::HaproxyBalancer;
use handover_drivers::nginx::NginxBalancer;
use handover_proxy::access_log::AccessLogs;
use handover_proxy::{DataPlane, EmbeddedBalancer, Listeners, Pools};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::state_file;

/// How often the proxy recomputes weights that move with time.
const TICK: Duration = Duration::from_millis(100);

/// A running node.
pub struct Running {
    /// Actual address of the control API.
    pub control: SocketAddr,
    /// Actual address of each listener.
    pub listeners: Vec<(String, SocketAddr)>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    data_plane: Arc<DataPlane>,
    /// Reloads the configuration file (`SIGHUP`, `POST /v1/reload`), when the node has one.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// This node in its fleet (`[fleet]`).
    fleet: Option<Arc<handover_fleet::FleetNode>>,
}

/// Reopens every access log file on SIGUSR1 (logrotate's `postrotate`).
async fn reopen_access_logs_on_sigusr1(logs: Arc<AccessLogs>, cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1: access logs will not be reopened on it");
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = usr1.recv() => {
                info!("SIGUSR1: reopening the access logs");
                logs.reopen();
            }
        }
    }
}

/// `handover_access_log_dropped_total{listener}`: lines dropped because the writer fell behind.
fn access_log_metrics(logs: &AccessLogs, out: &mut String) {
    let dropped = logs.dropped();
    if dropped.is_empty() {
        return;
    }
    out.push_str(
        "# HELP handover_access_log_dropped_total Access log lines dropped because the writer fell behind.\n",
    );
    out.push_str("# TYPE handover_access_log_dropped_total counter\n");
    for (listener, count) in dropped {
        out.push_str(&format!(
            "handover_access_log_dropped_total{{listener=\"{listener}\"}} {count}\n"
        ));
    }
}

/// Data-plane workers when none are asked for: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a node is started beyond its configuration.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Data-plane threads.
    pub workers: usize,
    /// The configuration file, re-read on `SIGHUP` and `POST /v1/reload` (none: no reloads).
    pub config_path: Option<std::path::PathBuf>,
    /// How long backends, pools and listeners a reload removed keep their connections.
    pub drain_grace: Duration,
}

/// Default of `--drain-grace`.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);

/// [`start_with`] without a configuration file (no reloads).
pub async fn start(config: &Config, workers: usize) -> anyhow::Result<Running> {
    start_with(
        config,
        NodeOptions {
            workers,
            config_path: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
        },
    )
    .await
}

/// Binds everything first (a port in use stops the start with nothing half-running), then serves:
/// the data plane on `workers` threads of its own, the control plane on the caller's runtime.
pub async fn start_with(file: &Config, options: NodeOptions) -> anyhow::Result<Running> {
    let workers = options.workers;
    // Backends set or removed through the API before a restart apply on top of the file.
    let overlay = file
        .state_file
        .as_deref()
        .map(|state| crate::api_backends::Overlay::load(&crate::api_backends::Overlay::path_for(state)))
        .unwrap_or_default();
    let effective = overlay.apply(file);
    let config = &effective;
    let pools = Pools::new(config);
    // Certificates, keys and CA files first: a bad one stops the start before anything listens.
    handover_proxy::tls::check(config)?;
    let listeners = Listeners::bind(config, workers)?;
    let control_listener = handover_proxy::listeners::bind_tcp(config.control.bind)
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("control.bind: cannot listen on {}", config.control.bind))?;
    let control = control_listener.local_addr()?;

    // The embedded proxy is a balancer when it has pools; a node with none is a pure migration
    // module in front of other balancers.
    let mut slots = Vec::new();
    if !config.pools.is_empty() {
        slots.push(BalancerSlot {
            balancer: Arc::new(EmbeddedBalancer::new("embedded", pools.clone())),
            timeout: Duration::from_secs(5),
            is_peer: false,
        });
    }
    let haproxies: Vec<_> = config.haproxy.iter().cloned().map(HaproxyBalancer::new).collect();
    for driver in &haproxies {
        slots.push(BalancerSlot {
            balancer: driver.clone(),
            timeout: driver.call_timeout(),
            is_peer: false,
        });
    }
    let nginxes: Vec<_> = config.nginx.iter().cloned().map(NginxBalancer::new).collect();
    for driver in &nginxes {
        slots.push(BalancerSlot {
            balancer: driver.clone(),
            timeout: driver.call_timeout(),
            is_peer: false,
        });
    }
    for peer in &config.peers {
        slots.push(BalancerSlot {
            balancer: Arc::new(PeerBalancer::new(peer)),
            timeout: PeerBalancer::timeout(peer),
            is_peer: true,
        });
    }
    let coordinator = Coordinator::new(config, slots, Clock::new());
    // Restore phases, ramps and health before anything serves.
    if let Some(saved) = config.state_file.as_deref().and_then(state_file::load) {
        state_file::restore(saved, &pools, &coordinator);
    }

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    // In a fleet: apply every migration in progress before the listeners accept.
    let fleet = match &config.fleet {
        Some(fleet) => Some(
            crate::fleet::join(
                config,
                fleet,
                format!("http://{control}"),
                &coordinator,
                &cancel,
                &tasks,
            )
            .await?,
        ),
        None => None,
    };
    let addresses = listeners.addresses();
    let data_plane = Arc::new(
        DataPlane::start(listeners, &pools, &cancel, &tasks)
            .context("cannot start the data-plane workers")?,
    );
    handover_proxy::health::spawn_checks(&pools, &cancel, &tasks);
    for driver in haproxies {
        tasks.spawn(driver.run(cancel.clone()));
    }
    for driver in nginxes {
        tasks.spawn(driver.run(cancel.clone()));
    }
    if let Some(path) = &config.state_file {
        tasks.spawn(state_file::run_writer(
            path.clone(),
            pools.clone(),
            coordinator.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(pools.clone().run_ticker(TICK, cancel.clone()));
    tasks.spawn(coordinator.clone().run(cancel.clone()));
    crate::sources::start_qmp_watchers(config, &coordinator, &cancel, &tasks);
    crate::sources::start_libvirt_watchers(config, &coordinator, &cancel, &tasks);

    let access_logs = data_plane.access_logs();
    tasks.spawn(reopen_access_logs_on_sigusr1(access_logs.clone(), cancel.clone()));
    let mut api = ApiState::new(coordinator.clone(), config.control.token.clone())
        .with_metrics(move |out| access_log_metrics(&access_logs, out));
    let reloader = crate::reload::Reloader::new(
        options.config_path.clone(),
        file.clone(),
        overlay,
        pools.clone(),
        data_plane.clone(),
        coordinator.clone(),
        options.drain_grace,
        control,
    );
    let backends = reloader.clone();
    api = api.with_backends(handover_control::api::BackendsHook(Arc::new(move |change| {
        let backends = backends.clone();
        Box::pin(async move {
            backends
                .set_backend(change)
                .await
                .map(|change| serde_json::to_value(change).unwrap_or_default())
        })
    })));
    let reloader = options.config_path.is_some().then_some(reloader);
    if let Some(reloader) = &reloader {
        tasks.spawn(crate::reload::on_sighup(reloader.clone(), cancel.clone()));
        let metrics = reloader.clone();
        let hook = reloader.clone();
        api =
            api.with_metrics(move |out| metrics.metrics(out))
                .with_reload(handover_control::api::ReloadHook(Arc::new(move || {
                    let hook = hook.clone();
                    Box::pin(async move {
                        hook.reload()
                            .await
                            .map(|report| serde_json::to_value(report).unwrap_or_default())
                    })
                })));
    }
    if let Some(fleet) = fleet.clone() {
        api = api.with_metrics(move |out| out.push_str(&fleet.metrics()));
    }
    let app = router(Arc::new(api));
    let api_cancel = cancel.clone();
    tasks.spawn(async move {
        let server = axum::serve(control_listener, app)
            .with_graceful_shutdown(async move { api_cancel.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    info!(%control, "control API listening");
    for (name, address) in &addresses {
        info!(listener = %name, %address, workers = data_plane.workers(), "listening");
    }
    Ok(Running {
        control,
        listeners: addresses,
        cancel,
        tasks,
        data_plane,
        reloader,
        fleet,
    })
}

impl Running {
    /// The actual address of a listener.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops accepting, lets open connections finish for up to `grace`, then closes the rest.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(fleet) = &self.fleet {
            // Leave at once: the fleet stops expecting this node's acknowledgements.
            fleet.leave().await;
        }
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            info!(?grace, "grace period over; closing the connections still open");
        }
        let data_plane = self.data_plane;
        let _ = tokio::task::spawn_blocking(move || data_plane.stop()).await;
    }
}

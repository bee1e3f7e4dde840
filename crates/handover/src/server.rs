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

use crate::state_file::{self, StateFile};

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
    /// Fires once a new process took this one's sockets over (`--upgrade-socket`).
    pub upgraded: CancellationToken,
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
#[derive(Debug)]
pub struct NodeOptions {
    /// Data-plane threads.
    pub workers: usize,
    /// The configuration file, re-read on `SIGHUP` and `POST /v1/reload` (none: no reloads).
    pub config_path: Option<std::path::PathBuf>,
    /// How long backends, pools and listeners a reload removed keep their connections.
    pub drain_grace: Duration,
    /// Sockets taken over from a running handover (`--upgrade-from`).
    pub inherited: Option<crate::upgrade::Inherited>,
    /// Where to answer a later binary upgrade (`--upgrade-socket`).
    pub upgrade_socket: Option<std::path::PathBuf>,
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
            inherited: None,
            upgrade_socket: None,
        },
    )
    .await
}

/// Binds everything first (a port in use stops the start with nothing half-running), then serves:
/// the data plane on `workers` threads of its own, the control plane on the caller's runtime.
pub async fn start_with(file: &Config, mut options: NodeOptions) -> anyhow::Result<Running> {
    let mut inherited = options.inherited.take();
    // The sockets taken over were made for the old process's workers: serve each of them.
    let workers = match inherited.as_ref().and_then(|i| i.workers()) {
        Some(old) if old != options.workers => {
            info!(
                workers = old,
                asked = options.workers,
                "taking the worker count of the process upgraded from (one per socket handed over)"
            );
            old
        }
        _ => options.workers,
    };
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
    let listeners = match inherited.as_mut() {
        None => Listeners::bind(config, workers)?,
        Some(inherited) => {
            let mut bound = Vec::with_capacity(config.listeners.len());
            for (index, listener) in config.listeners.iter().enumerate() {
                match inherited.take(&listener.name, listener.bind) {
                    Some(taken) => {
                        info!(listener = %listener.name, address = %taken.address, "listener taken over from the running process");
                        bound.push(handover_proxy::listeners::BoundListener {
                            config: listener.clone(),
                            address: taken.address,
                            sockets: taken.sockets,
                        });
                    }
                    None => bound.push(handover_proxy::listeners::bind_listener(
                        index, listener, workers,
                    )?),
                }
            }
            Listeners { bound, workers }
        }
    };
    let control_listener = match inherited.take().map(|i| i.control) {
        Some((bind, socket)) if bind == config.control.bind => {
            socket.set_nonblocking(true)?;
            socket
        }
        _ => handover_proxy::listeners::bind_tcp(config.control.bind)
            .with_context(|| format!("control.bind: cannot listen on {}", config.control.bind))?,
    };
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
    // Restore phases, ramps and health before anything serves; from here on every change is saved
    // before it is acknowledged.
    let state = config.state_file.as_ref().map(|path| {
        if let Some(saved) = state_file::load(path) {
            state_file::restore(saved, &pools, &coordinator);
        }
        let file = StateFile::new(path.clone(), pools.clone(), &coordinator);
        coordinator.set_durable(file.clone());
        file
    });
    // What the peers know and what the driven balancers hold, then this node's own balancers
    // told the current phases: all before serving.
    coordinator.rejoin().await;
    if let Some(file) = &state
        && let Err(e) = file.save().await
    {
        tracing::error!(error = %e, "state.file: cannot be written; notices are refused until it can be");
    }

    // Everything is bound: what is left of the descriptor limit, less the control plane's
    // reserve, is the data plane's connection budget.
    match handover_proxy::descriptors::configure() {
        Ok(limits) => info!(
            limit = limits.limit,
            open = limits.open,
            reserve = limits.reserve,
            connections = limits.connections,
            "descriptor budget"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read the descriptor limit; no connection budget"),
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
    let writer = state.map(|file| {
        let writer = crate::handoff::StateWriter::new(file, &cancel, &tasks);
        writer.start();
        writer
    });
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
            let change = backends.set_backend(change).await?;
            let mut local = serde_json::to_value(change).unwrap_or_default();
            // Where the change was written before this reply (null: nowhere, no state file).
            local["written_to"] = serde_json::json!(backends.backends_file());
            Ok(local)
        })
    })));
    // In a fleet: backends set through any node's API, applied here too.
    if let (Some(node), Some(fleet_config)) = (&fleet, &config.fleet) {
        crate::fleet::share_backends(node, fleet_config, reloader.clone(), &cancel, &tasks).await;
    }
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
    let control_server =
        crate::handoff::ControlServer::new(config.control.bind, control_listener, app, &cancel, &tasks);
    control_server.start().context("cannot serve the control API")?;
    let upgraded = CancellationToken::new();
    if let Some(path) = options.upgrade_socket.clone() {
        let handoff = Arc::new(crate::handoff::Handoff {
            control: control_server.clone(),
            writer: writer.clone(),
            data_plane: data_plane.clone(),
            upgraded: upgraded.clone(),
        });
        tasks.spawn(crate::handoff::serve_upgrades(path, handoff, cancel.clone()));
    }
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
        upgraded,
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

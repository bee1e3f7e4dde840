//! The data plane's threads: one single-threaded tokio runtime per worker, thread per core, each
//! accepting on its own `SO_REUSEPORT` socket of every listener and serving what it accepted to
//! the end. A connection never moves between threads, so nothing on its path is shared with
//! another worker but the pool snapshots (read lock-free) and the per-backend counters.
//!
//! The control plane (API, coordinator, health checks, the pools' ticker) runs elsewhere, on the
//! caller's runtime; it reaches the data plane through the pools, and through one command queue
//! per worker by which a reload starts and stops accept loops ([`DataPlane::reconfigure`]).
//!
//! Each listener runs as a *generation*: a route and a socket per worker. A reload that changes a
//! listener starts a new generation (on the same sockets when its bind is unchanged, on sockets
//! bound beforehand when it changed) before it stops the old one, so no connection is refused; the
//! old generation's connections keep their route and are told to finish (HTTP: close when idle)
//! only once the grace has passed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use handover_core::config::{Config, ListenerConfig};
use handover_core::model::ListenerKind;

use crate::access_log::AccessLogs;
use crate::http::{self, HttpRoute};
use crate::listeners::{BindError, BoundListener, Listeners, bind_listener};
use crate::pools::Pools;
use crate::shutdown::Shutdown;
use crate::tcp::{self, TcpRoute};
use crate::tls::TlsServer;

/// The running worker threads.
#[derive(Debug)]
pub struct DataPlane {
    /// One per worker (taken when they are stopped).
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Each worker's command queue.
    queues: Vec<mpsc::UnboundedSender<Command>>,
    /// The listeners' access logs.
    access_logs: Arc<AccessLogs>,
    /// Ends the workers' runtimes, closing whatever is still open.
    stop: CancellationToken,
    /// The listeners being served, in configuration order.
    listeners: Mutex<Vec<Generation>>,
    /// The pools the routes read.
    pools: Arc<Pools>,
    /// Source of generation ids.
    next_id: std::sync::atomic::AtomicU64,
    /// Where the old generations' "finish now" messages are scheduled.
    tasks: TaskTracker,
    /// The node's stop signal (a scheduled message is dropped when it fires).
    cancel: CancellationToken,
}

/// One listener as it runs: its configuration and a duplicate of each worker's socket (so a later
/// generation can take them over, and `handover run --upgrade-from` can be handed them).
#[derive(Debug)]
struct Generation {
    id: u64,
    config: ListenerConfig,
    /// The configuration of its pool that the route was built from (a change to its protocol or
    /// TLS builds a new route).
    pool_signature: PoolSignature,
    address: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

/// The parts of a pool's configuration fixed in a route when it is built.
#[derive(Debug, Clone, PartialEq)]
struct PoolSignature {
    protocol: handover_core::config::UpstreamProtocol,
    tls: Option<handover_core::config::UpstreamTls>,
}

impl PoolSignature {
    fn of(config: &Config, pool: &str) -> Self {
        let pool = config.pools.iter().find(|p| p.name == pool);
        Self {
            protocol: pool.map_or(handover_core::config::UpstreamProtocol::Http1, |p| p.protocol),
            tls: pool.and_then(|p| p.tls.clone()),
        }
    }
}

/// What a worker is told.
enum Command {
    /// Accept on `socket` for route `route`, as generation `id`.
    Serve {
        id: u64,
        route: Route,
        socket: std::net::TcpListener,
    },
    /// Stop accepting for generation `id` (its socket closes; its connections go on).
    Stop { id: u64 },
    /// Tell generation `id`'s connections to finish (HTTP: close when idle, or after the response
    /// in progress).
    Finish { id: u64 },
}

#[derive(Clone)]
enum Route {
    Tcp(Arc<TcpRoute>),
    Http(Arc<HttpRoute>),
}

/// A listener's new form, bound (or given its old sockets) and checked, not serving yet.
#[derive(Debug)]
struct Planned {
    config: ListenerConfig,
    pool_signature: PoolSignature,
    tls: Option<TlsServer>,
    /// `None`: the generation of the same name goes on as it is.
    start: Option<PlannedSockets>,
}

#[derive(Debug)]
struct PlannedSockets {
    address: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

/// Everything a reload needs bound and loaded before the pools change; dropping it closes what it
/// bound.
#[derive(Debug)]
pub struct ListenerPlan {
    planned: Vec<Planned>,
}

/// What a reload changed in the listeners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenersChange {
    /// Listeners added.
    pub added: Vec<String>,
    /// Listeners removed (they stop accepting; their connections finish).
    pub removed: Vec<String>,
    /// Listeners whose bind changed (the new address listens before the old one closes).
    pub rebound: Vec<String>,
    /// Listeners whose other settings, or whose pool's protocol or TLS, changed.
    pub changed: Vec<String>,
    /// The actual address of every listener after the reload.
    pub addresses: Vec<(String, SocketAddr)>,
}

/// Why a reload's listeners cannot be set up (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ListenerPlanError {
    /// A new or rebound listener cannot listen.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A listener's TLS certificates or a pool's TLS settings cannot be loaded.
    #[error("{0}")]
    Tls(String),
    /// A socket could not be duplicated for a new generation.
    #[error("listeners[{index}] ({name:?}): {source}")]
    Socket {
        /// Index in the configuration.
        index: usize,
        /// Listener name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl DataPlane {
    /// Starts one thread per socket of the listeners (they were bound with the worker count).
    /// Accept loops end when `cancel` fires; every connection task is tracked by `tasks`, so the
    /// caller can wait for them before [`DataPlane::stop`].
    pub fn start(
        listeners: Listeners,
        pools: &Arc<Pools>,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> io::Result<Self> {
        let workers = listeners.workers.max(1);
        let access_logs = Arc::new(AccessLogs::open(listeners.bound.iter().filter_map(|l| {
            l.config
                .access_log
                .as_ref()
                .map(|log| (l.config.name.as_str(), log))
        }))?);
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(workers);
        let mut queues = Vec::with_capacity(workers);
        for index in 0..workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (sender, receiver) = mpsc::unbounded_channel();
            queues.push(sender);
            let (cancel, tasks, stop) = (cancel.clone(), tasks.clone(), stop.clone());
            let pools = pools.clone();
            let thread = std::thread::Builder::new()
                .name(format!("handover-worker-{index}"))
                .spawn(move || runtime.block_on(serve(receiver, pools, cancel, tasks, stop)))?;
            threads.push(thread);
        }
        let plane = Self {
            threads: Mutex::new(threads),
            queues,
            access_logs,
            stop,
            listeners: Mutex::new(Vec::new()),
            pools: pools.clone(),
            next_id: std::sync::atomic::AtomicU64::new(0),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        let mut generations = Vec::with_capacity(listeners.bound.len());
        for (index, listener) in listeners.bound.into_iter().enumerate() {
            let BoundListener {
                config,
                address,
                sockets,
            } = listener;
            let tls = TlsServer::for_listener(index, &config).map_err(io::Error::other)?;
            let signature = PoolSignature {
                protocol: pools
                    .pool(&config.pool)
                    .map_or(handover_core::config::UpstreamProtocol::Http1, |p| {
                        p.config().protocol
                    }),
                tls: pools.pool(&config.pool).and_then(|p| p.config().tls.clone()),
            };
            generations.push(plane.launch(config, signature, tls, address, sockets)?);
        }
        *plane.listeners.lock() = generations;
        Ok(plane)
    }

    /// Builds a listener's route and starts its accept loop on every worker.
    fn launch(
        &self,
        config: ListenerConfig,
        pool_signature: PoolSignature,
        tls: Option<TlsServer>,
        address: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
    ) -> io::Result<Generation> {
        let route = self.route(&config, tls)?;
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut kept = Vec::with_capacity(sockets.len());
        for (worker, socket) in sockets.into_iter().enumerate() {
            let served = socket.try_clone()?;
            kept.push(socket);
            let queue = &self.queues[worker % self.queues.len()];
            let _ = queue.send(Command::Serve {
                id,
                route: route.clone(),
                socket: served,
            });
        }
        Ok(Generation {
            id,
            config,
            pool_signature,
            address,
            sockets: kept,
        })
    }

    fn route(&self, config: &ListenerConfig, tls: Option<TlsServer>) -> io::Result<Route> {
        let pool = self.pools.pool(&config.pool).ok_or_else(|| {
            io::Error::other(format!(
                "listener {}: pool {:?} is not configured",
                config.name, config.pool
            ))
        })?;
        let access_log = match &config.access_log {
            Some(log) => Some(self.access_logs.ensure(&config.name, log)?),
            None => None,
        };
        Ok(match config.kind {
            ListenerKind::Tcp => Route::Tcp(Arc::new(TcpRoute {
                listener: config.name.clone(),
                pool,
                idle_timeout: config.idle_timeout,
                access_log,
            })),
            ListenerKind::Http => {
                if let Some(tls) = &tls {
                    tls.watch(config);
                }
                let pool_config = pool.config();
                let upstream_tls =
                    crate::tls::upstream::client_config(&pool_config).map_err(io::Error::other)?;
                if pool_config.tls.as_ref().is_some_and(|t| t.insecure) {
                    warn!(listener = %config.name, pool = %pool.name, "TLS to the backends is not verified (insecure = true): anyone on the path can pose as a backend");
                }
                let upstream_h2 = pool_config.protocol == handover_core::config::UpstreamProtocol::H2;
                Route::Http(Arc::new(HttpRoute {
                    listener: config.name.clone(),
                    pool,
                    response_timeout: config.response_timeout,
                    client_timeout: config.client_timeout,
                    access_log,
                    tls,
                    http2: config.http2,
                    websocket: config.websocket,
                    upstream_tls,
                    upstream_h2,
                    h2_idle_timeout: config.idle_timeout,
                }))
            }
        })
    }

    /// First half of a reload: binds every listener that is new or whose bind changed, loads
    /// their TLS certificates, and checks the pools' TLS settings. Nothing serves yet and nothing
    /// running changes; an error leaves everything as it was.
    pub fn plan(&self, config: &Config) -> Result<ListenerPlan, ListenerPlanError> {
        crate::tls::check(config).map_err(|e| ListenerPlanError::Tls(e.to_string()))?;
        let workers = self.queues.len();
        let running = self.listeners.lock();
        let mut planned = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let signature = PoolSignature::of(config, &listener.pool);
            let same_name = running.iter().find(|g| g.config.name == listener.name);
            let tls = if listener.kind == ListenerKind::Http {
                TlsServer::for_listener(index, listener).map_err(|e| ListenerPlanError::Tls(e.to_string()))?
            } else {
                None
            };
            if let Some(old) = same_name
                && old.config == *listener
                && old.pool_signature == signature
            {
                planned.push(Planned {
                    config: listener.clone(),
                    pool_signature: signature,
                    tls,
                    start: None,
                });
                continue;
            }
            // The same configured bind as a running listener (this one, or one renamed): take
            // over its sockets. Otherwise bind anew (a port in use is an error, nothing changes).
            let reuse = same_name.filter(|g| g.config.bind == listener.bind).or_else(|| {
                running
                    .iter()
                    .find(|g| g.config.bind == listener.bind && listener.bind.port() != 0)
            });
            let sockets = match reuse {
                Some(old) => PlannedSockets {
                    address: old.address,
                    sockets: old
                        .sockets
                        .iter()
                        .map(std::net::TcpListener::try_clone)
                        .collect::<io::Result<_>>()
                        .map_err(|source| ListenerPlanError::Socket {
                            index,
                            name: listener.name.clone(),
                            source,
                        })?,
                },
                None => {
                    let bound = bind_listener(index, listener, workers)?;
                    PlannedSockets {
                        address: bound.address,
                        sockets: bound.sockets,
                    }
                }
            };
            planned.push(Planned {
                config: listener.clone(),
                pool_signature: signature,
                tls,
                start: Some(sockets),
            });
        }
        Ok(ListenerPlan { planned })
    }

    /// Second half of a reload, after the pools were reconfigured: starts the new generations,
    /// then stops the ones they replace (and those of removed listeners); the connections of a
    /// stopped generation are told to finish once `grace` has passed.
    pub fn reconfigure(&self, plan: ListenerPlan, grace: Duration) -> ListenersChange {
        let mut change = ListenersChange::default();
        let mut running = self.listeners.lock();
        let mut old: Vec<Generation> = std::mem::take(&mut *running);
        let mut next = Vec::with_capacity(plan.planned.len());
        let mut retired = Vec::new();
        for planned in plan.planned {
            let position = old.iter().position(|g| g.config.name == planned.config.name);
            let Some(sockets) = planned.start else {
                let generation = old.remove(position.expect("planned as unchanged: it runs"));
                next.push(generation);
                continue;
            };
            match position.map(|p| &old[p]) {
                None => change.added.push(planned.config.name.clone()),
                Some(previous) if previous.config.bind != planned.config.bind => {
                    change.rebound.push(planned.config.name.clone())
                }
                Some(_) => change.changed.push(planned.config.name.clone()),
            }
            match self.launch(
                planned.config.clone(),
                planned.pool_signature,
                planned.tls,
                sockets.address,
                sockets.sockets,
            ) {
                Ok(generation) => {
                    info!(listener = %generation.config.name, address = %generation.address, "listener serving");
                    next.push(generation);
                }
                Err(e) => {
                    // Only a pool that vanished or a file that changed between plan and now gets
                    // here; the listener keeps its previous generation if it had one.
                    error!(listener = %planned.config.name, error = %e, "cannot start the listener's new form; the previous one (if any) goes on");
                    if let Some(p) = position {
                        next.push(old.remove(p));
                    }
                }
            }
        }
        // What is left of the old generations is replaced or removed: stop accepting now.
        for generation in old {
            if !next.iter().any(|g| g.config.name == generation.config.name) {
                change.removed.push(generation.config.name.clone());
                info!(listener = %generation.config.name, address = %generation.address, ?grace, "listener removed; its connections finish");
            }
            for queue in &self.queues {
                let _ = queue.send(Command::Stop { id: generation.id });
            }
            retired.push(generation.id);
            // Its sockets close here unless a new generation took them over.
            drop(generation.sockets);
        }
        change.addresses = next.iter().map(|g| (g.config.name.clone(), g.address)).collect();
        *running = next;
        drop(running);
        if !retired.is_empty() {
            let queues = self.queues.clone();
            let cancel = self.cancel.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {}
                    _ = cancel.cancelled() => return,
                }
                for id in retired {
                    for queue in &queues {
                        let _ = queue.send(Command::Finish { id });
                    }
                }
            });
        }
        change
    }

    /// The actual address of each listener.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .lock()
            .iter()
            .map(|g| (g.config.name.clone(), g.address))
            .collect()
    }

    /// Duplicates of every listener's sockets, by listener name and bind (for a binary upgrade).
    pub fn sockets(&self) -> io::Result<Vec<(ListenerConfig, SocketAddr, Vec<std::net::TcpListener>)>> {
        self.listeners
            .lock()
            .iter()
            .map(|g| {
                let sockets = g
                    .sockets
                    .iter()
                    .map(std::net::TcpListener::try_clone)
                    .collect::<io::Result<Vec<_>>>()?;
                Ok((g.config.clone(), g.address, sockets))
            })
            .collect()
    }

    /// Stops accepting on every listener (their sockets close once no one else holds them); open
    /// connections go on.
    pub fn stop_accepting(&self) {
        let mut running = self.listeners.lock();
        for generation in running.drain(..) {
            for queue in &self.queues {
                let _ = queue.send(Command::Stop { id: generation.id });
            }
        }
    }

    /// The listeners' access logs (to reopen them, and for their dropped-line counts).
    pub fn access_logs(&self) -> Arc<AccessLogs> {
        self.access_logs.clone()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.queues.len()
    }

    /// Ends every worker: connections still open are closed. Blocks until the threads exit.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// One generation's accept loop on a worker.
struct Loop {
    cancel: CancellationToken,
    shutdown: Arc<Shutdown>,
}

/// One worker: the accept loops its queue asks for, and its sweep (client connections past their
/// deadline, idle upstream connections no longer usable); on cancel, its HTTP connections are told
/// to finish; then idle until stopped (its connections finish meanwhile).
async fn serve(
    mut queue: mpsc::UnboundedReceiver<Command>,
    pools: Arc<Pools>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut loops: HashMap<u64, Loop> = HashMap::new();
    // Every generation's shutdown signal whose connections may still wait on it.
    let mut signals: Vec<Arc<Shutdown>> = Vec::new();
    let mut ticks = tokio::time::interval(crate::shutdown::SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = queue.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Serve { id, route, socket } => {
                        let listener = match TcpListener::from_std(socket) {
                            Ok(listener) => listener,
                            Err(e) => {
                                error!(error = %e, "cannot serve a listener socket");
                                continue;
                            }
                        };
                        let token = cancel.child_token();
                        let shutdown = Shutdown::new();
                        match route {
                            Route::Tcp(route) => {
                                tasks.spawn(tcp::serve(listener, route, token.clone(), tasks.clone()));
                            }
                            Route::Http(route) => {
                                tasks.spawn(http::serve(
                                    listener,
                                    route,
                                    token.clone(),
                                    tasks.clone(),
                                    shutdown.clone(),
                                ));
                            }
                        }
                        signals.push(shutdown.clone());
                        loops.insert(id, Loop { cancel: token, shutdown });
                    }
                    Command::Stop { id } => {
                        if let Some(running) = loops.get(&id) {
                            running.cancel.cancel();
                        }
                    }
                    Command::Finish { id } => {
                        if let Some(running) = loops.remove(&id) {
                            running.cancel.cancel();
                            running.shutdown.trigger();
                        }
                    }
                }
            }
            _ = ticks.tick() => {
                let now = Instant::now();
                for signal in &signals {
                    signal.expire(now);
                }
                // A finished generation's signal goes once no connection holds it.
                signals.retain(|s| Arc::strong_count(s) > 1);
                let generation_of = |uid: usize| pools.idle_generation_of(uid);
                http::upstream::sweep(now, generation_of);
                crate::h2::to_h2::sweep(generation_of);
            }
            _ = cancel.cancelled() => break,
        }
    }
    for signal in &signals {
        signal.trigger();
    }
    stop.cancelled().await;
}

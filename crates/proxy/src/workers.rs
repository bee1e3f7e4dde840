//! The data plane's threads: one single-threaded tokio runtime per worker, thread per core, each
//! accepting on its own `SO_REUSEPORT` socket of every listener and serving what it accepted to
//! the end. A connection never moves between threads, so nothing on its path is shared with
//! another worker but the pool snapshots (read lock-free) and the per-backend counters.
//!
//! The control plane (API, coordinator, health checks, the pools' ticker) runs elsewhere, on the
//! caller's runtime; it reaches the data plane only through the pools.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use handover_core::model::ListenerKind;

use crate::access_log::AccessLogs;
use crate::backend::BackendRuntime;
use crate::http::{self, HttpRoute};
use crate::listeners::Listeners;
use crate::pools::Pools;
use crate::shutdown::Shutdown;
use crate::tcp::{self, TcpRoute};
use crate::tls::TlsServer;

/// The running worker threads.
#[derive(Debug)]
pub struct DataPlane {
    /// One per worker.
    threads: Vec<JoinHandle<()>>,
    /// The listeners' access logs.
    access_logs: Arc<AccessLogs>,
    /// Ends the workers' runtimes, closing whatever is still open.
    stop: CancellationToken,
}

/// What one worker serves: a socket of each listener.
struct WorkerSockets {
    routes: Vec<(Route, std::net::TcpListener)>,
}

#[derive(Clone)]
enum Route {
    Tcp(Arc<TcpRoute>),
    Http(Arc<HttpRoute>),
}

impl DataPlane {
    /// Starts one thread per socket of the listeners (they were bound with the worker count).
    /// Accept loops end when `cancel` fires; every connection task is tracked by `tasks`, so the
    /// caller can wait for them before [`DataPlane::stop`].
    pub fn start(
        listeners: Listeners,
        pools: &Pools,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> io::Result<Self> {
        let workers = listeners.bound.iter().map(|l| l.sockets.len()).max().unwrap_or(0);
        let access_logs = Arc::new(AccessLogs::open(listeners.bound.iter().filter_map(|l| {
            l.config
                .access_log
                .as_ref()
                .map(|log| (l.config.name.as_str(), log))
        }))?);
        let mut per_worker: Vec<WorkerSockets> = (0..workers)
            .map(|_| WorkerSockets { routes: Vec::new() })
            .collect();
        for (index, listener) in listeners.bound.into_iter().enumerate() {
            let config = &listener.config;
            let pool = pools
                .pool(&config.pool)
                .expect("validated: every listener's pool exists");
            let route = match config.kind {
                ListenerKind::Tcp => Route::Tcp(Arc::new(TcpRoute {
                    listener: config.name.clone(),
                    pool,
                    idle_timeout: config.idle_timeout,
                    access_log: access_logs.of(&config.name),
                })),
                ListenerKind::Http => {
                    let tls = TlsServer::for_listener(index, config).map_err(io::Error::other)?;
                    if let Some(tls) = &tls {
                        tls.watch(config);
                    }
                    let upstream_tls =
                        crate::tls::upstream::client_config(&pool.config).map_err(io::Error::other)?;
                    if pool.config.tls.as_ref().is_some_and(|t| t.insecure) {
                        warn!(listener = %config.name, pool = %pool.config.name, "TLS to the backends is not verified (insecure = true): anyone on the path can pose as a backend");
                    }
                    let upstream_h2 = pool.config.protocol == handover_core::config::UpstreamProtocol::H2;
                    Route::Http(Arc::new(HttpRoute {
                        listener: config.name.clone(),
                        pool,
                        response_timeout: config.response_timeout,
                        client_timeout: config.client_timeout,
                        access_log: access_logs.of(&config.name),
                        tls,
                        http2: config.http2,
                        websocket: config.websocket,
                        upstream_tls,
                        upstream_h2,
                        h2_idle_timeout: config.idle_timeout,
                    }))
                }
            };
            for (worker, socket) in listener.sockets.into_iter().enumerate() {
                per_worker[worker].routes.push((route.clone(), socket));
            }
        }
        // Every backend by uid, for the sweep to know which idle connections are retired.
        let mut by_uid: Vec<Option<Arc<BackendRuntime>>> = Vec::new();
        for backend in pools.all().iter().flat_map(|pool| pool.backends.iter()) {
            if by_uid.len() <= backend.uid {
                by_uid.resize(backend.uid + 1, None);
            }
            by_uid[backend.uid] = Some(backend.clone());
        }
        let backends = Arc::new(by_uid);
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(workers);
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (cancel, tasks, stop) = (cancel.clone(), tasks.clone(), stop.clone());
            let backends = backends.clone();
            let thread = std::thread::Builder::new()
                .name(format!("handover-worker-{index}"))
                .spawn(move || runtime.block_on(serve(sockets, backends, cancel, tasks, stop)))?;
            threads.push(thread);
        }
        Ok(Self {
            threads,
            access_logs,
            stop,
        })
    }

    /// The listeners' access logs (to reopen them, and for their dropped-line counts).
    pub fn access_logs(&self) -> Arc<AccessLogs> {
        self.access_logs.clone()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Ends every worker: connections still open are closed. Blocks until the threads exit.
    pub fn stop(self) {
        self.stop.cancel();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// One worker: its accept loops and its sweep (client connections past their deadline, idle
/// upstream connections no longer usable); on cancel, its HTTP connections are told to finish;
/// then idle until stopped (its connections finish meanwhile).
async fn serve(
    sockets: WorkerSockets,
    backends: Arc<Vec<Option<Arc<BackendRuntime>>>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let shutdown = Shutdown::new();
    for (route, socket) in sockets.routes {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(e) => {
                error!(error = %e, "cannot serve a listener socket");
                continue;
            }
        };
        match route {
            Route::Tcp(route) => {
                tasks.spawn(tcp::serve(listener, route, cancel.clone(), tasks.clone()));
            }
            Route::Http(route) => {
                tasks.spawn(http::serve(
                    listener,
                    route,
                    cancel.clone(),
                    tasks.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    let sweep = async {
        let mut ticks = tokio::time::interval(crate::shutdown::SWEEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            shutdown.expire(now);
            let generation_of = |uid: usize| {
                backends
                    .get(uid)
                    .and_then(Option::as_ref)
                    .map(|backend| backend.idle_generation())
            };
            http::upstream::sweep(now, generation_of);
            crate::h2::to_h2::sweep(generation_of);
        }
    };
    tokio::select! {
        _ = sweep => {}
        _ = cancel.cancelled() => {}
    }
    shutdown.trigger();
    stop.cancelled().await;
}

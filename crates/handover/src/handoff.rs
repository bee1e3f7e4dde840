//! The running process's side of a binary upgrade (see [`crate::upgrade`] for the protocol): the
//! parts of a node that stop while the new process takes over and start again if it fails — the
//! control API's accept loop and the state file's writer — and the loop that answers upgrade
//! requests on `--upgrade-socket`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use handover_proxy::DataPlane;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::state_file::StateFile;

/// How long the old process waits for the new one to say it serves.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long in-flight control API calls may take to finish when the API stops for an upgrade.
const API_STOP: Duration = Duration::from_secs(5);

/// The control API's accept loop, stoppable and restartable on the same socket.
pub struct ControlServer {
    /// The configured bind (an upgrade hands the socket to a new process with the same one).
    pub bind: SocketAddr,
    /// The listening socket (a duplicate is served; this one stays for a restart).
    pub listener: std::net::TcpListener,
    app: axum::Router,
    cancel: CancellationToken,
    tasks: TaskTracker,
    serving: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl ControlServer {
    /// A server of `app` on `listener`, not serving yet.
    pub fn new(
        bind: SocketAddr,
        listener: std::net::TcpListener,
        app: axum::Router,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            bind,
            listener,
            app,
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            serving: Mutex::new(None),
        })
    }

    /// Accepts until the node stops or [`ControlServer::stop`].
    pub fn start(&self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener.try_clone()?)?;
        let token = self.cancel.child_token();
        let stop = token.clone();
        let app = self.app.clone();
        let handle = self.tasks.spawn(async move {
            let server = axum::serve(crate::control_listener::ControlListener::new(listener), app)
                .with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = server.await {
                error!(error = %e, "control API stopped");
            }
        });
        *self.serving.lock() = Some((token, handle));
        Ok(())
    }

    /// Stops accepting (calls then wait in the socket's backlog) and lets calls in progress end.
    pub async fn stop(&self) {
        let serving = self.serving.lock().take();
        if let Some((token, handle)) = serving {
            token.cancel();
            let _ = tokio::time::timeout(API_STOP, handle).await;
        }
    }
}

/// The state file's writer, stoppable (it saves once more as it stops) and restartable.
pub struct StateWriter {
    file: Arc<StateFile>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl StateWriter {
    /// A writer of `path`, not running yet.
    pub fn new(file: Arc<StateFile>, cancel: &CancellationToken, tasks: &TaskTracker) -> Arc<Self> {
        Arc::new(Self {
            file,
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            running: Mutex::new(None),
        })
    }

    /// Saves whenever the state changes, until the node stops or [`StateWriter::stop`].
    pub fn start(&self) {
        let token = self.cancel.child_token();
        let handle = self
            .tasks
            .spawn(crate::state_file::run_writer(self.file.clone(), token.clone()));
        *self.running.lock() = Some((token, handle));
    }

    /// Saves once more and stops writing.
    pub async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some((token, handle)) = running {
            token.cancel();
            let _ = handle.await;
        }
    }
}

/// What an upgrade hands over and pauses.
pub struct Handoff {
    /// The control API.
    pub control: Arc<ControlServer>,
    /// The state file's writer, if the node has one.
    pub writer: Option<Arc<StateWriter>>,
    /// The listeners.
    pub data_plane: Arc<DataPlane>,
    /// Set once a new process serves in this one's place.
    pub upgraded: CancellationToken,
}

/// Answers upgrade requests on `path` until one succeeds (then `handoff.upgraded` fires and this
/// process has stopped accepting) or the node stops.
pub async fn serve_upgrades(path: PathBuf, handoff: Arc<Handoff>, cancel: CancellationToken) {
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            error!(socket = %path.display(), error = %e, "cannot listen for binary upgrades");
            return;
        }
    };
    info!(socket = %path.display(), "listening for binary upgrades");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = cancel.cancelled() => return,
        };
        let stream = match accepted.and_then(|(s, _)| s.into_std()) {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "upgrade connection failed");
                continue;
            }
        };
        if handoff_once(stream, &handoff).await {
            handoff.upgraded.cancel();
            return;
        }
    }
}

/// One upgrade attempt; `true` when the new process serves.
async fn handoff_once(stream: std::os::unix::net::UnixStream, handoff: &Handoff) -> bool {
    let _ = stream.set_nonblocking(false);
    let (asked, mut stream) = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        (crate::upgrade::read_ask(&mut stream), stream)
    })
    .await
    .expect("not cancelled");
    if !asked {
        warn!("an upgrade connection did not ask for the sockets; ignored");
        return false;
    }
    info!("binary upgrade asked: pausing the control API and the state file, handing the sockets over");
    handoff.control.stop().await;
    if let Some(writer) = &handoff.writer {
        writer.stop().await;
    }
    let sent = handoff
        .data_plane
        .sockets()
        .map_err(anyhow::Error::from)
        .and_then(|sockets| {
            crate::upgrade::send(
                &stream,
                (handoff.control.bind, &handoff.control.listener),
                &sockets,
            )
        });
    let ready = match sent {
        Ok(()) => tokio::task::spawn_blocking(move || crate::upgrade::wait_ready(&mut stream, READY_TIMEOUT))
            .await
            .unwrap_or(false),
        Err(e) => {
            error!(error = %e, "cannot hand the sockets over");
            false
        }
    };
    if ready {
        handoff.data_plane.stop_accepting();
        info!("the new process serves: this one stopped accepting and finishes its open connections");
        return true;
    }
    warn!("the new process did not become ready; this one goes on serving");
    if let Err(e) = handoff.control.start() {
        error!(error = %e, "cannot serve the control API again");
    }
    if let Some(writer) = &handoff.writer {
        writer.start();
    }
    false
}

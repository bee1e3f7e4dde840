//! Watching one libvirt daemon's domain events with `virsh event --all --loop` as a child process,
//! and turning them into notices (see [`super::roles`] for what each event means).
//!
//! Why a child process rather than a binding of libvirt's C library: `virsh` (libvirt-clients) is
//! on every host that runs libvirt, so the default build watches libvirt with nothing to link; its
//! event lines are the same on libvirt 9.0 and 11.x (they are what `docs/libvirt.md` measured);
//! a daemon restart ends the child, and the watcher starts a new one with backoff; and a fault in
//! libvirt's client library cannot take the balancer down with it.
//!
//! A domain's VM comes from its metadata (`virsh dumpxml`, read when the domain starts or pauses for
//! a migration and remembered, because a migrated domain is gone by the time it stops), or else
//! from its name, as in the hook.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use handover_core::migration::MigrationProgress;
use handover_core::model::VmId;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::events::VirshEvent;
use super::hook::vm_of;
use super::roles::Roles;
use crate::qmp::lines::{Line, LineReader};
use crate::qmp::watcher::MigrationSink;

/// First delay before `virsh event` is started again.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest delay between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long was healthy: the next restart waits the first delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// Longest event line read (event lines are under a hundred bytes).
const MAX_LINE: usize = 64 * 1024;
/// How much of virsh's stderr is kept for the log when it exits.
const MAX_STDERR: u64 = 4096;

/// Settings of one watcher.
#[derive(Debug, Clone)]
pub struct LibvirtWatcher {
    /// libvirt connection URI (`qemu:///system`).
    pub uri: String,
    /// The `virsh` program.
    pub virsh: PathBuf,
    /// Longest wait for one `virsh dumpxml`.
    pub command_timeout: Duration,
}

/// What the watcher remembers across restarts of the child.
#[derive(Debug, Default)]
struct State {
    roles: Roles,
    vms: HashMap<String, VmId>,
}

impl LibvirtWatcher {
    /// Watches until cancelled.
    pub async fn run(self, sink: Arc<dyn MigrationSink>, cancel: CancellationToken) {
        let mut state = State::default();
        let mut backoff = BACKOFF_FIRST;
        while !cancel.is_cancelled() {
            let started = Instant::now();
            let ended = self.follow(sink.as_ref(), &mut state, &cancel).await;
            if cancel.is_cancelled() {
                return;
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = BACKOFF_FIRST;
            }
            warn!(uri = %self.uri, reason = %ended, retry_in = ?backoff, "libvirt event watcher stopped; restarting");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Runs one `virsh event` child until it ends or the watcher is cancelled; returns why it ended.
    async fn follow(
        &self,
        sink: &dyn MigrationSink,
        state: &mut State,
        cancel: &CancellationToken,
    ) -> String {
        let mut child = match Command::new(&self.virsh)
            .args(["-q", "-c", &self.uri, "event", "--all", "--loop"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return format!("cannot run {}: {e}", self.virsh.display()),
        };
        info!(uri = %self.uri, "watching libvirt domain events");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.take(MAX_STDERR).read_to_string(&mut text).await;
            text
        });
        let mut lines = LineReader::with_limit(stdout, MAX_LINE);
        let end = loop {
            let line = tokio::select! {
                _ = cancel.cancelled() => break String::from("cancelled"),
                line = lines.next_line() => line,
            };
            match line {
                Ok(Some(Line::Text(bytes))) => {
                    self.take(&String::from_utf8_lossy(&bytes), sink, state).await;
                }
                Ok(Some(Line::Oversized { bytes })) => {
                    warn!(uri = %self.uri, bytes, "skipped an oversized line from virsh event");
                }
                Ok(None) => break String::from("virsh event ended"),
                Err(e) => break format!("reading virsh event: {e}"),
            }
        };
        let _ = child.start_kill();
        let status = child.wait().await.ok();
        let stderr = tokio::time::timeout(Duration::from_secs(1), stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = stderr.trim();
        match status {
            Some(status) if !stderr.is_empty() => format!("{end} ({status}): {stderr}"),
            Some(status) => format!("{end} ({status})"),
            None => end,
        }
    }

    /// Takes one line of virsh's output.
    async fn take(&self, line: &str, sink: &dyn MigrationSink, state: &mut State) {
        let event = match VirshEvent::parse(line) {
            Ok(event) => event,
            Err(e) => {
                warn!(uri = %self.uri, error = %e, "skipped a virsh event line");
                return;
            }
        };
        match event {
            VirshEvent::Lifecycle {
                domain,
                event,
                detail,
            } => {
                debug!(uri = %self.uri, %domain, %event, %detail, "libvirt lifecycle event");
                // The domain still exists when it starts or pauses for a migration: learn its VM.
                if detail == "Migrated"
                    && (event == "Started" || event == "Suspended")
                    && let Some(vm) = self.lookup(&domain).await
                {
                    state.vms.insert(domain.clone(), vm);
                }
                let Some(notice) = state.roles.lifecycle(&domain, &event, &detail) else {
                    return;
                };
                let vm = match state.vms.get(&domain) {
                    Some(vm) => vm.clone(),
                    None => match self.lookup(&domain).await {
                        Some(vm) => vm,
                        None => return,
                    },
                };
                match sink.notice(&vm, notice).await {
                    Ok(()) => {
                        info!(uri = %self.uri, %domain, %vm, %notice, "libvirt: {event} {detail}")
                    }
                    Err(e) => {
                        info!(uri = %self.uri, %domain, %vm, %notice, reason = %e, "libvirt: {event} {detail}; notice not applied here")
                    }
                }
            }
            VirshEvent::MigrationIteration { domain, iteration } => {
                let vm = match state.vms.get(&domain) {
                    Some(vm) => vm.clone(),
                    None => match self.lookup(&domain).await {
                        Some(vm) => {
                            state.vms.insert(domain.clone(), vm.clone());
                            vm
                        }
                        None => return,
                    },
                };
                sink.progress(
                    &vm,
                    MigrationProgress {
                        status: Some("active".to_string()),
                        passes: Some(iteration),
                        ..MigrationProgress::default()
                    },
                )
                .await;
            }
            VirshEvent::Other => {}
        }
    }

    /// The VM of a domain: its metadata from `virsh dumpxml`, or else its name; `None` (logged)
    /// when neither is a VM id.
    async fn lookup(&self, domain: &str) -> Option<VmId> {
        let dumped = tokio::time::timeout(
            self.command_timeout,
            Command::new(&self.virsh)
                .args(["-q", "-c", &self.uri, "dumpxml", "--", domain])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let xml = match dumped {
            Ok(Ok(output)) if output.status.success() => String::from_utf8_lossy(&output.stdout).into_owned(),
            Ok(Ok(output)) => {
                debug!(%domain, stderr = %String::from_utf8_lossy(&output.stderr).trim(), "virsh dumpxml failed");
                String::new()
            }
            Ok(Err(e)) => {
                debug!(%domain, error = %e, "cannot run virsh dumpxml");
                String::new()
            }
            Err(_) => {
                debug!(%domain, "virsh dumpxml timed out");
                String::new()
            }
        };
        match vm_of(domain, &xml).or_else(|_| vm_of(domain, "")) {
            Ok(vm) => Some(vm),
            Err(e) => {
                warn!(uri = %self.uri, %domain, error = %e, "libvirt event of a domain that maps to no VM; ignored");
                None
            }
        }
    }
}

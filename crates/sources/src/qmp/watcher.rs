//! Following one VM's migrations through QEMU's QMP monitor.
//!
//! The watcher connects (reconnecting with backoff when the socket goes away or comes back),
//! turns on the `events` migration capability (QEMU sends no `MIGRATION` event without it), reads
//! the current state with `query-migrate`, then follows `MIGRATION` and `MIGRATION_PASS`, polling
//! `query-migrate` while a migration runs. Status changes become notices
//! (`setup` → prepare, `active` → started, `completed`, `failed`, `cancelled`) and progress is
//! reported on every poll. If QEMU disappears mid-migration the VM stays drained until the
//! migration's deadline restores it; if a *new* QEMU answers (status `none` after a running
//! migration), the migration is reported failed at once. For a VM whose drain adapts, it also reads
//! the migration's `max-bandwidth` and `downtime-limit` and keeps a dirty-rate probe running
//! while the migration runs (see [`super::dirty_rate`]), so that the controller can act before the
//! first pass ends.

use std::sync::Arc;
use std::time::Duration;

use handover_core::balancer::BoxFuture;
use handover_core::migration::MigrationProgress;
use handover_core::model::VmId;
use handover_core::phase::Notice;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use handover_core::model::Endpoint;

use super::client::{Events, QmpClient};
use super::dirty_rate::{self, Prober};
use super::migration::{MigrationStatus, progress_of, status_of};

/// Where notices and progress go (the coordinator, in `handover run`).
pub trait MigrationSink: Send + Sync {
    /// A migration notice for a VM.
    fn notice<'a>(&'a self, vm: &'a VmId, notice: Notice) -> BoxFuture<'a, Result<(), String>>;
    /// Latest progress of the VM's migration (the coordinator may tell the balancers a new
    /// adaptive level before this returns).
    fn progress<'a>(&'a self, vm: &'a VmId, progress: MigrationProgress) -> BoxFuture<'a, ()>;
}

/// Settings of one watcher.
#[derive(Debug, Clone)]
pub struct QmpWatcher {
    /// QEMU's QMP monitor (the migration *source*).
    pub address: Endpoint,
    /// The VM it runs.
    pub vm: VmId,
    /// How often `query-migrate` is polled while a migration runs.
    pub poll_interval: Duration,
    /// Timeout of every QMP command.
    pub command_timeout: Duration,
    /// Run dirty-rate probes and report the migration's parameters (the VM's drain adapts).
    pub probe: bool,
}

#[cfg(test)]
#[path = "watcher_tests.rs"]
mod tests;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the watcher knows of the current migration, across reconnects.
#[derive(Debug, Default)]
struct Tracker {
    status: Option<MigrationStatus>,
    running: bool,
    progress: MigrationProgress,
    last_notice: Option<Notice>,
    /// The running migration's probes (adaptive VMs), and its parameters and latest probe.
    prober: Option<Prober>,
    parameters: (Option<u64>, Option<u64>),
    probe: Option<handover_core::adaptive::Probe>,
}

impl QmpWatcher {
    /// Watches until cancelled.
    pub async fn run(self, sink: Arc<dyn MigrationSink>, cancel: CancellationToken) {
        let mut backoff = BACKOFF_FIRST;
        let mut reported_down = false;
        let mut tracker = Tracker::default();
        while !cancel.is_cancelled() {
            match QmpClient::connect(&self.address, self.command_timeout).await {
                Ok((client, events)) => {
                    info!(vm = %self.vm, address = %self.address, "QMP connected");
                    backoff = BACKOFF_FIRST;
                    reported_down = false;
                    self.follow(&client, events, sink.as_ref(), &mut tracker, &cancel)
                        .await;
                    if !cancel.is_cancelled() {
                        warn!(vm = %self.vm, address = %self.address, running = tracker.running, "QMP connection lost; reconnecting");
                    }
                }
                Err(e) if !reported_down => {
                    warn!(vm = %self.vm, address = %self.address, error = %e, "QMP unavailable; retrying with backoff");
                    reported_down = true;
                }
                Err(e) => debug!(vm = %self.vm, error = %e, "QMP still unavailable"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn follow(
        &self,
        client: &QmpClient,
        mut events: Events,
        sink: &dyn MigrationSink,
        tracker: &mut Tracker,
        cancel: &CancellationToken,
    ) {
        let capability = json!({ "capabilities": [{ "capability": "events", "state": true }] });
        if let Err(e) = client.execute("migrate-set-capabilities", Some(capability)).await {
            // QEMU refuses to change capabilities during a migration: follow it by polling.
            warn!(vm = %self.vm, error = %e, "cannot turn on migration events; following by polling query-migrate");
        }
        match client.execute("query-migrate", None).await {
            Ok(reply) => {
                let status = status_of(&reply);
                // Only a migration its balancers were told of can have failed.
                let notified = matches!(tracker.last_notice, Some(Notice::Prepare | Notice::Started));
                if tracker.running && notified && status == MigrationStatus::None {
                    warn!(vm = %self.vm, "a new QEMU answers: the migration in progress is gone");
                    self.send(sink, tracker, Notice::Failed).await;
                    tracker.running = false;
                    tracker.status = Some(status);
                } else if status.is_running() || tracker.running {
                    self.on_status(status, Some(&reply), client, sink, tracker).await;
                } else {
                    tracker.status = Some(status);
                }
            }
            Err(e) => warn!(vm = %self.vm, error = %e, "query-migrate failed"),
        }
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                event = events.recv() => {
                    let Some(event) = event else { return };
                    match event.name.as_str() {
                        "MIGRATION" => match event.data.get("status").and_then(|s| s.as_str()) {
                            Some(status) => self.on_status(MigrationStatus::parse(status), None, client, sink, tracker).await,
                            None => warn!(vm = %self.vm, data = %event.data, "MIGRATION event without a status ignored"),
                        },
                        "MIGRATION_PASS" => {
                            if let Some(pass) = event.data.get("pass").and_then(|p| p.as_u64()) {
                                tracker.progress.passes = Some(pass);
                                sink.progress(&self.vm, tracker.progress.clone()).await;
                            }
                        }
                        _ => {}
                    }
                }
                _ = poll.tick(), if tracker.running => {
                    match client.execute("query-migrate", None).await {
                        Ok(reply) => {
                            let status = status_of(&reply);
                            self.probe_tick(client, tracker).await;
                            tracker.progress = self.enrich(tracker, progress_of(&reply));
                            sink.progress(&self.vm, tracker.progress.clone()).await;
                            // Catches transitions when events are off.
                            self.on_status(status, Some(&reply), client, sink, tracker).await;
                        }
                        Err(e) => debug!(vm = %self.vm, error = %e, "query-migrate failed"),
                    }
                }
            }
        }
    }

    async fn on_status(
        &self,
        status: MigrationStatus,
        reply: Option<&serde_json::Value>,
        client: &QmpClient,
        sink: &dyn MigrationSink,
        tracker: &mut Tracker,
    ) {
        if tracker.status.as_ref() == Some(&status) {
            return;
        }
        if let MigrationStatus::Unknown(name) = &status {
            warn!(vm = %self.vm, status = %name, "unknown migration status ignored");
            return;
        }
        debug!(vm = %self.vm, %status, "migration status");
        if status == MigrationStatus::Setup {
            tracker.last_notice = None;
            tracker.progress = MigrationProgress::default();
            tracker.prober = None;
            tracker.probe = None;
        }
        if self.probe && status.is_running() && tracker.prober.is_none() {
            self.start_probing(client, tracker).await;
        }
        if matches!(
            status,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        ) {
            // Final figures (total time, downtime) before the end notice.
            let final_reply = match reply {
                Some(reply) => Some(reply.clone()),
                None => client.execute("query-migrate", None).await.ok(),
            };
            if let Some(reply) = final_reply {
                tracker.progress = self.enrich(tracker, progress_of(&reply));
                sink.progress(&self.vm, tracker.progress.clone()).await;
            }
        }
        // A migration first seen already active (handover started late) still gets its prepare.
        if status == MigrationStatus::Active && tracker.last_notice.is_none() {
            self.send(sink, tracker, Notice::Prepare).await;
        }
        if let Some(notice) = status.notice() {
            self.send(sink, tracker, notice).await;
        } else {
            debug!(vm = %self.vm, %status, "migration status with no notice");
        }
        tracker.running = status.is_running();
        tracker.status = Some(status);
    }

    /// Reads the migration's parameters and the guest's size, and starts the first probe.
    async fn start_probing(&self, client: &QmpClient, tracker: &mut Tracker) {
        match dirty_rate::parameters(client).await {
            Ok(parameters) => tracker.parameters = parameters,
            Err(e) => debug!(vm = %self.vm, error = %e, "query-migrate-parameters failed"),
        }
        let memory = dirty_rate::memory_size(client).await.unwrap_or(None);
        tracker.prober = Some(Prober::new(memory));
        self.probe_tick(client, tracker).await;
    }

    /// Advances the dirty-rate probe (adaptive VMs only); a failure is logged and the next poll
    /// tries again.
    async fn probe_tick(&self, client: &QmpClient, tracker: &mut Tracker) {
        let Some(prober) = tracker.prober.as_mut() else {
            return;
        };
        match prober.tick(client).await {
            Ok(Some(probe)) => tracker.probe = Some(probe),
            Ok(None) => {}
            Err(e) => debug!(vm = %self.vm, error = %e, "dirty-rate probe failed"),
        }
    }

    /// A progress report with what the watcher knows beyond `query-migrate`.
    fn enrich(&self, tracker: &Tracker, mut progress: MigrationProgress) -> MigrationProgress {
        progress.max_bandwidth = tracker.parameters.0;
        progress.downtime_limit_ms = tracker.parameters.1;
        progress.dirty_probe = tracker.probe;
        progress
    }

    async fn send(&self, sink: &dyn MigrationSink, tracker: &mut Tracker, notice: Notice) {
        if tracker.last_notice == Some(notice) {
            return;
        }
        tracker.last_notice = Some(notice);
        match sink.notice(&self.vm, notice).await {
            Ok(()) => info!(vm = %self.vm, %notice, "migration notice from QMP"),
            Err(e) => warn!(vm = %self.vm, %notice, error = %e, "migration notice from QMP not applied"),
        }
    }
}

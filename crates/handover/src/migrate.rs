//! `handover migrate`: the strongest form of "notify before the migration begins". It sends
//! `prepare` and waits until every balancer drained the VM (bounded by `--drain-timeout`), and only
//! then issues QMP `migrate`; it follows the migration with a progress bar, reports progress to
//! handover, and sends `completed`, `failed` or `cancelled` at the end. Ctrl-C (or SIGTERM) cancels
//! the QEMU migration and restores the VM. For a VM whose drain adapts or quiesces it also probes
//! the guest's dirty rate and holds the switchover for quiescence ([`crate::quiesce`]).

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use handover_core::api::{NoticeRequest, NoticeResponse};
use handover_core::migration::MigrationProgress;
use handover_core::model::{Endpoint, VmId};
use handover_core::phase::Notice;
use handover_drivers::{ClientError, ControlClient};
use handover_sources::qmp::{MigrationStatus, QmpClient, progress_of, status_of};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cli::MigrateArgs;
use crate::quiesce::{self, Adaptive};
use crate::status::describe_progress;
use crate::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_QUEUED};

/// How often `query-migrate` is polled.
const POLL: Duration = Duration::from_millis(250);
/// How often while the switchover is held for quiescence.
const HELD_POLL: Duration = Duration::from_millis(50);
/// How long to wait for QEMU to confirm a cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Prints one step with a UTC wall-clock timestamp (the same clock as QMP event timestamps).
pub(crate) fn step(text: &str) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = now.as_millis() as u64;
    let day_ms = ms % 86_400_000;
    println!(
        "[{:02}:{:02}:{:02}.{:03} UTC] {text}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    );
}

/// How the migration ended.
enum Ending {
    Finished(MigrationStatus),
    Interrupted(MigrationStatus),
    Lost,
}

/// Runs the migration.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<u8> {
    let vm = VmId::new(args.vm.as_str()).map_err(|e| anyhow!("VM {:?}: {e}", args.vm))?;
    let address: Endpoint = args.qmp.parse().map_err(|e| anyhow!("--qmp: {e}"))?;
    let control = ControlClient::new(
        &args.control.control,
        args.control.token.clone(),
        args.drain_timeout + Duration::from_secs(15),
    );
    let notices = format!("/v1/vms/{vm}/migration");

    let (qmp, mut events) = QmpClient::connect(&address, Duration::from_secs(10))
        .await
        .with_context(|| format!("--qmp {address}"))?;
    let status = status_of(&qmp.execute("query-migrate", None).await?);
    if status.is_running() {
        return Err(anyhow!(
            "{vm}: QEMU already runs a migration ({status}); nothing was changed"
        ));
    }
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "events", "state": true }] })),
    )
    .await?;
    let mut parameters = serde_json::Map::new();
    if let Some(bandwidth) = args.max_bandwidth {
        parameters.insert("max-bandwidth".into(), json!(bandwidth));
    }
    if let Some(limit) = args.downtime_limit {
        parameters.insert("downtime-limit".into(), json!(limit.as_millis() as u64));
    }
    if !parameters.is_empty() {
        qmp.execute(
            "migrate-set-parameters",
            Some(serde_json::Value::Object(parameters)),
        )
        .await?;
    }

    step(&format!(
        "prepare: telling every balancer that serves {vm}; waiting until it is drained (at most {})",
        handover_core::time::format_duration(args.drain_timeout)
    ));
    let prepare = NoticeRequest {
        wait_drained: true,
        timeout_ms: Some(args.drain_timeout.as_millis() as u64),
        threshold: args.threshold,
        deadline_ms: args.deadline.map(|d| d.as_millis() as u64),
        ..NoticeRequest::new(Notice::Prepare)
    };
    let reply: NoticeResponse = match control.post(&notices, &prepare).await {
        Ok((_, reply)) => reply,
        Err(ClientError::Status { body, .. }) => {
            eprintln!(
                "error: handover refused the prepare: {}; the migration was not started",
                body.error
            );
            return Ok(EXIT_ERROR);
        }
        Err(e) => {
            eprintln!("error: {e}; the migration was not started");
            return Ok(EXIT_ERROR);
        }
    };
    if reply.outcome == "queued" {
        eprintln!(
            "{vm}: the capacity guard queued the prepare ({}); the migration was not started",
            reply.note.as_deref().unwrap_or("no reason given")
        );
        return Ok(EXIT_QUEUED);
    }
    for balancer in &reply.balancers {
        let state = match (&balancer.error, balancer.serves) {
            (Some(e), _) => format!("ERROR {e}"),
            (None, Some(false)) => "does not serve this VM".into(),
            (None, _) => format!("applied, {} active", balancer.active.unwrap_or(0)),
        };
        println!("    {:<16} {:<9} {state}", balancer.name, balancer.kind);
    }
    match &reply.drain {
        Some(drain) if drain.drained => step(&format!("drained after {} ms", drain.waited_ms)),
        Some(drain) => step(&format!(
            "not drained after {} ms ({} still active); migrating anyway, as the drain timeout says",
            drain.waited_ms, drain.active
        )),
        None => {}
    }

    let mut adaptive = Adaptive::start(&control, &vm, &qmp, args.no_hold).await;
    if let Some(adaptive) = adaptive.as_mut() {
        adaptive.before_copy(&control, &vm).await;
    }

    step(&format!("migrate: QMP migrate to {}", args.uri));
    if let Err(e) = qmp.execute("migrate", Some(json!({ "uri": args.uri }))).await {
        eprintln!("error: QEMU refused the migration: {e}");
        end_notice(&control, &notices, Notice::Failed).await;
        return Ok(EXIT_ERROR);
    }
    end_notice(&control, &notices, Notice::Started).await;

    let bar = progress_bar();
    let interactive = std::io::stderr().is_terminal();
    let mut last_line = tokio::time::Instant::now();
    let mut progress = MigrationProgress::default();
    let mut poll = tokio::time::interval(POLL);
    let mut interrupted = false;
    let mut cancel_deadline = None;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ending = loop {
        tokio::select! {
            event = events.recv() => match event {
                None => break Ending::Lost,
                Some(event) if event.name == "MIGRATION" => {
                    let status = MigrationStatus::parse(event.data.get("status").and_then(|s| s.as_str()).unwrap_or(""));
                    if !status.is_running() && status != MigrationStatus::None {
                        break if interrupted { Ending::Interrupted(status) } else { Ending::Finished(status) };
                    }
                }
                Some(_) => {}
            },
            _ = poll.tick() => {
                if let Some(adaptive) = adaptive.as_mut() {
                    adaptive.before_report(&qmp).await;
                }
                match qmp.execute("query-migrate", None).await {
                    Ok(reply) => {
                        let status = status_of(&reply);
                        progress = progress_of(&reply);
                        if let Some(adaptive) = adaptive.as_ref() {
                            progress = adaptive.enrich(progress);
                        }
                        let answer = quiesce::report(&control, &vm, &progress).await;
                        if let Some(adaptive) = adaptive.as_mut()
                            && status.is_running()
                            && adaptive.after_report(&qmp, &progress, answer).await
                        {
                            // While the switchover is held, look again soon.
                            poll.reset_after(HELD_POLL);
                        }
                        bar.set_length(progress.total_bytes.unwrap_or(0));
                        bar.set_position(progress.transferred_bytes.unwrap_or(0));
                        bar.set_message(message(&progress, adaptive.as_ref()));
                        if !interactive && last_line.elapsed() >= Duration::from_secs(1) {
                            println!("    {}", describe_progress(None, &progress));
                            last_line = tokio::time::Instant::now();
                        }
                        if !status.is_running() && status != MigrationStatus::None {
                            break if interrupted { Ending::Interrupted(status) } else { Ending::Finished(status) };
                        }
                    }
                    Err(handover_sources::qmp::QmpError::Closed) => break Ending::Lost,
                    Err(_) => {}
                }
                if cancel_deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
                    break Ending::Lost;
                }
            },
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                cancel_deadline = Some(tokio::time::Instant::now() + CANCEL_WAIT);
                bar.suspend(|| step("interrupted: cancelling the QEMU migration (migrate_cancel)"));
                if let Err(e) = qmp.execute("migrate_cancel", None).await {
                    bar.suspend(|| eprintln!("error: migrate_cancel failed: {e}"));
                }
            },
            _ = terminate.recv(), if !interrupted => {
                interrupted = true;
                cancel_deadline = Some(tokio::time::Instant::now() + CANCEL_WAIT);
                bar.suspend(|| step("terminated: cancelling the QEMU migration (migrate_cancel)"));
                let _ = qmp.execute("migrate_cancel", None).await;
            },
        }
    };
    bar.finish_and_clear();
    if let Some(adaptive) = adaptive.as_mut() {
        adaptive.release(&qmp).await;
    }
    if let Ok(reply) = qmp.execute("query-migrate", None).await {
        progress = progress_of(&reply);
        if let Some(adaptive) = adaptive.as_ref() {
            progress = adaptive.enrich(progress);
        }
        quiesce::report(&control, &vm, &progress).await;
    }
    match ending {
        Ending::Finished(MigrationStatus::Completed) | Ending::Interrupted(MigrationStatus::Completed) => {
            step(&format!("completed: {}", describe_progress(None, &progress)));
            end_notice(&control, &notices, Notice::Completed).await;
            Ok(EXIT_OK)
        }
        Ending::Finished(status) | Ending::Interrupted(status) => {
            let notice = if status == MigrationStatus::Cancelled {
                Notice::Cancelled
            } else {
                Notice::Failed
            };
            step(&format!(
                "{status}: the VM stays where it was; restoring it on every balancer"
            ));
            end_notice(&control, &notices, notice).await;
            Ok(if interrupted { EXIT_INTERRUPTED } else { EXIT_ERROR })
        }
        Ending::Lost => {
            eprintln!(
                "error: lost QEMU's QMP monitor before the migration ended; the outcome is unknown, so {vm} stays \
                 drained until its deadline restores it (or send: handover notify {vm} completed|failed)"
            );
            Ok(if interrupted { EXIT_INTERRUPTED } else { EXIT_ERROR })
        }
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("  [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn message(progress: &MigrationProgress, adaptive: Option<&Adaptive>) -> String {
    let mut parts = Vec::new();
    if let Some(status) = adaptive.and_then(|a| a.status.as_ref()) {
        parts.push(format!(
            "level {} ({})",
            status.latest.level, status.latest.decision
        ));
    }
    if let Some(pass) = progress.passes {
        parts.push(format!("pass {pass}"));
    }
    if let Some(rate) = progress.dirty_pages_rate {
        parts.push(format!("dirty {rate} pages/s"));
    }
    if let Some(expected) = progress.expected_downtime_ms {
        parts.push(format!("expected downtime {expected} ms"));
    }
    parts.join(", ")
}

/// Sends a notice without waiting; a failure is printed, not fatal (the deadline is the safety net).
async fn end_notice(control: &ControlClient, path: &str, notice: Notice) {
    let request = NoticeRequest::new(notice);
    let reply: Result<(http::StatusCode, NoticeResponse), ClientError> = control.post(path, &request).await;
    match reply {
        Ok((_, reply)) => step(&format!("{notice}: {} → {}", reply.previous_phase, reply.phase)),
        Err(e) => eprintln!("warning: {notice} notice not applied: {e}"),
    }
}

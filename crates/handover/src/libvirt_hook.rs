//! `handover libvirt-hook`: libvirt's `qemu` hook. libvirt runs it synchronously with the domain
//! name, operation, sub-operation and extra argument, and the domain XML on stdin. What each call
//! means, per libvirt version, is in `handover_sources::libvirt`; here:
//!
//! - `migrate begin` (on the destination, before anything is copied): prepare, and wait until the
//!   balancers drained the VM, bounded by `--drain-timeout`; libvirt holds the migration meanwhile.
//!   Exit 0 unless `--veto` is set and the VM could not be drained (or handover not reached).
//! - `started begin` (on the destination; the copy begins): started, if the VM is draining.
//! - `release end migrated` (the source, libvirt >= 10.5): completed, if the VM is migrating.
//! - `release end REASON` for any other reason: failed, if the VM is draining or migrating.
//! - `release end -` (libvirt < 10.5): failed if the VM is still draining (the copy never began);
//!   while it migrates, the hook cannot tell the source's success from the destination's failure
//!   and leaves the end to the event watcher (`[[libvirt]]`).
//! - Every other call returns at once.
//!
//! An end is sent to a node whose own registry has the migration, or whose balancers hold the VM
//! drained for a peer's migration (that node's answer is printed). Nothing is written to stdout:
//! for `migrate begin`, libvirt reads stdout as the (unchanged) domain XML. Messages go to stderr,
//! which libvirt logs.

use std::io::Read;
use std::time::Duration;

use handover_core::api::{NoticeRequest, NoticeResponse, VmView};
use handover_core::phase::{Notice, Phase};
use handover_drivers::{ClientError, ControlClient};
use handover_sources::libvirt::{HookAction, HookCall, vm_of};

use crate::cli::HookArgs;
use crate::{EXIT_ERROR, EXIT_OK};

/// Largest domain XML read from stdin.
const MAX_XML: u64 = 16 * 1024 * 1024;
/// How long to wait for libvirt to finish writing the XML.
const STDIN_WAIT: Duration = Duration::from_secs(2);

/// Runs one hook call.
pub async fn hook(args: HookArgs) -> anyhow::Result<u8> {
    let call = match HookCall::from_args(&args.libvirt) {
        Ok(call) => call,
        Err(e) => {
            eprintln!("handover libvirt-hook: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    let action = call.action();
    let xml = read_stdin().await;
    if action == HookAction::Ignore {
        return Ok(EXIT_OK);
    }
    let vm = match vm_of(&call.domain, &xml) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("handover libvirt-hook: {e}");
            return Ok(if args.veto && action == HookAction::Prepare {
                EXIT_ERROR
            } else {
                EXIT_OK
            });
        }
    };
    let client = ControlClient::with_timeouts(
        &args.control.control,
        args.control.token.clone(),
        args.connect_timeout,
        args.drain_timeout + Duration::from_secs(5),
    );
    let path = format!("/v1/vms/{vm}/migration");
    let request = |phase: Notice, wait_drained: bool| NoticeRequest {
        wait_drained,
        timeout_ms: wait_drained.then_some(args.drain_timeout.as_millis() as u64),
        threshold: None,
        deadline_ms: None,
        ..NoticeRequest::new(phase)
    };
    match action {
        HookAction::Prepare => {
            let reply: Result<(http::StatusCode, NoticeResponse), ClientError> =
                client.post(&path, &request(Notice::Prepare, true)).await;
            let drained = match reply {
                Ok((_, reply)) if reply.outcome == "queued" => {
                    eprintln!(
                        "handover: {vm} queued by the capacity guard: {}",
                        reply.note.unwrap_or_default()
                    );
                    false
                }
                Ok((_, reply)) => match reply.drain {
                    Some(d) if d.drained => {
                        eprintln!(
                            "handover: {vm} drained in {} ms before its incoming migration",
                            d.waited_ms
                        );
                        true
                    }
                    Some(d) => {
                        eprintln!(
                            "handover: {vm} not drained after {} ms ({} still active)",
                            d.waited_ms, d.active
                        );
                        false
                    }
                    None => true,
                },
                Err(e) => {
                    eprintln!("handover: cannot prepare {vm}: {e}");
                    false
                }
            };
            if !drained && args.veto {
                eprintln!("handover: vetoing the migration of {vm} (--veto)");
                return Ok(EXIT_ERROR);
            }
            Ok(EXIT_OK)
        }
        HookAction::StartedIfDraining
        | HookAction::CompletedIfMigrating
        | HookAction::FailedIfMigrating
        | HookAction::FailedIfDraining => {
            let (notice, applies): (Notice, &[Phase]) = match action {
                HookAction::StartedIfDraining => (Notice::Started, &[Phase::Draining]),
                HookAction::CompletedIfMigrating => (Notice::Completed, &[Phase::Draining, Phase::Migrating]),
                HookAction::FailedIfDraining => (Notice::Failed, &[Phase::Draining]),
                _ => (Notice::Failed, &[Phase::Draining, Phase::Migrating]),
            };
            let view: Result<VmView, ClientError> = client.get(&format!("/v1/vms/{vm}")).await;
            let view = match view {
                Ok(view) => view,
                Err(ClientError::Status { status, .. }) if status == http::StatusCode::NOT_FOUND => {
                    return Ok(EXIT_OK);
                }
                Err(e) => {
                    eprintln!("handover: cannot reach handover for {vm}: {e}");
                    return Ok(EXIT_OK);
                }
            };
            // A peer's migration: this node's balancers hold the VM drained, its registry does not
            // own the migration.
            let for_peer = view.phase == Phase::Stable
                && view.backends.iter().any(|b| applies.contains(&b.backend.phase));
            if action == HookAction::FailedIfDraining && view.phase == Phase::Migrating {
                eprintln!(
                    "handover: {} released without a reason while {vm} migrates: libvirt before \
                     10.5 does not say whether this is the source after a switchover or a \
                     destination that failed; the libvirt event watcher ([[libvirt]]) reports \
                     the end",
                    call.domain
                );
                return Ok(EXIT_OK);
            }
            if !applies.contains(&view.phase) && !for_peer {
                return Ok(EXIT_OK);
            }
            let reply: Result<(http::StatusCode, NoticeResponse), ClientError> =
                client.post(&path, &request(notice, false)).await;
            match reply {
                Ok((_, reply)) => eprintln!(
                    "handover: {vm} {notice} ({} {} {}): {} → {}",
                    call.operation, call.sub_operation, call.extra, reply.previous_phase, reply.phase
                ),
                Err(e) => eprintln!("handover: cannot send {notice} for {vm}: {e}"),
            }
            Ok(EXIT_OK)
        }
        HookAction::Ignore => Ok(EXIT_OK),
    }
}

/// The domain XML libvirt writes on stdin (empty if none arrives in time). A detached thread reads
/// it, so a stdin that never closes cannot keep the process alive.
async fn read_stdin() -> String {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut xml = String::new();
        let _ = std::io::stdin().take(MAX_XML).read_to_string(&mut xml);
        let _ = tx.send(xml);
    });
    match tokio::time::timeout(STDIN_WAIT, rx).await {
        Ok(Ok(xml)) => xml,
        _ => String::new(),
    }
}

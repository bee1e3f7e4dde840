//! `handover libvirt-hook`: libvirt's `qemu` hook. libvirt runs it synchronously with the domain
//! name, operation, sub-operation and extra argument, and the domain XML on stdin.
//!
//! - `migrate begin` (on the destination, before the migration starts): prepare, and wait until
//!   the balancers drained the VM, bounded by `--drain-timeout`; libvirt holds the migration
//!   meanwhile. Exit 0 unless `--veto` is set and the VM could not be drained.
//! - `started begin` (on the destination, in the migration's finish phase): completed, if the VM
//!   was migrating.
//! - `release end` while the VM is still migrating (a start that never succeeded): failed.
//! - Every other call returns at once.
//!
//! Nothing is written to stdout: for `migrate begin`, libvirt reads stdout as the (unchanged)
//! domain XML. Messages go to stderr, which libvirt logs.

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
        HookAction::CompletedIfMigrating | HookAction::FailedIfMigrating => {
            let notice = if action == HookAction::CompletedIfMigrating {
                Notice::Completed
            } else {
                Notice::Failed
            };
            let view: Result<VmView, ClientError> = client.get(&format!("/v1/vms/{vm}")).await;
            match view {
                Ok(view) if matches!(view.phase, Phase::Draining | Phase::Migrating) => {
                    let reply: Result<(http::StatusCode, NoticeResponse), ClientError> =
                        client.post(&path, &request(notice, false)).await;
                    match reply {
                        Ok((_, reply)) => eprintln!(
                            "handover: {vm} {notice}: {} → {}",
                            reply.previous_phase, reply.phase
                        ),
                        Err(e) => eprintln!("handover: cannot send {notice} for {vm}: {e}"),
                    }
                }
                Ok(_) => {}
                Err(ClientError::Status { status, .. }) if status == http::StatusCode::NOT_FOUND => {}
                Err(e) => eprintln!("handover: cannot reach handover for {vm}: {e}"),
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

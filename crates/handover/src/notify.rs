//! `handover notify VM PHASE`: send a migration notice to a running node and say what every
//! balancer did with it.

use std::time::Duration;

use handover_core::api::{NoticeRequest, NoticeResponse};
use handover_drivers::{ClientError, ControlClient};

use crate::cli::NotifyArgs;
use crate::{EXIT_ERROR, EXIT_NOT_DRAINED, EXIT_OK, EXIT_PENDING, EXIT_QUEUED};

/// Sends the notice; exit 0 when applied (and drained, if asked), 3 when the drain timed out,
/// 4 when queued by the capacity guard, 5 when no balancer that serves the VM could be told yet,
/// 1 on any error.
pub async fn notify(args: NotifyArgs) -> anyhow::Result<u8> {
    let request = NoticeRequest {
        wait_drained: args.wait_drained,
        timeout_ms: args.wait_drained.then_some(args.timeout.as_millis() as u64),
        threshold: args.threshold,
        deadline_ms: args.deadline.map(|d| d.as_millis() as u64),
        new_ip: args.new_ip,
        addresses: args.moves.iter().copied().collect(),
        ..NoticeRequest::new(args.phase)
    };
    // The reply is held while the node waits for drained: allow for that plus a margin.
    let call_timeout = if args.wait_drained {
        args.timeout + Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    };
    let client = ControlClient::new(&args.control.control, args.control.token.clone(), call_timeout);
    let path = format!("/v1/vms/{}/migration", args.vm);
    let reply: Result<(http::StatusCode, NoticeResponse), ClientError> = client.post(&path, &request).await;
    match reply {
        Ok((_, response)) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&response)?);
            } else {
                print_response(&response);
            }
            Ok(exit_code(&response))
        }
        Err(ClientError::Status { status, body }) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            }
            eprintln!("error: {} {}: {}", args.vm, args.phase, body.error);
            for b in &body.balancers {
                eprintln!(
                    "  {:<16} {:<9} {}",
                    b.name,
                    b.kind,
                    b.error.as_deref().unwrap_or("does not serve this VM")
                );
            }
            let _ = status;
            Ok(EXIT_ERROR)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_ERROR)
        }
    }
}

fn exit_code(response: &NoticeResponse) -> u8 {
    if response.outcome == "queued" {
        return EXIT_QUEUED;
    }
    if response.outcome == "pending" {
        return EXIT_PENDING;
    }
    match &response.drain {
        Some(drain) if !drain.drained => EXIT_NOT_DRAINED,
        _ => EXIT_OK,
    }
}

fn print_response(r: &NoticeResponse) {
    let migration = r
        .migration
        .map(|m| format!(", migration {m}"))
        .unwrap_or_default();
    println!(
        "{}: {} {} ({} → {}){migration}",
        r.vm, r.notice, r.outcome, r.previous_phase, r.phase
    );
    if let Some(note) = &r.note {
        println!("  note: {note}");
    }
    for b in &r.balancers {
        let state = match (&b.error, b.serves) {
            (Some(e), _) if b.pending => format!("PENDING {e}"),
            (Some(e), _) => format!("ERROR {e}"),
            (None, Some(false)) => "does not serve this VM".to_string(),
            (None, _) => format!(
                "applied to {} backend{}",
                b.backends.len(),
                if b.backends.len() == 1 { "" } else { "s" }
            ),
        };
        let active = b.active.map(|a| format!(", {a} active")).unwrap_or_default();
        println!(
            "  {:<16} {:<9} {state}{active} ({} ms)",
            b.name, b.kind, b.elapsed_ms
        );
    }
    if let Some(drain) = &r.drain {
        if drain.drained {
            println!(
                "drained in {} ms ({} active, threshold {})",
                drain.waited_ms, drain.active, drain.threshold
            );
        } else {
            println!(
                "NOT drained after {} ms: {} still active (threshold {}):",
                drain.waited_ms, drain.active, drain.threshold
            );
            for c in &drain.remaining {
                let what = c.request.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
                println!(
                    "  {} pool {} backend {} ← client {} {}{what}, open {:.1}s",
                    c.balancer,
                    c.pool,
                    c.backend,
                    c.client,
                    c.kind,
                    c.age_ms as f64 / 1000.0
                );
            }
        }
    }
}

//! `handover demo`: the embedded default a newcomer runs first. Three local backends (vm-a, vm-b,
//! vm-c, each answering with its name), the proxy in front of them (L7 and L4 listeners), a bounded
//! load generator, and one migration of vm-a walked through the real control API:
//! stable → prepare (wait for drained) → started → completed → ramp → stable.
//! Every second it prints each VM's share of new requests, its open connections and its phase;
//! it ends with a summary and exits 0 only if no request failed, vm-a got no new request while
//! drained, and every connection opened before the drain kept working.

mod backends;
mod load;

use std::sync::Arc;
use std::time::Duration;

use handover_core::api::{NoticeRequest, NoticeResponse, VmView};
use handover_core::phase::Notice;
use handover_drivers::ControlClient;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{EXIT_ERROR, EXIT_OK, server};
use load::{Load, VMS};

/// Keep-alive L7 clients.
const HTTP_CLIENTS: usize = 8;
/// Pause between two requests of one client (bounds the load to about 400 requests/s).
const PAUSE: Duration = Duration::from_millis(20);
/// Long-lived L4 connections opened before the drain.
const PINNED: usize = 6;
/// When each step of the walk happens, in seconds from the start.
const PREPARE_AT: u64 = 4;
const STARTED_AT: u64 = 8;
const COMPLETED_AT: u64 = 12;
const RAMP_SECONDS: u64 = 8;
const END_AT: u64 = 24;

const PHASES: [&str; 5] = ["stable", "draining", "migrating", "ramping", "stable again"];

fn config_text(addresses: &[std::net::SocketAddr]) -> String {
    let mut text = format!(
        r#"
[control]
bind = "127.0.0.1:0"

[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"
pool = "demo"

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "127.0.0.1:0"
pool = "demo"

[pools.demo]
algorithm = "round_robin"
drain = {{ target = 0.0, shape = "step", keep = "connections" }}
ramp = {{ window = "{RAMP_SECONDS}s", aggression = 1.0, min_percent = 10 }}
deadline = "2m"
"#
    );
    for (vm, address) in VMS.iter().zip(addresses) {
        text.push_str(&format!(
            "\n[[pools.demo.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\nweight = 1\n"
        ));
    }
    text
}

/// Runs the demo.
pub async fn run() -> anyhow::Result<u8> {
    let cancel = CancellationToken::new();
    let mut addresses = Vec::new();
    for vm in VMS {
        addresses.push(backends::start(vm, cancel.clone()).await?);
    }
    let config =
        handover_core::config::parse(&config_text(&addresses)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = server::start(&config, 1).await?;
    let web = node.listener("web").expect("configured");
    let tcp = node.listener("tcp").expect("configured");
    let control = ControlClient::new(format!("http://{}", node.control), None, Duration::from_secs(15));

    println!(
        "handover demo: three backends (vm-a {}, vm-b {}, vm-c {})",
        addresses[0], addresses[1], addresses[2]
    );
    println!(
        "  proxy: HTTP on {web}, TCP on {tcp}; control API on http://{}",
        node.control
    );
    println!(
        "  load: {HTTP_CLIENTS} keep-alive HTTP clients (~{} req/s) and {PINNED} long-lived TCP connections",
        HTTP_CLIENTS as u64 * 1000 / PAUSE.as_millis() as u64
    );
    println!(
        "  walk: prepare vm-a at {PREPARE_AT}s, started at {STARTED_AT}s, completed at {COMPLETED_AT}s, {RAMP_SECONDS}s ramp\n"
    );

    let load = Load::new(&PHASES);
    let load_cancel = CancellationToken::new();
    *load.pinned.lock() = vec![load::Pinned::default(); PINNED];
    let sessions_start = Instant::now();
    for slot in 0..PINNED {
        // Sessions end one after another, 1.5 to 3.5 s into the drain: the wait for drained sees them go.
        let close_at = sessions_start + Duration::from_millis(PREPARE_AT * 1000 + 1500 + slot as u64 * 400);
        tokio::spawn(load::pinned_client(
            load.clone(),
            tcp,
            slot,
            close_at,
            load_cancel.clone(),
        ));
    }
    for _ in 0..HTTP_CLIENTS {
        tokio::spawn(load::http_client(load.clone(), web, PAUSE, load_cancel.clone()));
    }

    let start = Instant::now();
    let steps: [(u64, Option<Notice>, &str); 5] = [
        (PREPARE_AT, Some(Notice::Prepare), "draining"),
        (STARTED_AT, Some(Notice::Started), "migrating"),
        (COMPLETED_AT, Some(Notice::Completed), "ramping"),
        (COMPLETED_AT + RAMP_SECONDS + 1, None, "stable again"),
        (END_AT, None, "end"),
    ];
    let mut next_step = 0;
    let mut second = 1;
    while second <= END_AT {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        print_second(&load, &control, second).await;
        while next_step < steps.len() && steps[next_step].0 == second {
            let (_, notice, label) = steps[next_step];
            if let Some(notice) = notice {
                let control = control.clone();
                let load = load.clone();
                tokio::spawn(async move {
                    if let Err(e) = send(&control, notice, &load, label).await {
                        println!(">>> notice {notice} for vm-a failed: {e}");
                    }
                });
            } else {
                load.set_phase(label);
            }
            next_step += 1;
        }
        second += 1;
    }
    load_cancel.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = summary(&load);
    cancel.cancel();
    node.shutdown(Duration::from_secs(2)).await;
    Ok(if ok { EXIT_OK } else { EXIT_ERROR })
}

/// Sends a notice through the control API. Requests are labelled by the phase when they are sent,
/// so the label moves only when it is certain: to a drained phase once the API said the drain is
/// applied, away from it shortly before the notice that ends it.
async fn send(control: &ControlClient, notice: Notice, load: &Load, label: &str) -> anyhow::Result<()> {
    let path = "/v1/vms/vm-a/migration";
    let request = |wait_drained: bool| NoticeRequest {
        wait_drained,
        timeout_ms: Some(5_000),
        threshold: None,
        deadline_ms: None,
        ..NoticeRequest::new(notice)
    };
    if notice == Notice::Completed {
        load.set_phase(label);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, reply): (_, NoticeResponse) = control.post(path, &request(false)).await?;
    load.set_phase(label);
    println!(
        ">>> notice {notice} for vm-a: {} → {}",
        reply.previous_phase, reply.phase
    );
    if notice == Notice::Prepare {
        println!(">>> waiting until vm-a is drained (its open connections finish)");
        // A repeated prepare changes nothing; it only waits.
        let (_, reply): (_, NoticeResponse) = control.post(path, &request(true)).await?;
        match &reply.drain {
            Some(d) if d.drained => println!(">>> vm-a drained in {} ms", d.waited_ms),
            Some(d) => println!(
                ">>> vm-a NOT drained after {} ms ({} still active)",
                d.waited_ms, d.active
            ),
            None => {}
        }
    }
    Ok(())
}

async fn print_second(load: &Load, control: &ControlClient, second: u64) {
    let counts = load
        .tally
        .lock()
        .per_second
        .get(second as usize - 1)
        .copied()
        .unwrap_or([0; 3]);
    let total: u64 = counts.iter().sum();
    let vms: Vec<VmView> = control.get("/v1/vms").await.unwrap_or_default();
    let phase_of = |name: &str| {
        vms.iter()
            .find(|v| v.vm.as_str() == name)
            .map(|v| v.phase.to_string())
            .unwrap_or_default()
    };
    let open_of = |name: &str| -> u64 {
        vms.iter()
            .find(|v| v.vm.as_str() == name)
            .map(|v| v.backends.iter().map(|b| b.backend.active).sum())
            .unwrap_or(0)
    };
    let mut line = format!("t={second:>2}s  vm-a {:<9}", phase_of("vm-a"));
    line.push_str("  new requests:");
    for (i, vm) in VMS.iter().enumerate() {
        let share = if total > 0 {
            counts[i] as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        line.push_str(&format!("  {vm} {share:>5.1}% ({:>3})", counts[i]));
    }
    line.push_str("   open:");
    for vm in VMS {
        line.push_str(&format!(" {vm} {}", open_of(vm)));
    }
    println!("{line}");
}

fn summary(load: &Arc<Load>) -> bool {
    let tally = load.tally.lock();
    let total: u64 = tally.per_phase.iter().map(|(_, c)| c.iter().sum::<u64>()).sum();
    println!("\nSummary: {total} requests answered, {} failed", tally.failed);
    println!(
        "  {:<13} {:>16} {:>16} {:>16}",
        "phase of vm-a", "vm-a", "vm-b", "vm-c"
    );
    let mut drained_leak = 0;
    for (label, counts) in &tally.per_phase {
        let n: u64 = counts.iter().sum();
        let cell = |c: u64| {
            let share = if n > 0 { c as f64 * 100.0 / n as f64 } else { 0.0 };
            format!("{c} ({share:.1}%)")
        };
        println!(
            "  {label:<13} {:>16} {:>16} {:>16}",
            cell(counts[0]),
            cell(counts[1]),
            cell(counts[2])
        );
        if label == "draining" || label == "migrating" {
            drained_leak += counts[0];
        }
    }
    let pinned = load.pinned.lock();
    let on_a: Vec<_> = pinned.iter().filter(|p| p.vm == Some(0)).collect();
    let broken = pinned.iter().filter(|p| p.failures > 0).count();
    println!(
        "  existing connections: {} long-lived TCP connections opened before the drain; the {} to vm-a kept answering \
         during its drain ({} answers) until their clients closed them; {broken} broken",
        pinned.len(),
        on_a.len(),
        on_a.iter().map(|p| p.answers_while_drained).sum::<u64>(),
    );
    let ok = tally.failed == 0 && drained_leak == 0 && broken == 0;
    if ok {
        println!(
            "  result: no request failed, vm-a got no new request while drained, every existing connection kept working"
        );
    } else {
        println!(
            "  result: FAILED ({} failed requests, {drained_leak} new requests to vm-a while drained, {broken} broken connections)",
            tally.failed
        );
    }
    ok
}

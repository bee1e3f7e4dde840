//! `handover-soak` (run by `bench/soak`): the migration module's promises under faults, for
//! minutes. Two handover nodes list each other as peers, with an HTTP and an L4 listener each in
//! front of the same VMs; node A also drives a HAProxy in front of them. A steady mixed load
//! (keep-alive HTTP, a new connection per request, long-lived TCP) goes through A, B and the
//! HAProxy while workers drive 1,000 migrations whose notices go to either node, and faults are
//! injected: node B frozen (SIGSTOP) twice, killed (SIGKILL) and restarted from its state file, a
//! HAProxy reload, and node A's descriptor budget exhausted by idle connections (A runs under
//! `prlimit --nofile`). The report says what the README promises: no failed request, no broken
//! connection, no new work to a draining VM, notices answered quickly even with a peer hung, every
//! VM stable at the end, memory flat; and what durability costs per notice.

mod backends;
mod clock;
mod cost;
mod load;
mod migrations;
mod report;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use handover_drivers::ControlClient;
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::load::{Counters, NodeFault, Shared};
use crate::migrations::{Controls, Record};
use crate::report::{FaultEvent, Report};
use crate::world::{Haproxy, Node, free_port, node_config};

/// Arguments.
#[derive(Debug, Parser)]
#[command(version, about = "Soak the migration module under load and faults")]
struct Args {
    /// The handover binary.
    #[arg(long, default_value = "target/release/handover")]
    bin: PathBuf,
    /// Migrations to drive.
    #[arg(long, default_value_t = 1000)]
    migrations: u64,
    /// VMs (each with an HTTP and an echo backend).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(2..=100))]
    vms: u64,
    /// Migrations driven at once (each worker has its own VMs).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=50))]
    workers: u64,
    /// Node A's descriptor limit (soft and hard).
    #[arg(long, default_value_t = 1024)]
    nofile: u64,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the report, the logs and the nodes' files go.
    #[arg(long, default_value = "target/bench/soak")]
    out: PathBuf,
    /// Skip the measurement of what durability costs per notice.
    #[arg(long)]
    skip_cost: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(soak(&args))?;
    let markdown = report.markdown();
    std::fs::write(args.out.join("report.md"), &markdown)?;
    std::fs::write(args.out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("{markdown}");
    println!("(written to {})", args.out.join("report.md").display());
    // Loads still in flight end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn soak(args: &Args) -> anyhow::Result<Report> {
    if std::process::Command::new("haproxy").arg("-v").output().is_err() {
        bail!("HAProxy is not installed (bench/soak installs Debian's package when run as root)");
    }
    let bin = args
        .bin
        .canonicalize()
        .with_context(|| format!("no handover binary at {}", args.bin.display()))?;
    let work = args.out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    let date = now_utc();
    let command = std::iter::once("bench/soak".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let clock = Clock::new();
    let vms = args.vms as usize;
    let backends = backends::start(vms, clock).await?;

    let cost = if args.skip_cost {
        Vec::new()
    } else {
        eprintln!("soak: measuring what durability costs per notice");
        cost::measure(&bin, &work, &backends.http, &backends.tcp).await?
    };

    eprintln!("soak: starting HAProxy and two nodes");
    let haproxy = Arc::new(Haproxy::start(&work, &backends.http)?);
    let ports_a = [free_port()?, free_port()?, free_port()?];
    let ports_b = [free_port()?, free_port()?, free_port()?];
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let config_a = node_config(
        ports_a,
        Some(&url(ports_b[0])),
        &backends.http,
        &backends.tcp,
        Some(&work.join("a.json")),
        Some(&haproxy.socket),
    );
    let config_b = node_config(
        ports_b,
        Some(&url(ports_a[0])),
        &backends.http,
        &backends.tcp,
        Some(&work.join("b.json")),
        None,
    );
    let node_a = Node::start("a", &bin, &work, &config_a, Some(args.nofile))?;
    let node_b = Arc::new(Mutex::new(Node::start("b", &bin, &work, &config_b, None)?));
    let controls = Controls {
        a: ControlClient::new(&node_a.control, None, Duration::from_secs(10)),
        b: ControlClient::with_timeouts(
            url(ports_b[0]),
            None,
            Duration::from_millis(500),
            Duration::from_secs(10),
        ),
    };
    let (a_web, a_tcp) = (node_a.listeners["web"], node_a.listeners["tcp"]);
    let (b_web, b_tcp) = {
        let b = node_b.lock();
        (b.listeners["web"], b.listeners["tcp"])
    };

    // The load.
    let shared = Shared {
        counters: Arc::new(Counters::default()),
        fault: Arc::new(NodeFault::default()),
        clock,
        stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let mut load = Vec::new();
    for _ in 0..6 {
        load.push(tokio::spawn(load::keep_alive(
            shared.clone(),
            0,
            a_web,
            Duration::from_millis(25),
        )));
    }
    for _ in 0..3 {
        load.push(tokio::spawn(load::keep_alive(
            shared.clone(),
            1,
            b_web,
            Duration::from_millis(25),
        )));
    }
    load.push(tokio::spawn(load::new_connections(
        shared.clone(),
        0,
        a_web,
        15.0,
    )));
    load.push(tokio::spawn(load::new_connections(
        shared.clone(),
        1,
        b_web,
        10.0,
    )));
    load.push(tokio::spawn(load::new_connections(
        shared.clone(),
        2,
        haproxy.frontend,
        20.0,
    )));
    for _ in 0..4 {
        load.push(tokio::spawn(load::long_lived(shared.clone(), 0, a_tcp)));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(load::long_lived(shared.clone(), 1, b_tcp)));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_a_start = node_a.rss_kib().unwrap_or(0);
    let rss_b = Arc::new(Mutex::new((node_b.lock().rss_kib().unwrap_or(0), 0u64)));

    // The migrations.
    eprintln!("soak: {} migrations by {} workers", args.migrations, args.workers);
    let record = Arc::new(Record::default());
    let started = tokio::time::Instant::now();
    let workers: Vec<_> = (0..args.workers as usize)
        .map(|w| {
            let mine: Vec<usize> = (0..vms).filter(|vm| vm % args.workers as usize == w).collect();
            tokio::spawn(migrations::worker(
                mine,
                args.migrations,
                controls.clone(),
                record.clone(),
                shared.fault.clone(),
                clock,
                args.seed.wrapping_mul(1000).wrapping_add(w as u64 + 1),
            ))
        })
        .collect();

    // Both nodes' memory at every tenth of the migrations.
    let rss_samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn({
        let (record, samples, node_b) = (record.clone(), rss_samples.clone(), node_b.clone());
        let pid_a = node_a.pid();
        let total = args.migrations;
        async move {
            for tenth in 1..=10u64 {
                while record.done.load(Ordering::SeqCst) < total * tenth / 10 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let rss_a = pid_a.and_then(world::rss_kib).unwrap_or(0);
                let rss_b = node_b.lock().rss_kib().unwrap_or(0);
                samples.lock().push((total * tenth / 10, rss_a, rss_b));
            }
        }
    });

    // The faults, at points of the run.
    let faults = tokio::spawn(inject_faults(
        args.migrations,
        record.clone(),
        shared.fault.clone(),
        node_b.clone(),
        haproxy.clone(),
        a_web,
        rss_b.clone(),
        clock,
    ));
    for worker in workers {
        worker.await?;
    }
    let faults = faults.await??;
    sampler.abort();
    let seconds = started.elapsed().as_secs_f64();

    // Every VM stable again everywhere (ramps take 2 s, a missed end notice 10 s more).
    eprintln!("soak: waiting until every VM is stable");
    let not_stable = settle(&controls, &haproxy, vms).await;
    shared.stop.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for task in load {
        task.abort();
    }
    let rss_a_end = node_a.rss_kib().unwrap_or(0);
    let rss_b_end = node_b.lock().rss_kib().unwrap_or(0);

    let counters = &shared.counters;
    let seen = backends.journal.lock().clone();
    let windows = record.windows.lock().clone();
    let violations = report::violations(&seen, &windows);
    std::fs::write(
        args.out.join("violations.json"),
        serde_json::to_vec_pretty(&violations)?,
    )?;
    let mut report = Report {
        date: format!(
            "{date}, {} cores, HAProxy {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            haproxy_version()
        ),
        command,
        seconds,
        migrations: args.migrations,
        requests: counters.requests.load(Ordering::SeqCst),
        failed_requests: counters.failed.load(Ordering::SeqCst),
        connections: counters.connections.load(Ordering::SeqCst),
        broken_connections: counters.broken.load(Ordering::SeqCst),
        to_draining: report::to_draining(&violations),
        notices: 0,
        notice_errors: Vec::new(),
        notice_p50_ms: 0.0,
        notice_p99_ms: 0.0,
        notices_peer_hung: 0,
        notice_peer_hung_p50_ms: 0.0,
        notice_peer_hung_p99_ms: 0.0,
        notices_peer_known_hung: 0,
        notice_peer_known_hung_p99_ms: 0.0,
        notice_max_ms: 0.0,
        redirected: record.redirected.load(Ordering::SeqCst),
        not_stable,
        rss_a_kib: (rss_a_start, rss_a_end),
        rss_b_kib: (rss_b.lock().0, rss_b_end),
        rss_samples: rss_samples.lock().clone(),
        lost_with_node: counters.lost_with_node.load(Ordering::SeqCst),
        broken_with_node: counters.broken_with_node.load(Ordering::SeqCst),
        echoes: counters.echoes.load(Ordering::SeqCst),
        faults,
        cost,
    };
    report.notices_from(&record.samples.lock());
    std::fs::write(
        args.out.join("notices.json"),
        serde_json::to_vec(&*record.samples.lock())?,
    )?;
    drop(node_a);
    Ok(report)
}

fn haproxy_version() -> String {
    std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Injects each fault once the migrations reach its share of the run.
#[allow(clippy::too_many_arguments)]
async fn inject_faults(
    total: u64,
    record: Arc<Record>,
    fault: Arc<NodeFault>,
    node_b: Arc<Mutex<Node>>,
    haproxy: Arc<Haproxy>,
    a_web: std::net::SocketAddr,
    rss_b: Arc<Mutex<(u64, u64)>>,
    clock: Clock,
) -> anyhow::Result<Vec<FaultEvent>> {
    let mut events = Vec::new();
    let plan = [0.12, 0.30, 0.45, 0.60, 0.78];
    for (i, share) in plan.iter().enumerate() {
        while (record.done.load(Ordering::SeqCst) as f64) < share * total as f64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let at_s = clock.ms() as f64 / 1000.0;
        let what = match i {
            0 | 4 => {
                let hold = if i == 0 { 6 } else { 4 };
                fault.begin();
                record.hung_since_ms.store(clock.ms(), Ordering::SeqCst);
                record.peer_hung.store(true, Ordering::SeqCst);
                node_b.lock().signal("STOP")?;
                tokio::time::sleep(Duration::from_secs(hold)).await;
                node_b.lock().signal("CONT")?;
                record.peer_hung.store(false, Ordering::SeqCst);
                fault.end(&clock);
                format!("node B frozen (SIGSTOP) for {hold} s")
            }
            1 => {
                fault.begin();
                node_b.lock().kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let node = node_b.clone();
                tokio::task::spawn_blocking(move || node.lock().restart()).await??;
                rss_b.lock().0 = node_b.lock().rss_kib().unwrap_or(0);
                fault.end(&clock);
                "node B killed (SIGKILL), restarted 2 s later from its state file".to_string()
            }
            2 => {
                haproxy.reload()?;
                "HAProxy reloaded (its new worker has none of the runtime changes)".to_string()
            }
            _ => {
                let opened = load::flood(a_web, 1200, Duration::from_secs(8)).await;
                format!(
                    "node A's descriptors exhausted: {opened} idle connections held 8 s against its limit"
                )
            }
        };
        eprintln!("soak: {at_s:.0} s: {what}");
        events.push(FaultEvent { at_s, what });
    }
    Ok(events)
}

/// Waits until every VM is stable on both nodes and every HAProxy server is at rest (30 s at
/// most); returns what is not.
async fn settle(controls: &Controls, haproxy: &Haproxy, vms: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut not_stable = Vec::new();
        for (name, client) in [("a", &controls.a), ("b", &controls.b)] {
            match client.get::<Vec<handover_core::api::VmView>>("/v1/vms").await {
                Ok(views) => {
                    for view in views {
                        let backends_stable = view.backends.iter().all(|b| {
                            b.backend.phase == handover_core::phase::Phase::Stable
                                && b.backend.effective_weight >= 1.0
                        });
                        if view.phase != handover_core::phase::Phase::Stable || !backends_stable {
                            not_stable.push(format!("{} on node {name} ({})", view.vm, view.phase));
                        }
                    }
                }
                Err(e) => not_stable.push(format!("node {name} does not answer: {e}")),
            }
        }
        match haproxy.servers_not_at_rest() {
            Ok(servers) => not_stable.extend(servers.into_iter().map(|s| format!("HAProxy server {s}"))),
            Err(e) => not_stable.push(format!("HAProxy does not answer: {e}")),
        }
        if not_stable.is_empty() || tokio::time::Instant::now() > deadline {
            let _ = vms;
            return not_stable;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

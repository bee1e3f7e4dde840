//! The dashboard, in a real browser: Debian's Chromium driven by Playwright (`dashboard/observe.mjs`)
//! watches a running node's page while HTTP load runs and vm-a goes through a migration driven
//! through the control API. The page must show vm-a draining → migrating → ramping → stable as it
//! happens (pushed over server-sent events), move vm-a's line in the share chart and its legend to
//! 0 % while drained, load nothing from outside the node, and a screenshot is taken while vm-a ramps
//! (`target/dashboard.png`; the README shows a copy as `docs/dashboard.png`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::Node;
use common::backends::{HttpBackend, HttpClient};
use common::harness::{self, Lack};

fn main() {
    harness::main(vec![
        harness::test_async(
            "the_dashboard_follows_a_migration_live_in_a_browser",
            the_dashboard_follows_a_migration_live_in_a_browser,
        )
        .needs(browser),
    ]);
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// Whether Chromium, node and Playwright are here.
fn browser() -> Result<(), Lack> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(Lack::Missing(format!(
            "{chromium} is missing (apt-get install chromium)"
        )));
    }
    if !script_dir().join("node_modules/playwright-core").exists() {
        return Err(Lack::Missing(format!(
            "playwright-core is not installed (npm install --prefix {})",
            script_dir().display()
        )));
    }
    harness::program("node", "--version", "nodejs")
}

async fn the_dashboard_follows_a_migration_live_in_a_browser() {
    let backends = [
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
    ];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let config = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
        common::pool_toml("p", "ramp = { window = \"6s\", min_percent = 5 }", &addresses)
    );
    let node = Node::start(&config);

    // Steady load, as the demo's.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let address = node.listener("web");
        tokio::spawn(async move {
            let mut client = HttpClient::connect(address).await;
            let mut failed = 0;
            while !stop.load(Ordering::Relaxed) {
                if client.get("/").await.status != 200 {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failed
        })
    };

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut browser = Command::new("node")
        .current_dir(script_dir())
        .arg("observe.mjs")
        .arg(format!("{}/", node.control))
        .arg("vm-a")
        .arg(&screenshot)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let (lines, seen) = mpsc::channel::<String>();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let next = |timeout: Duration| seen.recv_timeout(timeout);
    assert_eq!(
        next(Duration::from_secs(60)).as_deref(),
        Ok("ready"),
        "the page went live"
    );

    // The migration, through the API, with time for the page to see each phase.
    let mut observed = Vec::new();
    for (notice, settle) in [("prepare", 2), ("started", 2), ("completed", 0)] {
        let (status, body) = node.notice("vm-a", common::notice(notice)).await;
        assert_eq!(status, 200, "{notice}: {body}");
        tokio::time::sleep(Duration::from_secs(settle)).await;
    }
    let outcome = loop {
        let line = next(Duration::from_secs(60)).expect("the page keeps reporting");
        let value: serde_json::Value = serde_json::from_str(&line).expect("observe.mjs prints JSON");
        if value.get("phase").is_some() {
            observed.push(value);
        } else {
            break value;
        }
    };
    let status = browser.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(load.await.unwrap(), 0, "no request failed during the migration");
    assert!(
        status.success(),
        "the page never showed vm-a stable again: {outcome} after {observed:?}"
    );
    assert_eq!(
        outcome["offsite"],
        serde_json::json!([]),
        "the page loaded something from elsewhere"
    );
    assert_eq!(
        outcome["errors"],
        serde_json::json!([]),
        "the page's script failed"
    );

    let phases: Vec<&str> = observed.iter().map(|v| v["phase"].as_str().unwrap()).collect();
    assert_eq!(
        phases,
        ["draining", "migrating", "ramping", "stable"],
        "the page showed each phase as it happened"
    );
    assert_eq!(
        outcome["lowest"]["draining"], 0.0,
        "the legend showed vm-a at 0 % of new work while drained: {outcome}"
    );
    assert!(
        outcome["lowest"]["stable"].as_f64().unwrap_or(0.0) > 30.0,
        "and at its full third once stable: {outcome}"
    );
    let lines: Vec<&str> = observed
        .iter()
        .map(|v| v["line"].as_str().unwrap_or(""))
        .collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]) && lines.iter().all(|l| l.starts_with('M')),
        "vm-a's line moved between phases: {lines:?}"
    );
    let meta = std::fs::metadata(&screenshot).expect("a screenshot was taken while vm-a ramped");
    assert!(meta.len() > 10_000, "a real picture: {} bytes", meta.len());
}

//! `bench/proxy` end to end, shortened: handover, real HAProxy and real nginx behind the same
//! backends, driven by wrk, h2load and handover-loadgen, one short run each (TLS and HTTP/2 too). Checks that every scenario
//! measures every proxy (requests served, CPU counted, idle connections kept open) and that the
//! table and the goals are written; the figures of so short a run on a busy machine mean little,
//! so none is compared. Skipped, with the reason, where a part is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::harness::{self, Lack};
use common::lb::{haproxy_available, nginx_available};
use serde_json::Value;

fn main() {
    harness::main(vec![
        harness::test(
            "bench_proxy_measures_every_proxy_in_every_scenario_and_writes_the_table",
            bench_proxy_measures_every_proxy_in_every_scenario_and_writes_the_table,
        )
        .needs(bench_parts),
    ]);
}

const SCENARIOS: [&str; 8] = [
    "l7-keepalive-c32",
    "l4-keepalive-c32",
    "l7-drain-c32",
    "l7-rate",
    "idle-10k",
    "tls-keepalive-c32",
    "tls-handshake-c32",
    "h2-c8-m16",
];
const TARGETS: [&str; 3] = ["handover-1", "haproxy-1", "nginx-1"];

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether wrk is here and works: `wrk -v` prints its version but exits 1.
fn wrk() -> Result<(), Lack> {
    match Command::new("wrk").arg("-v").output() {
        Ok(out) if String::from_utf8_lossy(&out.stdout).starts_with("wrk ") => Ok(()),
        Ok(out) => Err(Lack::Broken(format!(
            "`wrk -v` printed no version ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Lack::Missing(
            "wrk is not installed (Debian package wrk; scripts/test installs it as root)".into(),
        )),
        Err(e) => Err(Lack::Broken(format!("wrk cannot run: {e}"))),
    }
}

/// What the benchmark needs: HAProxy, nginx, wrk, python3, h2load, openssl and the load
/// generator built beside the binary under test.
fn bench_parts() -> Result<(), Lack> {
    haproxy_available()?;
    nginx_available()?;
    wrk()?;
    harness::program("python3", "--version", "python3")?;
    harness::program("h2load", "--version", "nghttp2-client")?;
    harness::program("openssl", "version", "openssl")?;
    let binary = common::binary();
    let bin_dir = Path::new(&binary).parent().expect("binary directory");
    if !bin_dir.join("handover-loadgen").exists() {
        return Err(Lack::Missing(format!(
            "handover-loadgen is not built in {} (cargo build -p handover-loadgen; scripts/test builds it)",
            bin_dir.display()
        )));
    }
    Ok(())
}

fn bench_proxy_measures_every_proxy_in_every_scenario_and_writes_the_table() {
    let bin_dir = Path::new(&common::binary())
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let out = tempfile::tempdir().expect("temporary directory");
    let output = Command::new("python3")
        .arg(checkout().join("bench/proxy.py"))
        .args(["--any-load", "--reps", "1", "--seconds", "1", "--rate", "2000"])
        .args([
            "--scenarios",
            &SCENARIOS.join(","),
            "--targets",
            &TARGETS.join(","),
        ])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run bench/proxy.py");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench/proxy.py failed: {stderr}");

    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).expect("results.json"))
            .expect("results.json is JSON");
    let summary = results["summary"].as_array().expect("a summary");
    for scenario in SCENARIOS {
        for target in TARGETS {
            let row = summary
                .iter()
                .find(|r| r["scenario"] == scenario && r["target"] == target)
                .unwrap_or_else(|| panic!("no row for {scenario} {target}: {stderr}"));
            if scenario == "idle-10k" {
                assert_eq!(
                    row["alive"], 10_000,
                    "{target} kept every idle connection open: {row}"
                );
                let kib = row["kib_per_connection"].as_f64().expect("KiB per connection");
                assert!(kib > 0.0 && kib < 64.0, "{target}: {kib} KiB per idle connection");
            } else {
                assert_eq!(row["errors"], 0, "{scenario} {target}: no failed request: {row}");
                assert!(
                    row["rps"].as_f64().unwrap_or(0.0) > 100.0,
                    "{scenario} {target} served: {row}"
                );
                assert!(
                    row["cpu_us"].as_f64().unwrap_or(0.0) > 0.0,
                    "{scenario} {target}: CPU counted: {row}"
                );
                assert!(
                    row["peak_rss_kib"].as_f64().unwrap_or(0.0) > 0.0,
                    "{scenario} {target}: {row}"
                );
            }
        }
    }

    let table = std::fs::read_to_string(out.path().join("table.md")).expect("table.md");
    for scenario in SCENARIOS {
        assert!(
            table.contains(&format!("| {scenario} | handover | 1 |")),
            "{scenario} in the table:\n{table}"
        );
    }
    assert!(
        table.contains("Goals, from this run:"),
        "the goals are computed:\n{table}"
    );
    assert!(
        table.contains("L4 keep-alive: CPU per request ≤ 0.9 × nginx stream's (1 worker)"),
        "{table}"
    );
    assert!(table.contains("one backend draining ÷ without"), "{table}");
    assert!(
        table.contains("TLS handshakes per second (new connection per request) ≥ HAProxy's (1 worker)"),
        "{table}"
    );
}

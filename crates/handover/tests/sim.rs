//! `handover sim` through the binary: the shipped scenarios run, the outputs (table, JSON, SVG) are
//! what they claim, runs are deterministic, and bad scenarios or arguments are refused clearly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sim")
}

fn sim(args: &[&str]) -> Output {
    Command::new(common::binary())
        .arg("sim")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn one_vm_under_each_policy_writes_table_json_and_picture() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("one-vm.json");
    let svg = dir.path().join("one-vm.svg");
    let markdown = dir.path().join("one-vm.md");
    let scenario = examples().join("one-vm.toml");
    let output = sim(&[
        "--scenario",
        scenario.to_str().unwrap(),
        "--seeds",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--markdown",
        markdown.to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("| policy | total time s | downtime ms |"),
        "{stdout}"
    );
    assert!(stdout.contains("Simulated 8 migrations in"), "{stdout}");
    assert!(
        std::fs::read_to_string(&markdown)
            .unwrap()
            .contains("| unaware |")
    );

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["seeds"], 2);
    let policies = report["points"][0]["per_policy"].as_array().unwrap();
    let share = |name: &str| {
        let p = policies
            .iter()
            .find(|p| p["policy"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(p["total_time_s"]["n"], 2, "two seeds: {p}");
        p["vm_share_in_migration"]["mean"].as_f64().unwrap()
    };
    // One VM in a pool of four: an unaware balancer keeps sending it a quarter of the new work,
    // a drain sends it none, a reduction to 0.25 of its weight about a twelfth.
    assert!((share("unaware") - 0.25).abs() < 0.01);
    assert!(share("drain") < 0.01);
    let reduced = share("reduce 0.25");
    assert!((0.06..0.10).contains(&reduced), "{reduced}");

    // Per-backend utilisation over time: the drained VM (backend 0) is idle while it migrates
    // (from 10 s), the others take its share; an unaware balancer keeps it busy.
    let timelines = report["timelines"].as_array().unwrap();
    assert_eq!(timelines.len(), 4);
    let busy_at = |policy: &str, t: f64| -> Vec<f64> {
        let line = timelines.iter().find(|l| l["policy"] == policy).unwrap();
        let sample = line["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["t"].as_f64().unwrap() >= t)
            .unwrap_or_else(|| panic!("a sample at {t} s"));
        sample["utilisation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_f64().unwrap())
            .collect()
    };
    let drained = busy_at("drain", 15.0);
    let unaware = busy_at("unaware", 15.0);
    assert_eq!(drained.len(), 4);
    assert!(
        drained.iter().chain(&unaware).all(|u| (0.0..=1.0).contains(u)),
        "{drained:?} {unaware:?}"
    );
    assert!(
        drained[0] < 0.001 && unaware[0] > 0.01,
        "{drained:?} vs {unaware:?}"
    );
    assert!(
        drained[1] > unaware[1],
        "the others take the drained VM's share: {drained:?} vs {unaware:?}"
    );

    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(
        picture.starts_with("<svg"),
        "{}",
        &picture[..picture.len().min(200)]
    );
    assert!(picture.contains("share of new work") && picture.contains("drain"));
}

#[test]
fn the_same_seeds_give_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = examples().join("one-vm.toml");
    let run = |name: &str| {
        let path = dir.path().join(name);
        let output = sim(&[
            "--scenario",
            scenario.to_str().unwrap(),
            "--seeds",
            "1",
            "--json",
            path.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        std::fs::read_to_string(path).unwrap()
    };
    assert_eq!(run("a.json"), run("b.json"));
}

#[test]
fn every_shipped_scenario_runs() {
    let mut ran = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let output = sim(&["--scenario", path.to_str().unwrap(), "--seeds", "1"]);
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            text(&output.stderr)
        );
        assert!(stdout.contains("| policy |"), "{}: {stdout}", path.display());
        ran += 1;
    }
    assert!(ran >= 6, "the six shipped scenarios: {ran}");
}

#[test]
fn the_fleet_wave_reports_every_policy() {
    let output = sim(&["--scenario", examples().join("evacuation.toml").to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("| policy | wave time min |"), "{stdout}");
    for policy in ["unaware", "drain"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("| {policy} |"))),
            "{policy}: {stdout}"
        );
    }
}

#[test]
fn bad_scenarios_and_arguments_are_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(examples().join("one-vm.toml")).unwrap();
    let cases = [
        (base.replace("[vm]", "[vm]\nram_size = \"4GiB\""), "ram_size"),
        (
            base.replace("[vm]", "[sweep]\n\"vm.nope\" = [1, 2]\n[vm]"),
            "vm.nope",
        ),
        (format!("{base}\n[fleet]\nhosts = 0\nvms_per_host = 1\n"), "fleet"),
        (
            base.replace("[migration]", "[migration]\nstop_rule = \"vmware\""),
            "migration.stop_rule",
        ),
        ("name = ".to_string(), "line 1"),
    ];
    for (i, (scenario, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, scenario).unwrap();
        let output = sim(&["--scenario", path.to_str().unwrap()]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "case {i}: {stderr}");
        assert!(stderr.contains(field), "case {i} should name {field}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing simulated for case {i}");
    }
    let output = sim(&[
        "--scenario",
        examples().join("one-vm.toml").to_str().unwrap(),
        "--seeds",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let output = sim(&["--scenario", "/nonexistent/scenario.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("/nonexistent/scenario.toml"));
}

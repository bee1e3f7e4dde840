//! The real-VM testbed through `handover testbed check`: three tiny Debian guests (kernel from
//! Debian's package, busybox initramfs) in a network namespace behind handover; vm-a is live-migrated
//! between two QEMU processes with a drain while an open-loop HTTP load and long-lived TCP
//! connections run. No request may fail, no connection break; the phases come in order and the
//! guest answers from the destination afterwards.

mod common;

use common::harness::{self, Lack};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    harness::main(vec![
        harness::test(
            "a_loaded_guest_migrates_with_a_drain_without_a_failed_request_or_a_broken_connection",
            a_loaded_guest_migrates_with_a_drain_without_a_failed_request_or_a_broken_connection,
        )
        .needs(testbed_parts),
    ]);
}

/// What the testbed needs: root (a network namespace, taps), QEMU with qboot, iproute2.
fn testbed_parts() -> Result<(), Lack> {
    harness::root()?;
    common::qemu::available()?;
    if !Path::new("/usr/share/qemu/qboot.rom").exists() {
        return Err(Lack::Missing(
            "QEMU's qboot.rom is missing (qemu-system-data)".into(),
        ));
    }
    harness::program("ip", "-V", "iproute2")
}

fn a_loaded_guest_migrates_with_a_drain_without_a_failed_request_or_a_broken_connection() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The guest is built from Debian's packages; without them (no mirror) the test cannot run.
    let build = Command::new(checkout.join("testbed/build-guest"))
        .output()
        .unwrap();
    // scripts/test builds the guest before the tests: a build that fails is a failure.
    assert!(
        build.status.success(),
        "cannot build the guest (testbed/build-guest): {}",
        String::from_utf8_lossy(&build.stderr).trim()
    );
    let out = tempfile::tempdir().unwrap();
    let netns = format!("handover-ci-{}", std::process::id());
    let started = Instant::now();
    let output = Command::new(common::binary())
        .args(["testbed", "check", "--netns", &netns])
        .arg("--testbed-dir")
        .arg(checkout.join("testbed"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}\n{stdout}\n(took {:?})", started.elapsed());
    assert!(
        !String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout
        )
        .contains(&netns),
        "the namespace is removed afterwards"
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("check.json")).unwrap()).unwrap();
    let verdicts = report["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 6);
    for verdict in verdicts {
        assert_eq!(verdict["passed"], true, "{verdict}");
    }
    let metrics = &report["metrics"];
    assert_eq!(metrics["status"], "completed");
    assert_eq!(metrics["failed"], 0);
    assert_eq!(metrics["broken_connections"], 0);
    assert!(metrics["requests"].as_u64().unwrap() >= 30, "{metrics}");
    assert!(metrics["passes"].as_f64().unwrap() >= 1.0);
    assert!(started.elapsed() < Duration::from_secs(300), "under five minutes");
    assert!(out.path().join("check.svg").exists());
}

//! `judge()` on synthetic runs: a clean run passes every claim, and each kind of fault fails the
//! claim about it (and only that one), so a testbed run's verdicts mean what they say.

use std::time::Duration;

use handover_core::api::MigrationView;
use handover_core::migration::MigrationRecord;

use super::{Verdict, judge};
use crate::balancer::Policy;
use crate::load::{EchoRecord, RequestRecord};
use crate::metrics::measure;
use crate::migration::{MigrationResult, Settings};
use crate::run::{MIGRATING, RunRecord, RunSpec};

/// A clean run: 3 VMs answer requests every 10 ms over 20 s; the copy runs from 5 s to 9 s with
/// the blackout at 8.9 s; vm-a answers nothing from the drain (4 s) until just after the end; two long-lived
/// connections, one on vm-a, never break; handover recorded every phase in order.
fn clean() -> RunRecord {
    let mut requests = Vec::new();
    let mut t = 0.0;
    let mut i = 0;
    while t < 20_000.0 {
        let vms = if (4_000.0..9_500.0).contains(&t) {
            &["vm-b", "vm-c"][..]
        } else {
            &["vm-a", "vm-b", "vm-c"][..]
        };
        requests.push(RequestRecord {
            start_ms: t,
            end_ms: t + 3.0,
            status: 200,
            vm: Some(vms[i % vms.len()].to_string()),
            error: None,
        });
        t += 10.0;
        i += 1;
    }
    let record: MigrationRecord = serde_json::from_value(serde_json::json!({
        "id": 1, "vm": MIGRATING, "queued_at": null, "prepared_at": 1_000_u64, "started_at": 1_100_u64,
        "drained_at": 1_050_u64, "drain_wait_ms": 50, "drained": true, "ended_at": 6_000_u64,
        "end": "completed", "stable_at": 16_000_u64, "progress": null
    }))
    .unwrap();
    RunRecord {
        spec: RunSpec {
            policy: Policy::named("drain").unwrap(),
            rate: 100.0,
            kib: 1,
            settings: Settings {
                max_bandwidth: 12 << 20,
                downtime_limit_ms: 300,
                timeout_s: 60.0,
            },
            echo_connections: 2,
            warmup: Duration::from_secs(3),
            tail: Duration::from_secs(10),
            repetition: 0,
        },
        migration: MigrationResult {
            status: "completed".into(),
            total_time_ms: Some(4_000.0),
            downtime_ms: Some(100.0),
            transferred_bytes: Some(64.0 * 1048576.0),
            passes: Some(2.0),
            announced_ms: Some(4_000.0),
            setup_ms: Some(5_000.0),
            stop_ms: Some(8_900.0),
            resume_ms: Some(9_000.0),
            end_ms: Some(9_000.0),
            ..MigrationResult::default()
        },
        handover: Some(MigrationView::of(&record, 16_000)),
        requests,
        echoes: ["vm-a", "vm-b"]
            .iter()
            .map(|vm| EchoRecord {
                vm: Some(vm.to_string()),
                opened_ms: 0.0,
                exchanges: 200,
                max_rtt_ms: 2.0,
                broken: None,
            })
            .collect(),
        answered_from_destination: Some(Ok(MIGRATING.to_string())),
        host_load: None,
    }
}

fn verdicts(run: &RunRecord) -> Vec<Verdict> {
    judge(run, &measure(run))
}

/// The claims that failed, by the start of their text.
fn failed(run: &RunRecord) -> Vec<String> {
    verdicts(run)
        .into_iter()
        .filter(|v| !v.passed)
        .map(|v| v.claim)
        .collect()
}

#[test]
fn a_clean_run_passes_every_claim() {
    let verdicts = verdicts(&clean());
    assert_eq!(verdicts.len(), 6);
    assert!(verdicts.iter().all(|v| v.passed), "{verdicts:#?}");
}

#[test]
fn one_failed_request_fails_only_the_request_claim() {
    let mut run = clean();
    run.requests[500].status = 502;
    assert_eq!(failed(&run), vec!["no client request failed"]);
    let mut run = clean();
    run.requests[10].error = Some("connection reset".into());
    assert_eq!(failed(&run), vec!["no client request failed"]);
}

#[test]
fn a_broken_connection_or_none_on_the_migrating_vm_fails_the_connection_claim() {
    let claim = "no established connection broke (one or more of them on the migrating VM)";
    let mut run = clean();
    run.echoes[1].broken = Some((8_950.0, "reset".into()));
    assert_eq!(failed(&run), vec![claim]);
    // Unbroken, but none on the migrating VM: the claim was not tested, so it fails.
    let mut run = clean();
    run.echoes[0].vm = Some("vm-c".into());
    assert_eq!(failed(&run), vec![claim]);
}

#[test]
fn a_request_to_the_vm_during_the_copy_fails_the_drain_claim() {
    let mut run = clean();
    let during = run.requests.iter().position(|r| r.start_ms >= 6_000.0).unwrap();
    run.requests[during].vm = Some(MIGRATING.into());
    assert_eq!(
        failed(&run),
        vec!["the migrating VM got no new request during the copy"]
    );
}

#[test]
fn phases_out_of_order_or_missing_fail_the_phase_claim() {
    let claim = "handover's phases came in order: prepared, drained, started, ended, stable";
    let mut run = clean();
    run.handover.as_mut().unwrap().record.ended_at = Some(900);
    assert_eq!(failed(&run), vec![claim]);
    let mut run = clean();
    run.handover.as_mut().unwrap().record.drained_at = None;
    assert_eq!(failed(&run), vec![claim]);
    let mut run = clean();
    run.handover = None;
    assert_eq!(failed(&run), vec![claim]);
}

#[test]
fn a_migration_that_did_not_complete_or_a_guest_still_at_the_source_fails_its_claim() {
    let mut run = clean();
    run.migration.status = "failed".into();
    assert_eq!(failed(&run), vec!["the live migration completed"]);
    let mut run = clean();
    run.migration.timed_out = true;
    assert_eq!(failed(&run), vec!["the live migration completed"]);
    let mut run = clean();
    run.answered_from_destination = Some(Err("connection refused".into()));
    assert_eq!(
        failed(&run),
        vec!["after the migration the guest answers from the destination (source stopped)"]
    );
}

#[test]
fn a_run_without_traffic_passes_nothing_about_traffic() {
    let mut run = clean();
    run.requests.clear();
    let failed = failed(&run);
    assert!(
        failed.contains(&"no client request failed".to_string()),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"the migrating VM got no new request during the copy".to_string()),
        "{failed:?}"
    );
}

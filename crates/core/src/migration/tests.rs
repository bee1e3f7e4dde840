use super::*;
use crate::phase::Readdress;
use proptest::prelude::*;

fn vm(name: &str) -> VmId {
    VmId::new(name).unwrap()
}

fn pool(name: &str, vms: &[&str], guard: GuardConfig) -> PoolTopology {
    PoolTopology {
        name: name.to_string(),
        backend_vms: vms.iter().map(|v| vm(v)).collect(),
        guard,
        deadline: Duration::from_secs(60),
        ramp_window: Duration::from_secs(10),
        restore: RestoreMode::Ramp,
        adaptive: crate::adaptive::AdaptiveDrain::default(),
    }
}

fn registry(guard: GuardConfig) -> Registry {
    Registry::new(
        Topology {
            pools: vec![pool("web", &["vm-a", "vm-b", "vm-c"], guard)],
        },
        RegistryDefaults::default(),
    )
}

fn applied(outcome: Result<Outcome, NoticeError>) -> Transition {
    match outcome {
        Ok(Outcome::Applied(t)) => t,
        other => panic!("expected a transition, got {other:?}"),
    }
}

const NONE: NoticeOptions = NoticeOptions {
    deadline_ms: None,
    readdress: None,
};

#[test]
fn a_full_migration_walks_every_phase_with_timestamps() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    let t = applied(reg.apply(&a, Notice::Prepare, 1_000, NONE));
    assert_eq!((t.from, t.to), (Phase::Stable, Phase::Draining));
    assert_eq!(
        t.command,
        PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: false,
            deadline_in_ms: 60_000,
            level: None,
        }
    );
    let t = applied(reg.apply(&a, Notice::Started, 2_000, NONE));
    assert_eq!(t.to, Phase::Migrating);
    let t = applied(reg.apply(&a, Notice::Completed, 5_000, NONE));
    assert_eq!(t.to, Phase::Ramping);
    assert_eq!(
        t.command,
        PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Completed
        }
    );
    assert_eq!(reg.next_due(), Some(15_000));
    assert!(reg.tick(14_999).is_empty());
    let done = reg.tick(15_000);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].to, Phase::Stable);
    assert!(!done[0].needs_fanout());

    let record = reg.history().next().unwrap();
    assert_eq!(record.prepared_at, Some(1_000));
    assert_eq!(record.started_at, Some(2_000));
    assert_eq!(record.ended_at, Some(5_000));
    assert_eq!(record.end, Some(EndReason::Completed));
    assert_eq!(record.stable_at, Some(15_000));
    assert_eq!(
        record.phase_durations(20_000),
        (Some(1_000), Some(3_000), Some(10_000))
    );
}

#[test]
fn repeated_prepare_is_unchanged_and_end_without_prepare_is_an_error() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    assert!(matches!(
        reg.apply(&a, Notice::Completed, 0, NONE),
        Err(NoticeError::NotMigrating {
            phase: Phase::Stable,
            ..
        })
    ));
    applied(reg.apply(&a, Notice::Prepare, 0, NONE));
    assert!(matches!(
        reg.apply(&a, Notice::Prepare, 10, NONE),
        Ok(Outcome::Unchanged { .. })
    ));
    assert_eq!(reg.history().count(), 1);
}

#[test]
fn missing_end_notice_is_restored_at_the_deadline() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    applied(reg.apply(
        &a,
        Notice::Prepare,
        0,
        NoticeOptions {
            deadline_ms: Some(2_000),
            readdress: None,
        },
    ));
    assert_eq!(reg.next_due(), Some(2_000));
    let t = reg.tick(2_000);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].cause, Cause::Deadline);
    assert_eq!(t[0].to, Phase::Ramping);
    assert_eq!(reg.history().next().unwrap().end, Some(EndReason::Deadline));
}

#[test]
fn failure_restores_immediately_when_the_pool_says_so() {
    let mut topology = Topology {
        pools: vec![pool("web", &["vm-a", "vm-b"], GuardConfig::default())],
    };
    topology.pools[0].restore = RestoreMode::Immediate;
    let mut reg = Registry::new(topology, RegistryDefaults::default());
    let a = vm("vm-a");
    applied(reg.apply(&a, Notice::Prepare, 0, NONE));
    let t = applied(reg.apply(&a, Notice::Failed, 100, NONE));
    assert_eq!(t.to, Phase::Stable);
    assert_eq!(
        t.command,
        PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Failed
        }
    );
}

#[test]
fn started_without_prepare_drains_at_once() {
    let mut reg = registry(GuardConfig::default());
    let t = applied(reg.apply(&vm("vm-b"), Notice::Started, 50, NONE));
    assert_eq!((t.from, t.to), (Phase::Stable, Phase::Migrating));
    let record = reg.history().next().unwrap();
    assert_eq!(record.prepared_at, Some(50));
    assert_eq!(record.started_at, Some(50));
}

#[test]
fn guard_refuses_a_drain_below_min_active_and_says_why() {
    let mut reg = registry(GuardConfig {
        min_active: 2,
        ..GuardConfig::default()
    });
    applied(reg.apply(&vm("vm-a"), Notice::Prepare, 0, NONE));
    let err = reg.apply(&vm("vm-b"), Notice::Prepare, 0, NONE).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused by the capacity guard: draining vm-b would leave pool web with 1 active backend; min_active = 2"
    );
    assert_eq!(reg.phase(&vm("vm-b")), Phase::Stable);
}

#[test]
fn guard_queues_and_admits_when_a_migration_ends() {
    let guard = GuardConfig {
        max_concurrent: Some(1),
        on_violation: GuardAction::Queue,
        ..GuardConfig::default()
    };
    let mut reg = registry(guard);
    applied(reg.apply(&vm("vm-a"), Notice::Prepare, 0, NONE));
    match reg.apply(&vm("vm-b"), Notice::Prepare, 10, NONE) {
        Ok(Outcome::Queued { reason }) => assert!(reason.contains("max_concurrent = 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(reg.phase(&vm("vm-b")), Phase::Stable);
    applied(reg.apply(&vm("vm-a"), Notice::Completed, 100, NONE));
    let admitted = reg.tick(100);
    assert_eq!(admitted.len(), 1);
    assert_eq!(admitted[0].vm, vm("vm-b"));
    assert_eq!(admitted[0].cause, Cause::Dequeued);
    assert_eq!(reg.phase(&vm("vm-b")), Phase::Draining);
    let record = reg.migration(admitted[0].migration.unwrap()).unwrap();
    assert_eq!((record.queued_at, record.prepared_at), (Some(10), Some(100)));
}

#[test]
fn a_refused_prepare_leaves_everything_unchanged() {
    let mut reg = registry(GuardConfig {
        max_concurrent: Some(1),
        ..GuardConfig::default()
    });
    applied(reg.apply(&vm("vm-a"), Notice::Prepare, 0, NONE));
    let before = format!(
        "{:?}",
        (reg.vms().collect::<Vec<_>>(), reg.history().collect::<Vec<_>>())
    );
    assert!(reg.apply(&vm("vm-c"), Notice::Prepare, 5, NONE).is_err());
    let after = format!(
        "{:?}",
        (reg.vms().collect::<Vec<_>>(), reg.history().collect::<Vec<_>>())
    );
    assert_eq!(before, after);
}

#[test]
fn vms_only_peers_serve_use_the_default_deadline() {
    let mut reg = registry(GuardConfig::default());
    let t = applied(reg.apply(&vm("elsewhere"), Notice::Prepare, 0, NONE));
    assert_eq!(
        t.command,
        PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: false,
            deadline_in_ms: 600_000,
            level: None,
        }
    );
    let end = applied(reg.apply(&vm("elsewhere"), Notice::Completed, 10, NONE));
    assert_eq!(end.to, Phase::Stable, "no local ramp to wait for");
    assert_eq!(
        end.command,
        PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Completed
        }
    );
}

#[test]
fn history_is_bounded() {
    let mut reg = Registry::new(
        Topology::default(),
        RegistryDefaults {
            history_limit: 3,
            ..RegistryDefaults::default()
        },
    );
    let a = vm("vm-a");
    for i in 0..10 {
        applied(reg.apply(&a, Notice::Prepare, i * 10, NONE));
        applied(reg.apply(&a, Notice::Completed, i * 10 + 5, NONE));
    }
    assert_eq!(reg.history().count(), 3);
}

#[test]
fn a_completed_notice_can_move_the_vm_and_the_move_persists() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    applied(reg.apply(&a, Notice::Prepare, 0, NONE));
    let readdress = Readdress {
        new_ip: Some("10.0.0.9".parse().unwrap()),
        ..Readdress::default()
    };
    let options = NoticeOptions {
        deadline_ms: None,
        readdress: Some(readdress.clone()),
    };
    let t = applied(reg.apply(&a, Notice::Completed, 10, options));
    assert_eq!(t.readdress.as_ref(), Some(&readdress));
    reg.tick(100_000);
    assert_eq!(reg.phase(&a), Phase::Stable);
    assert_eq!(
        reg.vm(&a).unwrap().readdress.as_ref(),
        Some(&readdress),
        "kept after the ramp"
    );
    applied(reg.apply(&a, Notice::Prepare, 200_000, NONE));
    assert_eq!(
        reg.vm(&a).unwrap().readdress.as_ref(),
        Some(&readdress),
        "kept through the next migration"
    );
}

#[test]
fn a_failed_migration_does_not_move_the_vm() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    applied(reg.apply(&a, Notice::Prepare, 0, NONE));
    let options = NoticeOptions {
        deadline_ms: None,
        readdress: Some(Readdress {
            new_ip: Some("10.0.0.9".parse().unwrap()),
            ..Readdress::default()
        }),
    };
    let t = applied(reg.apply(&a, Notice::Failed, 10, options));
    assert_eq!(t.readdress, None);
}

#[test]
fn a_snapshot_restores_phases_deadlines_queue_and_history() {
    let guard = GuardConfig {
        max_concurrent: Some(1),
        on_violation: GuardAction::Queue,
        ..GuardConfig::default()
    };
    let mut reg = registry(guard);
    applied(reg.apply(&vm("vm-a"), Notice::Prepare, 1_000, NONE));
    assert!(matches!(
        reg.apply(&vm("vm-b"), Notice::Prepare, 1_100, NONE),
        Ok(Outcome::Queued { .. })
    ));
    let saved = serde_json::to_string(&reg.snapshot()).unwrap();

    let mut restored = registry(guard);
    restored.restore(serde_json::from_str(&saved).unwrap());
    assert_eq!(restored.phase(&vm("vm-a")), Phase::Draining);
    assert_eq!(restored.next_due(), Some(61_000), "the deadline continues");
    applied(restored.apply(&vm("vm-a"), Notice::Completed, 2_000, NONE));
    let admitted = restored.tick(2_000);
    assert_eq!(admitted[0].vm, vm("vm-b"), "the queue survived");
    let ids: Vec<u64> = restored.history().map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2]);
    applied(restored.apply(&vm("vm-c"), Notice::Started, 3_000, NONE));
    assert_eq!(restored.history().last().unwrap().id, 3, "ids do not repeat");
}

fn arb_notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        Just(Notice::Prepare),
        Just(Notice::Started),
        Just(Notice::Completed),
        Just(Notice::Failed),
        Just(Notice::Cancelled)
    ]
}

proptest! {
    /// Whatever notices arrive, in whatever order and timing, no VM stays drained past its deadline,
    /// and a rejected notice changes nothing.
    #[test]
    fn no_phase_sequence_leaves_a_vm_drained_past_its_deadline(
        steps in proptest::collection::vec((0usize..3, arb_notice(), 0u64..30_000, proptest::option::of(1u64..90_000)), 1..60),
        min_active in 0usize..3,
        max_concurrent in proptest::option::of(1usize..3),
        queue in any::<bool>(),
    ) {
        let guard = GuardConfig {
            min_active,
            max_concurrent,
            on_violation: if queue { GuardAction::Queue } else { GuardAction::Refuse },
        };
        let mut reg = registry(guard);
        let names = ["vm-a", "vm-b", "vm-c"];
        let mut now = 0u64;
        for (which, notice, dt, deadline_ms) in steps {
            now += dt;
            reg.tick(now);
            for (id, state) in reg.vms() {
                if state.phase.is_drained() {
                    let deadline = state.deadline_at.expect("drained VMs have a deadline");
                    prop_assert!(now < deadline, "{id} drained at {now} past deadline {deadline}");
                    prop_assert!(deadline <= state.drain_started_at.unwrap() + 90_000);
                }
                if state.phase == Phase::Ramping {
                    prop_assert!(now < state.ramp_until.unwrap());
                }
            }
            let vm = vm(names[which]);
            let before = format!("{:?}", reg.vms().collect::<Vec<_>>());
            let result = reg.apply(&vm, notice, now, NoticeOptions { deadline_ms, readdress: None });
            if result.is_err() {
                prop_assert_eq!(before, format!("{:?}", reg.vms().collect::<Vec<_>>()));
            }
        }
        // However the sequence ended, time alone brings every VM out of its drain.
        for i in 1..=10u64 {
            reg.tick(now + i * 200_000);
        }
        for (id, state) in reg.vms() {
            prop_assert!(!state.phase.is_drained(), "{id} still {}", state.phase);
        }
    }
}

#[test]
fn a_started_for_a_queued_vm_continues_its_queued_record() {
    let guard = GuardConfig {
        max_concurrent: Some(1),
        on_violation: GuardAction::Queue,
        ..GuardConfig::default()
    };
    let mut reg = registry(guard);
    applied(reg.apply(&vm("vm-a"), Notice::Prepare, 0, NONE));
    assert!(matches!(
        reg.apply(&vm("vm-b"), Notice::Prepare, 10, NONE),
        Ok(Outcome::Queued { .. })
    ));
    let t = applied(reg.apply(&vm("vm-b"), Notice::Started, 20, NONE));
    applied(reg.apply(&vm("vm-b"), Notice::Completed, 30, NONE));
    let records: Vec<&MigrationRecord> = reg.history().filter(|r| r.vm == vm("vm-b")).collect();
    assert_eq!(records.len(), 1, "one migration, one record: {records:?}");
    assert_eq!(records[0].id, t.migration.unwrap());
    assert_eq!(records[0].queued_at, Some(10));
    assert_eq!(records[0].ended_at, Some(30), "the record ends");
}

#[test]
fn a_followed_drain_takes_the_peers_adaptive_level_and_a_followed_ramp_drops_it() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    let drain = |level| PhaseCommand::Drain {
        elapsed_ms: 0,
        migrating: true,
        deadline_in_ms: 60_000,
        level,
    };
    reg.follow(&a, drain(None), 10_000, 10_000).unwrap();
    assert_eq!(reg.vm(&a).unwrap().level, None);
    // The driving node's controller lowered the level: the same phase, a new share.
    let lowered = crate::adaptive::Level::new(0.25);
    let t = reg
        .follow(&a, drain(Some(lowered)), 11_000, 11_000)
        .expect("the level changed the VM's state");
    assert_eq!(
        (t.from, t.to, t.origin),
        (Phase::Migrating, Phase::Migrating, Origin::Peer)
    );
    assert_eq!(reg.vm(&a).unwrap().level, Some(lowered));
    match reg.command_for(&a, 11_500) {
        PhaseCommand::Drain { level, .. } => assert_eq!(level, Some(lowered)),
        other => panic!("expected a drain, got {other:?}"),
    }
    reg.follow(
        &a,
        PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Completed,
        },
        12_000,
        12_000,
    )
    .unwrap();
    assert_eq!(reg.vm(&a).unwrap().level, None);
}

#[test]
fn following_a_peer_takes_its_phase_times_and_deadline_and_ends_with_it() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    let t = reg
        .follow(
            &a,
            PhaseCommand::Drain {
                elapsed_ms: 500,
                migrating: false,
                deadline_in_ms: 4_000,
                level: None,
            },
            10_000,
            10_000,
        )
        .unwrap();
    assert_eq!(
        (t.from, t.to, t.origin),
        (Phase::Stable, Phase::Draining, Origin::Peer)
    );
    let state = reg.vm(&a).unwrap().clone();
    assert_eq!(state.drain_started_at, Some(9_500));
    assert_eq!(state.deadline_at, Some(14_000));
    assert_eq!(state.origin, Origin::Peer);
    // A later notice here ends the migration the peer began, and drives it from now on.
    let end = applied(reg.apply(&a, Notice::Completed, 11_000, NONE));
    assert_eq!((end.from, end.origin), (Phase::Draining, Origin::Local));
    assert_eq!(reg.vm(&a).unwrap().origin, Origin::Local);
    assert_eq!(reg.history().count(), 1);

    // The peer's ramp is followed too, with the time it already ramped.
    let b = vm("vm-b");
    reg.follow(
        &b,
        PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: true,
            deadline_in_ms: 60_000,
            level: None,
        },
        0,
        0,
    );
    assert_eq!(reg.phase(&b), Phase::Migrating);
    let t = reg
        .follow(
            &b,
            PhaseCommand::Ramp {
                elapsed_ms: 4_000,
                reason: EndReason::Completed,
            },
            20_000,
            20_000,
        )
        .unwrap();
    assert_eq!(t.to, Phase::Ramping);
    assert_eq!(
        reg.vm(&b).unwrap().ramp_until,
        Some(26_000),
        "10 s window from 16 s"
    );
    // A followed migration has no deadline left to enforce once it ramps.
    assert!(reg.tick(25_000).iter().all(|t| t.vm != b));
    assert_eq!(reg.tick(26_000).len(), 1);
    assert_eq!(reg.phase(&b), Phase::Stable);
}

#[test]
fn a_followed_deadline_restores_the_vm_on_this_node_only() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    reg.follow(
        &a,
        PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: false,
            deadline_in_ms: 1_000,
            level: None,
        },
        0,
        0,
    );
    let expired = reg.tick(1_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].cause, Cause::Deadline);
    assert_eq!(expired[0].origin, Origin::Peer, "not told to the peers");
}

#[test]
fn an_adopted_drain_is_restored_by_completed_or_its_deadline() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    let t = reg
        .adopt_leftover(&a, 1_000, "lb had it in DRAIN".into())
        .unwrap();
    assert_eq!((t.to, t.origin), (Phase::Draining, Origin::Adopted));
    assert_eq!(reg.vm(&a).unwrap().deadline_at, Some(61_000));
    assert!(reg.adopt_leftover(&a, 2_000, "again".into()).is_none());
    let record = reg.migration(t.migration.unwrap()).unwrap();
    assert_eq!(record.note.as_deref(), Some("lb had it in DRAIN"));
    applied(reg.apply(&a, Notice::Completed, 3_000, NONE));
    assert_eq!(reg.phase(&a), Phase::Ramping);
}

#[test]
fn revert_undoes_one_vm_and_leaves_the_others() {
    let guard = GuardConfig {
        max_concurrent: Some(1),
        on_violation: GuardAction::Queue,
        ..GuardConfig::default()
    };
    let mut reg = registry(guard);
    applied(reg.apply(&vm("vm-a"), Notice::Prepare, 0, NONE));
    reg.apply(&vm("vm-b"), Notice::Prepare, 5, NONE).unwrap();
    let before_b = reg.undo_point(&vm("vm-b"));
    let before = format!("{:?}", reg.snapshot());
    // vm-b's queued prepare becomes a started; meanwhile a VM of no pool begins a migration.
    applied(reg.apply(&vm("vm-b"), Notice::Started, 10, NONE));
    applied(reg.apply(&vm("elsewhere"), Notice::Prepare, 11, NONE));
    reg.revert(before_b);
    let undo_x = reg.undo_point(&vm("x"));
    applied(reg.apply(&vm("x"), Notice::Prepare, 12, NONE));
    reg.revert(undo_x);
    assert_eq!(reg.phase(&vm("vm-b")), Phase::Stable);
    assert!(
        reg.vm(&vm("vm-b")).unwrap().queued_since.is_some(),
        "queued again"
    );
    assert_eq!(reg.phase(&vm("elsewhere")), Phase::Draining, "untouched");
    assert_eq!(reg.vm(&vm("x")), None);
    let after = reg.snapshot();
    assert_eq!(after.queue.len(), 1);
    assert!(after.history.iter().all(|r| r.vm != vm("x")));
    assert!(!before.is_empty());
    // vm-b is admitted when vm-a ends, as it would have been.
    applied(reg.apply(&vm("vm-a"), Notice::Completed, 20, NONE));
    assert_eq!(reg.tick(20).len(), 1);
    assert_eq!(reg.phase(&vm("vm-b")), Phase::Draining);
}

#[test]
fn a_followed_phase_keeps_the_time_it_changed_at_its_origin_so_an_older_one_is_told_apart() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    let drain = PhaseCommand::Drain {
        elapsed_ms: 0,
        migrating: false,
        deadline_in_ms: 60_000,
        level: None,
    };
    // Made at 1 000 on the peer, received at 1 500.
    reg.follow(&a, drain, 1_500, 1_000).unwrap();
    assert_eq!(reg.vm(&a).unwrap().since, 1_000);
    // The peer ends it at 2 000; a drain made at 1 000 that arrives late is older.
    reg.follow(
        &a,
        PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Completed,
        },
        2_100,
        2_000,
    )
    .unwrap();
    assert!(reg.is_newer_than(&a, 1_000));
    assert!(!reg.is_newer_than(&a, 2_000));
}

#[test]
fn a_ramp_ending_here_does_not_make_a_peers_later_change_look_older() {
    let mut reg = registry(GuardConfig::default());
    let a = vm("vm-a");
    reg.follow(
        &a,
        PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason: EndReason::Completed,
        },
        1_000,
        1_000,
    );
    // The local ramp ends at 11 000; the peer began a new migration at 10 500.
    assert_eq!(reg.tick(11_000).len(), 1);
    assert_eq!(reg.phase(&a), Phase::Stable);
    assert!(!reg.is_newer_than(&a, 10_500));
    // A notice here is a change of the view.
    applied(reg.apply(&a, Notice::Prepare, 12_000, NONE));
    assert!(reg.is_newer_than(&a, 11_500));
}

fn arb_readdress() -> impl Strategy<Value = Option<Readdress>> {
    proptest::option::of((1u8..4, any::<bool>()).prop_map(|(last, explicit)| {
        let ip = std::net::IpAddr::from([10, 0, 0, last]);
        let mut addresses = std::collections::BTreeMap::new();
        if explicit {
            addresses.insert(
                "127.0.0.1:8080".parse().unwrap(),
                std::net::SocketAddr::new(ip, 9090),
            );
        }
        Readdress {
            new_ip: Some(ip),
            addresses,
        }
    }))
}

proptest! {
    /// Whatever notices arrive: every drain the capacity guard admits (a prepare applied at once,
    /// or a queued one admitted later) keeps its limits (no more drained VMs than
    /// `max_concurrent`, no fewer active ones than `min_active`; a `started` without a prepare
    /// drains whatever the guard says, as the copy already runs); a VM's
    /// addresses change only with an applied `completed` that carries new ones, and stay through
    /// later phases; and a registry restored from a snapshot (through JSON, as the state file
    /// does) at any point is the same registry and behaves the same from then on.
    #[test]
    fn guard_limits_readdresses_and_snapshots_hold_under_any_notice_sequence(
        steps in proptest::collection::vec(
            (0usize..3, arb_notice(), 0u64..30_000, arb_readdress(), any::<bool>()),
            1..60,
        ),
        min_active in 0usize..3,
        max_concurrent in proptest::option::of(1usize..3),
        queue in any::<bool>(),
    ) {
        let guard = GuardConfig {
            min_active,
            max_concurrent,
            on_violation: if queue { GuardAction::Queue } else { GuardAction::Refuse },
        };
        let mut reg = registry(guard);
        let mut restarted = registry(guard);
        let names = ["vm-a", "vm-b", "vm-c"];
        let mut expected_readdress: std::collections::BTreeMap<VmId, Readdress> = Default::default();
        let mut now = 0u64;
        for (which, notice, dt, readdress, restart) in steps {
            now += dt;
            if restart {
                // A restart: the state file's JSON, restored into a fresh registry.
                let json = serde_json::to_string(&reg.snapshot()).unwrap();
                restarted = registry(guard);
                restarted.restore(serde_json::from_str(&json).unwrap());
                prop_assert_eq!(restarted.snapshot(), reg.snapshot());
            }
            let ticked = reg.tick(now);
            prop_assert_eq!(format!("{ticked:?}"), format!("{:?}", restarted.tick(now)));
            let guard_holds = |reg: &Registry| -> Result<(), TestCaseError> {
                let drained = names.iter().filter(|n| reg.phase(&self::vm(n)).is_drained()).count();
                if let Some(max) = max_concurrent {
                    prop_assert!(drained <= max, "{drained} drained, max_concurrent = {max}");
                }
                prop_assert!(
                    3 - drained >= min_active,
                    "{} active, min_active = {min_active}", 3 - drained
                );
                Ok(())
            };
            if ticked.iter().any(|t| t.to == Phase::Draining) {
                guard_holds(&reg)?;
            }
            let vm = vm(names[which]);
            let was_drained = reg.phase(&vm).is_drained();
            let options = NoticeOptions { deadline_ms: None, readdress: readdress.clone() };
            let result = reg.apply(&vm, notice, now, options.clone());
            let again = restarted.apply(&vm, notice, now, options);
            prop_assert_eq!(format!("{result:?}"), format!("{again:?}"));
            prop_assert_eq!(reg.snapshot(), restarted.snapshot());
            if notice == Notice::Completed
                && was_drained
                && matches!(result, Ok(Outcome::Applied(_)))
                && let Some(r) = readdress.filter(|r| !r.is_empty())
            {
                expected_readdress.insert(vm.clone(), r);
            }

            let prepared = notice == Notice::Prepare
                && !was_drained
                && matches!(&result, Ok(Outcome::Applied(t)) if t.to == Phase::Draining);
            if prepared {
                guard_holds(&reg)?;
            }
            for name in names {
                let id = self::vm(name);
                prop_assert_eq!(
                    reg.vm(&id).and_then(|s| s.readdress.clone()),
                    expected_readdress.get(&id).cloned(),
                    "addresses of {}", name
                );
            }
        }
    }
}

//! The migration registry: every VM's phase, the capacity guard's queue, deadlines and the history
//! of migrations, as a pure reducer.
//!
//! `apply(vm, notice, now)` and `tick(now)` are the only ways state changes; both return the
//! [`Transition`]s the caller must fan out to the balancers. Nothing here reads a clock or touches
//! a socket, so any sequence of notices can be replayed in a test. Call `tick(now)` before `apply`
//! so that expired deadlines are seen first.

mod adaptive;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use adaptive::{AdaptiveEntry, AdaptiveStatus};

use crate::config::{Config, GuardAction, GuardConfig};
use crate::model::{RestoreMode, VmId};
use crate::phase::{EndReason, Notice, Origin, Phase, PhaseCommand, Readdress, VmState};
use crate::time::{Millis, millis};

mod adopt;

/// What the registry needs to know of one local pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTopology {
    /// Pool name.
    pub name: String,
    /// The VM of each backend, in configuration order (a VM may appear more than once).
    pub backend_vms: Vec<VmId>,
    /// Capacity guard.
    pub guard: GuardConfig,
    /// Deadline of a migration of one of its VMs.
    pub deadline: Duration,
    /// Ramp window.
    pub ramp_window: Duration,
    /// Restore mode after a failure, cancel or deadline.
    pub restore: RestoreMode,
    /// Adaptive drain and quiescence of its VMs.
    pub adaptive: crate::adaptive::AdaptiveDrain,
}

/// The local pools, as the registry sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Every local pool.
    pub pools: Vec<PoolTopology>,
}

impl Topology {
    /// The topology of a configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            pools: config
                .pools
                .iter()
                .map(|p| PoolTopology {
                    name: p.name.clone(),
                    backend_vms: p.backends.iter().map(|b| b.vm.clone()).collect(),
                    guard: p.guard,
                    deadline: p.deadline,
                    ramp_window: p.ramp.window,
                    restore: p.restore,
                    adaptive: p.drain.adaptive,
                })
                .collect(),
        }
    }

    /// Whether a local pool has a backend of this VM.
    pub fn knows(&self, vm: &VmId) -> bool {
        self.pools.iter().any(|p| p.backend_vms.contains(vm))
    }

    fn pools_of<'a>(&'a self, vm: &'a VmId) -> impl Iterator<Item = &'a PoolTopology> + 'a {
        self.pools.iter().filter(move |p| p.backend_vms.contains(vm))
    }
}

/// Settings for VMs that no local pool serves, and the history size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegistryDefaults {
    /// Deadline of a migration of a VM only peers serve.
    pub deadline: Duration,
    /// How many finished migrations the history keeps.
    pub history_limit: usize,
}

impl Default for RegistryDefaults {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(600),
            history_limit: 1000,
        }
    }
}

/// Options a notice may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeOptions {
    /// Overrides the pool deadline for this migration (prepare or started).
    pub deadline_ms: Option<u64>,
    /// New addresses of the VM (completed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readdress: Option<Readdress>,
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "notice")]
pub enum Cause {
    /// A notice arrived.
    Notice(Notice),
    /// The deadline passed with no end notice.
    Deadline,
    /// The ramp window is over.
    RampDone,
    /// A queued prepare was admitted by the capacity guard.
    Dequeued,
    /// The adaptive controller changed the VM's level (the phase stays).
    Adaptive,
    /// A peer's command, followed (the peer drives the migration).
    Peer,
    /// A drain found on a driven balancer at start, adopted.
    Adopted,
}

/// A change of a VM's phase, with the command every balancer must now apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The VM.
    pub vm: VmId,
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// What caused it.
    pub cause: Cause,
    /// What balancers must apply.
    pub command: PhaseCommand,
    /// The migration it belongs to.
    pub migration: Option<u64>,
    /// New addresses every balancer must use for the VM.
    pub readdress: Option<Readdress>,
    /// Who drives the migration: only [`Origin::Local`] transitions are told to peers.
    pub origin: Origin,
}

impl Transition {
    /// Whether balancers must be told. A finished ramp needs no message: every balancer ends its
    /// own ramp when its own window passes.
    pub fn needs_fanout(&self) -> bool {
        self.cause != Cause::RampDone
    }
}

/// What a notice did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The phase changed.
    Applied(Transition),
    /// Nothing to do: the VM is already where the notice would put it.
    Unchanged {
        /// The current phase.
        phase: Phase,
        /// Why nothing changed.
        note: String,
    },
    /// The capacity guard queued the prepare.
    Queued {
        /// Why it was queued.
        reason: String,
    },
}

/// Why a notice was rejected. The registry is unchanged after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// The capacity guard refused the prepare.
    #[error("refused by the capacity guard: {reason}")]
    Refused {
        /// Which pool and limit.
        reason: String,
    },
    /// An end notice for a VM with no migration in progress.
    #[error("{vm} has no migration in progress (phase {phase}); {notice} needs a prepare or started first")]
    NotMigrating {
        /// The VM.
        vm: VmId,
        /// Its phase.
        phase: Phase,
        /// The notice.
        notice: Notice,
    },
}

/// Live progress of a migration, in the names of QEMU's `query-migrate` where they overlap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationProgress {
    /// QEMU's migration status (`setup`, `active`, `completed`...).
    pub status: Option<String>,
    /// Guest RAM in bytes.
    pub total_bytes: Option<u64>,
    /// Bytes transferred so far.
    pub transferred_bytes: Option<u64>,
    /// Bytes still to send.
    pub remaining_bytes: Option<u64>,
    /// Pages dirtied per second by the guest.
    pub dirty_pages_rate: Option<u64>,
    /// Dirty-bitmap syncs, i.e. passes over memory.
    pub passes: Option<u64>,
    /// Throughput in megabits per second.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0))]
    pub mbps: Option<f64>,
    /// Expected downtime in milliseconds (while active).
    pub expected_downtime_ms: Option<u64>,
    /// Total time in milliseconds.
    pub total_time_ms: Option<u64>,
    /// Measured downtime in milliseconds (once completed).
    pub downtime_ms: Option<u64>,
    /// Setup time in milliseconds.
    pub setup_time_ms: Option<u64>,
    /// Bytes per page (`ram.page-size`; dirty rates are in pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// QEMU's copy bandwidth cap (`max-bandwidth`), bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// QEMU's `downtime-limit`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_limit_ms: Option<u64>,
    /// The latest dirty-rate probe (`calc-dirty-rate`), when the source runs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_probe: Option<crate::adaptive::Probe>,
    /// `handover migrate` holds QEMU's switchover until the VM is quiesced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_held: Option<bool>,
}

impl MigrationProgress {
    /// Checks figures that came from outside (the progress API): rates must be finite and not
    /// negative. Returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(mbps) = self.mbps
            && !(mbps.is_finite() && mbps >= 0.0)
        {
            return Err((
                "mbps",
                format!("mbps: {mbps} is not a rate; expected a number ≥ 0"),
            ));
        }
        if let Some(probe) = &self.dirty_probe
            && !(probe.bytes_per_s.is_finite() && probe.bytes_per_s >= 0.0)
        {
            return Err((
                "dirty_probe.bytes_per_s",
                format!(
                    "dirty_probe.bytes_per_s: {} is not a rate; expected a number ≥ 0",
                    probe.bytes_per_s
                ),
            ));
        }
        Ok(())
    }
}

/// One migration of one VM, with the timestamp of every phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationRecord {
    /// Unique id (per handover process).
    pub id: u64,
    /// The VM.
    pub vm: VmId,
    /// When a queued prepare was accepted into the guard's queue.
    pub queued_at: Option<Millis>,
    /// When the drain began.
    pub prepared_at: Option<Millis>,
    /// When the memory copy began.
    pub started_at: Option<Millis>,
    /// When the balancers reported the VM drained.
    pub drained_at: Option<Millis>,
    /// How long the wait for drained took.
    pub drain_wait_ms: Option<u64>,
    /// Whether the wait for drained succeeded (absent when nobody waited).
    pub drained: Option<bool>,
    /// When the migration ended.
    pub ended_at: Option<Millis>,
    /// How it ended.
    pub end: Option<EndReason>,
    /// When the VM was back at full share.
    pub stable_at: Option<Millis>,
    /// Latest progress from the hypervisor.
    pub progress: Option<MigrationProgress>,
    /// The adaptive controller's decisions over time (level, λ, what remains, why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adaptive: Vec<AdaptiveEntry>,
    /// When quiescence began (no new work until the end of the migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce_started_at: Option<Millis>,
    /// When, quiescing, the balancers first reported nothing in flight to the VM (at most the
    /// drained threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesced_at: Option<Millis>,
    /// When `handover migrate` began holding QEMU's switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_started_at: Option<Millis>,
    /// When it let the switchover go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ended_at: Option<Millis>,
    /// How this node learned of the migration, when not from a notice (followed from a peer,
    /// adopted from a driven balancer at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl MigrationRecord {
    fn new(id: u64, vm: VmId) -> Self {
        Self {
            id,
            vm,
            queued_at: None,
            prepared_at: None,
            started_at: None,
            drained_at: None,
            drain_wait_ms: None,
            drained: None,
            ended_at: None,
            end: None,
            stable_at: None,
            progress: None,
            adaptive: Vec::new(),
            quiesce_started_at: None,
            quiesced_at: None,
            hold_started_at: None,
            hold_ended_at: None,
            note: None,
        }
    }

    /// Milliseconds spent in each phase so far: (draining, migrating, ramping).
    pub fn phase_durations(&self, now: Millis) -> (Option<u64>, Option<u64>, Option<u64>) {
        let drain_end = self.started_at.or(self.ended_at).unwrap_or(now);
        let draining = self.prepared_at.map(|p| drain_end.saturating_sub(p));
        let migrating = self
            .started_at
            .map(|s| self.ended_at.unwrap_or(now).saturating_sub(s));
        let ramping = self
            .ended_at
            .map(|e| self.stable_at.unwrap_or(now).saturating_sub(e));
        (draining, migrating, ramping)
    }
}

/// A prepare waiting for the capacity guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPrepare {
    /// The VM.
    pub vm: VmId,
    /// Its options.
    pub options: NoticeOptions,
}

/// One VM's entry as it was, for [`Registry::revert`].
#[derive(Debug, Clone, PartialEq)]
pub struct VmUndo {
    vm: VmId,
    state: Option<VmState>,
    queued: Option<QueuedPrepare>,
    record: Option<MigrationRecord>,
    next_id: u64,
}

impl VmUndo {
    /// The VM.
    pub fn vm(&self) -> &VmId {
        &self.vm
    }

    /// Its state as it was (`None`: the registry had not seen it).
    pub fn state(&self) -> Option<&VmState> {
        self.state.as_ref()
    }
}

/// Everything a registry holds, to be saved and restored across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// Every VM's state.
    pub vms: Vec<(VmId, VmState)>,
    /// Prepares waiting for the capacity guard.
    pub queue: Vec<QueuedPrepare>,
    /// Migration history.
    pub history: Vec<MigrationRecord>,
    /// Next migration id.
    pub next_id: u64,
}

/// The migration registry.
#[derive(Debug, Clone)]
pub struct Registry {
    topology: Topology,
    defaults: RegistryDefaults,
    vms: BTreeMap<VmId, VmState>,
    queue: VecDeque<QueuedPrepare>,
    history: VecDeque<MigrationRecord>,
    next_id: u64,
    /// Adaptive controllers of VMs draining or migrating, with the migration each belongs to.
    controllers: BTreeMap<VmId, (u64, crate::adaptive::Controller)>,
}

impl Registry {
    /// An empty registry over a topology: every VM stable.
    pub fn new(topology: Topology, defaults: RegistryDefaults) -> Self {
        Self {
            topology,
            defaults,
            vms: BTreeMap::new(),
            queue: VecDeque::new(),
            history: VecDeque::new(),
            next_id: 1,
            controllers: BTreeMap::new(),
        }
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Replaces the topology (a reload changed the pools). Every VM keeps its phase, deadline and
    /// ramp; guards and deadlines of later notices follow the new pools.
    pub fn set_topology(&mut self, topology: Topology) {
        self.topology = topology;
    }

    /// The state of a VM the registry has seen (unseen VMs are stable).
    pub fn vm(&self, vm: &VmId) -> Option<&VmState> {
        self.vms.get(vm)
    }

    /// Every VM the registry has seen.
    pub fn vms(&self) -> impl Iterator<Item = (&VmId, &VmState)> {
        self.vms.iter()
    }

    /// The phase of a VM (stable when never seen).
    pub fn phase(&self, vm: &VmId) -> Phase {
        self.vms.get(vm).map_or(Phase::Stable, |s| s.phase)
    }

    /// Migrations, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &MigrationRecord> {
        self.history.iter()
    }

    /// One migration by id.
    pub fn migration(&self, id: u64) -> Option<&MigrationRecord> {
        self.history.iter().rev().find(|r| r.id == id)
    }

    /// Everything the registry holds, for a state file.
    pub fn snapshot(&self) -> RegistrySnapshot {
        RegistrySnapshot {
            vms: self.vms.iter().map(|(vm, s)| (vm.clone(), s.clone())).collect(),
            queue: self.queue.iter().cloned().collect(),
            history: self.history.iter().cloned().collect(),
            next_id: self.next_id,
        }
    }

    /// Restores what [`Registry::snapshot`] saved (the topology stays the configuration's).
    pub fn restore(&mut self, snapshot: RegistrySnapshot) {
        self.vms = snapshot.vms.into_iter().collect();
        self.queue = snapshot.queue.into_iter().collect();
        self.history = snapshot.history.into_iter().collect();
        self.next_id = snapshot
            .next_id
            .max(self.history.iter().map(|r| r.id + 1).max().unwrap_or(1));
    }

    /// What the balancers must currently apply for a VM.
    pub fn command_for(&self, vm: &VmId, now: Millis) -> PhaseCommand {
        self.vms
            .get(vm)
            .map_or(PhaseCommand::Stable, |s| s.command_at(now))
    }

    /// The next time `tick` has work to do.
    pub fn next_due(&self) -> Option<Millis> {
        self.vms
            .values()
            .filter_map(|s| match s.phase {
                Phase::Draining | Phase::Migrating => s.deadline_at,
                Phase::Ramping => s.ramp_until,
                Phase::Stable => None,
            })
            .min()
    }

    /// What `apply` would do, without doing it.
    pub fn preview(
        &self,
        vm: &VmId,
        notice: Notice,
        now: Millis,
        options: NoticeOptions,
    ) -> Result<Outcome, NoticeError> {
        self.clone().apply(vm, notice, now, options)
    }

    /// Applies a notice. On error nothing changed. A VM a notice moves is driven from this node
    /// from then on ([`Origin::Local`]), whoever drove it before.
    pub fn apply(
        &mut self,
        vm: &VmId,
        notice: Notice,
        now: Millis,
        options: NoticeOptions,
    ) -> Result<Outcome, NoticeError> {
        let outcome = self.apply_notice(vm, notice, now, options)?;
        if let Outcome::Applied(transition) = &outcome
            && let Some(state) = self.vms.get_mut(vm)
        {
            state.origin = Origin::Local;
            state.changed_at = now;
            debug_assert_eq!(transition.origin, Origin::Local);
        }
        Ok(outcome)
    }

    fn apply_notice(
        &mut self,
        vm: &VmId,
        notice: Notice,
        now: Millis,
        options: NoticeOptions,
    ) -> Result<Outcome, NoticeError> {
        let state = self.vms.get(vm).cloned().unwrap_or_else(|| VmState::stable(now));
        let queued = state.queued_since.is_some();
        match (notice, state.phase) {
            (Notice::Prepare, Phase::Draining | Phase::Migrating) => Ok(Outcome::Unchanged {
                phase: state.phase,
                note: format!("{vm} is already {}", state.phase),
            }),
            (Notice::Started, Phase::Migrating) => Ok(Outcome::Unchanged {
                phase: state.phase,
                note: format!("{vm} is already migrating"),
            }),
            (Notice::Prepare, Phase::Stable | Phase::Ramping) => {
                if queued {
                    return Ok(Outcome::Queued {
                        reason: format!("{vm} is already queued by the capacity guard"),
                    });
                }
                match self.guard_violation(vm) {
                    Some((GuardAction::Refuse, reason)) => Err(NoticeError::Refused { reason }),
                    Some((GuardAction::Queue, reason)) => {
                        let id = self.new_record(vm);
                        self.record_mut(id).queued_at = Some(now);
                        let mut state = state;
                        state.queued_since = Some(now);
                        state.migration = Some(id);
                        self.vms.insert(vm.clone(), state);
                        self.queue.push_back(QueuedPrepare {
                            vm: vm.clone(),
                            options,
                        });
                        Ok(Outcome::Queued { reason })
                    }
                    None => Ok(Outcome::Applied(self.begin_drain(
                        vm,
                        now,
                        &options,
                        false,
                        Cause::Notice(notice),
                        None,
                    ))),
                }
            }
            (Notice::Started, Phase::Draining) => {
                let mut state = state;
                state.phase = Phase::Migrating;
                state.since = now;
                let id = state.migration;
                self.vms.insert(vm.clone(), state.clone());
                if let Some(id) = id {
                    self.record_mut(id).started_at = Some(now);
                }
                Ok(Outcome::Applied(Transition {
                    vm: vm.clone(),
                    from: Phase::Draining,
                    to: Phase::Migrating,
                    cause: Cause::Notice(notice),
                    command: state.command_at(now),
                    migration: id,
                    readdress: None,
                    origin: Origin::Local,
                }))
            }
            // The copy already runs: drain now whatever the guard says; it can only delay what has not begun.
            (Notice::Started, Phase::Stable | Phase::Ramping) => {
                // A queued prepare's record becomes this migration's (it must not stay open for ever).
                let queued_record = if queued { state.migration } else { None };
                self.unqueue(vm);
                Ok(Outcome::Applied(self.begin_drain(
                    vm,
                    now,
                    &options,
                    true,
                    Cause::Notice(notice),
                    queued_record,
                )))
            }
            (Notice::Completed | Notice::Failed | Notice::Cancelled, Phase::Draining | Phase::Migrating) => {
                let reason = match notice {
                    Notice::Completed => EndReason::Completed,
                    Notice::Failed => EndReason::Failed,
                    _ => EndReason::Cancelled,
                };
                let mut transition = self.end(vm, reason, now, Cause::Notice(notice));
                transition.origin = Origin::Local;
                if let Some(readdress) = options
                    .readdress
                    .filter(|r| !r.is_empty() && reason == EndReason::Completed)
                {
                    self.vms.get_mut(vm).expect("just ended").readdress = Some(readdress.clone());
                    transition.readdress = Some(readdress);
                }
                Ok(Outcome::Applied(transition))
            }
            (
                Notice::Completed | Notice::Failed | Notice::Cancelled,
                phase @ (Phase::Stable | Phase::Ramping),
            ) => {
                if queued {
                    self.unqueue(vm);
                    let mut state = state;
                    let id = state.migration;
                    state.queued_since = None;
                    self.vms.insert(vm.clone(), state);
                    if let Some(id) = id {
                        let record = self.record_mut(id);
                        record.ended_at = Some(now);
                        record.end = Some(match notice {
                            Notice::Completed => EndReason::Completed,
                            Notice::Failed => EndReason::Failed,
                            _ => EndReason::Cancelled,
                        });
                    }
                    return Ok(Outcome::Unchanged {
                        phase,
                        note: format!("{vm} left the capacity guard's queue before it was drained"),
                    });
                }
                Err(NoticeError::NotMigrating {
                    vm: vm.clone(),
                    phase,
                    notice,
                })
            }
        }
    }

    /// Restores VMs whose deadline passed, ends finished ramps, and admits queued prepares.
    pub fn tick(&mut self, now: Millis) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let expired: Vec<VmId> = self
            .vms
            .iter()
            .filter(|(_, s)| s.phase.is_drained() && s.deadline_at.is_some_and(|d| d <= now))
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in expired {
            let transition = self.end(&vm, EndReason::Deadline, now, Cause::Deadline);
            // The driving node's deadline is a change its peers are told of; a follower's own
            // enforcement of it is not.
            if transition.origin == Origin::Local
                && let Some(state) = self.vms.get_mut(&vm)
            {
                state.changed_at = now;
            }
            transitions.push(transition);
        }
        let ramped: Vec<VmId> = self
            .vms
            .iter()
            .filter(|(_, s)| s.phase == Phase::Ramping && s.ramp_until.is_some_and(|r| r <= now))
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in ramped {
            let state = self.vms.get_mut(&vm).expect("listed above");
            let id = state.migration;
            let origin = state.origin;
            *state = VmState {
                migration: id,
                queued_since: state.queued_since,
                readdress: state.readdress.take(),
                origin,
                // A ramp ending is every node's own consequence, not a new view.
                changed_at: state.changed_at,
                ..VmState::stable(now)
            };
            if let Some(id) = id {
                self.record_mut(id).stable_at = Some(now);
            }
            transitions.push(Transition {
                vm,
                from: Phase::Ramping,
                to: Phase::Stable,
                cause: Cause::RampDone,
                command: PhaseCommand::Stable,
                migration: id,
                readdress: None,
                origin,
            });
        }
        transitions.extend(self.admit_queued(now));
        transitions
    }

    /// Records the result of a wait for drained.
    pub fn record_drain_wait(&mut self, migration: u64, now: Millis, waited_ms: u64, drained: bool) {
        if let Some(record) = self.history.iter_mut().rev().find(|r| r.id == migration) {
            record.drain_wait_ms = Some(waited_ms);
            record.drained = Some(drained);
            if drained {
                record.drained_at = Some(now);
            }
        }
    }

    /// Records hypervisor progress on the VM's current or last migration.
    pub fn record_progress(&mut self, vm: &VmId, progress: MigrationProgress) -> bool {
        let Some(id) = self.vms.get(vm).and_then(|s| s.migration) else {
            return false;
        };
        if let Some(record) = self.history.iter_mut().rev().find(|r| r.id == id) {
            record.progress = Some(progress);
            return true;
        }
        false
    }

    /// Follows a peer's command for a VM (the peer API): the registry takes the phase, times and
    /// deadline the command describes, so that this node's own deadline, retries and later notices
    /// agree with the node that drives the migration. `at` is when the change was made on that
    /// node (ms since the epoch), kept as the VM's `changed_at` so that the newer of two views
    /// can be told apart later. The capacity guard is not asked: the driving node already admitted the
    /// migration. Returns the transition, or `None` when the VM already is where the command puts
    /// it (times are still taken from the command). See [`Registry::is_newer_than`] to refuse a
    /// command older than what the registry holds.
    pub fn follow(
        &mut self,
        vm: &VmId,
        command: PhaseCommand,
        now: Millis,
        at: Millis,
    ) -> Option<Transition> {
        let state = self.vms.get(vm).cloned().unwrap_or_else(|| VmState::stable(now));
        let from = state.phase;
        let queued_record = state.queued_since.and(state.migration);
        let mut next = state.clone();
        next.origin = Origin::Peer;
        next.queued_since = None;
        match command {
            PhaseCommand::Drain {
                elapsed_ms,
                migrating,
                deadline_in_ms,
                level,
            } => {
                let began = now.saturating_sub(elapsed_ms);
                let id = match (from.is_drained(), state.migration) {
                    (true, Some(id)) => id,
                    _ => queued_record.unwrap_or_else(|| self.new_record(vm)),
                };
                self.unqueue(vm);
                let record = self.record_mut(id);
                record.prepared_at.get_or_insert(began);
                if migrating {
                    record.started_at.get_or_insert(now);
                }
                if record.note.is_none() && !from.is_drained() {
                    record.note = Some("followed a peer's drain".to_string());
                }
                next.phase = if migrating {
                    Phase::Migrating
                } else {
                    Phase::Draining
                };
                next.drain_started_at = Some(began);
                next.deadline_at = Some(now.saturating_add(deadline_in_ms));
                // The driving node's adaptive level (absent: the pools' target).
                next.level = level;
                next.ramp_started_at = None;
                next.ramp_until = None;
                next.end_reason = None;
                next.migration = Some(id);
            }
            PhaseCommand::Ramp { elapsed_ms, reason } => {
                let ended = now.saturating_sub(elapsed_ms);
                let until = ended.saturating_add(self.ramp_ms_of(vm, reason));
                if from.is_drained()
                    && let Some(id) = state.migration
                {
                    let record = self.record_mut(id);
                    record.ended_at = Some(ended);
                    record.end = Some(reason);
                }
                next.drain_started_at = None;
                next.deadline_at = None;
                next.level = None;
                next.end_reason = Some(reason);
                if until > now {
                    next.phase = Phase::Ramping;
                    next.ramp_started_at = Some(ended);
                    next.ramp_until = Some(until);
                } else {
                    next.phase = Phase::Stable;
                    next.ramp_started_at = None;
                    next.ramp_until = None;
                }
                self.unqueue(vm);
            }
            PhaseCommand::Stable => {
                if from == Phase::Stable && queued_record.is_none() {
                    return None;
                }
                if from != Phase::Stable
                    && let Some(id) = state.migration
                {
                    let record = self.record_mut(id);
                    record.ended_at.get_or_insert(now);
                    record.stable_at = Some(now);
                }
                self.unqueue(vm);
                next = VmState {
                    migration: state.migration,
                    readdress: state.readdress.clone(),
                    origin: Origin::Peer,
                    ..VmState::stable(now)
                };
            }
        }
        let to = next.phase;
        if to != from {
            next.since = at.min(now);
        }
        next.changed_at = at;
        if to == Phase::Stable
            && from != Phase::Stable
            && let Some(id) = next.migration
        {
            self.record_mut(id).stable_at = Some(now);
        }
        let migration = next.migration;
        let changed = next != state;
        self.vms.insert(vm.clone(), next);
        changed.then(|| Transition {
            vm: vm.clone(),
            from,
            to,
            cause: Cause::Peer,
            command,
            migration,
            readdress: None,
            origin: Origin::Peer,
        })
    }

    /// Whether the registry's view of a VM was changed (by a notice, or by what it followed) after
    /// `at`: a command made at `at` elsewhere is then older than what this node knows (one in
    /// flight while this process was frozen, say) and must not be applied over it.
    pub fn is_newer_than(&self, vm: &VmId, at: Millis) -> bool {
        self.vms.get(vm).is_some_and(|s| s.changed_at > at)
    }

    /// Adopts a drain found on a driven balancer at start, when the registry knows of no migration
    /// of the VM (an earlier run left it, and no state says why): the VM drains from `now` with its
    /// usual deadline, so `completed` or the deadline restores it. `None` when the VM is already
    /// draining, migrating or queued.
    pub fn adopt_leftover(&mut self, vm: &VmId, now: Millis, note: String) -> Option<Transition> {
        let state = self.vms.get(vm);
        if state.is_some_and(|s| s.phase.is_drained() || s.queued_since.is_some()) {
            return None;
        }
        let options = NoticeOptions::default();
        let mut transition = self.begin_drain(vm, now, &options, false, Cause::Adopted, None);
        transition.origin = Origin::Adopted;
        let state = self.vms.get_mut(vm).expect("just drained");
        state.origin = Origin::Adopted;
        if let Some(id) = transition.migration {
            self.record_mut(id).note = Some(note);
        }
        Some(transition)
    }

    /// What a VM's entry is now, to undo a change of it with [`Registry::revert`].
    pub fn undo_point(&self, vm: &VmId) -> VmUndo {
        let state = self.vms.get(vm).cloned();
        VmUndo {
            vm: vm.clone(),
            record: state
                .as_ref()
                .and_then(|s| s.migration)
                .and_then(|id| self.migration(id).cloned()),
            state,
            queued: self.queue.iter().find(|q| &q.vm == vm).cloned(),
            next_id: self.next_id,
        }
    }

    /// Undoes every change of one VM since `undo` was taken (a VM no balancer serves, or a change
    /// that could not be saved): its state, its place in the guard's queue and its migration record
    /// come back, and records opened for it since are dropped. Other VMs are not touched.
    pub fn revert(&mut self, undo: VmUndo) {
        let VmUndo {
            vm,
            state,
            queued,
            record,
            next_id,
        } = undo;
        match state {
            Some(state) => {
                self.vms.insert(vm.clone(), state);
            }
            None => {
                self.vms.remove(&vm);
            }
        }
        self.queue.retain(|q| q.vm != vm);
        if let Some(queued) = queued {
            self.queue.push_back(queued);
        }
        self.history.retain(|r| r.id < next_id || r.vm != vm);
        if let Some(record) = record
            && let Some(slot) = self.history.iter_mut().find(|r| r.id == record.id)
        {
            *slot = record;
        }
    }

    /// Drains a VM; `reuse` is the record of the prepare the guard had queued, if any.
    fn begin_drain(
        &mut self,
        vm: &VmId,
        now: Millis,
        options: &NoticeOptions,
        migrating: bool,
        cause: Cause,
        reuse: Option<u64>,
    ) -> Transition {
        let from = self.phase(vm);
        let id = reuse.unwrap_or_else(|| self.new_record(vm));
        let deadline = options.deadline_ms.unwrap_or_else(|| self.deadline_ms_of(vm));
        let state = VmState {
            phase: if migrating {
                Phase::Migrating
            } else {
                Phase::Draining
            },
            since: now,
            changed_at: now,
            drain_started_at: Some(now),
            deadline_at: Some(now.saturating_add(deadline)),
            ramp_started_at: None,
            ramp_until: None,
            level: None,
            end_reason: None,
            migration: Some(id),
            queued_since: None,
            // The VM keeps the addresses its last migration gave it.
            readdress: self.vms.get(vm).and_then(|s| s.readdress.clone()),
            origin: Origin::Local,
        };
        let record = self.record_mut(id);
        record.prepared_at = Some(now);
        if migrating {
            record.started_at = Some(now);
        }
        let command = state.command_at(now);
        let to = state.phase;
        self.vms.insert(vm.clone(), state);
        Transition {
            vm: vm.clone(),
            from,
            to,
            cause,
            command,
            migration: Some(id),
            readdress: None,
            origin: Origin::Local,
        }
    }

    fn end(&mut self, vm: &VmId, reason: EndReason, now: Millis, cause: Cause) -> Transition {
        let from = self.phase(vm);
        let ramp_ms = self.ramp_ms_of(vm, reason);
        let state = self.vms.get_mut(vm).expect("only drained VMs end");
        let id = state.migration;
        state.drain_started_at = None;
        state.deadline_at = None;
        state.end_reason = Some(reason);
        state.since = now;
        if ramp_ms > 0 {
            state.phase = Phase::Ramping;
            state.ramp_started_at = Some(now);
            state.ramp_until = Some(now.saturating_add(ramp_ms));
        } else {
            state.phase = Phase::Stable;
            state.ramp_started_at = None;
            state.ramp_until = None;
        }
        let to = state.phase;
        let origin = state.origin;
        if let Some(id) = id {
            let record = self.record_mut(id);
            record.ended_at = Some(now);
            record.end = Some(reason);
            if to == Phase::Stable {
                record.stable_at = Some(now);
            }
        }
        // Each balancer ramps (or restores at once) per its own pools' policies.
        let command = PhaseCommand::Ramp {
            elapsed_ms: 0,
            reason,
        };
        Transition {
            vm: vm.clone(),
            from,
            to,
            cause,
            command,
            migration: id,
            readdress: None,
            origin,
        }
    }

    fn admit_queued(&mut self, now: Millis) -> Vec<Transition> {
        let mut admitted = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            let vm = self.queue[i].vm.clone();
            if self.guard_violation(&vm).is_none() {
                let queued = self.queue.remove(i).expect("index checked");
                let record = self.vms.get(&vm).and_then(|s| s.migration);
                admitted.push(self.begin_drain(&vm, now, &queued.options, false, Cause::Dequeued, record));
            } else {
                i += 1;
            }
        }
        admitted
    }

    fn unqueue(&mut self, vm: &VmId) {
        self.queue.retain(|q| &q.vm != vm);
        if let Some(state) = self.vms.get_mut(vm) {
            state.queued_since = None;
        }
    }

    /// The first guard a drain of `vm` would break, with the strictest action among broken guards.
    fn guard_violation(&self, vm: &VmId) -> Option<(GuardAction, String)> {
        let mut violation: Option<(GuardAction, String)> = None;
        for pool in self.topology.pools_of(vm) {
            let busy: Vec<&VmId> = {
                let mut busy: Vec<&VmId> = pool
                    .backend_vms
                    .iter()
                    .filter(|v| *v != vm && self.phase(v).is_drained())
                    .collect();
                busy.sort();
                busy.dedup();
                busy
            };
            let reason = if let Some(max) = pool.guard.max_concurrent.filter(|max| busy.len() >= *max) {
                let names: Vec<&str> = busy.iter().map(|v| v.as_str()).collect();
                Some(format!(
                    "pool {} already has {} migration{} in progress ({}); max_concurrent = {max}",
                    pool.name,
                    busy.len(),
                    if busy.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ))
            } else {
                let active_after = pool
                    .backend_vms
                    .iter()
                    .filter(|v| *v != vm && !self.phase(v).is_drained())
                    .count();
                (active_after < pool.guard.min_active).then(|| {
                    format!(
                        "draining {vm} would leave pool {} with {active_after} active backend{}; min_active = {}",
                        pool.name,
                        if active_after == 1 { "" } else { "s" },
                        pool.guard.min_active
                    )
                })
            };
            if let Some(reason) = reason {
                let action = pool.guard.on_violation;
                match &violation {
                    Some((GuardAction::Refuse, _)) => {}
                    Some((GuardAction::Queue, _)) if action == GuardAction::Queue => {}
                    _ => violation = Some((action, reason)),
                }
            }
        }
        violation
    }

    fn deadline_ms_of(&self, vm: &VmId) -> u64 {
        self.topology
            .pools_of(vm)
            .map(|p| millis(p.deadline))
            .min()
            .unwrap_or_else(|| millis(self.defaults.deadline))
    }

    /// Local bookkeeping only: how long until the registry calls the VM stable again.
    fn ramp_ms_of(&self, vm: &VmId, reason: EndReason) -> u64 {
        self.topology
            .pools_of(vm)
            .map(|p| {
                if reason != EndReason::Completed && p.restore == RestoreMode::Immediate {
                    0
                } else {
                    millis(p.ramp_window)
                }
            })
            .max()
            .unwrap_or(0)
    }

    fn new_record(&mut self, vm: &VmId) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.history.push_back(MigrationRecord::new(id, vm.clone()));
        while self.history.len() > self.defaults.history_limit.max(1) {
            // Never evict a record that a VM still points at.
            let front_in_use = self.history.front().is_some_and(|r| {
                self.vms.values().any(|s| {
                    s.migration == Some(r.id) && (s.phase != Phase::Stable || s.queued_since.is_some())
                })
            });
            if front_in_use {
                break;
            }
            self.history.pop_front();
        }
        id
    }

    fn record_mut(&mut self, id: u64) -> &mut MigrationRecord {
        self.history
            .iter_mut()
            .rev()
            .find(|r| r.id == id)
            .expect("records of live migrations are kept")
    }
}

#[cfg(test)]
mod tests;

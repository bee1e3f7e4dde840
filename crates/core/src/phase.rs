//! Migration phases of one VM, the notices that move it between them, and the command every
//! balancer receives for it.
//!
//! ```text
//! stable ──prepare──▶ draining ──started──▶ migrating
//!    ▲                    │                     │
//!    │             completed | failed | cancelled | deadline
//!    │                    ▼                     ▼
//!    └──── ramp done ── ramping ◀───────────────┘   (or straight to stable: restore = "immediate")
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::adaptive::Level;
use crate::time::Millis;

/// A notice about a VM's migration, from the API, the CLI or an event source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    /// The VM is about to migrate: reduce new work sent to it.
    Prepare,
    /// The memory copy has begun.
    Started,
    /// The VM runs at its destination: bring it back.
    Completed,
    /// The migration failed: the VM never left; bring it back.
    Failed,
    /// The migration was cancelled: the VM never left; bring it back.
    Cancelled,
}

impl Notice {
    /// Every notice, in lifecycle order.
    pub const ALL: [Notice; 5] = [
        Notice::Prepare,
        Notice::Started,
        Notice::Completed,
        Notice::Failed,
        Notice::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Prepare => "prepare",
            Notice::Started => "started",
            Notice::Completed => "completed",
            Notice::Failed => "failed",
            Notice::Cancelled => "cancelled",
        }
    }

    /// Whether this notice ends a migration.
    pub fn is_end(self) -> bool {
        matches!(self, Notice::Completed | Notice::Failed | Notice::Cancelled)
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Notice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Notice::ALL.into_iter().find(|n| n.as_str() == s).ok_or_else(|| {
            format!("unknown phase {s:?}; expected prepare, started, completed, failed or cancelled")
        })
    }
}

/// Where a VM is in its migration lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Full share of new work.
    Stable,
    /// About to migrate: new work reduced per the drain policy.
    Draining,
    /// Memory copy in progress: still drained.
    Migrating,
    /// Migration over: share of new work rising per the ramp policy.
    Ramping,
}

impl Phase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::Draining => "draining",
            Phase::Migrating => "migrating",
            Phase::Ramping => "ramping",
        }
    }

    /// Draining or migrating: the VM's new work is reduced.
    pub fn is_drained(self) -> bool {
        matches!(self, Phase::Draining | Phase::Migrating)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// The VM runs at its destination.
    Completed,
    /// The migration failed; the VM stayed.
    Failed,
    /// The migration was cancelled; the VM stayed.
    Cancelled,
    /// No end notice came before the deadline.
    Deadline,
}

impl EndReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Failed => "failed",
            EndReason::Cancelled => "cancelled",
            EndReason::Deadline => "deadline",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest deadline a migration may have (configured, in a notice, or in a peer's command): a live
/// migration that has not ended after a week has failed, and a larger value could keep a VM drained
/// for ever.
pub const MAX_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;

/// What a balancer must do for a VM: the whole desired state, so applying it twice is harmless.
/// On the wire: `{"action": "drain", "elapsed_ms": ..., "migrating": ..., "deadline_in_ms": ...}`,
/// `{"action": "ramp", "elapsed_ms": ..., "reason": ...}` or `{"action": "stable"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum PhaseCommand {
    /// Reduce new work per each pool's drain policy; keep existing connections.
    Drain {
        /// Milliseconds since the drain began (a linear drain continues from there).
        elapsed_ms: u64,
        /// Whether the memory copy has begun.
        migrating: bool,
        /// Restore by yourself if no further command arrives within this many milliseconds
        /// (1 to [`MAX_DEADLINE_MS`], 7 days).
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604_800_000))]
        deadline_in_ms: u64,
        /// The adaptive controller's level: the fraction of each pool's drain target the VM keeps
        /// (pools whose drain is adaptive or quiesces apply it; others ignore it). Absent: the
        /// target itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        level: Option<Level>,
    },
    /// Bring the VM back per each pool's ramp (or at once where `restore = "immediate"` and the
    /// migration did not complete).
    Ramp {
        /// Milliseconds since the ramp began.
        elapsed_ms: u64,
        /// Why the migration ended.
        reason: EndReason,
    },
    /// Full share of new work.
    Stable,
}

/// A [`PhaseCommand`] as it is read: every field optional, so that an error names its field.
/// (serde's own reading of an internally tagged enum buffers the object first, and an error inside
/// it, an unknown action or a field of the wrong type, then names no field.)
#[derive(Deserialize)]
struct PhaseCommandFields {
    action: Action,
    elapsed_ms: Option<u64>,
    migrating: Option<bool>,
    deadline_in_ms: Option<u64>,
    level: Option<Level>,
    reason: Option<EndReason>,
}

/// The `action` of a [`PhaseCommand`].
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Drain,
    Ramp,
    Stable,
}

impl<'de> Deserialize<'de> for PhaseCommand {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = PhaseCommandFields::deserialize(deserializer)?;
        fn required<T, E: serde::de::Error>(value: Option<T>, name: &'static str) -> Result<T, E> {
            value.ok_or_else(|| E::missing_field(name))
        }
        Ok(match fields.action {
            Action::Drain => PhaseCommand::Drain {
                elapsed_ms: required(fields.elapsed_ms, "elapsed_ms")?,
                migrating: required(fields.migrating, "migrating")?,
                deadline_in_ms: required(fields.deadline_in_ms, "deadline_in_ms")?,
                level: fields.level,
            },
            Action::Ramp => PhaseCommand::Ramp {
                elapsed_ms: required(fields.elapsed_ms, "elapsed_ms")?,
                reason: required(fields.reason, "reason")?,
            },
            Action::Stable => PhaseCommand::Stable,
        })
    }
}

impl PhaseCommand {
    /// Checks a command that came from outside (the peer API): the time left to the deadline must
    /// be between 1 ms and [`MAX_DEADLINE_MS`]. Returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let PhaseCommand::Drain { deadline_in_ms, .. } = self
            && !(1..=MAX_DEADLINE_MS).contains(deadline_in_ms)
        {
            return Err((
                "deadline_in_ms",
                format!(
                    "deadline_in_ms: {deadline_in_ms} is out of range; expected 1 to {MAX_DEADLINE_MS} (7 days)"
                ),
            ));
        }
        Ok(())
    }

    /// The phase a balancer shows for a VM under this command.
    pub fn phase(&self) -> Phase {
        match self {
            PhaseCommand::Drain { migrating: false, .. } => Phase::Draining,
            PhaseCommand::Drain { migrating: true, .. } => Phase::Migrating,
            PhaseCommand::Ramp { .. } => Phase::Ramping,
            PhaseCommand::Stable => Phase::Stable,
        }
    }
}

/// New addresses of a VM after a migration that moved its IP (e.g. KubeVirt with masquerade
/// networking). Applied to the *configured* addresses of the VM's backends, so applying it again is
/// harmless.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readdress {
    /// The VM's new IP: every backend of the VM keeps its port and takes this IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_ip_address))]
    pub new_ip: Option<std::net::IpAddr>,
    /// Explicit moves, configured address → new address (take precedence over `new_ip`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::socket_address_map))]
    pub addresses: std::collections::BTreeMap<std::net::SocketAddr, std::net::SocketAddr>,
}

impl Readdress {
    /// The address a backend configured at `configured` has under this change.
    pub fn apply(&self, configured: std::net::SocketAddr) -> std::net::SocketAddr {
        if let Some(moved) = self.addresses.get(&configured) {
            return *moved;
        }
        match self.new_ip {
            Some(ip) => std::net::SocketAddr::new(ip, configured.port()),
            None => configured,
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.new_ip.is_none() && self.addresses.is_empty()
    }
}

/// Who drives a VM's current migration on this node, which decides who its deadline is enforced on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A notice reached this node (API, CLI, an event source): it tells every balancer, its peers
    /// included, and restores the VM on all of them at the deadline.
    #[default]
    Local,
    /// A peer told this node's balancers (peer API, or the phases fetched at start): this node follows
    /// the peer and, at the deadline, restores only its own balancers.
    Peer,
    /// Found on a driven balancer at start (a drain an earlier run left behind, with no state saying
    /// why): restored on this node's own balancers at the deadline.
    Adopted,
}

impl Origin {
    /// Whether a change of this VM is told to this node's own balancers only.
    pub fn is_local_only(self) -> bool {
        self != Origin::Local
    }

    fn is_local(&self) -> bool {
        *self == Origin::Local
    }
}

/// The registry's record of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Current phase.
    pub phase: Phase,
    /// When the current phase began.
    pub since: Millis,
    /// When the VM's phase was last changed by the node that drives its migration (a notice
    /// there, or its deadline): what two nodes compare to tell the newer view. Local consequences
    /// on a node that follows (its ramp ending, its own enforcement of the deadline) leave it.
    #[serde(default)]
    pub changed_at: Millis,
    /// When the current drain began (draining and migrating only).
    pub drain_started_at: Option<Millis>,
    /// When the VM is restored if no end notice comes (draining and migrating only).
    pub deadline_at: Option<Millis>,
    /// When the ramp began (ramping only).
    pub ramp_started_at: Option<Millis>,
    /// When the ramp ends (ramping only).
    pub ramp_until: Option<Millis>,
    /// The adaptive controller's level (draining and migrating, when a pool of the VM adapts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Why the last migration ended (ramping only).
    pub end_reason: Option<EndReason>,
    /// Id of the current or last migration.
    pub migration: Option<u64>,
    /// A prepare waits in the capacity guard's queue.
    pub queued_since: Option<Millis>,
    /// The VM's addresses changed with its last completed migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readdress: Option<Readdress>,
    /// Who drives the current migration on this node.
    #[serde(default, skip_serializing_if = "Origin::is_local")]
    pub origin: Origin,
}

impl VmState {
    /// A VM at full share since `now`.
    pub fn stable(now: Millis) -> Self {
        Self {
            phase: Phase::Stable,
            since: now,
            changed_at: now,
            drain_started_at: None,
            deadline_at: None,
            ramp_started_at: None,
            ramp_until: None,
            level: None,
            end_reason: None,
            migration: None,
            queued_since: None,
            readdress: None,
            origin: Origin::Local,
        }
    }

    /// The command balancers must apply for this VM at `now`.
    pub fn command_at(&self, now: Millis) -> PhaseCommand {
        match self.phase {
            Phase::Draining | Phase::Migrating => PhaseCommand::Drain {
                elapsed_ms: now.saturating_sub(self.drain_started_at.unwrap_or(self.since)),
                migrating: self.phase == Phase::Migrating,
                // Never 0: a peer refuses a drain with no time left (the deadline's own transition
                // follows within the registry's next tick).
                deadline_in_ms: self.deadline_at.map_or(1, |d| d.saturating_sub(now).max(1)),
                level: self.level,
            },
            Phase::Ramping => PhaseCommand::Ramp {
                elapsed_ms: now.saturating_sub(self.ramp_started_at.unwrap_or(self.since)),
                reason: self.end_reason.unwrap_or(EndReason::Completed),
            },
            Phase::Stable => PhaseCommand::Stable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_commands_read_back_what_is_written() {
        for command in [
            PhaseCommand::Drain {
                elapsed_ms: 1500,
                migrating: true,
                deadline_in_ms: 600_000,
                level: None,
            },
            PhaseCommand::Drain {
                elapsed_ms: 0,
                migrating: false,
                deadline_in_ms: 1,
                level: Some(Level::new(0.4)),
            },
            PhaseCommand::Ramp {
                elapsed_ms: 20,
                reason: EndReason::Deadline,
            },
            PhaseCommand::Stable,
        ] {
            let json = serde_json::to_string(&command).unwrap();
            assert_eq!(
                serde_json::from_str::<PhaseCommand>(&json).unwrap(),
                command,
                "{json}"
            );
        }
        // Fields another version may add, or that belong to another action, are ignored.
        let stable: PhaseCommand =
            serde_json::from_str(r#"{"action":"stable","elapsed_ms":5,"priority":1}"#).unwrap();
        assert_eq!(stable, PhaseCommand::Stable);
        let error = serde_json::from_str::<PhaseCommand>(r#"{"action":"ramp","elapsed_ms":1}"#)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("missing field `reason`"), "{error}");
        let error = serde_json::from_str::<PhaseCommand>(
            r#"{"action":"drain","elapsed_ms":1,"migrating":true,"deadline_in_ms":9,"level":1.5}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("level 1.5 is out of range"), "{error}");
    }

    #[test]
    fn readdress_keeps_ports_and_prefers_explicit_moves() {
        let change = Readdress {
            new_ip: Some("10.0.0.9".parse().unwrap()),
            addresses: [("10.0.0.1:81".parse().unwrap(), "10.0.0.7:8081".parse().unwrap())].into(),
        };
        assert_eq!(
            change.apply("10.0.0.1:80".parse().unwrap()),
            "10.0.0.9:80".parse().unwrap()
        );
        assert_eq!(
            change.apply("10.0.0.1:81".parse().unwrap()),
            "10.0.0.7:8081".parse().unwrap()
        );
        assert!(Readdress::default().is_empty());
    }

    #[test]
    fn notices_parse_from_their_wire_names() {
        for notice in Notice::ALL {
            assert_eq!(notice.as_str().parse::<Notice>(), Ok(notice));
        }
        assert!(
            "prepared"
                .parse::<Notice>()
                .unwrap_err()
                .contains("unknown phase")
        );
    }

    #[test]
    fn commands_round_trip_through_json() {
        let command = PhaseCommand::Drain {
            elapsed_ms: 5,
            migrating: true,
            deadline_in_ms: 100,
            level: None,
        };
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(
            json,
            r#"{"action":"drain","elapsed_ms":5,"migrating":true,"deadline_in_ms":100}"#
        );
        assert_eq!(serde_json::from_str::<PhaseCommand>(&json).unwrap(), command);
        let adaptive = PhaseCommand::Drain {
            elapsed_ms: 5,
            migrating: true,
            deadline_in_ms: 100,
            level: Some(Level::new(0.25)),
        };
        let json = serde_json::to_string(&adaptive).unwrap();
        assert_eq!(
            json,
            r#"{"action":"drain","elapsed_ms":5,"migrating":true,"deadline_in_ms":100,"level":0.25}"#
        );
        assert_eq!(serde_json::from_str::<PhaseCommand>(&json).unwrap(), adaptive);
    }

    #[test]
    fn a_drain_command_with_a_level_out_of_range_is_refused() {
        let json = r#"{"action":"drain","elapsed_ms":5,"migrating":true,"deadline_in_ms":100,"level":1.5}"#;
        let error = serde_json::from_str::<PhaseCommand>(json)
            .unwrap_err()
            .to_string();
        assert!(error.contains("out of range"), "{error}");
    }

    #[test]
    fn a_peer_command_with_no_time_or_a_week_and_more_left_is_refused() {
        let drain = |deadline_in_ms| PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: false,
            deadline_in_ms,
            level: None,
        };
        assert_eq!(drain(0).validate().unwrap_err().0, "deadline_in_ms");
        assert!(drain(u64::MAX).validate().unwrap_err().1.contains("out of range"));
        assert!(drain(1).validate().is_ok());
        assert!(drain(MAX_DEADLINE_MS).validate().is_ok());
        assert!(PhaseCommand::Stable.validate().is_ok());
    }

    #[test]
    fn a_draining_vm_commands_a_drain_with_time_left_to_its_deadline() {
        let mut state = VmState::stable(0);
        state.phase = Phase::Draining;
        state.since = 1000;
        state.drain_started_at = Some(1000);
        state.deadline_at = Some(5000);
        assert_eq!(
            state.command_at(1500),
            PhaseCommand::Drain {
                elapsed_ms: 500,
                migrating: false,
                deadline_in_ms: 3500,
                level: None,
            }
        );
    }
}

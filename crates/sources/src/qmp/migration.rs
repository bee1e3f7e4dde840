//! QEMU's migration vocabulary: the `MIGRATION` event's status, its meaning for handover, and
//! `query-migrate` replies as [`MigrationProgress`]. Unknown statuses (from newer QEMUs) are kept as
//! text and ignored, never an error, and never taken for a running migration.

use std::fmt;

use handover_core::migration::MigrationProgress;
use handover_core::phase::Notice;
use serde_json::Value;

/// `MigrationStatus` from `qapi/migration.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration has ever happened.
    None,
    /// The migration is initiated (the copy begins right after).
    Setup,
    /// Memory copy in progress.
    Active,
    /// Post-copy in progress.
    PostcopyActive,
    /// The VM runs at the destination.
    Completed,
    /// An error occurred; the VM stays at the source.
    Failed,
    /// Cancelling.
    Cancelling,
    /// Cancelled; the VM stays at the source.
    Cancelled,
    /// Another status QEMU documents, all of them during a migration (`pre-switchover`, `device`,
    /// `wait-unplug`, `colo`, postcopy recovery).
    Other(String),
    /// A status this version does not know: ignored (it says nothing about whether a migration
    /// runs).
    Unknown(String),
}

/// The statuses of `qapi/migration.json` besides those with a variant of their own.
const OTHER_STATUSES: [&str; 7] = [
    "pre-switchover",
    "device",
    "wait-unplug",
    "colo",
    "postcopy-paused",
    "postcopy-recover",
    "postcopy-recover-setup",
];

impl MigrationStatus {
    /// Parses QEMU's status string.
    pub fn parse(text: &str) -> Self {
        match text {
            "none" => Self::None,
            "setup" => Self::Setup,
            "active" => Self::Active,
            "postcopy-active" => Self::PostcopyActive,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelling" => Self::Cancelling,
            "cancelled" => Self::Cancelled,
            other if OTHER_STATUSES.contains(&other) => Self::Other(other.to_string()),
            unknown => Self::Unknown(unknown.to_string()),
        }
    }

    /// The notice this status means for the VM's balancers, if any.
    pub fn notice(&self) -> Option<Notice> {
        match self {
            Self::Setup => Some(Notice::Prepare),
            Self::Active | Self::PostcopyActive => Some(Notice::Started),
            Self::Completed => Some(Notice::Completed),
            Self::Failed => Some(Notice::Failed),
            Self::Cancelled => Some(Notice::Cancelled),
            Self::None | Self::Cancelling | Self::Other(_) | Self::Unknown(_) => None,
        }
    }

    /// A migration is under way (not none, not finished; an unknown status says nothing).
    pub fn is_running(&self) -> bool {
        !matches!(
            self,
            Self::None | Self::Completed | Self::Failed | Self::Cancelled | Self::Unknown(_)
        )
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Active => "active",
            Self::PostcopyActive => "postcopy-active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Other(other) | Self::Unknown(other) => other,
        };
        f.write_str(text)
    }
}

/// The status in a `query-migrate` reply (`none` when absent: no migration initiated).
pub fn status_of(reply: &Value) -> MigrationStatus {
    reply
        .get("status")
        .and_then(Value::as_str)
        .map_or(MigrationStatus::None, MigrationStatus::parse)
}

/// Progress from a `query-migrate` reply. Fields QEMU leaves out stay `None`.
pub fn progress_of(reply: &Value) -> MigrationProgress {
    let ram = reply.get("ram");
    let ram_u64 = |key: &str| ram.and_then(|r| r.get(key)).and_then(Value::as_u64);
    let top_u64 = |key: &str| reply.get(key).and_then(Value::as_u64);
    MigrationProgress {
        status: reply.get("status").and_then(Value::as_str).map(str::to_string),
        total_bytes: ram_u64("total"),
        transferred_bytes: ram_u64("transferred"),
        remaining_bytes: ram_u64("remaining"),
        dirty_pages_rate: ram_u64("dirty-pages-rate"),
        passes: ram_u64("dirty-sync-count"),
        mbps: ram.and_then(|r| r.get("mbps")).and_then(Value::as_f64),
        expected_downtime_ms: top_u64("expected-downtime"),
        total_time_ms: top_u64("total-time"),
        downtime_ms: top_u64("downtime"),
        setup_time_ms: top_u64("setup-time"),
        page_size: ram_u64("page-size"),
        ..MigrationProgress::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_notices() {
        assert_eq!(MigrationStatus::parse("setup").notice(), Some(Notice::Prepare));
        assert_eq!(MigrationStatus::parse("active").notice(), Some(Notice::Started));
        assert_eq!(
            MigrationStatus::parse("completed").notice(),
            Some(Notice::Completed)
        );
        assert_eq!(MigrationStatus::parse("failed").notice(), Some(Notice::Failed));
        assert_eq!(
            MigrationStatus::parse("cancelled").notice(),
            Some(Notice::Cancelled)
        );
        let future = MigrationStatus::parse("quantum-tunnelling");
        assert_eq!(future, MigrationStatus::Unknown("quantum-tunnelling".into()));
        assert_eq!(future.notice(), None);
        assert!(
            !future.is_running(),
            "an unknown status is not taken as a migration"
        );
        let known = MigrationStatus::parse("pre-switchover");
        assert_eq!(known, MigrationStatus::Other("pre-switchover".into()));
        assert!(known.is_running());
    }

    #[test]
    fn a_real_query_migrate_reply_becomes_progress() {
        // Captured from QEMU 10.0.2 on this machine (64 MiB guest, 16 MiB/s).
        let reply: Value = serde_json::from_str(r#"{"status": "completed", "setup-time": 1, "downtime": 4, "total-time": 3710, "ram": {"total": 67641344, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0, "pages-per-second": 4160, "downtime-bytes": 3460717, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 143.96, "transferred": 66743883, "duplicate": 282, "dirty-pages-rate": 0, "normal-bytes": 66498560, "normal": 16235}}"#).unwrap();
        let p = progress_of(&reply);
        assert_eq!(p.status.as_deref(), Some("completed"));
        assert_eq!(p.total_bytes, Some(67_641_344));
        assert_eq!(p.transferred_bytes, Some(66_743_883));
        assert_eq!(p.passes, Some(3));
        assert_eq!(p.downtime_ms, Some(4));
        assert_eq!(p.total_time_ms, Some(3710));
        assert_eq!(p.expected_downtime_ms, None);
        assert_eq!(status_of(&reply), MigrationStatus::Completed);
        assert_eq!(status_of(&serde_json::json!({})), MigrationStatus::None);
    }
}

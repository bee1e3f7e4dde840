//! The state file: phases, ramps, deadlines, queued prepares, migration history, backend health and
//! moved addresses, saved atomically (write, fsync, rename) whenever they change and on shutdown,
//! and restored by `handover run` before any listener serves. A restart during a migration
//! therefore never sends full traffic to a VM that is still draining (HAProxy loses this on
//! reload: haproxy issue 2085).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_control::Coordinator;
use handover_core::migration::RegistrySnapshot;
use handover_proxy::Pools;
use handover_proxy::pools::PoolExport;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[cfg(test)]
#[path = "state_file_tests.rs"]
mod tests;

/// Format version of the file.
const VERSION: u32 = 1;
/// How often the state is compared with what was last written.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedState {
    /// Format version.
    pub version: u32,
    /// When it was written, in milliseconds since the Unix epoch.
    pub saved_at_ms: u64,
    /// The migration registry.
    pub registry: RegistrySnapshot,
    /// The embedded proxy's pools.
    pub pools: Vec<PoolExport>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads the file: `Ok(None)` when there is none yet. A file that cannot be read as state is
/// moved aside (`.corrupt`) with an error, and handover starts from a clean state.
pub fn load(path: &Path) -> Option<SavedState> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the state file; starting from a clean state");
            return None;
        }
    };
    match serde_json::from_str::<SavedState>(&text) {
        Ok(state) if state.version == VERSION => Some(state),
        Ok(state) => {
            warn!(file = %path.display(), version = state.version, "state file of another version ignored");
            None
        }
        Err(e) => {
            let aside = path.with_extension("corrupt");
            let _ = std::fs::rename(path, &aside);
            tracing::error!(file = %path.display(), error = %e, moved_to = %aside.display(), "state file is not valid; starting from a clean state");
            None
        }
    }
}

/// Restores a saved state into the pools and the coordinator.
pub fn restore(saved: SavedState, pools: &Pools, coordinator: &Coordinator) {
    let age_ms = now_ms().saturating_sub(saved.saved_at_ms);
    let drained = saved
        .registry
        .vms
        .iter()
        .filter(|(_, s)| s.phase.is_drained())
        .count();
    pools.import(&saved.pools, age_ms);
    coordinator.import(saved.registry);
    info!(age_ms, drained, "restored runtime state");
}

/// Writes `bytes` to `path` atomically.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Saves whenever the state changed, until cancelled; saves once more on the way out.
pub async fn run_writer(
    path: PathBuf,
    pools: Arc<Pools>,
    coordinator: Arc<Coordinator>,
    cancel: CancellationToken,
) {
    let mut last: Option<String> = None;
    let mut interval = tokio::time::interval(CHECK_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = cancel.cancelled() => true,
        };
        // Compare without the timestamp, so an unchanged state is not rewritten.
        let registry = coordinator.export();
        let exports = pools.export();
        let content = serde_json::to_string(&(&registry, &exports)).unwrap_or_default();
        if last.as_deref() != Some(content.as_str()) || stopping {
            let state = SavedState {
                version: VERSION,
                saved_at_ms: now_ms(),
                registry,
                pools: exports,
            };
            match serde_json::to_vec_pretty(&state)
                .map_err(std::io::Error::other)
                .and_then(|b| write_atomic(&path, &b))
            {
                Ok(()) => last = Some(content),
                Err(e) => warn!(file = %path.display(), error = %e, "cannot write the state file"),
            }
        }
        if stopping {
            return;
        }
    }
}

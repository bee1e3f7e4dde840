//! The state file: phases, ramps, deadlines, queued prepares, migration history, backend health and
//! moved addresses, restored by `handover run` before any listener serves. A restart during a
//! migration therefore never sends full traffic to a VM that is still draining (HAProxy loses this
//! on reload: haproxy issue 2085).
//!
//! Every change a notice makes is on disk before the notice is acknowledged (or told to any
//! balancer): the coordinator calls [`StateFile::persist`], which writes a temporary file, fsyncs
//! it, renames it over the file and fsyncs the directory. Concurrent notices share writes (a write
//! covers every change made before it began). Changes that no notice acknowledges (health, ramps
//! ending) are saved by a check every 250 ms and on shutdown.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_control::{Coordinator, Durable};
use handover_core::balancer::BoxFuture;
use handover_core::migration::RegistrySnapshot;
use handover_proxy::Pools;
use handover_proxy::pools::PoolExport;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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

/// Only the version, to recognise a file of another format before reading the rest.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads the file: `None` when there is none yet. A file that cannot be read as state (not
/// UTF-8, not JSON, not this format) is moved aside — `state.corrupt`, or `state.vN` for a file of
/// format version N (another handover's) — with an error, and handover starts from a clean state: it is
/// never overwritten.
pub fn load(path: &Path) -> Option<SavedState> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the state file; starting from a clean state");
            return None;
        }
    };
    let problem = match std::str::from_utf8(&bytes) {
        Err(e) => Some(("corrupt".to_string(), format!("not UTF-8: {e}"))),
        Ok(text) => match serde_json::from_str::<VersionOnly>(text) {
            Ok(v) if v.version != VERSION => Some((
                format!("v{}", v.version),
                format!("format version {} (this handover reads {VERSION})", v.version),
            )),
            Ok(_) => match serde_json::from_str::<SavedState>(text) {
                Ok(state) => return Some(state),
                Err(e) => Some(("corrupt".to_string(), e.to_string())),
            },
            Err(e) => Some(("corrupt".to_string(), e.to_string())),
        },
    };
    let (suffix, reason) = problem.expect("every other case returned");
    let aside = aside_path(path, &suffix);
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            error!(file = %path.display(), %reason, moved_to = %aside.display(), "state file is not valid; moved aside, starting from a clean state")
        }
        Err(e) => {
            error!(file = %path.display(), %reason, error = %e, "state file is not valid and cannot be moved aside; starting from a clean state")
        }
    }
    None
}

/// Whether the state file can be kept at `path`: not a directory, in a directory where a file can
/// be created (tried with a scratch file that is removed again). Missing directories are made
/// when `create` is set (`handover run`); otherwise the nearest one that exists is tried
/// (`handover check` changes nothing). A full disk is not found here: it fails the notices that
/// cannot be saved.
pub fn check_path(path: &Path, create: bool) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if create {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let dir = parent
        .ancestors()
        .find(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_ok())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("directory {}: {e}", dir.display())),
    }
    let scratch = dir.join(format!(".handover-check-{}", std::process::id()));
    std::fs::File::create(&scratch).map_err(|e| format!("cannot create files in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&scratch);
    Ok(())
}

/// `state.json` → `state.corrupt` (`state.corrupt.1`... if that exists already: a file moved
/// aside before is never overwritten either).
fn aside_path(path: &Path, suffix: &str) -> PathBuf {
    let base = path.with_extension(suffix);
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{}.{n}", base.display()));
        n += 1;
    }
    candidate
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

/// Writes `bytes` to `path` so that a crash leaves the old or the new file, never a part: a
/// temporary file, fsync, rename, fsync of the directory (which makes the rename durable).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp: PathBuf = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// What the writer knows of past writes.
#[derive(Debug, Default)]
struct Written {
    /// Every request up to this ticket is on disk.
    done: u64,
    /// The last failed write: the tickets it covered and why it failed.
    failed: Option<(u64, u64, String)>,
    /// The content last written (without its timestamp), to skip writing the same again.
    content: Option<String>,
}

/// The state file of a running node.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    pools: Arc<Pools>,
    coordinator: Weak<Coordinator>,
    /// Tickets handed out to callers of `persist`.
    requested: AtomicU64,
    /// One write at a time; callers wait here in order.
    written: tokio::sync::Mutex<Written>,
}

impl StateFile {
    /// The state file at `path`, of these pools and this coordinator.
    pub fn new(path: PathBuf, pools: Arc<Pools>, coordinator: &Arc<Coordinator>) -> Arc<Self> {
        Arc::new(Self {
            path,
            pools,
            coordinator: Arc::downgrade(coordinator),
            requested: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(Written::default()),
        })
    }

    /// Makes everything the node holds now durable.
    pub async fn save(&self) -> Result<(), String> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut written = self.written.lock().await;
        if written.done >= ticket {
            return Ok(());
        }
        if let Some((from, upto, reason)) = &written.failed
            && (*from..=*upto).contains(&ticket)
        {
            return Err(reason.clone());
        }
        // Everything requested so far was changed before this snapshot is taken.
        let upto = self.requested.load(Ordering::SeqCst);
        let Some(coordinator) = self.coordinator.upgrade() else {
            return Ok(());
        };
        let registry = coordinator.export();
        let pools = self.pools.export();
        let content = serde_json::to_string(&(&registry, &pools)).unwrap_or_default();
        if written.content.as_deref() == Some(content.as_str()) {
            written.done = upto;
            return Ok(());
        }
        let state = SavedState {
            version: VERSION,
            saved_at_ms: now_ms(),
            registry,
            pools,
        };
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
            write_atomic(&path, &bytes)
        })
        .await
        .map_err(|e| format!("the writer stopped: {e}"))
        .and_then(|r| r.map_err(|e| format!("{}: {e}", self.path.display())));
        match result {
            Ok(()) => {
                written.done = upto;
                written.content = Some(content);
                Ok(())
            }
            Err(reason) => {
                written.failed = Some((written.done + 1, upto, reason.clone()));
                Err(reason)
            }
        }
    }
}

impl Durable for StateFile {
    fn persist(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.save())
    }
}

/// Saves whenever the state changed, until cancelled; saves once more on the way out.
pub async fn run_writer(file: Arc<StateFile>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(CHECK_EVERY);
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = cancel.cancelled() => true,
        };
        match file.save().await {
            Ok(()) if failing => {
                info!(file = %file.path.display(), "the state file is written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!(error = %e, "cannot write the state file; notices are refused until it can be written");
                failing = true;
            }
            Err(_) => {}
        }
        if stopping {
            return;
        }
    }
}

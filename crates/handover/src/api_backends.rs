//! Backends set or removed through the API (`PUT`/`DELETE /v1/pools/{pool}/backends/{address}`),
//! kept as an overlay on the configuration file: the node runs the file with the overlay applied,
//! a reload re-reads the file and applies the overlay again, and a restart reads the overlay back
//! from beside the state file (`state.json` → `state.backends.json`), written atomically (write,
//! fsync, rename) before the API replies. The last change to a pool and address wins over the
//! file until another API call changes it.

use std::path::{Path, PathBuf};

use handover_core::api::BackendChange;
use handover_core::config::{BackendConfig, Config};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Every backend change made through the API, in order; one per pool and address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overlay {
    /// The changes (a later one for the same pool and address replaces the earlier).
    pub changes: Vec<BackendChange>,
}

impl Overlay {
    /// Records a change, replacing an earlier one of the same pool and address.
    pub fn record(&mut self, change: BackendChange) {
        self.changes
            .retain(|c| !(c.pool == change.pool && c.address == change.address));
        self.changes.push(change);
    }

    /// The configuration with the overlay applied (changes to pools the file no longer has are
    /// kept but do nothing).
    pub fn apply(&self, file: &Config) -> Config {
        let mut config = file.clone();
        for change in &self.changes {
            let Some(pool) = config.pools.iter_mut().find(|p| p.name == change.pool) else {
                continue;
            };
            let existing = pool.backends.iter().position(|b| b.address == change.address);
            match (&change.backend, existing) {
                (Some(spec), Some(i)) => {
                    pool.backends[i].vm = spec.vm.clone();
                    pool.backends[i].weight = spec.weight;
                }
                (Some(spec), None) => pool.backends.push(BackendConfig {
                    address: change.address,
                    vm: spec.vm.clone(),
                    weight: spec.weight,
                }),
                (None, Some(i)) => {
                    pool.backends.remove(i);
                }
                (None, None) => {}
            }
        }
        config
    }

    /// Where the overlay of a node with this state file is kept.
    pub fn path_for(state_file: &Path) -> PathBuf {
        state_file.with_extension("backends.json")
    }

    /// Reads the overlay (none yet: empty). A file that cannot be read is moved aside as
    /// `.corrupt`, with an error in the log, and the node starts from its configuration file.
    pub fn load(path: &Path) -> Self {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::default(),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read the backends set through the API; starting from the configuration file");
                return Self::default();
            }
        };
        match serde_json::from_slice(&text) {
            Ok(overlay) => overlay,
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                let _ = std::fs::rename(path, &aside);
                tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %e, "the backends set through the API cannot be read; starting from the configuration file");
                Self::default()
            }
        }
    }

    /// Writes the overlay durably, as the state file is written: a temporary file, fsync, rename,
    /// fsync of the directory ([`crate::state_file::write_atomic`]).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::state_file::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use handover_core::api::BackendSpec;
    use handover_core::model::VmId;

    use super::*;

    fn change(pool: &str, address: &str, backend: Option<(&str, u32)>) -> BackendChange {
        BackendChange {
            pool: pool.into(),
            address: address.parse().unwrap(),
            backend: backend.map(|(vm, weight)| BackendSpec {
                vm: VmId::new(vm).unwrap(),
                weight,
            }),
        }
    }

    #[test]
    fn the_last_change_of_an_address_wins_over_the_file() {
        let file = handover_core::config::parse(
            "[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"a\"\n[[pools.p.backends]]\naddress = \"127.0.0.1:2\"\nvm = \"b\"\n",
        )
        .unwrap();
        let mut overlay = Overlay::default();
        overlay.record(change("p", "127.0.0.1:3", Some(("c", 1))));
        overlay.record(change("p", "127.0.0.1:1", None));
        overlay.record(change("p", "127.0.0.1:2", Some(("b", 5))));
        overlay.record(change("p", "127.0.0.1:3", Some(("c", 7))));
        overlay.record(change("gone", "127.0.0.1:4", Some(("d", 1))));
        let config = overlay.apply(&file);
        let backends: Vec<(String, &str, u32)> = config.pools[0]
            .backends
            .iter()
            .map(|b| (b.address.to_string(), b.vm.as_str(), b.weight))
            .collect();
        assert_eq!(
            backends,
            vec![
                ("127.0.0.1:2".to_string(), "b", 5),
                ("127.0.0.1:3".to_string(), "c", 7)
            ]
        );
        assert_eq!(overlay.changes.len(), 4);
    }

    #[test]
    fn a_saved_overlay_reads_back_and_a_corrupt_one_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = Overlay::path_for(&dir.path().join("state.json"));
        assert_eq!(path, dir.path().join("state.backends.json"));
        assert_eq!(Overlay::load(&path), Overlay::default());
        let mut overlay = Overlay::default();
        overlay.record(change("p", "127.0.0.1:3", Some(("c", 2))));
        overlay.save(&path).unwrap();
        assert_eq!(Overlay::load(&path), overlay);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Overlay::load(&path), Overlay::default());
        assert!(dir.path().join("state.backends.json.corrupt").exists());
    }
}

//! A small tmpfs a test can fill up, to see what a node does when it cannot write its state
//! (root only: the harness's probe [`tmpfs_available`] says when it cannot be mounted).

use std::path::PathBuf;

use super::harness::Lack;

/// A tmpfs of a given size, unmounted when dropped.
pub struct SmallDisk {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` spells it: `256k`).
    pub fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallDisk { path, _dir: dir })
    }

    /// Writes zeros to `fill` until the disk is full.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("fill")).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }

    /// Makes room again.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The harness's probe: whether this test run can mount a tmpfs (root and `mount`).
pub fn tmpfs_available() -> Result<(), Lack> {
    SmallDisk::mount("64k").map(drop).map_err(Lack::Missing)
}

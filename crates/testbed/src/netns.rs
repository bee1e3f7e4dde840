//! The testbed's network namespace, made and removed by `testbed/netns`, and how a process runs
//! inside it: it starts itself again under `ip netns exec`, so that every socket it opens and every
//! process it starts (QEMU, handover, HAProxy) lives in the namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::TestbedError;

/// Set in the environment of the process started inside the namespace.
pub const INSIDE_ENV: &str = "HANDOVER_TESTBED_NETNS";

/// The host side of the bridge, where balancers listen.
pub const BRIDGE_ADDRESS: &str = "10.77.0.1";

/// A network namespace with a bridge.
#[derive(Debug, Clone)]
pub struct Netns {
    /// Its name.
    pub name: String,
    script: PathBuf,
}

impl Netns {
    /// The namespace `name`, managed by the `netns` script of `testbed_dir`.
    pub fn new(name: &str, testbed_dir: &Path) -> Self {
        Self {
            name: name.to_string(),
            script: testbed_dir.join("netns"),
        }
    }

    fn script(&self, args: &[&str]) -> Result<(), TestbedError> {
        let output = Command::new(&self.script)
            .args(args)
            .output()
            .map_err(|e| TestbedError::Missing(format!("cannot run {}: {e}", self.script.display())))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(TestbedError::Failed(format!(
                "{} {}: {}",
                self.script.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// Creates the namespace and its bridge (`10.77.0.1/24`).
    pub fn up(&self) -> Result<(), TestbedError> {
        self.script(&["up", &self.name, &format!("{BRIDGE_ADDRESS}/24")])
    }

    /// Adds a tap on the bridge.
    pub fn tap(&self, tap: &str) -> Result<(), TestbedError> {
        self.script(&["tap", &self.name, tap])
    }

    /// Removes the namespace with everything in it.
    pub fn down(&self) -> Result<(), TestbedError> {
        self.script(&["down", &self.name])
    }

    /// Whether this process runs inside the namespace.
    pub fn inside(&self) -> bool {
        std::env::var(INSIDE_ENV).is_ok_and(|v| v == self.name)
    }

    /// Runs this program again, with the same arguments, inside the namespace; returns its status.
    pub fn run_self_inside(&self) -> Result<ExitStatus, TestbedError> {
        let exe = std::env::current_exe()
            .map_err(|e| TestbedError::Failed(format!("cannot find this program: {e}")))?;
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(INSIDE_ENV, &self.name)
            .status()
            .map_err(|e| TestbedError::Missing(format!("cannot run ip netns exec: {e}")))
    }
}

/// Whether this process runs as root (the namespace, taps and packages need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

//! handover-testbed: real live migrations of tiny Debian guests (kernel from Debian's .deb, busybox
//! initramfs) between two QEMU processes in a network namespace, behind handover or HAProxy, under
//! an open-loop HTTP load and long-lived TCP connections.
//!
//! # Layout
//!
//! - [`netns`]: the namespace (through `testbed/netns`) and running inside it.
//! - [`guest`]: the guest image and QEMU processes (KVM when it boots here, else TCG).
//! - [`balancer`]: handover with a policy, or HAProxy, in front of the guests.
//! - [`load`]: the open-loop HTTP load and the long-lived echo connections, every request recorded.
//! - [`migration`]: driving and observing one QEMU migration over QMP.
//! - [`run`]: one measured migration; [`metrics`]: what it shows; [`bench`]: sweeps and repetitions.
//! - [`report`] and [`plot`]: the markdown table and the timeline picture.
//! - [`check`]: the CI scenario and its verdicts.
//! - [`calibrate`]: the guest's dirty rate and idle migrations, fitted into the simulator, whose
//!   predictions are set beside the benchmark's measurements.
//! - [`hold`]: ways of holding QEMU's switchover for quiescence, and what each costs.

pub mod balancer;
pub mod bench;
pub mod calibrate;
pub mod check;
pub mod guest;
pub mod hold;
pub mod load;
pub mod metrics;
pub mod migration;
pub mod netns;
pub mod plot;
pub mod report;
pub mod run;

use std::time::{SystemTime, UNIX_EPOCH};

/// Why the testbed could not do something.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A part the testbed needs is missing (a package, root, a script).
    #[error("{0}")]
    Missing(String),
    /// A command or process failed.
    #[error("{0}")]
    Failed(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl TestbedError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (QMP event timestamps use the same clock).
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

//! The signals `handover run` answers, installed before anything starts so that none of them kills
//! the process at once while it starts:
//!
//! - `SIGTERM`, `SIGINT` (Ctrl-C), `SIGQUIT`: graceful stop (stop accepting, let connections
//!   finish for `--shutdown-grace`).
//! - `SIGHUP`: reload the configuration (see [`crate::reload`]; handled by the node).
//! - `SIGUSR1`: reopen the access logs (handled by the node).
//! - `SIGUSR2`: logged and ignored (nginx upgrades its binary on it; handover's upgrade is
//!   `handover run --upgrade-from`, see docs/operations.md).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

/// The stop signals, and the ones only logged.
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    quit: Option<Signal>,
    usr2: Option<Signal>,
    /// Registered here so that a SIGHUP before the node listens for it is not fatal.
    _hup: Option<Signal>,
}

impl Signals {
    /// Registers the handlers (tokio's: the default action is replaced for good).
    pub fn install() -> Self {
        let take = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(e) => {
                warn!(signal = name, error = %e, "cannot listen for a signal");
                None
            }
        };
        Self {
            term: take(SignalKind::terminate(), "SIGTERM"),
            int: take(SignalKind::interrupt(), "SIGINT"),
            quit: take(SignalKind::quit(), "SIGQUIT"),
            usr2: take(SignalKind::user_defined2(), "SIGUSR2"),
            _hup: take(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Waits for SIGTERM, SIGINT or SIGQUIT; logs (and otherwise ignores) SIGUSR2 meanwhile.
    pub async fn wait_for_stop(mut self) {
        async fn next(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        loop {
            tokio::select! {
                _ = next(&mut self.term) => { info!("SIGTERM: stopping gracefully"); return }
                _ = next(&mut self.int) => { info!("SIGINT: stopping gracefully"); return }
                _ = next(&mut self.quit) => { info!("SIGQUIT: stopping gracefully"); return }
                _ = next(&mut self.usr2) => {
                    warn!("SIGUSR2 ignored: to upgrade the binary, start the new one with `handover run --upgrade-from` (docs/operations.md)");
                }
            }
        }
    }
}

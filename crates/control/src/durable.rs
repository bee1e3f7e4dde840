//! Where the coordinator makes a change durable before it acknowledges it: `handover run` with a
//! `[state] file` saves the registry there (write, fsync, rename, fsync the directory); without one
//! nothing is saved and nothing is waited for.

use handover_core::balancer::BoxFuture;

/// Saves the coordinator's current state.
pub trait Durable: Send + Sync {
    /// Resolves once everything the coordinator holds now is on disk, or with why it could not be
    /// written (the caller then undoes its change and says so).
    fn persist(&self) -> BoxFuture<'_, Result<(), String>>;
}

//! handover-control: the migration module of handover.
//!
//! # Layout
//!
//! - [`coordinator`]: identifies the balancers that serve a VM, notifies them in parallel with
//!   timeouts, waits for drained, drives deadlines, ramps and retries (over `core`'s registry).
//! - [`fanout`]: the balancers and the calls made to them, each bounded by its own timeout.
//! - [`delivery`]: telling balancers a VM's phase in order, never waiting on one that hangs.
//! - [`retry`]: what each balancer still has to be told, and when it is tried next.
//! - [`durable`]: where a change is saved before it is acknowledged (the state file).
//! - [`keyed_lock`]: async locks by key, so that work on one VM waits only for that VM.
//! - [`fleet`]: the seam to a fleet on etcd, which takes notices instead of the peers' fan-out.
//! - [`api`]: the HTTP control API (axum), including the peer-facing balancer endpoints.
//! - [`dashboard`]: the live page for operators and its event stream.
//! - [`metrics`] + [`stats`]: Prometheus exposition.
//! - [`clock`]: wall-clock milliseconds on top of tokio's (pausable) clock.

pub mod api;
pub mod clock;
pub mod coordinator;
pub mod dashboard;
pub mod delivery;
pub mod durable;
pub mod fanout;
pub mod fleet;
pub mod keyed_lock;
pub mod metrics;
pub mod retry;
pub mod stats;

pub use clock::Clock;
pub use coordinator::{Coordinator, CoordinatorError};
pub use durable::Durable;
pub use fanout::BalancerSlot;
pub use fleet::FleetHook;

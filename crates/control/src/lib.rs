//! handover-control: the migration module of handover.
//!
//! # Layout
//!
//! - [`coordinator`]: identifies the balancers that serve a VM, notifies them in parallel with
//!   timeouts, waits for drained, drives deadlines, ramps and retries (over `core`'s registry).
//! - [`fanout`]: parallel calls to balancers, each bounded by its own timeout.
//! - [`fleet`]: the seam to a fleet on etcd, which takes notices instead of the peers' fan-out.
//! - [`api`]: the HTTP control API (axum), including the peer-facing balancer endpoints.
//! - [`dashboard`]: the live page for operators and its event stream.
//! - [`metrics`] + [`stats`]: Prometheus exposition.
//! - [`clock`]: wall-clock milliseconds on top of tokio's (pausable) clock.

pub mod api;
pub mod clock;
pub mod coordinator;
pub mod dashboard;
pub mod fanout;
pub mod fleet;
pub mod metrics;
pub mod stats;

pub use clock::Clock;
pub use coordinator::{Coordinator, CoordinatorError};
pub use fanout::BalancerSlot;
pub use fleet::FleetHook;

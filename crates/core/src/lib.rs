//! handover-core: the pure logic of handover, with no I/O, no async runtime and no clock.
//!
//! # Layout
//!
//! - [`model`]: VMs, backends, pools, listeners, and the enums that name policies.
//! - [`config`]: the TOML configuration, validated as a whole, with field paths and lines in errors.
//! - [`drain`] and [`ramp`]: how a VM's share of new work falls before a migration and rises after.
//! - [`adaptive`]: the closed loop from a migration's progress to the VM's share while it migrates,
//!   and switchover quiescence.
//! - [`health`]: active and passive health with tolerance of a migration's blackout.
//! - [`weights`]: solves the effective weight of every backend of a pool from the VMs' phases.
//! - [`selection`]: the selection algorithms (smooth weighted round robin, least connections, P2C).
//! - [`phase`] and [`migration`]: the per-VM phase state machine and the migration registry, a pure
//!   reducer `(state, notice, now) → (state, transition)` that also enforces deadlines and the guard.
//! - [`command`]: what a phase command means for a backend's share of new work over time.
//! - [`balancer`]: the one trait that joins the two roles: a balancer that says which VMs it serves,
//!   applies a phase, and reports drain status. Every driver implements it.
//! - [`api`]: the JSON shapes of the control API, shared by the server and its clients.
//! - [`time`] and [`units`]: milliseconds and human durations, byte quantities.
//! - `openapi` (feature `openapi`): schemas of the API values the `ToSchema` derive cannot describe.

pub mod adaptive;
pub mod api;
pub mod balancer;
pub mod command;
pub mod config;
pub mod drain;
pub mod health;
pub mod migration;
pub mod model;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod phase;
pub mod ramp;
pub mod selection;
pub mod time;
pub mod units;
pub mod weights;

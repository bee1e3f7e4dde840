//! handover-sim: a deterministic simulator of pre-copy live migration under request load, behind
//! handover's own balancing policies.
//!
//! # Layout
//!
//! - [`rng`]: deterministic random streams (common random numbers across policies).
//! - [`precopy`]: the migration engine (QEMU and Xen stop rules, auto-converge, timeout).
//! - [`request`] and [`flow`]: the two fidelities (every request as an event; load as rates).
//! - [`run`]: what a run produces.
//! - [`experiment`]: sweeps × policies × seeds with confidence intervals; fleet waves.
//! - [`report`] and [`plot`]: the markdown table and the SVG pictures.
//! - [`memory`]: dirty pages, exactly (page log) or in expectation (Zipf hot set).
//! - [`policy`]: a balancing policy over a migration's timeline, through `core`'s drain, ramp and weights.
//! - [`adaptive`]: `core`'s adaptive drain controller, fed with the engine's progress and probes.
//! - [`scenario`]: scenario files, sweeps and fleets.
//! - [`stats`]: means with 95 % confidence intervals, quantiles.

pub mod adaptive;
pub mod experiment;
pub mod flow;
pub mod memory;
pub mod plot;
pub mod policy;
pub mod precopy;
pub mod report;
pub mod request;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod stats;

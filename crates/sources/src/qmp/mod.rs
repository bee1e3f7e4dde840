//! QEMU Machine Protocol: a bounded, tolerant client and a migration watcher.
//!
//! Hand-written rather than the `qapi` crate: measured against a fake QMP server, `qapi` 0.15's
//! tokio stream ends on the first line it cannot decode (a garbage line, a `MIGRATION` event with a
//! status its generated enum does not know) and buffers a line of any length, so one odd message
//! would lose the `completed` that follows and leave the VM drained until its deadline.

pub mod client;
pub mod dirty_rate;
pub mod hold;
pub mod lines;
pub mod message;
pub mod migration;
pub mod watcher;

pub use client::{Events, QmpClient, QmpError};
pub use dirty_rate::Prober;
pub use handover_core::model::Endpoint;
pub use hold::SwitchoverHold;
pub use message::Event;
pub use migration::{MigrationStatus, progress_of, status_of};
pub use watcher::{MigrationSink, QmpWatcher};

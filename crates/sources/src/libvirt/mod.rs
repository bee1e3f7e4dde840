//! libvirt: what its `qemu` hook calls and its domain events mean for handover, per libvirt
//! version, and a watcher of those events.
//!
//! Measured with two real libvirt daemons (9.0 from bookworm, 11.3 from bookworm-backports; see
//! `docs/libvirt.md`), one live migration from host S to host D:
//!
//! | when | hook calls (`DOMAIN OP SUBOP EXTRA`) | domain events (`virsh event`) |
//! |---|---|---|
//! | before anything is copied | D: `migrate begin -`, `prepare begin -`, `start begin -` | |
//! | the copy begins | D: `started begin -` | D: `Started Migrated`; S: `migration-iteration 1` |
//! | switchover (S paused) | | S: `Suspended Migrated` |
//! | D runs the VM | *(nothing on D)* | D: `Resumed Migrated` |
//! | S released | S: `stopped end -`, `release end -` (9.0) / `release end migrated` (≥ 10.5) | S: `Stopped Migrated` |
//! | aborted (`domjobabort`) | D: `stopped end -`, `release end -` (9.0) / `release end failed` (≥ 10.5); S: nothing | D: `Stopped Failed` |
//!
//! So the hook alone is right about `prepare` (and holds libvirt until drained), `started`, and on
//! libvirt ≥ 10.5 about the end; on 9.0 a `release end -` after the copy began is the source's
//! success or the destination's failure, which only the events tell apart ([`watcher`]).
//!
//! - [`hook`]: a hook call and what it asks of handover; the domain-to-VM mapping.
//! - [`events`]: reading `virsh event` lines.
//! - [`roles`]: which side of a migration a domain is on, from its events, and what each event means.
//! - [`watcher`]: `virsh event --loop` as a child process, feeding the coordinator.

pub mod events;
pub mod hook;
pub mod roles;
pub mod watcher;

pub use hook::{HookAction, HookCall, HookError, METADATA_NAMESPACE, vm_of};

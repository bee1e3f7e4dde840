//! handover-sources: where handover learns that a VM is about to migrate, without anyone calling
//! the API by hand.
//!
//! - [`qmp`]: QEMU's QMP monitor: a bounded client and a watcher that turns `MIGRATION` events and
//!   `query-migrate` into notices and progress.
//! - [`libvirt`]: what libvirt's `qemu` hook calls and domain events mean, per libvirt version; the
//!   domain-to-VM mapping; a watcher of a daemon's events (`virsh event` as a child process).

pub mod libvirt;
pub mod qmp;

//! handover-sources: where handover learns that a VM is about to migrate, without anyone calling
//! the API by hand.
//!
//! - [`qmp`]: QEMU's QMP monitor: a bounded client and a watcher that turns `MIGRATION` events and
//!   `query-migrate` into notices and progress.
//! - [`libvirt`]: the libvirt `qemu` hook's calls and domain-to-VM mapping.

pub mod libvirt;
pub mod qmp;

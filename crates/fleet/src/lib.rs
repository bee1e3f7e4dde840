//! handover-fleet: a fleet of handover nodes that find, tell and hear from each other through etcd.
//!
//! In fleet mode the phase of a VM is etcd's. A notice taken by any node is written to etcd with a
//! compare-and-swap, in the same transaction as a read of the nodes that serve the VM; every node
//! watches the notices, applies them to its own balancers (through the `Balancer` trait, via
//! [`LocalNode`]) and writes an acknowledgement; the node that took the notice replies with every
//! serving node's acknowledgement. Registrations and acknowledgements live under each node's
//! lease, so a node that dies disappears. Deadlines stay local timers on every node.
//!
//! # Layout
//!
//! - [`etcd`]: the etcd v3 client (failover between members, TLS, user/password), over the gRPC
//!   code generated into `proto` by `scripts/etcd-proto` (checked in: no `protoc` at build time).
//! - [`keys`], [`records`]: the key layout and the JSON stored under it.
//! - [`decide`]: a notice's effect on the fleet-wide state (pure, with `core`'s registry).
//! - [`node`]: this node's registration and lease; `watcher`: list-then-watch and
//!   acknowledgements; `timers`: deadlines and ramp ends written to etcd; `notifier`: a notice
//!   from commit to the last acknowledgement; `adaptive`: the adaptive drain's level written into a
//!   notice, and the other nodes' in-flight for quiescence; [`view`]: `handover fleet`.
//! - [`local`]: the node's own balancers as the fleet sees them; [`stats`]: `/metrics`.
//! - [`backends`]: backends set through the API, shared through etcd and applied on every node.
//! - `prefix_watch`: list then watch one prefix (notices, backends) with backoff and resync.

mod adaptive;
pub mod backends;
pub mod decide;
pub mod etcd;
pub mod keys;
pub mod local;
pub mod node;
mod notifier;
mod prefix_watch;
#[allow(missing_docs)]
mod proto;
pub mod records;
pub mod stats;
mod timers;
pub mod view;
mod watcher;

pub use backends::{BackendSink, SinkRefusal};
pub use local::LocalNode;
pub use node::{FleetError, FleetNode, served_pools};
pub use notifier::NoticeFailure;
pub use view::FleetView;

//! handover-proxy: the data plane. L4 (TCP) and L7 (HTTP/1.1) listeners that pick a backend for
//! every new connection (L4) or request (L7) from a lock-free snapshot of their pool, and the
//! embedded [`Balancer`](handover_core::balancer::Balancer) the migration module drives.
//!
//! # Layout
//!
//! - [`pools`]: pools, the phase each VM is in, and snapshot rebuilds (on commands and on a ticker).
//! - [`snapshot`]: the immutable per-pool view the hot path reads.
//! - [`removed`]: backends a reload removed, kept until their connections end or a grace passes.
//! - [`backend`]: live per-backend counters and the list of what is still open to it.
//! - [`tcp`] + [`relay`]: the L4 listener and its half-close-aware byte relay.
//! - [`http`]: the L7 listener: its own HTTP/1.1 engine, upstream connection reuse, header rules,
//!   WebSocket upgrades.
//! - [`h2`]: HTTP/2 from clients (TLS with ALPN, or cleartext prior knowledge), to HTTP/1.1 or
//!   HTTP/2 backends.
//! - [`tls`]: TLS termination (certificates by SNI, reloaded from disk) and TLS to backends.
//! - [`buffer`]: I/O buffers recycled per worker.
//! - [`shutdown`]: a worker's shutdown signal.
//! - [`health`]: active health checks (passive ones are recorded by the listeners).
//! - [`descriptors`]: the data plane's descriptor budget; running out is never a backend's fault.
//! - [`listeners`]: binds every listener before any starts, a socket per worker.
//! - [`workers`]: the data plane's threads, a single-threaded runtime each.
//! - [`embedded`]: the proxy as a balancer.
//! - [`access_log`]: one line per request or connection, written off the data plane.
//! - [`log_limit`]: a budget for log lines a flood could repeat.

mod accept;
pub mod access_log;
pub mod backend;
pub mod buffer;
pub mod descriptors;
pub mod embedded;
pub mod h2;
pub mod health;
pub mod http;
pub mod listeners;
pub mod log_limit;
pub mod pools;
mod random;
pub mod relay;
pub mod removed;
pub mod shutdown;
pub mod snapshot;
pub mod tcp;
pub mod tls;
pub mod workers;

pub use embedded::EmbeddedBalancer;
pub use listeners::{BindError, Listeners};
pub use pools::Pools;
pub use workers::DataPlane;

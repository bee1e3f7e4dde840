//! handover-drivers: balancers that handover's migration module drives besides its embedded proxy.
//!
//! # Layout
//!
//! - [`peer`]: another handover node, through its control API.
//! - [`haproxy`]: an HAProxy instance, through its runtime API.
//! - [`nginx`]: an nginx instance, through a generated upstream file and a graceful reload.
//! - [`desired`]: the desired per-VM state the HAProxy and nginx drivers keep and re-send.
//! - [`client`]: the control-API client shared by the peer driver and the CLI.

pub mod client;
pub mod desired;
pub mod haproxy;
pub mod nginx;
pub mod peer;

pub use client::{ClientError, ControlClient};
pub use peer::PeerBalancer;

//! handover-drivers: balancers that handover's migration module drives besides its embedded proxy.
//!
//! # Layout
//!
//! - [`peer`]: another handover node, through its control API.
//! - [`client`]: the control-API client shared by the peer driver and the CLI.

pub mod client;
pub mod peer;

pub use client::{ClientError, ControlClient};
pub use peer::PeerBalancer;

//! What every configuration text must get from `handover_core::config::parse`: a valid
//! configuration that the rest of handover can be started from, or errors that each say where the
//! problem is.

use std::sync::Arc;
use std::time::Duration;

use handover_control::{BalancerSlot, Clock, Coordinator};
use handover_core::config::{Config, parse};
use handover_drivers::PeerBalancer;
use handover_drivers::haproxy::HaproxyBalancer;
use handover_drivers::nginx::NginxBalancer;
use handover_proxy::{EmbeddedBalancer, Pools};

/// Parses `src`; panics when an error names neither a field nor a line, names a line the text
/// does not have, or when a configuration that was accepted cannot be started from.
pub fn check(src: &str) {
    match parse(src) {
        Ok(config) => start_without_sockets(&config),
        Err(errors) => {
            let lines = src.bytes().filter(|b| *b == b'\n').count() + 1;
            assert!(!errors.errors().is_empty(), "an error result without errors");
            for error in errors.errors() {
                assert!(!error.message.is_empty(), "an error without a message: {error:?}");
                assert!(
                    error.line.is_some() || !error.path.is_empty(),
                    "an error that names neither a line nor a field: {error:?}"
                );
                if let Some(line) = error.line {
                    assert!((1..=lines).contains(&line), "line {line} of {lines}: {error:?}");
                }
                assert!(error.column.is_none_or(|c| c >= 1), "column 0: {error:?}");
            }
        }
    }
}

/// Builds what `handover run` builds from a configuration before it binds any socket: the pools,
/// the embedded balancer, the drivers of other balancers and the coordinator over all of them.
fn start_without_sockets(config: &Config) {
    let pools = Pools::new(config);
    let mut slots = Vec::new();
    if !config.pools.is_empty() {
        slots.push(BalancerSlot {
            balancer: Arc::new(EmbeddedBalancer::new("embedded", pools)),
            timeout: Duration::from_secs(5),
            is_peer: false,
        });
    }
    for haproxy in &config.haproxy {
        let driver = HaproxyBalancer::new(haproxy.clone());
        slots.push(BalancerSlot {
            timeout: driver.call_timeout(),
            balancer: driver,
            is_peer: false,
        });
    }
    for nginx in &config.nginx {
        let driver = NginxBalancer::new(nginx.clone());
        slots.push(BalancerSlot {
            timeout: driver.call_timeout(),
            balancer: driver,
            is_peer: false,
        });
    }
    for peer in &config.peers {
        slots.push(BalancerSlot {
            balancer: Arc::new(PeerBalancer::new(peer)),
            timeout: PeerBalancer::timeout(peer),
            is_peer: true,
        });
    }
    Coordinator::new(config, slots, Clock::new());
}

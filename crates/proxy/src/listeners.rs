//! Binding every configured listener before any starts, so a port in use stops `handover run`
//! with an error naming the listener instead of half-starting it.
//!
//! Each listener gets one socket per data-plane worker. With more than one worker the sockets
//! share the port through `SO_REUSEPORT`, so the kernel spreads new connections over the workers
//! and no worker wakes for a connection another one takes. Before that, a plain bind probes the
//! port: `SO_REUSEPORT` alone would let a second handover share a port it should be refused.

use std::io;
use std::net::{SocketAddr, TcpListener};

use handover_core::config::{Config, ListenerConfig};
use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog.
const BACKLOG: i32 = 4096;

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listeners[{index}] ({name:?}): cannot listen on {address}: {source}")]
pub struct BindError {
    /// Index in the configuration.
    pub index: usize,
    /// Listener name.
    pub name: String,
    /// Address.
    pub address: SocketAddr,
    /// Cause.
    #[source]
    pub source: io::Error,
}

/// One configured listener, bound: a socket for each worker, all on the same address.
#[derive(Debug)]
pub struct BoundListener {
    /// Its configuration.
    pub config: ListenerConfig,
    /// The actual address (the port is known even when the configuration said 0).
    pub address: SocketAddr,
    /// One non-blocking listening socket per worker.
    pub sockets: Vec<TcpListener>,
}

/// Every listener, bound and not yet serving.
#[derive(Debug)]
pub struct Listeners {
    /// In configuration order.
    pub bound: Vec<BoundListener>,
    /// Sockets per listener: the data plane's worker count.
    pub workers: usize,
}

/// Binds one listener (configuration index `index`) with `workers` sockets.
pub fn bind_listener(
    index: usize,
    listener: &ListenerConfig,
    workers: usize,
) -> Result<BoundListener, BindError> {
    let (address, sockets) = bind_shared(listener.bind, workers.max(1)).map_err(|source| BindError {
        index,
        name: listener.name.clone(),
        address: listener.bind,
        source,
    })?;
    Ok(BoundListener {
        config: listener.clone(),
        address,
        sockets,
    })
}

/// Binds one non-blocking TCP listener with `SO_REUSEADDR` and a deep backlog (the control API's).
pub fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    bind_socket(address, false)
}

/// A listening socket; `shared` adds `SO_REUSEPORT`.
fn bind_socket(address: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// `count` sockets on one address. A fixed port is probed first with a plain bind, so a port
/// another process holds is an error even if that process also set `SO_REUSEPORT`; port 0 takes
/// the port the first socket got.
fn bind_shared(address: SocketAddr, count: usize) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    if count <= 1 {
        let socket = bind_socket(address, false)?;
        return Ok((socket.local_addr()?, vec![socket]));
    }
    if address.port() != 0 {
        drop(bind_socket(address, false)?);
    }
    let first = bind_socket(address, true)?;
    let actual = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_socket(actual, true)?);
    }
    Ok((actual, sockets))
}

impl Listeners {
    /// Binds every listener of the configuration, `workers` sockets each. Nothing is left bound
    /// when one fails.
    pub fn bind(config: &Config, workers: usize) -> Result<Self, BindError> {
        let mut bound = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            bound.push(bind_listener(index, listener, workers)?);
        }
        Ok(Self {
            bound,
            workers: workers.max(1),
        })
    }

    /// The actual address of each listener (useful with port 0).
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .map(|listener| (listener.config.name.clone(), listener.address))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_port_even_when_the_configuration_says_zero() {
        let (address, sockets) = bind_shared("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(address.port(), 0);
        assert_eq!(sockets.len(), 3);
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap(), address);
        }
    }

    #[test]
    fn a_port_held_elsewhere_is_refused_even_with_reuseport() {
        let (address, _held) = bind_shared("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let error = bind_shared(address, 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}

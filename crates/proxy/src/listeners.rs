//! Binding every configured listener before any starts, so a port in use stops `handover run`
//! with an error naming the listener instead of half-starting it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use handover_core::config::{Config, ListenerConfig};
use handover_core::model::ListenerKind;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, HttpRoute};
use crate::pools::Pools;
use crate::tcp::{self, TcpRoute};

/// Listen backlog.
const BACKLOG: u32 = 4096;

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

/// Every listener, bound and not yet serving.
#[derive(Debug)]
pub struct Listeners {
    bound: Vec<(ListenerConfig, TcpListener)>,
}

/// Binds a TCP listener with `SO_REUSEADDR` and a deep backlog.
pub fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

impl Listeners {
    /// Binds every listener of the configuration (must run inside a tokio runtime).
    pub fn bind(config: &Config) -> Result<Self, BindError> {
        let mut bound = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let socket = bind_tcp(listener.bind).map_err(|source| BindError {
                index,
                name: listener.name.clone(),
                address: listener.bind,
                source,
            })?;
            bound.push((listener.clone(), socket));
        }
        Ok(Self { bound })
    }

    /// The actual address of each listener (useful with port 0).
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .map(|(config, socket)| (config.name.clone(), socket.local_addr().unwrap_or(config.bind)))
            .collect()
    }

    /// Starts serving; accept loops end when `cancel` fires, connection tasks are tracked by `tasks`.
    pub fn serve(self, pools: &Pools, cancel: &CancellationToken, tasks: &TaskTracker) {
        for (config, socket) in self.bound {
            let pool = pools
                .pool(&config.pool)
                .expect("validated: every listener's pool exists");
            match config.kind {
                ListenerKind::Tcp => {
                    let route = Arc::new(TcpRoute {
                        listener: config.name.clone(),
                        pool,
                        idle_timeout: config.idle_timeout,
                    });
                    tasks.spawn(tcp::serve(socket, route, cancel.clone(), tasks.clone()));
                }
                ListenerKind::Http => {
                    let route = Arc::new(HttpRoute {
                        listener: config.name.clone(),
                        pool,
                        response_timeout: config.response_timeout,
                    });
                    tasks.spawn(http::serve(socket, route, cancel.clone(), tasks.clone()));
                }
            }
        }
    }
}

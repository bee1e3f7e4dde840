//! TLS with rustls (ring only): termination on `http` listeners and TLS to a pool's backends.
//!
//! - [`certificates`]: PEM pairs, chosen per handshake by SNI, reloaded when their files change.
//! - [`TlsServer`]: a listener's acceptor: TLS 1.2 and 1.3 (or 1.3 only), ALPN `h2` (where the
//!   listener speaks HTTP/2) and `http/1.1`, session tickets and a session cache for resumption.
//! - [`upstream`]: the client side, verifying backends against a CA file or, where the pool says
//!   `insecure`, not at all (with a warning).
//!
//! Not here: what is spoken inside the TLS session (`http` and `h2` decide by ALPN).

pub mod certificates;
pub mod upstream;

use std::sync::Arc;

use handover_core::config::{Config, ListenerConfig, TlsVersion};
use handover_core::model::ListenerKind;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use tokio_rustls::TlsAcceptor;

pub use certificates::{CertificateError, CertificateStore};

/// ALPN name of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN name of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// A CA file of a pool.
    #[error("{field}: {path}: {reason}")]
    Ca {
        /// `pools.NAME.tls.ca`.
        field: String,
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the settings.
    #[error("{field}: {source}")]
    Settings {
        /// The configuration path.
        field: String,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider every TLS context uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's TLS: the acceptor and the certificates behind it.
#[derive(Clone)]
pub struct TlsServer {
    /// Performs handshakes.
    pub acceptor: TlsAcceptor,
    /// The certificates (reloaded from disk by their watcher).
    pub certificates: Arc<CertificateStore>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads the certificates of listener `index` and builds its acceptor; `None` for a listener
    /// without TLS. Starts nothing: see [`TlsServer::watch`].
    pub fn for_listener(index: usize, listener: &ListenerConfig) -> Result<Option<Self>, TlsError> {
        let Some(tls) = &listener.tls else { return Ok(None) };
        let field = format!("listeners[{index}]");
        let provider = provider();
        let certificates = CertificateStore::load(&tls.certificates, &field, &provider)?;
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let settings = |source| TlsError::Settings {
            field: format!("{field}.tls"),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(settings)?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        config.alpn_protocols = if listener.http2 {
            vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
        } else {
            vec![ALPN_HTTP1.to_vec()]
        };
        // Resumption: TLS 1.3 tickets and a TLS 1.2 session cache, as HAProxy and nginx offer.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(settings)?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(20_000);
        config.max_early_data_size = 0;
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificates,
        }))
    }

    /// Starts watching the certificate files of listener `listener` for changes.
    pub fn watch(&self, listener: &ListenerConfig) {
        if let Some(tls) = &listener.tls {
            self.certificates.watch(tls.reload, provider());
        }
    }
}

/// Loads every TLS file of a configuration (listeners' certificates, pools' CA files), so that
/// `handover check` and the start of `handover run` report a bad file with its field.
pub fn check(config: &Config) -> Result<(), TlsError> {
    for (index, listener) in config.listeners.iter().enumerate() {
        if listener.kind == ListenerKind::Http {
            TlsServer::for_listener(index, listener)?;
        }
    }
    for pool in &config.pools {
        upstream::client_config(pool)?;
    }
    Ok(())
}

//! TLS to a pool's backends: verified against the pool's CA file, or — where the pool says
//! `insecure = true` — not verified at all, which is logged as a warning when the pool starts.
//! The name sent as SNI and checked is the pool's `server_name`, or the backend's IP address.

use std::net::SocketAddr;
use std::sync::Arc;

use handover_core::config::{PoolConfig, UpstreamProtocol};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{ALPN_H2, ALPN_HTTP1, TlsError, provider};

/// A pool's TLS client: the connector and the name it verifies.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Makes the connections.
    pub connector: TlsConnector,
    /// The configured name, if any (else each backend's IP address).
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The name a backend at `address` is verified as.
    pub fn name_for(&self, address: SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()))
    }

    /// Opens TLS over a connected socket.
    pub async fn connect(
        &self,
        address: SocketAddr,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name_for(address), stream).await
    }
}

/// The TLS client of a pool, `None` when it speaks cleartext to its backends.
pub fn client_config(pool: &PoolConfig) -> Result<Option<UpstreamTls>, TlsError> {
    let Some(tls) = &pool.tls else { return Ok(None) };
    let field = format!("pools.{}.tls", pool.name);
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Settings {
            field: field.clone(),
            source,
        })?;
    let mut config = match &tls.ca {
        Some(path) => {
            let ca_error = |reason: String| TlsError::Ca {
                field: format!("{field}.ca"),
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no PEM certificate in the file".into()));
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = match pool.protocol {
        UpstreamProtocol::H2 => vec![ALPN_H2.to_vec()],
        UpstreamProtocol::Http1 => vec![ALPN_HTTP1.to_vec()],
    };
    let server_name = match &tls.server_name {
        Some(name) => Some(
            ServerName::try_from(name.clone()).map_err(|e| TlsError::Settings {
                field: format!("{field}.server_name"),
                source: rustls::Error::General(e.to_string()),
            })?,
        ),
        None => None,
    };
    Ok(Some(UpstreamTls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    }))
}

/// Accepts any certificate (`insecure = true`): the connection is encrypted, but the backend is
/// not authenticated. Signatures are still checked, so the session is at least with the holder
/// of the certificate's key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

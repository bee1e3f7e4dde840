//! Certificates of a TLS listener: PEM pairs read from disk, checked (the key must be the
//! certificate's), chosen per handshake by the client's SNI, and replaced when their files change
//! on disk without a restart. A pair that fails to load keeps the old set serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use handover_core::config::CertificateFiles;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{error, info};

/// Why a certificate pair could not be loaded. `field` is its place in the configuration
/// (`listeners[0].tls.certificates[1]`).
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A file could not be read or holds no PEM of the wanted kind.
    #[error("{field}.{part}: {path}: {reason}")]
    File {
        /// Configuration path of the pair.
        field: String,
        /// `cert` or `key`.
        part: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key is not one rustls can sign with, or is not the certificate's.
    #[error("{field}: {reason}")]
    Pair {
        /// Configuration path of the pair.
        field: String,
        /// What was wrong.
        reason: String,
    },
}

/// Reads one certificate chain and its key.
pub fn load_pair(
    files: &CertificateFiles,
    field: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let file_error = |part: &'static str, path: &Path, reason: String| CertificateError::File {
        field: field.to_string(),
        part,
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error("cert", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("cert", &files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            "cert",
            &files.cert,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        file_error(
            "key",
            &files.key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read: {e}"),
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertificateError::Pair {
            field: field.to_string(),
            reason: format!("the key cannot be used: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| CertificateError::Pair {
        field: field.to_string(),
        reason: format!("the key does not belong to the certificate: {e}"),
    })?;
    Ok(Arc::new(certified))
}

/// Reads every pair of a listener, in configuration order.
pub fn load_all(
    files: &[CertificateFiles],
    listener_field: &str,
    provider: &CryptoProvider,
) -> Result<Vec<Arc<CertifiedKey>>, CertificateError> {
    files
        .iter()
        .enumerate()
        .map(|(i, pair)| load_pair(pair, &format!("{listener_field}.tls.certificates[{i}]"), provider))
        .collect()
}

/// When each file last changed, as far as the file system says (mtime and length).
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &[CertificateFiles]) -> Stamps {
    files
        .iter()
        .flat_map(|pair| [&pair.cert, &pair.key])
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The certificates a listener serves, swapped whole when their files change.
#[derive(Debug)]
pub struct CertificateStore {
    /// The current set, in configuration order; the first is the default.
    current: ArcSwap<Vec<Arc<CertifiedKey>>>,
    /// Where they come from.
    files: Vec<CertificateFiles>,
    /// `listeners[N]`, for errors.
    field: String,
}

impl CertificateStore {
    /// Loads every pair; an error names the pair and the file.
    pub fn load(
        files: &[CertificateFiles],
        listener_field: &str,
        provider: &CryptoProvider,
    ) -> Result<Arc<Self>, CertificateError> {
        let loaded = load_all(files, listener_field, provider)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(loaded),
            files: files.to_vec(),
            field: listener_field.to_string(),
        }))
    }

    /// Loads the files again and swaps the set in; on an error the old set stays.
    pub fn reload(&self, provider: &CryptoProvider) -> Result<(), CertificateError> {
        let loaded = load_all(&self.files, &self.field, provider)?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// The certificate for a handshake: the first whose names cover the client's SNI, else the
    /// first of all.
    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        if let Some(name) = server_name.and_then(|n| ServerName::try_from(n).ok()) {
            let covers = |key: &&Arc<CertifiedKey>| {
                key.end_entity_cert().ok().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            };
            if let Some(found) = current.iter().find(covers) {
                return Some(found.clone());
            }
        }
        current.first().cloned()
    }

    /// Checks the files every `interval` and reloads the set when one changed, on a thread of its
    /// own, for as long as the store is in use (it stops once the listener is gone).
    pub fn watch(self: &Arc<Self>, interval: Duration, provider: Arc<CryptoProvider>) {
        let store = Arc::downgrade(self);
        let mut seen = stamps(&self.files);
        let spawned = std::thread::Builder::new()
            .name("handover-tls-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(store) = store.upgrade() else { return };
                    let now = stamps(&store.files);
                    if now == seen {
                        continue;
                    }
                    // A pair is often written as two files one after the other: wait for the
                    // writes to settle before reading. A set that fails is tried again at the next
                    // change of its files (the second file of a pair written late is one).
                    std::thread::sleep(Duration::from_millis(100));
                    match store.reload(&provider) {
                        Ok(()) => {
                            info!(listener = %store.field, "certificates reloaded from disk");
                            seen = now;
                        }
                        Err(e) => {
                            error!(error = %e, "certificates changed on disk but cannot be loaded; still serving the previous ones");
                            seen = now;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            error!(listener = %self.field, error = %e, "cannot start the certificate reloader");
        }
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

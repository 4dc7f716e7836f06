//! Certificates served from PEM files (a mounted Secret), for the injection webhook and the
//! sidecars' feed. The pair is read again when either file's modification time changes,
//! checked at most every few seconds, so a rotated Secret is served without a restart, and a
//! bad new pair keeps the last good one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file is unreadable or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

const RECHECK: Duration = Duration::from_secs(2);

struct Loaded {
    key: Arc<CertifiedKey>,
    mtimes: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// Serves the certificate in `cert`/`key`, reloading it when the files change.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let err = |path: &Path, reason: String| CertError::File {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(cert, "no CERTIFICATE in it".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| err(key, e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl ReloadingCert {
    /// Reads the pair now; fails if it is not usable.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, CertError> {
        let certified = load(&cert, &key)?;
        let mtimes = (mtime(&cert), mtime(&key));
        Ok(ReloadingCert {
            loaded: Mutex::new(Loaded {
                key: certified,
                mtimes,
                checked: Instant::now(),
            }),
            cert,
            key,
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let mtimes = (mtime(&self.cert), mtime(&self.key));
            if mtimes != loaded.mtimes {
                match load(&self.cert, &self.key) {
                    Ok(k) => {
                        loaded.key = k;
                        loaded.mtimes = mtimes;
                        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
                    }
                    // Mid-rotation the two files may not match yet: keep the last good pair
                    // and try again at the next check.
                    Err(e) => {
                        tracing::warn!(error = %e, cert = %self.cert.display(), "new certificate not usable yet; serving the previous one")
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The TLS side: TLS 1.2 and 1.3 with ring, HTTP/2 or HTTP/1.1, the reloading certificate.
pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

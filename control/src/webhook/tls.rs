//! The webhook's HTTPS server. The certificate and key are PEM files (a mounted Secret); they
//! are read again when their modification time changes, checked at most every few seconds, so
//! a rotated Secret is served without a restart and a bad new pair keeps the last good one.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use serde_json::Value;

use super::{Asking, Decision, ReviewError, Subject, review_value, subject};
use crate::inject::InjectConfig;

/// Why the certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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
/// AdmissionReviews of big pods are tens of KiB; the API server caps requests at 3 MiB.
const MAX_BODY: usize = 4 << 20;

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

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |path: &Path, reason: String| TlsError::File {
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
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
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
                        tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    }
                    // Mid-rotation the two files may not match yet: keep the last good pair
                    // and try again at the next check.
                    Err(e) => {
                        tracing::warn!(error = %e, "new webhook certificate not usable yet; serving the previous one")
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

/// Webhook counters: decisions by outcome.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// AdmissionReviews answered, by decision.
    pub reviews: Family<DecisionLabel, Counter>,
}

/// A decision, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DecisionLabel {
    /// `injected`, `already_injected`, `ignored`, `skipped`, `refused`,
    /// `ephemeral_reviewed`, `malformed`.
    pub decision: String,
}

impl WebhookMetrics {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "webhook_reviews",
            "Admission reviews answered by the injection webhook, by decision",
            self.reviews.clone(),
        );
    }

    fn count(&self, decision: &str) {
        self.reviews
            .get_or_create(&DecisionLabel {
                decision: decision.into(),
            })
            .inc();
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

/// Serves the webhook on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    cfg: Arc<InjectConfig>,
    metrics: Arc<WebhookMetrics>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let cfg = cfg.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(handle(req, &cfg, &metrics).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    cfg: &InjectConfig,
    metrics: &WebhookMetrics,
) -> Response<Full<Bytes>> {
    let asking = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/live" | "/ready") => return text(StatusCode::OK, "ok\n".into()),
        ("POST", path) => Asking::of_path(path),
        _ => None,
    };
    // The body is read before any answer, a 404 too: an HTTP/2 stream answered while its
    // client still sends is reset, and the client sees a framing error instead of the 404.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            metrics.count("malformed");
            return text(StatusCode::BAD_REQUEST, format!("unreadable body: {e}\n"));
        }
    };
    let Some(asking) = asking else {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            metrics.count("malformed");
            return text(
                StatusCode::BAD_REQUEST,
                format!("{}\n", ReviewError::Malformed(e.to_string())),
            );
        }
    };
    match review_value(&parsed, cfg, asking) {
        Ok((response, decision)) => {
            let uid = &response["response"]["uid"];
            // The uid alone finds nothing in `kubectl get`: name the pod, the operation and who.
            let Subject {
                pod,
                operation,
                user,
            } = subject(&parsed);
            match &decision {
                Decision::Injected => {
                    metrics.count("injected");
                    tracing::info!(%pod, %uid, "sidecar injected")
                }
                Decision::AlreadyInjected => metrics.count("already_injected"),
                Decision::Ignored => metrics.count("ignored"),
                Decision::Skipped(why) => {
                    metrics.count("skipped");
                    tracing::warn!(%pod, %operation, %user, %uid, why, "pod asks for the sidecar but is not injected")
                }
                Decision::Refused(why) => {
                    metrics.count("refused");
                    tracing::warn!(%pod, %operation, %user, %uid, why, "pod refused")
                }
                Decision::EphemeralReviewed => {
                    metrics.count("ephemeral_reviewed");
                    tracing::info!(%pod, %user, %uid, "ephemeral containers of an injected pod lose NET_RAW")
                }
            }
            let mut r = Response::new(Full::new(Bytes::from(response.to_string())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            metrics.count("malformed");
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}

//! The injection webhook's HTTPS server: `POST /inject` (and the other review paths) answered
//! with [`super::review_value`], `GET /live` and `/ready`, each decision counted.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::net::TcpListener;

use super::{Asking, Decision, ReviewError, Subject, review_value, subject};
use crate::inject::InjectConfig;

/// AdmissionReviews of big pods are tens of KiB; the API server caps requests at 3 MiB.
const MAX_BODY: usize = 4 << 20;

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

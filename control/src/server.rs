//! The feed server: each sidecar holds one long HTTP request open and reads its pod's feed as
//! JSON lines ([`podwall_policy::feed`]).
//!
//! Why HTTP/2 streaming with hyper rather than gRPC: hyper is already the proxy's HTTP stack,
//! the messages are the Kubernetes objects themselves (JSON either way), and a feed is a plain
//! long GET that `curl` can read — no code generation, no second HTTP stack, a leaner build.
//! Both HTTP/1.1 (chunked) and HTTP/2 are served; the sidecar uses HTTP/2.
//!
//! `GET /v1/feed?namespace=NS&pod=NAME[&epoch=E&version=V]` with `Authorization: Bearer TOKEN`:
//! a snapshot (or, with the epoch and version the sidecar holds, only the deltas it missed), then
//! a delta per change and a heartbeat every few seconds. `403` when the token is not that pod's.
//! `/live`, `/ready` (a first state is loaded) and `/metrics` for operators.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwall_policy::feed::{FeedMessage, ObjectKey};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::{Authenticator, PodRef};
use crate::metrics::{KindLabel, ServerMetrics};
use crate::store::Store;
use crate::views::{ViewIndex, Views};

/// How often an idle feed says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What the server needs.
pub struct Server {
    /// The objects.
    pub store: Arc<Store>,
    /// Per-pod views of them.
    pub views: Arc<Views>,
    /// Who may read which feed.
    pub auth: Box<dyn Authenticator>,
    /// Counters.
    pub metrics: Arc<ServerMetrics>,
}

/// A response body: a whole answer or a feed.
enum ControlBody {
    Full(Option<Bytes>),
    Feed(mpsc::Receiver<Bytes>),
}

impl Body for ControlBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ControlBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ControlBody::Feed(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ControlBody> {
    typed(status, "text/plain; charset=utf-8", body)
}

/// A response with its Content-Type (Prometheus 3 refuses a scrape without one).
fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<String>,
) -> Response<ControlBody> {
    let mut r = Response::new(ControlBody::Full(Some(Bytes::from(body.into()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// What prometheus-client's text encoder writes (OpenMetrics, ending in `# EOF`).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn line(msg: &FeedMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl Server {
    /// Serves on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        self.serve_on(listener, FeedTransport::Plain).await
    }

    /// Serves on `listener`, over TLS when `tls` is given (sidecars then verify the control
    /// plane before trusting a policy from it, and their tokens are not sent in the clear).
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let transport = match tls {
            Some(acceptor) => FeedTransport::Tls(acceptor),
            None => FeedTransport::Plain,
        };
        self.serve_on(listener, transport).await
    }

    /// Serves on `listener` as `transport` says, until the process ends.
    pub async fn serve_on(self: Arc<Self>, listener: TcpListener, transport: FeedTransport) {
        let transport = Arc::new(transport);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            let transport = transport.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let plain = |tokens: Tokens| {
                    let server = server.clone();
                    hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req, peer, tokens).await) }
                    })
                };
                let served = match &*transport {
                    FeedTransport::Plain => {
                        builder
                            .serve_connection(TokioIo::new(stream), plain(Tokens::Accepted))
                            .await
                    }
                    FeedTransport::PlainWithoutTokens => {
                        builder
                            .serve_connection(TokioIo::new(stream), plain(Tokens::RefusedInClear))
                            .await
                    }
                    FeedTransport::Tls(acceptor) => {
                        // A TLS connection opens with a handshake record (0x16); anything else
                        // is plaintext, answered with a refusal so that a sidecar without the
                        // CA is told, and its token, if it sent one, is reported.
                        let mut first = [0u8; 1];
                        let is_tls = matches!(
                            tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await,
                            Ok(Ok(1)) if first[0] == 0x16
                        );
                        if !is_tls {
                            builder
                                .serve_connection(
                                    TokioIo::new(stream),
                                    plain(Tokens::NotServedInClear),
                                )
                                .await
                        } else {
                            match tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => {
                                    builder
                                        .serve_connection(
                                            TokioIo::new(tls),
                                            plain(Tokens::Accepted),
                                        )
                                        .await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, %peer, "connection ended");
                }
            });
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tokens: Tokens,
    ) -> Response<ControlBody> {
        if tokens != Tokens::Accepted
            && let Some(refusal) = self.refuse_in_clear(&req, peer, tokens)
        {
            return refusal;
        }
        let (version, objects) = self.store.current();
        self.metrics.version.set(version as i64);
        self.metrics.objects.set(objects.len() as i64);
        if req.uri().path() == "/metrics" {
            let mut by_kind: std::collections::BTreeMap<&str, i64> = Default::default();
            for k in objects.keys() {
                *by_kind.entry(k.kind.as_str()).or_default() += 1;
            }
            for kind in crate::source::dir_objects::SERVED_KINDS {
                self.metrics
                    .objects_by_kind
                    .get_or_create(&KindLabel { kind: kind.into() })
                    .set(by_kind.get(kind).copied().unwrap_or(0));
            }
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "ok\n"),
            "/ready" if self.store.loaded() => text(StatusCode::OK, "ready\n"),
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "no state loaded yet\n"),
            "/metrics" => typed(StatusCode::OK, OPENMETRICS, self.metrics.encode()),
            "/v1/feed" => self.feed(req, peer).await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn feed(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ControlBody> {
        if !self.store.loaded() {
            // An empty snapshot would make the sidecar refuse everything for nothing: come back.
            return text(StatusCode::SERVICE_UNAVAILABLE, "no state loaded yet\n");
        }
        let query = req.uri().query().unwrap_or_default();
        let (Some(namespace), Some(name)) =
            (query_param(query, "namespace"), query_param(query, "pod"))
        else {
            return text(
                StatusCode::BAD_REQUEST,
                "namespace and pod query parameters are required\n",
            );
        };
        let pod = PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Err(e) = self.auth.check(token, &pod).await {
            self.metrics.refused.inc();
            tracing::warn!(%pod, %peer, error = %e, "feed refused");
            // A check that could not be made is not a refusal: the sidecar retries.
            let status = if matches!(e, crate::auth::AuthError::Unavailable(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            };
            return text(status, format!("feed of {pod} refused: {e}\n"));
        }
        let held = match (
            query_param(query, "epoch"),
            query_param(query, "version").and_then(|v| v.parse::<u64>().ok()),
        ) {
            (Some(e), Some(v)) => Some((e.to_string(), v)),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(64);
        let views = self.views.clone();
        let metrics = self.metrics.clone();
        tracing::info!(%pod, %peer, resume = ?held, "feed opened");
        tokio::spawn(async move {
            metrics.feeds_open.inc();
            stream(views, pod.clone(), tx, held, metrics.clone()).await;
            metrics.feeds_open.dec();
            tracing::info!(%pod, %peer, "feed closed");
        });
        let mut r = Response::new(ControlBody::Feed(rx));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        r
    }
}

/// How the feed port is served.
pub enum FeedTransport {
    /// Plain HTTP/2, tokens accepted (local use: the sandbox, a control plane without TLS).
    Plain,
    /// Plain HTTP/2, but a request that carries a token is refused: the control plane serves
    /// TLS elsewhere (the webhook), so a sidecar sending one here was meant to use TLS.
    PlainWithoutTokens,
    /// TLS. A plaintext request on the port is answered with a refusal (and its token, if it
    /// carried one, reported), never served.
    Tls(tokio_rustls::TlsAcceptor),
}

/// What a connection may do with a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tokens {
    /// Over TLS, or plain where plain is the configured transport.
    Accepted,
    /// Plain, where the control plane serves TLS elsewhere: requests with a token are refused.
    RefusedInClear,
    /// Plain on the TLS port: every request is refused.
    NotServedInClear,
}

impl Server {
    /// The refusal of a plaintext request the transport does not serve, logged and counted
    /// when it carried a token; `None` when the request may go on.
    fn refuse_in_clear(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        tokens: Tokens,
    ) -> Option<Response<ControlBody>> {
        let carries_token = req.headers().contains_key(http::header::AUTHORIZATION);
        let query = req.uri().query().unwrap_or_default();
        let pod = format!(
            "{}/{}",
            query_param(query, "namespace").unwrap_or("?"),
            query_param(query, "pod").unwrap_or("?")
        );
        if carries_token {
            self.metrics.plaintext_tokens.inc();
            tracing::warn!(
                %peer,
                %pod,
                "refused a plaintext feed request that carried a token: the token crossed the network in the clear; give the sidecar the control plane's CA (--control-ca, or controlPlaneCa in the injection config) and let that token expire"
            );
            return Some(text(
                StatusCode::FORBIDDEN,
                "this control plane takes tokens over TLS only: give the sidecar its CA (--control-ca)\n",
            ));
        }
        (tokens == Tokens::NotServedInClear).then(|| {
            text(
                StatusCode::UPGRADE_REQUIRED,
                "this port is served over TLS only (a sidecar needs the control plane's CA: --control-ca)\n",
            )
        })
    }
}

/// What one feed has sent.
struct Sent {
    version: u64,
    keys: Arc<BTreeSet<ObjectKey>>,
}

fn snapshot(epoch: &str, index: &ViewIndex, keys: &BTreeSet<ObjectKey>) -> FeedMessage {
    FeedMessage::Snapshot {
        epoch: epoch.to_string(),
        version: index.version,
        objects: keys
            .iter()
            .filter_map(|k| index.objects.get(k).map(|v| (**v).clone()))
            .collect(),
    }
}

/// The delta from what was sent to the view now, given the objects `changed` in between;
/// `None` when it is empty.
fn delta(
    epoch: &str,
    sent: &Sent,
    index: &ViewIndex,
    keys: &BTreeSet<ObjectKey>,
    changed: &BTreeSet<ObjectKey>,
) -> Option<FeedMessage> {
    let upserts: Vec<Value> = keys
        .iter()
        .filter(|k| !sent.keys.contains(*k) || changed.contains(*k))
        .filter_map(|k| index.objects.get(k).map(|v| (**v).clone()))
        .collect();
    // Left the view, or deleted from the store while in it.
    let deletes: Vec<ObjectKey> = sent
        .keys
        .iter()
        .filter(|k| !keys.contains(*k) || !index.objects.contains_key(*k))
        .cloned()
        .collect();
    if upserts.is_empty() && deletes.is_empty() {
        return None;
    }
    Some(FeedMessage::Delta {
        epoch: epoch.to_string(),
        from: Some(sent.version),
        version: index.version,
        upserts,
        deletes,
    })
}

/// A message, with the view it brings the sidecar to.
type Message = (FeedMessage, Arc<BTreeSet<ObjectKey>>);

/// What to send a sidecar that holds `sent`: `Ok(None)` when its view is unchanged (most
/// changes are other pods' business and are skipped without working the view out), `Err` with
/// a snapshot when the changes in between are no longer kept.
fn catch_up(
    store: &Store,
    epoch: &str,
    pod: &PodRef,
    sent: &Sent,
    index: &ViewIndex,
) -> Result<Option<Message>, Message> {
    let Some(changed) = store.changed_between(epoch, sent.version, index.version) else {
        let keys = Arc::new(index.keys_for(pod));
        return Err((snapshot(epoch, index, &keys), keys));
    };
    if !index.may_change(pod, &sent.keys, &changed) {
        return Ok(None);
    }
    let keys = Arc::new(index.keys_for(pod));
    Ok(delta(epoch, sent, index, &keys, &changed).map(|d| (d, keys)))
}

/// Writes one pod's feed until the sidecar goes away.
async fn stream(
    views: Arc<Views>,
    pod: PodRef,
    tx: mpsc::Sender<Bytes>,
    held: Option<(String, u64)>,
    metrics: Arc<ServerMetrics>,
) {
    let store = views.store().clone();
    let mut changes = store.subscribe();
    changes.mark_unchanged();
    let epoch = store.epoch().to_string();
    let Some(index) = views.index().await else {
        return;
    };
    // First: what the sidecar missed since the view it held, or a snapshot.
    let resumed = held.filter(|(e, _)| *e == epoch).and_then(|(_, v)| {
        views.held(&pod, v).map(|k| Sent {
            version: v,
            keys: k,
        })
    });
    let caught_up = resumed
        .as_ref()
        .map(|s| catch_up(&store, &epoch, &pod, s, &index));
    // With nothing to send, the sidecar stays at the version it holds (the next heartbeat
    // moves it on).
    let (first, keys, version) = match (caught_up, resumed) {
        (Some(Ok(None)), Some(s)) => (None, s.keys, s.version),
        (Some(Ok(Some((d, keys)))), _) => {
            metrics.deltas.inc();
            (Some(d), keys, index.version)
        }
        (Some(Err((snap, keys))), _) => {
            metrics.snapshots.inc();
            (Some(snap), keys, index.version)
        }
        _ => {
            let keys = Arc::new(index.keys_for(&pod));
            metrics.snapshots.inc();
            (Some(snapshot(&epoch, &index, &keys)), keys, index.version)
        }
    };
    if let Some(msg) = first {
        let bytes = line(&msg);
        metrics.bytes.inc_by(bytes.len() as u64);
        if tx.send(bytes).await.is_err() {
            return;
        }
    }
    let mut sent = Sent { version, keys };
    let listed = views.feed_opened(&pod, version);
    // The newest version whose view was checked to be what the sidecar holds: heartbeats carry
    // it, so a sidecar's version keeps up even while its view does not change.
    let mut checked = index.version;
    let closed = loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break false;
                }
                let Some(index) = views.index().await else { continue };
                if index.version <= checked {
                    continue;
                }
                let (msg, keys) = match catch_up(&store, &epoch, &pod, &sent, &index) {
                    Ok(Some((d, keys))) => {
                        metrics.deltas.inc();
                        (d, keys)
                    }
                    Ok(None) => {
                        checked = index.version;
                        continue;
                    }
                    Err((snap, keys)) => {
                        // Fell too far behind: start over.
                        metrics.snapshots.inc();
                        (snap, keys)
                    }
                };
                let bytes = line(&msg);
                metrics.bytes.inc_by(bytes.len() as u64);
                if tx.send(bytes).await.is_err() {
                    // Not received: the sidecar holds what was sent before.
                    break true;
                }
                if let Some(at) = store.stored_at(index.version) {
                    metrics.delta_delay.0.observe(at.elapsed().as_secs_f64());
                }
                sent = Sent { version: index.version, keys };
                checked = index.version;
                listed.at(checked);
            }
            _ = tx.closed() => break true,
            _ = tokio::time::sleep(HEARTBEAT) => {
                let msg = FeedMessage::Heartbeat { epoch: epoch.clone(), version: checked };
                if tx.send(line(&msg)).await.is_err() {
                    break true;
                }
                sent.version = checked;
                listed.at(checked);
            }
        }
    };
    if closed {
        views.left(pod, sent.version, sent.keys);
    }
}

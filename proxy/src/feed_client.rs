//! `--policy-source control:HOST:PORT`: the pod's feed from the control plane
//! ([`podwall_policy::feed`]) over HTTP/2, read into cluster states with the same loader as
//! every other source.
//!
//! The sidecar presents its token (the projected service-account token, re-read at every
//! connection since the kubelet rotates it) and names its pod. When the stream drops it keeps
//! enforcing the last state, sets `podwall_policy_stream_connected` to 0, and reconnects with
//! backoff, resuming from the epoch and version it holds. A stream silent for three heartbeats
//! is taken for dead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwall_policy::feed::{FeedMessage, ObjectSet, apply};
use podwall_policy::{ClusterState, Loader, Origin};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::pod_policy::Identity;
use crate::policy_follow::PolicySource;

/// How long without a line before the stream is taken for dead: three of the control plane's
/// 5 s heartbeats, and a second.
pub const SILENCE: Duration = Duration::from_secs(16);

/// The control plane as the policy source.
#[derive(Clone)]
pub struct ControlSource {
    /// `host:port` of the control plane.
    pub addr: String,
    /// The pod whose feed to read.
    pub identity: Identity,
    /// The token to present (re-read at every connection).
    pub token_file: Option<PathBuf>,
    /// Verify the control plane over TLS (with the CA it was given); `None`: plain HTTP/2.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// How long without a line (a change or a heartbeat) before the stream is taken for dead
    /// and opened again: [`SILENCE`].
    pub silence: Duration,
    /// What the control plane's name is looked up with (read when the sidecar started).
    pub names: crate::lookup::SystemNames,
}

impl std::fmt::Debug for ControlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSource")
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the control plane's CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// It holds no PEM certificate.
    #[error("the control plane's CA holds no CERTIFICATE")]
    NoCertificate,
    /// A certificate in it does not read, or is refused as a root.
    #[error("the control plane's CA: {0}")]
    Certificate(String),
    /// rustls refuses the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS client trusting only the certificates in `ca_pem` (the control plane's CA), speaking
/// HTTP/2.
pub fn tls_connector(ca_pem: &[u8]) -> Result<tokio_rustls::TlsConnector, CaError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| CaError::Certificate(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        n += 1;
    }
    if n == 0 {
        return Err(CaError::NoCertificate);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type FeedSender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// Why a feed connection failed or ended (logged; the sidecar reconnects).
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not HOST:PORT")]
    Address(String),
    #[error(transparent)]
    Resolve(#[from] crate::lookup::LookupError),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a TLS server name")]
    ServerName(String),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("TLS: {0} (is this the control plane, with the CA given?)")]
    Tls(#[source] std::io::Error),
    #[error("HTTP/2: {0}")]
    Http2(#[source] hyper::Error),
    #[error("the feed request cannot be made: {0}")]
    BadRequest(#[source] http::Error),
    #[error("request: {0}")]
    Request(#[source] hyper::Error),
    #[error("{status}: {text}")]
    Refused {
        status: http::StatusCode,
        text: String,
    },
    #[error("no heartbeat: the stream is dead")]
    Silent,
    #[error("stream: {0}")]
    Stream(#[source] hyper::Error),
    #[error("bad feed line: {0}")]
    BadLine(#[source] serde_json::Error),
    #[error("the feed skipped a version; asking for a snapshot")]
    Gap,
    #[error("loading the feed's objects: {0}")]
    Load(#[source] tokio::task::JoinError),
}

async fn handshake<S>(io: S) -> Result<FeedSender, FeedError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(FeedError::Http2)?;
    tokio::spawn(conn);
    Ok(send)
}

struct Feed {
    held: ObjectSet,
    version: Option<(String, u64)>,
}

impl PolicySource for ControlSource {
    fn run(
        self: Box<Self>,
        publish: watch::Sender<Option<Arc<ClusterState>>>,
        metrics: Arc<Metrics>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut feed = Feed {
                held: ObjectSet::new(),
                version: None,
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                let result = self
                    .follow(&mut feed, &publish, &metrics, &self.names)
                    .await;
                metrics.policy_stream_connected.set(0);
                // Until a first policy arrives nothing is enforced but refusal.
                let meanwhile = if publish.borrow().is_some() {
                    "enforcing the last policy while reconnecting"
                } else {
                    "no policy yet: refusing every connection, flow and DNS query while reconnecting"
                };
                match result {
                    Ok(()) => {
                        tracing::warn!(control = %self.addr, "feed ended; {meanwhile}")
                    }
                    Err(e) => {
                        tracing::warn!(control = %self.addr, error = %e, "feed failed; {meanwhile}")
                    }
                }
                metrics.policy_stream_reconnects.inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    fn describe(&self) -> String {
        if self.tls.is_some() {
            format!("control:{} (TLS)", self.addr)
        } else {
            // Said where the source is named: nothing verifies who serves this policy.
            format!(
                "control:{} (plain HTTP/2: no CA given, the control plane is not verified)",
                self.addr
            )
        }
    }
}

impl ControlSource {
    /// Resolves the control plane's name (from marked sockets, see [`crate::lookup`]) and
    /// connects to the first address that answers, from a marked socket.
    async fn connect(&self, names: &crate::lookup::SystemNames) -> Result<TcpStream, FeedError> {
        let (host, port) = self
            .addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| FeedError::Address(self.addr.clone()))?;
        let addrs = crate::lookup::resolve(host, port, names).await?;
        let mut last = None;
        for addr in addrs {
            let source =
                match tokio::time::timeout(Duration::from_secs(5), crate::exempt::connect(addr))
                    .await
                {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(e)) => e,
                    Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                };
            last = Some(FeedError::Connect { addr, source });
        }
        // `resolve` gives at least one address or an error.
        Err(last.unwrap_or_else(|| FeedError::Address(self.addr.clone())))
    }

    async fn follow(
        &self,
        feed: &mut Feed,
        publish: &watch::Sender<Option<Arc<ClusterState>>>,
        metrics: &Metrics,
        names: &crate::lookup::SystemNames,
    ) -> Result<(), FeedError> {
        let token = match &self.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| FeedError::Token {
                        path: p.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let stream = self.connect(names).await?;
        let (mut send, scheme) = match &self.tls {
            None => (handshake(stream).await?, "http"),
            Some(connector) => {
                let host = self
                    .addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or(&self.addr);
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|_| FeedError::ServerName(host.to_string()))?;
                let tls =
                    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream))
                        .await
                        .map_err(|_| FeedError::TlsTimeout)?
                        .map_err(FeedError::Tls)?;
                (handshake(tls).await?, "https")
            }
        };
        let mut uri = format!(
            "{scheme}://{}/v1/feed?namespace={}&pod={}",
            self.addr, self.identity.namespace, self.identity.name
        );
        if let Some((epoch, version)) = &feed.version {
            uri.push_str(&format!("&epoch={epoch}&version={version}"));
        }
        let mut req = http::Request::get(uri);
        if let Some(t) = &token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(FeedError::BadRequest)?;
        let resp = send.send_request(req).await.map_err(FeedError::Request)?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let text = body
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(FeedError::Refused { status, text });
        }
        metrics.policy_stream_connected.set(1);
        tracing::info!(control = %self.addr, resume = ?feed.version, "feed connected");
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = match tokio::time::timeout(self.silence, body.frame()).await {
                Err(_) => return Err(FeedError::Silent),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(FeedError::Stream(e)),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let msg: FeedMessage = serde_json::from_slice(&line).map_err(FeedError::BadLine)?;
                let changes = !matches!(msg, FeedMessage::Heartbeat { .. });
                if !apply(&mut feed.held, &mut feed.version, msg) {
                    // A gap: ask again from scratch.
                    feed.version = None;
                    return Err(FeedError::Gap);
                }
                if changes {
                    let objects: Vec<_> = feed.held.values().cloned().collect();
                    let origin = Origin {
                        source: format!("control:{}", self.addr),
                        line: 0,
                        item: None,
                    };
                    let state = tokio::task::spawn_blocking(move || {
                        let mut loader = Loader::new();
                        for o in objects {
                            loader.add_object(origin.clone(), o);
                        }
                        loader.finish()
                    })
                    .await
                    .map_err(FeedError::Load)?;
                    let (state, report) = state;
                    for d in &report.diagnostics {
                        tracing::warn!("{d}");
                    }
                    tracing::info!(
                        version = ?feed.version.as_ref().map(|v| v.1),
                        pods = state.pods.len(),
                        policies = state.policies.len(),
                        "feed applied"
                    );
                    if publish.send(Some(Arc::new(state))).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

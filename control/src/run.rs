//! The control plane assembled from a [`Config`]: the source that fills the store, the views
//! and the feed server, the injection webhook, and (with the API server) what operators read
//! back (leader-elected policy status and Events, each replica's status ConfigMap). The binary
//! parses flags into a `Config` and calls [`run`]; everything here is the same whichever
//! source is chosen.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::token_review::TokenReviewer;
use crate::auth::{Authenticator, StaticTokens, TrustClaimed};
use crate::certs::{CertError, ReloadingCert, acceptor};
use crate::inject::InjectConfig;
use crate::metrics::ServerMetrics;
use crate::protection::SidecarEvidence;
use crate::server::{FeedTransport, Server};
use crate::store::Store;
use crate::views::Views;

/// Where the cluster state comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The API server (in-cluster config, else KUBECONFIG / `~/.kube/config`).
    Kube,
    /// YAML files and directories, watched.
    Dir(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("dir:") {
            _ if s == "kube" => Ok(Source::Kube),
            Some(dir) if !dir.is_empty() => Ok(Source::Dir(PathBuf::from(dir))),
            _ => Err(format!("{s:?}: expected kube or dir:PATH")),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kube => f.write_str("kube"),
            Source::Dir(dir) => write!(f, "dir:{}", dir.display()),
        }
    }
}

/// How sidecars prove which pod they serve.
#[derive(Debug)]
pub enum SidecarAuth {
    /// A fixed token per pod.
    Tokens(StaticTokens),
    /// Projected service-account tokens, checked with TokenReview for this audience.
    TokenReview {
        /// The audience the tokens must be minted for.
        audience: String,
    },
    /// No proof: every sidecar gets the pod it names (local use only).
    TrustClaimed,
}

/// A certificate and its key (PEM files, re-read when they change).
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// The injection webhook.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where it listens (HTTPS).
    pub listen: SocketAddr,
    /// Its certificate.
    pub cert: CertFiles,
    /// What it injects. Native sidecars and the reserved-ports sysctl, when not set, are
    /// decided from the API server's version.
    pub inject: InjectConfig,
}

/// This replica, as its status ConfigMap and the leader election name it.
#[derive(Clone, Debug)]
pub struct Replica {
    /// Its pod.
    pub name: String,
    /// Its pod's uid: the ConfigMap is owned by (and deleted with) the pod.
    pub uid: Option<String>,
}

/// What a replica writes back to the API server, and where.
#[derive(Clone, Debug)]
pub struct Reporting {
    /// This replica: its status ConfigMap and its leader identity (none: neither is written).
    pub replica: Option<Replica>,
    /// The control plane's namespace (status ConfigMaps, the leader Lease).
    pub namespace: String,
    /// How often the replica's status ConfigMap is rewritten.
    pub status_interval: Duration,
    /// The Lease the replicas elect their status writer with.
    pub leader_lease: String,
}

/// Everything the control plane is told.
#[derive(Debug)]
pub struct Config {
    /// Where the cluster state comes from.
    pub source: Source,
    /// Where sidecars connect.
    pub listen: SocketAddr,
    /// How sidecars are checked.
    pub auth: SidecarAuth,
    /// The feed's certificate; without one the feed is plain HTTP/2.
    pub feed_cert: Option<CertFiles>,
    /// The webhook, if served.
    pub webhook: Option<WebhookConfig>,
    /// What it reports back, with the API server.
    pub reporting: Reporting,
    /// How often a `Dir` source is checked for changes.
    pub poll_interval: Duration,
}

/// The control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No API-server client could be made.
    #[error("cannot reach the API server: {0}")]
    ApiServer(#[source] kube::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be read.
    #[error("{what} certificate: {source}")]
    Cert {
        /// Whose.
        what: &'static str,
        /// Why.
        #[source]
        source: CertError,
    },
    /// A TLS configuration could not be built.
    #[error("{what} TLS: {source}")]
    Tls {
        /// Whose.
        what: &'static str,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

async fn api_client() -> Result<kube::Client, RunError> {
    kube::Client::try_default()
        .await
        .map_err(RunError::ApiServer)
}

fn tls_acceptor(
    what: &'static str,
    files: &CertFiles,
) -> Result<tokio_rustls::TlsAcceptor, RunError> {
    let cert = ReloadingCert::new(files.cert.clone(), files.key.clone())
        .map_err(|source| RunError::Cert { what, source })?;
    acceptor(Arc::new(cert)).map_err(|source| RunError::Tls { what, source })
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { what, addr, source })
}

/// Runs the control plane until the feed server stops (it does not on its own). Every error
/// is found before anything is served.
pub async fn run(config: Config) -> Result<(), RunError> {
    // Certificates first: a bad file stops the start, before the API server is asked anything.
    let feed_tls = match &config.feed_cert {
        Some(files) => Some(tls_acceptor("feed", files)?),
        None => None,
    };
    let webhook_tls = match &config.webhook {
        Some(webhook) => Some(tls_acceptor("webhook", &webhook.cert)?),
        None => None,
    };
    let store = Arc::new(Store::new());
    let metrics = ServerMetrics::new();
    let mut client = match config.source {
        Source::Kube => Some(api_client().await?),
        Source::Dir(_) => None,
    };
    let auth: Box<dyn Authenticator> = match config.auth {
        SidecarAuth::Tokens(tokens) => Box::new(tokens),
        SidecarAuth::TrustClaimed => Box::new(TrustClaimed),
        SidecarAuth::TokenReview { audience } => {
            let client = match &client {
                Some(c) => c.clone(),
                None => client.insert(api_client().await?).clone(),
            };
            Box::new(TokenReviewer::new(client, store.clone(), &audience))
        }
    };
    let listener = listen("sidecar feeds", config.listen).await?;
    tracing::info!(
        listen = %config.listen,
        source = %config.source,
        auth = %auth.describe(),
        epoch = store.epoch(),
        "control plane serving feeds"
    );
    let evidence = match (&config.source, &client) {
        (Source::Dir(dir), _) => {
            tokio::spawn(crate::source::dir_objects::feed(
                vec![dir.clone()],
                config.poll_interval,
                store.clone(),
            ));
            SidecarEvidence::Annotation
        }
        // (A client was made above for this source.)
        (Source::Kube, client) => {
            if let Some(client) = client {
                tokio::spawn(crate::source::kube::feed(
                    client.clone(),
                    crate::source::kube::watched_kinds(),
                    store.clone(),
                    metrics.clone(),
                ));
            }
            SidecarEvidence::Container
        }
    };
    let views = Arc::new(Views::new(store.clone(), evidence));
    tokio::spawn(crate::unprotected::watch(views.clone(), metrics.clone()));
    if let (Source::Kube, Some(client)) = (&config.source, &client) {
        let webhook_cert = config.webhook.as_ref().map(|w| w.cert.cert.clone());
        report(client, &config.reporting, webhook_cert, &views, &metrics);
    }
    let serves_webhook = config.webhook.is_some();
    if let (Some(webhook), Some(acceptor)) = (config.webhook, webhook_tls) {
        let mut inject = webhook.inject;
        if let Some(client) = &client {
            decide_injection_mode(&mut inject, client).await;
        }
        let listener = listen("webhook", webhook.listen).await?;
        tracing::info!(listen = %webhook.listen, image = inject.image, control_plane = inject.control_plane, "injection webhook serving");
        tokio::spawn(crate::webhook::server::serve(
            listener,
            acceptor,
            Arc::new(inject),
            metrics.webhook.clone(),
        ));
    }
    let server = Arc::new(Server {
        store,
        views,
        auth,
        metrics,
    });
    let transport = match feed_tls {
        Some(acceptor) => {
            tracing::info!("sidecar feeds over TLS");
            FeedTransport::Tls(acceptor)
        }
        // With a certificate for the webhook, a sidecar that sends its token in the clear was
        // meant to use TLS: refuse it (and say so) rather than take the token.
        None if serves_webhook => {
            tracing::warn!(
                "sidecar feeds over plaintext HTTP/2 (no feed certificate): feed requests that carry a token are refused, as the webhook serves TLS; give the feed a certificate"
            );
            FeedTransport::PlainWithoutTokens
        }
        None => FeedTransport::Plain,
    };
    server.serve_on(listener, transport).await;
    Ok(())
}

/// What operators read back: policy status and Events (one writer, elected), and each
/// replica's own report.
fn report(
    client: &kube::Client,
    reporting: &Reporting,
    webhook_cert: Option<PathBuf>,
    views: &Arc<Views>,
    metrics: &Arc<ServerMetrics>,
) {
    let Reporting {
        replica,
        namespace,
        status_interval: every,
        leader_lease,
    } = reporting;
    let every = *every;
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    match replica {
        Some(replica) => {
            tokio::spawn(crate::leader::run(
                client.clone(),
                crate::leader::Election::new(namespace, leader_lease, &replica.name),
                leader_tx,
            ));
            let reporter = crate::replica::Reporter {
                namespace: namespace.to_string(),
                pod: replica.name.clone(),
                pod_uid: replica.uid.clone(),
                views: views.clone(),
                metrics: metrics.clone(),
                kinds: crate::source::kube::watched_kinds()
                    .into_iter()
                    .map(|k| k.resource.kind)
                    .collect(),
                webhook_cert,
                leader: leader_rx.clone(),
                every,
            };
            tokio::spawn(reporter.publish(client.clone()));
        }
        None => tracing::warn!(
            "no replica name (POD_NAME): this replica writes no status for podwall status, and no PodwallPolicy status"
        ),
    }
    tokio::spawn(crate::policy_status::run(
        client.clone(),
        views.clone(),
        metrics.clone(),
        leader_rx,
        crate::policy_status::RECHECK,
    ));
}

/// Native sidecars and the reserved-ports sysctl, where the injection config leaves them
/// open, from the API server's version.
async fn decide_injection_mode(inject: &mut InjectConfig, client: &kube::Client) {
    if inject.native_sidecar.is_some() && inject.reserve_ports.is_some() {
        return;
    }
    match client.apiserver_version().await {
        Ok(info) => {
            let (native, reserve) = inject.fill_from_version(&info.major, &info.minor);
            tracing::info!(
                version = %info.git_version,
                native_sidecar = native,
                reserve_ports = reserve,
                "injection mode from the API server's version"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "API server version unknown; injecting native sidecars and the reserved-ports sysctl")
        }
    }
}

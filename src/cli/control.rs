//! `podwall control run`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use podwall_control::auth::token_review::TokenReviewer;
use podwall_control::auth::{Authenticator, StaticTokens, TrustClaimed};
use podwall_control::metrics::ServerMetrics;
use podwall_control::protection::SidecarEvidence;
use podwall_control::server::FeedTransport;
use podwall_control::server::Server;
use podwall_control::store::Store;
use podwall_control::views::Views;
use podwall_control::webhook::tls::{self, ReloadingCert};

/// The control plane's jobs.
#[derive(Subcommand, Debug)]
pub(crate) enum ControlCommand {
    /// Watch the cluster state and stream each sidecar its pod's policy.
    Run(RunArgs),
}

/// `control run` arguments.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Where the cluster state comes from: `kube` (the API server: in-cluster config, else
    /// KUBECONFIG / ~/.kube/config), or `dir:PATH` (YAML files and directories, watched).
    #[arg(long, value_name = "kube|dir:PATH")]
    source: String,
    /// Where sidecars connect.
    #[arg(long, default_value = "0.0.0.0:15010", value_parser = super::listen_addr)]
    listen: SocketAddr,
    /// Tokens sidecars present: one `TOKEN NAMESPACE/POD` per line.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "insecure_trust_claimed_pod"
    )]
    tokens: Option<PathBuf>,
    /// Check sidecars' projected service-account tokens with TokenReview (the default with
    /// `--source kube`); the token must be bound to the pod asked for.
    #[arg(long, conflicts_with_all = ["tokens", "insecure_trust_claimed_pod"])]
    token_review: bool,
    /// The audience sidecar tokens must be minted for.
    #[arg(long, default_value = podwall_control::auth::token_review::AUDIENCE)]
    token_audience: String,
    /// Give every sidecar the pod it names, without a token (local use only).
    #[arg(long)]
    insecure_trust_claimed_pod: bool,
    /// Serve the sidecar-injection webhook (HTTPS, `POST /inject`) here; needs --webhook-cert
    /// and --webhook-key.
    #[arg(long, requires_all = ["webhook_cert", "webhook_key"], value_parser = super::listen_addr)]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM); re-read when the file changes (rotation).
    #[arg(long, value_name = "FILE")]
    webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, value_name = "FILE")]
    webhook_key: Option<PathBuf>,
    /// Serve the sidecars' feed over TLS with this certificate chain (PEM, re-read when it
    /// changes); needs --feed-key. Without it the feed is plain HTTP/2 (local use).
    #[arg(long, value_name = "FILE", requires = "feed_key")]
    feed_cert: Option<PathBuf>,
    /// The feed's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "feed_cert")]
    feed_key: Option<PathBuf>,
    /// The CA injected sidecars verify the feed with (PEM; e.g. cert-manager's ca.crt).
    #[arg(long, value_name = "FILE")]
    feed_ca: Option<PathBuf>,
    /// What the webhook injects (YAML; see `podwall inject --help`).
    #[arg(long, value_name = "FILE")]
    inject_config: Option<PathBuf>,
    /// This replica's pod (the chart sets it from the downward API): its status ConfigMap
    /// `<pod>-status` and its identity in the leader election. With `--source kube` and no
    /// name, neither is written (podwall status then sees no replica).
    #[arg(long, env = "POD_NAME", value_name = "POD")]
    replica_name: Option<String>,
    /// This replica's pod uid: its status ConfigMap is owned by (and deleted with) the pod.
    #[arg(long, env = "POD_UID", value_name = "UID")]
    replica_uid: Option<String>,
    /// The control plane's namespace, where the replicas' status ConfigMaps and the leader
    /// Lease live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "podwall-system")]
    namespace: String,
    /// How often this replica rewrites its status ConfigMap (`podwall status` calls a report
    /// older than three periods stale).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// The Lease the replicas elect the one that writes PodwallPolicy status and Events with.
    #[arg(long, default_value = "podwall-control-leader")]
    leader_lease: String,
    /// How often a `dir:` source is checked for changes.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
}

pub(crate) fn run(cmd: ControlCommand) -> ExitCode {
    match cmd {
        ControlCommand::Run(args) => run_control(args),
    }
}

/// Where the state comes from.
enum Source {
    Kube,
    Dir(PathBuf),
}

/// How sidecars are checked, before a client exists.
enum AuthChoice {
    Ready(Box<dyn Authenticator>),
    TokenReview,
}

fn run_control(args: RunArgs) -> ExitCode {
    crate::cli::logging::init();
    let source = if args.source == "kube" {
        Source::Kube
    } else if let Some(dir) = args.source.strip_prefix("dir:") {
        Source::Dir(PathBuf::from(dir))
    } else {
        eprintln!(
            "podwall: --source {:?}: expected kube or dir:PATH",
            args.source
        );
        return ExitCode::from(2);
    };
    let auth = match (
        &args.tokens,
        args.insecure_trust_claimed_pod,
        args.token_review,
    ) {
        (Some(path), _, _) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("podwall: --tokens {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            match StaticTokens::parse(&text) {
                Ok(t) => AuthChoice::Ready(Box::new(t)),
                Err(e) => {
                    eprintln!("podwall: --tokens {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
        (None, true, _) => AuthChoice::Ready(Box::new(TrustClaimed)),
        (None, false, true) => AuthChoice::TokenReview,
        (None, false, false) if matches!(source, Source::Kube) => AuthChoice::TokenReview,
        (None, false, false) => {
            eprintln!(
                "podwall: say how sidecars prove their pod: --tokens FILE, --token-review, or --insecure-trust-claimed-pod for local use"
            );
            return ExitCode::from(2);
        }
    };
    let feed_tls = match (&args.feed_cert, &args.feed_key) {
        (Some(cert), Some(key)) => match ReloadingCert::new(cert.clone(), key.clone()) {
            Ok(c) => match tls::acceptor(Arc::new(c)) {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("podwall: feed TLS: {e}");
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("podwall: feed certificate: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let feed_ca = match &args.feed_ca {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                eprintln!("podwall: --feed-ca {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let webhook = match (&args.webhook_listen, &args.webhook_cert, &args.webhook_key) {
        (Some(listen), Some(cert), Some(key)) => {
            let mut cfg = match &args.inject_config {
                Some(p) => match crate::cli::inject::read_config(p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("podwall: --inject-config {e}");
                        return ExitCode::from(2);
                    }
                },
                None => podwall_control::inject::InjectConfig::default(),
            };
            if cfg.control_plane_ca.is_none() {
                cfg.control_plane_ca = feed_ca.clone();
            }
            match ReloadingCert::new(cert.clone(), key.clone()) {
                Ok(c) => Some((*listen, Arc::new(c), Arc::new(cfg))),
                Err(e) => {
                    eprintln!("podwall: webhook certificate: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podwall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async move {
        let store = Arc::new(Store::new());
        let metrics = ServerMetrics::new();
        let needs_client =
            matches!(source, Source::Kube) || matches!(auth, AuthChoice::TokenReview);
        let client = if needs_client {
            Some(
                kube::Client::try_default()
                    .await
                    .map_err(|e| format!("cannot reach the API server: {e}"))?,
            )
        } else {
            None
        };
        let auth: Box<dyn Authenticator> = match (auth, &client) {
            (AuthChoice::Ready(a), _) => a,
            (AuthChoice::TokenReview, Some(c)) => Box::new(TokenReviewer::new(
                c.clone(),
                store.clone(),
                &args.token_audience,
            )),
            (AuthChoice::TokenReview, None) => {
                return Err("--token-review needs the API server".into());
            }
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        tracing::info!(
            listen = %args.listen,
            source = %args.source,
            auth = %auth.describe(),
            epoch = store.epoch(),
            "control plane serving feeds"
        );
        let evidence = match (&source, client.clone()) {
            (Source::Dir(dir), _) => {
                tokio::spawn(podwall_control::source::dir_objects::feed(
                    vec![dir.clone()],
                    args.poll_interval,
                    store.clone(),
                ));
                SidecarEvidence::Annotation
            }
            (Source::Kube, Some(client)) => {
                tokio::spawn(podwall_control::source::kube::feed(
                    client,
                    podwall_control::source::kube::watched_kinds(),
                    store.clone(),
                    metrics.clone(),
                ));
                SidecarEvidence::Container
            }
            (Source::Kube, None) => return Err("no API-server client".into()),
        };
        let views = Arc::new(Views::new(store.clone(), evidence));
        tokio::spawn(podwall_control::unprotected::watch(views.clone(), metrics.clone()));
        if let (Source::Kube, Some(client)) = (&source, &client) {
            // What operators read back: policy status and events (one writer, elected), and
            // each replica's own report.
            let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
            match &args.replica_name {
                Some(name) => {
                    tokio::spawn(podwall_control::leader::run(
                        client.clone(),
                        podwall_control::leader::Election::new(
                            &args.namespace,
                            &args.leader_lease,
                            name,
                        ),
                        leader_tx,
                    ));
                    let reporter = podwall_control::replica::Reporter {
                        namespace: args.namespace.clone(),
                        pod: name.clone(),
                        pod_uid: args.replica_uid.clone(),
                        views: views.clone(),
                        metrics: metrics.clone(),
                        kinds: podwall_control::source::kube::watched_kinds()
                            .into_iter()
                            .map(|k| k.resource.kind)
                            .collect(),
                        webhook_cert: args.webhook_cert.clone(),
                        leader: leader_rx.clone(),
                        every: args.status_interval,
                    };
                    tokio::spawn(reporter.publish(client.clone()));
                }
                None => tracing::warn!(
                    "no --replica-name (POD_NAME): this replica writes no status for podwall status, and no PodwallPolicy status"
                ),
            }
            tokio::spawn(podwall_control::policy_status::run(
                client.clone(),
                views.clone(),
                metrics.clone(),
                leader_rx,
                podwall_control::policy_status::RECHECK,
            ));
        }
        let webhook_tls = webhook.is_some();
        if let Some((listen, cert, mut cfg)) = webhook {
            if (cfg.native_sidecar.is_none() || cfg.reserve_ports.is_none())
                && let Some(client) = &client
            {
                match client.apiserver_version().await {
                    Ok(info) => {
                        let (native, reserve) =
                            Arc::make_mut(&mut cfg).fill_from_version(&info.major, &info.minor);
                        tracing::info!(
                            version = %info.git_version,
                            native_sidecar = native,
                            reserve_ports = reserve,
                            "injection mode from the API server's version"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "API server version unknown; injecting native sidecars and the reserved-ports sysctl"),
                }
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen} (webhook): {e}"))?;
            let acceptor = tls::acceptor(cert).map_err(|e| format!("webhook TLS: {e}"))?;
            tracing::info!(%listen, image = cfg.image, control_plane = cfg.control_plane, "injection webhook serving");
            tokio::spawn(tls::serve(listener, acceptor, cfg, metrics.webhook.clone()));
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
            // With a certificate for the webhook, a sidecar that sends its token in the clear
            // was meant to use TLS: refuse it (and say so) rather than take the token.
            None if webhook_tls => {
                tracing::warn!("sidecar feeds over plaintext HTTP/2 (no --feed-cert): feed requests that carry a token are refused, as the webhook serves TLS; give the feed a certificate");
                FeedTransport::PlainWithoutTokens
            }
            None => FeedTransport::Plain,
        };
        tokio::select! {
            _ = server.serve_on(listener, transport) => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podwall: {e}");
            ExitCode::FAILURE
        }
    }
}

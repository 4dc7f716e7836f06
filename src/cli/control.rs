//! `podwall control run`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use podwall_control::auth::StaticTokens;
use podwall_control::run::{
    CertFiles, Config, Replica, Reporting, RunError, SidecarAuth, Source, WebhookConfig,
};

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

/// A flag's value that stops the start, named by its flag.
struct Refused(String);

/// The control plane's configuration from the flags (files named by flags are read here, so
/// an error names the flag).
fn config(args: RunArgs) -> Result<Config, Refused> {
    let source: Source = args
        .source
        .parse()
        .map_err(|e| Refused(format!("--source {e}")))?;
    let auth = match (
        &args.tokens,
        args.insecure_trust_claimed_pod,
        args.token_review,
    ) {
        (Some(path), _, _) => {
            let tokens = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| StaticTokens::parse(&text).map_err(|e| e.to_string()))
                .map_err(|e| Refused(format!("--tokens {}: {e}", path.display())))?;
            SidecarAuth::Tokens(tokens)
        }
        (None, true, _) => SidecarAuth::TrustClaimed,
        (None, false, true) => SidecarAuth::TokenReview {
            audience: args.token_audience.clone(),
        },
        (None, false, false) if source == Source::Kube => SidecarAuth::TokenReview {
            audience: args.token_audience.clone(),
        },
        (None, false, false) => {
            return Err(Refused(
                "say how sidecars prove their pod: --tokens FILE, --token-review, or --insecure-trust-claimed-pod for local use".into(),
            ));
        }
    };
    let feed_ca = match &args.feed_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Refused(format!("--feed-ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let webhook = match (args.webhook_listen, args.webhook_cert, args.webhook_key) {
        (Some(listen), Some(cert), Some(key)) => {
            let mut inject = match &args.inject_config {
                Some(p) => crate::cli::inject::read_config(p)
                    .map_err(|e| Refused(format!("--inject-config {e}")))?,
                None => podwall_control::inject::InjectConfig::default(),
            };
            if inject.control_plane_ca.is_none() {
                inject.control_plane_ca = feed_ca;
            }
            Some(WebhookConfig {
                listen,
                cert: CertFiles { cert, key },
                inject,
            })
        }
        _ => None,
    };
    let feed_cert = match (args.feed_cert, args.feed_key) {
        (Some(cert), Some(key)) => Some(CertFiles { cert, key }),
        _ => None,
    };
    Ok(Config {
        source,
        listen: args.listen,
        auth,
        feed_cert,
        webhook,
        reporting: Reporting {
            replica: args.replica_name.map(|name| Replica {
                name,
                uid: args.replica_uid,
            }),
            namespace: args.namespace,
            status_interval: args.status_interval,
            leader_lease: args.leader_lease,
        },
        poll_interval: args.poll_interval,
    })
}

fn run_control(args: RunArgs) -> ExitCode {
    crate::cli::logging::init();
    let config = match config(args) {
        Ok(c) => c,
        Err(Refused(why)) => {
            eprintln!("podwall: {why}");
            return ExitCode::from(2);
        }
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
    let result = runtime.block_on(async move {
        tokio::select! {
            result = podwall_control::run::run(config) => result,
            _ = crate::cli::shutdown_signal() => {
                tracing::info!("stopping");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Bad certificates are the operator's to fix, like bad flags.
        Err(e @ (RunError::Cert { .. } | RunError::Tls { .. })) => {
            eprintln!("podwall: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("podwall: {e}");
            ExitCode::FAILURE
        }
    }
}

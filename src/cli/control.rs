//! `podwall control run`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use podwall_control::auth::{Authenticator, StaticTokens, TrustClaimed};
use podwall_control::server::{Server, ServerMetrics};
use podwall_control::store::Store;

/// The control plane's jobs.
#[derive(Subcommand, Debug)]
pub(crate) enum ControlCommand {
    /// Watch the cluster state and stream each sidecar its pod's policy.
    Run(RunArgs),
}

/// `control run` arguments.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Where the cluster state comes from: `dir:PATH` (YAML files and directories, watched).
    #[arg(long, value_name = "dir:PATH")]
    source: String,
    /// Where sidecars connect.
    #[arg(long, default_value = "0.0.0.0:15010")]
    listen: SocketAddr,
    /// Tokens sidecars present: one `TOKEN NAMESPACE/POD` per line.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "insecure_trust_claimed_pod"
    )]
    tokens: Option<PathBuf>,
    /// Give every sidecar the pod it names, without a token (local use only).
    #[arg(long)]
    insecure_trust_claimed_pod: bool,
    /// How often a `dir:` source is checked for changes.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
}

pub(crate) fn run(cmd: ControlCommand) -> ExitCode {
    match cmd {
        ControlCommand::Run(args) => run_control(args),
    }
}

fn run_control(args: RunArgs) -> ExitCode {
    crate::cli::logging::init();
    let Some(dir) = args.source.strip_prefix("dir:").map(PathBuf::from) else {
        eprintln!(
            "podwall: --source {:?}: expected dir:PATH (the API-server source is not built yet)",
            args.source
        );
        return ExitCode::from(2);
    };
    let auth: Box<dyn Authenticator> = match (&args.tokens, args.insecure_trust_claimed_pod) {
        (Some(path), _) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("podwall: --tokens {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            match StaticTokens::parse(&text) {
                Ok(t) => Box::new(t),
                Err(e) => {
                    eprintln!("podwall: --tokens {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
        (None, true) => Box::new(TrustClaimed),
        (None, false) => {
            eprintln!(
                "podwall: say how sidecars prove their pod: --tokens FILE, or --insecure-trust-claimed-pod for local use"
            );
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
    let result: Result<(), String> = runtime.block_on(async move {
        let store = Arc::new(Store::new());
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
        tokio::spawn(podwall_control::source::dir_objects::feed(
            vec![dir],
            args.poll_interval,
            store.clone(),
        ));
        let server = Arc::new(Server {
            store,
            auth,
            metrics: ServerMetrics::new(),
        });
        tokio::select! {
            _ = server.serve(listener) => {}
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

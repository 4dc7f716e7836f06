//! `podwall status` and `podwall check`, with the operator's kubeconfig (KUBECONFIG, else
//! ~/.kube/config, else in-cluster).
//!
//! Exit codes: `status` 0 when it could read the cluster, 2 when not; `check` 0 without FAIL
//! lines, 1 with any, 2 when the cluster cannot be read.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use podwall_control::inspect::{self, Check, Level, Observed, Status};

/// Output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// `status` arguments.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Show this namespace's pods one by one (selected, injected, connected, the version of
    /// their view and the replica serving it).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Where podwall's control plane runs.
    #[arg(long, default_value = "podwall-system")]
    control_plane_namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// `check` arguments.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Only what must hold before installing (Kubernetes version, cert-manager, other meshes).
    #[arg(long, conflicts_with = "node")]
    pre_install: bool,
    /// Probe this machine's kernel for what the init container needs (NAT redirect, TPROXY,
    /// NFQUEUE, marks), in a network namespace of its own; run on a node, as root.
    #[arg(long)]
    node: bool,
    /// Where podwall's control plane runs.
    #[arg(long, default_value = "podwall-system")]
    control_plane_namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

async fn observe(namespace: &str) -> Result<Observed, String> {
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("no cluster to talk to (KUBECONFIG, ~/.kube/config or in-cluster): {e}")
    })?;
    inspect::gather(&client, namespace)
        .await
        .map_err(|e| format!("cannot reach the API server: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

pub(crate) fn status(args: StatusArgs) -> ExitCode {
    let observed =
        match runtime().and_then(|rt| rt.block_on(observe(&args.control_plane_namespace))) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("podwall: {e}");
                return ExitCode::from(2);
            }
        };
    let mut status = inspect::summarize(&observed, SystemTime::now());
    if let Some(ns) = &args.namespace {
        status.namespaces.retain(|n| &n.namespace == ns);
        status.pods.retain(|p| &p.namespace == ns);
    }
    match args.output {
        Format::Json => match serde_json::to_string_pretty(&status) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("podwall: {e}");
                return ExitCode::FAILURE;
            }
        },
        Format::Text => print_status(&status, args.namespace.as_deref()),
    }
    for (what, why) in &observed.unread {
        eprintln!("podwall: could not read {what}: {why}");
    }
    ExitCode::SUCCESS
}

fn print_status(s: &Status, namespace: Option<&str>) {
    println!("Control plane (namespace {})", s.namespace);
    match &s.deployment {
        Some((name, ready, want)) => println!("  Deployment {name}: {ready}/{want} replicas ready"),
        None => println!("  no podwall Deployment found"),
    }
    for r in &s.replicas {
        let state = if r.stale {
            format!("STALE (last report {}s ago)", r.age_seconds)
        } else if r.ready {
            "ready".to_string()
        } else {
            "NOT READY (no state loaded)".to_string()
        };
        println!(
            "  Replica {}: {state}{}, state version {}, {} sidecar(s) connected{}",
            r.name,
            if r.leader { ", leader" } else { "" },
            r.version,
            r.sidecars,
            if r.watch_failures.is_empty() {
                String::new()
            } else {
                format!(
                    ", watch failures: {}",
                    r.watch_failures
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if s.replicas.is_empty() {
        println!("  no replica reports (label podwall.io/status=replica)");
    }
    match &s.webhook {
        Some((name, entries, ca)) => println!(
            "  Webhook {name}: {entries} entries, {}{}",
            if *ca {
                "CA bundle set"
            } else {
                "CA bundle MISSING"
            },
            s.webhook_certificate_expires
                .as_deref()
                .map(|e| format!("; certificate expires {e}"))
                .unwrap_or_default()
        ),
        None => println!("  no injection webhook configuration found"),
    }
    println!();
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>12}",
        "NAMESPACE", "SELECTED", "INJECTED", "CONNECTED", "UNPROTECTED"
    );
    for n in &s.namespaces {
        println!(
            "{:<24} {:>9} {:>9} {:>10} {:>12}",
            n.namespace, n.selected, n.injected, n.connected, n.unprotected
        );
    }
    if namespace.is_some() {
        println!();
        println!(
            "{:<32} {:>9} {:>9} {:>10} {:>8}  REPLICA",
            "POD", "SELECTED", "INJECTED", "CONNECTED", "VERSION"
        );
        let yes = |b: bool| if b { "yes" } else { "-" };
        for p in &s.pods {
            println!(
                "{:<32} {:>9} {:>9} {:>10} {:>8}  {}",
                p.pod,
                yes(p.selected),
                yes(p.injected),
                yes(p.connected),
                p.version.map(|v| v.to_string()).unwrap_or("-".into()),
                p.replica.as_deref().unwrap_or("-")
            );
        }
    }
    let unprotected: Vec<String> = s
        .pods
        .iter()
        .filter(|p| p.selected && !p.injected)
        .map(|p| format!("{}/{}", p.namespace, p.pod))
        .collect();
    if !unprotected.is_empty() {
        println!();
        println!("Selected by policies but without the sidecar (policies NOT enforced):");
        for p in unprotected {
            println!("  {p}");
        }
    }
}

pub(crate) fn check(args: CheckArgs) -> ExitCode {
    let lines: Vec<Check> = if args.node {
        match podwall_proxy::kernel_check::probe() {
            Ok(features) => features
                .into_iter()
                .map(|f| Check {
                    level: match (f.ok, f.required) {
                        (true, _) => Level::Pass,
                        (false, true) => Level::Fail,
                        (false, false) => Level::Warn,
                    },
                    check: f.name,
                    detail: if f.ok {
                        "the kernel takes the rule".into()
                    } else {
                        f.detail
                    },
                    fix: (!f.ok).then(|| {
                        if f.required {
                            "load the module (modprobe xt_NFQUEUE nfnetlink_queue xt_TPROXY nf_tproxy_ipv4 xt_connmark) or use a node image that has it; without NFQUEUE, proxy.packetFilter=false (UDP, SCTP and ping then pass unjudged)".into()
                        } else {
                            "IPv6 pods are locked down to loopback instead of judged; load the IPv6 modules to judge their traffic".into()
                        }
                    }),
                })
                .collect(),
            Err(e) => {
                eprintln!("podwall: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let observed =
            match runtime().and_then(|rt| rt.block_on(observe(&args.control_plane_namespace))) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("podwall: {e}");
                    return ExitCode::from(2);
                }
            };
        if args.pre_install {
            inspect::preflight(&observed)
        } else {
            let now = SystemTime::now();
            let status = inspect::summarize(&observed, now);
            inspect::checks(&observed, &status, now)
        }
    };
    match args.output {
        Format::Json => match serde_json::to_string_pretty(&lines) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("podwall: {e}");
                return ExitCode::FAILURE;
            }
        },
        Format::Text => {
            for l in &lines {
                println!("{:<4}  {}: {}", l.level, l.check, l.detail);
                if let Some(fix) = &l.fix {
                    println!("      -> {fix}");
                }
            }
        }
    }
    if lines.iter().any(|l| l.level == Level::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

//! `podwall observe`: flows of many sidecars as one stream (see `podwall_control::observe`).
//!
//! Exit codes: 0; 2 for bad usage or a source that cannot be read.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use podwall_control::observe::source::{self, PodScope};
use podwall_control::observe::{self, Filter, FlowType, Last, Peer, PodNames, Verdict};
use serde_json::Value;
use tokio::sync::mpsc;

/// Output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// One line per flow: `time src -> dst PROTO VERDICT (why) [seen at]`.
    Compact,
    /// The flow events unchanged, one JSON object per line.
    Json,
    /// Aligned columns.
    Table,
}

/// `observe` arguments.
#[derive(Args, Debug)]
pub(crate) struct ObserveArgs {
    /// Read flow events from a file (a log pipeline's export, one JSON event per line; `-` for
    /// standard input) instead of the cluster.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "sandbox"
    )]
    file: Option<PathBuf>,
    /// Read the flows of a sandbox's sidecars (`podwall sandbox up --name NAME`).
    #[arg(long, value_name = "NAME")]
    sandbox: Option<String>,
    /// With -f: pods (`kubectl get pods -A -o yaml`) to name the ends a sidecar gave only by
    /// address. From a cluster or a sandbox the pods are read there.
    #[arg(long, value_name = "FILE", requires = "file")]
    state: Option<PathBuf>,
    /// Flows with either end in this namespace (repeatable). On a cluster, only this
    /// namespace's sidecars are read.
    #[arg(short = 'n', long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Flows with either end this pod: `NAME` (in --namespace), `NS/NAME`, or on a cluster a
    /// label selector (`app=web`) choosing whose sidecars are read.
    #[arg(long = "pod", value_name = "POD|SELECTOR")]
    pods: Vec<String>,
    /// The source: `NS/POD`, `NS/` (a namespace), a CIDR or address, or a DNS name.
    #[arg(long = "from", value_name = "PEER")]
    from: Vec<Peer>,
    /// The destination: `NS/POD`, `NS/`, a CIDR or address, or a DNS name (`*.example.com`).
    #[arg(long = "to", value_name = "PEER")]
    to: Vec<Peer>,
    /// The destination port.
    #[arg(long)]
    port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP or OTHER.
    #[arg(long)]
    protocol: Option<String>,
    /// ALLOWED, DENIED or AUDIT.
    #[arg(long)]
    verdict: Option<Verdict>,
    /// l3l4 (connections and packet-filter flows), http or dns.
    #[arg(long = "type")]
    flow_type: Option<FlowType>,
    /// HTTP requests whose path starts with this.
    #[arg(long)]
    http_path: Option<String>,
    /// HTTP requests with this method.
    #[arg(long)]
    http_method: Option<String>,
    /// Flows since a duration ago (`5m`, `1h`) or a time (`2026-12-05T10:00:00Z`).
    #[arg(long, value_parser = since)]
    since: Option<SystemTime>,
    /// Only the last N flows that pass the filters (with --follow: of those already written).
    #[arg(long)]
    last: Option<usize>,
    /// Keep reading: new flows, new sidecars, new pods.
    #[arg(short = 'F', long)]
    follow: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    output: Format,
}

fn since(value: &str) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(value) {
        return SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{value}: too long ago"));
    }
    humantime::parse_rfc3339_weak(value).map_err(|_| {
        format!("{value:?}: expected a duration (5m) or a time (2026-12-05T10:00:00Z)")
    })
}

fn print(out: &mut impl Write, format: Format, flow: &Value) -> std::io::Result<()> {
    match format {
        Format::Compact => writeln!(out, "{}", observe::compact(flow)),
        Format::Json => writeln!(out, "{flow}"),
        Format::Table => writeln!(out, "{}", observe::table_row(flow)),
    }
}

pub(crate) fn run(args: ObserveArgs) -> ExitCode {
    let (selectors, names): (Vec<String>, Vec<String>) =
        args.pods.iter().cloned().partition(|p| p.contains('='));
    if !selectors.is_empty() && (args.file.is_some() || args.sandbox.is_some()) {
        eprintln!(
            "podwall: --pod {}: label selectors need the cluster (flow events carry pod names, not labels); name the pods",
            selectors.join(",")
        );
        return ExitCode::from(2);
    }
    let filter = Filter {
        namespaces: args.namespaces.clone(),
        pods: names,
        from: args.from,
        to: args.to,
        port: args.port,
        protocol: args.protocol,
        verdict: args.verdict,
        flow_type: args.flow_type,
        http_path: args.http_path,
        http_method: args.http_method,
        since: args.since,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("podwall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let follow = args.follow;
    let result: Result<(), String> = runtime.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<Value>(4096);
        let (names_tx, names) = tokio::sync::watch::channel(PodNames::default());
        let reader = match (&args.file, &args.sandbox) {
            (Some(path), _) => {
                if let Some(state) = &args.state {
                    let text = std::fs::read_to_string(state)
                        .map_err(|e| format!("--state {}: {e}", state.display()))?;
                    let objects = podwall_policy::objects(&state.display().to_string(), &text)
                        .map_err(|e| format!("--state {e}"))?;
                    names_tx.send_replace(PodNames::from_pods(objects.iter().map(|(_, v)| v)));
                }
                tokio::spawn(source::file(path.clone(), follow, tx))
            }
            (None, Some(name)) => {
                let dir = PathBuf::from(podwall_sandbox::RUN_DIR).join(name);
                tokio::spawn(source::sandbox_names(dir.clone(), follow, names_tx));
                tokio::spawn(source::sandbox(dir, follow, tx))
            }
            (None, None) => {
                let client = kube::Client::try_default().await.map_err(|e| {
                    format!("no cluster to read (KUBECONFIG, ~/.kube/config or in-cluster; or -f FILE, --sandbox NAME): {e}")
                })?;
                tokio::spawn(source::cluster_names(client.clone(), follow, names_tx));
                let scope = PodScope {
                    namespaces: args.namespaces.clone(),
                    selector: (!selectors.is_empty()).then(|| selectors.join(",")),
                    since: args.since,
                    // Each sidecar's last N, at most (the filters pick among them).
                    tail: args
                        .last
                        .filter(|_| follow)
                        .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                };
                tokio::spawn(source::cluster(client, scope, follow, tx))
            }
        };
        // The first names before the first lines (a cluster's pods, a sandbox's state).
        let mut names = names;
        if args.file.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(2), names.changed()).await;
        }
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let written = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                String::new()
            } else {
                format!("cannot write: {e}")
            }
        };
        if args.output == Format::Table {
            writeln!(out, "{}", observe::TABLE_HEADER).map_err(written)?;
        }
        match (args.last, follow) {
            (Some(n), false) => {
                let mut last = Last::new(n);
                while let Some(mut flow) = rx.recv().await {
                    names.borrow().fill(&mut flow);
                    if filter.matches(&flow) {
                        last.push(flow);
                    }
                }
                for flow in last.take() {
                    print(&mut out, args.output, &flow).map_err(written)?;
                }
            }
            (last, _) => {
                // With --follow and --last N: what arrives in the first moment is the backlog.
                let mut backlog = last.map(Last::new);
                let backlog_until = tokio::time::Instant::now() + Duration::from_millis(500);
                loop {
                    let flow = match &backlog {
                        Some(_) => tokio::select! {
                            f = rx.recv() => f,
                            _ = tokio::time::sleep_until(backlog_until) => {
                                for flow in backlog.take().map(Last::take).unwrap_or_default() {
                                    print(&mut out, args.output, &flow).map_err(written)?;
                                }
                                out.flush().map_err(written)?;
                                continue;
                            }
                        },
                        None => rx.recv().await,
                    };
                    let Some(mut flow) = flow else { break };
                    names.borrow().fill(&mut flow);
                    if !filter.matches(&flow) {
                        continue;
                    }
                    match &mut backlog {
                        Some(b) => b.push(flow),
                        None => {
                            print(&mut out, args.output, &flow).map_err(written)?;
                            // Someone is watching: each line as it comes.
                            if follow {
                                out.flush().map_err(written)?;
                            }
                        }
                    }
                }
                for flow in backlog.take().map(Last::take).unwrap_or_default() {
                    print(&mut out, args.output, &flow).map_err(written)?;
                }
            }
        }
        out.flush().map_err(written)?;
        match reader.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_empty() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podwall: {e}");
            ExitCode::from(2)
        }
    }
}

//! `podwall inject`: the webhook's injection, offline, for `podwall inject -f d.yaml | kubectl
//! apply -f -`. The same injection needs the same settings: the chart's injection config and
//! the feed's CA, read from the cluster (see `--help`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use podwall_control::inject::uninject::{Uninjected, uninject_object};
use podwall_control::inject::{InjectConfig, Outcome, inject_object};

/// `inject` arguments.
#[derive(Args, Debug)]
pub(crate) struct InjectArgs {
    /// Workloads to inject (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
    /// CronJobs; files, directories, or `-` for stdin). Every pod template is injected unless it
    /// says `podwall.io/inject: disabled`; other objects pass through unchanged.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Injection settings (YAML, the webhook's `--inject-config`; the chart's is the
    /// `podwall-inject` ConfigMap): image, imagePullPolicy, controlPlane, controlPlaneCa (PEM),
    /// proxyUid, adminPort, nativeSidecar, reservePorts, audit, packetFilter,
    /// allowUnnamedFqdnConnections, nodePortsOnlyAtListedAddresses, excludeOutboundCidrs, excludeOutboundPorts,
    /// excludeInboundPorts, allowPodExclusions, threads, fqdnMinTTL, resources, logFormat,
    /// tokenAudience, tokenExpirationSeconds. Per pod, annotations change some of them
    /// (docs/annotate.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The CA (PEM) that signed the control plane's feed certificate (overrides
    /// controlPlaneCa); with the chart: the `ca.crt` of the `podwall-webhook-tls` Secret.
    /// Sidecars refuse to send their token without it, so injection refuses to run without it.
    #[arg(long, value_name = "FILE")]
    control_plane_ca: Option<PathBuf>,
    /// The podwall image (overrides the config).
    #[arg(long)]
    image: Option<String>,
    /// Where sidecars reach the control plane, HOST:PORT (overrides the config).
    #[arg(long)]
    control_plane: Option<String>,
    /// Inject the sidecar as a regular container (clusters older than Kubernetes 1.29). A Job's
    /// pods then never complete (the sidecar keeps running): a warning names them.
    #[arg(long)]
    no_native_sidecar: bool,
    /// Inject in audit mode: would-be denials pass, logged as AUDIT.
    #[arg(long)]
    audit: bool,
}

/// Every document of the paths (files, directories, `-`), empty ones left out; on error, said,
/// with the exit code.
fn read_documents(
    paths: &[PathBuf],
) -> Result<Vec<(podwall_policy::Origin, serde_json::Value)>, ExitCode> {
    let files = podwall_control::source::read_paths(paths).map_err(|e| {
        eprintln!("podwall: {e}");
        ExitCode::from(2)
    })?;
    let mut out = Vec::new();
    for file in files {
        let docs = podwall_policy::documents(&file.name, &file.text).map_err(|e| {
            eprintln!("podwall: {e}");
            ExitCode::from(2)
        })?;
        // An empty document (`---` at the top) is nothing.
        out.extend(docs.into_iter().filter(|(_, d)| !d.is_null()));
    }
    Ok(out)
}

/// `Kind name` of a document, for messages.
fn describe(doc: &serde_json::Value) -> String {
    format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("object"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// `--config`'s injection config, or the default; on error, said, with the exit code.
fn config_or_default(path: Option<&Path>) -> Result<InjectConfig, ExitCode> {
    match path {
        Some(p) => read_config(p).map_err(|e| {
            eprintln!("podwall: --config {e}");
            ExitCode::from(2)
        }),
        None => Ok(InjectConfig::default()),
    }
}

/// Reads an injection config file.
pub(crate) fn read_config(path: &Path) -> Result<InjectConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn run(args: InjectArgs) -> ExitCode {
    let mut cfg = match config_or_default(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(i) = args.image {
        cfg.image = i;
    }
    if let Some(c) = args.control_plane {
        cfg.control_plane = c;
    }
    if args.no_native_sidecar {
        cfg.native_sidecar = Some(false);
    }
    cfg.audit |= args.audit;
    if let Some(path) = &args.control_plane_ca {
        match std::fs::read_to_string(path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {
                cfg.control_plane_ca = Some(pem);
            }
            Ok(_) => {
                eprintln!(
                    "podwall: --control-plane-ca {}: no PEM certificate in it",
                    path.display()
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("podwall: --control-plane-ca {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if cfg.control_plane_ca.is_none() {
        // The sidecar would exit at start rather than send its token in clear.
        eprintln!(
            "podwall: no CA for the control plane's feed: the sidecars would refuse to start. Pass \
             --control-plane-ca FILE (with the chart: kubectl -n podwall-system get secret \
             podwall-webhook-tls -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > podwall-ca.crt) \
             or controlPlaneCa in --config"
        );
        return ExitCode::from(2);
    }
    let never_ending =
        |kind: &str| matches!(kind, "Job" | "CronJob") && cfg.native_sidecar == Some(false);
    let docs = match read_documents(&args.files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut out = Vec::new();
    let mut refused = 0;
    for (origin, mut doc) in docs {
        let what = describe(&doc);
        match inject_object(&mut doc, &cfg) {
            Ok(Outcome::Injected) => {
                eprintln!("{origin}: {what}: sidecar injected");
                if never_ending(doc["kind"].as_str().unwrap_or_default()) {
                    eprintln!(
                        "{origin}: warning: {what}: with --no-native-sidecar its pods never \
                         complete (the sidecar container keeps running after the job's); use \
                         native sidecars (Kubernetes 1.29+) for Jobs and CronJobs"
                    );
                }
            }
            Ok(Outcome::AlreadyInjected) => {
                eprintln!("{origin}: {what}: already injected, unchanged")
            }
            Ok(Outcome::Skipped(why)) => {
                if podwall_control::inject::template_pointer(
                    doc["kind"].as_str().unwrap_or_default(),
                )
                .is_some()
                {
                    eprintln!("{origin}: warning: {what}: not injected: {why}");
                }
            }
            Err(e) => {
                eprintln!("{origin}: error: {what}: {e}");
                refused += 1;
            }
        }
        out.push(doc);
    }
    if refused > 0 {
        // Nothing is printed: half a set of workloads applied is worse than none.
        eprintln!("podwall: {refused} object(s) refused; nothing written");
        return ExitCode::from(1);
    }
    write_documents(out)
}

/// Prints documents as one multi-document YAML stream.
fn write_documents(docs: Vec<serde_json::Value>) -> ExitCode {
    let mut text = String::new();
    for doc in docs {
        match serde_saphyr::to_string(&doc) {
            Ok(y) => {
                text.push_str("---\n");
                text.push_str(&y);
            }
            Err(e) => {
                eprintln!("podwall: cannot write YAML: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): not our failure to report.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podwall: cannot write: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `uninject` arguments.
#[derive(Args, Debug)]
pub(crate) struct UninjectArgs {
    /// Workloads injected by `podwall inject` (files, directories, or `-` for stdin). Their
    /// pod templates lose podwall's containers, token volume, sysctl values and the annotations
    /// podwall.io/status and podwall.io/inject: enabled; NET_RAW stays dropped from the app
    /// containers (harmless, and not told apart from the app's own drop). Other objects pass
    /// through unchanged.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The injection config the workloads were injected with (only its adminPort matters:
    /// that port is taken out of the reserved ports).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep `podwall.io/inject: enabled` on the pod templates, so the webhook injects their
    /// pods instead (moving from offline injection to the webhook).
    #[arg(long)]
    keep_annotation: bool,
}

pub(crate) fn run_uninject(args: UninjectArgs) -> ExitCode {
    let cfg = match config_or_default(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let docs = match read_documents(&args.files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut out = Vec::new();
    let mut failed = 0;
    for (origin, mut doc) in docs {
        let what = describe(&doc);
        match uninject_object(&mut doc, &cfg, args.keep_annotation) {
            Ok(Uninjected::Removed) => eprintln!("{origin}: {what}: podwall removed"),
            Ok(Uninjected::NotInjected) => {
                eprintln!("{origin}: {what}: not injected, unchanged")
            }
            Ok(Uninjected::NoTemplate) => {}
            Err(e) => {
                eprintln!("{origin}: error: {what}: {e}");
                failed += 1;
            }
        }
        out.push(doc);
    }
    if failed > 0 {
        eprintln!("podwall: {failed} object(s) not understood; nothing written");
        return ExitCode::from(1);
    }
    write_documents(out)
}

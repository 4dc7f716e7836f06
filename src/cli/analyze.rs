//! `podwall analyze matrix | check | lint`.
//!
//! Exit codes: 0 fine; 1 findings (lint) or denied (check); 2 bad usage or unreadable input.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use podwall_control::source::load_paths;
use podwall_policy::analyze::lint::lint;
use podwall_policy::analyze::matrix::Matrix;
use podwall_policy::{
    ClusterState, Diagnostic, Endpoint, Engine, LoadReport, Protocol, Query, Severity,
};

/// What to analyze, and how.
#[derive(Subcommand, Debug)]
pub(crate) enum AnalyzeCommand {
    /// Print which pods may connect to which, for a port.
    ///
    /// Every ordered pair of pods is judged: allowed only if both the source's egress and the
    /// destination's ingress allow it. Without --port, one matrix per port some container
    /// declares (with -o json, a JSON array of matrices; with --port, one JSON object:
    /// {"port":80,"protocol":"TCP","pods":[...],"allowed":{"ns/a":{"ns/b":true,...},...}}).
    Matrix(MatrixArgs),
    /// Explain whether one connection is allowed, naming the policy and rule on each side.
    ///
    /// Exit code 0 when allowed, 1 when denied. With -o json:
    /// {"allowed":bool,"egress":{...},"ingress":{...},...}, each side saying whether the pod is
    /// isolated, by which policies, and which policy and rule allowed it.
    Check(CheckArgs),
    /// Report invalid policies and the mistakes operators make with valid ones.
    ///
    /// Exit code 1 when there is any finding.
    Lint(LintArgs),
}

/// Where the cluster state is.
#[derive(Args, Debug)]
pub(crate) struct Input {
    /// YAML or JSON files, or directories of them (read recursively; `-` is standard input).
    /// Multi-document files and `kind: List` (`kubectl get ns,pods,netpol -A -o yaml`) work.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
}

/// Output format of `matrix`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MatrixFormat {
    /// A numbered grid for people.
    Table,
    /// The JSON contract for tools.
    Json,
}

/// Output format of `check` and `lint`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    /// Sentences for people.
    Text,
    /// JSON for tools.
    Json,
}

/// A protocol flag value.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "UPPER")]
pub(crate) enum ProtocolArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
            ProtocolArg::Sctp => Protocol::Sctp,
        }
    }
}

/// `analyze matrix` arguments.
#[derive(Args, Debug)]
pub(crate) struct MatrixArgs {
    #[command(flatten)]
    input: Input,
    /// The destination port (default: every port a container declares).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// The protocol (default TCP; without --port, every protocol containers declare).
    #[arg(long, ignore_case = true)]
    protocol: Option<ProtocolArg>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: MatrixFormat,
}

/// `analyze check` arguments.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    input: Input,
    /// The source: NAMESPACE/POD, or an IP address (a pod's, or an outside one).
    #[arg(long, value_name = "NS/POD|IP")]
    from: String,
    /// The destination: NAMESPACE/POD, or an IP address (a pod's, or an outside one).
    #[arg(long, value_name = "NS/POD|IP")]
    to: String,
    /// The destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The protocol.
    #[arg(long, ignore_case = true, default_value = "TCP")]
    protocol: ProtocolArg,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: ReportFormat,
}

/// `analyze lint` arguments.
#[derive(Args, Debug)]
pub(crate) struct LintArgs {
    #[command(flatten)]
    input: Input,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: ReportFormat,
}

const EXIT_FINDINGS: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Runs an analyze subcommand and returns the exit code.
pub(crate) fn run(cmd: AnalyzeCommand) -> ExitCode {
    let result = match cmd {
        AnalyzeCommand::Matrix(args) => matrix(args),
        AnalyzeCommand::Check(args) => check(args),
        AnalyzeCommand::Lint(args) => lint_cmd(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("podwall: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn load(input: &Input) -> Result<(ClusterState, LoadReport), String> {
    load_paths(&input.paths).map_err(|e| e.to_string())
}

/// Load findings go to stderr for `matrix` and `check`, so stdout stays machine-readable.
fn print_load_report(report: &LoadReport) {
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
}

fn matrix(args: MatrixArgs) -> Result<ExitCode, String> {
    let (state, report) = load(&args.input)?;
    print_load_report(&report);
    let ports: Vec<(Protocol, u16)> = match args.port {
        Some(port) => vec![(
            args.protocol.map(Protocol::from).unwrap_or(Protocol::Tcp),
            port,
        )],
        None => {
            let wanted = args.protocol.map(Protocol::from);
            let declared: BTreeSet<(Protocol, u16)> = state
                .pods
                .iter()
                .flat_map(|p| p.ports.iter())
                .filter(|p| wanted.is_none_or(|w| w == p.protocol))
                .map(|p| (p.protocol, p.port))
                .collect();
            if declared.is_empty() {
                return Err("no --port given and no container declares a port; pass --port".into());
            }
            declared.into_iter().collect()
        }
    };
    let engine = Engine::compile(state);
    let matrices: Vec<Matrix> = ports
        .iter()
        .map(|(protocol, port)| Matrix::compute(&engine, *protocol, *port))
        .collect();
    match args.output {
        MatrixFormat::Table => {
            let tables: Vec<String> = matrices.iter().map(Matrix::render_table).collect();
            print!("{}", tables.join("\n"));
        }
        MatrixFormat::Json => {
            let json = if args.port.is_some() {
                serde_json::to_string_pretty(&matrices[0])
            } else {
                serde_json::to_string_pretty(&matrices)
            };
            println!("{}", json.map_err(|e| e.to_string())?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn endpoint(state: &ClusterState, spec: &str, flag: &str) -> Result<Endpoint, String> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(Endpoint::Ip(ip));
    }
    let Some((ns, name)) = spec.split_once('/') else {
        return Err(format!(
            "--{flag} {spec:?}: expected NAMESPACE/POD or an IP address"
        ));
    };
    match state.pod_by_name(ns, name) {
        Some(id) => Ok(Endpoint::Pod(id)),
        None => {
            let in_ns: Vec<String> = state
                .pods
                .iter()
                .filter(|p| p.namespace == ns)
                .map(|p| p.name.clone())
                .collect();
            let known = if in_ns.is_empty() {
                format!("the input has no pods in namespace {ns:?}")
            } else {
                format!("pods in {ns}: {}", in_ns.join(", "))
            };
            Err(format!(
                "--{flag} {spec:?}: no such pod in the input ({known})"
            ))
        }
    }
}

fn check(args: CheckArgs) -> Result<ExitCode, String> {
    let (state, report) = load(&args.input)?;
    print_load_report(&report);
    let query = Query {
        src: endpoint(&state, &args.from, "from")?,
        dst: endpoint(&state, &args.to, "to")?,
        protocol: args.protocol.into(),
        port: args.port,
    };
    let engine = Engine::compile(state);
    let verdict = engine.verdict(&query);
    let explanation = engine.explain(&verdict);
    match args.output {
        ReportFormat::Text => print!("{explanation}"),
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&explanation).map_err(|e| e.to_string())?
        ),
    }
    Ok(if explanation.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FINDINGS)
    })
}

fn lint_cmd(args: LintArgs) -> Result<ExitCode, String> {
    let (state, report) = load(&args.input)?;
    let engine = Engine::compile(state);
    let mut findings: Vec<Diagnostic> = report.diagnostics;
    findings.extend(lint(&engine));
    let errors = findings
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    match args.output {
        ReportFormat::Text => {
            for f in &findings {
                println!("{f}");
            }
            let skipped: Vec<String> = report
                .skipped_kinds
                .iter()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            let skipped = if skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {}", skipped.join(", "))
            };
            println!(
                "{errors} error(s), {warnings} warning(s) in {} policies, {} pods, {} namespaces{skipped}",
                engine.state().policies.len(),
                engine.state().pods.len(),
                engine.state().namespaces.len(),
            );
        }
        ReportFormat::Json => {
            let out = serde_json::json!({
                "errors": errors,
                "warnings": warnings,
                "diagnostics": findings,
                "skipped_kinds": report.skipped_kinds,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
            );
        }
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FINDINGS)
    })
}

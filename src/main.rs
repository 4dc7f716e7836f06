//! `podwall`: one binary for every role: the sidecar's init and proxy (`proxy`), the control plane
//! (`control`), the injection helper (`inject`), the analyzer (`analyze`, `advise`, `observe`,
//! `status`) and the one-machine sandbox (`sandbox`). This file parses arguments and dispatches;
//! `src/cli/` turns arguments into calls on the crates, where the work is.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Kubernetes NetworkPolicy enforcement from inside the pod, and the tools to reason about it.
#[derive(Parser, Debug)]
#[command(name = "podwall", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer, offline, what can talk to what and why, from cluster state in YAML.
    #[command(subcommand)]
    Analyze(cli::analyze::AnalyzeCommand),
    /// The control plane: watch the cluster state, stream each sidecar its pod's policy.
    #[command(subcommand)]
    Control(cli::control::ControlCommand),
    /// The sidecar: install the traffic rules (init) or run the proxy (run).
    #[command(subcommand)]
    Proxy(cli::proxy::ProxyCommand),
    /// A cluster on this machine: network namespaces as pods, the sidecar injected (needs root).
    #[command(subcommand)]
    Sandbox(cli::sandbox::SandboxCommand),
    /// Add the podwall sidecar to workloads offline, as the webhook would
    /// (`podwall inject -f deploy.yaml | kubectl apply -f -`).
    Inject(cli::inject::InjectArgs),
    /// Take podwall out of workloads injected offline
    /// (`podwall uninject -f injected.yaml | kubectl apply -f -`).
    Uninject(cli::inject::UninjectArgs),
    /// The flows of many sidecars as one stream, filtered (a cluster's podwall-proxy logs, a
    /// sandbox, or a file), like `hubble observe`.
    Observe(cli::observe::ObserveArgs),
    /// Propose the NetworkPolicies (and PodwallPolicy name rules) that allow exactly the
    /// observed flows, checked with the analyzer before they are printed.
    Advise(cli::advise::AdviseArgs),
    /// What podwall is doing on the cluster: control-plane replicas, the webhook, and per
    /// namespace the pods selected, injected, connected and unprotected (your kubeconfig).
    Status(cli::status::StatusArgs),
    /// PASS / WARN / FAIL, each with what to do: before installing (--pre-install), on a node's
    /// kernel (--node), or everything once installed.
    Check(cli::status::CheckArgs),
    /// Print the PodwallPolicy CustomResourceDefinition (`podwall crd | kubectl apply -f -`).
    Crd,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Analyze(cmd) => cli::analyze::run(cmd),
        Command::Control(cmd) => cli::control::run(cmd),
        Command::Proxy(cmd) => cli::proxy::run(cmd),
        Command::Inject(args) => cli::inject::run(args),
        Command::Uninject(args) => cli::inject::run_uninject(args),
        Command::Observe(args) => cli::observe::run(args),
        Command::Advise(args) => cli::advise::run(args),
        Command::Status(args) => cli::status::status(args),
        Command::Check(args) => cli::status::check(args),
        Command::Sandbox(cmd) => cli::sandbox::run(cmd),
        Command::Crd => {
            print!("{}", podwall_policy::crd::podwall_policy_crd_yaml());
            ExitCode::SUCCESS
        }
    }
}

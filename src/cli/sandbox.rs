//! `podwall sandbox up | probe | down | demo`, and the servers it runs in pods.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use podwall_sandbox::{Inject, Options, Sandbox, SandboxError};

/// A cluster on this machine, for demos, tests and benchmarks (needs root).
#[derive(Subcommand, Debug)]
pub(crate) enum SandboxCommand {
    /// Build it: a network namespace per Pod in DIR's YAML, servers on their container ports,
    /// and the sidecar in pods annotated podwall.io/inject: enabled.
    Up(UpArgs),
    /// Try every pod-to-pod TCP connection; print what happened beside the analyzer's
    /// prediction. Exit code 1 where they differ.
    Probe(ProbeArgs),
    /// Remove everything the sandbox created (also after a crash).
    Down(NameArg),
    /// up, probe, down.
    Demo(UpArgs),
    /// The server each sandbox pod runs (internal).
    #[command(hide = true)]
    Serve(ServeArgs),
}

/// Which pods get a sidecar.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum InjectArg {
    /// Pods annotated podwall.io/inject: enabled.
    Annotated,
    /// Every pod.
    All,
    /// None.
    None,
}

/// The sandbox's name.
#[derive(Args, Debug)]
pub(crate) struct NameArg {
    /// Several sandboxes can run side by side under different names.
    #[arg(long, default_value = "podwall")]
    name: String,
}

/// `up` and `demo` arguments.
#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    /// A directory (or file) of YAML: Namespaces, Pods, NetworkPolicies.
    dir: PathBuf,
    #[command(flatten)]
    name: NameArg,
    /// Which pods get a sidecar.
    #[arg(long, value_enum, default_value = "annotated")]
    inject: InjectArg,
    /// Output of the probe (demo).
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
    /// Also send this HTTP request on every allowed connection and compare the status with the
    /// analyzer's (METHOD:PATH, repeatable; e.g. GET:/api/v1/users).
    #[arg(long = "http", value_name = "METHOD:PATH")]
    http: Vec<String>,
}

/// Probe output.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Matrices for people.
    Text,
    /// Every attempt as JSON.
    Json,
}

/// `probe` arguments.
#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    name: NameArg,
    /// Also send this HTTP request on every allowed connection and compare the status with the
    /// analyzer's (METHOD:PATH, repeatable; e.g. GET:/api/v1/users).
    #[arg(long = "http", value_name = "METHOD:PATH")]
    http: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

/// `serve` arguments.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// The sandbox it belongs to (shows in `ps`).
    #[arg(long)]
    sandbox: Option<String>,
    /// The pod, for the greeting.
    #[arg(long)]
    pod: String,
    /// TCP ports.
    #[arg(long, value_delimiter = ',')]
    tcp: Vec<u16>,
    /// UDP ports.
    #[arg(long, value_delimiter = ',')]
    udp: Vec<u16>,
}

pub(crate) fn run(cmd: SandboxCommand) -> ExitCode {
    let result = match cmd {
        SandboxCommand::Up(args) => up(&args).map(|sb| {
            println!(
                "sandbox {:?} is up: {} pods; `podwall sandbox probe` to test, `podwall sandbox down` to remove",
                sb.record.name,
                sb.record.pods.len()
            );
            println!(
                "policy: {} (edit to change it); logs and flow events: {}",
                sb.policy_dir().display(),
                sb.logs_dir().display()
            );
            ExitCode::SUCCESS
        }),
        SandboxCommand::Probe(args) => Sandbox::open(&args.name.name).and_then(|sb| probe(&sb, args.output, &args.http)),
        SandboxCommand::Down(args) => podwall_sandbox::down(&args.name).map(|()| {
            println!("sandbox {:?} removed", args.name);
            ExitCode::SUCCESS
        }),
        SandboxCommand::Demo(args) => demo(&args),
        SandboxCommand::Serve(args) => return serve(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("podwall: {e}");
        ExitCode::from(2)
    })
}

fn options(args: &UpArgs) -> Result<Options, SandboxError> {
    let exe = std::env::current_exe().map_err(|source| SandboxError::Tool {
        command: "current_exe".into(),
        source,
    })?;
    Ok(Options {
        name: args.name.name.clone(),
        inject: match args.inject {
            InjectArg::Annotated => Inject::Annotated,
            InjectArg::All => Inject::All,
            InjectArg::None => Inject::None,
        },
        exe,
        sidecar_args: Vec::new(),
        init_args: Vec::new(),
    })
}

fn up(args: &UpArgs) -> Result<Sandbox, SandboxError> {
    let opts = options(args)?;
    eprintln!(
        "building sandbox {:?} from {}",
        opts.name,
        args.dir.display()
    );
    let sb = Sandbox::up(&args.dir, &opts)?;
    for p in &sb.record.pods {
        eprintln!(
            "  {:<40} {:<15} {}{}",
            p.key,
            p.ip,
            if p.injected { "sidecar" } else { "no sidecar" },
            if p.host_network { ", host network" } else { "" }
        );
    }
    Ok(sb)
}

fn probe(sb: &Sandbox, output: Output, http: &[String]) -> Result<ExitCode, SandboxError> {
    let report = sb.probe()?;
    let requests: Vec<(String, String)> = http
        .iter()
        .map(|r| match r.split_once(':') {
            Some((m, p)) => (m.to_string(), p.to_string()),
            None => ("GET".to_string(), r.clone()),
        })
        .collect();
    let http_report = if requests.is_empty() {
        Vec::new()
    } else {
        sb.probe_http(&requests)?
    };
    match output {
        Output::Text => {
            print!("{}", report.render());
            if !requests.is_empty() {
                print!("\n{}", podwall_sandbox::probe::render_http(&http_report));
            }
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"tcp": report, "http": http_report}))
                .unwrap_or_default()
        ),
    }
    let http_ok = http_report.iter().all(|a| a.observed == a.predicted);
    Ok(if report.mismatches().is_empty() && http_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn demo(args: &UpArgs) -> Result<ExitCode, SandboxError> {
    let sb = up(args)?;
    let result = probe(&sb, args.output, &args.http);
    eprintln!("removing sandbox {:?}", sb.record.name);
    let down = sb.down();
    let code = result?;
    down?;
    Ok(code)
}

fn serve(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podwall: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(podwall_sandbox::server::serve(args.pod, args.tcp, args.udp)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podwall: sandbox server: {e}");
            ExitCode::FAILURE
        }
    }
}

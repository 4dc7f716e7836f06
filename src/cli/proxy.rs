//! `podwall proxy init` and `podwall proxy run`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use podwall_proxy::init::{Coverage, DnsCapture, Family, InitConfig, L4Path};
use podwall_proxy::{Identity, ProxyConfig};

/// The sidecar's two jobs.
#[derive(Subcommand, Debug)]
pub(crate) enum ProxyCommand {
    /// Install the iptables rules that send the pod's traffic to the sidecar (the init
    /// container's job; needs NET_ADMIN). Idempotent.
    Init(InitArgs),
    /// Run the sidecar: enforce the pod's policy on every connection in and out.
    Run(RunArgs),
}

/// What the IPv6 rules do.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ipv6Mode {
    /// Capture as IPv4 when the namespace has a global IPv6 address; drop all IPv6 but
    /// loopback when it has only link-local ones; nothing when it has no IPv6.
    Auto,
    /// Capture as IPv4, whatever the addresses.
    On,
    /// Drop all IPv6 but loopback.
    Lockdown,
    /// Write no IPv6 rules: IPv6 traffic is NOT enforced (a link-local address reaches the
    /// node and the pods beside it).
    Off,
}

/// How DNS over UDP is captured.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DnsCaptureArg {
    /// TPROXY: the original destination is kept.
    Tproxy,
    /// nat REDIRECT.
    Redirect,
}

/// Which TCP connections the proxy relays (`proxy init --l4-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum L4PathArg {
    /// Every one.
    Proxy,
    /// Only those that need it (HTTP rules, toFQDNs names to check, a Service whose backends
    /// policy allows in part); the kernel carries the rest after the first packet is judged.
    Kernel,
}

/// `proxy init` arguments.
#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// The mark on the sidecar's sockets (`proxy run --proxy-mark`): its packets are never
    /// captured. Setting a socket mark needs NET_ADMIN or NET_RAW, which app containers must
    /// not have (injection drops NET_RAW); no uid or group is exempt, since a root app can
    /// take any.
    #[arg(long, default_value_t = podwall_proxy::exempt::DEFAULT_MARK, value_parser = parse_mark)]
    proxy_mark: u32,
    /// Where inbound TCP is redirected.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Where outbound TCP is redirected.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Where DNS (UDP and TCP 53) is redirected.
    #[arg(long, default_value_t = 15053)]
    dns_port: u16,
    /// The sidecar's admin port: never captured (kubelet probes it).
    #[arg(long, default_value_t = 15020)]
    admin_port: u16,
    /// Capture DNS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    capture_dns: bool,
    /// How DNS over UDP reaches the sidecar: `tproxy` keeps the resolver the pod asked (the
    /// sidecar then needs NET_ADMIN); `redirect` loses it (the sidecar assumes the pod's
    /// configured resolver).
    #[arg(long, value_enum, default_value = "tproxy")]
    dns_capture: DnsCaptureArg,
    /// Inbound ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound TCP ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone, e.g. the control plane (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<ipnet::IpNet>,
    /// The NFQUEUE queue that new UDP and SCTP flows (other than DNS) and pings go to, for the sidecar
    /// to judge; it must match `proxy run --packet-queue`.
    #[arg(long, default_value_t = podwall_proxy::init::DEFAULT_PACKET_QUEUE)]
    packet_queue: u16,
    /// How many queues, from --packet-queue on, new flows are spread over (by the CPU their
    /// first packet is on); the sidecar judges each on a thread of its own. It must match `proxy run
    /// --packet-queues` (the same PODWALL_PACKET_QUEUES): a queue nobody reads drops what it
    /// gets.
    #[arg(long, default_value_t = 1, env = "PODWALL_PACKET_QUEUES", value_parser = clap::value_parser!(u16).range(1..=64))]
    packet_queues: u16,
    /// Let new UDP, SCTP and ICMP flows pass unjudged: their policies are then NOT enforced
    /// (other protocols are dropped).
    #[arg(long, conflicts_with = "l4_path")]
    no_packet_filter: bool,
    /// Which TCP connections go through the proxy: `proxy` (every one, judged by the proxy
    /// when it accepts them), or `kernel` (the first packet of every new connection is judged
    /// in --packet-queue; the proxy relays only connections under HTTP rules, allowed only by
    /// toFQDNs names, or to a Service whose backends policy allows in part, and the kernel
    /// carries the rest).
    #[arg(long, value_enum, default_value = "proxy", env = "PODWALL_L4_PATH")]
    l4_path: L4PathArg,
    /// What the ip6tables rules do.
    #[arg(long, value_enum, default_value = "auto")]
    ipv6: Ipv6Mode,
    /// Also copy the pod's /etc/resolv.conf and /etc/hosts into DIR, for `proxy run
    /// --pod-files DIR`: an init container runs before any app container, so the copies are
    /// the kubelet's, which an app may rewrite later (both are mounted writable into every
    /// container). Mount DIR into this container and the sidecar only.
    #[arg(long, value_name = "DIR")]
    save_pod_files: Option<std::path::PathBuf>,
    /// Print the rules instead of installing them.
    #[arg(long, conflicts_with = "remove")]
    dry_run: bool,
    /// Remove the rules.
    #[arg(long)]
    remove: bool,
}

/// `proxy run` arguments.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Where policy comes from: `control:HOST:PORT` (the control plane's feed for this pod) or
    /// `dir:PATH` (YAML files, watched for changes).
    #[arg(long, value_name = "control:HOST:PORT|dir:PATH")]
    policy_source: String,
    /// The token proving this pod to the control plane (the projected service-account token),
    /// re-read at every connection.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Reach the control plane over TLS, trusting only this CA (PEM file). The injected sidecar
    /// gets the CA in PODWALL_CONTROL_CA instead (`controlPlaneCa` in the injection config).
    /// Required with --token-file: a token is sent only to a control plane TLS verified.
    #[arg(long, value_name = "FILE")]
    control_ca: Option<PathBuf>,
    /// Send --token-file's token over plaintext HTTP/2 when no CA is given: anyone on the path
    /// can read it. For the sandbox and local use only.
    #[arg(long)]
    insecure_plaintext_feed: bool,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: String,
    /// This pod's name.
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    /// Inbound listener port (all addresses).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Outbound listener port (loopback).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// DNS listener port (loopback, UDP and TCP).
    #[arg(long, default_value_t = 15053)]
    dns_port: u16,
    /// Admin port: /live, /ready, /metrics.
    #[arg(long, default_value_t = 15020)]
    admin_port: u16,
    /// The pod's resolver, besides the nameservers of /etc/resolv.conf: queries for the names
    /// of the pod's toFQDNs rules may reach it without a DNS rule, and it is assumed as the
    /// destination when a query's own is unknown (`--dns-capture redirect`).
    #[arg(long)]
    dns_upstream: Option<IpAddr>,
    /// Read the pod's resolv.conf and hosts file from DIR, as `proxy init --save-pod-files
    /// DIR` saved them, instead of /etc: a sidecar that starts again (killed, out of memory)
    /// starts after the app, which may have rewritten /etc/resolv.conf to name its own DNS
    /// server (whose answers the sidecar would believe for toFQDNs names) or /etc/hosts to
    /// name another control plane. Both files must be there.
    #[arg(long, value_name = "DIR")]
    pod_files: Option<std::path::PathBuf>,
    /// How the init rules capture DNS over UDP: `tproxy` (the query's original destination is
    /// read; needs NET_ADMIN, else the sidecar falls back) or `redirect`.
    #[arg(long, value_enum, default_value = "tproxy")]
    dns_capture: DnsCaptureArg,
    /// Lowest TTL for addresses learned for toFQDNs rules (Cilium's --tofqdns-min-ttl).
    #[arg(long, default_value = "0s", value_parser = min_ttl)]
    fqdn_min_ttl: Duration,
    /// Most names the toFQDNs cache holds; the least recently answered make room.
    #[arg(long, default_value_t = 10_000)]
    fqdn_max_names: usize,
    /// Most addresses kept per name (Cilium keeps 50).
    #[arg(long, default_value_t = 50)]
    fqdn_max_ips_per_name: usize,
    /// Check the TLS SNI or HTTP Host of connections only a toFQDNs rule allows against the
    /// rule's names (so one shared CDN address does not open every site on it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    check_server_name: bool,
    /// Let connections that only a toFQDNs rule allows pass when they carry no server name to
    /// check: protocols where the server speaks first (SMTP, SSH) or that are neither TLS nor
    /// HTTP. Off (the default), they are refused: on an address shared by many names (a CDN),
    /// any of them could be reached.
    #[arg(long)]
    allow_unnamed_fqdn_connections: bool,
    /// Trust that NodePorts are answered only at the node addresses Node objects list: set it
    /// where kube-proxy runs with `--nodeport-addresses` (`primary`, the nftables mode's
    /// default, or the nodes' CIDRs). Off (the default), kube-proxy is taken to answer them at
    /// every address of a node, listed or not (a docker0 bridge, node-local DNS), so an egress
    /// connection to any address that is no pod's, on a NodePort's number, must be allowed to
    /// every ready backend of that Service too.
    #[arg(long)]
    node_ports_only_at_listed_addresses: bool,
    /// How long to wait for a destination to accept.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How often the policy directory is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Audit mode: would-be denials pass and are logged with verdict AUDIT (also per pod with
    /// the annotation podwall.io/enforcement: audit).
    #[arg(long)]
    audit: bool,
    /// Keep established connections that a policy change no longer allows (default: TCP is
    /// reset, and running UDP, SCTP and ping flows lose their conntrack entry).
    #[arg(long)]
    keep_revoked_connections: bool,
    /// The path `proxy init --l4-path` gave TCP (the same PODWALL_L4_PATH): on the kernel
    /// path the sidecar follows conntrack's changes from the start, for the ends of the
    /// connections the kernel carries.
    #[arg(long, value_enum, default_value = "proxy", env = "PODWALL_L4_PATH")]
    l4_path: L4PathArg,
    /// The mark on every socket the sidecar opens (`proxy init --proxy-mark`), which the init
    /// rules let pass; setting it needs NET_ADMIN.
    #[arg(long, default_value_t = podwall_proxy::exempt::DEFAULT_MARK, value_parser = parse_mark)]
    proxy_mark: u32,
    /// Worker threads moving bytes.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The NFQUEUE queue the init rules send new UDP, SCTP and ping flows to (`proxy init
    /// --packet-queue`); the sidecar judges them there.
    #[arg(long, default_value_t = podwall_proxy::init::DEFAULT_PACKET_QUEUE)]
    packet_queue: u16,
    /// How many queues from --packet-queue on the init rules spread new flows over (`proxy
    /// init --packet-queues`, the same PODWALL_PACKET_QUEUES); each is judged on a thread of
    /// its own.
    #[arg(long, default_value_t = 1, env = "PODWALL_PACKET_QUEUES", value_parser = clap::value_parser!(u16).range(1..=64))]
    packet_queues: u16,
    /// Do not judge UDP, SCTP and ping flows (for init rules written with --no-packet-filter).
    #[arg(long)]
    no_packet_filter: bool,
}

/// `--fqdn-min-ttl`: a duration of at most a day (an address outliving its name's answers
/// longer than that is no cache any more).
fn min_ttl(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("{value}: at most 24h"));
    }
    Ok(d)
}

pub(crate) fn run(cmd: ProxyCommand) -> ExitCode {
    match cmd {
        ProxyCommand::Init(args) => init(args),
        ProxyCommand::Run(args) => run_sidecar(args),
    }
}

/// A mark in decimal or `0x` hex, not zero (zero is no mark at all).
fn parse_mark(s: &str) -> Result<u32, String> {
    let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a mark (decimal or 0x hex): {e}"))?;
    if n == 0 {
        return Err("the mark must not be 0 (that is every unmarked packet)".into());
    }
    use podwall_proxy::init::{DNS_MARK, KERNEL_MARK, PROXY_MARK};
    if [DNS_MARK, KERNEL_MARK, PROXY_MARK].contains(&n) {
        return Err(format!("{n:#x} is one of podwall's own marks"));
    }
    Ok(n)
}

fn init(args: InitArgs) -> ExitCode {
    if let Some(dir) = args.save_pod_files.as_deref()
        && !args.dry_run
        && !args.remove
        && let Err(e) = podwall_proxy::lookup::save_pod_files(dir)
    {
        eprintln!("podwall: --save-pod-files: cannot save the pod's name files: {e}");
        return ExitCode::FAILURE;
    }
    let config = InitConfig {
        proxy_mark: args.proxy_mark,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        dns_port: args.dns_port,
        admin_port: args.admin_port,
        capture_dns: args.capture_dns,
        dns_capture: match args.dns_capture {
            DnsCaptureArg::Tproxy => DnsCapture::Tproxy,
            DnsCaptureArg::Redirect => DnsCapture::Redirect,
        },
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
        packet_queue: (!args.no_packet_filter).then_some(args.packet_queue),
        packet_queues: args.packet_queues,
        l4_path: match args.l4_path {
            L4PathArg::Proxy => L4Path::Proxy,
            L4PathArg::Kernel => L4Path::Kernel,
        },
    };
    let mut families = vec![(Family::V4, Coverage::Capture)];
    let v6 = match args.ipv6 {
        Ipv6Mode::On => Some(Coverage::Capture),
        Ipv6Mode::Lockdown => Some(Coverage::Lockdown),
        Ipv6Mode::Off => None,
        Ipv6Mode::Auto => {
            podwall_proxy::init::ipv6_coverage(podwall_proxy::init::ipv6_addresses().as_deref())
        }
    };
    if let Some(coverage) = v6 {
        families.push((Family::V6, coverage));
    } else if args.ipv6 == Ipv6Mode::Off && !args.remove {
        eprintln!(
            "podwall: warning: --ipv6 off: no IPv6 rules, so IPv6 traffic of this pod is NOT enforced"
        );
    }
    if args.remove {
        // Whatever was installed, both families.
        families = vec![
            (Family::V4, Coverage::Capture),
            (Family::V6, Coverage::Capture),
        ];
    }
    for (family, coverage) in families {
        let tool = if family == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        if args.dry_run {
            if coverage == Coverage::Capture {
                for cmd in config.route_commands(family) {
                    println!("{}", cmd.join(" "));
                }
            }
            println!("# {tool}-restore --noflush");
            print!(
                "{}",
                config.restore_input(family, coverage, &podwall_proxy::init::Saved::default())
            );
            continue;
        }
        let result = if args.remove {
            match podwall_proxy::init::remove(family) {
                // A namespace without IPv6 has nothing to remove there.
                Err(_)
                    if family == Family::V6 && podwall_proxy::init::ipv6_addresses().is_none() =>
                {
                    Ok(())
                }
                r => r,
            }
        } else {
            config.apply(family, coverage)
        };
        match result {
            Ok(()) => eprintln!(
                "podwall: {tool} rules {}",
                match (args.remove, coverage) {
                    (true, _) => "removed",
                    (false, Coverage::Capture) => "installed",
                    (false, Coverage::Lockdown) =>
                        "installed (no global IPv6 address: all IPv6 but loopback is dropped)",
                }
            ),
            Err(e) => {
                eprintln!("podwall: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.dry_run && !args.remove {
        match podwall_proxy::init::reserve_ports(&config.listener_ports()) {
            Ok(()) => eprintln!(
                "podwall: ports {:?} reserved from outgoing connections",
                config.listener_ports()
            ),
            Err(e) => eprintln!("podwall: warning: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// The toFQDNs cache's bounds as the flags give them.
fn fqdn_cache(args: &RunArgs) -> podwall_fqdn::cache::CacheConfig {
    podwall_fqdn::cache::CacheConfig {
        max_names: args.fqdn_max_names,
        max_ips_per_name: args.fqdn_max_ips_per_name,
        min_ttl: args.fqdn_min_ttl,
    }
}

fn run_sidecar(args: RunArgs) -> ExitCode {
    crate::cli::logging::init();
    let (dir, control) = match (
        args.policy_source.strip_prefix("dir:"),
        args.policy_source.strip_prefix("control:"),
    ) {
        (Some(d), _) => (Some(PathBuf::from(d)), None),
        (_, Some(c)) => (None, Some(c.to_string())),
        _ => {
            eprintln!(
                "podwall: --policy-source {:?}: expected control:HOST:PORT or dir:PATH",
                args.policy_source
            );
            return ExitCode::from(2);
        }
    };
    let identity = Identity {
        namespace: args.pod_namespace.clone(),
        name: args.pod_name.clone(),
    };
    let mut config = ProxyConfig::new(identity);
    config.inbound = SocketAddr::from(([0, 0, 0, 0], args.inbound_port));
    config.outbound = vec![SocketAddr::from(([127, 0, 0, 1], args.outbound_port))];
    config.dns = vec![SocketAddr::from(([127, 0, 0, 1], args.dns_port))];
    if podwall_proxy::init::has_ipv6(&podwall_proxy::init::ipv6_addresses().unwrap_or_default()) {
        // Dual-stack: one inbound listener for both families, loopback listeners for each.
        config.inbound = SocketAddr::from(([0u16; 8], args.inbound_port));
        config.outbound.push(SocketAddr::from((
            [0, 0, 0, 0, 0, 0, 0, 1],
            args.outbound_port,
        )));
        config
            .dns
            .push(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], args.dns_port)));
    }
    config.admin = SocketAddr::from(([0, 0, 0, 0], args.admin_port));
    config.dns_upstream = args.dns_upstream;
    config.names = match podwall_proxy::lookup::SystemNames::read(args.pod_files.as_deref()) {
        Ok(names) => names,
        Err(e) => {
            eprintln!(
                "podwall: --pod-files: cannot read the pod's name files that `proxy init --save-pod-files` saves: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    config.dns_transparent = args.dns_capture == DnsCaptureArg::Tproxy;
    config.fqdn_cache = fqdn_cache(&args);
    config.check_server_name = args.check_server_name;
    config.allow_unnamed_fqdn = args.allow_unnamed_fqdn_connections;
    config.node_ports_only_at_listed_addresses = args.node_ports_only_at_listed_addresses;
    config.packet_queue = (!args.no_packet_filter).then_some(args.packet_queue);
    config.packet_queues = args.packet_queues;
    config.connect_timeout = args.connect_timeout;
    config.audit = args.audit;
    config.keep_revoked = args.keep_revoked_connections;
    config.kernel_path = args.l4_path == L4PathArg::Kernel;

    // Before any thread starts: an arena per worker thread, not one per thread that allocates.
    podwall_proxy::limit_malloc_arenas(args.threads);
    // One thread: tokio's current-thread scheduler, with no cross-thread work stealing to pay
    // for; more: the multi-thread one.
    let mut builder = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    // Blocking-pool threads (policy compiles, source reads) exit a second after their work,
    // before the resident code is settled two seconds after a policy update.
    builder.thread_keep_alive(std::time::Duration::from_secs(1));
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podwall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source: Box<dyn podwall_proxy::PolicySource> = match (dir, control) {
        (Some(path), _) => Box::new(DirSource {
            path,
            poll: args.poll_interval,
        }),
        (None, Some(addr)) => {
            let ca = match (&args.control_ca, std::env::var("PODWALL_CONTROL_CA")) {
                (Some(path), _) => match std::fs::read(path) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        eprintln!("podwall: --control-ca {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                (None, Ok(pem)) if !pem.trim().is_empty() => Some(pem.into_bytes()),
                _ => None,
            };
            let tls = match ca.map(|pem| podwall_proxy::feed_client::tls_connector(&pem)) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    eprintln!("podwall: {e}");
                    return ExitCode::from(2);
                }
                None => None,
            };
            if tls.is_none() && args.token_file.is_some() {
                if !args.insecure_plaintext_feed {
                    eprintln!(
                        "podwall: --token-file: the pod's token would go to control:{addr} in the clear; \
                         give the control plane's CA with --control-ca FILE (or PODWALL_CONTROL_CA, which \
                         injection sets from controlPlaneCa in its config), or --insecure-plaintext-feed \
                         to send it unprotected (local use only)"
                    );
                    return ExitCode::from(2);
                }
                tracing::warn!(
                    control = %addr,
                    "--insecure-plaintext-feed: the pod's token goes to the control plane over plaintext HTTP/2; anyone on the path can read it"
                );
            }
            Box::new(podwall_proxy::feed_client::ControlSource {
                addr,
                identity: config.identity.clone(),
                token_file: args.token_file.clone(),
                tls,
                silence: podwall_proxy::feed_client::SILENCE,
                names: config.names.clone(),
            })
        }
        (None, None) => return ExitCode::from(2),
    };
    // After the arguments are checked: a usage error needs no privilege to be told.
    if let Err(e) = podwall_proxy::exempt::set_mark(args.proxy_mark) {
        eprintln!("podwall: {e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async move {
        tokio::select! {
            r = podwall_proxy::run(config, source) => r,
            _ = crate::cli::shutdown_signal() => {
                tracing::info!("stopping");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podwall: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--policy-source dir:PATH`: the control crate's directory watch, as the sidecar's source.
struct DirSource {
    path: PathBuf,
    poll: Duration,
}

impl podwall_proxy::PolicySource for DirSource {
    fn run(
        self: Box<Self>,
        publish: tokio::sync::watch::Sender<Option<std::sync::Arc<podwall_policy::ClusterState>>>,
        _metrics: std::sync::Arc<podwall_proxy::metrics::Metrics>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(podwall_control::source::dir_watch::watch_paths(
            vec![self.path],
            self.poll,
            publish,
        ))
    }

    fn describe(&self) -> String {
        format!("dir:{} (every {:?})", self.path.display(), self.poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    fn parse(flags: &[&str]) -> RunArgs {
        let mut argv = vec![
            "run",
            "--pod-namespace",
            "t",
            "--pod-name",
            "a",
            "--policy-source=dir:/p",
        ];
        argv.extend_from_slice(flags);
        Run::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn the_fqdn_cache_keeps_10000_names_and_50_addresses_each_with_no_ttl_floor_unless_told() {
        let defaults = fqdn_cache(&parse(&[]));
        assert_eq!(defaults, podwall_fqdn::cache::CacheConfig::default());
        assert_eq!(
            (
                defaults.max_names,
                defaults.max_ips_per_name,
                defaults.min_ttl
            ),
            (10_000, 50, Duration::ZERO)
        );
        let set = fqdn_cache(&parse(&[
            "--fqdn-max-names=7",
            "--fqdn-max-ips-per-name=3",
            "--fqdn-min-ttl=30s",
        ]));
        assert_eq!(
            (set.max_names, set.max_ips_per_name, set.min_ttl),
            (7, 3, Duration::from_secs(30))
        );
    }
}

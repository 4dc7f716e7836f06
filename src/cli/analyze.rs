//! `podwall analyze matrix | check | lint`.
//!
//! Exit codes: 0 fine; 1 findings (lint) or denied (check); 2 bad usage or unreadable input.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use podwall_control::source::{load_paths, read_paths};
use podwall_policy::Loader;
use podwall_policy::analyze::lint::lint;
use podwall_policy::analyze::matrix::Matrix;
use podwall_policy::locate::point_at_fields;
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
    /// isolated, by which policies, and which policy and rule allowed it. With --http-*, the
    /// request is judged too: "http" says which HTTP rule allowed it on each side or the status
    /// the client gets (403, or 400 for a path that is refused), and "allowed" covers both.
    Check(CheckArgs),
    /// Report invalid policies and the mistakes operators make with valid ones.
    ///
    /// Exit code 1 when there is any finding.
    Lint(LintArgs),
    /// Draw who may talk to whom: pods as nodes grouped by namespace, an edge for each pair the
    /// policies allow (labelled with the ports), and with --flows what was observed on top
    /// (denied in red, audited in amber, allowed and seen in bold). Mermaid, Graphviz DOT, or
    /// an SVG drawn here (no Graphviz needed).
    Graph(GraphArgs),
}

/// Output format of `graph`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GraphFormat {
    /// A Mermaid flowchart (GitHub and most Markdown renderers draw it).
    Mermaid,
    /// Graphviz DOT (`dot -Tsvg`), namespaces as clusters.
    Dot,
    /// An SVG image.
    Svg,
}

/// `analyze graph` arguments.
#[derive(Args, Debug)]
pub(crate) struct GraphArgs {
    #[command(flatten)]
    input: Input,
    /// One destination port (default: every port a container declares).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// The protocol (default TCP; without --port, every protocol containers declare).
    #[arg(long, ignore_case = true)]
    protocol: Option<ProtocolArg>,
    /// Flow events (`podwall observe -o json`, or a sidecar's log) to draw over the policies.
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "mermaid")]
    output: GraphFormat,
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
    /// Ping (ICMP/ICMPv6 echo), which has no port: allowed only by rules without `ports`.
    Icmp,
    /// Any other IP protocol (UDP-Lite, GRE, ...), which has no port either: allowed only by
    /// rules without `ports`.
    Other,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
            ProtocolArg::Sctp => Protocol::Sctp,
            ProtocolArg::Icmp => Protocol::Icmp,
            ProtocolArg::Other => Protocol::Other,
        }
    }
}

/// The port to ask about: ICMP and other protocols have none (the engine asks them as port
/// 0), TCP, UDP and SCTP need one.
fn query_port(protocol: Protocol, port: Option<u16>) -> Result<u16, String> {
    match (protocol, port) {
        (Protocol::Icmp | Protocol::Other, None) => Ok(0),
        (Protocol::Icmp | Protocol::Other, Some(_)) => {
            Err(format!("--protocol {protocol} takes no --port"))
        }
        (_, Some(port)) => Ok(port),
        (_, None) => Err("--port is required (except with --protocol ICMP or OTHER)".into()),
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
    /// The destination: NAMESPACE/POD, or an IP address (a pod's, or an outside one). With
    /// --to-fqdn, the address learned for the name (default 192.0.2.1); with --dns-query, the
    /// resolver (default: the cluster DNS, pods k8s-app=kube-dns).
    #[arg(long, value_name = "NS/POD|IP", required_unless_present_any = ["to_fqdn", "dns_query"])]
    to: Option<String>,
    /// The destination port (53 with --dns-query; none with --protocol ICMP or OTHER).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// The protocol (TCP; UDP with --dns-query). ICMP asks about ping, OTHER about any other IP protocol.
    #[arg(long, ignore_case = true)]
    protocol: Option<ProtocolArg>,
    /// A connection to an address outside the cluster that the source pod's DNS answer gave
    /// for this name: the toFQDNs rules whose names match it apply.
    #[arg(long, value_name = "NAME", conflicts_with = "dns_query")]
    to_fqdn: Option<String>,
    /// A DNS query for this name from the source pod: may it reach the resolver, and do the DNS
    /// rules allow the name? A refused query gets REFUSED.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["http_method", "http_path", "http_host", "http_header"])]
    dns_query: Option<String>,
    /// Judge an HTTP request on the connection too: its method (default GET when another
    /// --http-* flag is given).
    #[arg(long, value_name = "METHOD")]
    http_method: Option<String>,
    /// The request path (with query), e.g. /api/v1/orders?x=1 (default /).
    #[arg(long, value_name = "PATH")]
    http_path: Option<String>,
    /// The request's Host.
    #[arg(long, value_name = "HOST")]
    http_host: Option<String>,
    /// A request header, 'Name: value' (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    http_header: Vec<String>,
    /// As the sidecar's flag: trust that NodePorts are answered only at the node addresses
    /// Node objects list. Without it, a connection to any other address that is no pod's, on a
    /// NodePort's number, must be allowed to every ready backend of that Service too.
    #[arg(long)]
    node_ports_only_at_listed_addresses: bool,
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
        AnalyzeCommand::Graph(args) => graph(args),
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
    let ports = ports_asked(&state, args.port, args.protocol)?;
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

/// The (protocol, port) pairs a matrix or graph covers: the one asked for, or every one a
/// container declares.
fn ports_asked(
    state: &ClusterState,
    port: Option<u16>,
    protocol: Option<ProtocolArg>,
) -> Result<Vec<(Protocol, u16)>, String> {
    Ok(match (port, protocol) {
        (port, Some(p @ (ProtocolArg::Icmp | ProtocolArg::Other))) => {
            let protocol = Protocol::from(p);
            vec![(protocol, query_port(protocol, port)?)]
        }
        (Some(port), protocol) => {
            vec![(protocol.map(Protocol::from).unwrap_or(Protocol::Tcp), port)]
        }
        (None, _) => {
            let wanted = protocol.map(Protocol::from);
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
    })
}

fn graph(args: GraphArgs) -> Result<ExitCode, String> {
    use podwall_policy::analyze::graph::{Graph, Observation, Seen};
    let (state, report) = load(&args.input)?;
    print_load_report(&report);
    let ports = ports_asked(&state, args.port, args.protocol)?;
    let engine = Engine::compile(state);
    let matrices: Vec<Matrix> = ports
        .iter()
        .map(|(protocol, port)| Matrix::compute(&engine, *protocol, *port))
        .collect();
    let mut observed = Vec::new();
    if let Some(path) = &args.flows {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--flows {}: {e}", path.display()))?;
        for flow in text.lines().filter_map(podwall_control::observe::parse) {
            // An HTTP request's 403 is not its connection's verdict: the connection has its own
            // event.
            if flow["l7"]["http"].is_object() {
                continue;
            }
            let end = |w: &str| match (flow[w]["namespace"].as_str(), flow[w]["pod"].as_str()) {
                (Some(ns), Some(p)) => Some(format!("{ns}/{p}")),
                _ => flow[w]["ip"].as_str().map(str::to_string),
            };
            let (Some(from), Some(to)) = (end("source"), end("destination")) else {
                continue;
            };
            let seen = match flow["verdict"].as_str() {
                Some("DENIED") => Seen::Denied,
                Some("AUDIT") => Seen::Audit,
                _ => Seen::Allowed,
            };
            observed.push(Observation {
                from,
                to,
                port: format!(
                    "{}/{}",
                    flow["protocol"].as_str().unwrap_or("?"),
                    flow["destination"]["port"]
                ),
                seen,
            });
        }
    }
    let g = Graph::build(&matrices, &observed);
    match args.output {
        GraphFormat::Mermaid => print!("{}", g.mermaid()),
        GraphFormat::Dot => print!("{}", g.dot(true)),
        GraphFormat::Svg => print!("{}", svg(&g.dot(false))?),
    }
    Ok(ExitCode::SUCCESS)
}

/// DOT drawn as SVG by layout-rs (pure Rust; it draws no clusters, so nodes carry their
/// namespace). A panic in the renderer is an error, not a crash.
fn svg(dot: &str) -> Result<String, String> {
    let dot = dot.to_string();
    std::panic::catch_unwind(move || {
        let mut parser = layout::gv::DotParser::new(&dot);
        let ast = parser.process()?;
        let mut builder = layout::gv::GraphBuilder::new();
        builder.visit_graph(&ast);
        let mut graph = builder.get();
        let mut writer = layout::backends::svg::SVGWriter::new();
        graph.do_it(false, false, false, &mut writer);
        Ok::<String, String>(stable_styles(&writer.finalize()))
    })
    .map_err(|_| "the SVG renderer failed on this graph; use -o dot with Graphviz".to_string())?
    .map_err(|e| format!("the graph's DOT did not parse: {e}"))
}

/// The renderer writes its font classes in hash order: sorted, the same graph gives the same
/// file (the docs' SVG is compared with a fresh one).
fn stable_styles(svg: &str) -> String {
    let (Some(start), Some(end)) = (svg.find("<style>\n"), svg.find("</style>")) else {
        return svg.to_string();
    };
    let body = &svg[start + "<style>\n".len()..end];
    let mut lines: Vec<&str> = body.lines().collect();
    lines.sort_unstable();
    format!(
        "{}<style>\n{}\n{}",
        &svg[..start],
        lines.join("\n"),
        &svg[end..]
    )
}

fn endpoint(state: &ClusterState, spec: &str, flag: &str) -> Result<Endpoint, String> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        // An IPv4-mapped IPv6 address is the IPv4 one on the wire.
        return Ok(Endpoint::Ip(ip.to_canonical()));
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
    if let Some(name) = args.dns_query.clone() {
        return dns_check(args, state, &name);
    }
    // An address learned for a name: the one given, or a documentation address standing for it.
    let to = match (&args.to, &args.to_fqdn) {
        (Some(to), _) => to.clone(),
        (None, Some(_)) => "192.0.2.1".to_string(),
        (None, None) => return Err("--to is required".into()),
    };
    let protocol = args.protocol.map(Protocol::from).unwrap_or(Protocol::Tcp);
    let mut query = Query {
        src: endpoint(&state, &args.from, "from")?,
        dst: endpoint(&state, &to, "to")?,
        protocol,
        port: query_port(protocol, args.port)?,
    };
    let engine = Engine::compile(state);
    let names = match (&args.to_fqdn, query.src) {
        (Some(name), Endpoint::Pod(pod)) => {
            let matcher =
                podwall_fqdn::Matcher::new(engine.fqdn_selectors()).map_err(|e| e.to_string())?;
            let own = engine.egress_fqdn(pod);
            matcher
                .matching(name)
                .into_iter()
                .filter(|id| own.binary_search(id).is_ok())
                .collect()
        }
        (Some(_), Endpoint::Ip(_)) => {
            return Err("--to-fqdn needs --from to be a pod (names are learned per pod)".into());
        }
        (None, _) => Vec::new(),
    };
    // A Service's address (cluster IP, NodePort, external or load balancer IP): as the sidecar
    // does, the backends it leads to are judged, and the connection goes to one policy allows.
    let service = match (query.src, query.dst) {
        (Endpoint::Pod(_), Endpoint::Ip(ip)) => engine
            .state()
            .services
            .lookup(ip, query.port, protocol)
            .map(|svc| (svc.clone(), SocketAddr::new(ip, query.port))),
        _ => None,
    };
    let mut backend = None;
    // Over TCP the proxy connects to a backend policy allows; a UDP or SCTP flow goes where
    // the node sends it, so every backend must be allowed.
    let every = protocol != Protocol::Tcp;
    if let Some((svc, dialled)) = &service {
        let to_backend = |&(ip, port): &(IpAddr, u16)| Query {
            dst: Endpoint::Ip(ip),
            port,
            ..query
        };
        let allowed = |b: &&(IpAddr, u16)| {
            engine
                .explain(&engine.verdict_learned(&to_backend(b), &names))
                .allowed
        };
        let chosen = if every {
            svc.backends.iter().find(|b| !allowed(b))
        } else {
            svc.backends.iter().find(allowed)
        };
        let Some(chosen) = chosen.or(svc.backends.first()) else {
            let reason = format!(
                "{dialled} is an address of service {}, which has no ready endpoint: refused",
                svc.service
            );
            match args.output {
                ReportFormat::Text => println!("{reason}"),
                ReportFormat::Json => println!(
                    "{}",
                    serde_json::json!({
                        "allowed": false,
                        "reason": reason,
                        "service": {"name": &*svc.service, "address": dialled.to_string(), "backends": 0},
                    })
                ),
            }
            return Ok(ExitCode::from(EXIT_FINDINGS));
        };
        query = to_backend(chosen);
        backend = Some(SocketAddr::new(chosen.0, chosen.1));
    }
    let verdict = engine.verdict_learned(&query, &names);
    let explanation = engine.explain(&verdict);
    // Not a Service's known address, but maybe an unlisted one of a node, where kube-proxy
    // answers NodePorts too: as the sidecar judges it, every backend must be allowed as well.
    let node_port = match (query.src, query.dst) {
        (Endpoint::Pod(_), Endpoint::Ip(ip))
            if service.is_none()
                && explanation.allowed
                && !args.node_ports_only_at_listed_addresses =>
        {
            engine
                .unlisted_node_port(ip, query.port, protocol)
                .map(|svc| node_port_doubt(&engine, &query, svc, SocketAddr::new(ip, query.port)))
        }
        _ => None,
    };
    let service = service.zip(backend).map(|((svc, dialled), backend)| {
        let n = svc.backends.len();
        let how = match (every, explanation.allowed) {
            (false, true) => "one policy allows",
            (false, false) => "as policy allows none of them",
            (true, true) => "policy allows every one (the node picks which)",
            (true, false) => "one policy denies (the node picks which)",
        };
        serde_json::json!({
            "name": &*svc.service,
            "address": dialled.to_string(),
            "backends": n,
            "judged": backend.to_string(),
            "summary": format!(
                "{dialled} is an address of service {} ({n} ready endpoint{}): judged for {backend}, {how}",
                svc.service,
                if n == 1 { "" } else { "s" },
            ),
        })
    });
    let wants_http = args.http_method.is_some()
        || args.http_path.is_some()
        || args.http_host.is_some()
        || !args.http_header.is_empty();
    let http = if wants_http && explanation.allowed {
        let request = http_request(&args)?;
        Some(
            podwall_l7::explain_request(&engine, &verdict, &request)
                .map_err(|e| format!("an HTTP rule does not compile: {e}"))?,
        )
    } else {
        None
    };
    let allowed = explanation.allowed
        && http.as_ref().is_none_or(|h| h.allowed)
        && node_port.as_ref().is_none_or(|n| n["allowed"] == true);
    let fqdn = args.to_fqdn.as_ref().map(|name| {
        let selectors: Vec<String> = names
            .iter()
            .map(|id| engine.fqdn_selectors()[id.0 as usize].to_string())
            .collect();
        serde_json::json!({
            "name": podwall_fqdn::canonical(name),
            "address": to,
            "selectors": selectors,
        })
    });
    match args.output {
        ReportFormat::Text => {
            if let (Some(name), Some(f)) = (&args.to_fqdn, &fqdn) {
                let sel = f["selectors"].as_array().map(Vec::len).unwrap_or(0);
                println!(
                    "{to} stands for an address the pod's DNS answer gave for {name}; {}",
                    if sel == 0 {
                        "no toFQDNs rule of the pod selects that name".to_string()
                    } else {
                        format!("it matches {}", f["selectors"])
                    }
                );
            }
            if let Some(s) = &service {
                println!("{}", s["summary"].as_str().unwrap_or_default());
            }
            print!("{explanation}");
            if let Some(n) = &node_port {
                println!("{}", n["summary"].as_str().unwrap_or_default());
            }
            if let Some(h) = &http {
                print!("{h}");
            } else if wants_http {
                println!("\nHTTP: the connection is refused, so no request is made");
            }
        }
        ReportFormat::Json => {
            let mut v = serde_json::to_value(&explanation).map_err(|e| e.to_string())?;
            v["allowed"] = serde_json::json!(allowed);
            if let Some(h) = &http {
                v["http"] = serde_json::to_value(h).map_err(|e| e.to_string())?;
            }
            if let Some(f) = fqdn {
                v["fqdn"] = f;
            }
            if let Some(s) = service {
                v["service"] = s;
            }
            if let Some(n) = node_port {
                v["node_port"] = n;
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FINDINGS)
    })
}

/// What `check` says of a connection to `dialled`, an address that may be a node's unlisted
/// one, at `svc`'s NodePort: allowed only when the source's own policies allow every ready
/// backend, with no HTTP or DNS rules on any (the sidecar's `admit::node_port_doubt`).
fn node_port_doubt(
    engine: &Engine,
    query: &Query,
    svc: &podwall_policy::services::ServicePort,
    dialled: SocketAddr,
) -> serde_json::Value {
    let failing = svc.backends.iter().find_map(|&(ip, port)| {
        let verdict = engine.verdict_learned(
            &Query {
                dst: Endpoint::Ip(ip),
                port,
                ..*query
            },
            &[],
        );
        let backend = SocketAddr::new(ip, port);
        // The source's own policies: the node source-NATs what it forwards.
        if !verdict.egress.allowed() {
            Some((backend, "the source's policies deny it"))
        } else if verdict.egress.http.is_some() || verdict.egress.dns.is_some() {
            Some((
                backend,
                "allowed only under HTTP or DNS rules, which nothing applies there",
            ))
        } else {
            None
        }
    });
    let n = svc.backends.len();
    let summary = match failing {
        Some((backend, why)) => format!(
            "but {dialled} may be an address of a node that no Node object lists, where kube-proxy \
             takes NodePort {} to service {} ({n} ready endpoint{}): refused, as its endpoint \
             {backend} is not plainly allowed ({why}); --node-ports-only-at-listed-addresses \
             trusts the listed addresses",
            dialled.port(),
            svc.service,
            if n == 1 { "" } else { "s" },
        ),
        None if n == 0 => format!(
            "{dialled} may be an address of a node where kube-proxy takes NodePort {} to service \
             {}, which has no endpoint: it leads nowhere",
            dialled.port(),
            svc.service,
        ),
        None => format!(
            "{dialled} may be an address of a node where kube-proxy takes NodePort {} to service \
             {}: policy allows every one of its {n} ready endpoint{} too",
            dialled.port(),
            svc.service,
            if n == 1 { "" } else { "s" },
        ),
    };
    serde_json::json!({
        "allowed": failing.is_none(),
        "service": &*svc.service,
        "address": dialled.to_string(),
        "backends": n,
        "refused_for": failing.map(|(b, _)| b.to_string()),
        "summary": summary,
    })
}

/// `check --dns-query NAME`: the verdict of the resolver and the DNS rules on a query.
fn dns_check(args: CheckArgs, state: ClusterState, name: &str) -> Result<ExitCode, String> {
    use podwall_fqdn::decide::{DnsQuery, DnsReason, decide};
    let Endpoint::Pod(pod) = endpoint(&state, &args.from, "from")? else {
        return Err("--dns-query needs --from to be a pod".into());
    };
    // The resolver: the one given, else the cluster DNS. Queries for the pod's toFQDNs names
    // may reach the cluster DNS (the pod's configured resolver) without a rule.
    let dns_pods: Vec<_> = state.cluster_dns_pods().collect();
    let (resolver, trusted) = match &args.to {
        Some(to) => match endpoint(&state, to, "to")? {
            Endpoint::Pod(p) => (
                state
                    .pod(p)
                    .ips
                    .first()
                    .copied()
                    .ok_or_else(|| format!("--to {to}: the pod has no address"))?,
                dns_pods.contains(&p),
            ),
            Endpoint::Ip(ip) => (ip, dns_pods.iter().any(|p| state.pod(*p).ips.contains(&ip))),
        },
        None => {
            let first = dns_pods.first().ok_or(
                "no resolver: the input has no cluster DNS pod (k8s-app=kube-dns); pass --to",
            )?;
            let ip = state
                .pod(*first)
                .ips
                .first()
                .copied()
                .ok_or("the cluster DNS pod has no address")?;
            (ip, true)
        }
    };
    let protocol = args.protocol.map(Protocol::from).unwrap_or(Protocol::Udp);
    if !matches!(protocol, Protocol::Udp | Protocol::Tcp) {
        return Err(format!(
            "--dns-query asks over UDP or TCP, not --protocol {protocol}"
        ));
    }
    let port = args.port.unwrap_or(53);
    let engine = Engine::compile(state);
    let matcher = podwall_fqdn::Matcher::new(engine.fqdn_selectors()).map_err(|e| e.to_string())?;
    let canonical = podwall_fqdn::canonical(name);
    let v = decide(
        &engine,
        &matcher,
        &DnsQuery {
            pod,
            resolver,
            protocol,
            port,
            name: &canonical,
        },
        trusted,
    );
    let selector = |id: podwall_policy::FqdnId| engine.fqdn_selectors()[id.0 as usize].to_string();
    let rule_name = |r: podwall_policy::RuleRef| {
        let info = engine.rule_info(r, None);
        format!("{} {}", info.policy, info.field)
    };
    let reason = v.reason.code();
    let detail = match &v.reason {
        DnsReason::Resolver => format!(
            "the resolver {resolver} is allowed on {protocol}/{port} and no DNS rule applies"
        ),
        DnsReason::DnsRule(r, s) => format!(
            "allowed by the DNS rule {} of {}",
            selector(*s),
            rule_name(*r)
        ),
        DnsReason::NoDnsRuleMatched(rules) => format!(
            "no DNS rule of {} matches {canonical}",
            rules
                .iter()
                .map(|r| rule_name(*r))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DnsReason::ImplicitForFqdn(s) => format!(
            "no rule allows the resolver, but {canonical} is a toFQDNs name of the pod ({}) and {resolver} is its cluster resolver: podwall lets the query through",
            selector(*s)
        ),
        DnsReason::ResolverDenied => {
            format!("the pod may not reach the resolver {resolver} on {protocol}/{port}")
        }
    };
    let rcode = if v.allowed { None } else { Some("REFUSED") };
    match args.output {
        ReportFormat::Text => {
            println!(
                "DNS query for {canonical} from {} to {resolver} ({protocol}/{port}): {}",
                args.from,
                if v.allowed { "ALLOWED" } else { "REFUSED" }
            );
            println!("  {detail}");
            // Why the resolver cannot be reached, when that is why the query is refused. (A
            // query podwall lets through for a toFQDNs name is allowed, whatever the L4 rules
            // alone would say: printing their DENIED would contradict the verdict.)
            if !v.allowed && !v.connection.allowed() {
                println!();
                print!("{}", engine.explain(&v.connection));
            }
        }
        ReportFormat::Json => {
            let mut out =
                serde_json::to_value(engine.explain(&v.connection)).map_err(|e| e.to_string())?;
            out["allowed"] = serde_json::json!(v.allowed);
            out["dns"] = serde_json::json!({
                "query": canonical,
                "resolver": resolver.to_string(),
                "allowed": v.allowed,
                "reason": reason,
                "detail": detail,
                "rcode": rcode,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
            );
        }
    }
    Ok(if v.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FINDINGS)
    })
}

fn http_request(args: &CheckArgs) -> Result<podwall_l7::Request, String> {
    let mut headers = podwall_l7::http::HeaderMap::new();
    for h in &args.http_header {
        let Some((name, value)) = h.split_once(':') else {
            return Err(format!("--http-header {h:?}: expected 'Name: value'"));
        };
        let name = podwall_l7::http::HeaderName::try_from(name.trim())
            .map_err(|e| format!("--http-header {h:?}: {e}"))?;
        // As a request carries it: bytes beyond ASCII are allowed in values (obs-text), and
        // the admission decides what they mean.
        let value = podwall_l7::http::HeaderValue::from_bytes(value.trim().as_bytes())
            .map_err(|e| format!("--http-header {h:?}: {e}"))?;
        headers.append(name, value);
    }
    Ok(podwall_l7::Request {
        method: args.http_method.clone().unwrap_or_else(|| "GET".into()),
        target: args.http_path.clone().unwrap_or_else(|| "/".into()),
        host: args.http_host.clone(),
        headers,
    })
}

fn lint_cmd(args: LintArgs) -> Result<ExitCode, String> {
    // Read once and keep the texts: findings about policies point at their fields' lines, and
    // standard input cannot be read twice.
    let files = read_paths(&args.input.paths).map_err(|e| e.to_string())?;
    let mut loader = Loader::new();
    for file in &files {
        loader
            .add_yaml(&file.name, &file.text)
            .map_err(|e| e.to_string())?;
    }
    let (state, report) = loader.finish();
    let engine = Engine::compile(state);
    let mut findings: Vec<Diagnostic> = report.diagnostics;
    let mut about_policies = lint(&engine);
    for file in &files {
        point_at_fields(&mut about_policies, &file.name, &file.text);
    }
    findings.extend(about_policies);
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

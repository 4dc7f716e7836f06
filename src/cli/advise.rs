//! `podwall advise`: policies proposed from observed flows (see `podwall_policy::advise`).
//!
//! Exit codes: 0; 1 when a proposal would still deny an observed flow (a bug: say so); 2 for
//! bad usage or unreadable input.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use podwall_policy::advise::{
    FlowEnd, ObservedFlow, ObservedRequest, advise_with_http, engine_with, pod_of,
};
use podwall_policy::{Direction, Protocol};
use serde_json::Value;

/// `advise` arguments.
#[derive(Args, Debug)]
pub(crate) struct AdviseArgs {
    /// The cluster's state: pods and namespaces (for their labels) and the policies it has
    /// (files or directories; `kubectl get ns,pods,netpol -A -o yaml`).
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    state: Vec<PathBuf>,
    /// Observed flows (`podwall observe -o json`, a sidecar's log, `-` for stdin). Allowed and
    /// audited flows are kept; denied ones are not wanted.
    #[arg(long, required = true, value_name = "FILE")]
    flows: PathBuf,
    /// Write one file per namespace (`DIR/NAMESPACE.yaml`) instead of standard output.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

fn end(flow: &Value, which: &str) -> Option<FlowEnd> {
    let e = &flow[which];
    match (e["namespace"].as_str(), e["pod"].as_str()) {
        (Some(ns), Some(pod)) => Some(FlowEnd::Pod(ns.into(), pod.into())),
        _ => e["ip"].as_str()?.parse().ok().map(FlowEnd::Ip),
    }
}

/// An end as people write it: `namespace/pod`, or the address.
fn end_name(e: &FlowEnd) -> String {
    match e {
        FlowEnd::Pod(ns, name) => format!("{ns}/{name}"),
        FlowEnd::Ip(ip) => ip.to_string(),
    }
}

/// Which side's sidecar wrote an event (`direction`), if it says.
fn seen_by(event: &Value) -> Option<Direction> {
    match event["direction"].as_str() {
        Some("egress") => Some(Direction::Egress),
        Some("ingress") => Some(Direction::Ingress),
        _ => None,
    }
}

/// The flows to keep allowed, from flow events. A destination outside the cluster is named by
/// the flow's learned names, or else by the DNS answers the source got for its address (DNS
/// events carry the answer's addresses: a workload with no FQDN policy yet learns no names).
fn observed(text: &str) -> Vec<ObservedFlow> {
    let events: Vec<Value> = text
        .lines()
        .filter_map(podwall_control::observe::parse)
        .collect();
    let mut answered: std::collections::BTreeMap<(FlowEnd, String), BTreeSet<String>> =
        Default::default();
    for e in &events {
        let dns = &e["l7"]["dns"];
        let (Some(src), Some(query)) = (end(e, "source"), dns["query"].as_str()) else {
            continue;
        };
        for ip in dns["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            answered
                .entry((src.clone(), ip.to_string()))
                .or_default()
                .insert(query.trim_end_matches('.').to_lowercase());
        }
    }
    let mut out = BTreeSet::new();
    for flow in &events {
        if !matches!(flow["verdict"].as_str(), Some("ALLOWED" | "AUDIT")) {
            continue;
        }
        // An HTTP request carries its connection's ends: it counts as the connection too,
        // whose own event is written only when it closes (a keep-alive connection still open
        // when the flows were exported has none yet).
        let protocol = match flow["protocol"].as_str() {
            Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => continue, // ping and other protocols have no port to allow by
        };
        let (Some(src), Some(dst)) = (end(flow, "source"), end(flow, "destination")) else {
            continue;
        };
        let Some(port) = flow["destination"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        let mut names: Vec<String> = ["egress", "ingress"]
            .iter()
            .filter_map(|s| flow[s]["names"].as_array())
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        if names.is_empty()
            && let Some(ip) = flow["destination"]["ip"].as_str()
            && let Some(n) = answered.get(&(src.clone(), ip.to_string()))
        {
            names.extend(n.iter().cloned());
        }
        let seen_by = seen_by(flow);
        out.insert(ObservedFlow {
            src,
            dst,
            protocol,
            port,
            names,
            seen_by,
        });
    }
    out.into_iter().collect()
}

/// The HTTP requests to keep allowed (seen by sidecars that parse HTTP: their pods have HTTP
/// rules already, or ask for it with `podwall.io/observe-http`).
fn requests(text: &str) -> Vec<ObservedRequest> {
    let mut out = BTreeSet::new();
    for e in text.lines().filter_map(podwall_control::observe::parse) {
        let http = &e["l7"]["http"];
        if !http.is_object() || !matches!(e["verdict"].as_str(), Some("ALLOWED" | "AUDIT")) {
            continue;
        }
        let (Some(src), Some(dst), Some(method), Some(path)) = (
            end(&e, "source"),
            end(&e, "destination"),
            http["method"].as_str(),
            http["path"].as_str(),
        ) else {
            continue;
        };
        let Some(port) = e["destination"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        let seen_by = seen_by(&e);
        out.insert(ObservedRequest {
            src,
            dst,
            port,
            method: method.to_string(),
            path: path.to_string(),
            seen_by,
        });
    }
    out.into_iter().collect()
}

/// Connections to an observed port that were relayed without parsing, from a source to a
/// destination the proposals give HTTP rules for on that port: nothing says what they would
/// send, and the rules would refuse whatever is not a request they list.
fn unparsed_under_http_rules(objects: &[Value], proposals: &[Value], text: &str) -> Vec<String> {
    let engine = engine_with(objects, proposals);
    let endpoint = |e: &FlowEnd| pod_of(&engine, e).map(podwall_policy::Endpoint::Pod);
    let mut out = BTreeSet::new();
    for e in text.lines().filter_map(podwall_control::observe::parse) {
        if e["reason"].as_str() != Some(podwall_proxy::flow::UNPARSED_OBSERVED) {
            continue;
        }
        let (Some(src), Some(dst)) = (end(&e, "source"), end(&e, "destination")) else {
            continue;
        };
        let Some(port) = e["destination"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        let (Some(s), Some(d)) = (endpoint(&src), endpoint(&dst)) else {
            continue;
        };
        let verdict = engine.verdict(&podwall_policy::Query {
            src: s,
            dst: d,
            protocol: Protocol::Tcp,
            port,
        });
        if verdict.ingress.http.is_some() {
            out.insert(format!(
                "{} -> {} TCP/{port}",
                end_name(&src),
                end_name(&dst)
            ));
        }
    }
    out.into_iter().collect()
}

/// Whether each request the advice covers (a pod destination that saw it itself) is allowed
/// by the state plus the proposals, judged as the sidecar judges it (L4, then the HTTP rules):
/// the ones that are not, and the ones whose HTTP rules another L4 allow switches off.
fn check_requests(
    objects: &[Value],
    proposals: &[Value],
    requests: &[ObservedRequest],
) -> (Vec<String>, Vec<String>) {
    let engine = engine_with(objects, proposals);
    let endpoint = |e: &FlowEnd| pod_of(&engine, e).map(podwall_policy::Endpoint::Pod);
    let (mut denied, mut bypassed) = (Vec::new(), Vec::new());
    for r in requests
        .iter()
        .filter(|r| r.seen_by.is_none_or(|d| d == Direction::Ingress))
    {
        // Only requests between pods: a destination outside the cluster has no sidecar of its
        // own, and its egress side depends on names learned at run time.
        let (Some(src), Some(dst)) = (endpoint(&r.src), endpoint(&r.dst)) else {
            continue;
        };
        let verdict = engine.verdict(&podwall_policy::Query {
            src,
            dst,
            protocol: Protocol::Tcp,
            port: r.port,
        });
        let what = format!(
            "{} -> {} {} {}",
            end_name(&r.src),
            end_name(&r.dst),
            r.method,
            r.path
        );
        if !verdict.allowed() {
            denied.push(format!("{what} (refused)"));
            continue;
        }
        if verdict.ingress.http.is_none() {
            bypassed.push(format!(
                "{what}: an L4 allow of port {} (a policy of the cluster, or an advised peer that also selects the source) lets every request through; the HTTP rules do not apply",
                r.port
            ));
            continue;
        }
        let status = podwall_l7::explain_request(
            &engine,
            &verdict,
            &podwall_l7::Request {
                method: r.method.clone(),
                target: r.path.clone(),
                host: None,
                headers: Default::default(),
            },
        )
        .map(|h| h.status)
        .unwrap_or(Some(403));
        if let Some(code) = status.filter(|c| *c != 200) {
            denied.push(format!("{what} (would get {code})"));
        }
    }
    (denied, bypassed)
}

pub(crate) fn run(args: AdviseArgs) -> ExitCode {
    let files = match podwall_control::source::read_paths(&args.state) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("podwall: {e}");
            return ExitCode::from(2);
        }
    };
    let mut objects = Vec::new();
    for file in &files {
        match podwall_policy::objects(&file.name, &file.text) {
            Ok(o) => objects.extend(o.into_iter().map(|(_, v)| v)),
            Err(e) => {
                eprintln!("podwall: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let text = if args.flows.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args.flows)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("podwall: --flows {}: {e}", args.flows.display());
            return ExitCode::from(2);
        }
    };
    let flows = observed(&text);
    let requests = requests(&text);
    if flows.is_empty() {
        eprintln!(
            "podwall: --flows {}: no allowed or audited flow events in it",
            args.flows.display()
        );
        return ExitCode::from(2);
    }
    let mut advice = advise_with_http(&objects, &flows, &requests);
    let proposed: Vec<Value> = advice.proposals.iter().map(|p| p.object.clone()).collect();
    let (denied, bypassed) = check_requests(&objects, &proposed, &requests);
    advice.not_allowed.extend(denied);
    advice.also_opens.extend(bypassed);
    let unparsed = unparsed_under_http_rules(&objects, &proposed, &text);
    let mut by_namespace: std::collections::BTreeMap<&str, String> = Default::default();
    for p in &advice.proposals {
        let text = by_namespace.entry(&p.namespace).or_default();
        text.push_str("---\n");
        text.push_str(&p.yaml);
    }
    match &args.out_dir {
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("podwall: {}: {e}", dir.display());
                return ExitCode::from(2);
            }
            for (ns, text) in &by_namespace {
                let path = dir.join(format!("{ns}.yaml"));
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("podwall: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                eprintln!(
                    "{}: {} policies",
                    path.display(),
                    text.matches("\n---").count() + 1
                );
            }
        }
        None => {
            for (ns, text) in &by_namespace {
                println!("# namespace {ns}");
                print!("{text}");
            }
        }
    }
    eprintln!(
        "podwall: {} flows observed, {} policies proposed, each observed flow checked: {}",
        flows.len(),
        advice.proposals.len(),
        if advice.not_allowed.is_empty() && advice.would_deny.is_empty() {
            "all allowed"
        } else {
            "SOME STILL DENIED"
        }
    );
    for r in &advice.replaced {
        eprintln!("note: {r}");
    }
    for u in &unparsed {
        eprintln!(
            "warning: {u}: it was relayed without parsing (TLS, not HTTP, or opened before podwall.io/observe-http was set), and the proposed HTTP rules would parse it: a connection like it would be refused; keep an L4 rule for it if it is wanted"
        );
    }
    for s in &advice.skipped {
        eprintln!("skipped: {s}");
    }
    for a in &advice.also_opens {
        eprintln!("note: {a}");
    }
    for w in &advice.would_deny {
        eprintln!(
            "error: {w}: this flow could not be turned into a rule, but its workload gets a policy from other flows that would deny it; fix the reason above (label the pod, give the state with it) before applying"
        );
    }
    for n in &advice.not_allowed {
        eprintln!("error: still denied with the proposals: {n}");
    }
    if !advice.not_allowed.is_empty() || !advice.would_deny.is_empty() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

//! `podwall advise`: the policies that allow what was observed, and not much more.
//!
//! From observed flows (allowed or audited) and the cluster's objects it proposes, per
//! workload, one NetworkPolicy for its ingress and one for its egress, naming peers by workload
//! labels and `kubernetes.io/metadata.name` (never pod names or pod addresses), DNS to the
//! cluster's resolver where the workload resolved names, and destinations outside the cluster as
//! a PodwallPolicy `toFQDNs` rule where a DNS answer named them, else as an `ipBlock` of the one
//! address. Every proposal is checked with the engine before it is given: each observed flow must
//! be allowed by the cluster's policies plus the proposals, and the report lists what else each
//! rule opens (pods its selectors match beyond those observed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::load::Loader;
use crate::model::{Labels, Origin, Protocol};
use crate::state::{ClusterState, PodId};
use crate::verdict::{Endpoint, Query};

/// One end of an observed flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowEnd {
    /// A pod, `namespace` and `name`.
    Pod(String, String),
    /// An address (outside the cluster, or a pod unknown to the state).
    Ip(IpAddr),
}

/// A flow that was seen and should stay allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedFlow {
    /// Who opened it.
    pub src: FlowEnd,
    /// Who it went to.
    pub dst: FlowEnd,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its destination port.
    pub port: u16,
    /// DNS names the destination address was learned for (from the source's DNS answers).
    pub names: Vec<String>,
    /// Which side's sidecar reported it: `Egress` (the source's), `Ingress` (the
    /// destination's), or `None` when unknown (both). A side that did not see a flow gets no
    /// policy from it: a destination observed only from some of its clients (a shared
    /// resolver, a service of another team) would be cut off from the rest.
    pub seen_by: Option<crate::model::Direction>,
}

/// An HTTP request that was seen and should stay allowed (from a destination whose sidecar
/// parses its HTTP: one that already has HTTP rules).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedRequest {
    /// Who sent it.
    pub src: FlowEnd,
    /// The server.
    pub dst: FlowEnd,
    /// The server's port.
    pub port: u16,
    /// The method.
    pub method: String,
    /// The path (a query is left out).
    pub path: String,
    /// Which side's sidecar reported it (see [`ObservedFlow::seen_by`]); HTTP rules are
    /// proposed only for a destination that saw the request itself.
    pub seen_by: Option<crate::model::Direction>,
}

/// A proposed policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Its namespace.
    pub namespace: String,
    /// The object.
    pub object: Value,
    /// The object as YAML, with a comment per rule naming the flows behind it.
    pub yaml: String,
}

/// What `advise` found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advice {
    /// The policies to apply, by namespace then name.
    pub proposals: Vec<Proposal>,
    /// Flows no policy can express (a pod without labels, an end unknown), and why.
    pub skipped: Vec<String>,
    /// Skipped flows whose source or destination workload still gets a policy from other
    /// flows: applying the advice would deny them. The advice must not be applied as is.
    pub would_deny: Vec<String>,
    /// Observed flows the cluster's policies plus the proposals still deny (a bug if any).
    pub not_allowed: Vec<String>,
    /// What else the proposals open: "also opens ...".
    pub also_opens: Vec<String>,
    /// Those pairs one by one: (source pod, destination pod, protocol, port) a proposed
    /// ingress rule allows that no observed flow used.
    pub extra: BTreeSet<(String, String, Protocol, u16)>,
    /// Pods of the flows that are gone, and the pod of the same workload taken in their place.
    pub replaced: Vec<String>,
}

/// Labels that name one pod or one rollout, never a workload.
const VOLATILE: [&str; 7] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "pod-template-generation",
];

/// The labels that select a pod's workload: the well-known name labels when it has them,
/// else every label but the volatile ones. Empty: it cannot be selected without its name.
pub fn workload_selector(labels: &Labels) -> BTreeMap<String, String> {
    for keys in [
        &[
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        ][..],
        &["app", "component", "tier"][..],
        &["k8s-app"][..],
    ] {
        if labels.contains_key(keys[0]) {
            return keys
                .iter()
                .filter_map(|k| labels.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
        }
    }
    stable_labels(labels)
}

fn stable_labels(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A pod's workload selector that matches its workload only: the well-known labels, widened to
/// every stable label when those also match pods of the namespace with other stable labels
/// (another component, a replica set of another role).
fn exact_selector(state: &ClusterState, id: PodId) -> BTreeMap<String, String> {
    let pod = state.pod(id);
    let sel = workload_selector(&pod.labels);
    let mine = stable_labels(&pod.labels);
    let wider = state.pod_ids().map(|o| state.pod(o)).any(|o| {
        o.namespace == pod.namespace
            && sel.iter().all(|(k, v)| o.labels.get(k) == Some(v))
            && stable_labels(&o.labels) != mine
    });
    if wider { mine } else { sel }
}

/// A DNS-1123 name part from a selector: its first value.
fn workload_name(selector: &BTreeMap<String, String>) -> String {
    let raw = selector
        .values()
        .next()
        .map(String::as_str)
        .unwrap_or("pods");
    let mut name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(40);
    name.trim_matches('-').to_string()
}

/// A peer as the proposal names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Peer {
    /// Pods of a workload in a namespace.
    Workload(String, BTreeMap<String, String>),
    /// One address outside the cluster.
    Address(IpAddr),
    /// A DNS name (egress only, a PodwallPolicy toFQDNs rule).
    Name(String),
}

impl Peer {
    fn describe(&self) -> String {
        match self {
            Peer::Workload(ns, sel) => format!("{ns}/{}", selector_text(sel)),
            Peer::Address(ip) => ip.to_string(),
            Peer::Name(n) => n.clone(),
        }
    }
}

fn selector_text(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `{kubernetes.io/metadata.name: ns}` + the workload's labels, as a NetworkPolicy peer seen
/// from a policy in `home`.
fn peer_json(peer: &Peer, home: &str) -> Value {
    match peer {
        Peer::Workload(ns, sel) if ns == home => json!({"podSelector": {"matchLabels": sel}}),
        Peer::Workload(ns, sel) => json!({
            "namespaceSelector": {"matchLabels": {crate::model::NAMESPACE_NAME_LABEL: ns}},
            "podSelector": {"matchLabels": sel}}),
        Peer::Address(ip) => {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            json!({"ipBlock": {"cidr": format!("{ip}/{bits}")}})
        }
        Peer::Name(_) => Value::Null,
    }
}

/// The (method, path) pairs seen from each (source workload, port).
type HttpSeen = BTreeMap<(Workload, u16), BTreeSet<(String, String)>>;

/// A workload: its namespace and the labels that select it.
type Workload = (String, BTreeMap<String, String>);

/// Rules by (namespace, workload selector), then by peer.
type Rules = BTreeMap<(String, BTreeMap<String, String>), BTreeMap<Peer, RuleFlows>>;

/// Ports and the flows behind a rule.
#[derive(Default)]
struct RuleFlows {
    ports: BTreeSet<(Protocol, u16)>,
    flows: BTreeSet<String>,
}

/// Adds PodwallPolicies with HTTP rules for the requests seen: per destination workload and
/// port, each source workload may send the methods and paths it was seen sending (each path
/// exactly: a regular expression of the path, escaped). Judging them needs the HTTP rules'
/// engine (`podwall_l7`), which the caller runs on the result.
fn advise_http(
    objects: &[Value],
    requests: &[ObservedRequest],
    advice: &mut Advice,
) -> BTreeSet<(Workload, Workload, u16)> {
    let mut covered = BTreeSet::new();
    let engine = engine_with(objects, &[]);
    let state = engine.state();
    let pod_of = |end: &FlowEnd| pod_of(&engine, end);
    // (dst workload) -> (src workload, port) -> {(method, path)}
    let mut by_dst: BTreeMap<Workload, HttpSeen> = BTreeMap::new();
    for r in requests.iter().filter(|r| {
        r.seen_by
            .is_none_or(|d| d == crate::model::Direction::Ingress)
    }) {
        let (Some(src), Some(dst)) = (pod_of(&r.src), pod_of(&r.dst)) else {
            advice.skipped.push(format!(
                "HTTP {} {} to port {}: an end is not a pod of the state",
                r.method, r.path, r.port
            ));
            continue;
        };
        let (s, d) = (exact_selector(state, src), exact_selector(state, dst));
        if s.is_empty() || d.is_empty() {
            advice.skipped.push(format!(
                "HTTP {} {}: a pod without labels to select it by",
                r.method, r.path
            ));
            continue;
        }
        let path = r.path.split('?').next().unwrap_or(&r.path).to_string();
        let (sw, dw) = (
            (state.pod(src).namespace.clone(), s),
            (state.pod(dst).namespace.clone(), d),
        );
        covered.insert((dw.clone(), sw.clone(), r.port));
        by_dst
            .entry(dw)
            .or_default()
            .entry((sw, r.port))
            .or_default()
            .insert((r.method.clone(), path));
    }
    for ((ns, sel), sources) in by_dst {
        let name = format!("advised-{}-http", workload_name(&sel));
        let mut rules = Vec::new();
        let mut yaml = format!(
            "# HTTP into {ns}/{}: the methods and paths seen, each path exactly\napiVersion: podwall.io/v1alpha1\nkind: PodwallPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  endpointSelector:\n    matchLabels:\n",
            selector_text(&sel),
            quote(&name),
            quote(&ns)
        );
        for (k, v) in &sel {
            let _ = writeln!(yaml, "      {}: {}", quote(k), quote(v));
        }
        yaml.push_str("  ingress:\n");
        for (((sns, ssel), port), seen) in &sources {
            let mut from = ssel.clone();
            if *sns != ns {
                from.insert(format!("k8s:{NAMESPACE_KEY}"), sns.clone());
            }
            let http: Vec<Value> = seen
                .iter()
                .map(|(m, p)| json!({"method": regex::escape(m), "path": escape_regex(p)}))
                .collect();
            rules.push(json!({"fromEndpoints": [{"matchLabels": from}],
                "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}],
                    "rules": {"http": http}}]}));
            let _ = writeln!(
                yaml,
                "  # {} request(s) from {sns}/{} on TCP/{port}",
                seen.len(),
                selector_text(ssel)
            );
            yaml.push_str("  - fromEndpoints:\n    - matchLabels:\n");
            for (k, v) in &from {
                let _ = writeln!(yaml, "        {}: {}", quote(k), quote(v));
            }
            let _ = writeln!(
                yaml,
                "    toPorts:\n    - ports:\n      - port: \"{port}\"\n        protocol: TCP\n      rules:\n        http:"
            );
            for (m, p) in seen {
                let _ = writeln!(
                    yaml,
                    "        - method: {}\n          path: {}",
                    quote(&regex::escape(m)),
                    quote(&escape_regex(p))
                );
            }
        }
        let object = json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"endpointSelector": {"matchLabels": sel}, "ingress": rules}});
        advice.proposals.push(Proposal {
            namespace: ns,
            object,
            yaml,
        });
    }
    covered
}

/// `io.kubernetes.pod.namespace`, the label Cilium's endpoint selectors name a namespace by.
const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";

/// A regular expression matching exactly the path `s`, with any query (the HTTP rules are
/// anchored, and a request's path carries its query).
fn escape_regex(s: &str) -> String {
    format!("{}(\\?.*)?", regex::escape(s))
}

/// Builds the proposals and checks them. `objects` are the cluster's (pods, namespaces, the
/// policies it has).
pub fn advise(objects: &[Value], flows: &[ObservedFlow]) -> Advice {
    advise_with_http(objects, flows, &[])
}

/// [`advise`], and PodwallPolicies with HTTP rules for the requests seen: per destination
/// workload and port, each source workload may send the methods and paths it was seen sending
/// (each path exactly, with any query). Those ports leave
/// the NetworkPolicy's rule for that source: an L4 allow of the port would let every request
/// through. HTTP rules are judged by `podwall_l7`, which the caller runs on the result.
pub fn advise_with_http(
    objects: &[Value],
    flows: &[ObservedFlow],
    requests: &[ObservedRequest],
) -> Advice {
    let engine = engine_with(objects, &[]);
    let state = engine.state();
    let mut advice = Advice::default();
    let pod_of = |end: &FlowEnd| pod_of(&engine, end);
    // ingress[(ns, workload)][peer] and egress likewise.
    let mut ingress: Rules = BTreeMap::new();
    let mut egress: Rules = BTreeMap::new();
    let mut resolved: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
    let mut unplaced: Vec<(String, Vec<Workload>)> = Vec::new();
    let workload = |id: PodId| -> Option<(String, BTreeMap<String, String>)> {
        let pod = state.pod(id);
        let sel = exact_selector(state, id);
        (!sel.is_empty()).then(|| (pod.namespace.clone(), sel))
    };
    let mut replaced = BTreeSet::new();
    for f in flows {
        for end in [&f.src, &f.dst] {
            if let FlowEnd::Pod(ns, name) = end
                && state.pod_by_name(ns, name).is_none()
                && let Some(now) = replacement(state, ns, name)
            {
                replaced.insert(format!(
                    "pod {ns}/{name} is gone: its flows count as {}'s (the same workload)",
                    state.pod(now).key()
                ));
            }
        }
        let label = format!(
            "{} -> {} {}/{}",
            end_text(&f.src, state, &engine),
            end_text(&f.dst, state, &engine),
            f.protocol,
            f.port
        );
        let (src, dst) = (pod_of(&f.src), pod_of(&f.dst));
        let src_w = src.and_then(workload);
        let dst_w = dst.and_then(workload);
        for (id, w) in [(src, &src_w), (dst, &dst_w)] {
            if let (Some(id), None) = (id, w) {
                advice.skipped.push(format!(
                    "{label}: pod {} has no labels to select it by (name it in a policy yourself, or label it)",
                    state.pod(id).key()
                ));
            }
        }
        if src.is_some() && src_w.is_none() || dst.is_some() && dst_w.is_none() {
            unplaced.push((
                label.clone(),
                src_w.iter().chain(dst_w.iter()).cloned().collect(),
            ));
            continue;
        }
        let seen = |d: crate::model::Direction| f.seen_by.is_none_or(|s| s == d);
        // The destination's ingress.
        if let Some(w) = dst_w
            .as_ref()
            .filter(|_| seen(crate::model::Direction::Ingress))
        {
            let peer = match (&src_w, &f.src) {
                (Some((ns, sel)), _) => Peer::Workload(ns.clone(), sel.clone()),
                (None, FlowEnd::Ip(ip)) => Peer::Address(*ip),
                (None, FlowEnd::Pod(ns, name)) => {
                    advice
                        .skipped
                        .push(format!("{label}: pod {ns}/{name} is not in the state"));
                    unplaced.push((label.clone(), vec![w.clone()]));
                    continue;
                }
            };
            add_rule(&mut ingress, w, peer, f, &label);
        }
        // The source's egress.
        if let Some(w) = src_w
            .as_ref()
            .filter(|_| seen(crate::model::Direction::Egress))
        {
            let is_dns = f.port == 53 && matches!(f.protocol, Protocol::Udp | Protocol::Tcp);
            if is_dns {
                resolved.insert(w.clone());
            }
            let peer = match (&dst_w, &f.dst) {
                (Some((ns, sel)), _) => Peer::Workload(ns.clone(), sel.clone()),
                (None, FlowEnd::Ip(_)) if !f.names.is_empty() && !is_dns => {
                    Peer::Name(f.names[0].trim_end_matches('.').to_lowercase())
                }
                (None, FlowEnd::Ip(ip)) => Peer::Address(*ip),
                (None, FlowEnd::Pod(ns, name)) => {
                    advice
                        .skipped
                        .push(format!("{label}: pod {ns}/{name} is not in the state"));
                    unplaced.push((label.clone(), vec![w.clone()]));
                    continue;
                }
            };
            add_rule(&mut egress, w, peer, f, &label);
        }
    }
    // Workloads that resolved names may reach the cluster's resolver on 53.
    let resolver = state
        .cluster_dns_pods()
        .next()
        .map(|id| state.pod(id))
        .map(|p| Peer::Workload(p.namespace.clone(), workload_selector(&p.labels)));
    for w in &resolved {
        if let Some(dns) = &resolver {
            let r = egress
                .entry(w.clone())
                .or_default()
                .entry(dns.clone())
                .or_default();
            r.ports.insert((Protocol::Udp, 53));
            r.ports.insert((Protocol::Tcp, 53));
            r.flows.insert("DNS to the cluster's resolver".into());
        }
    }
    advice.replaced = replaced.into_iter().collect();
    let covered = advise_http(objects, requests, &mut advice);
    for (dst, src, port) in &covered {
        let Some(peers) = ingress.get_mut(dst) else {
            continue;
        };
        if let Some(r) = peers.get_mut(&Peer::Workload(src.0.clone(), src.1.clone())) {
            r.ports
                .retain(|(proto, p)| !(*proto == Protocol::Tcp && p == port));
        }
        peers.retain(|_, r| !r.ports.is_empty());
    }
    ingress.retain(|_, peers| !peers.is_empty());
    for ((ns, sel), peers) in &ingress {
        advice
            .proposals
            .push(network_policy(ns, sel, "ingress", peers));
    }
    for ((ns, sel), peers) in &egress {
        let (names, others): (BTreeMap<&Peer, &RuleFlows>, BTreeMap<&Peer, &RuleFlows>) =
            peers.iter().partition(|(p, _)| matches!(p, Peer::Name(_)));
        if !others.is_empty() {
            let others: BTreeMap<Peer, &RuleFlows> =
                others.into_iter().map(|(p, r)| (p.clone(), r)).collect();
            advice
                .proposals
                .push(network_policy_refs(ns, sel, "egress", &others));
        }
        if !names.is_empty() {
            advice.proposals.push(fqdn_policy(ns, sel, &names));
        }
    }
    advice.proposals.sort_by(|a, b| {
        (&a.namespace, &a.object["metadata"]["name"].to_string())
            .cmp(&(&b.namespace, &b.object["metadata"]["name"].to_string()))
    });
    unique_names(&mut advice.proposals);
    // A flow that could not be placed, from or to a workload that gets a policy anyway, would
    // be denied by it.
    let isolated: BTreeSet<Workload> = ingress
        .keys()
        .chain(egress.keys())
        .chain(covered.iter().map(|(d, _, _)| d))
        .cloned()
        .collect();
    for (text, ends) in &unplaced {
        if ends.iter().any(|w| isolated.contains(w)) {
            advice.would_deny.push(text.clone());
        }
    }
    check(objects, flows, &mut advice);
    also_opens(&engine, &ingress, flows, &mut advice, "");
    // An HTTP rule opens its port to every pod of the source workload too, for the methods
    // and paths it lists.
    let mut http: Rules = BTreeMap::new();
    for (dst, (sns, ssel), port) in &covered {
        http.entry(dst.clone())
            .or_default()
            .entry(Peer::Workload(sns.clone(), ssel.clone()))
            .or_default()
            .ports
            .insert((Protocol::Tcp, *port));
    }
    also_opens(
        &engine,
        &http,
        flows,
        &mut advice,
        " (HTTP rule: for the methods and paths seen only)",
    );
    advice
}

/// A flow's port under `w`'s rule for `peer`, and the flow in its comment.
fn add_rule(rules: &mut Rules, w: &Workload, peer: Peer, f: &ObservedFlow, label: &str) {
    let r = rules.entry(w.clone()).or_default().entry(peer).or_default();
    r.ports.insert((f.protocol, f.port));
    r.flows.insert(label.to_string());
}

fn end_text(end: &FlowEnd, state: &ClusterState, engine: &Engine) -> String {
    match end {
        FlowEnd::Pod(ns, name) => format!("{ns}/{name}"),
        FlowEnd::Ip(ip) => engine
            .pod_by_ip(*ip)
            .map(|id| state.pod(id).key())
            .unwrap_or_else(|| ip.to_string()),
    }
}

fn ports_json(ports: &BTreeSet<(Protocol, u16)>) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|(p, n)| json!({"protocol": p.to_string(), "port": n}))
            .collect(),
    )
}

fn network_policy(
    ns: &str,
    sel: &BTreeMap<String, String>,
    direction: &str,
    peers: &BTreeMap<Peer, RuleFlows>,
) -> Proposal {
    let refs: BTreeMap<Peer, &RuleFlows> = peers.iter().map(|(p, r)| (p.clone(), r)).collect();
    network_policy_refs(ns, sel, direction, &refs)
}

fn network_policy_refs(
    ns: &str,
    sel: &BTreeMap<String, String>,
    direction: &str,
    peers: &BTreeMap<Peer, &RuleFlows>,
) -> Proposal {
    let name = format!("advised-{}-{direction}", workload_name(sel));
    let (list, field, types) = if direction == "ingress" {
        ("ingress", "from", "Ingress")
    } else {
        ("egress", "to", "Egress")
    };
    let rules: Vec<Value> = peers
        .iter()
        .map(|(peer, r)| json!({field: [peer_json(peer, ns)], "ports": ports_json(&r.ports)}))
        .collect();
    let object = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": sel}, "policyTypes": [types], list: rules}});
    let mut yaml = format!(
        "# {direction} of {ns}/{}: what was observed, nothing else\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  podSelector:\n    matchLabels:\n",
        selector_text(sel),
        quote(&name),
        quote(ns)
    );
    for (k, v) in sel {
        let _ = writeln!(yaml, "      {}: {}", quote(k), quote(v));
    }
    let _ = writeln!(yaml, "  policyTypes: [{types}]\n  {list}:");
    for (peer, r) in peers {
        for flow in r.flows.iter().take(5) {
            let _ = writeln!(yaml, "  # {flow}");
        }
        if r.flows.len() > 5 {
            let _ = writeln!(yaml, "  # ... and {} more flows", r.flows.len() - 5);
        }
        let _ = writeln!(yaml, "  - {field}:");
        match peer {
            Peer::Workload(pns, psel) => {
                if pns != ns {
                    let _ = writeln!(
                        yaml,
                        "    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: {}\n      podSelector:\n        matchLabels:",
                        quote(pns)
                    );
                } else {
                    let _ = writeln!(yaml, "    - podSelector:\n        matchLabels:");
                }
                for (k, v) in psel {
                    let _ = writeln!(yaml, "          {}: {}", quote(k), quote(v));
                }
            }
            Peer::Address(ip) => {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                let _ = writeln!(yaml, "    - ipBlock:\n        cidr: \"{ip}/{bits}\"");
            }
            Peer::Name(_) => {}
        }
        let _ = writeln!(yaml, "    ports:");
        for (p, n) in &r.ports {
            let _ = writeln!(yaml, "    - protocol: {p}\n      port: {n}");
        }
    }
    Proposal {
        namespace: ns.to_string(),
        object,
        yaml,
    }
}

fn fqdn_policy(
    ns: &str,
    sel: &BTreeMap<String, String>,
    names: &BTreeMap<&Peer, &RuleFlows>,
) -> Proposal {
    let name = format!("advised-{}-egress-names", workload_name(sel));
    let mut rules = Vec::new();
    let mut yaml = format!(
        "# egress of {ns}/{} to names its DNS answers gave\napiVersion: podwall.io/v1alpha1\nkind: PodwallPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  endpointSelector:\n    matchLabels:\n",
        selector_text(sel),
        quote(&name),
        quote(ns)
    );
    for (k, v) in sel {
        let _ = writeln!(yaml, "      {}: {}", quote(k), quote(v));
    }
    yaml.push_str("  egress:\n");
    for (peer, r) in names {
        let Peer::Name(n) = peer else { continue };
        let ports: Vec<Value> = r
            .ports
            .iter()
            .map(|(p, port)| json!({"port": port.to_string(), "protocol": p.to_string()}))
            .collect();
        rules.push(json!({"toFQDNs": [{"matchName": n}], "toPorts": [{"ports": ports}]}));
        for flow in r.flows.iter().take(5) {
            let _ = writeln!(yaml, "  # {flow}");
        }
        let _ = writeln!(
            yaml,
            "  - toFQDNs:\n    - matchName: {}\n    toPorts:\n    - ports:",
            quote(n)
        );
        for (p, port) in &r.ports {
            let _ = writeln!(yaml, "      - port: \"{port}\"\n        protocol: {p}");
        }
    }
    let object = json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"endpointSelector": {"matchLabels": sel}, "egress": rules}});
    Proposal {
        namespace: ns.to_string(),
        object,
        yaml,
    }
}

/// A YAML scalar, always double-quoted: YAML 1.1 readers (kubectl's) take `y`, `no`, `0x1F` or
/// `1_000` for booleans and numbers. Label keys and values, names and DNS names hold no
/// character JSON and YAML escape differently.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Two workloads whose names agree (the same `app` in two components) get their policies
/// named apart by a short hash of their selector, in the object and in its YAML.
fn unique_names(proposals: &mut [Proposal]) {
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for p in proposals.iter() {
        let name = p.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *count.entry((p.namespace.clone(), name)).or_default() += 1;
    }
    for p in proposals.iter_mut() {
        let name = p.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if count[&(p.namespace.clone(), name.clone())] < 2 {
            continue;
        }
        let selector = p.object["spec"]["podSelector"]
            .get("matchLabels")
            .or_else(|| p.object["spec"]["endpointSelector"].get("matchLabels"))
            .map(|s| s.to_string())
            .unwrap_or_default();
        // FNV-1a: stable across runs and builds.
        let hash = selector.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let unique = format!("{name}-{:06x}", hash & 0xff_ffff);
        p.object["metadata"]["name"] = Value::from(unique.as_str());
        p.yaml = p.yaml.replacen(
            &format!("  name: {}\n", quote(&name)),
            &format!("  name: {}\n", quote(&unique)),
            1,
        );
    }
}

/// The pod an end of a flow is, if the engine's state has it (by name, or by address), or
/// the pod that replaced it since the flow was recorded (see [`replacement`]).
pub fn pod_of(engine: &Engine, end: &FlowEnd) -> Option<PodId> {
    match end {
        FlowEnd::Pod(ns, name) => engine
            .state()
            .pod_by_name(ns, name)
            .or_else(|| replacement(engine.state(), ns, name)),
        FlowEnd::Ip(ip) => engine.pod_by_ip(*ip),
    }
}

/// Whether `segment` is drawn from the alphabet Kubernetes generates names from (no vowels:
/// `SafeEncodeString`), so a word such as `proxy` in `kube-proxy-x7k2p` is never one.
fn safe_encoded(segment: &str) -> bool {
    segment
        .chars()
        .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
}

/// `name` without its last `k` generated segments: a pod's random suffix (5 characters), and
/// for `k` = 2 a ReplicaSet's pod-template hash before it (6 to 10 characters, not all
/// digits, so a CronJob's scheduled time or a StatefulSet ordinal is never taken for one):
/// `api-7d9c5b8f4-x2kqp`, 2: `api`.
fn generated_base(name: &str, k: usize) -> Option<&str> {
    let (rest, suffix) = name.rsplit_once('-')?;
    if suffix.len() != 5 || !safe_encoded(suffix) {
        return None;
    }
    let base = match k {
        1 => rest,
        _ => {
            let (rest, hash) = rest.rsplit_once('-')?;
            let digits = hash.chars().all(|c| c.is_ascii_digit());
            if !(6..=10).contains(&hash.len()) || digits || !safe_encoded(hash) {
                return None;
            }
            rest
        }
    };
    (!base.is_empty()).then_some(base)
}

/// The pod that took the place of `ns/name`, which the state no longer has: flows recorded
/// over a day outlive a rollout. A pod of the same ReplicaSet or DaemonSet (same name before
/// the random suffix), else of the same Deployment (`<deployment>-<hash>-<suffix>`, another
/// hash), taken only when every such pod is one workload (the same selector advise would
/// write); otherwise none, and the flow is reported as unplaceable. The gone pod's own labels
/// are unknown: the name is all there is to go by.
pub fn replacement(state: &ClusterState, ns: &str, name: &str) -> Option<PodId> {
    for k in [1, 2] {
        let Some(base) = generated_base(name, k) else {
            continue;
        };
        let candidates: Vec<PodId> = state
            .pod_ids()
            .filter(|&id| {
                let p = state.pod(id);
                p.namespace == ns && generated_base(&p.name, k) == Some(base)
            })
            .collect();
        let Some(&first) = candidates.first() else {
            continue;
        };
        let selector = exact_selector(state, first);
        return (!selector.is_empty()
            && candidates
                .iter()
                .all(|&c| exact_selector(state, c) == selector))
        .then_some(first);
    }
    None
}

/// The engine of the cluster's objects and `more` (the proposals, to judge them).
pub fn engine_with(objects: &[Value], more: &[Value]) -> Engine {
    Engine::compile(load(objects, more))
}

fn load(objects: &[Value], more: &[Value]) -> ClusterState {
    let mut loader = Loader::new();
    let origin = Origin {
        source: "advise".into(),
        line: 0,
        item: None,
    };
    for o in objects.iter().chain(more) {
        loader.add_object(origin.clone(), o.clone());
    }
    loader.finish().0
}

/// Every observed flow must be allowed once the proposals are applied.
fn check(objects: &[Value], flows: &[ObservedFlow], advice: &mut Advice) {
    let proposed: Vec<Value> = advice.proposals.iter().map(|p| p.object.clone()).collect();
    let engine = engine_with(objects, &proposed);
    let state = engine.state();
    // An address that is no pod is judged as an address outside the cluster.
    let end = |e: &FlowEnd| match (pod_of(&engine, e), e) {
        (Some(id), _) => Some(Endpoint::Pod(id)),
        (None, FlowEnd::Ip(ip)) => Some(Endpoint::Ip(*ip)),
        (None, FlowEnd::Pod(..)) => None,
    };
    for f in flows {
        let (Some(src), Some(dst)) = (end(&f.src), end(&f.dst)) else {
            continue;
        };
        let query = Query {
            src,
            dst,
            protocol: f.protocol,
            port: f.port,
        };
        // A destination learned for a name: the names' matchName selectors.
        let names: Vec<crate::verdict::FqdnId> = engine
            .fqdn_selectors()
            .iter()
            .enumerate()
            .filter(|(_, sel)| {
                f.names.iter().any(|n| {
                    let n = n.trim_end_matches('.').to_lowercase();
                    matches!(sel, crate::model::FqdnSelector::MatchName(m) if *m == n)
                })
            })
            .map(|(i, _)| crate::verdict::FqdnId(i as u32))
            .collect();
        if !engine.allowed_learned(&query, &names) {
            advice.not_allowed.push(format!(
                "{} -> {} {}/{}",
                end_text(&f.src, state, &engine),
                end_text(&f.dst, state, &engine),
                f.protocol,
                f.port
            ));
        }
    }
}

/// For each proposed ingress rule, the pods its peer selects that were not seen using it.
fn also_opens(
    engine: &Engine,
    ingress: &Rules,
    flows: &[ObservedFlow],
    advice: &mut Advice,
    what: &str,
) {
    let state = engine.state();
    let key = |e: &FlowEnd| match e {
        FlowEnd::Pod(ns, name) => Some(format!("{ns}/{name}")),
        FlowEnd::Ip(ip) => engine.pod_by_ip(*ip).map(|id| state.pod(id).key()),
    };
    let seen: BTreeSet<(Option<String>, Option<String>, Protocol, u16)> = flows
        .iter()
        .map(|f| (key(&f.src), key(&f.dst), f.protocol, f.port))
        .collect();
    let matches = |ns: &str, sel: &BTreeMap<String, String>| -> Vec<String> {
        state
            .pod_ids()
            .map(|id| state.pod(id))
            .filter(|p| {
                p.namespace == ns
                    && !p.host_network
                    && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .map(|p| p.key())
            .collect()
    };
    for ((ns, sel), peers) in ingress {
        let dsts = matches(ns, sel);
        for (peer, r) in peers {
            let Peer::Workload(pns, psel) = peer else {
                continue;
            };
            let srcs = matches(pns, psel);
            let mut extra = 0;
            for s in &srcs {
                for d in &dsts {
                    let mut any = false;
                    for (proto, port) in &r.ports {
                        if s != d
                            && !seen.contains(&(Some(s.clone()), Some(d.clone()), *proto, *port))
                        {
                            advice.extra.insert((s.clone(), d.clone(), *proto, *port));
                            any = true;
                        }
                    }
                    extra += usize::from(any);
                }
            }
            if extra > 0 {
                let ports: Vec<String> = r.ports.iter().map(|(p, n)| format!("{p}/{n}")).collect();
                advice.also_opens.push(format!(
                    "{} -> {ns}/{} on {}: also opens {extra} pair(s) of pods not seen talking ({} source pod(s), {} destination pod(s) match){what}",
                    peer.describe(),
                    selector_text(sel),
                    ports.join(", "),
                    srcs.len(),
                    dsts.len()
                ));
            }
        }
    }
}

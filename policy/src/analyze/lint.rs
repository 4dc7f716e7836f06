//! Warnings for the mistakes operators make with NetworkPolicy: policies that select nothing,
//! namespace selectors that match no namespace, peers split into an OR where an AND was meant,
//! default-deny egress without DNS, half-isolated namespaces, rules that can never match.

use std::collections::BTreeMap;

use crate::diagnostic::Diagnostic;
use crate::engine::Engine;
use crate::explain::describe_peer;
use crate::model::{
    Direction, Entity, FqdnSelector, IpBlock, Labels, NAMESPACE_NAME_LABEL, Namespace,
    NamespaceScope, Peer, PortMatch, Protocol,
};
use crate::selector::{LabelSelector, Operator};
use crate::state::{PodId, PolicyId};
use crate::verdict::{Endpoint, Query, RuleRef};

/// Pods labelled like the cluster DNS (CoreDNS and kube-dns both carry `k8s-app=kube-dns`).
const CLUSTER_DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// Where the cluster DNS runs.
const DNS_NAMESPACE: &str = "kube-system";

/// At most this many pod names are listed in one finding.
const MAX_LISTED: usize = 5;

/// Every warning about the compiled state, in a stable order.
pub fn lint(engine: &Engine) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for pid in engine.state().policy_ids() {
        policy_findings(engine, pid, &mut out);
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        partial_isolation(engine, direction, &mut out);
    }
    egress_without_dns(engine, &mut out);
    same_priority(engine, &mut out);
    out
}

/// ClusterNetworkPolicies of one tier at one priority whose subjects share a pod: the API
/// leaves their order to the implementation (podwall takes them by name), so a connection both
/// match may be judged differently by another implementation.
fn same_priority(engine: &Engine, out: &mut Vec<Diagnostic>) {
    let state = engine.state();
    let mut by_place: BTreeMap<crate::model::ClusterScope, Vec<PolicyId>> = BTreeMap::new();
    for pid in state.policy_ids() {
        if let Some(scope) = state.policy(pid).cluster {
            by_place.entry(scope).or_default().push(pid);
        }
    }
    for (scope, ids) in by_place {
        for (i, &a) in ids.iter().enumerate() {
            let pods_a = engine.selected_pods(a);
            for &b in &ids[i + 1..] {
                let shared = engine
                    .selected_pods(b)
                    .into_iter()
                    .filter(|p| pods_a.contains(p))
                    .count();
                if shared == 0 {
                    continue;
                }
                let (pa, pb) = (state.policy(a), state.policy(b));
                out.push(
                    Diagnostic::warning(
                        "same-priority",
                        format!(
                            "{} and {} are both in the {} tier at priority {} and both apply to {shared} pod(s): the API leaves their order to each implementation (podwall evaluates {} first, by name); give them different priorities",
                            pa.name, pb.name, scope.tier, scope.priority, pa.name.name
                        ),
                    )
                    .at(&pb.origin)
                    .object(&pb.name)
                    .field("spec.priority"),
                );
            }
        }
    }
}

fn listed(names: &[String]) -> String {
    if names.len() <= MAX_LISTED {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..MAX_LISTED].join(", "),
            names.len() - MAX_LISTED
        )
    }
}

fn policy_findings(engine: &Engine, pid: PolicyId, out: &mut Vec<Diagnostic>) {
    let state = engine.state();
    let policy = state.policy(pid);
    let finding = |d: Diagnostic| d.at(&policy.origin).object(&policy.name);

    let selected = engine.selected_pods(pid);
    let host_network: Vec<String> = state
        .pod_ids()
        .map(|id| state.pod(id))
        .filter(|p| {
            p.host_network
                && p.namespace == policy.name.namespace
                && policy.pod_selector.matches(&p.labels)
        })
        .map(|p| p.key())
        .collect();
    if selected.is_empty() {
        let why = match policy.pod_selector.contradiction() {
            Some(c) => format!("it can never select a pod: {c}"),
            None => format!(
                "it selects no pod in namespace {}: it has no effect",
                policy.name.namespace
            ),
        };
        out.push(
            finding(Diagnostic::warning(
                "selects-no-pods",
                format!("podSelector {} {why}", policy.pod_selector),
            ))
            .field("spec.podSelector")
            .hint("check the labels: `kubectl get pods -n <namespace> --show-labels`"),
        );
    }
    if !host_network.is_empty() {
        out.push(
            finding(Diagnostic::warning(
                "selects-host-network-pods",
                format!(
                    "selects host-network pods ({}); NetworkPolicy does not apply to them and podwall cannot protect them",
                    listed(&host_network)
                ),
            ))
            .field("spec.podSelector"),
        );
    }

    for direction in [Direction::Ingress, Direction::Egress] {
        let Some(rules) = policy.rules(direction) else {
            continue;
        };
        for (ri, rule) in rules.iter().enumerate() {
            let rule_field = rule.field.clone();
            let rule_ref = RuleRef {
                policy: pid,
                direction,
                index: ri as u32,
            };
            split_peers(&rule.peers, &rule_field, direction, out, &finding);

            // (description, already reported by a more specific finding)
            let mut empty_peers: Vec<(String, bool)> = Vec::new();
            for (pi, peer) in rule.peers.iter().enumerate() {
                let peer_field = format!("{rule_field}.{}[{pi}]", direction.peers_field());
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        let mut reported = false;
                        if let NamespaceScope::Selected(sel) = namespaces {
                            let matched = state.namespaces.iter().any(|ns| sel.matches(&ns.labels));
                            if !matched {
                                reported = true;
                                let mut d = finding(Diagnostic::warning(
                                    "namespace-selector-matches-nothing",
                                    format!("namespaceSelector {sel} matches no namespace"),
                                ))
                                .field(format!("{peer_field}.namespaceSelector"));
                                if let Some(hint) = namespace_hint(engine, sel) {
                                    d = d.hint(hint);
                                }
                                out.push(d);
                            }
                        }
                        if let Some(c) = pods.contradiction() {
                            reported = true;
                            out.push(
                                finding(Diagnostic::warning(
                                    "rule-never-matches",
                                    format!("podSelector can never select a pod: {c}"),
                                ))
                                .field(format!("{peer_field}.podSelector")),
                            );
                        }
                        if engine.peer_pods(rule_ref, pi).is_empty() {
                            empty_peers.push((
                                format!("{} ({peer_field})", describe_peer(peer)),
                                reported,
                            ));
                        }
                    }
                    Peer::IpBlock(block) | Peer::ExternalCidr(block) => {
                        ip_block_findings(block, &peer_field, out, &finding);
                    }
                    Peer::Entity(Entity::KubeApiserver) => out.push(
                        finding(Diagnostic::warning(
                            "rule-never-matches",
                            "the kube-apiserver entity is not known from cluster state: podwall never matches it; allow the API server by CIDR",
                        ))
                        .field(&peer_field),
                    ),
                    Peer::Entity(_) => {}
                    Peer::Fqdn(selector) => {
                        fqdn_findings(selector, &peer_field, out, &finding);
                    }
                    Peer::Nodes(sel) => {
                        if !state.nodes.iter().any(|n| sel.matches(&n.labels)) {
                            out.push(
                                finding(Diagnostic::warning(
                                    "peer-matches-nothing",
                                    format!("nodes {sel} selects no Node of this cluster state (give the Node objects with the state)"),
                                ))
                                .field(format!("{peer_field}.nodes")),
                            );
                        }
                    }
                }
            }
            if !rule.peers.is_empty() && !engine.rule_can_match(rule_ref) {
                out.push(
                    finding(Diagnostic::warning(
                        "rule-never-matches",
                        format!(
                            "no peer of this rule matches any pod or address: {}",
                            empty_peers
                                .iter()
                                .map(|(d, _)| d.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    ))
                    .field(&rule_field),
                );
            } else {
                for (peer, _) in empty_peers.iter().filter(|(_, reported)| !reported) {
                    out.push(
                        finding(Diagnostic::warning(
                            "peer-matches-nothing",
                            format!("this peer selects no pod in this cluster state: {peer}"),
                        ))
                        .field(&rule_field),
                    );
                }
            }

            if direction == Direction::Egress
                && rule.dns.as_ref().is_some_and(|d| !d.is_empty())
                && let Some(why) = believes_any_resolver(&rule.peers)
            {
                out.push(
                    finding(Diagnostic::warning(
                        "dns-rule-believes-any-resolver",
                        format!(
                            "the DNS rule's answers teach toFQDNs addresses, and its peers take in any resolver ({why}): an app that runs one there, or reaches one, names the addresses its toFQDNs names get"
                        ),
                    ))
                    .field(format!("{rule_field}.rules.dns"))
                    .hint("name the resolvers: the cluster DNS pods (toEndpoints), or their /32 addresses"),
                );
            }

            // Named ingress ports resolve against the selected pods themselves.
            if direction == Direction::Ingress && !selected.is_empty() {
                let mut unresolved = 0;
                for (pi, spec) in rule.ports.iter().enumerate() {
                    let PortMatch::Named(name) = &spec.port else {
                        continue;
                    };
                    let declared = selected
                        .iter()
                        .any(|p| state.pod(*p).named_port(name, spec.protocol).is_some());
                    if !declared {
                        unresolved += 1;
                        out.push(
                            finding(Diagnostic::warning(
                                "named-port-unresolved",
                                format!(
                                    "no selected pod declares a {} container port named {name:?}; this entry never matches",
                                    spec.protocol
                                ),
                            ))
                            .field(format!("{rule_field}.ports[{pi}].port")),
                        );
                    }
                }
                if unresolved > 0 && unresolved == rule.ports.len() {
                    out.push(
                        finding(Diagnostic::warning(
                            "rule-never-matches",
                            "none of this rule's named ports is declared by a selected pod; the rule never matches",
                        ))
                        .field(&rule_field),
                    );
                }
            }
        }
    }
}

/// A namespaceSelector alone followed by a podSelector alone: two peers, an OR, where the
/// author almost always meant one peer with both (an AND).
fn split_peers(
    peers: &[Peer],
    rule_field: &str,
    direction: Direction,
    out: &mut Vec<Diagnostic>,
    finding: &dyn Fn(Diagnostic) -> Diagnostic,
) {
    for (i, pair) in peers.windows(2).enumerate() {
        let ns_only = |p: &Peer| matches!(p, Peer::Pods { namespaces: NamespaceScope::Selected(s), pods } if !s.is_everything() && pods.is_everything());
        let pods_only = |p: &Peer| matches!(p, Peer::Pods { namespaces: NamespaceScope::Named(_), pods } if !pods.is_everything());
        let (ns_peer, pod_peer) = if ns_only(&pair[0]) && pods_only(&pair[1]) {
            (&pair[0], &pair[1])
        } else if pods_only(&pair[0]) && ns_only(&pair[1]) {
            (&pair[1], &pair[0])
        } else {
            continue;
        };
        let field = direction.peers_field();
        out.push(
            finding(Diagnostic::warning(
                "peers-or-not-and",
                format!(
                    "{field}[{i}] and {field}[{}] are two peers, so either one is allowed: {} OR {}",
                    i + 1,
                    describe_peer(ns_peer),
                    describe_peer(pod_peer)
                ),
            ))
            .field(format!("{rule_field}.{field}"))
            .hint("to allow only those pods in those namespaces, put podSelector in the same list item as namespaceSelector (drop the `-` before podSelector)"),
        );
    }
}

/// Patterns that do not mean what they look like.
fn fqdn_findings(
    selector: &FqdnSelector,
    field: &str,
    out: &mut Vec<Diagnostic>,
    finding: &dyn Fn(Diagnostic) -> Diagnostic,
) {
    let FqdnSelector::MatchPattern(p) = selector else {
        return;
    };
    if p.bytes().all(|b| b == b'*') {
        return;
    }
    let field = format!("{field}.matchPattern");
    // `*cilium.io`: the star stays inside the first label, so this is "cilium.io" and
    // "xcilium.io", never "sub.cilium.io".
    if let Some(rest) = p.strip_prefix('*')
        && rest.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        let domain = rest;
        out.push(
            finding(Diagnostic::warning(
                "fqdn-pattern-misleading",
                format!(
                    "{p:?} matches {domain} and names like x{domain} (a * stays within one label), not subdomains of {domain}"
                ),
            ))
            .field(&field)
            .hint(format!(
                "for one level of subdomains write \"*.{domain}\", for any depth \"**.{domain}\", and add matchName {domain} for the domain itself"
            )),
        );
    }
    // `**` means "one or more labels" only as a leading `**.`; anywhere else it is one `*`.
    let leading = p.starts_with("**.");
    let body = if leading { &p[3..] } else { p.as_str() };
    if body.contains("**") {
        out.push(
            finding(Diagnostic::warning(
                "fqdn-pattern-misleading",
                format!(
                    "{p:?}: ** matches any number of labels only as a leading \"**.\"; here it is the same as *, which stays within one label"
                ),
            ))
            .field(&field),
        );
    }
}

fn ip_block_findings(
    block: &IpBlock,
    field: &str,
    out: &mut Vec<Diagnostic>,
    finding: &dyn Fn(Diagnostic) -> Diagnostic,
) {
    for (net, f) in std::iter::once((&block.cidr, format!("{field}.ipBlock.cidr"))).chain(
        block
            .except
            .iter()
            .enumerate()
            .map(|(i, e)| (e, format!("{field}.ipBlock.except[{i}]"))),
    ) {
        if net.trunc() != *net {
            out.push(
                finding(Diagnostic::warning(
                    "cidr-host-bits",
                    format!("{net} has host bits set; it means {}", net.trunc()),
                ))
                .field(f),
            );
        }
    }
    let mut set = crate::compile::ipset::IpSet::default();
    set.add_block(block);
    if set.is_empty() {
        out.push(
            finding(Diagnostic::warning(
                "rule-never-matches",
                format!(
                    "the exceptions cover all of {}: this ipBlock matches no address",
                    block.cidr
                ),
            ))
            .field(format!("{field}.ipBlock")),
        );
    }
}

/// `name: data` where the namespace `data` exists but lacks the label: suggest the label every
/// namespace has.
fn namespace_hint(engine: &Engine, sel: &LabelSelector) -> Option<String> {
    for req in &sel.requirements {
        if req.operator != Operator::In || req.values.len() != 1 {
            continue;
        }
        let value = &req.values[0];
        if let Some(ns) = engine.state().namespace(value)
            && req.key != NAMESPACE_NAME_LABEL
        {
            let implicit = if ns.implicit {
                " (no Namespace object was given, so only its name label is known)"
            } else {
                ""
            };
            return Some(format!(
                "namespace {value:?} exists but has no label {}={value}{implicit}; every namespace has {NAMESPACE_NAME_LABEL}={value}, use that key",
                req.key
            ));
        }
    }
    Some("label the namespaces you mean (`kubectl label namespace <name> key=value`), or select them by kubernetes.io/metadata.name".into())
}

/// Namespaces where some pods are isolated in a direction and others are not, with no policy
/// selecting every pod: new pods there start open.
fn partial_isolation(engine: &Engine, direction: Direction, out: &mut Vec<Diagnostic>) {
    let state = engine.state();
    let mut by_ns: BTreeMap<&str, (Vec<String>, usize)> = BTreeMap::new();
    for id in state.pod_ids() {
        let pod = state.pod(id);
        if pod.host_network {
            continue;
        }
        let entry = by_ns.entry(pod.namespace.as_str()).or_default();
        if engine.isolated_by(id, direction).is_empty() {
            entry.0.push(pod.key());
        } else {
            entry.1 += 1;
        }
    }
    for (ns, (open, isolated)) in by_ns {
        if isolated == 0 || open.is_empty() {
            continue;
        }
        let has_default = state.policies.iter().any(|p| {
            p.name.namespace == ns && p.pod_selector.is_everything() && p.rules(direction).is_some()
        });
        if has_default {
            continue;
        }
        let types = match direction {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        };
        out.push(
            Diagnostic::warning(
                "no-default-deny",
                format!(
                    "{isolated} of {} pods are isolated for {direction} but there is no default-deny policy: {} accept{} any {direction} traffic, and so will new pods",
                    isolated + open.len(),
                    listed(&open),
                    if open.len() == 1 { "s" } else { "" },
                ),
            )
            .object(format!("Namespace {ns}"))
            .hint(format!(
                "add a policy with `podSelector: {{}}` and `policyTypes: [{types}]` in namespace {ns}, then allow what each pod needs"
            )),
        );
    }
}

/// Why a DNS rule's peers include resolvers nobody chose (the DNS proxy believes every
/// resolver a `rules.dns` rule selects), if they do.
fn believes_any_resolver(peers: &[Peer]) -> Option<String> {
    if peers.is_empty() {
        return Some("the rule names no peer: every address".into());
    }
    peers.iter().find_map(|peer| match peer {
        Peer::Entity(e @ (Entity::World | Entity::All | Entity::Cluster)) => {
            Some(format!("the {e} entity"))
        }
        Peer::IpBlock(b) | Peer::ExternalCidr(b)
            if b.cidr.prefix_len() < b.cidr.max_prefix_len() =>
        {
            Some(format!("{}", b.cidr))
        }
        _ => None,
    })
}

/// Pods isolated for egress that cannot reach DNS on UDP/53: name resolution breaks.
fn egress_without_dns(engine: &Engine, out: &mut Vec<Diagnostic>) {
    let state = engine.state();
    let dns_pods: Vec<PodId> = state
        .pod_ids()
        .filter(|id| {
            state
                .pod(*id)
                .labels
                .get(CLUSTER_DNS_LABEL.0)
                .map(String::as_str)
                == Some(CLUSTER_DNS_LABEL.1)
        })
        .collect();
    // (pods, isolating policies, whether some of the pods have toFQDNs rules)
    let mut by_ns: BTreeMap<&str, (Vec<String>, Vec<PolicyId>, bool)> = BTreeMap::new();
    for id in state.pod_ids() {
        let isolating = engine.isolated_by(id, Direction::Egress);
        if isolating.is_empty() {
            continue;
        }
        let reaches_dns = if dns_pods.is_empty() {
            any_rule_allows_udp_53(engine, isolating)
        } else {
            dns_pods.iter().any(|dns| {
                engine.allowed(&Query {
                    src: Endpoint::Pod(id),
                    dst: Endpoint::Pod(*dns),
                    protocol: Protocol::Udp,
                    port: 53,
                })
            })
        };
        if !reaches_dns {
            let pod = state.pod(id);
            let entry = by_ns.entry(pod.namespace.as_str()).or_default();
            entry.0.push(pod.key());
            entry.2 |= !engine.egress_fqdn(id).is_empty();
            for p in isolating {
                if !entry.1.contains(p) {
                    entry.1.push(*p);
                }
            }
        }
    }
    let target = if dns_pods.is_empty() {
        "the cluster DNS (pods k8s-app=kube-dns in kube-system)".to_string()
    } else {
        let names: Vec<String> = dns_pods.iter().map(|p| state.pod(*p).key()).collect();
        format!("the cluster DNS ({})", listed(&names))
    };
    for (ns, (pods, policies, fqdn)) in by_ns {
        let policies: Vec<String> = policies
            .iter()
            .map(|p| state.policy(*p).name.to_string())
            .collect();
        out.push(
            Diagnostic::warning(
                "egress-without-dns",
                format!(
                    "{} {} isolated for egress (by {}) and cannot reach {target} on UDP/53: name resolution will fail{}",
                    listed(&pods),
                    if pods.len() == 1 { "is" } else { "are" },
                    policies.join(", "),
                    if fqdn {
                        " (except for names their toFQDNs rules select: podwall lets those queries reach the pod's configured resolver without a DNS rule)"
                    } else {
                        ""
                    },
                ),
            )
            .object(format!("Namespace {ns}"))
            .hint("allow egress to namespace kube-system, pods k8s-app=kube-dns, on UDP and TCP port 53 (see examples/dns-egress)"),
        );
    }
}

/// Without DNS pods in the state, assume the usual cluster DNS (pods `k8s-app=kube-dns` in
/// `kube-system`) and ask whether some egress rule on UDP/53 could reach it. An ipBlock on
/// UDP/53 counts: the resolver's address is not known here.
fn any_rule_allows_udp_53(engine: &Engine, isolating: &[PolicyId]) -> bool {
    let state = engine.state();
    let ns_labels = state
        .namespace(DNS_NAMESPACE)
        .map(|n| n.labels.clone())
        .unwrap_or_else(|| Namespace::implicit(DNS_NAMESPACE).labels);
    let mut dns_labels = Labels::new();
    dns_labels.insert(CLUSTER_DNS_LABEL.0.into(), CLUSTER_DNS_LABEL.1.into());
    isolating.iter().any(|&pid| {
        state.policy(pid).egress.iter().flatten().any(|rule| {
            let port_ok = rule.ports.is_empty()
                || rule.ports.iter().any(|p| {
                    p.protocol == Protocol::Udp
                        && match &p.port {
                            PortMatch::Any => true,
                            PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&53),
                            PortMatch::Named(_) => true,
                        }
                });
            let peer_ok = rule.peers.is_empty()
                || rule.peers.iter().any(|peer| match peer {
                    Peer::IpBlock(_) | Peer::ExternalCidr(_) => true,
                    Peer::Entity(e) => matches!(e, Entity::All | Entity::Cluster),
                    Peer::Fqdn(_) | Peer::Nodes(_) => false,
                    Peer::Pods { namespaces, pods } => {
                        let ns_ok = match namespaces {
                            NamespaceScope::Named(n) => n == DNS_NAMESPACE,
                            NamespaceScope::Selected(sel) => sel.matches(&ns_labels),
                        };
                        ns_ok && pods.matches(&dns_labels)
                    }
                });
            port_ok && peer_ok
        })
    })
}

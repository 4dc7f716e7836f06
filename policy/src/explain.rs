//! Verdicts in words: which policy and rule allowed each side, or which policies isolated the
//! pod and which of their rules came closest. The same structure is printed for people and
//! serialized as JSON for tools.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::engine::Engine;
use crate::model::{
    Direction, Entity, NamespaceScope, Peer, Policy, PortSpec, Protocol, ProtocolPort, Rule,
};
use crate::selector::{Operator, Requirement};
use crate::verdict::{Decision, Endpoint, RuleRef, SideVerdict, Verdict};

/// One end of the connection, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointInfo {
    /// `namespace/name` when it is a pod.
    pub pod: Option<String>,
    /// The address used for the connection, when known.
    pub ip: Option<IpAddr>,
    /// `pod`, `host-network-pod` or `external`.
    pub kind: &'static str,
}

impl fmt::Display for EndpointInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pod, &self.ip) {
            (Some(pod), Some(ip)) => write!(f, "{pod} ({ip})"),
            (Some(pod), None) => write!(f, "{pod}"),
            (None, Some(ip)) => write!(f, "{ip} (not a pod)"),
            (None, None) => write!(f, "?"),
        }
    }
}

/// A rule, located and summarised.
#[derive(Clone, Debug, Serialize)]
pub struct RuleInfo {
    /// `Kind namespace/name` of the policy.
    pub policy: String,
    /// The policy's kind.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Which list the rule is in.
    pub direction: Direction,
    /// The rule's 0-based index in that list.
    pub rule: u32,
    /// The index of the peer that matched (absent when the rule allows every peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    /// The index of the port that matched (absent when the rule allows every port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<usize>,
    /// The field path of the rule (`spec.ingress[0]`).
    pub field: String,
    /// What the rule allows, in words.
    pub summary: String,
    /// Where the policy was read from.
    pub source: String,
    /// A ClusterNetworkPolicy's tier (`Admin`, `Baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// A ClusterNetworkPolicy's priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// A ClusterNetworkPolicy rule's action (`Accept`, `Deny`, `Pass`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A ClusterNetworkPolicy rule's `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
}

impl RuleInfo {
    /// How messages name the rule: `NetworkPolicy shop/db spec.ingress[0]`, or for a cluster
    /// policy `ClusterNetworkPolicy deny-metadata (Admin tier, priority 10) rule "no-imds"
    /// spec.egress[0]`.
    pub fn title(&self) -> String {
        match (&self.tier, self.priority) {
            (Some(tier), Some(priority)) => format!(
                "{} ({tier} tier, priority {priority}) {}{}",
                self.policy,
                self.rule_name
                    .as_ref()
                    .map(|n| format!("rule {n:?} "))
                    .unwrap_or_default(),
                self.field
            ),
            _ => format!("{} {}", self.policy, self.field),
        }
    }
}

/// A rule of an isolating policy that matched the peer but not the port, or the other way round.
#[derive(Clone, Debug, Serialize)]
pub struct NearMiss {
    /// The rule.
    pub rule: RuleInfo,
    /// What did not match: `port`, `peer`, or `peer and port`.
    pub mismatch: &'static str,
    /// What differed, in words: "the source, pod prod/web-2, has app=frontend-v2, the rule wants
    /// app=frontend", "port TCP/8080 is not among TCP/80 or TCP/443".
    pub differs: String,
}

/// One side of the verdict, explained.
#[derive(Clone, Debug, Serialize)]
pub struct SideExplanation {
    /// `egress` (the source's policies) or `ingress` (the destination's).
    pub direction: Direction,
    /// The pod whose policies apply on this side, if any.
    pub pod: Option<String>,
    /// Whether any policy can apply on this side (false when this end is not a pod or uses the
    /// host network).
    pub enforced: bool,
    /// Whether the pod is isolated in this direction.
    pub isolated: bool,
    /// The policies isolating it.
    pub isolated_by: Vec<String>,
    /// Whether this side allows the connection.
    pub allowed: bool,
    /// `rule`, `not-isolated`, `not-a-pod`, `host-network`, `same-pod`, `own-node` or
    /// `no-rule-matched`.
    pub reason: &'static str,
    /// The rule that allowed it, when a rule did.
    pub allowed_by: Option<RuleInfo>,
    /// For a denial: rules that matched the peer or the port but not both.
    pub near_misses: Vec<NearMiss>,
    /// The decision in one sentence.
    pub message: String,
}

/// A whole verdict, explained.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// Both sides allow the connection.
    pub allowed: bool,
    /// The source.
    pub from: EndpointInfo,
    /// The destination.
    pub to: EndpointInfo,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
    /// The source's egress side.
    pub egress: SideExplanation,
    /// The destination's ingress side.
    pub ingress: SideExplanation,
}

/// At most this many near misses are listed per side.
const MAX_NEAR_MISSES: usize = 5;

impl Engine {
    /// Explains a verdict.
    pub fn explain(&self, verdict: &Verdict) -> Explanation {
        let from = self.endpoint_info(verdict.query.src, verdict.src_ip);
        let to = self.endpoint_info(verdict.query.dst, verdict.dst_ip);
        let egress = self.explain_side(verdict, &verdict.egress, &from, &to);
        let ingress = self.explain_side(verdict, &verdict.ingress, &to, &from);
        Explanation {
            allowed: verdict.allowed(),
            protocol: verdict.query.protocol,
            port: verdict.query.port,
            from,
            to,
            egress,
            ingress,
        }
    }

    fn endpoint_info(&self, e: Endpoint, ip: Option<IpAddr>) -> EndpointInfo {
        match e {
            Endpoint::Pod(p) => {
                let pod = self.state().pod(p);
                EndpointInfo {
                    pod: Some(pod.key()),
                    ip,
                    kind: if pod.host_network {
                        "host-network-pod"
                    } else {
                        "pod"
                    },
                }
            }
            Endpoint::Ip(ip) => EndpointInfo {
                pod: None,
                ip: Some(ip),
                kind: "external",
            },
        }
    }

    /// Locates and summarises a rule.
    pub fn rule_info(&self, rule: RuleRef, verdict: Option<&Verdict>) -> RuleInfo {
        let policy = self.state().policy(rule.policy);
        let spec = &policy.rules(rule.direction).unwrap_or_default()[rule.index as usize];
        let (peer, port) = match verdict {
            Some(v) => (
                self.matching_peer(rule, v).flatten(),
                self.matching_port(rule, v).flatten(),
            ),
            None => (None, None),
        };
        RuleInfo {
            policy: policy.name.to_string(),
            kind: policy.name.kind.to_string(),
            namespace: policy.name.namespace.clone(),
            name: policy.name.name.clone(),
            direction: rule.direction,
            rule: rule.index,
            peer,
            port,
            field: spec.field.clone(),
            summary: describe_rule(policy, rule.direction, spec),
            source: policy.origin.to_string(),
            tier: policy.cluster.map(|c| c.tier.to_string()),
            priority: policy.cluster.map(|c| c.priority),
            action: spec.action.map(|a| a.to_string()),
            rule_name: spec.name.clone(),
        }
    }

    fn explain_side(
        &self,
        verdict: &Verdict,
        side: &SideVerdict,
        me: &EndpointInfo,
        peer: &EndpointInfo,
    ) -> SideExplanation {
        let isolating = side
            .pod
            .map(|p| self.isolated_by(p, side.direction))
            .unwrap_or_default();
        let isolated_by: Vec<String> = isolating
            .iter()
            .map(|p| self.state().policy(*p).name.to_string())
            .collect();
        let dir = side.direction;
        let who = me.pod.clone().unwrap_or_else(|| me.to_string());
        let target = format!(
            "{} on {}",
            peer,
            ProtocolPort(verdict.query.protocol, verdict.query.port)
        );
        let (reason, message, allowed_by) = match side.decision {
            Decision::NotAPod => (
                "not-a-pod",
                format!(
                    "{} is not a pod of the cluster: no {dir} policy applies to it",
                    me.ip.map(|ip| ip.to_string()).unwrap_or_default()
                ),
                None,
            ),
            Decision::HostNetwork => (
                "host-network",
                format!("{who} uses the host network: NetworkPolicy does not apply to it"),
                None,
            ),
            Decision::NotIsolated => (
                "not-isolated",
                format!("no policy selects {who} for {dir}: all {dir} traffic is allowed"),
                None,
            ),
            Decision::SamePod => (
                "same-pod",
                "a pod can always reach itself".to_string(),
                None,
            ),
            Decision::OwnNode => (
                "own-node",
                format!(
                    "{peer} is {who}'s own node: traffic from it (kubelet probes) is always allowed"
                ),
                None,
            ),
            Decision::Rule(rule) => {
                let info = self.rule_info(rule, Some(verdict));
                (
                    "rule",
                    format!(
                        "allowed by {} {}: {}",
                        info.policy, info.field, info.summary
                    ),
                    Some(info),
                )
            }
            Decision::ClusterAccept(rule) => {
                let info = self.rule_info(rule, Some(verdict));
                (
                    "cluster-accept",
                    format!("accepted by {}: {}", info.title(), info.summary),
                    Some(info),
                )
            }
            Decision::ClusterDeny(rule) => {
                let info = self.rule_info(rule, Some(verdict));
                (
                    "cluster-deny",
                    format!("denied by {}: {}", info.title(), info.summary),
                    Some(info),
                )
            }
            Decision::NoRuleMatched => (
                "no-rule-matched",
                format!(
                    "{who} is isolated for {dir} by {}, and no {dir} rule of {} allows {target}",
                    isolated_by.join(", "),
                    if isolated_by.len() == 1 { "it" } else { "them" },
                ),
                None,
            ),
        };
        let near_misses = if side.decision == Decision::NoRuleMatched {
            self.near_misses(verdict, side)
        } else {
            Vec::new()
        };
        SideExplanation {
            direction: dir,
            pod: side.pod.map(|p| self.state().pod(p).key()),
            enforced: !matches!(side.decision, Decision::NotAPod | Decision::HostNetwork),
            isolated: side.isolated,
            isolated_by,
            allowed: side.allowed(),
            reason,
            allowed_by,
            near_misses,
            message,
        }
    }

    /// For a side that no rule allowed: the rule closest to allowing it and what differed
    /// (what a flow event says beside the isolating policies).
    pub fn nearest_miss(&self, verdict: &Verdict, direction: Direction) -> Option<NearMiss> {
        let side = match direction {
            Direction::Egress => &verdict.egress,
            Direction::Ingress => &verdict.ingress,
        };
        if side.decision != Decision::NoRuleMatched {
            return None;
        }
        self.near_misses(verdict, side).into_iter().next()
    }

    /// The isolating policies' rules closest to allowing the connection, closest first: rules
    /// that match the peer or the port before rules that match neither, then by how many
    /// labels, names or addresses differ.
    fn near_misses(&self, verdict: &Verdict, side: &SideVerdict) -> Vec<NearMiss> {
        let mut found: Vec<(usize, NearMiss)> = Vec::new();
        let isolating = side
            .pod
            .map(|p| self.isolated_by(p, side.direction))
            .unwrap_or_default();
        for &pid in isolating {
            let policy = self.state().policy(pid);
            let rules = policy.rules(side.direction).unwrap_or_default();
            for (index, spec) in rules.iter().enumerate() {
                let rule = RuleRef {
                    policy: pid,
                    direction: side.direction,
                    index: index as u32,
                };
                let peer_ok = self.matching_peer(rule, verdict).is_some();
                let port_ok = self.matching_port(rule, verdict).is_some();
                let mismatch = match (peer_ok, port_ok) {
                    (true, true) => continue, // matched: not a miss (an L7 rule decides)
                    (true, false) => "port",
                    (false, true) => "peer",
                    (false, false) => "peer and port",
                };
                let mut distance = 0;
                let mut differs = Vec::new();
                if !peer_ok {
                    let (d, text) = self.closest_peer(spec, side, verdict);
                    distance += d;
                    differs.push(text);
                }
                if !port_ok {
                    distance += 1;
                    differs.push(format!(
                        "port {} is not among {}",
                        ProtocolPort(verdict.query.protocol, verdict.query.port),
                        describe_ports(&spec.ports)
                    ));
                }
                if !peer_ok && !port_ok {
                    distance += 1000; // matches nothing: after every rule that matches something
                }
                found.push((
                    distance,
                    NearMiss {
                        rule: self.rule_info(rule, None),
                        mismatch,
                        differs: differs.join("; "),
                    },
                ));
            }
        }
        found.sort_by_key(|(d, _)| *d);
        found
            .into_iter()
            .take(MAX_NEAR_MISSES)
            .map(|(_, m)| m)
            .collect()
    }

    /// The peer of a rule closest to the other end, and what differs.
    fn closest_peer(&self, rule: &Rule, side: &SideVerdict, verdict: &Verdict) -> (usize, String) {
        let (other, ip, which) = match side.direction {
            Direction::Egress => (verdict.query.dst, verdict.dst_ip, "the destination"),
            Direction::Ingress => (verdict.query.src, verdict.src_ip, "the source"),
        };
        rule.peers
            .iter()
            .map(|peer| self.peer_difference(peer, other, ip, which))
            .min_by_key(|(d, _)| *d)
            .unwrap_or((0, String::new()))
    }

    fn peer_difference(
        &self,
        peer: &Peer,
        other: Endpoint,
        ip: Option<IpAddr>,
        which: &str,
    ) -> (usize, String) {
        let address = ip
            .or(match other {
                Endpoint::Ip(a) => Some(a),
                Endpoint::Pod(_) => None,
            })
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        match (peer, other) {
            (Peer::Pods { .. }, Endpoint::Pod(id)) if self.state().pod(id).host_network => {
                let pod = self.state().pod(id);
                (
                    100,
                    format!(
                        "{which}, pod {}/{}, uses the host network: pod selectors never select it (policies see its node's address)",
                        pod.namespace, pod.name
                    ),
                )
            }
            (Peer::Pods { namespaces, pods }, Endpoint::Pod(id)) => {
                let pod = self.state().pod(id);
                let mut differs = Vec::new();
                let empty = crate::model::Labels::default();
                let ns_labels = self
                    .state()
                    .namespace(&pod.namespace)
                    .map(|n| &n.labels)
                    .unwrap_or(&empty);
                match namespaces {
                    NamespaceScope::Named(ns) if *ns != pod.namespace => differs.push(format!(
                        "{which} is in namespace {}, the rule's pods are in {ns}",
                        pod.namespace
                    )),
                    NamespaceScope::Named(_) => {}
                    NamespaceScope::Selected(sel) => {
                        let what = format!("{which}'s namespace {}", pod.namespace);
                        differs.extend(
                            sel.requirements
                                .iter()
                                .filter(|r| !r.matches(ns_labels))
                                .map(|r| requirement_difference(r, ns_labels, &what)),
                        );
                    }
                }
                let what = format!("{which}, pod {}/{},", pod.namespace, pod.name);
                differs.extend(
                    pods.requirements
                        .iter()
                        .filter(|r| !r.matches(&pod.labels))
                        .map(|r| requirement_difference(r, &pod.labels, &what)),
                );
                (differs.len(), differs.join(", and "))
            }
            (Peer::Pods { .. }, Endpoint::Ip(a)) => (
                100,
                format!(
                    "{which} {a} is no pod of the cluster; the rule allows {}",
                    describe_peer(peer)
                ),
            ),
            (Peer::Fqdn(sel), Endpoint::Pod(id)) => {
                let pod = self.state().pod(id);
                (
                    40,
                    format!(
                        "{which} is pod {}/{}: toFQDNs ({sel}) matches only addresses outside the cluster",
                        pod.namespace, pod.name
                    ),
                )
            }
            (Peer::IpBlock(block) | Peer::ExternalCidr(block), _) => {
                let outside_only = matches!(peer, Peer::ExternalCidr(_));
                let Some(a) = ip.or(match other {
                    Endpoint::Ip(a) => Some(a),
                    Endpoint::Pod(_) => None,
                }) else {
                    return (
                        50,
                        format!("{which}'s address is unknown; the rule allows {block}"),
                    );
                };
                if !block.cidr.trunc().contains(&a) {
                    (20, format!("{which} {a} is not in {}", block.cidr))
                } else if let Some(e) = block.except.iter().find(|e| e.trunc().contains(&a)) {
                    (
                        5,
                        format!("{which} {a} is in {} but excepted by {e}", block.cidr),
                    )
                } else if outside_only {
                    (
                        10,
                        format!(
                            "{which} {a} is a pod's or a node's address; the rule allows only addresses outside the cluster in {}",
                            block.cidr
                        ),
                    )
                } else {
                    (0, format!("{which} {a} is in {block}"))
                }
            }
            (Peer::Entity(e), _) => (30, format!("{which} {address} is not {e}")),
            (Peer::Nodes(sel), _) => (
                30,
                format!("{which} {address} is no address of a node with labels {sel}"),
            ),
            (Peer::Fqdn(sel), _) => (
                15,
                format!("{which} {address} was not learned from the pod's DNS answers for {sel}"),
            ),
        }
    }
}

/// What one unmet requirement wants that `labels` does not have.
fn requirement_difference(r: &Requirement, labels: &crate::model::Labels, what: &str) -> String {
    let has = labels.get(&r.key);
    match (r.operator, has) {
        (Operator::In, Some(v)) => format!("{what} has {}={v}, the rule wants {r}", r.key),
        (Operator::In, None) | (Operator::Exists, None) => {
            format!("{what} lacks the label {r}")
        }
        (Operator::NotIn, Some(v)) => {
            format!("{what} has {}={v}, which the rule excludes ({r})", r.key)
        }
        (Operator::DoesNotExist, Some(v)) => {
            format!(
                "{what} has {}={v}, the rule wants no {} label",
                r.key, r.key
            )
        }
        // Met requirements are not asked about.
        _ => format!("{what} does not match {r}"),
    }
}

/// A peer in words: "pods app=api in namespace production", "addresses in 10.0.0.0/8".
pub fn describe_peer(peer: &Peer) -> String {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let who = if pods.is_everything() {
                "every pod".to_string()
            } else {
                format!("pods {pods}")
            };
            match namespaces {
                NamespaceScope::Named(ns) => format!("{who} in namespace {ns}"),
                NamespaceScope::Selected(sel) if sel.is_everything() => {
                    format!("{who} in every namespace")
                }
                NamespaceScope::Selected(sel) => format!("{who} in namespaces {sel}"),
            }
        }
        Peer::IpBlock(block) => format!("addresses in {block}"),
        Peer::ExternalCidr(block) => format!("addresses outside the cluster in {block}"),
        Peer::Entity(e) => match e {
            Entity::World => "the world (addresses outside the cluster)".to_string(),
            Entity::Cluster => "the cluster (every pod and node)".to_string(),
            Entity::Host => "the pod's own node".to_string(),
            Entity::RemoteNode => "the other nodes".to_string(),
            Entity::All => "anything".to_string(),
            Entity::KubeApiserver => "the API server (unknown here: matches nothing)".to_string(),
        },
        Peer::Fqdn(selector) => {
            format!("addresses outside the cluster that the pod's DNS answers gave for {selector}")
        }
        Peer::Nodes(sel) if sel.is_everything() => "every node's addresses".to_string(),
        Peer::Nodes(sel) => format!("the addresses of nodes {sel}"),
    }
}

/// Port specs in words: "TCP/8080 or UDP/53", "any port".
pub fn describe_ports(ports: &[PortSpec]) -> String {
    if ports.is_empty() {
        return "any port".to_string();
    }
    let parts: Vec<String> = ports.iter().map(ToString::to_string).collect();
    parts.join(" or ")
}

/// A rule in words: "from pods app=frontend in namespace production, on TCP/8080".
pub fn describe_rule(_policy: &Policy, direction: Direction, rule: &Rule) -> String {
    if rule.inert {
        return "matches nothing (it failed closed: podwall cannot read a peer of it)".into();
    }
    let action = rule.action.map(|a| format!("{a} ")).unwrap_or_default();
    let peers = if rule.peers.is_empty() {
        "anywhere (every pod and address)".to_string()
    } else {
        let parts: Vec<String> = rule.peers.iter().map(describe_peer).collect();
        parts.join(" or ")
    };
    format!(
        "{action}{} {peers}, on {}",
        direction.peers_field(),
        describe_ports(&rule.ports)
    )
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} -> {} on {}",
            if self.allowed { "ALLOWED" } else { "DENIED" },
            self.from,
            self.to,
            ProtocolPort(self.protocol, self.port)
        )?;
        for side in [&self.egress, &self.ingress] {
            writeln!(f)?;
            let whose = side.pod.clone().unwrap_or_else(|| {
                if side.direction == Direction::Egress {
                    self.from.to_string()
                } else {
                    self.to.to_string()
                }
            });
            writeln!(
                f,
                "{} of {}: {}",
                side.direction,
                whose,
                if side.allowed { "allowed" } else { "DENIED" }
            )?;
            if side.isolated && side.reason != "no-rule-matched" {
                writeln!(
                    f,
                    "  isolated for {} by {}",
                    side.direction,
                    side.isolated_by.join(", ")
                )?;
            }
            writeln!(f, "  {}", side.message)?;
            if let Some(rule) = &side.allowed_by {
                writeln!(f, "  (from {})", rule.source)?;
            }
            if !side.near_misses.is_empty() {
                writeln!(f, "  closest rules:")?;
                for m in &side.near_misses {
                    writeln!(
                        f,
                        "    {} {} ({}): {}",
                        m.rule.policy, m.rule.field, m.rule.summary, m.differs
                    )?;
                }
            }
        }
        Ok(())
    }
}

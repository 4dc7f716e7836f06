//! The cluster objects podwall reasons about, after parsing and validation.
//!
//! These are podwall's own types, not the API server's: every field has already been checked and
//! defaulted (namespace filled in, `policyTypes` defaulted, `protocol` defaulted to TCP), so the
//! compiler and the verdict code never meet an invalid or ambiguous value.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::selector::LabelSelector;
pub use crate::selector::Labels;

/// The label the API server puts on every namespace (immutable, equal to its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol NetworkPolicy can name, and ICMP echo and the rest, which it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP, the default when a port or rule names none.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP or ICMPv6 echo (ping). No policy can name it (no port has it): only a rule
    /// without `ports`, which allows every protocol, allows it. Never parsed from a policy.
    Icmp,
    /// Every other IP protocol (UDP-Lite, GRE, ESP, raw IP, ICMP other than echo): like ping,
    /// allowed only by a rule without `ports`, and asked as port 0. Never parsed from a policy.
    Other,
}

impl Protocol {
    /// Every protocol a port can name, in a fixed order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
    /// How many values [`Protocol::index`] takes.
    pub const COUNT: usize = 5;

    /// A dense index for per-protocol arrays.
    pub fn index(self) -> usize {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Sctp => 2,
            Protocol::Icmp => 3,
            Protocol::Other => 4,
        }
    }

    /// The API spelling: `TCP`, `UDP`, `SCTP` (and `ICMP` and `OTHER`, podwall's own).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Other => "OTHER",
        }
    }
}

/// A protocol and port as messages show them: `TCP/8080`, and `ICMP (ping)` and `another IP
/// protocol`, which have no port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolPort(pub Protocol, pub u16);

impl fmt::Display for ProtocolPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Protocol::Icmp => f.write_str("ICMP (ping)"),
            Protocol::Other => f.write_str("another IP protocol"),
            p => write!(f, "{p}/{}", self.1),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value was not one of `TCP`, `UDP`, `SCTP`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported protocol {0:?}: supported values are \"TCP\", \"UDP\", \"SCTP\"")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Exactly as the API server: the values are case-sensitive, and `ICMP` is not one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

/// Where an object was read from, for messages that point the operator at it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// A file path, or another name for the source (`api-server`, `<stdin>`).
    pub source: String,
    /// The 1-based line where the object's YAML document starts (0: not from text); in a
    /// finding that names a field, the line of that field (see [`crate::locate`]).
    pub line: usize,
    /// The 0-based item when the document is a `kind: List`.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        Ok(())
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// Its labels, always including `kubernetes.io/metadata.name`.
    pub labels: Labels,
    /// True when no Namespace object was read and the namespace is only known from the objects
    /// in it: its labels are then only the name label.
    pub implicit: bool,
}

/// A node: what ClusterNetworkPolicy's `nodes` peers select (by label) and reach (its
/// addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Every address of `status.addresses` that is an IP address.
    pub addresses: Vec<IpAddr>,
    /// Where it was read from.
    pub origin: Origin,
}

/// A port a container declares; named ports in policies resolve against these.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ContainerPort {
    /// The port's name (an IANA_SVC_NAME), if it has one.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

/// A container port also open on the node (`hostPort`): the CNI's portmap plugin forwards the
/// node's address and this port to the pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The port on the node.
    pub host_port: u16,
    /// The container port it leads to.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// The one node address it is open on (`hostIP`); every address of the node when unset,
    /// and every one of a family when `0.0.0.0` or `::`.
    pub host_ip: Option<IpAddr>,
}

/// A pod, with what policy needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations (podwall reads `podwall.io/*` ones).
    pub annotations: Labels,
    /// `status.podIP` first, then the rest of `status.podIPs`; empty if not yet assigned.
    pub ips: Vec<IpAddr>,
    /// `status.hostIP` and `status.hostIPs`: the node the pod runs on.
    pub host_ips: Vec<IpAddr>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.hostNetwork`: such a pod shares the node's network and NetworkPolicy does not apply
    /// to it; as a peer it is seen by its (node) IP only.
    pub host_network: bool,
    /// Every container's declared ports.
    pub ports: Vec<ContainerPort>,
    /// Those also open on the node.
    pub host_ports: Vec<HostPort>,
    /// Where it was read from.
    pub origin: Origin,
}

impl Pod {
    /// `namespace/name`, the key used in every output.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number of the container port with this name and protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }

    /// The pod's address in the same family as `other`, else its primary address.
    pub fn ip_towards(&self, other: Option<IpAddr>) -> Option<IpAddr> {
        if let Some(other) = other
            && let Some(ip) = self.ips.iter().find(|ip| ip.is_ipv4() == other.is_ipv4())
        {
            return Some(*ip);
        }
        self.ips.first().copied()
    }
}

/// Which kind of object a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `podwall.io/v1alpha1` PodwallPolicy (CiliumNetworkPolicy's shape).
    PodwallPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy, read as is.
    CiliumNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy: cluster-scoped, in the Admin
    /// or Baseline tier (see [`ClusterScope`]).
    ClusterNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy: a CiliumNetworkPolicy for pods of every
    /// namespace (its peers too, unless a selector names their namespace).
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// Whether objects of this kind are cluster-scoped (no namespace).
    pub fn cluster_scoped(self) -> bool {
        matches!(
            self,
            PolicyKind::ClusterNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy
        )
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyKind::NetworkPolicy => f.write_str("NetworkPolicy"),
            PolicyKind::PodwallPolicy => f.write_str("PodwallPolicy"),
            PolicyKind::CiliumNetworkPolicy => f.write_str("CiliumNetworkPolicy"),
            PolicyKind::ClusterNetworkPolicy => f.write_str("ClusterNetworkPolicy"),
            PolicyKind::CiliumClusterwideNetworkPolicy => {
                f.write_str("CiliumClusterwideNetworkPolicy")
            }
        }
    }
}

/// A policy's kind, namespace and name: how every message names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyName {
    /// The object's kind.
    pub kind: PolicyKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.cluster_scoped() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The tier of a cluster-scoped policy: Admin before NetworkPolicy, Baseline after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Tier {
    /// Evaluated first; its Accept and Deny are final.
    Admin,
    /// Evaluated for what neither the Admin tier nor a NetworkPolicy decided.
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a ClusterNetworkPolicy rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Action {
    /// Allowed: no later rule of this direction applies (the other side still judges).
    Accept,
    /// Denied.
    Deny,
    /// The rest of this tier is skipped: the next tier decides.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// Where a cluster-scoped policy stands: its tier and its priority in it (lower first; equal
/// priorities by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClusterScope {
    /// Admin or Baseline.
    pub tier: Tier,
    /// 0 to 1000.
    pub priority: u32,
}

/// Ingress (traffic into the selected pods) or egress (traffic out of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Connections into the pod.
    Ingress,
    /// Connections out of the pod.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The name of the peer list in a rule of this direction.
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Kind, namespace and name.
    pub name: PolicyName,
    /// Where it was read from.
    pub origin: Origin,
    /// Which pods of its namespace it applies to.
    pub pod_selector: LabelSelector,
    /// For Cilium-shaped policies whose endpointSelector also tests namespace labels
    /// (`io.cilium.k8s.namespace.labels.*`): a selector on the policy's own namespace.
    pub namespace_selector: Option<LabelSelector>,
    /// `Some` when the policy isolates the selected pods for ingress (its `policyTypes`, explicit
    /// or defaulted, include Ingress); the rules are then its ingress allows, maybe none.
    pub ingress: Option<Vec<Rule>>,
    /// The same for egress.
    pub egress: Option<Vec<Rule>>,
    /// False when `policyTypes` was absent and defaulted as the API server does.
    pub policy_types_explicit: bool,
    /// Whether the policy isolates the pods it selects, per direction. A NetworkPolicy isolates
    /// the directions it has; a Cilium-shaped policy those it has rules for, unless its
    /// `enableDefaultDeny` says otherwise (its allows still count where others isolate).
    pub default_deny: DefaultDeny,
    /// For a ClusterNetworkPolicy: its tier and priority. Such a policy isolates nothing: its
    /// rules' actions decide, in its tier, what they match; `pod_selector` and
    /// `namespace_selector` are its subject, in every namespace.
    pub cluster: Option<ClusterScope>,
}

/// Which directions a policy isolates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultDeny {
    /// Ingress.
    pub ingress: bool,
    /// Egress.
    pub egress: bool,
}

impl DefaultDeny {
    /// For one direction.
    pub fn get(self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

impl Policy {
    /// Whether the policy applies to `pod` (in a namespace labelled `ns_labels`): its own
    /// namespace's pods its selectors pick, or for a cluster-scoped policy any namespace's.
    /// Host-network pods are never selected.
    pub fn selects(&self, pod: &Pod, ns_labels: Option<&Labels>) -> bool {
        !pod.host_network
            && (self.name.kind.cluster_scoped() || self.name.namespace == pod.namespace)
            && self.pod_selector.matches(&pod.labels)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| ns_labels.is_some_and(|l| s.matches(l)))
    }

    /// The rules for one direction, if the policy isolates that direction.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One ingress or egress rule: traffic is allowed when it matches a peer *and* a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Empty (missing or `[]` in the object) means every peer.
    pub peers: Vec<Peer>,
    /// Empty (missing or `[]`) means every port of every protocol.
    pub ports: Vec<PortSpec>,
    /// HTTP rules (Cilium `toPorts[].rules.http`): when present, each request on these ports
    /// from these peers must match one of them, unless another rule without HTTP rules also
    /// allows the same peer and port.
    pub http: Option<Vec<HttpRule>>,
    /// DNS rules (Cilium `toPorts[].rules.dns`, egress, port 53): when present, each query's
    /// name must match one of them, unless another rule without DNS rules also allows the same
    /// peer and port.
    pub dns: Option<Vec<FqdnSelector>>,
    /// Where the rule sits in its object (`spec.ingress[0]`, `spec.egress[1].toPorts[0]`).
    pub field: String,
    /// A ClusterNetworkPolicy rule's action (`None`: an allow rule of a namespaced policy).
    pub action: Option<Action>,
    /// A ClusterNetworkPolicy rule's `name`, if it has one.
    pub name: Option<String>,
    /// The rule matches no traffic at all: an Accept rule with a peer podwall cannot read
    /// (the API says such a rule fails closed by matching nothing).
    pub inert: bool,
}

impl Rule {
    /// A plain L3/L4 rule.
    pub fn new(peers: Vec<Peer>, ports: Vec<PortSpec>, field: impl Into<String>) -> Self {
        Rule {
            peers,
            ports,
            http: None,
            dns: None,
            field: field.into(),
            action: None,
            name: None,
            inert: false,
        }
    }
}

/// One HTTP allow rule: every field present must match (an AND); rules are ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpRule {
    /// A regular expression the whole method must match (`GET`, `POST|PUT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A regular expression the whole (normalised) path must match (`/api/v1/.*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A regular expression the whole host (without port) must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present (with a value, when one is given).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A header a request must carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// The header's name (case-insensitive, as HTTP says).
    pub name: String,
    /// Its exact value; `None`: present with any value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Cilium's `headerMatches[].mismatch`: instead of denying a request whose header does not
    /// match, log it, or add, delete or replace the header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<HeaderMismatch>,
}

/// What to do with a request whose header does not match (instead of denying it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HeaderMismatch {
    /// Allow and log it.
    Log,
    /// Add the header with the value (keeping other values).
    Add,
    /// Remove the header.
    Delete,
    /// Set the header to the value.
    Replace,
}

/// A Cilium entity: a class of peers named by what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Addresses outside the cluster (neither a pod nor a node).
    World,
    /// Every pod and node of the cluster.
    Cluster,
    /// The pod's own node.
    Host,
    /// Nodes other than the pod's own.
    RemoteNode,
    /// Anything.
    All,
    /// The Kubernetes API server (not known from cluster state; never matches here).
    KubeApiserver,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::All => "all",
            Entity::KubeApiserver => "kube-apiserver",
        })
    }
}

/// Who a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces `namespaces` picks (a podSelector and/or
    /// namespaceSelector in one peer: an AND).
    Pods {
        /// Which namespaces.
        namespaces: NamespaceScope,
        /// Which pods in them; empty selects every pod.
        pods: LabelSelector,
    },
    /// Addresses in a CIDR, minus its exceptions (NetworkPolicy ipBlock: pods' addresses too).
    IpBlock(IpBlock),
    /// Cilium's CIDR peers (`toCIDR`, `toCIDRSet`): only addresses outside the cluster, never
    /// a pod's or a node's.
    ExternalCidr(IpBlock),
    /// A Cilium entity.
    Entity(Entity),
    /// Cilium's `toFQDNs`: addresses outside the cluster that the pod's own DNS answers gave
    /// for a matching name (learned at run time; see the `fqdn` crate).
    Fqdn(FqdnSelector),
    /// ClusterNetworkPolicy's `nodes`: the addresses of the Node objects the selector matches.
    Nodes(LabelSelector),
}

/// A DNS name selector (Cilium's `matchName` / `matchPattern`), validated and in canonical
/// form: lower case, surrounding spaces and one trailing dot removed (a pattern made only of
/// `*` is kept as written). What a pattern matches is the `fqdn` crate's business.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FqdnSelector {
    /// `matchName`: exactly this name.
    MatchName(String),
    /// `matchPattern`: `*` matches within one label, a leading `**.` one or more labels, a
    /// lone `*` every name.
    MatchPattern(String),
}

impl FqdnSelector {
    /// The name or pattern.
    pub fn as_str(&self) -> &str {
        match self {
            FqdnSelector::MatchName(s) | FqdnSelector::MatchPattern(s) => s,
        }
    }
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FqdnSelector::MatchName(n) => write!(f, "matchName {n}"),
            FqdnSelector::MatchPattern(p) => write!(f, "matchPattern {p}"),
        }
    }
}

/// The namespaces a pod peer is looked for in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Only the named namespace (a podSelector alone means the policy's own namespace).
    Named(String),
    /// Every namespace whose labels match.
    Selected(LabelSelector),
}

/// An `ipBlock`: a CIDR minus `except` CIDRs (each a strict subset of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// The block, as written (host bits may be set; they are ignored like upstream does).
    pub cidr: IpNet,
    /// Ranges carved out of it.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// True when `ip` is in the CIDR and in none of the exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.trunc().contains(&ip) && !self.except.iter().any(|e| e.trunc().contains(&ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let except: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            write!(f, " except {}", except.join(", "))?;
        }
        Ok(())
    }
}

/// A port (or range, or name) on a protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// The protocol (TCP when the object left it out).
    pub protocol: Protocol,
    /// Which ports of that protocol.
    pub port: PortMatch,
}

/// Which ports a [`PortSpec`] names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    Any,
    /// `port` and `endPort`, inclusive; a single port is a range of one.
    Range(u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::Any => write!(f, "{}/any", self.protocol),
            PortMatch::Range(lo, hi) if lo == hi => write!(f, "{}/{lo}", self.protocol),
            PortMatch::Range(lo, hi) => write!(f, "{}/{lo}-{hi}", self.protocol),
            PortMatch::Named(name) => write!(f, "{}/{name}", self.protocol),
        }
    }
}

//! The wire shape of PodwallPolicy and CiliumNetworkPolicy objects (CiliumNetworkPolicy's
//! spec, as Cilium's `api/v1` types and documentation give it): what serde reads and what the
//! PodwallPolicy CRD's schema is generated from. Nothing here judges a field; [`super`]
//! converts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// The object: metadata and one spec or several.
#[derive(Debug, Deserialize)]
pub(crate) struct CiliumObject {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    pub(super) api_version: Option<String>,
    #[allow(dead_code)]
    pub(super) kind: Option<String>,
    #[allow(dead_code)]
    pub(super) status: Option<Value>,
    pub(crate) metadata: meta::ObjectMeta,
    #[serde(default)]
    pub(super) spec: Option<Spec>,
    #[serde(default)]
    pub(super) specs: Option<Vec<Spec>>,
}

/// A PodwallPolicy's (and CiliumNetworkPolicy's) spec.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec {
    /// Selects the pods of the policy's namespace the policy applies to (`{}`: all of them).
    /// Keys may carry Cilium's source prefix (`k8s:app`, `any:app`).
    pub(super) endpoint_selector: Option<meta::LabelSelector>,
    /// Cilium host policies: not enforced by podwall.
    pub(super) node_selector: Option<Value>,
    /// Allowed incoming connections. A non-empty list isolates the selected pods for ingress.
    pub(super) ingress: Option<Vec<PeerRule>>,
    /// Allowed outgoing connections. A non-empty list isolates the selected pods for egress.
    pub(super) egress: Option<Vec<PeerRule>>,
    /// Cilium deny rules: not enforced by podwall (the direction then allows nothing).
    pub(super) ingress_deny: Option<Vec<Value>>,
    /// Cilium deny rules: not enforced by podwall (the direction then allows nothing).
    pub(super) egress_deny: Option<Vec<Value>>,
    /// Whether the policy isolates its pods in each direction it has rules for (default true).
    pub(super) enable_default_deny: Option<DefaultDenySpec>,
    /// Free text.
    #[allow(dead_code)]
    pub(super) description: Option<String>,
    /// Labels of the rule (Cilium), ignored.
    #[allow(dead_code)]
    pub(super) labels: Option<Value>,
    /// Cilium's policy verdict logging settings, ignored.
    #[allow(dead_code)]
    pub(super) log: Option<Value>,
}

/// Per-direction default deny.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(super) struct DefaultDenySpec {
    /// Isolate the selected pods for ingress.
    pub(super) ingress: Option<bool>,
    /// Isolate the selected pods for egress.
    pub(super) egress: Option<bool>,
}

/// An ingress rule (the `from*` fields) or an egress rule (the `to*` fields). Peers listed are
/// ORed; with no peer, `toPorts` allows every peer; with neither, the rule allows nothing.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PeerRule {
    /// Pods allowed to connect: label selectors; `k8s:io.kubernetes.pod.namespace` picks the
    /// namespace (default: the policy's), `io.cilium.k8s.namespace.labels.<key>` tests
    /// namespace labels.
    pub(super) from_endpoints: Option<Vec<meta::LabelSelector>>,
    /// Addresses outside the cluster allowed to connect.
    #[serde(rename = "fromCIDR")]
    pub(super) from_cidr: Option<Vec<String>>,
    /// Address blocks outside the cluster allowed to connect, with exceptions.
    #[serde(rename = "fromCIDRSet")]
    pub(super) from_cidr_set: Option<Vec<CidrRule>>,
    /// `world`, `cluster`, `host`, `remote-node`, `all` (`kube-apiserver` matches nothing here).
    pub(super) from_entities: Option<Vec<String>>,
    /// Pods the selected pods may connect to (as `fromEndpoints`).
    pub(super) to_endpoints: Option<Vec<meta::LabelSelector>>,
    /// Addresses outside the cluster the selected pods may connect to.
    #[serde(rename = "toCIDR")]
    pub(super) to_cidr: Option<Vec<String>>,
    /// Address blocks outside the cluster, with exceptions.
    #[serde(rename = "toCIDRSet")]
    pub(super) to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities the selected pods may connect to.
    pub(super) to_entities: Option<Vec<String>>,
    /// Ports (and HTTP rules) the rule allows; absent: every port.
    pub(super) to_ports: Option<Vec<PortRule>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) from_requires: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) to_requires: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) from_groups: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) to_groups: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) from_nodes: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) to_nodes: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) to_services: Option<Vec<Value>>,
    /// DNS names: addresses outside the cluster that the pod's own DNS answers gave for a
    /// matching name (for the answer's TTL).
    #[serde(rename = "toFQDNs")]
    pub(super) to_fqdns: Option<Vec<FqdnSpec>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) icmps: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    pub(super) authentication: Option<Value>,
}

/// A block of addresses outside the cluster.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CidrRule {
    /// The block (`10.0.0.0/8`).
    pub(super) cidr: Option<String>,
    /// Blocks inside it that are not allowed.
    pub(super) except: Option<Vec<String>>,
    /// Not supported by podwall: the rule then allows nothing.
    pub(super) cidr_group_ref: Option<Value>,
}

/// A DNS name selector: `matchName` (exact) or `matchPattern` (`*` within a label, a leading
/// `**.` for any depth of subdomains, a lone `*` for every name). Case and a trailing dot do not
/// matter.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct FqdnSpec {
    /// The name exactly (`api.github.com`).
    pub(super) match_name: Option<String>,
    /// A pattern (`*.github.com`, `**.github.com`, `*`).
    pub(super) match_pattern: Option<String>,
}

/// Ports, and what must hold for traffic on them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PortRule {
    /// The ports; absent or empty: every port of every protocol.
    pub(super) ports: Option<Vec<PortProtocol>>,
    /// Application-layer rules (`http`).
    pub(super) rules: Option<L7Rules>,
    /// Not supported by podwall: the entry then allows nothing.
    pub(super) terminating_tls: Option<Value>,
    /// Not supported by podwall: the entry then allows nothing.
    #[serde(rename = "originatingTLS")]
    pub(super) originating_tls: Option<Value>,
    /// Not supported by podwall: the entry then allows nothing.
    pub(super) server_names: Option<Vec<Value>>,
    /// Not supported by podwall: the entry then allows nothing.
    pub(super) listener: Option<Value>,
}

/// A port (or range, or name) and protocol.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PortProtocol {
    /// A number, a numeric string (`"0"`: every port) or a container port's name.
    pub(super) port: Option<IntOrString>,
    /// The last port of a range starting at `port`.
    pub(super) end_port: Option<i32>,
    /// TCP, UDP, SCTP or ANY (the default).
    pub(super) protocol: Option<String>,
}

/// Application-layer rules for a port.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct L7Rules {
    /// HTTP rules: each request must match one of them.
    pub(super) http: Option<Vec<HttpSpec>>,
    /// DNS rules on port 53 (egress): each query's name must match one of them, or the pod gets
    /// REFUSED.
    pub(super) dns: Option<Vec<FqdnSpec>>,
    /// Not supported by podwall: the entry then allows nothing.
    pub(super) kafka: Option<Vec<Value>>,
    /// Not supported by podwall: the entry then allows nothing.
    pub(super) l7proto: Option<String>,
    /// Not supported by podwall: the entry then allows nothing.
    pub(super) l7: Option<Vec<Value>>,
}

/// One HTTP rule: every field given must match (regular expressions match the whole value).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct HttpSpec {
    /// A regular expression for the method (`GET`, `POST|PUT`).
    pub(super) method: Option<String>,
    /// A regular expression for the normalised path with its query (`/api/v1/.*`).
    pub(super) path: Option<String>,
    /// A regular expression for the host, without port.
    pub(super) host: Option<String>,
    /// Headers that must be present: `Name` or `Name: value`.
    pub(super) headers: Option<Vec<String>>,
    /// Headers with a value, and what to do when they do not match.
    pub(super) header_matches: Option<Vec<HeaderMatchSpec>>,
}

/// A header to match, and what to do when it does not.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(super) struct HeaderMatchSpec {
    /// The header's name.
    pub(super) name: Option<String>,
    /// Its value (absent: present with any value).
    pub(super) value: Option<String>,
    /// LOG, ADD, DELETE or REPLACE instead of denying the request (absent: deny).
    pub(super) mismatch: Option<String>,
    /// Not supported by podwall.
    pub(super) secret: Option<Value>,
}

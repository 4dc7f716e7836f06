//! PodwallPolicy (`podwall.io/v1alpha1`) and CiliumNetworkPolicy (`cilium.io/v2`): the same
//! spec, CiliumNetworkPolicy's, read into the same model as NetworkPolicy so that their allows
//! join the union.
//!
//! What is implemented, following Cilium's documentation and its `pkg/policy` code:
//!
//! - `endpointSelector` selects pods of the policy's namespace. Selector keys may carry a source
//!   prefix (`k8s:app`, `any:app`). In peer selectors (`fromEndpoints`/`toEndpoints`),
//!   `k8s:io.kubernetes.pod.namespace` picks the peer's namespace; without it the peer is in the
//!   policy's own namespace; `io.cilium.k8s.namespace.labels.<key>` tests the peer namespace's
//!   labels. `{}` is every pod of the policy's namespace.
//! - A direction with at least one rule isolates the selected pods (`enableDefaultDeny` can turn
//!   that off per direction; the rules then only add to what other policies allow).
//! - A rule with L3 peers and no `toPorts` allows those peers on every port; a rule with
//!   `toPorts` and no L3 peers allows every peer on those ports; an empty rule `{}` allows
//!   nothing (Cilium's "deny all" idiom), unlike NetworkPolicy's empty rule.
//! - `fromCIDR`/`toCIDR`/`...CIDRSet` match only addresses outside the cluster, never a pod's or
//!   a node's (Cilium: "only connections which do not originate from the cluster").
//! - Entities: `world`, `cluster`, `host`, `remote-node`, `all`; `kube-apiserver` is accepted
//!   but matches nothing here (the API server's addresses are not in cluster state).
//! - Ports: `port` a number, a numeric string, `"0"` (every port) or a named port; `protocol`
//!   TCP, UDP, SCTP or ANY (the default, all three); `endPort`.
//! - `rules.http`: see [`HttpRule`](crate::HttpRule); HTTP rules apply to TCP only (on UDP or
//!   SCTP ports of the same entry the entry is an L4 allow, as in Cilium).
//! - `toFQDNs` (`matchName`, `matchPattern`): addresses outside the cluster that the pod's own
//!   DNS answers gave for a matching name, for the answer's TTL. One entry holds one of the two
//!   fields; names and patterns are compared without case and without the trailing dot (the
//!   pattern language itself is documented in the `fqdn` crate). Like every L3 peer kind, it
//!   cannot share a rule with another kind (Cilium refuses such a rule; podwall drops it with an
//!   error and keeps the policy's isolation).
//! - `rules.dns` (egress only, on explicitly listed ports, not with `rules.http`): each query's
//!   name must match one entry (an entry may give both `matchName` and `matchPattern`); other
//!   queries get REFUSED. An L4-only allow for the same peer and port switches DNS filtering
//!   off, as for HTTP.
//! - Anything podwall does not enforce (deny rules, `toRequires`, `toServices`, `toGroups`, TLS
//!   interception, Kafka, ICMP, ...) makes the *rule* allow nothing, with an error naming the
//!   field: the policy still isolates its pods, so nothing is opened by accident.
//! - Unknown fields are reported as warnings and ignored, as the API server prunes them.

use std::collections::BTreeMap;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::model::{
    DefaultDeny, Entity, FqdnSelector, HeaderMatch, HeaderMismatch, HttpRule, IpBlock,
    NAMESPACE_NAME_LABEL, NamespaceScope, Origin, Peer, Policy, PolicyKind, PolicyName, PortMatch,
    PortSpec, Protocol, Rule,
};
use crate::names;
use crate::selector::{LabelSelector, Operator, Requirement};
use crate::validate::{self, FieldErrors};

/// The Cilium label that names a pod's namespace.
const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// Cilium's prefix for namespace labels in endpoint selectors.
const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The object: metadata and one spec or several.
#[derive(Debug, Deserialize)]
pub(crate) struct CiliumObject {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: Option<String>,
    #[allow(dead_code)]
    status: Option<Value>,
    pub(crate) metadata: meta::ObjectMeta,
    #[serde(default)]
    spec: Option<Spec>,
    #[serde(default)]
    specs: Option<Vec<Spec>>,
}

/// A PodwallPolicy's (and CiliumNetworkPolicy's) spec.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec {
    /// Selects the pods of the policy's namespace the policy applies to (`{}`: all of them).
    /// Keys may carry Cilium's source prefix (`k8s:app`, `any:app`).
    endpoint_selector: Option<meta::LabelSelector>,
    /// Cilium host policies: not enforced by podwall.
    node_selector: Option<Value>,
    /// Allowed incoming connections. A non-empty list isolates the selected pods for ingress.
    ingress: Option<Vec<PeerRule>>,
    /// Allowed outgoing connections. A non-empty list isolates the selected pods for egress.
    egress: Option<Vec<PeerRule>>,
    /// Cilium deny rules: not enforced by podwall (the direction then allows nothing).
    ingress_deny: Option<Vec<Value>>,
    /// Cilium deny rules: not enforced by podwall (the direction then allows nothing).
    egress_deny: Option<Vec<Value>>,
    /// Whether the policy isolates its pods in each direction it has rules for (default true).
    enable_default_deny: Option<DefaultDenySpec>,
    /// Free text.
    #[allow(dead_code)]
    description: Option<String>,
    /// Labels of the rule (Cilium), ignored.
    #[allow(dead_code)]
    labels: Option<Value>,
    /// Cilium's policy verdict logging settings, ignored.
    #[allow(dead_code)]
    log: Option<Value>,
}

/// Per-direction default deny.
#[derive(Debug, Default, Deserialize, JsonSchema)]
struct DefaultDenySpec {
    /// Isolate the selected pods for ingress.
    ingress: Option<bool>,
    /// Isolate the selected pods for egress.
    egress: Option<bool>,
}

/// An ingress rule (the `from*` fields) or an egress rule (the `to*` fields). Peers listed are
/// ORed; with no peer, `toPorts` allows every peer; with neither, the rule allows nothing.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PeerRule {
    /// Pods allowed to connect: label selectors; `k8s:io.kubernetes.pod.namespace` picks the
    /// namespace (default: the policy's), `io.cilium.k8s.namespace.labels.<key>` tests
    /// namespace labels.
    from_endpoints: Option<Vec<meta::LabelSelector>>,
    /// Addresses outside the cluster allowed to connect.
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    /// Address blocks outside the cluster allowed to connect, with exceptions.
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRule>>,
    /// `world`, `cluster`, `host`, `remote-node`, `all` (`kube-apiserver` matches nothing here).
    from_entities: Option<Vec<String>>,
    /// Pods the selected pods may connect to (as `fromEndpoints`).
    to_endpoints: Option<Vec<meta::LabelSelector>>,
    /// Addresses outside the cluster the selected pods may connect to.
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    /// Address blocks outside the cluster, with exceptions.
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities the selected pods may connect to.
    to_entities: Option<Vec<String>>,
    /// Ports (and HTTP rules) the rule allows; absent: every port.
    to_ports: Option<Vec<PortRule>>,
    /// Not enforced by podwall: the rule then allows nothing.
    from_requires: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    to_requires: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    from_groups: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    to_groups: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    from_nodes: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    to_nodes: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    to_services: Option<Vec<Value>>,
    /// DNS names: addresses outside the cluster that the pod's own DNS answers gave for a
    /// matching name (for the answer's TTL).
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Vec<FqdnSpec>>,
    /// Not enforced by podwall: the rule then allows nothing.
    icmps: Option<Vec<Value>>,
    /// Not enforced by podwall: the rule then allows nothing.
    authentication: Option<Value>,
}

/// A block of addresses outside the cluster.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CidrRule {
    /// The block (`10.0.0.0/8`).
    cidr: Option<String>,
    /// Blocks inside it that are not allowed.
    except: Option<Vec<String>>,
    /// Not supported by podwall: the rule then allows nothing.
    cidr_group_ref: Option<Value>,
}

/// A DNS name selector: `matchName` (exact) or `matchPattern` (`*` within a label, a leading
/// `**.` for any depth of subdomains, a lone `*` for every name). Case and a trailing dot do not
/// matter.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct FqdnSpec {
    /// The name exactly (`api.github.com`).
    match_name: Option<String>,
    /// A pattern (`*.github.com`, `**.github.com`, `*`).
    match_pattern: Option<String>,
}

/// Ports, and what must hold for traffic on them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PortRule {
    /// The ports; absent or empty: every port of every protocol.
    ports: Option<Vec<PortProtocol>>,
    /// Application-layer rules (`http`).
    rules: Option<L7Rules>,
    /// Not supported by podwall: the entry then allows nothing.
    terminating_tls: Option<Value>,
    /// Not supported by podwall: the entry then allows nothing.
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<Value>,
    /// Not supported by podwall: the entry then allows nothing.
    server_names: Option<Vec<Value>>,
    /// Not supported by podwall: the entry then allows nothing.
    listener: Option<Value>,
}

/// A port (or range, or name) and protocol.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PortProtocol {
    /// A number, a numeric string (`"0"`: every port) or a container port's name.
    port: Option<IntOrString>,
    /// The last port of a range starting at `port`.
    end_port: Option<i32>,
    /// TCP, UDP, SCTP or ANY (the default).
    protocol: Option<String>,
}

/// Application-layer rules for a port.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct L7Rules {
    /// HTTP rules: each request must match one of them.
    http: Option<Vec<HttpSpec>>,
    /// DNS rules on port 53 (egress): each query's name must match one of them, or the pod gets
    /// REFUSED.
    dns: Option<Vec<FqdnSpec>>,
    /// Not supported by podwall: the entry then allows nothing.
    kafka: Option<Vec<Value>>,
    /// Not supported by podwall: the entry then allows nothing.
    l7proto: Option<String>,
    /// Not supported by podwall: the entry then allows nothing.
    l7: Option<Vec<Value>>,
}

/// One HTTP rule: every field given must match (regular expressions match the whole value).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct HttpSpec {
    /// A regular expression for the method (`GET`, `POST|PUT`).
    method: Option<String>,
    /// A regular expression for the normalised path with its query (`/api/v1/.*`).
    path: Option<String>,
    /// A regular expression for the host, without port.
    host: Option<String>,
    /// Headers that must be present: `Name` or `Name: value`.
    headers: Option<Vec<String>>,
    /// Headers with a value, and what to do when they do not match.
    header_matches: Option<Vec<HeaderMatchSpec>>,
}

/// A header to match, and what to do when it does not.
#[derive(Debug, Default, Deserialize, JsonSchema)]
struct HeaderMatchSpec {
    /// The header's name.
    name: Option<String>,
    /// Its value (absent: present with any value).
    value: Option<String>,
    /// LOG, ADD, DELETE or REPLACE instead of denying the request (absent: deny).
    mismatch: Option<String>,
    /// Not supported by podwall.
    secret: Option<Value>,
}

/// What reading a Cilium-shaped policy found besides the policies.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Fields podwall does not enforce (the rule allows nothing) and the like.
    pub(crate) errors: Vec<(String, String)>,
    /// Ignored fields and other notes.
    pub(crate) warnings: Vec<(String, String)>,
}

/// serde_ignored's `spec.?.ingress.?.0.x` as the API server spells it: `spec.ingress[0].x`.
pub(crate) fn field_path(raw: &str) -> String {
    let mut out = String::new();
    for part in raw.split('.').filter(|p| *p != "?") {
        if part.bytes().all(|b| b.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// An object with invalid fields: the errors, and what stands in for it.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// Every field error found.
    pub errors: FieldErrors,
    /// One policy per spec whose endpoint selector could be read: it selects the same pods and
    /// isolates them in each direction the spec has rules for, allowing nothing. Leaving the
    /// object out instead would open the pods it meant to close.
    pub isolating: Vec<Policy>,
}

/// Reads the object into one policy per spec. An object with invalid fields is [`Invalid`];
/// softer findings go to `findings`.
pub(crate) fn convert(
    kind: PolicyKind,
    value: Value,
    origin: &Origin,
    findings: &mut Findings,
) -> Result<Vec<Policy>, Invalid> {
    let mut ignored = Vec::new();
    let obj: CiliumObject = {
        let mut record = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
        let de = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut errors = FieldErrors::default();
            errors.invalid(e.path().to_string(), "", &e.inner().to_string());
            // The object could not be read at all: nothing to select pods with.
            Invalid {
                errors,
                isolating: Vec::new(),
            }
        })?
    };
    for path in ignored {
        findings.warnings.push((
            field_path(&path),
            "unknown field, ignored (the API server would prune it)".into(),
        ));
    }
    let mut errs = FieldErrors::default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.required("metadata.name", "name or generateName is required");
    }
    // A clusterwide policy has no namespace: its selectors span every namespace.
    let namespace = if kind.cluster_scoped() {
        String::new()
    } else {
        obj.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    };
    let specs: Vec<(String, &Spec)> = match (&obj.spec, &obj.specs) {
        (Some(s), None) => vec![("spec".into(), s)],
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("specs[{i}]"), s))
            .collect(),
        (Some(s), Some(list)) => std::iter::once(("spec".to_string(), s))
            .chain(
                list.iter()
                    .enumerate()
                    .map(|(i, s)| (format!("specs[{i}]"), s)),
            )
            .collect(),
        (None, None) => {
            errs.required("spec", "a spec or specs is required");
            Vec::new()
        }
    };
    let several = specs.len() > 1;
    let mut policies = Vec::new();
    let mut isolating = Vec::new();
    for (path, spec) in specs {
        let before = errs.0.len();
        let mut policy = spec_policy(spec, &path, &namespace, &mut errs, findings);
        policy.name = PolicyName {
            kind,
            namespace: namespace.clone(),
            name: if several {
                format!("{name}#{path}")
            } else {
                name.clone()
            },
        };
        policy.origin = origin.clone();
        let selector_field = format!("{path}.endpointSelector");
        let selector_read = spec.endpoint_selector.is_some()
            && !errs.0[before..]
                .iter()
                .any(|e| e.field.starts_with(&selector_field));
        if selector_read {
            isolating.push(isolating_only(&policy, spec));
        }
        policies.push(policy);
    }
    if errs.is_empty() {
        Ok(policies)
    } else {
        Err(Invalid {
            errors: errs,
            isolating,
        })
    }
}

/// `policy` reduced to isolation: the same pods, each direction the spec has rules for
/// isolated, nothing allowed.
fn isolating_only(policy: &Policy, spec: &Spec) -> Policy {
    let ingress = spec.ingress.is_some() || spec.ingress_deny.is_some();
    let egress = spec.egress.is_some() || spec.egress_deny.is_some();
    Policy {
        ingress: ingress.then(Vec::new),
        egress: egress.then(Vec::new),
        default_deny: DefaultDeny { ingress, egress },
        ..policy.clone()
    }
}

fn spec_policy(
    spec: &Spec,
    path: &str,
    namespace: &str,
    errs: &mut FieldErrors,
    findings: &mut Findings,
) -> Policy {
    let mut pod_selector = LabelSelector::everything();
    let mut namespace_selector = None;
    match (&spec.endpoint_selector, &spec.node_selector) {
        (Some(sel), _) => {
            let field = format!("{path}.endpointSelector");
            let parsed = endpoint_selector(sel, &field, errs);
            namespace_selector = parsed.namespace_requirements(None);
            pod_selector = parsed.pods;
        }
        (None, Some(_)) => findings.errors.push((
            format!("{path}.nodeSelector"),
            "host policies (nodeSelector) are not enforced by podwall: this spec selects nothing"
                .into(),
        )),
        (None, None) => errs.required(
            format!("{path}.endpointSelector"),
            "an endpointSelector is required",
        ),
    }
    // Deny rules are not enforced; ignoring them would open what they close, so the policy's
    // allows in that direction are dropped instead (it still isolates its pods).
    let mut deny_ingress = false;
    let mut deny_egress = false;
    for (field, deny, flag) in [
        ("ingressDeny", &spec.ingress_deny, &mut deny_ingress),
        ("egressDeny", &spec.egress_deny, &mut deny_egress),
    ] {
        if deny.as_ref().is_some_and(|d| !d.is_empty()) {
            *flag = true;
            findings.errors.push((
                format!("{path}.{field}"),
                "deny rules are not enforced by podwall: this policy allows nothing in this direction (it still isolates its pods)".into(),
            ));
        }
    }
    let convert_dir = |rules: &Option<Vec<PeerRule>>,
                       dir: &str,
                       errs: &mut FieldErrors,
                       findings: &mut Findings| {
        rules.as_ref().filter(|r| !r.is_empty()).map(|rules| {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                out.extend(peer_rule(
                    r,
                    &format!("{path}.{dir}[{i}]"),
                    dir == "ingress",
                    namespace,
                    errs,
                    findings,
                ));
            }
            out
        })
    };
    let mut ingress = convert_dir(&spec.ingress, "ingress", errs, findings);
    let mut egress = convert_dir(&spec.egress, "egress", errs, findings);
    if deny_ingress {
        ingress = Some(Vec::new());
    }
    if deny_egress {
        egress = Some(Vec::new());
    }
    let defaults = spec.enable_default_deny.as_ref();
    let default_deny = DefaultDeny {
        ingress: defaults
            .and_then(|d| d.ingress)
            .unwrap_or(ingress.is_some()),
        egress: defaults.and_then(|d| d.egress).unwrap_or(egress.is_some()),
    };
    Policy {
        name: PolicyName {
            kind: PolicyKind::PodwallPolicy,
            namespace: namespace.to_string(),
            name: String::new(),
        },
        origin: Origin::default(),
        pod_selector,
        namespace_selector,
        ingress,
        egress,
        policy_types_explicit: true,
        default_deny,
        cluster: None,
    }
}

/// An endpoint selector taken apart into what it says about namespaces and about pods.
struct EndpointSelector {
    /// Requirements on the namespace's name (`io.kubernetes.pod.namespace`).
    namespace_names: Vec<Requirement>,
    /// Requirements on the namespace's labels.
    namespace_labels: Vec<Requirement>,
    /// Requirements on the pod's labels.
    pods: LabelSelector,
}

impl EndpointSelector {
    /// The namespace requirements as a selector on namespaces; `own` adds the policy's own
    /// namespace when the selector names none.
    fn namespace_requirements(&self, own: Option<&str>) -> Option<LabelSelector> {
        let mut reqs = self.namespace_names.clone();
        if reqs.is_empty()
            && let Some(own) = own
        {
            reqs.push(Requirement::equals(NAMESPACE_NAME_LABEL, own));
        }
        reqs.extend(self.namespace_labels.iter().cloned());
        (!reqs.is_empty()).then_some(LabelSelector { requirements: reqs })
    }

    /// The namespaces a peer selector looks in (`own` empty: a clusterwide policy's, every
    /// namespace unless the selector says).
    fn scope(&self, own: &str) -> NamespaceScope {
        if self.namespace_names.is_empty() && self.namespace_labels.is_empty() {
            return if own.is_empty() {
                NamespaceScope::Selected(LabelSelector::everything())
            } else {
                NamespaceScope::Named(own.to_string())
            };
        }
        if self.namespace_labels.is_empty()
            && let [req] = self.namespace_names.as_slice()
            && req.operator == Operator::In
            && req.values.len() == 1
        {
            return NamespaceScope::Named(req.values[0].clone());
        }
        let own = Some(own).filter(|o| !o.is_empty());
        NamespaceScope::Selected(self.namespace_requirements(own).unwrap_or_default())
    }
}

/// A Cilium label key without its source prefix; `Err` for sources podwall does not read.
fn strip_source(key: &str) -> Result<&str, String> {
    match key.split_once(':') {
        None => Ok(key),
        Some(("k8s" | "any", rest)) => Ok(rest),
        Some((source, _)) => Err(format!(
            "label source {source:?} is not supported (only k8s: and any:)"
        )),
    }
}

fn endpoint_selector(
    sel: &meta::LabelSelector,
    field: &str,
    errs: &mut FieldErrors,
) -> EndpointSelector {
    // Validate and convert as a plain label selector after stripping the sources.
    let mut stripped = meta::LabelSelector::default();
    if let Some(labels) = &sel.match_labels {
        let mut out = BTreeMap::new();
        for (k, v) in labels {
            match strip_source(k) {
                Ok(key) => {
                    out.insert(key.to_string(), v.clone());
                }
                Err(e) => errs.invalid(format!("{field}.matchLabels"), k, &e),
            }
        }
        stripped.match_labels = Some(out);
    }
    if let Some(exprs) = &sel.match_expressions {
        let mut out = Vec::new();
        for (i, e) in exprs.iter().enumerate() {
            match strip_source(&e.key) {
                Ok(key) => {
                    let mut e = e.clone();
                    e.key = key.to_string();
                    out.push(e);
                }
                Err(msg) => {
                    errs.invalid(format!("{field}.matchExpressions[{i}].key"), &e.key, &msg)
                }
            }
        }
        stripped.match_expressions = Some(out);
    }
    let all = validate::label_selector(&stripped, field, errs);
    let mut parsed = EndpointSelector {
        namespace_names: Vec::new(),
        namespace_labels: Vec::new(),
        pods: LabelSelector::everything(),
    };
    for req in all.requirements {
        if req.key == NAMESPACE_KEY {
            parsed.namespace_names.push(Requirement {
                key: NAMESPACE_NAME_LABEL.to_string(),
                ..req
            });
        } else if let Some(label) = req.key.strip_prefix(NAMESPACE_LABELS_PREFIX) {
            parsed.namespace_labels.push(Requirement {
                key: label.to_string(),
                ..req
            });
        } else if req.key.starts_with("io.cilium.") {
            errs.invalid(
                field,
                &req.key,
                "this Cilium label is not known to podwall (service account and cluster labels are not supported)",
            );
        } else {
            parsed.pods.requirements.push(req);
        }
    }
    parsed
}

fn parse_cidr(s: &str, field: &str, errs: &mut FieldErrors) -> Option<IpNet> {
    if let Ok(net) = IpNet::from_str(s) {
        return Some(net);
    }
    if let Ok(ip) = std::net::IpAddr::from_str(s) {
        return Some(IpNet::from(ip));
    }
    errs.invalid(
        field,
        s,
        "must be a valid CIDR (e.g. 10.9.8.0/24) or address",
    );
    None
}

fn entity(s: &str) -> Option<Entity> {
    Some(match s {
        "world" | "world-ipv4" | "world-ipv6" => Entity::World,
        "cluster" => Entity::Cluster,
        "host" => Entity::Host,
        "remote-node" => Entity::RemoteNode,
        "all" => Entity::All,
        "kube-apiserver" => Entity::KubeApiserver,
        _ => return None,
    })
}

/// One Cilium rule into model rules: one per `toPorts` entry, or one for an L3-only rule.
fn peer_rule(
    r: &PeerRule,
    path: &str,
    ingress: bool,
    namespace: &str,
    errs: &mut FieldErrors,
    findings: &mut Findings,
) -> Vec<Rule> {
    let (endpoints, cidrs, cidr_sets, entities, names) = if ingress {
        (
            &r.from_endpoints,
            &r.from_cidr,
            &r.from_cidr_set,
            &r.from_entities,
            ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"],
        )
    } else {
        (
            &r.to_endpoints,
            &r.to_cidr,
            &r.to_cidr_set,
            &r.to_entities,
            ["toEndpoints", "toCIDR", "toCIDRSet", "toEntities"],
        )
    };
    // Fields of the other direction in this rule are mistakes.
    let wrong: Vec<(&str, bool)> = if ingress {
        vec![
            ("toEndpoints", r.to_endpoints.is_some()),
            ("toCIDR", r.to_cidr.is_some()),
            ("toCIDRSet", r.to_cidr_set.is_some()),
            ("toEntities", r.to_entities.is_some()),
            ("toFQDNs", r.to_fqdns.is_some()),
        ]
    } else {
        vec![
            ("fromEndpoints", r.from_endpoints.is_some()),
            ("fromCIDR", r.from_cidr.is_some()),
            ("fromCIDRSet", r.from_cidr_set.is_some()),
            ("fromEntities", r.from_entities.is_some()),
        ]
    };
    for (name, present) in wrong {
        if present {
            errs.forbidden(
                format!("{path}.{name}"),
                if ingress {
                    "not allowed in an ingress rule"
                } else {
                    "not allowed in an egress rule"
                },
            );
        }
    }
    let unsupported: [(&str, bool); 9] = [
        (
            "fromRequires",
            r.from_requires.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "toRequires",
            r.to_requires.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "fromGroups",
            r.from_groups.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "toGroups",
            r.to_groups.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "fromNodes",
            r.from_nodes.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "toNodes",
            r.to_nodes.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "toServices",
            r.to_services.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        ("icmps", r.icmps.as_ref().is_some_and(|v| !v.is_empty())),
        ("authentication", r.authentication.is_some()),
    ];
    let mut skip = false;
    for (name, present) in unsupported {
        if present {
            skip = true;
            findings.errors.push((
                format!("{path}.{name}"),
                format!("{name} is not enforced by podwall: this rule allows nothing (the policy still isolates its pods)"),
            ));
        }
    }

    // Cilium refuses a rule that mixes kinds of L3 peers ("Combining ToFQDNs and ToEndpoints is
    // not supported yet"); podwall keeps the policy's isolation and drops the rule.
    let fqdns = if ingress { None } else { r.to_fqdns.as_ref() };
    let kinds: Vec<&str> = [
        (names[0], endpoints.as_ref().is_some_and(|v| !v.is_empty())),
        (names[1], cidrs.as_ref().is_some_and(|v| !v.is_empty())),
        (names[2], cidr_sets.as_ref().is_some_and(|v| !v.is_empty())),
        (names[3], entities.as_ref().is_some_and(|v| !v.is_empty())),
        ("toFQDNs", fqdns.is_some_and(|v| !v.is_empty())),
    ]
    .into_iter()
    .filter_map(|(n, present)| present.then_some(n))
    .collect();
    if kinds.len() > 1 {
        skip = true;
        findings.errors.push((
            path.to_string(),
            format!(
                "combining {} in one rule is not supported (Cilium rejects it): this rule allows nothing; write one rule per kind of peer",
                kinds.join(" and ")
            ),
        ));
    }

    let mut peers = Vec::new();
    let mut has_l3 = false;
    for (i, spec) in fqdns.into_iter().flatten().enumerate() {
        has_l3 = true;
        peers.extend(
            fqdn_selectors(spec, &format!("{path}.toFQDNs[{i}]"), false, errs)
                .into_iter()
                .map(Peer::Fqdn),
        );
    }
    for (i, sel) in endpoints.iter().flatten().enumerate() {
        has_l3 = true;
        let parsed = endpoint_selector(sel, &format!("{path}.{}[{i}]", names[0]), errs);
        peers.push(Peer::Pods {
            namespaces: parsed.scope(namespace),
            pods: parsed.pods,
        });
    }
    for (i, c) in cidrs.iter().flatten().enumerate() {
        has_l3 = true;
        if let Some(net) = parse_cidr(c, &format!("{path}.{}[{i}]", names[1]), errs) {
            peers.push(Peer::ExternalCidr(IpBlock {
                cidr: net,
                except: Vec::new(),
            }));
        }
    }
    for (i, set) in cidr_sets.iter().flatten().enumerate() {
        has_l3 = true;
        let field = format!("{path}.{}[{i}]", names[2]);
        if set.cidr_group_ref.is_some() {
            skip = true;
            findings.errors.push((
                format!("{field}.cidrGroupRef"),
                "CIDR groups are not supported: this rule allows nothing".into(),
            ));
            continue;
        }
        let Some(cidr) = set.cidr.as_deref() else {
            errs.required(format!("{field}.cidr"), "");
            continue;
        };
        let Some(net) = parse_cidr(cidr, &format!("{field}.cidr"), errs) else {
            continue;
        };
        let mut except = Vec::new();
        for (j, e) in set.except.iter().flatten().enumerate() {
            let ef = format!("{field}.except[{j}]");
            if let Some(en) = parse_cidr(e, &ef, errs) {
                if !net.trunc().contains(&en.trunc().addr()) || en.prefix_len() <= net.prefix_len()
                {
                    errs.invalid(ef, e, "must be a strict subset of `cidr`");
                } else {
                    except.push(en);
                }
            }
        }
        peers.push(Peer::ExternalCidr(IpBlock { cidr: net, except }));
    }
    for (i, e) in entities.iter().flatten().enumerate() {
        has_l3 = true;
        match entity(e) {
            Some(ent) => peers.push(Peer::Entity(ent)),
            None => errs.unsupported(
                format!("{path}.{}[{i}]", names[3]),
                e,
                &[
                    "world",
                    "cluster",
                    "host",
                    "remote-node",
                    "all",
                    "kube-apiserver",
                ],
            ),
        }
    }
    let to_ports = r.to_ports.as_deref().unwrap_or_default();
    // An empty rule allows nothing (Cilium's "deny all" idiom); so does one whose every L3 peer
    // was invalid (already an error) — never everything. The ports are still read, so that
    // every error is reported at once.
    let allows_nothing = skip || (!has_l3 && to_ports.is_empty()) || (has_l3 && peers.is_empty());
    if to_ports.is_empty() {
        return if allows_nothing {
            Vec::new()
        } else {
            vec![Rule::new(peers, Vec::new(), path)]
        };
    }
    let mut out = Vec::new();
    for (j, pr) in to_ports.iter().enumerate() {
        let field = format!("{path}.toPorts[{j}]");
        let mut unsupported_port = false;
        for (name, present) in [
            ("terminatingTLS", pr.terminating_tls.is_some()),
            ("originatingTLS", pr.originating_tls.is_some()),
            (
                "serverNames",
                pr.server_names.as_ref().is_some_and(|v| !v.is_empty()),
            ),
            ("listener", pr.listener.is_some()),
        ] {
            if present {
                unsupported_port = true;
                findings.errors.push((
                    format!("{field}.{name}"),
                    format!("{name} is not supported by podwall: this port entry allows nothing"),
                ));
            }
        }
        let rules = pr.rules.as_ref();
        for (name, present) in [
            (
                "kafka",
                rules
                    .and_then(|r| r.kafka.as_ref())
                    .is_some_and(|v| !v.is_empty()),
            ),
            ("l7proto", rules.and_then(|r| r.l7proto.as_ref()).is_some()),
            (
                "l7",
                rules
                    .and_then(|r| r.l7.as_ref())
                    .is_some_and(|v| !v.is_empty()),
            ),
        ] {
            if present {
                unsupported_port = true;
                findings.errors.push((
                    format!("{field}.rules.{name}"),
                    format!(
                        "{name} rules are not enforced by podwall: this port entry allows nothing"
                    ),
                ));
            }
        }
        // An empty list is no rules at all (Cilium's `L7Rules.IsEmpty`): plain L4, as for
        // `http: []`.
        let dns_specs = rules.and_then(|r| r.dns.as_ref()).filter(|d| !d.is_empty());
        let has_http = rules
            .and_then(|r| r.http.as_ref())
            .is_some_and(|h| !h.is_empty());
        let dns = dns_specs.map(|list| {
            list.iter()
                .enumerate()
                .flat_map(|(k, spec)| {
                    fqdn_selectors(spec, &format!("{field}.rules.dns[{k}]"), true, errs)
                })
                .collect::<Vec<_>>()
        });
        if let Some(problem) = dns.as_ref().and_then(|_| {
            dns_rule_problem(ingress, has_http, pr.ports.as_deref().unwrap_or_default())
        }) {
            unsupported_port = true;
            findings.errors.push((
                format!("{field}.rules.dns"),
                format!("{problem}: this port entry allows nothing"),
            ));
        }
        if unsupported_port {
            continue;
        }
        let ports = ports(pr.ports.as_deref().unwrap_or_default(), &field, errs);
        if let Some(dns) = dns {
            out.push(Rule {
                dns: Some(dns),
                ..Rule::new(peers.clone(), ports, &field)
            });
            continue;
        }
        let http = rules
            .and_then(|r| r.http.as_ref())
            .filter(|h| !h.is_empty())
            .map(|h| {
                h.iter()
                    .enumerate()
                    .filter_map(|(k, spec)| {
                        http_rule(spec, &format!("{field}.rules.http[{k}]"), errs)
                    })
                    .collect::<Vec<_>>()
            });
        match http {
            None => out.push(Rule::new(peers.clone(), ports, &field)),
            Some(http) => {
                // HTTP rules only make sense on TCP; other protocols of the entry are L4 allows.
                let (tcp, other): (Vec<PortSpec>, Vec<PortSpec>) =
                    ports.into_iter().partition(|p| p.protocol == Protocol::Tcp);
                if !tcp.is_empty() {
                    out.push(Rule {
                        http: Some(http),
                        ..Rule::new(peers.clone(), tcp, &field)
                    });
                }
                if !other.is_empty() {
                    out.push(Rule::new(peers.clone(), other, &field));
                }
            }
        }
    }
    if allows_nothing { Vec::new() } else { out }
}

/// Why Cilium would refuse DNS rules on this port entry, if it would.
fn dns_rule_problem(ingress: bool, has_http: bool, ports: &[PortProtocol]) -> Option<String> {
    if ingress {
        return Some("DNS rules are only allowed on egress".into());
    }
    if has_http {
        return Some("HTTP and DNS rules cannot be combined in one port entry".into());
    }
    if ports.is_empty() {
        return Some("DNS rules need their port (53) listed".into());
    }
    for p in ports {
        let zero = match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => *n == 0,
            Some(IntOrString::String(s)) => s.parse::<i64>().is_ok_and(|n| n == 0),
        };
        if zero {
            return Some("DNS rules need their port (53) listed, not every port".into());
        }
        if p.end_port.is_some() {
            return Some("DNS rules do not support port ranges".into());
        }
    }
    None
}

/// Longest name or pattern (RFC 1035's limit on a name).
const MAX_FQDN: usize = 255;

/// One `matchName`/`matchPattern` entry into selectors. A toFQDNs entry holds exactly one of
/// the two; a DNS rule may hold both (either then allows the query).
fn fqdn_selectors(
    spec: &FqdnSpec,
    field: &str,
    both_allowed: bool,
    errs: &mut FieldErrors,
) -> Vec<FqdnSelector> {
    let name = spec
        .match_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let pattern = spec
        .match_pattern
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if name.is_none() && pattern.is_none() {
        errs.required(field, "matchName or matchPattern is required");
        return Vec::new();
    }
    if name.is_some() && pattern.is_some() && !both_allowed {
        errs.invalid(
            field,
            "",
            "only one of matchName or matchPattern is allowed in a toFQDNs entry",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(n) = name {
        let f = format!("{field}.matchName");
        if n.len() > MAX_FQDN {
            errs.invalid(&f, n, "must be no more than 255 characters");
        } else if !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            errs.invalid(
                &f,
                n,
                "only letters, digits, '-', '_' and '.' are allowed in a name",
            );
        } else {
            let canon = n.to_ascii_lowercase();
            let canon = canon.strip_suffix('.').unwrap_or(&canon).to_string();
            if canon.is_empty() || canon.split('.').any(str::is_empty) {
                errs.invalid(&f, n, "a name may not have empty labels");
            } else {
                out.push(FqdnSelector::MatchName(canon));
            }
        }
    }
    if let Some(p) = pattern {
        let f = format!("{field}.matchPattern");
        if p.len() > MAX_FQDN {
            errs.invalid(&f, p, "must be no more than 255 characters");
        } else if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*'))
        {
            errs.invalid(
                &f,
                p,
                "only letters, digits, '-', '_', '.' and '*' are allowed in a pattern",
            );
        } else {
            let canon = p.to_ascii_lowercase();
            let trimmed = canon.strip_suffix('.').unwrap_or(&canon);
            if trimmed.bytes().all(|b| b == b'*') && !trimmed.is_empty() {
                out.push(FqdnSelector::MatchPattern("*".into()));
            } else if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
                errs.invalid(&f, p, "a pattern may not have empty labels");
            } else {
                out.push(FqdnSelector::MatchPattern(trimmed.to_string()));
            }
        }
    }
    out
}

/// `toPorts[].ports`: an empty list means every port of every protocol.
fn ports(list: &[PortProtocol], field: &str, errs: &mut FieldErrors) -> Vec<PortSpec> {
    if list.is_empty() {
        return Protocol::ALL
            .iter()
            .map(|p| PortSpec {
                protocol: *p,
                port: PortMatch::Any,
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let protocols: Vec<Protocol> = match p
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("ANY") | Some("") => Protocol::ALL.to_vec(),
            Some(other) => match Protocol::from_str(other) {
                Ok(proto) => vec![proto],
                Err(_) => {
                    errs.unsupported(
                        format!("{f}.protocol"),
                        p.protocol.as_deref().unwrap_or_default(),
                        &["TCP", "UDP", "SCTP", "ANY"],
                    );
                    continue;
                }
            },
        };
        let port = match &p.port {
            None => Some(PortMatch::Any),
            Some(IntOrString::Int(n)) => number_port(i64::from(*n), p.end_port, &f, errs),
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => number_port(n, p.end_port, &f, errs),
                Err(_) => match names::check_port_name(s) {
                    Ok(()) if p.end_port.is_none() => Some(PortMatch::Named(s.clone())),
                    Ok(()) => {
                        errs.invalid(
                            format!("{f}.endPort"),
                            p.end_port,
                            "may not be specified when `port` is non-numeric",
                        );
                        None
                    }
                    Err(e) => {
                        errs.invalid(format!("{f}.port"), s, &e);
                        None
                    }
                },
            },
        };
        if let Some(port) = port {
            for protocol in protocols {
                out.push(PortSpec {
                    protocol,
                    port: port.clone(),
                });
            }
        }
    }
    out
}

fn number_port(n: i64, end: Option<i32>, field: &str, errs: &mut FieldErrors) -> Option<PortMatch> {
    if n == 0 && end.is_none() {
        return Some(PortMatch::Any);
    }
    let lo = names::check_port_number(n)
        .map_err(|e| errs.invalid(format!("{field}.port"), n, &e))
        .ok()?;
    let hi = match end {
        None => lo,
        Some(e) => {
            let hi = names::check_port_number(i64::from(e))
                .map_err(|m| errs.invalid(format!("{field}.endPort"), e, &m))
                .ok()?;
            if hi < lo {
                errs.invalid(
                    format!("{field}.endPort"),
                    e,
                    "must be greater than or equal to `port`",
                );
                return None;
            }
            hi
        }
    };
    Some(PortMatch::Range(lo, hi))
}

/// Checks that a pattern compiles as the whole-value regular expression it will be used as.
fn regex_field(value: &Option<String>, field: String, errs: &mut FieldErrors) -> Option<String> {
    let v = value.as_ref()?;
    if let Err(e) = regex::Regex::new(&format!("^(?:{v})$")) {
        errs.invalid(
            field,
            v,
            &format!(
                "not a valid regular expression: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
        );
        return None;
    }
    Some(v.clone())
}

fn http_rule(spec: &HttpSpec, field: &str, errs: &mut FieldErrors) -> Option<HttpRule> {
    let before = errs.0.len();
    let mut rule = HttpRule {
        method: regex_field(&spec.method, format!("{field}.method"), errs),
        path: regex_field(&spec.path, format!("{field}.path"), errs),
        host: regex_field(&spec.host, format!("{field}.host"), errs),
        headers: Vec::new(),
    };
    for (i, h) in spec.headers.iter().flatten().enumerate() {
        let (name, value) = match h.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (h.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            errs.invalid(
                format!("{field}.headers[{i}]"),
                h,
                "expected \"Name\" or \"Name: value\"",
            );
            continue;
        }
        rule.headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value,
            mismatch: None,
        });
    }
    for (i, m) in spec.header_matches.iter().flatten().enumerate() {
        let f = format!("{field}.headerMatches[{i}]");
        if m.secret.is_some() {
            errs.invalid(
                format!("{f}.secret"),
                "",
                "secret-backed header values are not supported by podwall",
            );
            continue;
        }
        let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) else {
            errs.required(format!("{f}.name"), "");
            continue;
        };
        let mismatch = match m.mismatch.as_deref() {
            None | Some("") => None,
            Some("LOG") => Some(HeaderMismatch::Log),
            Some("ADD") => Some(HeaderMismatch::Add),
            Some("DELETE") => Some(HeaderMismatch::Delete),
            Some("REPLACE") => Some(HeaderMismatch::Replace),
            Some(other) => {
                errs.unsupported(
                    format!("{f}.mismatch"),
                    other,
                    &["LOG", "ADD", "DELETE", "REPLACE"],
                );
                continue;
            }
        };
        rule.headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: m.value.clone(),
            mismatch,
        });
    }
    (errs.0.len() == before).then_some(rule)
}

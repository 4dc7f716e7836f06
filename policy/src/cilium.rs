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

mod l7;
mod peers;
mod ports;
mod rule;
mod wire;

use serde_json::Value;

use crate::model::{DefaultDeny, Origin, Policy, PolicyKind, PolicyName};
use crate::selector::LabelSelector;
use crate::validate::FieldErrors;

use peers::endpoint_selector;
use rule::peer_rule;
use wire::*;
pub(crate) use wire::{CiliumObject, Spec};

/// The Cilium label that names a pod's namespace.
const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// Cilium's prefix for namespace labels in endpoint selectors.
const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

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

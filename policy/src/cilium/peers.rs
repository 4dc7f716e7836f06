//! Peers: endpoint selectors (with Cilium's source prefixes and namespace keys), CIDRs and
//! entities, as model peers.

use std::collections::BTreeMap;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use crate::model::{Entity, NAMESPACE_NAME_LABEL, NamespaceScope};
use crate::selector::{LabelSelector, Operator, Requirement};
use crate::validate::{self, FieldErrors};

use super::{NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX};

/// An endpoint selector taken apart into what it says about namespaces and about pods.
pub(super) struct EndpointSelector {
    /// Requirements on the namespace's name (`io.kubernetes.pod.namespace`).
    namespace_names: Vec<Requirement>,
    /// Requirements on the namespace's labels.
    namespace_labels: Vec<Requirement>,
    /// Requirements on the pod's labels.
    pub(super) pods: LabelSelector,
}

impl EndpointSelector {
    /// The namespace requirements as a selector on namespaces; `own` adds the policy's own
    /// namespace when the selector names none.
    pub(super) fn namespace_requirements(&self, own: Option<&str>) -> Option<LabelSelector> {
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
    pub(super) fn scope(&self, own: &str) -> NamespaceScope {
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
pub(super) fn strip_source(key: &str) -> Result<&str, String> {
    match key.split_once(':') {
        None => Ok(key),
        Some(("k8s" | "any", rest)) => Ok(rest),
        Some((source, _)) => Err(format!(
            "label source {source:?} is not supported (only k8s: and any:)"
        )),
    }
}

pub(super) fn endpoint_selector(
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

pub(super) fn parse_cidr(s: &str, field: &str, errs: &mut FieldErrors) -> Option<IpNet> {
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

pub(super) fn entity(s: &str) -> Option<Entity> {
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

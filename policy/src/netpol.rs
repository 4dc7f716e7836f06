//! `networking.k8s.io/v1` NetworkPolicy: validation exactly as the API server does it
//! (`pkg/apis/networking/validation`), then conversion into the policy model with upstream's
//! defaulting (`policyTypes`, protocol TCP, empty `from`/`to`/`ports` meaning everything).

use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    DefaultDeny, IpBlock, NamespaceScope, Origin, Peer, Policy, PolicyKind, PolicyName, PortMatch,
    PortSpec, Protocol, Rule,
};
use crate::names;
use crate::selector::LabelSelector;
use crate::validate::{self, FieldErrors};

/// Validates a NetworkPolicy and converts it; on any invalid field, returns every error found
/// (the policy is then left out, as the API server would have refused it).
pub(crate) fn convert(
    np: &net::NetworkPolicy,
    namespace: &str,
    origin: &Origin,
) -> Result<Policy, FieldErrors> {
    let mut errs = FieldErrors::default();
    let name = np.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.required("metadata.name", "name or generateName is required");
    } else if let Err(e) = names::check_dns1123_subdomain(&name) {
        errs.invalid("metadata.name", &name, &e);
    }
    if let Err(e) = names::check_dns1123_label(namespace) {
        errs.invalid("metadata.namespace", namespace, &e);
    }
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = validate::label_selector(
        &spec.pod_selector.clone().unwrap_or_default(),
        "spec.podSelector",
        &mut errs,
    );

    let ingress_rules: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.ingress[{i}]");
            rule(
                r.from.as_deref().unwrap_or_default(),
                r.ports.as_deref().unwrap_or_default(),
                &path,
                "from",
                namespace,
                &mut errs,
            )
        })
        .collect();
    let egress_rules: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.egress[{i}]");
            rule(
                r.to.as_deref().unwrap_or_default(),
                r.ports.as_deref().unwrap_or_default(),
                &path,
                "to",
                namespace,
                &mut errs,
            )
        })
        .collect();

    let (ingress, egress, explicit) = policy_types(&spec, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Policy {
        name: PolicyName {
            kind: PolicyKind::NetworkPolicy,
            namespace: namespace.to_string(),
            name,
        },
        origin: origin.clone(),
        pod_selector,
        namespace_selector: None,
        ingress: ingress.then_some(ingress_rules),
        egress: egress.then_some(egress_rules),
        policy_types_explicit: explicit,
        default_deny: DefaultDeny { ingress, egress },
        cluster: None,
    })
}

/// Which directions the policy isolates: `policyTypes` as written, or upstream's default
/// (Ingress always, Egress when `egress` has at least one rule).
fn policy_types(spec: &net::NetworkPolicySpec, errs: &mut FieldErrors) -> (bool, bool, bool) {
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.is_empty() {
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        return (true, has_egress, false);
    }
    if types.len() > 2 {
        errs.invalid(
            "spec.policyTypes",
            types,
            "may not specify more than two policyTypes",
        );
        return (false, false, true);
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => errs.unsupported(
                format!("spec.policyTypes[{i}]"),
                other,
                &["Ingress", "Egress"],
            ),
        }
    }
    (ingress, egress, true)
}

fn rule(
    peers: &[net::NetworkPolicyPeer],
    ports: &[net::NetworkPolicyPort],
    path: &str,
    peers_field: &str,
    namespace: &str,
    errs: &mut FieldErrors,
) -> Rule {
    let ports = ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| port(p, &format!("{path}.ports[{i}]"), errs))
        .collect();
    let peers = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| peer(p, &format!("{path}.{peers_field}[{i}]"), namespace, errs))
        .collect();
    Rule::new(peers, ports, path)
}

fn port(p: &net::NetworkPolicyPort, path: &str, errs: &mut FieldErrors) -> Option<PortSpec> {
    let protocol = match p.protocol.as_deref() {
        None => Some(Protocol::Tcp),
        Some(s) => match Protocol::from_str(s) {
            Ok(proto) => Some(proto),
            Err(_) => {
                errs.unsupported(format!("{path}.protocol"), s, &["TCP", "UDP", "SCTP"]);
                None
            }
        },
    };
    let end_field = format!("{path}.endPort");
    let port = match &p.port {
        None => {
            if let Some(end) = p.end_port {
                errs.invalid(
                    &end_field,
                    end,
                    "may not be specified when `port` is not specified",
                );
            }
            Some(PortMatch::Any)
        }
        Some(IntOrString::Int(n)) => {
            let start = names::check_port_number(i64::from(*n))
                .map_err(|e| errs.invalid(format!("{path}.port"), n, &e))
                .ok();
            let end = match p.end_port {
                None => start,
                Some(end) => {
                    if end < *n {
                        errs.invalid(&end_field, end, "must be greater than or equal to `port`");
                    }
                    names::check_port_number(i64::from(end))
                        .map_err(|e| errs.invalid(&end_field, end, &e))
                        .ok()
                }
            };
            match (start, end) {
                (Some(s), Some(e)) if s <= e => Some(PortMatch::Range(s, e)),
                _ => None,
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = p.end_port {
                errs.invalid(
                    &end_field,
                    end,
                    "may not be specified when `port` is non-numeric",
                );
            }
            match names::check_port_name(name) {
                Ok(()) => Some(PortMatch::Named(name.clone())),
                Err(e) => {
                    errs.invalid(format!("{path}.port"), name, &e);
                    None
                }
            }
        }
    };
    Some(PortSpec {
        protocol: protocol?,
        port: port?,
    })
}

fn peer(
    p: &net::NetworkPolicyPeer,
    path: &str,
    namespace: &str,
    errs: &mut FieldErrors,
) -> Option<Peer> {
    let count = [
        p.pod_selector.is_some(),
        p.namespace_selector.is_some(),
        p.ip_block.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count == 0 {
        errs.required(path, "must specify a peer");
        return None;
    }
    if count > 1 && p.ip_block.is_some() {
        errs.forbidden(path, "may not specify both ipBlock and another peer");
        return None;
    }
    if let Some(block) = &p.ip_block {
        return ip_block(block, &format!("{path}.ipBlock"), errs).map(Peer::IpBlock);
    }
    let pods = match &p.pod_selector {
        Some(s) => validate::label_selector(s, &format!("{path}.podSelector"), errs),
        None => LabelSelector::everything(),
    };
    let namespaces = match &p.namespace_selector {
        Some(s) => NamespaceScope::Selected(validate::label_selector(
            s,
            &format!("{path}.namespaceSelector"),
            errs,
        )),
        None => NamespaceScope::Named(namespace.to_string()),
    };
    Some(Peer::Pods { namespaces, pods })
}

fn ip_block(b: &net::IPBlock, path: &str, errs: &mut FieldErrors) -> Option<IpBlock> {
    let cidr_field = format!("{path}.cidr");
    if b.cidr.is_empty() {
        errs.required(cidr_field, "");
        return None;
    }
    let cidr = parse_cidr(&b.cidr, &cidr_field, errs)?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{i}]");
        let Some(net) = parse_cidr(e, &field, errs) else {
            continue;
        };
        // Upstream: the except's network address must be inside cidr and its prefix longer.
        let inside = cidr.trunc().contains(&net.trunc().addr());
        if !inside || net.prefix_len() <= cidr.prefix_len() {
            errs.invalid(field, e, "must be a strict subset of `cidr`");
            continue;
        }
        except.push(net);
    }
    Some(IpBlock { cidr, except })
}

fn parse_cidr(s: &str, field: &str, errs: &mut FieldErrors) -> Option<IpNet> {
    match IpNet::from_str(s) {
        Ok(net) => Some(net),
        Err(_) => {
            errs.invalid(
                field,
                s,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            );
            None
        }
    }
}

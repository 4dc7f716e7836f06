//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, network-policy-api v0.2.0) into
//! podwall's [`Policy`]: a cluster-scoped policy in the Admin or Baseline tier whose rules
//! Accept, Deny or Pass, first match wins.
//!
//! What the API server's schema would refuse is refused here too, naming the field. Two things
//! the API defines for implementations are kept exactly: a peer podwall cannot read (a field of
//! a newer API, or none at all) makes its rule fail closed (an Accept rule matches nothing, a
//! Deny or Pass rule denies everything), and so does any other rule podwall cannot enforce as
//! written, so that a guardrail an administrator wrote never opens in silence.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::Value;

use crate::model::{
    Action, ClusterScope, DefaultDeny, Direction, FqdnSelector, IpBlock, NamespaceScope, Origin,
    Peer, Policy, PolicyKind, PolicyName, PortMatch, PortSpec, Protocol, Rule, Tier,
};
use crate::selector::LabelSelector;
use crate::validate::{FieldErrors, label_selector};

/// Most rules per direction and most peers or protocols per rule the API allows.
const MAX_ITEMS: usize = 25;

/// A converted policy and the rules that fail closed (each error names the rule's field).
pub(crate) struct Converted {
    pub(crate) policy: Policy,
    /// Errors of rules kept as fail-closed rules (the policy is enforced without them).
    pub(crate) rule_errors: FieldErrors,
    /// Fields of the spec podwall does not know, hence does not enforce (the rest is).
    pub(crate) unknown_fields: FieldErrors,
    /// What made the whole policy unreadable (its tier, priority or subject): it is kept,
    /// failing closed (see [`convert`]).
    pub(crate) failed_closed: FieldErrors,
    /// Label syntax the API server would refuse in a selector the CRD does not check: the
    /// selector is evaluated as written.
    pub(crate) as_written: FieldErrors,
}

/// Converts one object; `Err` only without a name (nothing to know it by).
///
/// A policy whose tier, priority or subject cannot be read is not left out (that would lift
/// an Admin-tier Deny in silence): it fails closed, in the Admin tier at priority 0 when its
/// own cannot be read, for every pod when its subject cannot be read, its Deny and Pass rules
/// denying and its Accept rules matching nothing.
pub(crate) fn convert(value: &Value, origin: &Origin) -> Result<Converted, FieldErrors> {
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        let mut errs = FieldErrors::default();
        errs.required("metadata.name", "");
        return Err(errs);
    }
    let mut errs = FieldErrors::default();
    let spec = &value["spec"];
    let tier = match spec["tier"].as_str() {
        Some("Admin") => Some(Tier::Admin),
        Some("Baseline") => Some(Tier::Baseline),
        Some(other) => {
            errs.unsupported("spec.tier", other, &["Admin", "Baseline"]);
            None
        }
        None => {
            errs.required("spec.tier", "");
            None
        }
    };
    let priority = match spec["priority"].as_i64() {
        Some(p @ 0..=1000) => Some(p as u32),
        Some(p) => {
            errs.invalid("spec.priority", p, "must be between 0 and 1000");
            None
        }
        None => {
            errs.required("spec.priority", "");
            None
        }
    };
    // Label syntax errors alone leave the selector as written (well defined, if not what the
    // API server would admit); anything else in the subject makes it unreadable.
    let mut subject_errs = FieldErrors::default();
    let subject = subject(&spec["subject"], &mut subject_errs);
    let syntax_only = !subject_errs.is_empty()
        && subject_errs.0.iter().all(|e| {
            e.message.starts_with("Invalid value")
                && (e.field.ends_with(".matchLabels")
                    || e.field.ends_with(".key")
                    || e.field.contains(".values["))
        });
    let mut as_written = FieldErrors::default();
    if syntax_only {
        as_written = subject_errs;
    } else {
        errs.0.extend(subject_errs.0);
    }
    let mut unknown_fields = FieldErrors::default();
    for key in spec.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !["tier", "priority", "subject", "ingress", "egress"].contains(&key.as_str()) {
            unknown_fields.invalid(
                format!("spec.{key}"),
                key,
                "unknown field: podwall does not enforce it (an API newer than podwall's?)",
            );
        }
    }
    let failed = !errs.is_empty();
    let tier = tier.filter(|_| !failed).unwrap_or(Tier::Admin);
    let priority = priority.filter(|_| !failed).unwrap_or(0);
    let (namespaces, pods) = subject
        .filter(|_| !failed)
        .unwrap_or_else(|| (LabelSelector::everything(), LabelSelector::everything()));
    let mut rule_errors = FieldErrors::default();
    let mut rules_of = |direction: Direction| -> Option<Vec<Rule>> {
        let field = format!("spec.{direction}");
        let list = match &spec[direction.as_str()] {
            Value::Null => return None,
            Value::Array(list) => list,
            other => {
                // Unreadable rules fail closed: one rule that denies this direction.
                rule_errors.invalid(&field, other.to_string(), "a list of rules");
                return Some(vec![Rule {
                    action: Some(Action::Deny),
                    ..Rule::new(Vec::new(), Vec::new(), field)
                }]);
            }
        };
        if list.len() > MAX_ITEMS {
            rule_errors.invalid(
                &field,
                list.len(),
                "must have at most 25 items (all are enforced)",
            );
        }
        let rules: Vec<Rule> = list
            .iter()
            .enumerate()
            .map(|(i, r)| rule(r, direction, &format!("{field}[{i}]"), &mut rule_errors))
            .collect();
        (!rules.is_empty()).then_some(rules)
    };
    let mut ingress = rules_of(Direction::Ingress);
    let mut egress = rules_of(Direction::Egress);
    if failed {
        for rule in ingress.iter_mut().chain(egress.iter_mut()).flatten() {
            match rule.action {
                Some(Action::Accept) => rule.inert = true,
                _ => rule.action = Some(Action::Deny),
            }
        }
    }
    Ok(Converted {
        policy: Policy {
            name: PolicyName {
                kind: PolicyKind::ClusterNetworkPolicy,
                namespace: String::new(),
                name: name.to_string(),
            },
            origin: origin.clone(),
            pod_selector: pods,
            namespace_selector: Some(namespaces),
            ingress,
            egress,
            policy_types_explicit: false,
            default_deny: DefaultDeny::default(),
            cluster: Some(ClusterScope { tier, priority }),
        },
        rule_errors,
        unknown_fields,
        failed_closed: errs,
        as_written,
    })
}

/// A selector from JSON (`None`: not an object of a selector's shape, reported).
fn selector(value: &Value, field: &str, errs: &mut FieldErrors) -> Option<LabelSelector> {
    match serde_json::from_value::<meta::LabelSelector>(value.clone()) {
        Ok(s) => Some(label_selector(&s, field, errs)),
        Err(e) => {
            errs.invalid(
                field,
                value.to_string(),
                &format!("not a label selector: {e}"),
            );
            None
        }
    }
}

/// `subject`: exactly one of `namespaces` (a selector) or `pods` (namespace and pod selectors),
/// as (namespace selector, pod selector).
fn subject(value: &Value, errs: &mut FieldErrors) -> Option<(LabelSelector, LabelSelector)> {
    let Some(map) = value.as_object() else {
        errs.required("spec.subject", "");
        return None;
    };
    let known: Vec<&String> = map
        .keys()
        .filter(|k| *k == "namespaces" || *k == "pods")
        .collect();
    if map.len() != 1 || known.len() != 1 {
        errs.invalid(
            "spec.subject",
            value.to_string(),
            "exactly one of `namespaces` or `pods` must be set (podwall cannot tell which pods another field selects)",
        );
        return None;
    }
    if let Some(ns) = map.get("namespaces") {
        let ns = selector(ns, "spec.subject.namespaces", errs)?;
        return Some((ns, LabelSelector::everything()));
    }
    let (ns, pods) = namespaced_pod(&map["pods"], "spec.subject.pods", errs)?;
    Some((ns, pods))
}

/// `pods`: `namespaceSelector` (optional, every namespace when empty) and `podSelector`.
fn namespaced_pod(
    value: &Value,
    field: &str,
    errs: &mut FieldErrors,
) -> Option<(LabelSelector, LabelSelector)> {
    if !known_keys(value, &["namespaceSelector", "podSelector"], field, errs) {
        return None;
    }
    let ns = match value.get("namespaceSelector") {
        None | Some(Value::Null) => LabelSelector::everything(),
        Some(v) => selector(v, &format!("{field}.namespaceSelector"), errs)?,
    };
    let pods = match value.get("podSelector") {
        None | Some(Value::Null) => {
            errs.required(format!("{field}.podSelector"), "");
            return None;
        }
        Some(v) => selector(v, &format!("{field}.podSelector"), errs)?,
    };
    Some((ns, pods))
}

/// Whether every key of `value` (an object) is one of `known`; the others are reported (a
/// field podwall cannot read may narrow what it is part of).
fn known_keys(value: &Value, known: &[&str], field: &str, errs: &mut FieldErrors) -> bool {
    let mut ok = true;
    for key in value.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !known.contains(&key.as_str()) {
            ok = false;
            errs.invalid(
                format!("{field}.{key}"),
                key,
                "unknown field: podwall cannot tell what it narrows",
            );
        }
    }
    ok
}

/// One rule. A rule podwall cannot enforce as written fails closed, with its errors reported.
fn rule(value: &Value, direction: Direction, field: &str, errs: &mut FieldErrors) -> Rule {
    let mut mine = FieldErrors::default();
    // A field podwall cannot read may narrow what the rule matches: the rule fails closed.
    let known = ["name", "action", direction.peers_field(), "protocols"];
    for key in value.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !known.contains(&key.as_str()) {
            mine.invalid(
                format!("{field}.{key}"),
                key,
                "unknown field: podwall cannot tell what it narrows",
            );
        }
    }
    let name = value["name"].as_str().map(str::to_string);
    if name.as_ref().is_some_and(|n| n.len() > 100) {
        mine.invalid(
            format!("{field}.name"),
            &name,
            "must be at most 100 characters",
        );
    }
    let action = match value["action"].as_str() {
        Some("Accept") => Some(Action::Accept),
        Some("Deny") => Some(Action::Deny),
        Some("Pass") => Some(Action::Pass),
        Some(other) => {
            mine.unsupported(
                format!("{field}.action"),
                other,
                &["Accept", "Deny", "Pass"],
            );
            None
        }
        None => {
            mine.required(format!("{field}.action"), "");
            None
        }
    };
    let peers_field = format!("{field}.{}", direction.peers_field());
    let mut unreadable_peer = false;
    let mut peers = Vec::new();
    let mut peers_only_pods = true;
    match value[direction.peers_field()].as_array() {
        Some(list) if !list.is_empty() => {
            for (i, p) in list.iter().enumerate() {
                let f = format!("{peers_field}[{i}]");
                match peer(p, direction, &f, &mut mine) {
                    Some(read) => {
                        peers_only_pods &= read.iter().all(|r| matches!(r, Peer::Pods { .. }));
                        if read.iter().any(|r| matches!(r, Peer::Fqdn(_)))
                            && action != Some(Action::Accept)
                        {
                            mine.forbidden(
                                format!("{f}.domainNames"),
                                "domainNames are only supported in Accept rules",
                            );
                        }
                        peers.extend(read);
                    }
                    None => unreadable_peer = true,
                }
            }
        }
        _ => mine.required(&peers_field, "at least one peer"),
    }
    let ports = match value.get("protocols") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => protocols(v, &format!("{field}.protocols"), peers_only_pods, &mut mine),
    };
    let failed = !mine.is_empty() || unreadable_peer;
    errs.0.extend(mine.0);
    let field = field.to_string();
    if failed {
        // Fails closed, as the API says of unknown peers: an Accept matches nothing; anything
        // else (a Deny, a Pass, or an action podwall cannot read) denies all traffic.
        return match action {
            Some(Action::Accept) => Rule {
                action: Some(Action::Accept),
                name,
                inert: true,
                ..Rule::new(Vec::new(), Vec::new(), field)
            },
            _ => Rule {
                action: Some(Action::Deny),
                name,
                ..Rule::new(Vec::new(), Vec::new(), field)
            },
        };
    }
    Rule {
        action,
        name,
        ..Rule::new(peers, ports, field)
    }
}

/// One peer, as podwall's peers (a `networks` or `domainNames` list gives one per entry);
/// `None` when podwall cannot read it (no known field, several, or an invalid value): the rule
/// then fails closed.
fn peer(
    value: &Value,
    direction: Direction,
    field: &str,
    errs: &mut FieldErrors,
) -> Option<Vec<Peer>> {
    let known: &[&str] = match direction {
        Direction::Ingress => &["namespaces", "pods"],
        Direction::Egress => &["namespaces", "pods", "networks", "nodes", "domainNames"],
    };
    let Some(map) = value.as_object() else {
        errs.invalid(field, value.to_string(), "a peer is an object");
        return None;
    };
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    match keys.as_slice() {
        [key] if known.contains(key) => {}
        [] => {
            errs.required(
                field,
                &format!(
                    "exactly one of {} (the rule fails closed)",
                    known.join(", ")
                ),
            );
            return None;
        }
        _ => {
            errs.invalid(
                field,
                keys.join(","),
                &format!(
                    "exactly one of {} must be set; podwall cannot read the others (an API newer than podwall's?): the rule fails closed",
                    known.join(", ")
                ),
            );
            return None;
        }
    }
    let (key, v) = map.iter().next()?;
    let f = format!("{field}.{key}");
    let peer = match key.as_str() {
        "namespaces" => Peer::Pods {
            namespaces: NamespaceScope::Selected(selector(v, &f, errs)?),
            pods: LabelSelector::everything(),
        },
        "pods" => {
            let (ns, pods) = namespaced_pod(v, &f, errs)?;
            Peer::Pods {
                namespaces: NamespaceScope::Selected(ns),
                pods,
            }
        }
        "nodes" => Peer::Nodes(selector(v, &f, errs)?),
        "networks" => {
            let list = v.as_array().filter(|l| !l.is_empty());
            let Some(list) = list else {
                errs.required(&f, "at least one CIDR");
                return None;
            };
            if list.len() > MAX_ITEMS {
                errs.invalid(&f, list.len(), "must have at most 25 items");
            }
            let mut out = Vec::new();
            for (i, c) in list.iter().enumerate() {
                match c
                    .as_str()
                    .and_then(|s| s.trim().parse::<ipnet::IpNet>().ok())
                {
                    // Pods' addresses too: the API says cluster traffic is checked as well.
                    Some(cidr) => out.push(Peer::IpBlock(IpBlock {
                        cidr,
                        except: Vec::new(),
                    })),
                    None => {
                        errs.invalid(
                            format!("{f}[{i}]"),
                            c.to_string(),
                            "Invalid CIDR format provided",
                        );
                        return None;
                    }
                }
            }
            return Some(out);
        }
        "domainNames" => {
            let list = v.as_array().filter(|l| !l.is_empty());
            let Some(list) = list else {
                errs.required(&f, "at least one domain name");
                return None;
            };
            let mut out = Vec::new();
            for (i, n) in list.iter().enumerate() {
                match n.as_str().and_then(domain_name) {
                    Some(sel) => out.push(Peer::Fqdn(sel)),
                    None => {
                        errs.invalid(
                            format!("{f}[{i}]"),
                            n.to_string(),
                            "a domain name, optionally with a leading `*.` (one or more labels)",
                        );
                        return None;
                    }
                }
            }
            return Some(out);
        }
        _ => return None,
    };
    Some(vec![peer])
}

/// A `domainNames` entry as podwall's name selector: `kubernetes.io` exactly, `*.kubernetes.io`
/// one or more labels before it (never `kubernetes.io` itself); case and one trailing dot do
/// not count.
pub(crate) fn domain_name(s: &str) -> Option<FqdnSelector> {
    let lower = s.trim().to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let (wild, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && l.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && l.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) {
        return None;
    }
    Some(if wild {
        FqdnSelector::MatchPattern(format!("**.{rest}"))
    } else {
        FqdnSelector::MatchName(rest.to_string())
    })
}

/// `protocols`: each entry exactly one of `tcp`, `udp`, `sctp` (with `destinationPort`: a
/// `number` or a `range`) or `destinationNamedPort` (the destination pod's port of that name,
/// whatever its protocol; only towards pods).
fn protocols(value: &Value, field: &str, only_pods: bool, errs: &mut FieldErrors) -> Vec<PortSpec> {
    let Some(list) = value.as_array().filter(|l| !l.is_empty()) else {
        errs.required(field, "at least one protocol (or leave `protocols` out)");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let keys: Vec<&str> = p
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let [key] = keys.as_slice() else {
            errs.invalid(
                &f,
                p.to_string(),
                "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
            );
            continue;
        };
        let protocol = match *key {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            "destinationNamedPort" => {
                let Some(name) = p[*key].as_str().filter(|n| !n.is_empty()) else {
                    errs.invalid(
                        format!("{f}.destinationNamedPort"),
                        p[*key].to_string(),
                        "a port name",
                    );
                    continue;
                };
                if !only_pods {
                    errs.forbidden(
                        format!("{f}.destinationNamedPort"),
                        "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
                    );
                    continue;
                }
                for protocol in Protocol::ALL {
                    out.push(PortSpec {
                        protocol,
                        port: PortMatch::Named(name.to_string()),
                    });
                }
                continue;
            }
            other => {
                errs.unsupported(&f, other, &["tcp", "udp", "sctp", "destinationNamedPort"]);
                continue;
            }
        };
        let port = &p[*key]["destinationPort"];
        let pf = format!("{f}.{key}.destinationPort");
        if !known_keys(&p[*key], &["destinationPort"], &format!("{f}.{key}"), errs)
            || !known_keys(port, &["number", "range"], &pf, errs)
            || !known_keys(
                &port["range"],
                &["start", "end"],
                &format!("{pf}.range"),
                errs,
            )
        {
            continue;
        }
        let number = |v: &Value| {
            v.as_u64()
                .filter(|n| (1..=65535).contains(n))
                .map(|n| n as u16)
        };
        match (port.get("number"), port.get("range")) {
            (Some(n), None) => match number(n) {
                Some(n) => out.push(PortSpec {
                    protocol,
                    port: PortMatch::Range(n, n),
                }),
                None => errs.invalid(
                    format!("{pf}.number"),
                    n.to_string(),
                    "must be between 1 and 65535",
                ),
            },
            (None, Some(r)) => match (number(&r["start"]), number(&r["end"])) {
                (Some(lo), Some(hi)) if lo < hi => out.push(PortSpec {
                    protocol,
                    port: PortMatch::Range(lo, hi),
                }),
                _ => errs.invalid(
                    format!("{pf}.range"),
                    r.to_string(),
                    "start and end between 1 and 65535, start less than end",
                ),
            },
            _ => errs.invalid(
                &pf,
                port.to_string(),
                "exactly one of `number` or `range` must be set",
            ),
        }
    }
    out
}

//! One ingress or egress rule of a spec into model rules: the fields podwall refuses, the L3
//! peers, and one model rule per `toPorts` entry (with its HTTP or DNS rules).

use crate::model::{IpBlock, Peer, PortSpec, Protocol, Rule};
use crate::validate::FieldErrors;

use super::Findings;
use super::l7::{dns_rule_problem, fqdn_selectors, http_rule};
use super::peers::{endpoint_selector, entity, parse_cidr};
use super::ports::ports;
use super::wire::*;

/// The L3 peer fields of one direction of a rule, with their names.
struct PeerFields<'a> {
    endpoints: Option<&'a Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>>,
    cidrs: Option<&'a Vec<String>>,
    cidr_sets: Option<&'a Vec<CidrRule>>,
    entities: Option<&'a Vec<String>>,
    /// Egress only.
    fqdns: Option<&'a Vec<FqdnSpec>>,
    names: [&'static str; 4],
}

impl<'a> PeerFields<'a> {
    fn of(r: &'a PeerRule, ingress: bool) -> Self {
        if ingress {
            PeerFields {
                endpoints: r.from_endpoints.as_ref(),
                cidrs: r.from_cidr.as_ref(),
                cidr_sets: r.from_cidr_set.as_ref(),
                entities: r.from_entities.as_ref(),
                fqdns: None,
                names: ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"],
            }
        } else {
            PeerFields {
                endpoints: r.to_endpoints.as_ref(),
                cidrs: r.to_cidr.as_ref(),
                cidr_sets: r.to_cidr_set.as_ref(),
                entities: r.to_entities.as_ref(),
                fqdns: r.to_fqdns.as_ref(),
                names: ["toEndpoints", "toCIDR", "toCIDRSet", "toEntities"],
            }
        }
    }
}

/// One Cilium rule into model rules: one per `toPorts` entry, or one for an L3-only rule.
pub(super) fn peer_rule(
    r: &PeerRule,
    path: &str,
    ingress: bool,
    namespace: &str,
    errs: &mut FieldErrors,
    findings: &mut Findings,
) -> Vec<Rule> {
    let f = PeerFields::of(r, ingress);
    wrong_direction(r, path, ingress, errs);
    let mut refused = refused_fields(r, path, findings) | mixed_kinds(&f, path, findings);
    let (peers, has_l3, refused_peer) = l3_peers(&f, path, namespace, errs, findings);
    refused |= refused_peer;
    let to_ports = r.to_ports.as_deref().unwrap_or_default();
    // An empty rule allows nothing (Cilium's "deny all" idiom); so does one whose every L3 peer
    // was invalid (already an error) — never everything. The ports are still read, so that
    // every error is reported at once.
    let allows_nothing =
        refused || (!has_l3 && to_ports.is_empty()) || (has_l3 && peers.is_empty());
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
        out.extend(port_entry(pr, &field, ingress, &peers, errs, findings));
    }
    if allows_nothing { Vec::new() } else { out }
}

/// Reports fields of the other direction in this rule: mistakes.
fn wrong_direction(r: &PeerRule, path: &str, ingress: bool, errs: &mut FieldErrors) {
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
}

/// Reports the fields podwall does not enforce; whether there was one (the rule then allows
/// nothing).
fn refused_fields(r: &PeerRule, path: &str, findings: &mut Findings) -> bool {
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
    let mut refused = false;
    for (name, present) in unsupported {
        if present {
            refused = true;
            findings.errors.push((
                format!("{path}.{name}"),
                format!("{name} is not enforced by podwall: this rule allows nothing (the policy still isolates its pods)"),
            ));
        }
    }
    refused
}

/// Reports a rule that mixes kinds of L3 peers; whether it does.
fn mixed_kinds(f: &PeerFields<'_>, path: &str, findings: &mut Findings) -> bool {
    let mut refused = false;
    // Cilium refuses a rule that mixes kinds of L3 peers ("Combining ToFQDNs and ToEndpoints is
    // not supported yet"); podwall keeps the policy's isolation and drops the rule.
    let kinds: Vec<&str> = [
        (
            f.names[0],
            f.endpoints.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (f.names[1], f.cidrs.as_ref().is_some_and(|v| !v.is_empty())),
        (
            f.names[2],
            f.cidr_sets.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            f.names[3],
            f.entities.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        ("toFQDNs", f.fqdns.is_some_and(|v| !v.is_empty())),
    ]
    .into_iter()
    .filter_map(|(n, present)| present.then_some(n))
    .collect();
    if kinds.len() > 1 {
        refused = true;
        findings.errors.push((
            path.to_string(),
            format!(
                "combining {} in one rule is not supported (Cilium rejects it): this rule allows nothing; write one rule per kind of peer",
                kinds.join(" and ")
            ),
        ));
    }
    refused
}

/// The rule's L3 peers; whether it names any; whether one is refused (the rule then allows
/// nothing).
fn l3_peers(
    f: &PeerFields<'_>,
    path: &str,
    namespace: &str,
    errs: &mut FieldErrors,
    findings: &mut Findings,
) -> (Vec<Peer>, bool, bool) {
    let mut refused = false;
    let mut peers = Vec::new();
    let mut has_l3 = false;
    for (i, spec) in f.fqdns.into_iter().flatten().enumerate() {
        has_l3 = true;
        peers.extend(
            fqdn_selectors(spec, &format!("{path}.toFQDNs[{i}]"), false, errs)
                .into_iter()
                .map(Peer::Fqdn),
        );
    }
    for (i, sel) in f.endpoints.into_iter().flatten().enumerate() {
        has_l3 = true;
        let parsed = endpoint_selector(sel, &format!("{path}.{}[{i}]", f.names[0]), errs);
        peers.push(Peer::Pods {
            namespaces: parsed.scope(namespace),
            pods: parsed.pods,
        });
    }
    for (i, c) in f.cidrs.into_iter().flatten().enumerate() {
        has_l3 = true;
        if let Some(net) = parse_cidr(c, &format!("{path}.{}[{i}]", f.names[1]), errs) {
            peers.push(Peer::ExternalCidr(IpBlock {
                cidr: net,
                except: Vec::new(),
            }));
        }
    }
    for (i, set) in f.cidr_sets.into_iter().flatten().enumerate() {
        has_l3 = true;
        let field = format!("{path}.{}[{i}]", f.names[2]);
        if set.cidr_group_ref.is_some() {
            refused = true;
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
    for (i, e) in f.entities.into_iter().flatten().enumerate() {
        has_l3 = true;
        match entity(e) {
            Some(ent) => peers.push(Peer::Entity(ent)),
            None => errs.unsupported(
                format!("{path}.{}[{i}]", f.names[3]),
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
    (peers, has_l3, refused)
}

/// The model rules of one `toPorts` entry (`field`) for `peers`: none when the entry uses
/// what podwall does not enforce.
fn port_entry(
    pr: &PortRule,
    field: &str,
    ingress: bool,
    peers: &[Peer],
    errs: &mut FieldErrors,
    findings: &mut Findings,
) -> Vec<Rule> {
    let mut out = Vec::new();
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
                format!("{name} rules are not enforced by podwall: this port entry allows nothing"),
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
    if let Some(problem) = dns
        .as_ref()
        .and_then(|_| dns_rule_problem(ingress, has_http, pr.ports.as_deref().unwrap_or_default()))
    {
        unsupported_port = true;
        findings.errors.push((
            format!("{field}.rules.dns"),
            format!("{problem}: this port entry allows nothing"),
        ));
    }
    if unsupported_port {
        return Vec::new();
    }
    let ports = ports(pr.ports.as_deref().unwrap_or_default(), field, errs);
    if let Some(dns) = dns {
        return vec![Rule {
            dns: Some(dns),
            ..Rule::new(peers.to_vec(), ports, field)
        }];
    }
    let http = rules
        .and_then(|r| r.http.as_ref())
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.iter()
                .enumerate()
                .filter_map(|(k, spec)| http_rule(spec, &format!("{field}.rules.http[{k}]"), errs))
                .collect::<Vec<_>>()
        });
    match http {
        None => out.push(Rule::new(peers.to_vec(), ports, field)),
        Some(http) => {
            // HTTP rules only make sense on TCP; other protocols of the entry are L4 allows.
            let (tcp, other): (Vec<PortSpec>, Vec<PortSpec>) =
                ports.into_iter().partition(|p| p.protocol == Protocol::Tcp);
            if !tcp.is_empty() {
                out.push(Rule {
                    http: Some(http),
                    ..Rule::new(peers.to_vec(), tcp, field)
                });
            }
            if !other.is_empty() {
                out.push(Rule::new(peers.to_vec(), other, field));
            }
        }
    }
    out
}

//! The verdict on one DNS query: may this pod ask this resolver for this name?
//!
//! 1. The query is a connection to the resolver on port 53 (UDP or TCP) and needs the pod's
//!    egress and the resolver's ingress, as any connection.
//! 2. When every rule allowing it carries DNS rules (`toPorts[].rules.dns`), the name must match
//!    one of them; an L4-only allow for the same resolver and port lets every name through.
//! 3. When the pod's egress does not allow the resolver but the resolver is a trusted one (the
//!    sidecar's configured resolver, the cluster DNS for the analyzer), queries for names the
//!    pod's own `toFQDNs` rules select are allowed anyway: a `toFQDNs` rule works without a DNS
//!    rule beside it.
//!
//! A denied query gets REFUSED, as Cilium answers.

use std::net::IpAddr;

use podwall_policy::{Endpoint, Engine, FqdnId, PodId, Protocol, Query, RuleRef, Verdict};

use crate::pattern::Matcher;

/// A DNS query to judge.
#[derive(Debug, Clone, Copy)]
pub struct DnsQuery<'a> {
    /// The pod asking.
    pub pod: PodId,
    /// The resolver it asks (the query's original destination).
    pub resolver: IpAddr,
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The resolver's port (53).
    pub port: u16,
    /// The name asked for (canonical).
    pub name: &'a str,
}

/// Why a query was allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsReason {
    /// The resolver is allowed and no DNS rule applies.
    Resolver,
    /// A DNS rule of this rule allowed the name (the selector that matched).
    DnsRule(RuleRef, FqdnId),
    /// No DNS rule allowed the name (the rules that apply).
    NoDnsRuleMatched(Vec<RuleRef>),
    /// The resolver is not allowed, but the name is one of the pod's toFQDNs names and the
    /// resolver is trusted.
    ImplicitForFqdn(FqdnId),
    /// The resolver is not allowed.
    ResolverDenied,
}

impl DnsReason {
    /// The short code flow events and `podwall check --dns-query` give it.
    pub fn code(&self) -> &'static str {
        match self {
            DnsReason::Resolver => "resolver",
            DnsReason::DnsRule(..) => "dns-rule",
            DnsReason::NoDnsRuleMatched(_) => "no-dns-rule-matched",
            DnsReason::ImplicitForFqdn(_) => "implicit-for-toFQDNs",
            DnsReason::ResolverDenied => "resolver-denied",
        }
    }
}

/// The verdict on a DNS query.
#[derive(Debug, Clone)]
pub struct DnsVerdict {
    /// Whether the query goes to the resolver.
    pub allowed: bool,
    /// Why.
    pub reason: DnsReason,
    /// The connection verdict for the pod to the resolver.
    pub connection: Verdict,
}

/// Judges a DNS query. `trusted_resolver`: the resolver is the pod's configured one (queries
/// for the pod's toFQDNs names may reach it without a rule).
pub fn decide(
    engine: &Engine,
    matcher: &Matcher,
    query: &DnsQuery<'_>,
    trusted_resolver: bool,
) -> DnsVerdict {
    let connection = engine.verdict(&Query {
        src: Endpoint::Pod(query.pod),
        dst: Endpoint::Ip(query.resolver),
        protocol: query.protocol,
        port: query.port,
    });
    let (allowed, reason) = if connection.allowed() {
        match &connection.egress.dns {
            None => (true, DnsReason::Resolver),
            Some(rules) => {
                let hits = matcher.matching(query.name);
                let found = rules.iter().find_map(|r| {
                    let selectors = engine.rule_dns(*r).unwrap_or_default();
                    selectors
                        .iter()
                        .find(|s| hits.binary_search(s).is_ok())
                        .map(|s| (*r, *s))
                });
                match found {
                    Some((rule, selector)) => (true, DnsReason::DnsRule(rule, selector)),
                    None => (false, DnsReason::NoDnsRuleMatched(rules.clone())),
                }
            }
        }
    } else if trusted_resolver && !connection.egress.allowed() && connection.ingress.allowed() {
        let own = engine.implicit_dns_names(query.pod, connection.egress.decision);
        let hits = matcher.matching(query.name);
        match own.iter().find(|s| hits.binary_search(s).is_ok()) {
            Some(s) => (true, DnsReason::ImplicitForFqdn(*s)),
            None => (false, DnsReason::ResolverDenied),
        }
    } else {
        (false, DnsReason::ResolverDenied)
    };
    DnsVerdict {
        allowed,
        reason,
        connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwall_policy::Loader;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ci}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: runner, namespace: ci, labels: {app: ci-runner}}
status: {phase: Running, podIP: 10.0.0.5, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
status: {phase: Running, podIP: 10.0.0.53, hostIP: 192.168.1.1}
"#;

    fn setup(policies: &str) -> (Engine, Matcher, PodId) {
        let mut l = Loader::new();
        l.add_yaml("cluster.yaml", CLUSTER).expect("yaml");
        l.add_yaml("policies.yaml", policies).expect("yaml");
        let (state, report) = l.finish();
        assert!(!report.has_errors(), "{:#?}", report.diagnostics);
        let engine = Engine::compile(state);
        let matcher = Matcher::new(engine.fqdn_selectors()).expect("compiles");
        let pod = engine.state().pod_by_name("ci", "runner").expect("pod");
        (engine, matcher, pod)
    }

    fn ask(e: &Engine, m: &Matcher, pod: PodId, name: &str, trusted: bool) -> DnsVerdict {
        decide(
            e,
            m,
            &DnsQuery {
                pod,
                resolver: "10.0.0.53".parse().expect("ip"),
                protocol: Protocol::Udp,
                port: 53,
                name,
            },
            trusted,
        )
    }

    const GITHUB_ONLY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: allow-github-api, namespace: ci}\nspec:\n  endpointSelector: {matchLabels: {app: ci-runner}}\n  egress:\n  - toFQDNs: [{matchName: api.github.com}, {matchName: github.com}]\n    toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n";

    #[test]
    fn a_fqdn_policy_alone_lets_its_names_reach_the_trusted_resolver_and_nothing_else() {
        let (e, m, pod) = setup(GITHUB_ONLY);
        let v = ask(&e, &m, pod, "api.github.com", true);
        assert!(v.allowed);
        assert!(matches!(v.reason, DnsReason::ImplicitForFqdn(_)));
        let v = ask(&e, &m, pod, "example.com", true);
        assert!(!v.allowed);
        assert_eq!(v.reason, DnsReason::ResolverDenied);
        assert!(
            !ask(&e, &m, pod, "api.github.com", false).allowed,
            "an untrusted resolver (one the pod picked) gets nothing implicit"
        );
    }

    const DNS_RULES: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: dns, namespace: ci}\nspec:\n  endpointSelector: {matchLabels: {app: ci-runner}}\n  egress:\n  - toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': kube-system, k8s-app: kube-dns}}]\n    toPorts:\n    - ports: [{port: '53', protocol: ANY}]\n      rules: {dns: [{matchPattern: '*.github.com'}]}\n";

    #[test]
    fn dns_rules_let_matching_names_through_and_refuse_the_rest() {
        let (e, m, pod) = setup(DNS_RULES);
        let v = ask(&e, &m, pod, "api.github.com", true);
        assert!(v.allowed);
        assert!(matches!(v.reason, DnsReason::DnsRule(..)));
        let v = ask(&e, &m, pod, "github.com", true);
        assert!(!v.allowed);
        assert!(matches!(v.reason, DnsReason::NoDnsRuleMatched(ref r) if r.len() == 1));
    }

    /// An Admin-tier guardrail denying all egress (the resolver too), a namespace's own
    /// toFQDNs matching everything, and an Admin `domainNames` Accept before the Deny.
    const GUARDRAIL: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: ci}}}
  egress:
  - {action: Accept, to: [{domainNames: [api.github.com]}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: everything, namespace: ci}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchPattern: "*"}]
"#;

    #[test]
    fn an_admin_deny_of_the_resolver_lets_through_only_names_the_admin_tier_accepts_before_it() {
        let (e, m, pod) = setup(GUARDRAIL);
        let v = ask(&e, &m, pod, "api.github.com", true);
        assert!(v.allowed, "{:?}", v.reason);
        assert!(matches!(v.reason, DnsReason::ImplicitForFqdn(_)));
        // The namespace's own toFQDNs "*" does not open a tunnel through the guardrail.
        let v = ask(&e, &m, pod, "tunnel.attacker.example", true);
        assert!(!v.allowed, "{:?}", v.reason);
        assert_eq!(v.reason, DnsReason::ResolverDenied);
        // Without the guardrail, that toFQDNs rule lets the name through (as before).
        let (e, m, pod) = setup(GUARDRAIL.split("---").nth(1).expect("cnp"));
        assert!(ask(&e, &m, pod, "tunnel.attacker.example", true).allowed);
    }

    #[test]
    fn an_unisolated_pod_may_ask_anything() {
        let (e, m, pod) = setup("");
        let v = ask(&e, &m, pod, "anything.example", false);
        assert!(v.allowed);
        assert_eq!(v.reason, DnsReason::Resolver);
    }
}

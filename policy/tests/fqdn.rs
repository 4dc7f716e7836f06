//! toFQDNs and DNS rules in the policy model: which selectors a rule carries, how learned names
//! open external addresses, and how DNS rules combine with L4 allows. What a pattern matches
//! is tested in the `fqdn` crate.

mod common;

use common::{CLUSTER, endpoint, load};
use podwall_policy::{
    Diagnostic, Engine, FqdnId, FqdnSelector, Protocol, Query, Severity, Verdict,
    analyze::lint::lint,
};

fn cnp(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: production}}\nspec:\n{}\n",
        spec.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn engine(policies: &str) -> (Engine, Vec<Diagnostic>) {
    let (state, report) = load(&[CLUSTER, policies]);
    (Engine::compile(state), report.diagnostics)
}

fn id(e: &Engine, selector: &FqdnSelector) -> FqdnId {
    let i = e
        .fqdn_selectors()
        .iter()
        .position(|s| s == selector)
        .unwrap_or_else(|| panic!("{selector} not compiled: {:?}", e.fqdn_selectors()));
    FqdnId(i as u32)
}

fn name(n: &str) -> FqdnSelector {
    FqdnSelector::MatchName(n.into())
}

fn learned(e: &Engine, from: &str, to: &str, port: u16, names: &[FqdnId]) -> Verdict {
    e.verdict_learned(
        &Query {
            src: endpoint(e, from),
            dst: endpoint(e, to),
            protocol: Protocol::Tcp,
            port,
        },
        names,
    )
}

const GITHUB: &str = "endpointSelector: {matchLabels: {app: api}}\negress:\n- toFQDNs:\n  - matchName: API.GitHub.com.\n  - matchPattern: '*.githubusercontent.com'\n  toPorts:\n  - ports: [{port: '443', protocol: TCP}]";

#[test]
fn selectors_are_kept_in_canonical_form_and_listed_for_the_pod() {
    let (e, d) = engine(&cnp("github", GITHUB));
    assert!(d.is_empty(), "{d:#?}");
    let api = e.state().pod_by_name("production", "api").expect("pod");
    let ids = e.egress_fqdn(api);
    let listed: Vec<&FqdnSelector> = ids
        .iter()
        .map(|i| &e.fqdn_selectors()[i.0 as usize])
        .collect();
    assert_eq!(
        listed,
        [
            &name("api.github.com"),
            &FqdnSelector::MatchPattern("*.githubusercontent.com".into())
        ]
    );
    let frontend = e
        .state()
        .pod_by_name("production", "frontend")
        .expect("pod");
    assert!(e.egress_fqdn(frontend).is_empty(), "not selected");
}

#[test]
fn an_external_address_is_allowed_only_once_learned_for_a_selected_name_and_only_on_the_rule_ports()
{
    let (e, _) = engine(&cnp("github", GITHUB));
    let gh = id(&e, &name("api.github.com"));
    let v = learned(&e, "production/api", "140.82.112.5", 443, &[gh]);
    assert!(v.allowed(), "{v:#?}");
    assert!(
        !learned(&e, "production/api", "140.82.112.5", 443, &[]).allowed(),
        "never resolved"
    );
    assert!(
        !learned(&e, "production/api", "140.82.112.5", 80, &[gh]).allowed(),
        "other port"
    );
    assert!(
        e.allowed_learned(
            &Query {
                src: endpoint(&e, "production/api"),
                dst: endpoint(&e, "140.82.112.5"),
                protocol: Protocol::Tcp,
                port: 443
            },
            &[gh]
        ),
        "fast path agrees"
    );
    let rule = match v.egress.decision {
        podwall_policy::Decision::Rule(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.rule_fqdn(rule).len(), 2);
}

#[test]
fn a_learned_name_never_opens_a_pod_or_a_node_address() {
    let (e, _) = engine(&cnp("github", GITHUB));
    let gh = id(&e, &name("api.github.com"));
    assert!(!learned(&e, "production/api", "production/db", 443, &[gh]).allowed());
    assert!(!learned(&e, "production/api", "192.168.1.2", 443, &[gh]).allowed());
}

#[test]
fn dns_rules_filter_queries_unless_an_l4_allow_covers_the_same_port() {
    let dns_only = "endpointSelector: {matchLabels: {app: api}}\negress:\n- toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': kube-system, k8s-app: kube-dns}}]\n  toPorts:\n  - ports: [{port: '53', protocol: ANY}]\n    rules:\n      dns:\n      - matchPattern: '*.github.com'\n      - {matchName: example.com, matchPattern: 'example.*'}";
    let (e, d) = engine(&cnp("dns", dns_only));
    assert!(d.is_empty(), "{d:#?}");
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let v = e.verdict(&Query {
            src: endpoint(&e, "production/api"),
            dst: endpoint(&e, "kube-system/coredns"),
            protocol,
            port: 53,
        });
        assert!(v.allowed());
        let rules = v.egress.dns.clone().expect("DNS rules apply");
        assert_eq!(rules.len(), 1);
        let selectors = e.rule_dns(rules[0]).expect("rule has DNS rules");
        assert_eq!(selectors.len(), 3, "both fields of the second entry count");
    }
    let l4 = format!(
        "{}{}",
        cnp("dns", dns_only),
        cnp(
            "plain-dns",
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': kube-system}}]\n  toPorts:\n  - ports: [{port: '53', protocol: UDP}]"
        )
    );
    let (e, _) = engine(&l4);
    let udp = e.verdict(&Query {
        src: endpoint(&e, "production/api"),
        dst: endpoint(&e, "kube-system/coredns"),
        protocol: Protocol::Udp,
        port: 53,
    });
    assert!(udp.allowed() && udp.egress.dns.is_none(), "L4 allow wins");
    let tcp = e.verdict(&Query {
        src: endpoint(&e, "production/api"),
        dst: endpoint(&e, "kube-system/coredns"),
        protocol: Protocol::Tcp,
        port: 53,
    });
    assert!(tcp.egress.dns.is_some(), "TCP is still filtered");
}

#[test]
fn dns_rules_cilium_would_refuse_allow_nothing_and_name_the_field() {
    for (spec, field) in [
        (
            "endpointSelector: {matchLabels: {app: api}}\ningress:\n- toPorts:\n  - ports: [{port: '53'}]\n    rules: {dns: [{matchPattern: '*'}]}",
            "spec.ingress[0].toPorts[0].rules.dns",
        ),
        (
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toPorts:\n  - rules: {dns: [{matchPattern: '*'}]}",
            "spec.egress[0].toPorts[0].rules.dns",
        ),
        (
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toPorts:\n  - ports: [{port: '53', endPort: 54}]\n    rules: {dns: [{matchPattern: '*'}]}",
            "spec.egress[0].toPorts[0].rules.dns",
        ),
    ] {
        let (e, d) = engine(&cnp("bad-dns", spec));
        let errors: Vec<&Diagnostic> = d.iter().filter(|d| d.code == "not-enforced").collect();
        assert_eq!(errors.len(), 1, "{spec}: {d:#?}");
        assert_eq!(errors[0].field.as_deref(), Some(field));
        assert_eq!(e.state().policies.len(), 1, "kept: it still isolates");
    }
}

#[test]
fn mixing_fqdn_and_other_peers_in_one_rule_allows_nothing() {
    let (e, d) = engine(&cnp(
        "mixed",
        "endpointSelector: {matchLabels: {app: api}}\negress:\n- toFQDNs: [{matchName: example.com}]\n  toEndpoints: [{matchLabels: {app: db}}]",
    ));
    let err = d
        .iter()
        .find(|d| d.code == "not-enforced")
        .expect("reported");
    assert_eq!(err.severity, Severity::Error);
    assert!(err.message.contains("toEndpoints and toFQDNs"), "{err:?}");
    assert!(!common::tcp(&e, "production/api", "production/db", 5432));
}

#[test]
fn malformed_selectors_isolate_the_pods_with_the_field_named() {
    for (spec, field) in [
        (
            "- toFQDNs: [{matchName: 'api github.com'}]",
            "spec.egress[0].toFQDNs[0].matchName",
        ),
        (
            "- toFQDNs: [{matchPattern: 'api.[a-z].com'}]",
            "spec.egress[0].toFQDNs[0].matchPattern",
        ),
        (
            "- toFQDNs: [{matchName: a.com, matchPattern: '*.a.com'}]",
            "spec.egress[0].toFQDNs[0]",
        ),
        ("- toFQDNs: [{}]", "spec.egress[0].toFQDNs[0]"),
        (
            "- toFQDNs: [{matchName: 'a..com'}]",
            "spec.egress[0].toFQDNs[0].matchName",
        ),
    ] {
        let (e, d) = engine(&cnp(
            "bad",
            &format!("endpointSelector: {{matchLabels: {{app: api}}}}\negress:\n{spec}"),
        ));
        // The policy stands for egress isolation of its pods, allowing nothing.
        let policies: Vec<_> = e.state().policies.iter().collect();
        assert_eq!(policies.len(), 1, "{spec}");
        assert_eq!(
            policies[0].egress.as_deref().map(<[_]>::len),
            Some(0),
            "{spec}"
        );
        assert!(policies[0].ingress.is_none(), "{spec}");
        assert!(
            d.iter().any(|d| d.field.as_deref() == Some(field)),
            "{spec}: {d:#?}"
        );
    }
}

#[test]
fn lint_warns_on_patterns_that_do_not_mean_what_they_look_like() {
    let (state, _) = load(&[
        CLUSTER,
        &cnp(
            "patterns",
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toFQDNs:\n  - matchPattern: '*cilium.io'\n  - matchPattern: 'api.**.example.com'\n  - matchPattern: '**.example.com'\n  - matchPattern: '*.example.org'\n  - matchPattern: '*-prod.example.net'\n  - matchPattern: '*'",
        ),
    ]);
    let e = Engine::compile(state);
    let findings: Vec<Diagnostic> = lint(&e)
        .into_iter()
        .filter(|d| d.code == "fqdn-pattern-misleading")
        .collect();
    let fields: Vec<&str> = findings.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.egress[0].to[0].matchPattern",
            "spec.egress[0].to[1].matchPattern"
        ],
        "{findings:#?}"
    );
    assert!(findings[0].message.contains("not subdomains of cilium.io"));
    assert!(
        findings[0]
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("**.cilium.io"))
    );
}

#[test]
fn an_empty_list_of_dns_or_http_rules_is_no_l7_rule_at_all() {
    // Cilium's L7Rules.IsEmpty: `dns: []` and `http: []` leave a plain L4 allow.
    for rules in ["dns: []", "http: []"] {
        let spec = format!(
            "endpointSelector: {{matchLabels: {{app: api}}}}\negress:\n- toEndpoints: [{{matchLabels: {{'k8s:io.kubernetes.pod.namespace': kube-system, k8s-app: kube-dns}}}}]\n  toPorts:\n  - ports: [{{port: '53', protocol: ANY}}]\n    rules: {{{rules}}}"
        );
        let (e, d) = engine(&cnp("empty", &spec));
        assert!(d.is_empty(), "{rules}: {d:#?}");
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let v = e.verdict(&Query {
                src: endpoint(&e, "production/api"),
                dst: endpoint(&e, "kube-system/coredns"),
                protocol,
                port: 53,
            });
            assert!(v.allowed(), "{rules}");
            assert!(v.egress.dns.is_none(), "{rules}: every name passes");
            assert!(v.egress.http.is_none(), "{rules}: every request passes");
        }
    }
}

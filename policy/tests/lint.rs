//! The analyzer's warnings: each mistake operators make is found, with the object, the field
//! and a hint; correct policies produce nothing.

mod common;

use common::{CLUSTER, load, np};
use podwall_policy::analyze::lint::lint;
use podwall_policy::{Diagnostic, Engine};

fn findings(policies: &str) -> Vec<Diagnostic> {
    let (state, report) = load(&[CLUSTER, policies]);
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    lint(&Engine::compile(state))
}

fn with_code<'a>(all: &'a [Diagnostic], code: &str) -> Vec<&'a Diagnostic> {
    all.iter().filter(|d| d.code == code).collect()
}

/// Allows DNS for every namespace that the tests isolate for egress, so that only the finding
/// under test shows.
const DNS_OK: &str = "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]\n  ports: [{port: 53, protocol: UDP}]";

#[test]
fn a_policy_selecting_no_pods_is_reported() {
    let all = findings(&np(
        "typo",
        "production",
        "podSelector: {matchLabels: {app: fronted}}\npolicyTypes: [Ingress]",
    ));
    let f = with_code(&all, "selects-no-pods");
    assert_eq!(f.len(), 1, "{all:#?}");
    assert_eq!(
        f[0].object.as_deref(),
        Some("NetworkPolicy production/typo")
    );
    assert_eq!(f[0].field.as_deref(), Some("spec.podSelector"));
    assert!(f[0].message.contains("app=fronted"), "{}", f[0]);
}

#[test]
fn a_pod_selector_that_can_never_match_says_why() {
    let all = findings(&np(
        "never",
        "production",
        "podSelector: {matchLabels: {app: api}, matchExpressions: [{key: app, operator: NotIn, values: [api]}]}\npolicyTypes: [Ingress]",
    ));
    let f = with_code(&all, "selects-no-pods");
    assert!(f[0].message.contains("can never"), "{}", f[0]);
}

#[test]
fn a_namespace_selector_on_a_missing_label_suggests_the_name_label() {
    let all = findings(&np(
        "db",
        "production",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {name: monitoring}}}]",
    ));
    let f = with_code(&all, "namespace-selector-matches-nothing");
    assert_eq!(f.len(), 1, "{all:#?}");
    assert_eq!(
        f[0].field.as_deref(),
        Some("spec.ingress[0].from[0].namespaceSelector")
    );
    let hint = f[0].hint.as_deref().expect("hint");
    assert!(
        hint.contains("kubernetes.io/metadata.name=monitoring"),
        "{hint}"
    );
    assert!(
        with_code(&all, "rule-never-matches").len() == 1,
        "the only peer matches nothing: {all:#?}"
    );
}

#[test]
fn a_namespace_selector_and_pod_selector_split_into_two_peers_is_reported() {
    let all = findings(&np(
        "db",
        "production",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {purpose: monitoring}}\n  - podSelector: {matchLabels: {app: prometheus}}",
    ));
    let f = with_code(&all, "peers-or-not-and");
    assert_eq!(f.len(), 1, "{all:#?}");
    assert_eq!(f[0].field.as_deref(), Some("spec.ingress[0].from"));
    assert!(f[0].message.contains(" OR "), "{}", f[0]);
}

#[test]
fn one_peer_with_both_selectors_is_not_reported_as_split() {
    let all = findings(&np(
        "db",
        "production",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {purpose: monitoring}}\n    podSelector: {matchLabels: {app: prometheus}}",
    ));
    assert!(with_code(&all, "peers-or-not-and").is_empty(), "{all:#?}");
}

#[test]
fn an_ip_block_whose_exceptions_cover_it_never_matches() {
    let all = findings(&np(
        "x",
        "production",
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/9, 10.128.0.0/9]}}]",
    ));
    assert_eq!(
        with_code(&all, "rule-never-matches").len(),
        2,
        "the block and the rule: {all:#?}"
    );
}

#[test]
fn a_peer_selecting_no_pod_is_reported_when_others_still_match() {
    let all = findings(&np(
        "api",
        "production",
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: frontend}}}, {podSelector: {matchLabels: {app: frontnd}}}]",
    ));
    let f = with_code(&all, "peer-matches-nothing");
    assert_eq!(f.len(), 1, "{all:#?}");
    assert!(f[0].message.contains("app=frontnd"), "{}", f[0]);
    assert!(with_code(&all, "rule-never-matches").is_empty());
}

#[test]
fn a_named_ingress_port_no_selected_pod_declares_is_reported() {
    let all = findings(&np(
        "api",
        "production",
        "podSelector: {matchLabels: {app: api}}\ningress:\n- ports: [{port: grpc}]",
    ));
    assert_eq!(
        with_code(&all, "named-port-unresolved").len(),
        1,
        "{all:#?}"
    );
    assert_eq!(with_code(&all, "rule-never-matches").len(), 1, "{all:#?}");
}

#[test]
fn a_cidr_with_host_bits_is_reported_with_what_it_means() {
    let all = findings(&np(
        "api",
        "production",
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{ipBlock: {cidr: 10.1.2.3/16}}]",
    ));
    let f = with_code(&all, "cidr-host-bits");
    assert!(f[0].message.contains("10.1.0.0/16"), "{}", f[0]);
}

#[test]
fn a_namespace_partly_isolated_without_default_deny_is_reported() {
    let all = findings(&np(
        "db",
        "production",
        "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress]",
    ));
    let f = with_code(&all, "no-default-deny");
    assert_eq!(f.len(), 1, "{all:#?}");
    assert_eq!(f[0].object.as_deref(), Some("Namespace production"));
    assert!(
        f[0].message.contains("production/api, production/frontend"),
        "{}",
        f[0]
    );
    let fixed = findings(
        &(np(
            "db",
            "production",
            "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress]",
        ) + &np(
            "deny",
            "production",
            "podSelector: {}\npolicyTypes: [Ingress]",
        )),
    );
    assert!(
        with_code(&fixed, "no-default-deny").is_empty(),
        "{fixed:#?}"
    );
}

#[test]
fn egress_isolation_without_dns_is_reported_per_namespace() {
    let all = findings(&np(
        "deny",
        "production",
        "podSelector: {}\npolicyTypes: [Egress]",
    ));
    let f = with_code(&all, "egress-without-dns");
    assert_eq!(f.len(), 1, "{all:#?}");
    assert!(f[0].message.contains("kube-system/coredns"), "{}", f[0]);
    let fixed = findings(
        &(np(
            "deny",
            "production",
            "podSelector: {}\npolicyTypes: [Egress]",
        ) + &np("dns", "production", DNS_OK)),
    );
    assert!(
        with_code(&fixed, "egress-without-dns").is_empty(),
        "{fixed:#?}"
    );
}

#[test]
fn dns_allowed_by_egress_but_refused_by_the_dns_pod_ingress_is_reported() {
    let policies = np(
        "deny",
        "production",
        "podSelector: {}\npolicyTypes: [Egress]",
    ) + &np("dns", "production", DNS_OK)
        + &np(
            "lockdown",
            "kube-system",
            "podSelector: {}\npolicyTypes: [Ingress]",
        );
    let all = findings(&policies);
    assert_eq!(with_code(&all, "egress-without-dns").len(), 1, "{all:#?}");
}

#[test]
fn policies_selecting_host_network_pods_are_reported() {
    let host = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: production, labels: {app: agent}}\nspec: {hostNetwork: true}\n";
    let policies = np(
        "agent",
        "production",
        "podSelector: {matchLabels: {app: agent}}\npolicyTypes: [Ingress]",
    );
    let (state, _) = load(&[CLUSTER, host, &policies]);
    let all = lint(&Engine::compile(state));
    assert_eq!(
        with_code(&all, "selects-host-network-pods").len(),
        1,
        "{all:#?}"
    );
    assert_eq!(
        with_code(&all, "selects-no-pods").len(),
        1,
        "host-network pods are not selected: {all:#?}"
    );
}

#[test]
fn a_dns_rule_toward_any_resolver_is_reported_and_one_toward_the_cluster_dns_is_not() {
    let cnp = |name: &str, peer: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: production}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  - {peer}toPorts: [{{ports: [{{port: '53', protocol: ANY}}], rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n"
        )
    };
    for (peer, why) in [
        ("toEntities: [world]\n    ", "world"),
        ("toCIDR: [0.0.0.0/0]\n    ", "0.0.0.0/0"),
        ("", "no peer"),
    ] {
        let all = findings(&cnp("dns", peer));
        let f = with_code(&all, "dns-rule-believes-any-resolver");
        assert_eq!(f.len(), 1, "{peer}: {all:#?}");
        assert!(f[0].message.contains(why), "{}", f[0]);
        assert_eq!(
            f[0].field.as_deref(),
            Some("spec.egress[0].toPorts[0].rules.dns"),
            "{}",
            f[0]
        );
    }
    for peer in [
        "toCIDR: [10.96.0.10/32]\n    ",
        "toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]\n    ",
    ] {
        let all = findings(&cnp("dns", peer));
        assert!(
            with_code(&all, "dns-rule-believes-any-resolver").is_empty(),
            "{peer}: {all:#?}"
        );
    }
}

#[test]
fn well_formed_policies_produce_no_findings() {
    let policies = np(
        "deny",
        "production",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ) + &np("dns", "production", DNS_OK)
        + &np(
            "db",
            "production",
            "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]\n  ports: [{port: pg}]",
        );
    let all = findings(&policies);
    assert!(all.is_empty(), "{all:#?}");
}

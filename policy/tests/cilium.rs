//! PodwallPolicy and CiliumNetworkPolicy semantics, written from Cilium's documentation and the
//! behaviour of its policy code (see the `cilium` module's docs).

mod common;

use common::{CLUSTER, load, np, tcp, udp, verdict};
use podwall_policy::{Decision, Diagnostic, Engine, Protocol, Severity};

fn cnp(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}\n",
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

fn clean(policies: &str) -> Engine {
    let (e, d) = engine(policies);
    assert!(d.is_empty(), "{d:#?}");
    e
}

#[test]
fn from_endpoints_with_source_prefixes_select_pods_of_the_policy_namespace() {
    let e = clean(&cnp(
        "db",
        "production",
        "endpointSelector: {matchLabels: {'k8s:app': db}}\ningress:\n- fromEndpoints: [{matchLabels: {'any:app': api}}]",
    ));
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
    assert!(
        !tcp(&e, "staging/api", "production/db", 5432),
        "same labels, other namespace"
    );
    assert!(
        tcp(&e, "production/frontend", "production/api", 8080),
        "api is not selected"
    );
}

#[test]
fn the_namespace_label_in_a_peer_selector_picks_the_peer_namespace() {
    let e = clean(&cnp(
        "db",
        "production",
        "endpointSelector: {matchLabels: {app: db}}\ningress:\n- fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': staging, app: api}}]",
    ));
    assert!(tcp(&e, "staging/api", "production/db", 5432));
    assert!(!tcp(&e, "production/api", "production/db", 5432));
}

#[test]
fn namespace_labels_can_be_selected_with_cilium_namespace_label_keys() {
    let e = clean(&cnp(
        "api",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: monitoring, io.cilium.k8s.namespace.labels.purpose: monitoring}}]",
    ));
    assert!(tcp(&e, "monitoring/prometheus", "production/api", 9090));
    assert!(!tcp(&e, "production/frontend", "production/api", 9090));
}

#[test]
fn an_empty_rule_allows_nothing_and_isolates() {
    let e = clean(&cnp(
        "deny",
        "production",
        "endpointSelector: {}\ningress:\n- {}",
    ));
    assert!(!tcp(&e, "production/api", "production/db", 5432));
    assert!(!tcp(&e, "192.0.2.1", "production/api", 8080));
    assert!(
        tcp(&e, "production/api", "staging/api", 8081),
        "egress is not isolated"
    );
}

#[test]
fn to_ports_without_peers_allows_every_peer_on_those_ports() {
    let e = clean(&cnp(
        "api",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- toPorts: [{ports: [{port: '8080', protocol: TCP}]}]",
    ));
    assert!(tcp(&e, "staging/api", "production/api", 8080));
    assert!(tcp(&e, "192.0.2.1", "production/api", 8080));
    assert!(!tcp(&e, "staging/api", "production/api", 9090));
}

#[test]
fn peers_without_to_ports_are_allowed_on_every_port_and_protocol() {
    let e = clean(&cnp(
        "api",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {app: frontend}}]",
    ));
    assert!(tcp(&e, "production/frontend", "production/api", 1));
    assert!(udp(&e, "production/frontend", "production/api", 53));
}

#[test]
fn the_protocol_defaults_to_any_and_port_zero_means_every_port() {
    let e = clean(&cnp(
        "api",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- toPorts: [{ports: [{port: '53'}]}]\n- fromEndpoints: [{matchLabels: {app: db}}]\n  toPorts: [{ports: [{port: '0', protocol: UDP}]}]",
    ));
    assert!(udp(&e, "production/frontend", "production/api", 53));
    assert!(tcp(&e, "production/frontend", "production/api", 53));
    assert!(udp(&e, "production/db", "production/api", 9999));
    assert!(!tcp(&e, "production/db", "production/api", 9999));
}

#[test]
fn cidr_rules_match_only_addresses_outside_the_cluster() {
    let e = clean(&cnp(
        "api",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromCIDR: [10.0.0.0/8]\n- fromCIDRSet: [{cidr: 172.16.0.0/12, except: [172.16.1.0/24]}]",
    ));
    assert!(
        tcp(&e, "10.99.0.1", "production/api", 8080),
        "outside the cluster"
    );
    assert!(
        !tcp(&e, "production/frontend", "production/api", 8080),
        "a pod address is not matched"
    );
    assert!(
        !tcp(&e, "192.168.1.2", "production/api", 8080),
        "nor a node's"
    );
    assert!(tcp(&e, "172.16.2.1", "production/api", 8080));
    assert!(!tcp(&e, "172.16.1.1", "production/api", 8080));
}

#[test]
fn entities_name_the_world_the_cluster_the_host_and_everything() {
    let world = clean(&cnp(
        "w",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEntities: [world]",
    ));
    assert!(tcp(&world, "203.0.113.1", "production/api", 8080));
    assert!(!tcp(&world, "production/frontend", "production/api", 8080));
    assert!(
        !tcp(&world, "192.168.1.2", "production/api", 8080),
        "a node is not the world"
    );
    let cluster = clean(&cnp(
        "c",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEntities: [cluster]",
    ));
    assert!(tcp(&cluster, "staging/api", "production/api", 8080));
    assert!(
        tcp(&cluster, "192.168.1.2", "production/api", 8080),
        "another node is in the cluster"
    );
    assert!(!tcp(&cluster, "203.0.113.1", "production/api", 8080));
    let host = clean(&cnp(
        "h",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\negress:\n- toEntities: [host]\n- toEntities: [remote-node]\n  toPorts: [{ports: [{port: '10250'}]}]",
    ));
    assert!(
        tcp(&host, "production/api", "192.168.1.1", 22),
        "its own node, any port"
    );
    assert!(!tcp(&host, "production/api", "192.168.1.2", 22));
    assert!(
        tcp(&host, "production/api", "192.168.1.2", 10250),
        "a remote node on 10250"
    );
    assert!(!tcp(&host, "production/api", "production/db", 5432));
    let all = clean(&cnp(
        "a",
        "production",
        "endpointSelector: {}\negress:\n- toEntities: [all]",
    ));
    assert!(tcp(&all, "production/api", "203.0.113.1", 443));
    assert!(tcp(&all, "production/api", "production/db", 5432));
}

#[test]
fn default_deny_can_be_turned_off_and_the_allows_still_join_the_union() {
    let policies = cnp(
        "extra",
        "production",
        "endpointSelector: {matchLabels: {app: db}}\nenableDefaultDeny: {ingress: false}\ningress:\n- fromEndpoints: [{matchLabels: {app: frontend}}]",
    );
    let e = clean(&policies);
    assert!(
        tcp(&e, "staging/api", "production/db", 5432),
        "not isolated by this policy alone"
    );
    let with_np = policies
        + &np(
            "db",
            "production",
            "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress]",
        );
    let e = clean(&with_np);
    assert!(
        tcp(&e, "production/frontend", "production/db", 5432),
        "the Cilium allow joins the union"
    );
    assert!(!tcp(&e, "staging/api", "production/db", 5432));
}

const API_L7: &str = "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {app: frontend}}]\n  toPorts:\n  - ports: [{port: '8080', protocol: TCP}]\n    rules:\n      http:\n      - {method: GET, path: /api/v1/.*}\n      - {method: POST, path: /api/v1/orders}";

#[test]
fn http_rules_make_the_connection_allowed_and_say_that_requests_must_match() {
    let e = clean(&cnp("api-l7-policy", "production", API_L7));
    let v = verdict(
        &e,
        "production/frontend",
        "production/api",
        Protocol::Tcp,
        8080,
    );
    assert!(v.allowed());
    let rules = v.ingress.http.as_ref().expect("HTTP rules apply");
    assert_eq!(rules.len(), 1);
    let info = e.rule_info(rules[0], None);
    assert_eq!(info.field, "spec.ingress[0].toPorts[0]");
    assert!(!tcp(&e, "production/db", "production/api", 8080));
}

#[test]
fn an_l4_allow_of_the_same_peer_and_port_turns_http_filtering_off() {
    let policies = cnp("api-l7-policy", "production", API_L7)
        + &np(
            "api-l4",
            "production",
            "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: frontend}}}]\n  ports: [{port: 8080}]",
        );
    let e = clean(&policies);
    let v = verdict(
        &e,
        "production/frontend",
        "production/api",
        Protocol::Tcp,
        8080,
    );
    assert!(v.allowed());
    assert!(v.ingress.http.is_none(), "{v:?}");
    // Another peer only allowed at L4 by a different rule does not affect the frontend's L7.
    let policies = cnp("api-l7-policy", "production", API_L7)
        + &np(
            "api-db",
            "production",
            "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: db}}}]\n  ports: [{port: 8080}]",
        );
    let e = clean(&policies);
    assert!(
        verdict(
            &e,
            "production/frontend",
            "production/api",
            Protocol::Tcp,
            8080
        )
        .ingress
        .http
        .is_some()
    );
    assert!(
        verdict(&e, "production/db", "production/api", Protocol::Tcp, 8080)
            .ingress
            .http
            .is_none()
    );
}

#[test]
fn http_rules_on_an_any_protocol_port_leave_udp_at_l4() {
    let e = clean(&cnp(
        "x",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- toPorts:\n  - ports: [{port: '8080'}]\n    rules: {http: [{method: GET}]}",
    ));
    assert!(
        verdict(
            &e,
            "production/frontend",
            "production/api",
            Protocol::Tcp,
            8080
        )
        .ingress
        .http
        .is_some()
    );
    let u = verdict(
        &e,
        "production/frontend",
        "production/api",
        Protocol::Udp,
        8080,
    );
    assert!(u.allowed() && u.ingress.http.is_none());
}

#[test]
fn invalid_values_isolate_the_selected_pods_with_the_field_named() {
    let (e, d) = engine(&cnp(
        "bad",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromCIDR: [not-a-cidr]\n  toPorts:\n  - ports: [{port: '8080', protocol: ICMP}]\n    rules: {http: [{path: '/api/(v1'}]}",
    ));
    // Left out, the policy would leave the API open to everyone; it stands for isolation of
    // the pods it selects, in the direction it has rules for, and allows nothing.
    assert_eq!(e.state().policies.len(), 1);
    let v = verdict(
        &e,
        "production/frontend",
        "production/api",
        Protocol::Tcp,
        8080,
    );
    assert!(!v.allowed(), "{v:?}");
    let out = verdict(
        &e,
        "production/api",
        "production/frontend",
        Protocol::Tcp,
        8080,
    );
    assert!(out.allowed(), "egress is not isolated: {out:?}");
    assert!(
        d.iter()
            .filter(|d| d.code == "invalid-policy")
            .all(|d| d.message.contains("allows nothing until it is fixed")),
        "{d:#?}"
    );
    let fields: Vec<&str> = d.iter().filter_map(|d| d.field.as_deref()).collect();
    assert!(fields.contains(&"spec.ingress[0].fromCIDR[0]"), "{d:#?}");
    assert!(
        fields.contains(&"spec.ingress[0].toPorts[0].ports[0].protocol"),
        "{d:#?}"
    );
    assert!(
        fields.contains(&"spec.ingress[0].toPorts[0].rules.http[0].path"),
        "{d:#?}"
    );
    assert!(
        d.iter()
            .all(|d| d.object.as_deref() == Some("CiliumNetworkPolicy production/bad"))
    );
}

#[test]
fn what_podwall_does_not_enforce_allows_nothing_and_still_isolates() {
    let (e, d) = engine(&cnp(
        "services",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\negress:\n- toServices: [{k8sService: {serviceName: web, namespace: production}}]\n- toEndpoints: [{matchLabels: {app: db}}]",
    ));
    assert_eq!(e.state().policies.len(), 1);
    let not_enforced: Vec<&Diagnostic> = d.iter().filter(|d| d.code == "not-enforced").collect();
    assert_eq!(not_enforced.len(), 1, "{d:#?}");
    assert_eq!(not_enforced[0].severity, Severity::Error);
    assert_eq!(
        not_enforced[0].field.as_deref(),
        Some("spec.egress[0].toServices")
    );
    assert!(
        !tcp(&e, "production/api", "93.184.216.34", 443),
        "fail closed"
    );
    assert!(
        tcp(&e, "production/api", "production/db", 5432),
        "the other rule still allows"
    );
}

#[test]
fn deny_rules_drop_the_direction_allows_instead_of_being_ignored() {
    let (e, d) = engine(&cnp(
        "d",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEntities: [all]\ningressDeny:\n- fromEndpoints: [{matchLabels: {app: frontend}}]",
    ));
    assert!(
        d.iter()
            .any(|d| d.field.as_deref() == Some("spec.ingressDeny")),
        "{d:#?}"
    );
    assert!(!tcp(&e, "production/frontend", "production/api", 8080));
    assert!(!tcp(&e, "production/db", "production/api", 8080));
}

#[test]
fn unknown_fields_are_warnings_and_the_policy_applies() {
    let (e, d) = engine(&cnp(
        "typo",
        "production",
        "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoint: [{matchLabels: {app: frontend}}]\n  toPorts: [{ports: [{port: '8080'}]}]",
    ));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "ignored-field");
    assert_eq!(d[0].field.as_deref(), Some("spec.ingress[0].fromEndpoint"));
    // Without the misspelt peer the rule allows every peer on 8080, as Cilium would read it.
    assert!(tcp(&e, "production/db", "production/api", 8080));
}

#[test]
fn several_specs_are_separate_policies() {
    let text = "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: two, namespace: production}\nspecs:\n- endpointSelector: {matchLabels: {app: api}}\n  ingress: [{}]\n- endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: api}}]}]\n";
    let e = clean(text);
    let names: Vec<String> = e
        .state()
        .policies
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "CiliumNetworkPolicy production/two#specs[0]",
            "CiliumNetworkPolicy production/two#specs[1]"
        ]
    );
    assert!(!tcp(&e, "production/frontend", "production/api", 8080));
    assert!(tcp(&e, "production/api", "production/db", 5432));
}

#[test]
fn podwall_policy_is_the_same_spec_under_its_own_group() {
    let text = "---\napiVersion: podwall.io/v1alpha1\nkind: PodwallPolicy\nmetadata: {name: p, namespace: production}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: api}}]}]\n";
    let e = clean(text);
    assert_eq!(
        e.state().policies[0].name.to_string(),
        "PodwallPolicy production/p"
    );
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
    let v = verdict(
        &e,
        "production/frontend",
        "production/db",
        Protocol::Tcp,
        5432,
    );
    assert_eq!(v.ingress.decision, Decision::NoRuleMatched);
}

#[test]
fn ping_needs_a_rule_without_to_ports_and_any_does_not_include_it() {
    let e = clean(&cnp(
        "db",
        "production",
        "endpointSelector: {matchLabels: {app: db}}\ningress:\n- fromEndpoints: [{matchLabels: {app: api}}]\n- fromEndpoints: [{matchLabels: {app: frontend}}]\n  toPorts: [{ports: [{port: '0', protocol: ANY}]}]",
    ));
    let ping = |from| verdict(&e, from, "production/db", Protocol::Icmp, 0).allowed();
    assert!(
        ping("production/api"),
        "an L3-only rule allows every protocol"
    );
    assert!(
        tcp(&e, "production/frontend", "production/db", 5432),
        "port 0 of ANY is every TCP, UDP and SCTP port"
    );
    assert!(!ping("production/frontend"), "but not ICMP");
}

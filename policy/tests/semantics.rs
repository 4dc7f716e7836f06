//! NetworkPolicy semantics, one behaviour per test, written from the Kubernetes documentation
//! ("Network Policies" concept page and the `networking.k8s.io/v1` API reference).

mod common;

use common::{cluster_with, np, tcp, udp, verdict};
use podwall_policy::{Decision, Direction, Protocol};

const PROD: &str = "production";

#[test]
fn pods_no_policy_selects_accept_and_send_everything() {
    let e = cluster_with("");
    assert!(tcp(&e, "production/frontend", "production/db", 5432));
    assert!(tcp(&e, "staging/api", "production/db", 1));
    assert!(udp(&e, "10.9.9.9", "production/api", 53));
}

#[test]
fn a_policy_isolates_only_the_pods_it_selects() {
    let e = cluster_with(&np(
        "db-deny",
        PROD,
        "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress]",
    ));
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
    assert!(
        tcp(&e, "production/frontend", "production/api", 8080),
        "api is not selected"
    );
}

#[test]
fn an_empty_pod_selector_selects_every_pod_of_the_policy_namespace_only() {
    let e = cluster_with(&np("deny", PROD, "podSelector: {}\npolicyTypes: [Ingress]"));
    assert!(!tcp(&e, "staging/api", "production/api", 8080));
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
    assert!(
        tcp(&e, "production/frontend", "staging/api", 8081),
        "staging is untouched"
    );
}

#[test]
fn a_missing_pod_selector_means_every_pod() {
    let e = cluster_with(&np("deny", PROD, "policyTypes: [Ingress]"));
    assert!(!tcp(&e, "staging/api", "production/frontend", 80));
}

#[test]
fn policy_types_default_to_ingress_when_there_are_no_egress_rules() {
    // Upstream: "Ingress will always be set and Egress will be set if the NetworkPolicy has any egress rules."
    let e = cluster_with(&np(
        "only-ingress",
        PROD,
        "podSelector: {matchLabels: {app: api}}",
    ));
    assert!(
        !tcp(&e, "production/frontend", "production/api", 8080),
        "ingress isolated"
    );
    assert!(
        tcp(&e, "production/api", "production/db", 5432),
        "egress not isolated"
    );
}

#[test]
fn policy_types_default_to_ingress_and_egress_when_egress_rules_exist() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\negress:\n- to: [{podSelector: {matchLabels: {app: db}}}]",
    ));
    assert!(
        !tcp(&e, "production/frontend", "production/api", 8080),
        "ingress isolated by default"
    );
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(
        !tcp(&e, "production/api", "production/frontend", 80),
        "egress isolated"
    );
}

#[test]
fn an_empty_egress_list_without_policy_types_does_not_isolate_egress() {
    // The API server's defaulting checks `len(spec.Egress) != 0`.
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\negress: []",
    ));
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(!tcp(&e, "production/frontend", "production/api", 8080));
}

#[test]
fn policy_type_egress_without_rules_denies_all_egress_and_leaves_ingress_open() {
    let e = cluster_with(&np(
        "deny-egress",
        PROD,
        "podSelector: {}\npolicyTypes: [Egress]",
    ));
    assert!(!tcp(&e, "production/api", "production/db", 5432));
    assert!(!udp(&e, "production/api", "kube-system/coredns", 53));
    assert!(
        tcp(&e, "staging/api", "production/api", 8080),
        "ingress still open"
    );
}

#[test]
fn a_rule_without_from_allows_every_source() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- ports: [{port: 8080}]",
    ));
    assert!(tcp(&e, "staging/api", "production/api", 8080));
    assert!(tcp(&e, "203.0.113.9", "production/api", 8080));
    assert!(!tcp(&e, "staging/api", "production/api", 9090));
}

#[test]
fn an_empty_from_list_allows_every_source() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: []\n  ports: [{port: 8080}]",
    ));
    assert!(tcp(&e, "monitoring/prometheus", "production/api", 8080));
}

#[test]
fn an_empty_rule_allows_everything() {
    let e = cluster_with(&np("allow-all", PROD, "podSelector: {}\ningress:\n- {}"));
    assert!(tcp(&e, "staging/api", "production/db", 5432));
    assert!(udp(&e, "8.8.8.8", "production/db", 9));
}

#[test]
fn a_rule_without_ports_allows_every_port_of_every_protocol() {
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]",
    ));
    assert!(tcp(&e, "production/api", "production/db", 1));
    assert!(tcp(&e, "production/api", "production/db", 65535));
    assert!(udp(&e, "production/api", "production/db", 5432));
    assert!(verdict(&e, "production/api", "production/db", Protocol::Sctp, 7).allowed());
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
}

fn ping(e: &podwall_policy::Engine, from: &str, to: &str) -> bool {
    verdict(e, from, to, Protocol::Icmp, 0).allowed()
}

fn other_protocol(e: &podwall_policy::Engine, from: &str, to: &str) -> bool {
    verdict(e, from, to, Protocol::Other, 0).allowed()
}

#[test]
fn other_ip_protocols_are_allowed_only_by_rules_without_ports_as_ping_is() {
    let e = cluster_with(&format!(
        "{}---\n{}",
        np(
            "db",
            PROD,
            "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]\n- from: [{podSelector: {matchLabels: {app: frontend}}}]\n  ports: [{port: 1, endPort: 65535}, {protocol: UDP}, {protocol: SCTP}]",
        ),
        np(
            "frontend-out",
            PROD,
            "podSelector: {matchLabels: {app: frontend}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchLabels: {app: db}}}]\n  ports: [{protocol: UDP}]",
        ),
    ));
    assert!(other_protocol(&e, "production/api", "production/db"));
    assert!(
        !other_protocol(&e, "production/frontend", "production/db"),
        "every port of every named protocol is still not, say, UDP-Lite"
    );
    assert!(!other_protocol(&e, "staging/api", "production/db"));
    assert!(!other_protocol(&e, "production/frontend", "staging/api"));
    assert_eq!(
        podwall_policy::ProtocolPort(Protocol::Other, 0).to_string(),
        "another IP protocol"
    );
}

#[test]
fn ping_is_allowed_only_by_rules_without_ports_in_both_directions() {
    let e = cluster_with(&format!(
        "{}---\n{}---\n{}",
        np(
            "db",
            PROD,
            "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]\n- from: [{podSelector: {matchLabels: {app: frontend}}}]\n  ports: [{port: 1, endPort: 65535}, {protocol: UDP}, {protocol: SCTP}]",
        ),
        np(
            "api-out",
            PROD,
            "podSelector: {matchLabels: {app: api}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchLabels: {app: db}}}]",
        ),
        np(
            "frontend-out",
            PROD,
            "podSelector: {matchLabels: {app: frontend}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchLabels: {app: db}}}]\n  ports: [{protocol: TCP}]",
        ),
    ));
    assert!(
        ping(&e, "production/api", "production/db"),
        "no ports on either side"
    );
    assert!(
        !ping(&e, "production/frontend", "production/db"),
        "every port of every protocol named is still not ping"
    );
    assert!(
        !ping(&e, "staging/api", "production/db"),
        "no rule for the peer"
    );
    assert!(
        ping(&e, "production/db", "staging/api"),
        "neither side isolated in that direction"
    );
    assert!(
        !ping(&e, "production/frontend", "staging/api"),
        "egress isolated, its rule names a protocol"
    );
}

#[test]
fn a_pod_selector_peer_only_selects_pods_in_the_policy_namespace() {
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]",
    ));
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(
        !tcp(&e, "staging/api", "production/db", 5432),
        "same labels, other namespace"
    );
}

#[test]
fn a_namespace_selector_peer_selects_every_pod_in_matching_namespaces() {
    let e = cluster_with(&np(
        "scrape",
        PROD,
        "podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {purpose: monitoring}}}]",
    ));
    assert!(tcp(&e, "monitoring/prometheus", "production/api", 9090));
    assert!(!tcp(&e, "staging/api", "production/api", 9090));
    assert!(
        !tcp(&e, "production/frontend", "production/api", 9090),
        "own namespace not selected"
    );
}

#[test]
fn namespace_selector_and_pod_selector_in_one_peer_must_both_match() {
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {team: shop}}\n    podSelector: {matchLabels: {app: api}}",
    ));
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(tcp(&e, "staging/api", "production/db", 5432));
    assert!(
        !tcp(&e, "production/frontend", "production/db", 5432),
        "shop namespace, wrong pod"
    );
    assert!(!tcp(&e, "monitoring/prometheus", "production/db", 5432));
}

#[test]
fn namespace_selector_and_pod_selector_in_two_peers_either_matches() {
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {purpose: monitoring}}\n  - podSelector: {matchLabels: {app: api}}",
    ));
    assert!(
        tcp(&e, "production/api", "production/db", 5432),
        "pod peer, own namespace"
    );
    assert!(
        tcp(&e, "monitoring/prometheus", "production/db", 5432),
        "namespace peer"
    );
    assert!(
        !tcp(&e, "staging/api", "production/db", 5432),
        "pod peer is own-namespace only"
    );
}

#[test]
fn an_empty_namespace_selector_selects_every_namespace() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: prometheus}}}]",
    ));
    assert!(tcp(&e, "monitoring/prometheus", "production/api", 9090));
    assert!(!tcp(&e, "production/frontend", "production/api", 9090));
}

#[test]
fn namespaces_are_selected_by_their_automatic_name_label() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]",
    ));
    assert!(tcp(&e, "monitoring/prometheus", "production/api", 9090));
}

#[test]
fn match_expressions_select_with_in_notin_exists_and_does_not_exist() {
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchExpressions: [{key: tier, operator: In, values: [data]}]}\ningress:\n- from:\n  - podSelector:\n      matchExpressions:\n      - {key: tier, operator: NotIn, values: [web]}\n      - {key: app, operator: Exists}\n      - {key: canary, operator: DoesNotExist}",
    ));
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(
        !tcp(&e, "production/frontend", "production/db", 5432),
        "tier=web excluded"
    );
}

#[test]
fn ip_block_allows_its_cidr_minus_except() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}}]",
    ));
    assert!(tcp(&e, "172.17.0.5", "production/api", 8080));
    assert!(!tcp(&e, "172.17.1.5", "production/api", 8080));
    assert!(tcp(&e, "172.17.2.5", "production/api", 8080));
    assert!(!tcp(&e, "172.18.0.1", "production/api", 8080));
}

#[test]
fn egress_ip_block_blocks_the_metadata_address_only() {
    let e = cluster_with(&np(
        "block-metadata",
        PROD,
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]",
    ));
    assert!(!tcp(&e, "production/api", "169.254.169.254", 80));
    assert!(tcp(&e, "production/api", "169.254.169.253", 80));
    assert!(tcp(&e, "production/api", "93.184.216.34", 443));
}

#[test]
fn ip_block_matches_pod_addresses_too() {
    // Upstream's e2e suite ("should enforce policy based on CIDR (ipBlock) rules") uses pod IPs.
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{ipBlock: {cidr: 10.0.1.2/32}}]",
    ));
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
}

#[test]
fn ipv6_ip_blocks_match_ipv6_addresses_only() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:bad::/48']}}]",
    ));
    assert!(tcp(&e, "2001:db8::1", "production/api", 8080));
    assert!(!tcp(&e, "2001:db8:bad::1", "production/api", 8080));
    assert!(!tcp(&e, "10.9.9.9", "production/api", 8080));
}

#[test]
fn the_protocol_defaults_to_tcp() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- ports: [{port: 8080}]",
    ));
    assert!(tcp(&e, "production/frontend", "production/api", 8080));
    assert!(!udp(&e, "production/frontend", "production/api", 8080));
}

#[test]
fn udp_and_sctp_ports_are_distinct_from_tcp() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- ports: [{port: 53, protocol: UDP}, {port: 9, protocol: SCTP}]",
    ));
    assert!(udp(&e, "production/frontend", "production/api", 53));
    assert!(!tcp(&e, "production/frontend", "production/api", 53));
    assert!(
        verdict(
            &e,
            "production/frontend",
            "production/api",
            Protocol::Sctp,
            9
        )
        .allowed()
    );
    assert!(
        !verdict(
            &e,
            "production/frontend",
            "production/api",
            Protocol::Sctp,
            53
        )
        .allowed()
    );
}

#[test]
fn a_port_entry_without_a_number_matches_every_port_of_its_protocol() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- ports: [{protocol: UDP}]",
    ));
    assert!(udp(&e, "production/frontend", "production/api", 1));
    assert!(udp(&e, "production/frontend", "production/api", 65535));
    assert!(!tcp(&e, "production/frontend", "production/api", 8080));
}

#[test]
fn end_port_ranges_are_inclusive() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- ports: [{port: 32000, endPort: 32768}]",
    ));
    assert!(!tcp(&e, "production/frontend", "production/api", 31999));
    assert!(tcp(&e, "production/frontend", "production/api", 32000));
    assert!(tcp(&e, "production/frontend", "production/api", 32768));
    assert!(!tcp(&e, "production/frontend", "production/api", 32769));
}

#[test]
fn overlapping_port_ranges_of_different_rules_combine() {
    let e = cluster_with(&np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: frontend}}}]\n  ports: [{port: 1000, endPort: 2000}]\n- from: [{podSelector: {matchLabels: {app: db}}}]\n  ports: [{port: 1500, endPort: 2500}]",
    ));
    assert!(tcp(&e, "production/frontend", "production/api", 1000));
    assert!(tcp(&e, "production/frontend", "production/api", 1600));
    assert!(!tcp(&e, "production/frontend", "production/api", 2100));
    assert!(!tcp(&e, "production/db", "production/api", 1400));
    assert!(tcp(&e, "production/db", "production/api", 1600));
    assert!(tcp(&e, "production/db", "production/api", 2500));
}

#[test]
fn named_ingress_ports_resolve_against_the_selected_pod() {
    let e = cluster_with(&np(
        "tier",
        PROD,
        "podSelector: {matchExpressions: [{key: tier, operator: In, values: [backend, data]}]}\ningress:\n- ports: [{port: http-api}, {port: pg}]",
    ));
    assert!(
        tcp(&e, "production/frontend", "production/api", 8080),
        "api's http-api"
    );
    assert!(
        !tcp(&e, "production/frontend", "production/api", 5432),
        "pg is db's, not api's"
    );
    assert!(
        tcp(&e, "production/frontend", "production/db", 5432),
        "db's pg"
    );
    assert!(!tcp(&e, "production/frontend", "production/db", 8080));
}

#[test]
fn named_egress_ports_resolve_against_the_destination_pod() {
    let e = cluster_with(&np(
        "frontend",
        PROD,
        "podSelector: {matchLabels: {app: frontend}}\npolicyTypes: [Egress]\negress:\n- to: [{namespaceSelector: {matchLabels: {team: shop}}}]\n  ports: [{port: http-api}]",
    ));
    assert!(tcp(&e, "production/frontend", "production/api", 8080));
    assert!(
        tcp(&e, "production/frontend", "staging/api", 8081),
        "same name, other number"
    );
    assert!(!tcp(&e, "production/frontend", "production/api", 8081));
    assert!(!tcp(&e, "production/frontend", "staging/api", 8080));
    assert!(!tcp(&e, "production/frontend", "production/db", 5432));
}

#[test]
fn a_named_port_only_matches_the_protocol_it_is_declared_with() {
    let e = cluster_with(&np(
        "dns",
        "kube-system",
        "podSelector: {}\ningress:\n- ports: [{port: dns, protocol: UDP}, {port: dns, protocol: TCP}]",
    ));
    assert!(udp(&e, "production/api", "kube-system/coredns", 53));
    assert!(
        !tcp(&e, "production/api", "kube-system/coredns", 53),
        "TCP 53 is named dns-tcp"
    );
}

#[test]
fn allows_of_several_policies_are_a_union() {
    let policies = np(
        "a",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]\n  ports: [{port: 5432}]",
    ) + &np(
        "b",
        PROD,
        "podSelector: {matchLabels: {tier: data}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {purpose: monitoring}}}]\n  ports: [{port: 9187}]",
    );
    let e = cluster_with(&policies);
    assert!(tcp(&e, "production/api", "production/db", 5432));
    assert!(tcp(&e, "monitoring/prometheus", "production/db", 9187));
    assert!(!tcp(&e, "monitoring/prometheus", "production/db", 5432));
    assert!(!tcp(&e, "production/api", "production/db", 9187));
}

#[test]
fn a_connection_needs_the_source_egress_and_the_destination_ingress() {
    let policies = np(
        "api-egress",
        PROD,
        "podSelector: {matchLabels: {app: api}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchLabels: {app: db}}}]",
    ) + &np(
        "db-ingress",
        PROD,
        "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress]",
    );
    let e = cluster_with(&policies);
    let v = verdict(&e, "production/api", "production/db", Protocol::Tcp, 5432);
    assert!(v.egress.allowed(), "egress allows");
    assert!(!v.ingress.allowed(), "ingress denies");
    assert!(!v.allowed());
}

#[test]
fn traffic_from_the_pod_own_node_is_always_allowed() {
    let e = cluster_with(&np("deny", PROD, "podSelector: {}\npolicyTypes: [Ingress]"));
    let v = verdict(&e, "192.168.1.1", "production/api", Protocol::Tcp, 8080);
    assert!(v.allowed());
    assert_eq!(v.ingress.decision, Decision::OwnNode);
    assert!(
        !tcp(&e, "192.168.1.2", "production/api", 8080),
        "another node is not special"
    );
}

#[test]
fn egress_to_the_own_node_follows_the_egress_rules() {
    // Upstream only exempts traffic *from* the node ("the only allowed connections into the pod
    // are those from the pod's node and those allowed by the ingress list").
    let e = cluster_with(&np("deny", PROD, "podSelector: {}\npolicyTypes: [Egress]"));
    assert!(!tcp(&e, "production/api", "192.168.1.1", 10250));
}

#[test]
fn a_pod_can_always_reach_itself() {
    let e = cluster_with(&np(
        "deny",
        PROD,
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    let v = verdict(&e, "production/api", "production/api", Protocol::Tcp, 8080);
    assert!(v.allowed());
    assert_eq!(v.ingress.decision, Decision::SamePod);
    assert!(!tcp(&e, "production/api", "production/db", 5432));
}

#[test]
fn host_network_pods_are_never_isolated_and_are_peers_by_address_only() {
    let host_pod = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: production, labels: {app: api}}
spec: {hostNetwork: true, nodeName: node-2, containers: [{name: a}]}
status: {podIP: 192.168.1.2, hostIP: 192.168.1.2}
"#;
    let policies = np(
        "api",
        PROD,
        "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]",
    );
    let e = cluster_with(&(policies + host_pod));
    let v = verdict(
        &e,
        "production/frontend",
        "production/node-agent",
        Protocol::Tcp,
        80,
    );
    assert!(v.allowed(), "the host-network pod is not isolated");
    assert_eq!(v.ingress.decision, Decision::HostNetwork);
    // As a source it has the labels app=api, but selectors do not see host-network pods.
    assert!(!tcp(&e, "production/node-agent", "production/api", 8080));
}

#[test]
fn an_outside_address_that_is_a_pod_address_is_that_pod() {
    let e = cluster_with(&np(
        "db",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]",
    ));
    assert!(tcp(&e, "10.0.1.2", "10.0.1.3", 5432));
    assert!(!tcp(&e, "10.0.1.1", "10.0.1.3", 5432));
}

#[test]
fn the_verdict_names_the_policy_and_rule_that_allowed_each_side() {
    let policies = np(
        "default-deny",
        PROD,
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ) + &np(
        "api-egress",
        PROD,
        "podSelector: {matchLabels: {app: api}}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 1.1.1.1/32}}]\n- to: [{podSelector: {matchLabels: {app: db}}}]\n  ports: [{port: 5432}]",
    ) + &np(
        "db-ingress",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: frontend}}}, {podSelector: {matchLabels: {app: api}}}]",
    );
    let e = cluster_with(&policies);
    let v = verdict(&e, "production/api", "production/db", Protocol::Tcp, 5432);
    assert!(v.allowed());
    let ex = e.explain(&v);
    let egress = ex.egress.allowed_by.expect("egress rule");
    assert_eq!(
        (egress.name.as_str(), egress.rule, egress.peer, egress.port),
        ("api-egress", 1, Some(0), Some(0))
    );
    let ingress = ex.ingress.allowed_by.expect("ingress rule");
    assert_eq!(
        (ingress.name.as_str(), ingress.rule, ingress.peer),
        ("db-ingress", 0, Some(1))
    );
    assert_eq!(
        ex.egress.isolated_by,
        [
            "NetworkPolicy production/api-egress",
            "NetworkPolicy production/default-deny"
        ]
    );
    assert_eq!(v.egress.direction, Direction::Egress);
}

#[test]
fn a_denial_names_the_isolating_policies_and_the_closest_rules() {
    let e = cluster_with(&np(
        "db-ingress",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]\n  ports: [{port: 5432}]\n- from: [{podSelector: {matchLabels: {app: frontend}}}]\n  ports: [{port: 9187}]",
    ));
    let v = verdict(
        &e,
        "production/frontend",
        "production/db",
        Protocol::Tcp,
        5432,
    );
    assert_eq!(v.ingress.decision, Decision::NoRuleMatched);
    let ex = e.explain(&v);
    assert!(!ex.allowed);
    assert_eq!(ex.ingress.reason, "no-rule-matched");
    assert_eq!(
        ex.ingress.isolated_by,
        ["NetworkPolicy production/db-ingress"]
    );
    let misses: Vec<(u32, &str)> = ex
        .ingress
        .near_misses
        .iter()
        .map(|m| (m.rule.rule, m.mismatch))
        .collect();
    assert_eq!(misses, [(0, "peer"), (1, "port")]);
    assert!(ex.to_string().contains("DENIED"), "{ex}");
    // What differs, in words.
    assert_eq!(
        ex.ingress.near_misses[0].differs,
        "the source, pod production/frontend, has app=frontend, the rule wants app=api"
    );
    assert_eq!(
        ex.ingress.near_misses[1].differs,
        "port TCP/5432 is not among TCP/9187"
    );
    assert!(
        ex.to_string()
            .contains("has app=frontend, the rule wants app=api"),
        "{ex}"
    );
}

#[test]
fn the_nearest_miss_names_the_namespace_label_and_the_address_that_differ() {
    let e = cluster_with(&np(
        "db-ingress",
        PROD,
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {team: web}}, podSelector: {matchLabels: {app: frontend}}}]\n- from: [{ipBlock: {cidr: 10.9.0.0/16, except: [10.9.9.0/24]}}]\n  ports: [{port: 5432}]",
    ));
    let v = verdict(
        &e,
        "production/frontend",
        "production/db",
        Protocol::Tcp,
        5432,
    );
    let ex = e.explain(&v);
    let first = &ex.ingress.near_misses[0];
    assert_eq!(first.rule.rule, 0, "{:?}", ex.ingress.near_misses);
    assert_eq!(
        first.differs,
        "the source's namespace production has team=shop, the rule wants team=web"
    );
    let v = verdict(&e, "10.9.9.9", "production/db", Protocol::Tcp, 5432);
    let ex = e.explain(&v);
    let by_address = ex
        .ingress
        .near_misses
        .iter()
        .find(|m| m.rule.rule == 1)
        .expect("the ipBlock rule");
    assert_eq!(
        by_address.differs,
        "the source 10.9.9.9 is in 10.9.0.0/16 but excepted by 10.9.9.0/24"
    );
}

#[test]
fn dual_stack_pods_are_matched_by_the_address_of_the_connection_family() {
    let pods = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: v6client, namespace: production, labels: {app: v6}}
status: {podIP: 10.0.9.1, podIPs: [{ip: 10.0.9.1}, {ip: 'fd00::91'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v6server, namespace: production, labels: {app: v6server}}
status: {podIP: 'fd00::92', podIPs: [{ip: 'fd00::92'}, {ip: 10.0.9.2}]}
"#;
    let policies = np(
        "v6",
        PROD,
        "podSelector: {matchLabels: {app: v6server}}\ningress:\n- from: [{ipBlock: {cidr: 'fd00::/64'}}]",
    );
    let e = cluster_with(&(policies + pods));
    // The destination's primary address is IPv6, so the client connects from its IPv6 address.
    assert!(tcp(&e, "production/v6client", "production/v6server", 80));
    assert!(!tcp(&e, "10.0.9.1", "production/v6server", 80));
}

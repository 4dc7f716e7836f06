//! ClusterNetworkPolicy (v1alpha2) semantics: tiers, priorities, actions, peers and ports, and
//! failing closed, each pinned by a small cluster.

use podwall_policy::{Decision, Direction, Endpoint, Engine, FqdnId, Loader, Protocol, Query};

/// Two namespaces with a client and a server each, a host-network pod, and a node.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a, labels: {app: client}}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.0.1.1, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: a, labels: {app: server}}
spec: {nodeName: n1, containers: [{name: s, ports: [{name: web, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {phase: Running, podIP: 10.0.1.2, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
spec: {nodeName: n2}
status: {phase: Running, podIP: 10.0.2.1, hostIP: 192.168.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: b, labels: {app: server}}
spec: {nodeName: n2, containers: [{name: s, ports: [{name: web, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.0.2.2, hostIP: 192.168.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: b, labels: {app: agent}}
spec: {nodeName: n2, hostNetwork: true}
status: {phase: Running, podIP: 192.168.0.2, hostIP: 192.168.0.2}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: Hostname, address: n1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {role: control}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
"#;

fn engine(policies: &str) -> Engine {
    let mut loader = Loader::new();
    loader.add_yaml("base", BASE).expect("base");
    loader.add_yaml("policies", policies).expect("policies");
    let (state, report) = loader.finish();
    let errors: Vec<String> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == podwall_policy::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    Engine::compile(state)
}

fn engine_with_errors(policies: &str) -> (Engine, Vec<String>) {
    let mut loader = Loader::new();
    loader.add_yaml("base", BASE).expect("base");
    loader.add_yaml("policies", policies).expect("policies");
    let (state, report) = loader.finish();
    let errors = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == podwall_policy::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    (Engine::compile(state), errors)
}

fn pod(e: &Engine, key: &str) -> Endpoint {
    let (ns, name) = key.split_once('/').expect("ns/name");
    Endpoint::Pod(e.state().pod_by_name(ns, name).expect(key))
}

fn q(e: &Engine, from: &str, to: &str, protocol: Protocol, port: u16) -> Query {
    let end = |s: &str| match s.parse() {
        Ok(ip) => Endpoint::Ip(ip),
        Err(_) => pod(e, s),
    };
    Query {
        src: end(from),
        dst: end(to),
        protocol,
        port,
    }
}

/// Whether the connection is allowed, checked by both the explaining and the fast path.
fn allowed(e: &Engine, from: &str, to: &str, port: u16) -> bool {
    allowed_on(e, from, to, Protocol::Tcp, port)
}

fn allowed_on(e: &Engine, from: &str, to: &str, protocol: Protocol, port: u16) -> bool {
    let query = q(e, from, to, protocol, port);
    let slow = e.verdict(&query).allowed();
    assert_eq!(slow, e.allowed(&query), "fast and explaining paths agree");
    slow
}

fn cnp(name: &str, tier: &str, priority: u32, body: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{body}\n"
    )
}

const DENY_ALL_NP_INGRESS_A: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

const ALLOW_CLIENTS_NP_A: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n";

#[test]
fn an_admin_deny_overrides_a_networkpolicy_allow_and_names_tier_priority_and_rule() {
    let policies = ALLOW_CLIENTS_NP_A.to_string()
        + &cnp(
            "no-blue",
            "Admin",
            10,
            "  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress:\n  - name: blue-out\n    action: Deny\n    from: [{namespaces: {matchLabels: {team: blue}}}]\n",
        );
    let e = engine(&policies);
    assert!(!allowed(&e, "b/client", "a/server", 8080));
    assert!(allowed(&e, "a/client", "a/server", 8080));
    let v = e.verdict(&q(&e, "b/client", "a/server", Protocol::Tcp, 8080));
    let Decision::ClusterDeny(rule) = v.ingress.decision else {
        panic!("{:?}", v.ingress.decision)
    };
    let info = e.rule_info(rule, Some(&v));
    assert_eq!(
        info.title(),
        "ClusterNetworkPolicy no-blue (Admin tier, priority 10) rule \"blue-out\" spec.ingress[0]"
    );
    let text = e.explain(&v).to_string();
    assert!(
        text.contains("denied by ClusterNetworkPolicy no-blue"),
        "{text}"
    );
}

#[test]
fn an_admin_accept_overrides_networkpolicy_isolation_on_its_side_only() {
    let policies = DENY_ALL_NP_INGRESS_A.to_string()
        + &cnp(
            "monitoring",
            "Admin",
            5,
            "  subject: {namespaces: {}}\n  ingress:\n  - action: Accept\n    from: [{pods: {namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: client}}}}]\n",
        );
    let e = engine(&policies);
    assert!(
        allowed(&e, "b/client", "a/server", 8080),
        "accepted by the admin tier"
    );
    assert!(
        !allowed(&e, "a/client", "a/server", 8080),
        "the NetworkPolicy still isolates"
    );
    // An egress Accept still needs the destination's ingress.
    let egress = DENY_ALL_NP_INGRESS_A.to_string()
        + &cnp(
            "out",
            "Admin",
            5,
            "  subject: {namespaces: {matchLabels: {team: blue}}}\n  egress:\n  - action: Accept\n    to: [{namespaces: {}}]\n",
        );
    let e = engine(&egress);
    let v = e.verdict(&q(&e, "b/client", "a/server", Protocol::Tcp, 8080));
    assert!(matches!(v.egress.decision, Decision::ClusterAccept(_)));
    assert!(!v.allowed(), "the destination's NetworkPolicy denies it");
}

#[test]
fn pass_hands_the_decision_to_networkpolicy_and_then_to_the_baseline_tier() {
    let policies = cnp(
        "pass-red",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Pass\n    from: [{namespaces: {matchLabels: {team: red}}}]\n  - action: Deny\n    from: [{namespaces: {}}]\n",
    ) + &cnp(
        "baseline-deny",
        "Baseline",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n",
    );
    // No NetworkPolicy: the baseline's Deny decides what the admin tier passed.
    let e = engine(&policies);
    assert!(
        !allowed(&e, "a/client", "a/server", 8080),
        "passed, then the baseline denies"
    );
    assert!(
        !allowed(&e, "b/client", "a/server", 8080),
        "denied by the admin tier"
    );
    // A NetworkPolicy that allows overrides the baseline for the pods it selects.
    let e = engine(&(policies.clone() + ALLOW_CLIENTS_NP_A));
    assert!(
        allowed(&e, "a/client", "a/server", 8080),
        "passed, then allowed by the NetworkPolicy"
    );
    assert!(
        !allowed(&e, "b/client", "a/server", 8080),
        "the admin Deny comes first"
    );
    assert!(
        !allowed(&e, "a/server", "a/client", 80),
        "client: no NetworkPolicy, baseline denies"
    );
}

#[test]
fn lower_priority_first_and_equal_priorities_by_name_and_rules_in_order() {
    let both = |p1: u32, p2: u32| {
        engine(
            &(cnp(
                "accept-it",
                "Admin",
                p1,
                "  subject: {namespaces: {}}\n  ingress:\n  - action: Accept\n    from: [{namespaces: {}}]\n",
            ) + &cnp(
                "deny-it",
                "Admin",
                p2,
                "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n",
            )),
        )
    };
    assert!(allowed(&both(1, 2), "b/client", "a/server", 8080));
    assert!(!allowed(&both(2, 1), "b/client", "a/server", 8080));
    // The same priority: the stated order is by name (accept-it before deny-it).
    assert!(allowed(&both(3, 3), "b/client", "a/server", 8080));
    // Within a policy, the first rule that matches.
    let e = engine(&cnp(
        "ordered",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n    protocols: [{tcp: {destinationPort: {number: 8080}}}]\n  - action: Accept\n    from: [{namespaces: {}}]\n",
    ));
    assert!(!allowed(&e, "b/client", "a/server", 8080));
    assert!(allowed(&e, "b/client", "a/server", 8081));
}

#[test]
fn protocols_match_their_own_protocol_ports_ranges_and_named_ports() {
    let e = engine(&cnp(
        "ports",
        "Admin",
        1,
        "  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n    protocols:\n    - tcp: {destinationPort: {range: {start: 8000, end: 8100}}}\n    - destinationNamedPort: dns\n",
    ));
    assert!(!allowed(&e, "b/client", "a/server", 8080), "TCP range");
    assert!(
        allowed_on(&e, "b/client", "a/server", Protocol::Udp, 8080),
        "UDP: not the tcp entry"
    );
    assert!(
        !allowed_on(&e, "b/client", "a/server", Protocol::Udp, 53),
        "the named port, UDP"
    );
    assert!(
        allowed_on(&e, "b/client", "a/server", Protocol::Tcp, 53),
        "no TCP port named dns"
    );
    assert!(
        allowed(&e, "b/client", "b/server", 9090),
        "9090 is outside the range"
    );
}

#[test]
fn networks_match_pod_addresses_too_and_nodes_match_node_addresses() {
    let e = engine(&cnp(
        "egress",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {team: red}}}\n  egress:\n  - action: Deny\n    to: [{networks: [10.0.2.0/24, 203.0.113.0/24]}]\n  - action: Deny\n    to: [{nodes: {matchLabels: {role: control}}}]\n",
    ));
    assert!(
        !allowed(&e, "a/client", "b/server", 9090),
        "a pod in the network"
    );
    assert!(
        !allowed(&e, "a/client", "203.0.113.9", 443),
        "an outside address in it"
    );
    assert!(allowed(&e, "a/client", "198.51.100.1", 443));
    assert!(
        !allowed(&e, "a/client", "192.168.0.2", 10250),
        "the control node"
    );
    assert!(
        allowed(&e, "a/client", "192.168.0.1", 10250),
        "the worker node"
    );
    assert!(allowed(&e, "a/client", "a/server", 8080));
}

#[test]
fn host_network_pods_are_never_subjects_nor_pod_peers() {
    let e = engine(&cnp(
        "deny-all",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - action: Deny\n    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: agent}}}}]\n  ingress:\n  - action: Deny\n    from: [{namespaces: {matchLabels: {team: blue}}}]\n",
    ));
    assert!(
        allowed(&e, "b/agent", "a/server", 8080),
        "not a subject, not a pod peer"
    );
    assert!(
        allowed(&e, "a/client", "b/agent", 8080),
        "the agent is no pod peer"
    );
    assert!(!allowed(&e, "b/client", "a/server", 8080));
}

#[test]
fn an_unreadable_peer_fails_closed_accept_matches_nothing_deny_and_pass_deny_all() {
    let (e, errors) = engine_with_errors(
        &(cnp(
            "future-accept",
            "Admin",
            1,
            "  subject: {namespaces: {}}\n  ingress:\n  - action: Accept\n    from: [{serviceAccounts: {name: x}}]\n",
        ) + DENY_ALL_NP_INGRESS_A),
    );
    assert!(
        errors.iter().any(|e| e.contains("fails closed")),
        "{errors:?}"
    );
    assert!(
        !allowed(&e, "b/client", "a/server", 8080),
        "the Accept matches nothing"
    );
    for action in ["Deny", "Pass"] {
        let (e, errors) = engine_with_errors(&cnp(
            "future",
            "Admin",
            1,
            &format!(
                "  subject: {{namespaces: {{matchLabels: {{team: red}}}}}}\n  ingress:\n  - action: {action}\n    from: [{{}}]\n"
            ),
        ));
        assert!(!errors.is_empty());
        assert!(
            !allowed(&e, "b/client", "a/server", 8080),
            "{action}: denies all"
        );
        assert!(
            allowed(&e, "a/client", "b/server", 9090),
            "{action}: only its subjects"
        );
    }
}

#[test]
fn domain_names_accept_learned_outside_addresses_wildcards_cover_one_or_more_labels() {
    let e = engine(&cnp(
        "allow-names",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - action: Accept\n    to: [{domainNames: [\"Example.COM.\", \"*.kubernetes.io\"]}]\n  - action: Deny\n    to: [{networks: [0.0.0.0/0]}]\n",
    ));
    let selectors: Vec<String> = e.fqdn_selectors().iter().map(|s| s.to_string()).collect();
    assert_eq!(
        selectors,
        ["matchName example.com", "matchPattern **.kubernetes.io"]
    );
    let with = |ip: &str, names: &[FqdnId]| {
        e.verdict_learned(&q(&e, "a/client", ip, Protocol::Tcp, 443), names)
            .allowed()
    };
    // The pods' sidecars learn the answers for those names.
    let client = e.state().pod_by_name("a", "client").expect("client");
    assert_eq!(e.egress_fqdn(client), [FqdnId(0), FqdnId(1)]);
    assert!(with("93.184.216.34", &[FqdnId(0)]));
    assert!(with("93.184.216.35", &[FqdnId(1)]));
    assert!(!with("93.184.216.36", &[]), "not learned: the Deny");
    // A learned name whose address is a pod's is no outside address: the Deny decides.
    assert!(!with("10.0.2.2", &[FqdnId(0)]));
    // Deny and Pass rules cannot use domainNames: refused, and fail closed.
    let (_, errors) = engine_with_errors(&cnp(
        "deny-names",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - action: Deny\n    to: [{domainNames: [example.com]}]\n",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("only supported in Accept rules")),
        "{errors:?}"
    );
}

#[test]
fn kubelet_probes_from_the_own_node_pass_even_an_admin_deny_all() {
    let e = engine(&cnp(
        "deny-all",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n",
    ));
    assert!(allowed(&e, "192.168.0.1", "a/server", 8080));
    let v = e.verdict(&q(&e, "192.168.0.1", "a/server", Protocol::Tcp, 8080));
    assert_eq!(v.ingress.decision, Decision::OwnNode);
    assert_eq!(v.ingress.direction, Direction::Ingress);
}

#[test]
fn a_pod_reaching_itself_is_judged_by_the_cluster_tiers_but_always_allowed_by_networkpolicy() {
    let deny_own = cnp(
        "no-red-to-red",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {matchLabels: {team: red}}}]\n",
    );
    let e = engine(&deny_own);
    assert!(
        !allowed(&e, "a/server", "a/server", 8080),
        "hairpin: the Deny holds"
    );
    let baseline = deny_own.replace("Admin", "Baseline");
    let e = engine(&baseline);
    assert!(
        !allowed(&e, "a/server", "a/server", 8080),
        "no NetworkPolicy: the Baseline judges"
    );
    let e = engine(&(baseline + DENY_ALL_NP_INGRESS_A));
    assert!(
        allowed(&e, "a/server", "a/server", 8080),
        "a NetworkPolicy always allows it"
    );
}

#[test]
fn a_clusterwide_cilium_policy_selects_and_allows_pods_of_every_namespace_unless_it_names_one() {
    let ccnp = "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: servers}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: b, app: agent}}]\n";
    let e = engine(ccnp);
    // Servers of both namespaces are isolated; clients of either namespace reach them on 8080.
    for server in ["a/server", "b/server"] {
        assert!(allowed(&e, "a/client", server, 8080), "{server}");
        assert!(allowed(&e, "b/client", server, 8080), "{server}");
        assert!(
            !allowed(&e, "a/client", server, 9090),
            "{server}: another port"
        );
    }
    let v = e.verdict(&q(&e, "b/client", "a/server", Protocol::Tcp, 8080));
    let text = e.explain(&v).to_string();
    assert!(
        text.contains("CiliumClusterwideNetworkPolicy servers"),
        "{text}"
    );
    // Only pods it selects: clients are not isolated.
    assert!(allowed(&e, "a/server", "b/client", 9090));
}

#[test]
fn fields_podwall_does_not_know_are_errors_and_a_rule_with_one_fails_closed() {
    let (e, errors) = engine_with_errors(&cnp(
        "future-fields",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {team: red}}}\n  logging: true\n  ingress:\n  - action: Accept\n    from: [{namespaces: {}}]\n    onlyOnWeekdays: true\n",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.logging") && e.contains("does not enforce")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("onlyOnWeekdays") && e.contains("fails closed")),
        "{errors:?}"
    );
    let v = e.verdict(&q(&e, "b/client", "a/server", Protocol::Tcp, 8080));
    assert!(
        v.allowed(),
        "not isolated: the inert Accept decides nothing"
    );
    assert_eq!(v.ingress.decision, Decision::NotIsolated);
}

#[test]
fn lint_warns_when_two_policies_of_a_tier_share_a_priority_and_a_pod() {
    let policy = |name: &str, ns: &str| {
        cnp(
            name,
            "Admin",
            5,
            &format!(
                "  subject: {{namespaces: {{matchLabels: {{team: {ns}}}}}}}\n  ingress:\n  - action: Deny\n    from: [{{namespaces: {{}}}}]\n"
            ),
        )
    };
    let codes = |policies: &str| -> Vec<String> {
        podwall_policy::analyze::lint::lint(&engine(policies))
            .iter()
            .filter(|d| d.code == "same-priority")
            .map(|d| d.to_string())
            .collect()
    };
    let found = codes(&(policy("one", "red") + &policy("two", "red")));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("podwall evaluates one first"),
        "{found:?}"
    );
    // Disjoint subjects: the order cannot matter.
    assert!(codes(&(policy("one", "red") + &policy("two", "blue"))).is_empty());
}

#[test]
fn an_unreadable_tier_priority_or_subject_fails_closed_instead_of_lifting_the_policy() {
    // An operator podwall cannot read in the subject: every pod, Deny rules deny, Accepts none.
    let (e, errors) = engine_with_errors(
        &(cnp(
            "typo",
            "Admin",
            50,
            "  subject: {namespaces: {matchExpressions: [{key: team, operator: Notin, values: [blue]}]}}\n  egress:\n  - action: Accept\n    to: [{namespaces: {}}]\n    protocols: [{tcp: {destinationPort: {number: 8080}}}]\n  - action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n",
        ) + DENY_ALL_NP_INGRESS_A),
    );
    assert!(
        errors.iter().any(|e| e.contains("fails closed")),
        "{errors:?}"
    );
    for pod in ["a/client", "b/client"] {
        assert!(
            !allowed(&e, pod, "169.254.169.254", 80),
            "{pod}: the Deny holds for every pod"
        );
    }
    assert!(
        !allowed(&e, "b/client", "a/server", 8080),
        "the Accept matches nothing"
    );
    // A priority out of range: kept, at the Admin tier's top.
    let (e, errors) = engine_with_errors(&cnp(
        "too-high",
        "Admin",
        2000,
        "  subject: {namespaces: {}}\n  egress:\n  - action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n",
    ));
    assert!(
        errors.iter().any(|e| e.contains("spec.priority")),
        "{errors:?}"
    );
    assert!(!allowed(&e, "a/client", "169.254.169.254", 80));
    // A label value the API server would refuse (the CRD does not check it): as written.
    let (e, errors) = engine_with_errors(&cnp(
        "odd-label",
        "Admin",
        5,
        "  subject: {namespaces: {matchExpressions: [{key: team, operator: NotIn, values: [\"blue/eu\"]}]}}\n  egress:\n  - action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n",
    ));
    assert!(
        errors.iter().any(|e| e.contains("evaluated as written")),
        "{errors:?}"
    );
    assert!(
        !allowed(&e, "b/client", "169.254.169.254", 80),
        "team=blue is not blue/eu"
    );
}

#[test]
fn fields_podwall_does_not_know_below_a_rule_make_it_fail_closed_too() {
    let (e, errors) = engine_with_errors(&cnp(
        "deep",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Accept\n    from: [{pods: {namespaceSelector: {}, podSelector: {}, serviceAccount: x}}]\n  - action: Accept\n    from: [{namespaces: {}}]\n    protocols: [{tcp: {destinationPort: {number: 80}, sourcePort: {number: 5}}}]\n",
    ));
    assert_eq!(
        errors.iter().filter(|e| e.contains("fails closed")).count(),
        2,
        "{errors:?}"
    );
    let v = e.verdict(&q(&e, "b/client", "a/server", Protocol::Tcp, 80));
    assert_eq!(
        v.ingress.decision,
        Decision::NotIsolated,
        "neither Accept matches"
    );
}

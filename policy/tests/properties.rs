//! Properties that must hold for every cluster state, checked on random small clusters:
//! allows only add; a policy that selects no pod changes nothing; input order never matters;
//! and loading a policy rendered as Kubernetes JSON gives back the same policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use podwall_policy::{
    ClusterState, ContainerPort, Direction, Endpoint, Engine, IpBlock, LabelSelector, Loader,
    Namespace, NamespaceScope, Operator, Origin, Peer, Pod, PodId, Policy, PolicyKind, PolicyName,
    PortMatch, PortSpec, Protocol, Query, Requirement, Rule,
};
use proptest::prelude::*;
use serde_json::Value;

const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];

fn selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::everything()),
        prop::sample::select(vec!["a", "b", "c"])
            .prop_map(|v| LabelSelector::from_pairs([("app", v)])),
        (prop::sample::select(vec!["t1", "t2"]), any::<bool>()).prop_map(|(v, not)| {
            LabelSelector {
                requirements: vec![Requirement {
                    key: "tier".into(),
                    operator: if not { Operator::NotIn } else { Operator::In },
                    values: vec![v.into()],
                }],
            }
        }),
        any::<bool>().prop_map(|exists| LabelSelector {
            requirements: vec![Requirement {
                key: "canary".into(),
                operator: if exists {
                    Operator::Exists
                } else {
                    Operator::DoesNotExist
                },
                values: vec![],
            }],
        }),
    ]
}

fn ns_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::everything()),
        prop::sample::select(vec!["x", "y"]).prop_map(|v| LabelSelector::from_pairs([("team", v)])),
        prop::sample::select(NAMESPACES.to_vec())
            .prop_map(|n| LabelSelector::from_pairs([("kubernetes.io/metadata.name", n)])),
    ]
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (prop::sample::select(NAMESPACES.to_vec()), selector()).prop_map(|(ns, pods)| Peer::Pods {
            namespaces: NamespaceScope::Named(ns.into()),
            pods
        }),
        (ns_selector(), selector()).prop_map(|(ns, pods)| Peer::Pods {
            namespaces: NamespaceScope::Selected(ns),
            pods
        }),
        prop::sample::select(vec![
            podwall_policy::Entity::World,
            podwall_policy::Entity::Cluster,
            podwall_policy::Entity::Host,
            podwall_policy::Entity::RemoteNode,
            podwall_policy::Entity::All,
        ])
        .prop_map(Peer::Entity),
        prop::sample::select(vec!["10.0.0.0/28", "192.0.2.0/24", "0.0.0.0/0"]).prop_map(|c| {
            Peer::ExternalCidr(IpBlock {
                cidr: c.parse().expect("cidr"),
                except: vec![],
            })
        }),
        prop::sample::select(vec![
            ("10.0.0.0/29", vec![]),
            ("10.0.0.0/28", vec!["10.0.0.4/30"]),
            ("0.0.0.0/0", vec!["10.0.0.0/8"]),
            ("192.0.2.0/24", vec![]),
        ])
        .prop_map(|(cidr, except)| Peer::IpBlock(IpBlock {
            cidr: cidr.parse().expect("cidr"),
            except: except.iter().map(|e| e.parse().expect("cidr")).collect(),
        })),
    ]
}

fn port() -> impl Strategy<Value = PortSpec> {
    prop::sample::select(vec![
        PortSpec {
            protocol: Protocol::Tcp,
            port: PortMatch::Any,
        },
        PortSpec {
            protocol: Protocol::Tcp,
            port: PortMatch::Range(80, 80),
        },
        PortSpec {
            protocol: Protocol::Tcp,
            port: PortMatch::Range(400, 500),
        },
        PortSpec {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("http".into()),
        },
        PortSpec {
            protocol: Protocol::Udp,
            port: PortMatch::Range(53, 53),
        },
        PortSpec {
            protocol: Protocol::Udp,
            port: PortMatch::Named("dns".into()),
        },
    ])
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(peer(), 0..3),
        prop::collection::vec(port(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule::new(peers, ports, ""))
}

fn rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop::option::of(prop::collection::vec(rule(), 0..3))
}

/// A policy; its name is set by the caller so that names are unique.
fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        selector(),
        rules(),
        rules(),
    )
        .prop_map(|(ns, sel, ingress, egress)| {
            // Every policy isolates at least one direction once `policyTypes` is defaulted.
            let ingress = if ingress.is_none() && egress.is_none() {
                Some(Vec::new())
            } else {
                ingress
            };
            Policy {
                name: PolicyName {
                    kind: PolicyKind::NetworkPolicy,
                    namespace: ns.into(),
                    name: String::new(),
                },
                origin: Origin::default(),
                pod_selector: sel,
                namespace_selector: None,
                default_deny: podwall_policy::DefaultDeny {
                    ingress: ingress.is_some(),
                    egress: egress.is_some(),
                },
                cluster: None,
                ingress,
                egress,
                policy_types_explicit: true,
            }
        })
}

fn pod() -> impl Strategy<Value = (usize, String, String, bool, Vec<usize>)> {
    (
        0..NAMESPACES.len(),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
        prop::sample::select(vec!["t1", "t2"]).prop_map(String::from),
        any::<bool>(),
        prop::sample::subsequence(vec![0, 1, 2], 0..=3),
    )
}

fn cluster() -> impl Strategy<Value = (Vec<Namespace>, Vec<Pod>)> {
    (
        prop::collection::vec(prop::sample::select(vec!["x", "y"]), 3),
        prop::collection::vec(pod(), 1..7),
    )
        .prop_map(|(teams, pods)| {
            let namespaces = NAMESPACES
                .iter()
                .zip(teams)
                .map(|(name, team)| {
                    let mut ns = Namespace::implicit(name);
                    ns.labels.insert("team".into(), team.into());
                    ns.implicit = false;
                    ns
                })
                .collect();
            let declared = [
                ContainerPort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("https".into()),
                    port: 443,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                },
            ];
            let pods = pods
                .into_iter()
                .enumerate()
                .map(|(i, (ns, app, tier, canary, ports))| {
                    let mut labels =
                        BTreeMap::from([("app".to_string(), app), ("tier".to_string(), tier)]);
                    if canary {
                        labels.insert("canary".into(), "true".into());
                    }
                    Pod {
                        namespace: NAMESPACES[ns].into(),
                        name: format!("pod-{i}"),
                        labels,
                        annotations: BTreeMap::new(),
                        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))],
                        host_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))],
                        node_name: None,
                        host_network: false,
                        host_ports: Vec::new(),
                        ports: ports.into_iter().map(|p| declared[p].clone()).collect(),
                        origin: Origin::default(),
                    }
                })
                .collect();
            (namespaces, pods)
        })
}

fn named(policies: Vec<Policy>, prefix: &str) -> Vec<Policy> {
    policies
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.name.name = format!("{prefix}{i}");
            p
        })
        .collect()
}

/// Every question worth asking of a small cluster: each ordered pod pair on several ports,
/// plus connections to and from outside addresses.
fn queries(state: &ClusterState) -> Vec<Query> {
    let ports = [
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 443),
        (Protocol::Tcp, 450),
        (Protocol::Udp, 53),
    ];
    let mut endpoints: Vec<Endpoint> = state.pod_ids().map(Endpoint::Pod).collect();
    endpoints.push(Endpoint::Ip("10.0.0.100".parse().expect("ip")));
    endpoints.push(Endpoint::Ip("192.0.2.7".parse().expect("ip")));
    let mut out = Vec::new();
    for &src in &endpoints {
        for &dst in &endpoints {
            for &(protocol, port) in &ports {
                out.push(Query {
                    src,
                    dst,
                    protocol,
                    port,
                });
            }
        }
    }
    out
}

fn isolated(engine: &Engine, e: Endpoint, d: Direction) -> bool {
    matches!(e, Endpoint::Pod(p) if !engine.isolated_by(p, d).is_empty())
}

/// Whether a generated policy has only peers a NetworkPolicy can express.
fn networkpolicy_only(p: &Policy) -> bool {
    !p.ingress.iter().chain(p.egress.iter()).flatten().any(|r| {
        r.peers
            .iter()
            .any(|p| matches!(p, Peer::Entity(_) | Peer::ExternalCidr(_)))
    })
}

fn explanations(engine: &Engine) -> Vec<String> {
    queries(engine.state())
        .iter()
        .map(|q| serde_json::to_string(&engine.explain(&engine.verdict(q))).expect("json"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn adding_a_policy_only_removes_connections_of_pods_it_newly_isolates(
        (namespaces, pods) in cluster(),
        before in prop::collection::vec(policy(), 0..4),
        added in policy(),
    ) {
        let before = named(before, "p");
        let mut after_policies = before.clone();
        after_policies.push(named(vec![added], "added")[0].clone());
        let e1 = Engine::compile(ClusterState::new(namespaces.clone(), pods.clone(), before));
        let e2 = Engine::compile(ClusterState::new(namespaces, pods, after_policies));
        for q in queries(e1.state()) {
            if e1.allowed(&q) && !e2.allowed(&q) {
                let newly = (!isolated(&e1, q.src, Direction::Egress) && isolated(&e2, q.src, Direction::Egress))
                    || (!isolated(&e1, q.dst, Direction::Ingress) && isolated(&e2, q.dst, Direction::Ingress));
                prop_assert!(newly, "{q:?} lost without new isolation");
            }
        }
    }

    #[test]
    fn with_default_deny_everywhere_adding_an_allow_policy_never_removes_a_connection(
        (namespaces, pods) in cluster(),
        before in prop::collection::vec(policy(), 0..4),
        added in policy(),
    ) {
        let mut base = named(before, "p");
        for ns in NAMESPACES {
            base.push(Policy {
                name: PolicyName { kind: PolicyKind::NetworkPolicy, namespace: ns.into(), name: "default-deny".into() },
                origin: Origin::default(),
                pod_selector: LabelSelector::everything(),
                namespace_selector: None,
                ingress: Some(vec![]),
                egress: Some(vec![]),
                policy_types_explicit: true,
                default_deny: podwall_policy::DefaultDeny { ingress: true, egress: true },
                cluster: None,
            });
        }
        let mut after = base.clone();
        after.push(named(vec![added], "added")[0].clone());
        let e1 = Engine::compile(ClusterState::new(namespaces.clone(), pods.clone(), base));
        let e2 = Engine::compile(ClusterState::new(namespaces, pods, after));
        for q in queries(e1.state()) {
            prop_assert!(!e1.allowed(&q) || e2.allowed(&q), "{q:?} was allowed and is not any more");
        }
    }

    #[test]
    fn a_policy_that_selects_no_pod_changes_nothing(
        (namespaces, pods) in cluster(),
        policies in prop::collection::vec(policy(), 0..4),
        mut extra in policy(),
    ) {
        extra.pod_selector = LabelSelector::from_pairs([("app", "nobody-has-this")]);
        extra.name.name = "selects-nothing".into();
        let policies = named(policies, "p");
        let mut with = policies.clone();
        with.push(extra);
        let e1 = Engine::compile(ClusterState::new(namespaces.clone(), pods.clone(), policies));
        let e2 = Engine::compile(ClusterState::new(namespaces, pods, with));
        // Compared by what they say (names), since the extra policy shifts policy ids.
        prop_assert_eq!(explanations(&e1), explanations(&e2));
    }

    #[test]
    fn the_order_of_policies_in_the_input_never_matters(
        (namespaces, pods) in cluster(),
        policies in prop::collection::vec(policy(), 1..5),
        rotation in 0usize..5,
    ) {
        let policies = named(policies, "p");
        // Rendered as NetworkPolicies, which Cilium's peers are not.
        prop_assume!(policies.iter().all(networkpolicy_only));
        let docs: Vec<Value> = policies.iter().filter_map(podwall_policy::render::policy_object).collect();
        let load = |docs: &[Value]| {
            let mut loader = Loader::new();
            for (i, doc) in docs.iter().enumerate() {
                loader.add_object(Origin { source: format!("doc-{i}"), ..Origin::default() }, doc.clone());
            }
            let (state, report) = loader.finish();
            assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
            Engine::compile(ClusterState::new(namespaces.clone(), pods.clone(), state.policies))
        };
        let mut rotated = docs.clone();
        rotated.rotate_left(rotation % docs.len());
        rotated.reverse();
        let mut a = explanations(&load(&docs));
        let mut b = explanations(&load(&rotated));
        // Explanations name the source file; drop it, keep everything else.
        let strip = |v: &mut Vec<String>| for s in v.iter_mut() {
            *s = strip_sources(s);
        };
        strip(&mut a);
        strip(&mut b);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn the_fast_path_and_the_explained_verdict_always_agree(
        (namespaces, pods) in cluster(),
        policies in prop::collection::vec(policy(), 0..5),
    ) {
        let e = Engine::compile(ClusterState::new(namespaces, pods, named(policies, "p")));
        for q in queries(e.state()) {
            let v = e.verdict(&q);
            prop_assert_eq!(e.allowed(&q), v.allowed(), "{:?}", v);
            // A named rule must really match the peer and the port.
            for side in [&v.egress, &v.ingress] {
                if let podwall_policy::Decision::Rule(rule) = side.decision {
                    prop_assert!(e.matching_peer(rule, &v).is_some(), "{:?}", v);
                    prop_assert!(e.matching_port(rule, &v).is_some(), "{:?}", v);
                }
            }
        }
    }

    #[test]
    fn loading_a_policy_rendered_as_kubernetes_json_gives_it_back(policy in policy()) {
        // Cilium's peers have no NetworkPolicy form.
        prop_assume!(networkpolicy_only(&policy));
        let mut policy = policy;
        policy.name.name = "round-trip".into();
        // A NetworkPolicy's podSelector-only peer can only mean its own namespace.
        let own = policy.name.namespace.clone();
        for (dir, rules) in [("ingress", &mut policy.ingress), ("egress", &mut policy.egress)] {
            let Some(rules) = rules else { continue };
            for (i, rule) in rules.iter_mut().enumerate() {
                rule.field = format!("spec.{dir}[{i}]");
                for peer in &mut rule.peers {
                    if let Peer::Pods { namespaces: NamespaceScope::Named(ns), .. } = peer {
                        *ns = own.clone();
                    }
                }
            }
        }
        let mut loader = Loader::new();
        loader.add_object(Origin::default(), podwall_policy::render::policy_object(&policy).expect("a NetworkPolicy renders"));
        let (state, report) = loader.finish();
        prop_assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        prop_assert_eq!(&state.policies[0], &policy);
    }
}

/// Removes `"source":"..."` fields (where a policy was read from) from explanation JSON.
fn strip_sources(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\"source\":\"") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 10..];
        let end = after.find('"').map_or(after.len(), |e| e + 1);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn pod_ids_follow_the_sorted_names() {
    let pods: Vec<Pod> = ["b", "a"]
        .iter()
        .map(|n| Pod {
            namespace: "x".into(),
            name: (*n).into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            ips: vec![],
            host_ips: vec![],
            node_name: None,
            host_network: false,
            host_ports: Vec::new(),
            ports: vec![],
            origin: Origin::default(),
        })
        .collect();
    let state = ClusterState::new(vec![], pods, vec![]);
    assert_eq!(state.pod(PodId(0)).name, "a");
}

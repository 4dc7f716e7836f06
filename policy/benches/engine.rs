//! Compile time and per-query verdict time of the policy engine at 100 and 10 000 pods, with 10
//! and 1 000 policies. The per-query figure must not grow with the number of policies.
//!
//! `cargo bench -p podwall-policy --bench engine`

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use podwall_policy::{
    ClusterState, ContainerPort, Endpoint, Engine, IpBlock, LabelSelector, Namespace,
    NamespaceScope, Origin, Peer, Pod, PodId, Policy, PolicyKind, PolicyName, PortMatch, PortSpec,
    Protocol, Query, Rule,
};

/// A small deterministic generator (xorshift), so every run measures the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const APPS: usize = 40;
const TEAMS: usize = 8;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// `pods` pods in `pods / 100` namespaces (at least 2), `policies` policies spread over them,
/// each selecting one app and allowing a mix of pod, namespace and ipBlock peers.
fn cluster(pods: usize, policies: usize) -> ClusterState {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let namespaces: Vec<Namespace> = (0..(pods / 100).max(2))
        .map(|i| {
            let name = format!("ns-{i}");
            let mut ns = Namespace::implicit(&name);
            ns.labels.insert("team".into(), format!("t{}", i % TEAMS));
            ns.implicit = false;
            ns
        })
        .collect();
    let pod_list: Vec<Pod> = (0..pods)
        .map(|i| {
            let ns = &namespaces[i % namespaces.len()].name;
            Pod {
                namespace: ns.clone(),
                name: format!("pod-{i}"),
                labels: labels(&[
                    ("app", format!("a{}", rng.below(APPS))),
                    ("tier", format!("t{}", rng.below(3))),
                    // Replicas of a deployment share labels except this one.
                    ("pod-template-hash", format!("h{}", i % 7)),
                ]),
                annotations: BTreeMap::new(),
                ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32 + 1))],
                host_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, (i % 50) as u8 + 1))],
                node_name: None,
                host_network: false,
                host_ports: Vec::new(),
                ports: vec![
                    ContainerPort {
                        name: Some("http".into()),
                        port: 8080,
                        protocol: Protocol::Tcp,
                    },
                    ContainerPort {
                        name: Some("metrics".into()),
                        port: 9090,
                        protocol: Protocol::Tcp,
                    },
                ],
                origin: Origin::default(),
            }
        })
        .collect();
    let app = |rng: &mut Rng| {
        LabelSelector::from_pairs([("app", format!("a{}", rng.below(APPS)).as_str())])
    };
    let policy_list: Vec<Policy> = (0..policies)
        .map(|i| {
            let ns = namespaces[i % namespaces.len()].name.clone();
            let peers = match i % 4 {
                0 => vec![Peer::Pods {
                    namespaces: NamespaceScope::Named(ns.clone()),
                    pods: app(&mut rng),
                }],
                1 => vec![Peer::Pods {
                    namespaces: NamespaceScope::Selected(LabelSelector::from_pairs([(
                        "team",
                        format!("t{}", rng.below(TEAMS)).as_str(),
                    )])),
                    pods: app(&mut rng),
                }],
                2 => vec![Peer::IpBlock(IpBlock {
                    cidr: format!("10.{}.0.0/16", rng.below(4)).parse().expect("cidr"),
                    except: vec![],
                })],
                _ => vec![
                    Peer::Pods {
                        namespaces: NamespaceScope::Named(ns.clone()),
                        pods: app(&mut rng),
                    },
                    Peer::IpBlock(IpBlock {
                        cidr: "172.16.0.0/12".parse().expect("cidr"),
                        except: vec![],
                    }),
                ],
            };
            let rule = Rule::new(
                peers,
                vec![
                    PortSpec {
                        protocol: Protocol::Tcp,
                        port: PortMatch::Range(8080, 8080),
                    },
                    PortSpec {
                        protocol: Protocol::Tcp,
                        port: PortMatch::Named("metrics".into()),
                    },
                ],
                "",
            );
            Policy {
                name: PolicyName {
                    kind: PolicyKind::NetworkPolicy,
                    namespace: ns,
                    name: format!("p-{i}"),
                },
                origin: Origin::default(),
                pod_selector: app(&mut rng),
                ingress: Some(vec![rule.clone()]),
                egress: (i % 2 == 0).then(|| vec![rule]),
                policy_types_explicit: true,
                namespace_selector: None,
                default_deny: podwall_policy::DefaultDeny {
                    ingress: true,
                    egress: i % 2 == 0,
                },
                cluster: None,
            }
        })
        .collect();
    ClusterState::new(namespaces, pod_list, policy_list)
}

const SIZES: [(usize, usize); 4] = [(100, 10), (100, 1000), (10_000, 10), (10_000, 1000)];

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for (pods, policies) in SIZES {
        let state = cluster(pods, policies);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{pods}pods-{policies}policies")),
            &state,
            |b, s| b.iter(|| Engine::compile(black_box(s.clone()))),
        );
    }
    group.finish();
}

fn verdict(c: &mut Criterion) {
    let mut group = c.benchmark_group("verdict");
    for (pods, policies) in SIZES {
        let engine = Engine::compile(cluster(pods, policies));
        let mut rng = Rng(42);
        let queries: Vec<Query> = (0..4096)
            .map(|i| Query {
                src: Endpoint::Pod(PodId(rng.below(pods) as u32)),
                dst: if i % 8 == 0 {
                    Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(172, 16, 3, 4)))
                } else {
                    Endpoint::Pod(PodId(rng.below(pods) as u32))
                },
                protocol: Protocol::Tcp,
                port: if i % 2 == 0 { 8080 } else { 9090 },
            })
            .collect();
        let allowed = queries.iter().filter(|q| engine.allowed(q)).count();
        eprintln!(
            "{pods} pods, {policies} policies: {allowed} of {} sample queries allowed",
            queries.len()
        );
        let id = format!("{pods}pods-{policies}policies");
        let mut i = 0;
        group.bench_function(BenchmarkId::new("explained", &id), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(engine.verdict(black_box(&queries[i])))
            })
        });
        group.bench_function(BenchmarkId::new("allowed", &id), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(engine.allowed(black_box(&queries[i])))
            })
        });
    }
    group.finish();
}

/// The same 1 000 pods and queries, with 0, 1 000 or 10 000 more policies that select other
/// pods: the per-query cost must stay flat.
fn unrelated_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("verdict-unrelated-policies");
    let base = cluster(1000, 100);
    for extra in [0usize, 1000, 10_000] {
        let mut state = base.clone();
        let other = cluster(200, extra);
        // Move the other cluster into namespaces of its own, so its policies select only its pods.
        let rename = |ns: &str| format!("other-{ns}");
        let mut namespaces = state.namespaces.clone();
        namespaces.extend(other.namespaces.iter().map(|n| {
            let mut n = n.clone();
            n.name = rename(&n.name);
            n
        }));
        let mut pods = state.pods.clone();
        pods.extend(other.pods.iter().map(|p| {
            let mut p = p.clone();
            p.namespace = rename(&p.namespace);
            p.ips = vec![IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 200, 0, 0)) + pods_len(&p),
            ))];
            p
        }));
        let mut policies = state.policies.clone();
        policies.extend(other.policies.iter().map(|p| {
            let mut p = p.clone();
            p.name.namespace = rename(&p.name.namespace);
            p
        }));
        state = ClusterState::new(namespaces, pods, policies);
        let engine = Engine::compile(state);
        let mut rng = Rng(7);
        let queries: Vec<Query> = (0..4096)
            .map(|i| {
                let pod = |rng: &mut Rng| {
                    let k = rng.below(1000);
                    Endpoint::Pod(
                        engine
                            .state()
                            .pod_by_name(&format!("ns-{}", k % 10), &format!("pod-{k}"))
                            .expect("base pod"),
                    )
                };
                Query {
                    src: pod(&mut rng),
                    dst: pod(&mut rng),
                    protocol: Protocol::Tcp,
                    port: if i % 2 == 0 { 8080 } else { 9090 },
                }
            })
            .collect();
        let mut i = 0;
        group.bench_function(
            BenchmarkId::new("explained", format!("+{extra}policies")),
            |b| {
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    black_box(engine.verdict(black_box(&queries[i])))
                })
            },
        );
    }
    group.finish();
}

/// A distinct offset per pod of the other cluster (its index is in its name).
fn pods_len(p: &Pod) -> u32 {
    p.name
        .trim_start_matches("pod-")
        .parse::<u32>()
        .unwrap_or(0)
        + 1
}

/// The same 1 000 pods, 100 NetworkPolicies and queries under 1, 100 or 1 000 Admin-tier
/// ClusterNetworkPolicies that select every pod (each a Deny on every port from pods no query
/// comes from, and a Deny to an outside network on a port of its own): every query passes the
/// Admin tier first, and its cost must stay flat in the number of cluster policies.
fn cluster_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("verdict-cluster-policies");
    let base = cluster(1000, 100);
    for n in [1usize, 100, 1000] {
        let mut loader = podwall_policy::Loader::new();
        for i in 0..n {
            loader.add_object(
                Origin::default(),
                serde_json::json!({
                    "apiVersion": "policy.networking.k8s.io/v1alpha2",
                    "kind": "ClusterNetworkPolicy",
                    "metadata": {"name": format!("guardrail-{i}")},
                    "spec": {
                        "tier": "Admin",
                        "priority": i % 1001,
                        "subject": {"namespaces": {}},
                        "ingress": [{"action": "Deny", "from": [{"pods": {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {"app": format!("nobody-{i}")}}}}]}],
                        "egress": [{"action": "Deny",
                            "to": [{"networks": [format!("203.0.{}.0/24", i % 256)]}],
                            "protocols": [{"tcp": {"destinationPort": {"number": 10_000 + i}}}]}]
                    }
                }),
            );
        }
        let (extra, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        let mut policies = base.policies.clone();
        policies.extend(extra.policies);
        let state = ClusterState::new(base.namespaces.clone(), base.pods.clone(), policies);
        let engine = Engine::compile(state);
        let mut rng = Rng(11);
        let queries: Vec<Query> = (0..4096)
            .map(|i| Query {
                src: Endpoint::Pod(PodId(rng.below(1000) as u32)),
                dst: if i % 8 == 0 {
                    Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(203, 0, 3, 4)))
                } else {
                    Endpoint::Pod(PodId(rng.below(1000) as u32))
                },
                protocol: Protocol::Tcp,
                port: if i % 2 == 0 { 8080 } else { 10_003 },
            })
            .collect();
        let id = format!("{n}cluster-policies");
        let mut i = 0;
        group.bench_function(BenchmarkId::new("explained", &id), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(engine.verdict(black_box(&queries[i])))
            })
        });
        group.bench_function(BenchmarkId::new("allowed", &id), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(engine.allowed(black_box(&queries[i])))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    compile,
    verdict,
    unrelated_policies,
    cluster_policies
);
criterion_main!(benches);

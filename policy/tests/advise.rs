//! `advise`: the proposed policies allow every observed flow, read back as written, and on
//! random clusters and flow sets allow nothing between workloads and ports that was not seen.

use std::collections::BTreeSet;
use std::net::IpAddr;

use podwall_policy::advise::{FlowEnd, ObservedFlow, advise, workload_selector};
use podwall_policy::{Endpoint, Engine, Loader, Origin, Protocol, Query};
use proptest::prelude::*;
use serde_json::{Value, json};

fn ns(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"app": app, "pod-template-hash": format!("h{}", name.len())}},
        "status": {"phase": "Running", "podIP": ip}})
}

fn flow(src: FlowEnd, dst: FlowEnd, protocol: Protocol, port: u16, names: &[&str]) -> ObservedFlow {
    ObservedFlow {
        src,
        dst,
        protocol,
        port,
        names: names.iter().map(|n| n.to_string()).collect(),
        seen_by: None,
    }
}

fn p(ns: &str, name: &str) -> FlowEnd {
    FlowEnd::Pod(ns.into(), name.into())
}

fn engine(objects: &[Value]) -> Engine {
    let mut loader = Loader::new();
    for o in objects {
        loader.add_object(
            Origin {
                source: "t".into(),
                line: 0,
                item: None,
            },
            o.clone(),
        );
    }
    Engine::compile(loader.finish().0)
}

#[test]
fn the_advice_for_a_three_tier_app_allows_what_was_seen_by_workload_and_name() {
    let objects = vec![
        ns("shop"),
        ns("kube-system"),
        pod("shop", "web-1", "web", "10.1.0.1"),
        pod("shop", "web-2", "web", "10.1.0.2"),
        pod("shop", "api-1", "api", "10.1.0.3"),
        pod("shop", "db-0", "db", "10.1.0.4"),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "coredns-1", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "status": {"phase": "Running", "podIP": "10.1.9.9"}}),
    ];
    let github: IpAddr = "140.82.112.5".parse().expect("ip");
    let outside: IpAddr = "203.0.113.7".parse().expect("ip");
    let flows = vec![
        flow(
            p("shop", "web-1"),
            p("shop", "api-1"),
            Protocol::Tcp,
            8080,
            &[],
        ),
        flow(
            p("shop", "api-1"),
            p("shop", "db-0"),
            Protocol::Tcp,
            5432,
            &[],
        ),
        flow(
            p("shop", "api-1"),
            p("kube-system", "coredns-1"),
            Protocol::Udp,
            53,
            &[],
        ),
        flow(
            p("shop", "api-1"),
            FlowEnd::Ip(github),
            Protocol::Tcp,
            443,
            &["api.github.com."],
        ),
        flow(
            FlowEnd::Ip(outside),
            p("shop", "web-2"),
            Protocol::Tcp,
            80,
            &[],
        ),
    ];
    let advice = advise(&objects, &flows);
    assert!(advice.not_allowed.is_empty(), "{:?}", advice.not_allowed);
    assert!(advice.skipped.is_empty(), "{:?}", advice.skipped);
    let names: Vec<String> = advice
        .proposals
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.object["kind"].as_str().unwrap_or("?"),
                p.object["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "NetworkPolicy advised-kube-dns-ingress",
            "NetworkPolicy advised-api-egress",
            "PodwallPolicy advised-api-egress-names",
            "NetworkPolicy advised-api-ingress",
            "NetworkPolicy advised-db-ingress",
            "NetworkPolicy advised-web-egress",
            "NetworkPolicy advised-web-ingress",
        ],
        "one per workload and direction, names apart, by namespace"
    );
    let find = |name: &str| {
        advice
            .proposals
            .iter()
            .find(|p| p.object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {names:?}"))
    };
    // Peers by workload labels, never the pod name or the rollout's hash.
    let api_in = find("advised-api-ingress");
    assert_eq!(
        api_in.object["spec"]["podSelector"],
        json!({"matchLabels": {"app": "api"}})
    );
    assert_eq!(
        api_in.object["spec"]["ingress"][0],
        json!({"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"protocol": "TCP", "port": 8080}]})
    );
    assert!(
        api_in.yaml.contains("# shop/web-1 -> shop/api-1 TCP/8080"),
        "{}",
        api_in.yaml
    );
    // DNS to the resolver by its labels in its namespace, and the name as a toFQDNs rule.
    let api_out = find("advised-api-egress");
    let dns = &api_out.object["spec"]["egress"];
    assert!(
        dns.to_string()
            .contains("\"kubernetes.io/metadata.name\":\"kube-system\"")
            && dns.to_string().contains("\"k8s-app\":\"kube-dns\""),
        "{dns}"
    );
    let names_policy = find("advised-api-egress-names");
    assert_eq!(
        names_policy.object["spec"]["egress"][0]["toFQDNs"],
        json!([{"matchName": "api.github.com"}])
    );
    // An address outside the cluster: an ipBlock of that one address.
    let web_in = find("advised-web-ingress");
    assert_eq!(
        web_in.object["spec"]["ingress"][0]["from"][0],
        json!({"ipBlock": {"cidr": "203.0.113.7/32"}})
    );
    // Every YAML reads back as the object it describes.
    for p in &advice.proposals {
        let back: Value = serde_saphyr::from_str(&p.yaml).expect("yaml");
        assert_eq!(back, p.object, "{}", p.yaml);
    }
    // web-1 was seen calling api, web-2 was not: the rule opens web-2 too, and says so.
    assert_eq!(
        advice.also_opens,
        [
            "shop/app=web -> shop/app=api on TCP/8080: also opens 1 pair(s) of pods not seen talking (2 source pod(s), 1 destination pod(s) match)"
        ]
    );
}

#[test]
fn a_pod_without_labels_is_reported_not_named() {
    let objects = vec![
        ns("shop"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loner", "namespace": "shop"},
            "status": {"phase": "Running", "podIP": "10.1.0.9"}}),
        pod("shop", "db-0", "db", "10.1.0.4"),
    ];
    let advice = advise(
        &objects,
        &[flow(
            p("shop", "loner"),
            p("shop", "db-0"),
            Protocol::Tcp,
            5432,
            &[],
        )],
    );
    assert!(advice.proposals.is_empty(), "{:?}", advice.proposals);
    assert!(
        advice.skipped[0].contains("pod shop/loner has no labels"),
        "{:?}",
        advice.skipped
    );
    assert!(workload_selector(&Default::default()).is_empty());
}

#[test]
fn a_pod_replaced_since_its_flows_were_recorded_counts_as_its_workloads_replacement() {
    let objects = vec![
        ns("shop"),
        pod("shop", "web-7d9c5b-qwrtz", "web", "10.1.0.1"),
        pod("shop", "api-5f6b8c-x2kqp", "api", "10.1.0.2"),
        pod("shop", "api-v2-5f6b8c-zz9kk", "api-v2", "10.1.0.3"),
        pod("shop", "kube-router-b7x9z", "router", "10.1.0.4"),
        pod("shop", "db-pg-2", "db", "10.1.0.5"),
        pod("shop", "backup", "backup", "10.1.0.6"),
    ];
    let advice = advise(
        &objects,
        &[
            // The same ReplicaSet's pod gone, and a pod of the Deployment's previous ReplicaSet.
            flow(
                p("shop", "web-7d9c5b-m4n8p"),
                p("shop", "api-64f7d8-bnm2k"),
                Protocol::Tcp,
                8080,
                &[],
            ),
            // A name whose last word is no generated segment: not taken for another workload.
            flow(
                p("shop", "kube-proxy-b7x9z"),
                p("shop", "api-5f6b8c-x2kqp"),
                Protocol::Tcp,
                9090,
                &[],
            ),
            // Neither a scaled-down Deployment's pod for a StatefulSet's (`db-pg-2`), nor a
            // CronJob's (a scheduled time, not a hash) or a Job's pod for a Deployment's.
            flow(
                p("shop", "db-6f7d9c8b5-x2kqp"),
                p("shop", "api-5f6b8c-x2kqp"),
                Protocol::Tcp,
                9091,
                &[],
            ),
            flow(
                p("shop", "backup-29245768-xk2zq"),
                p("shop", "api-5f6b8c-x2kqp"),
                Protocol::Tcp,
                9092,
                &[],
            ),
        ],
    );
    assert!(advice.not_allowed.is_empty(), "{:?}", advice.not_allowed);
    assert_eq!(
        advice.replaced,
        [
            "pod shop/api-64f7d8-bnm2k is gone: its flows count as shop/api-5f6b8c-x2kqp's (the same workload)",
            "pod shop/web-7d9c5b-m4n8p is gone: its flows count as shop/web-7d9c5b-qwrtz's (the same workload)",
        ]
    );
    let api_ingress = advice
        .proposals
        .iter()
        .find(|p| p.object["metadata"]["name"] == "advised-api-ingress")
        .expect("api's ingress");
    let text = api_ingress.object.to_string();
    assert!(text.contains(r#"{"app":"web"}"#), "{text}");
    assert!(
        !text.contains("api-v2") && !text.contains("router"),
        "{text}"
    );
    for gone in [
        "kube-proxy-b7x9z",
        "db-6f7d9c8b5-x2kqp",
        "backup-29245768-xk2zq",
    ] {
        assert!(
            advice
                .skipped
                .iter()
                .any(|s| s.contains(&format!("pod shop/{gone} is not in the state"))),
            "{gone}: {:?}",
            advice.skipped
        );
    }
}

#[test]
fn a_side_that_did_not_see_a_flow_gets_no_policy_from_it() {
    let objects = vec![
        ns("shop"),
        pod("shop", "web-1", "web", "10.1.0.1"),
        pod("shop", "db-0", "db", "10.1.0.4"),
    ];
    let mut f = flow(
        p("shop", "web-1"),
        p("shop", "db-0"),
        Protocol::Tcp,
        5432,
        &[],
    );
    f.seen_by = Some(podwall_policy::Direction::Egress);
    let advice = advise(&objects, &[f]);
    let names: Vec<&str> = advice
        .proposals
        .iter()
        .filter_map(|p| p.object["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["advised-web-egress"],
        "db's sidecar did not report it"
    );
}

#[test]
fn a_flow_that_cannot_be_placed_but_would_be_denied_is_an_error() {
    let objects = vec![
        ns("shop"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loner", "namespace": "shop"},
            "status": {"phase": "Running", "podIP": "10.1.0.9"}}),
        pod("shop", "api-1", "api", "10.1.0.3"),
        pod("shop", "db-0", "db", "10.1.0.4"),
    ];
    let advice = advise(
        &objects,
        &[
            flow(
                p("shop", "api-1"),
                p("shop", "db-0"),
                Protocol::Tcp,
                5432,
                &[],
            ),
            flow(
                p("shop", "api-1"),
                p("shop", "loner"),
                Protocol::Tcp,
                80,
                &[],
            ),
        ],
    );
    assert_eq!(
        advice.would_deny,
        ["shop/api-1 -> shop/loner TCP/80"],
        "api's egress policy would deny its call to the unlabelled pod"
    );
}

#[test]
fn workloads_that_share_a_name_label_are_told_apart_and_named_apart() {
    let labelled = |name: &str, role: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web", "role": role, "flag": "y"}},
            "status": {"phase": "Running", "podIP": ip}})
    };
    let objects = vec![
        ns("shop"),
        labelled("web-a", "a", "10.1.0.1"),
        labelled("web-b", "b", "10.1.0.2"),
        pod("shop", "db-0", "db", "10.1.0.4"),
    ];
    let advice = advise(
        &objects,
        &[
            flow(
                p("shop", "db-0"),
                p("shop", "web-a"),
                Protocol::Tcp,
                80,
                &[],
            ),
            flow(
                p("shop", "db-0"),
                p("shop", "web-b"),
                Protocol::Tcp,
                81,
                &[],
            ),
        ],
    );
    let ingress: Vec<&Value> = advice
        .proposals
        .iter()
        .map(|p| &p.object)
        .filter(|o| o["spec"]["policyTypes"] == json!(["Ingress"]))
        .collect();
    assert_eq!(ingress.len(), 2);
    assert_ne!(
        ingress[0]["metadata"]["name"], ingress[1]["metadata"]["name"],
        "names apart"
    );
    for o in &ingress {
        assert!(
            o["spec"]["podSelector"]["matchLabels"]["role"].is_string(),
            "app=web alone would select both: {o}"
        );
    }
    assert!(advice.not_allowed.is_empty(), "{:?}", advice.not_allowed);
    // Every value quoted for YAML 1.1 readers (kubectl would read y as true).
    for p in &advice.proposals {
        assert!(!p.yaml.contains(": y\n"), "{}", p.yaml);
        let back: Value = serde_saphyr::from_str(&p.yaml).expect("yaml");
        assert_eq!(back, p.object, "{}", p.yaml);
    }
}

const APPS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 3] = [80, 443, 5432];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// On random clusters and flow sets: every observed flow is allowed once the advice is
    /// applied, and to a pod the advice isolates, a connection is allowed only where it was
    /// observed or the report lists it as something else the rules open.
    #[test]
    fn the_advice_allows_what_was_seen_and_between_workloads_nothing_else(
        pods in prop::collection::vec((0usize..2, 0usize..3, any::<bool>()), 2..7),
        flows in prop::collection::vec((0usize..7, 0usize..7, 0usize..3), 1..8),
    ) {
        let namespaces = ["n0", "n1"];
        let mut objects = vec![ns("n0"), ns("n1")];
        let mut names = Vec::new();
        for (i, (n, app, replica)) in pods.iter().enumerate() {
            let name = format!("p{i}");
            let mut o = pod(namespaces[*n], &name, APPS[*app], &format!("10.9.0.{}", i + 1));
            // Some pods of a workload carry one more label: selectors must tell them apart.
            if *replica {
                o["metadata"]["labels"]["role"] = json!("replica");
            }
            objects.push(o);
            names.push((namespaces[*n].to_string(), name, APPS[*app]));
        }
        let observed: Vec<ObservedFlow> = flows
            .iter()
            .filter(|(s, d, _)| *s < names.len() && *d < names.len() && s != d)
            .map(|(s, d, port)| flow(
                p(&names[*s].0, &names[*s].1),
                p(&names[*d].0, &names[*d].1),
                Protocol::Tcp,
                PORTS[*port],
                &[],
            ))
            .collect();
        let advice = advise(&objects, &observed);
        prop_assert!(advice.not_allowed.is_empty(), "{:?}", advice.not_allowed);
        let mut all = objects.clone();
        all.extend(advice.proposals.iter().map(|p| p.object.clone()));
        let e = engine(&all);
        let observed_pairs: BTreeSet<(String, String, u16)> = flows
            .iter()
            .filter(|(s, d, _)| *s < names.len() && *d < names.len() && s != d)
            .map(|(s, d, port)| (format!("{}/{}", names[*s].0, names[*s].1), format!("{}/{}", names[*d].0, names[*d].1), PORTS[*port]))
            .collect();
        // Destinations the advice isolates for ingress.
        let isolated: BTreeSet<String> = advice
            .proposals
            .iter()
            .filter(|p| p.object["spec"]["policyTypes"] == json!(["Ingress"]))
            .flat_map(|p| {
                let sel = p.object["spec"]["podSelector"]["matchLabels"].clone();
                let ns = p.namespace.clone();
                objects
                    .iter()
                    .filter(move |o| {
                        o["kind"] == "Pod"
                            && o["metadata"]["namespace"] == ns.as_str()
                            && sel.as_object().is_some_and(|m| {
                                m.iter().all(|(k, v)| &o["metadata"]["labels"][k] == v)
                            })
                    })
                    .map(|o| format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
            })
            .collect();
        for s in 0..names.len() {
            for d in 0..names.len() {
                let (src, dst) = (format!("{}/{}", names[s].0, names[s].1), format!("{}/{}", names[d].0, names[d].1));
                if s == d || !isolated.contains(&dst) {
                    continue;
                }
                for port in PORTS {
                    let state = e.state();
                    let q = Query {
                        src: Endpoint::Pod(state.pod_by_name(&names[s].0, &names[s].1).expect("pod")),
                        dst: Endpoint::Pod(state.pod_by_name(&names[d].0, &names[d].1).expect("pod")),
                        protocol: Protocol::Tcp,
                        port,
                    };
                    if e.allowed(&q) {
                        prop_assert!(
                            observed_pairs.contains(&(src.clone(), dst.clone(), port))
                                || advice.extra.contains(&(src.clone(), dst.clone(), Protocol::Tcp, port)),
                            "{src} -> {dst} on {port} allowed, never seen, and not reported"
                        );
                    }
                }
            }
        }
    }
}

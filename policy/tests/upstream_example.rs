//! The example NetworkPolicy of the Kubernetes "Network Policies" concept page, with every
//! consequence the page spells out, as a table.

use podwall_policy::{Endpoint, Engine, Loader, Protocol, Query};

const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: myproject-ns, labels: {project: myproject}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db}}
status: {podIP: 10.1.0.10, hostIP: 192.168.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: default, labels: {role: frontend}}
status: {podIP: 10.1.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: default, labels: {role: worker}}
status: {podIP: 10.1.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: anything, namespace: myproject-ns, labels: {role: whatever}}
status: {podIP: 10.1.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: other, labels: {role: frontend}}
status: {podIP: 10.1.2.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"#;

/// (from, to, protocol, port, allowed, what the page says)
const TABLE: &[(&str, &str, Protocol, u16, bool, &str)] = &[
    (
        "default/frontend",
        "default/db",
        Protocol::Tcp,
        6379,
        true,
        "any pod in default with role=frontend",
    ),
    (
        "other/frontend",
        "default/db",
        Protocol::Tcp,
        6379,
        false,
        "podSelector alone is the policy's namespace",
    ),
    (
        "default/worker",
        "default/db",
        Protocol::Tcp,
        6379,
        false,
        "not role=frontend",
    ),
    (
        "myproject-ns/anything",
        "default/db",
        Protocol::Tcp,
        6379,
        true,
        "any pod in a namespace labelled project=myproject",
    ),
    (
        "172.17.0.1",
        "default/db",
        Protocol::Tcp,
        6379,
        true,
        "172.17.0.0–172.17.0.255",
    ),
    (
        "172.17.0.255",
        "default/db",
        Protocol::Tcp,
        6379,
        true,
        "172.17.0.0–172.17.0.255",
    ),
    (
        "172.17.1.7",
        "default/db",
        Protocol::Tcp,
        6379,
        false,
        "except 172.17.1.0/24",
    ),
    (
        "172.17.2.0",
        "default/db",
        Protocol::Tcp,
        6379,
        true,
        "172.17.2.0–172.17.255.255",
    ),
    (
        "172.17.255.255",
        "default/db",
        Protocol::Tcp,
        6379,
        true,
        "172.17.2.0–172.17.255.255",
    ),
    (
        "172.18.0.1",
        "default/db",
        Protocol::Tcp,
        6379,
        false,
        "outside the block",
    ),
    (
        "default/frontend",
        "default/db",
        Protocol::Tcp,
        6380,
        false,
        "only TCP port 6379",
    ),
    (
        "default/frontend",
        "default/db",
        Protocol::Udp,
        6379,
        false,
        "only TCP",
    ),
    (
        "192.168.9.1",
        "default/db",
        Protocol::Tcp,
        22,
        true,
        "the pod's own node is always allowed",
    ),
    (
        "default/db",
        "10.0.0.7",
        Protocol::Tcp,
        5978,
        true,
        "egress to 10.0.0.0/24 on TCP 5978",
    ),
    (
        "default/db",
        "10.0.1.7",
        Protocol::Tcp,
        5978,
        false,
        "outside 10.0.0.0/24",
    ),
    (
        "default/db",
        "10.0.0.7",
        Protocol::Tcp,
        5979,
        false,
        "only port 5978",
    ),
    (
        "default/db",
        "default/frontend",
        Protocol::Tcp,
        80,
        false,
        "egress is isolated",
    ),
    (
        "default/frontend",
        "default/worker",
        Protocol::Tcp,
        80,
        true,
        "pods not selected are not isolated",
    ),
];

#[test]
fn the_concept_page_example_means_what_the_page_says() {
    let mut loader = Loader::new();
    loader.add_yaml("example.yaml", STATE).expect("yaml");
    let (state, report) = loader.finish();
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    let engine = Engine::compile(state);
    let endpoint = |s: &str| match s.parse() {
        Ok(ip) => Endpoint::Ip(ip),
        Err(_) => {
            let (ns, name) = s.split_once('/').expect("ns/name");
            Endpoint::Pod(engine.state().pod_by_name(ns, name).expect("pod"))
        }
    };
    let mut wrong = Vec::new();
    for &(from, to, protocol, port, allowed, why) in TABLE {
        let q = Query {
            src: endpoint(from),
            dst: endpoint(to),
            protocol,
            port,
        };
        if engine.allowed(&q) != allowed || engine.verdict(&q).allowed() != allowed {
            wrong.push(format!(
                "{from} -> {to} {protocol}/{port}: expected {allowed} ({why})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

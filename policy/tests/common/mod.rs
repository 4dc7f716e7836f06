//! Shared fixtures: a small cluster in YAML, and helpers to ask it questions by name.

#![allow(dead_code, unreachable_pub)]

use podwall_policy::{
    ClusterState, Endpoint, Engine, LoadReport, Loader, Protocol, Query, Verdict,
};

/// Namespaces and pods most tests share. Two nodes: 192.168.1.1 and 192.168.1.2.
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: production, labels: {env: prod, team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: staging, labels: {env: staging, team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: monitoring, labels: {purpose: monitoring}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: production, labels: {app: frontend, tier: web}}
spec:
  nodeName: node-1
  containers:
  - name: web
    ports: [{containerPort: 80, name: http}]
status: {phase: Running, podIP: 10.0.1.1, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: production, labels: {app: api, tier: backend}}
spec:
  nodeName: node-1
  containers:
  - name: api
    ports:
    - {containerPort: 8080, name: http-api}
    - {containerPort: 9090, name: metrics}
status: {phase: Running, podIP: 10.0.1.2, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: production, labels: {app: db, tier: data}}
spec:
  nodeName: node-2
  containers:
  - name: postgres
    ports: [{containerPort: 5432, name: pg}]
status: {phase: Running, podIP: 10.0.1.3, hostIP: 192.168.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: staging, labels: {app: api, tier: backend}}
spec:
  nodeName: node-2
  containers:
  - name: api
    ports: [{containerPort: 8081, name: http-api}]
status: {phase: Running, podIP: 10.0.2.2, hostIP: 192.168.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: prometheus, namespace: monitoring, labels: {app: prometheus}}
spec:
  nodeName: node-2
  containers: [{name: prometheus}]
status: {phase: Running, podIP: 10.0.3.1, hostIP: 192.168.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  nodeName: node-2
  containers:
  - name: coredns
    ports:
    - {containerPort: 53, name: dns, protocol: UDP}
    - {containerPort: 53, name: dns-tcp, protocol: TCP}
status: {phase: Running, podIP: 10.0.4.1, hostIP: 192.168.1.2}
"#;

/// Loads YAML texts (panicking on unreadable YAML: fixtures are ours).
pub fn load(texts: &[&str]) -> (ClusterState, LoadReport) {
    let mut loader = Loader::new();
    for (i, text) in texts.iter().enumerate() {
        loader
            .add_yaml(&format!("test-{i}.yaml"), text)
            .expect("fixture YAML parses");
    }
    loader.finish()
}

/// The shared cluster plus these policies, compiled; fails the test on any load error.
pub fn cluster_with(policies: &str) -> Engine {
    let (state, report) = load(&[CLUSTER, policies]);
    assert!(
        !report.has_errors(),
        "fixture policies must be valid: {:#?}",
        report.diagnostics
    );
    Engine::compile(state)
}

/// `ns/name` or an IP address.
pub fn endpoint(engine: &Engine, spec: &str) -> Endpoint {
    if let Ok(ip) = spec.parse() {
        return Endpoint::Ip(ip);
    }
    let (ns, name) = spec.split_once('/').expect("ns/name");
    Endpoint::Pod(
        engine
            .state()
            .pod_by_name(ns, name)
            .unwrap_or_else(|| panic!("no pod {spec}")),
    )
}

/// The verdict for a connection named by strings.
pub fn verdict(engine: &Engine, from: &str, to: &str, protocol: Protocol, port: u16) -> Verdict {
    engine.verdict(&Query {
        src: endpoint(engine, from),
        dst: endpoint(engine, to),
        protocol,
        port,
    })
}

/// Whether a TCP connection is allowed.
pub fn tcp(engine: &Engine, from: &str, to: &str, port: u16) -> bool {
    verdict(engine, from, to, Protocol::Tcp, port).allowed()
}

/// Whether a UDP connection is allowed.
pub fn udp(engine: &Engine, from: &str, to: &str, port: u16) -> bool {
    verdict(engine, from, to, Protocol::Udp, port).allowed()
}

/// A NetworkPolicy document (with a leading `---`) from its name, namespace and spec lines.
pub fn np(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}\n",
        spec.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

//! Cluster state back into Kubernetes objects (JSON), so that a state podwall computed (the
//! sandbox's, with assigned addresses) can be handed to anything that reads cluster state.
//! Loading the rendered objects gives back the same state.

use serde_json::{Value, json};

use crate::model::{HostPort, NamespaceScope, Peer, Pod, Policy, PortMatch, Rule};
use crate::selector::{LabelSelector, Operator};
use crate::state::ClusterState;

fn selector(s: &LabelSelector) -> Value {
    let exprs: Vec<Value> = s
        .requirements
        .iter()
        .map(|r| {
            let op = match r.operator {
                Operator::In => "In",
                Operator::NotIn => "NotIn",
                Operator::Exists => "Exists",
                Operator::DoesNotExist => "DoesNotExist",
            };
            if r.values.is_empty() {
                json!({"key": r.key, "operator": op})
            } else {
                json!({"key": r.key, "operator": op, "values": r.values})
            }
        })
        .collect();
    if exprs.is_empty() {
        json!({})
    } else {
        json!({"matchExpressions": exprs})
    }
}

fn rule(r: &Rule, peers_field: &str, own_namespace: &str) -> Option<Value> {
    if r.http.is_some() {
        return None;
    }
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|peer| match peer {
            Peer::Pods {
                namespaces: NamespaceScope::Named(ns),
                pods,
            } if ns == own_namespace => Some(json!({"podSelector": selector(pods)})),
            // Another namespace by name: the name label every namespace has says the same.
            Peer::Pods {
                namespaces: NamespaceScope::Named(ns),
                pods,
            } => Some(json!({
                "namespaceSelector": {"matchLabels": {crate::model::NAMESPACE_NAME_LABEL: ns}},
                "podSelector": selector(pods),
            })),
            Peer::Pods {
                namespaces: NamespaceScope::Selected(ns),
                pods,
            } => Some(json!({"namespaceSelector": selector(ns), "podSelector": selector(pods)})),
            Peer::IpBlock(b) => Some(json!({"ipBlock": {
                "cidr": b.cidr.to_string(),
                "except": b.except.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }})),
            // Cilium's peers have no NetworkPolicy form.
            Peer::ExternalCidr(_) | Peer::Entity(_) | Peer::Fqdn(_) | Peer::Nodes(_) => None,
        })
        .collect::<Option<Vec<Value>>>()?;
    let ports: Vec<Value> = r
        .ports
        .iter()
        .map(|p| {
            let proto = p.protocol.as_str();
            match &p.port {
                PortMatch::Any => json!({"protocol": proto}),
                PortMatch::Range(lo, hi) if lo == hi => json!({"protocol": proto, "port": lo}),
                PortMatch::Range(lo, hi) => json!({"protocol": proto, "port": lo, "endPort": hi}),
                PortMatch::Named(n) => json!({"protocol": proto, "port": n}),
            }
        })
        .collect();
    Some(json!({peers_field: peers, "ports": ports}))
}

/// A NetworkPolicy as the API server would serve it (with explicit `policyTypes`); `None` for
/// other kinds, which have no NetworkPolicy form (keep their original objects instead).
pub fn policy_object(p: &Policy) -> Option<Value> {
    if p.name.kind != crate::model::PolicyKind::NetworkPolicy {
        return None;
    }
    let ns = p.name.namespace.as_str();
    let mut types = Vec::new();
    let mut spec = json!({"podSelector": selector(&p.pod_selector)});
    if let Some(rules) = &p.ingress {
        types.push("Ingress");
        spec["ingress"] = rules
            .iter()
            .map(|r| rule(r, "from", ns))
            .collect::<Option<Vec<_>>>()?
            .into();
    }
    if let Some(rules) = &p.egress {
        types.push("Egress");
        spec["egress"] = rules
            .iter()
            .map(|r| rule(r, "to", ns))
            .collect::<Option<Vec<_>>>()?
            .into();
    }
    spec["policyTypes"] = json!(types);
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": p.name.name, "namespace": ns},
        "spec": spec,
    }))
}

/// A pod with what policy reads of it: labels, annotations, ports and host ports (in one
/// container), node, addresses.
pub fn pod_object(p: &Pod) -> Value {
    // Each host port on a declaration of its container port (loading made one of each).
    let mut host_ports: Vec<&HostPort> = p.host_ports.iter().collect();
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|c| {
            let mut v = json!({"containerPort": c.port, "protocol": c.protocol.as_str()});
            if let Some(name) = &c.name {
                v["name"] = json!(name);
            }
            if let Some(i) = host_ports
                .iter()
                .position(|h| h.port == c.port && h.protocol == c.protocol)
            {
                let h = host_ports.remove(i);
                v["hostPort"] = json!(h.host_port);
                if let Some(ip) = h.host_ip {
                    v["hostIP"] = json!(ip.to_string());
                }
            }
            v
        })
        .collect();
    let mut spec = json!({"containers": [{"name": "main", "ports": ports}]});
    if let Some(node) = &p.node_name {
        spec["nodeName"] = json!(node);
    }
    if p.host_network {
        spec["hostNetwork"] = json!(true);
    }
    let mut status = json!({"phase": "Running"});
    if let Some(ip) = p.ips.first() {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = p
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
    }
    if let Some(ip) = p.host_ips.first() {
        status["hostIP"] = json!(ip.to_string());
        status["hostIPs"] = p
            .host_ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels, "annotations": p.annotations},
        "spec": spec,
        "status": status,
    })
}

/// Namespaces (not the implicit ones) and pods as one `kind: List`.
pub fn cluster_list(state: &ClusterState) -> Value {
    let mut items: Vec<Value> = state
        .namespaces
        .iter()
        .filter(|n| !n.implicit)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": n.labels}}))
        .collect();
    items.extend(state.pods.iter().map(pod_object));
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The whole state as one `kind: List`: namespaces (not the implicit ones), pods and
/// NetworkPolicies (other policy kinds are left out: keep their original objects).
pub fn state_list(state: &ClusterState) -> Value {
    let mut items: Vec<Value> = state
        .namespaces
        .iter()
        .filter(|n| !n.implicit)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": n.labels}}))
        .collect();
    items.extend(state.pods.iter().map(pod_object));
    items.extend(state.policies.iter().filter_map(policy_object));
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Loader;

    #[test]
    fn a_rendered_state_loads_back_to_the_same_state() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}, annotations: {podwall.io/inject: enabled}}
spec:
  nodeName: n1
  containers: [{name: a, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP, hostPort: 5353, hostIP: 192.168.0.1}, {containerPort: 443, hostPort: 8443}]}]
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}], hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: shop}
spec: {hostNetwork: true}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: app, operator: Exists}]}
    - namespaceSelector: {matchLabels: {team: a}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: http}, {port: 1000, endPort: 2000, protocol: UDP}, {protocol: SCTP}]
  egress: [{}]
"#;
        let mut loader = Loader::new();
        loader.add_yaml("in.yaml", text).expect("yaml");
        let (state, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
        let mut loader = Loader::new();
        loader.add_object(crate::model::Origin::default(), state_list(&state));
        let (again, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
        let strip = |mut s: ClusterState| {
            for p in &mut s.pods {
                p.origin = Default::default();
            }
            for p in &mut s.policies {
                p.origin = Default::default();
                p.policy_types_explicit = true;
                p.origin = Default::default();
            }
            s
        };
        assert_eq!(state.pods[1].host_ports.len(), 2, "{:?}", state.pods[1]);
        assert_eq!(strip(again), strip(state));
    }
}

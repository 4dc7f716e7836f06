//! Service virtual IPs and their backends.
//!
//! A ClusterIP is not a peer: the outbound proxy resolves `(ClusterIP, port, protocol)` to the
//! service's ready endpoints and judges each backend pod on its targetPort. Every other address
//! the node's service proxy (kube-proxy) answers for the Service leads to the same backends, so
//! it is resolved the same way: each node's address with a NodePort, each `externalIPs` entry
//! and each load balancer ingress IP with the service port. Judged as plain addresses, they
//! would let a pod allowed to reach the nodes or "anywhere outside the cluster" reach every
//! backend behind them. Endpoints come from
//! the service's EndpointSlices (what the API server's controllers publish); a service with a
//! selector but no EndpointSlice at all (YAML written by hand, the sandbox) gets them as the
//! endpoints controller would: the running pods of its namespace matching the selector, the
//! targetPort resolved against each pod's container ports when it is a name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{Labels, Node, Pod, Protocol};

/// The label tying an EndpointSlice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of a service, with where it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name` of the service (shared: every flow event to it names it).
    pub service: Arc<str>,
    /// The port's name (empty when unnamed).
    pub name: String,
    /// The service port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// Ready backends: address and target port, in a stable order.
    pub backends: Vec<(IpAddr, u16)>,
}

/// Every service port by its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    ports: Vec<ServicePort>,
    /// Cluster, external and load balancer IPs with the service port.
    by_vip: HashMap<(IpAddr, u16, Protocol), usize>,
    /// NodePorts by port, protocol and family (IPv4 or not): each is open at every node
    /// address of its family, so one entry per port, not per node and port.
    by_node_port: HashMap<(u16, Protocol, bool), usize>,
    /// The nodes' addresses, sorted.
    nodes: Vec<IpAddr>,
    /// Host ports open at every address of their pod's node.
    node_wide_host_ports: Vec<NodeWideHostPort>,
}

/// A host port open at every address of its pod's node (of one family), which a sidecar on the
/// same node also finds at its gateways.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeWideHostPort {
    /// The pod's node (`spec.nodeName`), and its addresses (`status.hostIPs`).
    node: Option<String>,
    host_ips: Vec<IpAddr>,
    host_port: u16,
    protocol: Protocol,
    v4: bool,
    /// Its entry in `ports`.
    index: usize,
}

impl ServiceTable {
    /// The service port behind `ip:port`, if that is one of a service's addresses: a cluster
    /// IP with the service port, a node's address with a NodePort, an external or load
    /// balancer IP with the service port.
    pub fn lookup(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        let at = self.by_vip.get(&(ip, port, protocol)).or_else(|| {
            self.nodes
                .binary_search(&ip)
                .ok()
                .and_then(|_| self.by_node_port.get(&(port, protocol, ip.is_ipv4())))
        });
        at.map(|&i| &self.ports[i])
    }

    /// The service port whose NodePort `port` is, for addresses of `ip`'s family, whatever `ip`
    /// is (`Engine::unlisted_node_port` asks it only for addresses no pod, Service or node has). kube-proxy (iptables and IPVS modes, unless its
    /// `--nodeport-addresses` says otherwise) answers NodePorts at *every* address of a node,
    /// and a node has addresses no object lists (a `docker0` bridge, node-local DNS's
    /// `169.254.20.10`, the gateway of another node's pods): such an address with a NodePort
    /// may lead to its Service's backends, and a caller that cannot tell decides how much to
    /// trust it.
    pub fn node_port(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.by_node_port
            .get(&(port, protocol, ip.is_ipv4()))
            .map(|&i| &self.ports[i])
    }

    /// Every NodePort: its number, protocol, family (IPv4 or not) and service port.
    pub fn node_ports(&self) -> impl Iterator<Item = (u16, Protocol, bool, &ServicePort)> {
        self.by_node_port
            .iter()
            .map(|(&(port, protocol, v4), &i)| (port, protocol, v4, &self.ports[i]))
    }

    /// Whether `ip` is one of the nodes' known addresses (where [`lookup`](Self::lookup)
    /// finds NodePorts).
    pub fn is_node_address(&self, ip: IpAddr) -> bool {
        self.nodes.binary_search(&ip).is_ok()
    }

    /// Adds addresses of `pod`'s node that the cluster's objects do not list (a sidecar adds
    /// its pod's gateways: the node's end of the pod's link): every NodePort is open there, and
    /// the host ports of that node's pods open at all its addresses.
    pub fn add_node_addresses(&mut self, extra: &[IpAddr], pod: &Pod) {
        self.nodes.extend_from_slice(extra);
        self.nodes.sort();
        self.nodes.dedup();
        for hp in &self.node_wide_host_ports {
            let same_node = match (&hp.node, &pod.node_name) {
                (Some(a), Some(b)) => a == b,
                _ => hp.host_ips.iter().any(|ip| pod.host_ips.contains(ip)),
            };
            if !same_node {
                continue;
            }
            for ip in extra.iter().filter(|ip| ip.is_ipv4() == hp.v4) {
                self.by_vip
                    .entry((*ip, hp.host_port, hp.protocol))
                    .or_insert(hp.index);
            }
        }
    }

    /// Every service port.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.iter()
    }

    /// The addresses a service port is at by itself (cluster, external and load balancer IPs
    /// with the service port; host ports at their node's addresses), with it, sorted: every
    /// address but the NodePorts at the nodes' addresses.
    pub fn fixed_addresses(&self) -> Vec<((IpAddr, u16, Protocol), &ServicePort)> {
        let mut all: Vec<_> = self
            .by_vip
            .iter()
            .map(|(k, &i)| (*k, &self.ports[i]))
            .collect();
        all.sort_by_key(|((ip, port, protocol), _)| (*ip, *port, *protocol as u8));
        all
    }

    /// Every address (IP, port, protocol) with its service port, sorted (see
    /// [`lookup`](Self::lookup)).
    pub fn by_address(&self) -> Vec<((IpAddr, u16, Protocol), &ServicePort)> {
        let node_ports = self.node_ports().flat_map(|(port, proto, v4, service)| {
            self.nodes
                .iter()
                .filter(move |ip| ip.is_ipv4() == v4)
                .map(move |&ip| ((ip, port, proto), service))
        });
        let mut all = self.fixed_addresses();
        all.extend(node_ports);
        all.sort_by_key(|((ip, port, protocol), _)| (*ip, *port, *protocol as u8));
        all
    }

    /// How many service ports there are.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// A Service as read, before its endpoints are known.
#[derive(Clone, Debug)]
pub(crate) struct ServiceObject {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) service: core::Service,
}

/// An EndpointSlice as read.
#[derive(Clone, Debug)]
pub(crate) struct SliceObject {
    pub(crate) namespace: String,
    pub(crate) slice: discovery::EndpointSlice,
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn selects(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The addresses of the nodes, at which every NodePort is open: each Node's `status.addresses`,
/// and the nodes pods run on (`status.hostIPs`), for a cluster whose Nodes were not read;
/// sorted.
fn node_addresses(nodes: &[Node], pods: &[Pod]) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = nodes
        .iter()
        .flat_map(|n| n.addresses.iter().copied())
        .chain(pods.iter().flat_map(|p| p.host_ips.iter().copied()))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The addresses other than its cluster IPs at which the node's service proxy takes a
/// Service's port to its backends with the service port: each `externalIPs` entry and each load
/// balancer ingress IP, but those with `ipMode: Proxy` (traffic to them leaves for the load
/// balancer, an outside host as any other). Only those of a family the Service has a cluster IP
/// in: the service proxy of the other family has no rules for them.
fn outside_addresses(service: &core::Service, vips: &[IpAddr]) -> Vec<IpAddr> {
    let external = service
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten();
    let balancers = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref());
    external
        .chain(balancers)
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| vips.iter().any(|v| v.is_ipv4() == ip.is_ipv4()))
        .collect()
}

/// A port's NodePort, when its Service has them (types NodePort and LoadBalancer).
fn node_port(spec: &core::ServiceSpec, port: &core::ServicePort) -> Option<u16> {
    matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
        .then_some(port.node_port?)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
}

/// Each pod's host ports: the node's address (its `hostIP`, or every address of the pod's
/// node) with the host port leads to the pod's address of that family and the container port,
/// as the portmap plugin forwards it.
fn add_host_ports(table: &mut ServiceTable, pods: &[Pod], nodes: &[Node]) {
    for pod in pods
        .iter()
        .filter(|p| !p.host_network && !p.host_ports.is_empty())
    {
        let node = nodes
            .iter()
            .filter(|n| pod.node_name.as_deref() == Some(n.name.as_str()))
            .flat_map(|n| n.addresses.iter().copied());
        let mut on_node: Vec<IpAddr> = pod.host_ips.iter().copied().chain(node).collect();
        on_node.sort();
        on_node.dedup();
        // The name its host ports go by in flow events, beside Services' names.
        let name: Arc<str> = format!("{}/{} (hostPort)", pod.namespace, pod.name).into();
        for hp in &pod.host_ports {
            for v4 in [true, false] {
                // One address; or every address of the node, of one family (`0.0.0.0`,
                // `::`) or of both (no hostIP): portmap forwards only within a family.
                let (pinned, wide) = match hp.host_ip {
                    Some(ip) if !ip.is_unspecified() => (Some(ip), false),
                    Some(ip) => (None, ip.is_ipv4() == v4),
                    None => (None, true),
                };
                let Some(&ip) = pod.ips.iter().find(|ip| ip.is_ipv4() == v4) else {
                    continue;
                };
                if pinned.is_some_and(|p| p.is_ipv4() != v4) || (pinned.is_none() && !wide) {
                    continue;
                }
                let index = table.ports.len();
                table.ports.push(ServicePort {
                    service: name.clone(),
                    name: String::new(),
                    port: hp.host_port,
                    protocol: hp.protocol,
                    backends: vec![(ip, hp.port)],
                });
                let addresses = match pinned {
                    Some(p) => vec![p],
                    None => {
                        // The node's addresses no object lists (a sidecar's gateways) join
                        // later: see `ServiceTable::add_node_addresses`.
                        table.node_wide_host_ports.push(NodeWideHostPort {
                            node: pod.node_name.clone(),
                            host_ips: pod.host_ips.clone(),
                            host_port: hp.host_port,
                            protocol: hp.protocol,
                            v4,
                            index,
                        });
                        on_node
                            .iter()
                            .copied()
                            .filter(|a| a.is_ipv4() == v4)
                            .collect()
                    }
                };
                for at in addresses {
                    table
                        .by_vip
                        .entry((at, hp.host_port, hp.protocol))
                        .or_insert(index);
                }
            }
        }
    }
}

/// Builds the table from the services, slices, pods and nodes read.
pub(crate) fn build(
    services: &[ServiceObject],
    slices: &[SliceObject],
    pods: &[Pod],
    nodes: &[Node],
) -> ServiceTable {
    let mut slices_of: HashMap<(&str, &str), Vec<&discovery::EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(name) = s
            .slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices_of
                .entry((s.namespace.as_str(), name.as_str()))
                .or_default()
                .push(&s.slice);
        }
    }
    let mut table = ServiceTable {
        nodes: node_addresses(nodes, pods),
        ..ServiceTable::default()
    };
    for svc in services {
        let Some(spec) = &svc.service.spec else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let mut vips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok()) // "None" (headless) parses to nothing
            .collect();
        vips.sort();
        vips.dedup();
        if vips.is_empty() {
            continue;
        }
        let outside = outside_addresses(&svc.service, &vips);
        let key = (svc.namespace.as_str(), svc.name.as_str());
        for p in spec.ports.iter().flatten() {
            let (Ok(port), Some(proto)) = (u16::try_from(p.port), protocol(p.protocol.as_deref()))
            else {
                continue;
            };
            let name = p.name.clone().unwrap_or_default();
            let mut backends = match slices_of.get(&key) {
                Some(slices) => from_slices(slices, &name, proto),
                None => match &spec.selector {
                    Some(sel) if !sel.is_empty() => from_pods(
                        pods,
                        &svc.namespace,
                        sel,
                        p.target_port.as_ref(),
                        port,
                        proto,
                    ),
                    _ => Vec::new(),
                },
            };
            backends.sort();
            backends.dedup();
            let index = table.ports.len();
            table.ports.push(ServicePort {
                service: format!("{}/{}", svc.namespace, svc.name).into(),
                name,
                port,
                protocol: proto,
                backends,
            });
            for vip in &vips {
                table.by_vip.insert((*vip, port, proto), index);
            }
            for ip in &outside {
                // A cluster IP is never also an external address; were it one, the cluster
                // IP's entry stands.
                table.by_vip.entry((*ip, port, proto)).or_insert(index);
            }
            if let Some(node_port) = node_port(spec, p) {
                for v4 in [true, false] {
                    if vips.iter().any(|v| v.is_ipv4() == v4) {
                        table.by_node_port.insert((node_port, proto, v4), index);
                    }
                }
            }
        }
    }
    add_host_ports(&mut table, pods, nodes);
    table
}

/// A port's endpoints from the Service's slices: the ready ones; or, when none is ready, those
/// still serving while they terminate, which is where kube-proxy sends traffic then (its
/// fallback since Kubernetes 1.26, for every traffic policy).
fn from_slices(
    slices: &[&discovery::EndpointSlice],
    port_name: &str,
    proto: Protocol,
) -> Vec<(IpAddr, u16)> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find(|sp| {
            sp.name.as_deref().unwrap_or_default() == port_name
                && protocol(sp.protocol.as_deref()) == Some(proto)
        }) else {
            continue;
        };
        let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            // A missing `ready` means ready (the API's documented default); a missing
            // `serving` means as `ready`, a missing `terminating` not terminating.
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let into = if is_ready {
                &mut ready
            } else if serving && is_terminating {
                &mut terminating
            } else {
                continue;
            };
            into.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| (ip, target)),
            );
        }
    }
    if ready.is_empty() { terminating } else { ready }
}

fn from_pods(
    pods: &[Pod],
    namespace: &str,
    selector: &BTreeMap<String, String>,
    target: Option<&IntOrString>,
    port: u16,
    proto: Protocol,
) -> Vec<(IpAddr, u16)> {
    pods.iter()
        .filter(|p| p.namespace == namespace && !p.host_network && selects(selector, &p.labels))
        .filter_map(|p| {
            let target = match target {
                None => port,
                Some(IntOrString::Int(i)) => u16::try_from(*i).ok()?,
                Some(IntOrString::String(name)) => p.named_port(name, proto)?,
            };
            Some((*p.ips.first()?, target))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Loader;
    use std::net::SocketAddr;

    fn table(yaml: &str) -> ServiceTable {
        let mut loader = Loader::new();
        loader.add_yaml("t.yaml", yaml).expect("yaml");
        let (state, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        state.services
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: prod, labels: {app: api}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: api-2, namespace: prod, labels: {app: api}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.0.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: api-other-ns, namespace: dev, labels: {app: api}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.1.11}
"#;

    #[test]
    fn without_endpoint_slices_the_selector_picks_the_pods_and_named_target_ports_resolve_per_pod()
    {
        let t = table(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: prod}}\n\
             spec: {{clusterIP: 10.96.0.50, selector: {{app: api}}, ports: [{{name: web, port: 80, targetPort: http}}]}}\n"
        ));
        let vip: IpAddr = "10.96.0.50".parse().expect("ip");
        let port = t.lookup(vip, 80, Protocol::Tcp).expect("the VIP");
        assert_eq!(&*port.service, "prod/api");
        assert_eq!(
            port.backends,
            [
                ("10.0.0.11".parse().expect("ip"), 8080),
                ("10.0.0.12".parse().expect("ip"), 9090)
            ],
            "each pod's own named port; the pod in another namespace is not a backend"
        );
        assert!(t.lookup(vip, 81, Protocol::Tcp).is_none());
        assert!(t.lookup(vip, 80, Protocol::Udp).is_none());
    }

    #[test]
    fn endpoint_slices_win_over_the_selector_and_only_ready_endpoints_count() {
        let t = table(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: prod}}\n\
             spec: {{clusterIP: 10.96.0.50, clusterIPs: [10.96.0.50, 'fd00::50'], selector: {{app: api}}, ports: [{{name: web, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: api-abc, namespace: prod, labels: {{kubernetes.io/service-name: api}}}}\n\
             addressType: IPv4\nports: [{{name: web, port: 8080, protocol: TCP}}]\n\
             endpoints:\n- addresses: [10.0.0.11]\n  conditions: {{ready: true}}\n\
             - addresses: [10.0.0.12]\n  conditions: {{ready: false}}\n- addresses: [10.0.0.13]\n"
        ));
        for vip in ["10.96.0.50", "fd00::50"] {
            let port = t
                .lookup(vip.parse().expect("ip"), 80, Protocol::Tcp)
                .expect("each cluster IP");
            assert_eq!(
                port.backends,
                [
                    ("10.0.0.11".parse().expect("ip"), 8080),
                    ("10.0.0.13".parse().expect("ip"), 8080)
                ],
                "not-ready 10.0.0.12 is left out; no conditions means ready"
            );
        }
    }

    #[test]
    fn without_a_ready_endpoint_those_serving_while_terminating_are_where_the_service_leads() {
        let slice = |endpoints: &str| {
            table(&format!(
                "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: prod}}\n\
                 spec: {{clusterIP: 10.96.0.50, selector: {{app: api}}, ports: [{{name: web, port: 80, targetPort: 8080}}]}}\n\
                 ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: api-abc, namespace: prod, labels: {{kubernetes.io/service-name: api}}}}\n\
                 addressType: IPv4\nports: [{{name: web, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
            ))
            .lookup("10.96.0.50".parse().expect("ip"), 80, Protocol::Tcp)
            .map(|p| p.backends.iter().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>())
            .expect("the cluster IP")
        };
        let terminating = "- addresses: [10.0.0.11]\n  conditions: {ready: false, serving: true, terminating: true}\n\
                           - addresses: [10.0.0.12]\n  conditions: {ready: false, serving: false, terminating: true}\n";
        assert_eq!(
            slice(terminating),
            ["10.0.0.11"],
            "kube-proxy falls back to the serving ones"
        );
        assert_eq!(
            slice(&format!("{terminating}- addresses: [10.0.0.13]\n")),
            ["10.0.0.13"],
            "while one is ready, only the ready ones"
        );
    }

    #[test]
    fn node_ports_external_and_load_balancer_ips_lead_to_the_backends_of_the_cluster_ip() {
        let t = table(&format!(
            "{PODS}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: elsewhere, namespace: dev}}\n\
             status: {{phase: Running, podIP: 10.0.2.1, hostIP: 192.168.0.6}}\n\
             ---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.0.5}}, {{type: ExternalIP, address: 34.1.2.3}}, {{type: Hostname, address: n1}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: prod}}\n\
             spec: {{type: LoadBalancer, clusterIP: 10.96.0.50, externalIPs: [203.0.113.7], selector: {{app: api}},\n\
             \x20 ports: [{{name: web, port: 80, targetPort: 8080, nodePort: 30080}}]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.9}}, {{hostname: lb.example.com}}, {{ip: 198.51.100.10, ipMode: Proxy}}]}}}}\n"
        ));
        let at = |ip: &str, port: u16| t.lookup(ip.parse().expect("ip"), port, Protocol::Tcp);
        let backends = &at("10.96.0.50", 80).expect("the cluster IP").backends;
        assert_eq!(backends.len(), 2);
        for (ip, port) in [
            ("192.168.0.5", 30080), // a Node's internal address
            ("34.1.2.3", 30080),    // and its external one
            ("192.168.0.6", 30080), // the node a pod runs on
            ("203.0.113.7", 80),    // externalIPs
            ("198.51.100.9", 80),   // the load balancer
        ] {
            let found = at(ip, port).unwrap_or_else(|| panic!("{ip}:{port} is the service's"));
            assert_eq!(&*found.service, "prod/api", "{ip}:{port}");
            assert_eq!(&found.backends, backends, "{ip}:{port}");
        }
        assert!(
            at("198.51.100.10", 80).is_none(),
            "ipMode Proxy: the load balancer is reached, not bypassed"
        );
        // Each address only with its own port.
        assert!(at("192.168.0.5", 80).is_none());
        assert!(at("203.0.113.7", 30080).is_none());
        assert!(at("10.96.0.50", 30080).is_none());
        assert!(
            t.lookup("192.168.0.5".parse().expect("ip"), 30080, Protocol::Udp)
                .is_none()
        );
    }

    #[test]
    fn a_cluster_ip_service_has_no_node_port_and_other_family_addresses_are_not_its() {
        let t = table(&format!(
            "{PODS}---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.0.5}}, {{type: InternalIP, address: 'fd00:1::5'}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: prod}}\n\
             spec: {{clusterIP: 10.96.0.50, externalIPs: ['fd00::7'], selector: {{app: api}},\n\
             \x20 ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: v4, namespace: prod}}\n\
             spec: {{type: NodePort, clusterIP: 10.96.0.51, selector: {{app: api}}, ports: [{{port: 80, nodePort: 30081}}]}}\n"
        ));
        let at = |ip: &str, port: u16| t.lookup(ip.parse().expect("ip"), port, Protocol::Tcp);
        assert!(
            at("192.168.0.5", 30080).is_none(),
            "type ClusterIP: no NodePort"
        );
        assert!(
            at("fd00::7", 80).is_none(),
            "an IPv6 external IP of an IPv4 service"
        );
        assert!(at("192.168.0.5", 30081).is_some(), "the IPv4 node address");
        assert!(at("fd00:1::5", 30081).is_none(), "not its IPv6 one");
        let mut with_gateway = t.clone();
        let somewhere = t_pod();
        with_gateway.add_node_addresses(&["10.244.1.1".parse().expect("ip")], &somewhere);
        assert!(
            with_gateway
                .lookup("10.244.1.1".parse().expect("ip"), 30081, Protocol::Tcp)
                .is_some(),
            "an address of the node the objects do not list, added"
        );
        let listed: Vec<String> = t
            .by_address()
            .iter()
            .map(|((ip, port, _), _)| SocketAddr::new(*ip, *port).to_string())
            .collect();
        assert_eq!(
            listed,
            ["10.96.0.50:80", "10.96.0.51:80", "192.168.0.5:30081"],
            "every address, each node's with the NodePort"
        );
    }

    #[test]
    fn a_node_port_is_found_by_number_at_any_address_of_its_family() {
        let t = table(&format!(
            "{PODS}---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.0.5}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: prod}}\n\
             spec: {{clusterIP: 10.96.0.50, selector: {{app: api}}, ports: [{{port: 80, nodePort: 30080}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: v4, namespace: prod}}\n\
             spec: {{type: NodePort, clusterIP: 10.96.0.51, selector: {{app: api}}, ports: [{{port: 80, nodePort: 30081}}]}}\n"
        ));
        let at = |ip: &str, port: u16, protocol| {
            t.node_port(ip.parse().expect("ip"), port, protocol)
                .map(|s| s.service.to_string())
        };
        assert_eq!(
            at("169.254.20.10", 30081, Protocol::Tcp).as_deref(),
            Some("prod/v4"),
            "an address no object lists"
        );
        assert_eq!(
            at("169.254.20.10", 30080, Protocol::Tcp),
            None,
            "type ClusterIP"
        );
        assert_eq!(
            at("169.254.20.10", 30081, Protocol::Udp),
            None,
            "another protocol"
        );
        assert_eq!(at("fd00::9", 30081, Protocol::Tcp), None, "another family");
        assert!(t.is_node_address("192.168.0.5".parse().expect("ip")));
        assert!(!t.is_node_address("169.254.20.10".parse().expect("ip")));
        let all: Vec<_> = t
            .node_ports()
            .map(|(port, _, v4, s)| (port, v4, s.service.to_string()))
            .collect();
        assert_eq!(all, [(30081, true, "prod/v4".to_string())]);
    }

    #[test]
    fn a_host_port_leads_from_its_nodes_addresses_to_the_pod() {
        let t = table(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
             status: {addresses: [{type: InternalIP, address: 192.168.0.5}, {type: ExternalIP, address: 34.1.2.3}]}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {name: ingress, namespace: edge}\n\
             spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 443, hostPort: 8443}, {containerPort: 53, hostPort: 5353, protocol: UDP, hostIP: 192.168.0.5}, {containerPort: 80, hostPort: 8080, hostIP: 0.0.0.0}]}]}\n\
             status: {phase: Running, podIP: 10.0.0.21, podIPs: [{ip: 10.0.0.21}, {ip: 'fd00::21'}], hostIP: 192.168.0.5}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: edge}\n\
             spec: {nodeName: n1, hostNetwork: true, containers: [{name: c, ports: [{containerPort: 9100, hostPort: 9100}]}]}\n\
             status: {phase: Running, podIP: 192.168.0.5, hostIP: 192.168.0.5}\n",
        );
        let at = |ip: &str, port: u16, proto| t.lookup(ip.parse().expect("ip"), port, proto);
        for node in ["192.168.0.5", "34.1.2.3"] {
            let found = at(node, 8443, Protocol::Tcp).expect("every address of the pod's node");
            assert_eq!(&*found.service, "edge/ingress (hostPort)");
            assert_eq!(found.backends, [("10.0.0.21".parse().expect("ip"), 443)]);
        }
        let dns = at("192.168.0.5", 5353, Protocol::Udp).expect("its hostIP");
        assert_eq!(dns.backends, [("10.0.0.21".parse().expect("ip"), 53)]);
        assert!(
            at("34.1.2.3", 5353, Protocol::Udp).is_none(),
            "only its hostIP"
        );
        assert!(at("192.168.0.5", 8443, Protocol::Udp).is_none());
        assert!(
            at("192.168.0.5", 9100, Protocol::Tcp).is_none(),
            "a host-network pod's port is the node's own"
        );
        assert!(
            at("34.1.2.3", 8080, Protocol::Tcp).is_some(),
            "0.0.0.0: any IPv4 one"
        );
        // A sidecar's gateway on n1 is n1's too; one on another node is not.
        let on = |node: &str| crate::model::Pod {
            node_name: Some(node.into()),
            ..t_pod()
        };
        let gateway: IpAddr = "10.244.1.1".parse().expect("ip");
        let mut same = t.clone();
        same.add_node_addresses(&[gateway, "fd00:1::1".parse().expect("ip")], &on("n1"));
        fn reach(t: &ServiceTable, ip: IpAddr, port: u16, proto: Protocol) -> Option<&ServicePort> {
            t.lookup(ip, port, proto)
        }
        assert!(reach(&same, gateway, 8443, Protocol::Tcp).is_some());
        assert!(reach(&same, gateway, 8080, Protocol::Tcp).is_some());
        assert!(
            reach(&same, gateway, 5353, Protocol::Udp).is_none(),
            "pinned"
        );
        assert_eq!(
            reach(&same, "fd00:1::1".parse().expect("ip"), 8443, Protocol::Tcp)
                .map(|p| p.backends.clone()),
            Some(vec![("fd00::21".parse().expect("ip"), 443)]),
            "the IPv6 gateway leads to the pod's IPv6 address"
        );
        assert!(
            reach(&same, "fd00:1::1".parse().expect("ip"), 8080, Protocol::Tcp).is_none(),
            "0.0.0.0 is IPv4 only"
        );
        let mut other = t.clone();
        other.add_node_addresses(&[gateway], &on("n2"));
        assert!(reach(&other, gateway, 8443, Protocol::Tcp).is_none());
        // A sidecar whose pod names no node is on the node its host address is.
        let at_host = |ip: &str| crate::model::Pod {
            host_ips: vec![ip.parse().expect("ip")],
            ..t_pod()
        };
        let mut same = t.clone();
        same.add_node_addresses(&[gateway], &at_host("192.168.0.5"));
        assert!(reach(&same, gateway, 8443, Protocol::Tcp).is_some());
        let mut other = t.clone();
        other.add_node_addresses(&[gateway], &at_host("192.168.9.9"));
        assert!(reach(&other, gateway, 8443, Protocol::Tcp).is_none());
    }

    #[test]
    fn a_host_port_or_host_ip_that_does_not_parse_is_a_warning_naming_its_field() {
        let mut loader = Loader::new();
        loader
            .add_yaml(
                "t.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: t}\n\
                 spec: {initContainers: [{name: side, restartPolicy: Always, ports: [{containerPort: 82, hostPort: 8082, hostIP: '::ffff:192.168.0.5'}, {containerPort: 84, hostPort: 99999}]}, {name: setup}],\n\
                 \x20 containers: [{name: c, ports: [{containerPort: 80, hostPort: 70000}, {containerPort: 81, hostPort: 8081, hostIP: nope}, {containerPort: 83, hostPort: 8083, hostIP: ''}]}]}\n\
                 status: {podIP: 10.0.0.9, hostIP: 192.168.0.5}\n",
            )
            .expect("yaml");
        let (state, report) = loader.finish();
        let fields: Vec<String> = report.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(fields.len(), 3, "{fields:#?}");
        assert!(
            fields[0].contains("spec.containers[0].ports[0].hostPort")
                && fields[0].contains("hostPort 70000 is not a port number"),
            "{fields:#?}"
        );
        assert!(
            fields[1].contains("spec.containers[0].ports[1].hostIP")
                && fields[1].contains("\"nope\" is not an IP address"),
            "{fields:#?}"
        );
        assert!(
            fields[2].contains("spec.initContainers[0].ports[1].hostPort"),
            "a native sidecar numbered in its own list: {fields:#?}"
        );
        let host_ports: Vec<_> = state.pods[0]
            .host_ports
            .iter()
            .map(|h| (h.host_port, h.host_ip))
            .collect();
        assert_eq!(
            host_ports,
            [
                (8083, None),
                (8082, Some("192.168.0.5".parse().expect("ip")))
            ],
            "an empty hostIP is none; an IPv4-mapped one IPv4"
        );
        assert_eq!(state.pods[0].ports.len(), 5, "the container ports stand");
    }

    /// A pod, nothing set.
    fn t_pod() -> crate::model::Pod {
        crate::model::Pod {
            namespace: "t".into(),
            name: "client".into(),
            labels: Labels::new(),
            annotations: Labels::new(),
            ips: Vec::new(),
            host_ips: Vec::new(),
            node_name: None,
            host_network: false,
            ports: Vec::new(),
            host_ports: Vec::new(),
            origin: Default::default(),
        }
    }

    #[test]
    fn headless_and_external_name_services_have_no_virtual_ip() {
        let t = table(
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: prod}\n\
             spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: prod}\n\
             spec: {type: ExternalName, externalName: example.com}\n",
        );
        assert!(t.is_empty());
    }
}

//! Service virtual IPs and their backends.
//!
//! A ClusterIP is not a peer: the outbound proxy resolves `(ClusterIP, port, protocol)` to the
//! service's ready endpoints and judges each backend pod on its targetPort. Endpoints come from
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

use crate::model::{Labels, Pod, Protocol};

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

/// Every service port by virtual IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    ports: Vec<ServicePort>,
    by_vip: HashMap<(IpAddr, u16, Protocol), usize>,
}

impl ServiceTable {
    /// The service port behind `ip:port`, if `ip` is a service's virtual IP.
    pub fn lookup(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.by_vip
            .get(&(ip, port, protocol))
            .map(|&i| &self.ports[i])
    }

    /// Every service port.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.iter()
    }

    /// Every virtual address (IP, port, protocol) with its service port, sorted.
    pub fn by_address(&self) -> Vec<((IpAddr, u16, Protocol), &ServicePort)> {
        let mut all: Vec<_> = self
            .by_vip
            .iter()
            .map(|(k, &i)| (*k, &self.ports[i]))
            .collect();
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

/// Builds the table from the services, slices and pods read.
pub(crate) fn build(
    services: &[ServiceObject],
    slices: &[SliceObject],
    pods: &[Pod],
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
    let mut table = ServiceTable::default();
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
        }
    }
    table
}

fn from_slices(
    slices: &[&discovery::EndpointSlice],
    port_name: &str,
    proto: Protocol,
) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
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
            // A missing `ready` means ready (the API's documented default).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            out.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| (ip, target)),
            );
        }
    }
    out
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

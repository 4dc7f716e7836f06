//! Reading cluster state from YAML or JSON text: multi-document files, `kind: List` (what
//! `kubectl get ns,pods,netpol -A -o yaml` prints) and `*List` objects from the API server.
//!
//! Nothing here touches the file system: callers hand over `(source name, text)` pairs, or
//! already-parsed objects (the control plane gets those from the API server).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use serde_json::Value;

use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::model::{
    ContainerPort, HostPort, Labels, NAMESPACE_NAME_LABEL, Namespace, Origin, Pod, Policy,
    PolicyKind, PolicyName, Protocol,
};
use crate::netpol;
use crate::state::{ClusterState, LoadReport};

/// Collects objects from any number of sources, then builds the [`ClusterState`].
///
/// Invalid objects are reported and left out; a later definition of the same object replaces
/// an earlier one (with a warning), as `kubectl apply` of both files would.
#[derive(Debug, Default)]
pub struct Loader {
    namespaces: BTreeMap<String, (Namespace, Origin)>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<PolicyName, Policy>,
    services: BTreeMap<(String, String), crate::services::ServiceObject>,
    slices: BTreeMap<(String, String), crate::services::SliceObject>,
    nodes: BTreeMap<String, crate::model::Node>,
    report: LoadReport,
}

impl Loader {
    /// An empty loader.
    pub fn new() -> Self {
        Loader::default()
    }

    /// Reads every document of a YAML (or JSON) text. Fails only when the text is not YAML at
    /// all; objects in it that are invalid become diagnostics.
    pub fn add_yaml(&mut self, source: &str, text: &str) -> Result<(), Error> {
        let before = self.report.diagnostics.len();
        for (origin, value) in documents(source, text)? {
            self.add_object(origin, value);
        }
        crate::locate::point_at_fields(&mut self.report.diagnostics[before..], source, text);
        Ok(())
    }

    /// Adds one object (or list of objects) already parsed from YAML or JSON.
    pub fn add_object(&mut self, origin: Origin, doc: Value) {
        let obj = match doc {
            Value::Null => return, // an empty document, e.g. after a trailing `---`
            Value::Object(obj) => obj,
            _ => {
                self.report.diagnostics.push(
                    Diagnostic::error(
                        "not-an-object",
                        "document is not a Kubernetes object (a mapping with apiVersion and kind)",
                    )
                    .at(&origin),
                );
                return;
            }
        };
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if kind.is_empty() {
            self.report.diagnostics.push(
                Diagnostic::error("not-an-object", "object has no `kind`")
                    .at(&origin)
                    .field("kind"),
            );
            return;
        }
        if kind == "List" || (kind.ends_with("List") && obj.contains_key("items")) {
            self.add_list(
                origin,
                &kind,
                obj.get("items").cloned().unwrap_or(Value::Null),
            );
            return;
        }
        let value = Value::Object(obj);
        match (group(&api_version), kind.as_str()) {
            ("", "Namespace") => self.add_namespace(origin, value),
            ("", "Pod") => self.add_pod(origin, value),
            ("", "Service") => self.add_service(origin, value),
            ("discovery.k8s.io", "EndpointSlice") => self.add_endpoint_slice(origin, value),
            ("networking.k8s.io" | "extensions", "NetworkPolicy") => {
                self.add_network_policy(origin, &api_version, value)
            }
            ("cilium.io", "CiliumNetworkPolicy") => {
                self.add_cilium_policy(origin, PolicyKind::CiliumNetworkPolicy, value)
            }
            ("podwall.io", "PodwallPolicy") => {
                if api_version != "podwall.io/v1alpha1" {
                    self.report.diagnostics.push(
                        Diagnostic::error("unsupported-version", format!("apiVersion {api_version:?} is not served; use podwall.io/v1alpha1"))
                            .at(&origin)
                            .object("PodwallPolicy")
                            .field("apiVersion"),
                    );
                    return;
                }
                self.add_cilium_policy(origin, PolicyKind::PodwallPolicy, value)
            }
            ("", "Node") => self.add_node(origin, value),
            ("policy.networking.k8s.io", "ClusterNetworkPolicy") => {
                self.add_cluster_policy(origin, &api_version, value)
            }
            ("policy.networking.k8s.io", "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy") => {
                self.report.diagnostics.push(
                    Diagnostic::error(
                        "unsupported-kind",
                        format!("{kind} (v1alpha1) is not enforced by podwall: network-policy-api v0.2.0 replaced it with ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, tier Admin or Baseline)"),
                    )
                    .at(&origin)
                    .object(object_name(&kind, &value))
                    .field("kind"),
                )
            }
            ("cilium.io", "CiliumClusterwideNetworkPolicy") => {
                self.add_cilium_policy(origin, PolicyKind::CiliumClusterwideNetworkPolicy, value)
            }
            _ => match KINDS_READ
                .iter()
                .find(|known| known.eq_ignore_ascii_case(&kind) && **known != kind)
            {
                // A kind podwall reads, mis-cased: the API server knows no such kind either.
                Some(known) => self.report.diagnostics.push(
                    Diagnostic::error(
                        "unknown-kind",
                        format!(
                            "kind {kind:?} is not a kind (did you mean {known:?}? podwall reads {})",
                            KINDS_READ.join(", ")
                        ),
                    )
                    .at(&origin)
                    .object(object_name(&kind, &value))
                    .field("kind"),
                ),
                None => *self.report.skipped_kinds.entry(kind).or_default() += 1,
            },
        }
    }

    fn add_list(&mut self, origin: Origin, kind: &str, items: Value) {
        let items = match items {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            _ => {
                self.report.diagnostics.push(
                    Diagnostic::error("invalid-object", "`items` must be a list")
                        .at(&origin)
                        .object(kind)
                        .field("items"),
                );
                return;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let item_origin = Origin {
                item: Some(i),
                ..origin.clone()
            };
            self.add_object(item_origin, item);
        }
    }

    fn add_namespace(&mut self, origin: Origin, value: Value) {
        let Some(ns) = self.typed::<core::Namespace>(&origin, "Namespace", value) else {
            return;
        };
        let Some(name) = ns.metadata.name.clone().filter(|n| !n.is_empty()) else {
            self.report.diagnostics.push(
                Diagnostic::error("invalid-object", "Required value")
                    .at(&origin)
                    .object("Namespace")
                    .field("metadata.name"),
            );
            return;
        };
        let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default();
        // The API server sets this label on every namespace and keeps it equal to the name.
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        let namespace = Namespace {
            name: name.clone(),
            labels,
            implicit: false,
        };
        if let Some((_, earlier)) = self
            .namespaces
            .insert(name.clone(), (namespace, origin.clone()))
        {
            self.duplicate(&origin, &format!("Namespace {name}"), &earlier);
        }
    }

    fn add_pod(&mut self, origin: Origin, value: Value) {
        let Some(pod) = self.typed::<core::Pod>(&origin, "Pod", value) else {
            return;
        };
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = pod.metadata.name.clone().filter(|n| !n.is_empty()) else {
            self.report.diagnostics.push(
                Diagnostic::error("invalid-object", "Required value")
                    .at(&origin)
                    .object(format!("Pod {namespace}/?"))
                    .field("metadata.name"),
            );
            return;
        };
        let object = format!("Pod {namespace}/{name}");
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.report.finished_pods += 1;
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();

        let mut ip_strings: Vec<(String, String)> = Vec::new();
        if let Some(ip) = &status.pod_ip {
            ip_strings.push(("status.podIP".into(), ip.clone()));
        }
        for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
            ip_strings.push((format!("status.podIPs[{i}].ip"), ip.ip.clone()));
        }
        let ips = self.parse_ips(&origin, &object, ip_strings);

        let mut host_strings: Vec<(String, String)> = Vec::new();
        if let Some(ip) = &status.host_ip {
            host_strings.push(("status.hostIP".into(), ip.clone()));
        }
        for (i, ip) in status.host_ips.iter().flatten().enumerate() {
            host_strings.push((format!("status.hostIPs[{i}].ip"), ip.ip.clone()));
        }
        let host_ips = self.parse_ips(&origin, &object, host_strings);

        let (mut ports, mut host_ports) = (Vec::new(), Vec::new());
        // Native sidecars (init containers that keep running) serve ports like containers do.
        // (Each list numbered on its own, as the fields are.)
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| ("spec.initContainers", i, c));
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| ("spec.containers", i, c));
        for (list, ci, container) in containers.chain(sidecars) {
            for (pi, p) in container.ports.iter().flatten().enumerate() {
                let field = format!("{list}[{ci}].ports[{pi}]");
                let Ok(port) = crate::names::check_port_number(i64::from(p.container_port)) else {
                    self.report.diagnostics.push(
                        Diagnostic::warning(
                            "invalid-field",
                            format!(
                                "containerPort {} is not a port number; ignored",
                                p.container_port
                            ),
                        )
                        .at(&origin)
                        .object(&object)
                        .field(format!("{field}.containerPort")),
                    );
                    continue;
                };
                let protocol = match p.protocol.as_deref().map(Protocol::from_str) {
                    None => Protocol::Tcp,
                    Some(Ok(proto)) => proto,
                    Some(Err(e)) => {
                        self.report.diagnostics.push(
                            Diagnostic::warning("invalid-field", format!("{e}; port ignored"))
                                .at(&origin)
                                .object(&object)
                                .field(format!("{field}.protocol")),
                        );
                        continue;
                    }
                };
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
                if let Some(host_port) = p.host_port.filter(|&h| h != 0) {
                    let warn = |what: String, name: &str| {
                        Diagnostic::warning(
                            "invalid-field",
                            format!("{what}; the host port is not judged as the pod's"),
                        )
                        .at(&origin)
                        .object(&object)
                        .field(format!("{field}.{name}"))
                    };
                    // An empty hostIP is none (as the API server reads it); an IPv4-mapped
                    // one is IPv4 (as portmap reads it).
                    let host_ip = p
                        .host_ip
                        .as_deref()
                        .filter(|ip| !ip.is_empty())
                        .map(|ip| ip.parse::<IpAddr>().map(|ip| ip.to_canonical()));
                    match (
                        crate::names::check_port_number(i64::from(host_port)),
                        host_ip,
                    ) {
                        (Err(_), _) => self.report.diagnostics.push(warn(
                            format!("hostPort {host_port} is not a port number"),
                            "hostPort",
                        )),
                        (_, Some(Err(_))) => self.report.diagnostics.push(warn(
                            format!(
                                "hostIP {:?} is not an IP address",
                                p.host_ip.as_deref().unwrap_or_default()
                            ),
                            "hostIP",
                        )),
                        (Ok(host_port), host_ip) => host_ports.push(HostPort {
                            host_port,
                            port,
                            protocol,
                            host_ip: host_ip.and_then(Result::ok),
                        }),
                    }
                }
            }
        }

        let pod = Pod {
            namespace: namespace.clone(),
            name: name.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            ips,
            host_ips,
            node_name: spec.node_name.clone(),
            host_network: spec.host_network.unwrap_or(false),
            ports,
            host_ports,
            origin: origin.clone(),
        };
        if let Some(earlier) = self.pods.insert((namespace, name), pod) {
            self.duplicate(&origin, &object, &earlier.origin);
        }
    }

    fn add_network_policy(&mut self, origin: Origin, api_version: &str, value: Value) {
        if api_version != "networking.k8s.io/v1" {
            self.report.diagnostics.push(
                Diagnostic::error(
                    "unsupported-version",
                    format!("apiVersion {api_version:?} is not served; use networking.k8s.io/v1"),
                )
                .at(&origin)
                .object("NetworkPolicy")
                .field("apiVersion"),
            );
            return;
        }
        // kubectl apply validates fields strictly: an unknown one (`ingres:`) is refused, not
        // dropped, which would turn the rules it meant into none.
        let object = object_name("NetworkPolicy", &value);
        let mut unknown = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| {
            unknown.push(crate::cilium::field_path(&path.to_string()));
        };
        let strict = serde_ignored::Deserializer::new(value, &mut record);
        let np = match serde_path_to_error::deserialize::<_, net::NetworkPolicy>(strict) {
            Ok(np) => np,
            Err(e) => {
                self.report.diagnostics.push(
                    Diagnostic::error(
                        "invalid-object",
                        format!("{}; the object is left out", e.inner()),
                    )
                    .at(&origin)
                    .object(object)
                    .field(e.path().to_string()),
                );
                return;
            }
        };
        // From text (what an operator would apply): refused. From a store the API server fed
        // (line 0), an unknown field is one of an API newer than podwall's: kept, with a
        // warning, since leaving the policy out would open what it isolates.
        let from_text = origin.line > 0;
        for field in &unknown {
            let name = field.rsplit('.').next().unwrap_or(field);
            let d = if from_text {
                Diagnostic::error(
                    "unknown-field",
                    format!(
                        "unknown field {name:?} (the API server refuses it under kubectl's strict field validation); the policy is left out"
                    ),
                )
            } else {
                Diagnostic::warning(
                    "unknown-field",
                    format!("unknown field {name:?}, ignored (an API newer than podwall's?)"),
                )
            };
            self.report
                .diagnostics
                .push(d.at(&origin).object(&object).field(field.clone()));
        }
        if from_text && !unknown.is_empty() {
            return;
        }
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let object = format!(
            "NetworkPolicy {namespace}/{}",
            np.metadata.name.as_deref().unwrap_or("?")
        );
        match netpol::convert(&np, &namespace, &origin) {
            Ok(policy) => {
                if let Some(earlier) = self.policies.insert(policy.name.clone(), policy) {
                    self.duplicate(&origin, &object, &earlier.origin);
                }
            }
            Err(errs) => {
                for e in errs.0 {
                    self.report.diagnostics.push(
                        Diagnostic::error(
                            "invalid-policy",
                            format!("{}; the policy is left out", e.message),
                        )
                        .at(&origin)
                        .object(&object)
                        .field(e.field),
                    );
                }
            }
        }
    }

    fn add_node(&mut self, origin: Origin, value: Value) {
        let Some(node) = self.typed::<core::Node>(&origin, "Node", value) else {
            return;
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .collect();
        let labels: Labels = node.metadata.labels.clone().unwrap_or_default();
        self.nodes.insert(
            name.clone(),
            crate::model::Node {
                name,
                labels,
                addresses,
                origin,
            },
        );
    }

    fn add_cluster_policy(&mut self, origin: Origin, api_version: &str, value: Value) {
        let object = format!(
            "ClusterNetworkPolicy {}",
            value["metadata"]["name"].as_str().unwrap_or("?")
        );
        if api_version != "policy.networking.k8s.io/v1alpha2" {
            self.report.diagnostics.push(
                Diagnostic::error(
                    "unsupported-version",
                    format!("apiVersion {api_version:?} is not read; ClusterNetworkPolicy is policy.networking.k8s.io/v1alpha2 (network-policy-api v0.2.0)"),
                )
                .at(&origin)
                .object(&object)
                .field("apiVersion"),
            );
            return;
        }
        // Each kind of finding, and what it means for the policy.
        let mut found = Vec::new();
        let mut report = |errors: crate::validate::FieldErrors, code: &'static str, then: &str| {
            for e in errors.0 {
                found.push(
                    Diagnostic::error(code, format!("{}; {then}", e.message))
                        .at(&origin)
                        .object(&object)
                        .field(e.field),
                );
            }
        };
        match crate::cnp::convert(&value, &origin) {
            Ok(converted) => {
                report(
                    converted.rule_errors,
                    "invalid-rule",
                    "the rule fails closed (an Accept rule matches nothing, a Deny or Pass rule denies all traffic)",
                );
                report(
                    converted.failed_closed,
                    "invalid-policy",
                    "the policy fails closed: for every pod it could select (all of them when its subject cannot be read; Admin tier, priority 0 when its own cannot be read) its Deny and Pass rules deny and its Accept rules match nothing",
                );
                report(
                    converted.as_written,
                    "invalid-policy",
                    "the selector is evaluated as written",
                );
                report(
                    converted.unknown_fields,
                    "unknown-field",
                    "the rest of the policy is enforced",
                );
                let policy = converted.policy;
                if let Some(earlier) = self.policies.insert(policy.name.clone(), policy) {
                    self.duplicate(&origin, &object, &earlier.origin);
                }
            }
            Err(errs) => report(errs, "invalid-policy", "the policy is left out"),
        }
        self.report.diagnostics.extend(found);
    }

    fn add_cilium_policy(&mut self, origin: Origin, kind: PolicyKind, value: Value) {
        let object = object_name(&kind.to_string(), &value);
        let mut findings = crate::cilium::Findings::default();
        let (policies, errors) = match crate::cilium::convert(kind, value, &origin, &mut findings) {
            Ok(policies) => (policies, Vec::new()),
            Err(invalid) => (invalid.isolating, invalid.errors.0),
        };
        let isolates = !policies.is_empty();
        for e in errors {
            let consequence = if isolates {
                "the policy allows nothing until it is fixed: the pods it selects stay isolated in the directions it has rules for"
            } else {
                "the policy is left out (no pods could be selected from it)"
            };
            self.report.diagnostics.push(
                Diagnostic::error("invalid-policy", format!("{}; {consequence}", e.message))
                    .at(&origin)
                    .object(&object)
                    .field(e.field),
            );
        }
        for policy in policies {
            let object = policy.name.to_string();
            if let Some(earlier) = self.policies.insert(policy.name.clone(), policy) {
                self.duplicate(&origin, &object, &earlier.origin);
            }
        }
        for (field, message) in findings.errors {
            self.report.diagnostics.push(
                Diagnostic::error("not-enforced", message)
                    .at(&origin)
                    .object(&object)
                    .field(field),
            );
        }
        for (field, message) in findings.warnings {
            self.report.diagnostics.push(
                Diagnostic::warning("ignored-field", message)
                    .at(&origin)
                    .object(&object)
                    .field(field),
            );
        }
    }

    /// Deserializes into an API type, reporting a type error with the path where it happened.
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        origin: &Origin,
        kind: &str,
        value: Value,
    ) -> Option<T> {
        let object = object_name(kind, &value);
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let field = e.path().to_string();
                self.report.diagnostics.push(
                    Diagnostic::error(
                        "invalid-object",
                        format!("{}; the object is left out", e.inner()),
                    )
                    .at(origin)
                    .object(object)
                    .field(field),
                );
                None
            }
        }
    }

    fn parse_ips(
        &mut self,
        origin: &Origin,
        object: &str,
        ips: Vec<(String, String)>,
    ) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for (field, s) in ips {
            match IpAddr::from_str(&s) {
                Ok(ip) if !out.contains(&ip) => out.push(ip),
                Ok(_) => {}
                Err(_) => self.report.diagnostics.push(
                    Diagnostic::warning(
                        "invalid-field",
                        format!("{s:?} is not an IP address; ignored"),
                    )
                    .at(origin)
                    .object(object)
                    .field(field),
                ),
            }
        }
        out
    }

    fn duplicate(&mut self, origin: &Origin, object: &str, earlier: &Origin) {
        self.report.diagnostics.push(
            Diagnostic::warning(
                "duplicate-object",
                format!("also defined in {earlier}; this later definition is used"),
            )
            .at(origin)
            .object(object),
        );
    }

    fn add_service(&mut self, origin: Origin, value: Value) {
        let Some(service) = self.typed::<core::Service>(&origin, "Service", value) else {
            return;
        };
        let namespace = service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = service.metadata.name.clone().unwrap_or_default();
        self.services.insert(
            (namespace.clone(), name.clone()),
            crate::services::ServiceObject {
                namespace,
                name,
                service,
            },
        );
    }

    fn add_endpoint_slice(&mut self, origin: Origin, value: Value) {
        let Some(slice) = self.typed::<discovery::EndpointSlice>(&origin, "EndpointSlice", value)
        else {
            return;
        };
        let namespace = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.slices.insert(
            (namespace.clone(), name),
            crate::services::SliceObject { namespace, slice },
        );
    }

    /// Forgets an object added before (by kind, namespace and name), so that a later
    /// [`add_object`](Self::add_object) of its new version is no duplicate: a long-lived loader
    /// then follows a changing set of objects without reading the unchanged ones again.
    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        match kind {
            "Namespace" => {
                self.namespaces.remove(name);
            }
            "Pod" => {
                self.pods.remove(&key);
            }
            "Service" => {
                self.services.remove(&key);
            }
            "EndpointSlice" => {
                self.slices.remove(&key);
            }
            "Node" => {
                self.nodes.remove(name);
            }
            _ => {
                let kind = match kind {
                    "NetworkPolicy" => PolicyKind::NetworkPolicy,
                    "PodwallPolicy" => PolicyKind::PodwallPolicy,
                    "CiliumNetworkPolicy" => PolicyKind::CiliumNetworkPolicy,
                    "ClusterNetworkPolicy" => PolicyKind::ClusterNetworkPolicy,
                    "CiliumClusterwideNetworkPolicy" => PolicyKind::CiliumClusterwideNetworkPolicy,
                    _ => return,
                };
                let namespace = if kind.cluster_scoped() { "" } else { namespace };
                self.policies.remove(&PolicyName {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                });
            }
        }
    }

    /// The state of what was added so far, leaving the loader as it is (see
    /// [`remove`](Self::remove)); the diagnostics since the last call.
    pub fn state(&mut self) -> (ClusterState, LoadReport) {
        let namespaces = self.namespaces.values().map(|(ns, _)| ns.clone()).collect();
        let mut state = ClusterState::new(
            namespaces,
            self.pods.values().cloned().collect(),
            self.policies.values().cloned().collect(),
        );
        let services: Vec<_> = self.services.values().cloned().collect();
        let slices: Vec<_> = self.slices.values().cloned().collect();
        state.nodes = self.nodes.values().cloned().collect();
        state.services = crate::services::build(&services, &slices, &state.pods, &state.nodes);
        (state, std::mem::take(&mut self.report))
    }

    /// The state and what loading found.
    pub fn finish(self) -> (ClusterState, LoadReport) {
        let namespaces = self.namespaces.into_values().map(|(ns, _)| ns).collect();
        let mut state = ClusterState::new(
            namespaces,
            self.pods.into_values().collect(),
            self.policies.into_values().collect(),
        );
        let services: Vec<_> = self.services.into_values().collect();
        let slices: Vec<_> = self.slices.into_values().collect();
        state.nodes = self.nodes.into_values().collect();
        state.services = crate::services::build(&services, &slices, &state.pods, &state.nodes);
        (state, self.report)
    }
}

/// Every document of a YAML (or JSON) text with where it starts; nothing when the text is not
/// YAML at all. Lists are not expanded (see [`objects`]).
pub fn documents(source: &str, text: &str) -> Result<Vec<(Origin, Value)>, Error> {
    let mut parsed = Vec::new();
    for doc in crate::locate::split_documents(text) {
        let value: Value = serde_saphyr::from_str(&doc.text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column()))
                .unwrap_or((1, 0));
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            // saphyr says "error: line L column C: what"; keep only "what".
            let what = first.rsplit_once(": ").map(|(_, w)| w).unwrap_or(first);
            Error::Yaml {
                source_name: source.to_string(),
                message: format!("line {} column {column}: {what}", doc.line + line - 1),
            }
        })?;
        let origin = Origin {
            source: source.to_string(),
            line: doc.line,
            item: None,
        };
        parsed.push((origin, value));
    }
    Ok(parsed)
}

/// The kinds read from cluster state and policy files.
const KINDS_READ: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "EndpointSlice",
    "NetworkPolicy",
    "CiliumNetworkPolicy",
    "PodwallPolicy",
    "ClusterNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "Node",
];

/// Every object of a text, `kind: List` and `*List` objects expanded into their items.
pub fn objects(source: &str, text: &str) -> Result<Vec<(Origin, Value)>, Error> {
    let mut out = Vec::new();
    for (origin, value) in documents(source, text)? {
        expand(origin, value, &mut out);
    }
    Ok(out)
}

fn expand(origin: Origin, value: Value, out: &mut Vec<(Origin, Value)>) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || (k.ends_with("List") && value.get("items").is_some()));
    if !is_list {
        if !value.is_null() {
            out.push((origin, value));
        }
        return;
    }
    if let Some(Value::Array(items)) = value.get("items") {
        for (i, item) in items.iter().enumerate() {
            let item_origin = Origin {
                item: Some(i),
                ..origin.clone()
            };
            expand(item_origin, item.clone(), out);
        }
    }
}

/// The API group of an `apiVersion` (`""` for the core group's `v1`).
fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

fn object_name(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None if kind == "Namespace" => format!("{kind} {name}"),
        None => format!("{kind} default/{name}"),
    }
}

//! The cluster state: namespaces, pods and policies, validated and in a canonical order.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diagnostic::{Diagnostic, Severity};
use crate::model::{Namespace, Node, Pod, Policy};

/// A pod's index in [`ClusterState::pods`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodId(pub u32);

/// A policy's index in [`ClusterState::policies`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyId(pub u32);

/// Everything policy decisions depend on.
///
/// Each list is sorted (namespaces by name, pods by namespace and name, policies by kind,
/// namespace and name), so the same objects always give the same ids and the same explanations,
/// whatever order they were read in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Every namespace, including those only known from the objects in them.
    pub namespaces: Vec<Namespace>,
    /// Every running pod.
    pub pods: Vec<Pod>,
    /// Every valid policy.
    pub policies: Vec<Policy>,
    /// Service virtual IPs and their ready backends.
    pub services: crate::services::ServiceTable,
    /// Every node (sorted by name): ClusterNetworkPolicy's `nodes` peers.
    pub nodes: Vec<Node>,
}

/// The label kube-dns and CoreDNS pods carry.
pub const CLUSTER_DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

impl ClusterState {
    /// Builds a state from parts, sorting them and adding the namespaces that are only
    /// referenced (with just their name label), as [`Loader`](crate::Loader) does.
    pub fn new(namespaces: Vec<Namespace>, pods: Vec<Pod>, policies: Vec<Policy>) -> Self {
        let mut by_name: BTreeMap<String, Namespace> = namespaces
            .into_iter()
            .map(|ns| (ns.name.clone(), ns))
            .collect();
        let referenced = pods.iter().map(|p| &p.namespace).chain(
            policies
                .iter()
                .filter(|p| !p.name.kind.cluster_scoped())
                .map(|p| &p.name.namespace),
        );
        for name in referenced {
            by_name
                .entry(name.clone())
                .or_insert_with(|| Namespace::implicit(name));
        }
        let mut pods = pods;
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut policies = policies;
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterState {
            namespaces: by_name.into_values().collect(),
            pods,
            policies,
            services: Default::default(),
            nodes: Vec::new(),
        }
    }

    /// The namespace with this name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces
            .binary_search_by(|ns| ns.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.namespaces[i])
    }

    /// The pod with this id.
    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0 as usize]
    }

    /// The policy with this id.
    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id.0 as usize]
    }

    /// The pod `namespace/name`.
    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| PodId(i as u32))
    }

    /// Every pod id, in order.
    pub fn pod_ids(&self) -> impl Iterator<Item = PodId> + '_ {
        (0..self.pods.len() as u32).map(PodId)
    }

    /// The cluster's DNS pods, as kube-dns and CoreDNS label them (`k8s-app=kube-dns`): the
    /// resolver pods' names resolve through.
    pub fn cluster_dns_pods(&self) -> impl Iterator<Item = PodId> + '_ {
        self.pod_ids().filter(|id| {
            self.pod(*id)
                .labels
                .get(CLUSTER_DNS_LABEL.0)
                .map(String::as_str)
                == Some(CLUSTER_DNS_LABEL.1)
        })
    }

    /// Every policy id, in order.
    pub fn policy_ids(&self) -> impl Iterator<Item = PolicyId> + '_ {
        (0..self.policies.len() as u32).map(PolicyId)
    }
}

impl Namespace {
    /// A namespace known only by name: the API server gives every namespace its name label.
    pub fn implicit(name: &str) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert(
            crate::model::NAMESPACE_NAME_LABEL.to_string(),
            name.to_string(),
        );
        Namespace {
            name: name.to_string(),
            labels,
            implicit: true,
        }
    }
}

/// What loading found besides the objects themselves.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// Invalid objects (left out) and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// Objects of kinds policy does not use, by kind: skipped, never an error.
    pub skipped_kinds: BTreeMap<String, usize>,
    /// Pods left out because they are not running (phase Succeeded or Failed).
    pub finished_pods: usize,
}

impl LoadReport {
    /// Whether any object was invalid and left out.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

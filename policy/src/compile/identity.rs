//! Identities: pods grouped by namespace and labels.
//!
//! Selectors only see a pod's namespace and labels, so every pod with the same pair is the same
//! peer to every rule. Selectors are evaluated once per identity, not once per pod, and peer sets
//! are bit sets over identities (Cilium does the same, for the same reason).

use std::collections::HashMap;

use crate::model::Labels;
use crate::state::ClusterState;

/// An identity's index.
pub(crate) type IdentityId = u32;

/// One (namespace, labels) pair that at least one pod has.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Index into `ClusterState::namespaces`.
    pub(crate) namespace: usize,
    pub(crate) labels: Labels,
}

/// Every identity in the state, and which pods have which.
#[derive(Debug, Default)]
pub(crate) struct Identities {
    pub(crate) list: Vec<Identity>,
    /// Identities of each namespace (indexed like `ClusterState::namespaces`).
    pub(crate) by_namespace: Vec<Vec<IdentityId>>,
    /// Each pod's identity; `None` for host-network pods, which selectors never pick.
    pub(crate) of_pod: Vec<Option<IdentityId>>,
}

impl Identities {
    pub(crate) fn build(state: &ClusterState) -> Self {
        let mut ids = Identities {
            by_namespace: vec![Vec::new(); state.namespaces.len()],
            ..Identities::default()
        };
        let mut lookup: HashMap<(usize, &Labels), IdentityId> = HashMap::new();
        for pod in &state.pods {
            if pod.host_network {
                ids.of_pod.push(None);
                continue;
            }
            let ns = state
                .namespaces
                .binary_search_by(|n| n.name.as_str().cmp(&pod.namespace))
                .expect("ClusterState::new adds every referenced namespace");
            let next = ids.list.len() as IdentityId;
            let id = *lookup.entry((ns, &pod.labels)).or_insert(next);
            if id == next {
                ids.list.push(Identity {
                    namespace: ns,
                    labels: pod.labels.clone(),
                });
                ids.by_namespace[ns].push(id);
            }
            ids.of_pod.push(Some(id));
        }
        ids
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

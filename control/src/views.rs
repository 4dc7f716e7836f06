//! Per-pod views: which objects one sidecar needs, out of everything the control plane holds.
//!
//! A sidecar judges its own pod's side of every connection (its egress when it connects, its
//! ingress when it is connected to), and the other side when the peer runs without a sidecar of
//! its own (a peer with one judges its side itself). So a pod's view is:
//! - every Namespace (namespace selectors read their labels; they are few and small);
//! - the pod itself, and the policies selecting it;
//! - the pods its rules' peers select (peers are known by IP), and, for a rule with a named port
//!   and no peers, the pods declaring that port name (named ports resolve on the destination);
//!   every pod in a view comes with all the policies selecting it, so its side of a connection
//!   is judged on everything that applies to it (a pod outside the view is an address: no rule
//!   of the pod's names it, and its own sidecar judges its side);
//! - the pods selected by a policy that run without a sidecar, with those policies (their side
//!   is judged by whichever sidecar sees the connection);
//! - the Services (and their EndpointSlices) whose backends the pod may reach, with the backend
//!   pods of services without EndpointSlices (their endpoints are worked out from pods).
//!
//! The index behind views is built once per store version and shared by every feed; a feed
//! sends only what changed in its own view.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podwall_policy::feed::ObjectKey;
use podwall_policy::{
    ClusterState, Direction, Engine, Loader, Origin, PodId, Policy, PolicyId, PortMatch, RuleRef,
};

use crate::auth::PodRef;
use crate::protection::{Protection, SidecarEvidence, has_sidecar};
use crate::store::{SharedObjects, Store};

/// How long a disconnected sidecar's last view is kept for its resume.
const KEEP_DISCONNECTED: Duration = Duration::from_secs(300);

fn pod_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: "Pod".into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Pods, sorted, shared.
type PodList = Arc<Vec<PodId>>;

/// Everything views are computed from, at one store version.
pub struct ViewIndex {
    /// The store version.
    pub version: u64,
    /// The objects at that version.
    pub objects: Arc<SharedObjects>,
    engine: Engine,
    /// In every view: namespaces, unprotected pods and their policies.
    common: BTreeSet<ObjectKey>,
    /// Services: key, the pods backing them, and their EndpointSlices.
    services: Vec<ServiceEntry>,
    /// Which pods run a sidecar.
    protected: Vec<bool>,
    /// Each pod's object key.
    pod_keys: Vec<ObjectKey>,
    /// Each policy's object key, and back.
    policy_keys: Vec<ObjectKey>,
    policy_ids: HashMap<ObjectKey, Vec<PolicyId>>,
    /// The policies selecting each pod.
    selecting: Vec<Vec<PolicyId>>,
    /// The pods each policy selects (sorted).
    selected: Vec<Vec<PodId>>,
    /// Pods backing a service or a host port (a new one changes the views that reach it).
    backend_pods: HashSet<PodId>,
    /// Pods with host ports: the node's address leads to them (see
    /// `podwall_policy::services`).
    host_port_pods: Vec<PodId>,
    /// The pods each rule's peer selects (sorted), worked out when first asked.
    peers: Mutex<HashMap<(RuleRef, usize), PodList>>,
    /// The protection report at this version.
    pub protection: Protection,
}

struct ServiceEntry {
    key: ObjectKey,
    slices: Vec<ObjectKey>,
    /// Backend pods (for reachability; sent only when the service has no slices).
    backends: Vec<PodId>,
    /// Backend addresses that are no pod.
    external_backends: bool,
}

impl std::fmt::Debug for ViewIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewIndex")
            .field("version", &self.version)
            .field("objects", &self.objects.len())
            .finish()
    }
}

/// Reads `objects` from scratch.
pub fn load(objects: &SharedObjects) -> ClusterState {
    let mut loader = Loader::new();
    let origin = Origin {
        source: "store".into(),
        line: 0,
        item: None,
    };
    for object in objects.values() {
        loader.add_object(origin.clone(), (**object).clone());
    }
    loader.finish().0
}

/// The pod's own rules' peers, by rule and peer index.
fn own_rules(engine: &Engine, selecting: &[PolicyId]) -> Vec<(RuleRef, usize, bool)> {
    let state = engine.state();
    let mut out = Vec::new();
    for &policy_id in selecting {
        let policy = state.policy(policy_id);
        for (direction, rules) in [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ] {
            for (index, rule) in rules.iter().flatten().enumerate() {
                let rule_ref = RuleRef {
                    policy: policy_id,
                    direction,
                    index: index as u32,
                };
                for peer in 0..rule.peers.len() {
                    out.push((rule_ref, peer, direction == Direction::Egress));
                }
            }
        }
    }
    out
}

impl ViewIndex {
    /// Builds the index for `objects` at `version`, reading them from scratch.
    pub fn build(
        version: u64,
        objects: Arc<SharedObjects>,
        evidence: SidecarEvidence,
    ) -> ViewIndex {
        let state = load(&objects);
        ViewIndex::from_state(version, objects, state, evidence)
    }

    /// Builds the index from `state`, the objects already read.
    pub fn from_state(
        version: u64,
        objects: Arc<SharedObjects>,
        state: ClusterState,
        evidence: SidecarEvidence,
    ) -> ViewIndex {
        let engine = Engine::compile(state);
        let state = engine.state();

        let pod_keys: Vec<ObjectKey> = state
            .pod_ids()
            .map(|id| {
                let p = state.pod(id);
                pod_key(&p.namespace, &p.name)
            })
            .collect();
        let policy_keys: Vec<ObjectKey> = state
            .policy_ids()
            .map(|id| policy_key(&engine, id))
            .collect();
        let mut policy_ids: HashMap<ObjectKey, Vec<PolicyId>> = HashMap::new();
        for id in state.policy_ids() {
            policy_ids
                .entry(policy_keys[id.0 as usize].clone())
                .or_default()
                .push(id);
        }
        // Who selects whom, looking only at each policy's own namespace (pods are sorted by
        // namespace): as Engine::policies_selecting decides, without scanning every pod.
        let mut ranges: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, p) in state.pods.iter().enumerate() {
            let r = ranges.entry(p.namespace.as_str()).or_insert((i, i));
            r.1 = i + 1;
        }
        let mut selecting: Vec<Vec<PolicyId>> = vec![Vec::new(); state.pods.len()];
        let mut selected: Vec<Vec<PodId>> = Vec::with_capacity(state.policies.len());
        for policy_id in state.policy_ids() {
            let policy = state.policy(policy_id);
            if policy.name.kind.cluster_scoped() {
                // Pods of every namespace its subject picks.
                let mut pods = Vec::new();
                for (i, pod) in state.pods.iter().enumerate() {
                    let ns_labels = state.namespace(&pod.namespace).map(|n| &n.labels);
                    if policy.selects(pod, ns_labels) {
                        pods.push(PodId(i as u32));
                        selecting[i].push(policy_id);
                    }
                }
                selected.push(pods);
                continue;
            }
            let ns_ok = policy.namespace_selector.as_ref().is_none_or(|s| {
                state
                    .namespace(&policy.name.namespace)
                    .is_some_and(|n| s.matches(&n.labels))
            });
            let mut pods = Vec::new();
            if ns_ok && let Some(&(from, to)) = ranges.get(policy.name.namespace.as_str()) {
                for (i, pod) in state.pods.iter().enumerate().take(to).skip(from) {
                    if !pod.host_network && policy.pod_selector.matches(&pod.labels) {
                        pods.push(PodId(i as u32));
                        selecting[i].push(policy_id);
                    }
                }
            }
            selected.push(pods);
        }

        let protected: Vec<bool> = state
            .pod_ids()
            .map(|id| {
                objects
                    .get(&pod_keys[id.0 as usize])
                    .is_some_and(|o| has_sidecar(o, evidence))
            })
            .collect();
        // Nodes in every view (trimmed to name, labels and addresses by the source): their
        // addresses are the cluster's, not the world's, for every rule that tells the two
        // apart (entities, CIDR, toFQDNs, domainNames), as the analyzer judges them.
        let mut common: BTreeSet<ObjectKey> = objects
            .keys()
            .filter(|k| k.kind == "Namespace" || k.kind == "Node")
            .cloned()
            .collect();
        let mut protection = Protection::default();
        for id in state.pod_ids() {
            let i = id.0 as usize;
            if protected[i] {
                protection.protected += 1;
                continue;
            }
            if selecting[i].is_empty() {
                continue;
            }
            common.insert(pod_keys[i].clone());
            for p in &selecting[i] {
                common.insert(policy_keys[p.0 as usize].clone());
            }
            protection.unprotected.insert(
                state.pod(id).key(),
                selecting[i]
                    .iter()
                    .map(|p| state.policy(*p).name.to_string())
                    .collect(),
            );
        }

        // Services, their slices and backends.
        let mut slices_of: HashMap<(String, String), Vec<ObjectKey>> = HashMap::new();
        for (k, v) in objects.iter().filter(|(k, _)| k.kind == "EndpointSlice") {
            if let Some(svc) =
                v["metadata"]["labels"][podwall_policy::services::SERVICE_NAME_LABEL].as_str()
            {
                slices_of
                    .entry((k.namespace.clone(), svc.to_string()))
                    .or_default()
                    .push(k.clone());
            }
        }
        let mut by_service: HashMap<String, (Vec<PodId>, bool)> = HashMap::new();
        for port in state.services.ports() {
            let entry = by_service.entry(port.service.to_string()).or_default();
            for (ip, _) in &port.backends {
                match engine.pod_by_ip(*ip) {
                    Some(id) => entry.0.push(id),
                    None => entry.1 = true,
                }
            }
        }
        let services: Vec<ServiceEntry> = objects
            .keys()
            .filter(|k| k.kind == "Service")
            .map(|k| {
                let (mut backends, external_backends) = by_service
                    .remove(&format!("{}/{}", k.namespace, k.name))
                    .unwrap_or_default();
                backends.sort();
                backends.dedup();
                ServiceEntry {
                    key: k.clone(),
                    slices: slices_of
                        .remove(&(k.namespace.clone(), k.name.clone()))
                        .unwrap_or_default(),
                    backends,
                    external_backends,
                }
            })
            .collect();
        let host_port_pods: Vec<PodId> = state
            .pod_ids()
            .filter(|id| {
                let pod = state.pod(*id);
                !pod.host_network && !pod.host_ports.is_empty()
            })
            .collect();
        let backend_pods = services
            .iter()
            .flat_map(|s: &ServiceEntry| s.backends.iter().copied())
            .chain(host_port_pods.iter().copied())
            .collect();
        ViewIndex {
            version,
            objects,
            engine,
            common,
            backend_pods,
            host_port_pods,
            services,
            protected,
            pod_keys,
            policy_keys,
            policy_ids,
            selecting,
            selected,
            peers: Mutex::new(HashMap::new()),
            protection,
        }
    }

    /// Every pod a policy selects or that runs the sidecar: `(namespace, name, selected,
    /// injected)`.
    pub fn pod_coverage(&self) -> Vec<(&str, &str, bool, bool)> {
        let state = self.engine.state();
        state
            .pod_ids()
            .filter_map(|id| {
                let i = id.0 as usize;
                let selected = !self.selecting[i].is_empty();
                let injected = self.protected[i];
                let pod = state.pod(id);
                (selected || injected).then_some((
                    pod.namespace.as_str(),
                    pod.name.as_str(),
                    selected,
                    injected,
                ))
            })
            .collect()
    }

    /// For each policy object: its key, how many pods it selects (any of its specs), and how
    /// many of those run the sidecar (and so enforce it).
    pub fn policy_reach(&self) -> Vec<(&ObjectKey, usize, usize)> {
        let mut out: Vec<(&ObjectKey, usize, usize)> = self
            .policy_ids
            .iter()
            .map(|(key, ids)| {
                let mut pods: Vec<PodId> = ids
                    .iter()
                    .flat_map(|id| self.selected[id.0 as usize].iter().copied())
                    .collect();
                pods.sort_unstable();
                pods.dedup();
                let enforcing = pods.iter().filter(|p| self.protected[p.0 as usize]).count();
                (key, pods.len(), enforcing)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    fn peer_pods(&self, rule: RuleRef, peer: usize) -> PodList {
        if let Some(p) = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(rule, peer))
        {
            return p.clone();
        }
        let mut pods = self.engine.peer_pods(rule, peer);
        pods.sort();
        let pods = Arc::new(pods);
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((rule, peer), pods.clone());
        pods
    }

    /// Whether `pod`'s view may differ from `sent` (its view before `changed` happened): false
    /// when no changed object can be in it or enter it, so most sidecars skip a change that is
    /// not theirs without working out their view again.
    pub fn may_change(
        &self,
        pod: &PodRef,
        sent: &BTreeSet<ObjectKey>,
        changed: &BTreeSet<ObjectKey>,
    ) -> bool {
        let state = self.engine.state();
        let me = state.pod_by_name(&pod.namespace, &pod.name);
        let mut rules: Option<Vec<(RuleRef, usize, bool)>> = None;
        let mut view_pods: Option<Vec<PodId>> = None;
        for key in changed {
            if sent.contains(key) || self.common.contains(key) {
                return true;
            }
            match key.kind.as_str() {
                "Namespace" | "Service" | "EndpointSlice" => return true,
                "Pod" => {
                    if key.namespace == pod.namespace && key.name == pod.name {
                        return true;
                    }
                    let Some(x) = state.pod_by_name(&key.namespace, &key.name) else {
                        continue; // gone, and was not in the view
                    };
                    if self.backend_pods.contains(&x) {
                        return true;
                    }
                    let Some(me) = me else { continue };
                    let rules = rules.get_or_insert_with(|| {
                        own_rules(&self.engine, &self.selecting[me.0 as usize])
                    });
                    if rules
                        .iter()
                        .any(|(r, p, _)| self.peer_pods(*r, *p).binary_search(&x).is_ok())
                    {
                        return true; // a new or relabelled peer
                    }
                    // Named ports of rules without peers resolve on any pod declaring them.
                    if !state.pod(x).ports.is_empty()
                        && self.selecting[me.0 as usize]
                            .iter()
                            .any(|p| peerless_named_ports(state.policy(*p)).next().is_some())
                    {
                        return true;
                    }
                }
                _ => {
                    // A policy: in the view if it selects the pod or a pod of the view.
                    let Some(ids) = self.policy_ids.get(key) else {
                        continue; // gone, and was not in the view
                    };
                    let view_pods = view_pods.get_or_insert_with(|| {
                        sent.iter()
                            .filter(|k| k.kind == "Pod")
                            .filter_map(|k| state.pod_by_name(&k.namespace, &k.name))
                            .chain(me)
                            .collect()
                    });
                    if ids.iter().any(|id| {
                        let selected = &self.selected[id.0 as usize];
                        view_pods.iter().any(|p| selected.binary_search(p).is_ok())
                    }) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// The keys of `pod`'s view. A pod the control plane does not know (yet) gets the common
    /// part only: its sidecar then holds no policy for itself and refuses everything.
    pub fn keys_for(&self, pod: &PodRef) -> BTreeSet<ObjectKey> {
        let mut keys = self.common.clone();
        let state = self.engine.state();
        let Some(me) = state.pod_by_name(&pod.namespace, &pod.name) else {
            return keys;
        };
        keys.insert(self.pod_keys[me.0 as usize].clone());
        let mut peers: HashSet<PodId> = HashSet::new();
        let own = &self.selecting[me.0 as usize];
        let egress_isolated = own.iter().any(|p| state.policy(*p).egress.is_some());
        // Egress to anything beyond pods (ipBlock, entities, FQDN, all peers): every service.
        let mut egress_wide = own.iter().any(|p| {
            state
                .policy(*p)
                .egress
                .iter()
                .flatten()
                .any(|r| r.peers.is_empty())
        });
        for &policy_id in own {
            keys.insert(self.policy_keys[policy_id.0 as usize].clone());
        }
        let named: Vec<&str> = own
            .iter()
            .flat_map(|p| peerless_named_ports(state.policy(*p)))
            .collect();
        if !named.is_empty() {
            peers.extend(state.pod_ids().filter(|id| {
                state
                    .pod(*id)
                    .ports
                    .iter()
                    .any(|p| p.name.as_deref().is_some_and(|n| named.contains(&n)))
            }));
        }
        for (rule, peer, egress) in own_rules(&self.engine, own) {
            let pods = self.peer_pods(rule, peer);
            if pods.is_empty() && egress {
                // ipBlock, FQDN or entity peers reach beyond pods.
                egress_wide = true;
            }
            peers.extend(pods.iter().copied());
        }
        // Every pod in the view comes with the policies selecting it, so that its side of a
        // connection is judged on everything that applies to it, never on a part.
        let add_pod = |keys: &mut BTreeSet<ObjectKey>, id: PodId| {
            keys.insert(self.pod_keys[id.0 as usize].clone());
            for p in &self.selecting[id.0 as usize] {
                keys.insert(self.policy_keys[p.0 as usize].clone());
            }
        };
        for id in &peers {
            add_pod(&mut keys, *id);
        }
        for svc in &self.services {
            let reachable = !egress_isolated
                || egress_wide
                || svc.external_backends
                || svc
                    .backends
                    .iter()
                    .any(|b| peers.contains(b) || !self.protected[b.0 as usize]);
            if !reachable {
                continue;
            }
            keys.insert(svc.key.clone());
            if svc.slices.is_empty() {
                // Endpoints worked out from pods: the sidecar needs them.
                for b in &svc.backends {
                    add_pod(&mut keys, *b);
                }
            } else {
                keys.extend(svc.slices.iter().cloned());
            }
        }
        // A pod that may reach a node's address reaches the pods with host ports there: its
        // sidecar judges those connections by the pod they lead to.
        if !egress_isolated || egress_wide {
            for id in &self.host_port_pods {
                add_pod(&mut keys, *id);
            }
        }
        keys
    }
}

/// The named ports of a policy's rules without peers: they resolve on whichever pod is at the
/// other end, so the pods declaring them belong in the view.
fn peerless_named_ports(policy: &Policy) -> impl Iterator<Item = &str> {
    [&policy.ingress, &policy.egress]
        .into_iter()
        .flat_map(|rules| rules.iter().flatten())
        .filter(|r| r.peers.is_empty())
        .flat_map(|r| r.ports.iter())
        .filter_map(|p| match &p.port {
            PortMatch::Named(n) => Some(n.as_str()),
            _ => None,
        })
}

/// The object a policy was read from: each spec of a PodwallPolicy or CiliumNetworkPolicy with
/// `specs:` is a policy of its own named `NAME#specs[i]`, but the store (and a sidecar's view)
/// holds the one object `NAME`. (`#` is in no object name.)
fn policy_key(engine: &Engine, id: PolicyId) -> ObjectKey {
    let name = &engine.state().policy(id).name;
    ObjectKey {
        kind: name.kind.to_string(),
        namespace: name.namespace.clone(),
        name: name.name.split('#').next().unwrap_or_default().to_string(),
    }
}

/// The state at `version`: the long-lived loader brought up to date with only the objects
/// changed since its version, or everything read again when those changes are gone.
fn read(
    store: &Store,
    loader: &mut Option<(u64, Loader)>,
    version: u64,
    objects: &SharedObjects,
) -> ClusterState {
    let origin = Origin {
        source: "store".into(),
        line: 0,
        item: None,
    };
    let changed = loader
        .as_ref()
        .and_then(|(at, _)| store.changed_between(store.epoch(), *at, version));
    let (at, live) = match (changed, loader.as_mut()) {
        (Some(changed), Some((at, live))) => {
            for key in changed {
                live.remove(&key.kind, &key.namespace, &key.name);
                if let Some(object) = objects.get(&key) {
                    live.add_object(origin.clone(), (**object).clone());
                }
            }
            (at, live)
        }
        _ => {
            let mut fresh = Loader::new();
            for object in objects.values() {
                fresh.add_object(origin.clone(), (**object).clone());
            }
            let l = loader.insert((version, fresh));
            (&mut l.0, &mut l.1)
        }
    };
    *at = version;
    let (state, report) = live.state();
    for d in &report.diagnostics {
        tracing::warn!("{d}");
    }
    state
}

/// What a sidecar held when its feed closed: version, keys, when (tokio's clock, which tests
/// can move).
type LeftView = (u64, Arc<BTreeSet<ObjectKey>>, tokio::time::Instant);

/// The latest index, built once per version, and the last views of recently disconnected
/// sidecars (for their resume).
pub struct Views {
    store: Arc<Store>,
    evidence: SidecarEvidence,
    /// The objects read so far, and at which version: each build reads only what changed.
    loader: Mutex<Option<(u64, Loader)>>,
    current: Mutex<Option<Arc<ViewIndex>>>,
    building: tokio::sync::Mutex<()>,
    left: Mutex<HashMap<PodRef, LeftView>>,
    /// The feeds open now, by a number of their own (a pod may hold two while reconnecting).
    feeds: Mutex<(u64, BTreeMap<u64, FeedInfo>)>,
}

/// A sidecar's open feed, for `podwall status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedInfo {
    /// Its pod.
    pub pod: PodRef,
    /// The version of the view it holds (moved on by heartbeats too).
    pub version: u64,
    /// When it opened.
    pub since: std::time::SystemTime,
}

/// Keeps a feed listed in [`Views::feeds`] while it lives.
pub struct FeedGuard {
    views: Arc<Views>,
    id: u64,
}

impl FeedGuard {
    /// The sidecar now holds `version`.
    pub fn at(&self, version: u64) {
        let mut feeds = self.views.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = feeds.1.get_mut(&self.id) {
            f.version = version;
        }
    }
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        let mut feeds = self.views.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.1.remove(&self.id);
    }
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("evidence", &self.evidence)
            .finish()
    }
}

impl Views {
    /// Views over `store`.
    pub fn new(store: Arc<Store>, evidence: SidecarEvidence) -> Self {
        Views {
            store,
            evidence,
            loader: Mutex::new(None),
            current: Mutex::new(None),
            building: tokio::sync::Mutex::new(()),
            left: Mutex::new(HashMap::new()),
            feeds: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// Lists a feed for `pod` until the guard is dropped.
    pub fn feed_opened(self: &Arc<Self>, pod: &PodRef, version: u64) -> FeedGuard {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.0 += 1;
        let id = feeds.0;
        feeds.1.insert(
            id,
            FeedInfo {
                pod: pod.clone(),
                version,
                since: std::time::SystemTime::now(),
            },
        );
        FeedGuard {
            views: self.clone(),
            id,
        }
    }

    /// The feeds open now.
    pub fn feeds(&self) -> Vec<FeedInfo> {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.1.values().cloned().collect()
    }

    fn cached(&self, version: u64) -> Option<Arc<ViewIndex>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|i| i.version == version)
            .cloned()
    }

    /// The index at the store's current version (or the last one built, if building failed).
    pub async fn index(&self) -> Option<Arc<ViewIndex>> {
        let (version, _) = self.store.current();
        if let Some(i) = self.cached(version) {
            return Some(i);
        }
        let _building = self.building.lock().await;
        let (version, objects) = self.store.current();
        if let Some(i) = self.cached(version) {
            return Some(i);
        }
        let evidence = self.evidence;
        let started = Instant::now();
        let mut loader = self.loader.lock().unwrap_or_else(|e| e.into_inner()).take();
        let store = self.store.clone();
        let built = tokio::task::spawn_blocking(move || {
            let state = read(&store, &mut loader, version, &objects);
            (
                ViewIndex::from_state(version, objects, state, evidence),
                loader,
            )
        })
        .await
        .map(|(index, loader)| {
            *self.loader.lock().unwrap_or_else(|e| e.into_inner()) = loader;
            index
        });
        match built {
            Ok(index) => {
                tracing::debug!(version, took = ?started.elapsed(), "view index built");
                let index = Arc::new(index);
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(index.clone());
                Some(index)
            }
            Err(e) => {
                tracing::error!(error = %e, "view index build failed; serving the previous one");
                self.current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            }
        }
    }

    /// Remembers what a sidecar held when its feed closed.
    pub fn left(&self, pod: PodRef, version: u64, keys: Arc<BTreeSet<ObjectKey>>) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.retain(|_, (_, _, at)| at.elapsed() < KEEP_DISCONNECTED);
        left.insert(pod, (version, keys, tokio::time::Instant::now()));
    }

    /// What a reconnecting sidecar held at `version`, if remembered.
    pub fn held(&self, pod: &PodRef, version: u64) -> Option<Arc<BTreeSet<ObjectKey>>> {
        let left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.get(pod)
            .filter(|(v, _, at)| *v == version && at.elapsed() < KEEP_DISCONNECTED)
            .map(|(_, k, _)| k.clone())
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[tokio::test(start_paused = true)]
    async fn a_disconnected_sidecars_view_is_kept_five_minutes_at_the_version_it_left_at() {
        let views = Views::new(Arc::new(Store::new()), SidecarEvidence::Annotation);
        let pod = PodRef {
            namespace: "prod".into(),
            name: "web".into(),
        };
        let keys = Arc::new(BTreeSet::from([pod_key("prod", "web")]));
        views.left(pod.clone(), 7, keys.clone());
        assert_eq!(views.held(&pod, 7), Some(keys.clone()));
        assert_eq!(views.held(&pod, 6), None, "another version: a snapshot");
        let other = PodRef {
            namespace: "prod".into(),
            name: "db".into(),
        };
        assert_eq!(views.held(&other, 7), None, "another pod's view");
        tokio::time::advance(KEEP_DISCONNECTED - Duration::from_secs(1)).await;
        assert_eq!(views.held(&pod, 7), Some(keys), "within five minutes");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(views.held(&pod, 7), None, "forgotten after five minutes");
    }

    fn set(objs: &[Value]) -> Arc<SharedObjects> {
        Arc::new(
            objs.iter()
                .map(|o| (ObjectKey::of(o).expect("key"), Arc::new(o.clone())))
                .collect(),
        )
    }

    fn pod(name: &str, app: &str, ip: &str, sidecar: bool) -> Value {
        let annotations = if sidecar {
            json!({"podwall.io/inject": "enabled"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": app}, "annotations": annotations},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip}})
    }

    fn netpol(
        name: &str,
        selects: &str,
        egress_to: Option<&str>,
        ingress_from: Option<&str>,
    ) -> Value {
        let mut spec = json!({"podSelector": {"matchLabels": {"app": selects}}, "policyTypes": []});
        if let Some(to) = egress_to {
            spec["policyTypes"]
                .as_array_mut()
                .expect("types")
                .push(json!("Egress"));
            spec["egress"] = json!([{"to": [{"podSelector": {"matchLabels": {"app": to}}}]}]);
        }
        if let Some(from) = ingress_from {
            spec["policyTypes"]
                .as_array_mut()
                .expect("types")
                .push(json!("Ingress"));
            spec["ingress"] = json!([{"from": [{"podSelector": {"matchLabels": {"app": from}}}]}]);
        }
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "prod"}, "spec": spec})
    }

    fn names(keys: &BTreeSet<ObjectKey>) -> Vec<String> {
        keys.iter()
            .map(|k| format!("{} {}", k.kind, k.name))
            .collect()
    }

    #[test]
    fn a_view_holds_the_pods_own_policies_their_peers_and_unprotected_pods_with_their_policies() {
        let objects = set(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
            pod("web", "web", "10.0.0.1", true),
            pod("api", "api", "10.0.0.2", true),
            pod("db", "db", "10.0.0.3", true),
            pod("cache", "cache", "10.0.0.4", false),
            pod("batch", "batch", "10.0.0.5", true),
            netpol("web-egress", "web", Some("api"), None),
            netpol("api-ingress", "api", None, Some("web")),
            netpol("db-ingress", "db", None, Some("api")),
            netpol("cache-ingress", "cache", None, Some("api")),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "prod"},
                "spec": {"clusterIP": "10.96.0.2", "selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "prod"},
                "spec": {"clusterIP": "10.96.0.3", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
        ]);
        let index = ViewIndex::build(1, objects, SidecarEvidence::Annotation);
        let web = index.keys_for(&PodRef {
            namespace: "prod".into(),
            name: "web".into(),
        });
        assert_eq!(
            names(&web),
            [
                "Namespace prod",
                "NetworkPolicy api-ingress",
                "NetworkPolicy cache-ingress",
                "NetworkPolicy web-egress",
                "Pod api",
                "Pod cache",
                "Pod web",
                "Service api",
            ],
            "api (a peer) comes with its policies; db, batch, theirs and the db service are none of web's business"
        );
        let batch = index.keys_for(&PodRef {
            namespace: "prod".into(),
            name: "batch".into(),
        });
        assert!(
            names(&batch).contains(&"Service db".to_string()),
            "an egress-open pod may reach every service"
        );
        assert_eq!(
            index.protection.unprotected.keys().collect::<Vec<_>>(),
            ["prod/cache"]
        );
        let unknown = index.keys_for(&PodRef {
            namespace: "prod".into(),
            name: "ghost".into(),
        });
        assert!(!unknown.iter().any(|k| k.name == "ghost"));
    }

    #[test]
    fn a_pod_that_may_reach_the_nodes_gets_the_pods_with_host_ports() {
        let mut ingress = pod("ingress", "ingress", "10.0.0.9", true);
        ingress["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(8443);
        let objects = set(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
            pod("web", "web", "10.0.0.1", true),
            pod("api", "api", "10.0.0.2", true),
            pod("batch", "batch", "10.0.0.5", true),
            ingress,
            netpol("web-egress", "web", Some("api"), None),
        ]);
        let index = ViewIndex::build(1, objects, SidecarEvidence::Annotation);
        let view = |name: &str| {
            names(&index.keys_for(&PodRef {
                namespace: "prod".into(),
                name: name.into(),
            }))
        };
        assert!(
            view("batch").contains(&"Pod ingress".to_string()),
            "egress-open: the node's 8443 leads to ingress, which its sidecar must know"
        );
        assert!(
            !view("web").contains(&"Pod ingress".to_string()),
            "web reaches api only, never a node"
        );
        let changed = BTreeSet::from([pod_key("prod", "ingress")]);
        assert!(index.may_change(
            &PodRef {
                namespace: "prod".into(),
                name: "batch".into()
            },
            &BTreeSet::new(),
            &changed
        ));
    }

    #[test]
    fn only_changes_that_can_touch_a_view_make_it_be_worked_out_again() {
        let base = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
            pod("web", "web", "10.0.0.1", true),
            pod("api", "api", "10.0.0.2", true),
            pod("batch", "batch", "10.0.0.5", true),
            netpol("web-egress", "web", Some("api"), None),
            netpol("batch-egress", "batch", Some("batch"), None),
        ];
        let web = PodRef {
            namespace: "prod".into(),
            name: "web".into(),
        };
        let before = ViewIndex::build(1, set(&base), SidecarEvidence::Annotation);
        let sent = before.keys_for(&web);
        let key = |o: &Value| ObjectKey::of(o).expect("key");
        let changed_to = |objs: Vec<Value>, changed: &[&Value]| {
            let index = ViewIndex::build(2, set(&objs), SidecarEvidence::Annotation);
            let changed: BTreeSet<ObjectKey> = changed.iter().map(|o| key(o)).collect();
            index.may_change(&web, &sent, &changed)
        };
        // batch's policy and a batch replica: none of web's business.
        let batch_policy = netpol("batch-egress", "batch", Some("api"), None);
        let mut objs = base.clone();
        objs[5] = batch_policy.clone();
        assert!(!changed_to(objs, &[&batch_policy]));
        let replica = pod("batch-2", "batch", "10.0.0.6", true);
        let mut objs = base.clone();
        objs.push(replica.clone());
        assert!(!changed_to(objs, &[&replica]));
        // A new api replica is a new peer of web's rule.
        let api2 = pod("api-2", "api", "10.0.0.7", true);
        let mut objs = base.clone();
        objs.push(api2.clone());
        assert!(changed_to(objs, &[&api2]));
        // A new policy selecting api (a pod of web's view) joins the view.
        let api_ingress = netpol("api-ingress", "api", None, Some("web"));
        let mut objs = base.clone();
        objs.push(api_ingress.clone());
        assert!(changed_to(objs, &[&api_ingress]));
        // web's own policy edited.
        let edited = netpol("web-egress", "web", Some("batch"), None);
        let mut objs = base.clone();
        objs[4] = edited.clone();
        assert!(changed_to(objs, &[&edited]));
    }

    #[test]
    fn a_policy_object_with_several_specs_is_sent_and_counted_as_one_object() {
        let multi = json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
        "metadata": {"name": "two", "namespace": "prod"},
        "specs": [
            {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"fromEndpoints": [{}]}]},
            {"endpointSelector": {"matchLabels": {"app": "api"}}, "ingress": [{"fromEndpoints": [{}]}]},
        ]});
        let objs = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
            pod("web", "web", "10.0.0.1", true),
            pod("api", "api", "10.0.0.2", false),
            multi.clone(),
        ];
        let index = ViewIndex::build(1, set(&objs), SidecarEvidence::Annotation);
        let web = PodRef {
            namespace: "prod".into(),
            name: "web".into(),
        };
        let keys = index.keys_for(&web);
        assert!(
            keys.contains(&ObjectKey::of(&multi).expect("key")),
            "the object the store holds, not one per spec: {:?}",
            names(&keys)
        );
        assert!(
            keys.iter().all(|k| !k.name.contains('#')),
            "{:?}",
            names(&keys)
        );
        let reach = index.policy_reach();
        assert_eq!(reach.len(), 1, "one object");
        assert_eq!(
            (reach[0].1, reach[0].2),
            (2, 1),
            "web and api selected, web enforcing"
        );
        // Editing the object reaches the sidecars its specs select.
        let changed = BTreeSet::from([ObjectKey::of(&multi).expect("key")]);
        assert!(index.may_change(&web, &BTreeSet::new(), &changed));
    }
}

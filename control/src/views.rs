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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podwall_policy::feed::{ObjectKey, ObjectSet};
use podwall_policy::{Direction, Engine, Loader, Origin, PodId, PolicyId, PortMatch, RuleRef};

use crate::auth::PodRef;
use crate::status::{Protection, SidecarEvidence, has_sidecar};
use crate::store::Store;

/// How long a disconnected sidecar's last view is kept for its resume.
const KEEP_DISCONNECTED: Duration = Duration::from_secs(300);

fn pod_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: "Pod".into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Everything views are computed from, at one store version.
pub struct ViewIndex {
    /// The store version.
    pub version: u64,
    /// The objects at that version.
    pub objects: Arc<ObjectSet>,
    engine: Engine,
    /// In every view: namespaces, unprotected pods and their policies.
    common: BTreeSet<ObjectKey>,
    /// Services: key, the pods backing them, and their EndpointSlices.
    services: Vec<ServiceEntry>,
    /// Which pods run a sidecar.
    protected: Vec<bool>,
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

impl ViewIndex {
    /// Builds the index for `objects` at `version`.
    pub fn build(version: u64, objects: Arc<ObjectSet>, evidence: SidecarEvidence) -> ViewIndex {
        let mut loader = Loader::new();
        let origin = Origin {
            source: "store".into(),
            line: 0,
            item: None,
        };
        for object in objects.values() {
            loader.add_object(origin.clone(), object.clone());
        }
        let (state, _) = loader.finish();
        let engine = Engine::compile(state);
        let state = engine.state();

        let protected: Vec<bool> = state
            .pod_ids()
            .map(|id| {
                let p = state.pod(id);
                objects
                    .get(&pod_key(&p.namespace, &p.name))
                    .is_some_and(|o| has_sidecar(o, evidence))
            })
            .collect();
        let mut common: BTreeSet<ObjectKey> = objects
            .keys()
            .filter(|k| k.kind == "Namespace")
            .cloned()
            .collect();
        let mut protection = Protection::default();
        for id in state.pod_ids() {
            let pod = state.pod(id);
            if protected[id.0 as usize] {
                protection.protected += 1;
                continue;
            }
            let selecting = engine.policies_selecting(id);
            if selecting.is_empty() {
                continue;
            }
            common.insert(pod_key(&pod.namespace, &pod.name));
            for p in &selecting {
                common.insert(policy_key(&engine, *p));
            }
            protection.unprotected.insert(
                pod.key(),
                selecting
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
            let entry = by_service.entry(port.service.clone()).or_default();
            for (ip, _) in &port.backends {
                match engine.pod_by_ip(*ip) {
                    Some(id) => entry.0.push(id),
                    None => entry.1 = true,
                }
            }
        }
        let services = objects
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
        ViewIndex {
            version,
            objects,
            engine,
            common,
            services,
            protected,
            protection,
        }
    }

    /// The keys of `pod`'s view. A pod the control plane does not know (yet) gets the common
    /// part only: its sidecar then holds no policy for itself and refuses everything.
    pub fn keys_for(&self, pod: &PodRef) -> BTreeSet<ObjectKey> {
        let mut keys = self.common.clone();
        let state = self.engine.state();
        let Some(me) = state.pod_by_name(&pod.namespace, &pod.name) else {
            return keys;
        };
        keys.insert(pod_key(&pod.namespace, &pod.name));
        let mut peers: HashSet<PodId> = HashSet::new();
        let mut egress_isolated = false;
        // Egress to anything beyond pods (ipBlock, entities, FQDN, all peers): every service.
        let mut egress_wide = false;
        for policy_id in self.engine.policies_selecting(me) {
            keys.insert(policy_key(&self.engine, policy_id));
            let policy = state.policy(policy_id);
            for (direction, rules) in [
                (Direction::Ingress, &policy.ingress),
                (Direction::Egress, &policy.egress),
            ] {
                let Some(rules) = rules else { continue };
                if direction == Direction::Egress {
                    egress_isolated = true;
                }
                for (index, rule) in rules.iter().enumerate() {
                    let rule_ref = RuleRef {
                        policy: policy_id,
                        direction,
                        index: index as u32,
                    };
                    if rule.peers.is_empty() {
                        if direction == Direction::Egress {
                            egress_wide = true;
                        }
                        let named: Vec<&str> = rule
                            .ports
                            .iter()
                            .filter_map(|p| match &p.port {
                                PortMatch::Named(n) => Some(n.as_str()),
                                _ => None,
                            })
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
                        continue;
                    }
                    for peer in 0..rule.peers.len() {
                        let pods = self.engine.peer_pods(rule_ref, peer);
                        if pods.is_empty() && direction == Direction::Egress {
                            // ipBlock, FQDN or entity peers reach beyond pods.
                            egress_wide = true;
                        }
                        peers.extend(pods);
                    }
                }
            }
        }
        // Every pod in the view comes with the policies selecting it, so that its side of a
        // connection is judged on everything that applies to it, never on a part.
        for id in &peers {
            let p = state.pod(*id);
            keys.insert(pod_key(&p.namespace, &p.name));
            for policy_id in self.engine.policies_selecting(*id) {
                keys.insert(policy_key(&self.engine, policy_id));
            }
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
                // Endpoints worked out from pods: the sidecar needs them, and, as for every pod
                // in a view, the policies selecting them.
                for b in &svc.backends {
                    let p = state.pod(*b);
                    keys.insert(pod_key(&p.namespace, &p.name));
                    for policy_id in self.engine.policies_selecting(*b) {
                        keys.insert(policy_key(&self.engine, policy_id));
                    }
                }
            } else {
                keys.extend(svc.slices.iter().cloned());
            }
        }
        keys
    }
}

fn policy_key(engine: &Engine, id: PolicyId) -> ObjectKey {
    let name = &engine.state().policy(id).name;
    ObjectKey {
        kind: name.kind.to_string(),
        namespace: name.namespace.clone(),
        name: name.name.clone(),
    }
}

/// What a sidecar held when its feed closed: version, keys, when.
type LeftView = (u64, Arc<BTreeSet<ObjectKey>>, Instant);

/// The latest index, built once per version, and the last views of recently disconnected
/// sidecars (for their resume).
pub struct Views {
    store: Arc<Store>,
    evidence: SidecarEvidence,
    current: Mutex<Option<Arc<ViewIndex>>>,
    building: tokio::sync::Mutex<()>,
    left: Mutex<HashMap<PodRef, LeftView>>,
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
            current: Mutex::new(None),
            building: tokio::sync::Mutex::new(()),
            left: Mutex::new(HashMap::new()),
        }
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
        match tokio::task::spawn_blocking(move || ViewIndex::build(version, objects, evidence))
            .await
        {
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
        left.insert(pod, (version, keys, Instant::now()));
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

    fn set(objs: &[Value]) -> Arc<ObjectSet> {
        Arc::new(
            objs.iter()
                .map(|o| (ObjectKey::of(o).expect("key"), o.clone()))
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
}

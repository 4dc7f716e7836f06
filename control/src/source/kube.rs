//! The API server as a source: one kube-runtime watcher per kind (list, then watch from the
//! list's resourceVersion with bookmarks, relist after `410 Gone`), their events batched into
//! the [`Store`].
//!
//! Objects are kept as the Kubernetes JSON the rest of podwall reads, trimmed to what policy
//! needs (no `managedFields`, no last-applied annotation; a Pod keeps only its labels,
//! annotations, ports, host networking and addresses), so the store and the feeds stay small.
//! A kind whose CRD is not installed (PodwallPolicy, CiliumNetworkPolicy) counts as empty and is
//! retried with backoff, so installing the CRD later is picked up.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use podwall_policy::feed::{ObjectKey, ObjectSet};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::store::{Store, StoreChange};

/// A kind the control plane watches.
#[derive(Debug, Clone)]
pub struct WatchedKind {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Whether the kind may be absent (a CRD that is not installed).
    pub optional: bool,
}

fn kind(group: &str, version: &str, kind: &str, plural: &str, optional: bool) -> WatchedKind {
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    WatchedKind {
        resource: ApiResource {
            group: group.into(),
            version: version.into(),
            api_version,
            kind: kind.into(),
            plural: plural.into(),
        },
        optional,
    }
}

/// What the control plane watches: every kind a sidecar's policy can depend on.
pub fn watched_kinds() -> Vec<WatchedKind> {
    vec![
        kind("", "v1", "Namespace", "namespaces", false),
        kind("", "v1", "Pod", "pods", false),
        kind(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            false,
        ),
        kind("", "v1", "Service", "services", false),
        kind(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            false,
        ),
        kind(
            "podwall.io",
            "v1alpha1",
            "PodwallPolicy",
            "podwallpolicies",
            true,
        ),
        kind(
            "cilium.io",
            "v2",
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
            true,
        ),
        kind(
            "cilium.io",
            "v2",
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
            true,
        ),
        // network-policy-api's CRD, installed by the cluster's administrator (not the chart).
        kind(
            "policy.networking.k8s.io",
            "v1alpha2",
            "ClusterNetworkPolicy",
            "clusternetworkpolicies",
            true,
        ),
        // network-policy-api v0.1's kinds: not enforced (v0.2.0 replaced them), watched so that
        // one applied is said (log, metric) rather than believed enforced.
        kind(
            "policy.networking.k8s.io",
            "v1alpha1",
            "AdminNetworkPolicy",
            "adminnetworkpolicies",
            true,
        ),
        kind(
            "policy.networking.k8s.io",
            "v1alpha1",
            "BaselineAdminNetworkPolicy",
            "baselineadminnetworkpolicies",
            true,
        ),
        // ClusterNetworkPolicy `nodes` peers match node addresses. (Optional only so that a
        // server without the resource counts as none; an API server always serves it.)
        kind("", "v1", "Node", "nodes", true),
    ]
}

/// What one kind's watcher tells the aggregator.
#[derive(Debug)]
enum KindEvent {
    Change(StoreChange),
    /// The kind's first complete list arrived (or the kind is absent): counts for readiness.
    Listed(String),
    /// The watch failed; for logs and metrics.
    Failed {
        kind: String,
        error: String,
    },
}

/// Health of the watches, for metrics.
pub trait WatchObserver: Send + Sync + 'static {
    /// A kind's watch failed (it is retried with backoff).
    fn watch_failed(&self, kind: &str);
    /// A kind was (re)listed.
    fn listed(&self, kind: &str);
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl WatchObserver for NoObserver {
    fn watch_failed(&self, _: &str) {}
    fn listed(&self, _: &str) {}
}

/// Feeds `store` from the API server until the process ends.
pub async fn feed(
    client: kube::Client,
    kinds: Vec<WatchedKind>,
    store: Arc<Store>,
    observer: Arc<dyn WatchObserver>,
) {
    let (tx, mut rx) = mpsc::channel::<KindEvent>(1024);
    let mut waiting: BTreeSet<String> = kinds.iter().map(|k| k.resource.kind.clone()).collect();
    for k in kinds {
        tokio::spawn(watch_kind(client.clone(), k, tx.clone()));
    }
    drop(tx);
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        // Everything already queued goes into one version.
        let mut events = vec![first];
        while events.len() < 4096 {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        for event in events {
            match event {
                KindEvent::Change(c) => batch.push(c),
                KindEvent::Listed(kind) => {
                    observer.listed(&kind);
                    if waiting.remove(&kind) && waiting.is_empty() {
                        tracing::info!("every watched kind listed");
                    }
                }
                KindEvent::Failed { kind, error } => {
                    observer.watch_failed(&kind);
                    tracing::warn!(kind, error, "watch failed; retrying with backoff")
                }
            }
        }
        // Until every kind is listed, a partial state could deny what the full state allows:
        // hold changes back and serve nothing.
        if waiting.is_empty() && !batch.is_empty() {
            let changes = std::mem::take(&mut batch);
            let n = changes.len();
            let version = store.update(changes);
            if !store.loaded() {
                store.mark_loaded();
            }
            tracing::debug!(changes = n, version, "store updated");
        } else if waiting.is_empty() && !store.loaded() {
            store.mark_loaded();
        }
    }
}

async fn watch_kind(client: kube::Client, kind: WatchedKind, tx: mpsc::Sender<KindEvent>) {
    let name = kind.resource.kind.clone();
    let api: Api<DynamicObject> = Api::all_with(client, &kind.resource);
    let mut stream = watcher::watcher(api, watcher_config())
        .default_backoff()
        .boxed();
    let mut relist: Option<ObjectSet> = None;
    let mut absent_reported = false;
    while let Some(item) = stream.next().await {
        let out = match item {
            Ok(Event::Init) => {
                relist = Some(ObjectSet::new());
                continue;
            }
            Ok(Event::InitApply(o)) => {
                if let Some((k, v)) = object(&kind.resource, o)
                    && let Some(buffer) = relist.as_mut()
                {
                    buffer.insert(k, v);
                }
                continue;
            }
            Ok(Event::InitDone) => {
                let objects = relist.take().unwrap_or_default();
                tracing::info!(kind = name, objects = objects.len(), "listed");
                absent_reported = false;
                if tx
                    .send(KindEvent::Change(StoreChange::ReplaceKind(
                        name.clone(),
                        objects,
                    )))
                    .await
                    .is_err()
                {
                    return;
                }
                KindEvent::Listed(name.clone())
            }
            Ok(Event::Apply(o)) => match object(&kind.resource, o) {
                Some((k, v)) => KindEvent::Change(StoreChange::Upsert(k, v)),
                None => continue,
            },
            Ok(Event::Delete(o)) => match object(&kind.resource, o) {
                Some((k, _)) => KindEvent::Change(StoreChange::Delete(k)),
                None => continue,
            },
            Err(e) if kind.optional && is_not_found(&e) => {
                if absent_reported {
                    continue;
                }
                absent_reported = true;
                tracing::info!(
                    kind = name,
                    "not served by this API server (CRD not installed); counted as empty, checked again with backoff"
                );
                // A CRD removed after it was listed takes its objects with it.
                if tx
                    .send(KindEvent::Change(StoreChange::ReplaceKind(
                        name.clone(),
                        ObjectSet::new(),
                    )))
                    .await
                    .is_err()
                {
                    return;
                }
                KindEvent::Listed(name.clone())
            }
            Err(e) => KindEvent::Failed {
                kind: name.clone(),
                error: e.to_string(),
            },
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    use kube::Error as K;
    let client_error = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return false,
    };
    matches!(client_error, K::Api(status) if status.code == 404)
}

/// The object as Kubernetes JSON with its kind and apiVersion, trimmed.
fn object(resource: &ApiResource, o: DynamicObject) -> Option<(ObjectKey, Value)> {
    let mut value = match serde_json::to_value(&o) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(kind = resource.kind, error = %e, "object not representable; skipped");
            return None;
        }
    };
    let map = value.as_object_mut()?;
    map.insert(
        "apiVersion".into(),
        Value::String(resource.api_version.clone()),
    );
    map.insert("kind".into(), Value::String(resource.kind.clone()));
    trim(&resource.kind, map);
    let key = ObjectKey::of(&value)?;
    Some((key, value))
}

/// Drops what policy never reads.
pub fn trim(kind: &str, map: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.remove("managedFields");
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if kind == "Node" {
        // Its name, labels and addresses: the rest (images, conditions, capacity) changes
        // often and is never read.
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, _| matches!(k.as_str(), "name" | "labels" | "uid"));
        }
        map.remove("spec");
        if let Some(Value::Object(status)) = map.get_mut("status") {
            status.retain(|k, _| k == "addresses");
        }
        return;
    }
    if matches!(
        kind,
        "NetworkPolicy"
            | "PodwallPolicy"
            | "CiliumNetworkPolicy"
            | "CiliumClusterwideNetworkPolicy"
            | "ClusterNetworkPolicy"
    ) {
        // podwall writes PodwallPolicy status itself: a status write (and the resourceVersion
        // it moves) must not be a change that goes out to every sidecar the policy reaches.
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("resourceVersion");
        }
    }
    if kind != "Pod" {
        return;
    }
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.retain(|k, _| {
            matches!(
                k.as_str(),
                "name" | "namespace" | "labels" | "annotations" | "uid" | "resourceVersion"
            )
        });
    }
    if let Some(Value::Object(spec)) = map.get_mut("spec") {
        spec.retain(|k, _| {
            matches!(
                k.as_str(),
                "containers" | "initContainers" | "hostNetwork" | "nodeName" | "serviceAccountName"
            )
        });
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(containers)) = spec.get_mut(list) {
                for c in containers {
                    if let Value::Object(c) = c {
                        c.retain(|k, _| matches!(k.as_str(), "name" | "ports" | "restartPolicy"));
                    }
                }
            }
        }
    }
    if let Some(Value::Object(status)) = map.get_mut("status") {
        status.retain(|k, _| {
            matches!(
                k.as_str(),
                "phase" | "podIP" | "podIPs" | "hostIP" | "hostIPs" | "conditions"
            )
        });
        if let Some(Value::Array(conditions)) = status.get_mut("conditions") {
            conditions.retain(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
            for c in conditions {
                if let Value::Object(c) = c {
                    c.retain(|k, _| matches!(k.as_str(), "type" | "status"));
                }
            }
        }
    }
}

/// Objects per list page: big lists come in pages, as the API server prefers.
pub const LIST_PAGE_SIZE: u32 = 500;

/// The watcher configuration podwall uses: bookmarks on, paged lists.
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_are_trimmed_to_what_policy_reads() {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "a"},
                "managedFields": [{"manager": "kubectl"}], "ownerReferences": [{"kind": "ReplicaSet"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "podwall.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "c", "image": "nginx", "env": [{"name": "SECRET", "value": "x"}],
                "ports": [{"name": "http", "containerPort": 80}]}],
                "volumes": [{"name": "v"}], "hostNetwork": false, "serviceAccountName": "sa"},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [{"name": "c"}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "x"}, {"type": "PodScheduled", "status": "True"}]}
        });
        trim("Pod", pod.as_object_mut().expect("object"));
        assert_eq!(
            pod,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "n", "labels": {"app": "a"},
                    "annotations": {"podwall.io/inject": "enabled"}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}],
                    "hostNetwork": false, "serviceAccountName": "sa"},
                "status": {"phase": "Running", "podIP": "10.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}]}
            })
        );
    }
}

//! What operators must know: pods that policies select but that run without the sidecar. Their
//! policies are not enforced (the CNI does not, and no sidecar does), so every such pod is a
//! warning in the log, once per pod and policy set, and counted in metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use podwall_policy::feed::ObjectSet;
use serde_json::Value;

use crate::server::ServerMetrics;
use crate::views::Views;

/// The annotation that asks for the sidecar.
pub const INJECT_ANNOTATION: &str = "podwall.io/inject";
/// The sidecar container's name (a native sidecar in `initContainers`, or a container).
pub const SIDECAR_CONTAINER: &str = "podwall-proxy";

/// How the control plane tells a pod has its sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarEvidence {
    /// The pod runs podwall's init and sidecar containers and carries the injection's status
    /// annotation (a cluster: what was really injected; the webhook refuses pods that bring
    /// containers of those names otherwise).
    Container,
    /// The pod asks for it with `podwall.io/inject: enabled` (the sandbox injects by it).
    Annotation,
}

/// Pods a policy selects that run without the sidecar, with the policies that select them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Protection {
    /// Pods running the sidecar.
    pub protected: usize,
    /// `namespace/name` -> the policies (`Kind namespace/name`) selecting it.
    pub unprotected: BTreeMap<String, Vec<String>>,
}

/// Whether a pod object shows its sidecar.
pub fn has_sidecar(pod: &Value, evidence: SidecarEvidence) -> bool {
    match evidence {
        SidecarEvidence::Annotation => {
            pod["metadata"]["annotations"][INJECT_ANNOTATION].as_str() == Some("enabled")
        }
        SidecarEvidence::Container => {
            let runs = |name: &str| {
                ["containers", "initContainers"].iter().any(|list| {
                    pod["spec"][list]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
                })
            };
            pod["metadata"]["annotations"][crate::inject::STATUS_ANNOTATION].as_str()
                == Some("injected")
                && runs(SIDECAR_CONTAINER)
                && runs(crate::inject::INIT)
        }
    }
}

/// Works out which selected pods are unprotected.
pub fn protection(objects: &ObjectSet, evidence: SidecarEvidence) -> Protection {
    crate::views::ViewIndex::build(0, Arc::new(crate::store::shared(objects.clone())), evidence)
        .protection
}

/// Reports after every change (at most once a second) until the process ends.
pub async fn watch(views: Arc<Views>, metrics: Arc<ServerMetrics>) {
    let mut changed = views.store().subscribe();
    let mut warned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        if views.store().loaded()
            && let Some(index) = views.index().await
        {
            let report = &index.protection;
            metrics.protected_pods.set(report.protected as i64);
            metrics
                .unprotected_pods
                .set(report.unprotected.len() as i64);
            // Pods that became protected (or went away) leave the family; the others stay
            // (a series that blinks would restart an alert's `for:`).
            let labels = |pod: &str| {
                pod.split_once('/')
                    .map(|(namespace, name)| crate::server::PodLabels {
                        namespace: namespace.to_string(),
                        pod: name.to_string(),
                    })
            };
            for gone in warned
                .keys()
                .filter(|p| !report.unprotected.contains_key(*p))
            {
                if let Some(l) = labels(gone) {
                    metrics.unprotected_pod.remove(&l);
                }
            }
            for pod in report.unprotected.keys() {
                if let Some(l) = labels(pod) {
                    metrics.unprotected_pod.get_or_create(&l).set(1);
                }
            }
            for (pod, policies) in &report.unprotected {
                if warned.get(pod) != Some(policies) {
                    tracing::warn!(
                        pod,
                        policies = policies.join(", "),
                        "pod is selected by policies but runs without the podwall sidecar: they are NOT enforced for it (annotate it {INJECT_ANNOTATION}: enabled and restart it)"
                    );
                }
            }
            warned = report.unprotected.clone();
        }
        if changed.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        changed.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwall_policy::feed::ObjectKey;
    use serde_json::json;

    fn set(objs: &[Value]) -> ObjectSet {
        objs.iter()
            .map(|o| (ObjectKey::of(o).expect("key"), o.clone()))
            .collect()
    }

    fn pod(name: &str, app: &str, sidecar: bool, annotated: bool) -> Value {
        let mut containers = vec![json!({"name": "app"})];
        let mut annotations = json!({});
        if sidecar {
            containers.push(json!({"name": SIDECAR_CONTAINER}));
            containers.push(json!({"name": crate::inject::INIT}));
            annotations[crate::inject::STATUS_ANNOTATION] = json!("injected");
        }
        if annotated {
            annotations[INJECT_ANNOTATION] = json!("enabled");
        }
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": app}, "annotations": annotations},
            "spec": {"containers": containers},
            "status": {"phase": "Running", "podIP": format!("10.0.0.{}", name.len())}})
    }

    #[test]
    fn pods_selected_by_a_policy_without_the_sidecar_are_reported_with_the_policies() {
        let objects = set(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
            pod("db", "db", true, true),
            pod("cache", "db", false, true),
            pod("web", "web", false, false),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "db-ingress", "namespace": "prod"},
                "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}}),
        ]);
        let by_container = protection(&objects, SidecarEvidence::Container);
        assert_eq!(by_container.protected, 1);
        assert_eq!(
            by_container.unprotected,
            BTreeMap::from([(
                "prod/cache".to_string(),
                vec!["NetworkPolicy prod/db-ingress".to_string()]
            )]),
            "web is selected by nothing, so it is not reported"
        );
        let by_annotation = protection(&objects, SidecarEvidence::Annotation);
        assert_eq!(by_annotation.protected, 2);
        assert!(by_annotation.unprotected.is_empty());
    }

    #[tokio::test]
    async fn an_unprotected_pod_is_named_in_the_metrics_and_the_log_until_it_gets_the_sidecar() {
        let log = crate::test_log::Log::default();
        let _guard = log.install();
        let objects = |cache_has_sidecar: bool| {
            set(&[
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
                pod("db", "db", true, true),
                pod("cache", "db", cache_has_sidecar, true),
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "db-ingress", "namespace": "prod"},
                    "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}}),
            ])
        };
        let store = Arc::new(crate::store::Store::new());
        store.replace(objects(false));
        let views = Arc::new(Views::new(store.clone(), SidecarEvidence::Container));
        let metrics = ServerMetrics::new();
        tokio::spawn(watch(views, metrics.clone()));
        let series = "podwall_control_unprotected_pod{namespace=\"prod\",pod=\"cache\"} 1";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !metrics.encode().contains(series) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                metrics.encode()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.unprotected_pods.get(), 1);
        assert_eq!(metrics.protected_pods.get(), 1);
        let text = log.text();
        assert!(
            text.contains("pod is selected by policies but runs without the podwall sidecar")
                && text.contains("prod/cache")
                && text.contains("NetworkPolicy prod/db-ingress"),
            "{text}"
        );
        // Injected and restarted: the series goes, the count follows.
        store.replace(objects(true));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.unprotected_pods.get() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                metrics.encode()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.protected_pods.get(), 2);
        assert!(
            !metrics.encode().contains("pod=\"cache\""),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn a_container_named_as_the_sidecar_is_no_evidence_without_the_injection() {
        let mut fake = pod("db", "db", false, true);
        fake["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": SIDECAR_CONTAINER, "image": "busybox"}));
        assert!(!has_sidecar(&fake, SidecarEvidence::Container));
        fake["metadata"]["annotations"][crate::inject::STATUS_ANNOTATION] = json!("injected");
        assert!(
            !has_sidecar(&fake, SidecarEvidence::Container),
            "no init container: no rules"
        );
        assert!(has_sidecar(
            &pod("db", "db", true, true),
            SidecarEvidence::Container
        ));
    }
}

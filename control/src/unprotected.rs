//! What operators must know: pods that policies select but that run without the sidecar. Their
//! policies are not enforced (the CNI does not, and no sidecar does), so every such pod is a
//! warning in the log, once per pod and policy set, and counted in metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::ServerMetrics;
use crate::views::Views;

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
                    .map(|(namespace, name)| crate::metrics::PodLabels {
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
                        "pod is selected by policies but runs without the podwall sidecar: they are NOT enforced for it (annotate it {}: enabled and restart it)",
                        crate::inject::INJECT_ANNOTATION
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
    use crate::protection::SidecarEvidence;
    use crate::protection::tests::{pod, set};
    use serde_json::json;

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
}

//! Whether a pod is protected: what shows a pod runs its sidecar, and the report of pods that
//! policies select but that run without it (their policies are enforced by nothing). The
//! views build the report with every index ([`crate::views`]); [`crate::unprotected`] tells
//! operators.

use std::collections::BTreeMap;

use serde_json::Value;

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
            pod["metadata"]["annotations"][crate::inject::INJECT_ANNOTATION].as_str()
                == Some("enabled")
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
                && runs(crate::inject::SIDECAR)
                && runs(crate::inject::INIT)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use podwall_policy::feed::{ObjectKey, ObjectSet};
    use serde_json::json;
    use std::sync::Arc;

    /// Works out which selected pods are unprotected (as the views do).
    fn protection(objects: &ObjectSet, evidence: SidecarEvidence) -> Protection {
        crate::views::ViewIndex::build(0, Arc::new(crate::store::shared(objects.clone())), evidence)
            .protection
    }

    /// An object set of `objs` (for this module's tests and `unprotected`'s).
    pub(crate) fn set(objs: &[Value]) -> ObjectSet {
        objs.iter()
            .map(|o| (ObjectKey::of(o).expect("key"), o.clone()))
            .collect()
    }

    /// A running pod in `prod`, injected (`sidecar`) and/or asking for it (`annotated`).
    pub(crate) fn pod(name: &str, app: &str, sidecar: bool, annotated: bool) -> Value {
        let mut containers = vec![json!({"name": "app"})];
        let mut annotations = json!({});
        if sidecar {
            containers.push(json!({"name": crate::inject::SIDECAR}));
            containers.push(json!({"name": crate::inject::INIT}));
            annotations[crate::inject::STATUS_ANNOTATION] = json!("injected");
        }
        if annotated {
            annotations[crate::inject::INJECT_ANNOTATION] = json!("enabled");
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

    #[test]
    fn a_container_named_as_the_sidecar_is_no_evidence_without_the_injection() {
        let mut fake = pod("db", "db", false, true);
        fake["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": crate::inject::SIDECAR, "image": "busybox"}));
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

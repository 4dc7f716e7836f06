//! The mutating admission webhook: `POST /inject` with an `admission.k8s.io/v1` AdmissionReview
//! of a Pod CREATE, answered with a JSONPatch that injects the sidecar ([`crate::inject`]), a
//! refusal naming the container and why, or an allowance with a warning (hostNetwork pods).
//! Served over HTTPS ([`tls`]) as the API server requires.

pub mod tls;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::inject::{InjectConfig, Outcome, asks_for_sidecar, inject_template};

/// The path the MutatingWebhookConfiguration calls.
pub const INJECT_PATH: &str = "/inject";

/// Why a request is not an AdmissionReview podwall can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not an AdmissionReview with a request.
    #[error("not an admission.k8s.io/v1 AdmissionReview with a request: {0}")]
    Malformed(String),
}

/// What happened, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not a pod that asks for the sidecar.
    Ignored,
    /// Patched.
    Injected,
    /// Already had it.
    AlreadyInjected,
    /// Allowed unchanged, with a warning.
    Skipped(String),
    /// Refused.
    Refused(String),
}

/// Answers one AdmissionReview; the response and what was decided.
pub fn review(body: &[u8], cfg: &InjectConfig) -> Result<(Value, Decision), ReviewError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let request = review
        .get("request")
        .ok_or_else(|| ReviewError::Malformed("no request".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or_else(|| ReviewError::Malformed("request.uid missing".into()))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let respond = |response: Value| {
        let mut r = response;
        r["uid"] = json!(uid);
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": r})
    };
    let is_pod_create = request["kind"]["kind"] == "Pod"
        && request["operation"] == "CREATE"
        && request.get("subResource").is_none_or(Value::is_null);
    let object = &request["object"];
    if !is_pod_create || !asks_for_sidecar(&object["metadata"]) {
        return Ok((respond(json!({"allowed": true})), Decision::Ignored));
    }
    let mut metadata = object["metadata"].clone();
    let mut spec = object["spec"].clone();
    let decision = match inject_template(&mut metadata, &mut spec, cfg) {
        Ok(Outcome::Injected) => {
            let mut patch = Vec::new();
            // `add` on an existing member replaces it (RFC 6902), so whole lists are safe.
            for field in ["initContainers", "containers", "volumes"] {
                if spec.get(field) != object["spec"].get(field)
                    && let Some(v) = spec.get(field)
                {
                    patch.push(json!({"op": "add", "path": format!("/spec/{field}"), "value": v}));
                }
            }
            patch.push(json!({"op": "add", "path": "/metadata/annotations",
                "value": metadata["annotations"]}));
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(Value::Array(patch).to_string());
            return Ok((
                respond(json!({"allowed": true, "patchType": "JSONPatch", "patch": encoded})),
                Decision::Injected,
            ));
        }
        Ok(Outcome::AlreadyInjected) => Decision::AlreadyInjected,
        Ok(Outcome::Skipped(why)) => {
            let warning = format!("podwall: sidecar not injected: {why}");
            return Ok((
                respond(json!({"allowed": true, "warnings": [warning]})),
                Decision::Skipped(why),
            ));
        }
        Err(e) => {
            let message = format!(
                "podwall: this pod asks for the podwall sidecar ({}: enabled) but {e}",
                crate::inject::INJECT_ANNOTATION
            );
            return Ok((
                respond(
                    json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden",
                    "message": message}}),
                ),
                Decision::Refused(e.to_string()),
            ));
        }
    };
    Ok((respond(json!({"allowed": true})), decision))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AdmissionReview as the API server sends it for `kubectl run` of an annotated pod.
    fn admission_review(pod: Value) -> Vec<u8> {
        json!({
            "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "prod", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                    "groups": ["system:serviceaccounts", "system:authenticated"]},
                "object": pod, "oldObject": null, "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        })
        .to_string()
        .into_bytes()
    }

    fn pod(annotations: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-7d4b9c-", "namespace": "prod", "labels": {"app": "web"},
                "annotations": annotations},
            "spec": spec})
    }

    fn apply_patch(mut doc: Value, patch: &[Value]) -> Value {
        for op in patch {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().expect("path");
            let (parent, field) = path.rsplit_once('/').expect("a member path");
            doc.pointer_mut(parent).expect("parent exists")[field] = op["value"].clone();
        }
        doc
    }

    #[test]
    fn an_annotated_pod_is_patched_and_the_patch_gives_the_injected_pod() {
        let p = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        );
        let cfg = InjectConfig::default();
        let (resp, decision) = review(&admission_review(p.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::Injected);
        let r = &resp["response"];
        assert_eq!(resp["kind"], "AdmissionReview");
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: Vec<Value> = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(r["patch"].as_str().expect("patch"))
                .expect("base64"),
        )
        .expect("json patch");
        let patched = apply_patch(p.clone(), &patch);
        let mut expected = p;
        crate::inject::inject_object(&mut expected, &cfg).expect("injects");
        expected["metadata"]["annotations"]["podwall.io/inject"] = json!("enabled");
        assert_eq!(patched, expected);
        // Reinvocation (or a retried create) of the patched pod changes nothing.
        let (again, decision) = review(&admission_review(patched), &cfg).expect("answers");
        assert_eq!(decision, Decision::AlreadyInjected);
        assert!(again["response"].get("patch").is_none());
    }

    #[test]
    fn pods_without_the_annotation_and_other_operations_pass_untouched() {
        let cfg = InjectConfig::default();
        let plain = pod(json!({}), json!({"containers": [{"name": "app"}]}));
        let (resp, decision) = review(&admission_review(plain), &cfg).expect("answers");
        assert_eq!(decision, Decision::Ignored);
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none());
        assert!(review(b"{\"kind\": \"AdmissionReview\"}", &cfg).is_err());
        assert!(review(b"not json", &cfg).is_err());
    }

    #[test]
    fn a_pod_that_would_defeat_enforcement_is_refused_with_the_reason() {
        let cfg = InjectConfig::default();
        let p = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"containers": [{"name": "vpn", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}),
        );
        let (resp, decision) = review(&admission_review(p), &cfg).expect("answers");
        assert!(matches!(decision, Decision::Refused(_)));
        let r = &resp["response"];
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        let msg = r["status"]["message"].as_str().expect("message");
        assert!(
            msg.contains("\"vpn\" has the NET_ADMIN capability"),
            "{msg}"
        );

        let host = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"hostNetwork": true, "containers": [{"name": "agent"}]}),
        );
        let (resp, decision) = review(&admission_review(host), &cfg).expect("answers");
        assert!(matches!(decision, Decision::Skipped(_)));
        assert_eq!(resp["response"]["allowed"], true);
        assert!(
            resp["response"]["warnings"][0]
                .as_str()
                .expect("warning")
                .contains("hostNetwork")
        );
    }
}

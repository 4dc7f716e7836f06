//! The mutating admission webhook: `POST /inject` with an `admission.k8s.io/v1` AdmissionReview,
//! served over HTTPS ([`server`], with [`crate::certs`]) as the API server requires.
//!
//! - A Pod CREATE that asks for the sidecar gets a JSONPatch that injects it
//!   ([`crate::inject`]), a refusal naming the container, the field and why, or an allowance
//!   with a warning (hostNetwork pods, or a pod that keeps NET_RAW by its annotation).
//! - A Pod CREATE that does not ask, but brings containers named as podwall's (or its status
//!   annotation) that are not what injection adds, is refused: it would look protected.
//! - A Pod UPDATE may not change podwall's containers of an injected pod (images are mutable).
//! - An UPDATE of `pods/ephemeralcontainers` (`kubectl debug`) on an injected pod: each new
//!   ephemeral container answers to the same refusals as the app's (NET_ADMIN, ALL, privileged,
//!   NET_RAW, the proxy's ids) and loses NET_RAW.

pub mod server;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::inject::{
    ALLOW_NET_RAW_ANNOTATION, InjectConfig, InjectError, Outcome, STATUS_ANNOTATION,
    allows_net_raw, asks_for_sidecar, check_app_container, drop_net_raw, genuine_injection,
    inject_template, podwall_containers, says_injected,
};

/// The path the MutatingWebhookConfiguration calls for pods that ask by annotation.
pub const INJECT_PATH: &str = "/inject";
/// The path it calls for pods of namespaces labelled `podwall.io/inject: enabled`, where every
/// pod gets the sidecar unless it says `podwall.io/inject: disabled`. (An AdmissionReview does
/// not carry the namespace's labels: the webhook entry that selects those namespaces says so by
/// its path, so no lookup can race a namespace just labelled.)
pub const NAMESPACE_INJECT_PATH: &str = "/inject/namespace";
/// The path for pods of namespaces labelled `podwall.io/inject: required`: every pod gets the
/// sidecar and none may opt out (a pod's author cannot take it off).
pub const REQUIRED_INJECT_PATH: &str = "/inject/namespace-required";

/// How the pods a webhook entry sends ask for the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    /// By the pod's annotation `podwall.io/inject: enabled`.
    ByAnnotation,
    /// By their namespace's label: every pod unless its annotation says `disabled`.
    ByNamespace,
    /// By their namespace's label `required`: every pod, and `disabled` is refused.
    RequiredByNamespace,
}

impl Asking {
    /// What a request to `path` means; `None` for other paths.
    pub fn of_path(path: &str) -> Option<Asking> {
        match path {
            INJECT_PATH => Some(Asking::ByAnnotation),
            NAMESPACE_INJECT_PATH => Some(Asking::ByNamespace),
            REQUIRED_INJECT_PATH => Some(Asking::RequiredByNamespace),
            _ => None,
        }
    }

    fn asks(self, metadata: &Value) -> bool {
        match self {
            Asking::ByAnnotation => asks_for_sidecar(metadata),
            Asking::ByNamespace => {
                metadata["annotations"][crate::inject::INJECT_ANNOTATION].as_str()
                    != Some("disabled")
            }
            Asking::RequiredByNamespace => true,
        }
    }
}

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
    /// New ephemeral containers of an injected pod, checked and patched.
    EphemeralReviewed,
}

/// Answers one AdmissionReview; the response and what was decided.
pub fn review(body: &[u8], cfg: &InjectConfig) -> Result<(Value, Decision), ReviewError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    review_value(&review, cfg, Asking::ByAnnotation)
}

/// Which pod a review is about, for the log: `namespace/name` (a CREATE through a controller
/// has only `generateName`, shown as `prefix*`), the operation and who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `namespace/name`, or `namespace/generateName*`.
    pub pod: String,
    /// CREATE, UPDATE, or UPDATE of a sub-resource (`UPDATE pods/ephemeralcontainers`).
    pub operation: String,
    /// The user the API server names (a ReplicaSet's pods: its controller's service account).
    pub user: String,
}

/// The subject of a parsed AdmissionReview; what is absent stays empty.
pub fn subject(review: &Value) -> Subject {
    let request = &review["request"];
    let meta = &request["object"]["metadata"];
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| meta["namespace"].as_str())
        .unwrap_or_default();
    let name = match (
        meta["name"].as_str().or_else(|| request["name"].as_str()),
        meta["generateName"].as_str(),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => String::new(),
    };
    let operation = request["operation"].as_str().unwrap_or_default();
    let operation = match request["subResource"].as_str() {
        Some(sub) if !sub.is_empty() => format!("{operation} pods/{sub}"),
        _ => operation.to_string(),
    };
    Subject {
        pod: format!("{namespace}/{name}"),
        operation,
        user: request["userInfo"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// [`review`] of an AdmissionReview already parsed, for pods that ask as `asking` says.
pub fn review_value(
    review: &Value,
    cfg: &InjectConfig,
    asking: Asking,
) -> Result<(Value, Decision), ReviewError> {
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
    let is_pod = request["kind"]["kind"] == "Pod";
    let sub_resource = request["subResource"].as_str().unwrap_or_default();
    let object = &request["object"];
    let refuse = |e: InjectError| {
        let message = format!("podwall: {e}");
        (
            respond(
                json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden",
                "message": message}}),
            ),
            Decision::Refused(e.to_string()),
        )
    };
    let patched = |patch: Vec<Value>, warnings: Vec<String>, decision: Decision| {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(Value::Array(patch).to_string());
        let mut r = json!({"allowed": true, "patchType": "JSONPatch", "patch": encoded});
        if !warnings.is_empty() {
            r["warnings"] = json!(warnings);
        }
        (respond(r), decision)
    };
    if is_pod && request["operation"] == "UPDATE" && sub_resource == "ephemeralcontainers" {
        return Ok(match review_ephemeral(request, cfg) {
            Ok(Some(patch)) => patched(patch, Vec::new(), Decision::EphemeralReviewed),
            Ok(None) => (respond(json!({"allowed": true})), Decision::Ignored),
            Err(e) => refuse(e),
        });
    }
    if is_pod && request["operation"] == "UPDATE" && sub_resource.is_empty() {
        return Ok(match review_update(request) {
            Ok(()) => (respond(json!({"allowed": true})), Decision::Ignored),
            Err(e) => refuse(e),
        });
    }
    if !is_pod || request["operation"] != "CREATE" || !sub_resource.is_empty() {
        return Ok((respond(json!({"allowed": true})), Decision::Ignored));
    }
    if asking == Asking::RequiredByNamespace
        && object["metadata"]["annotations"][crate::inject::INJECT_ANNOTATION].as_str()
            == Some("disabled")
    {
        return Ok(refuse(InjectError::OptOutRefused));
    }
    if !asking.asks(&object["metadata"]) {
        // It does not ask: it may not pretend to have the sidecar either, and if it has it
        // (injected offline), its containers answer to the checks all the same.
        match genuine_injection(&object["metadata"], &object["spec"], cfg) {
            Err(e) => return Ok(refuse(e)),
            Ok(false) => return Ok((respond(json!({"allowed": true})), Decision::Ignored)),
            Ok(true) => {}
        }
    }
    let mut metadata = object["metadata"].clone();
    let mut spec = object["spec"].clone();
    let outcome = match inject_template(&mut metadata, &mut spec, cfg) {
        Ok(outcome) => outcome,
        Err(e) => {
            let how = match asking {
                Asking::ByAnnotation => {
                    format!("{}: enabled", crate::inject::INJECT_ANNOTATION)
                }
                Asking::ByNamespace => format!(
                    "its namespace is labelled {}=enabled",
                    crate::inject::INJECT_ANNOTATION
                ),
                Asking::RequiredByNamespace => format!(
                    "its namespace is labelled {}=required",
                    crate::inject::INJECT_ANNOTATION
                ),
            };
            let message = format!("podwall: this pod asks for the podwall sidecar ({how}) but {e}");
            return Ok((
                respond(
                    json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden",
                    "message": message}}),
                ),
                Decision::Refused(e.to_string()),
            ));
        }
    };
    if let Outcome::Skipped(why) = outcome {
        let warning = format!("podwall: sidecar not injected: {why}");
        return Ok((
            respond(json!({"allowed": true, "warnings": [warning]})),
            Decision::Skipped(why),
        ));
    }
    let mut patch = Vec::new();
    // `add` on an existing member replaces it (RFC 6902), so whole lists are safe.
    for field in ["initContainers", "containers", "volumes", "securityContext"] {
        if spec.get(field) != object["spec"].get(field)
            && let Some(v) = spec.get(field)
        {
            patch.push(json!({"op": "add", "path": format!("/spec/{field}"), "value": v}));
        }
    }
    if outcome == Outcome::AlreadyInjected {
        // Reinvoked: what a later webhook added (a container) got NET_RAW dropped.
        if patch.is_empty() {
            return Ok((respond(json!({"allowed": true})), Decision::AlreadyInjected));
        }
        return Ok(patched(patch, Vec::new(), Decision::AlreadyInjected));
    }
    patch.push(json!({"op": "add", "path": "/metadata/annotations",
        "value": metadata["annotations"]}));
    let warnings = if allows_net_raw(&metadata) {
        vec![format!(
            "podwall: the pod keeps NET_RAW ({}: \"true\"): its apps can mark their sockets as the sidecar's and send frames below its rules, so its policies are NOT enforced against a compromised app",
            crate::inject::ALLOW_NET_RAW_ANNOTATION
        )]
    } else {
        Vec::new()
    };
    Ok(patched(patch, warnings, Decision::Injected))
}

/// An update of a pod that says it was injected may change neither podwall's containers (images
/// are mutable on a running pod) nor what podwall reads from its annotations.
fn review_update(request: &Value) -> Result<(), InjectError> {
    let (object, old) = (&request["object"], &request["oldObject"]);
    if !says_injected(&old["metadata"]) {
        return Ok(());
    }
    let changed = |what: &str| InjectError::NotTheSidecar {
        what: "the update".into(),
        why: format!("it changes {what} of an injected pod"),
    };
    if podwall_containers(&old["spec"]) != podwall_containers(&object["spec"]) {
        return Err(changed("podwall's containers"));
    }
    let read = [STATUS_ANNOTATION, ALLOW_NET_RAW_ANNOTATION];
    for annotation in read.iter().chain(&crate::inject::pod_settings::ALL) {
        if old["metadata"]["annotations"][annotation]
            != object["metadata"]["annotations"][annotation]
        {
            return Err(changed(&format!("the annotation {annotation}")));
        }
    }
    // Logging HTTP requests may be switched on and off on a running pod (the sidecar reads it
    // from the policy state); only a new value is checked (an old one must not block every
    // later update of the pod).
    let observe = podwall_policy::OBSERVE_HTTP_ANNOTATION;
    if old["metadata"]["annotations"][observe] != object["metadata"]["annotations"][observe] {
        crate::inject::pod_settings::check_observe_http(&object["metadata"], &object["spec"])?;
    }
    Ok(())
}

/// The ephemeral containers an update adds to an injected pod: checked as app containers, and
/// patched to lose NET_RAW. `None` when the pod is not podwall's or nothing needs a patch.
fn review_ephemeral(
    request: &Value,
    cfg: &InjectConfig,
) -> Result<Option<Vec<Value>>, InjectError> {
    let (object, old) = (&request["object"], &request["oldObject"]);
    if !says_injected(&old["metadata"]) && !says_injected(&object["metadata"]) {
        return Ok(None);
    }
    let allow_net_raw = allows_net_raw(&object["metadata"]);
    let existing: Vec<&Value> = old["spec"]["ephemeralContainers"]
        .as_array()
        .map(|a| a.iter().map(|c| &c["name"]).collect())
        .unwrap_or_default();
    let Some(containers) = object["spec"]["ephemeralContainers"].as_array() else {
        return Ok(None);
    };
    let mut changed = containers.clone();
    for (i, c) in containers.iter().enumerate() {
        if existing.contains(&&c["name"]) {
            continue;
        }
        check_app_container(
            &format!("spec.ephemeralContainers[{i}]"),
            c,
            &object["spec"]["securityContext"],
            cfg,
            allow_net_raw,
        )?;
        if !allow_net_raw {
            drop_net_raw(&mut changed[i]);
        }
    }
    if changed == *containers {
        return Ok(None);
    }
    Ok(Some(vec![
        json!({"op": "add", "path": "/spec/ephemeralContainers", "value": changed}),
    ]))
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

    #[test]
    fn a_review_names_the_pod_the_operation_and_who_asked_for_the_log() {
        let from_controller =
            json!({"metadata": {"generateName": "web-7d9c-", "namespace": "prod"}});
        let parsed: Value =
            serde_json::from_slice(&admission_review(from_controller)).expect("json");
        assert_eq!(
            subject(&parsed),
            Subject {
                pod: "prod/web-7d9c-*".into(),
                operation: "CREATE".into(),
                user: "system:serviceaccount:kube-system:replicaset-controller".into(),
            }
        );
        let mut debug = parsed.clone();
        debug["request"]["operation"] = json!("UPDATE");
        debug["request"]["subResource"] = json!("ephemeralcontainers");
        debug["request"]["name"] = json!("web-7d9c-x2p4q");
        debug["request"]["userInfo"]["username"] = json!("alice@example.com");
        assert_eq!(
            subject(&debug),
            Subject {
                pod: "prod/web-7d9c-x2p4q".into(),
                operation: "UPDATE pods/ephemeralcontainers".into(),
                user: "alice@example.com".into(),
            }
        );
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

    fn patch_of(resp: &Value) -> Vec<Value> {
        serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(resp["response"]["patch"].as_str().expect("patch"))
                .expect("base64"),
        )
        .expect("json patch")
    }

    fn refusal(resp: &Value) -> String {
        assert_eq!(resp["response"]["allowed"], false, "{resp}");
        assert_eq!(resp["response"]["status"]["code"], 403);
        resp["response"]["status"]["message"]
            .as_str()
            .expect("message")
            .to_string()
    }

    #[test]
    fn capability_names_are_read_as_the_runtime_reads_them() {
        let cfg = InjectConfig::default();
        for spelling in [
            "net_admin",
            "CAP_NET_ADMIN",
            "cap_net_admin",
            "Net_Admin",
            "all",
            "CAP_ALL",
        ] {
            let p = pod(
                json!({"podwall.io/inject": "enabled"}),
                json!({"containers": [{"name": "app"}, {"name": "vpn", "securityContext": {"capabilities": {"add": [spelling]}}}]}),
            );
            let (resp, _) = review(&admission_review(p), &cfg).expect("answers");
            let msg = refusal(&resp);
            assert!(msg.contains("\"vpn\""), "{spelling}: {msg}");
            assert!(
                msg.contains("spec.containers[1].securityContext.capabilities.add"),
                "{spelling}: {msg}"
            );
        }
    }

    #[test]
    fn app_containers_lose_net_raw_unless_the_pod_accepts_an_unprotected_pod() {
        let cfg = InjectConfig::default();
        let spec = json!({
            "initContainers": [{"name": "migrate"}],
            "containers": [{"name": "app"}, {"name": "strict", "securityContext": {"capabilities": {"drop": ["all"]}}}],
        });
        let p = pod(json!({"podwall.io/inject": "enabled"}), spec.clone());
        let (resp, decision) = review(&admission_review(p.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::Injected);
        let patched = apply_patch(p, &patch_of(&resp));
        let drops = |list: &str, name: &str| {
            patched["spec"][list]
                .as_array()
                .expect("list")
                .iter()
                .find(|c| c["name"] == name)
                .map(|c| c["securityContext"]["capabilities"]["drop"].clone())
                .expect("container")
        };
        assert_eq!(drops("containers", "app"), json!(["NET_RAW"]));
        assert_eq!(drops("initContainers", "migrate"), json!(["NET_RAW"]));
        assert_eq!(
            drops("containers", "strict"),
            json!(["all"]),
            "ALL covers it"
        );
        // Ping keeps working without NET_RAW, and the sidecar's ports are reserved.
        let sysctls = &patched["spec"]["securityContext"]["sysctls"];
        assert_eq!(
            sysctls,
            &json!([
                {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"},
                {"name": "net.ipv4.ip_local_reserved_ports", "value": "15001,15006,15020,15053"}
            ])
        );

        // Adding NET_RAW, in any spelling, is refused without the annotation...
        let adds = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"containers": [{"name": "pinger", "securityContext": {"capabilities": {"add": ["cap_net_raw"]}}}]}),
        );
        let (resp, _) = review(&admission_review(adds), &cfg).expect("answers");
        let msg = refusal(&resp);
        assert!(
            msg.contains("\"pinger\" adds the NET_RAW capability"),
            "{msg}"
        );
        assert!(msg.contains("podwall.io/allow-net-raw"), "{msg}");
        // ... and kept, with a warning, with it.
        let accepted = pod(
            json!({"podwall.io/inject": "enabled", "podwall.io/allow-net-raw": "true"}),
            json!({"containers": [{"name": "pinger", "securityContext": {"capabilities": {"add": ["NET_RAW"]}}}]}),
        );
        let (resp, decision) = review(&admission_review(accepted.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::Injected);
        assert!(
            resp["response"]["warnings"][0]
                .as_str()
                .expect("warning")
                .contains("NOT enforced"),
            "{resp}"
        );
        let patched = apply_patch(accepted, &patch_of(&resp));
        assert_eq!(
            patched["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"add": ["NET_RAW"]})
        );
    }

    #[test]
    fn the_pods_own_sysctls_are_kept_and_reserved_ports_added_to() {
        let cfg = InjectConfig::default();
        let p = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"securityContext": {"runAsNonRoot": true, "sysctls": [
                {"name": "net.ipv4.ping_group_range", "value": "1000 1000"},
                {"name": "net.ipv4.ip_local_reserved_ports", "value": "8080,15006"}]},
                "containers": [{"name": "app"}]}),
        );
        let (resp, _) = review(&admission_review(p.clone()), &cfg).expect("answers");
        let patched = apply_patch(p, &patch_of(&resp));
        let sc = &patched["spec"]["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(
            sc["sysctls"],
            json!([
                {"name": "net.ipv4.ping_group_range", "value": "1000 1000"},
                {"name": "net.ipv4.ip_local_reserved_ports", "value": "8080,15006,15001,15053,15020"}
            ])
        );
        // An API server older than 1.27 refuses the reserved-ports sysctl: left out.
        let old = InjectConfig {
            reserve_ports: Some(false),
            ..InjectConfig::default()
        };
        let p = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"containers": [{"name": "app"}]}),
        );
        let (resp, _) = review(&admission_review(p.clone()), &old).expect("answers");
        let patched = apply_patch(p, &patch_of(&resp));
        assert_eq!(
            patched["spec"]["securityContext"]["sysctls"],
            json!([{"name": "net.ipv4.ping_group_range", "value": "0 2147483647"}])
        );
    }

    #[test]
    fn a_pod_bringing_its_own_podwall_containers_is_refused_and_never_passes_as_protected() {
        let cfg = InjectConfig::default();
        let fake = json!({"name": "podwall-proxy", "image": "busybox", "args": ["sleep", "inf"]});
        // Asking or not, a container named as the sidecar without the injection is refused.
        for annotations in [json!({"podwall.io/inject": "enabled"}), json!({})] {
            let p = pod(
                annotations.clone(),
                json!({"containers": [{"name": "app"}, fake.clone()]}),
            );
            let (resp, decision) = review(&admission_review(p), &cfg).expect("answers");
            assert!(matches!(decision, Decision::Refused(_)), "{annotations}");
            let msg = refusal(&resp);
            assert!(msg.contains("podwall.io/status"), "{msg}");
        }
        // The status annotation with an impostor: refused, naming what differs.
        let p = pod(
            json!({"podwall.io/inject": "enabled", "podwall.io/status": "injected"}),
            json!({"initContainers": [{"name": "podwall-init", "image": "busybox", "args": ["true"]}],
                "containers": [{"name": "app"}, fake.clone()]}),
        );
        let (resp, _) = review(&admission_review(p), &cfg).expect("answers");
        let msg = refusal(&resp);
        assert!(msg.contains("container \"podwall-init\""), "{msg}");
        assert!(msg.contains("is not what podwall injects"), "{msg}");
        // The status annotation alone: refused.
        let p = pod(
            json!({"podwall.io/status": "injected"}),
            json!({"containers": [{"name": "app"}]}),
        );
        let (resp, _) = review(&admission_review(p), &cfg).expect("answers");
        assert!(refusal(&resp).contains("it must be the first init container"));
    }

    fn ephemeral_review(pod: Value, old: Value) -> Vec<u8> {
        let mut r: Value = serde_json::from_slice(&admission_review(pod)).expect("json");
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["subResource"] = json!("ephemeralcontainers");
        r["request"]["oldObject"] = old;
        r.to_string().into_bytes()
    }

    /// An injected pod as the API server holds it, with `ephemeral` containers.
    fn injected_with(ephemeral: Value) -> Value {
        let cfg = InjectConfig::default();
        let mut p = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"containers": [{"name": "app"}]}),
        );
        crate::inject::inject_object(&mut p, &cfg).expect("injects");
        p["spec"]["ephemeralContainers"] = ephemeral;
        p
    }

    #[test]
    fn ephemeral_containers_of_an_injected_pod_answer_to_the_same_refusals_and_lose_net_raw() {
        let cfg = InjectConfig::default();
        let before = injected_with(json!([]));
        // kubectl debug --profile=netadmin
        let netadmin = injected_with(json!([{"name": "debugger-x1", "image": "busybox",
            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}}]));
        let (resp, decision) =
            review(&ephemeral_review(netadmin, before.clone()), &cfg).expect("answers");
        assert!(matches!(decision, Decision::Refused(_)));
        let msg = refusal(&resp);
        assert!(msg.contains("\"debugger-x1\""), "{msg}");
        assert!(
            msg.contains("spec.ephemeralContainers[0].securityContext.capabilities.add"),
            "{msg}"
        );
        // kubectl debug --profile=sysadmin, and the proxy's uid.
        for sc in [json!({"privileged": true}), json!({"runAsUser": 1337})] {
            let p = injected_with(json!([{"name": "dbg", "securityContext": sc}]));
            let (resp, _) = review(&ephemeral_review(p, before.clone()), &cfg).expect("answers");
            assert!(refusal(&resp).contains("spec.ephemeralContainers[0].securityContext"));
        }
        // A plain debug container is let in without NET_RAW.
        let plain = injected_with(json!([{"name": "dbg", "image": "busybox"}]));
        let (resp, decision) =
            review(&ephemeral_review(plain.clone(), before.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::EphemeralReviewed);
        let patched = apply_patch(plain.clone(), &patch_of(&resp));
        assert_eq!(
            patched["spec"]["ephemeralContainers"][0]["securityContext"]["capabilities"]["drop"],
            json!(["NET_RAW"])
        );
        // Only new ones are judged: the one already there is left as it is.
        let second = injected_with(json!([patched["spec"]["ephemeralContainers"][0].clone(),
            {"name": "dbg2", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}]));
        let (resp, decision) = review(&ephemeral_review(second, patched), &cfg).expect("answers");
        assert_eq!(decision, Decision::Ignored, "{resp}");
        // A pod without podwall is not podwall's business.
        let other = pod(
            json!({}),
            json!({"containers": [{"name": "app"}],
            "ephemeralContainers": [{"name": "dbg", "securityContext": {"privileged": true}}]}),
        );
        let (_, decision) = review(&ephemeral_review(other, json!({})), &cfg).expect("answers");
        assert_eq!(decision, Decision::Ignored);
    }

    #[test]
    fn a_pod_that_pretends_to_be_injected_is_refused_and_a_genuine_one_keeps_its_hardening() {
        let cfg = InjectConfig::default();
        let injected = injected_with(json!([]));
        // Genuine: podwall's containers as injection writes them.
        assert_eq!(
            crate::inject::genuine_injection(&injected["metadata"], &injected["spec"], &cfg),
            Ok(true)
        );
        let mut disarmed = injected.clone();
        let inits = disarmed["spec"]["initContainers"]
            .as_array_mut()
            .expect("inits");
        inits[0]["args"]
            .as_array_mut()
            .expect("args")
            .push(json!("--remove"));
        let (resp, _) = review(&admission_review(disarmed), &cfg).expect("answers");
        let msg = refusal(&resp);
        assert!(msg.contains("container \"podwall-init\""), "{msg}");
        assert!(msg.contains("--remove"), "{msg}");

        let mut sleeping = injected.clone();
        sleeping["spec"]["initContainers"][1]["command"] = json!(["sleep", "infinity"]);
        let (resp, _) = review(&admission_review(sleeping), &cfg).expect("answers");
        assert!(refusal(&resp).contains("it sets command"));

        // podwall's volumes under their names, but a node's directory (which another pod may
        // write) for the name files the sidecar trusts, and a Secret for its token.
        for (name, source) in [
            ("podwall-pod-files", json!({"hostPath": {"path": "/tmp/x"}})),
            ("podwall-token", json!({"secret": {"secretName": "t"}})),
            (
                "podwall-token",
                json!({"projected": {"sources": [{"secret": {"name": "t"}}]}}),
            ),
        ] {
            let mut swapped = injected.clone();
            let volumes = swapped["spec"]["volumes"].as_array_mut().expect("volumes");
            let v = volumes
                .iter_mut()
                .find(|v| v["name"] == name)
                .expect("injected volume");
            *v = json!({"name": name});
            for (k, val) in source.as_object().expect("source") {
                v[k] = val.clone();
            }
            let (resp, _) = review(&admission_review(swapped), &cfg).expect("answers");
            let msg = refusal(&resp);
            assert!(msg.contains(&format!("volume \"{name}\"")), "{msg}");
        }
        // What the API server defaults in them is no difference.
        let mut defaulted = injected.clone();
        for v in defaulted["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
        {
            if v["name"] == "podwall-token" {
                v["projected"]["defaultMode"] = json!(420);
            }
        }
        assert_eq!(
            crate::inject::genuine_injection(&defaulted["metadata"], &defaulted["spec"], &cfg),
            Ok(true)
        );

        // A pod injected offline whose app keeps NET_RAW, or a later webhook's container:
        // patched on the way in.
        let mut later = injected.clone();
        later["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "mesh-agent"}));
        let (resp, decision) = review(&admission_review(later.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::AlreadyInjected);
        let patched = apply_patch(later, &patch_of(&resp));
        assert_eq!(
            patched["spec"]["containers"][1]["securityContext"]["capabilities"]["drop"],
            json!(["NET_RAW"])
        );
        // Unchanged: no patch at all.
        let (resp, decision) = review(&admission_review(injected), &cfg).expect("answers");
        assert_eq!(decision, Decision::AlreadyInjected);
        assert!(resp["response"].get("patch").is_none(), "{resp}");
    }

    #[test]
    fn capabilities_and_pod_settings_that_reach_around_the_sidecar_are_refused() {
        let cfg = InjectConfig::default();
        for cap in ["SYS_PTRACE", "cap_sys_admin", "BPF", "sys_module"] {
            let p = pod(
                json!({"podwall.io/inject": "enabled"}),
                json!({"containers": [{"name": "tool", "securityContext": {"capabilities": {"add": [cap]}}}]}),
            );
            let (resp, _) = review(&admission_review(p), &cfg).expect("answers");
            let msg = refusal(&resp);
            assert!(
                msg.contains("spec.containers[0].securityContext.capabilities.add"),
                "{cap}: {msg}"
            );
        }
        let p = pod(
            json!({"podwall.io/inject": "enabled"}),
            json!({"hostPID": true, "containers": [{"name": "app"}]}),
        );
        let (resp, _) = review(&admission_review(p), &cfg).expect("answers");
        assert!(refusal(&resp).contains("spec.hostPID"));
    }

    #[test]
    fn an_update_may_not_change_podwalls_containers_of_an_injected_pod() {
        let cfg = InjectConfig::default();
        let old = injected_with(json!([]));
        let update = |new: Value| {
            let mut r: Value = serde_json::from_slice(&admission_review(new)).expect("json");
            r["request"]["operation"] = json!("UPDATE");
            r["request"]["oldObject"] = old.clone();
            r.to_string().into_bytes()
        };
        let mut swapped = old.clone();
        swapped["spec"]["initContainers"][1]["image"] = json!("evil/sleeper:1");
        let (resp, _) = review(&update(swapped), &cfg).expect("answers");
        assert!(refusal(&resp).contains("podwall's containers"));
        // The app's own image may change.
        let mut rolled = old.clone();
        rolled["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        let (resp, decision) = review(&update(rolled), &cfg).expect("answers");
        assert_eq!(decision, Decision::Ignored);
        assert_eq!(resp["response"]["allowed"], true);
    }

    /// `injected` as the API server holds it after defaulting: what it fills in on podwall's
    /// containers, and another webhook's digest pinning and seccomp profile.
    fn as_stored(mut injected: Value) -> Value {
        for c in injected["spec"]["initContainers"]
            .as_array_mut()
            .expect("inits")
            .iter_mut()
            .take(2)
        {
            c["terminationMessagePath"] = json!("/dev/termination-log");
            c["terminationMessagePolicy"] = json!("File");
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if c[probe].is_object() {
                    c[probe]["timeoutSeconds"] = json!(1);
                    c[probe]["successThreshold"] = json!(1);
                    c[probe]["httpGet"]["scheme"] = json!("HTTP");
                }
            }
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                for e in env.iter_mut().filter(|e| e["valueFrom"].is_object()) {
                    e["valueFrom"]["fieldRef"]["apiVersion"] = json!("v1");
                }
            }
            c["image"] = json!("ghcr.io/podwall/podwall@sha256:0123456789abcdef");
            c["securityContext"]["seccompProfile"] = json!({"type": "RuntimeDefault"});
        }
        injected
    }

    #[test]
    fn what_the_api_server_and_other_webhooks_change_harmlessly_still_counts_as_injected() {
        let cfg = InjectConfig::default();
        let stored = as_stored(injected_with(json!([])));
        assert_eq!(
            crate::inject::genuine_injection(&stored["metadata"], &stored["spec"], &cfg),
            Ok(true)
        );
        let (_, decision) = review(&admission_review(stored), &cfg).expect("answers");
        assert_eq!(decision, Decision::AlreadyInjected);
    }

    #[test]
    fn a_sidecar_that_runs_anything_else_or_sits_elsewhere_is_not_podwalls() {
        let cfg = InjectConfig::default();
        let base = as_stored(injected_with(json!([])));
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "a postStart hook",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"][1]["lifecycle"] = json!({"postStart": {"exec": {"command": ["podwall", "proxy", "init", "--remove"]}}});
                }),
            ),
            (
                "an exec probe",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"][1]["livenessProbe"] =
                        json!({"exec": {"command": ["podwall", "proxy", "init", "--remove"]}});
                }),
            ),
            (
                "a mount over the binary",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"][0]["volumeMounts"] = json!([{"name": "x", "mountPath": "/usr/local/bin/podwall", "subPath": "noop"}]);
                }),
            ),
            (
                "an extra env",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"][1]["env"]
                        .as_array_mut()
                        .expect("env")
                        .push(json!({"name": "LD_PRELOAD", "value": "/tmp/x.so"}));
                }),
            ),
            (
                "another image",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"][1]["image"] = json!("evil/podwall:0.1.0");
                }),
            ),
            (
                "a capability dropped less",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"][1]["securityContext"]["capabilities"]["drop"] =
                        json!([]);
                }),
            ),
            (
                "an app init container before the rules",
                Box::new(|p: &mut Value| {
                    p["spec"]["initContainers"]
                        .as_array_mut()
                        .expect("inits")
                        .insert(0, json!({"name": "first"}));
                }),
            ),
            (
                "the init container among the app's",
                Box::new(|p: &mut Value| {
                    let init = p["spec"]["initContainers"]
                        .as_array_mut()
                        .expect("inits")
                        .remove(0);
                    p["spec"]["containers"]
                        .as_array_mut()
                        .expect("containers")
                        .push(init);
                }),
            ),
        ];
        for (what, change) in cases {
            let mut p = base.clone();
            change(&mut p);
            let (resp, decision) = review(&admission_review(p), &cfg).expect("answers");
            assert!(matches!(decision, Decision::Refused(_)), "{what}: {resp}");
            assert!(
                refusal(&resp).contains("is not what podwall injects"),
                "{what}"
            );
        }
        // hostNetwork on an injected pod: its init container would rewrite the node's rules.
        let mut host = base.clone();
        host["spec"]["hostNetwork"] = json!(true);
        let (resp, _) = review(&admission_review(host), &cfg).expect("answers");
        assert!(refusal(&resp).contains("spec.hostNetwork"));
    }

    #[test]
    fn an_injected_pod_that_no_longer_asks_is_still_checked() {
        let cfg = InjectConfig::default();
        for ask in [json!(null), json!("Enabled"), json!("disabled")] {
            let mut p = injected_with(json!([]));
            p["metadata"]["annotations"]["podwall.io/inject"] = ask.clone();
            p["spec"]["containers"][0]["securityContext"] =
                json!({"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}});
            let (resp, _) = review(&admission_review(p), &cfg).expect("answers");
            assert!(refusal(&resp).contains("NET_ADMIN"), "{ask}");
        }
    }

    #[test]
    fn an_update_may_change_neither_podwalls_containers_nor_its_annotations() {
        let cfg = InjectConfig::default();
        // Injected under another configuration (an older chart): still podwall's to guard.
        let old = as_stored(injected_with(json!([])));
        let update = |new: &Value| {
            let mut r: Value =
                serde_json::from_slice(&admission_review(new.clone())).expect("json");
            r["request"]["operation"] = json!("UPDATE");
            r["request"]["oldObject"] = old.clone();
            r.to_string().into_bytes()
        };
        let mut raw = old.clone();
        raw["metadata"]["annotations"]["podwall.io/allow-net-raw"] = json!("true");
        let (resp, _) = review(&update(&raw), &cfg).expect("answers");
        assert!(refusal(&resp).contains("podwall.io/allow-net-raw"));
        // HTTP logging may be switched on for a running pod, with a value that names ports.
        let mut observed = old.clone();
        observed["metadata"]["annotations"]["podwall.io/observe-http"] = json!("8080");
        let (resp, _) = review(&update(&observed), &cfg).expect("answers");
        assert_eq!(resp["response"]["allowed"], true, "{resp}");
        observed["metadata"]["annotations"]["podwall.io/observe-http"] = json!("web");
        let (resp, _) = review(&update(&observed), &cfg).expect("answers");
        assert!(refusal(&resp).contains("podwall.io/observe-http"), "{resp}");
        // A value already there (however it got there) does not block other updates.
        let mut stored = old.clone();
        stored["metadata"]["annotations"]["podwall.io/observe-http"] = json!("web");
        let mut relabelled = stored.clone();
        relabelled["metadata"]["labels"]["tier"] = json!("x");
        let mut r: Value = serde_json::from_slice(&admission_review(relabelled)).expect("json");
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["oldObject"] = stored;
        let (resp, _) = review(r.to_string().as_bytes(), &cfg).expect("answers");
        assert_eq!(resp["response"]["allowed"], true, "{resp}");
        let other = InjectConfig {
            image: "registry.example.com/podwall:0.2.0".into(),
            ..InjectConfig::default()
        };
        let mut swapped = old.clone();
        swapped["spec"]["initContainers"][1]["image"] = json!("ghcr.io/podwall/podwall:0.1.0");
        let (resp, _) = review(&update(&swapped), &other).expect("answers");
        assert!(refusal(&resp).contains("podwall's containers"));
        // kubectl debug on that pod is reviewed all the same.
        let mut debug = old.clone();
        debug["spec"]["ephemeralContainers"] =
            json!([{"name": "dbg", "securityContext": {"privileged": true}}]);
        let (resp, _) = review(&ephemeral_review(debug, old.clone()), &other).expect("answers");
        assert!(refusal(&resp).contains("privileged"));
    }

    #[test]
    fn in_a_namespace_that_opted_in_every_pod_is_injected_unless_it_says_disabled() {
        let cfg = InjectConfig::default();
        let by_namespace = |p: Value| {
            let r: Value = serde_json::from_slice(&admission_review(p)).expect("json");
            review_value(&r, &cfg, Asking::ByNamespace).expect("answers")
        };
        let plain = pod(
            json!({}),
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        );
        let (_, decision) = by_namespace(plain.clone());
        assert_eq!(decision, Decision::Injected);
        let (_, decision) = review(&admission_review(plain.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::Ignored, "by annotation it did not ask");
        let mut out = plain.clone();
        out["metadata"]["annotations"]["podwall.io/inject"] = json!("disabled");
        let (_, decision) = by_namespace(out);
        assert_eq!(decision, Decision::Ignored);
        let mut bad = plain;
        bad["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        let (resp, _) = by_namespace(bad);
        assert!(
            refusal(&resp).contains("its namespace is labelled podwall.io/inject=enabled"),
            "{resp}"
        );
        assert_eq!(Asking::of_path(INJECT_PATH), Some(Asking::ByAnnotation));
        assert_eq!(
            Asking::of_path(NAMESPACE_INJECT_PATH),
            Some(Asking::ByNamespace)
        );
        assert_eq!(Asking::of_path("/inject/other"), None);
        // Required: the same pods, and opting out is refused.
        let required = |p: Value| {
            let r: Value = serde_json::from_slice(&admission_review(p)).expect("json");
            review_value(&r, &cfg, Asking::RequiredByNamespace).expect("answers")
        };
        let mut out = pod(
            json!({"podwall.io/inject": "disabled"}),
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        );
        let (resp, _) = required(out.clone());
        assert!(
            refusal(&resp).contains("podwall.io/inject=required"),
            "{resp}"
        );
        out["metadata"]["annotations"] = json!({});
        assert_eq!(required(out).1, Decision::Injected);
        assert_eq!(
            Asking::of_path(REQUIRED_INJECT_PATH),
            Some(Asking::RequiredByNamespace)
        );
    }

    #[test]
    fn a_pods_own_settings_reach_its_sidecar_and_may_not_change_later() {
        let cfg = InjectConfig::default();
        let p = pod(
            json!({"podwall.io/inject": "enabled", "podwall.io/threads": "2",
                "podwall.io/exclude-outbound-ports": "5432",
                "podwall.io/proxy-memory-limit": "256Mi"}),
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        );
        let (resp, decision) = review(&admission_review(p.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::Injected);
        let injected = apply_patch(p, &patch_of(&resp));
        let inits = &injected["spec"]["initContainers"];
        assert!(
            inits[0]["args"]
                .as_array()
                .expect("args")
                .contains(&json!("--exclude-outbound-ports=5432"))
        );
        assert!(
            inits[1]["args"]
                .as_array()
                .expect("args")
                .contains(&json!("--threads=2"))
        );
        assert_eq!(inits[1]["resources"]["limits"]["memory"], "256Mi");
        // What it got is what its annotations say: reinvoked, it is podwall's own.
        let (_, decision) = review(&admission_review(injected.clone()), &cfg).expect("answers");
        assert_eq!(decision, Decision::AlreadyInjected);
        let mut update: Value =
            serde_json::from_slice(&admission_review(injected.clone())).expect("json");
        update["request"]["operation"] = json!("UPDATE");
        update["request"]["oldObject"] = injected.clone();
        update["request"]["object"]["metadata"]["annotations"]["podwall.io/threads"] = json!("4");
        let (resp, _) = review(update.to_string().as_bytes(), &cfg).expect("answers");
        assert!(refusal(&resp).contains("podwall.io/threads"), "{resp}");
        // A value that does not parse refuses the pod, naming the annotation.
        let bad = pod(
            json!({"podwall.io/inject": "enabled", "podwall.io/threads": "lots"}),
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        );
        let (resp, _) = review(&admission_review(bad), &cfg).expect("answers");
        assert!(
            refusal(&resp).contains("annotation podwall.io/threads is \"lots\""),
            "{resp}"
        );
    }

    #[test]
    fn a_pod_that_does_not_ask_is_not_judged_by_podwalls_annotations() {
        let cfg = InjectConfig {
            allow_pod_audit: false,
            ..InjectConfig::default()
        };
        let p = pod(
            json!({"podwall.io/threads": "lots", "podwall.io/enforcement": "audit"}),
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        );
        let (resp, decision) = review(&admission_review(p), &cfg).expect("answers");
        assert_eq!(decision, Decision::Ignored, "{resp}");
    }
}

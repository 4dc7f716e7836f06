//! `podwall uninject`: takes out of a workload what injection put in, for manifests injected
//! offline that should run without podwall, or (keeping the request) be injected by the
//! webhook instead.
//!
//! Removed: podwall's init container and sidecar (wherever they are), the token volume, the
//! annotation `podwall.io/status`, `podwall.io/inject: enabled` (which `podwall inject` adds)
//! unless the request is kept, the ping sysctl when it has injection's value, and the sidecar's
//! ports from `net.ipv4.ip_local_reserved_ports`. Kept: `NET_RAW` dropped from the app containers
//! (injection cannot tell it from the app's own drop, and apps run without it), and the
//! per-pod settings annotations (the pod's author wrote them).

use serde_json::Value;

use super::{
    INIT, INJECT_ANNOTATION, InjectConfig, InjectError, PING_GROUP_RANGE, POD_FILES_VOLUME,
    RESERVED_PORTS, SIDECAR, SIDECAR_PORTS, STATUS_ANNOTATION, TOKEN_VOLUME, template_pointer,
};

/// What uninjection did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uninjected {
    /// podwall's parts were taken out.
    Removed,
    /// The object has a pod template without podwall in it.
    NotInjected,
    /// The kind has no pod template.
    NoTemplate,
}

/// Takes podwall out of a workload object; `cfg` names the admin port that was reserved. With
/// `keep_request`, `podwall.io/inject: enabled` stays, so the webhook injects its pods.
pub fn uninject_object(
    object: &mut Value,
    cfg: &InjectConfig,
    keep_request: bool,
) -> Result<Uninjected, InjectError> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(Uninjected::NoTemplate);
    };
    let Some(template) = object.pointer_mut(pointer) else {
        return Err(InjectError::NotAWorkload(format!(
            "{kind} without {pointer}"
        )));
    };
    let injected = template["metadata"]["annotations"][STATUS_ANNOTATION].is_string()
        || !super::podwall_containers(&template["spec"]).is_empty();
    if !injected {
        return Ok(Uninjected::NotInjected);
    }
    if let Some(annotations) = template["metadata"]["annotations"].as_object_mut() {
        annotations.remove(STATUS_ANNOTATION);
        if !keep_request
            && annotations.get(INJECT_ANNOTATION).and_then(Value::as_str) == Some("enabled")
        {
            annotations.remove(INJECT_ANNOTATION);
        }
    }
    if template["metadata"]["annotations"]
        .as_object()
        .is_some_and(|a| a.is_empty())
        && let Some(m) = template["metadata"].as_object_mut()
    {
        m.remove("annotations");
    }
    let Some(spec) = template["spec"].as_object_mut() else {
        return Err(InjectError::Malformed {
            field: "spec".into(),
            expected: "an object",
        });
    };
    for list in ["initContainers", "containers"] {
        remove_where(spec, list, |c| {
            matches!(c["name"].as_str(), Some(SIDECAR | INIT))
        });
    }
    remove_where(spec, "volumes", |v| {
        v["name"] == TOKEN_VOLUME || v["name"] == POD_FILES_VOLUME
    });
    let ours: Vec<String> = SIDECAR_PORTS
        .iter()
        .chain([cfg.admin_port].iter())
        .map(u16::to_string)
        .collect();
    if let Some(sc) = spec
        .get_mut("securityContext")
        .and_then(Value::as_object_mut)
    {
        if let Some(Value::Array(sysctls)) = sc.get_mut("sysctls") {
            sysctls.retain(|s| !(s["name"] == PING_GROUP_RANGE && s["value"] == "0 2147483647"));
            for s in sysctls.iter_mut() {
                if s["name"] == RESERVED_PORTS {
                    let kept: Vec<&str> = s["value"]
                        .as_str()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty() && !ours.iter().any(|o| o == p))
                        .collect();
                    s["value"] = Value::from(kept.join(","));
                }
            }
            sysctls.retain(|s| !(s["name"] == RESERVED_PORTS && s["value"] == ""));
            if sysctls.is_empty() {
                sc.remove("sysctls");
            }
        }
        if sc.is_empty() {
            spec.remove("securityContext");
        }
    }
    Ok(Uninjected::Removed)
}

fn remove_where(
    spec: &mut serde_json::Map<String, Value>,
    list: &str,
    podwalls: impl Fn(&Value) -> bool,
) {
    if let Some(Value::Array(items)) = spec.get_mut(list) {
        items.retain(|i| !podwalls(i));
        if items.is_empty() && list != "containers" {
            spec.remove(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::inject_object;
    use serde_json::json;

    #[test]
    fn uninjecting_an_injected_workload_gives_back_the_original() {
        let cfg = InjectConfig::default();
        let original = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"podwall.io/threads": "2"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "tool",
                    "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}],
                "containers": [{"name": "app", "image": "nginx",
                    "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_reserved_ports", "value": "8000"}]}
            }}}});
        let mut doc = original.clone();
        assert_eq!(
            inject_object(&mut doc, &cfg),
            Ok(crate::inject::Outcome::Injected)
        );
        assert_ne!(doc, original);
        let mut kept = doc.clone();
        assert_eq!(
            uninject_object(&mut doc, &cfg, false),
            Ok(Uninjected::Removed)
        );
        assert_eq!(doc, original);
        assert_eq!(
            uninject_object(&mut doc, &cfg, false),
            Ok(Uninjected::NotInjected)
        );
        let mut cm = json!({"kind": "ConfigMap", "metadata": {"name": "x"}});
        assert_eq!(
            uninject_object(&mut cm, &cfg, false),
            Ok(Uninjected::NoTemplate)
        );
        // Kept for the webhook: the request stays, the rest goes.
        uninject_object(&mut kept, &cfg, true).expect("uninjects");
        let annotations = &kept["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["podwall.io/inject"], "enabled");
        assert!(annotations.get("podwall.io/status").is_none());
    }

    #[test]
    fn a_bare_pod_loses_every_trace_but_its_net_raw_drop() {
        let cfg = InjectConfig::default();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        inject_object(&mut pod, &cfg).expect("injects");
        uninject_object(&mut pod, &cfg, false).expect("uninjects");
        assert_eq!(
            pod,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "app", "image": "nginx",
                    "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}]}})
        );
    }
}

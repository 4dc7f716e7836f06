//! The PodwallPolicy CustomResourceDefinition, its OpenAPI schema generated from the Rust types
//! the loader reads (so the schema and the code cannot disagree).

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::cilium::Spec;

/// The schema of a spec, made structural as Kubernetes requires: subschemas inlined, and fields
/// of any shape marked `x-kubernetes-preserve-unknown-fields`.
fn spec_schema() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings.into_generator().into_root_schema_for::<Spec>();
    let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("title");
        m.remove("$defs");
        m.remove("definitions");
    }
    structural(&mut v);
    v
}

fn structural(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for key in ["properties", "items", "additionalProperties"] {
                match m.get_mut(key) {
                    Some(Value::Object(props)) if key == "properties" => {
                        for p in props.values_mut() {
                            structural(p);
                        }
                    }
                    Some(sub @ Value::Object(_)) => structural(sub),
                    Some(Value::Bool(true)) if key == "items" => {
                        m.insert(
                            key.into(),
                            json!({"x-kubernetes-preserve-unknown-fields": true}),
                        );
                    }
                    _ => {}
                }
            }
            let typed = m.contains_key("type")
                || m.contains_key("x-kubernetes-int-or-string")
                || m.contains_key("x-kubernetes-preserve-unknown-fields");
            if !typed {
                m.insert(
                    "x-kubernetes-preserve-unknown-fields".into(),
                    Value::Bool(true),
                );
            }
        }
        Value::Bool(true) => {
            *v = json!({"x-kubernetes-preserve-unknown-fields": true});
        }
        _ => {}
    }
}

/// What the control plane writes in `status`: whether the policy is valid (and if not, the
/// field and why), how many pods it selects and how many of those enforce it.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "Written by podwall's control plane.",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "selectedPods": {"type": "integer", "description": "Pods the policy selects."},
            "enforcingPods": {"type": "integer", "description": "Selected pods that run the podwall sidecar (the policy is enforced for them)."},
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": {"type": "string", "description": "Valid or Enforced."},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                        "observedGeneration": {"type": "integer", "format": "int64"}
                    }
                }
            }
        }
    })
}

/// The CustomResourceDefinition of `podwall.io/v1alpha1` PodwallPolicy.
pub fn podwall_policy_crd() -> Value {
    let spec = spec_schema();
    let mut properties = Map::new();
    properties.insert("spec".into(), spec.clone());
    properties.insert(
        "specs".into(),
        json!({"type": "array", "description": "Several specs in one object, each applied on its own.", "items": spec}),
    );
    properties.insert("status".into(), status_schema());
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "podwallpolicies.podwall.io",
            "annotations": {"podwall.io/generated-by": "podwall crd (from the Rust types; do not edit)"}
        },
        "spec": {
            "group": "podwall.io",
            "names": {
                "kind": "PodwallPolicy",
                "listKind": "PodwallPolicyList",
                "plural": "podwallpolicies",
                "singular": "podwallpolicy",
                "shortNames": ["pwp"]
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                // The control plane writes status (one writer among its replicas).
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"},
                    {"name": "Selected", "type": "integer", "jsonPath": ".status.selectedPods", "description": "Pods the policy selects"},
                    {"name": "Enforcing", "type": "integer", "jsonPath": ".status.enforcingPods", "description": "Selected pods that run the podwall sidecar"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {"name": "Reason", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Valid\")].message"}
                ],
                "schema": {"openAPIV3Schema": {
                    "description": "PodwallPolicy: CiliumNetworkPolicy's shape, enforced by podwall's sidecar. Its allows join the NetworkPolicy union.",
                    "type": "object",
                    "properties": Value::Object(properties)
                }}
            }]
        }
    })
}

/// The CRD as YAML, as written to `helm/podwall/crds/`.
pub fn podwall_policy_crd_yaml() -> String {
    let body = serde_saphyr::to_string(&podwall_policy_crd()).unwrap_or_default();
    format!("# Generated by `podwall crd` from the Rust types; do not edit by hand.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Map<String, Value>)>) {
        if let Value::Object(m) = v {
            out.push((path.clone(), m));
            if let Some(Value::Object(props)) = m.get("properties") {
                for (k, p) in props {
                    walk(p, format!("{path}.{k}"), out);
                }
            }
            if let Some(items) = m.get("items") {
                walk(items, format!("{path}[]"), out);
            }
            if let Some(add) = m.get("additionalProperties") {
                walk(add, format!("{path}{{}}"), out);
            }
        }
    }

    #[test]
    fn the_schema_is_structural_every_node_has_a_type_or_is_marked() {
        let crd = podwall_policy_crd();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut nodes = Vec::new();
        walk(root, "".into(), &mut nodes);
        assert!(nodes.len() > 40, "the schema describes the fields");
        for (path, m) in nodes {
            assert!(
                !m.contains_key("$ref"),
                "{path}: $ref is not allowed in a CRD"
            );
            assert!(
                m.contains_key("type")
                    || m.contains_key("x-kubernetes-int-or-string")
                    || m.contains_key("x-kubernetes-preserve-unknown-fields"),
                "{path} has no type: {m:?}"
            );
        }
        let spec = &root["properties"]["spec"]["properties"];
        assert_eq!(
            spec["ingress"]["items"]["properties"]["toPorts"]["items"]["properties"]["rules"]["properties"]
                ["http"]["items"]["properties"]["path"]["type"],
            "string"
        );
        assert_eq!(
            spec["endpointSelector"]["properties"]["matchLabels"]["additionalProperties"]["type"],
            "string"
        );
        assert_eq!(
            spec["ingress"]["items"]["properties"]["toPorts"]["items"]["properties"]["ports"]["items"]
                ["properties"]["port"]["x-kubernetes-int-or-string"],
            true
        );
    }

    #[test]
    fn the_yaml_reads_back_as_the_same_crd() {
        let yaml = podwall_policy_crd_yaml();
        let back: Value = serde_saphyr::from_str(&yaml).expect("yaml");
        assert_eq!(back, podwall_policy_crd());
    }
}

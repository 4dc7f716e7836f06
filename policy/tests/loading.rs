//! Reading cluster state: multi-document YAML, `kind: List`, API-server `*List` JSON, kinds that
//! are skipped and counted, and what the API server would have filled in.

mod common;

use common::load;
use podwall_policy::{Loader, NAMESPACE_NAME_LABEL, Protocol};

#[test]
fn multi_document_files_with_empty_documents_load_every_object() {
    let text = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n...\n";
    let (state, report) = load(&[text]);
    let names: Vec<&str> = state.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
}

#[test]
fn kubectl_get_list_output_is_read_item_by_item() {
    // The shape `kubectl get ns,pods,netpol -A -o yaml` prints.
    let text = r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    labels: {kubernetes.io/metadata.name: shop, env: prod}
    name: shop
  spec: {finalizers: [kubernetes]}
  status: {phase: Active}
- apiVersion: v1
  kind: Pod
  metadata:
    labels: {app: web, pod-template-hash: 5d4f}
    name: web-5d4f-abcde
    namespace: shop
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f, uid: x}]
  spec:
    containers:
    - image: nginx:1.27
      name: nginx
      ports: [{containerPort: 80, name: http, protocol: TCP}]
    nodeName: node-1
  status:
    hostIP: 192.168.1.1
    hostIPs: [{ip: 192.168.1.1}]
    phase: Running
    podIP: 10.244.1.7
    podIPs: [{ip: 10.244.1.7}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web, namespace: shop, generation: 1}
  spec:
    podSelector: {matchLabels: {app: web}}
    policyTypes: [Ingress]
kind: List
metadata: {resourceVersion: ""}
"#;
    let (state, report) = load(&[text]);
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    assert_eq!(state.namespaces.len(), 1);
    assert_eq!(state.pods.len(), 1);
    assert_eq!(state.policies.len(), 1);
    let pod = &state.pods[0];
    assert_eq!(pod.key(), "shop/web-5d4f-abcde");
    assert_eq!(
        pod.ips,
        ["10.244.1.7".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(pod.host_ips.len(), 1);
    assert_eq!(pod.named_port("http", Protocol::Tcp), Some(80));
    assert_eq!(pod.node_name.as_deref(), Some("node-1"));
}

#[test]
fn api_server_list_objects_in_json_are_read() {
    let text = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "metadata": {},
      "items": [{"metadata": {"name": "a", "namespace": "x"}, "spec": {"podSelector": {}}, "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1"}]}"#;
    let (state, report) = load(&[text]);
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    assert_eq!(state.policies.len(), 1);
    assert_eq!(state.policies[0].origin.item, Some(0));
}

#[test]
fn other_kinds_are_skipped_and_counted_never_an_error() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: t}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let (_, report) = load(&[text]);
    assert!(report.diagnostics.is_empty());
    let counted: Vec<(&str, usize)> = report
        .skipped_kinds
        .iter()
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    assert_eq!(
        counted,
        [("ConfigMap", 1), ("Deployment", 1), ("Secret", 2)]
    );
}

#[test]
fn a_mis_cased_kind_podwall_reads_is_an_error_naming_the_kinds() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: Networkpolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n";
    let (state, report) = load(&[text]);
    assert!(state.policies.is_empty());
    assert!(
        report.skipped_kinds.is_empty(),
        "{:?}",
        report.skipped_kinds
    );
    let e = &report.diagnostics[0];
    assert!(report.has_errors());
    assert_eq!(e.code, "unknown-kind");
    assert_eq!(e.field.as_deref(), Some("kind"));
    assert!(
        e.message.contains("\"NetworkPolicy\"") && e.message.contains("PodwallPolicy"),
        "{e}"
    );
}

#[test]
fn an_unknown_networkpolicy_field_in_a_file_is_refused_as_kubectl_would() {
    // `ingres` for `ingress`: read leniently, the policy would isolate with no rule (deny all).
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: a}\nspec:\n  podSelector: {}\n  ingres:\n  - from: [{podSelector: {}}]\n";
    let (state, report) = load(&[text]);
    assert!(
        state.policies.is_empty(),
        "left out, as the API server refuses it"
    );
    let e = &report.diagnostics[0];
    assert_eq!(e.code, "unknown-field");
    assert_eq!(e.field.as_deref(), Some("spec.ingres"));
    assert!(report.has_errors());
    // From a store the API server fed (no line), a field of a newer API is a warning.
    let mut loader = Loader::new();
    let value: serde_json::Value = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "a"},
        "spec": {"podSelector": {}, "futureField": true}
    });
    loader.add_object(
        podwall_policy::Origin {
            source: "store".into(),
            line: 0,
            item: None,
        },
        value,
    );
    let (state, report) = loader.finish();
    assert_eq!(state.policies.len(), 1);
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    assert_eq!(report.diagnostics[0].code, "unknown-field");
}

#[test]
fn every_namespace_carries_its_name_label_even_when_only_referenced() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: other}\n";
    let (state, _) = load(&[text]);
    let shop = state.namespace("shop").expect("shop");
    assert_eq!(
        shop.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("shop")
    );
    assert_eq!(shop.labels.get("env").map(String::as_str), Some("prod"));
    assert!(!shop.implicit);
    let other = state.namespace("other").expect("implicit namespace");
    assert!(other.implicit);
    assert_eq!(
        other.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("other")
    );
}

#[test]
fn objects_without_a_namespace_are_in_default() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: netpol}\nspec: {}\n";
    let (state, _) = load(&[text]);
    assert_eq!(state.pods[0].namespace, "default");
    assert_eq!(state.policies[0].name.namespace, "default");
}

#[test]
fn finished_pods_are_left_out() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: job}\nstatus: {phase: Succeeded, podIP: 10.0.0.9}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: crashed}\nstatus: {phase: Failed}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: pending}\nstatus: {phase: Pending}\n";
    let (state, report) = load(&[text]);
    assert_eq!(state.pods.len(), 1);
    assert_eq!(report.finished_pods, 2);
}

#[test]
fn native_sidecar_ports_count_as_pod_ports() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  initContainers:\n  - {name: proxy, restartPolicy: Always, ports: [{containerPort: 15020, name: admin}]}\n  - {name: setup, ports: [{containerPort: 1, name: ignored}]}\n  containers: [{name: app}]\n";
    let (state, _) = load(&[text]);
    assert_eq!(
        state.pods[0].named_port("admin", Protocol::Tcp),
        Some(15020)
    );
    assert_eq!(state.pods[0].named_port("ignored", Protocol::Tcp), None);
}

#[test]
fn a_bad_pod_address_is_a_warning_and_the_pod_still_loads() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.300}\n";
    let (state, report) = load(&[text]);
    assert_eq!(state.pods.len(), 1);
    assert!(state.pods[0].ips.is_empty());
    assert_eq!(report.diagnostics[0].field.as_deref(), Some("status.podIP"));
}

#[test]
fn a_later_definition_replaces_an_earlier_one_with_a_warning() {
    let a = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {v: '1'}}\n";
    let b = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {v: '2'}}\n";
    let (state, report) = load(&[a, b]);
    assert_eq!(state.pods.len(), 1);
    assert_eq!(state.pods[0].labels.get("v").map(String::as_str), Some("2"));
    assert_eq!(report.diagnostics[0].code, "duplicate-object");
    assert!(
        report.diagnostics[0].message.contains("test-0.yaml"),
        "{}",
        report.diagnostics[0]
    );
}

#[test]
fn a_document_that_is_not_an_object_is_reported() {
    let (_, report) = load(&["- just\n- a list\n"]);
    assert_eq!(report.diagnostics[0].code, "not-an-object");
    let (_, report) = load(&["metadata: {name: x}\n"]);
    assert_eq!(report.diagnostics[0].field.as_deref(), Some("kind"));
}

#[test]
fn text_that_is_not_yaml_fails_naming_the_source() {
    let mut loader = Loader::new();
    let err = loader
        .add_yaml("broken.yaml", "kind: [unclosed\n")
        .expect_err("not YAML");
    assert!(
        err.to_string().starts_with("broken.yaml: not valid YAML"),
        "{err}"
    );
}

#[test]
fn input_order_does_not_change_the_state() {
    let a = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: other}\n";
    let b = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: z, namespace: x}\nspec: {}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {}\n";
    let load_named = |files: &[(&str, &str)]| {
        let mut loader = Loader::new();
        for (name, text) in files {
            loader.add_yaml(name, text).expect("yaml");
        }
        loader.finish().0
    };
    assert_eq!(
        load_named(&[("a.yaml", a), ("b.yaml", b)]),
        load_named(&[("b.yaml", b), ("a.yaml", a)])
    );
}

#[test]
fn origins_give_the_line_where_each_document_starts() {
    let text = "# header\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n--- {apiVersion: v1, kind: Pod, metadata: {name: c}}\n";
    let (state, _) = load(&[text]);
    let lines: Vec<(String, usize)> = state
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.origin.line))
        .collect();
    assert_eq!(lines, [("a".into(), 1), ("b".into(), 6), ("c".into(), 10)]);
    assert_eq!(state.pods[1].origin.to_string(), "test-0.yaml:6");
}

#[test]
fn syntax_errors_give_the_line_in_the_whole_file() {
    let mut loader = Loader::new();
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: [Pod\n";
    let err = loader.add_yaml("f.yaml", text).expect_err("not YAML");
    assert!(err.to_string().contains("line 6"), "{err}");
    assert!(
        loader.finish().0.pods.is_empty(),
        "a file that is not YAML adds nothing"
    );
}

#[test]
fn a_long_lived_loader_follows_removals_and_new_versions_like_a_fresh_one() {
    let first = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, labels: {app: a}}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\nspec: {clusterIP: 10.96.0.1, selector: {app: a}, ports: [{port: 80}]}\n";
    let relabelled = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, labels: {app: b}}\nstatus: {podIP: 10.0.0.1}\n";
    let mut live = Loader::new();
    live.add_yaml("first", first).expect("yaml");
    let (before, _) = live.state();
    assert_eq!(before.policies.len(), 1);
    assert_eq!(before.services.len(), 1);
    live.remove("Pod", "shop", "p");
    live.add_yaml("update", relabelled).expect("yaml");
    live.remove("NetworkPolicy", "shop", "deny");
    let (after, report) = live.state();
    assert!(
        report.diagnostics.is_empty(),
        "no duplicate warnings: {:#?}",
        report.diagnostics
    );

    let mut fresh = Loader::new();
    fresh.add_yaml("first", first).expect("yaml");
    fresh.remove("NetworkPolicy", "shop", "deny");
    fresh.remove("Pod", "shop", "p");
    fresh.add_yaml("update", relabelled).expect("yaml");
    let (expected, _) = fresh.finish();
    assert_eq!(after.pods, expected.pods);
    assert_eq!(after.policies, expected.policies);
    assert!(after.policies.is_empty());
    assert_eq!(after.pods[0].labels["app"], "b");
    assert!(
        after.services.ports().all(|p| p.backends.is_empty()),
        "the service's selector no longer matches the relabelled pod"
    );
}

//! `podwall inject` against every workload kind, as operators pipe it into `kubectl apply`.

use serde_json::Value;
use support::podwall;

mod support;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inject");
/// A CA certificate (its key was thrown away): what the chart's Secret holds.
const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inject/ca.crt");

fn docs(yaml: &str) -> Vec<Value> {
    podwall_policy::documents("out", yaml)
        .expect("the output is YAML")
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
        .collect()
}

fn template(doc: &Value) -> &Value {
    let pointer = match doc["kind"].as_str() {
        Some("Pod") => "",
        Some("CronJob") => "/spec/jobTemplate/spec/template",
        _ => "/spec/template",
    };
    doc.pointer(pointer).expect("a pod template")
}

fn container_names(spec: &Value, list: &str) -> Vec<String> {
    spec[list]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_workload_kind_gets_the_sidecar_and_the_output_is_stable_under_reinjection() {
    let file = format!("{FIXTURES}/workloads.yaml");
    let (code, out, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", &file], None);
    assert_eq!(code, 0, "{err}");
    let out_docs = docs(&out);
    let in_docs = docs(&std::fs::read_to_string(&file).expect("fixture"));
    assert_eq!(out_docs.len(), in_docs.len(), "nothing lost or added");
    let mut injected = Vec::new();
    for (doc, original) in out_docs.iter().zip(&in_docs) {
        let name = doc["metadata"]["name"].as_str().expect("name");
        match (doc["kind"].as_str().expect("kind"), name) {
            ("Service", _) => assert_eq!(doc, original, "non-workloads pass unchanged"),
            (_, "node-exporter" | "legacy") => {
                assert_eq!(doc, original, "{name}: left alone");
                assert!(err.contains(&format!("{name}: not injected")), "{err}");
            }
            (kind, _) => {
                let t = template(doc);
                let inits = container_names(&t["spec"], "initContainers");
                assert_eq!(
                    inits[..2],
                    ["podwall-init", "podwall-proxy"],
                    "{kind} {name}"
                );
                assert_eq!(
                    container_names(&t["spec"], "containers"),
                    container_names(&template(original)["spec"], "containers"),
                    "{kind} {name}: the app's containers are untouched"
                );
                assert_eq!(
                    t["metadata"]["annotations"]["podwall.io/status"],
                    "injected"
                );
                if name == "db" {
                    assert_eq!(
                        inits[2], "init-schema",
                        "the app's init containers run after"
                    );
                }
                injected.push(kind.to_string());
            }
        }
    }
    injected.sort();
    assert_eq!(
        injected,
        [
            "CronJob",
            "DaemonSet",
            "Deployment",
            "Job",
            "Pod",
            "StatefulSet"
        ]
    );
    // Injecting the output again changes nothing.
    let (code, again, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", "-"], Some(&out));
    assert_eq!(code, 0, "{err}");
    assert_eq!(docs(&again), out_docs);
}

#[test]
fn a_workload_that_would_defeat_enforcement_fails_the_whole_run_with_the_reason() {
    let file = format!("{FIXTURES}/refused.yaml");
    let (code, out, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", &file], None);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing half-applied: {out}");
    assert!(
        err.contains("Deployment vpn: container \"wireguard\" has the NET_ADMIN capability"),
        "{err}"
    );
}

#[test]
fn without_native_sidecars_the_proxy_joins_the_containers_with_the_configured_image() {
    let file = format!("{FIXTURES}/workloads.yaml");
    let (code, out, err) = podwall(
        &[
            "inject",
            "--control-plane-ca",
            CA,
            "-f",
            &file,
            "--no-native-sidecar",
            "--image",
            "registry.local/podwall:dev",
            "--control-plane",
            "podwall.example:15010",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let web = docs(&out)
        .into_iter()
        .find(|d| d["metadata"]["name"] == "web" && d["kind"] == "Deployment")
        .expect("web");
    let spec = &template(&web)["spec"];
    assert_eq!(
        container_names(spec, "containers"),
        ["app", "podwall-proxy"]
    );
    assert_eq!(container_names(spec, "initContainers"), ["podwall-init"]);
    assert_eq!(spec["containers"][1]["image"], "registry.local/podwall:dev");
    assert!(
        spec["containers"][1]["args"]
            .as_array()
            .expect("args")
            .contains(&Value::from(
                "--policy-source=control:podwall.example:15010"
            ))
    );
}

#[test]
fn without_the_feeds_ca_nothing_is_injected_and_the_error_says_where_to_get_it() {
    let file = format!("{FIXTURES}/workloads.yaml");
    let (code, out, err) = podwall(&["inject", "-f", &file], None);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("--control-plane-ca"), "{err}");
    assert!(err.contains("podwall-webhook-tls"), "{err}");
    // The CA reaches the sidecar.
    let (code, out, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", &file], None);
    assert_eq!(code, 0, "{err}");
    let ca = std::fs::read_to_string(CA).expect("ca");
    let web = docs(&out)
        .into_iter()
        .find(|d| d["metadata"]["name"] == "web" && d["kind"] == "Deployment")
        .expect("web");
    let sidecar = &template(&web)["spec"]["initContainers"][1];
    assert!(
        sidecar["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "PODWALL_CONTROL_CA" && e["value"] == ca.as_str()),
        "{sidecar}"
    );
    assert_eq!(
        template(&web)["metadata"]["annotations"]["podwall.io/inject"],
        "enabled"
    );
}

#[test]
fn a_pod_spec_of_the_wrong_shape_is_refused_and_jobs_without_native_sidecars_are_warned_about() {
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: nginx\n";
    let (code, out, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", "-"], Some(bad));
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("spec.containers must be a list"), "{err}");
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: once}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: app, image: busybox}]\n";
    let (code, _, err) = podwall(
        &[
            "inject",
            "--control-plane-ca",
            CA,
            "--no-native-sidecar",
            "-f",
            "-",
        ],
        Some(job),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Job once: with --no-native-sidecar its pods never complete"),
        "{err}"
    );
    let (_, _, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", "-"], Some(job));
    assert!(!err.contains("never complete"), "{err}");
}

/// A document with NET_RAW taken out of every `drop` list and empty objects and lists pruned:
/// what uninjection cannot give back (injection's drop is not told from the app's).
fn without_net_raw_drops(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("drop", Value::Array(a)) => {
                            Value::Array(a.iter().filter(|c| *c != "NET_RAW").cloned().collect())
                        }
                        _ => v.clone(),
                    };
                    (k.clone(), without_net_raw_drops(&v))
                })
                .filter(|(_, v)| {
                    !(v.as_object().is_some_and(|o| o.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty()))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_net_raw_drops).collect()),
        other => other.clone(),
    }
}

#[test]
fn uninject_gives_back_the_workloads_as_they_were_before_injection() {
    let file = format!("{FIXTURES}/workloads.yaml");
    let (code, injected, err) = podwall(&["inject", "--control-plane-ca", CA, "-f", &file], None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = podwall(&["uninject", "-f", "-"], Some(&injected));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Deployment web: podwall removed"), "{err}");
    let original = docs(&std::fs::read_to_string(&file).expect("fixture"));
    let back = docs(&out);
    assert_eq!(back.len(), original.len());
    for (b, o) in back.iter().zip(&original) {
        assert_eq!(without_net_raw_drops(b), without_net_raw_drops(o));
    }
    assert!(
        !out.contains("podwall-proxy") && !out.contains("podwall.io/status"),
        "{out}"
    );
    // Twice is once.
    let (code, again, _) = podwall(&["uninject", "-f", "-"], Some(&out));
    assert_eq!(code, 0);
    assert_eq!(docs(&again), back);
}

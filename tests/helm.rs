//! The Helm chart: Helm's own linter (helm v4 from the helm-sdkpy wheel) passes, and fails on a
//! broken copy; the chart's templates agree with the code (webhook path, injection config
//! fields, the kinds the control plane watches and the RBAC that lets it, the CRD).

use std::path::{Path, PathBuf};
use std::process::Command;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/podwall");

fn lint(chart: &Path) -> Option<(i32, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/lint.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(chart)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    if code == 2 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "helm-sdkpy is required in CI: {text}"
        );
        eprintln!("skipped: {text}");
        return None;
    }
    Some((code, text))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn the_chart_lints_clean_and_a_broken_copy_does_not() {
    let Some((code, out)) = lint(Path::new(CHART)) else {
        return;
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lint clean"), "{out}");

    // A typo in values (caught by values.schema.json) and a template error (caught by
    // rendering) must both fail.
    for (file, from, to) in [
        (
            "values.yaml",
            "  failurePolicy: Fail",
            "  failurPolicy: Fail",
        ),
        (
            "templates/service.yaml",
            "targetPort: feed",
            "targetPort: {{ .Values.nothing.here }}",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy: PathBuf = dir.path().join("podwall");
        copy_dir(Path::new(CHART), &copy);
        let path = copy.join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{file} has {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
        let (code, out) = lint(&copy).expect("linted");
        assert_eq!(code, 1, "{file}: {out}");
        assert!(out.contains("ERROR"), "{out}");
    }
}

fn template(name: &str) -> String {
    std::fs::read_to_string(Path::new(CHART).join("templates").join(name)).expect("template")
}

#[test]
fn the_webhook_calls_the_path_the_control_plane_serves_on_the_port_it_listens() {
    let webhook = template("webhook.yaml");
    assert!(
        webhook.contains(&format!("path: {}", podwall_control::webhook::INJECT_PATH)),
        "{webhook}"
    );
    assert!(webhook.contains("admissionReviewVersions: [v1]"));
    assert!(webhook.contains("resources: [pods]") && webhook.contains("operations: [CREATE]"));
    let deployment = template("deployment.yaml");
    for arg in [
        "--source=kube",
        "--token-review",
        "--webhook-listen=0.0.0.0:{{ .Values.controlPlane.webhookPort }}",
        "--inject-config=/etc/podwall/inject/inject.yaml",
    ] {
        assert!(deployment.contains(arg), "{arg} in {deployment}");
    }
    assert!(template("service.yaml").contains("targetPort: webhook"));
}

#[test]
fn the_injection_config_names_only_fields_the_code_reads() {
    let defaults =
        serde_json::to_value(podwall_control::inject::InjectConfig::default()).expect("serialises");
    let known: Vec<&str> = defaults
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let configmap = template("configmap.yaml");
    let body = configmap
        .split("inject.yaml: |")
        .nth(1)
        .expect("the inject.yaml key");
    let mut fields = Vec::new();
    for line in body.lines() {
        let line = line.trim_start();
        if line.starts_with("{{") || line.is_empty() {
            continue;
        }
        let field = line.split(':').next().expect("a field");
        assert!(
            known.contains(&field),
            "{field} is not an InjectConfig field ({known:?})"
        );
        fields.push(field.to_string());
    }
    for needed in ["image", "controlPlane", "proxyUid", "adminPort"] {
        assert!(fields.iter().any(|f| f == needed), "{needed} is set");
    }
}

#[test]
fn rbac_lets_the_control_plane_list_and_watch_every_kind_it_watches_and_nothing_more() {
    let rbac = template("rbac.yaml");
    let rules: Vec<(String, String, String)> = rbac
        .split("  - apiGroups: ")
        .skip(1)
        .map(|rule| {
            let mut lines = rule.lines();
            let groups = lines.next().expect("groups").to_string();
            let resources = lines
                .next()
                .expect("resources")
                .trim()
                .trim_start_matches("resources: ")
                .to_string();
            let verbs = lines
                .next()
                .expect("verbs")
                .trim()
                .trim_start_matches("verbs: ")
                .to_string();
            (groups, resources, verbs)
        })
        .collect();
    for kind in podwall_control::source::kube::watched_kinds() {
        let group = if kind.resource.group.is_empty() {
            "[\"\"]".to_string()
        } else {
            format!("[{}]", kind.resource.group)
        };
        assert!(
            rules.iter().any(|(g, r, v)| *g == group
                && r.contains(kind.resource.plural.as_str())
                && v == "[list, watch]"),
            "{group} {} is listed and watched: {rules:?}",
            kind.resource.plural
        );
    }
    assert!(rules.iter().any(|(g, r, v)| g == "[authentication.k8s.io]"
        && r == "[tokenreviews]"
        && v == "[create]"));
    assert!(
        !rbac.contains("update") && !rbac.contains("patch") && !rbac.contains("delete"),
        "it writes nothing"
    );
}

//! The Helm chart: Helm's own linter (helm v4 from the helm-sdkpy wheel) passes, and fails on a
//! broken copy; the chart as `helm install` renders it (sent to an in-process API server by
//! helm/render.py) is what the code expects: webhook path and port, Service name, TLS wiring,
//! the injection config the control plane reads, RBAC for every watched kind, the CRD.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

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

/// The chart as `helm install` sends it to an API server (helm/render.py), by kind and name.
fn rendered() -> Option<Vec<Value>> {
    rendered_with(None)
}

/// The chart as installed with `--set-json VALUES`.
fn rendered_with(values: Option<Value>) -> Option<Vec<Value>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/render.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(CHART).arg("podwall-system");
    if let Some(v) = values {
        cmd.arg("--set-json").arg(v.to_string());
    }
    let out = cmd.output().expect("python3");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => {}
        Some(2) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "helm-sdkpy is required in CI: {err}"
            );
            eprintln!("skipped: {err}");
            return None;
        }
        _ => panic!("helm install against the fake API server failed: {err}"),
    }
    Some(serde_json::from_slice(&out.stdout).expect("a JSON list of objects"))
}

/// One entry of the MutatingWebhookConfiguration, by name.
fn entry<'a>(webhook: &'a Value, name: &str) -> &'a Value {
    webhook["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no webhook entry {name}: {webhook}"))
}

/// What a webhook entry asks of the namespace label podwall.io/inject.
fn label_expression(hook: &Value) -> Value {
    hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .expect("matchExpressions")
        .iter()
        .find(|e| e["key"] == "podwall.io/inject")
        .cloned()
        .unwrap_or(Value::Null)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn the_rendered_chart_is_what_the_code_expects() {
    let Some(objects) = rendered() else {
        return;
    };
    let ns = "podwall-system";
    let service = find(&objects, "Service");
    let deployment = find(&objects, "Deployment");
    let webhook = find(&objects, "MutatingWebhookConfiguration");
    let configmap = find(&objects, "ConfigMap");
    let certificate = objects
        .iter()
        .find(|o| {
            o["kind"] == "Certificate"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-webhook"))
        })
        .expect("the serving Certificate");
    // Signed by a long-lived CA of its own, so renewals keep what injected sidecars trust.
    let ca = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["spec"]["isCA"] == true)
        .expect("the CA Certificate");
    let ca_issuer = objects
        .iter()
        .find(|o| {
            o["kind"] == "Issuer" && o["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
        })
        .expect("an Issuer of that CA");
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        ca_issuer["metadata"]["name"]
    );
    let crd = find(&objects, "CustomResourceDefinition");
    let service_name = service["metadata"]["name"].as_str().expect("name");

    // The webhook calls the control plane's Service on the path it serves, and the Service's
    // port leads to the container port the control plane listens on for it.
    let hook = entry(webhook, "inject.podwall.io");
    let target = &hook["clientConfig"]["service"];
    assert_eq!(target["name"], service_name);
    assert_eq!(target["namespace"], ns);
    assert_eq!(target["path"], podwall_control::webhook::INJECT_PATH);
    let port = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == target["port"])
        .expect("the webhook's Service port");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let container_port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service's target port");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(
            &format!(
                "--webhook-listen=0.0.0.0:{}",
                container_port["containerPort"]
            )
            .as_str()
        ),
        "{args:?}"
    );
    // The feed is served over TLS with the certificate's files, and sidecars get its CA.
    for arg in [
        "--feed-cert=/etc/podwall/webhook/tls.crt",
        "--feed-key=/etc/podwall/webhook/tls.key",
        "--feed-ca=/etc/podwall/webhook/ca.crt",
    ] {
        assert!(args.contains(&arg), "{arg}: {args:?}");
    }
    // Each probe speaks what its port serves: the feed port is TLS when --feed-cert is given,
    // the webhook port always.
    let feed_tls = args.iter().any(|a| a.starts_with("--feed-cert="));
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(get) = container[probe].get("httpGet") else {
            continue;
        };
        let port = get["port"].as_str().expect("a named port");
        let tls = match port {
            "feed" => feed_tls,
            "webhook" => true,
            other => panic!("{probe} on port {other}, which nothing here serves"),
        };
        let scheme = get["scheme"].as_str().unwrap_or("HTTP");
        assert_eq!(
            scheme,
            if tls { "HTTPS" } else { "HTTP" },
            "{probe} on {port}"
        );
    }
    assert!(container["readinessProbe"]["httpGet"].is_object());
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(hook["rules"][0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(
        hook["rules"][0]["operations"],
        serde_json::json!(["CREATE"])
    );
    // Running pods: updates and kubectl debug, with a failure policy of their own.
    let guard = entry(webhook, "guard.podwall.io");
    assert_eq!(
        guard["rules"][0]["resources"],
        serde_json::json!(["pods", "pods/ephemeralcontainers"])
    );
    assert_eq!(
        guard["rules"][0]["operations"],
        serde_json::json!(["UPDATE"])
    );
    assert_eq!(guard["failurePolicy"], "Fail");
    assert_eq!(hook["failurePolicy"], "Fail");
    for name in [
        "inject.podwall.io",
        "namespace.inject.podwall.io",
        "required.inject.podwall.io",
        "guard.podwall.io",
    ] {
        assert!(
            entry(webhook, name)["namespaceSelector"]["matchExpressions"][0]["values"]
                .as_array()
                .expect("values")
                .contains(&Value::from(ns)),
            "{name}: the control plane's own namespace is never covered"
        );
    }
    // Namespaces labelled podwall.io/inject=enabled go to the path that injects every pod;
    // the others only by annotation; the guard sees both, and neither sees `disabled` ones.
    let namespace_hook = entry(webhook, "namespace.inject.podwall.io");
    assert_eq!(
        namespace_hook["clientConfig"]["service"]["path"],
        podwall_control::webhook::NAMESPACE_INJECT_PATH
    );
    assert_eq!(
        label_expression(namespace_hook),
        serde_json::json!({"key": "podwall.io/inject", "operator": "In", "values": ["enabled"]})
    );
    assert_eq!(
        label_expression(hook),
        serde_json::json!({"key": "podwall.io/inject", "operator": "NotIn", "values": ["enabled", "required", "disabled"]}),
        "a namespace labelled anything else (true, Enabled) is covered by annotation, not left out"
    );
    let required = entry(webhook, "required.inject.podwall.io");
    assert_eq!(
        required["clientConfig"]["service"]["path"],
        podwall_control::webhook::REQUIRED_INJECT_PATH
    );
    assert_eq!(
        label_expression(required),
        serde_json::json!({"key": "podwall.io/inject", "operator": "In", "values": ["required"]})
    );
    assert_eq!(
        label_expression(guard),
        serde_json::json!({"key": "podwall.io/inject", "operator": "NotIn", "values": ["disabled"]})
    );
    // TLS: the webhook's CA comes from the Certificate whose Secret the Deployment mounts, for
    // the Service's DNS name.
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "{ns}/{}",
            certificate["metadata"]["name"].as_str().expect("name")
        )
    );
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .expect("dnsNames")
            .contains(&Value::from(format!("{service_name}.{ns}.svc")))
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == certificate["spec"]["secretName"]),
        "{volumes:?}"
    );

    // The injection config is one the control plane reads (unknown fields are refused), and it
    // sends sidecars to the Service's feed port.
    let inject: podwall_control::inject::InjectConfig = serde_saphyr::from_str(
        configmap["data"]["inject.yaml"]
            .as_str()
            .expect("inject.yaml"),
    )
    .expect("the control plane reads the injection config");
    let feed = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "feed")
        .expect("feed port");
    assert_eq!(
        inject.control_plane,
        format!("{service_name}.{ns}.svc:{}", feed["port"])
    );
    assert_eq!(inject.proxy_uid, 1337);
    // `podwall inject` without --config injects what the chart's webhook does, installed as
    // the docs say.
    let offline = podwall_control::inject::InjectConfig::default();
    assert_eq!(offline.control_plane, inject.control_plane);
    assert_eq!(offline.image, inject.image);

    // Hardening promised by the chart.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(objects.iter().any(|o| o["kind"] == "PodDisruptionBudget"));

    // The CRD is the one generated from the Rust types.
    let generated: Value = serde_saphyr::from_str(&podwall_policy::crd::podwall_policy_crd_yaml())
        .expect("the generated CRD");
    assert_eq!(crd["spec"], generated["spec"]);
    assert_eq!(crd["spec"]["group"], "podwall.io");
    assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");

    // RBAC: list and watch of every kind the control plane watches, TokenReview, no writes.
    let role = find(&objects, "ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    for kind in podwall_control::source::kube::watched_kinds() {
        assert!(
            rules.iter().any(|r| r["apiGroups"]
                .as_array()
                .is_some_and(|g| g.contains(&Value::from(kind.resource.group.as_str())))
                && r["resources"]
                    .as_array()
                    .is_some_and(|x| x.contains(&Value::from(kind.resource.plural.as_str())))
                && r["verbs"] == serde_json::json!(["list", "watch"])),
            "{} is listed and watched: {rules:?}",
            kind.resource.plural
        );
    }
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == serde_json::json!(["tokenreviews"])
                && r["verbs"] == serde_json::json!(["create"]))
    );
    // Cluster-wide it writes only feedback: TokenReviews, Events, PodwallPolicy status.
    for r in rules {
        let verbs: Vec<&str> = r["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let resources: Vec<&str> = r["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let allowed = verbs == ["list", "watch"]
            || (verbs == ["create"] && (resources == ["tokenreviews"] || resources == ["events"]))
            || (verbs == ["patch"] && resources == ["podwallpolicies/status"]);
        assert!(allowed, "{r}");
    }
    // In its namespace: its replicas' status and the leader Lease, which the code writes.
    let role = find(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], ns);
    let role_rules = role["rules"].to_string();
    assert!(
        role_rules.contains("configmaps") && role_rules.contains("leases"),
        "{role_rules}"
    );
    let role_binding = find(&objects, "RoleBinding");
    assert_eq!(
        role_binding["subjects"][0]["name"],
        pod["serviceAccountName"]
    );
    let env = container["env"].to_string();
    for name in ["POD_NAME", "POD_UID", "POD_NAMESPACE"] {
        assert!(env.contains(name), "{name}: {env}");
    }
    let binding = find(&objects, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"][0]["name"], pod["serviceAccountName"],
        "the role is bound to the control plane's service account"
    );
}

#[test]
fn scoped_to_labelled_namespaces_the_webhook_sees_no_other_pod() {
    let Some(objects) = rendered_with(Some(serde_json::json!({
        "webhook": {"scope": "labeledNamespaces"},
        "proxy": {"threads": 2, "fqdnMinTTL": "30s", "allowPodExclusions": false, "allowPodAudit": false},
        "controlPlane": {
            "imagePullSecrets": [{"name": "regcred"}],
            "affinity": {"nodeAffinity": {}},
            "podAnnotations": {"example.com/team": "platform"},
            "podLabels": {"team": "platform"},
        },
    }))) else {
        return;
    };
    let webhook = find(&objects, "MutatingWebhookConfiguration");
    let names: Vec<&str> = webhook["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "namespace.inject.podwall.io",
            "required.inject.podwall.io",
            "guard.podwall.io"
        ],
        "no entry covers unlabelled namespaces"
    );
    assert_eq!(
        label_expression(entry(webhook, "guard.podwall.io")),
        serde_json::json!({"key": "podwall.io/inject", "operator": "In", "values": ["enabled", "required"]})
    );
    let inject: podwall_control::inject::InjectConfig = serde_saphyr::from_str(
        find(&objects, "ConfigMap")["data"]["inject.yaml"]
            .as_str()
            .expect("inject.yaml"),
    )
    .expect("the control plane reads the injection config");
    assert_eq!(inject.threads, Some(2));
    assert_eq!(inject.fqdn_min_ttl.as_deref(), Some("30s"));
    assert!(!inject.allow_pod_exclusions);
    assert!(!inject.allow_pod_audit);
    let template = &find(&objects, "Deployment")["spec"]["template"];
    assert_eq!(
        template["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(
        template["spec"]["affinity"],
        serde_json::json!({"nodeAffinity": {}})
    );
    assert_eq!(
        template["metadata"]["annotations"]["example.com/team"],
        "platform"
    );
    assert_eq!(template["metadata"]["labels"]["team"], "platform");
}

/// Every series name the registries can produce: gauges as named, counters with `_total`,
/// histograms with `_bucket`, `_sum` and `_count`.
fn series_names(encoded: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in encoded.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The metric names a PromQL expression reads (identifiers followed by `{`, `[`, `)` or an
/// operator; label names and functions excluded).
fn metrics_in(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\b(podwall_[a-z_]+|container_[a-z_]+|up)\b").expect("regex");
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

#[test]
fn monitoring_is_off_by_default_and_on_scrapes_what_podwall_serves() {
    let Some(default) = rendered() else {
        return;
    };
    for kind in ["PodMonitor", "ServiceMonitor", "PrometheusRule"] {
        assert!(
            !default.iter().any(|o| o["kind"] == kind),
            "{kind} without the Prometheus Operator's kinds would fail the install"
        );
    }
    let Some(objects) = rendered_with(Some(serde_json::json!({"monitoring": {
        "podMonitor": {"enabled": true, "labels": {"release": "kps"}},
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true},
        "grafanaDashboard": {"enabled": true},
    }}))) else {
        return;
    };
    // The PodMonitor scrapes the port injection gives the sidecar.
    let mut pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
    podwall_control::inject::inject_object(&mut pod, &Default::default()).expect("injects");
    let sidecar_port = &pod["spec"]["initContainers"][1]["ports"][0];
    let pod_monitor = find(&objects, "PodMonitor");
    assert_eq!(pod_monitor["metadata"]["labels"]["release"], "kps");
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        sidecar_port["name"]
    );
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["any"], true);
    // The ServiceMonitor selects the control plane's Service and speaks TLS to its feed port,
    // verifying the name the certificate is for.
    let service = find(&objects, "Service");
    let service_monitor = find(&objects, "ServiceMonitor");
    for (k, v) in service_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "{k}");
    }
    let endpoint = &service_monitor["spec"]["endpoints"][0];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == endpoint["port"])
    );
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["honorLabels"], true);
    let certificate = objects
        .iter()
        .find(|o| {
            o["kind"] == "Certificate"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-webhook"))
        })
        .expect("the serving certificate");
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .expect("dnsNames")
            .contains(&endpoint["tlsConfig"]["serverName"])
    );
    assert_eq!(
        endpoint["tlsConfig"]["ca"]["secret"]["name"],
        certificate["spec"]["secretName"]
    );

    // Every series the alerts and the dashboard read is one podwall exports (or the kubelet's
    // and Prometheus' own).
    // Families print nothing until they have a member: give each one.
    let sidecar = podwall_proxy::metrics::Metrics::new();
    sidecar.denials.count(
        podwall_policy::Direction::Ingress,
        &podwall_policy::PolicyName {
            kind: podwall_policy::PolicyKind::NetworkPolicy,
            namespace: "prod".into(),
            name: "db".into(),
        },
    );
    sidecar.rule_hits.count(
        podwall_policy::Direction::Ingress,
        &podwall_policy::PolicyName {
            kind: podwall_policy::PolicyKind::NetworkPolicy,
            namespace: "prod".into(),
            name: "db".into(),
        },
        "spec.ingress[0]",
    );
    let control = podwall_control::metrics::ServerMetrics::new();
    let kind = podwall_control::metrics::KindLabel { kind: "Pod".into() };
    control.watch_failures.get_or_create(&kind).inc();
    control.lists.get_or_create(&kind).inc();
    control.objects_by_kind.get_or_create(&kind).set(1);
    control
        .unprotected_pod
        .get_or_create(&podwall_control::metrics::PodLabels {
            namespace: "prod".into(),
            pod: "web".into(),
        })
        .set(1);
    control
        .webhook
        .reviews
        .get_or_create(&podwall_control::webhook::server::DecisionLabel {
            decision: "malformed".into(),
        })
        .inc();
    let mut known = series_names(&sidecar.encode());
    known.extend(series_names(&control.encode()));
    let external = [
        "up",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ];
    let mut exprs: Vec<String> = Vec::new();
    let rules = find(&objects, "PrometheusRule");
    for rule in rules["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
    {
        exprs.push(rule["expr"].as_str().expect("expr").to_string());
    }
    let dashboard = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["podwall.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(
        dashboard["data"]["podwall.json"]
            .as_str()
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    // Control-plane series only from the control plane's job: any pod could export the names.
    let unscoped = regex::Regex::new(r"podwall_control_[a-z_]+(\{[^}]*\})?").expect("regex");
    for expr in &exprs {
        for m in unscoped.find_iter(expr) {
            assert!(
                m.as_str().contains("job="),
                "{} in {expr} is not scoped to the control plane's job",
                m.as_str()
            );
        }
    }
    let mut read = 0;
    for expr in &exprs {
        for metric in metrics_in(expr) {
            assert!(
                known.contains(&metric) || external.contains(&metric.as_str()),
                "{metric} (in {expr}) is not exported: {known:?}"
            );
            read += 1;
        }
    }
    assert!(
        read > 20,
        "{read} metrics read by {} expressions",
        exprs.len()
    );
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Flows by verdict",
        "Denied by policy",
        "Unprotected pods",
        "Sidecar CPU",
        "Sidecar memory (working set)",
    ] {
        assert!(titles.iter().any(|t| t.starts_with(wanted)), "{titles:?}");
    }
    assert!(
        titles.iter().any(|t| t.starts_with("Feed lag")),
        "{titles:?}"
    );
}

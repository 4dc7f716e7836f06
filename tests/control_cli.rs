//! `podwall control run --source kube` as a cluster runs it: the binary, a kubeconfig pointing
//! at an in-process API server (list/watch, TokenReview, /version), sidecar feeds checked by
//! TokenReview over TLS, the injection webhook over HTTPS choosing native sidecars from the API
//! server's version and handing them the feed's CA, JSON logs. curl is the client.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use podwall_control::testing::FakeApiServer;
use serde_json::{Value, json};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (code.to_string(), body.to_string())
}

fn curl_available() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is required in CI"
        );
        eprintln!("skipped: curl is not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_binary_watches_the_api_server_serves_feeds_and_injects() {
    if !curl_available() {
        return;
    }
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    // What the control plane writes back and `podwall status` / `check` read.
    api.serve("v1", "ConfigMap", "configmaps");
    api.serve("v1", "Event", "events");
    api.serve("coordination.k8s.io/v1", "Lease", "leases");
    api.serve("apps/v1", "Deployment", "deployments");
    api.serve(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
    );
    api.serve(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    );
    api.serve("cert-manager.io/v1", "Certificate", "certificates");
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podwall", "namespace": "podwall-system",
            "labels": {"app.kubernetes.io/name": "podwall"}},
        "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}));
    api.apply(json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "podwall-inject", "labels": {"app.kubernetes.io/name": "podwall"}},
        "webhooks": [{"name": "inject.podwall.io", "clientConfig": {"caBundle": "LS0tLS1CRUdJTg=="}}]}));
    let mut crd = podwall_policy::crd::podwall_policy_crd();
    crd["metadata"]["name"] = json!("podwallpolicies.podwall.io");
    api.apply(crd);
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web-sa", "containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"}}));
    api.token(
        "web-token",
        "system:serviceaccount:prod:web-sa",
        Some("web"),
        &["podwall"],
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\nusers:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n",
            api.url()
        ),
    )
    .expect("kubeconfig");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("key");
    let log = dir.path().join("control.log");

    let (feed, hook) = (free_port(), free_port());
    let _control = Running(
        Command::new(env!("CARGO_BIN_EXE_podwall"))
            .args(["control", "run", "--source", "kube"])
            .arg(format!("--listen=127.0.0.1:{feed}"))
            .arg(format!("--webhook-listen=127.0.0.1:{hook}"))
            .arg("--webhook-cert")
            .arg(&cert_file)
            .arg("--webhook-key")
            .arg(&key_file)
            // The feed over TLS with the same certificate, its CA given to injected sidecars.
            .arg("--feed-cert")
            .arg(&cert_file)
            .arg("--feed-key")
            .arg(&key_file)
            .arg("--feed-ca")
            .arg(&cert_file)
            .env("KUBECONFIG", &kubeconfig)
            .env("PODWALL_LOG_FORMAT", "json")
            .env("POD_NAME", "podwall-0")
            .env("POD_UID", "uid-podwall-0")
            .env("POD_NAMESPACE", "podwall-system")
            .arg("--status-interval=1s")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("podwall control run"),
    );

    let ca = cert_file.display().to_string();
    let ready = format!("https://localhost:{feed}/ready");
    let started = Instant::now();
    while curl(&["--cacert", &ca, &ready]).0 != "200" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A sidecar with its pod's bound token gets its pod's feed; a forged token does not.
    let url = format!("https://localhost:{feed}/v1/feed?namespace=prod&pod=web");
    let (code, body) = tokio::task::spawn_blocking({
        let (url, ca) = (url.clone(), ca.clone());
        move || {
            curl(&[
                "-N",
                "--max-time",
                "2",
                "--cacert",
                &ca,
                "-H",
                "Authorization: Bearer web-token",
                &url,
            ])
        }
    })
    .await
    .expect("join");
    let snapshot: Value = serde_json::from_str(body.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("a snapshot line ({e}): {code} {body}"));
    assert_eq!(snapshot["type"], "snapshot");
    assert!(
        snapshot["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .any(|o| o["kind"] == "Pod" && o["metadata"]["name"] == "web"),
        "{snapshot}"
    );
    let (code, _) = curl(&["--cacert", &ca, "-H", "Authorization: Bearer forged", &url]);
    assert_eq!(code, "403");
    // Plain HTTP is not served: tokens never cross the network in the clear. A sidecar that
    // sends one anyway (no CA given) is refused, logged and counted, so the operator knows the
    // token leaked.
    let (code, _) = curl(&[&format!("http://127.0.0.1:{feed}/ready")]);
    assert_ne!(code, "200");
    let (code, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Authorization: Bearer leaked-token",
        &format!("http://127.0.0.1:{feed}/v1/feed?namespace=prod&pod=api"),
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("--control-ca"), "{body}");

    // The webhook injects a native sidecar: the API server says 1.31.
    let review = json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "prod", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "api", "namespace": "prod", "annotations": {"podwall.io/inject": "enabled"}},
                "spec": {"containers": [{"name": "app"}]}}}})
    .to_string();
    let (code, body) = curl(&[
        "-k",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &review,
        &format!("https://127.0.0.1:{hook}/inject"),
    ]);
    assert_eq!(code, "200", "{body}");
    let resp: Value = serde_json::from_str(&body).expect("json");
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(resp["response"]["patch"].as_str().expect("a patch"))
            .expect("base64"),
    )
    .expect("patch");
    let inits = patch
        .as_array()
        .expect("ops")
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .expect("init containers");
    assert_eq!(inits["value"][1]["name"], "podwall-proxy");
    assert_eq!(
        inits["value"][1]["restartPolicy"], "Always",
        "a native sidecar"
    );

    // The app loses NET_RAW; the pod gets the sysctls (1.31: the reserved ports too).
    let containers = patch
        .as_array()
        .expect("ops")
        .iter()
        .find(|op| op["path"] == "/spec/containers")
        .expect("containers");
    assert_eq!(
        containers["value"][0]["securityContext"]["capabilities"]["drop"],
        json!(["NET_RAW"])
    );
    let security = patch
        .as_array()
        .expect("ops")
        .iter()
        .find(|op| op["path"] == "/spec/securityContext")
        .expect("pod security context");
    assert!(
        security["value"]["sysctls"]
            .to_string()
            .contains("net.ipv4.ip_local_reserved_ports"),
        "{security}"
    );

    // kubectl debug --profile=netadmin on the injected pod: refused, naming container and field.
    let mut injected = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api", "namespace": "prod", "annotations": {"podwall.io/inject": "enabled"}},
        "spec": {"containers": [{"name": "app"}]}});
    for op in patch.as_array().expect("ops") {
        let path = op["path"].as_str().expect("path");
        let (parent, field) = path.rsplit_once('/').expect("member");
        injected.pointer_mut(parent).expect("parent")[field] = op["value"].clone();
    }
    let before = injected.clone();
    injected["spec"]["ephemeralContainers"] = json!([{"name": "debugger-k2x", "image": "busybox",
        "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}}]);
    let debug = json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {"uid": "u-2", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "ephemeralcontainers",
            "namespace": "prod", "operation": "UPDATE", "userInfo": {"username": "admin"},
            "object": injected, "oldObject": before}})
    .to_string();
    let (code, body) = curl(&[
        "-k",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &debug,
        &format!("https://127.0.0.1:{hook}/inject"),
    ]);
    assert_eq!(code, "200", "{body}");
    let resp: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(resp["response"]["allowed"], false, "{resp}");
    let message = resp["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(message.contains("\"debugger-k2x\""), "{message}");
    assert!(
        message.contains("spec.ephemeralContainers[0].securityContext.capabilities.add"),
        "{message}"
    );

    // Metrics say what was watched; logs are JSON lines.
    let (_, metrics) = curl(&[
        "--cacert",
        &ca,
        &format!("https://localhost:{feed}/metrics"),
    ]);
    assert!(
        metrics.contains("podwall_control_lists_total{kind=\"Pod\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("podwall_control_webhook_reviews_total{decision=\"injected\"} 1"));
    assert!(metrics.contains("podwall_control_webhook_reviews_total{decision=\"refused\"} 1"));
    assert!(metrics.contains("podwall_control_plaintext_tokens_refused_total 1"));
    // A policy selects web, which runs without the sidecar: a gauge names it for alerts.
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-ingress", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}}),
    );
    let started = Instant::now();
    loop {
        let (_, metrics) = curl(&[
            "--cacert",
            &ca,
            &format!("https://localhost:{feed}/metrics"),
        ]);
        if metrics.contains("podwall_control_unprotected_pod{namespace=\"prod\",pod=\"web\"} 1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the unprotected pod is never named: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The operator's view, through their kubeconfig: the replica's report names web as
    // selected without the sidecar; check says so as a WARN, and passes what is healthy.
    let status = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_podwall"))
            .args(["status", "-o", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("podwall status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        if v["namespaces"].as_array().is_some_and(|n| !n.is_empty()) {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no replica report: {v}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(status["replicas"][0]["name"], "podwall-0", "{status}");
    assert_eq!(status["replicas"][0]["ready"], true);
    assert_eq!(status["deployment"], json!(["podwall", 1, 1]));
    assert_eq!(
        status["namespaces"][0],
        json!({"namespace": "prod", "selected": 1, "injected": 0, "connected": 0, "unprotected": 1})
    );
    assert!(
        status["webhook_certificate_expires"].is_string(),
        "the certificate's expiry is read: {status}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args(["status", "--namespace", "prod"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("podwall status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Replica podwall-0: ready"), "{text}");
    assert!(text.contains("prod/web"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args(["check", "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("podwall check");
    let lines: Value = serde_json::from_slice(&out.stdout).expect("json");
    let level = |what: &str| {
        lines
            .as_array()
            .expect("lines")
            .iter()
            .find(|l| l["check"] == what)
            .map(|l| l["level"].clone())
            .unwrap_or_else(|| panic!("no {what}: {lines}"))
    };
    assert_eq!(level("cert-manager"), "PASS");
    assert_eq!(level("control plane"), "PASS");
    assert_eq!(level("PodwallPolicy CRD"), "PASS");
    assert_eq!(level("injection webhook"), "PASS");
    assert_eq!(level("replica podwall-0"), "PASS");
    assert_eq!(level("unprotected pods"), "WARN");
    assert_eq!(out.status.code(), Some(0), "no FAIL: {lines}");
    // The leader election ran: this replica holds the lease.
    assert_eq!(
        api.objects("coordination.k8s.io/v1", "Lease")[0]["spec"]["holderIdentity"],
        "podwall-0"
    );
    // Prometheus 3 needs the Content-Type of what it is given (OpenMetrics: it ends in # EOF).
    let (content_type, _) = curl(&[
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        // In the slot where the helper reads the status code.
        "-w",
        "\n%{content_type}",
        &format!("https://localhost:{feed}/metrics"),
    ]);
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type:?}"
    );
    // The kubelet probes the TLS port as the chart says (HTTPS, HTTP/1.1, no verification).
    for path in ["/ready", "/live"] {
        let (code, body) = curl(&[
            "-k",
            "--http1.1",
            &format!("https://localhost:{feed}{path}"),
        ]);
        assert_eq!(code, "200", "{path}: {body}");
    }
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        logs.lines()
            .filter(|l| !l.is_empty())
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{logs}"
    );
    assert!(logs.contains("\"native_sidecar\":true"), "1.31: {logs}");
    assert!(
        logs.contains("refused a plaintext feed request that carried a token"),
        "{logs}"
    );
    // A refusal's log line names the pod, not only the review's uid.
    assert!(
        logs.lines()
            .any(|l| l.contains("pod refused") && l.contains("prod/api")),
        "{logs}"
    );
}

//! The injection webhook over real HTTPS: curl posts a real AdmissionReview, verifies the
//! certificate against its CA, and the served certificate follows a rotation of the files.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use podwall_control::certs::{ReloadingCert, acceptor};
use podwall_control::inject::InjectConfig;
use podwall_control::webhook::server::{WebhookMetrics, serve};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use serde_json::{Value, json};

const HOST: &str = "podwall-webhook.podwall-system.svc";

/// Writes a fresh CA and a server certificate for HOST into `dir`; returns the CA's PEM path.
fn issue(dir: &Path, generation: u32) -> std::path::PathBuf {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf whose issuer name is its own looks self-signed to verifiers.
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("podwall test CA {generation}"));
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![HOST.to_string()]).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, HOST);
    let cert = params.signed_by(&key, &ca).expect("cert");
    let ca_path = dir.join(format!("ca-{generation}.pem"));
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    // Written beside and renamed, as a Secret volume update is atomic.
    std::fs::write(dir.join("tls.crt.new"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).expect("write key");
    // Each generation its own modification time (the server looks for a changed one), however
    // fast the next is written.
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * u64::from(generation));
    for f in ["tls.crt.new", "tls.key.new"] {
        std::fs::File::options()
            .write(true)
            .open(dir.join(f))
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
    }
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).expect("rename");
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).expect("rename");
    ca_path
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

/// POSTs `body` with curl, trusting only `ca`; the status and the body, or curl's error.
fn post(port: u16, ca: &Path, body: &str) -> Result<(u16, String), String> {
    post_to(port, ca, "/inject", body)
}

/// [`post`] to another path.
fn post_to(port: u16, ca: &Path, path: &str, body: &str) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("{HOST}:{port}:127.0.0.1"),
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            "-w",
            "\n%{http_code}",
            &format!("https://{HOST}:{port}{path}"),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
    Ok((code.parse().map_err(|_| "bad status")?, body.to_string()))
}

fn admission_review(annotations: Value) -> String {
    json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {"uid": "b7f1c0de-0001", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "prod", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": "prod", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]}},
            "dryRun": false}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_answers_admission_reviews_over_https_and_follows_a_certificate_rotation() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca1 = issue(dir.path(), 1);
    let cert = Arc::new(
        ReloadingCert::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).expect("cert"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let metrics = Arc::new(WebhookMetrics::default());
    tokio::spawn(serve(
        listener,
        acceptor(cert).expect("tls"),
        Arc::new(InjectConfig::default()),
        metrics.clone(),
    ));

    let review = admission_review(json!({"podwall.io/inject": "enabled"}));
    let (code, body) = tokio::task::spawn_blocking({
        let (ca1, review) = (ca1.clone(), review.clone());
        move || post(port, &ca1, &review)
    })
    .await
    .expect("join")
    .expect("curl trusts the served certificate");
    assert_eq!(code, 200);
    let resp: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(resp["response"]["uid"], "b7f1c0de-0001");
    assert_eq!(resp["response"]["allowed"], true);
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(resp["response"]["patch"].as_str().expect("a patch"))
            .expect("base64"),
    )
    .expect("json patch");
    assert!(
        patch
            .as_array()
            .expect("ops")
            .iter()
            .any(|op| op["path"] == "/spec/initContainers"
                && op["value"][1]["name"] == "podwall-proxy"),
        "{patch}"
    );

    // A pod that does not ask passes untouched.
    let (_, body) = tokio::task::spawn_blocking({
        let ca1 = ca1.clone();
        move || post(port, &ca1, &admission_review(json!({})))
    })
    .await
    .expect("join")
    .expect("post");
    let resp: Value = serde_json::from_str(&body).expect("json");
    assert!(resp["response"].get("patch").is_none());
    // The same pod from a namespace labelled podwall.io/inject=enabled (the entry selecting
    // those calls another path) gets the sidecar; other paths are not served.
    let (code, body) = tokio::task::spawn_blocking({
        let ca1 = ca1.clone();
        move || {
            post_to(
                port,
                &ca1,
                "/inject/namespace",
                &admission_review(json!({})),
            )
        }
    })
    .await
    .expect("join")
    .expect("post");
    assert_eq!(code, 200);
    let resp: Value = serde_json::from_str(&body).expect("json");
    assert!(resp["response"]["patch"].is_string(), "{resp}");
    let (code, _) = tokio::task::spawn_blocking({
        let ca1 = ca1.clone();
        move || post_to(port, &ca1, "/inject/other", &admission_review(json!({})))
    })
    .await
    .expect("join")
    .expect("post");
    assert_eq!(code, 404);
    // Garbage is a 400, not a crash.
    let (code, _) = tokio::task::spawn_blocking({
        let ca1 = ca1.clone();
        move || post(port, &ca1, "{\"kind\": 1}")
    })
    .await
    .expect("join")
    .expect("post");
    assert_eq!(code, 400);

    // Rotation: new CA and certificate on disk; the server picks them up without a restart.
    let ca2 = issue(dir.path(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = tokio::task::spawn_blocking({
            let (ca2, review) = (ca2.clone(), review.clone());
            move || post(port, &ca2, &review)
        })
        .await
        .expect("join");
        if r.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate is served: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = tokio::task::spawn_blocking(move || post(port, &ca1, &review))
        .await
        .expect("join");
    assert!(old.is_err(), "the old CA no longer verifies: {old:?}");
}

//! The sidecar's feed from the control plane, as the binaries run it: the pod's token goes
//! only to a control plane that TLS verified, unless `--insecure-plaintext-feed` says otherwise.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podwall_sandbox::run_in;

mod support;
use support::Running;

const PODWALL: &str = env!("CARGO_BIN_EXE_podwall");

/// A pod and nothing else: what the control plane serves the sidecar.
const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: t}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: t, labels: {app: a}}\nstatus: {podIP: 127.0.0.1}\n";

/// Runs a sidecar with a token file against a listener that stands in for the control plane,
/// with `PODWALL_CONTROL_CA` set to `ca` or unset; returns its exit code and standard error,
/// having checked that it never connected.
fn refused_start(ca: Option<&str>) -> (Option<i32>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "a-projected-service-account-token").expect("token");
    let mut command = Command::new(PODWALL);
    command
        .args(["proxy", "run", "--pod-namespace", "t", "--pod-name", "a"])
        .arg(format!("--policy-source=control:127.0.0.1:{port}"))
        .arg(format!("--token-file={}", token.display()));
    match ca {
        Some(pem) => command.env("PODWALL_CONTROL_CA", pem),
        None => command.env_remove("PODWALL_CONTROL_CA"),
    };
    let out = command.output().expect("run");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the sidecar connected: {other:?}"),
    }
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_token_without_a_ca_is_never_sent_and_the_sidecar_says_how_to_fix_it() {
    let (code, err) = refused_start(None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("in the clear"), "{err}");
    assert!(err.contains("--control-ca"), "{err}");
    assert!(err.contains("controlPlaneCa"), "{err}");
    assert!(err.contains("--insecure-plaintext-feed"), "{err}");
}

/// A fresh network namespace (the sidecar binds its fixed ports there), removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip").args(["netns", "add", name]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", name, "link", "set", "lo", "up"])
            .status();
        assert!(ok.is_ok_and(|s| s.success()));
        Netns(name.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, PODWALL]).args(args);
    cmd
}

/// `GET path` on 127.0.0.1:port inside `ns`: the status line, if anything answered.
fn get(ns: &str, port: u16, path: &str) -> Option<String> {
    let path = path.to_string();
    run_in(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().map(String::from)
    })
    .ok()
    .flatten()
}

fn wait_ready(ns: &str, port: u16, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if get(ns, port, "/ready").is_some_and(|l| l.contains(" 200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "not ready on :{port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A CA and a certificate it signs for `localhost`: (CA PEM, cert PEM, key PEM).
fn issue() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "podwall test feed CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca).expect("cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The control plane in `ns` on 127.0.0.1:15010, serving CLUSTER, knowing one token for t/a.
fn control_plane(ns: &str, dir: &Path, tls: bool) -> Running {
    std::fs::create_dir_all(dir.join("state")).expect("dir");
    std::fs::write(dir.join("state/cluster.yaml"), CLUSTER).expect("state");
    std::fs::write(dir.join("tokens"), "secret-token t/a\n").expect("tokens");
    let mut cmd = in_ns(ns, &["control", "run", "--listen", "127.0.0.1:15010"]);
    cmd.arg(format!("--source=dir:{}", dir.join("state").display()))
        .arg(format!("--tokens={}", dir.join("tokens").display()))
        .arg("--poll-interval=200ms");
    if tls {
        cmd.arg(format!("--feed-cert={}", dir.join("tls.crt").display()))
            .arg(format!("--feed-key={}", dir.join("tls.key").display()));
    }
    let log = std::fs::File::create(dir.join("control.log")).expect("log");
    let child = cmd
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("control plane");
    Running(child)
}

fn sidecar(ns: &str, dir: &Path, extra: &[String]) -> Running {
    sidecar_with_ca_env(ns, dir, extra, None)
}

/// The sidecar, with `PODWALL_CONTROL_CA` set to `ca` (as injection sets it) or unset.
fn sidecar_with_ca_env(ns: &str, dir: &Path, extra: &[String], ca: Option<&str>) -> Running {
    std::fs::write(dir.join("token"), "secret-token").expect("token");
    let log = std::fs::File::create(dir.join("sidecar.log")).expect("log");
    let mut command = podwall_sandbox::sidecar_in(ns, PODWALL);
    command
        .args(["proxy", "run", "--pod-namespace", "t", "--pod-name", "a"])
        .args(["--no-packet-filter", "--poll-interval", "200ms"])
        .arg(format!("--token-file={}", dir.join("token").display()))
        .args(extra);
    match ca {
        Some(pem) => command.env("PODWALL_CONTROL_CA", pem),
        None => command.env_remove("PODWALL_CONTROL_CA"),
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sidecar");
    Running(child)
}

#[test]
fn with_the_ca_the_token_goes_over_tls_and_the_sidecar_becomes_ready() {
    if !support::ready(
        "with_the_ca_the_token_goes_over_tls_and_the_sidecar_becomes_ready",
        &["ip", "setpriv"],
        "iproute2 and setpriv",
    ) {
        return;
    }
    let ns = Netns::new("pw-feed-tls");
    let (dir, _control, _) = tls_control_plane(&ns.0);
    let _sidecar = sidecar(
        &ns.0,
        dir.path(),
        &[
            "--policy-source=control:localhost:15010".into(),
            format!("--control-ca={}", dir.path().join("ca.pem").display()),
        ],
    );
    let log = tls_feed_connects(&ns.0, dir.path());
    assert!(!log.contains("insecure"), "{log}");
    let control = std::fs::read_to_string(dir.path().join("control.log")).unwrap_or_default();
    assert!(control.contains("feed opened"), "{control}");
}

/// A control plane serving its feed over TLS in `ns`; its directory (with `ca.pem`), the
/// process and the CA.
fn tls_control_plane(ns: &str) -> (tempfile::TempDir, Running, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = issue();
    std::fs::write(dir.path().join("ca.pem"), &ca).expect("ca");
    std::fs::write(dir.path().join("tls.crt"), cert).expect("cert");
    std::fs::write(dir.path().join("tls.key"), key).expect("key");
    let control = control_plane(ns, dir.path(), true);
    (dir, control, ca)
}

/// Waits for the sidecar in `ns` to be ready and checks that it took its policy over TLS;
/// returns its log.
fn tls_feed_connects(ns: &str, dir: &Path) -> String {
    wait_ready(ns, 15020, &dir.join("sidecar.log"));
    let log = std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default();
    assert!(log.contains("control:localhost:15010 (TLS)"), "{log}");
    assert!(log.contains("feed connected"), "{log}");
    log
}

#[test]
fn the_ca_in_podwall_control_ca_as_injection_sets_it_verifies_the_control_plane() {
    if !support::ready(
        "the_ca_in_podwall_control_ca_as_injection_sets_it_verifies_the_control_plane",
        &["ip", "setpriv"],
        "iproute2 and setpriv",
    ) {
        return;
    }
    let ns = Netns::new("pw-feed-env");
    let (dir, _control, ca) = tls_control_plane(&ns.0);
    let _sidecar = sidecar_with_ca_env(
        &ns.0,
        dir.path(),
        &["--policy-source=control:localhost:15010".into()],
        Some(&ca),
    );
    tls_feed_connects(&ns.0, dir.path());
}

#[test]
fn a_podwall_control_ca_that_holds_no_certificate_stops_the_sidecar_before_it_connects() {
    let (code, err) = refused_start(Some("not a certificate"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("CERTIFICATE"), "{err}");
    assert!(!err.contains("in the clear"), "the CA was read: {err}");
}

#[test]
fn with_insecure_plaintext_feed_the_token_goes_in_the_clear_and_it_is_said_once() {
    if !support::ready(
        "with_insecure_plaintext_feed_the_token_goes_in_the_clear_and_it_is_said_once",
        &["ip", "setpriv"],
        "iproute2 and setpriv",
    ) {
        return;
    }
    let ns = Netns::new("pw-feed-plain");
    let dir = tempfile::tempdir().expect("tempdir");
    let _control = control_plane(&ns.0, dir.path(), false);
    let _sidecar = sidecar(
        &ns.0,
        dir.path(),
        &[
            "--policy-source=control:127.0.0.1:15010".into(),
            "--insecure-plaintext-feed".into(),
        ],
    );
    wait_ready(&ns.0, 15020, &dir.path().join("sidecar.log"));
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default();
    assert_eq!(
        log.matches("--insecure-plaintext-feed").count(),
        1,
        "warned once: {log}"
    );
    assert!(
        log.contains("control:127.0.0.1:15010 (plain HTTP/2: no CA given"),
        "the source says it is not verified: {log}"
    );
}

#[test]
fn before_its_first_policy_the_sidecar_says_it_refuses_everything() {
    if !support::ready(
        "before_its_first_policy_the_sidecar_says_it_refuses_everything",
        &["ip", "setpriv"],
        "iproute2 and setpriv",
    ) {
        return;
    }
    let ns = Netns::new("pw-feed-none");
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on the control plane's port.
    let _sidecar = sidecar(
        &ns.0,
        dir.path(),
        &[
            "--policy-source=control:127.0.0.1:15010".into(),
            "--insecure-plaintext-feed".into(),
        ],
    );
    let log_path = dir.path().join("sidecar.log");
    let start = Instant::now();
    let mut log = String::new();
    while start.elapsed() < Duration::from_secs(10) && !log.contains("feed failed") {
        std::thread::sleep(Duration::from_millis(100));
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    assert!(
        log.contains("no policy yet: refusing every connection"),
        "{log}"
    );
    assert!(!log.contains("enforcing the last policy"), "{log}");
    assert!(get(&ns.0, 15020, "/ready").is_some_and(|l| l.contains(" 503")));
}

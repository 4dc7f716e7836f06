//! End-to-end: HTTP rules check what the backend acts on, and `podwall analyze check` says what
//! the sidecar does (issue "FQDN learning, name checks and HTTP rules that an attacker cannot
//! talk around"). Each request of the table is sent raw, as an attacker writes it, through the
//! sidecars to the sandbox's backend (which logs the target and Host it got), and asked of the
//! analyzer; the two must agree.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use podwall_sandbox::{Inject, run_in};

mod support;
use support::sandbox::{PODWALL, Up, ready_for, topology};

/// The API takes GET /api/v1/... for the host allowed.example, and GET /chat (a WebSocket),
/// from the frontend; nothing else.
const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: h}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: h, labels: {app: frontend}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.74.0.1, hostIP: 192.168.74.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: h, labels: {app: api}, annotations: {podwall.io/inject: enabled}}
spec: {containers: [{name: api, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.74.0.2, hostIP: 192.168.74.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: h}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http:
        - {method: GET, path: '/api/v1/.*', host: 'allowed\.example'}
        - {method: GET, path: '/chat'}
"#;

/// One request of the table: as sent, what the analyzer is asked, and the status expected.
struct Case {
    what: &'static str,
    raw: &'static str,
    method: &'static str,
    target: &'static str,
    hosts: &'static [&'static str],
    headers: &'static [&'static str],
    status: u16,
}

const CASES: &[Case] = &[
    Case {
        what: "the allowed request",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["allowed.example"],
        headers: &[],
        status: 200,
    },
    Case {
        what: "a Host with a port is the host",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: allowed.example:8080\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["allowed.example:8080"],
        headers: &[],
        status: 200,
    },
    Case {
        what: "another host",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["evil.example"],
        headers: &[],
        status: 403,
    },
    Case {
        what: "absolute-form naming the allowed host, Host another",
        raw: "GET http://allowed.example/api/v1/users HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        method: "GET",
        target: "http://allowed.example/api/v1/users",
        hosts: &["evil.example"],
        headers: &[],
        status: 400,
    },
    Case {
        what: "absolute-form naming the allowed host",
        raw: "GET http://allowed.example/api/v1/users HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        method: "GET",
        target: "http://allowed.example/api/v1/users",
        hosts: &["allowed.example"],
        headers: &[],
        status: 200,
    },
    Case {
        what: "two Host headers",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: allowed.example\r\nHost: evil.example\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["allowed.example", "evil.example"],
        headers: &[],
        status: 400,
    },
    Case {
        what: "a servlet container's /..;/",
        raw: "GET /api/v1/..;/..;/admin HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        method: "GET",
        target: "/api/v1/..;/..;/admin",
        hosts: &["allowed.example"],
        headers: &[],
        status: 400,
    },
    Case {
        what: "an encoded dot-segment",
        raw: "GET /api/v1/%2e%2e/admin HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        method: "GET",
        target: "/api/v1/%2e%2e/admin",
        hosts: &["allowed.example"],
        headers: &[],
        status: 403,
    },
    Case {
        what: "an upgrade to h2c on an allowed request",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: allowed.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["allowed.example"],
        headers: &["Upgrade: h2c"],
        status: 400,
    },
    Case {
        what: "an h2c upgrade behind a byte beyond ASCII (read as h2c by some backends)",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: allowed.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c,\u{ff}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["allowed.example"],
        headers: &["Upgrade: h2c,\u{ff}"],
        status: 400,
    },
    Case {
        what: "a Host that brackets the allowed name",
        raw: "GET /api/v1/users HTTP/1.1\r\nHost: [allowed.example]:8080\r\n\r\n",
        method: "GET",
        target: "/api/v1/users",
        hosts: &["[allowed.example]:8080"],
        headers: &[],
        status: 400,
    },
    Case {
        what: "a path with a raw byte beyond ASCII",
        raw: "GET /api/v1/\u{e9} HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        method: "GET",
        target: "/api/v1/\u{e9}",
        hosts: &["allowed.example"],
        headers: &[],
        status: 400,
    },
    Case {
        what: "a WebSocket upgrade on an allowed path",
        raw: "GET /chat HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        method: "GET",
        target: "/chat",
        hosts: &["api"],
        headers: &["Upgrade: websocket"],
        status: 101,
    },
    Case {
        what: "a WebSocket upgrade on a path no rule allows",
        raw: "GET /admin HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        method: "GET",
        target: "/admin",
        hosts: &["api"],
        headers: &["Upgrade: websocket"],
        status: 403,
    },
];

/// Sends `raw` on a fresh connection from `ns` to `dst`: the status of the response.
fn send(ns: &str, dst: SocketAddr, raw: &'static str) -> u16 {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(raw.as_bytes()).expect("write");
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).expect("status line");
        status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("status line {status:?}"))
    })
    .expect("netns")
}

/// What `podwall analyze check` says of the request: the status the client gets (200 when it
/// is allowed).
fn analyze(dir: &Path, case: &Case) -> u16 {
    let mut cmd = std::process::Command::new(PODWALL);
    cmd.args(["analyze", "check", "-f"])
        .arg(dir)
        .args(["--from", "h/frontend", "--to", "h/api", "--port", "8080"])
        .args([
            "--http-method",
            case.method,
            "--http-path",
            case.target,
            "-o",
            "json",
        ]);
    for h in case.hosts.iter().take(1) {
        cmd.args(["--http-host", h]);
    }
    for h in case.hosts.iter().skip(1) {
        cmd.args(["--http-header", &format!("Host: {h}")]);
    }
    for h in case.headers {
        cmd.args(["--http-header", h]);
    }
    let out = cmd.output().expect("analyze");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: {}",
            case.what,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match (v["http"]["allowed"].as_bool(), v["http"]["status"].as_u64()) {
        (Some(true), _) => 200,
        (_, Some(status)) => status as u16,
        other => panic!("{}: {other:?} in {v}", case.what),
    }
}

#[test]
fn what_the_rules_check_is_what_the_backend_gets_and_the_analyzer_agrees() {
    if !ready_for("what_the_rules_check_is_what_the_backend_gets_and_the_analyzer_agrees") {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = Up::new(dir.path(), "http", Inject::Annotated);
    let fe = up.ns("h/frontend");
    let api = SocketAddr::new(up.ip("h/api"), 8080);
    let mut disagreements = Vec::new();
    for case in CASES {
        let sidecar = send(&fe, api, case.raw);
        let analyzer = analyze(dir.path(), case);
        // The analyzer does not know the backend switches protocols: allowed is allowed.
        let analyzer = if analyzer == 200 && case.status == 101 {
            101
        } else {
            analyzer
        };
        if sidecar != case.status || analyzer != case.status {
            disagreements.push(format!(
                "{}: sidecar {sidecar}, analyzer {analyzer}, expected {}",
                case.what, case.status
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    // What the backend got: origin-form with the authority as Host, never the refused ones.
    let i = up.index("h/api");
    let log = std::fs::read_to_string(up.sb().logs_dir().join(format!("{i}-server.log")))
        .unwrap_or_default();
    assert!(
        log.contains("h/api GET /api/v1/users port 8080 host allowed.example\n"),
        "{log}"
    );
    assert!(
        !log.contains("http://"),
        "absolute-form reached the backend: {log}"
    );
    assert!(!log.contains("evil.example"), "{log}");
    assert!(!log.contains("admin"), "{log}");
}

//! HTTP rules end to end: methods and paths, HTTP/2 and gRPC, upgrades, malformed, pipelined and smuggled requests, audit.

use super::*;

#[test]
fn with_the_audit_flag_a_request_http_rules_deny_reaches_the_app_and_is_logged_as_audit() {
    if !ready_for(
        "with_the_audit_flag_a_request_http_rules_deny_reaches_the_app_and_is_logged_as_audit",
    ) {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/l7-api");
    let up = Up::with(
        &dir,
        Options {
            sidecar_args: vec!["--audit".into()],
            ..options("l7aud", Inject::Annotated)
        },
    );
    let fe = up.ns("production/frontend");
    let url = format!("http://{}:8080/api/v1/users/7", up.ip("production/api"));
    // Enforced, DELETE gets 403 (http_rules_allow_get_deny_delete_...); audited, it passes.
    let code = curl(
        &fe,
        &[
            "-X",
            "DELETE",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            &url,
        ],
    );
    assert_eq!(code, "200");
    assert!(
        app_log(&up, "production/api").contains("DELETE /api/v1/users/7"),
        "the application saw it"
    );
    let event = wait_for_flow(&up, "production/api", "the audited DELETE", |e| {
        e["l7"]["http"]["method"] == "DELETE"
    });
    assert_eq!(event["verdict"], "AUDIT", "{event}");
    assert_eq!(event["l7"]["http"]["status"], 200, "{event}");
}

#[test]
fn http_rules_allow_get_deny_delete_and_traversal_and_the_connection_stays_usable() {
    if !ready_for("http_rules_allow_get_deny_delete_and_traversal_and_the_connection_stays_usable")
    {
        return;
    }
    let (up, fe, api) = l7_sandbox("l7a");
    let url = |p: &str| format!("http://{api}:8080{p}");
    assert_eq!(
        curl(
            &fe,
            &[
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url("/api/v1/users")
            ]
        ),
        "200"
    );
    assert_eq!(
        curl(
            &fe,
            &[
                "-X",
                "POST",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url("/api/v1/orders")
            ]
        ),
        "200"
    );
    assert_eq!(
        curl(&fe, &["-X", "DELETE", &url("/api/v1/users/7")]),
        "Access denied\r\n"
    );
    assert_eq!(
        curl(
            &fe,
            &[
                "--path-as-is",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url("/api/v1/../admin")
            ]
        ),
        "403"
    );
    assert_eq!(
        curl(
            &fe,
            &[
                "--path-as-is",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url("/api/v1/%2e%2e/admin")
            ]
        ),
        "403"
    );
    assert_eq!(
        curl(
            &fe,
            &[
                "--path-as-is",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url("/api/v1/x%2Fy")
            ]
        ),
        "400"
    );
    // A 403, then an allowed request on the same connection (one connect in all).
    let both = curl(
        &fe,
        &[
            "-w",
            "%{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
            "-X",
            "DELETE",
            &url("/api/v1/users/7"),
            "--next",
            "-w",
            "%{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
            &url("/api/v1/users"),
        ],
    );
    assert_eq!(both, "403 1\n200 0\n");
    // The application saw only the allowed requests, with the paths the rules checked.
    let log = app_log(&up, "production/api");
    assert!(log.contains("GET /api/v1/users port 8080"), "{log}");
    assert!(log.contains("POST /api/v1/orders"), "{log}");
    assert!(
        !log.contains("DELETE") && !log.contains("admin") && !log.contains("x%2F"),
        "{log}"
    );
    wait_for_flow(&up, "production/api", "the denied DELETE", |e| {
        e["l7"]["http"]["method"] == "DELETE"
    });
    let events = up.flows("production/api");
    let denied = events
        .iter()
        .find(|e| e["l7"]["http"]["method"] == "DELETE")
        .unwrap_or_else(|| panic!("no DELETE event: {events:#?}"));
    assert_eq!(denied["verdict"], "DENIED");
    assert_eq!(denied["l7"]["http"]["status"], 403);
    let allowed = events
        .iter()
        .find(|e| e["l7"]["http"]["path"] == "/api/v1/users")
        .expect("GET event");
    assert_eq!(
        allowed["l7"]["http"]["rule"],
        "spec.ingress[0].toPorts[0].rules.http[0]"
    );
    // Another pod is not allowed at all, HTTP or not.
    let batch = up.ns("production/batch");
    assert_eq!(
        curl(
            &batch,
            &[
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url("/api/v1/users")
            ]
        ),
        "000"
    );
}

#[test]
fn http2_requests_are_checked_one_by_one_on_one_connection() {
    if !ready_for("http2_requests_are_checked_one_by_one_on_one_connection") {
        return;
    }
    let (up, fe, api) = l7_sandbox("l7b");
    assert_eq!(
        curl(
            &fe,
            &[
                "--http2-prior-knowledge",
                "-w",
                "%{http_code} %{http_version}",
                "-o",
                "/dev/null",
                &format!("http://{api}:8080/api/v1/users")
            ]
        ),
        "200 2"
    );
    // A real HTTP/2 client (hyper) sends three requests on one connection.
    let statuses = run_in(&fe, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect((api, 8080))
                .await
                .expect("connect");
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .expect("h2 handshake");
            tokio::spawn(conn);
            let mut out = Vec::new();
            for (method, path) in [
                ("GET", "/api/v1/a"),
                ("DELETE", "/api/v1/a"),
                ("GET", "/api/v1/b"),
            ] {
                let req = hyper::Request::builder()
                    .method(method)
                    .uri(format!("http://{api}:8080{path}"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .expect("request");
                let resp = send.send_request(req).await.expect("response");
                out.push(resp.status().as_u16());
            }
            out
        })
    })
    .expect("netns");
    assert_eq!(statuses, [200, 403, 200]);
    assert!(!app_log(&up, "production/api").contains("DELETE"));
}

#[test]
fn malformed_requests_get_400_and_never_reach_the_application() {
    if !ready_for("malformed_requests_get_400_and_never_reach_the_application") {
        return;
    }
    let (up, fe, api) = l7_sandbox("l7c");
    let answer = run_in(&fe, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(api, 8080), Duration::from_secs(3))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /api/v1/x HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .expect("netns");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!app_log(&up, "production/api").contains("/api/v1/x"));
}

#[test]
fn pipelined_and_smuggled_requests_are_each_judged_and_the_forbidden_never_reach_the_app() {
    if !ready_for(
        "pipelined_and_smuggled_requests_are_each_judged_and_the_forbidden_never_reach_the_app",
    ) {
        return;
    }
    // GET /api/v1/.* and POST /api/v1/orders are allowed; DELETE is not.
    let (up, fe, api) = l7_sandbox("l7s");
    let dst = SocketAddr::new(api, 8080);
    // Pipelined in one write: each request is judged on its own, in order.
    assert_eq!(
        raw_statuses(
            &fe,
            dst,
            b"GET /api/v1/pipe-1 HTTP/1.1\r\nHost: api\r\n\r\n\
              DELETE /api/v1/users/1 HTTP/1.1\r\nHost: api\r\n\r\n\
              GET /api/v1/pipe-2 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
        ),
        ["200", "403", "200"]
    );
    // A DELETE hidden where a front end and a back end could disagree on where a body ends
    // (Content-Length and Transfer-Encoding both, in either order): whatever the sidecar
    // makes of the bytes, the DELETE is judged as a request or not passed at all.
    for payload in [
        &b"POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n\
           Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
           DELETE /api/v1/users/2 HTTP/1.1\r\nHost: api\r\n\r\n"[..],
        &b"POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\
           Content-Length: 48\r\n\r\n0\r\n\r\n\
           DELETE /api/v1/users/3 HTTP/1.1\r\nHost: api\r\n\r\n"[..],
        &b"POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n\
           2e\r\nDELETE /api/v1/users/4 HTTP/1.1\r\nHost: api\r\n\r\n\r\n0\r\n\r\n"[..],
    ] {
        let statuses = raw_statuses(&fe, dst, payload);
        eprintln!("{:?}: {statuses:?}", String::from_utf8_lossy(payload));
        assert!(
            !statuses.is_empty() && statuses[1..].iter().all(|s| s != "200"),
            "{}: {statuses:?}",
            String::from_utf8_lossy(payload)
        );
    }
    // Framing no server should guess at: 400, and nothing reaches the application.
    for payload in [
        // Two different lengths.
        &b"POST /api/v1/orders?dup-length HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n\
           Content-Length: 40\r\n\r\nabcd"[..],
        // A header folded onto the next line (obs-fold).
        &b"GET /api/v1/folded HTTP/1.1\r\nHost: api\r\nX-Note: a\r\n b\r\n\r\n"[..],
        // A transfer coding that does not end in chunked.
        &b"POST /api/v1/orders?gzip HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip\r\n\r\nabcd"[..],
        // Whitespace between a header's name and its colon.
        &b"POST /api/v1/orders?space HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\n\r\n\
           0\r\n\r\n"[..],
    ] {
        let statuses = raw_statuses(&fe, dst, payload);
        assert_eq!(statuses, ["400"], "{}", String::from_utf8_lossy(payload));
    }
    // The allowed requests reached the application; no DELETE and none of the refused did.
    let log = app_log(&up, "production/api");
    for seen in [
        "GET /api/v1/pipe-1 ",
        "GET /api/v1/pipe-2 ",
        "POST /api/v1/orders ",
    ] {
        assert!(log.contains(seen), "{seen}: {log}");
    }
    for never in ["DELETE", "dup-length", "folded", "gzip", "space"] {
        assert!(
            !log.contains(never),
            "{never} reached the application: {log}"
        );
    }
}

#[test]
fn an_upgrade_passes_only_when_the_upgrade_request_is_allowed() {
    if !ready_for("an_upgrade_passes_only_when_the_upgrade_request_is_allowed") {
        return;
    }
    let (_up, fe, api) = l7_sandbox("l7d");
    let talk = move |path: &'static str| {
        run_in(&fe, move || {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(api, 8080), Duration::from_secs(3))
                    .expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
            );
            s.write_all(req.as_bytes()).expect("write");
            let mut head = [0u8; 12];
            s.read_exact(&mut head).expect("status line");
            let status = String::from_utf8_lossy(&head).to_string();
            if !status.ends_with("101") {
                return status;
            }
            // Skip the rest of the head, then talk the upgraded protocol.
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            s.write_all(b"ping").expect("write");
            let mut echo = [0u8; 4];
            r.read_exact(&mut echo).expect("echo");
            format!("{status} {}", String::from_utf8_lossy(&echo))
        })
        .expect("netns")
    };
    assert_eq!(talk("/api/v1/ws"), "HTTP/1.1 101 ping");
    assert_eq!(talk("/ws"), "HTTP/1.1 403");
}

#[test]
fn grpc_methods_are_allowed_or_denied_by_their_path() {
    if !ready_for("grpc_methods_are_allowed_or_denied_by_their_path") {
        return;
    }
    if !has_grpc() {
        return;
    }
    let dir = topology(GRPC_TOPOLOGY);
    let up = Up::new(dir.path(), "grpc", Inject::Annotated);
    let mut server = start_grpc_server(&up);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &up.ns("g/client"),
            "python3",
            "-c",
            GRPC_CLIENT,
        ])
        .arg(up.ip("g/server").to_string())
        .output()
        .expect("grpc client");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "Allowed OK hello\nForbidden PERMISSION_DENIED\nAllowed OK hello\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_l7_example_answers_http_as_the_analyzer_predicts() {
    if !ready_for("the_l7_example_answers_http_as_the_analyzer_predicts") {
        return;
    }
    let (up, _, _) = l7_sandbox("l7e");
    let requests: Vec<(String, String)> = [
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/orders"),
        ("DELETE", "/api/v1/users/7"),
        ("GET", "/api/v1/../admin"),
        ("GET", "/api/v1/%2e%2e/admin"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    let attempts = up.sb().probe_http(&requests).expect("probe");
    let wrong: Vec<_> = attempts
        .iter()
        .filter(|a| a.observed != a.predicted)
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    let statuses: Vec<u16> = attempts
        .iter()
        .filter(|a| a.from == "production/frontend" && a.to == "production/api")
        .map(|a| a.observed)
        .collect();
    assert_eq!(statuses, [200, 200, 403, 403, 403]);
}

//! Policy changes on open connections: reset, kept, logged with the rule that allows them now; HTTP rules changing under a kept-alive connection or an HTTP/2 stream.

use super::*;

#[test]
fn a_policy_change_resets_established_connections_it_now_denies() {
    if !ready_for("a_policy_change_resets_established_connections_it_now_denies") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "chg", Inject::Annotated);
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let client = up.ns("t/client");
    let (mut r, _) = connect(&client, dst).expect("allowed before the change");
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    std::fs::write(up.sb().policy_dir().join("deny.yaml"), deny).expect("write policy");
    // The established connection is reset: reading ends with an error or end of stream.
    r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let read = r.read(&mut buf);
    // Reset (or, on the kernel path, aborted by this pod's sidecar destroying the socket):
    // neither an orderly close nor a read that times out.
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted)),
        "not reset: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // New connections are refused.
    wait_for(
        "new connections to be refused",
        Duration::from_secs(5),
        || connect(&client, dst).is_err(),
    );
    // The revoked connection's event says why (waited for, not slept on).
    wait_for_flow(&up, "t/server", "revoked by the policy change", |e| {
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("policy change"))
    });
}

#[test]
fn a_connection_a_policy_change_still_allows_is_logged_with_the_rule_that_allows_it_now() {
    if !ready_for(
        "a_connection_a_policy_change_still_allows_is_logged_with_the_rule_that_allows_it_now",
    ) {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "keep", Inject::Annotated);
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let client = up.ns("t/client");
    // Opened while nothing isolates the server.
    let (r, _) = connect(&client, dst).expect("allowed before the change");
    let allow = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-client, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n";
    std::fs::write(up.sb().policy_dir().join("allow.yaml"), allow).expect("write policy");
    // The policy is in force once a new connection from a pod it does not name is refused.
    let plain = up.ns("t/plain");
    wait_for(
        "the new policy to isolate the server",
        Duration::from_secs(10),
        || connect(&plain, dst).is_err(),
    );
    // The open connection still works, and when it ends its event names the new rule.
    let mut r = r;
    r.get_mut()
        .write_all(b"ping\n")
        .expect("still open after the change");
    let mut echoed = String::new();
    r.read_line(&mut echoed).expect("echo after the change");
    assert!(echoed.contains("ping"), "{echoed:?}");
    close_cleanly(r);
    let client_ip = up.ip("t/client").to_string();
    let ours = &wait_for_flow(&up, "t/server", "the connection's event", |e| {
        e["source"]["ip"] == client_ip.as_str()
    });
    assert_eq!(ours["verdict"], "ALLOWED", "{ours:#}");
    assert!(ours.get("error").is_none(), "{ours:#}");
    assert_eq!(
        ours["ingress"]["policy"], "NetworkPolicy t/from-client",
        "{ours:#}"
    );
    assert_eq!(ours["ingress"]["rule"], "spec.ingress[0]", "{ours:#}");
}

#[test]
fn with_keep_revoked_connections_a_now_denied_connection_stays_open_and_new_ones_are_refused() {
    if !ready_for(
        "with_keep_revoked_connections_a_now_denied_connection_stays_open_and_new_ones_are_refused",
    ) {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--keep-revoked-connections".into()],
            ..options("kept", Inject::Annotated)
        },
    );
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let client = up.ns("t/client");
    let (r, _) = connect(&client, dst).expect("allowed before the change");
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    std::fs::write(up.sb().policy_dir().join("deny.yaml"), deny).expect("write policy");
    wait_for(
        "new connections to be refused",
        Duration::from_secs(10),
        || connect(&client, dst).is_err(),
    );
    // The open one still carries data both ways: the test server echoes a line back.
    let mut r = r;
    r.get_mut().write_all(b"still here\n").expect("write");
    let mut echoed = String::new();
    r.read_line(&mut echoed).expect("read after the change");
    assert!(echoed.contains("still here"), "{echoed:?}");
    close_cleanly(r);
    let client_ip = up.ip("t/client").to_string();
    let ours = &wait_for_flow(&up, "t/server", "the kept connection's event", |e| {
        e["source"]["ip"] == client_ip.as_str() && e["verdict"] == "ALLOWED"
    });
    assert!(ours.get("error").is_none(), "{ours:#}");
    // It is logged as what admitted it: nothing isolated the server then.
    assert_eq!(ours["ingress"]["reason"], "not-isolated", "{ours:#}");
}

#[test]
fn a_keep_alive_connections_next_request_answers_to_changed_http_rules() {
    if !ready_for("a_keep_alive_connections_next_request_answers_to_changed_http_rules") {
        return;
    }
    let (up, fe, api) = l7_sandbox("l7chg");
    let dst = SocketAddr::new(api, 8080);
    let mut conn = keep_alive(
        &fe,
        dst,
        &[("GET", "/api/v1/users", 200), ("PUT", "/api/v1/users", 403)],
    );

    // The rule that allowed GET now allows PUT instead.
    let file = up.sb().policy_dir().join("policies.json");
    let text = std::fs::read_to_string(&file).expect("policies");
    assert!(text.contains("\"method\": \"GET\""), "{text}");
    std::fs::write(
        &file,
        text.replace("\"method\": \"GET\"", "\"method\": \"PUT\""),
    )
    .expect("write policies");
    let url = format!("http://{api}:8080/api/v1/users");
    wait_for(
        "new connections to answer to the new rules",
        Duration::from_secs(10),
        || curl(&fe, &["-w", "%{http_code}", "-o", "/dev/null", &url]) == "403",
    );

    // The connection opened before the change: same socket, new rules.
    assert_eq!(exchange(&mut conn, "GET", "/api/v1/users"), 403);
    assert_eq!(exchange(&mut conn, "PUT", "/api/v1/users"), 200);
    drop(conn);
    wait_for_flow(&up, "production/api", "the allowed PUT", |e| {
        e["l7"]["http"]["method"] == "PUT" && e["verdict"] == "ALLOWED"
    });
    let flows = up.flows("production/api");
    let requests: Vec<_> = flows
        .iter()
        .filter(|e| e["l7"]["http"]["method"] == "PUT")
        .collect();
    let allowed = requests
        .iter()
        .find(|e| e["verdict"] == "ALLOWED")
        .unwrap_or_else(|| panic!("no allowed PUT: {requests:#?}"));
    assert!(
        allowed["l7"]["http"]["rule"].as_str().is_some(),
        "{allowed:#}"
    );
    assert_eq!(
        allowed["l7"]["http"]["policy"], "CiliumNetworkPolicy production/api-l7-policy",
        "{allowed:#}"
    );
}

#[test]
fn an_l4_allow_added_later_switches_http_filtering_off_on_an_open_connection() {
    if !ready_for("an_l4_allow_added_later_switches_http_filtering_off_on_an_open_connection") {
        return;
    }
    let (up, fe, api) = l7_sandbox("l7off");
    let dst = SocketAddr::new(api, 8080);
    let mut conn = keep_alive(&fe, dst, &[("DELETE", "/api/v1/users/7", 403)]);
    // An L4-only allow for the same peer and port: Cilium's rule is that it switches the
    // port's HTTP filtering off for that peer.
    let l4 = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: frontend-any, namespace: production}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}]\n    ports: [{port: 8080}]\n";
    std::fs::write(up.sb().policy_dir().join("l4.yaml"), l4).expect("write policy");
    let url = format!("http://{api}:8080/api/v1/users/7");
    wait_for(
        "new connections to pass unfiltered",
        Duration::from_secs(10),
        || {
            curl(
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
            ) == "200"
        },
    );
    assert_eq!(exchange(&mut conn, "DELETE", "/api/v1/users/7"), 200);
}

#[test]
fn an_http2_connections_next_stream_answers_to_changed_http_rules() {
    if !ready_for("an_http2_connections_next_stream_answers_to_changed_http_rules") {
        return;
    }
    if !has_grpc() {
        return;
    }
    let dir = topology(GRPC_TOPOLOGY);
    let up = Up::new(dir.path(), "grpc2", Inject::Annotated);
    let mut server = start_grpc_server(&up);
    let mut client = Command::new("ip")
        .args(["netns", "exec", &up.ns("g/client"), "python3", "-c"])
        .arg(GRPC_CLIENT_ACROSS_A_CHANGE)
        .arg(up.ip("g/server").to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("grpc client");
    let mut lines = BufReader::new(client.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next(), "Allowed OK");
    assert_eq!(next(), "Forbidden PERMISSION_DENIED");

    // The rule now allows the other method.
    let file = up.sb().policy_dir().join("policies.json");
    let text = std::fs::read_to_string(&file).expect("policies");
    assert!(text.contains("/demo.Echo/Allowed"), "{text}");
    std::fs::write(
        &file,
        text.replace("/demo.Echo/Allowed", "/demo.Echo/Forbidden"),
    )
    .expect("write policies");
    client
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("signal the client");
    assert_eq!(next(), "Forbidden OK");
    assert_eq!(next(), "Allowed PERMISSION_DENIED");
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();

    // All of it on one connection: the client's sidecar saw exactly one.
    wait_for_flow(&up, "g/client", "the connection's event", |e| {
        e["destination"]["port"] == 50051 && e["l7"].is_null()
    });
    let connections: Vec<_> = up
        .flows("g/client")
        .into_iter()
        .filter(|e| e["destination"]["port"] == 50051 && e["l7"].is_null())
        .collect();
    assert_eq!(connections.len(), 1, "{connections:#?}");
}

//! Observing and advising: following the sidecars' events, observed HTTP ports, the observe, advise, audit, enforce rollout.

use super::*;

#[test]
fn observe_follows_the_sandboxs_sidecars_and_prints_a_denial_as_it_happens() {
    if !ready_for("observe_follows_the_sandboxs_sidecars_and_prints_a_denial_as_it_happens") {
        return;
    }
    let yaml = TWO_PODS.to_string()
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    let dir = topology(&yaml);
    let up = Up::new(dir.path(), "observe", Inject::Annotated);
    let mut child = Command::new(PODWALL)
        .args([
            "observe",
            "--sandbox",
            "observe",
            "--follow",
            "--verdict",
            "DENIED",
            "--to",
            "t/server",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("podwall observe");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line, Instant::now())).is_err() {
                return;
            }
        }
    });
    // The denial is printed as it happens. The first may be read with the log's start; once
    // it is printed, observe has read the logs, and the second can only come by following.
    let mut attempted = Instant::now();
    let mut printed = None;
    for _ in 0..2 {
        attempted = Instant::now();
        assert!(connect(&up.ns("t/client"), SocketAddr::new(up.ip("t/server"), 8080)).is_err());
        printed = Some(
            rx.recv_timeout(Duration::from_secs(5))
                .expect("the denial is printed"),
        );
    }
    let (line, at) = printed.expect("two denials");
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "observe printed the denial {:?} after the connection was attempted",
        at.duration_since(attempted)
    );
    assert!(
        line.contains("t/client") && line.contains("-> t/server:8080 TCP DENIED"),
        "{line}"
    );
    assert!(line.contains("NetworkPolicy t/deny"), "{line}");
}

#[test]
fn the_rollout_observe_advise_audit_enforce_keeps_what_was_seen_and_denies_the_rest() {
    if !ready_for(
        "the_rollout_observe_advise_audit_enforce_keeps_what_was_seen_and_denies_the_rest",
    ) {
        return;
    }
    // The three-tier example's pods with no policy at all: everything passes, and is logged;
    // the api asks its sidecar to log its HTTP requests (by the container port's name).
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/three-tier/cluster.yaml"),
    )
    .expect("read");
    let api = "labels: {app: api}\n    annotations: {podwall.io/inject: enabled";
    assert!(cluster.contains(api), "the example's api pod changed");
    std::fs::write(
        dir.path().join("cluster.yaml"),
        cluster.replace(api, &format!("{api}, podwall.io/observe-http: http")),
    )
    .expect("write");
    let up = Up::new(dir.path(), "rollout", Inject::All);
    let intended = [
        ("ingress-nginx/controller", "production/frontend", 80),
        ("production/frontend", "production/api", 8080),
        ("production/api", "production/postgres", 5432),
    ];
    let dial = |from: &str, to: &str, port: u16| {
        connect(&up.ns(from), SocketAddr::new(up.ip(to), port)).is_ok()
    };
    let api_url = |path: &str| format!("http://{}:8080{path}", up.ip("production/api"));
    let status = |path: &str| {
        curl(
            &up.ns("production/frontend"),
            &["-w", "%{http_code}", "-o", "/dev/null", &api_url(path)],
        )
    };
    // Once HTTP rules guard the api's port its sidecar waits for a request (the application's
    // greeting to a silent client no longer passes): the request seen is what must still pass.
    let reach = |from: &str, to: &str, port: u16| {
        if (from, to, port) == ("production/frontend", "production/api", 8080) {
            status("/api/v1/orders") == "200"
        } else {
            dial(from, to, port)
        }
    };
    for (from, to, port) in intended {
        assert!(
            dial(from, to, port),
            "{from} -> {to}:{port} before any policy"
        );
    }
    assert_eq!(status("/api/v1/orders"), "200", "before any policy");
    // Phase one: observe what ran, and let podwall write the policies.
    let flows = dir.path().join("flows.jsonl");
    wait_for(
        "the three flows and the api's request are logged",
        Duration::from_secs(10),
        || {
            let out = Command::new(PODWALL)
                .args(["observe", "--sandbox", "rollout", "-o", "json"])
                .output()
                .expect("observe");
            std::fs::write(&flows, &out.stdout).expect("write");
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().count() >= 4 && text.contains("\"/api/v1/orders\"")
        },
    );
    let advised = dir.path().join("advised");
    let out = Command::new(PODWALL)
        .arg("advise")
        .arg("-f")
        .arg(up.sb().policy_dir())
        .arg("--flows")
        .arg(&flows)
        .arg("--out-dir")
        .arg(&advised)
        .output()
        .expect("advise");
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(report.contains("all allowed"), "{report}");
    let proposals: String = std::fs::read_dir(&advised)
        .expect("advised")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect();
    assert!(
        proposals.contains("PodwallPolicy") && proposals.contains("/api/v1/orders"),
        "the observed request becomes an HTTP rule: {proposals}"
    );
    // Phase two: the advised policies join the state live, every pod in audit mode first.
    let cluster_file = up.sb().policy_dir().join("cluster.json");
    let enforced = std::fs::read_to_string(&cluster_file).expect("cluster.json");
    let mut audited: serde_json::Value = serde_json::from_str(&enforced).expect("json");
    for item in audited["items"].as_array_mut().expect("items") {
        if item["kind"] == "Pod" {
            item["metadata"]["annotations"]["podwall.io/enforcement"] = "audit".into();
        }
    }
    // Written whole, then renamed: the control plane never reads half a file.
    let write_state = |text: &str| {
        let tmp = up.sb().policy_dir().join(".cluster.json.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &cluster_file).expect("rename");
    };
    write_state(&audited.to_string());
    for entry in std::fs::read_dir(&advised).expect("advised") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            up.sb().policy_dir().join(format!(
                "advised-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            )),
        )
        .expect("copy");
    }
    // In audit mode what was never seen passes, and is logged as AUDIT; what was seen is not.
    let audit_lines = || {
        let out = Command::new(PODWALL)
            .args(["observe", "--sandbox", "rollout", "--verdict", "AUDIT"])
            .output()
            .expect("observe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(
        "frontend -> postgres passes as AUDIT",
        Duration::from_secs(10),
        || {
            dial("production/frontend", "production/postgres", 5432)
                && audit_lines().contains("production/frontend")
        },
    );
    for (from, to, port) in intended {
        assert!(reach(from, to, port), "{from} -> {to}:{port} in audit mode");
    }
    let audits = audit_lines();
    for line in audits.lines() {
        assert!(
            line.contains("-> production/postgres:5432") && line.contains("production/frontend"),
            "only the unseen flow is audited: {line}"
        );
    }
    // Enforce: the pods leave audit mode.
    write_state(&enforced);
    // What was never seen is refused once the sidecars have the new policy ...
    wait_for(
        "frontend -> postgres is refused",
        Duration::from_secs(10),
        || !dial("production/frontend", "production/postgres", 5432),
    );
    // ... what was seen still passes ...
    for (from, to, port) in intended {
        assert!(
            reach(from, to, port),
            "{from} -> {to}:{port} after enforcing"
        );
    }
    // ... the request seen passes, and another path to the same port does not ...
    assert_eq!(status("/api/v1/orders"), "200", "the request seen");
    assert_eq!(status("/admin"), "403", "a path never seen");
    // ... and every pair of pods on every declared port behaves as the analyzer says.
    let report = up.sb().probe().expect("probe");
    let mismatches: Vec<String> = report
        .mismatches()
        .into_iter()
        .map(|a| {
            format!(
                "{} -> {} {}: observed {} predicted {}",
                a.from, a.to, a.port, a.observed, a.predicted
            )
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(
        report.attempts.iter().any(|a| !a.predicted),
        "the advice denies something"
    );
}

#[test]
fn an_observed_port_logs_requests_as_sent_and_a_silent_connection_still_answers_to_policy() {
    if !ready_for(
        "an_observed_port_logs_requests_as_sent_and_a_silent_connection_still_answers_to_policy",
    ) {
        return;
    }
    let dir = topology(OBSERVED);
    let up = Up::new(dir.path(), "obsh", Inject::Annotated);
    let client = up.ns("t/client");
    let server = up.ip("t/server");
    // Requests reach the application as sent: no normalising, no refusal for what HTTP rules
    // would refuse (an encoded slash, dot segments), since no rule applies.
    // The event names the path as an HTTP rule would see it (normalised where it can be).
    for (path, logged) in [
        ("/api/v4/projects/grp%2Fproj", "/api/v4/projects/grp%2Fproj"),
        ("//a/./b/../c", "/a/c"),
    ] {
        let body = curl(
            &client,
            &["--path-as-is", &format!("http://{server}:8080{path}")],
        );
        assert!(body.contains(&format!("GET {path}")), "{path}: {body}");
        wait_for_flow(&up, "t/server", "the request logged", |e| {
            e["l7"]["http"]["path"] == logged && e["verdict"] == "ALLOWED"
        });
    }
    // What does not open with HTTP is relayed: the application's greeting to a silent client.
    let (_, greeting) = connect(&client, SocketAddr::new(server, 8080)).expect("relayed");
    assert!(greeting.starts_with("podwall-sandbox"), "{greeting}");
    // A peer that connects to an observed port and says nothing is still judged again when
    // policy changes: denied, it is reset at once, not kept until it speaks.
    let listener = run_in(&up.ns("t/server"), || {
        std::net::TcpListener::bind(("0.0.0.0", 7000)).expect("bind 7000")
    })
    .expect("netns");
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut silent = run_in(&client, move || {
        TcpStream::connect_timeout(&SocketAddr::new(server, 7000), Duration::from_secs(3))
    })
    .expect("netns")
    .expect("connect 7000");
    let _accepted = held.join().expect("accept");
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    std::fs::write(up.sb().policy_dir().join("deny.yaml"), deny).expect("write policy");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let read = silent.read(&mut [0u8; 16]);
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    wait_for_flow(&up, "t/server", "the silent connection revoked", |e| {
        e["destination"]["port"] == 7000
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("policy change"))
    });
}

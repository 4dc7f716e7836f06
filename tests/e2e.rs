//! End-to-end: the sandbox and the sidecar in real network namespaces with real iptables.
//!
//! Every test needs root. Outside CI a test without root prints why it skips; with `CI=true` it
//! fails instead, so CI cannot pass by skipping.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podwall_sandbox::{Inject, Options, run_in};

mod support;
use support::sandbox::{PODWALL, Up, connect, options, ready_for, topology, wait_for};

/// Two sidecar pods (client, server) and one without (plain), no policy: everything allowed.
const TWO_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.77.0.1, hostIP: 192.168.77.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: t, labels: {app: server}, annotations: {podwall.io/inject: enabled}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 9001}]}]}
status: {podIP: 10.77.0.2, hostIP: 192.168.77.1}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: t, labels: {app: plain}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.77.0.3, hostIP: 192.168.77.1}
"#;

#[test]
fn every_example_behaves_in_the_sandbox_as_the_analyzer_predicts() {
    if !ready_for("every_example_behaves_in_the_sandbox_as_the_analyzer_predicts") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let up = Up::new(dir, "ex", Inject::All);
        let report = up.sb().probe().expect("probe");
        checked += report.attempts.len();
        assert!(
            report.attempts.iter().any(|a| a.observed),
            "{}: nothing connected at all",
            dir.display()
        );
        for a in report.mismatches() {
            failures.push(format!(
                "{}: {} -> {} TCP/{}: observed {} predicted {} ({})",
                dir.display(),
                a.from,
                a.to,
                a.port,
                a.observed,
                a.predicted,
                a.detail
            ));
        }
        // And as written by hand in expected.yaml, an oracle that is not the engine: every
        // probed TCP port its matrices cover.
        let expected: serde_json::Value = serde_saphyr::from_str(
            &std::fs::read_to_string(dir.join("expected.yaml")).expect("expected.yaml"),
        )
        .expect("expected.yaml parses");
        let covered: Vec<u64> = expected["matrices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["protocol"] == "TCP")
            .filter_map(|m| m["port"].as_u64())
            .collect();
        let mut missing: Vec<u16> = report
            .attempts
            .iter()
            .map(|a| a.port)
            .filter(|p| !covered.contains(&u64::from(*p)))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: expected.yaml has no matrix for the probed TCP ports {missing:?}",
                dir.display()
            ));
        }
        for m in expected["matrices"].as_array().into_iter().flatten() {
            if m["protocol"] != "TCP" {
                continue;
            }
            let allowed: Vec<&str> = m["allowed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect();
            for a in report
                .attempts
                .iter()
                .filter(|a| m["port"] == a.port && a.from != a.to)
            {
                let want = allowed.contains(&format!("{} -> {}", a.from, a.to).as_str());
                if a.observed != want {
                    failures.push(format!(
                        "{}: {} -> {} TCP/{}: observed {}, expected.yaml says {want} ({})",
                        dir.display(),
                        a.from,
                        a.to,
                        a.port,
                        a.observed,
                        a.detail
                    ));
                }
            }
        }
        // A denial is a reset at once (the README's promise), never a timeout that would
        // look the same to this probe.
        for a in report.attempts.iter().filter(|a| !a.observed) {
            assert!(
                a.detail.contains("reset") || a.detail.contains("refused"),
                "{}: {} -> {} TCP/{} was denied by something other than a reset: {}",
                dir.display(),
                a.from,
                a.to,
                a.port,
                a.detail
            );
        }
        // The application saw the port the client dialled.
        for a in report
            .attempts
            .iter()
            .filter(|a| a.observed && a.detail.starts_with("podwall-sandbox"))
        {
            assert!(
                a.detail.contains(&format!(" port {} ", a.port)),
                "{}: {}",
                dir.display(),
                a.detail
            );
        }
    }
    assert!(checked > 100, "only {checked} connections tried");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_demo_command_shows_enforcement_and_cleans_up() {
    if !ready_for("the_demo_command_shows_enforcement_and_cleans_up") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/three-tier");
    let out = Command::new(PODWALL)
        .args(["sandbox", "demo"])
        .arg(&dir)
        .args(["--name", "demo"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("behaved as the analyzer predicts"),
        "{stdout}"
    );
    // A refused cell in a row of the table (the legend line, which names "· refused", does
    // not count).
    assert!(
        stdout
            .lines()
            .filter(|l| !l.contains("refused"))
            .any(|l| l.contains('·')),
        "some connections are refused: {stdout}"
    );
    assert!(!Path::new("/run/podwall/sandbox/demo").exists());
    assert!(!Path::new("/run/netns/pw-demo-node").exists());
}

#[test]
fn connections_keep_their_original_destination_and_are_not_captured_twice() {
    if !ready_for("connections_keep_their_original_destination_and_are_not_captured_twice") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "od", Inject::Annotated);
    let client = up.ns("t/client");
    // Through both sidecars: the server application sees the port that was dialled.
    let (_, greeting) =
        connect(&client, SocketAddr::new(up.ip("t/server"), 9001)).expect("through two sidecars");
    assert!(greeting.contains("t/server port 9001"), "{greeting}");
    // To a pod without a sidecar the source address is the client's own.
    let (_, greeting) =
        connect(&client, SocketAddr::new(up.ip("t/plain"), 8080)).expect("to a plain pod");
    assert!(
        greeting.contains(&format!("from {}:", up.ip("t/client"))),
        "{greeting}"
    );
    // One flow per connection in each sidecar: the sidecar's own upstream connections are not
    // captured again (that would loop and multiply events).
    wait_for("both sidecars' events", Duration::from_secs(5), || {
        up.flows("t/client").len() >= 2 && !up.flows("t/server").is_empty()
    });
    let egress = up.flows("t/client");
    assert_eq!(egress.len(), 2, "{egress:#?}");
    assert!(
        egress
            .iter()
            .all(|e| e["direction"] == "egress" && e["verdict"] == "ALLOWED"),
        "{egress:#?}"
    );
    let ingress = up.flows("t/server");
    assert_eq!(ingress.len(), 1, "{ingress:#?}");
    assert_eq!(ingress[0]["direction"], "ingress");
    assert_eq!(ingress[0]["destination"]["port"], 9001);
    // The server's policy names no peer, so the client is not in its sidecar's view: the
    // event names it by address.
    assert_eq!(
        ingress[0]["source"]["ip"],
        up.ip("t/client").to_string().as_str()
    );
}

#[test]
fn a_gibibyte_arrives_intact_through_two_sidecars() {
    if !ready_for("a_gibibyte_arrives_intact_through_two_sidecars") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "gib", Inject::Annotated);
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let (reader, _) = connect(&up.ns("t/client"), dst).expect("connect");
    let stream = reader.into_inner();
    let mut writer = stream.try_clone().expect("clone");
    // 1024 blocks of 1 MiB: pseudo-random bytes, each block stamped with its index so that a
    // lost, repeated or reordered block is caught.
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for b in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let expected = block.clone();
    let sender = std::thread::spawn(move || {
        for i in 0u64..1024 {
            block[..8].copy_from_slice(&i.to_le_bytes());
            writer.write_all(&block).expect("write");
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut got = vec![0u8; 1 << 20];
    let mut want = expected;
    for i in 0u64..1024 {
        reader
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("block {i}: {e}"));
        want[..8].copy_from_slice(&i.to_le_bytes());
        assert!(got == want, "block {i} differs");
    }
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("end");
    assert!(rest.is_empty(), "{} extra bytes", rest.len());
    sender.join().expect("sender");
    // The flow event comes when the connection has ended: waited for, not slept on.
    let f = wait_for_flow(&up, "t/client", "with the bytes sent", |e| {
        e["bytes_sent"].is_u64()
    });
    assert_eq!(f["bytes_sent"], 1u64 << 30);
}

#[test]
fn half_close_is_passed_through() {
    if !ready_for("half_close_is_passed_through") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "half", Inject::Annotated);
    let (mut r, _) =
        connect(&up.ns("t/client"), SocketAddr::new(up.ip("t/server"), 8080)).expect("connect");
    r.get_mut().write_all(b"last words").expect("write");
    r.get_mut().shutdown(Shutdown::Write).expect("half-close");
    // The server sees end of stream only through the sidecars' half-close, echoes, then closes.
    let mut rest = String::new();
    r.read_to_string(&mut rest).expect("read to end");
    assert_eq!(rest, "last words");
}

#[test]
fn a_thousand_concurrent_connections_pass_one_sidecar() {
    if !ready_for("a_thousand_concurrent_connections_pass_one_sidecar") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "thou", Inject::Annotated);
    let dst = SocketAddr::new(up.ip("t/plain"), 8080);
    let ns = up.ns("t/client");
    let ok = run_in(&ns, move || {
        if let Ok((_, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
        let mut open = Vec::new();
        for i in 0..1000 {
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            open.push(s);
        }
        // All 1000 are open at once; now each one round-trips.
        let mut ok = 0;
        for (i, s) in open.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let msg = format!("ping {i}\n");
            s.write_all(msg.as_bytes()).expect("write");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut greeting = String::new();
            let mut echo = String::new();
            r.read_line(&mut greeting).expect("greeting");
            r.read_line(&mut echo).expect("echo");
            if greeting.starts_with("podwall-sandbox") && echo == msg {
                ok += 1;
            } else {
                eprintln!("connection {i}: greeting {greeting:?}, echo {echo:?}");
            }
        }
        ok
    })
    .expect("in netns");
    assert_eq!(ok, 1000);
}

#[test]
fn a_listener_on_localhost_stays_private_and_one_on_the_pod_address_is_reached() {
    if !ready_for("a_listener_on_localhost_stays_private_and_one_on_the_pod_address_is_reached") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "lo", Inject::Annotated);
    let server_ip = up.ip("t/server");
    // Two listeners of the application in the server pod: one on 127.0.0.1, one on its address.
    let ns = up.ns("t/server");
    let listeners = run_in(&ns, move || {
        let private = std::net::TcpListener::bind(("127.0.0.1", 9100)).expect("bind lo");
        let public =
            std::net::TcpListener::bind(SocketAddr::new(server_ip, 9101)).expect("bind pod ip");
        (private, public)
    })
    .expect("netns");
    let public = listeners.1.try_clone().expect("clone");
    std::thread::spawn(move || {
        for s in public.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"public\n");
        }
    });
    let client = up.ns("t/client");
    let (_, line) =
        connect(&client, SocketAddr::new(server_ip, 9101)).expect("the pod address is reachable");
    assert_eq!(line, "public\n");
    let private = connect(&client, SocketAddr::new(server_ip, 9100));
    assert!(
        private.is_err(),
        "a 127.0.0.1 listener must not be reachable from another pod: {private:?}"
    );
    drop(listeners);
}

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
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
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

/// Half-closes and reads to the end before closing, so nothing unread turns the close into a
/// reset (which the sidecar would rightly log as an error).
fn close_cleanly(mut r: BufReader<TcpStream>) {
    let _ = r.get_mut().shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
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
fn audit_mode_lets_denied_connections_through_and_logs_them() {
    if !ready_for("audit_mode_lets_denied_connections_through_and_logs_them") {
        return;
    }
    let yaml = TWO_PODS.replace(
        "annotations: {podwall.io/inject: enabled}}\nspec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 9001}]}]}",
        "annotations: {podwall.io/inject: enabled, podwall.io/enforcement: audit}}\nspec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 9001}]}]}",
    ) + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    let dir = topology(&yaml);
    let up = Up::new(dir.path(), "audit", Inject::Annotated);
    connect(&up.ns("t/client"), SocketAddr::new(up.ip("t/server"), 8080))
        .expect("audit mode lets it through");
    let flow = wait_for_flow(&up, "t/server", "of the audited connection", |e| {
        e["direction"] == "ingress"
    });
    assert_eq!(flow["verdict"], "AUDIT", "{flow:#?}");
    assert_eq!(flow["ingress"]["isolated_by"][0], "NetworkPolicy t/deny");
}

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

/// The server logs HTTP on 8080 (the sandbox's server) and 7000 (a listener that never speaks).
const OBSERVED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.78.0.1, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: t, labels: {app: server}, annotations: {podwall.io/inject: enabled, podwall.io/observe-http: "8080,7000"}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.78.0.2, hostIP: 192.168.78.1}
"#;

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

/// Upstream conformance cases run in the sandbox with real sidecars (TCP probes between pods;
/// the analyzer's test holds every probe).
const CONFORMANCE_IN_SANDBOX: [&str; 8] = [
    "admin-egress-tcp",
    "admin-ingress-tcp",
    "admin-gress",
    "admin-priority-field",
    "admin-integration",
    "admin-pod-selector",
    "baseline-ingress-tcp",
    "baseline-gress",
];

#[test]
fn upstream_cluster_network_policy_conformance_cases_hold_with_real_sidecars() {
    if !ready_for("upstream_cluster_network_policy_conformance_cases_hold_with_real_sidecars") {
        return;
    }
    use support::cnp_conformance::{cases, initial, read_objects};
    // The topology without its host-network pods (no TCP probe here reaches them); each pod
    // also listens on the undeclared TCP ports upstream's servers listen on (an extra container
    // with unnamed ports: named-port rules see no difference).
    let topology: Vec<serde_json::Value> =
        read_objects(&support::cnp_conformance::dir().join("topology.yaml"))
            .into_iter()
            .filter(|v| v["spec"]["hostNetwork"] != true)
            .map(|mut v| {
                let listening = v["metadata"]["annotations"]["cnp-conformance/listening"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ports: Vec<serde_json::Value> = listening
                    .split(',')
                    .filter_map(|p| p.strip_suffix("/TCP"))
                    .filter_map(|p| p.parse::<u16>().ok())
                    .map(|p| serde_json::json!({"containerPort": p}))
                    .collect();
                if let Some(containers) = v["spec"]["containers"].as_array_mut()
                    && !ports.is_empty()
                {
                    containers.push(serde_json::json!({"name": "listener", "ports": ports}));
                }
                v
            })
            .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cluster.json"),
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": topology}).to_string(),
    )
    .expect("write");
    let up = Up::new(dir.path(), "cnpc", Inject::All);
    let policy_dir = up.sb().policy_dir();
    let pods: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(policy_dir.join("cluster.json")).expect("cluster.json"),
    )
    .expect("json")["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|v| v["kind"] == "Pod")
        .cloned()
        .collect();
    // Written whole, then renamed: the control plane never reads half a file.
    let write = |name: &str, items: Vec<serde_json::Value>| {
        let tmp = policy_dir.join(format!(".{name}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        )
        .expect("write");
        std::fs::rename(&tmp, policy_dir.join(name)).expect("rename");
    };
    let mut failures = Vec::new();
    let mut probed = 0;
    for case in cases()
        .iter()
        .filter(|c| CONFORMANCE_IN_SANDBOX.contains(&c.id.as_str()))
    {
        let mut objects = initial(case);
        for (i, step) in case.steps.iter().enumerate() {
            step.apply(&mut objects, &case.id);
            let of = |kinds: &[&str]| -> Vec<serde_json::Value> {
                objects
                    .values()
                    .filter(|v| kinds.iter().any(|k| v["kind"] == *k))
                    .cloned()
                    .collect()
            };
            let mut state = of(&["Namespace", "Node"]);
            state.extend(pods.iter().cloned());
            write("cluster.json", state);
            write(
                "policies.json",
                of(&["ClusterNetworkPolicy", "NetworkPolicy"]),
            );
            for c in step
                .checks
                .iter()
                .filter(|c| c.protocol == "TCP" && !c.suspect && !c.to.starts_with("service:"))
            {
                if up.sb().pod(&c.to).is_none() || up.sb().pod(&c.from).is_none() {
                    continue;
                }
                probed += 1;
                let dst = SocketAddr::new(up.ip(&c.to), c.port);
                // As upstream: polled until it holds (the sidecars take the new policy).
                let start = Instant::now();
                let mut got = !c.allowed;
                while start.elapsed() < Duration::from_secs(10) {
                    got = connect(&up.ns(&c.from), dst).is_ok();
                    if got == c.allowed {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if got != c.allowed {
                    failures.push(format!(
                        "{} step {i} ({}): {} -> {} TCP/{}: expected {}",
                        case.id,
                        step.note,
                        c.from,
                        c.to,
                        c.port,
                        if c.allowed { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }
    println!("{probed} conformance probes through real sidecars");
    assert!(probed >= 60, "only {probed} probes ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn without_a_policy_for_its_pod_the_sidecar_refuses_everything() {
    if !ready_for("without_a_policy_for_its_pod_the_sidecar_refuses_everything") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "fc", Inject::None);
    let ns = up.ns("t/client");
    // A sidecar for a pod the policy source does not know: not ready, and fails closed.
    let (mut sidecar, _empty) = sidecar_without_policy(&ns, "t", "client");
    let dst = SocketAddr::new(up.ip("t/plain"), 8080);
    let refused = connect(&ns, dst);
    let ready = run_in(&ns, || {
        let mut s = TcpStream::connect(("127.0.0.1", 15020)).expect("admin");
        s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .expect("netns");
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    assert!(refused.is_err(), "fail closed: {refused:?}");
    assert!(ready.contains(" 503 "), "{ready}");
}

/// The init rules and a listening sidecar in `ns` for pod `namespace/name`, which its policy
/// source (an empty directory, kept alive by the returned guard) does not know.
fn sidecar_without_policy(
    ns: &str,
    namespace: &str,
    name: &str,
) -> (std::process::Child, tempfile::TempDir) {
    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        empty.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
    )
    .expect("write");
    let init = Command::new("ip")
        .args(["netns", "exec", ns, PODWALL, "proxy", "init"])
        .status()
        .expect("init");
    assert!(init.success());
    let sidecar = podwall_sandbox::sidecar_in(ns, PODWALL)
        .args(["proxy", "run"])
        .arg(format!("--policy-source=dir:{}", empty.path().display()))
        .args(["--pod-namespace", namespace, "--pod-name", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sidecar");
    wait_for("the sidecar to listen", Duration::from_secs(10), || {
        run_in(ns, || TcpStream::connect(("127.0.0.1", 15020)).is_ok()).unwrap_or(false)
    });
    (sidecar, empty)
}

const FAIL_CLOSED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: guarded, namespace: t, labels: {app: guarded}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.79.0.1, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: t, labels: {app: peer}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.79.0.2, hostIP: 192.168.79.1}
"#;

#[test]
fn before_its_first_policy_the_sidecar_refuses_inbound_tcp_and_drops_udp_and_ping_both_ways() {
    if !ready_for(
        "before_its_first_policy_the_sidecar_refuses_inbound_tcp_and_drops_udp_and_ping_both_ways",
    ) {
        return;
    }
    let dir = topology(FAIL_CLOSED);
    let up = Up::new(dir.path(), "fc2", Inject::None);
    let (guarded, peer) = (up.ns("t/guarded"), up.ns("t/peer"));
    let (g_ip, p_ip) = (up.ip("t/guarded"), up.ip("t/peer"));
    // Without podwall everything passes (so what follows cannot pass by accident).
    assert!(connect(&peer, SocketAddr::new(g_ip, 8080)).is_ok());
    assert!(udp_echo(&guarded, SocketAddr::new(p_ip, 5300), b"x").is_some());
    assert!(pings(&peer, g_ip) && pings(&guarded, p_ip));
    // A sidecar whose pod the policy source does not know: no policy, ever.
    let (mut sidecar, _empty) = sidecar_without_policy(&guarded, "t", "guarded");
    let inbound_tcp = connect(&peer, SocketAddr::new(g_ip, 8080));
    let inbound_udp = udp_echo(&peer, SocketAddr::new(g_ip, 5300), b"x");
    let outbound_udp = udp_echo(&guarded, SocketAddr::new(p_ip, 5300), b"x");
    let (ping_in, ping_out) = (pings(&peer, g_ip), pings(&guarded, p_ip));
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    let inbound_err = inbound_tcp.err().unwrap_or_default();
    assert!(
        inbound_err.contains("reset") || inbound_err.contains("refused"),
        "inbound TCP refused at once: {inbound_err:?}"
    );
    assert!(inbound_udp.is_none(), "inbound UDP dropped");
    assert!(outbound_udp.is_none(), "outbound UDP dropped");
    assert!(!ping_in && !ping_out, "ping dropped both ways");
}

/// Every rule and chain of every table in `ns`, as `iptables-save` prints them (table headers
/// kept, so the same rule in two tables stays two lines).
fn all_rules(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-save"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(':') || l.starts_with('*'))
        .map(String::from)
        .collect()
}

#[test]
fn init_twice_leaves_one_rule_set_and_remove_takes_it_away() {
    if !ready_for("init_twice_leaves_one_rule_set_and_remove_takes_it_away") {
        return;
    }
    let ns = "pw-e2e-init";
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip")
            .success()
    );
    let init = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, PODWALL, "proxy", "init"])
            .args(extra)
            .output()
            .expect("init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = init(&["--dry-run"]);
    assert!(
        dry.contains("-A PODWALL_OUTPUT -p tcp -j REDIRECT --to-ports 15001"),
        "{dry}"
    );
    assert!(
        all_rules(ns).iter().all(|l| !l.contains("PODWALL")),
        "dry run changes nothing"
    );
    init(&["--exclude-outbound-cidrs", "10.96.0.0/12"]);
    let once = all_rules(ns);
    init(&["--exclude-outbound-cidrs", "10.96.0.0/12"]);
    let twice = all_rules(ns);
    assert_eq!(once, twice);
    // One jump of each kind: in nat OUTPUT, mangle PREROUTING (inbound, DNS), OUTPUT (DNS)
    // and POSTROUTING (egress), filter INPUT (spoofing, guard twice, packet filter) and OUTPUT
    // (forged sources, packet filter).
    let jumps: Vec<&String> = twice
        .iter()
        .filter(|l| {
            l.starts_with("-A ") && !l.starts_with("-A PODWALL") && l.contains("-j PODWALL_")
        })
        .collect();
    assert_eq!(jumps.len(), 11, "{jumps:#?}");
    let mut distinct = jumps.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), jumps.len(), "no jump twice: {jumps:#?}");
    assert!(
        twice
            .iter()
            .any(|l| l == "-A PODWALL_OUTPUT -d 10.96.0.0/12 -j RETURN"),
        "{twice:#?}"
    );
    init(&["--remove"]);
    assert!(
        all_rules(ns).iter().all(|l| !l.contains("PODWALL")),
        "{:#?}",
        all_rules(ns)
    );
    init(&["--remove"]);
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// The packets that went through each jump from `chain` (filter table) into `target`, by the
/// jump's rule, from `iptables-save -c`.
fn jump_counts(ns: &str, chain: &str, target: &str) -> Vec<(String, u64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-save", "-c", "-t", "filter"])
        .output()
        .expect("iptables-save");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| {
            // "[packets:bytes] -A OUTPUT -p udp -j PODWALL_FILTER_OUT"
            let (counters, rule) = l.strip_prefix('[')?.split_once("] ")?;
            let rule = rule.strip_prefix(&format!("-A {chain} "))?;
            rule.ends_with(&format!("-j {target}")).then(|| {
                let packets = counters.split(':').next().unwrap_or("0");
                (rule.to_owned(), packets.parse().unwrap_or(u64::MAX))
            })
        })
        .collect()
}

#[test]
fn tcp_packets_never_walk_the_packet_filter_chains_and_every_other_protocol_does() {
    if !ready_for("tcp_packets_never_walk_the_packet_filter_chains_and_every_other_protocol_does") {
        return;
    }
    let ns = "pw-e2e-filter";
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let sh = |script: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", script])
            .output()
            .expect("bash")
    };
    assert!(
        Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip")
            .success()
    );
    // A link where nobody answers for 10.77.0.2: packets to it pass every OUTPUT hook and
    // then wait for ARP in vain. The range is excluded from the redirect so TCP goes out as
    // it is, not to the proxy's port.
    let setup = sh(
        "ip link set lo up && ip link add d0 type veth peer name d1 \
         && ip link set d0 up && ip link set d1 up && ip addr add 10.77.0.1/24 dev d0",
    );
    assert!(setup.status.success(), "{setup:?}");
    let init = sh(&format!(
        "{PODWALL} proxy init --exclude-outbound-cidrs 10.77.0.0/24"
    ));
    assert!(init.status.success(), "{init:?}");
    let out_jumps = jump_counts(ns, "OUTPUT", "PODWALL_FILTER_OUT");
    let rules: Vec<&str> = out_jumps.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rules, ["! -p tcp -j PODWALL_FILTER_OUT"]);

    // TCP: a connection attempt sends SYNs (nobody answers).
    let _ = sh("timeout 2 bash -c 'exec 3<>/dev/tcp/10.77.0.2/80' 2>/dev/null");
    let after_tcp = jump_counts(ns, "OUTPUT", "PODWALL_FILTER_OUT");
    assert!(
        after_tcp.iter().all(|(_, packets)| *packets == 0),
        "TCP went into the packet filter: {after_tcp:?}"
    );

    // UDP: one datagram takes the jump.
    let _ = sh("echo x > /dev/udp/10.77.0.2/9999");
    let after_udp = jump_counts(ns, "OUTPUT", "PODWALL_FILTER_OUT");
    assert_eq!(after_udp[0].1, 1, "{after_udp:?}");

    let _ = sh(&format!("{PODWALL} proxy init --remove"));
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

#[test]
fn down_after_a_killed_up_removes_everything() {
    if !ready_for("down_after_a_killed_up_removes_everything") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/three-tier");
    let mut up = Command::new(PODWALL)
        .args(["sandbox", "up"])
        .arg(&dir)
        .args(["--name", "crash", "--inject", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("up");
    // Kill it mid-way: once some namespaces exist.
    wait_for("up to create namespaces", Duration::from_secs(20), || {
        Path::new("/run/netns/pw-crash-1").exists()
    });
    let _ = up.kill();
    let _ = up.wait();
    let out = Command::new(PODWALL)
        .args(["sandbox", "down", "--name", "crash"])
        .output()
        .expect("down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("pw-crash-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new("/run/podwall/sandbox/crash").exists());
    // No server or sidecar of that sandbox survives.
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("--sandbox crash") || c.contains("/run/podwall/sandbox/crash/"))
        .collect();
    assert!(survivors.is_empty(), "{survivors:#?}");
}

/// Kills a child process when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sandbox's server in `ns` for `pod` on `tcp` and `udp` ports (comma-separated).
fn serve_in(ns: &str, pod: &str, tcp: &str, udp: &str) -> Killed {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", ns, PODWALL, "sandbox", "serve", "--pod", pod,
    ])
    .args(["--tcp", tcp]);
    if !udp.is_empty() {
        cmd.args(["--udp", udp]);
    }
    Killed(
        cmd.stdout(std::process::Stdio::null())
            .spawn()
            .expect("server"),
    )
}

/// Installs the capture in `ns` (IPv6 too) and runs pod `v6/NAME`'s sidecar there with the
/// policy in `dir/state.yaml`, its flow events in `dir/flows.jsonl`; returns once it is ready.
fn v6_sidecar(ns: &str, name: &str, dir: &Path) -> Killed {
    if !Command::new("sh")
        .args(["-c", "command -v ip6tables"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        panic!("ip6tables is part of the iptables package and must be there");
    }
    let init = Command::new("ip")
        .args(["netns", "exec", ns, PODWALL, "proxy", "init"])
        .output()
        .expect("init");
    assert!(
        String::from_utf8_lossy(&init.stderr).contains("ip6tables rules installed"),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let sidecar = podwall_sandbox::sidecar_in(ns, PODWALL)
        .args(["proxy", "run", "--pod-namespace", "v6", "--pod-name", name])
        .arg(format!(
            "--policy-source=dir:{}",
            dir.join("state.yaml").display()
        ))
        .stdout(std::fs::File::create(dir.join("flows.jsonl")).expect("flows"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sidecar");
    let sidecar = Killed(sidecar);
    wait_for("the sidecar to be ready", Duration::from_secs(10), || {
        run_in(ns, || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", 15020)) else {
                return false;
            };
            let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.contains(" 200 ")
        })
        .unwrap_or(false)
    });
    sidecar
}

/// The first flow event in `dir/flows.jsonl` that matches `f`, waiting for it.
fn v6_flow(dir: &Path, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("flows.jsonl")).unwrap_or_default();
        if let Some(e) = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| f(e))
        {
            return e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no flow event {what} in {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const V6_PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: v6, labels: {app: client}}\nstatus: {podIP: 'fd77::1'}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: v6, labels: {app: server}}\nstatus: {podIP: 'fd77::2'}\n";

#[test]
fn ipv6_connections_are_redirected_judged_and_keep_their_original_destination() {
    if !ready_for("ipv6_connections_are_redirected_judged_and_keep_their_original_destination") {
        return;
    }
    let (c, s) = ("pw-e2e-v6c", "pw-e2e-v6s");
    let _pair = support::sandbox::V6Pair::new([c, s], ["fd77::1/64", "fd77::2/64"]);
    let policy = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        policy.path().join("state.yaml"),
        V6_PODS.to_string() + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: v6}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 'fd77::2/128'}}]\n    ports: [{port: 8080}]\n",
    )
    .expect("write");
    let _server = serve_in(s, "v6/server", "8080,9090", "");
    let _sidecar = v6_sidecar(c, "client", policy.path());
    let server_addr: IpAddr = "fd77::2".parse().expect("ip");
    let (_, greeting) = connect(c, SocketAddr::new(server_addr, 8080)).expect("allowed over IPv6");
    assert!(greeting.contains("port 8080 from [fd77::1]:"), "{greeting}");
    let denied = connect(c, SocketAddr::new(server_addr, 9090));
    assert!(denied.is_err(), "{denied:?}");
    v6_flow(policy.path(), "denying 9090", |e| {
        e["verdict"] == "DENIED"
            && e["destination"]["ip"] == "fd77::2"
            && e["destination"]["port"] == 9090
    });
}

/// Sends `payload` from `ns` to `dst` over UDP (IPv6) and returns the echo, if one comes.
fn udp6_echo(ns: &str, dst: SocketAddr, payload: &'static [u8]) -> Option<Vec<u8>> {
    run_in(ns, move || {
        let s = std::net::UdpSocket::bind("[::]:0").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.send_to(payload, dst).ok()?;
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
    .ok()
    .flatten()
}

#[test]
fn over_ipv6_inbound_tcp_udp_ping_and_dns_are_judged_like_over_ipv4() {
    if !ready_for("over_ipv6_inbound_tcp_udp_ping_and_dns_are_judged_like_over_ipv4")
        || !support::ready(
            "over_ipv6_inbound_tcp_udp_ping_and_dns_are_judged_like_over_ipv4",
            &["dnsmasq", "ping"],
            "dnsmasq and ping",
        )
    {
        return;
    }
    let (c, s) = ("pw-e2e-v6c2", "pw-e2e-v6s2");
    let _pair = support::sandbox::V6Pair::new([c, s], ["fd78::1/64", "fd78::2/64"]);
    let server_ip: IpAddr = "fd78::2".parse().expect("ip");
    let client_ip: IpAddr = "fd78::1".parse().expect("ip");
    // The client takes TCP 7070 from the server, and may send UDP 5300 and DNS to it.
    let policy = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        policy.path().join("state.yaml"),
        V6_PODS.replace("fd77", "fd78") + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: v6}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd78::2/128'}}]\n    ports: [{port: 7070}]\n  egress:\n  - to: [{ipBlock: {cidr: 'fd78::2/128'}}]\n    ports: [{port: 5300, protocol: UDP}, {port: 53, protocol: UDP}]\n",
    )
    .expect("write");
    let _server = serve_in(s, "v6/server", "8080", "5300,5301");
    let _client_server = serve_in(c, "v6/client", "7070,7071", "");
    let _dns = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                s,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
            ])
            .args(["--listen-address=fd78::2", "--bind-interfaces", "--port=53"])
            .args(["--address=/api.example.com/192.0.2.10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    // Without podwall, all of it passes (so the denials below are podwall's).
    wait_for("the server's UDP echo", Duration::from_secs(10), || {
        udp6_echo(c, SocketAddr::new(server_ip, 5301), b"x").is_some()
    });
    assert!(
        pings(c, server_ip) && pings(s, client_ip),
        "ICMPv6 echo without podwall"
    );
    assert!(connect(s, SocketAddr::new(client_ip, 7071)).is_ok());
    let ask = move || {
        run_in(c, move || {
            let s = std::net::UdpSocket::bind("[::]:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.send_to(&dns_query("api.example.com."), "[fd78::2]:53")
                .ok()?;
            let mut buf = [0u8; 512];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(dns_answer(&buf[..n]))
        })
        .ok()
        .flatten()
    };
    wait_for("dnsmasq to answer", Duration::from_secs(10), || {
        ask().is_some_and(|a| a.answers.len() == 1)
    });

    let _sidecar = v6_sidecar(c, "client", policy.path());
    let dir = policy.path();
    // Inbound TCP: the allowed port reaches the client's server; another is reset.
    let (_, greeting) =
        connect(s, SocketAddr::new(client_ip, 7070)).expect("inbound 7070 over IPv6");
    // (From the pod's own address: the sidecar connects to the application locally.)
    assert!(
        greeting.contains("v6/client port 7070 from [fd78::1]:"),
        "{greeting}"
    );
    assert!(connect(s, SocketAddr::new(client_ip, 7071)).is_err());
    v6_flow(dir, "denying inbound 7071", |e| {
        e["verdict"] == "DENIED" && e["direction"] == "ingress" && e["destination"]["port"] == 7071
    });
    // UDP: 5300 echoes, 5301 is dropped, said so.
    assert_eq!(
        udp6_echo(c, SocketAddr::new(server_ip, 5300), b"udp over v6").as_deref(),
        Some(&b"udp over v6"[..])
    );
    assert_eq!(udp6_echo(c, SocketAddr::new(server_ip, 5301), b"x"), None);
    v6_flow(dir, "denying UDP 5301", |e| {
        e["verdict"] == "DENIED" && e["protocol"] == "UDP" && e["destination"]["port"] == 5301
    });
    // ICMPv6 echo: no rule without ports, so not either way.
    assert!(!pings(c, server_ip), "ping out of the pod");
    assert!(!pings(s, client_ip), "ping into the pod");
    v6_flow(dir, "denying the ping out", |e| {
        e["verdict"] == "DENIED" && e["protocol"] == "ICMP" && e["direction"] == "egress"
    });
    v6_flow(dir, "denying the ping in", |e| {
        e["verdict"] == "DENIED" && e["protocol"] == "ICMP" && e["direction"] == "ingress"
    });
    // DNS to an IPv6 resolver: captured, answered through the DNS proxy, logged with its name.
    let answer = ask().expect("an answer over IPv6");
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    let query = v6_flow(dir, "the DNS query", |e| {
        e["l7"]["dns"]["query"] == "api.example.com"
    });
    assert_eq!(query["destination"]["ip"], "fd78::2", "{query}");
    assert_eq!(query["verdict"], "ALLOWED", "{query}");
}

/// The guides' L7 example in the sandbox; returns it with the frontend's namespace and the API's
/// address.
fn l7_sandbox(name: &str) -> (Up, String, IpAddr) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/l7-api");
    let up = Up::new(&dir, name, Inject::Annotated);
    let ns = up.ns("production/frontend");
    let api = up.ip("production/api");
    (up, ns, api)
}

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

fn curl(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn app_log(up: &Up, key: &str) -> String {
    let i = up
        .sb()
        .record
        .pods
        .iter()
        .position(|p| p.key == key)
        .expect("pod");
    std::fs::read_to_string(up.sb().logs_dir().join(format!("{i}-server.log"))).unwrap_or_default()
}

/// Sends one HTTP/1.1 request on a kept-alive connection and returns the response's status,
/// having read its whole body.
fn exchange(s: &mut BufReader<TcpStream>, method: &str, path: &str) -> u16 {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: api\r\n\r\n");
    s.get_mut()
        .write_all(request.as_bytes())
        .expect("write request");
    let mut status = String::new();
    s.read_line(&mut status).expect("status line");
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status:?}"));
    let mut length = None;
    loop {
        let mut header = String::new();
        s.read_line(&mut header).expect("header");
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("a response with Content-Length")];
    s.read_exact(&mut body).expect("body");
    code
}

/// Opens an HTTP/1.1 connection from `ns` and sends `first` on it at once (the test server
/// greets clients that stay silent), asserting each status; the connection stays open.
fn keep_alive(
    ns: &str,
    dst: SocketAddr,
    first: &'static [(&'static str, &'static str, u16)],
) -> BufReader<TcpStream> {
    run_in(ns, move || {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut s = BufReader::new(s);
        for &(method, path, status) in first {
            assert_eq!(exchange(&mut s, method, path), status, "{method} {path}");
        }
        s
    })
    .expect("in the namespace")
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

/// Writes `bytes` on a new connection from `ns` to `dst` and returns the status codes of the
/// responses read until the server closes (or 3 s of silence).
fn raw_statuses(ns: &str, dst: SocketAddr, bytes: &'static [u8]) -> Vec<String> {
    let answer = run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .expect("netns");
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| answer[i + 9..].chars().take(3).collect())
        .collect()
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

const GRPC_TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: g}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: g, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: g, labels: {app: server}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.2}
---
apiVersion: podwall.io/v1alpha1
kind: PodwallPolicy
metadata: {name: echo, namespace: g}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /demo.Echo/Allowed}
"#;

/// A gRPC server with two unary methods that echo their request, without generated code.
const GRPC_SERVER: &str = r#"
import grpc, time
from concurrent import futures
echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
handler = grpc.method_handlers_generic_handler("demo.Echo", {"Allowed": echo, "Forbidden": echo})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:50051")
server.start()
print("serving", flush=True)
time.sleep(120)
"#;

/// Calls Allowed, Forbidden, Allowed on one channel and prints each outcome.
const GRPC_CLIENT: &str = r#"
import grpc, sys
channel = grpc.insecure_channel(sys.argv[1] + ":50051")
grpc.channel_ready_future(channel).result(timeout=10)
for method in ["Allowed", "Forbidden", "Allowed"]:
    try:
        reply = channel.unary_unary("/demo.Echo/" + method)(b"hello", timeout=5)
        print(method, "OK", reply.decode())
    except grpc.RpcError as e:
        print(method, e.code().name)
"#;

/// Whether python3 has grpcio; in CI its absence is a failure, elsewhere a printed skip.
fn has_grpc() -> bool {
    let has = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with grpcio is needed (.ci/run installs it)");
        }
        eprintln!("skipping the gRPC test: python3 -m pip install grpcio");
    }
    has
}

/// Starts `GRPC_SERVER` in the topology's server pod and waits until it listens.
fn start_grpc_server(up: &Up) -> std::process::Child {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &up.ns("g/server"),
            "python3",
            "-c",
            GRPC_SERVER,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("grpc server");
    let mut first = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("server started");
    server
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

/// A gRPC client that keeps one channel across a policy change: two calls, then (after a line
/// on stdin) calls `Forbidden` until it passes and `Allowed` once more.
const GRPC_CLIENT_ACROSS_A_CHANGE: &str = r#"
import grpc, sys, time
channel = grpc.insecure_channel(sys.argv[1] + ":50051")
grpc.channel_ready_future(channel).result(timeout=10)
def call(method):
    try:
        channel.unary_unary("/demo.Echo/" + method)(b"hello", timeout=5)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
print("Allowed", call("Allowed"), flush=True)
print("Forbidden", call("Forbidden"), flush=True)
sys.stdin.readline()
deadline = time.time() + 15
while call("Forbidden") != "OK" and time.time() < deadline:
    time.sleep(0.2)
print("Forbidden", call("Forbidden"), flush=True)
print("Allowed", call("Allowed"), flush=True)
"#;

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

// ---------------------------------------------------------------------------------------------
// toFQDNs and the DNS proxy, with dnsmasq as the cluster DNS and curl / glibc as the clients.

/// dnsmasq and curl on top of the usual tools.
fn ready_for_dns(test: &str) -> bool {
    if !ready_for(test) {
        return false;
    }
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("dnsmasq") && have("curl") && have("getent") {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs dnsmasq, curl and getent; with CI=true it must run, not skip");
    }
    eprintln!("skipping {test}: needs dnsmasq, curl and getent");
    false
}

/// A runner with a sidecar allowed two names on port 80 (and UDP/53 to one outside resolver),
/// the cluster DNS, and the outside hosts. `api.example.com` has a 2-second TTL.
const FQDN_TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: runner, namespace: t, labels: {app: runner}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.78.0.1, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
status: {podIP: 10.78.0.53, hostIP: 192.168.78.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: runner-egress, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: runner}}
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: '*.cdn.example.net'}, {matchName: big.example.com}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  - toCIDR: [203.0.113.53/32]
    toPorts: [{ports: [{port: '53', protocol: UDP}]}]
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: api}
spec: {address: 203.0.113.10, names: [api.example.com], ports: [80], ttl: 2}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: cdn}
spec: {address: 203.0.113.20, names: [www.cdn.example.net, evil.example.org], ports: [80], ttl: 60}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: other}
spec: {address: 198.51.100.20, names: [other.example.org], ports: [80], ttl: 60}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: big}
spec:
  address: 203.0.113.30
  names: [big.example.com]
  ports: [80]
  ttl: 60
  extraAddresses: [203.0.113.31, 203.0.113.32, 203.0.113.33, 203.0.113.34, 203.0.113.35, 203.0.113.36, 203.0.113.37, 203.0.113.38, 203.0.113.39, 203.0.113.40, 203.0.113.41, 203.0.113.42, 203.0.113.43, 203.0.113.44, 203.0.113.45, 203.0.113.46, 203.0.113.47, 203.0.113.48, 203.0.113.49, 203.0.113.50, 203.0.113.51, 203.0.113.52, 203.0.113.54, 203.0.113.55, 203.0.113.56, 203.0.113.57, 203.0.113.58, 203.0.113.59, 203.0.113.60, 203.0.113.61, 203.0.113.62, 203.0.113.63, 203.0.113.64, 203.0.113.65, 203.0.113.66]
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: resolver}
spec: {address: 203.0.113.53}
"#;

/// Runs a program in a pod's namespace the way its containers do (`ip netns exec`, which
/// mounts the sandbox's resolv.conf): exit code and output.
fn in_pod(ns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn curl_in(ns: &str, url: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["curl", "-sS", "--max-time", "5"];
    args.extend(extra);
    args.push(url);
    in_pod(ns, &args)
}

/// DNS flow events of a pod's sidecar.
fn dns_events(up: &Up, key: &str) -> Vec<serde_json::Value> {
    up.flows(key)
        .into_iter()
        .filter(|e| !e["l7"]["dns"].is_null())
        .collect()
}

fn wait_for_flow(
    up: &Up,
    key: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(e) = up.flows(key).into_iter().find(|e| f(e)) {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no flow event {what} in {:#?}", up.flows(key));
}

#[test]
fn with_dns_captured_by_redirect_names_still_resolve_and_are_judged() {
    if !ready_for_dns("with_dns_captured_by_redirect_names_still_resolve_and_are_judged") {
        return;
    }
    // NAT REDIRECT instead of TPROXY (a sidecar without NET_ADMIN): the query's original
    // resolver is lost, and the sidecar asks the pod's configured one.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/allow-github-api");
    let up = Up::with(
        &dir,
        Options {
            init_args: vec!["--dns-capture=redirect".into()],
            sidecar_args: vec!["--dns-capture=redirect".into()],
            ..options("ghredir", Inject::Annotated)
        },
    );
    let ns = up.ns("production/ci-runner");
    let (code, body) = curl_in(&ns, "http://api.github.com:443/repos", &[]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("external/github-api GET /repos"), "{body}");
    let (code, out) = curl_in(&ns, "http://example.com:443/", &[]);
    assert_eq!(code, 6, "could not resolve: {out}");
    let refused = wait_for_flow(&up, "production/ci-runner", "refusing example.com", |e| {
        e["l7"]["dns"]["query"] == "example.com"
    });
    assert_eq!(refused["l7"]["dns"]["rcode"], "REFUSED");
    // Every rule is still in place (the same rule set but for the capture of UDP DNS).
    let rules = Command::new("ip")
        .args(["netns", "exec", &ns, "iptables-save", "-t", "nat"])
        .output()
        .expect("iptables-save");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-p udp") && rules.contains("--dport 53") && rules.contains("REDIRECT"),
        "{rules}"
    );
}

#[test]
fn excluded_ports_bypass_the_sidecar_in_both_directions() {
    if !ready_for("excluded_ports_bypass_the_sidecar_in_both_directions") {
        return;
    }
    // Every pod denies everything, both ways; port 9001 is excluded from capture in and out.
    let yaml = TWO_PODS.to_string()
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: t}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let dir = topology(&yaml);
    let up = Up::with(
        dir.path(),
        Options {
            init_args: vec![
                "--exclude-outbound-ports=9001".into(),
                "--exclude-inbound-ports=9001".into(),
            ],
            ..options("excl", Inject::Annotated)
        },
    );
    let client = up.ns("t/client");
    let server = up.ip("t/server");
    assert!(
        connect(&client, SocketAddr::new(server, 8080)).is_err(),
        "judged: denied"
    );
    let (_, greeting) = connect(&client, SocketAddr::new(server, 9001))
        .expect("excluded: neither sidecar judges it");
    assert!(greeting.contains("t/server port 9001"), "{greeting}");
}

#[test]
fn the_github_example_resolves_and_reaches_its_names_and_refuses_the_rest() {
    if !ready_for_dns("the_github_example_resolves_and_reaches_its_names_and_refuses_the_rest") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/allow-github-api");
    let up = Up::new(&dir, "gh", Inject::Annotated);
    let ns = up.ns("production/ci-runner");
    // The sandbox server answers HTTP on any port: plain HTTP to 443 shows the Host check too.
    let (code, body) = curl_in(&ns, "http://api.github.com:443/repos", &[]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("external/github-api GET /repos"), "{body}");
    let (code, body) = curl_in(&ns, "http://github.com:443/", &[]);
    assert_eq!(code, 0, "{body}");
    // Port 80 of the same host: not in the rule.
    let (code, _) = curl_in(&ns, "http://api.github.com:80/", &[]);
    assert_ne!(code, 0);
    // Another name: REFUSED by the DNS proxy (dnsmasq would have answered it).
    let (code, out) = curl_in(&ns, "http://example.com:443/", &[]);
    assert_eq!(code, 6, "could not resolve: {out}");
    let refused = wait_for_flow(&up, "production/ci-runner", "refusing example.com", |e| {
        e["l7"]["dns"]["query"] == "example.com"
    });
    assert_eq!(refused["verdict"], "DENIED");
    assert_eq!(refused["l7"]["dns"]["rcode"], "REFUSED");
    let learned = wait_for_flow(
        &up,
        "production/ci-runner",
        "learning api.github.com",
        |e| e["l7"]["dns"]["query"] == "api.github.com" && e["l7"]["dns"]["qtype"] == "A",
    );
    assert_eq!(learned["verdict"], "ALLOWED");
    assert_eq!(learned["l7"]["dns"]["reason"], "implicit-for-toFQDNs");
    assert_eq!(learned["l7"]["dns"]["ips"][0], "203.0.113.10");
    // The original destination of the query (coredns, by address: no rule of the runner's
    // names it, so it is not in the runner's view).
    assert_eq!(
        learned["destination"]["ip"],
        up.ip("kube-system/coredns").to_string().as_str(),
        "{learned}"
    );
}

/// FQDN_TOPOLOGY's runner and hosts, judged by ClusterNetworkPolicies instead of its
/// CiliumNetworkPolicy: `domainNames` through the DNS proxy and the learned names.
fn domain_names_topology() -> String {
    let without_cnp = FQDN_TOPOLOGY
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: CiliumNetworkPolicy"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    without_cnp
        + r#"
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: allowed-names}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t}}}
  egress:
  - name: cdn
    action: Accept
    to: [{domainNames: ["*.EXAMPLE.net."]}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: resolver
    action: Accept
    to: [{networks: [203.0.113.53/32]}]
    protocols: [{udp: {destinationPort: {number: 53}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: nothing-else-out}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t}}}
  egress:
  - {name: deny-all, action: Deny, to: [{networks: [0.0.0.0/0]}]}
"#
}

#[test]
fn cluster_policy_domain_names_allow_resolved_names_only_with_the_to_fqdns_trust_rules() {
    if !ready_for_dns(
        "cluster_policy_domain_names_allow_resolved_names_only_with_the_to_fqdns_trust_rules",
    ) {
        return;
    }
    let dir = topology(&domain_names_topology());
    let up = Up::new(dir.path(), "cnpdn", Inject::Annotated);
    let ns = up.ns("t/runner");
    // A name the wildcard covers (two labels below it), resolved by the pod: allowed.
    let (code, out) = curl_in(&ns, "http://www.cdn.example.net/", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external/cdn GET /"), "{out}");
    let allowed = wait_for_flow(&up, "t/runner", "the allowed connection", |e| {
        e["destination"]["ip"] == "203.0.113.20" && e["verdict"] == "ALLOWED"
    });
    assert_eq!(allowed["egress"]["reason"], "cluster-accept", "{allowed}");
    assert_eq!(allowed["egress"]["rule_name"], "cdn");
    assert_eq!(allowed["egress"]["names"][0], "www.cdn.example.net");
    // A name no domainNames entry covers: the pod may not reach the resolver for it (only
    // names the policies select pass implicitly), so the DNS proxy refuses it ...
    let (code, out) = curl_in(&ns, "http://api.example.com/", &[]);
    assert_eq!(code, 6, "could not resolve: {out}");
    let refused = wait_for_flow(&up, "t/runner", "refusing api.example.com", |e| {
        e["l7"]["dns"]["query"] == "api.example.com"
    });
    assert_eq!(refused["l7"]["dns"]["rcode"], "REFUSED", "{refused}");
    // ... and its address, known otherwise, meets the Deny.
    let (code, out) = curl_in(
        &ns,
        "http://api.example.com/",
        &["--resolve", "api.example.com:80:203.0.113.10"],
    );
    assert_ne!(code, 0, "{out}");
    let denied = wait_for_flow(&up, "t/runner", "the denied connection", |e| {
        e["destination"]["ip"] == "203.0.113.10" && e["verdict"] == "DENIED"
    });
    assert_eq!(denied["egress"]["reason"], "cluster-deny", "{denied}");
    assert_eq!(denied["egress"]["rule_name"], "deny-all");
    // The CDN's address asked for under another name: the Host check refuses it, as for
    // toFQDNs.
    let (code, out) = curl_in(
        &ns,
        "http://evil.example.org/",
        &["--resolve", "evil.example.org:80:203.0.113.20"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Access denied"), "{out}");
    // Never resolved: denied.
    let (code, out) = curl_in(&ns, "http://198.51.100.20/", &[]);
    assert_ne!(code, 0, "{out}");
}

#[test]
fn with_the_audit_flag_dns_refusals_name_checks_and_connections_pass_as_audit() {
    if !ready_for_dns("with_the_audit_flag_dns_refusals_name_checks_and_connections_pass_as_audit")
    {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--audit".into()],
            ..options("fqaud", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    // A name no rule covers: enforced, the DNS proxy refuses it; audited, it is answered and the
    // connection to its address passes, each logged as AUDIT.
    let (code, out) = curl_in(&ns, "http://other.example.org/", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external/other GET /"), "{out}");
    let query = wait_for_flow(&up, "t/runner", "the audited query", |e| {
        e["l7"]["dns"]["query"] == "other.example.org"
    });
    assert_eq!(query["verdict"], "AUDIT", "{query}");
    assert_ne!(query["l7"]["dns"]["rcode"], "REFUSED", "{query}");
    let conn = wait_for_flow(&up, "t/runner", "the audited connection", |e| {
        e["destination"]["ip"] == "198.51.100.20" && e["l7"].is_null()
    });
    assert_eq!(conn["verdict"], "AUDIT", "{conn}");
    // The CDN's address under another name: the Host check would answer 403; audited, the
    // request reaches the server and is logged as AUDIT.
    let (code, out) = curl_in(&ns, "http://www.cdn.example.net/", &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = curl_in(
        &ns,
        "http://evil.example.org/",
        &["--resolve", "evil.example.org:80:203.0.113.20"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external/cdn GET /"), "not refused: {out}");
    let request = wait_for_flow(&up, "t/runner", "the audited request", |e| {
        e["l7"]["http"]["host"] == "evil.example.org"
    });
    assert_eq!(request["verdict"], "AUDIT", "{request}");
}

#[test]
fn an_address_never_resolved_or_asked_for_under_another_name_is_denied() {
    if !ready_for_dns("an_address_never_resolved_or_asked_for_under_another_name_is_denied") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::new(dir.path(), "fqn", Inject::Annotated);
    let ns = up.ns("t/runner");
    // By address, never resolved: reset.
    let (code, out) = curl_in(&ns, "http://203.0.113.10/", &[]);
    assert_ne!(code, 0, "{out}");
    // Resolved: allowed.
    let (code, out) = curl_in(&ns, "http://api.example.com/", &[]);
    assert_eq!(code, 0, "{out}");
    // The CDN address, learned for www.cdn.example.net, asked for as evil.example.org: the
    // Host check refuses it.
    let (code, out) = curl_in(&ns, "http://www.cdn.example.net/", &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = curl_in(
        &ns,
        "http://evil.example.org/",
        &["--resolve", "evil.example.org:80:203.0.113.20"],
    );
    // Every request's Host is checked: a 403 for this one, as HTTP rules answer.
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Access denied"), "{out}");
    let denied = wait_for_flow(&up, "t/runner", "the Host check", |e| {
        e["verdict"] == "DENIED" && e["l7"]["http"]["host"] == "evil.example.org"
    });
    assert!(
        denied["error"]
            .as_str()
            .is_some_and(|r| r.contains("not a name the toFQDNs rules allow")),
        "{denied}"
    );
    assert_eq!(denied["egress"]["names"][0], "www.cdn.example.net");
    // TLS: the SNI of the ClientHello is read (nothing is terminated). The sandbox server
    // does not speak TLS, so curl fails either way, and the flow events tell the two apart:
    // an allowed name passes the SNI check and is then cut for the server's answer, which is
    // not TLS.
    let _ = curl_in(&ns, "https://www.cdn.example.net:80/", &["-k"]);
    wait_for_flow(&up, "t/runner", "the SNI check passing", |e| {
        e["reason"].as_str().is_some_and(|r| {
            r.starts_with("TLS SNI www.cdn.example.net")
                && r.contains("did not answer the ClientHello with TLS")
        })
    });
    let _ = curl_in(
        &ns,
        "https://evil.example.org:80/",
        &["-k", "--resolve", "evil.example.org:80:203.0.113.20"],
    );
    wait_for_flow(&up, "t/runner", "the SNI check refusing", |e| {
        e["verdict"] == "DENIED"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("TLS SNI evil.example.org"))
    });
    // A name outside the rules is refused at DNS, whatever the resolver would say.
    let (code, _) = curl_in(&ns, "http://other.example.org/", &[]);
    assert_eq!(code, 6);
}

#[test]
fn ttl_expiry_stops_new_connections_but_not_open_ones() {
    if !ready_for_dns("ttl_expiry_stops_new_connections_but_not_open_ones") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    // The sandbox's server greets a silent client: a server-first protocol, which a
    // toFQDNs-only address admits with the flag.
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--allow-unnamed-fqdn-connections".into()],
            ..options("ttl", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "api.example.com"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("203.0.113.10"), "{out}");
    let dst: SocketAddr = "203.0.113.10:80".parse().expect("addr");
    let (mut open, greeting) = connect(&ns, dst).expect("allowed while the answer is fresh");
    assert!(greeting.starts_with("podwall-sandbox"), "{greeting}");
    // The answer's TTL is 2 s: new connections are refused once it has passed, not before.
    let resolved = Instant::now();
    loop {
        match connect(&ns, dst) {
            Err(_) => break,
            Ok(_) => assert!(
                resolved.elapsed() < Duration::from_secs(10),
                "new connections are still allowed long after the answer expired"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let expired_after = resolved.elapsed();
    assert!(
        expired_after >= Duration::from_millis(1500),
        "refused after {expired_after:?}, before the answer's TTL of 2 s"
    );
    open.get_mut().write_all(b"still here\n").expect("write");
    let mut echo = String::new();
    open.read_line(&mut echo)
        .expect("the open connection keeps working");
    assert_eq!(echo, "still here\n");
    // Resolving again opens it again.
    let (code, _) = in_pod(&ns, &["getent", "ahostsv4", "api.example.com"]);
    assert_eq!(code, 0);
    assert!(connect(&ns, dst).is_ok());
}

/// A DNS query for `name` (type A, ID 0x4242) without EDNS, as a stub resolver sends it.
#[test]
fn the_fqdn_ttl_floor_and_per_name_cap_flags_reach_the_sidecars_cache() {
    if !ready_for_dns("the_fqdn_ttl_floor_and_per_name_cap_flags_reach_the_sidecars_cache") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec![
                "--allow-unnamed-fqdn-connections".into(),
                "--fqdn-min-ttl=6s".into(),
                "--fqdn-max-ips-per-name=4".into(),
                // Most of big.example.com's addresses have no host behind them.
                "--connect-timeout=300ms".into(),
            ],
            ..options("ttlcap", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    // api.example.com answers with a TTL of 2 s; the floor keeps its address for 6.
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "api.example.com"]);
    assert_eq!(code, 0, "{out}");
    let resolved = Instant::now();
    let dst: SocketAddr = "203.0.113.10:80".parse().expect("addr");
    while connect(&ns, dst).is_ok() {
        assert!(
            resolved.elapsed() < Duration::from_secs(15),
            "still allowed long after the floor"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = resolved.elapsed();
    assert!(
        kept >= Duration::from_secs(5),
        "refused after {kept:?}: the 6 s floor did not hold the 2 s answer"
    );
    // big.example.com has 36 addresses; 4 are kept, so connections to 4 of them are allowed
    // (most have no host behind them: the verdict is read from each one's flow event).
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "big.example.com"]);
    assert_eq!(code, 0, "{out}");
    let addresses: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(addresses.len(), 36, "{out}");
    let mut allowed = Vec::new();
    for a in &addresses {
        let ip: IpAddr = a.parse().expect("an address");
        let _ = connect(&ns, SocketAddr::new(ip, 80));
        let event = wait_for_flow(&up, "t/runner", "the connection's event", |e| {
            e["destination"]["ip"] == a.as_str() && e["l7"].is_null()
        });
        if event["verdict"] == "ALLOWED" {
            allowed.push(a.clone());
        }
    }
    assert_eq!(allowed.len(), 4, "the per-name cap: {allowed:?}");
}

fn dns_query(name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_str(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encodes")
}

fn dns_answer(bytes: &[u8]) -> hickory_proto::op::Message {
    hickory_proto::op::Message::from_vec(bytes).expect("a DNS message")
}

#[test]
fn dns_over_tcp_is_judged_and_learned_from() {
    if !ready_for_dns("dns_over_tcp_is_judged_and_learned_from") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    // The sandbox's server greets a silent client: a server-first protocol, which a
    // toFQDNs-only address admits with the flag.
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--allow-unnamed-fqdn-connections".into()],
            ..options("dtcp", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    let resolver = SocketAddr::new(up.ip("kube-system/coredns"), 53);
    let ask = |name: &'static str| {
        run_in(&ns, move || {
            let mut s = TcpStream::connect_timeout(&resolver, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let q = dns_query(name);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend(q);
            s.write_all(&framed).map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).map_err(|e| e.to_string())?;
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut body).map_err(|e| e.to_string())?;
            Ok::<_, String>(body)
        })
        .expect("in netns")
        .expect("a TCP answer")
    };
    let ok = dns_answer(&ask("api.example.com."));
    assert_eq!(ok.metadata.id, 0x4242);
    assert_eq!(ok.answers.len(), 1);
    let refused = dns_answer(&ask("other.example.org."));
    assert_eq!(
        refused.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused
    );
    assert!(connect(&ns, "203.0.113.10:80".parse().expect("addr")).is_ok());
    let e = wait_for_flow(&up, "t/runner", "a TCP DNS event", |e| {
        e["protocol"] == "TCP" && e["l7"]["dns"]["query"] == "api.example.com"
    });
    assert_eq!(e["l7"]["dns"]["learned"], 1);
}

#[test]
fn a_truncated_answer_is_passed_on_and_the_retry_over_tcp_teaches_every_address() {
    if !ready_for_dns(
        "a_truncated_answer_is_passed_on_and_the_retry_over_tcp_teaches_every_address",
    ) {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::new(dir.path(), "dtc", Inject::Annotated);
    let ns = up.ns("t/runner");
    // 36 addresses do not fit in 512 bytes: glibc gets TC over UDP and asks again over TCP.
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "big.example.com"]);
    assert_eq!(code, 0, "{out}");
    let addresses: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(addresses.len(), 36, "{out}");
    let events = dns_events(&up, "t/runner");
    assert!(
        events.iter().any(|e| e["protocol"] == "UDP"
            && e["l7"]["dns"]["query"] == "big.example.com"
            && e["l7"]["dns"]["truncated"] == true),
        "{events:#?}"
    );
    let tcp = wait_for_flow(&up, "t/runner", "the TCP retry", |e| {
        e["protocol"] == "TCP" && e["l7"]["dns"]["query"] == "big.example.com"
    });
    assert_eq!(tcp["l7"]["dns"]["ips"].as_array().map(Vec::len), Some(36));
}

#[test]
fn a_forged_answer_from_another_port_teaches_nothing() {
    if !ready_for_dns("a_forged_answer_from_another_port_teaches_nothing") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::new(dir.path(), "dsp", Inject::Annotated);
    let ns = up.ns("t/runner");
    let resolver_ns = up
        .sb()
        .record
        .externals
        .iter()
        .find(|e| e.host.name == "resolver")
        .expect("resolver host")
        .netns
        .clone();
    // A resolver that first answers from another port with a forged address, then properly.
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        run_in(&resolver_ns, move || {
            use hickory_proto::op::{Message, OpCode};
            use hickory_proto::rr::{RData, Record, rdata::A};
            let sock = std::net::UdpSocket::bind("203.0.113.53:53").expect("bind 53");
            let forger = std::net::UdpSocket::bind("203.0.113.53:5353").expect("bind 5353");
            let _ = bound_tx.send(());
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 512];
            let (n, client) = sock.recv_from(&mut buf).expect("a query");
            let q = Message::from_vec(&buf[..n]).expect("query");
            let answer = |ip: [u8; 4]| {
                let mut m = Message::response(q.metadata.id, OpCode::Query);
                m.add_queries(q.queries.iter().cloned());
                m.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A(ip.into())),
                ));
                m.to_vec().expect("encodes")
            };
            forger
                .send_to(&answer([203, 0, 113, 30]), client)
                .expect("forge");
            std::thread::sleep(Duration::from_millis(50));
            sock.send_to(&answer([203, 0, 113, 10]), client)
                .expect("answer");
        })
        .expect("in netns")
    });
    bound
        .recv_timeout(Duration::from_secs(5))
        .expect("the resolver listens");
    let reply = run_in(&ns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.send_to(&dns_query("big.example.com."), "203.0.113.53:53")
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok::<_, String>((buf[..n].to_vec(), from))
    })
    .expect("in netns")
    .expect("an answer");
    server.join().expect("resolver thread");
    let (bytes, from) = reply;
    assert_eq!(
        from,
        "203.0.113.53:53".parse::<SocketAddr>().expect("addr"),
        "the reply comes from the resolver asked"
    );
    let answer = dns_answer(&bytes);
    assert_eq!(answer.answers.len(), 1);
    let e = wait_for_flow(&up, "t/runner", "the relayed query", |e| {
        e["l7"]["dns"]["query"] == "big.example.com"
    });
    assert_eq!(e["l7"]["dns"]["ips"], serde_json::json!(["203.0.113.10"]));
    // The forged address was never learned: the runner may not reach it.
    assert!(connect(&ns, "203.0.113.30:80".parse().expect("addr")).is_err());
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.78.0.1, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api-a, namespace: t, labels: {app: api, zone: a}}
spec: {containers: [{name: s, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.78.0.2, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api-b, namespace: t, labels: {app: api, zone: b}}
spec: {containers: [{name: s, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.78.0.3, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: t, labels: {app: db}}
spec: {containers: [{name: s, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.78.0.4, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: t}
spec: {clusterIP: 10.96.0.50, selector: {app: api}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: t}
spec: {clusterIP: 10.96.0.60, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: t}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
"#;

#[test]
fn a_service_ip_leads_round_robin_to_the_backends_policy_allows_and_none_means_denied() {
    if !ready_for(
        "a_service_ip_leads_round_robin_to_the_backends_policy_allows_and_none_means_denied",
    ) {
        return;
    }
    let dir = topology(SERVICES);
    let up = Up::new(dir.path(), "svc", Inject::Annotated);
    let client = up.ns("t/client");
    let vip: SocketAddr = "10.96.0.50:80".parse().expect("addr");
    // Round robin over both backends, each reached on its own named target port.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (_, greeting) = connect(&client, vip).unwrap_or_else(|e| {
            panic!(
                "the service answers: {e}; flows: {:#?}",
                up.flows("t/client")
            )
        });
        assert!(
            greeting.contains("api-a") && greeting.contains("port 8080")
                || greeting.contains("api-b") && greeting.contains("port 9090"),
            "{greeting}"
        );
        seen.insert(if greeting.contains("api-a") { "a" } else { "b" });
    }
    assert_eq!(seen.len(), 2, "both backends take connections");
    // Egress to db pods is not allowed: no backend of the db service may be used.
    let db: SocketAddr = "10.96.0.60:5432".parse().expect("addr");
    assert!(connect(&client, db).is_err(), "no allowed backend: refused");

    // Narrow the client's egress to zone a: every connection now lands on api-a.
    let narrow = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-egress, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {zone: a}}}]\n";
    // Same name, a file read after policies.json: this definition replaces the first.
    std::fs::write(up.sb().policy_dir().join("z-client-egress.yaml"), narrow)
        .expect("write policy");
    wait_for("the narrowed policy", Duration::from_secs(10), || {
        (0..4).all(|_| connect(&client, vip).is_ok_and(|(_, g)| g.contains("api-a")))
    });
    wait_for_flow(
        &up,
        "t/client",
        "an allowed connection through the service",
        |e| {
            e["service"]["name"] == "t/api"
                && e["verdict"] == "ALLOWED"
                && e["destination"]["pod"] == "api-a"
        },
    );
    let flows = up.flows("t/client");
    let via_service: Vec<_> = flows
        .iter()
        .filter(|e| e["service"]["name"] == "t/api")
        .collect();
    assert!(
        via_service
            .iter()
            .all(|e| e["service"]["address"] == "10.96.0.50:80"),
        "{via_service:#?}"
    );
    assert!(
        via_service
            .iter()
            .any(|e| e["verdict"] == "ALLOWED" && e["destination"]["pod"] == "api-a"),
        "{via_service:#?}"
    );
    let refused = flows
        .iter()
        .find(|e| e["service"]["name"] == "t/db")
        .expect("the db attempt is a flow event");
    assert_eq!(refused["verdict"], "DENIED");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allows none of its 1 ready endpoints")),
        "{refused:#?}"
    );
}

/// UDP: the server takes datagrams on 5300 from the client only; the client may send UDP only
/// to the server's 5300; `plain` (no sidecar) listens on 5300 too.
const UDP_TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: u}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: u, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.1, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: u, labels: {app: other}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.2, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: u, labels: {app: server}, annotations: {podwall.io/inject: enabled}}
spec: {containers: [{name: s, ports: [{containerPort: 5300, protocol: UDP}, {containerPort: 5301, protocol: UDP}]}]}
status: {podIP: 10.79.0.3, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: u, labels: {app: plain}}
spec: {containers: [{name: s, ports: [{containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.79.0.4, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: pinger, namespace: u, labels: {app: pinger}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.5, hostIP: 192.168.79.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-udp, namespace: u}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 5300}]
  - from: [{podSelector: {matchLabels: {app: pinger}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: u}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: UDP, port: 5300}]
"#;

/// Whether one ping from inside `ns` to `dst` is answered within a second (iputils' ping).
fn pings(ns: &str, dst: IpAddr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1",
        ])
        .arg(dst.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A UDP socket opened inside `ns` (it stays there), one flow per socket.
fn udp_socket(ns: &str) -> std::net::UdpSocket {
    let s = run_in(ns, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    s
}

/// One datagram on `s`'s flow to `dst`: whether its echo came back.
fn echoes(s: &std::net::UdpSocket, dst: SocketAddr) -> bool {
    let mut buf = [0u8; 64];
    s.send_to(b"ping", dst).is_ok()
        && s.recv_from(&mut buf)
            .is_ok_and(|(n, from)| from == dst && &buf[..n] == b"ping")
}

/// Sends one datagram from inside `ns` and returns the echo, if one comes within a second.
fn udp_echo(ns: &str, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let payload = payload.to_vec();
    run_in(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.send_to(&payload, dst).ok()?;
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        (from == dst).then(|| buf[..n].to_vec())
    })
    .ok()
    .flatten()
}

#[test]
fn udp_flows_and_ping_are_judged_by_policy_in_both_directions() {
    if !support::ready(
        "udp_flows_and_ping_are_judged_by_policy_in_both_directions",
        &["ip", "iptables", "setpriv", "ping"],
        "iproute2, iptables, setpriv and ping",
    ) {
        return;
    }
    let dir = topology(UDP_TOPOLOGY);
    let up = Up::new(dir.path(), "udp", Inject::Annotated);
    let (client, other) = (up.ns("u/client"), up.ns("u/other"));
    let server = up.ip("u/server");
    let allowed = SocketAddr::new(server, 5300);
    // Allowed both ways: the datagram and its echo arrive whole (the sandbox server echoes).
    let mut echo = None;
    for _ in 0..5 {
        echo = udp_echo(&client, allowed, b"hello over udp");
        if echo.is_some() {
            break;
        }
    }
    assert_eq!(echo.as_deref(), Some(&b"hello over udp"[..]));
    // The server's ingress allows only port 5300, and only from the client.
    assert_eq!(udp_echo(&other, SocketAddr::new(server, 5301), b"x"), None);
    assert_eq!(udp_echo(&other, allowed, b"x"), None);
    // The client's egress allows only the server's 5300.
    assert_eq!(udp_echo(&client, SocketAddr::new(server, 5301), b"x"), None);
    // The client's egress allows only the server: a pod without a sidecar is refused at the
    // client's own side.
    assert_eq!(
        udp_echo(&client, SocketAddr::new(up.ip("u/plain"), 5300), b"x"),
        None
    );
    // And the same client flow still works afterwards (the filter keeps judging).
    assert!(udp_echo(&client, allowed, b"again").is_some());

    let other_ip = up.ip("u/other").to_string();
    let plain_ip = up.ip("u/plain").to_string();
    wait_for_flow(&up, "u/server", "the denial of other", |e| {
        e["protocol"] == "UDP"
            && e["verdict"] == "DENIED"
            && e["source"]["ip"] == other_ip.as_str()
            && e["destination"]["port"] == 5300
    });
    let flows = up.flows("u/server");
    let udp = |e: &&serde_json::Value| e["protocol"] == "UDP";
    let denied_other = flows
        .iter()
        .filter(udp)
        .find(|e| {
            e["verdict"] == "DENIED"
                && e["source"]["ip"] == other_ip
                && e["destination"]["port"] == 5300
        })
        .unwrap_or_else(|| panic!("no denial of other in {flows:#?}"));
    assert_eq!(denied_other["direction"], "ingress");
    assert_eq!(denied_other["destination"]["port"], 5300);
    assert_eq!(
        denied_other["ingress"]["isolated_by"][0],
        "NetworkPolicy u/server-udp"
    );
    assert!(
        flows.iter().filter(udp).any(|e| e["verdict"] == "ALLOWED"
            && e["source"]["pod"] == "client"
            && e["destination"]["port"] == 5300),
        "{flows:#?}"
    );
    assert!(
        flows
            .iter()
            .filter(udp)
            .any(|e| e["verdict"] == "DENIED" && e["destination"]["port"] == 5301),
        "{flows:#?}"
    );
    let client_flows = up.flows("u/client");
    assert!(
        client_flows
            .iter()
            .filter(udp)
            .any(|e| e["verdict"] == "DENIED"
                && e["direction"] == "egress"
                && e["destination"]["port"] == 5301),
        "{client_flows:#?}"
    );
    let denied_plain = client_flows
        .iter()
        .filter(udp)
        .find(|e| e["verdict"] == "DENIED" && e["destination"]["ip"] == plain_ip)
        .unwrap_or_else(|| panic!("no egress denial in {client_flows:#?}"));
    assert_eq!(denied_plain["direction"], "egress");
    assert_eq!(
        denied_plain["egress"]["isolated_by"][0],
        "NetworkPolicy u/client-egress"
    );

    // Ping: only a rule without ports allows it, and both sides must.
    let pinger = up.ns("u/pinger");
    assert!(
        (0..5).any(|_| pings(&pinger, server)),
        "the server's rule for the pinger has no ports"
    );
    assert!(
        pings(&up.ns("u/server"), up.ip("u/pinger")),
        "neither the server's egress nor the pinger's ingress is isolated"
    );
    assert!(!pings(&other, server), "no ingress rule for other");
    assert!(
        !pings(&client, server),
        "the client's rules name UDP 5300 only"
    );
    for verdict in ["ALLOWED", "DENIED"] {
        wait_for_flow(&up, "u/server", "both pings' events", |e| {
            e["protocol"] == "ICMP" && e["verdict"] == verdict && e["direction"] == "ingress"
        });
    }
    let flows = up.flows("u/server");
    let icmp = |e: &&serde_json::Value| e["protocol"] == "ICMP";
    assert!(
        flows.iter().filter(icmp).any(|e| e["verdict"] == "ALLOWED"
            && e["direction"] == "ingress"
            && e["source"]["pod"] == "pinger"),
        "{flows:#?}"
    );
    assert!(
        flows.iter().filter(icmp).any(|e| e["verdict"] == "DENIED"
            && e["direction"] == "ingress"
            && e["source"]["ip"] == other_ip),
        "{flows:#?}"
    );
    assert!(
        up.flows("u/client")
            .iter()
            .filter(icmp)
            .any(|e| e["verdict"] == "DENIED" && e["direction"] == "egress"),
        "the client's own sidecar drops its ping"
    );

    // A policy change ends the running flows it denies, and only those.
    let (cut, kept) = (udp_socket(&client), udp_socket(&pinger));
    let kept_dst = SocketAddr::new(server, 5301);
    assert!((0..5).any(|_| echoes(&cut, allowed)), "client flow before");
    assert!(
        (0..5).any(|_| echoes(&kept, kept_dst)),
        "pinger flow before"
    );
    let file = up.sb().policy_dir().join("policies.json");
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read policies"))
            .expect("json");
    let server_udp = list["items"]
        .as_array_mut()
        .expect("items")
        .iter_mut()
        .find(|p| p["metadata"]["name"] == "server-udp")
        .expect("server-udp");
    server_udp["spec"]["ingress"][0]["ports"][0]["port"] = 5399.into();
    std::fs::write(&file, list.to_string()).expect("write policies");
    wait_for(
        "the client's running flow to be cut",
        Duration::from_secs(10),
        || !echoes(&cut, allowed),
    );
    assert!(
        echoes(&kept, kept_dst),
        "a flow the new policy allows keeps running"
    );
    wait_for_flow(&up, "u/server", "the revoked flow", |e| {
        e["protocol"] == "UDP"
            && e["verdict"] == "DENIED"
            && e["source"]["pod"] == "client"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("policy change"))
    });
}

#[test]
fn with_the_audit_flag_udp_the_policy_denies_passes_both_ways_and_is_logged_as_audit() {
    if !support::ready(
        "with_the_audit_flag_udp_the_policy_denies_passes_both_ways_and_is_logged_as_audit",
        &["ip", "iptables", "setpriv"],
        "iproute2, iptables and setpriv",
    ) {
        return;
    }
    let dir = topology(UDP_TOPOLOGY);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--audit".into()],
            ..options("udpaud", Inject::Annotated)
        },
    );
    let (client, other) = (up.ns("u/client"), up.ns("u/other"));
    let server = up.ip("u/server");
    // Enforced, both are dropped (the test above): the client's egress allows only 5300, the
    // server's ingress only the client. Audited, each echo comes back, answered by the server.
    let echo =
        |ns: &str, dst: SocketAddr, payload: &[u8]| (0..5).find_map(|_| udp_echo(ns, dst, payload));
    assert_eq!(
        echo(&client, SocketAddr::new(server, 5301), b"audited egress").as_deref(),
        Some(&b"audited egress"[..])
    );
    assert_eq!(
        echo(&other, SocketAddr::new(server, 5300), b"audited ingress").as_deref(),
        Some(&b"audited ingress"[..])
    );
    let egress = wait_for_flow(&up, "u/client", "the audited egress", |e| {
        e["protocol"] == "UDP" && e["destination"]["port"] == 5301
    });
    assert_eq!(egress["verdict"], "AUDIT", "{egress}");
    assert_eq!(egress["egress"]["allowed"], false, "{egress}");
    let other_ip = up.ip("u/other").to_string();
    let ingress = wait_for_flow(&up, "u/server", "the audited ingress", |e| {
        e["protocol"] == "UDP" && e["source"]["ip"] == other_ip.as_str()
    });
    assert_eq!(ingress["verdict"], "AUDIT", "{ingress}");
    assert_eq!(ingress["ingress"]["allowed"], false, "{ingress}");
    // What the policy allows stays ALLOWED.
    assert!(echo(&client, SocketAddr::new(server, 5300), b"allowed").is_some());
    let allowed = wait_for_flow(&up, "u/client", "the allowed flow", |e| {
        e["protocol"] == "UDP" && e["destination"]["port"] == 5300
    });
    assert_eq!(allowed["verdict"], "ALLOWED", "{allowed}");
}

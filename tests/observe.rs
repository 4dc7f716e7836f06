//! `podwall observe` as operators use it: from a file a log pipeline exported, and from a
//! cluster's podwall-proxy containers through the API server's log streams (an in-process API
//! server speaking the real protocol), filtered, and followed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podwall_control::testing::FakeApiServer;
use serde_json::{Value, json};

mod support;

fn flow(time: &str, verdict: &str, from: (&str, &str), to: (&str, &str), port: u16) -> Value {
    let denied = verdict != "ALLOWED";
    json!({"time": time, "verdict": verdict, "direction": "egress", "protocol": "TCP",
        "source": {"namespace": from.0, "pod": from.1, "ip": "10.1.0.1", "port": 40000},
        "destination": {"namespace": to.0, "pod": to.1, "ip": "10.1.0.2", "port": port},
        "egress": if denied {
            json!({"allowed": false, "reason": "no-rule-matched", "isolated_by": [format!("NetworkPolicy {}/default-deny", from.0)]})
        } else {
            json!({"allowed": true, "reason": "not-isolated"})
        },
        "ingress": {"allowed": true, "reason": "not-isolated"},
        "bytes_sent": 0, "bytes_received": 0, "duration_ms": 0.1})
}

fn podwall(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("podwall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flows_from_a_file_are_filtered_and_shown_as_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("flows.jsonl");
    let lines = [
        flow(
            "2026-12-05T10:00:00.000Z",
            "ALLOWED",
            ("shop", "web"),
            ("shop", "api"),
            8080,
        )
        .to_string(),
        "{\"level\":\"INFO\",\"message\":\"feed connected\"}".to_string(),
        flow(
            "2026-12-05T10:00:01.000Z",
            "DENIED",
            ("shop", "web"),
            ("shop", "db"),
            5432,
        )
        .to_string(),
        flow(
            "2026-12-05T10:00:02.000Z",
            "DENIED",
            ("ci", "runner"),
            ("shop", "db"),
            5432,
        )
        .to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let f = file.to_str().expect("path");

    let (code, out, err) = podwall(&["observe", "-f", f, "--verdict", "DENIED"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "10:00:01.000 shop/web:40000 -> shop/db:5432 TCP DENIED (no rule of NetworkPolicy shop/default-deny allows the source's egress) [egress]",
            "10:00:02.000 ci/runner:40000 -> shop/db:5432 TCP DENIED (no rule of NetworkPolicy ci/default-deny allows the source's egress) [egress]",
        ]
    );
    let (_, out, _) = podwall(&["observe", "-f", f, "--from", "shop/", "-o", "json"], &[]);
    let parsed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(parsed.len(), 2);
    assert_eq!(
        parsed[1],
        serde_json::from_str::<Value>(&lines[2]).expect("json"),
        "the event unchanged"
    );
    let (_, out, _) = podwall(&["observe", "-f", f, "--to", "shop/db", "--last", "1"], &[]);
    assert!(out.trim().starts_with("10:00:02.000 ci/runner"), "{out}");
    let (_, out, _) = podwall(&["observe", "-f", f, "-o", "table", "--port", "8080"], &[]);
    assert!(out.starts_with("TIME"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, _, err) = podwall(&["observe", "-f", f, "--pod", "app=web"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("label selectors need the cluster"), "{err}");
    let (code, _, err) = podwall(&["observe", "-f", f, "--to", "nowhere"], &[]);
    assert_eq!(code, 2, "{err}");

    // An end the sidecar gave only by address is named from the pods of --state.
    let mut unnamed = flow(
        "2026-12-05T10:00:04.000Z",
        "DENIED",
        ("x", "x"),
        ("shop", "db"),
        5432,
    );
    unnamed["source"] = json!({"ip": "10.1.0.77", "port": 40001});
    let by_ip = dir.path().join("by-ip.jsonl");
    std::fs::write(&by_ip, format!("{unnamed}\n")).expect("write");
    let state = dir.path().join("pods.yaml");
    std::fs::write(
        &state,
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: web-2, namespace: shop}\n  status: {podIP: 10.1.0.77}\n",
    )
    .expect("write");
    let (code, out, err) = podwall(
        &[
            "observe",
            "-f",
            by_ip.to_str().expect("path"),
            "--state",
            state.to_str().expect("path"),
            "--from",
            "shop/web-2",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("shop/web-2:40001 -> shop/db:5432"), "{out}");

    // Following a file: a line appended is printed as it comes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args(["observe", "-f", f, "--follow", "--verdict", "AUDIT"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("observe");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open");
    // The first line may be read with the file's start; once it is printed, observe has read
    // the file, and the second can only come by following it.
    let mut printed = Vec::new();
    let mut took = Duration::ZERO;
    for port in [5432, 5433] {
        let written = Instant::now();
        writeln!(
            appended,
            "{}",
            flow(
                "2026-12-05T10:00:03.000Z",
                "AUDIT",
                ("shop", "web"),
                ("shop", "db"),
                port
            )
        )
        .expect("append");
        let mut line = String::new();
        reader.read_line(&mut line).expect("a line");
        took = written.elapsed();
        printed.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(printed[0].contains("shop/db:5432"), "{printed:?}");
    assert!(
        printed[1].contains("AUDIT") && printed[1].contains("shop/db:5433"),
        "{printed:?}"
    );
    eprintln!("an appended flow was printed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_sidecars_are_followed_through_the_api_servers_log_streams() {
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    let pod = |ns: &str, name: &str, app: &str, sidecar: bool| {
        let mut inits = vec![];
        if sidecar {
            inits.push(json!({"name": "podwall-proxy", "restartPolicy": "Always"}));
        }
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"containers": [{"name": "app"}], "initContainers": inits},
            "status": {"phase": "Running", "podIP": "10.1.0.9"}})
    };
    api.apply(pod("shop", "web-1", "web", true));
    api.apply(pod("shop", "plain", "plain", false));
    api.apply(pod("ci", "runner", "runner", true));
    let old = flow(
        "2026-12-05T10:00:00.000Z",
        "DENIED",
        ("shop", "web-1"),
        ("shop", "db"),
        5432,
    );
    api.container_log(
        "shop",
        "web-1",
        "podwall-proxy",
        "{\"level\":\"INFO\",\"message\":\"feed connected\"}",
    );
    api.container_log("shop", "web-1", "podwall-proxy", &old.to_string());
    api.container_log(
        "ci",
        "runner",
        "podwall-proxy",
        &flow(
            "2026-12-05T10:00:00.500Z",
            "DENIED",
            ("ci", "runner"),
            ("shop", "db"),
            5432,
        )
        .to_string(),
    );
    api.container_log("shop", "plain", "app", &old.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\nusers:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n", api.url()),
    )
    .expect("kubeconfig");
    let kc = kubeconfig.to_str().expect("path").to_string();

    // Once: every sidecar's flows, or one namespace's.
    let kc2 = kc.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        podwall(&["observe", "-o", "json"], &[("KUBECONFIG", kc2.as_str())])
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "two sidecars, one flow each: {out}");
    let kc2 = kc.clone();
    let (_, out, _) = tokio::task::spawn_blocking(move || {
        podwall(&["observe", "-n", "ci"], &[("KUBECONFIG", kc2.as_str())])
    })
    .await
    .expect("join");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("ci/runner"), "{out}");

    // Following, by label: new flows of a selected pod arrive; a pod that starts later is
    // picked up.
    let mut child = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args([
            "observe",
            "--follow",
            "--pod",
            "app=web",
            "--verdict",
            "DENIED",
        ])
        .env("KUBECONFIG", &kc)
        .stdout(Stdio::piped())
        .spawn()
        .expect("observe");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = next_line(&mut lines_rx).await;
    assert!(
        first.contains("shop/web-1:40000 -> shop/db:5432"),
        "{first}"
    );
    let written = Instant::now();
    api.container_log(
        "shop",
        "web-1",
        "podwall-proxy",
        &flow(
            "2026-12-05T10:00:05.000Z",
            "DENIED",
            ("shop", "web-1"),
            ("shop", "cache"),
            6379,
        )
        .to_string(),
    );
    let line = next_line(&mut lines_rx).await;
    eprintln!(
        "a new flow was printed {:?} after its sidecar wrote it",
        written.elapsed()
    );
    assert!(line.contains("shop/cache:6379"), "{line}");
    api.apply(pod("shop", "web-2", "web", true));
    api.container_log(
        "shop",
        "web-2",
        "podwall-proxy",
        &flow(
            "2026-12-05T10:00:06.000Z",
            "DENIED",
            ("shop", "web-2"),
            ("shop", "db"),
            5432,
        )
        .to_string(),
    );
    let line = next_line(&mut lines_rx).await;
    assert!(
        line.contains("shop/web-2"),
        "a pod that started later: {line}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a line in time")
        .expect("observe still runs")
}

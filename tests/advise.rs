//! `podwall advise` as an operator runs it: observed flows and the cluster's state in, policies
//! out that the analyzer then finds allow what was seen and deny what was not.

mod support;

use support::podwall;

const STATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/docs/cluster-state.yaml"
);

const FLOWS: &str = r#"{"time":"2026-12-05T10:00:00.000Z","verdict":"ALLOWED","direction":"egress","protocol":"TCP","source":{"namespace":"shop","pod":"web","ip":"10.1.0.10","port":40000},"destination":{"namespace":"shop","pod":"db","ip":"10.1.0.20","port":5432},"egress":{"allowed":true,"reason":"not-isolated"},"ingress":{"allowed":true,"reason":"not-isolated"},"bytes_sent":10,"bytes_received":10,"duration_ms":1.0}
{"time":"2026-12-05T10:00:01.000Z","verdict":"AUDIT","direction":"egress","protocol":"TCP","source":{"namespace":"shop","pod":"web","ip":"10.1.0.10","port":40001},"destination":{"ip":"140.82.112.5","port":443},"egress":{"allowed":false,"reason":"no-rule-matched","names":["api.github.com"]},"bytes_sent":0,"bytes_received":0,"duration_ms":1.0}
{"time":"2026-12-05T10:00:02.000Z","verdict":"DENIED","direction":"egress","protocol":"TCP","source":{"namespace":"shop","pod":"db","ip":"10.1.0.20","port":40002},"destination":{"namespace":"shop","pod":"web","ip":"10.1.0.10","port":8080},"bytes_sent":0,"bytes_received":0,"duration_ms":0.1}
{"level":"INFO","message":"feed connected"}
"#;

#[test]
fn advised_policies_allow_the_observed_flows_and_the_analyzer_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, FLOWS).expect("write");
    let out_dir = dir.path().join("advised");
    let (code, out, err) = podwall(
        &[
            "advise",
            "-f",
            STATE,
            "--flows",
            flows.to_str().expect("path"),
            "--out-dir",
            out_dir.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("each observed flow checked: all allowed"),
        "{err}"
    );
    let shop = std::fs::read_to_string(out_dir.join("shop.yaml")).expect("shop.yaml");
    assert!(shop.contains("# shop/web -> shop/db TCP/5432"), "{shop}");
    assert!(shop.contains("matchName: \"api.github.com\""), "{shop}");
    // The denied flow was not wanted: nothing allows db -> web.
    assert!(!shop.contains("advised-web-ingress"), "{shop}");
    let check = |from: &str, to: &str, port: &str| {
        let (code, out, err) = podwall(
            &[
                "analyze",
                "check",
                "-f",
                STATE,
                "-f",
                out_dir.to_str().expect("path"),
                "--from",
                from,
                "--to",
                to,
                "--port",
                port,
            ],
            None,
        );
        assert!(code == 0 || code == 1, "{out}{err}");
        code == 0
    };
    assert!(check("shop/web", "shop/db", "5432"), "seen: allowed");
    assert!(
        !check("shop/web", "shop/db", "22"),
        "another port: denied (web's egress)"
    );
    // db's sidecar never reported web's calls: db gets no ingress policy from them (its other
    // clients, unseen here, keep reaching it).
    assert!(!shop.contains("advised-db-ingress"), "{shop}");
    // Standard output, grouped by namespace, when no directory is given.
    let (code, out, _) = podwall(&["advise", "-f", STATE, "--flows", "-"], Some(FLOWS));
    assert_eq!(code, 0);
    assert!(out.starts_with("# namespace shop\n---\n"), "{out}");
    // Nothing to advise from: said, not an empty success.
    let (code, _, err) = podwall(&["advise", "-f", STATE, "--flows", "-"], Some("{}\n"));
    assert_eq!(code, 2);
    assert!(err.contains("no allowed or audited flow events"), "{err}");
}

#[test]
fn http_requests_seen_become_http_rules_that_the_l7_engine_allows() {
    let state = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/l7-api/cluster.yaml");
    let flows = r#"{"time":"2026-12-05T10:00:00.000Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080},"bytes_sent":10,"bytes_received":10,"duration_ms":1.0}
{"time":"2026-12-05T10:00:00.100Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080},"l7":{"http":{"method":"GET","path":"/api/v1/users?page=2","status":200}},"bytes_sent":0,"bytes_received":0,"duration_ms":1.0}
{"time":"2026-12-05T10:00:00.200Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080},"l7":{"http":{"method":"POST","path":"/api/v1/orders","status":201}},"bytes_sent":0,"bytes_received":0,"duration_ms":1.0}
"#;
    let (code, out, err) = podwall(&["advise", "-f", state, "--flows", "-"], Some(flows));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("all allowed"), "{err}");
    assert!(out.contains("kind: PodwallPolicy"), "{out}");
    assert!(
        out.contains(r#"path: "/api/v1/users(\\?.*)?""#),
        "the path exactly, any query: {out}"
    );
    assert!(out.contains("method: \"POST\""), "{out}");
    // Applied, the analyzer's HTTP check agrees: what was seen passes, another path does not.
    let dir = tempfile::tempdir().expect("tempdir");
    let advised = dir.path().join("advised.yaml");
    std::fs::write(&advised, out.replace("# namespace production\n", "")).expect("write");
    let check = |method: &str, path: &str| {
        let (code, _, _) = podwall(
            &[
                "analyze",
                "check",
                "-f",
                state,
                "-f",
                advised.to_str().expect("path"),
                "--from",
                "production/frontend",
                "--to",
                "production/api",
                "--port",
                "8080",
                "--http-method",
                method,
                "--http-path",
                path,
            ],
            None,
        );
        code
    };
    assert_eq!(check("GET", "/api/v1/users"), 0);
    assert_eq!(check("GET", "/api/v1/users?page=3"), 0);
    assert_eq!(check("GET", "/api/v1/users/7"), 1, "another path");
    assert_eq!(check("GET", "/api/v1/users?page=3"), 0);
    assert_eq!(check("GET", "/api/v1/users/7"), 1, "another path");
    assert_eq!(check("DELETE", "/api/v1/users"), 1);
    assert_eq!(check("GET", "/admin"), 1);
}

#[test]
fn an_http_rule_reports_the_other_pods_of_the_source_workload_it_opens_the_port_to() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/l7-api/cluster.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("cluster.yaml");
    std::fs::write(
        &state,
        std::fs::read_to_string(example).expect("example")
            + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: frontend-2, namespace: production, labels: {app: frontend}}\nstatus: {phase: Running, podIP: 10.244.1.21}\n",
    )
    .expect("write");
    let flows = r#"{"time":"2026-12-05T10:00:00.100Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080},"l7":{"http":{"method":"GET","path":"/api/v1/users","status":200}},"bytes_sent":0,"bytes_received":0,"duration_ms":1.0}
"#;
    let (code, out, err) = podwall(
        &[
            "advise",
            "-f",
            state.to_str().expect("path"),
            "--flows",
            "-",
        ],
        Some(flows),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("also opens 1 pair(s) of pods not seen talking (2 source pod(s), 1 destination pod(s) match) (HTTP rule: for the methods and paths seen only)"),
        "{err}"
    );
}

#[test]
fn a_connection_relayed_unparsed_on_an_observed_port_is_warned_about_under_proposed_http_rules() {
    let state = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/l7-api/cluster.yaml");
    let flows = format!(
        r#"{{"time":"2026-12-05T10:00:00.100Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP","source":{{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000}},"destination":{{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080}},"l7":{{"http":{{"method":"GET","path":"/api/v1/users","status":200}}}},"bytes_sent":0,"bytes_received":0,"duration_ms":1.0}}
{{"time":"2026-12-05T10:00:00.200Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP","source":{{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40001}},"destination":{{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080}},"reason":"{}","bytes_sent":10,"bytes_received":10,"duration_ms":1.0}}
"#,
        podwall_proxy::flow::UNPARSED_OBSERVED
    );
    let (code, out, err) = podwall(&["advise", "-f", state, "--flows", "-"], Some(&flows));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: production/frontend -> production/api TCP/8080: it was relayed without parsing"),
        "{err}"
    );
}

#[test]
fn a_request_only_the_client_saw_gives_the_server_no_http_policy() {
    let state = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/l7-api/cluster.yaml");
    let flows = r#"{"time":"2026-12-05T10:00:00.000Z","verdict":"ALLOWED","direction":"egress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080},"bytes_sent":10,"bytes_received":10,"duration_ms":1.0}
{"time":"2026-12-05T10:00:00.100Z","verdict":"ALLOWED","direction":"egress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"api","ip":"10.244.2.21","port":8080},"l7":{"http":{"method":"GET","path":"/api/v1/users","status":200}},"bytes_sent":0,"bytes_received":0,"duration_ms":1.0}
"#;
    let (code, out, err) = podwall(&["advise", "-f", state, "--flows", "-"], Some(flows));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("PodwallPolicy"),
        "api's sidecar did not see it: {out}"
    );
    assert!(out.contains("advised-frontend-egress"), "{out}");
}

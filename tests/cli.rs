//! `podwall analyze` as operators and scripts use it: exit codes, the JSON contracts, the table,
//! and messages for bad input.

mod support;

const THREE_TIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/three-tier");

fn podwall(args: &[&str]) -> (i32, String, String) {
    podwall_stdin(args, None)
}

fn podwall_stdin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    support::podwall(args, stdin)
}

#[test]
fn matrix_json_is_the_documented_contract() {
    let (code, out, err) = podwall(&[
        "analyze", "matrix", "-f", THREE_TIER, "--port", "8080", "-o", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["allowed", "pods", "port", "protocol"]);
    assert_eq!(v["port"], 8080);
    assert_eq!(v["protocol"], "TCP");
    let pods: Vec<&str> = v["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| p.as_str().expect("str"))
        .collect();
    assert_eq!(
        pods,
        [
            "ingress-nginx/controller",
            "kube-system/coredns",
            "production/api",
            "production/frontend",
            "production/postgres"
        ]
    );
    for from in &pods {
        for to in &pods {
            assert!(v["allowed"][from][to].is_boolean(), "allowed[{from}][{to}]");
        }
    }
    assert_eq!(v["allowed"]["production/frontend"]["production/api"], true);
    assert_eq!(v["allowed"]["production/api"]["production/frontend"], false);
}

#[test]
fn matrix_without_a_port_covers_every_declared_port() {
    let (code, out, _) = podwall(&["analyze", "matrix", "-f", THREE_TIER, "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ports: Vec<(String, u64)> = v
        .as_array()
        .expect("an array of matrices")
        .iter()
        .map(|m| {
            (
                m["protocol"].as_str().expect("p").to_string(),
                m["port"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("TCP".into(), 53),
            ("TCP".into(), 80),
            ("TCP".into(), 443),
            ("TCP".into(), 5432),
            ("TCP".into(), 8080),
            ("TCP".into(), 9153),
            ("UDP".into(), 53)
        ]
    );
}

#[test]
fn the_matrix_table_stays_readable_at_thirty_pods() {
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {matchLabels: {role: db}}}\n",
    );
    for i in 0..30 {
        let role = if i % 3 == 0 { "db" } else { "web" };
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: service-{i:02}, namespace: shop, labels: {{role: {role}}}}}\nstatus: {{podIP: 10.0.0.{}}}\n",
            i + 1
        ));
    }
    let (code, out, err) = podwall_stdin(
        &["analyze", "matrix", "-f", "-", "--port", "80"],
        Some(&yaml),
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("TCP/80: 610 of 900 connections allowed"),
        "{}",
        lines[0]
    );
    let rows: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("shop/service-"))
        .collect();
    // 20 open pods take all 30 sources; the 10 isolated ones only themselves.
    assert_eq!(rows.len(), 30);
    for row in &rows {
        assert_eq!(row.matches(['✓', '·']).count(), 30, "{row}");
        assert!(row.chars().count() <= 120, "fits a terminal: {row}");
    }
    assert!(
        rows[0].trim_start().starts_with("1  shop/service-00"),
        "{}",
        rows[0]
    );
    let header = lines
        .iter()
        .find(|l| l.trim_start().starts_with("1  2  3"))
        .expect("column numbers");
    assert!(header.trim_end().ends_with("30"), "{header}");
}

#[test]
fn check_exits_0_when_allowed_and_1_when_denied() {
    let base = ["analyze", "check", "-f", THREE_TIER, "--port", "8080"];
    let (code, out, _) = podwall(
        &[
            &base[..],
            &["--from", "production/frontend", "--to", "production/api"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(
            "ALLOWED: production/frontend (10.244.1.20) -> production/api (10.244.2.21) on TCP/8080"
        ),
        "{out}"
    );
    assert!(
        out.contains("allowed by NetworkPolicy production/api-ingress spec.ingress[0]"),
        "{out}"
    );
    let (code, out, _) = podwall(
        &[
            &base[..],
            &["--from", "production/postgres", "--to", "production/api"],
        ]
        .concat(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("DENIED"), "{out}");
}

#[test]
fn check_json_says_for_each_side_whether_isolated_and_which_rule_allowed() {
    let (code, out, _) = podwall(&[
        "analyze",
        "check",
        "-f",
        THREE_TIER,
        "--from",
        "production/frontend",
        "--to",
        "10.244.2.21",
        "--port",
        "8080",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["allowed"], true);
    assert_eq!(
        v["to"]["pod"], "production/api",
        "a pod address is that pod"
    );
    for side in ["egress", "ingress"] {
        assert_eq!(v[side]["isolated"], true, "{side}");
        assert_eq!(v[side]["allowed"], true, "{side}");
        assert_eq!(v[side]["reason"], "rule", "{side}");
    }
    assert_eq!(
        v["egress"]["allowed_by"]["policy"],
        "NetworkPolicy production/frontend-egress"
    );
    assert_eq!(v["egress"]["allowed_by"]["rule"], 0);
    assert_eq!(v["ingress"]["allowed_by"]["name"], "api-ingress");
    assert_eq!(
        v["egress"]["isolated_by"],
        serde_json::json!([
            "NetworkPolicy production/allow-dns",
            "NetworkPolicy production/default-deny-all",
            "NetworkPolicy production/frontend-egress"
        ])
    );
}

#[test]
fn check_accepts_outside_addresses() {
    let (code, out, _) = podwall(&[
        "analyze",
        "check",
        "-f",
        THREE_TIER,
        "--from",
        "203.0.113.7",
        "--to",
        "production/frontend",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["from"]["kind"], "external");
    assert_eq!(v["egress"]["reason"], "not-a-pod");
    assert_eq!(v["ingress"]["reason"], "no-rule-matched");
}

#[test]
fn lint_exits_1_on_findings_and_0_when_clean() {
    let (code, out, _) = podwall(&["analyze", "lint", "-f", THREE_TIER]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");
    let overview = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/overview-guide");
    let (code, out, _) = podwall(&["analyze", "lint", "-f", overview]);
    assert_eq!(code, 1);
    assert!(out.contains("warning[peers-or-not-and]"), "{out}");
    assert!(
        out.contains("overview-guide/policies.yaml:"),
        "findings name the file and line: {out}"
    );
}

#[test]
fn lint_reports_invalid_policies_and_the_rest_is_still_analyzed() {
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec:\n  ingress:\n  - ports: [{port: 80, protocol: tcp}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n";
    let (code, out, _) = podwall_stdin(&["analyze", "lint", "-f", "-", "-o", "json"], Some(yaml));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["errors"], 1);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["object"], "NetworkPolicy x/bad");
    assert_eq!(d["field"], "spec.ingress[0].ports[0].protocol");
    assert_eq!(d["origin"]["source"], "<stdin>");
}

#[test]
fn lint_points_at_the_line_of_the_field_not_of_the_object() {
    // Line 7 misspells ingress (a load error); line 15's selector matches no pod (a lint
    // warning about a policy that loaded).
    let yaml = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: x}
spec:
  podSelector: {}
  ingres: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: x}
spec:
  podSelector:
    matchLabels: {app: api}
  policyTypes: [Ingress]
";
    let (code, out, _) = podwall_stdin(&["analyze", "lint", "-f", "-", "-o", "json"], Some(yaml));
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let line_of = |field: &str| {
        v["diagnostics"]
            .as_array()
            .expect("diagnostics")
            .iter()
            .find(|d| d["field"] == field)
            .map(|d| d["origin"]["line"].clone())
            .unwrap_or_else(|| panic!("no finding about {field}: {out}"))
    };
    assert_eq!(line_of("spec.ingres"), 10, "{out}");
    assert_eq!(line_of("spec.podSelector"), 16, "{out}");
}

#[test]
fn unreadable_input_exits_2_naming_it() {
    let (code, _, err) = podwall(&[
        "analyze",
        "matrix",
        "-f",
        "/nonexistent/cluster.yaml",
        "--port",
        "80",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/cluster.yaml"), "{err}");
    let (code, _, err) = podwall_stdin(&["analyze", "lint", "-f", "-"], Some("kind: [broken\n"));
    assert_eq!(code, 2);
    assert!(err.contains("<stdin>: not valid YAML: line 1"), "{err}");
}

#[test]
fn bad_usage_exits_2_with_a_clear_message() {
    let (code, _, err) = podwall(&[
        "analyze",
        "check",
        "-f",
        THREE_TIER,
        "--from",
        "frontend",
        "--to",
        "production/api",
        "--port",
        "80",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("expected NAMESPACE/POD or an IP address"),
        "{err}"
    );
    let (code, _, err) = podwall(&[
        "analyze",
        "check",
        "-f",
        THREE_TIER,
        "--from",
        "production/fronted",
        "--to",
        "production/api",
        "--port",
        "80",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("pods in production: api, frontend, postgres"),
        "{err}"
    );
    let (code, _, _) = podwall(&["analyze", "matrix", "-f", THREE_TIER, "--port", "0"]);
    assert_eq!(code, 2);
    let check = |extra: &[&str]| {
        let mut args = vec![
            "analyze",
            "check",
            "-f",
            THREE_TIER,
            "--from",
            "production/frontend",
        ];
        args.extend_from_slice(extra);
        podwall(&args)
    };
    let (code, _, err) = check(&[
        "--to",
        "production/api",
        "--protocol",
        "ICMP",
        "--port",
        "3",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--protocol ICMP takes no --port"), "{err}");
    let (code, _, err) = check(&["--to", "production/api"]);
    assert_eq!(code, 2);
    assert!(err.contains("--port is required"), "{err}");
    let (code, _, err) = check(&["--dns-query", "example.com", "--protocol", "ICMP"]);
    assert_eq!(code, 2);
    assert!(err.contains("--dns-query asks over UDP or TCP"), "{err}");
    let (code, out, err) = check(&["--to", "production/api", "--protocol", "icmp"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("on ICMP (ping)"), "{out}");
    let (code, _, _) = podwall(&["analyze", "matrix"]);
    assert_eq!(code, 2, "-f is required");
}

#[test]
fn check_judges_a_service_address_by_the_backends_it_leads_to() {
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("cluster.yaml");
    std::fs::write(
        &input,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: t, labels: {app: client}}\n\
         status: {podIP: 10.0.0.1, hostIP: 192.168.0.1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: t, labels: {app: api, tier: back}}\n\
         status: {podIP: 10.0.0.2, hostIP: 192.168.0.1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: t, labels: {app: db, tier: back}}\n\
         status: {podIP: 10.0.0.3, hostIP: 192.168.0.1}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: t}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.2, selector: {app: api}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: t}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.3, selector: {app: db}, ports: [{port: 5432, nodePort: 30432}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: mixed, namespace: t}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.4, selector: {tier: back}, ports: [{port: 53, protocol: UDP, nodePort: 30053}, {name: tcp, port: 53, nodePort: 30054}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: t}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.5, selector: {app: nobody}, ports: [{port: 80, nodePort: 30099}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: t}\n\
         spec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n\
         \x20 - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n\
         \x20 - to: [{podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: 8080}, {port: 53, protocol: UDP}, {port: 53}]\n",
    )
    .expect("write");
    let input = input.to_str().expect("path");
    // `analyze check` from the client to `to:port`, with `extra` flags.
    let check_with = |to: &str, port: &str, extra: &[&str]| {
        let mut args = vec![
            "analyze", "check", "-f", input, "--from", "t/client", "--to", to, "--port", port,
        ];
        args.extend_from_slice(extra);
        podwall(&args)
    };
    let check = |to: &str, port: &str, output: &str| check_with(to, port, &["-o", output]);
    let (code, out, err) = check("192.168.0.1", "30080", "text");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("192.168.0.1:30080 is an address of service t/api (1 ready endpoint): judged for 10.0.0.2:8080, one policy allows"),
        "{out}"
    );
    let (code, out, err) = check("192.168.0.1", "30432", "json");
    assert_eq!(
        code, 1,
        "the node leads to db, which the client may not reach: {out}{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["service"]["name"], "t/db");
    assert_eq!(v["service"]["judged"], "10.0.0.3:5432");
    let (code, out, err) = check("10.96.0.3", "5432", "text");
    assert_eq!(code, 1, "the cluster IP alike: {out}{err}");
    let (code, out, err) = check("192.168.0.1", "22", "text");
    assert_eq!(
        code, 0,
        "the node itself, an address the ipBlock allows: {out}{err}"
    );
    assert!(!out.contains("is an address of service"), "{out}");
    // UDP goes where the node sends it: one denied backend denies it.
    let (code, out, err) = check_with("192.168.0.1", "30053", &["--protocol", "UDP"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("192.168.0.1:30053 is an address of service t/mixed (2 ready endpoints): judged for 10.0.0.3:53, one policy denies"),
        "{out}"
    );
    // Over TCP the proxy takes the allowed one.
    let (code, out, err) = check("192.168.0.1", "30054", "text");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("judged for 10.0.0.2:53, one policy allows"),
        "{out}"
    );
    // No ready endpoint: refused, in either format.
    let (code, out, _) = check("192.168.0.1", "30099", "text");
    assert_eq!(code, 1);
    assert!(
        out.contains("192.168.0.1:30099 is an address of service t/empty, which has no ready endpoint: refused"),
        "{out}"
    );
    let (code, out, _) = check("192.168.0.1", "30099", "json");
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["service"]["backends"], 0);
    // An address no object gives a node (node-local DNS's), on a NodePort's number: it may be
    // a node's all the same, so the backends must be allowed too, as the sidecar judges it.
    let (code, out, err) = check("169.254.20.10", "30080", "text");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("169.254.20.10:30080 may be an address of a node where kube-proxy takes NodePort 30080 to service t/api: policy allows every one of its 1 ready endpoint too"),
        "{out}"
    );
    let (code, out, err) = check("169.254.20.10", "30432", "json");
    assert_eq!(code, 1, "it may lead to db: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["node_port"]["service"], "t/db");
    assert_eq!(v["node_port"]["refused_for"], "10.0.0.3:5432");
    let (code, out, err) = check_with(
        "169.254.20.10",
        "30432",
        &["--node-ports-only-at-listed-addresses"],
    );
    assert_eq!(code, 0, "trusting the listed addresses: {out}{err}");
    assert!(!out.contains("may be an address of a node"), "{out}");
    let (code, out, err) = check("169.254.20.10", "22", "text");
    assert_eq!(code, 0, "no NodePort's number: {out}{err}");
    assert!(!out.contains("may be an address of a node"), "{out}");
}

#[test]
fn a_dns_query_check_states_one_verdict_and_exits_by_it() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/allow-github-api");
    let ask = |name: &str| {
        podwall(&[
            "analyze",
            "check",
            "-f",
            dir,
            "--from",
            "production/ci-runner",
            "--dns-query",
            name,
        ])
    };
    // Allowed for a toFQDNs name though no rule allows the resolver: no DENIED beside it.
    let (code, out, err) = ask("api.github.com");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ALLOWED"), "{out}");
    assert!(!out.contains("DENIED"), "{out}");
    // Refused: the verdict, then why the resolver is out of reach.
    let (code, out, _) = ask("example.com");
    assert_eq!(code, 1);
    assert!(out.contains(": REFUSED"), "{out}");
    assert!(out.contains("no egress rule"), "{out}");
}

#[test]
fn help_explains_the_contracts() {
    let (code, out, _) = podwall(&["analyze", "matrix", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"allowed\""), "{out}");
    let (_, out, _) = podwall(&["analyze", "check", "--help"]);
    assert!(out.contains("NS/POD|IP"), "{out}");
}

#[test]
fn the_crd_in_helm_is_the_one_generated_from_the_rust_types() {
    let (code, out, _) = podwall(&["crd"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/podwall/crds/podwallpolicy.yaml"
    ))
    .expect("helm/podwall/crds/podwallpolicy.yaml");
    assert!(
        committed == out,
        "helm/podwall/crds/podwallpolicy.yaml is stale: run `cargo run -q -- crd > helm/podwall/crds/podwallpolicy.yaml`"
    );
    assert!(out.contains("name: podwallpolicies.podwall.io"));
    assert!(out.contains("name: v1alpha1"));
}

#[test]
fn check_node_probes_the_kernel_in_a_namespace_of_its_own_and_leaves_the_nodes_rules_alone() {
    if !support::ready(
        "check_node_probes_the_kernel_in_a_namespace_of_its_own_and_leaves_the_nodes_rules_alone",
        &["iptables", "iptables-save"],
        "iptables",
    ) {
        return;
    }
    let rules = || {
        let out = std::process::Command::new("iptables-save")
            .output()
            .expect("iptables-save");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = rules();
    let (code, out, err) = podwall(&["check", "--node", "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: serde_json::Value = serde_json::from_str(&out).expect("json");
    let names: Vec<&str> = lines
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["level"] == "PASS")
        .filter_map(|l| l["check"].as_str())
        .collect();
    for feature in ["TPROXY (IPv4)", "NFQUEUE (IPv4)", "NAT REDIRECT (IPv4)"] {
        assert!(names.contains(&feature), "{feature}: {out}");
    }
    assert_eq!(
        rules(),
        before,
        "the probe's rules never reach the node's tables"
    );
}

#[test]
fn graph_draws_allowed_pairs_and_overlays_observed_flows() {
    let (code, out, err) = podwall(&["analyze", "graph", "-f", THREE_TIER, "--port", "8080"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("flowchart LR"), "{out}");
    assert!(
        out.contains("subgraph ns_production[\"production\"]"),
        "{out}"
    );
    // frontend may reach api on 8080; nothing reaches postgres on 8080.
    let id = |name: &str| {
        out.lines()
            .find(|l| l.trim_end().ends_with(&format!("[\"{name}\"]")))
            .and_then(|l| l.split('[').next())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no node {name}: {out}"))
    };
    let (frontend, api, postgres) = (id("frontend"), id("api"), id("postgres"));
    assert!(
        out.contains(&format!("{frontend} -->|\"TCP/8080\"| {api}")),
        "{out}"
    );
    assert!(!out.contains(&format!("| {postgres}")), "{out}");
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        r#"{"time":"2026-12-05T10:00:00.000Z","verdict":"DENIED","direction":"egress","protocol":"TCP","source":{"namespace":"production","pod":"frontend","ip":"10.244.1.20","port":40000},"destination":{"namespace":"production","pod":"postgres","ip":"10.244.1.40","port":5432},"bytes_sent":0,"bytes_received":0,"duration_ms":0.1}
"#,
    )
    .expect("write");
    let (code, out, err) = podwall(&[
        "analyze",
        "graph",
        "-f",
        THREE_TIER,
        "--port",
        "8080",
        "--flows",
        flows.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{frontend} -.->|\"TCP/5432 DENIED\"| {postgres}")),
        "{out}"
    );
    assert!(out.contains("stroke:#d00"), "{out}");
    let (_, dot, _) = podwall(&["analyze", "graph", "-f", THREE_TIER, "-o", "dot"]);
    assert!(
        dot.starts_with("digraph podwall {") && dot.contains("subgraph cluster_production"),
        "{dot}"
    );
}

#[test]
fn the_svg_in_the_docs_is_the_one_graph_draws_now() {
    let (code, svg, err) = podwall(&["analyze", "graph", "-f", THREE_TIER, "-o", "svg"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        svg.starts_with("<?xml") && svg.contains("<svg"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    for pod in [
        "production/frontend",
        "production/api",
        "production/postgres",
    ] {
        assert!(svg.contains(pod), "{pod} drawn");
    }
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/three-tier.svg"))
            .expect("docs/three-tier.svg");
    assert!(
        svg == checked_in,
        "docs/three-tier.svg is stale: podwall analyze graph -f examples/three-tier -o svg > docs/three-tier.svg"
    );
    let (_, again, _) = podwall(&["analyze", "graph", "-f", THREE_TIER, "-o", "svg"]);
    assert!(again == svg, "the same graph draws the same file");
}

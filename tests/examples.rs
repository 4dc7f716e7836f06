//! Every scenario in `examples/` against the expectations written by hand next to it
//! (`expected.yaml`), through the real `podwall analyze` binary and its JSON contracts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    matrices: Vec<ExpectedMatrix>,
    #[serde(default)]
    checks: Vec<ExpectedCheck>,
    lint: Vec<String>,
}

#[derive(Deserialize)]
struct ExpectedMatrix {
    protocol: String,
    port: u16,
    /// `from -> to` pairs; every other pair is denied, except a pod to itself.
    allowed: Vec<String>,
}

#[derive(Deserialize)]
struct ExpectedCheck {
    from: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    allowed: bool,
    /// A connection to an address learned for this name.
    #[serde(default)]
    to_fqdn: Option<String>,
    /// A DNS query for this name.
    #[serde(default)]
    dns_query: Option<String>,
    /// The DNS response code for a refused query.
    #[serde(default)]
    rcode: Option<String>,
    /// Judge an HTTP request too.
    #[serde(default)]
    http_method: Option<String>,
    #[serde(default)]
    http_path: Option<String>,
    /// The status the client gets when the request is refused.
    #[serde(default)]
    http_status: Option<u16>,
}

#[derive(Deserialize)]
struct MatrixJson {
    port: u16,
    protocol: String,
    pods: Vec<String>,
    allowed: BTreeMap<String, BTreeMap<String, bool>>,
}

fn podwall(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args(args)
        .output()
        .expect("run podwall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn check_example(dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string();
    let text = std::fs::read_to_string(dir.join("expected.yaml"))
        .unwrap_or_else(|e| panic!("{name}: every example needs expected.yaml: {e}"));
    let expected: Expected =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}/expected.yaml: {e}"));
    let dir_arg = dir.to_str().expect("utf-8 path");

    for m in &expected.matrices {
        let port = m.port.to_string();
        let (code, out, err) = podwall(&[
            "analyze",
            "matrix",
            "-f",
            dir_arg,
            "--port",
            &port,
            "--protocol",
            &m.protocol,
            "-o",
            "json",
        ]);
        assert_eq!(code, 0, "{name}: matrix failed: {err}");
        assert!(
            err.is_empty(),
            "{name}: the example must load cleanly: {err}"
        );
        let got: MatrixJson = serde_json::from_str(&out).expect("matrix JSON");
        assert_eq!(
            (got.port, got.protocol.as_str()),
            (m.port, m.protocol.as_str())
        );
        let mut sorted = got.pods.clone();
        sorted.sort();
        assert_eq!(got.pods, sorted, "{name}: pods must be sorted");
        let mut listed = BTreeSet::new();
        for pair in &m.allowed {
            let (from, to) = pair
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("{name}: bad pair {pair:?}"));
            assert!(
                got.pods.contains(&from.to_string()),
                "{name}: unknown pod {from} in expected.yaml"
            );
            assert!(
                got.pods.contains(&to.to_string()),
                "{name}: unknown pod {to} in expected.yaml"
            );
            listed.insert((from.to_string(), to.to_string()));
        }
        for from in &got.pods {
            for to in &got.pods {
                let want = from == to || listed.contains(&(from.clone(), to.clone()));
                let have = got.allowed[from][to];
                if want != have {
                    failures.push(format!(
                        "{name} {}/{}: {from} -> {to}: expected {}, podwall says {}",
                        m.protocol,
                        m.port,
                        if want { "allowed" } else { "denied" },
                        if have { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }

    for c in &expected.checks {
        let port = c.port.map(|p| p.to_string());
        let mut args = vec!["analyze", "check", "-f", dir_arg, "--from", &c.from];
        for (flag, value) in [
            ("--to", c.to.as_deref()),
            ("--port", port.as_deref()),
            ("--protocol", c.protocol.as_deref()),
            ("--to-fqdn", c.to_fqdn.as_deref()),
            ("--dns-query", c.dns_query.as_deref()),
        ] {
            if let Some(v) = value {
                args.extend([flag, v]);
            }
        }
        args.extend(["-o", "json"]);
        if let Some(m) = &c.http_method {
            args.extend(["--http-method", m]);
        }
        if let Some(p) = &c.http_path {
            args.extend(["--http-path", p]);
        }
        let (code, out, err) = podwall(&args);
        assert!(code == 0 || code == 1, "{name}: check failed: {err}");
        let json: serde_json::Value = serde_json::from_str(&out).expect("check JSON");
        let have = json["allowed"].as_bool().expect("allowed is a bool");
        let status = json["http"]["status"].as_u64().map(|s| s as u16);
        let rcode = json["dns"]["rcode"].as_str().map(str::to_string);
        if c.rcode.is_some() && rcode != c.rcode {
            failures.push(format!(
                "{name} check {} dns {:?}: expected rcode {:?}, podwall says {rcode:?}",
                c.from, c.dns_query, c.rcode
            ));
        }
        if c.http_status.is_some() && status != c.http_status {
            failures.push(format!(
                "{name} check {} -> {:?} {} {}: expected status {:?}, podwall says {status:?}",
                c.from,
                c.to,
                c.http_method.as_deref().unwrap_or("-"),
                c.http_path.as_deref().unwrap_or("-"),
                c.http_status
            ));
        }
        assert_eq!(
            code == 0,
            have,
            "{name}: exit code must say allowed (0) or denied (1)"
        );
        if have != c.allowed {
            failures.push(format!(
                "{name} check {}: expected allowed={}, podwall says {}",
                args.join(" "),
                c.allowed,
                json
            ));
        }
    }

    let (code, out, _) = podwall(&["analyze", "lint", "-f", dir_arg, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("lint JSON");
    let codes: BTreeSet<String> = json["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| d["code"].as_str().expect("code").to_string())
        .collect();
    let want: BTreeSet<String> = expected.lint.iter().cloned().collect();
    if codes != want {
        failures.push(format!(
            "{name} lint: expected {want:?}, podwall says {codes:?}: {out}"
        ));
    }
    assert_eq!(
        code,
        if want.is_empty() { 0 } else { 1 },
        "{name}: lint exit code"
    );
    failures
}

#[test]
fn every_example_has_the_connectivity_written_in_its_expected_yaml() {
    let dirs = examples();
    assert!(dirs.len() >= 8, "the guides' scenarios are all there");
    let failures: Vec<String> = dirs.iter().flat_map(|d| check_example(d)).collect();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! The upstream ClusterNetworkPolicy conformance suite's expectations
//! (kubernetes-sigs/network-policy-api `conformance/tests/*.go`), transcribed into
//! `tests/fixtures/cnp-conformance/cases.yaml` (see its header for how), held by the analyzer:
//! every probe of every step, after the step's policy edits, as the engine judges it.
//!
//! A probe of a Service's virtual IP must hold for every backend (upstream does not say which
//! one answers). Checks marked `suspect` contradict upstream's own policies (the case says why)
//! and are counted, not asserted.

mod support;

use std::collections::BTreeMap;

use podwall_policy::{Endpoint, Engine, Loader, Origin, Protocol, Query};
use serde_json::Value;
use support::cnp_conformance::{cases, initial};

fn engine(objects: &BTreeMap<String, Value>, case: &str) -> Engine {
    let mut loader = Loader::new();
    for v in objects.values() {
        loader.add_object(Origin::default(), v.clone());
    }
    let (state, report) = loader.finish();
    let errors: Vec<String> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == podwall_policy::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    assert!(errors.is_empty(), "{case}: {errors:#?}");
    Engine::compile(state)
}

/// The pods a probe's destination stands for: a pod, or a Service's backends (by selector).
fn destinations(e: &Engine, objects: &BTreeMap<String, Value>, to: &str) -> Vec<Endpoint> {
    let pod = |key: &str| {
        let (ns, name) = key.split_once('/').expect("ns/name");
        Endpoint::Pod(
            e.state()
                .pod_by_name(ns, name)
                .unwrap_or_else(|| panic!("no pod {key}")),
        )
    };
    let Some(service) = to.strip_prefix("service:") else {
        return vec![pod(to)];
    };
    let (ns, name) = service.split_once('/').expect("ns/name");
    let svc = &objects[&format!("Service/{ns}/{name}")];
    let selector = svc["spec"]["selector"].as_object().expect("selector");
    let backends: Vec<Endpoint> = e
        .state()
        .pod_ids()
        .filter(|&id| {
            let p = e.state().pod(id);
            p.namespace == ns
                && selector
                    .iter()
                    .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
        })
        .map(Endpoint::Pod)
        .collect();
    assert!(!backends.is_empty(), "service {service} has no backends");
    backends
}

#[test]
fn every_upstream_conformance_probe_holds_in_the_analyzer() {
    let (mut checked, mut suspect) = (0, 0);
    let mut failures = Vec::new();
    for case in &cases() {
        let mut objects = initial(case);
        for (i, step) in case.steps.iter().enumerate() {
            step.apply(&mut objects, &case.id);
            if step.checks.is_empty() {
                continue;
            }
            let e = engine(&objects, &case.id);
            for c in &step.checks {
                if c.suspect {
                    suspect += 1;
                    continue;
                }
                checked += 1;
                let (ns, name) = c.from.split_once('/').expect("ns/name");
                let src = Endpoint::Pod(e.state().pod_by_name(ns, name).expect("client pod"));
                let protocol: Protocol = c.protocol.parse().expect("protocol");
                for dst in destinations(&e, &objects, &c.to) {
                    let query = Query {
                        src,
                        dst,
                        protocol,
                        port: c.port,
                    };
                    let verdict = e.verdict(&query);
                    assert_eq!(verdict.allowed(), e.allowed(&query), "fast path agrees");
                    if verdict.allowed() != c.allowed {
                        failures.push(format!(
                            "{} step {i} ({}): {} -> {} {}/{}: expected {}, got:\n{}",
                            case.id,
                            step.note,
                            c.from,
                            c.to,
                            c.protocol,
                            c.port,
                            if c.allowed { "allowed" } else { "denied" },
                            e.explain(&verdict)
                        ));
                    }
                }
            }
        }
    }
    println!("{checked} conformance probes checked, {suspect} suspect ones skipped");
    assert!(
        checked > 350,
        "the transcription holds {checked} probes only"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `domainNames` (upstream has no conformance test of its own): what a name matches as the
/// sidecar's DNS proxy matches it, and what is refused.
#[test]
fn domain_names_match_exactly_or_one_or_more_labels_below_whatever_the_case_or_trailing_dot() {
    let policy = |names: &str, action: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: names}}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  egress:\n  - action: {action}\n    to: [{{domainNames: {names}}}]\n"
        )
    };
    let mut loader = Loader::new();
    loader
        .add_yaml(
            "p",
            &policy(
                "[\"Kubernetes.IO.\", \"*.Example.com\", api.github.com]",
                "Accept",
            ),
        )
        .expect("yaml");
    let (state, report) = loader.finish();
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    let engine = Engine::compile(state);
    let matcher = podwall_fqdn::Matcher::new(engine.fqdn_selectors()).expect("compiles");
    let hits = |name: &str| matcher.matching(name).len();
    // Exact names: any case, with or without the root's dot; nothing above or below them.
    for name in ["kubernetes.io", "KUBERNETES.io.", "api.github.com"] {
        assert_eq!(hits(name), 1, "{name}");
    }
    for name in ["www.kubernetes.io", "my-kubernetes.io", "io", "github.com"] {
        assert_eq!(hits(name), 0, "{name}");
    }
    // `*.` covers one or more whole labels, never the name itself nor a partial label.
    for name in ["www.example.com", "a.b.c.example.com", "WWW.Example.COM."] {
        assert_eq!(hits(name), 1, "{name}");
    }
    for name in ["example.com", "wwwexample.com", "example.com.evil.net"] {
        assert_eq!(hits(name), 0, "{name}");
    }
    // Refused as the API's schema refuses them, and in Deny or Pass rules at all.
    for bad in [
        "\"*example.com\"",
        "\"a.*.com\"",
        "\"*.*.com\"",
        "\"com\"",
        "\"exa mple.com\"",
    ] {
        let mut loader = Loader::new();
        loader
            .add_yaml("p", &policy(&format!("[{bad}]"), "Accept"))
            .expect("yaml");
        let (_, report) = loader.finish();
        assert!(
            report
                .diagnostics
                .iter()
                .any(|d| d.message.contains("domain name")),
            "{bad}: {:?}",
            report.diagnostics
        );
    }
    for action in ["Deny", "Pass"] {
        let mut loader = Loader::new();
        loader
            .add_yaml("p", &policy("[example.com]", action))
            .expect("yaml");
        let (_, report) = loader.finish();
        assert!(
            report
                .diagnostics
                .iter()
                .any(|d| d.message.contains("only supported in Accept rules")),
            "{action}: {:?}",
            report.diagnostics
        );
    }
}

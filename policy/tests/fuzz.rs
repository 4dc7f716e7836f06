//! Fuzzing the policy loader with YAML an operator (or a hostile namespace admin) can write:
//! NetworkPolicies, Cilium policies (and their conversion), ClusterNetworkPolicies, pods and
//! namespaces, mutated; what loads must compile and answer queries (see `podwall-fuzz` for the
//! harness and the long-running mode).

use std::path::Path;

use podwall_policy::{Direction, Endpoint, Engine, Loader, PodId, Protocol, Query};

/// Every example's cluster and policies, and the CNP conformance fixtures' policies.
fn seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for dir in ["examples", "tests/fixtures/cnp-conformance"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let files = if p.is_dir() {
                let mut f: Vec<_> = std::fs::read_dir(&p)
                    .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                    .unwrap_or_default();
                f.sort();
                f
            } else {
                vec![p]
            };
            for f in files {
                let yaml = f.extension().is_some_and(|e| e == "yaml" || e == "yml");
                // Small enough that a mutation lands somewhere that matters.
                if yaml
                    && !f.ends_with("expected.yaml")
                    && let Ok(text) = std::fs::read(&f)
                    && text.len() <= 8 * 1024
                {
                    out.push(text);
                }
            }
        }
    }
    out
}

#[test]
fn any_yaml_loads_or_is_refused_and_what_loads_compiles_and_answers() {
    let seeds = seeds();
    assert!(seeds.len() >= 10, "the examples are the seeds");
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let mut loaded = 0u64;
    podwall_fuzz::run("policy-yaml", &seeds, 16 * 1024, |input| {
        let text = String::from_utf8_lossy(input);
        let mut loader = Loader::new();
        if loader.add_yaml("fuzz.yaml", &text).is_err() {
            return;
        }
        let (state, _report) = loader.finish();
        loaded += 1;
        let pods = state.pods.len();
        let engine = Engine::compile(state);
        for a in 0..pods.min(3) {
            let a = PodId(a as u32);
            let _ = engine.isolated_by(a, Direction::Ingress);
            for b in 0..pods.min(3) {
                for (protocol, port) in [
                    (Protocol::Tcp, 80),
                    (Protocol::Udp, 53),
                    (Protocol::Tcp, 5432),
                ] {
                    let _ = engine.allowed(&Query {
                        src: Endpoint::Pod(a),
                        dst: Endpoint::Pod(PodId(b as u32)),
                        protocol,
                        port,
                    });
                }
            }
            let _ = engine.allowed(&Query {
                src: Endpoint::Pod(a),
                dst: Endpoint::Ip("203.0.113.10".parse().expect("ip")),
                protocol: Protocol::Tcp,
                port: 443,
            });
        }
    });
    eprintln!("{loaded} inputs loaded");
    assert!(loaded > 0);
}

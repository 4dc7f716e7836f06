//! The upstream ClusterNetworkPolicy conformance expectations as transcribed in
//! `tests/fixtures/cnp-conformance/` (see `cases.yaml`'s header), for the analyzer's test and
//! the sandbox's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Every case, read.
pub(crate) fn cases() -> Vec<Case> {
    let cases: Cases = serde_saphyr::from_str(
        &std::fs::read_to_string(dir().join("cases.yaml")).expect("cases.yaml"),
    )
    .expect("cases.yaml parses");
    cases.cases
}

/// A case's objects at its start: the topology and its manifests, by key.
pub(crate) fn initial(case: &Case) -> BTreeMap<String, Value> {
    let mut objects: BTreeMap<String, Value> = read_objects(&dir().join("topology.yaml"))
        .into_iter()
        .map(|v| (key_of(&v), v))
        .collect();
    for m in &case.manifests {
        for v in read_objects(&dir().join(m)) {
            objects.insert(key_of(&v), v);
        }
    }
    objects
}

impl Step {
    /// Applies the step's edits to `objects`.
    pub(crate) fn apply(&self, objects: &mut BTreeMap<String, Value>, case: &str) {
        for v in self.replace.values() {
            objects.insert(key_of(v), v.clone());
        }
        for k in &self.delete {
            assert!(
                objects.remove(k).is_some(),
                "{case}: nothing to delete at {k}"
            );
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Cases {
    pub(crate) cases: Vec<Case>,
}

#[derive(Deserialize)]
pub(crate) struct Case {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) manifests: Vec<String>,
    pub(crate) steps: Vec<Step>,
}

#[derive(Deserialize)]
pub(crate) struct Step {
    #[serde(default)]
    pub(crate) note: String,
    #[serde(default)]
    pub(crate) replace: BTreeMap<String, Value>,
    #[serde(default)]
    pub(crate) delete: Vec<String>,
    #[serde(default)]
    pub(crate) checks: Vec<Check>,
}

#[derive(Deserialize)]
pub(crate) struct Check {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) protocol: String,
    pub(crate) port: u16,
    pub(crate) allowed: bool,
    #[serde(default)]
    pub(crate) suspect: bool,
}

pub(crate) fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cnp-conformance")
}

/// `Kind/name` or `Kind/namespace/name` of an object.
pub(crate) fn key_of(v: &Value) -> String {
    let kind = v["kind"].as_str().unwrap_or_default();
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    match v["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

pub(crate) fn read_objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    podwall_policy::objects(&path.display().to_string(), &text)
        .expect("yaml")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

//! The per-pod policy feed: what the control plane streams to each sidecar.
//!
//! The feed carries Kubernetes objects as the API server (or a YAML file) gives them — the
//! sidecar reads them with the same [`Loader`](crate::Loader) as every other source, so there
//! is one parser. A stream is a sequence of JSON lines: a [`FeedMessage::Snapshot`] (everything
//! the pod needs), then [`FeedMessage::Delta`]s (objects added or changed, objects gone), and
//! [`FeedMessage::Heartbeat`]s while nothing changes. Every message carries the control plane's
//! `epoch` (one per process, random) and a `version` that grows by one per change; a sidecar
//! reconnecting with the epoch and version it holds gets only the deltas it missed, or a new
//! snapshot when they are gone or the epoch changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// `Pod`, `Namespace`, `NetworkPolicy`, ...
    pub kind: String,
    /// The namespace, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a Kubernetes object, if it has a kind and a name.
    pub fn of(object: &Value) -> Option<ObjectKey> {
        let kind = object.get("kind")?.as_str()?.to_string();
        let meta = object.get("metadata")?;
        let name = meta.get("name")?.as_str()?.to_string();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Some(ObjectKey {
            kind,
            namespace,
            name,
        })
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Objects by key.
pub type ObjectSet = BTreeMap<ObjectKey, Value>;

/// One line of the feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedMessage {
    /// Everything the pod needs, replacing what the sidecar held.
    Snapshot {
        /// The control plane process.
        epoch: String,
        /// The version this snapshot is.
        version: u64,
        /// The objects.
        objects: Vec<Value>,
    },
    /// What changed in the pod's view since version `from` (`version - 1` when absent): a
    /// per-pod feed skips versions that do not change its view.
    Delta {
        /// The control plane process.
        epoch: String,
        /// The version the delta applies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<u64>,
        /// The version after this delta.
        version: u64,
        /// Objects added or changed (whole objects).
        upserts: Vec<Value>,
        /// Objects gone.
        deletes: Vec<ObjectKey>,
    },
    /// Nothing changed in the pod's view up to `version`; the stream is alive.
    Heartbeat {
        /// The control plane process.
        epoch: String,
        /// The version the held view is current at.
        version: u64,
    },
}

/// Applies a message to what a sidecar holds; returns false (and changes nothing) when a delta
/// does not follow the version held, so the sidecar must ask for a snapshot.
pub fn apply(
    held: &mut ObjectSet,
    held_version: &mut Option<(String, u64)>,
    msg: FeedMessage,
) -> bool {
    match msg {
        FeedMessage::Snapshot {
            epoch,
            version,
            objects,
        } => {
            held.clear();
            for o in objects {
                if let Some(k) = ObjectKey::of(&o) {
                    held.insert(k, o);
                }
            }
            *held_version = Some((epoch, version));
            true
        }
        FeedMessage::Delta {
            epoch,
            from,
            version,
            upserts,
            deletes,
        } => {
            let base = from.unwrap_or(version.saturating_sub(1));
            let follows = held_version
                .as_ref()
                .is_some_and(|(e, v)| *e == epoch && *v == base && version > base);
            if !follows {
                return false;
            }
            for k in deletes {
                held.remove(&k);
            }
            for o in upserts {
                if let Some(k) = ObjectKey::of(&o) {
                    held.insert(k, o);
                }
            }
            *held_version = Some((epoch, version));
            true
        }
        FeedMessage::Heartbeat { epoch, version } => {
            if let Some((e, v)) = held_version.as_mut()
                && *e == epoch
                && version > *v
            {
                *v = version;
            }
            true
        }
    }
}

/// The delta from `old` to `new`: (upserts, deletes).
pub fn diff(old: &ObjectSet, new: &ObjectSet) -> (Vec<Value>, Vec<ObjectKey>) {
    let upserts = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let deletes = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (upserts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "t", "labels": {"app": app}}})
    }

    #[test]
    fn a_snapshot_then_deltas_rebuild_the_set_and_a_gap_is_refused() {
        let mut held = ObjectSet::new();
        let mut version = None;
        assert!(apply(
            &mut held,
            &mut version,
            FeedMessage::Snapshot {
                epoch: "e1".into(),
                version: 7,
                objects: vec![pod("a", "x"), pod("b", "y")]
            }
        ));
        assert_eq!(held.len(), 2);
        let mut next = held.clone();
        next.remove(&ObjectKey::of(&pod("a", "x")).expect("key"));
        next.insert(ObjectKey::of(&pod("b", "z")).expect("key"), pod("b", "z"));
        let (upserts, deletes) = diff(&held, &next);
        assert_eq!(upserts, [pod("b", "z")]);
        assert_eq!(deletes.len(), 1);
        let delta = FeedMessage::Delta {
            epoch: "e1".into(),
            from: None,
            version: 8,
            upserts,
            deletes,
        };
        let line = serde_json::to_string(&delta).expect("serialises");
        assert!(line.starts_with("{\"type\":\"delta\""), "{line}");
        let back: FeedMessage = serde_json::from_str(&line).expect("parses");
        assert!(apply(&mut held, &mut version, back));
        assert_eq!(held, next);
        let gap = FeedMessage::Delta {
            epoch: "e1".into(),
            from: None,
            version: 10,
            upserts: vec![pod("c", "q")],
            deletes: vec![],
        };
        assert!(!apply(&mut held, &mut version, gap), "version 9 was missed");
        assert_eq!(held, next, "nothing applied");
        let other_epoch = FeedMessage::Delta {
            epoch: "e2".into(),
            from: None,
            version: 9,
            upserts: vec![],
            deletes: vec![],
        };
        assert!(!apply(&mut held, &mut version, other_epoch));
        let skipping = FeedMessage::Delta {
            epoch: "e1".into(),
            from: Some(8),
            version: 12,
            upserts: vec![pod("c", "q")],
            deletes: vec![],
        };
        assert!(
            apply(&mut held, &mut version, skipping),
            "a per-pod feed may skip versions that do not concern it"
        );
        assert_eq!(version, Some(("e1".to_string(), 12)));
    }
}

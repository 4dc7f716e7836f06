//! What the control plane knows: the current objects, a version that grows by one per change,
//! and the recent changes, so that a sidecar that reconnects gets only what it missed.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use podwall_policy::feed::{FeedMessage, ObjectKey, ObjectSet};
use serde_json::Value;
use tokio::sync::watch;

/// Changes kept for resuming streams.
const HISTORY: usize = 1024;

#[derive(Debug)]
struct Change {
    version: u64,
    /// When the change was stored.
    at: std::time::Instant,
    upserts: Arc<Vec<Value>>,
    deletes: Arc<Vec<ObjectKey>>,
}

#[derive(Debug)]
struct Inner {
    version: u64,
    objects: Arc<SharedObjects>,
    history: VecDeque<Change>,
    /// Whether a first state has been read.
    loaded: bool,
}

/// One change a source saw.
#[derive(Debug, Clone)]
pub enum StoreChange {
    /// An object added or changed.
    Upsert(ObjectKey, Value),
    /// An object gone.
    Delete(ObjectKey),
    /// Every object of a kind, as a fresh list gave them (objects of that kind not in it are
    /// gone: the relist after a watch expired).
    ReplaceKind(String, ObjectSet),
}

/// Objects by key, each shared: a new version copies the map's keys and pointers, never the
/// objects.
pub type SharedObjects = std::collections::BTreeMap<ObjectKey, Arc<Value>>;

/// Shares every object of a set.
pub fn shared(objects: ObjectSet) -> SharedObjects {
    objects.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// The objects, versioned.
#[derive(Debug)]
pub struct Store {
    epoch: String,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

/// A random-enough identifier for this process's versions (a restart starts a new epoch).
fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store with a fresh epoch.
    pub fn new() -> Self {
        Store {
            epoch: new_epoch(),
            inner: Mutex::new(Inner {
                version: 0,
                objects: Arc::new(SharedObjects::new()),
                history: VecDeque::new(),
                loaded: false,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This process's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Whether a source has delivered a first state.
    pub fn loaded(&self) -> bool {
        self.lock().loaded
    }

    /// Replaces the objects with what the source now says; a real change is a new version.
    /// Returns the version.
    pub fn replace(&self, objects: ObjectSet) -> u64 {
        let mut inner = self.lock();
        let upserts: Vec<Value> = objects
            .iter()
            .filter(|(k, v)| inner.objects.get(*k).is_none_or(|old| **old != **v))
            .map(|(_, v)| v.clone())
            .collect();
        let deletes: Vec<ObjectKey> = inner
            .objects
            .keys()
            .filter(|k| !objects.contains_key(*k))
            .cloned()
            .collect();
        inner.objects = Arc::new(shared(objects));
        self.record(inner, upserts, deletes, true)
    }

    /// Applies what a watching source saw; a real change is a new version (one per call, so a
    /// source batches what arrived together). Returns the version.
    pub fn update(&self, changes: Vec<StoreChange>) -> u64 {
        let mut inner = self.lock();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        {
            // Clones the map only while a reader still holds the previous one.
            let objects = Arc::make_mut(&mut inner.objects);
            for change in changes {
                match change {
                    StoreChange::Upsert(key, value) => {
                        if objects.get(&key).is_none_or(|old| **old != value) {
                            upserts.push(value.clone());
                            objects.insert(key, Arc::new(value));
                        }
                    }
                    StoreChange::Delete(key) => {
                        if objects.remove(&key).is_some() {
                            deletes.push(key);
                        }
                    }
                    StoreChange::ReplaceKind(kind, fresh) => {
                        let gone: Vec<ObjectKey> = objects
                            .keys()
                            .filter(|k| k.kind == kind && !fresh.contains_key(k))
                            .cloned()
                            .collect();
                        for key in gone {
                            objects.remove(&key);
                            deletes.push(key);
                        }
                        for (key, value) in fresh {
                            if objects.get(&key).is_none_or(|old| **old != value) {
                                upserts.push(value.clone());
                                objects.insert(key, Arc::new(value));
                            }
                        }
                    }
                }
            }
        }
        // An object deleted then re-added in one batch is an upsert, not both.
        if !deletes.is_empty() {
            let upserted: BTreeSet<ObjectKey> = upserts.iter().filter_map(ObjectKey::of).collect();
            deletes.retain(|k| !upserted.contains(k));
        }
        self.record(inner, upserts, deletes, false)
    }

    /// Says the source has delivered its first complete state (readiness), even if empty.
    pub fn mark_loaded(&self) -> u64 {
        let inner = self.lock();
        self.record(inner, Vec::new(), Vec::new(), true)
    }

    fn record(
        &self,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        upserts: Vec<Value>,
        deletes: Vec<ObjectKey>,
        now_loaded: bool,
    ) -> u64 {
        let first_load = now_loaded && !inner.loaded;
        if upserts.is_empty() && deletes.is_empty() && !first_load {
            return inner.version;
        }
        inner.loaded |= now_loaded;
        inner.version += 1;
        let version = inner.version;
        inner.history.push_back(Change {
            version,
            at: std::time::Instant::now(),
            upserts: Arc::new(upserts),
            deletes: Arc::new(deletes),
        });
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        drop(inner);
        self.changed.send_replace(version);
        version
    }

    /// The current objects and their version.
    pub fn current(&self) -> (u64, Arc<SharedObjects>) {
        let inner = self.lock();
        (inner.version, inner.objects.clone())
    }

    /// Notified with the version after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// When `version` was stored, while its change is kept.
    pub fn stored_at(&self, version: u64) -> Option<std::time::Instant> {
        let inner = self.lock();
        let first = inner.history.front()?.version;
        inner
            .history
            .get(version.checked_sub(first)? as usize)
            .filter(|c| c.version == version)
            .map(|c| c.at)
    }

    /// The keys of the objects changed after `from` up to and including `to`, or `None` when
    /// those changes are no longer kept.
    pub fn changed_between(&self, epoch: &str, from: u64, to: u64) -> Option<BTreeSet<ObjectKey>> {
        if epoch != self.epoch || from > to {
            return None;
        }
        let inner = self.lock();
        if to > inner.version {
            return None;
        }
        if from == to {
            return Some(BTreeSet::new());
        }
        let first = inner.history.front()?.version;
        if from + 1 < first {
            return None;
        }
        let mut keys = BTreeSet::new();
        for c in inner
            .history
            .iter()
            .filter(|c| c.version > from && c.version <= to)
        {
            keys.extend(c.upserts.iter().filter_map(ObjectKey::of));
            keys.extend(c.deletes.iter().cloned());
        }
        Some(keys)
    }

    /// The deltas that take a holder of `(epoch, version)` to the current version, or `None`
    /// when only a snapshot can (another epoch, or changes no longer kept).
    pub fn deltas_since(&self, epoch: &str, version: u64) -> Option<Vec<FeedMessage>> {
        if epoch != self.epoch {
            return None;
        }
        let inner = self.lock();
        if version > inner.version {
            return None;
        }
        if version == inner.version {
            return Some(Vec::new());
        }
        let first = inner.history.front()?.version;
        if version + 1 < first {
            return None;
        }
        Some(
            inner
                .history
                .iter()
                .filter(|c| c.version > version)
                .map(|c| FeedMessage::Delta {
                    epoch: self.epoch.clone(),
                    from: None,
                    version: c.version,
                    upserts: (*c.upserts).clone(),
                    deletes: (*c.deletes).clone(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwall_policy::feed::apply;
    use serde_json::json;

    fn set(objs: &[Value]) -> ObjectSet {
        objs.iter()
            .map(|o| (ObjectKey::of(o).expect("key"), o.clone()))
            .collect()
    }

    fn ns(name: &str, label: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"l": label}}})
    }

    #[test]
    fn versions_grow_only_with_real_changes_and_deltas_replay_them() {
        let store = Store::new();
        assert!(!store.loaded());
        let v1 = store.replace(set(&[ns("a", "1")]));
        assert_eq!(v1, 1);
        assert_eq!(
            store.replace(set(&[ns("a", "1")])),
            1,
            "no change, no version"
        );
        let v2 = store.replace(set(&[ns("a", "2"), ns("b", "1")]));
        let v3 = store.replace(set(&[ns("b", "1")]));
        assert_eq!((v2, v3), (2, 3));
        // A sidecar at version 1 catches up with the deltas.
        let mut held = set(&[ns("a", "1")]);
        let mut version = Some((store.epoch().to_string(), 1));
        for m in store.deltas_since(store.epoch(), 1).expect("kept") {
            assert!(apply(&mut held, &mut version, m));
        }
        assert_eq!(shared(held), *store.current().1);
        assert_eq!(store.deltas_since(store.epoch(), 3), Some(vec![]));
        assert!(store.deltas_since("another", 1).is_none());
        assert!(store.deltas_since(store.epoch(), 9).is_none());
    }
}

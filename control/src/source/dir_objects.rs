//! The objects of files and directories of YAML, as the control plane serves them: read now and
//! whenever the files change (polling, as [`super::dir_watch`]); a change that cannot be read is
//! reported and the last good objects stay.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use podwall_policy::feed::{ObjectKey, ObjectSet};

use super::files::{SourceError, read_paths};
use crate::store::Store;

/// The kinds a sidecar's policy can depend on; others are not served.
pub const SERVED_KINDS: [&str; 12] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "PodwallPolicy",
    "CiliumNetworkPolicy",
    "ClusterNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    // Not enforced (network-policy-api v0.1): read so that the log and the metric say so.
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "Node",
    "Service",
    "EndpointSlice",
];

/// Served kinds that have no namespace.
const CLUSTER_SCOPED: [&str; 6] = [
    "Namespace",
    "Node",
    "ClusterNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// Reads the objects of `paths`.
pub fn read_objects(paths: &[PathBuf]) -> Result<ObjectSet, SourceError> {
    let mut set = ObjectSet::new();
    for file in read_paths(paths)? {
        for (_, mut object) in podwall_policy::objects(&file.name, &file.text)? {
            // As `kubectl apply` does: a namespaced object without a namespace is in `default`.
            if object["kind"]
                .as_str()
                .is_some_and(|k| !CLUSTER_SCOPED.contains(&k))
                && object["metadata"].is_object()
                && object["metadata"]["namespace"]
                    .as_str()
                    .is_none_or(str::is_empty)
            {
                object["metadata"]["namespace"] = serde_json::Value::from("default");
            }
            let Some(key) = ObjectKey::of(&object) else {
                continue;
            };
            if SERVED_KINDS.contains(&key.kind.as_str()) {
                set.insert(key, object);
            }
        }
    }
    Ok(set)
}

/// Feeds the store from `paths` until the process ends.
pub async fn feed(paths: Vec<PathBuf>, interval: Duration, store: Arc<Store>) {
    let mut last: Option<u64> = None;
    // An unreadable source is reported once, not at every poll.
    let mut last_error: Option<String> = None;
    loop {
        let p = paths.clone();
        let read = tokio::task::spawn_blocking(move || {
            let files = read_paths(&p)?;
            let mut h = DefaultHasher::new();
            for f in &files {
                f.name.hash(&mut h);
                f.text.hash(&mut h);
            }
            Ok::<_, SourceError>((h.finish(), read_objects(&p)))
        })
        .await;
        let error = match read {
            Ok(Ok((fingerprint, objects))) if last != Some(fingerprint) => {
                last = Some(fingerprint);
                match objects {
                    Ok(objects) => {
                        let n = objects.len();
                        let version = store.replace(objects);
                        tracing::info!(objects = n, version, "source read");
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
            Ok(Ok(_)) => last_error.clone(),
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("source reader failed: {e}")),
        };
        if error.is_some() && error != last_error {
            tracing::error!(
                error = error.as_deref().unwrap_or_default(),
                "source unreadable; keeping the last good objects"
            );
        }
        last_error = error;
        tokio::time::sleep(interval).await;
    }
}

//! Watching files and directories of YAML: every change is loaded and published as a new
//! cluster state; a change that cannot be read is reported and the last good state stays.
//!
//! Polling, not inotify: it works the same on every file system, including the symlink swaps
//! of a mounted ConfigMap, and a state read at most every `interval` is what policy needs. A
//! poll first compares the files' metadata, and reads them only when that moved; then their
//! contents decide whether a new state is published (a `touch` publishes nothing).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use podwall_policy::{ClusterState, Loader, Severity};
use tokio::sync::watch;

use super::files::{SourceError, fingerprint_paths, read_paths};

/// Reads the paths now and whenever their contents change, publishing each state.
pub async fn watch_paths(
    paths: Vec<PathBuf>,
    interval: Duration,
    publish: watch::Sender<Option<Arc<ClusterState>>>,
) {
    let mut last: Option<u64> = None;
    let mut stamp: Option<u64> = None;
    let mut inline = true;
    loop {
        // Metadata first: an unchanged, settled source is not read at all. For a few files,
        // a few `stat`s here, with no thread woken (an idle sidecar's poll runs little code);
        // a large source is fingerprinted on a blocking thread.
        let now = if inline {
            fingerprint_paths(&paths).ok()
        } else {
            let paths2 = paths.clone();
            tokio::task::spawn_blocking(move || fingerprint_paths(&paths2).ok())
                .await
                .ok()
                .flatten()
        };
        inline = now.is_none_or(|f| f.files <= INLINE_FINGERPRINT_FILES);
        if let Some(f) = now
            && Some(f.value) == stamp
        {
            tokio::time::sleep(interval).await;
            continue;
        }
        let paths2 = paths.clone();
        let read = tokio::task::spawn_blocking(move || load_if_changed(&paths2, last)).await;
        let read = read.map(|loaded| {
            // Only a settled fingerprint vouches for what was read; a failed read keeps none,
            // so the files are read again next time.
            stamp = now
                .filter(|f| f.settled && !matches!(loaded, Err((0, _))))
                .map(|f| f.value);
            loaded
        });
        match read {
            Ok(Ok(Some((fingerprint, state)))) => {
                last = Some(fingerprint);
                if publish.send(Some(Arc::new(state))).is_err() {
                    return; // nobody listens any more
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err((fingerprint, e))) => {
                // Report a broken change once, and keep the last good state.
                if last != Some(fingerprint) {
                    tracing::error!(error = %e, "policy source unreadable; keeping the last good state");
                    last = Some(fingerprint);
                }
            }
            Err(e) => tracing::error!(error = %e, "policy source reader failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Sources of up to this many files are fingerprinted on the runtime's thread (tens of
/// microseconds); larger ones on a blocking thread.
const INLINE_FINGERPRINT_FILES: usize = 64;

type Loaded = Result<Option<(u64, ClusterState)>, (u64, SourceError)>;

fn load_if_changed(paths: &[PathBuf], last: Option<u64>) -> Loaded {
    let files = read_paths(paths).map_err(|e| (0, e))?;
    let mut h = DefaultHasher::new();
    for f in &files {
        f.name.hash(&mut h);
        f.text.hash(&mut h);
    }
    let fingerprint = h.finish();
    if last == Some(fingerprint) {
        return Ok(None);
    }
    let mut loader = Loader::new();
    for f in &files {
        loader
            .add_yaml(&f.name, &f.text)
            .map_err(|e| (fingerprint, e.into()))?;
    }
    let (state, report) = loader.finish();
    for d in &report.diagnostics {
        match d.severity {
            Severity::Error => tracing::error!("{d}"),
            Severity::Warning => tracing::warn!("{d}"),
        }
    }
    tracing::info!(
        namespaces = state.namespaces.len(),
        pods = state.pods.len(),
        policies = state.policies.len(),
        "policy source loaded"
    );
    Ok(Some((fingerprint, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_source_is_watched_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = INLINE_FINGERPRINT_FILES + 6;
        for i in 0..files {
            let text = format!("kind: Namespace\nmetadata: {{name: ns-{i}}}\n");
            std::fs::write(dir.path().join(format!("{i:03}.yaml")), text).expect("write");
        }
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(watch_paths(
            vec![dir.path().to_path_buf()],
            Duration::from_millis(20),
            tx,
        ));
        let count = |rx: &watch::Receiver<Option<Arc<ClusterState>>>| {
            rx.borrow().as_ref().map_or(0, |s| s.namespaces.len())
        };
        rx.changed().await.expect("first state");
        assert_eq!(count(&rx), files);
        std::fs::write(
            dir.path().join("999.yaml"),
            "kind: Namespace\nmetadata: {name: new}\n",
        )
        .expect("write");
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a change within 5 s")
            .expect("second state");
        assert_eq!(count(&rx), files + 1);
    }

    #[tokio::test]
    async fn changes_are_published_and_broken_files_keep_the_last_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "kind: Namespace\nmetadata: {name: one}\n").expect("write");
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(watch_paths(
            vec![dir.path().to_path_buf()],
            Duration::from_millis(20),
            tx,
        ));
        let names = |rx: &watch::Receiver<Option<Arc<ClusterState>>>| -> Vec<String> {
            rx.borrow()
                .as_ref()
                .map(|s| s.namespaces.iter().map(|n| n.name.clone()).collect())
                .unwrap_or_default()
        };
        rx.changed().await.expect("first state");
        assert_eq!(names(&rx), ["one"]);
        std::fs::write(&file, "kind: Namespace\nmetadata: {name: two}\n").expect("write");
        rx.changed().await.expect("second state");
        assert_eq!(names(&rx), ["two"]);
        // The watcher runs on this test's thread: its log is read here.
        let log = crate::test_log::Log::default();
        let _guard = log.install();
        std::fs::write(&file, "kind: [broken\n").expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !log
            .text()
            .contains("policy source unreadable; keeping the last good state")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broken file is never reported: {}",
                log.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !rx.has_changed().expect("open"),
            "a broken file publishes nothing"
        );
        assert_eq!(names(&rx), ["two"]);
    }
}

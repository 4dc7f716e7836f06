//! Where `podwall observe` reads flow events: a file, the sandbox's sidecars, or a cluster's
//! `podwall-proxy` containers through the API server's log streams.
//!
//! Every source sends parsed flow events down one channel; with `follow` it keeps reading what
//! is appended (files, new sidecar files, new pods) until the channel is closed.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{PodNames, parse};

/// How often followed files are looked at again.
const POLL: Duration = Duration::from_millis(100);

/// Why a source cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The API server.
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    /// A sandbox that is not there.
    #[error("{0}: no sandbox there (podwall sandbox up starts one)")]
    NoSandbox(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a file's lines, and with `follow` what is appended to it later.
pub async fn file(path: PathBuf, follow: bool, tx: mpsc::Sender<Value>) -> Result<(), SourceError> {
    if path.as_os_str() == "-" {
        // Line by line as they come (a pipe may never end: `... | podwall observe -f - -F`).
        let (lines_tx, mut lines) = mpsc::channel::<String>(1024);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if lines_tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            if let Some(v) = parse(&line)
                && tx.send(v).await.is_err()
            {
                return Ok(());
            }
        }
        return Ok(());
    }
    let mut tail = Tail::open(&path)?;
    loop {
        for v in tail.read()? {
            if tx.send(v).await.is_err() {
                return Ok(());
            }
        }
        if !follow || tx.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A file read from where it was left, whole lines only.
struct Tail {
    path: PathBuf,
    offset: u64,
    /// The bytes of a line not yet ended (a character may be split across reads).
    partial: Vec<u8>,
}

impl Tail {
    fn open(path: &Path) -> Result<Tail, SourceError> {
        std::fs::metadata(path).map_err(io(path))?;
        Ok(Tail {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
        })
    }

    /// The flow events of the lines completed since the last read.
    fn read(&mut self) -> Result<Vec<Value>, SourceError> {
        let mut f = std::fs::File::open(&self.path).map_err(io(&self.path))?;
        let len = f.metadata().map_err(io(&self.path))?.len();
        if len < self.offset {
            // Truncated (a restarted sidecar's new file): from the start.
            self.offset = 0;
            self.partial.clear();
        }
        f.seek(SeekFrom::Start(self.offset))
            .map_err(io(&self.path))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io(&self.path))?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.extend(parse(&String::from_utf8_lossy(&line)));
        }
        Ok(out)
    }
}

/// Reads the flow files of a sandbox's sidecars (`<dir>/logs/*-sidecar.flows.jsonl`), and with
/// `follow` what they write later, including sidecars that start later.
pub async fn sandbox(
    dir: PathBuf,
    follow: bool,
    tx: mpsc::Sender<Value>,
) -> Result<(), SourceError> {
    let logs = dir.join("logs");
    if !logs.is_dir() {
        return Err(SourceError::NoSandbox(dir.display().to_string()));
    }
    let mut tails: BTreeMap<PathBuf, Tail> = BTreeMap::new();
    loop {
        for entry in std::fs::read_dir(&logs).map_err(io(&logs))?.flatten() {
            let p = entry.path();
            let is_flows = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("-sidecar.flows.jsonl"));
            if is_flows && !tails.contains_key(&p) {
                tails.insert(p.clone(), Tail::open(&p)?);
            }
        }
        let mut batch = Vec::new();
        for tail in tails.values_mut() {
            batch.extend(tail.read()?);
        }
        batch.sort_by_key(super::time);
        for v in batch {
            if tx.send(v).await.is_err() {
                return Ok(());
            }
        }
        if !follow || tx.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Which pods' sidecars to read in a cluster.
#[derive(Debug, Clone, Default)]
pub struct PodScope {
    /// Only these namespaces (none: all).
    pub namespaces: Vec<String>,
    /// Only pods with these labels (`app=web,tier=front`).
    pub selector: Option<String>,
    /// Only logs written since.
    pub since: Option<SystemTime>,
    /// Only each sidecar's last lines (`--last N` while following).
    pub tail: Option<i64>,
}

fn runs_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == crate::inject::SIDECAR)
    })
}

/// Streams the logs of every `podwall-proxy` container in scope; with `follow`, keeps them open,
/// reopens one that ends while its pod lives, and picks up pods that start later.
pub async fn cluster(
    client: kube::Client,
    scope: PodScope,
    follow: bool,
    tx: mpsc::Sender<Value>,
) -> Result<(), SourceError> {
    let apis: Vec<Api<Pod>> = if scope.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        scope
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut params = ListParams::default();
    if let Some(s) = &scope.selector {
        params = params.labels(s);
    }
    let mut started: HashSet<(String, String)> = HashSet::new();
    let mut tasks: tokio::task::JoinSet<(String, String)> = tokio::task::JoinSet::new();
    let mut first = true;
    loop {
        // A pod whose stream ended (gone, finished) may come back under the same name (a
        // StatefulSet's): it is followed again when it is listed again.
        while let Some(done) = tasks.try_join_next() {
            if let Ok(key) = done {
                started.remove(&key);
            }
        }
        for api in &apis {
            let pods = match api.list(&params).await {
                Ok(p) => p,
                // The first list must work; later, one failure is retried.
                Err(e) if first => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list pods; trying again");
                    continue;
                }
            };
            for pod in pods.items.into_iter().filter(runs_sidecar) {
                let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else {
                    continue;
                };
                if !started.insert((ns.clone(), name.clone())) {
                    continue;
                }
                let api = Api::namespaced(client.clone(), &ns);
                let (since, tail, tx) = (scope.since, scope.tail, tx.clone());
                tasks.spawn(async move {
                    pod_logs(api, &name, since, tail, follow, tx).await;
                    (ns, name)
                });
            }
        }
        first = false;
        if !follow {
            break;
        }
        // New pods: looked for every few seconds (a pod's first flows wait in its log
        // meanwhile: nothing is lost).
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            _ = tx.closed() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Where a pod's log was read up to: the last event's time and the lines seen at that time (a
/// reopened stream starts a second early; lines of the same time are told apart by content).
#[derive(Default)]
struct ReadUpTo {
    time: Option<SystemTime>,
    at_time: HashSet<u64>,
}

impl ReadUpTo {
    /// Whether the line is new, remembering it.
    fn fresh(&mut self, line: &str, time: Option<SystemTime>) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        line.hash(&mut h);
        let hash = h.finish();
        match (self.time, time) {
            (Some(last), Some(t)) if t < last => false,
            (Some(last), Some(t)) if t == last => self.at_time.insert(hash),
            (_, Some(t)) => {
                self.time = Some(t);
                self.at_time.clear();
                self.at_time.insert(hash);
                true
            }
            (_, None) => true,
        }
    }
}

async fn pod_logs(
    api: Api<Pod>,
    name: &str,
    since: Option<SystemTime>,
    tail: Option<i64>,
    follow: bool,
    tx: mpsc::Sender<Value>,
) {
    let mut read = ReadUpTo::default();
    let mut backoff = Duration::from_millis(500);
    let mut reopened = false;
    loop {
        let from = read.time.or(since);
        let params = LogParams {
            container: Some(crate::inject::SIDECAR.into()),
            follow,
            since_seconds: from.map(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .map_or(1, |d| d.as_secs() as i64 + 1)
            }),
            tail_lines: if reopened { None } else { tail },
            ..LogParams::default()
        };
        reopened = true;
        match api.log_stream(name, &params).await {
            Ok(stream) => {
                backoff = Duration::from_millis(500);
                let mut lines = stream.lines();
                while let Ok(Some(line)) = lines.try_next().await {
                    if let Some(v) = parse(&line) {
                        if !read.fresh(&line, super::time(&v)) {
                            continue;
                        }
                        if tx.send(v).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return, // the pod is gone
            Err(kube::Error::Api(s)) if s.code == 403 => {
                // Said once, to the operator: their credentials cannot read logs.
                eprintln!("podwall: cannot read the logs of pod {name}: {}", s.message);
                return;
            }
            Err(e) => tracing::debug!(pod = %name, error = %e, "log stream failed"),
        }
        if !follow || tx.is_closed() {
            return;
        }
        // Ended while following: the container restarted, the API server closed it, or the
        // pod finished (then there is nothing more to read).
        match api.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(pod))
                if pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == "Succeeded" || p == "Failed") =>
            {
                return;
            }
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Keeps `names` up to date with the sandbox's pods (its state file), every second while
/// following.
pub async fn sandbox_names(
    dir: PathBuf,
    follow: bool,
    names: tokio::sync::watch::Sender<PodNames>,
) {
    let state = dir.join("policy").join("cluster.json");
    loop {
        if let Ok(text) = std::fs::read_to_string(&state)
            && let Ok(objects) = podwall_policy::objects("sandbox", &text)
        {
            names.send_replace(PodNames::from_pods(objects.iter().map(|(_, v)| v)));
        }
        if !follow || names.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps `names` up to date with the cluster's pods, every few seconds while following (no
/// names when pods cannot be listed: the ends stay addresses).
pub async fn cluster_names(
    client: kube::Client,
    follow: bool,
    names: tokio::sync::watch::Sender<PodNames>,
) {
    let api: Api<Pod> = Api::all(client);
    loop {
        match api.list(&ListParams::default()).await {
            Ok(pods) => {
                let values: Vec<Value> = pods
                    .items
                    .iter()
                    .filter_map(|p| serde_json::to_value(p).ok())
                    .collect();
                names.send_replace(PodNames::from_pods(values.iter()));
            }
            Err(e) => tracing::debug!(error = %e, "cannot list pods to name flow ends"),
        }
        if !follow || names.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_stream_gives_each_line_once_even_lines_of_the_same_time() {
        let t = |s: &str| humantime::parse_rfc3339(s).ok();
        let mut read = ReadUpTo::default();
        assert!(read.fresh("a", t("2026-12-05T10:00:00Z")));
        assert!(
            read.fresh("b", t("2026-12-05T10:00:00Z")),
            "another line, same time"
        );
        assert!(read.fresh("c", t("2026-12-05T10:00:01Z")));
        // Reopened a second early: what was read comes again.
        assert!(!read.fresh("a", t("2026-12-05T10:00:00Z")));
        assert!(!read.fresh("c", t("2026-12-05T10:00:01Z")));
        assert!(
            read.fresh("d", t("2026-12-05T10:00:01Z")),
            "new at the last time"
        );
        assert!(read.fresh("e", t("2026-12-05T10:00:02Z")));
    }

    #[test]
    fn a_line_split_across_reads_keeps_its_characters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.jsonl");
        let line = r#"{"time":"2026-12-05T10:00:00Z","verdict":"DENIED","source":{"pod":"café"},"destination":{"ip":"10.0.0.1","port":1}}"#;
        let bytes = line.as_bytes();
        let cut = line.find('é').expect("é") + 1; // inside the two bytes of é
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let mut tail = Tail::open(&path).expect("open");
        assert!(tail.read().expect("read").is_empty(), "no whole line yet");
        let mut all = bytes.to_vec();
        all.push(b'\n');
        std::fs::write(&path, &all).expect("write");
        let flows = tail.read().expect("read");
        assert_eq!(flows[0]["source"]["pod"], "café");
    }
}

//! The control plane at cluster scale: one in-process control plane holding a synthetic cluster
//! (1 000 or 10 000 pods, 1 000 policies), one HTTP/2 feed per pod from simulated sidecars over
//! real TCP, then policy edits. Measures what the control-plane issue asks for:
//! - time from a policy edit (and from a new pod) to the delta reaching every affected sidecar;
//! - the control plane's memory (RSS growth for the state and its view index, then per feed);
//! - bytes sent to one sidecar (its snapshot, and an edit's delta);
//! - the index build per version and one sidecar's compile of its view.
//!
//! `cargo bench -p podwall-control --bench feed` (`-- 1000` for one size).

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwall_control::auth::TrustClaimed;
use podwall_control::metrics::ServerMetrics;
use podwall_control::protection::SidecarEvidence;
use podwall_control::server::Server;
use podwall_control::store::{Store, StoreChange};
use podwall_control::views::Views;
use podwall_policy::feed::{FeedMessage, ObjectKey, ObjectSet, apply};
use podwall_policy::{Engine, Loader, Origin};
use serde_json::{Value, json};

const APPS: usize = 40;
const POLICIES: usize = 1000;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn namespace_of(i: usize, namespaces: usize) -> String {
    format!("ns-{}", i % namespaces)
}

fn pod(i: usize, namespaces: usize, app: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": namespace_of(i, namespaces),
            "labels": {"app": format!("a{app}"), "pod-template-hash": format!("h{}", i % 7)},
            "annotations": {"podwall.io/inject": "enabled"}},
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
            "hostIP": format!("192.168.0.{}", i % 50 + 1)}})
}

/// Policy `j`: in a namespace, selects one app, allows ingress from another app of the namespace
/// and from a team's namespaces on 8080, and egress to two apps plus DNS.
fn policy(j: usize, namespaces: usize, rng: &mut Rng, from_app: usize) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("pol-{j}"), "namespace": namespace_of(j, namespaces)},
        "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", rng.below(APPS))}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("a{from_app}")}}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{}", rng.below(8))}},
                     "podSelector": {"matchLabels": {"app": format!("a{}", rng.below(APPS))}}}],
                "ports": [{"port": 8080}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": format!("a{}", rng.below(APPS))}}},
                    {"podSelector": {"matchLabels": {"app": format!("a{}", rng.below(APPS))}}}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]}]}})
}

fn cluster(pods: usize) -> (ObjectSet, usize) {
    let namespaces = (pods / 100).max(2);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut objects = Vec::new();
    for n in 0..namespaces {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n}"), "labels": {"kubernetes.io/metadata.name": format!("ns-{n}"), "team": format!("t{}", n % 8)}}}));
    }
    for i in 0..pods {
        let app = rng.below(APPS);
        objects.push(pod(i, namespaces, app));
    }
    for j in 0..POLICIES {
        let from = rng.below(APPS);
        objects.push(policy(j, namespaces, &mut rng, from));
    }
    let set = objects
        .into_iter()
        .map(|o| (ObjectKey::of(&o).unwrap(), o))
        .collect();
    (set, namespaces)
}

/// What the simulated sidecars saw: per pod, when each version arrived and how many bytes.
#[derive(Default)]
struct Seen {
    arrivals: HashMap<(usize, u64), Instant>,
    snapshot_bytes: HashMap<usize, usize>,
    delta_bytes: HashMap<(usize, u64), usize>,
    views: HashMap<usize, ObjectSet>,
}

/// Sidecars per HTTP/2 connection: each feed is its own stream and server task, as with one
/// connection per sidecar, but 10 000 sidecars fit this machine's 20 000 file descriptors.
const FEEDS_PER_CONNECTION: usize = 100;

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn connection(addr: SocketAddr) -> Sender {
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await
            && let Ok((send, conn)) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
        {
            tokio::spawn(conn);
            return send;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sidecar(
    addr: SocketAddr,
    i: usize,
    namespace: String,
    seen: Arc<Mutex<Seen>>,
    mut send: Sender,
) {
    let req = http::Request::get(format!(
        "http://{addr}/v1/feed?namespace={namespace}&pod=pod-{i}"
    ))
    .body(Empty::<Bytes>::new())
    .unwrap();
    send.ready().await.unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut held = ObjectSet::new();
    let mut version = None;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let now = Instant::now();
            let msg: FeedMessage = serde_json::from_slice(&line).unwrap();
            let (is_snapshot, v) = match &msg {
                FeedMessage::Snapshot { version, .. } => (true, *version),
                FeedMessage::Delta { version, .. } => (false, *version),
                FeedMessage::Heartbeat { .. } => continue,
            };
            assert!(apply(&mut held, &mut version, msg), "versions follow");
            let mut s = seen.lock().unwrap();
            s.arrivals.insert((i, v), now);
            if is_snapshot {
                s.snapshot_bytes.insert(i, line.len());
            } else {
                s.delta_bytes.insert((i, v), line.len());
            }
            if is_snapshot && i.is_multiple_of(10) {
                s.views.insert(i, held.clone());
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(0.0)
    )
}

/// Waits until every pod in `pods` saw `version`; the latencies from `t0` in ms.
async fn wait_version(
    seen: &Arc<Mutex<Seen>>,
    pods: &[usize],
    version: u64,
    t0: Instant,
) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut report = Instant::now();
    loop {
        {
            let s = seen.lock().unwrap();
            let got: Vec<f64> = pods
                .iter()
                .filter_map(|i| s.arrivals.get(&(*i, version)))
                .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
                .collect();
            if got.len() == pods.len() {
                return got;
            }
            if report.elapsed() > Duration::from_secs(10) {
                report = Instant::now();
                eprintln!(
                    "  ... {} of {} sidecars have version {version} after {:.0} s (RSS {} MiB)",
                    got.len(),
                    pods.len(),
                    t0.elapsed().as_secs_f64(),
                    rss_kib() / 1024
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every sidecar got version {version}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn run(pods: usize) {
    println!("\n== {pods} pods, {POLICIES} policies, one feed per pod ==");
    let rss0 = rss_kib();
    let (objects, namespaces) = cluster(pods);
    {
        // Where an index build goes: reading the objects, compiling them.
        let t = Instant::now();
        let mut loader = Loader::new();
        for o in objects.values() {
            loader.add_object(
                Origin {
                    source: "store".into(),
                    line: 0,
                    item: None,
                },
                o.clone(),
            );
        }
        let state = loader.finish().0;
        let loaded = t.elapsed();
        let t = Instant::now();
        let _engine = Engine::compile(state);
        println!(
            "one full state: load {:.0} ms, compile {:.0} ms",
            loaded.as_secs_f64() * 1000.0,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let store = Arc::new(Store::new());
    let t = Instant::now();
    store.replace(objects);
    let views = Arc::new(Views::new(store.clone(), SidecarEvidence::Annotation));
    let index = views.index().await.unwrap();
    let build = t.elapsed();
    let rss_state = rss_kib();
    println!(
        "state + view index: {:.1} MiB RSS (index build {:.0} ms)",
        (rss_state - rss0) as f64 / 1024.0,
        build.as_secs_f64() * 1000.0
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server {
        store: store.clone(),
        views: views.clone(),
        auth: Box::new(TrustClaimed),
        metrics: ServerMetrics::new(),
    });
    tokio::spawn(server.serve(listener));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t0 = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..pods.div_ceil(FEEDS_PER_CONNECTION) {
        senders.push(connection(addr).await);
    }
    for i in 0..pods {
        tokio::spawn(sidecar(
            addr,
            i,
            namespace_of(i, namespaces),
            seen.clone(),
            senders[i / FEEDS_PER_CONNECTION].clone(),
        ));
    }
    let all: Vec<usize> = (0..pods).collect();
    let first = wait_version(&seen, &all, index.version, t0).await;
    let rss_feeds = rss_kib();
    let snapshot_bytes: Vec<f64> = {
        let s = seen.lock().unwrap();
        all.iter().map(|i| s.snapshot_bytes[i] as f64).collect()
    };
    let total: f64 = snapshot_bytes.iter().sum();
    println!(
        "snapshots to {pods} sidecars: all delivered in {:.0} ms; bytes per sidecar {}; total {:.1} MiB",
        first.iter().cloned().fold(0.0, f64::max),
        summary(snapshot_bytes),
        total / 1048576.0
    );
    println!(
        "RSS with {pods} feeds open (control plane and the simulated sidecars in one process): +{:.1} MiB",
        (rss_feeds - rss_state) as f64 / 1024.0
    );
    // A typical sidecar's compile of its view.
    let median_view = {
        let s = seen.lock().unwrap();
        let mut sizes: Vec<(usize, usize)> = s.views.iter().map(|(i, v)| (v.len(), *i)).collect();
        sizes.sort();
        s.views[&sizes[sizes.len() / 2].1].clone()
    };
    let t = Instant::now();
    let mut loader = Loader::new();
    for o in median_view.values() {
        loader.add_object(
            Origin {
                source: "feed".into(),
                line: 0,
                item: None,
            },
            o.clone(),
        );
    }
    let engine = Engine::compile(loader.finish().0);
    println!(
        "median view: {} objects ({} pods, {} policies); the sidecar loads and compiles it in {:.2} ms",
        median_view.len(),
        engine.state().pods.len(),
        engine.state().policies.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );

    // Edit one policy: which sidecars must see it, and how fast.
    for (what, change) in [
        ("policy edit (ingress peer changed)", {
            let mut rng = Rng(7);
            let p = policy(17, namespaces, &mut rng, 3);
            StoreChange::Upsert(ObjectKey::of(&p).unwrap(), p)
        }),
        ("new pod", {
            let p = pod(pods + 1, namespaces, 17 % APPS);
            StoreChange::Upsert(ObjectKey::of(&p).unwrap(), p)
        }),
    ] {
        let key = match &change {
            StoreChange::Upsert(k, _) => k.clone(),
            _ => unreachable!(),
        };
        let t0 = Instant::now();
        let version = store.update(vec![change]);
        let stored = t0.elapsed();
        let index = views.index().await.unwrap();
        let rebuilt = t0.elapsed();
        println!(
            "  store update {:.1} ms, then index {:.1} ms",
            stored.as_secs_f64() * 1000.0,
            (rebuilt - stored).as_secs_f64() * 1000.0
        );
        let affected: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| {
                let pod = podwall_control::auth::PodRef {
                    namespace: namespace_of(*i, namespaces),
                    name: format!("pod-{i}"),
                };
                index.keys_for(&pod).contains(&key)
            })
            .collect();
        let lat = wait_version(&seen, &affected, version, t0).await;
        let bytes: Vec<f64> = {
            let s = seen.lock().unwrap();
            affected
                .iter()
                .filter_map(|i| s.delta_bytes.get(&(*i, version)))
                .map(|b| *b as f64)
                .collect()
        };
        println!(
            "{what}: {} of {pods} sidecars affected; index rebuilt in {:.0} ms; edit -> delta received (ms): {}; delta bytes: {}",
            affected.len(),
            rebuilt.as_secs_f64() * 1000.0,
            summary(lat),
            summary(bytes)
        );
        let s = seen.lock().unwrap();
        let unaffected_got = all
            .iter()
            .filter(|i| !affected.contains(i) && s.delta_bytes.contains_key(&(**i, version)))
            .count();
        println!(
            "  other sidecars sent a delta (their view changed: peers came or went): {unaffected_got}"
        );
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10_000]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for pods in sizes {
        rt.block_on(run(pods));
    }
}

//! The sidecar's control-plane source against the real feed server: it follows changes, keeps
//! the last state when the control plane goes away (and says so in its metrics), and comes back
//! with a new snapshot from a restarted control plane.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use podwall_control::auth::TrustClaimed;
use podwall_control::metrics::ServerMetrics;
use podwall_control::server::Server;
use podwall_control::store::Store;
use podwall_policy::ClusterState;
use podwall_policy::feed::{ObjectKey, ObjectSet};
use podwall_proxy::feed_client::ControlSource;
use podwall_proxy::metrics::Metrics;
use podwall_proxy::{Identity, PolicySource};
use serde_json::{Value, json};
use tokio::sync::watch;

fn objects(labels: &str) -> ObjectSet {
    let objs: Vec<Value> = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "t", "labels": {"app": labels}},
               "status": {"phase": "Running", "podIP": "10.1.0.1"}}),
    ];
    objs.into_iter()
        .map(|o| (ObjectKey::of(&o).expect("key"), o))
        .collect()
}

/// A control plane on its own runtime, so that dropping it closes every connection.
struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    store: Arc<Store>,
}

impl ControlPlane {
    fn start(addr: SocketAddr, labels: &str) -> (Self, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let store = Arc::new(Store::new());
        store.replace(objects(labels));
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let bound = listener.local_addr().expect("addr");
        let server = Arc::new(Server {
            store: store.clone(),
            views: Arc::new(podwall_control::views::Views::new(
                store.clone(),
                podwall_control::protection::SidecarEvidence::Annotation,
            )),
            auth: Box::new(TrustClaimed),
            metrics: ServerMetrics::new(),
        });
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            server.serve(listener).await
        });
        (
            ControlPlane {
                runtime: Some(runtime),
                store,
            },
            bound,
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn app_label(state: &Option<Arc<ClusterState>>) -> Option<String> {
    state.as_ref()?.pods.first()?.labels.get("app").cloned()
}

async fn wait_until(rx: &mut watch::Receiver<Option<Arc<ClusterState>>>, want: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if app_label(&rx.borrow_and_update()).as_deref() == Some(want) {
                return;
            }
            rx.changed().await.expect("source alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no state with app={want}"));
}

/// Pod t/a's feed from the control plane at `addr`, over plain HTTP/2.
fn plain_source(addr: SocketAddr, silence: Duration) -> Box<ControlSource> {
    Box::new(ControlSource {
        addr: addr.to_string(),
        identity: Identity {
            namespace: "t".into(),
            name: "a".into(),
        },
        token_file: None,
        tls: None,
        silence,
        names: Default::default(),
    })
}

#[tokio::test]
async fn the_sidecar_follows_the_feed_keeps_the_last_state_without_it_and_resyncs() {
    let (cp, addr) = ControlPlane::start("127.0.0.1:0".parse().expect("addr"), "one");
    let metrics = Arc::new(Metrics::new());
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(plain_source(addr, podwall_proxy::feed_client::SILENCE).run(tx, metrics.clone()));
    wait_until(&mut rx, "one").await;
    assert_eq!(metrics.policy_stream_connected.get(), 1);

    cp.store.replace(objects("two"));
    wait_until(&mut rx, "two").await;

    drop(cp);
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.policy_stream_connected.get() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the drop is noticed");
    assert_eq!(
        app_label(&rx.borrow()).as_deref(),
        Some("two"),
        "the last state stays enforced"
    );

    // A restarted control plane (a new epoch) on the same address: a fresh snapshot.
    let (_cp2, _) = ControlPlane::start(addr, "three");
    wait_until(&mut rx, "three").await;
    assert_eq!(metrics.policy_stream_connected.get(), 1);
    assert!(metrics.policy_stream_reconnects.get() >= 1);
}

#[tokio::test]
async fn a_stream_silent_for_longer_than_its_heartbeats_is_opened_again_keeping_the_policy() {
    // The control plane's heartbeats come every 5 s; a sidecar told to expect a line every
    // 300 ms takes its quiet feed for dead, again and again, and keeps what it holds.
    let (cp, addr) = ControlPlane::start("127.0.0.1:0".parse().expect("addr"), "one");
    let metrics = Arc::new(Metrics::new());
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(plain_source(addr, Duration::from_millis(300)).run(tx, metrics.clone()));
    wait_until(&mut rx, "one").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.policy_stream_reconnects.get() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a silent stream is given up");
    assert_eq!(app_label(&rx.borrow()).as_deref(), Some("one"));
    // Each new stream resumes where the last one left: a change still arrives.
    cp.store.replace(objects("two"));
    wait_until(&mut rx, "two").await;
}

/// A CA and a certificate it signs for `localhost`: (CA PEM, cert PEM, key PEM).
fn issue() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "podwall test control-plane CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca).expect("cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_sidecar_trusts_only_the_control_plane_its_ca_vouches_for() {
    let (ca, cert, key) = issue();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), &cert).expect("cert");
    std::fs::write(dir.path().join("tls.key"), &key).expect("key");
    let reloading = podwall_control::certs::ReloadingCert::new(
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    )
    .expect("certificate");
    let acceptor = podwall_control::certs::acceptor(Arc::new(reloading)).expect("tls");
    let store = Arc::new(Store::new());
    store.replace(objects("secure"));
    let server = Arc::new(Server {
        store: store.clone(),
        views: Arc::new(podwall_control::views::Views::new(
            store.clone(),
            podwall_control::protection::SidecarEvidence::Annotation,
        )),
        auth: Box::new(TrustClaimed),
        metrics: ServerMetrics::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(server.serve_with(listener, Some(acceptor)));

    let follow = |ca_pem: &str| {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = watch::channel(None);
        let source = Box::new(ControlSource {
            addr: format!("localhost:{port}"),
            identity: Identity {
                namespace: "t".into(),
                name: "a".into(),
            },
            token_file: None,
            tls: Some(podwall_proxy::feed_client::tls_connector(ca_pem.as_bytes()).expect("CA")),
            silence: podwall_proxy::feed_client::SILENCE,
            // `localhost`, from this machine's /etc/hosts.
            names: podwall_proxy::lookup::SystemNames::read(None).expect("/etc"),
        });
        tokio::spawn(source.run(tx, metrics.clone()));
        (rx, metrics)
    };
    let (mut rx, metrics) = follow(&ca);
    wait_until(&mut rx, "secure").await;
    assert_eq!(metrics.policy_stream_connected.get(), 1);

    // Another CA: the sidecar refuses the control plane and holds no policy (fail closed).
    let (other_ca, _, _) = issue();
    let (rx, metrics) = follow(&other_ca);
    // Refused twice (each failed handshake is a reconnect), and still nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.policy_stream_reconnects.get() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar never retries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rx.borrow().is_none(),
        "no policy from an unverified control plane"
    );
    assert_eq!(metrics.policy_stream_connected.get(), 0);
    assert!(podwall_proxy::feed_client::tls_connector(b"not a certificate").is_err());
}

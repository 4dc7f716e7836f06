//! The API-server source against an in-process API server speaking the real list/watch
//! protocol: what it lists and watches reaches the sidecars' feeds, and each sidecar's compiled
//! policy follows adds, updates, deletes, relists after `410 Gone`, bookmarks and CRDs that
//! appear later.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwall_control::auth::token_review::TokenReviewer;
use podwall_control::auth::{Authenticator, StaticTokens};
use podwall_control::metrics::ServerMetrics;
use podwall_control::server::Server;
use podwall_control::source::kube::{NoObserver, feed, watched_kinds};
use podwall_control::store::Store;
use podwall_control::testing::FakeApiServer;
use podwall_policy::feed::{FeedMessage, ObjectSet, apply};
use podwall_policy::{Endpoint, Engine, Loader, Origin, Protocol, Query};
use serde_json::{Value, json};

fn namespace(name: &str, env: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "env": env}}})
}

fn pod(name: &str, app: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "labels": {"app": app},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            "annotations": {"podwall.io/inject": "enabled"}},
        "spec": {"containers": [{"name": "main", "image": "registry.example/app:1",
            "ports": [{"containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.1"}})
}

fn db_ingress_from(app: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db-ingress", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app}}}],
                "ports": [{"port": 5432}]}]}})
}

/// What a sidecar holds, and what it would decide.
struct Sidecar {
    body: Incoming,
    buf: Vec<u8>,
    held: ObjectSet,
    version: Option<(String, u64)>,
    /// Every object it ever held.
    ever: std::collections::BTreeSet<podwall_policy::feed::ObjectKey>,
}

impl Sidecar {
    async fn connect(addr: SocketAddr, pod: &str, token: &str) -> Sidecar {
        let (status, body) = Sidecar::open(addr, pod, token).await;
        assert_eq!(status, 200);
        Sidecar {
            body,
            buf: Vec::new(),
            held: ObjectSet::new(),
            version: None,
            ever: Default::default(),
        }
    }

    /// Asks for `pod`'s feed with `token`; the status and the body.
    async fn open(addr: SocketAddr, pod: &str, token: &str) -> (http::StatusCode, Incoming) {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2");
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/v1/feed?namespace=prod&pod={pod}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        (resp.status(), resp.into_body())
    }

    /// Applies feed messages until `done` holds for what the sidecar holds.
    async fn until(&mut self, what: &str, done: impl Fn(&Sidecar) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(self) {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let msg: FeedMessage = serde_json::from_slice(&line).expect("a feed line");
                assert!(
                    apply(&mut self.held, &mut self.version, msg),
                    "versions follow"
                );
                self.ever.extend(self.held.keys().cloned());
                continue;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
                .expect("stream open")
                .expect("frame");
            if let Ok(d) = frame.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }

    fn has(&self, kind: &str, name: &str) -> bool {
        self.held.keys().any(|k| k.kind == kind && k.name == name)
    }

    fn object(&self, kind: &str, name: &str) -> Option<&Value> {
        self.held
            .iter()
            .find(|(k, _)| k.kind == kind && k.name == name)
            .map(|(_, v)| v)
    }

    /// Whether the policy the sidecar holds allows `src -> dst:port`.
    fn allows(&self, src: &str, dst: &str, port: u16) -> bool {
        let mut loader = Loader::new();
        for o in self.held.values() {
            loader.add_object(
                Origin {
                    source: "feed".into(),
                    line: 0,
                    item: None,
                },
                o.clone(),
            );
        }
        let (state, report) = loader.finish();
        assert!(
            report.diagnostics.is_empty(),
            "objects from the API server load cleanly: {:?}",
            report.diagnostics
        );
        let engine = Engine::compile(state);
        let ip = |s: &str| Endpoint::Ip(s.parse::<IpAddr>().expect("ip"));
        engine.allowed(&Query {
            src: ip(src),
            dst: ip(dst),
            protocol: Protocol::Tcp,
            port,
        })
    }
}

/// A control plane watching `api`, serving feeds for prod/web and prod/db.
async fn control_plane(api: &FakeApiServer) -> (Arc<Store>, SocketAddr) {
    control_plane_with(api, |_, _| {
        Box::new(StaticTokens::parse("tok-web prod/web\ntok-db prod/db\n").expect("tokens"))
    })
    .await
}

/// A control plane watching `api`, its sidecars checked by `auth`.
async fn control_plane_with(
    api: &FakeApiServer,
    auth: impl FnOnce(kube::Client, Arc<Store>) -> Box<dyn Authenticator>,
) -> (Arc<Store>, SocketAddr) {
    let (store, addr) = control_plane_starting(api, auth).await;
    loaded(&store).await;
    (store, addr)
}

/// Waits for the store's first whole state.
async fn loaded(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !store.loaded() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first lists complete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The control plane's source and feed server, started (the first lists may not be done).
async fn control_plane_starting(
    api: &FakeApiServer,
    auth: impl FnOnce(kube::Client, Arc<Store>) -> Box<dyn Authenticator>,
) -> (Arc<Store>, SocketAddr) {
    let config = kube::Config::new(api.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let store = Arc::new(Store::new());
    tokio::spawn(feed(
        client.clone(),
        watched_kinds(),
        store.clone(),
        Arc::new(NoObserver),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Arc::new(Server {
        store: store.clone(),
        views: Arc::new(podwall_control::views::Views::new(
            store.clone(),
            podwall_control::protection::SidecarEvidence::Annotation,
        )),
        auth: auth(client, store.clone()),
        metrics: ServerMetrics::new(),
    });
    tokio::spawn(server.serve(listener));
    (store, addr)
}

async fn wait_for_log(api: &FakeApiServer, what: &str, pred: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pred(&api.log()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; requests: {:#?}",
            api.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_updates_deletes_and_relists_reach_the_right_sidecars_with_the_right_policy() {
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    api.apply(namespace("prod", "production"));
    api.apply(pod("web", "web", "10.0.0.1", 8080));
    api.apply(pod("db", "db", "10.0.0.2", 5432));
    let (_store, addr) = control_plane(&api).await;
    // Optional CRDs that are not installed do not hold readiness back.
    assert!(
        api.log()
            .iter()
            .any(|l| l == "404 /apis/podwall.io/v1alpha1/podwallpolicies")
    );

    let mut web = Sidecar::connect(addr, "web", "tok-web").await;
    let mut db = Sidecar::connect(addr, "db", "tok-db").await;
    web.until("web's snapshot", |s| s.has("Pod", "web")).await;
    db.until("db's snapshot", |s| s.has("Pod", "db")).await;
    assert!(db.allows("10.0.0.1", "10.0.0.2", 5432), "no policy yet");
    assert!(!web.has("Pod", "db"), "db is none of web's business");
    let trimmed = web.object("Pod", "web").expect("the pod");
    assert!(
        trimmed["metadata"].get("managedFields").is_none()
            && trimmed["spec"]["containers"][0].get("image").is_none(),
        "pods are trimmed to what policy reads: {trimmed}"
    );

    // Add: a policy isolating db to the api pods. db's sidecar judges db's ingress.
    api.apply(db_ingress_from("api"));
    db.until("the policy", |s| s.has("NetworkPolicy", "db-ingress"))
        .await;
    assert!(!db.allows("10.0.0.1", "10.0.0.2", 5432), "web is not api");

    // Update: web becomes an api pod, so it enters db's view as a peer.
    let mut relabelled = pod("web", "api", "10.0.0.1", 8080);
    relabelled["metadata"]["labels"]["app"] = json!("api");
    api.apply(relabelled);
    db.until("web as a peer", |s| {
        s.object("Pod", "web")
            .is_some_and(|p| p["metadata"]["labels"]["app"] == "api")
    })
    .await;
    assert!(db.allows("10.0.0.1", "10.0.0.2", 5432));
    web.until("web's new label", |s| {
        s.object("Pod", "web")
            .is_some_and(|p| p["metadata"]["labels"]["app"] == "api")
    })
    .await;

    // Update the policy (web leaves db's view), then delete it.
    api.apply(db_ingress_from("nobody"));
    db.until("the edited policy", |s| {
        s.object("NetworkPolicy", "db-ingress").is_some_and(|p| {
            p["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"] == "nobody"
        }) && !s.has("Pod", "web")
    })
    .await;
    assert!(!db.allows("10.0.0.1", "10.0.0.2", 5432));
    api.delete(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "prod",
        "db-ingress",
    );
    db.until("the deletion", |s| !s.has("NetworkPolicy", "db-ingress"))
        .await;
    assert!(db.allows("10.0.0.1", "10.0.0.2", 5432));

    // A deletion the watch never saw, its history compacted: the watch resumes, gets 410
    // Gone, relists, and the relist's diff deletes the policy for the sidecar.
    api.apply(db_ingress_from("api"));
    db.until("the policy again", |s| s.has("NetworkPolicy", "db-ingress"))
        .await;
    let lists_before = api
        .log()
        .iter()
        .filter(|l| *l == "list /apis/networking.k8s.io/v1/networkpolicies")
        .count();
    api.delete_unseen(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "prod",
        "db-ingress",
    );
    db.until("the deletion found by the relist", |s| {
        !s.has("NetworkPolicy", "db-ingress")
    })
    .await;
    assert!(db.allows("10.0.0.1", "10.0.0.2", 5432));
    assert!(db.has("Pod", "db"), "nothing else lost");
    let lists_after = api
        .log()
        .iter()
        .filter(|l| *l == "list /apis/networking.k8s.io/v1/networkpolicies")
        .count();
    assert_eq!(lists_after, lists_before + 1, "exactly one relist");
    // web's sidecar never held db's policy or db: each sidecar gets its own view.
    web.until("web's feed is current", |s| {
        s.version.as_ref().is_some_and(|(_, v)| *v > 1)
    })
    .await;
    assert!(
        !web.ever
            .iter()
            .any(|k| k.kind == "NetworkPolicy" || k.name == "db"),
        "{:?}",
        web.ever
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_the_last_bookmark_instead_of_relisting() {
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    api.apply(namespace("prod", "production"));
    api.apply(pod("web", "web", "10.0.0.1", 8080));
    let (_store, _addr) = control_plane(&api).await;
    wait_for_log(&api, "the pod watch", |l| {
        l.iter().any(|r| r.starts_with("watch /api/v1/pods"))
    })
    .await;
    // Changes elsewhere move the resourceVersion past the last pod event; only a bookmark
    // tells the pod watch.
    api.apply(namespace("prod", "staging"));
    api.apply(namespace("other", "x"));
    let rv = api.resource_version();
    // The bookmark is written before the stream ends, so the watch has read it when it
    // reconnects.
    api.bookmark();
    api.cut_watches();
    let want = format!("watch /api/v1/pods rv={rv}");
    wait_for_log(&api, &want, |l| l.contains(&want)).await;
    let pod_lists = api
        .log()
        .iter()
        .filter(|l| *l == "list /api/v1/pods")
        .count();
    assert_eq!(pod_lists, 1, "no relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_podwall_policy_crd_installed_later_is_picked_up() {
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    api.apply(namespace("prod", "production"));
    api.apply(pod("web", "web", "10.0.0.1", 8080));
    api.apply(pod("db", "db", "10.0.0.2", 5432));
    let (_store, addr) = control_plane(&api).await;
    let mut db = Sidecar::connect(addr, "db", "tok-db").await;
    db.until("the snapshot", |s| s.has("Pod", "db")).await;
    assert!(db.allows("10.0.0.1", "10.0.0.2", 5432));

    api.serve("podwall.io/v1alpha1", "PodwallPolicy", "podwallpolicies");
    api.apply(
        json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
        "metadata": {"name": "db-l7", "namespace": "prod"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}],
                "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}]}}),
    );
    db.until("the PodwallPolicy", |s| s.has("PodwallPolicy", "db-l7"))
        .await;
    assert!(!db.allows("10.0.0.1", "10.0.0.2", 5432));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_proves_its_pod_with_a_projected_token_checked_by_token_review() {
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    api.apply(namespace("prod", "production"));
    let mut web = pod("web", "web", "10.0.0.1", 8080);
    web["spec"]["serviceAccountName"] = json!("web-sa");
    api.apply(web);
    api.apply(pod("db", "db", "10.0.0.2", 5432));
    api.token(
        "web-token",
        "system:serviceaccount:prod:web-sa",
        Some("web"),
        &["podwall"],
    );
    api.token(
        "web-api-token",
        "system:serviceaccount:prod:web-sa",
        Some("web"),
        &["https://kubernetes.default.svc"],
    );
    api.token(
        "legacy-token",
        "system:serviceaccount:prod:web-sa",
        None,
        &["podwall"],
    );
    api.token(
        "db-token-wrong-sa",
        "system:serviceaccount:prod:web-sa",
        Some("db"),
        &["podwall"],
    );
    // Authenticated by the API server whatever the audience: podwall's own check refuses it.
    api.token_for_any_audience(
        "web-unchecked-audience-token",
        "system:serviceaccount:prod:web-sa",
        Some("web"),
        &["https://kubernetes.default.svc"],
    );
    let (_store, addr) = control_plane_with(&api, |client, store| {
        Box::new(TokenReviewer::new(client, store, "podwall"))
    })
    .await;

    let reviews = || {
        api.log()
            .iter()
            .filter(|l| *l == "create tokenreviews")
            .count()
    };
    let mut sidecar = Sidecar::connect(addr, "web", "web-token").await;
    sidecar.until("the snapshot", |s| s.has("Pod", "web")).await;
    assert_eq!(reviews(), 1);
    // A token reviewed a moment ago is not reviewed again (a restarting fleet of sidecars
    // would otherwise be a storm of TokenReviews).
    let (status, _) = Sidecar::open(addr, "web", "web-token").await;
    assert_eq!(status, 200);
    assert_eq!(
        reviews(),
        1,
        "the second connection is answered from the cache"
    );
    for (pod, token, why) in [
        ("db", "web-token", "another pod's feed"),
        ("web", "web-api-token", "a token for another audience"),
        (
            "web",
            "web-unchecked-audience-token",
            "a token for another audience the API server did not check",
        ),
        ("web", "legacy-token", "a token bound to no pod"),
        (
            "db",
            "db-token-wrong-sa",
            "a token of a service account the pod does not run as",
        ),
        ("web", "forged", "a token the API server does not know"),
    ] {
        let (status, _) = Sidecar::open(addr, pod, token).await;
        assert_eq!(status, 403, "{why} is refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_feed_is_served_until_every_required_kind_has_listed() {
    // NetworkPolicy is not served yet (its API group missing, or RBAC refusing it): the other
    // kinds list, but a state without the policies would open every pod, so none is served.
    let api = FakeApiServer::start().await;
    api.serve("v1", "Namespace", "namespaces");
    api.serve("v1", "Pod", "pods");
    api.serve("v1", "Service", "services");
    api.serve("discovery.k8s.io/v1", "EndpointSlice", "endpointslices");
    api.apply(namespace("prod", "production"));
    api.apply(pod("web", "web", "10.0.0.1", 8080));
    let (store, addr) = control_plane_starting(&api, |_, _| {
        Box::new(StaticTokens::parse("web-token prod/web\n").expect("tokens"))
    })
    .await;
    // The pods are listed and the NetworkPolicy list refused, twice: still nothing served.
    wait_for_log(&api, "the pod list and two refused policy lists", |l| {
        l.iter().any(|r| r == "list /api/v1/pods")
            && l.iter()
                .filter(|r| r.starts_with("404 /apis/networking.k8s.io/v1/networkpolicies"))
                .count()
                >= 2
    })
    .await;
    assert!(!store.loaded(), "no state without the policies");
    let (status, _) = Sidecar::open(addr, "web", "web-token").await;
    assert_eq!(status, 503, "no feed before every kind has listed");
    // The kind appears: the state is whole, and served.
    api.serve("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies");
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-ingress", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}}),
    );
    loaded(&store).await;
    let mut sidecar = Sidecar::connect(addr, "web", "web-token").await;
    sidecar
        .until("the snapshot with the policy", |s| {
            s.has("Pod", "web") && s.has("NetworkPolicy", "web-ingress")
        })
        .await;
}

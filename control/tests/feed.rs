//! The feed server over real HTTP/2 connections: snapshots, deltas, resume, refusals.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwall_control::auth::StaticTokens;
use podwall_control::metrics::ServerMetrics;
use podwall_control::server::Server;
use podwall_control::store::Store;
use podwall_policy::feed::{FeedMessage, ObjectKey, ObjectSet};
use serde_json::{Value, json};

fn ns(name: &str, label: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"l": label}}})
}

fn set(objs: &[Value]) -> ObjectSet {
    objs.iter()
        .map(|o| (ObjectKey::of(o).expect("key"), o.clone()))
        .collect()
}

async fn start(store: Arc<Store>) -> std::net::SocketAddr {
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
        auth: Box::new(StaticTokens::parse("tok-a t/a\ntok-b t/b\n").expect("tokens")),
        metrics: ServerMetrics::new(),
    });
    tokio::spawn(server.serve(listener));
    addr
}

/// Opens a feed; returns the status and the body.
async fn open(
    addr: std::net::SocketAddr,
    pod: &str,
    token: &str,
    resume: Option<(&str, u64)>,
) -> (http::StatusCode, Incoming) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let mut uri = format!("http://{addr}/v1/feed?namespace=t&pod={pod}");
    if let Some((e, v)) = resume {
        uri.push_str(&format!("&epoch={e}&version={v}"));
    }
    let req = http::Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    (resp.status(), resp.into_body())
}

/// A plain GET; the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let body = send
        .send_request(req)
        .await
        .expect("response")
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Waits until the server has seen every feed close (and remembered what each held, for its
/// resume): a sidecar back sooner gets a snapshot.
async fn feeds_closed(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !get(addr, "/metrics")
        .await
        .contains("podwall_control_feeds_open 0")
    {
        assert!(tokio::time::Instant::now() < deadline, "a feed stays open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next feed message that is not a heartbeat.
async fn next(body: &mut Incoming, buf: &mut Vec<u8>) -> FeedMessage {
    loop {
        let msg = next_line(body, buf).await;
        if !matches!(msg, FeedMessage::Heartbeat { .. }) {
            return msg;
        }
    }
}

/// The next feed message, heartbeats included.
async fn next_line(body: &mut Incoming, buf: &mut Vec<u8>) -> FeedMessage {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return serde_json::from_slice(&line).expect("a feed line");
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a line in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            buf.extend_from_slice(&d);
        }
    }
}

#[tokio::test]
async fn a_feed_starts_with_a_snapshot_and_follows_every_change() {
    let store = Arc::new(Store::new());
    store.replace(set(&[ns("t", "1")]));
    let addr = start(store.clone()).await;
    let (status, mut body) = open(addr, "a", "tok-a", None).await;
    assert_eq!(status, 200);
    let mut buf = Vec::new();
    match next(&mut body, &mut buf).await {
        FeedMessage::Snapshot {
            version, objects, ..
        } => {
            assert_eq!(version, 1);
            assert_eq!(objects, [ns("t", "1")]);
        }
        other => panic!("{other:?}"),
    }
    store.replace(set(&[ns("t", "2"), ns("u", "1")]));
    match next(&mut body, &mut buf).await {
        FeedMessage::Delta {
            version,
            upserts,
            deletes,
            ..
        } => {
            assert_eq!(version, 2);
            assert_eq!(upserts.len(), 2);
            assert!(deletes.is_empty());
        }
        other => panic!("{other:?}"),
    }
    store.replace(set(&[ns("t", "2")]));
    match next(&mut body, &mut buf).await {
        FeedMessage::Delta {
            version, deletes, ..
        } => {
            assert_eq!(version, 3);
            assert_eq!(deletes[0].name, "u");
        }
        other => panic!("{other:?}"),
    }
    let metrics = get(addr, "/metrics").await;
    assert!(
        metrics.contains("podwall_control_delta_delay_seconds_count 2"),
        "each delta's lag is measured: {metrics}"
    );
    assert!(
        metrics.contains("podwall_control_feeds_open 1"),
        "{metrics}"
    );
}

fn pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "t", "labels": {"app": app}},
        "status": {"phase": "Running", "podIP": format!("10.0.0.{}", name.len())}})
}

#[tokio::test]
async fn a_reconnecting_sidecar_gets_only_what_changed_in_its_view_or_a_snapshot_from_another_epoch()
 {
    let store = Arc::new(Store::new());
    store.replace(set(&[ns("t", "1"), pod("a", "x"), pod("bb", "y")]));
    let addr = start(store.clone()).await;
    let epoch = store.epoch().to_string();
    let (_, mut body) = open(addr, "a", "tok-a", None).await;
    let mut buf = Vec::new();
    match next(&mut body, &mut buf).await {
        FeedMessage::Snapshot {
            version, objects, ..
        } => {
            assert_eq!(version, 1);
            assert_eq!(
                objects,
                [ns("t", "1"), pod("a", "x")],
                "pod bb is none of a's business"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(body);
    feeds_closed(addr).await;
    // While a is away: its namespace changes, then a pod outside its view.
    store.replace(set(&[ns("t", "2"), pod("a", "x"), pod("bb", "y")]));
    store.replace(set(&[ns("t", "2"), pod("a", "x"), pod("bb", "z")]));
    let (_, mut body) = open(addr, "a", "tok-a", Some((&epoch, 1))).await;
    let mut buf = Vec::new();
    match next(&mut body, &mut buf).await {
        FeedMessage::Delta {
            from,
            version,
            upserts,
            deletes,
            ..
        } => {
            assert_eq!((from, version), (Some(1), 3));
            assert_eq!(upserts, [ns("t", "2")], "only what changed in a's view");
            assert!(deletes.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let (_, mut body) = open(addr, "a", "tok-a", Some(("an-old-process", 3))).await;
    let mut buf = Vec::new();
    assert!(matches!(
        next(&mut body, &mut buf).await,
        FeedMessage::Snapshot { version: 3, .. }
    ));
}

#[tokio::test]
async fn a_quiet_feed_sends_heartbeats_at_the_version_its_view_is_current_at_and_resumes_there() {
    let store = Arc::new(Store::new());
    store.replace(set(&[ns("t", "1"), pod("a", "x"), pod("bb", "y")]));
    let addr = start(store.clone()).await;
    let epoch = store.epoch().to_string();
    let (_, mut body) = open(addr, "a", "tok-a", None).await;
    let mut buf = Vec::new();
    assert!(matches!(
        next_line(&mut body, &mut buf).await,
        FeedMessage::Snapshot { version: 1, .. }
    ));
    // A change outside a's view: no delta for a, but its view is current at version 2.
    store.replace(set(&[ns("t", "1"), pod("a", "x"), pod("bb", "z")]));
    let started = tokio::time::Instant::now();
    match next_line(&mut body, &mut buf).await {
        FeedMessage::Heartbeat { epoch: e, version } => {
            assert_eq!((e.as_str(), version), (epoch.as_str(), 2));
        }
        other => panic!("a heartbeat, not {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= podwall_control::server::HEARTBEAT - Duration::from_millis(500),
        "a heartbeat after {waited:?} of quiet"
    );
    // Resuming at the heartbeat's version: no snapshot; the next change comes as a delta
    // from there.
    drop(body);
    feeds_closed(addr).await;
    let (_, mut body) = open(addr, "a", "tok-a", Some((&epoch, 2))).await;
    store.replace(set(&[ns("t", "2"), pod("a", "x"), pod("bb", "z")]));
    let mut buf = Vec::new();
    match next_line(&mut body, &mut buf).await {
        FeedMessage::Delta {
            from,
            version,
            upserts,
            deletes,
            ..
        } => {
            assert_eq!((from, version), (Some(2), 3));
            assert_eq!(upserts, [ns("t", "2")]);
            assert!(deletes.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_sidecar_asking_for_another_pods_feed_is_refused() {
    let store = Arc::new(Store::new());
    store.replace(set(&[ns("t", "1")]));
    let addr = start(store).await;
    let (status, body) = open(addr, "a", "tok-b", None).await;
    assert_eq!(status, 403);
    let text = body.collect().await.expect("body").to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("t/b's, not t/a's"),
        "{text:?}"
    );
    let (status, _) = open(addr, "a", "nope", None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn no_feed_is_served_before_the_first_state() {
    let store = Arc::new(Store::new());
    let addr = start(store.clone()).await;
    let (status, _) = open(addr, "a", "tok-a", None).await;
    assert_eq!(status, 503);
    store.replace(set(&[]));
    let (status, _) = open(addr, "a", "tok-a", None).await;
    assert_eq!(status, 200, "an empty state is still a state");
}

#[tokio::test]
async fn where_the_control_plane_serves_tls_elsewhere_a_token_in_the_clear_is_refused_and_counted()
{
    let store = Arc::new(Store::new());
    store.replace(set(&[ns("t", "x")]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = ServerMetrics::new();
    let server = Arc::new(Server {
        store: store.clone(),
        views: Arc::new(podwall_control::views::Views::new(
            store.clone(),
            podwall_control::protection::SidecarEvidence::Annotation,
        )),
        auth: Box::new(StaticTokens::parse("tok-a t/a\n").expect("tokens")),
        metrics: metrics.clone(),
    });
    tokio::spawn(server.serve_on(
        listener,
        podwall_control::server::FeedTransport::PlainWithoutTokens,
    ));
    let (status, _) = open(addr, "a", "tok-a", None).await;
    assert_eq!(status, http::StatusCode::FORBIDDEN);
    assert_eq!(metrics.plaintext_tokens.get(), 1);
    assert_eq!(
        metrics.refused.get(),
        0,
        "not a wrong token: a token in the clear"
    );
    let exposed = get(addr, "/metrics").await;
    assert!(
        exposed.contains("podwall_control_plaintext_tokens_refused_total 1"),
        "{exposed}"
    );
    // What carries no token is served as before.
    assert_eq!(get(addr, "/ready").await, "ready\n");
}

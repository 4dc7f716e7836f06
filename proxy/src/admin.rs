//! The admin server (`:15020`): `/live`, `/ready` (once a policy for this pod is loaded) and
//! `/metrics` (Prometheus text format). The init rules hand it the port by TPROXY (so only the
//! sidecar's socket receives it) and judge nothing else on it, so it judges `/metrics` itself:
//! the counters move with what the app does, and a peer the pod's ingress policy denies could
//! read them as a channel from a compromised app. `/metrics` answers loopback and the peers
//! ingress policy allows on the admin port (the node always: kubelet, node-local scrapers);
//! `/live` and `/ready` answer everyone (the kubelet probes them before any policy arrives).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use std::net::SocketAddr;

use podwall_policy::{Direction, Protocol};

use crate::flow::FlowEvent;
use crate::metrics::Metrics;
use crate::pod_policy::FlowVerdict;
use crate::pod_policy::PolicyReceiver;
use crate::shared::Shared;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Whether `peer` may read `/metrics` on `local`; a denial is a flow event like any other.
fn may_scrape(shared: &Shared, peer: SocketAddr, local: SocketAddr) -> bool {
    if peer.ip().is_loopback() {
        return true;
    }
    let mut event = FlowEvent::new(Direction::Ingress, Protocol::Tcp, peer, local);
    event.time = std::time::SystemTime::now();
    let verdict = match shared.policy() {
        Some(policy) => {
            let verdict = policy.inbound(peer.ip(), Protocol::Tcp, local.port());
            event.describe(&policy, &verdict, peer, local);
            event.verdict = policy.flow_verdict(&verdict);
            event.verdict
        }
        None => {
            event.reason = Some("no policy loaded yet: refusing everything (fail closed)".into());
            FlowVerdict::Denied
        }
    };
    if verdict == FlowVerdict::Allowed {
        return true;
    }
    event.reason = Some(format!(
        "/metrics on the admin port is for peers the pod's ingress policy allows on port {}",
        local.port()
    ));
    shared.metrics(Direction::Ingress).verdict(verdict);
    shared.flows.emit(event);
    verdict == FlowVerdict::Audit
}

fn route(
    req: &Request<Incoming>,
    policies: &PolicyReceiver,
    metrics: &Metrics,
    scrape: impl FnOnce() -> bool,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => match policies.borrow().as_ref() {
            Some(p) => reply(
                StatusCode::OK,
                "text/plain",
                format!("ready: policy generation {}\n", p.generation),
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no policy for this pod yet\n".into(),
            ),
        },
        "/metrics" if scrape() => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/metrics" => reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the pod's ingress policy does not allow this peer on the admin port\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /live, /ready or /metrics\n".into(),
        ),
    }
}

/// Serves the admin endpoints until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    policies: PolicyReceiver,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) {
    use crate::orig_dst::MapV4Mapped;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // TPROXY keeps the address the peer dialled as the socket's own.
        let local = stream.local_addr().map(MapV4Mapped::map_v4_mapped);
        let peer = peer.map_v4_mapped();
        let (policies, metrics, shared) = (policies.clone(), metrics.clone(), shared.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = route(&req, &policies, &metrics, || {
                    local
                        .as_ref()
                        .is_ok_and(|local| may_scrape(&shared, peer, *local))
                });
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

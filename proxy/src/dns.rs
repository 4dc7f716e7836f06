//! The DNS capture point (`:15053`): queries the pod sends over UDP are checked against the
//! pod's egress policy for the resolver and relayed to it; answers come back unchanged. TCP
//! DNS goes through the ordinary outbound path (its original destination is known).
//!
//! A redirected UDP datagram does not carry its original destination, so queries go to the
//! resolver the pod is configured with (`/etc/resolv.conf`, or `--dns-upstream`), as Istio's
//! DNS capture does. The FQDN work replaces this with a DNS proxy that parses and learns from
//! answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwall_policy::{Direction, Protocol};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::conn::Shared;
use crate::flow::{self, FlowEvent, FlowVerdict};

/// Longest DNS message over UDP with EDNS.
const MAX_DATAGRAM: usize = 4096;
/// Queries in flight at once; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 256;
/// DNS response codes used here.
const SERVFAIL: u8 = 2;
const REFUSED: u8 = 5;

/// The first `nameserver` of a resolv.conf.
pub fn resolver_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// A reply to `query` with no records and the given rcode (REFUSED for a denied resolver,
/// SERVFAIL when the resolver cannot be reached), or `None` if the query is malformed.
pub fn error_reply(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    // Walk the question section to keep it in the reply.
    let mut at = 12;
    for _ in 0..qdcount {
        loop {
            let len = *query.get(at)? as usize;
            if len & 0xc0 != 0 {
                return None; // compression in a question: not from a stub resolver
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        at += 4; // type and class
    }
    let mut reply = query.get(..at)?.to_vec();
    reply[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
    reply[3] = 0x80 | rcode; // RA, rcode
    reply[6..12].fill(0); // no answers, authority or additional records
    Some(reply)
}

/// Serves DNS over UDP on `socket` until the process ends.
pub async fn serve(socket: UdpSocket, upstream: Option<SocketAddr>, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            answer(&socket, client, query, upstream, &shared).await;
            drop(permit);
        });
    }
}

async fn answer(
    socket: &UdpSocket,
    client: SocketAddr,
    query: Vec<u8>,
    upstream: Option<SocketAddr>,
    shared: &Shared,
) {
    let started = Instant::now();
    let metrics = &shared.metrics.dns;
    let Some(resolver) = upstream else {
        if let Some(reply) = error_reply(&query, SERVFAIL) {
            let _ = socket.send_to(&reply, client).await;
        }
        tracing::warn!(
            "DNS query but no resolver is configured (--dns-upstream or /etc/resolv.conf)"
        );
        return;
    };
    let mut event = FlowEvent {
        time: String::new(),
        verdict: FlowVerdict::Denied,
        direction: Direction::Egress,
        protocol: Protocol::Udp,
        source: flow::peer(None, client),
        destination: flow::peer(None, resolver),
        egress: None,
        ingress: None,
        reason: None,
        bytes_sent: query.len() as u64,
        bytes_received: 0,
        duration_ms: 0.0,
        error: None,
        l7: None,
    };
    let policy = shared.policies.borrow().clone();
    match &policy {
        None => {
            event.reason = Some("no policy loaded yet: refusing everything (fail closed)".into())
        }
        Some(p) => {
            let verdict = p.outbound(resolver.ip(), Protocol::Udp, resolver.port());
            event.source = flow::peer(Some(&p.engine), client);
            event.destination = flow::peer(Some(&p.engine), resolver);
            event.egress = Some(flow::side(&p.engine, &verdict.egress));
            event.ingress = Some(flow::side(&p.engine, &verdict.ingress));
            event.verdict = p.flow_verdict(&verdict);
        }
    }
    metrics.verdict(event.verdict);
    if event.verdict == FlowVerdict::Denied {
        if let Some(reply) = error_reply(&query, REFUSED) {
            let _ = socket.send_to(&reply, client).await;
        }
    } else {
        match forward(&query, resolver).await {
            Ok(reply) => {
                event.bytes_received = reply.len() as u64;
                let _ = socket.send_to(&reply, client).await;
            }
            Err(e) => {
                event.error = Some(format!("resolver {resolver}: {e}"));
                if let Some(reply) = error_reply(&query, SERVFAIL) {
                    let _ = socket.send_to(&reply, client).await;
                }
            }
        }
    }
    event.time = flow::now();
    event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    shared.flows.emit(event);
}

/// Sends the query from a fresh socket (a fresh source port per query) and waits for the reply
/// with the same ID from the resolver.
async fn forward(query: &[u8], resolver: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if resolver.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(resolver).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5s")
            })??;
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `example.com A` with ID 0x1234 and RD set.
    fn query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend(b"\x07example\x03com\x00\x00\x01\x00\x01");
        q.extend(b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"); // an EDNS OPT record
        q
    }

    #[test]
    fn refused_replies_keep_id_and_question_and_drop_everything_else() {
        let reply = error_reply(&query(), REFUSED).expect("reply");
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(reply[2], 0x81, "QR and RD");
        assert_eq!(reply[3] & 0x0f, REFUSED);
        assert_eq!(&reply[4..6], &[0, 1], "one question");
        assert_eq!(&reply[6..12], &[0; 6], "no other records");
        assert_eq!(&reply[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
    }

    #[test]
    fn malformed_queries_get_no_reply() {
        assert!(error_reply(&[1, 2, 3], REFUSED).is_none());
        let mut q = query();
        q.truncate(20);
        assert!(error_reply(&q, REFUSED).is_none());
    }

    #[test]
    fn the_first_nameserver_of_resolv_conf_is_the_upstream() {
        let conf = "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n";
        assert_eq!(
            resolver_from_resolv_conf(conf),
            Some("10.96.0.10:53".parse().expect("addr"))
        );
        assert_eq!(resolver_from_resolv_conf("search x\n"), None);
    }
}

//! The sidecar's DNS proxy (`:15053`, UDP and TCP): every query the pod sends is judged
//! ([`podwall_fqdn::decide`]), refused (REFUSED, and a flow event) or forwarded to the resolver
//! the pod asked, and the answer goes back unchanged. Answers for names the pod's `toFQDNs`
//! rules select teach the pod's name cache ([`Names`]), which outbound connections consult.
//!
//! UDP arrives by TPROXY (see [`crate::init`]): the datagram keeps its original destination,
//! read with `IP_RECVORIGDSTADDR`, and the reply leaves from that address through a transparent
//! socket, so the pod sees its resolver answer. That needs `NET_ADMIN` (and `NET_BIND_SERVICE`
//! to answer from port 53); without them (or with
//! `--dns-capture redirect`) the sidecar falls back to the nat redirect, where the original
//! destination is lost and the pod's configured resolver is assumed. TCP arrives by nat
//! redirect and its original destination is read as for any connection.
//!
//! Before the first policy arrives every query is refused, as every connection is (fail closed):
//! an unjudged query is a two-way channel to whatever answers on port 53. The sidecar's own
//! lookups (the control plane's name) do not pass here: see [`crate::lookup`].
//!
//! The UDP socket plumbing (transparent listener, original destinations, reply sockets) is in
//! `socket`. The proxy asks the resolver from marked sockets ([`crate::exempt`]), which its
//! capture lets pass. Nothing sent to its port directly is forwarded: the init rules drop it, and a query
//! whose original destination is the sidecar itself is dropped here too (it would loop).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use podwall_fqdn::decide::{DnsQuery, DnsReason, decide};
use podwall_fqdn::forward::{self, MAX_UDP, Reply};
use podwall_fqdn::message::{Query, rcode_name};
use podwall_policy::{Direction, Protocol};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::flow::{DnsEvent, FlowEvent, L7Event};
use crate::orig_dst::{MapV4Mapped, original_dst};
use crate::pod_policy::FlowVerdict;
use crate::pod_policy::PodPolicy;
use crate::shared::Shared;

mod socket;

pub(crate) use socket::udp_listener;
use socket::{ReplySockets, recv_with_orig};

/// Queries in flight at once; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 512;
/// How long a resolver has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP DNS client has for each query, from the wait for its first byte to its last,
/// and for taking each answer.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP DNS connections served at once; more are closed as they come (the client retries).
/// The nat rule sends TCP to port 53 of any address here, judged or not, before any policy.
const MAX_TCP_CLIENTS: usize = 256;
/// The longest query taken over TCP: a question and an OPT record with its options (padding,
/// RFC 8467, makes a query a multiple of 128 bytes) are far shorter. The length prefix promises up to 64 KiB,
/// which the proxy does not set aside for a client that may never send it.
const MAX_TCP_QUERY: usize = 4096;

/// What the DNS proxy needs besides the connection handlers' shared state.
#[derive(Debug)]
pub(crate) struct DnsContext {
    /// The resolvers the pod is configured with (its resolv.conf as the sidecar read it when it
    /// started, or as `proxy init` saved it; `--dns-upstream`): the
    /// trusted ones, and the one assumed when the original destination is unknown.
    pub resolvers: Vec<IpAddr>,
}

/// Serves DNS over UDP on `socket` until the process ends.
pub(crate) async fn serve_udp(
    socket: UdpSocket,
    transparent: bool,
    ctx: Arc<DnsContext>,
    shared: Arc<Shared>,
) {
    let socket = Arc::new(socket);
    let replies = Arc::new(ReplySockets::new(ctx.resolvers.clone()));
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let received = socket
            .async_io(Interest::READABLE, || recv_with_orig(&socket, &mut buf))
            .await;
        let (n, client, orig) = match received {
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
        let resolver = match (transparent, orig) {
            (true, Some(o)) => Some(o),
            _ => ctx.resolvers.first().map(|ip| SocketAddr::new(*ip, 53)),
        };
        if resolver.is_some_and(|r| shared.loops_back(r)) {
            // Sent to the DNS port directly (the init rules drop that; this is the second
            // line): answering would send the query to ourselves, forever.
            tracing::debug!(%client, "DNS datagram sent to the sidecar itself; dropped");
            continue;
        }
        let query = buf[..n].to_vec();
        let (socket, replies, ctx, shared) =
            (socket.clone(), replies.clone(), ctx.clone(), shared.clone());
        tokio::spawn(async move {
            let Some(resolver) = resolver else {
                tracing::warn!(
                    "DNS query but no resolver is known (--dns-upstream or /etc/resolv.conf)"
                );
                return;
            };
            if let Some(reply) =
                answer(&query, client, resolver, Protocol::Udp, &ctx, &shared).await
            {
                let sent = if transparent {
                    match replies.get(resolver) {
                        Ok(s) => s.send_to(&reply, client).await.map(|_| ()),
                        Err(e) => Err(e),
                    }
                } else {
                    socket.send_to(&reply, client).await.map(|_| ())
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, %client, %resolver, "cannot send the DNS reply");
                }
            }
            drop(permit);
        });
    }
}

/// Serves DNS over TCP (nat-redirected; the original destination is the resolver).
pub(crate) async fn serve_tcp(listener: TcpListener, ctx: Arc<DnsContext>, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::debug!(client = %peer, "as many DNS connections as served at once: closed");
                    continue;
                };
                let (ctx, shared) = (ctx.clone(), shared.clone());
                tokio::spawn(async move {
                    tcp_client(stream, peer, &ctx, &shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn tcp_client(
    mut stream: TcpStream,
    accepted_peer: SocketAddr,
    ctx: &DnsContext,
    shared: &Shared,
) {
    let client = accepted_peer.map_v4_mapped();
    let resolver = match original_dst(&stream, accepted_peer) {
        Ok(dst) if shared.loops_back(dst) => {
            tracing::debug!(%client, "DNS connection made to the sidecar itself; closed");
            return;
        }
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(error = %e, %client, "cannot read the DNS connection's original destination");
            return;
        }
    };
    // Queries one after the other on the same connection, each answered in turn.
    loop {
        let Ok(Some(query)) = tokio::time::timeout(TCP_IDLE, read_tcp_query(&mut stream)).await
        else {
            return;
        };
        let Some(reply) = answer(&query, client, resolver, Protocol::Tcp, ctx, shared).await else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        // A client that does not read its answers does not hold its slot for good either.
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// One length-prefixed query from a TCP client; `None` at its end, on an error, or for one
/// longer than [`MAX_TCP_QUERY`].
async fn read_tcp_query(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = usize::from(stream.read_u16().await.ok()?);
    if len > MAX_TCP_QUERY {
        tracing::debug!(
            len,
            "DNS query over TCP longer than any the proxy takes: closed"
        );
        return None;
    }
    let mut query = vec![0u8; len];
    stream.read_exact(&mut query).await.ok()?;
    Some(query)
}

/// Judges one query, forwards it or refuses it, learns from the answer, and returns what the
/// pod gets (`None`: nothing, e.g. an unreadable message).
async fn answer(
    bytes: &[u8],
    client: SocketAddr,
    resolver: SocketAddr,
    protocol: Protocol,
    ctx: &DnsContext,
    shared: &Shared,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let metrics = &shared.metrics.dns;
    let query = match Query::parse(bytes) {
        Ok(q) => q,
        Err(e) => {
            tracing::debug!(error = %e, %client, "not a DNS query the proxy handles; dropped");
            return None;
        }
    };
    let mut event = FlowEvent::new(Direction::Egress, protocol, client, resolver);
    event.verdict = FlowVerdict::Allowed;
    event.bytes_sent = bytes.len() as u64;
    let mut dns = DnsEvent {
        query: query.question.name.clone(),
        qtype: query.question.qtype.to_string(),
        rcode: String::new(),
        ips: Vec::new(),
        ttl: None,
        truncated: false,
        reason: "resolver",
        policy: None,
        rule: None,
        learned: 0,
        not_learned: None,
    };
    let policy = shared.policy();
    // Whether the resolver's answers are believed, i.e. teach toFQDNs addresses: the pod's
    // configured resolvers, and those a `rules.dns` rule selects (as Cilium learns only from
    // the DNS its proxy serves). An L4 rule for port 53 makes a resolver reachable, not
    // believed: the app could run its own and name any address.
    let mut believed = ctx.resolvers.contains(&resolver.ip());
    if let Some(p) = &policy {
        let trusted = believed;
        let verdict = decide(
            &p.engine,
            p.fqdn.as_deref().unwrap_or(&EMPTY),
            &DnsQuery {
                pod: p.me,
                resolver: resolver.ip(),
                protocol,
                port: resolver.port(),
                name: &query.question.name,
            },
            trusted,
        );
        event.describe(p, &verdict.connection, client, resolver);
        describe_reason(&mut dns, p, &verdict.reason);
        believed |= matches!(verdict.reason, DnsReason::DnsRule(..));
        event.verdict = if verdict.allowed {
            FlowVerdict::Allowed
        } else if p.audit_covers(verdict.connection.egress.decision) {
            FlowVerdict::Audit
        } else {
            FlowVerdict::Denied
        };
        // A query the app sent to a multicast or link-local address: the sidecar would send
        // it there, past the rules that keep the app's own from the link.
        if crate::admit::link_wide(Direction::Egress, client.ip(), resolver.ip()) {
            event.verdict = if p.own_audit() && event.verdict != FlowVerdict::Denied {
                FlowVerdict::Audit
            } else {
                FlowVerdict::Denied
            };
            event.reason = Some(crate::admit::LINK_WIDE.into());
        }
    } else {
        event.verdict = FlowVerdict::Denied;
        event.reason = Some("no policy loaded yet: refusing everything (fail closed)".into());
    }
    metrics.verdict(event.verdict);
    let reply = if event.verdict == FlowVerdict::Denied {
        dns.rcode = rcode_name(ResponseCode::Refused);
        Some(query.reply_with(ResponseCode::Refused))
    } else {
        // Asked under an ID of the sidecar's own: an app that knows its query's ID (and reads
        // the upstream port from /proc/net/udp) still cannot forge the answer.
        let id = podwall_fqdn::message::random_id();
        let upstream = podwall_fqdn::message::with_id(bytes, id);
        let forwarded = ask(&upstream, &query.question.with_id(id), resolver, protocol).await;
        match forwarded {
            Ok(Reply {
                bytes,
                answer,
                ignored,
            }) => {
                let bytes = podwall_fqdn::message::with_id(&bytes, query.question.id);
                shared.metrics.fqdn.ignored_answers.inc_by(ignored as u64);
                dns.rcode = rcode_name(answer.rcode);
                dns.truncated = answer.truncated;
                dns.ips = answer
                    .addresses
                    .iter()
                    .map(|(ip, _)| ip.to_string())
                    .collect();
                dns.ttl = answer.addresses.iter().map(|(_, t)| *t).min();
                if let Some(p) = &policy {
                    if believed {
                        dns.learned = shared.names.learn(p, &answer);
                    } else if !answer.learnable().is_empty() {
                        dns.not_learned = Some("resolver-not-trusted");
                    }
                }
                event.bytes_received = bytes.len() as u64;
                Some(bytes)
            }
            Err(e) => {
                shared.metrics.fqdn.upstream_errors.inc();
                event.error = Some(format!("resolver {resolver}: {e}"));
                dns.rcode = rcode_name(ResponseCode::ServFail);
                Some(query.reply_with(ResponseCode::ServFail))
            }
        }
    };
    event.l7 = Some(Box::new(L7Event {
        http: None,
        dns: Some(dns),
    }));
    event.time = std::time::SystemTime::now();
    event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    shared.flows.emit(event);
    reply
}

/// Forwards a query to the resolver from a marked socket.
async fn ask(
    bytes: &[u8],
    question: &podwall_fqdn::message::Question,
    resolver: SocketAddr,
    protocol: Protocol,
) -> Result<Reply, forward::ForwardError> {
    match protocol {
        Protocol::Tcp => {
            let stream = tokio::time::timeout(UPSTREAM_TIMEOUT, crate::exempt::connect(resolver))
                .await
                .map_err(|_| forward::ForwardError::Timeout {
                    resolver,
                    timeout: UPSTREAM_TIMEOUT,
                })??;
            forward::tcp(stream, bytes, question, UPSTREAM_TIMEOUT).await
        }
        _ => {
            let socket = crate::exempt::udp_connected(resolver).await?;
            forward::udp(socket, bytes, question, UPSTREAM_TIMEOUT).await
        }
    }
}

static EMPTY: std::sync::LazyLock<podwall_fqdn::Matcher> =
    std::sync::LazyLock::new(podwall_fqdn::Matcher::empty);

fn describe_reason(dns: &mut DnsEvent, p: &PodPolicy, reason: &DnsReason) {
    let name_of = |rule: podwall_policy::RuleRef, extra: String| {
        let info = p.engine.rule_info(rule, None);
        (Some(info.policy), Some(format!("{}{extra}", info.field)))
    };
    dns.reason = reason.code();
    match reason {
        DnsReason::DnsRule(rule, selector) => {
            let sel = p.engine.fqdn_selectors()[selector.0 as usize].to_string();
            (dns.policy, dns.rule) = name_of(*rule, format!(".rules.dns ({sel})"));
        }
        DnsReason::ImplicitForFqdn(selector) => {
            dns.rule = Some(p.engine.fqdn_selectors()[selector.0 as usize].to_string());
        }
        DnsReason::Resolver | DnsReason::NoDnsRuleMatched(_) | DnsReason::ResolverDenied => {}
    }
}

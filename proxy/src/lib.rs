//! podwall's sidecar proxy.
//!
//! It owns the pod's traffic: the init rules ([`init`]) send every TCP connection in and out of
//! the pod, and DNS, to its listeners; for each connection it reads the original destination,
//! asks the compiled policy for a verdict, and either resets the connection at once or connects
//! to the destination and relays bytes both ways in the kernel ([`relay`]). Every connection is a
//! flow event on stdout and a count in the metrics on the admin port.
//!
//! It must never know about the API server: its policy arrives as cluster states from a
//! [`PolicySource`] that the binary wires in.

mod admin;
mod admit;
pub mod config;
mod conn;
mod conntrack;
mod dns;
mod ends_filter;
pub mod exempt;
pub mod feed_client;
pub mod flow;
mod gateways;
mod in_flight;
pub mod init;
pub mod kernel_check;
mod kernel_flows;
pub mod lookup;
pub mod metrics;
mod names;
mod netlink;
mod nfqueue;
mod orig_dst;
mod packet_filter;
mod pod_policy;
mod policy_follow;
mod relay;
mod resident;
pub use resident::limit_malloc_arenas;
mod server_name;
mod shared;
mod sock_diag;
mod tcp_route;

use std::sync::Arc;

use podwall_policy::Direction;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ProxyConfig;
pub use pod_policy::Identity;
pub use policy_follow::{PolicySource, StateReceiver};

/// The sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Which listener.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A listener on `addr`, marked as the sidecar's; `transparent` (`IP_TRANSPARENT`, needs
/// NET_ADMIN) for those TPROXY delivers to, the inbound and admin ports: TPROXY hands
/// connections to transparent sockets only, which an app cannot open.
async fn bind_tcp(
    addr: std::net::SocketAddr,
    what: &'static str,
    transparent: bool,
) -> Result<TcpListener, ProxyError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let bind = |s: tokio::net::TcpSocket| -> std::io::Result<TcpListener> {
        // Marked: the init rules hand redirected connections only to marked listeners (and
        // accepted sockets inherit the mark). Never SO_REUSEPORT: another root process of the
        // pod could then bind the same port and take a share of the connections.
        exempt::mark(&s)?;
        if transparent {
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpTransparent, &true)
                .map_err(|e| {
                    std::io::Error::other(format!(
                        "IP_TRANSPARENT (the sidecar needs NET_ADMIN): {e}"
                    ))
                })?;
        }
        s.set_reuseaddr(true)?;
        // Accepted sockets inherit it: no setsockopt per connection. Relayed messages go out
        // as they come, as they would on a direct connection the app had made with it.
        s.set_nodelay(true)?;
        s.bind(addr)?;
        s.listen(4096)
    };
    socket
        .and_then(bind)
        .map_err(|source| ProxyError::Bind { addr, what, source })
}

/// Raises the open-file limit to its maximum: every connection is two sockets and, while data
/// flows, two pipes.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
    }
}

/// After each policy change, removes the conntrack entries of UDP, SCTP and ping flows the new
/// policy denies (TCP connections are reset by their own tasks).
async fn revoke_flows_on_change(
    mut policies: watch::Receiver<Option<Arc<pod_policy::PodPolicy>>>,
    shared: Arc<shared::Shared>,
) {
    // Until the first policy, every connection the kernel carries was opened before this
    // sidecar started.
    let mut first = true;
    while policies.changed().await.is_ok() {
        let shared = shared.clone();
        let with_policy = shared.policy().is_some();
        let taking_in = first;
        first &= !with_policy;
        // One read of the table serves both passes.
        let judged = tokio::task::spawn_blocking(move || {
            // Flows judged under the policy before get their conntrack entries as their
            // verdicts are sent: read the table after that.
            if !shared.in_flight.wait_out(std::time::Duration::from_secs(1)) {
                tracing::warn!("a packet filter thread is still judging a batch after 1 s; a flow it admits under the old policy may not be judged again until the next change");
            }
            let mut table = conntrack::Conntrack::open()?;
            let entries = table.dump()?;
            // Both run, whatever the other met.
            let ended = tcp_route::revoke(&shared, &mut table, &entries, taking_in);
            let removed = if shared.keep_revoked {
                Ok(0)
            } else {
                packet_filter::revoke(&shared, &mut table, &entries)
            };
            Ok::<_, std::io::Error>((ended?, removed?))
        })
        .await;
        match judged {
            Ok(Ok((rejudged, removed))) => {
                if rejudged.taken_in > 0 {
                    tracing::info!(
                        connections = rejudged.taken_in,
                        "took in the kernel-carried TCP connections opened before this sidecar started"
                    );
                }
                let ended = rejudged.ended;
                if ended > 0 {
                    tracing::info!(
                        connections = ended,
                        "reset the kernel-carried TCP connections the new policy denies"
                    );
                }
                if removed > 0 {
                    tracing::info!(
                        flows = removed,
                        "removed the UDP/SCTP/ping flows the new policy denies"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read or prune the conntrack table: flows the new policy denies that were not ended run until they end")
            }
            Err(e) => tracing::warn!(error = %e, "conntrack pruning failed"),
        }
    }
}

/// Runs the sidecar until the process is stopped.
pub async fn run(config: ProxyConfig, source: Box<dyn PolicySource>) -> Result<(), ProxyError> {
    let (publish, states) = watch::channel(None);
    tracing::info!(source = %source.describe(), "policy source");
    let metrics = Arc::new(metrics::Metrics::new());
    tokio::spawn(source.run(publish, metrics.clone()));
    raise_fd_limit();
    let flows = flow::FlowLog::stdout(metrics.flow_counters());
    let (policy_tx, policy_rx) = watch::channel(None);

    let inbound = bind_tcp(config.inbound, "inbound", true).await?;
    let mut outbound = Vec::new();
    for addr in &config.outbound {
        outbound.push(bind_tcp(*addr, "outbound", false).await?);
    }
    let mut dns_tcp = Vec::new();
    let mut dns_udp = Vec::new();
    for addr in &config.dns {
        dns_tcp.push(bind_tcp(*addr, "dns", false).await?);
        dns_udp.push(
            dns::udp_listener(*addr, config.dns_transparent).map_err(|source| {
                ProxyError::Bind {
                    addr: *addr,
                    what: "dns",
                    source,
                }
            })?,
        );
    }
    let admin = bind_tcp(config.admin, "admin", true).await?;

    let mut own_ports = vec![config.inbound.port(), config.admin.port()];
    own_ports.extend(config.outbound.iter().map(|a| a.port()));
    own_ports.extend(config.dns.iter().map(|a| a.port()));
    let names = Arc::new(names::Names::new(config.fqdn_cache, metrics.fqdn.clone()));
    let current = Arc::new(arc_swap::ArcSwapOption::empty());
    let shared = Arc::new(shared::Shared {
        policies: policy_rx.clone(),
        current: current.clone(),
        metrics: metrics.clone(),
        flows,
        connect_timeout: config.connect_timeout,
        keep_revoked: config.keep_revoked,
        own_ports,
        names: names.clone(),
        check_server_name: config.check_server_name,
        allow_unnamed_fqdn: config.allow_unnamed_fqdn,
        node_ports_only_at_listed_addresses: config.node_ports_only_at_listed_addresses,
        round_robin: Default::default(),
        kernel_flows: Default::default(),
        in_flight: Default::default(),
    });
    let mut resolvers: Vec<std::net::IpAddr> = config.dns_upstream.into_iter().collect();
    resolvers.extend(config.names.nameservers());
    let transparent = dns_udp.iter().all(|(_, t)| *t);
    let dns_ctx = Arc::new(dns::DnsContext {
        resolvers: resolvers.clone(),
    });

    // Read once: the CNI set the pod's routes up before any container started.
    let gateways: Arc<[std::net::IpAddr]> = gateways::read().into();
    tracing::info!(addresses = ?gateways, "the pod's gateways: NodePorts there are Services' too");
    let own = policy_follow::OwnPod {
        identity: config.identity.clone(),
        audit: config.audit,
        gateways,
    };
    tokio::spawn(policy_follow::follow(
        own,
        states,
        policy_tx,
        current,
        metrics.clone(),
        names.clone(),
    ));
    {
        // Expired names leave the cache (and its gauges) even when no answer arrives.
        let names = names.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                names.expire();
            }
        });
    }
    if let Some(queue) = config.packet_queue {
        // Without the filter, the init rules' queue has no reader and the kernel drops new
        // UDP/SCTP flows: fail closed, and said loudly, but TCP keeps working.
        match packet_filter::spawn(queue, config.packet_queues, shared.clone()) {
            Ok(()) => {
                tracing::info!(
                    queue,
                    "packet filter judging new UDP, SCTP and ping flows (and, on the kernel path, new TCP connections)"
                );
                if config.kernel_path {
                    tcp_route::watch_ends(&shared);
                }
                tokio::spawn(revoke_flows_on_change(policy_rx.clone(), shared.clone()));
            }
            Err(e) => {
                tracing::error!(error = %e, "no packet filter: new UDP and SCTP flows other than DNS, and pings, are dropped")
            }
        }
    }
    tokio::spawn(admin::serve(
        admin,
        policy_rx,
        metrics.clone(),
        shared.clone(),
    ));
    tokio::spawn(conn::serve(inbound, Direction::Ingress, shared.clone()));
    for l in outbound {
        tokio::spawn(conn::serve(l, Direction::Egress, shared.clone()));
    }
    for l in dns_tcp {
        tokio::spawn(dns::serve_tcp(l, dns_ctx.clone(), shared.clone()));
    }
    for (s, transparent) in dns_udp {
        tokio::spawn(dns::serve_udp(
            s,
            transparent,
            dns_ctx.clone(),
            shared.clone(),
        ));
    }
    tracing::info!(
        pod = %config.identity,
        inbound = %config.inbound,
        outbound = ?config.outbound,
        dns = ?config.dns,
        admin = %config.admin,
        resolvers = ?resolvers,
        dns_original_destination = transparent,
        audit = config.audit,
        "sidecar listening; refusing all connections until the first policy arrives"
    );
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_from_the_listener_and_their_original_destination() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = bind_tcp(addr.parse().expect("addr"), "test", false).await else {
                // No IPv6 on this host's loopback: said, and in CI a failure (CI machines
                // have it; a skip there would hide the IPv6 half).
                assert!(addr.starts_with('['), "cannot bind {addr}");
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot bind {addr}: the IPv6 half must run in CI"
                );
                eprintln!("skipping {addr}: no IPv6 on this host's loopback");
                continue;
            };
            let at = listener.local_addr().expect("local");
            let client = crate::exempt::connect(at).await.expect("connect");
            let (accepted, peer) = listener.accept().await.expect("accept");
            assert!(accepted.nodelay().expect("nodelay"), "{addr}");
            // Not redirected: the original destination is the listener's own address.
            assert_eq!(orig_dst::original_dst(&accepted, peer).expect("dst"), at);
            drop(client);
        }
    }
}

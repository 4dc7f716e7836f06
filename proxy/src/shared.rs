//! What every connection handler, the DNS proxy and the packet filter share: the current
//! policy and its changes, the counters, the flow log, the learned names, and the settings
//! that apply to every flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use podwall_policy::Direction;

use crate::flow::FlowLog;
use crate::in_flight::InFlight;
use crate::kernel_flows::KernelFlows;
use crate::metrics::{DirectionMetrics, Metrics};
use crate::names::Names;
use crate::pod_policy::{PodPolicy, PolicyReceiver};

/// What every connection handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Policy changes, for connections that must be re-judged when one comes.
    pub policies: PolicyReceiver,
    /// The current policy, as a new connection reads it: without a lock.
    pub current: Arc<arc_swap::ArcSwapOption<PodPolicy>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Flow events.
    pub flows: FlowLog,
    /// How long to wait for the destination to accept.
    pub connect_timeout: Duration,
    /// Keep established connections that a policy change denies (default: reset them).
    pub keep_revoked: bool,
    /// The sidecar's own listening ports: a connection whose original destination is one of
    /// them on this host would loop.
    pub own_ports: Vec<u16>,
    /// What the pod's DNS answers taught (toFQDNs).
    pub names: Arc<Names>,
    /// Check the TLS SNI or HTTP Host of connections that only a toFQDNs rule allows.
    pub check_server_name: bool,
    /// Let such connections pass when they carry no name to check (the server speaks first,
    /// or the protocol is neither TLS nor HTTP).
    pub allow_unnamed_fqdn: bool,
    /// See `Config::node_ports_only_at_listed_addresses`.
    pub node_ports_only_at_listed_addresses: bool,
    /// Where the next service connection starts looking for a backend.
    pub round_robin: AtomicUsize,
    /// The TCP connections the kernel carries (the kernel path).
    pub kernel_flows: KernelFlows,
    /// The packet filter's batches being judged, which a policy change waits out.
    pub in_flight: InFlight,
}

impl Shared {
    /// The current policy (none before the first).
    pub(crate) fn policy(&self) -> Option<Arc<PodPolicy>> {
        self.current.load_full()
    }

    /// The counters of one direction.
    pub(crate) fn metrics(&self, direction: Direction) -> &DirectionMetrics {
        match direction {
            Direction::Ingress => &self.metrics.inbound,
            Direction::Egress => &self.metrics.outbound,
        }
    }
}

impl Shared {
    /// A destination on this host at one of the sidecar's own ports (what a connection or
    /// datagram sent to a listener directly, not redirected, has as its original destination):
    /// forwarding would loop.
    pub(crate) fn loops_back(&self, dst: SocketAddr) -> bool {
        self.own_ports.contains(&dst.port()) && (dst.ip().is_loopback() || is_local(dst))
    }
}

fn is_local(dst: SocketAddr) -> bool {
    // Binding succeeds only for an address of this network namespace.
    std::net::TcpListener::bind(SocketAddr::new(dst.ip(), 0)).is_ok()
}

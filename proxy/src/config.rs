//! How the sidecar is set up.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::pod_policy::Identity;

/// Everything `podwall proxy run` needs besides the policy source.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The pod this sidecar belongs to.
    pub identity: Identity,
    /// Where redirected inbound connections arrive (`[::]:15006` or `0.0.0.0:15006`).
    pub inbound: SocketAddr,
    /// Where redirected outbound connections arrive (`127.0.0.1:15001`; `[::1]` too when the
    /// namespace has IPv6).
    pub outbound: Vec<SocketAddr>,
    /// Where redirected DNS arrives, UDP and TCP (`127.0.0.1:15053`).
    pub dns: Vec<SocketAddr>,
    /// The admin server.
    pub admin: SocketAddr,
    /// The pod's resolver, besides the nameservers of /etc/resolv.conf: trusted for the
    /// toFQDNs names, and assumed when a query's original destination is unknown.
    pub dns_upstream: Option<IpAddr>,
    /// The pod's resolv.conf and hosts file as the sidecar read them when it started (or as
    /// `proxy init` saved them): their nameservers are trusted for the toFQDNs names.
    pub names: crate::lookup::SystemNames,
    /// Read DNS datagrams' original destination (TPROXY capture; needs NET_ADMIN). Without it,
    /// or when the capability is missing, queries are taken to be for the configured resolver.
    pub dns_transparent: bool,
    /// Limits of the name cache for toFQDNs rules.
    pub fqdn_cache: podwall_fqdn::cache::CacheConfig,
    /// Check the TLS SNI or HTTP Host of connections that only a toFQDNs rule allows against
    /// the rule's names.
    pub check_server_name: bool,
    /// Let connections that only a toFQDNs rule allows pass when they carry no name to check
    /// (the server speaks first, or neither TLS nor HTTP).
    pub allow_unnamed_fqdn: bool,
    /// Trust that NodePorts are answered only at the nodes' addresses the cluster's objects
    /// list (kube-proxy's `--nodeport-addresses`): a connection elsewhere to a NodePort's number
    /// is then judged as the plain address it is. Off, such a connection must also be allowed
    /// to every backend of the Service (see `admit::node_port_doubt`).
    pub node_ports_only_at_listed_addresses: bool,
    /// How long to wait for a destination to accept.
    pub connect_timeout: Duration,
    /// Pass would-be denials, logged as AUDIT.
    pub audit: bool,
    /// Keep established connections that a policy change no longer allows.
    pub keep_revoked: bool,
    /// The NFQUEUE queue whose new UDP/SCTP flows the sidecar judges (`None`: no filter).
    pub packet_queue: Option<u16>,
    /// How many queues from `packet_queue` on, each judged on a thread of its own.
    pub packet_queues: u16,
    /// The init rules put TCP on the kernel path: hear of conntrack's changes from the start
    /// (the kernel gives events only for entries created while someone listens).
    pub kernel_path: bool,
}

impl ProxyConfig {
    /// The defaults for a pod.
    pub fn new(identity: Identity) -> Self {
        ProxyConfig {
            identity,
            inbound: ([0, 0, 0, 0], 15006).into(),
            outbound: vec![([127, 0, 0, 1], 15001).into()],
            dns: vec![([127, 0, 0, 1], 15053).into()],
            admin: ([0, 0, 0, 0], 15020).into(),
            dns_upstream: None,
            names: Default::default(),
            dns_transparent: true,
            fqdn_cache: podwall_fqdn::cache::CacheConfig::default(),
            check_server_name: true,
            allow_unnamed_fqdn: false,
            node_ports_only_at_listed_addresses: false,
            connect_timeout: Duration::from_secs(5),
            audit: false,
            keep_revoked: false,
            kernel_path: false,
            packet_queue: Some(crate::init::DEFAULT_PACKET_QUEUE),
            packet_queues: 1,
        }
    }
}

//! `podwall proxy init`: the iptables rules that hand the pod's traffic to the sidecar, and
//! keep the app from walking around it.
//!
//! The app is untrusted (ARCHITECTURE.md, threat model): root with the runtime's default
//! capabilities except `NET_RAW`, which injection drops. The sidecar is exempt by the mark on
//! its sockets ([`crate::exempt`]), which needs `NET_ADMIN` or `NET_RAW` to set; never by uid or
//! group, which a root app can take.
//!
//! In the `nat` table:
//!
//! - `PODWALL_INBOUND` (from `PREROUTING` for TCP): every TCP connection into the pod goes to
//!   the inbound listener, except the admin port (kubelet probes it) and excluded ports.
//! - `PODWALL_OUTPUT` (from `OUTPUT`): the sidecar's own (marked) connections and loopback are
//!   left alone, so nothing loops and a pod still talks to itself directly; then excluded CIDRs
//!   and ports; then DNS over TCP (53) to the DNS port; then every other TCP connection to the
//!   outbound listener.
//!
//! DNS over UDP needs its original destination (the resolver the pod asked), which a `REDIRECT`ed
//! datagram loses. So, by default (`DnsCapture::Tproxy`), in the `mangle` table:
//!
//! - `PODWALL_DNS_OUTPUT` (from `OUTPUT`): UDP to port 53, not the sidecar's, not on loopback,
//!   not to excluded CIDRs, gets the mark `0x539`;
//! - a routing rule sends marked packets to table 133, where everything is local, so they come
//!   back in through `lo`;
//! - `PODWALL_DNS_PREROUTING` (from `PREROUTING`) hands them to the DNS port with `TPROXY`,
//!   addresses untouched: the sidecar reads the original destination from the datagram and
//!   answers from it. TPROXY delivers only to `IP_TRANSPARENT` sockets, which the app cannot
//!   open.
//!
//! `DnsCapture::Redirect` redirects UDP 53 in `nat` like TCP instead (the sidecar then assumes
//! the pod asked its configured resolver).
//!
//! Everything else is judged or dropped, in the `filter` table:
//!
//! - `PODWALL_FILTER_OUT` (from `OUTPUT`) and `PODWALL_FILTER_IN` (from `INPUT`), for every
//!   protocol but TCP (which the nat rules hand to the proxy): the sidecar's own packets,
//!   loopback, excluded CIDRs and packets of accepted flows pass; the first packet of each new
//!   flow (UDP, SCTP, ICMP, and every other IP protocol) goes to NFQUEUE queue `packet_queue`,
//!   where the sidecar accepts or drops it; IPv6 neighbour discovery passes; anything else
//!   (conntrack `INVALID`, untracked) is dropped. Without a sidecar bound to the queue the
//!   kernel drops what is queued: fail closed. With `packet_queue: None`, UDP, SCTP and ICMP
//!   pass unjudged (as configured) and every other protocol is dropped.
//! - `PODWALL_GUARD` (from `INPUT`, new TCP connections and UDP to the DNS port): nothing
//!   reaches a sidecar listener unless it was redirected there, and nothing redirected reaches
//!   a socket without the sidecar's mark, so an app that binds a sidecar port while the sidecar
//!   is down receives nothing (`-m socket --restore-skmark`).
//! - `PODWALL_SPOOF` (from `INPUT`, loopback packets whose source is no address of the pod):
//!   dropped when the socket they would reach is the sidecar's (a forged answer to its DNS
//!   query, say). The sidecar's DNS replies to the app leave from the resolver's address and
//!   reach the app's sockets, which are not marked.
//!
//! IPv6 gets the same rules (`ip6tables`) when the pod has a global IPv6 address, and a
//! lockdown (everything but loopback dropped) when it has IPv6 without one: a link-local
//! address is enough to reach the node.
//!
//! The rules go in with one `iptables-restore --noflush` per family, so they change atomically;
//! declaring the chains flushes them, and the jumps are only added when missing, so running
//! `init` again leaves exactly one set. `init` also reserves the sidecar's ports in the pod's
//! namespace (`net.ipv4.ip_local_reserved_ports`), so that no outgoing connection takes one
//! as its local port before the sidecar binds it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

/// The table the redirects live in.
const TABLE: &str = "nat";
/// The table the DNS marks and TPROXY live in.
const MANGLE: &str = "mangle";
/// Chain for connections into the pod.
pub const INBOUND_CHAIN: &str = "PODWALL_INBOUND";
/// Chain for connections out of the pod.
pub const OUTPUT_CHAIN: &str = "PODWALL_OUTPUT";
/// Chain marking the pod's DNS datagrams.
pub const DNS_OUTPUT_CHAIN: &str = "PODWALL_DNS_OUTPUT";
/// Chain handing marked DNS datagrams to the sidecar.
pub const DNS_PREROUTING_CHAIN: &str = "PODWALL_DNS_PREROUTING";
/// Chain judging new non-TCP flows out of the pod.
pub const FILTER_OUT_CHAIN: &str = "PODWALL_FILTER_OUT";
/// Chain judging new non-TCP flows into the pod.
pub const FILTER_IN_CHAIN: &str = "PODWALL_FILTER_IN";
/// Chain keeping the sidecar's listeners to what was redirected to them.
pub const GUARD_CHAIN: &str = "PODWALL_GUARD";
/// Chain dropping forged loopback packets bound for the sidecar's sockets.
pub const SPOOF_CHAIN: &str = "PODWALL_SPOOF";
/// Chain checking what leaves the pod on an interface (not loopback), after routing.
pub const EGRESS_CHAIN: &str = "PODWALL_EGRESS";
/// Chain dropping loopback packets the app sends with a source that is no address of the pod.
pub const FORGED_CHAIN: &str = "PODWALL_FORGED";
/// Chain sending the first packet of each new outbound TCP connection to the judge (the
/// kernel path).
pub const TCP_OUT_CHAIN: &str = "PODWALL_TCP_OUT";
/// Chain sending the judge a SYN that conntrack files under a kernel-carried connection it
/// already tracks, not as NEW: that connection's SYN sent again after an answer went by (let
/// through), or a new connection on a 4-tuple reset moments ago (dropped until conntrack
/// forgets the old entry) (the kernel path).
pub const STALE_SYN_CHAIN: &str = "PODWALL_STALE_SYN";
/// Chain handing the proxy an inbound SYN that conntrack files under an entry it holds (not a
/// kernel-carried one's) without calling it NEW: the 4-tuple of a connection a reset ended
/// moments ago, such as one the sidecar refused.
pub const REOPENED_IN_CHAIN: &str = "PODWALL_REOPENED_IN";
/// An earlier version's chain (in `raw`) setting what conntrack announced of each new TCP
/// connection on the kernel path; taken away where found.
pub const TRACK_CHAIN: &str = "PODWALL_TRACK";
/// The table of the packet filter's chains.
const FILTER: &str = "filter";
/// The table conntrack's templates are set in (before a connection is tracked): only an
/// earlier version's chain is there.
const RAW: &str = "raw";
/// Every chain of ours, by table (what `remove` takes away).
const CHAINS: [(&str, &[&str]); 4] = [
    // nat's PODWALL_INBOUND is an older version's (inbound was a REDIRECT there).
    (TABLE, &[INBOUND_CHAIN, OUTPUT_CHAIN]),
    (MANGLE, MANGLE_CHAINS),
    (FILTER, FILTER_CHAINS),
    (RAW, &[TRACK_CHAIN]),
];
/// Our chains in `mangle`.
const MANGLE_CHAINS: &[&str] = &[
    INBOUND_CHAIN,
    DNS_OUTPUT_CHAIN,
    DNS_PREROUTING_CHAIN,
    EGRESS_CHAIN,
    TCP_OUT_CHAIN,
    STALE_SYN_CHAIN,
    REOPENED_IN_CHAIN,
];
/// Our chains in `filter`.
const FILTER_CHAINS: &[&str] = &[
    FILTER_OUT_CHAIN,
    FILTER_IN_CHAIN,
    GUARD_CHAIN,
    SPOOF_CHAIN,
    FORGED_CHAIN,
];
/// The mark on captured DNS datagrams.
pub const DNS_MARK: u32 = 0x539;
/// The routing table that makes marked datagrams local.
pub const DNS_TABLE: u32 = 133;
/// The judge's verdicts on a new TCP connection (the kernel path), as the packet mark it sets
/// before the packet walks the chain again: the kernel carries it (also the connection's mark
/// from then on). Whole values (compared with the full mask), which no app can set: marking a
/// socket takes NET_ADMIN or NET_RAW, which the app does not have.
pub const KERNEL_MARK: u32 = 0x7077_0001;
/// The proxy takes it (and resets it, when it is refused).
pub const PROXY_MARK: u32 = 0x7077_0002;
/// Set by the rules, not the judge: a SYN on a connection the judge already gave the kernel
/// (conntrack still calls it NEW: no answer yet), which tells the judge it may be that SYN sent
/// again.
pub const SENT_AGAIN_MARK: u32 = 0x7077_0003;
/// Set by the rules: a SYN that conntrack files under a kernel-carried connection's entry
/// without calling it NEW. The judge lets through only that connection's SYN sent again.
pub const REOPENED_MARK: u32 = 0x7077_0004;
/// The mark on an inbound TCP segment that conntrack calls new without a SYN, on the kernel
/// path: the filter table resets its sender (`GUARD_CHAIN`).
pub const STRAY_MARK: u32 = 0x7077_0005;
/// IPv6 neighbour discovery a pod needs (router solicitation, neighbour solicitation and
/// advertisement): conntrack does not track it. Router advertisements and redirects are
/// dropped: they would let a neighbour reroute the pod's allowed flows.
const NEIGHBOUR_DISCOVERY: [u8; 3] = [133, 135, 136];

/// How DNS over UDP reaches the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsCapture {
    /// TPROXY: the original destination is kept (the default).
    Tproxy,
    /// nat REDIRECT: the original destination is lost.
    Redirect,
}
/// `multiport` takes at most 15 ports per rule.
/// Which TCP connections the proxy relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Path {
    /// Every one: the nat and TPROXY rules send each new connection to the proxy's listeners,
    /// which judge it.
    Proxy,
    /// Only those that need it: the first packet of each new connection goes to the judge
    /// (the packet filter's queue), which refuses it (reset), lets the kernel carry it, or
    /// hands it to the proxy (HTTP rules, names to check, a Service only partly allowed).
    Kernel,
}

const MULTIPORT_MAX: usize = 15;

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    fn tool(self, suffix: &str) -> String {
        match self {
            Family::V4 => format!("iptables{suffix}"),
            Family::V6 => format!("ip6tables{suffix}"),
        }
    }

    fn matches(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// What the rules of one family do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Hand the traffic to the sidecar and judge the rest (the family has a routable address).
    Capture,
    /// Drop everything but loopback (IPv6 without a global address).
    Lockdown,
}

/// What to capture and what to leave alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    /// The mark on the sidecar's sockets ([`crate::exempt`]): its packets are never captured.
    pub proxy_mark: u32,
    /// Where inbound TCP goes.
    pub inbound_port: u16,
    /// Where outbound TCP goes.
    pub outbound_port: u16,
    /// Where DNS (UDP and TCP 53) goes.
    pub dns_port: u16,
    /// The admin port (probes, metrics): never captured inbound.
    pub admin_port: u16,
    /// Whether DNS is captured at all.
    pub capture_dns: bool,
    /// How DNS over UDP is captured.
    pub dns_capture: DnsCapture,
    /// Inbound ports left alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound TCP ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (e.g. the control plane).
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// The NFQUEUE queue new non-TCP flows go to; `None`: UDP, SCTP and ICMP pass unjudged
    /// (not enforced), other protocols are dropped.
    pub packet_queue: Option<u16>,
    /// How many queues from `packet_queue` on the sidecar judges (one per judge thread).
    pub packet_queues: u16,
    /// Which TCP connections go through the proxy (the kernel path needs `packet_queue`).
    pub l4_path: L4Path,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            proxy_mark: crate::exempt::DEFAULT_MARK,
            inbound_port: 15006,
            outbound_port: 15001,
            dns_port: 15053,
            admin_port: 15020,
            capture_dns: true,
            dns_capture: DnsCapture::Tproxy,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            packet_queue: Some(DEFAULT_PACKET_QUEUE),
            packet_queues: 1,
            l4_path: L4Path::Proxy,
        }
    }
}

/// The NFQUEUE queue the sidecar reads by default.
pub const DEFAULT_PACKET_QUEUE: u16 = 1337;

/// Setting up or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A tool could not be started (not installed?).
    #[error("cannot run {tool}: {source} (is iptables installed?)")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The tool and arguments.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

fn ports_rules(out: &mut Vec<String>, chain: &str, proto: &str, ports: &[u16], target: &str) {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    for chunk in ports.chunks(MULTIPORT_MAX) {
        let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
        if chunk.len() == 1 {
            out.push(format!(
                "-A {chain} -p {proto} --dport {} -j {target}",
                list[0]
            ));
        } else {
            out.push(format!(
                "-A {chain} -p {proto} -m multiport --dports {} -j {target}",
                list.join(",")
            ));
        }
    }
}

impl InitConfig {
    /// `-m mark --mark M`: the sidecar's own packets.
    fn own(&self) -> String {
        format!("-m mark --mark {:#x}", self.proxy_mark)
    }

    /// `-m mark ! --mark M`: not the sidecar's.
    fn not_own(&self) -> String {
        format!("-m mark ! --mark {:#x}", self.proxy_mark)
    }

    /// `-A chain -o lo ... -j RETURN` for traffic that stays in the pod. Not `-o lo` alone: a
    /// socket bound to `lo` (`SO_BINDTODEVICE` needs no capability) routes a remote address
    /// out of `lo` too, and such a packet's conntrack entry would then carry no redirect.
    fn stays_local(chain: &str) -> String {
        format!("-A {chain} -o lo -m addrtype --dst-type LOCAL -j RETURN")
    }

    /// `-A chain -d net -j RETURN` for each excluded CIDR of the family.
    fn excluded_cidrs(&self, r: &mut Vec<String>, family: Family, chain: &str) {
        for net in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|n| family.matches(n))
        {
            r.push(format!("-A {chain} -d {} -j RETURN", net.trunc()));
        }
    }

    /// The queue new TCP connections are judged in, on the kernel path.
    pub fn tcp_queue(&self) -> Option<u16> {
        match self.l4_path {
            L4Path::Kernel => self.packet_queue,
            L4Path::Proxy => None,
        }
    }

    /// The rules that act on the judge's verdict on a new TCP connection, then queue it if it
    /// has none yet (the judge marks it and has it walk the chain again): kernel-carried ones
    /// get the connection mark and pass, those for the proxy go to `proxy` (none: they pass on
    /// to the nat table's redirect).
    fn verdict_rules(&self, r: &mut Vec<String>, chain: &str, queue: u16, proxy: Option<&str>) {
        r.push(format!(
            "-A {chain} -m mark --mark {KERNEL_MARK:#x} -j CONNMARK --set-xmark {KERNEL_MARK:#x}/0xffffffff"
        ));
        r.push(format!(
            "-A {chain} -m mark --mark {KERNEL_MARK:#x} -j RETURN"
        ));
        // (TPROXY takes only a rule that names the protocol.)
        r.push(format!(
            "-A {chain} -p tcp -m mark --mark {PROXY_MARK:#x} -j {}",
            proxy.unwrap_or("RETURN")
        ));
        r.push(format!(
            "-A {chain} -m connmark --mark {KERNEL_MARK:#x} -j MARK --set-xmark {SENT_AGAIN_MARK:#x}/0xffffffff"
        ));
        r.push(format!(
            "-A {chain} -p tcp --syn -j {}",
            self.queue_target(queue)
        ));
    }

    /// The NFQUEUE target for the judge's queues: one, or a range the kernel picks from by the
    /// CPU the packet is on (balancing by addresses would put every connection to one peer in
    /// one queue). No `--queue-bypass`: while nobody reads a queue, what goes to it waits or
    /// is dropped.
    fn queue_target(&self, first: u16) -> String {
        match self.packet_queues {
            0 | 1 => format!("NFQUEUE --queue-num {first}"),
            n => format!(
                "NFQUEUE --queue-balance {first}:{} --queue-cpu-fanout",
                first.saturating_add(n - 1)
            ),
        }
    }

    /// The kernel path's outbound chain (mangle, from `OUTPUT` for new TCP connections):
    /// what the nat chain leaves alone is left alone here too; every other new connection is
    /// judged before nat decides whether to redirect it.
    pub fn tcp_out_rules(&self, family: Family) -> Vec<String> {
        let Some(queue) = self.tcp_queue() else {
            return Vec::new();
        };
        let mut r = vec![
            format!("-A {TCP_OUT_CHAIN} {} -j RETURN", self.own()),
            Self::stays_local(TCP_OUT_CHAIN),
        ];
        self.excluded_cidrs(&mut r, family, TCP_OUT_CHAIN);
        ports_rules(
            &mut r,
            TCP_OUT_CHAIN,
            "tcp",
            &self.exclude_outbound_ports,
            "RETURN",
        );
        if self.capture_dns {
            // DNS over TCP is the DNS proxy's, redirected in nat.
            r.push(format!("-A {TCP_OUT_CHAIN} -p tcp --dport 53 -j RETURN"));
        }
        self.verdict_rules(&mut r, TCP_OUT_CHAIN, queue, None);
        r
    }

    /// The kernel path's rules for SYNs on a kernel-carried connection's entry that conntrack
    /// does not call NEW: marked as such and queued; the judge lets the kernel carry on with
    /// that connection's own SYN sent again (its mark, then a walk of the chain again), and
    /// drops anything else.
    pub fn stale_syn_rules(&self) -> Vec<String> {
        let Some(queue) = self.tcp_queue() else {
            return Vec::new();
        };
        vec![
            format!("-A {STALE_SYN_CHAIN} -m mark --mark {KERNEL_MARK:#x} -j RETURN"),
            // An established connection's entry (reset, and its 4-tuple reused): whatever the
            // SYN's sequence number, which a peer chooses, it is a new connection.
            format!("-A {STALE_SYN_CHAIN} -m conntrack --ctstatus ASSURED -j DROP"),
            format!("-A {STALE_SYN_CHAIN} -j MARK --set-xmark {REOPENED_MARK:#x}/0xffffffff"),
            format!("-A {STALE_SYN_CHAIN} -j {}", self.queue_target(queue)),
        ]
    }

    /// The sidecar's ports, sorted: where redirected traffic lands, and what
    /// `ip_local_reserved_ports` keeps from outgoing connections.
    pub fn listener_ports(&self) -> Vec<u16> {
        let mut ports = vec![
            self.inbound_port,
            self.outbound_port,
            self.dns_port,
            self.admin_port,
        ];
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The inbound chain's rules (mangle, from `PREROUTING` for new TCP connections): every
    /// connection into the pod goes to the sidecar by TPROXY, which delivers only to
    /// `IP_TRANSPARENT` sockets (an app cannot open one without NET_ADMIN or NET_RAW), so an
    /// app that binds a sidecar port while the sidecar is down receives nothing; the admin
    /// port to the sidecar's admin server the same way; excluded ports as they are. Loopback
    /// (the pod talking to itself, and the sidecar's connections to the app) is left alone.
    pub fn inbound_rules(&self) -> Vec<String> {
        let mut r = vec![format!("-A {INBOUND_CHAIN} -i lo -j RETURN")];
        if self.tcp_queue().is_some() {
            // On the kernel path, a segment conntrack calls new without a SYN (one of a
            // connection whose entry is gone: one a policy change revoked) is reset in the
            // filter table (`GUARD_CHAIN`), whatever its port: not sent by TPROXY, which would
            // hand it to an established socket of the same addresses first (an app with
            // NET_RAW can make its socket one TPROXY delivers to, on the admin port too), nor
            // let through to an excluded port (an app may connect out from one, and have the
            // peer's next segment reach it once the entry is gone).
            r.push(format!(
                "-A {INBOUND_CHAIN} -p tcp ! --syn -j MARK --set-xmark {STRAY_MARK:#x}/0xffffffff"
            ));
            r.push(format!(
                "-A {INBOUND_CHAIN} -m mark --mark {STRAY_MARK:#x} -j RETURN"
            ));
        }
        r.push(format!(
            "-A {INBOUND_CHAIN} -p tcp --dport {port} -j TPROXY --on-port {port}",
            port = self.admin_port
        ));
        ports_rules(
            &mut r,
            INBOUND_CHAIN,
            "tcp",
            &self.exclude_inbound_ports,
            "RETURN",
        );
        let to_proxy = format!("TPROXY --on-port {}", self.inbound_port);
        match self.tcp_queue() {
            // Every SYN is queued, and comes back marked for one of the rules before.
            Some(queue) => self.verdict_rules(&mut r, INBOUND_CHAIN, queue, Some(&to_proxy)),
            None => r.push(format!("-A {INBOUND_CHAIN} -p tcp -j {to_proxy}")),
        }
        r
    }

    /// The chain for an inbound SYN on an entry conntrack reopened (see `mangle_jumps`), on
    /// either path: to the proxy by TPROXY, as the proxy path takes every new connection (the
    /// proxy judges it; the judge of the kernel path would have to drop it, as a connection
    /// the kernel carried on the old entry's state might not survive); loopback, the admin
    /// port and excluded ports as for a new connection.
    pub fn reopened_in_rules(&self) -> Vec<String> {
        let mut r = vec![
            format!("-A {REOPENED_IN_CHAIN} -i lo -j RETURN"),
            format!(
                "-A {REOPENED_IN_CHAIN} -p tcp --dport {port} -j TPROXY --on-port {port}",
                port = self.admin_port
            ),
        ];
        ports_rules(
            &mut r,
            REOPENED_IN_CHAIN,
            "tcp",
            &self.exclude_inbound_ports,
            "RETURN",
        );
        r.push(format!(
            "-A {REOPENED_IN_CHAIN} -p tcp -j TPROXY --on-port {}",
            self.inbound_port
        ));
        r
    }

    /// The rules of the nat chain (outbound) for one family, in `iptables-restore` syntax.
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        r.push(format!("-A {OUTPUT_CHAIN} {} -j RETURN", self.own()));
        r.push(Self::stays_local(OUTPUT_CHAIN));
        self.excluded_cidrs(&mut r, family, OUTPUT_CHAIN);
        ports_rules(
            &mut r,
            OUTPUT_CHAIN,
            "tcp",
            &self.exclude_outbound_ports,
            "RETURN",
        );
        if self.capture_dns {
            let protos: &[&str] = match self.dns_capture {
                DnsCapture::Redirect => &["udp", "tcp"],
                DnsCapture::Tproxy => &["tcp"],
            };
            for proto in protos {
                r.push(format!(
                    "-A {OUTPUT_CHAIN} -p {proto} --dport 53 -j REDIRECT --to-ports {}",
                    self.dns_port
                ));
            }
        }
        if self.tcp_queue().is_some() {
            // Judged in mangle: the kernel carries it.
            r.push(format!(
                "-A {OUTPUT_CHAIN} -m mark --mark {KERNEL_MARK:#x} -j RETURN"
            ));
        }
        r.push(format!(
            "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        r
    }

    /// The jumps from nat's built-in chains into ours.
    fn jumps() -> [(&'static str, String); 1] {
        [("OUTPUT", format!("-j {OUTPUT_CHAIN}"))]
    }

    /// Whether the mangle rules (TPROXY for DNS) are wanted.
    fn tproxy(&self) -> bool {
        self.capture_dns && self.dns_capture == DnsCapture::Tproxy
    }

    /// The mangle chains' rules for one family (empty without TPROXY capture).
    pub fn dns_rules(&self, family: Family) -> Vec<String> {
        if !self.tproxy() {
            return Vec::new();
        }
        let mut r = vec![
            // A query the sidecar sends upstream can reuse the 5-tuple (and so the conntrack
            // entry) of an app query captured earlier: both take their source port from the
            // same ephemeral range. The flow is then the sidecar's, and its answer must come
            // in. Only the original direction: the sidecar's replies to the app travel on
            // the app's entry the other way, and leave it the DNS proxy's.
            format!(
                "-A {DNS_OUTPUT_CHAIN} {} -p udp --dport 53 -m conntrack --ctdir ORIGINAL -m connmark --mark {DNS_MARK:#x} -j CONNMARK --set-xmark 0x0/0xffffffff",
                self.own()
            ),
            format!("-A {DNS_OUTPUT_CHAIN} {} -j RETURN", self.own()),
            Self::stays_local(DNS_OUTPUT_CHAIN),
        ];
        self.excluded_cidrs(&mut r, family, DNS_OUTPUT_CHAIN);
        r.push(format!(
            "-A {DNS_OUTPUT_CHAIN} -p udp --dport 53 -j MARK --set-xmark {DNS_MARK:#x}/0xffffffff"
        ));
        // The flow is the DNS proxy's: nothing from outside the pod may answer on it (the
        // app's datagram went to the sidecar, but its conntrack entry would let the address
        // it named send back in).
        r.push(format!(
            "-A {DNS_OUTPUT_CHAIN} -p udp --dport 53 -j CONNMARK --set-xmark {DNS_MARK:#x}/0xffffffff"
        ));
        let on_ip = match family {
            Family::V4 => "127.0.0.1",
            Family::V6 => "::1",
        };
        r.push(format!(
            "-A {DNS_PREROUTING_CHAIN} -p udp -m mark --mark {DNS_MARK:#x} -j TPROXY --on-port {} --on-ip {on_ip} --tproxy-mark {DNS_MARK:#x}/0xffffffff",
            self.dns_port
        ));
        r
    }

    /// The filter chains' rules for one family: the packet filter, the listener guard and the
    /// loopback spoofing check.
    pub fn filter_rules(&self, family: Family) -> Vec<String> {
        let (icmp, nd) = match family {
            Family::V4 => ("icmp", None),
            Family::V6 => ("ipv6-icmp", Some(NEIGHBOUR_DISCOVERY)),
        };
        let mut r = vec![
            format!("-A {FILTER_OUT_CHAIN} {} -j RETURN", self.own()),
            Self::stays_local(FILTER_OUT_CHAIN),
        ];
        self.excluded_cidrs(&mut r, family, FILTER_OUT_CHAIN);
        // Captured DNS is on its way to the DNS proxy. (The filter's `-o` still names the
        // interface routed to before the mark or the redirect sent it to loopback.) A
        // redirected query's header already names the proxy's port here: conntrack holds the
        // port it was sent to, and the one our redirect gave it.
        match (self.capture_dns, self.dns_capture) {
            (true, DnsCapture::Tproxy) => r.push(format!(
                "-A {FILTER_OUT_CHAIN} -m mark --mark {DNS_MARK:#x} -j RETURN"
            )),
            (true, DnsCapture::Redirect) => r.push(format!(
                "-A {FILTER_OUT_CHAIN} -p udp -m conntrack --ctstate DNAT --ctorigdstport 53 --ctreplsrcport {} -j RETURN",
                self.dns_port
            )),
            (false, _) => {}
        }
        r.push(format!("-A {FILTER_IN_CHAIN} -i lo -j RETURN"));
        if self.tproxy() {
            r.push(format!(
                "-A {FILTER_IN_CHAIN} -m connmark --mark {DNS_MARK:#x} -j DROP"
            ));
        }
        // Redirects (and IPv6 router advertisements) would let a neighbour reroute the pod's
        // allowed flows to itself; conntrack calls a redirect about one RELATED.
        match family {
            Family::V4 => r.push(format!(
                "-A {FILTER_IN_CHAIN} -p icmp --icmp-type redirect -j DROP"
            )),
            Family::V6 => {
                for t in [134, 137] {
                    r.push(format!(
                        "-A {FILTER_IN_CHAIN} -p ipv6-icmp --icmpv6-type {t} -j DROP"
                    ));
                }
            }
        }
        for chain in [FILTER_OUT_CHAIN, FILTER_IN_CHAIN] {
            r.push(format!(
                "-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
            ));
            for t in nd.iter().flatten() {
                r.push(format!(
                    "-A {chain} -p ipv6-icmp --icmpv6-type {t} -j RETURN"
                ));
            }
            if chain == FILTER_OUT_CHAIN {
                // Broadcast and multicast reach whoever listens on the link (every pod on a
                // node's bridge, the node itself), whom no policy names: judged as an address,
                // "anywhere but the cluster" would allow them (`admit::link_wide`). Neighbour
                // discovery has passed above; IGMP reports (the kernel's, of the groups the
                // pod joined, to receive multicast that its ingress policy judges) pass.
                match family {
                    Family::V4 => r.extend([
                        format!("-A {chain} -m addrtype --dst-type BROADCAST -j DROP"),
                        format!("-A {chain} -d 224.0.0.0/4 ! -p igmp -j DROP"),
                    ]),
                    Family::V6 => r.push(format!("-A {chain} -d ff00::/8 -j DROP")),
                }
            }
            match self.packet_queue {
                Some(queue) => r.push(format!(
                    "-A {chain} -m conntrack --ctstate NEW -j {}",
                    self.queue_target(queue)
                )),
                None => {
                    for proto in ["udp", "sctp", icmp] {
                        r.push(format!(
                            "-A {chain} -p {proto} -m conntrack --ctstate NEW -j RETURN"
                        ));
                    }
                }
            }
            r.push(format!("-A {chain} -j DROP"));
        }
        // TCP that conntrack cannot place (a segment after its connection expired) is no
        // connection the sidecar took: dropped, as it is on its way out (`EGRESS_CHAIN`).
        r.push(format!(
            "-A {GUARD_CHAIN} -p tcp -m conntrack --ctstate INVALID -j DROP"
        ));
        // A SYN-ACK from the side that opened the connection is TCP's simultaneous open. The
        // egress chain keeps an app's SYN from leaving on an entry a peer opened (see
        // `egress_rules`), but conntrack has seen that SYN go by, and would take the peer's
        // SYN-ACK as part of the connection: an app that guessed its own sequence number for
        // the peer would be answered, and its ACK leave as a reply. (Kernel-carried entries
        // were judged.)
        r.push(format!(
            "-A {GUARD_CHAIN} -p tcp --tcp-flags SYN,ACK SYN,ACK -m conntrack --ctdir ORIGINAL -m connmark ! --mark {KERNEL_MARK:#x} -j DROP"
        ));
        if self.tcp_queue().is_some() {
            // On the kernel path, inbound TCP that conntrack calls new without a SYN: no
            // connection of the pod's any more (its entry was removed when a policy change
            // revoked it); its sender is told at once.
            // (Only what the inbound chain marked: not loopback.)
            r.push(format!(
                "-A {GUARD_CHAIN} -p tcp -m mark --mark {STRAY_MARK:#x} -j REJECT --reject-with tcp-reset"
            ));
        }
        // Only what the rules redirected reaches a listener. (Redirected outbound and DNS
        // traffic is the app's own: an app that took those ports while the sidecar is down
        // receives only itself. Inbound and the admin port go by TPROXY, which no app socket
        // can receive.)
        let redirected = [self.inbound_port, self.outbound_port, self.dns_port]
            .map(|p| p.to_string())
            .join(",");
        r.push(format!(
            "-A {GUARD_CHAIN} -p tcp -m multiport --dports {redirected} -m conntrack ! --ctstate DNAT -j DROP"
        ));

        r.push(format!(
            "-A {GUARD_CHAIN} -p udp --dport {} -m conntrack ! --ctstate DNAT -j DROP",
            self.dns_port
        ));

        r.push(format!(
            "-A {SPOOF_CHAIN} -m socket --nowildcard --restore-skmark {} -j DROP",
            self.own()
        ));
        r.push(format!("-A {FORGED_CHAIN} -j DROP"));
        r
    }

    /// The jumps into the filter chains. TCP never walks the packet filter's (the proxy judges
    /// it), and only new TCP connections and UDP for the DNS port walk the guard.
    fn filter_jumps(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "INPUT",
                format!("-i lo -m addrtype ! --src-type LOCAL -j {SPOOF_CHAIN}"),
            ),
            (
                "INPUT",
                format!("-p tcp -m conntrack --ctstate INVALID,NEW -j {GUARD_CHAIN}"),
            ),
            (
                "INPUT",
                format!("-p udp -m udp --dport {} -j {GUARD_CHAIN}", self.dns_port),
            ),
            ("INPUT", format!("! -p tcp -j {FILTER_IN_CHAIN}")),
            (
                "INPUT",
                format!(
                    "! -i lo -p tcp --tcp-flags SYN,ACK SYN,ACK -m conntrack --ctdir ORIGINAL -j {GUARD_CHAIN}"
                ),
            ),
            // A packet the app sends to itself with a source that is not the pod's (IPv6
            // `IP_FREEBIND` needs no capability) would leave a conntrack entry whose reply
            // direction is the forged address, for the app to answer through unjudged.
            (
                "OUTPUT",
                format!(
                    "-o lo {} -m addrtype ! --src-type LOCAL -j {FORGED_CHAIN}",
                    self.not_own()
                ),
            ),
            ("OUTPUT", format!("! -p tcp -j {FILTER_OUT_CHAIN}")),
        ]
    }

    /// The last check on what leaves the pod on an interface, after routing (where `-o` is
    /// the real interface): the sidecar's own packets pass; a source that is no address of the
    /// pod (IPv6 `IP_FREEBIND` needs no capability) and captured DNS that did not go to the
    /// sidecar (a socket bound to an interface escapes the capture's routing) are dropped; TCP
    /// leaves only as a reply on a connection into the pod (never its SYN: a simultaneous
    /// open) or to what is excluded from the redirect, so no TCP the proxy did not open leaves
    /// the pod, whatever conntrack thinks.
    ///
    /// On the kernel path a connection the judge gave the kernel passes first, unchecked (a
    /// mark no app can set): the judge gives the kernel only connections whose pod end is an
    /// address of the pod (`tcp_route::route`), and conntrack matches each packet to the
    /// connection by its addresses, so none of its packets has another source. That spares
    /// every packet of every kernel-carried connection the rest of this chain.
    pub fn egress_rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        if self.tcp_queue().is_some() {
            r.push(format!(
                "-A {EGRESS_CHAIN} -m connmark --mark {KERNEL_MARK:#x} -j RETURN"
            ));
        }
        r.push(format!("-A {EGRESS_CHAIN} {} -j RETURN", self.own()));
        if family == Family::V6 {
            // Duplicate address detection and listener reports leave from `::`.
            for t in [135, 143] {
                r.push(format!(
                    "-A {EGRESS_CHAIN} -s ::/128 -p ipv6-icmp --icmpv6-type {t} -j RETURN"
                ));
            }
        }
        r.extend([
            format!("-A {EGRESS_CHAIN} -m addrtype ! --src-type LOCAL -j DROP"),
            format!("-A {EGRESS_CHAIN} -m mark --mark {DNS_MARK:#x} -j DROP"),
            format!("-A {EGRESS_CHAIN} ! -p tcp -j RETURN"),
        ]);
        // What is excluded is left alone, whichever way it was opened.
        self.excluded_cidrs(&mut r, family, EGRESS_CHAIN);
        ports_rules(
            &mut r,
            EGRESS_CHAIN,
            "tcp",
            &self.exclude_outbound_ports,
            "RETURN",
        );
        r.extend([
            // A SYN is never a reply but in TCP's simultaneous open: a peer's SYN that went
            // to the proxy and was dropped there unread (a TCP-MD5 or TCP-AO option the
            // listener has no key for, a full accept queue) leaves an unanswered entry whose
            // reply direction an app's own SYN would take, to open the connection with that
            // peer that nobody judged.
            format!("-A {EGRESS_CHAIN} -p tcp --syn -m conntrack --ctdir REPLY -j DROP"),
            format!("-A {EGRESS_CHAIN} -m conntrack --ctdir REPLY -j RETURN"),
            // The kernel's resets for connections whose socket is gone (it sends them unmarked).
            format!("-A {EGRESS_CHAIN} -p tcp --tcp-flags RST RST -j RETURN"),
            format!("-A {EGRESS_CHAIN} -j DROP"),
        ]);
        r
    }

    fn mangle_jumps(&self) -> Vec<(&'static str, String)> {
        let mut jumps = vec![(
            "PREROUTING",
            format!("-p tcp -m conntrack --ctstate NEW -j {INBOUND_CHAIN}"),
        )];
        // A peer's SYN that conntrack files under an entry it holds without calling it NEW
        // (the 4-tuple of a connection a reset ended moments ago, such as one the sidecar
        // refused: conntrack ignores the SYN, lets it by as ESTABLISHED, and takes up the new
        // connection from the answer) would reach the app's listener unjudged. The proxy
        // takes it. (On the kernel path, a kernel-carried entry's has its own chain, below.)
        let reopened = match self.tcp_queue() {
            Some(_) => format!(
                "-p tcp --syn -m conntrack ! --ctstate NEW -m connmark ! --mark {KERNEL_MARK:#x} -j {REOPENED_IN_CHAIN}"
            ),
            None => format!("-p tcp --syn -m conntrack ! --ctstate NEW -j {REOPENED_IN_CHAIN}"),
        };
        jumps.push(("PREROUTING", reopened));
        if self.tproxy() {
            jumps.push(("OUTPUT", format!("-p udp -j {DNS_OUTPUT_CHAIN}")));
            jumps.push(("PREROUTING", format!("-p udp -j {DNS_PREROUTING_CHAIN}")));
        }
        if self.tcp_queue().is_some() {
            jumps.push((
                "OUTPUT",
                format!("-p tcp --syn -m conntrack --ctstate NEW -j {TCP_OUT_CHAIN}"),
            ));
            // A SYN that conntrack files under a kernel-carried connection's entry without
            // calling it NEW (the 4-tuple of one a reset ended moments ago: conntrack reopens
            // the old entry, mark and all; or that connection's SYN sent again once an answer
            // went by) would pass unjudged: it goes to the judge too, both ways, which lets
            // through only the second kind. (A new connection on a reopened entry would run on
            // the old connection's window tracking, and its packets can be found INVALID.)
            let stale = format!(
                "-p tcp --syn -m conntrack ! --ctstate NEW -m connmark --mark {KERNEL_MARK:#x} -j {STALE_SYN_CHAIN}"
            );
            jumps.push(("OUTPUT", stale.clone()));
            jumps.push(("PREROUTING", stale));
        }
        jumps.push(("POSTROUTING", format!("! -o lo -j {EGRESS_CHAIN}")));
        jumps
    }

    /// The `iptables-restore --noflush` input that installs the rules of one family, given
    /// what `iptables-save` printed for `nat`, `mangle` and `filter` (jumps already present are
    /// not added again).
    pub fn restore_input(&self, family: Family, coverage: Coverage, saved: &Saved) -> String {
        if coverage == Coverage::Lockdown {
            return lockdown_input(saved);
        }
        let mut s = format!("*{TABLE}\n:{OUTPUT_CHAIN} - [0:0]\n");
        for rule in self.chain_rules(family) {
            let _ = writeln!(s, "{rule}");
        }
        reconcile_jumps(
            &mut s,
            &saved.nat,
            &Self::jumps(),
            &[INBOUND_CHAIN, OUTPUT_CHAIN],
        );
        if saved
            .nat
            .lines()
            .any(|l| l.starts_with(&format!(":{INBOUND_CHAIN} ")))
        {
            // An older version redirected inbound here.
            let _ = writeln!(s, "-F {INBOUND_CHAIN}\n-X {INBOUND_CHAIN}");
        }
        s.push_str("COMMIT\n");
        let _ = writeln!(s, "*{MANGLE}");
        for chain in MANGLE_CHAINS {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for rule in self
            .inbound_rules()
            .into_iter()
            .chain(self.dns_rules(family))
            .chain(self.tcp_out_rules(family))
            .chain(self.stale_syn_rules())
            .chain(self.reopened_in_rules())
            .chain(self.egress_rules(family))
        {
            let _ = writeln!(s, "{rule}");
        }
        reconcile_jumps(&mut s, &saved.mangle, &self.mangle_jumps(), MANGLE_CHAINS);
        s.push_str("COMMIT\n");
        let _ = writeln!(s, "*{FILTER}");
        for chain in FILTER_CHAINS {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for rule in self.filter_rules(family) {
            let _ = writeln!(s, "{rule}");
        }
        reconcile_jumps(&mut s, &saved.filter, &self.filter_jumps(), FILTER_CHAINS);
        s.push_str("COMMIT\n");
        // An earlier version's conntrack template goes, once nothing jumps to it: every packet
        // of every connection paid for the raw table's two hooks.
        let tracked = saved
            .raw
            .lines()
            .any(|l| l.starts_with(&format!(":{TRACK_CHAIN} ")));
        if tracked {
            let _ = writeln!(s, "*{RAW}");
            reconcile_jumps(&mut s, &saved.raw, &[], &[TRACK_CHAIN]);
            let _ = writeln!(s, "-F {TRACK_CHAIN}\n-X {TRACK_CHAIN}");
            s.push_str("COMMIT\n");
        }
        s
    }

    /// The `ip` commands that route marked DNS datagrams back in (TPROXY capture only).
    pub fn route_commands(&self, family: Family) -> Vec<Vec<String>> {
        if !self.tproxy() {
            return Vec::new();
        }
        let (flag, local) = match family {
            Family::V4 => ("-4", "0.0.0.0/0"),
            Family::V6 => ("-6", "::/0"),
        };
        let table = DNS_TABLE.to_string();
        vec![
            [
                "ip", flag, "route", "replace", "local", local, "dev", "lo", "table", &table,
            ]
            .map(String::from)
            .to_vec(),
            [
                "ip",
                flag,
                "rule",
                "add",
                "fwmark",
                &format!("{DNS_MARK:#x}"),
                "lookup",
                &table,
            ]
            .map(String::from)
            .to_vec(),
        ]
    }

    /// Installs the rules for one family, idempotently.
    pub fn apply(&self, family: Family, coverage: Coverage) -> Result<(), InitError> {
        let save = |table: &str| run(&family.tool("-save"), &["-t", table], None);
        let saved = if coverage == Coverage::Lockdown {
            Saved {
                filter: save(FILTER)?,
                ..Saved::default()
            }
        } else {
            Saved {
                nat: save(TABLE)?,
                mangle: save(MANGLE)?,
                filter: save(FILTER)?,
                raw: save(RAW)?,
            }
        };
        if coverage == Coverage::Capture {
            for cmd in self.route_commands(family) {
                // `rule add` is not idempotent: skip it when the rule is there.
                if cmd[2] == "rule" && has_dns_rule(family)? {
                    continue;
                }
                let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
                run("ip", &args, None)?;
            }
        }
        run(
            &family.tool("-restore"),
            &["--noflush"],
            Some(&self.restore_input(family, coverage, &saved)),
        )?;
        Ok(())
    }
}

/// IPv6 without a global address: nothing but loopback, either way.
fn lockdown_input(saved: &Saved) -> String {
    let mut s = format!("*{FILTER}\n:{FILTER_OUT_CHAIN} - [0:0]\n:{FILTER_IN_CHAIN} - [0:0]\n");
    let _ = writeln!(s, "-A {FILTER_OUT_CHAIN} -o lo -j RETURN");
    let _ = writeln!(s, "-A {FILTER_OUT_CHAIN} -j DROP");
    let _ = writeln!(s, "-A {FILTER_IN_CHAIN} -i lo -j RETURN");
    let _ = writeln!(s, "-A {FILTER_IN_CHAIN} -j DROP");
    reconcile_jumps(
        &mut s,
        &saved.filter,
        &[
            ("INPUT", format!("-j {FILTER_IN_CHAIN}")),
            ("OUTPUT", format!("-j {FILTER_OUT_CHAIN}")),
        ],
        FILTER_CHAINS,
    );
    s.push_str("COMMIT\n");
    s
}

/// Deletes every jump into `ours` that `saved` (one table's `iptables-save`) holds and inserts
/// the wanted ones at the top of their built-in chains, in order: within one restore this is
/// atomic, leaves exactly the current set (also after an older version's rules), and puts
/// nobody else's rule in front of ours.
fn reconcile_jumps(s: &mut String, saved: &str, wanted: &[(&str, String)], ours: &[&str]) {
    for line in saved.lines().map(str::trim) {
        let into_ours = line.starts_with("-A ")
            && ours
                .iter()
                .any(|chain| line.ends_with(&format!(" -j {chain}")));
        if into_ours {
            let _ = writeln!(s, "-D{}", &line[2..]);
        }
    }
    let mut position: Vec<(&str, usize)> = Vec::new();
    for (chain, jump) in wanted {
        let n = match position.iter_mut().find(|(c, _)| c == chain) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                position.push((chain, 1));
                1
            }
        };
        let _ = writeln!(s, "-I {chain} {n} {jump}");
    }
}

/// What `iptables-save` printed for the tables the rules live in.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    /// `-t nat`.
    pub nat: String,
    /// `-t mangle`.
    pub mangle: String,
    /// `-t filter`.
    pub filter: String,
    /// `-t raw`.
    pub raw: String,
}

/// Whether the routing rule for marked DNS datagrams is installed.
fn has_dns_rule(family: Family) -> Result<bool, InitError> {
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    let rules = run("ip", &[flag, "rule", "show"], None)?;
    Ok(rules.lines().any(|l| {
        l.contains(&format!("fwmark {DNS_MARK:#x}")) && l.contains(&format!("lookup {DNS_TABLE}"))
    }))
}

/// Removes the jumps and chains for one family; nothing happens where they are absent.
pub fn remove(family: Family) -> Result<(), InitError> {
    for (table, chains) in CHAINS {
        let saved = run(&family.tool("-save"), &["-t", table], None)?;
        let mut s = format!("*{table}\n");
        for line in saved.lines().map(str::trim) {
            if line.starts_with("-A ")
                && chains
                    .iter()
                    .any(|chain| line.ends_with(&format!(" -j {chain}")))
            {
                let _ = writeln!(s, "-D{}", &line[2..]);
            }
        }
        for chain in chains {
            if saved.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
                let _ = writeln!(s, "-F {chain}\n-X {chain}");
            }
        }
        s.push_str("COMMIT\n");
        run(&family.tool("-restore"), &["--noflush"], Some(&s))?;
    }
    // The DNS capture's routing rule and table.
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    while has_dns_rule(family)? {
        run(
            "ip",
            &[
                flag,
                "rule",
                "del",
                "fwmark",
                &format!("{DNS_MARK:#x}"),
                "lookup",
                &DNS_TABLE.to_string(),
            ],
            None,
        )?;
    }
    let _ = run(
        "ip",
        &[flag, "route", "flush", "table", &DNS_TABLE.to_string()],
        None,
    );
    Ok(())
}

/// What the IPv6 rules must do in this namespace, from its IPv6 addresses (`None`: the kernel
/// has no IPv6): capture with a global address; else lock down (a link-local address is
/// enough to reach the node, and an interface without one can still send to multicast).
pub fn ipv6_coverage(addresses: Option<&[IpAddr]>) -> Option<Coverage> {
    let addresses = addresses?;
    Some(if has_ipv6(addresses) {
        Coverage::Capture
    } else {
        Coverage::Lockdown
    })
}

/// Reserves the sidecar's ports in this namespace (`net.ipv4.ip_local_reserved_ports`, which
/// covers IPv6 too), adding them to what is reserved already, so that no outgoing connection
/// takes one as its local port before the sidecar binds it. Where `/proc/sys` is read-only (a
/// container; injection sets the sysctl on the pod instead) it checks that they are reserved.
pub fn reserve_ports(ports: &[u16]) -> Result<(), ReserveError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH).map_err(|e| ReserveError::Read(e.to_string()))?;
    let reserved = parse_port_ranges(&current);
    let missing: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| !reserved.iter().any(|(lo, hi)| (lo..=hi).contains(&p)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut all: Vec<String> = vec![current.trim().to_string()];
    all.retain(|s| !s.is_empty());
    all.extend(missing.iter().map(u16::to_string));
    std::fs::write(PATH, all.join(",")).map_err(|e| ReserveError::NotReserved {
        ports: missing,
        why: e.to_string(),
    })
}

/// The sidecar's ports could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The sysctl cannot be read (no IPv4 in this kernel?).
    #[error("cannot read net.ipv4.ip_local_reserved_ports: {0}")]
    Read(String),
    /// Some ports are not reserved and the sysctl cannot be written.
    #[error(
        "ports {ports:?} are not in net.ipv4.ip_local_reserved_ports and it cannot be written ({why}): \
         an outgoing connection may take one before the sidecar binds it (set the pod sysctl, as injection does)"
    )]
    NotReserved {
        /// What is not reserved.
        ports: Vec<u16>,
        /// Why writing failed.
        why: String,
    },
}

/// `1000,2000-2010` as ranges.
fn parse_port_ranges(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((lo, hi)) => Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)),
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

/// Whether the namespace has an IPv6 address beyond loopback and link-local ones.
pub fn has_ipv6(addresses: &[IpAddr]) -> bool {
    addresses.iter().any(|a| match a {
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => false,
    })
}

/// The IPv6 addresses of this network namespace's interfaces, from `/proc/net/if_inet6`; `None`
/// when the kernel has no IPv6.
pub fn ipv6_addresses() -> Option<Vec<IpAddr>> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
            .map(|n| IpAddr::V6(std::net::Ipv6Addr::from(n)))
            .collect(),
    )
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| InitError::Spawn {
                tool: tool.to_string(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(InitError::Failed {
            tool: format!("{tool} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_capture_inbound_outbound_and_dns_but_not_the_marked_sidecar_or_loopback() {
        assert_eq!(
            InitConfig::default().inbound_rules(),
            [
                "-A PODWALL_INBOUND -i lo -j RETURN",
                "-A PODWALL_INBOUND -p tcp --dport 15020 -j TPROXY --on-port 15020",
                "-A PODWALL_INBOUND -p tcp -j TPROXY --on-port 15006",
            ]
        );
        let rules = InitConfig::default().chain_rules(Family::V4);
        assert_eq!(
            rules,
            [
                "-A PODWALL_OUTPUT -m mark --mark 0x1337 -j RETURN",
                "-A PODWALL_OUTPUT -o lo -m addrtype --dst-type LOCAL -j RETURN",
                "-A PODWALL_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A PODWALL_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        let all =
            InitConfig::default().restore_input(Family::V4, Coverage::Capture, &Saved::default());
        assert!(
            !all.contains("owner"),
            "no uid or gid exempts anything: {all}"
        );
    }

    #[test]
    fn exclusions_come_before_redirects_and_cidrs_go_to_their_family() {
        let cfg = InitConfig {
            exclude_inbound_ports: (1..=16).collect(),
            exclude_outbound_ports: vec![443, 6443, 443],
            exclude_outbound_cidrs: vec![
                "10.96.0.0/12".parse().expect("net"),
                "fd00::/8".parse().expect("net"),
            ],
            capture_dns: false,
            ..InitConfig::default()
        };
        let inbound = cfg.inbound_rules();
        assert!(inbound.contains(&"-A PODWALL_INBOUND -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j RETURN".to_string()), "{inbound:#?}");
        assert!(
            inbound.contains(&"-A PODWALL_INBOUND -p tcp --dport 16 -j RETURN".to_string()),
            "{inbound:#?}"
        );
        assert_eq!(
            inbound.last().map(String::as_str),
            Some("-A PODWALL_INBOUND -p tcp -j TPROXY --on-port 15006")
        );
        let v4 = cfg.chain_rules(Family::V4);
        assert!(v4.contains(&"-A PODWALL_OUTPUT -d 10.96.0.0/12 -j RETURN".to_string()));
        assert!(!v4.iter().any(|r| r.contains("fd00::")));
        assert!(v4.contains(
            &"-A PODWALL_OUTPUT -p tcp -m multiport --dports 443,6443 -j RETURN".to_string()
        ));
        assert!(
            !v4.iter().any(|r| r.contains("--dport 53")),
            "DNS capture off"
        );
        let v6 = cfg.chain_rules(Family::V6);
        assert!(v6.contains(&"-A PODWALL_OUTPUT -d fd00::/8 -j RETURN".to_string()));
        let last = v4.last().expect("rules");
        assert_eq!(
            last,
            "-A PODWALL_OUTPUT -p tcp -j REDIRECT --to-ports 15001"
        );
    }

    #[test]
    fn an_inbound_syn_on_an_entry_conntrack_reopened_goes_to_the_proxy_on_either_path() {
        for l4_path in [L4Path::Proxy, L4Path::Kernel] {
            let cfg = InitConfig {
                l4_path,
                exclude_inbound_ports: vec![9100],
                ..InitConfig::default()
            };
            assert_eq!(
                cfg.reopened_in_rules(),
                [
                    "-A PODWALL_REOPENED_IN -i lo -j RETURN",
                    "-A PODWALL_REOPENED_IN -p tcp --dport 15020 -j TPROXY --on-port 15020",
                    "-A PODWALL_REOPENED_IN -p tcp --dport 9100 -j RETURN",
                    "-A PODWALL_REOPENED_IN -p tcp -j TPROXY --on-port 15006",
                ],
                "{l4_path:?}"
            );
        }
    }

    #[test]
    fn no_queued_packet_passes_unjudged_when_nobody_reads_the_queue() {
        // Without `--queue-bypass`, a queue no sidecar is bound to drops what the rules send
        // it (fail closed), on either path, with one queue or several.
        for l4_path in [L4Path::Proxy, L4Path::Kernel] {
            for packet_queues in [1, 4] {
                let cfg = InitConfig {
                    l4_path,
                    packet_queues,
                    ..InitConfig::default()
                };
                for family in [Family::V4, Family::V6] {
                    let input = cfg.restore_input(family, Coverage::Capture, &Saved::default());
                    let queued: Vec<&str> =
                        input.lines().filter(|l| l.contains("NFQUEUE")).collect();
                    assert!(!queued.is_empty(), "{l4_path:?} {family:?}: {input}");
                    for rule in queued {
                        assert!(!rule.contains("bypass"), "{rule}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_jump_is_deleted_and_inserted_again_at_the_top_in_order() {
        let cfg = InitConfig::default();
        let fresh = cfg.restore_input(Family::V4, Coverage::Capture, &Saved::default());
        assert!(fresh.starts_with("*nat\n:PODWALL_OUTPUT - [0:0]\n"));
        for jump in [
            "-I OUTPUT 1 -j PODWALL_OUTPUT\n",
            "-I PREROUTING 1 -p tcp -m conntrack --ctstate NEW -j PODWALL_INBOUND\n",
            "-I PREROUTING 2 -p tcp --syn -m conntrack ! --ctstate NEW -j PODWALL_REOPENED_IN\n",
            "-I OUTPUT 1 -p udp -j PODWALL_DNS_OUTPUT\n",
            "-I PREROUTING 3 -p udp -j PODWALL_DNS_PREROUTING\n",
            "-I POSTROUTING 1 ! -o lo -j PODWALL_EGRESS\n",
            "-I INPUT 1 -i lo -m addrtype ! --src-type LOCAL -j PODWALL_SPOOF\n",
            "-I INPUT 2 -p tcp -m conntrack --ctstate INVALID,NEW -j PODWALL_GUARD\n",
            "-I INPUT 3 -p udp -m udp --dport 15053 -j PODWALL_GUARD\n",
            "-I INPUT 4 ! -p tcp -j PODWALL_FILTER_IN\n",
            "-I OUTPUT 1 -o lo -m mark ! --mark 0x1337 -m addrtype ! --src-type LOCAL -j PODWALL_FORGED\n",
            "-I OUTPUT 2 ! -p tcp -j PODWALL_FILTER_OUT\n",
        ] {
            assert!(fresh.contains(jump), "{jump} in {fresh}");
        }
        assert!(!fresh.contains("-D "), "{fresh}");
        // As iptables-save prints an installed set, with an older version's jumps and somebody
        // else's.
        let installed = Saved {
            nat: "*nat\n:PODWALL_INBOUND - [0:0]\n-A PREROUTING -p tcp -j PODWALL_INBOUND\n-A OUTPUT -j PODWALL_OUTPUT\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n".into(),
            mangle: "*mangle\n-A OUTPUT -p udp -j PODWALL_DNS_OUTPUT\n-A PREROUTING -p udp -j PODWALL_DNS_PREROUTING\nCOMMIT\n".into(),
            filter: "*filter\n-A INPUT -p udp -j PODWALL_FILTER_IN\n-A INPUT -p icmp -j PODWALL_FILTER_IN\n-A OUTPUT -p udp -j PODWALL_FILTER_OUT\n-A OUTPUT -j OTHER\nCOMMIT\n".into(),
            raw: String::new(),
        };
        let again = cfg.restore_input(Family::V4, Coverage::Capture, &installed);
        assert!(
            again.contains("-F PODWALL_INBOUND\n-X PODWALL_INBOUND\n"),
            "{again}"
        );
        for gone in [
            "-D PREROUTING -p tcp -j PODWALL_INBOUND\n",
            "-D OUTPUT -j PODWALL_OUTPUT\n",
            "-D OUTPUT -p udp -j PODWALL_DNS_OUTPUT\n",
            "-D INPUT -p udp -j PODWALL_FILTER_IN\n",
            "-D INPUT -p icmp -j PODWALL_FILTER_IN\n",
            "-D OUTPUT -p udp -j PODWALL_FILTER_OUT\n",
        ] {
            assert!(again.contains(gone), "{gone} in {again}");
        }
        assert!(again.contains("-I INPUT 4 ! -p tcp -j PODWALL_FILTER_IN\n"));
        assert!(again.contains("-I OUTPUT 2 ! -p tcp -j PODWALL_FILTER_OUT\n"));
        // Nobody else's jumps are touched.
        assert!(!again.contains("OTHER"), "{again}");
        assert!(!again.contains("KUBE-SERVICES"), "{again}");
    }

    #[test]
    fn udp_dns_is_marked_and_tproxied_keeping_its_destination() {
        let cfg = InitConfig {
            exclude_outbound_cidrs: vec!["10.96.0.1/32".parse().expect("net")],
            ..InitConfig::default()
        };
        assert_eq!(
            cfg.dns_rules(Family::V4),
            [
                "-A PODWALL_DNS_OUTPUT -m mark --mark 0x1337 -p udp --dport 53 -m conntrack --ctdir ORIGINAL -m connmark --mark 0x539 -j CONNMARK --set-xmark 0x0/0xffffffff",
                "-A PODWALL_DNS_OUTPUT -m mark --mark 0x1337 -j RETURN",
                "-A PODWALL_DNS_OUTPUT -o lo -m addrtype --dst-type LOCAL -j RETURN",
                "-A PODWALL_DNS_OUTPUT -d 10.96.0.1/32 -j RETURN",
                "-A PODWALL_DNS_OUTPUT -p udp --dport 53 -j MARK --set-xmark 0x539/0xffffffff",
                "-A PODWALL_DNS_OUTPUT -p udp --dport 53 -j CONNMARK --set-xmark 0x539/0xffffffff",
                "-A PODWALL_DNS_PREROUTING -p udp -m mark --mark 0x539 -j TPROXY --on-port 15053 --on-ip 127.0.0.1 --tproxy-mark 0x539/0xffffffff",
            ]
        );
        assert!(cfg.dns_rules(Family::V6)[5].contains("--on-ip ::1"));
        let routes = cfg.route_commands(Family::V4);
        assert_eq!(
            routes[0].join(" "),
            "ip -4 route replace local 0.0.0.0/0 dev lo table 133"
        );
        assert_eq!(
            routes[1].join(" "),
            "ip -4 rule add fwmark 0x539 lookup 133"
        );
        let redirect = InitConfig {
            dns_capture: DnsCapture::Redirect,
            ..InitConfig::default()
        };
        assert!(redirect.dns_rules(Family::V4).is_empty());
        assert!(redirect.route_commands(Family::V4).is_empty());
        assert!(redirect.chain_rules(Family::V4).contains(
            &"-A PODWALL_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053".to_string()
        ));
        let input = redirect.restore_input(Family::V4, Coverage::Capture, &Saved::default());
        assert!(!input.contains("TPROXY --on-port 15053"), "{input}");
        assert!(!input.contains("-A PODWALL_DNS_OUTPUT"), "{input}");
    }

    #[test]
    fn every_new_non_tcp_flow_is_queued_and_what_conntrack_does_not_track_is_dropped() {
        let cfg = InitConfig {
            exclude_outbound_cidrs: vec!["10.96.0.1/32".parse().expect("net")],
            ..InitConfig::default()
        };
        let rules = cfg.filter_rules(Family::V4);
        let chain = |name: &str| -> Vec<&str> {
            rules
                .iter()
                .filter(|r| r.starts_with(&format!("-A {name} ")))
                .map(String::as_str)
                .collect()
        };
        assert_eq!(
            chain(FILTER_OUT_CHAIN),
            [
                "-A PODWALL_FILTER_OUT -m mark --mark 0x1337 -j RETURN",
                "-A PODWALL_FILTER_OUT -o lo -m addrtype --dst-type LOCAL -j RETURN",
                "-A PODWALL_FILTER_OUT -d 10.96.0.1/32 -j RETURN",
                "-A PODWALL_FILTER_OUT -m mark --mark 0x539 -j RETURN",
                "-A PODWALL_FILTER_OUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A PODWALL_FILTER_OUT -m addrtype --dst-type BROADCAST -j DROP",
                "-A PODWALL_FILTER_OUT -d 224.0.0.0/4 ! -p igmp -j DROP",
                "-A PODWALL_FILTER_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_OUT -j DROP",
            ]
        );
        // IPv6 multicast goes nowhere but neighbour discovery's (let through before it).
        let v6 = cfg.filter_rules(Family::V6);
        let multicast = v6
            .iter()
            .position(|r| r == "-A PODWALL_FILTER_OUT -d ff00::/8 -j DROP")
            .expect("IPv6 multicast dropped");
        let discovery = v6
            .iter()
            .position(|r| r.starts_with("-A PODWALL_FILTER_OUT -p ipv6-icmp --icmpv6-type 135"))
            .expect("neighbour solicitations pass");
        assert!(discovery < multicast, "{v6:#?}");
        let queued = v6
            .iter()
            .position(|r| r.starts_with("-A PODWALL_FILTER_OUT -m conntrack --ctstate NEW"))
            .expect("queued");
        assert!(multicast < queued, "{v6:#?}");
        assert_eq!(
            chain(FILTER_IN_CHAIN),
            [
                "-A PODWALL_FILTER_IN -i lo -j RETURN",
                "-A PODWALL_FILTER_IN -m connmark --mark 0x539 -j DROP",
                "-A PODWALL_FILTER_IN -p icmp --icmp-type redirect -j DROP",
                "-A PODWALL_FILTER_IN -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A PODWALL_FILTER_IN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_IN -j DROP",
            ]
        );
        // DNS is not let through by port: captured, it carries the capture's mark; not
        // captured, it is judged like any UDP.
        assert!(
            !rules.iter().any(|r| r.contains("--dport 53")),
            "{rules:#?}"
        );
        let redirect = InitConfig {
            dns_capture: DnsCapture::Redirect,
            ..InitConfig::default()
        };
        assert!(
            redirect.filter_rules(Family::V4).contains(
                &"-A PODWALL_FILTER_OUT -p udp -m conntrack --ctstate DNAT --ctorigdstport 53 --ctreplsrcport 15053 -j RETURN"
                    .to_string()
            )
        );
        let v6 = cfg.filter_rules(Family::V6);
        assert!(v6.contains(
            &"-A PODWALL_FILTER_IN -p ipv6-icmp --icmpv6-type 135 -j RETURN".to_string()
        ));
        for dropped in [134, 137] {
            assert!(v6.contains(&format!(
                "-A PODWALL_FILTER_IN -p ipv6-icmp --icmpv6-type {dropped} -j DROP"
            )));
        }
        let off = InitConfig {
            packet_queue: None,
            ..InitConfig::default()
        };
        let off_rules = off.filter_rules(Family::V4);
        assert!(!off_rules.iter().any(|r| r.contains("NFQUEUE")));
        assert!(off_rules.contains(
            &"-A PODWALL_FILTER_OUT -p udp -m conntrack --ctstate NEW -j RETURN".to_string()
        ));
        assert!(off_rules.contains(&"-A PODWALL_FILTER_OUT -j DROP".to_string()));
    }

    #[test]
    fn listeners_take_only_redirected_traffic_on_marked_sockets_and_forged_loopback_is_dropped() {
        let rules = InitConfig::default().filter_rules(Family::V4);
        let guard: Vec<&str> = rules
            .iter()
            .filter(|r| r.starts_with("-A PODWALL_GUARD") || r.starts_with("-A PODWALL_SPOOF"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            guard,
            [
                "-A PODWALL_GUARD -p tcp -m conntrack --ctstate INVALID -j DROP",
                "-A PODWALL_GUARD -p tcp --tcp-flags SYN,ACK SYN,ACK -m conntrack --ctdir ORIGINAL -m connmark ! --mark 0x70770001 -j DROP",
                "-A PODWALL_GUARD -p tcp -m multiport --dports 15006,15001,15053 -m conntrack ! --ctstate DNAT -j DROP",
                "-A PODWALL_GUARD -p udp --dport 15053 -m conntrack ! --ctstate DNAT -j DROP",
                "-A PODWALL_SPOOF -m socket --nowildcard --restore-skmark -m mark --mark 0x1337 -j DROP",
            ]
        );
        // Inbound and admin go by TPROXY, to transparent sockets only: no socket check, which
        // would trip over TIME_WAIT sockets of reused ports.
        assert!(
            InitConfig::default()
                .inbound_rules()
                .iter()
                .all(|r| r.contains("-i lo") || r.contains("TPROXY")),
        );
    }

    #[test]
    fn on_the_kernel_path_each_new_tcp_connection_is_queued_once_and_its_mark_decides_the_path() {
        let kernel = InitConfig {
            l4_path: L4Path::Kernel,
            exclude_outbound_ports: vec![6443],
            ..InitConfig::default()
        };
        assert_eq!(
            kernel.tcp_out_rules(Family::V4),
            [
                "-A PODWALL_TCP_OUT -m mark --mark 0x1337 -j RETURN",
                "-A PODWALL_TCP_OUT -o lo -m addrtype --dst-type LOCAL -j RETURN",
                "-A PODWALL_TCP_OUT -p tcp --dport 6443 -j RETURN",
                "-A PODWALL_TCP_OUT -p tcp --dport 53 -j RETURN",
                "-A PODWALL_TCP_OUT -m mark --mark 0x70770001 -j CONNMARK --set-xmark 0x70770001/0xffffffff",
                "-A PODWALL_TCP_OUT -m mark --mark 0x70770001 -j RETURN",
                "-A PODWALL_TCP_OUT -p tcp -m mark --mark 0x70770002 -j RETURN",
                "-A PODWALL_TCP_OUT -m connmark --mark 0x70770001 -j MARK --set-xmark 0x70770003/0xffffffff",
                "-A PODWALL_TCP_OUT -p tcp --syn -j NFQUEUE --queue-num 1337",
            ]
        );
        let inbound = kernel.inbound_rules();
        assert_eq!(
            inbound[inbound.len() - 5..],
            [
                "-A PODWALL_INBOUND -m mark --mark 0x70770001 -j CONNMARK --set-xmark 0x70770001/0xffffffff",
                "-A PODWALL_INBOUND -m mark --mark 0x70770001 -j RETURN",
                "-A PODWALL_INBOUND -p tcp -m mark --mark 0x70770002 -j TPROXY --on-port 15006",
                "-A PODWALL_INBOUND -m connmark --mark 0x70770001 -j MARK --set-xmark 0x70770003/0xffffffff",
                "-A PODWALL_INBOUND -p tcp --syn -j NFQUEUE --queue-num 1337",
            ]
        );
        // A segment conntrack calls new without a SYN (its connection's entry removed) is
        // reset, never TPROXYed to a socket of the same addresses.
        assert!(
            !inbound
                .iter()
                .any(|l| l.ends_with("-p tcp -j TPROXY --on-port 15006"))
        );
        // Whatever its port (excluded ones and the admin port included), after loopback only.
        assert_eq!(
            inbound[..3],
            [
                "-A PODWALL_INBOUND -i lo -j RETURN",
                "-A PODWALL_INBOUND -p tcp ! --syn -j MARK --set-xmark 0x70770005/0xffffffff",
                "-A PODWALL_INBOUND -m mark --mark 0x70770005 -j RETURN",
            ]
        );
        assert!(kernel.filter_rules(Family::V4).contains(
            &"-A PODWALL_GUARD -p tcp -m mark --mark 0x70770005 -j REJECT --reject-with tcp-reset"
                .to_string()
        ));
        assert!(
            kernel
                .chain_rules(Family::V4)
                .contains(&"-A PODWALL_OUTPUT -m mark --mark 0x70770001 -j RETURN".to_string())
        );
        // A SYN that reopens a kernel-carried connection's entry goes to the judge, both ways.
        let stale = "-p tcp --syn -m conntrack ! --ctstate NEW -m connmark --mark 0x70770001 -j PODWALL_STALE_SYN";
        let input = kernel.restore_input(Family::V4, Coverage::Capture, &Saved::default());
        for hook in ["OUTPUT", "PREROUTING"] {
            assert!(
                input
                    .lines()
                    .any(|l| l.starts_with(&format!("-I {hook} ")) && l.ends_with(stale)),
                "{hook}: {input}"
            );
        }
        // One on any other entry conntrack reopened goes to the proxy.
        let reopened = "-p tcp --syn -m conntrack ! --ctstate NEW -m connmark ! --mark 0x70770001 -j PODWALL_REOPENED_IN";
        assert!(
            input
                .lines()
                .any(|l| l.starts_with("-I PREROUTING ") && l.ends_with(reopened)),
            "{input}"
        );
        assert_eq!(
            kernel.stale_syn_rules(),
            [
                "-A PODWALL_STALE_SYN -m mark --mark 0x70770001 -j RETURN",
                "-A PODWALL_STALE_SYN -m conntrack --ctstatus ASSURED -j DROP",
                "-A PODWALL_STALE_SYN -j MARK --set-xmark 0x70770004/0xffffffff",
                "-A PODWALL_STALE_SYN -j NFQUEUE --queue-num 1337",
            ]
        );
        assert!(InitConfig::default().stale_syn_rules().is_empty());
        // Kernel-carried packets pass first (the judge checked the connection's source).
        assert_eq!(
            kernel.egress_rules(Family::V4)[0],
            "-A PODWALL_EGRESS -m connmark --mark 0x70770001 -j RETURN"
        );
        // Without a queue there is no judge: every connection goes to the proxy.
        let unjudged = InitConfig {
            packet_queue: None,
            ..kernel.clone()
        };
        assert_eq!(unjudged.tcp_queue(), None);
        assert!(unjudged.tcp_out_rules(Family::V4).is_empty());
        // The proxy path is as it was: nothing queued, nothing marked.
        let proxy = InitConfig::default();
        assert!(proxy.tcp_out_rules(Family::V4).is_empty());
        for rule in proxy
            .inbound_rules()
            .iter()
            .chain(&proxy.chain_rules(Family::V4))
            .chain(&proxy.egress_rules(Family::V4))
        {
            assert!(!rule.contains("0x7077"), "{rule}");
        }
    }

    #[test]
    fn neither_path_sets_a_conntrack_template_and_an_earlier_versions_is_taken_away() {
        let kernel = InitConfig {
            l4_path: L4Path::Kernel,
            ..InitConfig::default()
        };
        let proxy = InitConfig::default();
        for cfg in [&kernel, &proxy] {
            let fresh = cfg.restore_input(Family::V4, Coverage::Capture, &Saved::default());
            assert!(!fresh.contains("*raw"), "{fresh}");
        }
        let after_kernel = Saved {
            raw: "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:PODWALL_TRACK - [0:0]\n-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j PODWALL_TRACK\n-A OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j PODWALL_TRACK\nCOMMIT\n".into(),
            ..Saved::default()
        };
        for cfg in [&kernel, &proxy] {
            let switched = cfg.restore_input(Family::V4, Coverage::Capture, &after_kernel);
            let raw = &switched[switched.find("*raw\n").expect("a raw section")..];
            assert!(
                raw.contains(
                    "-D PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j PODWALL_TRACK"
                ),
                "{raw}"
            );
            assert!(
                raw.contains(
                    "-D OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j PODWALL_TRACK"
                ),
                "{raw}"
            );
            // The jumps go before the chain does (iptables-restore applies them in order).
            let flushed = raw
                .find("-F PODWALL_TRACK\n-X PODWALL_TRACK")
                .expect("chain removed");
            assert!(raw.rfind("-D ").is_some_and(|d| d < flushed), "{raw}");
            assert!(!raw.contains("-I "), "{raw}");
        }
    }

    #[test]
    fn no_simultaneous_open_with_a_peer_whose_syn_the_pod_did_not_answer() {
        for l4_path in [L4Path::Proxy, L4Path::Kernel] {
            let cfg = InitConfig {
                l4_path,
                ..InitConfig::default()
            };
            for family in [Family::V4, Family::V6] {
                // The app's SYN on the reply direction does not leave...
                assert!(
                    cfg.egress_rules(family).contains(
                        &"-A PODWALL_EGRESS -p tcp --syn -m conntrack --ctdir REPLY -j DROP"
                            .to_string()
                    )
                );
                // ...and a peer's SYN-ACK on the original direction does not come in.
                let input = cfg.restore_input(family, Coverage::Capture, &Saved::default());
                assert!(
                    input.contains("! -i lo -p tcp --tcp-flags SYN,ACK SYN,ACK -m conntrack --ctdir ORIGINAL -j PODWALL_GUARD\n"),
                    "{input}"
                );
                assert!(
                    input.contains("-A PODWALL_GUARD -p tcp --tcp-flags SYN,ACK SYN,ACK -m conntrack --ctdir ORIGINAL -m connmark ! --mark 0x70770001 -j DROP\n"),
                    "{input}"
                );
            }
        }
    }

    #[test]
    fn nothing_leaves_the_pod_that_the_sidecar_did_not_open_judge_or_exclude() {
        let cfg = InitConfig {
            exclude_outbound_cidrs: vec!["10.96.0.1/32".parse().expect("net")],
            exclude_outbound_ports: vec![6443],
            ..InitConfig::default()
        };
        assert_eq!(
            cfg.egress_rules(Family::V4),
            [
                "-A PODWALL_EGRESS -m mark --mark 0x1337 -j RETURN",
                "-A PODWALL_EGRESS -m addrtype ! --src-type LOCAL -j DROP",
                "-A PODWALL_EGRESS -m mark --mark 0x539 -j DROP",
                "-A PODWALL_EGRESS ! -p tcp -j RETURN",
                "-A PODWALL_EGRESS -d 10.96.0.1/32 -j RETURN",
                "-A PODWALL_EGRESS -p tcp --dport 6443 -j RETURN",
                "-A PODWALL_EGRESS -p tcp --syn -m conntrack --ctdir REPLY -j DROP",
                "-A PODWALL_EGRESS -m conntrack --ctdir REPLY -j RETURN",
                "-A PODWALL_EGRESS -p tcp --tcp-flags RST RST -j RETURN",
                "-A PODWALL_EGRESS -j DROP",
            ]
        );
        assert!(cfg.egress_rules(Family::V6).contains(
            &"-A PODWALL_EGRESS -s ::/128 -p ipv6-icmp --icmpv6-type 135 -j RETURN".to_string()
        ));
        // Without DNS capture too: the check is on every interface but loopback.
        let plain = InitConfig {
            capture_dns: false,
            ..InitConfig::default()
        };
        let input = plain.restore_input(Family::V4, Coverage::Capture, &Saved::default());
        assert!(
            input.contains("-I POSTROUTING 1 ! -o lo -j PODWALL_EGRESS\n"),
            "{input}"
        );
        assert!(!input.contains("-A PODWALL_DNS_OUTPUT"), "{input}");
    }

    #[test]
    fn ipv6_without_a_global_address_is_locked_down_to_loopback() {
        let lockdown =
            InitConfig::default().restore_input(Family::V6, Coverage::Lockdown, &Saved::default());
        assert_eq!(
            lockdown,
            "*filter\n:PODWALL_FILTER_OUT - [0:0]\n:PODWALL_FILTER_IN - [0:0]\n\
             -A PODWALL_FILTER_OUT -o lo -j RETURN\n-A PODWALL_FILTER_OUT -j DROP\n\
             -A PODWALL_FILTER_IN -i lo -j RETURN\n-A PODWALL_FILTER_IN -j DROP\n\
             -I INPUT 1 -j PODWALL_FILTER_IN\n-I OUTPUT 1 -j PODWALL_FILTER_OUT\nCOMMIT\n"
        );
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            ipv6_coverage(Some(&[ip("::1"), ip("fe80::1")])),
            Some(Coverage::Lockdown)
        );
        assert_eq!(
            ipv6_coverage(Some(&[ip("fe80::1"), ip("fd00::5")])),
            Some(Coverage::Capture)
        );
        // IPv6 without any address (addr_gen_mode 1) can still send to multicast.
        assert_eq!(ipv6_coverage(Some(&[ip("::1")])), Some(Coverage::Lockdown));
        assert_eq!(ipv6_coverage(Some(&[])), Some(Coverage::Lockdown));
        assert_eq!(ipv6_coverage(None), None, "no IPv6 in the kernel");
    }

    #[test]
    fn reserved_port_ranges_are_read_as_the_kernel_writes_them() {
        assert_eq!(
            parse_port_ranges("15001,15006-15010\n"),
            [(15001, 15001), (15006, 15010)]
        );
        assert!(parse_port_ranges("\n").is_empty());
        assert_eq!(
            InitConfig::default().listener_ports(),
            [15001, 15006, 15020, 15053]
        );
    }

    #[test]
    fn ipv6_counts_only_with_a_global_address() {
        assert!(!has_ipv6(&[
            "10.0.0.1".parse().expect("ip"),
            "::1".parse().expect("ip"),
            "fe80::1".parse().expect("ip")
        ]));
        assert!(has_ipv6(&["fd00::5".parse().expect("ip")]));
    }
}

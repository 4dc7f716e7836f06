//! The packet filter: every flow but TCP and DNS (UDP, SCTP, ping, and every other IP
//! protocol).
//!
//! These cannot be proxied like TCP (no connection to accept, no `SO_ORIGINAL_DST`), so the
//! init rules send the first packet of each new flow (conntrack state `NEW`, both directions)
//! to an NFQUEUE queue, and this module judges it: the verdict is the same compiled policy the
//! TCP listeners use (egress for packets the pod sends, ingress for packets it receives), and
//! the packet is accepted or dropped. Later packets of an accepted flow, and its replies, match
//! the conntrack entry and never leave the kernel, so the cost is one round trip to user space
//! per flow, not per packet.
//!
//! Semantics worth knowing:
//! - A denied flow's packets are dropped (what upstream NetworkPolicy implementations do for
//!   UDP); each dropped first packet is a flow event, so a retrying client shows up repeatedly.
//! - Before the first policy arrives every new flow is dropped (fail closed), and without a
//!   sidecar bound to the queue the kernel drops them too.
//! - A Service virtual IP: kube-proxy picks the backend after the packet leaves the pod, so the
//!   flow is allowed only when policy allows *every* ready backend on its target port.
//! - A flow already accepted lives as long as its conntrack entry. After a policy change,
//!   [`revoke`] reads the pod's conntrack table and removes the entries of flows the new policy
//!   denies (UDP has no reset to send): their next packet is a new flow, judged and dropped.
//!   (`--keep-revoked-connections` keeps them, as for TCP.) Names learned for toFQDNs rules
//!   count as they are at that moment, and egress UDP to port 53 is the DNS proxy's and left
//!   alone.
//! - Flow events are written when the flow starts: `bytes_*` and `duration_ms` are 0.
//! - Ping (ICMP and ICMPv6 echo requests) is judged as protocol `ICMP`, port 0: no NetworkPolicy
//!   port names it, so only a rule without `ports` (every protocol) allows it, on both sides.
//! - Every other protocol (UDP-Lite, GRE, ESP, raw IP from an app that kept `NET_RAW`, ICMP
//!   requests other than echo) is judged the same way as `OTHER`, with its protocol number in
//!   the flow event: a rule without `ports` allows it, nothing else does. Nothing the pod sends
//!   or receives passes unjudged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::conntrack::{Conntrack, Entry};

use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::udp::UdpPacket;
use podwall_policy::{Direction, Protocol};

use crate::admit::{Admission, Backends, NewFlow, admit};
use crate::flow::FlowEvent;
use crate::nfqueue::Verdict;
use crate::pod_policy::FlowVerdict;
use crate::shared::Shared;

/// Netfilter's hook numbers, as NFQUEUE reports them.
const HOOK_PRE_ROUTING: u8 = 0;
const HOOK_LOCAL_IN: u8 = 1;
const HOOK_LOCAL_OUT: u8 = 3;
/// IP protocol numbers.
const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
/// The TCP flags that make a connection's first segment.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// The echo request types of ICMP and ICMPv6.
const ECHO_REQUEST: u8 = 8;
const ECHO_REQUEST_V6: u8 = 128;
/// Bytes of each packet copied to user space: the IP header, IPv6 extension headers and the
/// ports are all the filter reads.
const COPY_RANGE: u16 = 256;

/// The first packet of a flow, as far as policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlowStart {
    /// UDP, SCTP, ICMP for an echo request, or another protocol.
    pub protocol: Protocol,
    /// The IP protocol number (IPv6: of the header after the extension headers).
    pub ip_protocol: u8,
    /// The sender (port 0 for ICMP).
    pub source: SocketAddr,
    /// The receiver (port 0 for ICMP).
    pub destination: SocketAddr,
    /// A TCP SYN's sequence number (0 for other protocols).
    pub syn_seq: u32,
}

/// Reads the addresses, protocol and ports of an IP packet (IPv4 or IPv6); `None` for TCP
/// other than a SYN, a later fragment, or a truncated packet.
pub(crate) fn parse(packet: &[u8]) -> Option<FlowStart> {
    let (src, dst, next, payload): (IpAddr, IpAddr, u8, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new(packet)?;
            let header = usize::from(ip.get_header_length()) * 4;
            // A later fragment carries no ports.
            if header < 20 || packet.len() < header || ip.get_fragment_offset() != 0 {
                return None;
            }
            if source_routed_v4(&packet[20..header])? {
                return None;
            }
            (
                ip.get_source().into(),
                ip.get_destination().into(),
                ip.get_next_level_protocol().0,
                &packet[header..],
            )
        }
        6 => {
            let ip = Ipv6Packet::new(packet)?;
            // The fixed header is 40 bytes; what follows is read from the packet itself.
            let (next, rest) = skip_extensions(ip.get_next_header().0, packet.get(40..)?)?;
            (
                ip.get_source().into(),
                ip.get_destination().into(),
                next,
                rest,
            )
        }
        _ => return None,
    };
    // TCP is queued only on the kernel path, and only its SYN (see `crate::tcp_route`).
    let protocol = match next {
        TCP => Protocol::Tcp,
        _ => judged(next, payload.first().copied())?,
    };
    let mut syn_seq = 0;
    let (sport, dport) = match protocol {
        Protocol::Tcp if payload.len() >= 20 && payload[13] & (TCP_SYN | TCP_ACK) == TCP_SYN => {
            syn_seq = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            )
        }
        Protocol::Udp => {
            let udp = UdpPacket::new(payload)?;
            (udp.get_source(), udp.get_destination())
        }
        // SCTP's common header starts with the two ports, as UDP's does.
        Protocol::Sctp if payload.len() >= 12 => (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        ),
        Protocol::Icmp | Protocol::Other => (0, 0),
        _ => return None,
    };
    Some(FlowStart {
        protocol,
        ip_protocol: next,
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
        syn_seq,
    })
}

/// How the filter judges a flow, by IP protocol number (and for ICMP the type of the packet
/// that starts the flow): UDP and SCTP by port, echo requests as ping, every other protocol
/// as one without ports; TCP not at all (the proxy does).
fn judged(ip_protocol: u8, icmp_type: Option<u8>) -> Option<Protocol> {
    match (ip_protocol, icmp_type) {
        (TCP, _) => None,
        (UDP, _) => Some(Protocol::Udp),
        (SCTP, _) => Some(Protocol::Sctp),
        (ICMP, Some(ECHO_REQUEST)) | (ICMPV6, Some(ECHO_REQUEST_V6)) => Some(Protocol::Icmp),
        _ => Some(Protocol::Other),
    }
}

/// Skips IPv6 extension headers (hop-by-hop, routing, destination options, fragment,
/// authentication) to the upper-layer protocol.
fn skip_extensions(mut next: u8, mut rest: &[u8]) -> Option<(u8, &[u8])> {
    for _ in 0..8 {
        match next {
            // A routing header with segments left (an app sets one with `IPV6_RTHDR`, no
            // capability needed) sends the packet on from the address it names to another:
            // it would be judged by its first hop.
            43 if *rest.get(3)? > 0 => return None,
            0 | 43 | 60 => {
                let len = (usize::from(*rest.get(1)?) + 1) * 8;
                next = *rest.first()?;
                rest = rest.get(len..)?;
            }
            // An authentication header (the kernel skips it too, and tracks the ports behind
            // it): its length is in 4-octet units, less 2.
            51 => {
                let len = (usize::from(*rest.get(1)?) + 2) * 4;
                next = *rest.first()?;
                rest = rest.get(len..)?;
            }
            44 => {
                let offset = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]) >> 3;
                if offset != 0 {
                    return None;
                }
                next = *rest.first()?;
                rest = rest.get(8..)?;
            }
            _ => return Some((next, rest)),
        }
    }
    None
}

/// Whether IPv4 `options` hold a loose or strict source route (an app sets them with
/// `IP_OPTIONS`, no capability needed): the header's destination is then only the first hop,
/// and policy would judge that. `None` for options that do not parse.
fn source_routed_v4(options: &[u8]) -> Option<bool> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const LSRR: u8 = 131;
    const SSRR: u8 = 137;
    let mut rest = options;
    while let Some(&kind) = rest.first() {
        match kind {
            END => break,
            NOP => rest = &rest[1..],
            LSRR | SSRR => return Some(true),
            _ => {
                let len = usize::from(*rest.get(1)?);
                if len < 2 {
                    return None;
                }
                rest = rest.get(len..)?;
            }
        }
    }
    Some(false)
}

impl FlowStart {
    /// The flow this packet starts, sent (egress) or received (ingress) by the pod.
    fn flow(self, direction: Direction) -> NewFlow {
        NewFlow {
            direction,
            protocol: self.protocol,
            ip_protocol: self.ip_protocol,
            source: self.source,
            destination: self.destination,
        }
    }
}

/// Judges a new flow: whether its first packet may pass, and the flow event that says why.
/// kube-proxy picks a Service's backend after the packet leaves the pod, so every ready one
/// must be allowed.
fn judge(shared: &Shared, direction: Direction, start: FlowStart) -> FlowEvent {
    match admit(shared, start.flow(direction), Backends::Every) {
        Admission::Admitted(admitted) => admitted.event,
        Admission::Refused(refused) => refused.event,
    }
}

/// The flow a conntrack entry of this pod stands for, if the filter judges such flows (all but
/// TCP) between one of `own` addresses and another address.
fn flow_of(entry: &Entry, own: &[IpAddr]) -> Option<(Direction, FlowStart)> {
    let protocol = judged(entry.protocol, entry.icmp_type)?;
    let direction = match (own.contains(&entry.src), own.contains(&entry.dst)) {
        (true, false) => Direction::Egress,
        (false, true) => Direction::Ingress,
        // Loopback, or within the pod: never judged.
        _ => return None,
    };
    if direction == Direction::Egress && protocol == Protocol::Udp && entry.dport == 53 {
        return None;
    }
    Some((
        direction,
        FlowStart {
            protocol,
            ip_protocol: entry.protocol,
            source: SocketAddr::new(entry.src, entry.sport),
            destination: SocketAddr::new(entry.dst, entry.dport),
            syn_seq: 0,
        },
    ))
}

/// Removes the conntrack entries of the non-TCP flows the current policy denies, so
/// that their next packet is judged again; each one is a flow event and a revoked flow in the
/// metrics. Returns how many were removed.
pub(crate) fn revoke(
    shared: &Shared,
    table: &mut Conntrack,
    entries: &[Entry],
) -> std::io::Result<usize> {
    let Some(policy) = shared.policy() else {
        return Ok(0);
    };
    let own = policy.engine.state().pod(policy.me).ips.clone();
    let mut removed = 0;
    for entry in entries {
        let Some((direction, start)) = flow_of(entry, &own) else {
            continue;
        };
        let mut event = judge(shared, direction, start);
        if event.verdict != FlowVerdict::Denied || !table.delete(entry)? {
            continue;
        }
        removed += 1;
        shared.metrics(direction).revoked.inc();
        event.error = Some("removed: a policy change no longer allows this flow".into());
        shared.flows.emit(event);
    }
    Ok(removed)
}

/// The packet filter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot read NFQUEUE queue {queue} (needs NET_ADMIN): {source}")]
pub(crate) struct FilterError {
    /// The queue.
    pub queue: u16,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds queues `first` to `first + count - 1` (the init rules balance new flows over them by
/// their addresses) and judges each one's packets on a thread of its own: a verdict is a few
/// microseconds of work and a blocking netlink round trip, which never waits on the runtime.
/// Every queue is bound before any thread starts, so a failure leaves none half-served.
pub(crate) fn spawn(first: u16, count: u16, shared: Arc<Shared>) -> Result<(), FilterError> {
    let mut queues = Vec::new();
    // (The same range as the init rules', which end at 65535.)
    for num in first..=first.saturating_add(count.max(1) - 1) {
        let queue = crate::nfqueue::Queue::bind(num, COPY_RANGE, 4096)
            .map_err(|source| FilterError { queue: num, source })?;
        queues.push((num, queue));
    }
    for (num, queue) in queues {
        let shared = shared.clone();
        let batches = shared.in_flight.register();
        std::thread::Builder::new()
            .name(format!("packet-filter-{num}"))
            .spawn(move || {
                // A queue nobody reads drops its share of new flows for good while the sidecar
                // still says it is ready: a judging bug ends the process instead, and the
                // kubelet starts the sidecar again.
                let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(queue, &shared, &batches)
                }));
                if judged.is_err() {
                    tracing::error!(queue = num, "packet filter thread panicked; exiting");
                    std::process::abort();
                }
            })
            .map_err(|source| FilterError { queue: num, source })?;
    }
    Ok(())
}

fn run(
    mut queue: crate::nfqueue::Queue,
    shared: &Arc<Shared>,
    batches: &crate::in_flight::Batches,
) {
    loop {
        if let Err(e) = queue.judge_batch(batches, |packet| verdict(shared, packet)) {
            // ENOBUFS: the kernel dropped packets it could not queue; the senders retry.
            tracing::warn!(error = %e, "packet filter: receive failed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The verdict on one queued packet: a new TCP connection's path (the kernel path), or
/// another flow's fate.
fn verdict(shared: &Arc<Shared>, packet: crate::nfqueue::Packet<'_>) -> Verdict {
    // Inbound TCP is queued in PREROUTING (before TPROXY), everything else inbound in INPUT.
    let direction = match packet.hook {
        HOOK_PRE_ROUTING | HOOK_LOCAL_IN => Some(Direction::Ingress),
        HOOK_LOCAL_OUT => Some(Direction::Egress),
        _ => None,
    };
    match (direction, parse(packet.payload)) {
        (Some(direction), Some(start)) if start.protocol == Protocol::Tcp => {
            let syn = crate::tcp_route::Syn {
                seq: start.syn_seq,
                on_judged_entry: packet.mark == crate::init::SENT_AGAIN_MARK,
                reopened: packet.mark == crate::init::REOPENED_MARK,
            };
            // The SYN walks its chain again, where the mark decides its path.
            match crate::tcp_route::route(shared, start.flow(direction), syn).mark() {
                Some(mark) => Verdict::Repeat { mark },
                None => Verdict::Drop,
            }
        }
        (Some(direction), Some(start)) => {
            let event = judge(shared, direction, start);
            let verdict = event.verdict;
            shared.metrics(direction).verdict(verdict);
            shared.flows.emit(event);
            if verdict == FlowVerdict::Denied {
                Verdict::Drop
            } else {
                Verdict::Accept
            }
        }
        (direction, _) => {
            tracing::debug!(
                hook = packet.hook,
                ?direction,
                "packet filter: a packet it cannot read (TCP but a SYN, a later fragment, truncated); dropped"
            );
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_policy::client_policy;

    /// A client pod that may send to its server on TCP 8080 and UDP 5300.
    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: t, labels: {app: server}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: t}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 8080}, {port: 5300, protocol: UDP}]
"#;

    /// What the sidecar of the client pod shares, with its policy loaded and events written
    /// nowhere.
    fn client_sidecar() -> Arc<Shared> {
        sidecar_checking_server_names(true)
    }

    /// The same, with `proxy run --check-server-name` as given.
    fn sidecar_checking_server_names(check_server_name: bool) -> Arc<Shared> {
        sidecar(check_server_name, false)
    }

    /// The same, with `--check-server-name` and `--node-ports-only-at-listed-addresses` as
    /// given.
    fn sidecar(check_server_name: bool, node_ports_only_at_listed_addresses: bool) -> Arc<Shared> {
        let policy = client_policy(PODS, 1);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (_tx, policies) = tokio::sync::watch::channel(Some(policy.clone()));
        Arc::new(Shared {
            policies,
            current: Arc::new(arc_swap::ArcSwapOption::new(Some(policy))),
            flows: crate::flow::FlowLog::writing_to(std::io::sink, metrics.flow_counters()),
            names: Arc::new(crate::names::Names::new(
                Default::default(),
                metrics.fqdn.clone(),
            )),
            metrics,
            connect_timeout: std::time::Duration::from_secs(1),
            keep_revoked: false,
            own_ports: vec![15001, 15006],
            check_server_name,
            allow_unnamed_fqdn: false,
            node_ports_only_at_listed_addresses,
            round_robin: Default::default(),
            kernel_flows: Default::default(),
            in_flight: Default::default(),
        })
    }

    /// The client pod's policy as `yaml` (pods and policies) has it.
    /// A connection's addresses as conntrack keys it: (source, destination).
    fn flow_key(source: &str, destination: &str) -> (SocketAddr, SocketAddr) {
        (
            source.parse().expect("addr"),
            destination.parse().expect("addr"),
        )
    }

    /// An IPv4 TCP SYN or UDP datagram from the client to the server.
    fn from_client(protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], sport, dport);
        if protocol == TCP {
            p = ipv4_tcp(sport, dport, TCP_SYN);
        }
        p
    }

    /// The client's SYN from `sport` to the server's 8080, judged as the queue reads it (the
    /// kernel path carries it); its addresses.
    fn client_connects(shared: &Arc<Shared>, sport: u16) -> (SocketAddr, SocketAddr) {
        let syn = from_client(TCP, sport, 8080);
        let message = crate::nfqueue::packet_message(1337, 1, HOOK_LOCAL_OUT, &syn);
        let mut verdicts = Vec::new();
        crate::nfqueue::judge_datagrams(
            std::iter::once(message.as_slice()),
            1337,
            &mut verdicts,
            &mut |p| verdict(shared, p),
        );
        (
            SocketAddr::new([10, 0, 0, 1].into(), sport),
            "10.0.0.2:8080".parse().expect("addr"),
        )
    }

    #[test]
    fn a_syn_sent_again_keeps_its_connections_record_and_a_new_one_on_the_same_port_gets_its_own() {
        let shared = client_sidecar();
        // The client's SYN from port 20001 to `dport` with `seq`, with the mark the rules gave
        // it (none, found on an unanswered judged entry, found on a reopened one); the
        // verdict's code and mark.
        const ON_ENTRY: u32 = crate::init::SENT_AGAIN_MARK;
        const REOPENED: u32 = crate::init::REOPENED_MARK;
        let judge_syn = |dport: u16, seq: u32, mark: u32| {
            let mut syn = from_client(TCP, 20001, dport);
            syn[24..28].copy_from_slice(&seq.to_be_bytes());
            let message =
                crate::nfqueue::marked_packet_message(1337, 1, HOOK_LOCAL_OUT, mark, &syn);
            let mut verdicts = Vec::new();
            crate::nfqueue::judge_datagrams(
                std::iter::once(message.as_slice()),
                1337,
                &mut verdicts,
                &mut |p| verdict(&shared, p),
            );
            let word = |at: usize| {
                verdicts
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            // NF_DROP 0, NF_REPEAT 4; the mark follows a repeat.
            (word(24), word(36))
        };
        const REPEAT: Option<u32> = Some(4);
        let kernel = (REPEAT, Some(crate::init::KERNEL_MARK));
        let key = (
            "10.0.0.1:20001".parse().expect("addr"),
            "10.0.0.2:8080".parse().expect("addr"),
        );
        let started = || shared.kernel_flows.lock().get(&key).map(|f| f.started);
        let allowed = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &shared.metrics.registry)
                .expect("encode");
            text.lines()
                .find(|l| l.contains(r#"connections_total{direction="egress",verdict="allowed"}"#))
                .map(str::to_string)
                .expect("the allowed egress connections' counter")
        };
        let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(judge_syn(8080, 7, 0), kernel);
        let first = started().expect("admitted");
        let counted = allowed();
        pause();
        // The same SYN again, on its entry: the same connection, not admitted a second time.
        assert_eq!(judge_syn(8080, 7, ON_ENTRY), kernel);
        assert_eq!(started(), Some(first), "the record was replaced");
        assert_eq!(allowed(), counted, "counted again");
        // The same number on no judged entry (the app forged it once the entry was gone): a
        // new connection.
        assert_eq!(judge_syn(8080, 7, 0), kernel);
        let second = started().expect("admitted");
        assert!(second > first, "not admitted as new");
        let counted = allowed();
        pause();
        // Another number on the entry (a new socket on the same port): a new connection.
        assert_eq!(judge_syn(8080, 8, ON_ENTRY), kernel);
        assert!(started().is_some_and(|s| s > second), "not admitted as new");
        assert_ne!(allowed(), counted, "not counted");
        // A SYN on a judged entry that may not keep the kernel path is dropped: nat was decided
        // for the entry, so the proxy could not take it.
        assert_eq!(judge_syn(9001, 9, ON_ENTRY), (Some(0), None));
        // On an entry conntrack reopened (no longer NEW): the connection's own SYN sent again
        // passes, uncounted; a new connection there is dropped.
        let counted = allowed();
        let now = started();
        assert_eq!(judge_syn(8080, 8, REOPENED), kernel);
        assert_eq!((started(), allowed()), (now, counted.clone()));
        assert_eq!(judge_syn(8080, 10, REOPENED), (Some(0), None));
        assert_eq!((started(), allowed()), (now, counted));
        assert_eq!(judge_syn(9001, 9, 0).1, Some(crate::init::PROXY_MARK));
    }

    #[test]
    fn a_kernel_carried_connection_ending_before_the_pass_after_a_policy_change_is_described_under_the_new_policy()
     {
        let shared = client_sidecar();
        let before = shared.policy().expect("policy");
        let ended_now = |sport| {
            let key = client_connects(&shared, sport);
            let flow = shared.kernel_flows.lock().remove(&key).expect("admitted");
            crate::tcp_route::end_event(&shared, key, flow, Some((1, 2)))
        };
        let under = |event: &crate::flow::FlowEvent, policy: &Arc<crate::pod_policy::PodPolicy>| {
            event
                .snapshot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, policy))
        };
        // Admitted under the first policy, ended before anything else changed: as admitted.
        assert!(under(&ended_now(20003), &before));
        // Admitted, then a new policy (the same rule under another policy's name) before its
        // end: the end names what allows it now.
        let key = client_connects(&shared, 20004);
        let renamed = client_policy(&PODS.replace("client-out", "client-out-v2"), 2);
        shared.current.store(Some(renamed.clone()));
        let flow = shared.kernel_flows.lock().remove(&key).expect("admitted");
        let event = crate::tcp_route::end_event(&shared, key, flow, Some((1, 2)));
        assert!(under(&event, &renamed), "described under the old policy");
        assert_eq!(event.verdict, FlowVerdict::Allowed);
        assert_eq!((event.bytes_sent, event.bytes_received), (1, 2));
        let allowed_by = match event.egress.as_ref().map(|side| side.decision) {
            Some(podwall_policy::Decision::Rule(rule)) => {
                renamed.engine.state().policy(rule.policy).name.to_string()
            }
            other => panic!("allowed by {other:?}"),
        };
        assert_eq!(allowed_by, "NetworkPolicy t/client-out-v2");
        // A new policy that denies it, its end heard before the pass ended it: it ran under
        // the rule that allowed it, and is described so.
        let key = client_connects(&shared, 20005);
        let denying = client_policy(&PODS.replace("{port: 8080}, ", ""), 3);
        shared.current.store(Some(denying));
        let flow = shared.kernel_flows.lock().remove(&key).expect("admitted");
        let event = crate::tcp_route::end_event(&shared, key, flow, None);
        assert!(under(&event, &renamed), "not described as admitted");
        assert_eq!(event.verdict, FlowVerdict::Allowed);
    }

    #[test]
    fn a_kernel_carried_connection_without_a_record_is_judged_by_name_only_where_no_server_name_check_is_due()
     {
        // The client may reach api.example.com's addresses on 443 by name only.
        let names = "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client-names, namespace: t}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toFQDNs: [{matchName: api.example.com}]\n    toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n";
        let policy = client_policy(&format!("{PODS}{names}"), 2);
        let key = flow_key("10.0.0.1:30000", "192.0.2.80:443");
        let answer = podwall_fqdn::message::Answer {
            id: 1,
            question: Some((
                "api.example.com".into(),
                hickory_proto::rr::RecordType::A,
                hickory_proto::rr::DNSClass::IN,
            )),
            rcode: hickory_proto::op::ResponseCode::NoError,
            truncated: false,
            names: vec!["api.example.com".into()],
            addresses: vec![(key.1.ip(), 300)],
            owners: vec![0],
            cnames: Vec::new(),
        };
        // Taken in after a restart, or its record lost: nothing says which names allowed it.
        let unjudged = crate::tcp_route::unjudged(&policy, key);
        assert_eq!(unjudged.direction, Direction::Egress);
        for check in [true, false] {
            let shared = sidecar_checking_server_names(check);
            shared.current.store(Some(policy.clone()));
            assert!(
                crate::tcp_route::rejudge(&shared, &policy, key, &unjudged, &[]).is_none(),
                "allowed with no name learned for its destination"
            );
            assert_eq!(shared.names.learn(&policy, &answer), 1);
            let now = crate::tcp_route::rejudge(&shared, &policy, key, &unjudged, &[]);
            if check {
                // A new connection there would have its server name checked by the proxy;
                // this one cannot be.
                assert!(
                    now.is_none(),
                    "allowed by a name, its server name unchecked"
                );
                continue;
            }
            let now = now.expect("denied although its destination is api.example.com's now");
            let side = now.egress.as_ref().expect("egress side");
            assert_eq!(side.names, vec![Arc::<str>::from("api.example.com")]);
            // One the sidecar judged keeps the names it was judged with, whatever is learned
            // since.
            let judged_without = {
                let mut e = now.clone();
                e.egress.as_mut().expect("egress side").names.clear();
                e
            };
            assert!(
                crate::tcp_route::rejudge(&shared, &policy, key, &judged_without, &[]).is_none()
            );
        }
    }

    /// The client pod's cluster with a Service `t/api` at 10.96.0.50:80 (to 8080), whose
    /// EndpointSlice lists `endpoints`, and `pod` (YAML) beside the client and the server.
    fn with_service(pod: &str, endpoints: &str) -> String {
        let pod = if pod.is_empty() {
            String::new()
        } else {
            format!("---\n{pod}")
        };
        format!(
            "{PODS}{pod}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: t}}\n\
             spec: {{clusterIP: 10.96.0.50, selector: {{app: server}}, ports: [{{port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: api-1, namespace: t, labels: {{kubernetes.io/service-name: api}}}}\n\
             addressType: IPv4\nports: [{{port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
        )
    }

    #[test]
    fn a_flow_to_an_unlisted_address_on_a_node_ports_number_must_be_allowed_to_every_backend_too() {
        // "Anywhere outside the pods", a Node that lists 192.168.0.1, and the server's
        // NodePort 30080 (TCP). 169.254.20.10 is no object's: node-local DNS's address, where
        // kube-proxy answers NodePorts unless its --nodeport-addresses is set.
        let rule = "  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{port: 8080}, {port: 5300, protocol: UDP}]\n";
        let outside = PODS.replace(
            rule,
            "  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n",
        );
        let node_port = "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
             status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: t}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.50, selector: {app: server}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n";
        let admitted = |yaml: &str, trust_listed, protocol, to: &str| {
            let shared = sidecar(true, trust_listed);
            shared.current.store(Some(client_policy(yaml, 2)));
            let flow = NewFlow {
                direction: Direction::Egress,
                protocol,
                ip_protocol: if protocol == Protocol::Tcp { TCP } else { UDP },
                source: "10.0.0.1:40000".parse().expect("addr"),
                destination: to.parse().expect("addr"),
            };
            // Whether it was admitted, and its event.
            match admit(&shared, flow, Backends::Every) {
                Admission::Admitted(a) => (true, a.event),
                Admission::Refused(r) => (false, r.event),
            }
        };
        let cluster = format!("{outside}{node_port}");
        let (ok, refused) = admitted(&cluster, false, Protocol::Tcp, "169.254.20.10:30080");
        assert!(
            !ok,
            "it may lead to the server, which the client may not reach"
        );
        assert_eq!(
            refused
                .service
                .as_ref()
                .map(|s| s.name.to_string())
                .as_deref(),
            Some("t/api"),
            "{refused:?}"
        );
        let why = refused.reason.clone().unwrap_or_default();
        assert!(
            why.contains("169.254.20.10:30080 may be an address of a node")
                && why.contains("10.0.0.2:8080"),
            "{why}"
        );
        for (yaml, trust_listed, protocol, to, what) in [
            (
                &cluster,
                false,
                Protocol::Tcp,
                "169.254.20.10:30081",
                "no NodePort's number",
            ),
            (
                &cluster,
                false,
                Protocol::Udp,
                "169.254.20.10:30080",
                "a TCP NodePort only",
            ),
            (
                &cluster,
                true,
                Protocol::Tcp,
                "169.254.20.10:30080",
                "listed addresses trusted",
            ),
            (
                &outside,
                false,
                Protocol::Tcp,
                "169.254.20.10:30080",
                "no such Service",
            ),
        ] {
            let (ok, event) = admitted(yaml, trust_listed, protocol, to);
            assert!(ok && event.service.is_none(), "{what}: {event:?}");
        }
        let server_too = cluster.replace(
            "  - to: [{ipBlock",
            "  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{port: 8080}]\n  - to: [{ipBlock",
        );
        assert!(
            admitted(&server_too, false, Protocol::Tcp, "169.254.20.10:30080").0,
            "every backend allowed"
        );
        // Only this pod's own policies count: the node source-NATs what it forwards, so the
        // backend's ingress (here: denying everything, in audit mode) sees the node.
        let closed_server = format!(
            "{}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: closed, namespace: t}}\n\
             spec: {{podSelector: {{matchLabels: {{app: server}}}}, policyTypes: [Ingress]}}\n",
            server_too.replace(
                "metadata: {name: server, namespace: t, labels: {app: server}}",
                "metadata: {name: server, namespace: t, labels: {app: server}, annotations: {podwall.io/enforcement: audit}}",
            )
        );
        let (ok, event) = admitted(&closed_server, false, Protocol::Tcp, "169.254.20.10:30080");
        assert!(
            ok && event.verdict == FlowVerdict::Allowed && event.service.is_none(),
            "{event:?}"
        );
        // Allowed only under HTTP rules, which nothing would apply on a connection to the
        // address: refused.
        let http_only = format!(
            "{cluster}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: client-http, namespace: t}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n\
             \x20 - toEndpoints: [{{matchLabels: {{app: server}}}}]\n\
             \x20   toPorts: [{{ports: [{{port: '8080', protocol: TCP}}], rules: {{http: [{{method: GET, path: /public/.*}}]}}}}]\n"
        );
        let (ok, refused) = admitted(&http_only, false, Protocol::Tcp, "169.254.20.10:30080");
        assert!(!ok, "HTTP rules nothing applies");
        let why = refused.reason.unwrap_or_default();
        assert!(why.contains("only under HTTP or DNS rules"), "{why}");
        let audit = cluster.replace(
            "metadata: {name: client, namespace: t, labels: {app: client}}",
            "metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/enforcement: audit}}",
        );
        let (ok, audited) = admitted(&audit, false, Protocol::Tcp, "169.254.20.10:30080");
        assert!(ok, "audit mode lets it pass");
        assert_eq!(audited.verdict, FlowVerdict::Audit);
        assert!(
            audited
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("service t/api")),
            "{audited:?}"
        );
        assert!(
            audited.service.is_none(),
            "it went to the address, and is re-judged as one: {audited:?}"
        );
        // On the kernel path, a connection carried since before the Service was known is
        // judged by the backends it may lead to from then on.
        let shared = client_sidecar();
        let before = client_policy(&outside, 2);
        let key = flow_key("10.0.0.1:40000", "169.254.20.10:30080");
        let open = crate::tcp_route::unjudged(&before, key);
        assert!(crate::tcp_route::rejudge(&shared, &before, key, &open, &[]).is_some());
        let after = client_policy(&cluster, 3);
        assert!(crate::tcp_route::rejudge(&shared, &after, key, &open, &[]).is_none());
        let after = client_policy(&server_too, 4);
        assert!(crate::tcp_route::rejudge(&shared, &after, key, &open, &[]).is_some());
    }

    #[test]
    fn a_kernel_carried_connection_to_an_unlisted_address_is_revoked_when_a_backend_that_left_is_denied()
     {
        // 169.254.20.10:30080 may be a node's, where the NodePort leads to 10.0.0.2 or 10.0.0.3
        // (both allowed when the connection opened). 10.0.0.3 leaves the Service, then policy
        // stops allowing it: the node may have sent the connection there.
        let node_port = |endpoints: &str, to_other: &str| {
            format!(
                "{}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: link-local, namespace: t}}\n\
                 spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress:\n\
                 \x20 - to: [{{ipBlock: {{cidr: 169.254.0.0/16}}}}]\n{to_other}",
                with_service(
                    "apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: t, labels: {app: other}}\nstatus: {podIP: 10.0.0.3}\n",
                    endpoints,
                )
                .replace("spec: {clusterIP", "spec: {type: NodePort, clusterIP")
                .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30080}")
            )
        };
        let other =
            "  - to: [{podSelector: {matchLabels: {app: other}}}]\n    ports: [{port: 8080}]\n";
        let both = "- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]\n";
        let one =
            "- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]\n  conditions: {ready: false}\n";
        let shared = client_sidecar();
        let before = client_policy(&node_port(both, other), 2);
        let key = flow_key("10.0.0.1:40000", "169.254.20.10:30080");
        let open = crate::tcp_route::unjudged(&before, key);
        let seen = crate::tcp_route::service_backends(&before, false, key.1);
        assert_eq!(
            seen.len(),
            2,
            "what the record keeps, as the judge admits it"
        );
        assert!(crate::tcp_route::rejudge(&shared, &before, key, &open, &seen).is_some());
        assert!(
            crate::tcp_route::service_backends(&before, true, key.1).is_empty(),
            "trusting the listed addresses, it leads nowhere"
        );
        let after = client_policy(&node_port(one, ""), 3);
        assert!(
            crate::tcp_route::rejudge(&shared, &after, key, &open, &seen).is_none(),
            "denied for the backend that left"
        );
        assert!(
            crate::tcp_route::rejudge(&shared, &after, key, &open, &[]).is_some(),
            "which the ready one alone would not say"
        );
    }

    #[test]
    fn a_kernel_carried_connection_to_a_node_port_is_judged_by_its_backends_once_known() {
        // Admitted while the sidecar's view held no Service there: the node's address, which
        // "anywhere outside the pods" allows. Then the view learns the NodePort.
        let rule = "  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{port: 8080}, {port: 5300, protocol: UDP}]\n";
        assert!(PODS.contains(rule));
        let outside = PODS.replace(
            rule,
            "  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n",
        );
        let shared = client_sidecar();
        let before = client_policy(&outside, 2);
        shared.current.store(Some(before.clone()));
        let key = flow_key("10.0.0.1:40000", "192.168.0.1:30080");
        let open = crate::tcp_route::unjudged(&before, key);
        assert!(open.service.is_none(), "{open:?}");
        assert!(crate::tcp_route::rejudge(&shared, &before, key, &open, &[]).is_some());
        let node_port = "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
             status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: t}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.50, selector: {app: server}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n";
        let after = client_policy(&format!("{outside}{node_port}"), 3);
        shared.current.store(Some(after.clone()));
        assert!(
            crate::tcp_route::rejudge(&shared, &after, key, &open, &[]).is_none(),
            "the node's 30080 leads to the server, which the client may not reach"
        );
    }

    #[test]
    fn a_service_connection_is_revoked_when_policy_denies_a_backend_that_left_the_service() {
        // The client's connection to the Service's virtual IP went to one of its two backends,
        // which the node chose. The second leaves the Service (not ready), then policy stops
        // allowing it: the connection may be the one to it, so it is denied. Unless the pod is
        // gone (a rolling update: its connections went with it) or its address is another
        // pod's now.
        let backend = |name: &str, app: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: t, labels: {{app: {app}}}}}\nstatus: {{podIP: 10.0.0.3}}\n"
            )
        };
        let both = "- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]\n";
        let one_ready =
            "- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]\n  conditions: {ready: false}\n";
        let one = "- addresses: [10.0.0.2]\n";
        let shared = client_sidecar();
        let before = client_policy(&with_service(&backend("other", "server"), both), 2);
        shared.current.store(Some(before.clone()));
        let key = flow_key("10.0.0.1:40000", "10.96.0.50:80");
        let open = crate::tcp_route::unjudged(&before, key);
        assert!(open.service.is_some(), "{open:?}");
        // What the record keeps, as the judge admits it.
        let seen = crate::tcp_route::service_backends(&before, false, key.1);
        assert_eq!(seen.len(), 2);
        let rejudged = |yaml: &str, generation| {
            let after = client_policy(yaml, generation);
            shared.current.store(Some(after.clone()));
            (
                crate::tcp_route::rejudge(&shared, &after, key, &open, &seen).is_some(),
                crate::tcp_route::rejudge(&shared, &after, key, &open, &[]).is_some(),
            )
        };
        // Now only 10.0.0.2 may be reached on 8080, and 10.0.0.3 is still the same pod.
        let narrowed = with_service(&backend("other", "server"), one_ready).replace(
            "  - to: [{podSelector: {matchLabels: {app: server}}}]",
            "  - to: [{ipBlock: {cidr: 10.0.0.2/32}}]",
        );
        assert_eq!(
            rejudged(&narrowed, 3),
            (false, true),
            "denied for the backend that left, which the ready ones alone would not say"
        );
        // The pod deleted: the policy's podSelector no longer matches its address, which is
        // no reason to end the connections that went elsewhere.
        assert_eq!(
            rejudged(&with_service("", one), 4),
            (true, true),
            "a rolling update ended the Service's connections"
        );
        // Its address given to a pod policy does not allow, which was never a backend.
        assert_eq!(
            rejudged(&with_service(&backend("newcomer", "stranger"), one), 5),
            (true, true),
            "a stranger at a former backend's address ended the Service's connections"
        );
    }

    #[test]
    fn a_service_connection_goes_to_the_proxy_when_http_rules_apply_to_any_of_its_backends() {
        // 10.0.0.2 (app: server) is allowed at L4; 10.0.0.3 (app: api) only under HTTP rules.
        // The node picks either for a connection to the virtual IP: the proxy must take it,
        // whichever backend the verdict admitted describes.
        let api = "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: t, labels: {app: api}}\nstatus: {podIP: 10.0.0.3}\n\
                   ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client-api, namespace: t}\n\
                   spec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n\
                   \x20 - toEndpoints: [{matchLabels: {app: api}}]\n\
                   \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: GET, path: /public/.*}]}}]\n";
        let route_to_vip = |endpoints: &str, sport: u16| {
            let shared = client_sidecar();
            let policy = client_policy(&with_service(api, endpoints), 2);
            shared.current.store(Some(policy));
            crate::tcp_route::route(
                &shared,
                crate::admit::NewFlow {
                    direction: Direction::Egress,
                    protocol: Protocol::Tcp,
                    ip_protocol: TCP,
                    source: SocketAddr::from(([10, 0, 0, 1], sport)),
                    destination: "10.96.0.50:80".parse().expect("addr"),
                },
                crate::tcp_route::Syn {
                    seq: 1,
                    on_judged_entry: false,
                    reopened: false,
                },
            )
        };
        use crate::tcp_route::Route;
        assert_eq!(
            route_to_vip("- addresses: [10.0.0.2]\n", 30000),
            Route::Kernel,
            "no HTTP rules apply to its one backend"
        );
        assert_eq!(
            route_to_vip("- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]\n", 30001),
            Route::Proxy,
            "the kernel would carry it to 10.0.0.3 unread"
        );
    }

    #[test]
    fn a_freed_socket_ends_only_the_kernel_carried_connection_it_was_the_pods_end_of() {
        let shared = client_sidecar();
        let (client, server) = client_connects(&shared, 20000);
        assert!(shared.kernel_flows.lock().contains_key(&(client, server)));
        let freed = |local, remote| crate::sock_diag::SocketEnd {
            local,
            remote,
            bytes: Some((1, 2)),
            established: Some(true),
        };
        // A socket the app bound to the server's address (IPV6_FREEBIND takes no capability)
        // and aimed at the client's: the wrong way round for this egress connection.
        crate::tcp_route::socket_ended(&shared, freed(server, client));
        // One on an address that is not the pod's.
        crate::tcp_route::socket_ended(
            &shared,
            freed("10.0.0.9:20000".parse().expect("addr"), server),
        );
        assert!(
            shared.kernel_flows.lock().contains_key(&(client, server)),
            "ended by a socket that was not its end"
        );
        crate::tcp_route::socket_ended(&shared, freed(client, server));
        assert!(!shared.kernel_flows.lock().contains_key(&(client, server)));
        // A connection refused or never answered: its socket's handshake never completed, and
        // no other socket holds its addresses (a decoy's would be looked into): its end.
        let (client, server) = client_connects(&shared, 20002);
        crate::tcp_route::socket_ended(
            &shared,
            crate::sock_diag::SocketEnd {
                established: Some(false),
                bytes: Some((0, 0)),
                ..freed(client, server)
            },
        );
        assert!(!shared.kernel_flows.lock().contains_key(&(client, server)));
    }

    #[test]
    fn a_kernel_carried_connection_is_open_in_the_metrics_until_its_end_is_written() {
        let shared = client_sidecar();
        let open = || shared.metrics(Direction::Egress).open.get();
        let first = client_connects(&shared, 20011);
        let _second = client_connects(&shared, 20012);
        assert_eq!(open(), 2);
        // The same addresses again (the first's end not heard yet): one replaces the other.
        client_connects(&shared, 20011);
        assert_eq!(open(), 2);
        let admitted = shared
            .kernel_flows
            .lock()
            .get(&first)
            .map(|f| f.started)
            .expect("admitted");
        crate::tcp_route::ended_if_admitted_at(&shared, first, admitted);
        assert_eq!(open(), 1);
        assert_eq!(shared.metrics(Direction::Ingress).open.get(), 0);
    }

    #[test]
    fn a_lookup_that_found_no_entry_ends_the_connection_it_looked_up_not_a_newer_one_on_its_addresses()
     {
        let shared = client_sidecar();
        let key = client_connects(&shared, 20001);
        let admitted = shared
            .kernel_flows
            .lock()
            .get(&key)
            .map(|f| f.started)
            .expect("admitted");
        // The lookup was for an older connection on the same addresses; this one's SYN may
        // not be in conntrack yet.
        let older = admitted
            .checked_sub(std::time::Duration::from_secs(4))
            .expect("up for 4 s");
        crate::tcp_route::ended_if_admitted_at(&shared, key, older);
        assert!(
            shared.kernel_flows.lock().contains_key(&key),
            "a newer one ended"
        );
        crate::tcp_route::ended_if_admitted_at(&shared, key, admitted);
        assert!(!shared.kernel_flows.lock().contains_key(&key));
    }

    /// Judges queue messages `packets` as the queue reads them, in batches: the first 64 before
    /// counting (they grow what grows once: the connection table, the counters' labels), then
    /// the rest. How many of those were judged, and what judging them allocated.
    fn judged_counting_allocations(
        shared: &Arc<Shared>,
        packets: &[Vec<u8>],
    ) -> (usize, allocation_counter::AllocationInfo) {
        let mut verdicts = Vec::with_capacity(crate::nfqueue::BATCH * 64);
        let mut judge = |packet: crate::nfqueue::Packet<'_>| verdict(shared, packet);
        crate::nfqueue::judge_datagrams(
            packets[..64].iter().map(Vec::as_slice),
            1337,
            &mut verdicts,
            &mut judge,
        );
        let mut judged = 0;
        let measured = allocation_counter::measure(|| {
            for batch in packets[64..].chunks(crate::nfqueue::BATCH) {
                judged += crate::nfqueue::judge_datagrams(
                    batch.iter().map(Vec::as_slice),
                    1337,
                    &mut verdicts,
                    &mut judge,
                );
            }
        });
        (judged, measured)
    }

    #[test]
    fn judging_queued_packets_and_writing_their_verdicts_allocates_nothing_per_packet() {
        let shared = client_sidecar();
        // Half new TCP connections (the kernel path: each is admitted, remembered and its start
        // written), half new UDP flows, one denied of each; read as the queue reads them.
        let packets: Vec<Vec<u8>> = (0..640u32)
            .map(|i| {
                let (protocol, dport) = match i % 64 {
                    0 => (TCP, 9001),
                    1 => (UDP, 9001),
                    n if n % 2 == 0 => (TCP, 8080),
                    _ => (UDP, 5300),
                };
                let sport = 20000 + i as u16;
                crate::nfqueue::packet_message(
                    1337,
                    i,
                    HOOK_LOCAL_OUT,
                    &from_client(protocol, sport, dport),
                )
            })
            .collect();
        let (judged, measured) = judged_counting_allocations(&shared, &packets);
        assert_eq!(judged, 576);
        // The flow log's blocks (one per 31 events) and the connection table's few doublings.
        let bound = 576 / 31 + 1 + 8;
        assert!(
            measured.count_total <= bound,
            "{} allocations for {judged} packets (at most {bound})",
            measured.count_total
        );
        // Every one judged as policy says: kernel-carried connections remembered.
        assert_eq!(shared.kernel_flows.lock().len(), 320 - 10);
    }

    #[test]
    fn judging_connections_to_a_service_allocates_only_each_ones_backend_list() {
        // Most connections in a cluster go to a Service's virtual IP: each kernel-carried one
        // keeps the backends the Service had (what revocation judges if one leaves it), and
        // nothing else is allocated for it: its event names the Service by a shared name.
        let shared = client_sidecar();
        let second = "apiVersion: v1\nkind: Pod\nmetadata: {name: server-2, namespace: t, labels: {app: server}}\nstatus: {podIP: 10.0.0.3}\n";
        let policy = client_policy(
            &with_service(second, "- addresses: [10.0.0.2]\n- addresses: [10.0.0.3]\n"),
            2,
        );
        shared.current.store(Some(policy));
        let packets: Vec<Vec<u8>> = (0..320u32)
            .map(|i| {
                let mut syn = ipv4_tcp(30000 + i as u16, 80, TCP_SYN);
                syn[16..20].copy_from_slice(&[10, 96, 0, 50]);
                crate::nfqueue::packet_message(1337, i, HOOK_LOCAL_OUT, &syn)
            })
            .collect();
        let (judged, measured) = judged_counting_allocations(&shared, &packets);
        assert_eq!(judged, 256);
        let open = shared.kernel_flows.lock();
        assert_eq!(open.len(), 320, "every one carried by the kernel");
        assert!(open.values().all(|f| f.backends.len() == 2));
        drop(open);
        // One backend list each, the flow log's blocks, the table's few doublings.
        let bound = 256 + 256 / 31 + 1 + 8;
        assert!(
            measured.count_total <= bound,
            "{} allocations for {judged} connections (at most {bound})",
            measured.count_total
        );
    }

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, UDP, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0, 16, 0, 0]);
        p.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        p
    }

    #[test]
    fn ipv4_udp_gives_addresses_and_ports() {
        let p = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 5353);
        assert_eq!(
            parse(&p),
            Some(FlowStart {
                protocol: Protocol::Udp,
                ip_protocol: UDP,
                source: "10.0.0.1:40000".parse().expect("addr"),
                destination: "10.0.0.2:5353".parse().expect("addr"),
                syn_seq: 0,
            })
        );
    }

    /// An IPv4 TCP segment with `flags`, header only.
    fn ipv4_tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, TCP, 0, 0];
        p.extend([10, 0, 0, 1]);
        p.extend([10, 0, 0, 2]);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn a_tcp_syn_is_a_flow_start_and_no_other_tcp_segment_is() {
        assert_eq!(
            parse(&ipv4_tcp(40000, 443, TCP_SYN)),
            Some(FlowStart {
                protocol: Protocol::Tcp,
                ip_protocol: TCP,
                source: "10.0.0.1:40000".parse().expect("addr"),
                destination: "10.0.0.2:443".parse().expect("addr"),
                syn_seq: 1,
            })
        );
        for (flags, what) in [
            (TCP_SYN | TCP_ACK, "SYN-ACK"),
            (TCP_ACK, "ACK"),
            (0x04, "RST"),
            (0x01 | TCP_ACK, "FIN"),
        ] {
            assert_eq!(parse(&ipv4_tcp(1, 2, flags)), None, "{what}");
        }
        let truncated = &ipv4_tcp(1, 2, TCP_SYN)[..30];
        assert_eq!(parse(truncated), None);
    }

    #[test]
    fn later_ipv4_fragments_and_short_tcp_are_not_read_and_every_other_protocol_is_a_portless_flow()
    {
        let mut fragment = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        fragment[7] = 8; // fragment offset 8 * 8 bytes
        assert_eq!(parse(&fragment), None);
        let mut tcp = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        tcp[9] = TCP;
        assert_eq!(parse(&tcp), None, "16 bytes: no whole TCP header");
        for (number, what) in [
            (136, "UDP-Lite"),
            (47, "GRE"),
            (50, "ESP"),
            (253, "experimental"),
        ] {
            let mut p = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
            p[9] = number;
            assert_eq!(
                parse(&p),
                Some(FlowStart {
                    protocol: Protocol::Other,
                    ip_protocol: number,
                    source: "10.0.0.1:0".parse().expect("addr"),
                    destination: "10.0.0.2:0".parse().expect("addr"),
                    syn_seq: 0,
                }),
                "{what}"
            );
        }
        let mut timestamp = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 0x0d00, 0);
        timestamp[9] = ICMP;
        assert_eq!(
            parse(&timestamp).map(|f| f.protocol),
            Some(Protocol::Other),
            "an ICMP request that is not ping"
        );
        assert_eq!(parse(&[0x45, 0, 0]), None, "truncated");
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn echo_requests_are_icmp_flows_without_ports() {
        let mut v4 = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 0x0800, 0);
        v4[9] = ICMP;
        assert_eq!(
            parse(&v4),
            Some(FlowStart {
                protocol: Protocol::Icmp,
                ip_protocol: ICMP,
                source: "10.0.0.1:0".parse().expect("addr"),
                destination: "10.0.0.2:0".parse().expect("addr"),
                syn_seq: 0,
            })
        );
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, ICMPV6, 64];
        v6.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        v6.extend([ECHO_REQUEST_V6, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            parse(&v6).map(|f| (f.protocol, f.destination)),
            Some((Protocol::Icmp, "[fd00::2]:0".parse().expect("addr")))
        );
        v6[40] = 139; // node information query: not ping
        assert_eq!(parse(&v6).map(|f| f.protocol), Some(Protocol::Other));
    }

    #[test]
    fn conntrack_entries_map_to_flows_by_which_end_is_the_pod() {
        let own: Vec<IpAddr> = vec!["10.79.0.1".parse().expect("ip")];
        let entry = |src: &str, dst: &str, protocol, dport, icmp_type| Entry {
            family: 2,
            protocol,
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            sport: 40000,
            dport,
            icmp_type,
            mark: 0,
            bytes: None,
            tcp_state: None,
            key: Vec::new(),
        };
        let out = flow_of(&entry("10.79.0.1", "10.79.0.3", UDP, 5300, None), &own);
        assert_eq!(
            out.map(|(d, f)| (d, f.protocol)),
            Some((Direction::Egress, Protocol::Udp))
        );
        let inbound = flow_of(&entry("10.79.0.5", "10.79.0.1", ICMP, 0, Some(8)), &own);
        assert_eq!(
            inbound.map(|(d, f)| (d, f.protocol)),
            Some((Direction::Ingress, Protocol::Icmp))
        );
        assert_eq!(
            flow_of(&entry("10.79.0.1", "10.96.0.10", UDP, 53, None), &own),
            None,
            "DNS is the DNS proxy's"
        );
        assert_eq!(
            flow_of(&entry("10.79.0.1", "10.79.0.3", 6, 80, None), &own),
            None,
            "TCP"
        );
        assert_eq!(
            flow_of(&entry("10.79.0.1", "10.79.0.3", 136, 0, None), &own).map(|(d, f)| (
                d,
                f.protocol,
                f.ip_protocol
            )),
            Some((Direction::Egress, Protocol::Other, 136)),
            "UDP-Lite"
        );
        assert_eq!(
            flow_of(&entry("127.0.0.1", "127.0.0.1", UDP, 9, None), &own),
            None,
            "loopback"
        );
    }

    #[test]
    fn ipv6_sctp_behind_an_extension_header_gives_its_ports() {
        let mut p = vec![0x60, 0, 0, 0, 0, 20, 60, 64]; // next header: destination options
        p.extend(
            "fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        p.extend(
            "fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        p.extend([SCTP, 0, 0, 0, 0, 0, 0, 0]); // 8-byte destination options header
        p.extend(36412u16.to_be_bytes());
        p.extend(38412u16.to_be_bytes());
        p.extend([0; 8]);
        assert_eq!(
            parse(&p),
            Some(FlowStart {
                protocol: Protocol::Sctp,
                ip_protocol: SCTP,
                source: "[fd00::1]:36412".parse().expect("addr"),
                destination: "[fd00::2]:38412".parse().expect("addr"),
                syn_seq: 0,
            })
        );
    }

    /// An IPv6 header from fd00::1 to fd00::2 whose next header is `next`.
    fn ipv6_header(next: u8, payload_len: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, payload_len, next, 64];
        p.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p
    }

    #[test]
    fn ipv6_udp_and_tcp_behind_an_authentication_header_are_judged_by_their_ports() {
        // AH's length field counts 4-octet units less 2: 4 means 24 bytes (12 of ICV).
        let ah = |next: u8| {
            let mut h = vec![next, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
            h.extend([0; 12]);
            h
        };
        let packet = |next: u8, l4: &[u8]| {
            let mut p = ipv6_header(51, 0);
            p.extend(ah(next));
            p.extend(l4);
            p
        };
        let udp = packet(UDP, &[0x9c, 0x40, 0x14, 0xd4, 0, 8, 0, 0]);
        assert_eq!(
            parse(&udp),
            Some(FlowStart {
                protocol: Protocol::Udp,
                ip_protocol: UDP,
                source: "[fd00::1]:40000".parse().expect("addr"),
                destination: "[fd00::2]:5332".parse().expect("addr"),
                syn_seq: 0,
            })
        );
        let mut syn = vec![
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 7, 0, 0, 0, 0, 0x50, TCP_SYN,
        ];
        syn.extend([0xff, 0xff, 0, 0, 0, 0]);
        let tcp = parse(&packet(TCP, &syn)).expect("a TCP SYN");
        assert_eq!(
            (tcp.protocol, tcp.destination.port(), tcp.syn_seq),
            (Protocol::Tcp, 443, 7)
        );
        // Cut short inside the header: no flow to judge.
        assert_eq!(parse(&packet(UDP, &[])[..50]), None);
    }

    #[test]
    fn an_ipv6_link_local_peer_is_refused_though_an_ip_block_covers_it() {
        // "Anywhere" by ipBlock covers fe80::/10, which reaches whoever is on the link.
        let anywhere = format!(
            "{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: anywhere, namespace: t}}\nspec:\n  podSelector: {{matchLabels: {{app: client}}}}\n\
             \x20 policyTypes: [Egress, Ingress]\n  egress: [{{to: [{{ipBlock: {{cidr: '::/0'}}}}]}}]\n\
             \x20 ingress: [{{from: [{{ipBlock: {{cidr: '::/0'}}}}]}}]\n"
        );
        let shared = client_sidecar();
        shared.current.store(Some(client_policy(&anywhere, 2)));
        let admitted = |direction, source: &str, destination: &str| {
            let flow = NewFlow {
                direction,
                protocol: Protocol::Udp,
                ip_protocol: UDP,
                source: source.parse().expect("addr"),
                destination: destination.parse().expect("addr"),
            };
            match admit(&shared, flow, Backends::Every) {
                Admission::Admitted(_) => Ok(()),
                Admission::Refused(r) => Err(r.event.reason.unwrap_or_default()),
            }
        };
        assert_eq!(
            admitted(Direction::Egress, "[fd00::1]:40000", "[2001:db8::5]:5300"),
            Ok(())
        );
        for (direction, source, destination) in [
            (Direction::Egress, "[fd00::1]:40000", "[fe80::5]:5300"),
            (Direction::Ingress, "[fe80::5]:40000", "[fd00::1]:5300"),
            // Multicast, which the rules drop first, and the DNS proxy asks here too.
            (Direction::Egress, "[fd00::1]:40000", "[ff0e::1]:5300"),
        ] {
            let judged = admitted(direction, source, destination);
            assert!(
                judged.as_ref().is_err_and(|why| why.contains("link-local")),
                "{source} -> {destination}: {judged:?}"
            );
        }
        // A pod in audit mode passes it, as what enforcing would refuse.
        let audited = anywhere.replace(
            "metadata: {name: client, namespace: t, labels: {app: client}}",
            "metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/enforcement: audit}}",
        );
        assert_ne!(audited, anywhere);
        shared.current.store(Some(client_policy(&audited, 3)));
        let flow = NewFlow {
            direction: Direction::Egress,
            protocol: Protocol::Udp,
            ip_protocol: UDP,
            source: "[fd00::1]:40000".parse().expect("addr"),
            destination: "[fe80::5]:5300".parse().expect("addr"),
        };
        match admit(&shared, flow, Backends::Every) {
            Admission::Admitted(a) => {
                assert_eq!(a.event.verdict, FlowVerdict::Audit);
                assert!(a.event.reason.is_some_and(|r| r.contains("link-local")));
            }
            Admission::Refused(r) => panic!("refused in audit mode: {:?}", r.event.reason),
        }
    }

    #[test]
    fn a_source_routed_packet_is_dropped_not_judged_by_its_first_hop() {
        // IPv6: a segment routing header (type 4) with a segment left after the header's
        // destination, then UDP.
        let v6 = ipv6_header(43, 32);
        let routing = |segments_left: u8| {
            let mut h = vec![UDP, 2, 4, segments_left, 0, 0, 0, 0];
            h.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
            h
        };
        let udp = [0x30, 0x39, 0, 53, 0, 8, 0, 0];
        let with = |segments_left| {
            let mut p = v6.clone();
            p.extend(routing(segments_left));
            p.extend(udp);
            p
        };
        assert_eq!(parse(&with(1)), None, "on to another address");
        // With none left, the header's destination is where it goes.
        assert_eq!(
            parse(&with(0)).map(|f| f.destination),
            Some("[fd00::2]:53".parse().expect("addr"))
        );
        // IPv4: a NOP, then a loose source route (and a strict one).
        for route in [131u8, 137] {
            let mut v4 = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 53);
            v4[0] = 0x47;
            v4.splice(20..20, [1, route, 7, 4, 10, 0, 0, 9]);
            assert_eq!(parse(&v4), None, "option {route}");
        }
        // Other options (a timestamp) do not change where a packet goes.
        let mut v4 = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 53);
        v4[0] = 0x46;
        v4.splice(20..20, [68, 4, 5, 0]);
        assert!(parse(&v4).is_some());
        // Options that do not parse.
        let mut v4 = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 53);
        v4[0] = 0x46;
        v4.splice(20..20, [68, 1, 0, 0]);
        assert_eq!(parse(&v4), None);
    }
}

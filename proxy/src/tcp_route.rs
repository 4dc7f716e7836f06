//! The kernel path for TCP (`proxy init --l4-path kernel`): which path carries a new
//! connection, decided on its first packet (the SYN), which the init rules queue to the packet
//! filter in both directions.
//!
//! The connection is admitted as every flow is ([`crate::admit`]); then:
//!
//! - allowed (or passing in audit mode), and nothing about it needs its bytes: the kernel
//!   carries it (`init::KERNEL_MARK`, kept as the connection's mark): the proxy never sees it,
//!   and its flow event is written as it starts;
//! - otherwise the proxy takes it (`init::PROXY_MARK`: nat redirects it, or TPROXY for
//!   inbound) and judges, relays and reports it as on the proxy path. That is a refused
//!   connection (the proxy resets it and says why, as it always has: a reset made by the
//!   kernel's REJECT would have to pass the loopback anti-spoofing rules, and would be a
//!   second way of refusing), one under this pod's HTTP rules, one only toFQDNs rules allow
//!   (its server name is checked), one to a port the pod observes (`podwall.io/observe-http`),
//!   and one to a Service virtual IP that policy does not allow to every ready backend (the
//!   proxy picks an allowed backend, or refuses when there is none; kube-proxy would pick
//!   any).

use std::collections::hash_map::Entry as Slot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use podwall_policy::{Direction, Protocol};

use crate::admit::{
    Admission, Admitted, Backends, NewFlow, admit, admit_under, describe, has_own_http, judge,
};
use crate::conntrack::{Conntrack, Entry, TCP_CLOSE, TCP_TIME_WAIT};
use crate::flow::{FlowEvent, FlowPhase};
use crate::kernel_flows::{Backend, FlowKey, KernelFlow};
use crate::pod_policy::{FlowVerdict, PodPolicy};
use crate::shared::Shared;
use crate::sock_diag::{Ends, SocketEnd};

/// The IP protocol number of TCP.
const TCP: u8 = 6;
/// The error of a connection a policy change ended.
const REVOKED: &str = "reset: a policy change no longer allows this connection";

/// The path a new TCP connection takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The kernel carries it.
    Kernel,
    /// The proxy takes it.
    Proxy,
    /// Neither: a SYN on an entry the kernel carries already, which may not keep that path
    /// (the policy changed since, or a new connection on the same port needs the proxy). Nat
    /// was decided for the entry at its first SYN, so the proxy cannot take it: it is dropped,
    /// and a policy change that denies the entry removes it.
    Drop,
}

impl Route {
    /// The packet mark that tells the init rules (`None`: dropped).
    pub(crate) fn mark(self) -> Option<u32> {
        match self {
            Route::Kernel => Some(crate::init::KERNEL_MARK),
            Route::Proxy => Some(crate::init::PROXY_MARK),
            Route::Drop => None,
        }
    }
}

/// What the judge knows of a TCP SYN besides its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Syn {
    /// Its initial sequence number.
    pub seq: u32,
    /// The rules found it on an entry the judge gave the kernel that is still unanswered
    /// (`init::SENT_AGAIN_MARK`).
    pub on_judged_entry: bool,
    /// The rules found it on such an entry that conntrack does not call NEW and that never got
    /// established (`init::REOPENED_MARK`): an answer went by and was lost, or the handshake
    /// was reset and the 4-tuple reused at once. Only the connection's own SYN sent again
    /// passes. (On an established connection's entry the rules drop it.)
    pub reopened: bool,
}

/// Decides the path of a new TCP connection from its SYN, writing the flow event and counting
/// the verdict of one the proxy will not see.
///
/// A SYN sent again (its answer was lost) is judged again under the policy of now, but when it
/// keeps the kernel path it is neither counted nor written a second time: it is on the entry
/// the judge gave the kernel, and its sequence number is the one the connection's record holds.
/// Anything else is a connection of its own: one on a new entry, or a new socket on the same
/// addresses while the old entry is still unanswered (another initial sequence number), or a
/// SYN an app forged with the old number once the entry is gone (not on a judged entry).
pub(crate) fn route(shared: &Arc<Shared>, flow: NewFlow, syn: Syn) -> Route {
    match choose(shared, flow, syn) {
        Route::Proxy if syn.on_judged_entry || syn.reopened => Route::Drop,
        route => route,
    }
}

fn choose(shared: &Arc<Shared>, flow: NewFlow, syn: Syn) -> Route {
    // Without a policy the proxy refuses it (fail closed).
    let Some(policy) = shared.policy() else {
        return Route::Proxy;
    };
    if !pods_own_end(&policy, &flow) {
        return Route::Proxy;
    }
    // A connection into the pod to one of the sidecar's own ports is the proxy's to refuse
    // (the init rules drop what was not redirected there, so the kernel would never carry it,
    // and its entry would never be removed).
    if flow.direction == Direction::Ingress && shared.own_ports.contains(&flow.destination.port()) {
        return Route::Proxy;
    }
    match admit_under(shared, policy, flow, Backends::Every) {
        // Refused, or a Service virtual IP not every backend of which policy allows.
        Admission::Refused(_) => Route::Proxy,
        Admission::Admitted(admitted) if needs_proxy(&admitted, shared, &flow) => Route::Proxy,
        Admission::Admitted(mut admitted) => {
            // Ends are heard on the kernel path only (from the start with `proxy run
            // --l4-path kernel`; else from this first connection, before its socket can end).
            watch_ends(shared);
            admitted.event.phase = Some(FlowPhase::Start);
            // Its end, and every policy change, find it by the addresses conntrack keeps.
            let key = (flow.source, flow.destination);
            let backends = service_backends(
                &admitted.policy,
                shared.node_ports_only_at_listed_addresses,
                flow.destination,
            );
            let replaced = {
                let mut open = shared.kernel_flows.lock();
                let known = open.get(&key);
                let sent_again = (syn.on_judged_entry || syn.reopened)
                    && known.is_some_and(|known| {
                        known.event.direction == flow.direction && known.syn_seq == Some(syn.seq)
                    });
                if sent_again {
                    return Route::Kernel;
                }
                // A new connection on a reopened entry: it waits until conntrack forgets the
                // old one.
                if syn.reopened {
                    return Route::Drop;
                }
                if known.is_none() && open.len() >= crate::kernel_flows::MAX_OPEN {
                    drop(open);
                    tracing::warn!(
                        max = crate::kernel_flows::MAX_OPEN,
                        "as many kernel-carried connections are open as are tracked: this one goes through the proxy"
                    );
                    return Route::Proxy;
                }
                shared.metrics(flow.direction).open.inc();
                open.insert(
                    key,
                    KernelFlow::new(admitted.event.clone(), Some(syn.seq), backends),
                )
            };
            // A connection on the same addresses whose end was not heard yet: it is over (its
            // socket is closed, or its entry gone), and its end is written now, without bytes.
            if let Some(old) = replaced {
                write_end(shared, key, old, None);
            }
            shared
                .metrics(admitted.event.direction)
                .verdict(admitted.event.verdict);
            shared.flows.emit(admitted.event);
            Route::Kernel
        }
    }
}

/// Whether the pod's end of the connection (the source of an egress one, the destination of
/// an ingress one) is an address of the pod. An app may open a connection from any address
/// (`IP_FREEBIND` takes no capability); the egress rules let a kernel-carried connection's
/// packets out without looking at their source, so such a connection is never the kernel's.
/// The proxy takes it, and connects from the pod's own address if it is allowed.
fn pods_own_end(policy: &PodPolicy, flow: &NewFlow) -> bool {
    let end = match flow.direction {
        Direction::Egress => flow.source.ip(),
        Direction::Ingress => flow.destination.ip(),
    };
    policy.engine.state().pod(policy.me).ips.contains(&end)
}

/// Whether deciding or reporting the connection takes its bytes: as the proxy decides it.
fn needs_proxy(a: &Admitted, shared: &Shared, flow: &NewFlow) -> bool {
    has_own_http(&a.verdict, a.event.direction)
        || a.allowed_by_names_only(shared.check_server_name).is_some()
        || a.observed()
        || some_backend_has_http_rules(a, flow)
}

/// A connection to a Service's virtual IP goes to whichever ready backend the node picks, and
/// the verdict admitted describes one of them: when HTTP rules of this pod apply to any, the
/// proxy takes the connection (it picks the backend itself and applies that one's rules),
/// which the kernel would carry to a backend whose rules nobody applied.
fn some_backend_has_http_rules(a: &Admitted, flow: &NewFlow) -> bool {
    if a.event.service.is_none() {
        return false;
    }
    let state = a.policy.engine.state();
    let Some(service) = state.services.lookup(
        flow.destination.ip(),
        flow.destination.port(),
        Protocol::Tcp,
    ) else {
        return false;
    };
    service.backends.iter().any(|&(ip, port)| {
        let verdict = judge(
            &a.policy,
            flow.direction,
            flow.source,
            SocketAddr::new(ip, port),
            Protocol::Tcp,
            &a.names,
        );
        has_own_http(&verdict, flow.direction)
    })
}

/// The verdict `policy` gives an open kernel-carried connection: its event described anew, or
/// `None` when it denies it. A Service's is judged for every ready backend again; any other
/// with the toFQDNs names it was allowed for (their expiry does not end it, as on the proxy
/// path), or, never judged by this sidecar (taken in after a restart, or without a record),
/// with those its destination is valid for now, as a new connection would be.
pub(crate) fn rejudge(
    shared: &Shared,
    policy: &Arc<PodPolicy>,
    (source, destination): FlowKey,
    open: &FlowEvent,
    seen: &[Backend],
) -> Option<FlowEvent> {
    let direction = open.direction;
    // As admission refuses it (a pod leaving audit mode ends it).
    if crate::admit::link_wide(direction, source.ip(), destination.ip()) && !policy.own_audit() {
        return None;
    }
    // A Service's by what it was admitted as, or by what its destination is now: a connection
    // admitted before the Service (or the node its NodePort is at) was known is judged by the
    // backends it leads to from then on.
    let service = open.service.is_some()
        || (direction == Direction::Egress
            && policy
                .engine
                .state()
                .services
                .lookup(destination.ip(), destination.port(), Protocol::Tcp)
                .is_some());
    // A backend that left the Service while the connection was open may be the one the node
    // gave it: while the same pod holds its address, policy must still allow it too. (Those
    // still ready are judged with the rest, below.)
    let gone_denied = !seen.is_empty() && {
        let now = leads_to(
            policy,
            shared.node_ports_only_at_listed_addresses,
            destination,
        )
        .map_or(&[][..], |s| &s.backends);
        seen.iter().any(|b| {
            now.binary_search(&(b.ip, b.port)).is_err()
                && pod_at(policy, b.ip) == b.pod
                && !policy.allows(Direction::Egress, b.ip, Protocol::Tcp, b.port, &[])
        })
    };
    if service {
        let flow = NewFlow {
            direction,
            protocol: Protocol::Tcp,
            ip_protocol: TCP,
            source,
            destination,
        };
        return match admit(shared, flow, Backends::Every) {
            Admission::Admitted(a) if !gone_denied => Some(a.event),
            Admission::Admitted(_) | Admission::Refused(_) => None,
        };
    }
    let learned = match &open.egress {
        Some(judged) => judged.names.clone(),
        None if !shared.check_server_name => {
            crate::admit::learned_now(shared, policy, direction, destination)
        }
        None => Vec::new(),
    };
    let names = policy.fqdn_ids(&learned);
    let verdict = judge(
        policy,
        direction,
        source,
        destination,
        Protocol::Tcp,
        &names,
    );
    let mut event = FlowEvent::new(direction, Protocol::Tcp, source, destination);
    describe(
        &mut event,
        policy,
        &verdict,
        (source, destination),
        &learned,
    );
    if event.verdict == FlowVerdict::Denied || gone_denied {
        return None;
    }
    crate::admit::node_port_doubt(
        policy,
        shared.node_ports_only_at_listed_addresses,
        direction,
        (source, destination),
        Protocol::Tcp,
    )
    .mark(&mut event)
    .ok()?;
    Some(event)
}

/// After a policy change: every open kernel-carried connection is judged again. One still
/// allowed is described under the new policy (which frees the old one); one denied is ended
/// (unless `--keep-revoked-connections`): its conntrack entry removed, so nothing more of it
/// passes, and its local socket destroyed, which resets the peer at once. A kernel-carried
/// connection the sidecar does not know (it restarted) is taken in, or ended, the same way.
/// Connections are taken in only with the sidecar's `first` policy: after it, an entry without
/// a record is judged and ended when denied, but not taken in. Returns how many were ended,
/// and how many were taken in.
pub(crate) fn revoke(
    shared: &Arc<Shared>,
    table: &mut Conntrack,
    entries: &[Entry],
    first: bool,
) -> std::io::Result<Rejudged> {
    let Some(policy) = shared.policy() else {
        return Ok(Rejudged::default());
    };
    let mut revoked = Vec::new();
    let mut taken_in = 0;
    let mut unrecorded = Vec::new();
    // The first failure is reported once every entry had its turn.
    let mut failed = None;
    let mut open = shared.kernel_flows.lock();
    for entry in entries
        .iter()
        .filter(|e| e.protocol == TCP && e.mark == crate::init::KERNEL_MARK)
    {
        let key = key_of(entry);
        let flow = match open.entry(key) {
            Slot::Occupied(known) => known.into_mut(),
            // Opened before this sidecar started: judged below from what it is now. (One
            // conntrack holds as closed ends as it does, with no record to end.)
            Slot::Vacant(unknown)
                if first && !matches!(entry.tcp_state, Some(TCP_TIME_WAIT | TCP_CLOSE)) =>
            {
                taken_in += 1;
                let backends =
                    service_backends(&policy, shared.node_ports_only_at_listed_addresses, key.1);
                let flow = KernelFlow::new(unjudged(&policy, key), None, backends);
                shared.metrics(flow.event.direction).open.inc();
                unknown.insert(flow)
            }
            // Any other entry without a record is closing (its end was written) or lost its
            // record (a socket on the same addresses ended after a newer connection's SYN):
            // judged all the same, and ended when denied, but not taken in (that would write
            // a second end for the first kind). Conntrack's TCP state does not excuse it: an
            // app moves it with a forged RST or FIN the peer never gets (a bad checksum, or a
            // TTL of 1) while both sockets stay open.
            Slot::Vacant(_) => {
                let probe = unjudged(&policy, key);
                if rejudge(shared, &policy, key, &probe, &[]).is_none() && !shared.keep_revoked {
                    // Its end was written, or is lost with its record. Only its entry goes,
                    // once the lock is let go, and no socket is looked for (it is nearly
                    // always a closed connection's): without the entry the connection is
                    // dead whatever became of its socket, as each side's next segment is
                    // reset (docs/l4-path.md).
                    unrecorded.push(entry);
                }
                continue;
            }
        };
        match rejudge(shared, &policy, key, &flow.event, &flow.backends) {
            Some(mut event) => {
                event.phase = Some(FlowPhase::Start);
                event.service = flow.event.service.take();
                flow.event = event;
            }
            None if shared.keep_revoked => {}
            None => {
                let direction = flow.event.direction;
                match end_revoked(shared, table, entry, key, direction) {
                    // Out of the table now, under the lock: a newer connection on the same
                    // addresses, admitted once the lock is free, keeps its own record.
                    Ok(Revoked::Ended { bytes }) => {
                        if let Some(mut flow) = open.remove(&key) {
                            flow.revoked = true;
                            revoked.push((key, flow, bytes));
                        }
                    }
                    Ok(Revoked::Closed) => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
    }
    let watch = !open.is_empty();
    drop(open);
    let mut unrecorded_open = 0;
    for entry in unrecorded {
        match table.delete(entry) {
            Ok(true) if !matches!(entry.tcp_state, Some(TCP_TIME_WAIT | TCP_CLOSE)) => {
                unrecorded_open += 1;
            }
            Ok(_) => {}
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    // Its end is written now, with what its socket carried until it was destroyed, not when
    // the app gets round to closing the aborted socket.
    let ended = revoked.len();
    for (key, flow, bytes) in revoked {
        write_end(shared, key, flow, bytes);
    }
    // Connections taken in after a restart end as any other.
    if watch {
        watch_ends(shared);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(Rejudged {
            ended: ended + unrecorded_open,
            taken_in,
        }),
    }
}

/// Ends a kernel-carried connection a policy change denies: its conntrack entry removed, so
/// nothing more of it passes, and its local socket destroyed, which resets the peer at once.
fn end_revoked(
    shared: &Shared,
    table: &mut Conntrack,
    entry: &Entry,
    key: FlowKey,
    direction: Direction,
) -> std::io::Result<Revoked> {
    table.delete(entry)?;
    // The pod's own end of it: the source for egress, the destination for ingress.
    let (local, remote) = match direction {
        Direction::Egress => (key.0, key.1),
        Direction::Ingress => (key.1, key.0),
    };
    let bytes = match crate::sock_diag::destroy(local, remote) {
        Ok(Some(destroyed)) => destroyed.bytes,
        // Reset already (the peer's sidecar judged it first) or closing.
        Ok(None) => return Ok(Revoked::Closed),
        Err(e) => {
            // Without it, each end is reset when it next sends (the next segment is no
            // connection the kernel carries).
            tracing::warn!(error = %e, %local, %remote, "cannot destroy a revoked connection's socket");
            None
        }
    };
    shared.metrics(direction).revoked.inc();
    Ok(Revoked::Ended {
        bytes: as_flow(direction, bytes),
    })
}

/// What the pod's socket of a connection in `direction` sent and received, as the connection's
/// source sent and received it: the pod's socket received what an ingress connection's
/// source sent.
fn as_flow(direction: Direction, socket: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match direction {
        Direction::Egress => socket,
        Direction::Ingress => socket.map(|(sent, received)| (received, sent)),
    }
}

/// What [`end_revoked`] found.
enum Revoked {
    /// It ended it: what it had carried (as an end event counts it), read from its socket as
    /// that was destroyed, when the kernel said.
    Ended { bytes: Option<(u64, u64)> },
    /// Its socket in the pod had no connection left to end: its end is written as that socket
    /// is freed, with its bytes, as any other end.
    Closed,
}

/// What [`revoke`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rejudged {
    /// Connections the new policy denies, ended.
    pub ended: usize,
    /// Connections found in conntrack that this sidecar had not admitted (it restarted).
    pub taken_in: usize,
}

/// The Service port a connection to `destination` may lead to: the one at that address, or,
/// at an address that may be an unlisted one of a node, the NodePort's
/// (`admit::node_port_doubt`; `trust_listed`: `--node-ports-only-at-listed-addresses`).
fn leads_to(
    policy: &PodPolicy,
    trust_listed: bool,
    destination: SocketAddr,
) -> Option<&podwall_policy::services::ServicePort> {
    policy
        .engine
        .state()
        .services
        .lookup(destination.ip(), destination.port(), Protocol::Tcp)
        .or_else(|| {
            crate::admit::unlisted_node_port(policy, trust_listed, destination, Protocol::Tcp)
        })
}

/// The backends the Service `destination` may lead to has ready ([`leads_to`]), each with the
/// pod that holds its address (none: it leads to no Service).
pub(crate) fn service_backends(
    policy: &PodPolicy,
    trust_listed: bool,
    destination: SocketAddr,
) -> Box<[Backend]> {
    let Some(service) = leads_to(policy, trust_listed, destination) else {
        return Box::default();
    };
    service
        .backends
        .iter()
        .map(|&(ip, port)| Backend {
            ip,
            port,
            pod: pod_at(policy, ip),
        })
        .collect()
}

/// Which pod holds `ip` under `policy` (a hash of its `namespace/name`), if any.
fn pod_at(policy: &PodPolicy, ip: std::net::IpAddr) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let pod = policy.engine.state().pod(policy.engine.pod_by_ip(ip)?);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&pod.namespace, &pod.name).hash(&mut h);
    Some(h.finish())
}

/// A kernel-carried connection found in conntrack that this sidecar did not admit (or no
/// longer has a record of), not judged yet: an egress one when its source is the pod's. A
/// restarted sidecar knows no names yet; [`rejudge`] uses those its destination has now.
pub(crate) fn unjudged(policy: &PodPolicy, key: FlowKey) -> FlowEvent {
    let state = policy.engine.state();
    let direction = if state.pod(policy.me).ips.contains(&key.0.ip()) {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let mut event = FlowEvent::new(direction, Protocol::Tcp, key.0, key.1);
    event.service = state
        .services
        .lookup(key.1.ip(), key.1.port(), Protocol::Tcp)
        .map(|s| crate::flow::FlowService {
            name: s.service.clone(),
            address: key.1,
            backends: s.backends.len(),
        });
    event
}

fn key_of(entry: &Entry) -> FlowKey {
    (
        SocketAddr::new(entry.src, entry.sport),
        SocketAddr::new(entry.dst, entry.dport),
    )
}

/// Writes the end of `flow`, taken out of the table: its event with the bytes it carried,
/// from its source's side then its destination's, when they are known, and how long it lasted.
/// Every record taken out of the table ends here (and `podwall_connections_open`, counted up
/// as it went in, down).
fn write_end(shared: &Shared, key: FlowKey, flow: KernelFlow, bytes: Option<(u64, u64)>) {
    shared.metrics(flow.event.direction).open.dec();
    shared.flows.emit(end_event(shared, key, flow, bytes));
}

/// The end event of `flow`. One that ended after a policy change, before the pass that judges
/// open connections again got to it, is described under the policy in force as it ended, as
/// that pass would have: what allows it now. (One the new policy denies ended under the rule
/// that allowed it; the pass would have ended it.)
pub(crate) fn end_event(
    shared: &Shared,
    key: FlowKey,
    flow: KernelFlow,
    bytes: Option<(u64, u64)>,
) -> FlowEvent {
    let mut event = flow.event;
    if !flow.revoked
        && let Some(policy) = shared.policy()
        && !event
            .snapshot
            .as_ref()
            .is_some_and(|was| Arc::ptr_eq(was, &policy))
        && let Some(mut now) = rejudge(shared, &policy, key, &event, &flow.backends)
    {
        now.service = event.service.take();
        event = now;
    }
    event.phase = Some(FlowPhase::End);
    event.time = SystemTime::now();
    event.duration_ms = flow.started.elapsed().as_secs_f64() * 1000.0;
    if let Some((sent, received)) = bytes {
        event.bytes_sent = sent;
        event.bytes_received = received;
        let metrics = shared.metrics(event.direction);
        metrics.bytes_sent.inc_by(sent);
        metrics.bytes_received.inc_by(received);
    }
    if flow.revoked {
        event.error = Some(REVOKED.into());
    }
    event
}

/// A socket of the pod was freed: the end of the kernel-carried connection it was the pod's
/// end of (the source of an egress one, the destination of an ingress one).
/// Only a socket on one of the pod's addresses counts, and only in the direction the
/// connection has: the app may free a socket bound to any address (`IPV6_FREEBIND`), and must
/// not end another connection's record that way.
pub(crate) fn socket_ended(shared: &Shared, end: SocketEnd) {
    let pods = shared
        .policy()
        .is_some_and(|p| p.engine.state().pod(p.me).ips.contains(&end.local.ip()));
    if !pods {
        return;
    }
    if end.established != Some(true) && is_decoy(shared, &end) {
        return;
    }
    let (key, flow, bytes) = {
        let mut open = shared.kernel_flows.lock();
        let (egress, ingress) = ((end.local, end.remote), (end.remote, end.local));
        let mut take = |key: &FlowKey, direction| match open.get(key) {
            Some(f) if f.event.direction == direction => open.remove(key),
            _ => None,
        };
        if let Some(flow) = take(&egress, Direction::Egress) {
            (egress, flow, end.bytes)
        } else if let Some(flow) = take(&ingress, Direction::Ingress) {
            // The pod's socket received what the source sent.
            (ingress, flow, as_flow(Direction::Ingress, end.bytes))
        } else {
            return;
        }
    };
    write_end(shared, key, flow, bytes);
}

/// Whether the freed socket was not the connection's: another connection socket on the same
/// addresses is still open. An app may open a second socket on a kernel-carried connection's
/// 4-tuple (the kernel lets it when the first is bound to an interface and the second is not)
/// and close it at once: its SYN is dropped (`init::stale_syn_rules`), but its end would end
/// the connection's record, and the connection would run on unseen: no end with its bytes, not
/// reset by a policy change that denies it. Such a socket's handshake never completed, so only
/// those ends are looked into (a lookup per interface, after a look for the record, without
/// holding its lock); a connection's own end is not, whatever socket it leaves behind (a
/// time-wait one, which the lookup does not count either).
fn is_decoy(shared: &Shared, end: &SocketEnd) -> bool {
    let recorded = {
        let open = shared.kernel_flows.lock();
        open.contains_key(&(end.local, end.remote)) || open.contains_key(&(end.remote, end.local))
    };
    if !recorded {
        return false;
    }
    match crate::sock_diag::connection_open(end.local, end.remote) {
        Ok(open) => {
            if open {
                tracing::debug!(local = %end.local, remote = %end.remote, "a socket freed on the addresses of a kernel-carried connection whose socket is still open: not its end");
            }
            open
        }
        // The record stays: its end comes once conntrack forgets the connection (late, and
        // without bytes, which such a socket never carried), rather than a decoy's ending it.
        Err(e) => {
            tracing::debug!(error = %e, "cannot look for the socket of a kernel-carried connection");
            true
        }
    }
}

/// Starts hearing of the ends of kernel-carried connections, once: each one's end is written
/// as its socket in the pod is freed (`sock_diag::Ends`: at once, with its bytes), or, failing
/// that, once conntrack has forgotten it ([`look_after_entries`]). Each on a thread of its own.
pub(crate) fn watch_ends(shared: &Arc<Shared>) {
    if shared
        .kernel_flows
        .watching
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    match Ends::subscribe() {
        Ok(mut ends) => {
            let shared = shared.clone();
            spawn_watcher("socket-ends", move |wait| {
                let heard = ends.next(wait, |end| socket_ended(&shared, end));
                heard.unwrap_or_else(|e| {
                    // ENOBUFS: some ends were lost; those connections end once conntrack
                    // forgets them.
                    tracing::warn!(error = %e, "freed sockets: receive failed");
                    false
                })
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot hear of freed sockets: kernel-carried connections' ends are written when conntrack forgets them, without bytes");
        }
    }
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("conntrack-look".into())
        .spawn(move || look_after_entries(&shared));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start looking after conntrack: a kernel-carried connection that ends without a socket in the pod gets no end event");
    }
}

/// How often the sidecar asks conntrack after the kernel-carried connections it still tracks.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Every [`LOOK_EVERY`], asks conntrack after each tracked connection admitted before the last
/// look, and ends those it no longer has as kernel-carried ones: a SYN that never became a
/// connection, one forged on a raw socket, an entry that went before its socket (no socket in
/// the pod to be freed). One lookup per connection that outlived a look, rather than a removal
/// message from the kernel for every connection (nearly all end with their socket), and
/// nothing asked of conntrack at its start (no template, no sysctl, whenever the sidecar
/// started). Those ends come up to two looks late, without bytes.
fn look_after_entries(shared: &Shared) {
    let mut table = None;
    let mut pause = LOOK_EVERY;
    loop {
        std::thread::sleep(pause);
        // Admitted after the last look: its SYN may not have been confirmed yet.
        let Some(before) = std::time::Instant::now().checked_sub(LOOK_EVERY) else {
            continue;
        };
        let olds: Vec<(FlowKey, std::time::Instant)> = shared
            .kernel_flows
            .lock()
            .iter()
            .filter(|(_, f)| f.started <= before)
            .map(|(k, f)| (*k, f.started))
            .collect();
        // At most about a thousand lookups a second, however many connections are held
        // (65,536 at most): their ends come later instead.
        pause = LOOK_EVERY.max(std::time::Duration::from_millis(olds.len() as u64));
        let t = match table.as_mut() {
            Some(t) => t,
            None => match Conntrack::open() {
                Ok(t) => table.insert(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read conntrack: kernel-carried connections that end without a socket in the pod get their end later");
                    continue;
                }
            },
        };
        for (key, started) in olds {
            match t.tcp_mark(key.0, key.1) {
                Ok(Some(crate::init::KERNEL_MARK)) => {}
                // Forgotten, or the four-tuple is another connection's now.
                Ok(_) => ended_if_admitted_at(shared, key, started),
                Err(e) => {
                    // A fresh socket next time: no answer of this one is left to misread.
                    tracing::warn!(error = %e, "conntrack lookup failed");
                    table = None;
                    break;
                }
            }
        }
    }
}

/// Ends the connection at `key` only if it is the one admitted at `started`: a connection
/// opened on the same addresses meanwhile (its SYN perhaps not yet in conntrack when it was
/// looked up) is another, and keeps its record.
pub(crate) fn ended_if_admitted_at(shared: &Shared, key: FlowKey, started: std::time::Instant) {
    let flow = {
        let mut open = shared.kernel_flows.lock();
        match open.get(&key) {
            Some(f) if f.started == started => open.remove(&key),
            _ => None,
        }
    };
    if let Some(flow) = flow {
        write_end(shared, key, flow, None);
    }
}

/// How long a watcher lets ends gather after it has read all there were: under load it then
/// reads many per wake-up, rather than being woken for each (a context switch per connection
/// that cost more than the rest of its end). End events come this much later.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Reads ends on a thread named `name`: `read(wait)` reads what is there (waiting for some
/// when `wait`), and says whether it read anything.
fn spawn_watcher(name: &str, mut read: impl FnMut(bool) -> bool + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                // (A failed read is followed by the same pause.)
                if read(true) {
                    while read(false) {}
                }
                std::thread::sleep(GATHER);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, watcher = name, "cannot start a watcher of connection ends");
    }
}

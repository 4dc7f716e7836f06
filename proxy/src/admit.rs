//! Admission: the one place a new flow is judged, whichever path carries it (a TCP
//! connection the proxy accepted, or the first packet of any other flow the packet filter
//! read).
//!
//! In order: fail closed without a policy; a Service's virtual IP becomes one of its backends
//! (see [`Backends`]); an address outside the cluster gets the toFQDNs names the pod's DNS
//! answers taught for it; and the compiled policy gives the verdict, explained in the flow
//! event. The result is [`Admitted`] (allowed, or passing in audit mode) or [`Refused`],
//! whose event says why. What a path does beyond that (the server-name check, HTTP rules,
//! relaying, accepting the packet) is the path's own.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use podwall_policy::services::ServicePort;
use podwall_policy::{Direction, FqdnId, Protocol, RuleRef, Verdict};

use crate::flow::{FlowEvent, FlowService};
use crate::pod_policy::{FlowVerdict, PodPolicy};
use crate::shared::Shared;

/// A flow about to start, as its first packet or accepted connection shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NewFlow {
    /// Egress (the pod opens it) or ingress.
    pub direction: Direction,
    /// TCP, UDP, SCTP, ICMP (ping) or OTHER.
    pub protocol: Protocol,
    /// The IP protocol number (IPv6: of the header after the extension headers).
    pub ip_protocol: u8,
    /// The sender (port 0 without ports).
    pub source: SocketAddr,
    /// Where it is going, as the pod addressed it (port 0 without ports).
    pub destination: SocketAddr,
}

/// How a Service virtual IP's backend is chosen, which decides what policy must allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backends {
    /// The proxy connects to the backend itself: it picks one policy allows (round robin).
    Pick,
    /// kube-proxy picks after the packet has left the pod: every ready backend must be
    /// allowed, and the verdict explained is a denied one's, if any.
    Every,
}

/// A flow policy lets start (allowed, or denied only where audit mode covers it).
pub(crate) struct Admitted {
    /// The policy that judged it.
    pub policy: Arc<PodPolicy>,
    /// Its verdict.
    pub verdict: Verdict,
    /// Where it goes: a Service's backend rather than the virtual IP.
    pub destination: SocketAddr,
    /// The toFQDNs names the destination was learned for when it was judged.
    pub learned: Vec<Arc<str>>,
    /// The pod's toFQDNs selectors those names match (what the verdict used).
    pub names: Vec<FqdnId>,
    /// The flow event, explained: `Allowed` or `Audit`.
    pub event: FlowEvent,
}

impl Admitted {
    /// The verdict on the destination without the learned names, when only those names allow
    /// it: the connection's server name must then be checked (with `--check-server-name`).
    pub(crate) fn allowed_by_names_only(&self, check_server_name: bool) -> Option<Verdict> {
        // The policy's verdict, not the event's: an event marked AUDIT for something beyond
        // the address (a NodePort it may be) still has its names checked.
        (self.policy.flow_verdict(&self.verdict) == FlowVerdict::Allowed
            && check_server_name
            && !self.names.is_empty())
        .then(|| {
            self.policy.outbound(
                self.destination.ip(),
                Protocol::Tcp,
                self.destination.port(),
            )
        })
        .filter(|v| !v.egress.allowed())
    }

    /// Whether it is inbound to a port the pod observes (`podwall.io/observe-http`).
    pub(crate) fn observed(&self) -> bool {
        self.event.direction == Direction::Ingress
            && self
                .policy
                .observe_http
                .binary_search(&self.destination.port())
                .is_ok()
    }
}

/// This pod's side of a verdict on a flow in `direction`: the source's for egress, the
/// destination's for ingress.
fn own_side(verdict: &Verdict, direction: Direction) -> &podwall_policy::SideVerdict {
    match direction {
        Direction::Egress => &verdict.egress,
        Direction::Ingress => &verdict.ingress,
    }
}

/// Whether HTTP rules of this pod apply on its side of a flow in `direction` ([`own_http`]
/// without copying them).
pub(crate) fn has_own_http(verdict: &Verdict, direction: Direction) -> bool {
    own_side(verdict, direction).http.is_some()
}

/// This pod's HTTP rules for a flow in `direction`, if any apply on its side.
pub(crate) fn own_http(verdict: &Verdict, direction: Direction) -> Option<Vec<RuleRef>> {
    own_side(verdict, direction).http.clone()
}

/// Why a flow that [`link_wide`] says reaches the link is refused.
pub(crate) const LINK_WIDE: &str = "a broadcast, multicast or IPv6 link-local peer: it reaches whoever is on the link, whom no policy names";

/// Whether a flow between `source` and `destination` would reach whoever is on the pod's
/// link (every pod on a node's bridge, the node) rather than one host a policy can name: one
/// to a broadcast or multicast address, or with an IPv6 link-local address at either end.
/// Judged as addresses, "anywhere but the cluster" would allow them. (A peer's multicast into
/// the pod is judged by its source as ever; neighbour discovery never comes here.)
pub(crate) fn link_wide(direction: Direction, source: IpAddr, destination: IpAddr) -> bool {
    let link_local = |ip: IpAddr| matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
    let group = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    };
    link_local(source)
        || link_local(destination)
        || (direction == Direction::Egress && group(destination))
}

/// A flow that must not start; its event says why.
pub(crate) struct Refused {
    /// Denied, with the reason or the decisions that refused it.
    pub event: FlowEvent,
}

impl Refused {
    fn because(mut event: FlowEvent, reason: String) -> Self {
        event.verdict = FlowVerdict::Denied;
        event.reason = Some(reason);
        Refused { event }
    }

    /// A flow refused before policy is asked (the sidecar's own port, ...).
    pub(crate) fn outright(flow: &NewFlow, reason: String) -> Self {
        Self::because(event_of(flow), reason)
    }

    /// Counts the refusal and writes its event, timed from `started` (the caller has already
    /// reset or dropped what it refused).
    pub(crate) fn finish(self, shared: &Shared, started: Instant) {
        shared
            .metrics(self.event.direction)
            .verdict(FlowVerdict::Denied);
        finish(shared, self.event, started);
    }
}

/// Writes a flow's event as it ends, `started` being when it began.
pub(crate) fn finish(shared: &Shared, mut event: FlowEvent, started: Instant) {
    event.time = SystemTime::now();
    event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    shared.flows.emit(event);
}

fn event_of(flow: &NewFlow) -> FlowEvent {
    let mut event = FlowEvent::new(flow.direction, flow.protocol, flow.source, flow.destination);
    event.time = SystemTime::now();
    if flow.protocol == Protocol::Other {
        event.ip_protocol = Some(flow.ip_protocol);
    }
    event
}

/// What admission decided.
// Both outcomes carry the flow event and are matched at once: nothing to box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission {
    /// The flow may start.
    Admitted(Admitted),
    /// It may not.
    Refused(Refused),
}

/// Judges `flow` under the current policy.
pub(crate) fn admit(shared: &Shared, flow: NewFlow, backends: Backends) -> Admission {
    let Some(policy) = shared.policy() else {
        return Admission::Refused(Refused::because(
            event_of(&flow),
            "no policy loaded yet: refusing everything (fail closed)".into(),
        ));
    };
    admit_under(shared, policy, flow, backends)
}

/// The toFQDNs names `destination` is valid for now, for a connection in `direction`: an
/// address outside the cluster may be one the pod's DNS answers gave for a toFQDNs name, and
/// those names are what the verdict (and later re-checks) may use.
pub(crate) fn learned_now(
    shared: &Shared,
    policy: &PodPolicy,
    direction: Direction,
    destination: SocketAddr,
) -> Vec<Arc<str>> {
    if direction == Direction::Egress
        && !policy.own_fqdn.is_empty()
        && policy.engine.pod_by_ip(destination.ip()).is_none()
    {
        shared.names.names_for(destination.ip())
    } else {
        Vec::new()
    }
}

/// [`admit`] under `policy`, which the caller loaded already.
pub(crate) fn admit_under(
    shared: &Shared,
    policy: Arc<PodPolicy>,
    flow: NewFlow,
    backends: Backends,
) -> Admission {
    let wide = link_wide(flow.direction, flow.source.ip(), flow.destination.ip());
    if wide && !policy.own_audit() {
        return Admission::Refused(Refused::because(event_of(&flow), LINK_WIDE.into()));
    }
    let mut event = event_of(&flow);
    let mut destination = flow.destination;
    if flow.direction == Direction::Egress
        && let Some(service) = policy.engine.state().services.lookup(
            destination.ip(),
            destination.port(),
            flow.protocol,
        )
    {
        event.service = Some(FlowService {
            name: service.service.clone(),
            address: destination,
            backends: service.backends.len(),
        });
        destination = match backend(service, &policy, flow.protocol, backends, shared) {
            Ok(backend) => backend,
            Err(why) => return Admission::Refused(Refused::because(event, why)),
        };
    }
    let learned = learned_now(shared, &policy, flow.direction, destination);
    let names = policy.fqdn_ids(&learned);
    let verdict = judge(
        &policy,
        flow.direction,
        flow.source,
        destination,
        flow.protocol,
        &names,
    );
    describe(
        &mut event,
        &policy,
        &verdict,
        (flow.source, destination),
        &learned,
    );
    if event.verdict == FlowVerdict::Denied {
        return Admission::Refused(Refused { event });
    }
    let doubt = node_port_doubt(
        &policy,
        shared.node_ports_only_at_listed_addresses,
        flow.direction,
        (flow.source, destination),
        flow.protocol,
    );
    if let Err(why) = doubt.mark(&mut event) {
        return Admission::Refused(Refused::because(event, why));
    }
    if wide {
        // Audit mode: what enforcing would refuse passes, and says so.
        event.verdict = FlowVerdict::Audit;
        event.reason = Some(LINK_WIDE.into());
    }
    Admission::Admitted(Admitted {
        policy,
        verdict,
        destination,
        learned,
        names,
        event,
    })
}

/// What an egress flow to an address that may be a node's, on a NodePort's number, needs
/// beyond the verdict on the address itself (see [`node_port_doubt`]).
#[derive(Debug)]
pub(crate) enum NodePortDoubt {
    /// Nothing more: no such flow, or every ready backend of the Service allowed.
    Clear,
    /// A backend the Service may lead to is not plainly allowed: `audit` when audit mode lets
    /// the flow pass all the same.
    Fails {
        service: FlowService,
        why: String,
        audit: bool,
    },
}

impl NodePortDoubt {
    /// Records a failed doubt in `event`: for audit mode the verdict and why (the event keeps
    /// no `service`: the flow went to the address, and is re-judged as one); `Err`: why the
    /// flow must be refused, with the Service named in the event.
    pub(crate) fn mark(self, event: &mut FlowEvent) -> Result<(), String> {
        let NodePortDoubt::Fails {
            service,
            why,
            audit,
        } = self
        else {
            return Ok(());
        };
        if !audit {
            event.service = Some(service);
            return Err(why);
        }
        event.verdict = FlowVerdict::Audit;
        event.reason = Some(why);
        Ok(())
    }
}

/// The Service port whose NodePort `destination` may be, at an address that is no pod's and
/// none the cluster's objects give a node or a Service (see [`node_port_doubt`]); none when
/// `trust_listed`.
pub(crate) fn unlisted_node_port(
    policy: &PodPolicy,
    trust_listed: bool,
    destination: SocketAddr,
    protocol: Protocol,
) -> Option<&ServicePort> {
    if trust_listed {
        return None;
    }
    policy
        .engine
        .unlisted_node_port(destination.ip(), destination.port(), protocol)
}

/// An egress flow to an address that is no pod's and none the cluster's objects give a node
/// or a Service, on a Service's NodePort number: kube-proxy answers NodePorts at every address
/// of a node unless its `--nodeport-addresses` is set (`trust_listed`:
/// `--node-ports-only-at-listed-addresses` says it is), also at addresses no object lists (a
/// `docker0` bridge, node-local DNS's 169.254.20.10, another node's pod gateway). The sidecar
/// cannot tell such an address from an outside host's, so the flow must be allowed both as the
/// address it is (the caller's verdict) and to every ready backend the node could take it to,
/// with no HTTP or DNS rules of this pod's on any: the flow goes to the address, where nothing
/// would apply them. Only this pod's own policies count: the node source-NATs what it
/// forwards. A Service without backends (ready, or serving while terminating) leads nowhere
/// (kube-proxy rejects).
pub(crate) fn node_port_doubt(
    policy: &PodPolicy,
    trust_listed: bool,
    direction: Direction,
    (source, destination): (SocketAddr, SocketAddr),
    protocol: Protocol,
) -> NodePortDoubt {
    if direction != Direction::Egress {
        return NodePortDoubt::Clear;
    }
    let Some(service) = unlisted_node_port(policy, trust_listed, destination, protocol) else {
        return NodePortDoubt::Clear;
    };
    let port = destination.port();
    let doubt = |why: String, audit| NodePortDoubt::Fails {
        service: FlowService {
            name: service.service.clone(),
            address: destination,
            backends: service.backends.len(),
        },
        why: format!(
            "{destination} may be an address of a node that no Node object lists, where \
             kube-proxy takes NodePort {port} to service {}: {why} \
             (--node-ports-only-at-listed-addresses trusts the listed ones)",
            service.service
        ),
        audit,
    };
    let mut audited = None;
    for &(ip, port) in &service.backends {
        // This pod's own side only: the node source-NATs what it forwards, so the backend's
        // own policies see the node, not this pod (and its audit mode is not this pod's).
        let backend = SocketAddr::new(ip, port);
        let verdict = judge(policy, Direction::Egress, source, backend, protocol, &[]);
        let side = &verdict.egress;
        let why = if !side.allowed() {
            format!("policy does not allow its endpoint {backend}")
        } else if side.http.is_some() || side.dns.is_some() {
            format!(
                "its endpoint {backend} is allowed only under HTTP or DNS rules, which nothing \
                 applies on a connection to that address"
            )
        } else {
            continue;
        };
        let covered = if side.allowed() {
            policy.own_audit()
        } else {
            policy.audit_covers(side.decision)
        };
        if !covered {
            return doubt(why, false);
        }
        audited.get_or_insert(why);
    }
    match audited {
        Some(why) => doubt(why, true),
        None => NodePortDoubt::Clear,
    }
}

/// The backend of `service` the flow goes to, or why none may.
fn backend(
    service: &ServicePort,
    policy: &PodPolicy,
    protocol: Protocol,
    backends: Backends,
    shared: &Shared,
) -> Result<SocketAddr, String> {
    let n = service.backends.len();
    if n == 0 {
        return Err(format!(
            "service {} has no ready endpoint for its port {}",
            service.service, service.port
        ));
    }
    let allowed = |&(ip, port): &(std::net::IpAddr, u16)| {
        // The fast path; the chosen backend's explained verdict is worked out by the caller.
        policy.allows(Direction::Egress, ip, protocol, port, &[])
    };
    let chosen = match backends {
        Backends::Pick => {
            let start = shared.round_robin.fetch_add(1, Ordering::Relaxed);
            (0..n)
                .map(|i| service.backends[(start + i) % n])
                .find(allowed)
                .ok_or_else(|| {
                    format!(
                        "service {}: policy allows none of its {n} ready endpoints",
                        service.service
                    )
                })?
        }
        Backends::Every => *service
            .backends
            .iter()
            .find(|b| !allowed(b))
            .unwrap_or(&service.backends[0]),
    };
    Ok(SocketAddr::new(chosen.0, chosen.1))
}

/// The verdict `policy` gives a flow between `source` and `destination` (`names`: the
/// toFQDNs selectors the destination was learned for).
pub(crate) fn judge(
    policy: &PodPolicy,
    direction: Direction,
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
    names: &[FqdnId],
) -> Verdict {
    match direction {
        Direction::Egress => {
            policy.outbound_learned(destination.ip(), protocol, destination.port(), names)
        }
        Direction::Ingress => policy.inbound(source.ip(), protocol, destination.port()),
    }
}

/// Records in `event` the verdict `policy` gave, with the learned names it relied on.
pub(crate) fn describe(
    event: &mut FlowEvent,
    policy: &Arc<PodPolicy>,
    verdict: &Verdict,
    (source, destination): (SocketAddr, SocketAddr),
    learned: &[Arc<str>],
) {
    event.describe(policy, verdict, source, destination);
    if !learned.is_empty()
        && let Some(side) = event.egress.as_mut()
    {
        side.names = learned.to_vec();
    }
    event.verdict = policy.flow_verdict(verdict);
}

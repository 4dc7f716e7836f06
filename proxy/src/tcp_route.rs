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

use podwall_policy::Direction;

use crate::admit::{Admission, Admitted, Backends, NewFlow, admit};
use crate::pod_policy::FlowVerdict;
use crate::shared::Shared;

/// The path a new TCP connection takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The kernel carries it.
    Kernel,
    /// The proxy takes it.
    Proxy,
}

impl Route {
    /// The packet mark that tells the init rules.
    pub(crate) fn mark(self) -> u32 {
        match self {
            Route::Kernel => crate::init::KERNEL_MARK,
            Route::Proxy => crate::init::PROXY_MARK,
        }
    }
}

/// Decides the path of a new TCP connection, writing the flow event and counting the verdict
/// of one the proxy will not see.
pub(crate) fn route(shared: &Shared, flow: NewFlow) -> Route {
    match admit(shared, flow, Backends::Every) {
        // Refused, or a Service virtual IP not every backend of which policy allows.
        Admission::Refused(_) => Route::Proxy,
        Admission::Admitted(admitted) if needs_proxy(&admitted, shared) => Route::Proxy,
        Admission::Admitted(admitted) => {
            shared
                .metrics(admitted.event.direction)
                .verdict(admitted.event.verdict);
            shared.flows.emit(admitted.event);
            Route::Kernel
        }
    }
}

/// Whether deciding or reporting the connection takes its bytes.
fn needs_proxy(a: &Admitted, shared: &Shared) -> bool {
    let direction = a.event.direction;
    let http_rules = match direction {
        Direction::Egress => a.verdict.egress.http.is_some(),
        Direction::Ingress => a.verdict.ingress.http.is_some(),
    };
    // As the proxy decides it: allowed by names, and not without them.
    let names_to_check = direction == Direction::Egress
        && a.event.verdict == FlowVerdict::Allowed
        && shared.check_server_name
        && !a.names.is_empty()
        && !a
            .policy
            .outbound(
                a.destination.ip(),
                podwall_policy::Protocol::Tcp,
                a.destination.port(),
            )
            .egress
            .allowed();
    let observed = direction == Direction::Ingress
        && a.policy
            .observe_http
            .binary_search(&a.destination.port())
            .is_ok();
    http_rules || names_to_check || observed
}

//! The TCP connections the kernel carries (the kernel path), by their original direction's
//! addresses: each one's flow event as last judged, so that its end and every policy change
//! find what allowed it, and which toFQDNs names it was allowed for. The packet filter adds a
//! connection as it admits it; the watcher of freed sockets, or the lookups that find
//! conntrack has forgotten it, take it away as it ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::flow::FlowEvent;

/// Kernel-carried connections tracked at most: past this, new connections go through the
/// proxy (whose own limits then apply) rather than grow the table without bound. A
/// connection's entry lives until its socket in the pod is freed or, without one (a SYN flood
/// from an allowed peer), until conntrack forgets it (a minute or two).
pub(crate) const MAX_OPEN: usize = 1 << 16;

/// A connection's original source and destination.
pub(crate) type FlowKey = (SocketAddr, SocketAddr);

/// One kernel-carried connection.
#[derive(Debug)]
pub(crate) struct KernelFlow {
    /// When it was admitted.
    pub started: Instant,
    /// Its event, described under the policy that allows it now (no bytes).
    pub event: FlowEvent,
    /// A policy change no longer allowed it, and it was ended for that.
    pub revoked: bool,
    /// The initial sequence number of the SYN that opened it, which tells that SYN sent again
    /// from a new connection on the same addresses; `None` for one a restarted sidecar took in.
    pub syn_seq: Option<u32>,
    /// To a Service's virtual IP: every backend the Service had ready while it was open (the
    /// node picked one, which the pod never learns), each of which policy must still allow;
    /// sorted. Empty for any other.
    pub backends: Box<[Backend]>,
}

/// A Service backend: its address and target port.
pub(crate) type Backend = (IpAddr, u16);

impl KernelFlow {
    /// One admitted now, allowed as `event` says, opened by a SYN with `syn_seq`, to a
    /// Service whose ready backends were `backends` (or none).
    pub(crate) fn new(event: FlowEvent, syn_seq: Option<u32>, backends: &[Backend]) -> Self {
        let mut backends = backends.to_vec();
        backends.sort_unstable();
        KernelFlow {
            started: Instant::now(),
            event,
            revoked: false,
            syn_seq,
            backends: backends.into(),
        }
    }

    /// Adds the backends a Service has ready now to those it had (a backend that leaves the
    /// Service while the connection is open may be the one it goes to).
    pub(crate) fn saw_backends(&mut self, now: &[Backend]) {
        if now.iter().all(|b| self.backends.binary_search(b).is_ok()) {
            return;
        }
        let mut all = self.backends.to_vec();
        all.extend_from_slice(now);
        all.sort_unstable();
        all.dedup();
        self.backends = all.into();
    }
}

/// The open ones.
#[derive(Debug, Default)]
pub(crate) struct KernelFlows {
    open: Mutex<HashMap<FlowKey, KernelFlow>>,
    /// Whether their ends are being watched (from the first one the kernel carries).
    pub watching: AtomicBool,
}

impl KernelFlows {
    /// The table, for as long as the guard lives (one lock per admitted or ended connection,
    /// and one per policy change).
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<FlowKey, KernelFlow>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_to_a_service_remembers_every_backend_the_service_had_while_it_was_open() {
        let b = |last: u8| (IpAddr::from([10, 0, 0, last]), 8080);
        let event = FlowEvent::new(
            podwall_policy::Direction::Egress,
            podwall_policy::Protocol::Tcp,
            "10.0.0.1:40000".parse().expect("addr"),
            "10.96.0.50:80".parse().expect("addr"),
        );
        let mut flow = KernelFlow::new(event, None, &[b(3), b(2)]);
        assert_eq!(&*flow.backends, &[b(2), b(3)]);
        // One left, one came: the one that left may be the one the node gave it.
        flow.saw_backends(&[b(2), b(4)]);
        assert_eq!(&*flow.backends, &[b(2), b(3), b(4)]);
        flow.saw_backends(&[b(4)]);
        assert_eq!(&*flow.backends, &[b(2), b(3), b(4)]);
    }
}

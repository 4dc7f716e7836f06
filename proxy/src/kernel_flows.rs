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
    /// To a Service's virtual IP: the backends the Service had ready when it was admitted
    /// (the node picked one of them, which the pod never learns), each of which policy must
    /// still allow while it is the same pod. Empty for any other.
    pub backends: Box<[Backend]>,
}

/// A backend a Service had ready when a connection to it was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    /// Its address and target port.
    pub ip: IpAddr,
    pub port: u16,
    /// Which pod had that address then (a hash of its `namespace/name`), or none: a backend
    /// that left the Service is judged again only while the same pod holds its address. (A
    /// deleted pod's connections are gone with it, and its address may go to another pod,
    /// which is no backend of this connection; rolling updates delete backends every day.)
    pub pod: Option<u64>,
}

impl KernelFlow {
    /// One admitted now, allowed as `event` says, opened by a SYN with `syn_seq`, to a
    /// Service whose ready backends were `backends` (or none).
    pub(crate) fn new(event: FlowEvent, syn_seq: Option<u32>, backends: Box<[Backend]>) -> Self {
        KernelFlow {
            started: Instant::now(),
            event,
            revoked: false,
            syn_seq,
            backends,
        }
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

//! An open TCP connection answers to every policy change: [`watch`] runs whatever the
//! connection is doing (waiting for its first bytes, relaying, serving requests) and judges it
//! again each time the policy changes, the one loop every stage of a connection shares.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use podwall_policy::{Direction, Protocol, Verdict};

use crate::admit::{describe, judge};
use crate::flow::FlowEvent;
use crate::pod_policy::{FlowVerdict, PodPolicy, PolicyReceiver};

/// An admitted connection on its way: its event, what it is judged on again, the changes it
/// answers to, and when it was accepted.
pub(super) struct Live {
    pub event: FlowEvent,
    pub open: OpenFlow,
    pub changes: PolicyReceiver,
    pub started: Instant,
}

/// What an open TCP connection is judged on again when policy changes.
pub(super) struct OpenFlow {
    pub direction: Direction,
    pub source: SocketAddr,
    /// Where it goes (a Service's chosen backend, not the virtual IP).
    pub destination: SocketAddr,
    /// The toFQDNs names the destination was valid for when it opened: expiry does not end
    /// open connections, only a policy that no longer allows them.
    pub learned: Vec<Arc<str>>,
    /// It passed in audit mode only because its server name was not the rule's.
    pub audited_by_name: bool,
}

/// A policy change's verdict on an open connection.
// Returned once per policy change and matched at once, never stored: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Rejudged {
    /// Nothing changes: no policy, or denied but kept (`--keep-revoked-connections`).
    Unchanged,
    /// No longer allowed: reset it.
    Revoke,
    /// Still allowed, by this policy's verdict.
    Allowed(Arc<PodPolicy>, Verdict),
}

impl OpenFlow {
    fn rejudge(&self, now: Option<Arc<PodPolicy>>, keep_revoked: bool) -> Rejudged {
        let Some(now) = now else {
            return Rejudged::Unchanged;
        };
        let names = now.fqdn_ids(&self.learned);
        let verdict = judge(
            &now,
            self.direction,
            self.source,
            self.destination,
            Protocol::Tcp,
            &names,
        );
        match now.flow_verdict(&verdict) {
            FlowVerdict::Denied if keep_revoked => Rejudged::Unchanged,
            FlowVerdict::Denied => Rejudged::Revoke,
            _ => Rejudged::Allowed(now, verdict),
        }
    }

    /// Records in `event` the verdict `policy` gave the open connection.
    pub(super) fn describe(
        &self,
        event: &mut FlowEvent,
        policy: &Arc<PodPolicy>,
        verdict: &Verdict,
    ) {
        describe(
            event,
            policy,
            verdict,
            (self.source, self.destination),
            &self.learned,
        );
        if self.audited_by_name {
            event.verdict = FlowVerdict::Audit;
        }
    }
}

/// How watching a connection's work through policy changes ended.
pub(super) enum Watched<T> {
    /// The work finished.
    Done(T),
    /// A change no longer allows the connection: the caller resets it.
    Revoked,
    /// The caller's `still_allowed` asked to stop.
    Stopped,
}

/// The text of a connection reset because a policy change no longer allows it.
pub(super) const REVOKED: &str = "reset: a policy change no longer allows this connection";

/// Runs `work` while judging `open` again on every policy change from `changes`. A change that
/// still allows it is passed to `still_allowed` (which updates the event and anything else that
/// depends on the policy, and may stop the watch); one that denies it ends the watch, unless
/// `keep_revoked`. When the changes end, the work runs on unwatched.
pub(super) async fn watch<T>(
    work: impl Future<Output = T>,
    changes: &mut PolicyReceiver,
    open: &OpenFlow,
    keep_revoked: bool,
    mut still_allowed: impl FnMut(Arc<PodPolicy>, Verdict) -> ControlFlow<()>,
) -> Watched<T> {
    tokio::pin!(work);
    let mut watching = true;
    loop {
        tokio::select! {
            done = &mut work => return Watched::Done(done),
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                match open.rejudge(changes.borrow_and_update().clone(), keep_revoked) {
                    Rejudged::Unchanged => {}
                    Rejudged::Revoke => return Watched::Revoked,
                    Rejudged::Allowed(now, verdict) => {
                        if still_allowed(now, verdict).is_break() {
                            return Watched::Stopped;
                        }
                    }
                }
            }
        }
    }
}

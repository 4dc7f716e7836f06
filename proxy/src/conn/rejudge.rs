//! An open TCP connection answers to every policy change: [`watch`] runs whatever the
//! connection is doing (waiting for its first bytes, relaying, serving requests) and judges it
//! again each time the policy changes, the one loop every stage of a connection shares.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use podwall_policy::{Direction, Protocol, Verdict};

use crate::admit::{NodePortDoubt, describe, judge, node_port_doubt};
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
    /// It passed in audit mode only because of more than the address: its server name was not
    /// the rule's, or a NodePort it may be leads to a denied backend.
    pub audited_by_name: bool,
    /// `--node-ports-only-at-listed-addresses` (see `admit::node_port_doubt`).
    pub node_ports_only_at_listed_addresses: bool,
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
        let judge_at = |to| judge(&now, self.direction, self.source, to, Protocol::Tcp, &names);
        let state = now.engine.state();
        let service = (self.direction == Direction::Egress)
            .then(|| {
                let d = self.destination;
                state.services.lookup(d.ip(), d.port(), Protocol::Tcp)
            })
            .flatten();
        let verdict = match service {
            // Connected to an address that was no Service's when it opened (the pod's view
            // lagged): the node took it to a backend the proxy never learned, so every ready
            // one must be allowed now (none: nothing vouches for where it went).
            Some(service) => {
                // The worst: one denied backend denies it, one audit mode alone passes
                // reports it as audited.
                let rank = |v: &Verdict| match now.flow_verdict(v) {
                    FlowVerdict::Denied => 2,
                    FlowVerdict::Audit => 1,
                    _ => 0,
                };
                let worst = service
                    .backends
                    .iter()
                    .map(|&(ip, port)| judge_at(SocketAddr::new(ip, port)))
                    .max_by_key(rank);
                match worst {
                    Some(verdict) => verdict,
                    // Audit mode ends nothing; a new connection there is refused all the same.
                    None if now.own_audit() => return Rejudged::Unchanged,
                    None => return revoked(keep_revoked),
                }
            }
            None => judge_at(self.destination),
        };
        if now.flow_verdict(&verdict) == FlowVerdict::Denied {
            return revoked(keep_revoked);
        }
        // An address that may be a node's, on a NodePort's number, answers for the Service's
        // backends too (audit mode: the event keeps the address's verdict).
        let doubt = node_port_doubt(
            &now,
            self.node_ports_only_at_listed_addresses,
            self.direction,
            (self.source, self.destination),
            Protocol::Tcp,
        );
        match doubt {
            NodePortDoubt::Fails { audit: false, .. } => revoked(keep_revoked),
            _ => Rejudged::Allowed(now.clone(), verdict),
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

/// A denial's outcome: reset, unless `--keep-revoked-connections`.
fn revoked(keep_revoked: bool) -> Rejudged {
    if keep_revoked {
        Rejudged::Unchanged
    } else {
        Rejudged::Revoke
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_policy::client_policy;

    /// The client may reach anywhere outside the pods (the node among them), and `extra`.
    fn cluster(extra_rule: &str, node_port: bool) -> String {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: t, labels: {{app: client}}}}\nstatus: {{podIP: 10.0.0.1}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: t, labels: {{app: server}}}}\nstatus: {{podIP: 10.0.0.2}}\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-out, namespace: t}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress:\n\
             \x20 - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]\n{extra_rule}"
        );
        if node_port {
            yaml.push_str(
                "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
                 status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n\
                 ---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: t}\n\
                 spec: {type: NodePort, clusterIP: 10.96.0.50, selector: {app: server}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n",
            );
        }
        yaml
    }

    #[test]
    fn a_proxied_connection_to_a_node_port_is_judged_by_its_backends_once_known() {
        // Proxied to the node's address while the pod's view held no Service there.
        let open = OpenFlow {
            direction: Direction::Egress,
            source: "10.0.0.1:40000".parse().expect("addr"),
            destination: "192.168.0.1:30080".parse().expect("addr"),
            learned: Vec::new(),
            audited_by_name: false,
            node_ports_only_at_listed_addresses: false,
        };
        let verdict = |yaml: &str, keep| open.rejudge(Some(client_policy(yaml, 2)), keep);
        assert!(
            matches!(verdict(&cluster("", false), false), Rejudged::Allowed(..)),
            "a plain address the ipBlock allows"
        );
        assert!(
            matches!(verdict(&cluster("", true), false), Rejudged::Revoke),
            "the node's 30080 leads to the server, which the client may not reach"
        );
        assert!(matches!(
            verdict(&cluster("", true), true),
            Rejudged::Unchanged
        ));
        let server =
            "  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{port: 8080}]\n";
        assert!(
            matches!(
                verdict(&cluster(server, true), false),
                Rejudged::Allowed(..)
            ),
            "every backend allowed"
        );
        // A second backend the client may not reach: the node may have sent it there.
        let two = cluster(server, true).replace(
            "---\napiVersion: networking.k8s.io/v1",
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: server-2, namespace: t, labels: {app: server}}\nstatus: {podIP: 10.0.0.3}\n---\napiVersion: networking.k8s.io/v1",
        );
        let only_first = two.replace(
            "to: [{podSelector: {matchLabels: {app: server}}}]",
            "to: [{ipBlock: {cidr: 10.0.0.2/32}}]",
        );
        assert!(matches!(verdict(&two, false), Rejudged::Allowed(..)));
        assert!(matches!(verdict(&only_first, false), Rejudged::Revoke));
        // In audit mode it stays, reported as audited; a Service without a ready endpoint
        // ends nothing either.
        let audit = |yaml: &str| {
            yaml.replace(
                "metadata: {name: client, namespace: t, labels: {app: client}}",
                "metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/enforcement: audit}}",
            )
        };
        match verdict(&audit(&only_first), false) {
            Rejudged::Allowed(policy, v) => {
                assert_eq!(policy.flow_verdict(&v), FlowVerdict::Audit)
            }
            _ => panic!("audit mode ends nothing"),
        }
        let no_endpoint = cluster("", true).replace("{app: server}, ports", "{app: nobody}, ports");
        assert!(matches!(verdict(&no_endpoint, false), Rejudged::Revoke));
        assert!(matches!(
            verdict(&audit(&no_endpoint), false),
            Rejudged::Unchanged
        ));
    }

    #[test]
    fn a_proxied_connection_to_an_unlisted_address_on_a_node_ports_number_answers_for_its_backends()
    {
        // An address no object gives a node (node-local DNS's) may be one where kube-proxy
        // answers the NodePort all the same.
        let open = |trust_listed| OpenFlow {
            direction: Direction::Egress,
            source: "10.0.0.1:40000".parse().expect("addr"),
            destination: "169.254.20.10:30080".parse().expect("addr"),
            learned: Vec::new(),
            audited_by_name: false,
            node_ports_only_at_listed_addresses: trust_listed,
        };
        let verdict = |yaml: &str, trust_listed| {
            open(trust_listed).rejudge(Some(client_policy(yaml, 2)), false)
        };
        let allowed = |r: Rejudged| matches!(r, Rejudged::Allowed(..));
        assert!(
            allowed(verdict(&cluster("", false), false)),
            "no NodePort 30080"
        );
        assert!(
            matches!(verdict(&cluster("", true), false), Rejudged::Revoke),
            "it may lead to the server, which the client may not reach"
        );
        assert!(
            allowed(verdict(&cluster("", true), true)),
            "trusting the listed addresses: a plain address the ipBlock allows"
        );
        let server =
            "  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{port: 8080}]\n";
        assert!(
            allowed(verdict(&cluster(server, true), false)),
            "every backend allowed"
        );
        let no_endpoint = cluster("", true).replace("{app: server}, ports", "{app: nobody}, ports");
        assert!(
            allowed(verdict(&no_endpoint, false)),
            "without a ready endpoint kube-proxy takes it nowhere"
        );
        let audit = cluster("", true).replace(
            "metadata: {name: client, namespace: t, labels: {app: client}}",
            "metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/enforcement: audit}}",
        );
        assert!(allowed(verdict(&audit, false)), "audit mode ends nothing");
        // Not the address's own verdict lifted: an address the policy denies stays denied.
        let inside = OpenFlow {
            destination: "10.9.9.9:30080".parse().expect("addr"),
            ..open(false)
        };
        assert!(matches!(
            inside.rejudge(Some(client_policy(&cluster(server, true), 2)), false),
            Rejudged::Revoke
        ));
    }
}

//! One TCP connection through the sidecar: original destination, admission (shared with the
//! packet filter, see [`crate::admit`]), the server-name check of a connection only toFQDNs
//! rules allow, then either a byte relay or (under HTTP rules, for a name-gated or observed
//! connection) [`http`]'s request-by-request serving; every stage answers to policy changes
//! through [`rejudge::watch`], and the flow event is written as the connection ends.

mod http;
mod rejudge;

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwall_policy::{Direction, Protocol};
use tokio::net::{TcpListener, TcpStream};

use crate::admit::{Admission, Admitted, Backends, NewFlow, Refused, admit, finish, own_http};
use crate::flow::FlowEvent;
use crate::orig_dst::{MapV4Mapped, original_dst};
use crate::pod_policy::FlowVerdict;
use crate::relay::{Transferred, relay, reset};
use crate::server_name::{First, FirstBytes, NameCheck};
use crate::shared::Shared;
use http::Served;
use rejudge::{Live, OpenFlow, REVOKED, Watched, watch};

/// Accepts connections forever, one task each.
pub(crate) async fn serve(listener: TcpListener, direction: Direction, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move { handle(stream, peer, direction, &shared).await });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?direction, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Judges and serves one accepted connection; `accepted_peer` is the address `accept` gave.
async fn handle(
    client: TcpStream,
    accepted_peer: SocketAddr,
    direction: Direction,
    shared: &Shared,
) {
    let started = Instant::now();
    let metrics = shared.metrics(direction);
    let peer = accepted_peer.map_v4_mapped();
    let dst = match original_dst(&client, accepted_peer) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "cannot read the original destination; resetting");
            reset(&client);
            return;
        }
    };
    let flow = NewFlow {
        direction,
        protocol: Protocol::Tcp,
        ip_protocol: 6,
        source: peer,
        destination: dst,
    };
    if shared.loops_back(dst) {
        let why = format!("{dst} is the sidecar itself; refusing a loop");
        return refuse(&client, Refused::outright(&flow, why), shared, started);
    }
    // Taken before the policy is read: a change from here on, while the connection waits for
    // its first bytes (the name check, an observed port) included, is judged again later
    // rather than lost.
    let mut changes = shared.policies.clone();
    changes.mark_unchanged();
    // A service's virtual IP: the connection goes to one of its backends that policy allows.
    let admitted = match admit(shared, flow, Backends::Pick) {
        Admission::Admitted(admitted) => admitted,
        Admission::Refused(refused) => return refuse(&client, refused, shared, started),
    };
    // The address judged without the names (when names are what might allow it).
    let unnamed = admitted.allowed_by_names_only(shared.check_server_name);
    let observed = admitted.observed();
    let Admitted {
        mut policy,
        verdict,
        destination,
        learned,
        names,
        mut event,
    } = admitted;
    // Only a toFQDNs rule allows this: the name the client asks the server for must be one of
    // the rule's too, so a shared (CDN) address does not open every site behind it. The server
    // is connected first, to tell who speaks first.
    let mut upstream = None;
    let mut name_gated = false;
    // Bytes of the client's already sent to the server (an allowed ClientHello).
    let mut handed_over = 0u64;
    if let Some(unnamed) = unnamed {
        let server = match connect_upstream(destination, shared).await {
            Ok(s) => s,
            Err(e) => return connect_failed(&client, event, e, shared, started),
        };
        let check = crate::server_name::check(
            &client,
            &server,
            &policy,
            destination,
            &names,
            shared.allow_unnamed_fqdn,
        );
        match Box::pin(check).await {
            NameCheck::Checked {
                name,
                handed_over: n,
            } => {
                handed_over = n;
                // An AUDIT event keeps the reason it passed in audit mode for.
                if event.verdict == FlowVerdict::Allowed {
                    event.reason = Some(format!("server name {name} checked"));
                }
            }
            // Every request's Host, not the first one's.
            NameCheck::PerRequest => name_gated = true,
            NameCheck::Unnamed if event.verdict == FlowVerdict::Allowed => {
                event.reason = Some(
                    "no server name to check (allowed by --allow-unnamed-fqdn-connections)".into(),
                );
            }
            NameCheck::Unnamed => {}
            NameCheck::Denied(why) => {
                shared.metrics.fqdn.server_name_denied.inc();
                // As the address is judged without the names: an Admin-tier Deny there is not
                // the pod's to audit.
                event.verdict = if policy.audit_covers(unnamed.egress.decision) {
                    FlowVerdict::Audit
                } else {
                    FlowVerdict::Denied
                };
                event.reason = Some(why);
            }
            NameCheck::Closed => {
                event.error = Some("closed before a word".into());
                return finish(shared, event, started);
            }
        }
        upstream = Some(server);
    }
    if event.verdict == FlowVerdict::Denied {
        return refuse(&client, Refused { event }, shared, started);
    }
    metrics.verdict(event.verdict);
    let open = OpenFlow {
        direction,
        source: peer,
        destination,
        learned,
        // Passed in audit mode only because of more than the address (its server name was
        // not the rule's, or a NodePort it may be leads to a denied backend): a later
        // policy's verdict on the address does not change that.
        audited_by_name: event.verdict == FlowVerdict::Audit
            && policy.flow_verdict(&verdict) == FlowVerdict::Allowed,
        node_ports_only_at_listed_addresses: shared.node_ports_only_at_listed_addresses,
    };

    // HTTP rules on this pod's side, or names to check on every request: serve the connection
    // request by request (boxed: rare paths must not grow every connection's task).
    let rules = own_http(&verdict, direction);
    if rules.is_some() || name_gated {
        let how = Served {
            rules,
            name_gated,
            upstream,
        };
        let live = Live {
            event,
            open,
            changes,
            started,
        };
        return Box::pin(http::serve(client, how, policy, live, shared)).await;
    }
    let server = match upstream {
        Some(s) => s,
        None => match connect_upstream(destination, shared).await {
            Ok(s) => s,
            Err(e) => return connect_failed(&client, event, e, shared, started),
        },
    };
    // A port the pod asked to observe (`podwall.io/observe-http`): a connection that opens
    // with HTTP is served request by request so each request is logged, with no rule to
    // answer to; anything else (TLS, a server that speaks first) is relayed as usual.
    if observed {
        // Waiting for the client's first bytes, the connection still answers to policy
        // changes: revoked at once, served under HTTP rules that now apply, and not holding a
        // superseded policy.
        let mut rules = None;
        let first = Box::pin(crate::server_name::first_message(&client, &server));
        let waited = watch(
            first,
            &mut changes,
            &open,
            shared.keep_revoked,
            |now, verdict| {
                open.describe(&mut event, &now, &verdict);
                rules = own_http(&verdict, direction);
                policy = now;
                match rules {
                    Some(_) => ControlFlow::Break(()),
                    None => ControlFlow::Continue(()),
                }
            },
        )
        .await;
        let http = match waited {
            Watched::Done(first) => {
                matches!(
                    first,
                    First::Client(FirstBytes::Http(_) | FirstBytes::Http2)
                )
            }
            // HTTP rules now apply.
            Watched::Stopped => true,
            Watched::Revoked => {
                reset(&client);
                reset(&server);
                metrics.revoked.inc();
                event.error = Some(REVOKED.into());
                return finish(shared, event, started);
            }
        };
        if http {
            let how = Served {
                rules,
                name_gated: false,
                upstream: Some(server),
            };
            let live = Live {
                event,
                open,
                changes,
                started,
            };
            return Box::pin(http::serve(client, how, policy, live, shared)).await;
        }
        // Said in the event: advise must not mistake a connection it never saw requests of
        // for one that made none.
        event.reason = Some(crate::flow::UNPARSED_OBSERVED.into());
    }

    // The client's socket has TCP_NODELAY from its listener (see `bind_tcp`).
    let _ = server.set_nodelay(true);
    metrics.open.inc();
    let mut transferred = Transferred::default();
    // From here the event holds the policy the connection lives under; this task lets go of
    // its own reference so a later policy can replace it.
    drop(policy);
    let relayed = relay(&client, &server, &mut transferred);
    let ending = watch(
        relayed,
        &mut changes,
        &open,
        shared.keep_revoked,
        |now, verdict| {
            // The event now names the policy and rule that allow it now, and the superseded
            // policy (its whole compiled engine) is freed once no connection names it, instead of
            // living as long as the longest one.
            open.describe(&mut event, &now, &verdict);
            ControlFlow::Continue(())
        },
    )
    .await;
    match ending {
        Watched::Done(Ok(())) => {}
        Watched::Done(Err(e)) => event.error = Some(format!("relay: {e}")),
        Watched::Revoked | Watched::Stopped => {
            reset(&client);
            reset(&server);
            metrics.revoked.inc();
            event.error = Some(REVOKED.into());
        }
    }
    metrics.open.dec();
    transferred.client_to_server += handed_over;
    metrics.bytes_sent.inc_by(transferred.client_to_server);
    metrics.bytes_received.inc_by(transferred.server_to_client);
    event.bytes_sent = transferred.client_to_server;
    event.bytes_received = transferred.server_to_client;
    finish(shared, event, started);
}

/// Ends a connection refused before it was relayed: reset, counted, its event written.
fn refuse(client: &TcpStream, refused: Refused, shared: &Shared, started: Instant) {
    reset(client);
    refused.finish(shared, started);
}

/// Ends an admitted connection whose server could not be reached.
fn connect_failed(
    client: &TcpStream,
    mut event: FlowEvent,
    error: String,
    shared: &Shared,
    started: Instant,
) {
    shared.metrics(event.direction).connect_errors.inc();
    reset(client);
    event.error = Some(error);
    finish(shared, event, started);
}

/// Connects to `dst` from a marked socket, within the connect timeout; what went wrong, for
/// the flow event, otherwise.
async fn connect_upstream(dst: SocketAddr, shared: &Shared) -> Result<TcpStream, String> {
    match tokio::time::timeout(shared.connect_timeout, crate::exempt::connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect to {dst}: {e}")),
        Err(_) => Err(format!(
            "connect to {dst}: timed out after {:?}",
            shared.connect_timeout
        )),
    }
}

//! One TCP connection through the sidecar: original destination, verdict, upstream, relay,
//! flow event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use podwall_policy::{Direction, Protocol};
use tokio::net::{TcpListener, TcpStream};

use crate::flow::{self, FlowEvent, FlowService};
use crate::orig_dst::{MapV4Mapped, original_dst};
use crate::pod_policy::FlowVerdict;
use crate::pod_policy::PodPolicy;
use crate::relay::{Transferred, relay, reset};
use crate::server_name::{ClientHello, First, FirstBytes};
use crate::shared::Shared;

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

/// A backend of `service` that policy lets this pod reach, taken round robin; or why none.
fn pick_backend(
    service: &podwall_policy::services::ServicePort,
    policy: &PodPolicy,
    shared: &Shared,
) -> Result<SocketAddr, String> {
    let n = service.backends.len();
    if n == 0 {
        return Err(format!(
            "service {} has no ready endpoint for port {}",
            service.service, service.port
        ));
    }
    let start = shared.round_robin.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let (ip, port) = service.backends[(start + i) % n];
        // The fast path; the chosen backend's explained verdict is worked out once, by the caller.
        if policy.allows(Direction::Egress, ip, Protocol::Tcp, port, &[]) {
            return Ok(SocketAddr::new(ip, port));
        }
    }
    Err(format!(
        "service {}: policy allows none of its {n} ready endpoints",
        service.service
    ))
}

/// The verdict `policy` gives a TCP connection between `peer` and `dst` (`names`: the toFQDNs
/// names `dst` is valid for).
fn judge(
    policy: &PodPolicy,
    direction: Direction,
    peer: SocketAddr,
    dst: SocketAddr,
    names: &[podwall_policy::FqdnId],
) -> podwall_policy::Verdict {
    match direction {
        Direction::Egress => policy.outbound_learned(dst.ip(), Protocol::Tcp, dst.port(), names),
        Direction::Ingress => policy.inbound(peer.ip(), Protocol::Tcp, dst.port()),
    }
}

/// Records in `event` the verdict `policy` gave, with the learned names it relied on.
fn describe(
    event: &mut FlowEvent,
    policy: &Arc<PodPolicy>,
    verdict: &podwall_policy::Verdict,
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

/// What names the requests of an HTTP-rule connection: the policy their rules came from and the
/// connection's event under it.
struct HttpContext {
    policy: Arc<PodPolicy>,
    connection: Arc<FlowEvent>,
}

/// The gate an HTTP-rule connection's requests answer to under `policy`, named by `policy` and
/// the connection's `event` under it.
fn http_gate(
    policy: Arc<PodPolicy>,
    rules: Option<(Arc<podwall_l7::HttpPolicy>, fixedbitset::FixedBitSet)>,
    hosts: Option<podwall_l7::serve::HostFilter>,
    event: &FlowEvent,
) -> podwall_l7::serve::Gate<HttpContext> {
    // A Host check stands for the address judged without names: an Admin-tier Deny of it is
    // not the pod's to audit.
    let audit = match &hosts {
        Some(_) => policy.audit_covers(
            policy
                .outbound(event.destination.ip, Protocol::Tcp, event.destination.port)
                .egress
                .decision,
        ),
        None => policy.own_audit(),
    };
    podwall_l7::serve::Gate {
        hosts,
        rules,
        audit,
        context: HttpContext {
            policy,
            connection: Arc::new(event.clone()),
        },
    }
}

/// This pod's HTTP rules for the connection, if any apply on its side.
fn own_http(
    verdict: &podwall_policy::Verdict,
    direction: Direction,
) -> Option<Vec<podwall_policy::RuleRef>> {
    match direction {
        Direction::Egress => verdict.egress.http.clone(),
        Direction::Ingress => verdict.ingress.http.clone(),
    }
}

/// What an open TCP connection is judged on again when policy changes.
struct OpenFlow {
    direction: Direction,
    source: SocketAddr,
    /// Where it goes (a Service's chosen backend, not the virtual IP).
    destination: SocketAddr,
    /// The toFQDNs names the destination was valid for when it opened: expiry does not end open
    /// connections, only a policy that no longer allows them.
    learned: Vec<Arc<str>>,
    /// It passed in audit mode only because its server name was not the rule's.
    audited_by_name: bool,
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
    Allowed(Arc<PodPolicy>, podwall_policy::Verdict),
}

impl OpenFlow {
    fn rejudge(&self, now: Option<Arc<PodPolicy>>, keep_revoked: bool) -> Rejudged {
        let Some(now) = now else {
            return Rejudged::Unchanged;
        };
        let names = now.fqdn_ids(&self.learned);
        let verdict = judge(&now, self.direction, self.source, self.destination, &names);
        match now.flow_verdict(&verdict) {
            FlowVerdict::Denied if keep_revoked => Rejudged::Unchanged,
            FlowVerdict::Denied => Rejudged::Revoke,
            _ => Rejudged::Allowed(now, verdict),
        }
    }

    /// Records in `event` the verdict `policy` gave the open connection.
    fn describe(
        &self,
        event: &mut FlowEvent,
        policy: &Arc<PodPolicy>,
        verdict: &podwall_policy::Verdict,
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

/// How a connection's relay ended.
enum Ending {
    Closed(std::io::Result<()>),
    Revoked,
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
    let (source, destination) = (peer, dst);
    let mut event = FlowEvent::new(direction, Protocol::Tcp, source, destination);

    if shared.loops_back(dst) {
        reset(&client);
        metrics.verdict(FlowVerdict::Denied);
        event.reason = Some(format!("{dst} is the sidecar itself; refusing a loop"));
        finish(shared, event, started);
        return;
    }
    // Taken before the policy is read: a change from here on, while the connection waits for
    // its first bytes (the name check, an observed port) included, is judged again later
    // rather than lost.
    let mut changes = shared.policies.clone();
    changes.mark_unchanged();
    let policy = shared.policy();
    let Some(mut policy) = policy else {
        reset(&client);
        metrics.verdict(FlowVerdict::Denied);
        event.reason = Some("no policy loaded yet: refusing everything (fail closed)".into());
        finish(shared, event, started);
        return;
    };
    // A service's virtual IP: the connection goes to one of its backends that policy allows.
    let dst = match direction {
        Direction::Egress => {
            match policy
                .engine
                .state()
                .services
                .lookup(dst.ip(), dst.port(), Protocol::Tcp)
            {
                Some(service) => {
                    event.service = Some(FlowService {
                        name: service.service.clone(),
                        address: dst,
                        backends: service.backends.len(),
                    });
                    match pick_backend(service, &policy, shared) {
                        Ok(backend) => backend,
                        Err(why) => {
                            reset(&client);
                            metrics.verdict(FlowVerdict::Denied);
                            event.reason = Some(why);
                            finish(shared, event, started);
                            return;
                        }
                    }
                }
                None => dst,
            }
        }
        Direction::Ingress => dst,
    };
    let destination = dst;
    // An address outside the cluster may be one the pod's DNS answers gave for a toFQDNs name:
    // the names it is valid for now are what the verdict (and later re-checks) may use.
    let learned: Vec<Arc<str>> = if direction == Direction::Egress
        && !policy.own_fqdn.is_empty()
        && policy.engine.pod_by_ip(dst.ip()).is_none()
    {
        shared.names.names_for(dst.ip())
    } else {
        Vec::new()
    };
    let names = policy.fqdn_ids(&learned);
    let verdict = judge(&policy, direction, peer, dst, &names);
    describe(
        &mut event,
        &policy,
        &verdict,
        (source, destination),
        &learned,
    );
    // Only a toFQDNs rule allows this: the name the client asks the server for must be one of
    // the rule's too, so a shared (CDN) address does not open every site behind it. The server
    // is connected first, to tell who speaks first; boxed, like the HTTP path below: rare paths
    // must not grow every connection's task.
    let mut upstream = None;
    let mut name_gated = false;
    // Bytes of the client's already sent to the server (an allowed ClientHello).
    let mut handed_over = 0u64;
    // The address judged without the names (when names are what might allow it).
    let unnamed =
        (event.verdict == FlowVerdict::Allowed && shared.check_server_name && !names.is_empty())
            .then(|| policy.outbound(dst.ip(), Protocol::Tcp, dst.port()))
            .filter(|v| !v.egress.allowed());
    if let Some(unnamed) = unnamed {
        let server = match connect_upstream(dst, shared).await {
            Ok(s) => s,
            Err(e) => {
                metrics.connect_errors.inc();
                reset(&client);
                event.error = Some(e);
                finish(shared, event, started);
                return;
            }
        };
        let denial = match Box::pin(crate::server_name::first_message(&client, &server)).await {
            First::Client(FirstBytes::Tls(Some(hello))) if hello.encrypted => Some(format!(
                "TLS with an encrypted ClientHello (ECH) to {dst}: the server name it acts on is hidden"
            )),
            First::Client(FirstBytes::Tls(Some(ClientHello {
                sni: Some(name),
                len,
                ..
            }))) => {
                if !crate::server_name::name_allowed(&policy, dst, &names, &name) {
                    Some(format!(
                        "TLS SNI {name} is not a name the toFQDNs rules allow for {dst}"
                    ))
                } else {
                    // The server must answer it with TLS before anything else of the
                    // client's passes.
                    match crate::server_name::hand_over_client_hello(&client, &server, len).await {
                        Ok(()) => {
                            handed_over = len as u64;
                            event.reason = Some(format!("server name {name} checked"));
                            None
                        }
                        Err(why) => Some(format!("TLS SNI {name} to {dst}: {why}")),
                    }
                }
            }
            First::Client(FirstBytes::Tls(_)) => Some(format!(
                "TLS without SNI to {dst}: the server name cannot be checked against the toFQDNs names"
            )),
            First::Client(FirstBytes::Http(_) | FirstBytes::Http2) => {
                // Every request's Host, not the first one's.
                name_gated = true;
                None
            }
            First::Client(FirstBytes::Incomplete) => Some(format!(
                "the TLS ClientHello or HTTP request head to {dst} did not arrive in full"
            )),
            First::Client(FirstBytes::Other) | First::Server if shared.allow_unnamed_fqdn => {
                event.reason = Some(
                    "no server name to check (allowed by --allow-unnamed-fqdn-connections)".into(),
                );
                None
            }
            First::Client(FirstBytes::Other) => Some(format!(
                "neither TLS nor HTTP to {dst}: no server name to check against the toFQDNs names (--allow-unnamed-fqdn-connections lets such protocols pass)"
            )),
            First::Server => Some(format!(
                "{dst} spoke first: no server name to check against the toFQDNs names (--allow-unnamed-fqdn-connections lets such protocols pass)"
            )),
            First::Closed => {
                event.error = Some("closed before a word".into());
                finish(shared, event, started);
                return;
            }
        };
        if let Some(why) = denial {
            shared.metrics.fqdn.server_name_denied.inc();
            // As the address is judged without the names: an Admin-tier Deny there is not the
            // pod's to audit.
            event.verdict = if policy.audit_covers(unnamed.egress.decision) {
                FlowVerdict::Audit
            } else {
                FlowVerdict::Denied
            };
            event.reason = Some(why);
        }
        upstream = Some(server);
    }
    metrics.verdict(event.verdict);
    if event.verdict == FlowVerdict::Denied {
        reset(&client);
        finish(shared, event, started);
        return;
    }
    let open = OpenFlow {
        direction,
        source,
        destination,
        learned,
        // Passed in audit mode only because its server name was not the rule's: a later
        // policy's verdict on the address does not change that.
        audited_by_name: event.verdict == FlowVerdict::Audit
            && policy.flow_verdict(&verdict) == FlowVerdict::Allowed,
    };

    // HTTP rules on this pod's side, or names to check on every request: serve the connection
    // request by request.
    let rules = own_http(&verdict, direction);
    if rules.is_some() || name_gated {
        Box::pin(serve_http(
            client, rules, name_gated, upstream, policy, event, open, changes, shared, started,
        ))
        .await;
        return;
    }
    // A port the pod asked to observe (`podwall.io/observe-http`): a connection that opens
    // with HTTP is served request by request so each request is logged, with no rule to
    // answer to; anything else (TLS, a server that speaks first) is relayed as usual.
    let server = match upstream {
        Some(s) => s,
        None => match connect_upstream(dst, shared).await {
            Ok(s) => s,
            Err(e) => {
                metrics.connect_errors.inc();
                reset(&client);
                event.error = Some(e);
                finish(shared, event, started);
                return;
            }
        },
    };
    if direction == Direction::Ingress && policy.observe_http.binary_search(&dst.port()).is_ok() {
        // Waiting for the client's first bytes, the connection still answers to policy
        // changes: revoked at once, served under HTTP rules that now apply, and not holding a
        // superseded policy (a probe receiver, so the relay's own loop still sees the change).
        let mut probe = changes.clone();
        let mut rules = None;
        let http = loop {
            tokio::select! {
                first = crate::server_name::first_message(&client, &server) => {
                    break matches!(first, First::Client(FirstBytes::Http(_) | FirstBytes::Http2));
                }
                changed = probe.changed() => {
                    if changed.is_err() {
                        // No more changes: wait for the bytes alone.
                        let first = Box::pin(crate::server_name::first_message(&client, &server)).await;
                        break matches!(first, First::Client(FirstBytes::Http(_) | FirstBytes::Http2));
                    }
                    match open.rejudge(probe.borrow_and_update().clone(), shared.keep_revoked) {
                        Rejudged::Unchanged => {}
                        Rejudged::Revoke => {
                            reset(&client);
                            reset(&server);
                            metrics.revoked.inc();
                            event.error = Some("reset: a policy change no longer allows this connection".into());
                            finish(shared, event, started);
                            return;
                        }
                        Rejudged::Allowed(now, verdict) => {
                            open.describe(&mut event, &now, &verdict);
                            rules = own_http(&verdict, direction);
                            policy = now;
                            if rules.is_some() {
                                break true;
                            }
                        }
                    }
                }
            }
        };
        if http {
            Box::pin(serve_http(
                client,
                rules,
                false,
                Some(server),
                policy,
                event,
                open,
                changes,
                shared,
                started,
            ))
            .await;
            return;
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
    // its own reference so a later policy can replace it (see the loop).
    drop(policy);
    let ending = {
        let relayed = relay(&client, &server, &mut transferred);
        tokio::pin!(relayed);
        let mut watching = true;
        loop {
            tokio::select! {
                result = &mut relayed => break Ending::Closed(result),
                changed = changes.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    match open.rejudge(changes.borrow_and_update().clone(), shared.keep_revoked) {
                        Rejudged::Unchanged => {}
                        Rejudged::Revoke => break Ending::Revoked,
                        // The event now names the policy and rule that allow it now, and the
                        // superseded policy (its whole compiled engine) is freed once no
                        // connection names it, instead of living as long as the longest one.
                        Rejudged::Allowed(now, verdict) => open.describe(&mut event, &now, &verdict),
                    }
                }
            }
        }
    };
    match ending {
        Ending::Closed(Ok(())) => {}
        Ending::Closed(Err(e)) => event.error = Some(format!("relay: {e}")),
        Ending::Revoked => {
            reset(&client);
            reset(&server);
            metrics.revoked.inc();
            event.error = Some("reset: a policy change no longer allows this connection".into());
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

/// The hosts the requests of a connection that only toFQDNs rules allow may name: those of
/// the names `dst` was learned for that a rule allows to it. A request naming another host
/// counts as a server-name denial, like a connection refused for its SNI.
fn name_filter(
    policy: Arc<PodPolicy>,
    dst: SocketAddr,
    learned: &[Arc<str>],
    shared: &Shared,
) -> podwall_l7::serve::HostFilter {
    let names = policy.fqdn_ids(learned);
    let denied = shared.metrics.fqdn.server_name_denied.clone();
    podwall_l7::serve::HostFilter(Arc::new(move |host: &str| {
        let allowed =
            crate::server_name::name_allowed(&policy, dst, &names, &host.to_ascii_lowercase());
        if !allowed {
            denied.inc();
        }
        allowed
    }))
}

/// Serves a connection request by request, each judged and a flow event of its own, the
/// connection's event closing the series: when the pod's HTTP rules apply to its peer and
/// port, and when it is allowed only for some names (`name_gated`: every request's host must
/// be one). `upstream`: the server, when it was connected already.
#[allow(clippy::too_many_arguments)]
async fn serve_http(
    client: TcpStream,
    rules: Option<Vec<podwall_policy::RuleRef>>,
    name_gated: bool,
    upstream: Option<TcpStream>,
    policy: Arc<PodPolicy>,
    mut event: FlowEvent,
    open: OpenFlow,
    mut changes: crate::pod_policy::PolicyReceiver,
    shared: &Shared,
    started: Instant,
) {
    let (direction, dst) = (open.direction, open.destination);
    let compiled = match (&rules, policy.http.clone()) {
        (Some(rules), Some(http)) => Some((http.clone(), http.mask(rules))),
        (None, _) => None,
        (Some(_), None) => {
            // The rules did not compile (already logged): refuse rather than forward unchecked.
            reset(&client);
            event.error = Some("HTTP rules unavailable: refused".into());
            finish(shared, event, started);
            return;
        }
    };
    let hosts = name_gated.then(|| name_filter(policy.clone(), dst, &open.learned, shared));
    let gates: podwall_l7::serve::Gates<HttpContext> = Arc::new(arc_swap::ArcSwap::from_pointee(
        http_gate(policy.clone(), compiled, hosts, &event),
    ));
    let flows = shared.flows.clone();
    let counters = shared.metrics.http.clone();
    // Rule names by (rule, entry), resolved once per policy rather than per request; the
    // policy they were resolved with is kept to tell when a change made them stale.
    type Names = Vec<((podwall_policy::RuleRef, usize), (Arc<str>, Arc<str>))>;
    let names: std::sync::Mutex<(Option<Arc<PodPolicy>>, Names)> =
        std::sync::Mutex::new((None, Vec::new()));
    let observer: podwall_l7::serve::Observer<HttpContext> = Arc::new(
        move |r: podwall_l7::serve::RequestEvent, ctx: &HttpContext| {
            use podwall_l7::serve::RequestVerdict;
            // A request the rules allow on a connection that passed only in audit mode would
            // have been refused with it: it is an audited request too.
            let audited = ctx.connection.verdict == FlowVerdict::Audit;
            let verdict = match r.verdict {
                RequestVerdict::Allowed if audited => {
                    counters.audit.inc();
                    FlowVerdict::Audit
                }
                RequestVerdict::Allowed => {
                    counters.allowed.inc();
                    FlowVerdict::Allowed
                }
                RequestVerdict::Audit => {
                    counters.audit.inc();
                    FlowVerdict::Audit
                }
                RequestVerdict::Denied => {
                    counters.denied.inc();
                    FlowVerdict::Denied
                }
                RequestVerdict::Refused => {
                    counters.refused.inc();
                    FlowVerdict::Denied
                }
            };
            let (policy_name, rule) = match r.rule {
                Some(key) => {
                    let mut cache = names.lock().unwrap_or_else(|e| e.into_inner());
                    let (named_by, names) = &mut *cache;
                    if !named_by
                        .as_ref()
                        .is_some_and(|p| Arc::ptr_eq(p, &ctx.policy))
                    {
                        *named_by = Some(ctx.policy.clone());
                        names.clear();
                    }
                    let (p, f) = match names.iter().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.clone(),
                        None => {
                            let info = ctx.policy.engine.rule_info(key.0, None);
                            let v: (Arc<str>, Arc<str>) = (
                                info.policy.into(),
                                format!("{}.rules.http[{}]", info.field, key.1).into(),
                            );
                            names.push((key, v.clone()));
                            v
                        }
                    };
                    (Some(p), Some(f))
                }
                None => (None, None),
            };
            flows.emit_request(flow::RequestFlow {
                connection: ctx.connection.clone(),
                time: std::time::SystemTime::now(),
                verdict,
                duration: r.duration,
                error: r.error,
                http: flow::HttpEvent {
                    method: r.method,
                    host: r.host,
                    path: r.path,
                    status: r.status,
                    policy: policy_name,
                    rule,
                    header_actions: r.actions.iter().map(|a| format!("{a:?}")).collect(),
                },
            });
        },
    );
    let metrics = shared.metrics(direction);
    metrics.open.inc();
    // A second handle on the socket, to reset it if a policy change revokes the connection.
    let handle = std::os::fd::AsFd::as_fd(&client).try_clone_to_owned().ok();
    // The gate holds what the requests need; after a change, nothing here keeps the old
    // policy and its compiled rules alive.
    drop(policy);
    // The first request goes to the server connected already, if there is one.
    let dial = match upstream {
        None => crate::exempt::dial(),
        Some(stream) => {
            let first = Arc::new(std::sync::Mutex::new(Some(stream)));
            Arc::new(move |addr: SocketAddr| {
                let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                let fut: std::pin::Pin<
                    Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>,
                > = match ready {
                    Some(s) => Box::pin(std::future::ready(Ok(s))),
                    None => Box::pin(crate::exempt::connect(addr)),
                };
                fut
            }) as podwall_l7::serve::Dial
        }
    };
    let served = podwall_l7::serve::serve(
        client,
        podwall_l7::serve::Target { addr: dst, dial },
        gates.clone(),
        podwall_l7::serve::Limits {
            connect_timeout: shared.connect_timeout,
            ..Default::default()
        },
        observer,
    );
    tokio::pin!(served);
    let revoke = |why: &str| -> Result<(), String> {
        if let Some(fd) = &handle {
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Linger, &linger);
        }
        metrics.revoked.inc();
        Err(why.into())
    };
    let mut watching = true;
    let result = loop {
        tokio::select! {
            r = &mut served => break r,
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let (now, verdict) =
                    match open.rejudge(changes.borrow_and_update().clone(), shared.keep_revoked) {
                        // Kept open against policy, its requests keep answering to the old rules.
                        Rejudged::Unchanged => continue,
                        Rejudged::Revoke => {
                            break revoke("reset: a policy change no longer allows this connection");
                        }
                        Rejudged::Allowed(now, verdict) => (now, verdict),
                    };
                // Still allowed: the next request answers to the new policy's HTTP rules for
                // this peer and port (none left: an L4 allow switched filtering off).
                let rules = match (own_http(&verdict, direction), now.http.clone()) {
                    (Some(rules), Some(http)) => Some((http.clone(), http.mask(&rules))),
                    (None, _) => None,
                    (Some(_), None) => {
                        // The new rules did not compile (already logged): refuse, as for a
                        // new connection, rather than check requests against stale ones.
                        break revoke("reset: the new HTTP rules are unavailable");
                    }
                };
                let hosts = name_gated.then(|| name_filter(now.clone(), dst, &open.learned, shared));
                open.describe(&mut event, &now, &verdict);
                gates.store(Arc::new(http_gate(now, rules, hosts, &event)));
            }
        }
    };
    metrics.open.dec();
    event.reason = Some(if name_gated && rules.is_none() {
        "allowed for some names only: each request's host is checked, and is its own flow event"
            .into()
    } else if rules.is_none() {
        "HTTP observed (podwall.io/observe-http): each request is its own flow event".into()
    } else {
        "HTTP rules apply: each request is its own flow event".into()
    });
    event.error = result.err();
    finish(shared, event, started);
}

fn finish(shared: &Shared, mut event: FlowEvent, started: Instant) {
    event.time = std::time::SystemTime::now();
    event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    shared.flows.emit(event);
}

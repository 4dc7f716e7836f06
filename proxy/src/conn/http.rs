//! A TCP connection served request by request (by `podwall_l7::serve`): when the pod's HTTP
//! rules apply to its peer and port, when it is allowed only for some toFQDNs names (every
//! request's Host must be one), or when the port is observed (`podwall.io/observe-http`).
//! Each request is a flow event of its own, written by [`RequestLog`]; the connection's event
//! closes the series. Policy changes swap the gate the next request answers to.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use podwall_l7::serve::{self as l7, Gate, Gates, RequestEvent, RequestVerdict};
use podwall_policy::{Protocol, RuleRef};
use tokio::net::TcpStream;

use super::rejudge::{Live, REVOKED, Watched, watch};
use crate::admit::{finish, own_http};
use crate::flow::{self, FlowEvent};
use crate::metrics::HttpMetrics;
use crate::pod_policy::{FlowVerdict, PodPolicy};
use crate::relay::reset;
use crate::shared::Shared;

/// What names the requests of an HTTP-served connection: the policy their gate came from and
/// the connection's event under it.
pub(super) struct HttpContext {
    policy: Arc<PodPolicy>,
    connection: Arc<FlowEvent>,
}

/// What the requests answer to: the compiled rules (`None`: observed or name-gated only).
type Compiled = Option<(Arc<podwall_l7::HttpPolicy>, fixedbitset::FixedBitSet)>;

/// `rules` compiled under `policy`; `Err` when the policy's HTTP rules did not compile (already
/// logged): the connection is refused rather than forwarded unchecked.
fn compile(rules: Option<&[RuleRef]>, policy: &PodPolicy) -> Result<Compiled, ()> {
    match (rules, &policy.http) {
        (Some(rules), Some(http)) => Ok(Some((http.clone(), http.mask(rules)))),
        (None, _) => Ok(None),
        (Some(_), None) => Err(()),
    }
}

/// The gate a connection's requests answer to under `policy`, named by `policy` and the
/// connection's `event` under it.
fn gate(
    policy: Arc<PodPolicy>,
    rules: Compiled,
    hosts: Option<l7::HostFilter>,
    event: &FlowEvent,
) -> Gate<HttpContext> {
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
    Gate {
        hosts,
        rules,
        audit,
        context: HttpContext {
            policy,
            connection: Arc::new(event.clone()),
        },
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
) -> l7::HostFilter {
    let names = policy.fqdn_ids(learned);
    let denied = shared.metrics.fqdn.server_name_denied.clone();
    l7::HostFilter(Arc::new(move |host: &str| {
        let allowed =
            crate::server_name::name_allowed(&policy, dst, &names, &host.to_ascii_lowercase());
        if !allowed {
            denied.inc();
        }
        allowed
    }))
}

/// Rule names by (rule, entry), resolved once per policy rather than per request, with the
/// policy they were resolved under (a change makes them stale).
type RuleNames = (
    Option<Arc<PodPolicy>>,
    Vec<((RuleRef, usize), (Arc<str>, Arc<str>))>,
);

/// Turns each request's outcome into a counted flow event.
struct RequestLog {
    flows: flow::FlowLog,
    counters: HttpMetrics,
    names: Mutex<RuleNames>,
}

impl RequestLog {
    fn observe(&self, r: RequestEvent, ctx: &HttpContext) {
        let verdict = self.count(r.verdict, ctx.connection.verdict);
        let (policy, rule) = match r.rule {
            Some(key) => {
                let (p, f) = self.rule_name(key, &ctx.policy);
                (Some(p), Some(f))
            }
            None => (None, None),
        };
        self.flows.emit_request(flow::RequestFlow {
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
                policy,
                rule,
                header_actions: r.actions.iter().map(|a| format!("{a:?}")).collect(),
            },
        });
    }

    /// Counts a request's verdict and gives its flow verdict.
    fn count(&self, verdict: RequestVerdict, connection: FlowVerdict) -> FlowVerdict {
        let c = &self.counters;
        match verdict {
            // A request the rules allow on a connection that passed only in audit mode would
            // have been refused with it: it is an audited request too.
            RequestVerdict::Allowed if connection == FlowVerdict::Audit => {
                c.audit.inc();
                FlowVerdict::Audit
            }
            RequestVerdict::Allowed => {
                c.allowed.inc();
                FlowVerdict::Allowed
            }
            RequestVerdict::Audit => {
                c.audit.inc();
                FlowVerdict::Audit
            }
            RequestVerdict::Denied => {
                c.denied.inc();
                FlowVerdict::Denied
            }
            RequestVerdict::Refused => {
                c.refused.inc();
                FlowVerdict::Denied
            }
        }
    }

    /// The policy and field (`…rules.http[i]`) of the rule entry `key` under `policy`.
    fn rule_name(&self, key: (RuleRef, usize), policy: &Arc<PodPolicy>) -> (Arc<str>, Arc<str>) {
        let mut cache = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let (named_by, names) = &mut *cache;
        if !named_by.as_ref().is_some_and(|p| Arc::ptr_eq(p, policy)) {
            *named_by = Some(policy.clone());
            names.clear();
        }
        if let Some((_, v)) = names.iter().find(|(k, _)| *k == key) {
            return v.clone();
        }
        let info = policy.engine.rule_info(key.0, None);
        let v: (Arc<str>, Arc<str>) = (
            info.policy.into(),
            format!("{}.rules.http[{}]", info.field, key.1).into(),
        );
        names.push((key, v.clone()));
        v
    }
}

/// How a connection comes to be served request by request.
pub(super) struct Served {
    /// This pod's HTTP rules for its peer and port, if any.
    pub rules: Option<Vec<RuleRef>>,
    /// Allowed for some names only: every request's host must be one.
    pub name_gated: bool,
    /// The server, when it was connected already.
    pub upstream: Option<TcpStream>,
}

/// Serves a connection request by request until it ends or a policy change revokes it.
pub(super) async fn serve(
    client: TcpStream,
    how: Served,
    policy: Arc<PodPolicy>,
    live: Live,
    shared: &Shared,
) {
    let Served {
        rules,
        name_gated,
        upstream,
    } = how;
    let Live {
        mut event,
        open,
        mut changes,
        started,
    } = live;
    let (direction, dst) = (open.direction, open.destination);
    let Ok(compiled) = compile(rules.as_deref(), &policy) else {
        reset(&client);
        event.error = Some("HTTP rules unavailable: refused".into());
        finish(shared, event, started);
        return;
    };
    let hosts = name_gated.then(|| name_filter(policy.clone(), dst, &open.learned, shared));
    let gates: Gates<HttpContext> = Arc::new(arc_swap::ArcSwap::from_pointee(gate(
        policy.clone(),
        compiled,
        hosts,
        &event,
    )));
    let log = RequestLog {
        flows: shared.flows.clone(),
        counters: shared.metrics.http.clone(),
        names: Mutex::new((None, Vec::new())),
    };
    let observer: l7::Observer<HttpContext> =
        Arc::new(move |r: RequestEvent, ctx: &HttpContext| log.observe(r, ctx));
    let metrics = shared.metrics(direction);
    metrics.open.inc();
    // A second handle on the socket, to reset it if a policy change revokes the connection.
    let handle = std::os::fd::AsFd::as_fd(&client).try_clone_to_owned().ok();
    // The gate holds what the requests need; after a change, nothing here keeps the old
    // policy and its compiled rules alive.
    drop(policy);
    let served = l7::serve(
        client,
        l7::Target {
            addr: dst,
            dial: dial(upstream),
        },
        gates.clone(),
        l7::Limits {
            connect_timeout: shared.connect_timeout,
            ..Default::default()
        },
        observer,
    );
    let mut unavailable = false;
    let watched = watch(
        served,
        &mut changes,
        &open,
        shared.keep_revoked,
        |now, verdict| {
            // Still allowed: the next request answers to the new policy's HTTP rules for this
            // peer and port (none left: an L4 allow switched filtering off).
            let Ok(rules) = compile(own_http(&verdict, direction).as_deref(), &now) else {
                // The new rules did not compile (already logged): refuse, as for a new
                // connection, rather than check requests against stale ones.
                unavailable = true;
                return ControlFlow::Break(());
            };
            let hosts = name_gated.then(|| name_filter(now.clone(), dst, &open.learned, shared));
            open.describe(&mut event, &now, &verdict);
            gates.store(Arc::new(gate(now, rules, hosts, &event)));
            ControlFlow::Continue(())
        },
    )
    .await;
    let result = match watched {
        Watched::Done(result) => result,
        Watched::Revoked | Watched::Stopped => {
            // Dropping the served future closes the client's socket; linger 0 makes that a reset.
            if let Some(fd) = &handle {
                let linger = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ =
                    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Linger, &linger);
            }
            metrics.revoked.inc();
            Err(if unavailable {
                "reset: the new HTTP rules are unavailable".into()
            } else {
                REVOKED.into()
            })
        }
    };
    metrics.open.dec();
    event.reason = Some(
        if name_gated && rules.is_none() {
            "allowed for some names only: each request's host is checked, and is its own flow event"
        } else if rules.is_none() {
            "HTTP observed (podwall.io/observe-http): each request is its own flow event"
        } else {
            "HTTP rules apply: each request is its own flow event"
        }
        .into(),
    );
    event.error = result.err();
    finish(shared, event, started);
}

/// How the requests' upstream is dialled: the first goes to the server connected already, if
/// there is one.
fn dial(upstream: Option<TcpStream>) -> l7::Dial {
    let Some(stream) = upstream else {
        return crate::exempt::dial();
    };
    let first = Arc::new(Mutex::new(Some(stream)));
    Arc::new(move |addr: SocketAddr| {
        let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let fut: std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>,
        > = match ready {
            Some(s) => Box::pin(std::future::ready(Ok(s))),
            None => Box::pin(crate::exempt::connect(addr)),
        };
        fut
    })
}

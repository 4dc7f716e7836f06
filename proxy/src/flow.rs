//! Flow events: one JSON line per connection (or DNS query) on stdout, Hubble-like.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use podwall_policy::{Decision, Direction, Engine, Protocol, SideVerdict};
use serde::Serialize;

/// What happened to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlowVerdict {
    /// Policy allowed it and it was forwarded.
    Allowed,
    /// Policy denied it: reset, nothing forwarded.
    Denied,
    /// Policy would have denied it; audit mode let it through.
    Audit,
}

/// One end of a flow.
#[derive(Clone, Debug, Serialize)]
pub struct FlowPeer {
    /// Namespace of the pod with this address, if it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of that pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address (written as text).
    pub ip: std::net::IpAddr,
    /// The port.
    pub port: u16,
}

/// One side's decision, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSide {
    /// Whether this side allowed the flow.
    pub allowed: bool,
    /// Why (see `podwall analyze check`): `rule`, `not-isolated`, `not-a-pod`, ...
    pub reason: &'static str,
    /// The policy whose rule allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// That rule (`spec.egress[0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// For a denial: the policies that isolate the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// The DNS names the destination address was learned for (toFQDNs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// A finished flow.
#[derive(Clone, Debug, Serialize)]
pub struct FlowEvent {
    /// When it ended; written as RFC 3339 UTC with milliseconds (formatted on the writer
    /// thread, not the connection's).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Allowed, denied or audit.
    pub verdict: FlowVerdict,
    /// `egress` (this pod opened it) or `ingress` (this pod received it).
    pub direction: Direction,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Who opened it.
    pub source: FlowPeer,
    /// Where it was going (the original destination).
    pub destination: FlowPeer,
    /// The source's egress decision.
    pub egress: Option<FlowSide>,
    /// The destination's ingress decision.
    pub ingress: Option<FlowSide>,
    /// A short reason when no policy decided (no policy loaded yet, loop, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes from source to destination.
    pub bytes_sent: u64,
    /// Bytes from destination to source.
    pub bytes_received: u64,
    /// How long the flow lasted, in milliseconds.
    pub duration_ms: f64,
    /// What went wrong after the verdict (connect refused, reset, revoked by a policy change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Layer 7: an HTTP request on a connection whose peer and port carry HTTP rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Event>,
    /// The service whose virtual IP the client dialled (the destination is then the backend
    /// chosen for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<FlowService>,
}

/// A service the connection went through.
#[derive(Clone, Debug, Serialize)]
pub struct FlowService {
    /// `namespace/name`.
    pub name: String,
    /// The virtual IP and port dialled.
    pub address: String,
    /// Ready backends it had.
    pub backends: usize,
}

/// The application-layer part of a flow event.
#[derive(Clone, Debug, Serialize)]
pub struct L7Event {
    /// An HTTP request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpEvent>,
    /// A DNS query and its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsEvent>,
}

/// One DNS query.
#[derive(Clone, Debug, Serialize)]
pub struct DnsEvent {
    /// The name asked for (canonical).
    pub query: String,
    /// The record type (`A`, `AAAA`, ...).
    pub qtype: String,
    /// The response code the pod got (`NOERROR`, `NXDOMAIN`, `REFUSED`, ...).
    pub rcode: String,
    /// The addresses in the answer (following CNAMEs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// The smallest TTL of those addresses, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// The answer was truncated (the pod should ask again over TCP).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why the query was allowed or refused (`resolver`, `dns-rule`, `implicit-for-toFQDNs`,
    /// `no-dns-rule-matched`, `resolver-denied`).
    pub reason: &'static str,
    /// The policy whose DNS rule allowed the query, or whose toFQDNs name did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// That rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Addresses the answer taught for toFQDNs rules.
    #[serde(skip_serializing_if = "is_zero")]
    pub learned: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One HTTP request.
#[derive(Clone, Debug, Serialize)]
pub struct HttpEvent {
    /// The method.
    pub method: String,
    /// The host, when named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The normalised path (with query).
    pub path: String,
    /// The status the client got.
    pub status: u16,
    /// The policy whose HTTP rule allowed the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<str>>,
    /// That rule (`spec.ingress[0].toPorts[0].rules.http[1]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// Header changes made by `headerMatches` mismatch actions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_actions: Vec<String>,
}

/// One HTTP request on a connection with HTTP rules. Written as a [`FlowEvent`] with `l7` set;
/// the connection's part is shared by all its requests, so a request costs only its own fields
/// (and the time is formatted on the writer thread).
#[derive(Clone, Debug)]
pub struct RequestFlow {
    /// The connection the request came on (its `l7`, `error` and byte counts are not used).
    pub connection: Arc<FlowEvent>,
    /// When the response head was sent.
    pub time: SystemTime,
    /// What the HTTP rules decided.
    pub verdict: FlowVerdict,
    /// From the request head to the response head.
    pub duration: Duration,
    /// What went wrong upstream, if anything.
    pub error: Option<String>,
    /// The request.
    pub http: HttpEvent,
}

/// The JSON line of a [`RequestFlow`]: the fields of [`FlowEvent`], in its order.
#[derive(Serialize)]
struct RequestLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    time: SystemTime,
    verdict: FlowVerdict,
    direction: Direction,
    protocol: Protocol,
    source: &'a FlowPeer,
    destination: &'a FlowPeer,
    egress: &'a Option<FlowSide>,
    ingress: &'a Option<FlowSide>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    bytes_sent: u64,
    bytes_received: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    l7: L7Line<'a>,
}

#[derive(Serialize)]
struct L7Line<'a> {
    http: &'a HttpEvent,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl Serialize for RequestFlow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &*self.connection;
        RequestLine {
            time: self.time,
            verdict: self.verdict,
            direction: c.direction,
            protocol: c.protocol,
            source: &c.source,
            destination: &c.destination,
            egress: &c.egress,
            ingress: &c.ingress,
            reason: c.reason.as_deref(),
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            error: self.error.as_deref(),
            l7: L7Line { http: &self.http },
        }
        .serialize(s)
    }
}

/// What the writer thread writes.
#[derive(Debug)]
enum Line {
    Flow(Box<FlowEvent>),
    Request(Box<RequestFlow>),
}

/// An address, with the pod that has it.
pub fn peer(engine: Option<&Engine>, addr: SocketAddr) -> FlowPeer {
    let pod = engine.and_then(|e| e.pod_by_ip(addr.ip()).map(|p| e.state().pod(p)));
    FlowPeer {
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        ip: addr.ip(),
        port: addr.port(),
    }
}

/// One side of a verdict, for the event.
pub fn side(engine: &Engine, side: &SideVerdict) -> FlowSide {
    let (reason, rule) = match side.decision {
        Decision::NotAPod => ("not-a-pod", None),
        Decision::HostNetwork => ("host-network", None),
        Decision::NotIsolated => ("not-isolated", None),
        Decision::SamePod => ("same-pod", None),
        Decision::OwnNode => ("own-node", None),
        Decision::Rule(r) => ("rule", Some(r)),
        Decision::NoRuleMatched => ("no-rule-matched", None),
    };
    let isolated_by = if side.decision == Decision::NoRuleMatched {
        side.pod
            .map(|p| engine.isolated_by(p, side.direction))
            .unwrap_or_default()
            .iter()
            .map(|id| engine.state().policy(*id).name.to_string())
            .collect()
    } else {
        Vec::new()
    };
    // Only the policy and the rule's place: `podwall analyze check` explains it in full.
    FlowSide {
        allowed: side.allowed(),
        reason,
        policy: rule.map(|r| engine.state().policy(r.policy).name.to_string()),
        rule: rule.map(|r| {
            engine
                .state()
                .policy(r.policy)
                .rules(r.direction)
                .unwrap_or_default()[r.index as usize]
                .field
                .clone()
        }),
        isolated_by,
        names: Vec::new(),
    }
}

/// Sends events to the writer thread without waiting; if the writer falls behind by more than
/// the queue, events are dropped and counted rather than slowing connections down.
///
/// The writer is a plain thread with a buffered stdout: connection tasks never wait on it, and
/// under load it writes many events per wake-up. (tokio's stdout would hand every write to the
/// blocking pool: a thread switch per event.)
#[derive(Clone, Debug)]
pub struct FlowLog {
    // An unbounded (linked-blocks) channel with the bound kept by `queued`: a bounded std
    // channel allocates and touches every slot up front, 200 KB resident on an idle sidecar for
    // a queue that is empty almost always. Events are boxed so a block stays small.
    tx: std::sync::mpsc::Sender<Line>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: prometheus_client::metrics::counter::Counter,
}

/// Events waiting for the writer beyond which new ones are dropped (and counted).
const QUEUE_LIMIT: usize = 8192;

impl FlowLog {
    /// Starts the writer thread, writing JSON lines to stdout.
    pub fn stdout(dropped: prometheus_client::metrics::counter::Counter) -> Self {
        Self::writing_to(
            || std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()),
            dropped,
        )
    }

    /// Starts the writer thread, writing JSON lines to what `open` gives (on that thread).
    fn writing_to<W: std::io::Write>(
        open: impl FnOnce() -> W + Send + 'static,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Line>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                let mut out = open();
                while let Ok(first) = rx.recv() {
                    let mut event = Some(first);
                    while let Some(e) = event {
                        taken.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        let written = match &e {
                            Line::Flow(e) => serde_json::to_writer(&mut out, e),
                            Line::Request(r) => serde_json::to_writer(&mut out, r),
                        };
                        if written.is_err() || out.write_all(b"\n").is_err() {
                            return;
                        }
                        event = rx.try_recv().ok();
                    }
                    // The queue is empty: flush, then let events gather for a moment. While this thread
                    // sleeps, senders never have to wake it, which keeps a futex call off every
                    // connection under load; lines still appear within a few milliseconds.
                    if out.flush().is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the flow log writer; flow events are dropped");
        }
        FlowLog {
            tx,
            queued,
            dropped,
        }
    }

    fn queue(&self, line: Line) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.queued.fetch_add(1, Relaxed) >= QUEUE_LIMIT {
            self.queued.fetch_sub(1, Relaxed);
            self.dropped.inc();
            return;
        }
        if self.tx.send(line).is_err() {
            // The writer is gone (stdout closed).
            self.queued.fetch_sub(1, Relaxed);
            self.dropped.inc();
        }
    }

    /// Queues an event.
    pub fn emit(&self, event: FlowEvent) {
        self.queue(Line::Flow(Box::new(event)));
    }

    /// Queues an HTTP request's event.
    pub fn emit_request(&self, request: RequestFlow) {
        self.queue(Line::Request(Box::new(request)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until its test is over.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_costs_at_most_the_queue_limit_then_events_are_counted_as_dropped() {
        let (release, stuck) = std::sync::mpsc::channel();
        let dropped = prometheus_client::metrics::counter::Counter::default();
        let log = FlowLog::writing_to(move || Stuck(stuck), dropped.clone());
        for _ in 0..QUEUE_LIMIT + 100 {
            log.emit(connection());
        }
        // The writer took at most one event before it stuck.
        assert!(
            (99..=100).contains(&dropped.get()),
            "dropped {}",
            dropped.get()
        );
        drop(release);
    }

    fn connection() -> FlowEvent {
        FlowEvent {
            service: None,
            time: SystemTime::now(),
            verdict: FlowVerdict::Allowed,
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            source: FlowPeer {
                namespace: Some("shop".into()),
                pod: Some("frontend".into()),
                ip: "10.0.0.1".parse().expect("ip"),
                port: 40000,
            },
            destination: FlowPeer {
                namespace: Some("shop".into()),
                pod: Some("api".into()),
                ip: "10.0.0.2".parse().expect("ip"),
                port: 8080,
            },
            egress: None,
            ingress: Some(FlowSide {
                allowed: true,
                reason: "rule",
                policy: Some("api-l7-policy".into()),
                rule: Some("spec.ingress[0]".into()),
                isolated_by: Vec::new(),
                names: Vec::new(),
            }),
            reason: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0.0,
            error: None,
            l7: None,
        }
    }

    #[test]
    fn a_request_line_is_the_connection_event_with_l7_set() {
        let http = HttpEvent {
            method: "GET".into(),
            host: Some("api".into()),
            path: "/api/v1/items".into(),
            status: 200,
            policy: Some("api-l7-policy".into()),
            rule: Some("spec.ingress[0].toPorts[0].rules.http[0]".into()),
            header_actions: Vec::new(),
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let request = RequestFlow {
            connection: Arc::new(connection()),
            time,
            verdict: FlowVerdict::Denied,
            duration: Duration::from_micros(1500),
            error: Some("upstream reset".into()),
            http: http.clone(),
        };
        let mut whole = connection();
        whole.time = time;
        whole.verdict = FlowVerdict::Denied;
        whole.duration_ms = 1.5;
        whole.error = Some("upstream reset".into());
        whole.l7 = Some(L7Event {
            http: Some(http),
            dns: None,
        });
        assert_eq!(
            serde_json::to_string(&request).expect("serialises"),
            serde_json::to_string(&whole).expect("serialises"),
        );
    }
}

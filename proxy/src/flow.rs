//! Flow events: one JSON line per connection (or DNS query) on stdout, Hubble-like. This
//! module holds what an event says and how a verdict becomes one; `render` writes it as JSON
//! (names from the event's policy snapshot, a denial's nearest miss), `log` is the writer
//! thread and the rule and policy counts each event adds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use podwall_policy::{
    Decision, Direction, Engine, PodId, PolicyName, Protocol, SideVerdict, Verdict,
};
use serde::Serialize;

use crate::pod_policy::{FlowVerdict, PodPolicy};

mod log;
mod render;

pub use log::FlowLog;

/// The reason of a connection to an observed port (`podwall.io/observe-http`) that did not
/// open with HTTP and was relayed without parsing (`podwall advise` looks for it).
pub const UNPARSED_OBSERVED: &str = "observed port (podwall.io/observe-http), but the connection did not open with HTTP: relayed unparsed";

/// One end of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowPeer {
    /// The address.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// The pod with this address in the event's policy snapshot, which names it when the line
    /// is written.
    pub pod: Option<PodId>,
}

/// One side's decision as the engine gave it. The policy, the rule and the isolating policies
/// are named from the event's policy snapshot when the line is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSide {
    /// Egress (the source's side) or ingress (the destination's).
    pub direction: Direction,
    /// The pod whose policies decided, if this end is one.
    pub pod: Option<PodId>,
    /// What decided.
    pub decision: Decision,
    /// The DNS names the destination address was learned for (toFQDNs).
    pub names: Vec<Arc<str>>,
}

/// A finished flow.
///
/// Building one allocates nothing on the connection's path: pods, policies and rules are ids
/// into `snapshot` (the policy the verdict was made with, shared by reference), and the writer
/// thread names them and formats the time when it writes the line.
#[derive(Clone, Debug)]
pub struct FlowEvent {
    /// When it ended; written as RFC 3339 UTC with milliseconds.
    pub time: SystemTime,
    /// Allowed, denied or audit.
    pub verdict: FlowVerdict,
    /// `egress` (this pod opened it) or `ingress` (this pod received it).
    pub direction: Direction,
    /// TCP, UDP, SCTP, ICMP (ping) or OTHER.
    pub protocol: Protocol,
    /// For `OTHER`: the IP protocol number.
    pub ip_protocol: Option<u8>,
    /// Who opened it.
    pub source: FlowPeer,
    /// Where it was going (the original destination).
    pub destination: FlowPeer,
    /// The source's egress decision.
    pub egress: Option<FlowSide>,
    /// The destination's ingress decision.
    pub ingress: Option<FlowSide>,
    /// A short reason when no policy decided (no policy loaded yet, loop, ...).
    pub reason: Option<String>,
    /// Bytes from source to destination.
    pub bytes_sent: u64,
    /// Bytes from destination to source.
    pub bytes_received: u64,
    /// How long the flow lasted, in milliseconds.
    pub duration_ms: f64,
    /// What went wrong after the verdict (connect refused, reset, revoked by a policy change).
    pub error: Option<String>,
    /// Layer 7: a DNS query (boxed: most events have none, and events travel unboxed).
    pub l7: Option<Box<L7Event>>,
    /// The service whose virtual IP the client dialled (the destination is then the backend
    /// chosen for it).
    pub service: Option<FlowService>,
    /// For a TCP connection the kernel carries (`proxy init --l4-path kernel`), which of its
    /// two events this is: `start` (its verdict, no bytes yet) or `end` (its bytes and
    /// duration). Every other flow has one event and no phase.
    pub phase: Option<FlowPhase>,
    /// The policy the verdict was made with, which names the pods, policies and rules above
    /// (none before the first policy: nothing is named then). A TCP connection that a policy
    /// change still allows is described again under the new policy, so its event names what
    /// allows it at the end and the old policy is not kept alive by it.
    pub snapshot: Option<Arc<PodPolicy>>,
}

impl FlowEvent {
    /// A flow from `source` to `destination`, nothing decided yet: denied, unnamed, no bytes.
    /// (The time is set when it ends.)
    pub fn new(
        direction: Direction,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Self {
        FlowEvent {
            time: SystemTime::UNIX_EPOCH,
            verdict: FlowVerdict::Denied,
            direction,
            protocol,
            ip_protocol: None,
            source: peer(None, source),
            destination: peer(None, destination),
            egress: None,
            ingress: None,
            reason: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0.0,
            error: None,
            l7: None,
            service: None,
            snapshot: None,
            phase: None,
        }
    }

    /// Records `verdict`, made by `policy`, for a flow between these addresses: the peers'
    /// pods, both sides' decisions, and the snapshot that names them.
    pub fn describe(
        &mut self,
        policy: &Arc<PodPolicy>,
        verdict: &Verdict,
        source: SocketAddr,
        destination: SocketAddr,
    ) {
        let engine = Some(&policy.engine);
        self.source = peer(engine, source);
        self.destination = peer(engine, destination);
        self.egress = Some(side(&verdict.egress));
        self.ingress = Some(side(&verdict.ingress));
        self.snapshot = Some(policy.clone());
    }
}

/// Which event of a kernel-carried connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPhase {
    /// As it starts.
    Start,
    /// As it ends.
    End,
}

/// A service the connection went through.
#[derive(Clone, Debug, Serialize)]
pub struct FlowService {
    /// `namespace/name`.
    pub name: Arc<str>,
    /// The Service's address and port dialled (written as `ip:port`): its virtual IP, a node
    /// address with a NodePort, or an address that may be a node's (a refusal that names the
    /// Service for it).
    pub address: SocketAddr,
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
    /// Why an answer with addresses taught nothing: `resolver-not-trusted` (reachable by an L4
    /// rule, but neither the pod's configured resolver nor one a `rules.dns` rule selects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_learned: Option<&'static str>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One HTTP request.
#[derive(Clone, Debug, Serialize)]
pub struct HttpEvent {
    /// The method.
    pub method: std::borrow::Cow<'static, str>,
    /// The host, when named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Arc<str>>,
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

/// An address, with the pod that has it.
pub fn peer(engine: Option<&Engine>, addr: SocketAddr) -> FlowPeer {
    FlowPeer {
        ip: addr.ip(),
        port: addr.port(),
        pod: engine.and_then(|e| e.pod_by_ip(addr.ip())),
    }
}

/// One side of a verdict, for the event.
pub fn side(side: &SideVerdict) -> FlowSide {
    FlowSide {
        direction: side.direction,
        pod: side.pod,
        decision: side.decision,
        names: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::log::{QUEUE_LIMIT, count_decisions};
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
        let log = FlowLog::writing_to(
            move || Stuck(stuck),
            crate::metrics::FlowCounters {
                dropped: dropped.clone(),
                ..Default::default()
            },
        );
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

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-frontend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 8080}]
"#;

    /// The api pod's policy, compiled from [`CLUSTER`].
    fn api_policy() -> Arc<PodPolicy> {
        let mut loader = podwall_policy::Loader::new();
        loader.add_yaml("cluster.yaml", CLUSTER).expect("yaml");
        let (state, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        let engine = Engine::compile(state);
        let me = engine.state().pod_by_name("shop", "api").expect("api pod");
        Arc::new(PodPolicy {
            engine,
            me,
            audit: false,
            generation: 1,
            http: None,
            fqdn: None,
            own_fqdn: Vec::new(),
            observe_http: Vec::new(),
        })
    }

    /// An inbound connection's event, built as the sidecar builds it.
    fn inbound(policy: &Arc<PodPolicy>, from: [u8; 4], port: u16) -> FlowEvent {
        let source = SocketAddr::from((from, 40000));
        let destination = SocketAddr::from(([10, 0, 0, 2], port));
        let mut event = FlowEvent::new(Direction::Ingress, Protocol::Tcp, source, destination);
        let verdict = policy.inbound(source.ip(), Protocol::Tcp, port);
        event.describe(policy, &verdict, source, destination);
        event.verdict = policy.flow_verdict(&verdict);
        event
    }

    fn connection() -> FlowEvent {
        inbound(&api_policy(), [10, 0, 0, 1], 8080)
    }

    #[test]
    fn an_event_names_pods_policies_and_rules_from_its_policy_snapshot() {
        let policy = api_policy();
        let allowed = serde_json::to_value(inbound(&policy, [10, 0, 0, 1], 8080)).expect("json");
        assert_eq!(allowed["verdict"], "ALLOWED");
        assert_eq!(allowed["source"]["namespace"], "shop");
        assert_eq!(allowed["source"]["pod"], "frontend");
        assert_eq!(allowed["destination"]["pod"], "api");
        assert_eq!(allowed["destination"]["port"], 8080);
        assert_eq!(allowed["ingress"]["reason"], "rule");
        assert_eq!(
            allowed["ingress"]["policy"],
            "NetworkPolicy shop/api-from-frontend"
        );
        assert_eq!(allowed["ingress"]["rule"], "spec.ingress[0]");
        assert_eq!(allowed["egress"]["reason"], "not-isolated");
        assert!(allowed["ingress"].get("isolated_by").is_none());

        // An address that is no pod has no names; a denial lists the isolating policies.
        let denied = serde_json::to_value(inbound(&policy, [192, 0, 2, 7], 8080)).expect("json");
        assert_eq!(denied["verdict"], "DENIED");
        assert!(denied["source"].get("pod").is_none());
        assert_eq!(denied["source"]["ip"], "192.0.2.7");
        assert_eq!(denied["egress"]["reason"], "not-a-pod");
        assert_eq!(denied["ingress"]["reason"], "no-rule-matched");
        assert!(denied["ingress"].get("policy").is_none());
        assert_eq!(
            denied["ingress"]["isolated_by"],
            serde_json::json!(["NetworkPolicy shop/api-from-frontend"])
        );
        // ... and the rule closest to allowing it, with what differed.
        let nearest = denied["ingress"]["nearest"].as_str().expect("nearest");
        assert!(
            nearest.starts_with("NetworkPolicy shop/api-from-frontend spec.ingress[0]: the source 192.0.2.7 is no pod"),
            "{nearest}"
        );
        assert!(allowed["ingress"].get("nearest").is_none());
    }

    #[test]
    fn a_cluster_policy_decision_names_its_tier_priority_action_and_rule_name() {
        let mut loader = podwall_policy::Loader::new();
        loader.add_yaml("cluster.yaml", CLUSTER).expect("yaml");
        loader
            .add_yaml(
                "cnp.yaml",
                "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 7\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}\n  ingress:\n  - name: no-frontend-debug\n    action: Deny\n    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: frontend}}}}]\n    protocols: [{tcp: {destinationPort: {number: 9090}}}]\n",
            )
            .expect("yaml");
        let (state, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        let engine = Engine::compile(state);
        let me = engine.state().pod_by_name("shop", "api").expect("api pod");
        let policy = Arc::new(PodPolicy {
            engine,
            me,
            audit: false,
            generation: 1,
            http: None,
            fqdn: None,
            own_fqdn: Vec::new(),
            observe_http: Vec::new(),
        });
        let denied = serde_json::to_value(inbound(&policy, [10, 0, 0, 1], 9090)).expect("json");
        assert_eq!(denied["verdict"], "DENIED");
        let side = &denied["ingress"];
        assert_eq!(side["reason"], "cluster-deny", "{side}");
        assert_eq!(side["policy"], "ClusterNetworkPolicy guard");
        assert_eq!(side["rule"], "spec.ingress[0]");
        assert_eq!(side["tier"], "Admin");
        assert_eq!(side["priority"], 7);
        assert_eq!(side["action"], "Deny");
        assert_eq!(side["rule_name"], "no-frontend-debug");
        // Counted as the cluster policy's denial.
        let metrics = crate::metrics::Metrics::new();
        count_decisions(
            &metrics.flow_counters(),
            &inbound(&policy, [10, 0, 0, 1], 9090),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodes");
        assert!(
            text.contains("podwall_denials_total{direction=\"ingress\",policy_kind=\"ClusterNetworkPolicy\",policy_namespace=\"\",policy=\"guard\"} 1"),
            "{text}"
        );
        // The NetworkPolicy still decides what the Admin tier does not.
        let allowed = serde_json::to_value(inbound(&policy, [10, 0, 0, 1], 8080)).expect("json");
        assert_eq!(allowed["ingress"]["reason"], "rule");
        assert!(allowed["ingress"].get("tier").is_none());
    }

    #[test]
    fn a_denial_counts_for_the_policy_isolating_the_side_that_refused_it() {
        let policy = api_policy();
        let metrics = crate::metrics::Metrics::new();
        let counters = metrics.flow_counters();
        count_decisions(&counters, &inbound(&policy, [192, 0, 2, 7], 8080));
        count_decisions(&counters, &inbound(&policy, [192, 0, 2, 7], 8080));
        count_decisions(&counters, &inbound(&policy, [10, 0, 0, 1], 8080));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodes");
        assert!(
            text.contains(
                "podwall_denials_total{direction=\"ingress\",policy_kind=\"NetworkPolicy\",policy_namespace=\"shop\",policy=\"api-from-frontend\"} 2"
            ),
            "two denials, the allowed flow not counted: {text}"
        );
        assert!(
            text.contains(
                "podwall_rule_flows_total{direction=\"ingress\",policy_kind=\"NetworkPolicy\",policy_namespace=\"shop\",policy=\"api-from-frontend\",rule=\"spec.ingress[0]\"} 1"
            ),
            "the allowed flow counts for its rule: {text}"
        );
    }

    #[test]
    fn judging_and_queueing_a_connection_event_allocates_nothing_per_connection() {
        let policy = api_policy();
        let log = FlowLog::writing_to(std::io::sink, Default::default());
        let connections = 310u64;
        let measured = allocation_counter::measure(|| {
            for i in 0..connections {
                let mut event = inbound(&policy, [10, 0, 0, 1], 8080);
                event.bytes_sent = i;
                log.emit(event);
            }
        });
        // Only the queue's blocks: one per 31 events (the writer thread names and formats
        // them, on its own thread's count).
        assert!(
            measured.count_total <= connections / 31 + 1,
            "{} allocations for {connections} connections",
            measured.count_total
        );
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
        whole.l7 = Some(Box::new(L7Event {
            http: Some(http),
            dns: None,
        }));
        assert_eq!(
            serde_json::to_string(&request).expect("serialises"),
            serde_json::to_string(&whole).expect("serialises"),
        );
    }
}

//! Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Every per-connection counter is resolved to its atomic once, at start-up: counting a
//! connection is an atomic increment, never a label lookup under a lock.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::pod_policy::FlowVerdict;

/// `ingress` or `egress`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum DirectionLabel {
    ingress,
    egress,
}

impl DirectionLabel {
    fn of(d: podwall_policy::Direction) -> Self {
        match d {
            podwall_policy::Direction::Ingress => DirectionLabel::ingress,
            podwall_policy::Direction::Egress => DirectionLabel::egress,
        }
    }
}

/// `allowed`, `denied`, `audit`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum VerdictLabel {
    allowed,
    denied,
    audit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    direction: DirectionLabel,
    verdict: VerdictLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    direction: DirectionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    direction: DirectionLabel,
    policy_kind: String,
    policy_namespace: String,
    policy: String,
}

/// Denied (and audited) flows by the policy that isolates the denying side, for "denied by
/// policy" on a dashboard. Counted on the flow log's writer thread, off the data path: flows
/// dropped from a full log queue are not counted here either.
#[derive(Clone, Debug, Default)]
pub struct Denials(Family<DenialLabels, Counter>);

impl Denials {
    /// Counts one denial that `policy` stands behind in `direction`.
    pub fn count(&self, direction: podwall_policy::Direction, policy: &podwall_policy::PolicyName) {
        let labels = DenialLabels {
            direction: DirectionLabel::of(direction),
            policy_kind: policy.kind.to_string(),
            policy_namespace: policy.namespace.clone(),
            policy: policy.name.clone(),
        };
        self.0.get_or_create(&labels).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    direction: DirectionLabel,
    policy_kind: String,
    policy_namespace: String,
    policy: String,
    rule: String,
}

/// Flows each rule allowed (the deciding side's), so "which rules are never hit?" has an
/// answer. Counted on the flow log's writer thread, like [`Denials`].
#[derive(Clone, Debug, Default)]
pub struct RuleHits(Family<RuleLabels, Counter>);

impl RuleHits {
    /// Counts one flow allowed by `rule` (`spec.ingress[0]`) of `policy`.
    pub fn count(
        &self,
        direction: podwall_policy::Direction,
        policy: &podwall_policy::PolicyName,
        rule: &str,
    ) {
        self.counter(direction, policy, rule).inc();
    }

    /// The counter of a rule, to keep and count with.
    pub fn counter(
        &self,
        direction: podwall_policy::Direction,
        policy: &podwall_policy::PolicyName,
        rule: &str,
    ) -> Counter {
        let labels = RuleLabels {
            direction: DirectionLabel::of(direction),
            policy_kind: policy.kind.to_string(),
            policy_namespace: policy.namespace.clone(),
            policy: policy.name.clone(),
            rule: rule.to_string(),
        };
        self.0.get_or_create(&labels).clone()
    }
}

/// What the flow log's writer counts as it writes.
#[derive(Clone, Debug, Default)]
pub struct FlowCounters {
    /// Events dropped because the writer fell behind.
    pub dropped: Counter,
    /// Denials by isolating policy.
    pub denials: Denials,
    /// Allowed flows by rule.
    pub rules: RuleHits,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The counters of one direction.
#[derive(Clone, Debug, Default)]
pub struct DirectionMetrics {
    allowed: Counter,
    denied: Counter,
    audit: Counter,
    /// Connections open now.
    pub open: Gauge,
    /// Bytes forwarded from the side that opened the connection.
    pub bytes_sent: Counter,
    /// Bytes forwarded back.
    pub bytes_received: Counter,
    /// Allowed connections whose upstream could not be reached.
    pub connect_errors: Counter,
    /// Established connections reset because a policy change denied them.
    pub revoked: Counter,
}

impl DirectionMetrics {
    /// Counts a verdict.
    pub fn verdict(&self, v: FlowVerdict) {
        match v {
            FlowVerdict::Allowed => self.allowed.inc(),
            FlowVerdict::Denied => self.denied.inc(),
            FlowVerdict::Audit => self.audit.inc(),
        };
    }
}

/// Every metric of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Connections into the pod.
    pub inbound: DirectionMetrics,
    /// Connections out of the pod.
    pub outbound: DirectionMetrics,
    /// DNS queries relayed, by verdict.
    pub dns: DirectionMetrics,
    /// Policy updates applied.
    pub policy_applied: Counter,
    /// Policy updates that could not be applied (this pod missing from the state).
    pub policy_rejected: Counter,
    /// 1 once a policy is loaded.
    pub policy_ready: Gauge,
    /// How many policies select this pod (either direction).
    pub policies_selecting: Gauge,
    /// Flow events dropped because the writer fell behind.
    pub flow_events_dropped: Counter,
    /// Denied and audited flows by isolating policy.
    pub denials: Denials,
    /// Allowed flows by deciding rule.
    pub rule_hits: RuleHits,
    /// HTTP requests on connections with HTTP rules, by verdict.
    pub http: HttpMetrics,
    /// The DNS name cache and what it learned.
    pub fqdn: FqdnMetrics,
    /// 1 while the control plane's feed is connected (0: enforcing the last policy).
    pub policy_stream_connected: Gauge,
    /// Times the feed was lost and reconnected.
    pub policy_stream_reconnects: Counter,
}

/// The name cache.
#[derive(Clone, Debug, Default)]
pub struct FqdnMetrics {
    /// Names held now.
    pub names: Gauge,
    /// (name, address) pairs held now.
    pub addresses: Gauge,
    /// Addresses learned from answers.
    pub learned: Counter,
    /// Names forgotten to make room (LRU), and addresses beyond the per-name cap.
    pub evicted: Counter,
    /// Datagrams on a query's socket that did not answer it (stray or forged), ignored.
    pub ignored_answers: Counter,
    /// Queries the resolver did not answer in time, or answered badly.
    pub upstream_errors: Counter,
    /// Connections refused because the TLS SNI or HTTP Host was not a name the policy allows.
    pub server_name_denied: Counter,
}

/// HTTP requests by verdict.
#[derive(Clone, Debug, Default)]
pub struct HttpMetrics {
    /// Allowed and forwarded.
    pub allowed: Counter,
    /// Answered 403.
    pub denied: Counter,
    /// Would have been denied; forwarded in audit mode.
    pub audit: Counter,
    /// Refused before the rules (400, 413).
    pub refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The counters the flow log's writer keeps.
    pub fn flow_counters(&self) -> FlowCounters {
        FlowCounters {
            dropped: self.flow_events_dropped.clone(),
            denials: self.denials.clone(),
            rules: self.rule_hits.clone(),
        }
    }

    /// Registers everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("podwall");
        let connections = Family::<ConnLabels, Counter>::default();
        let open = Family::<DirLabels, Gauge>::default();
        let sent = Family::<DirLabels, Counter>::default();
        let received = Family::<DirLabels, Counter>::default();
        let connect_errors = Family::<DirLabels, Counter>::default();
        let revoked = Family::<DirLabels, Counter>::default();
        let updates = Family::<ResultLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections handled, by direction and verdict",
            connections.clone(),
        );
        registry.register("connections_open", "Connections open now", open.clone());
        registry.register(
            "sent_bytes",
            "Bytes forwarded from the side that opened the connection",
            sent.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes forwarded back to the side that opened the connection",
            received.clone(),
        );
        registry.register(
            "connect_errors",
            "Allowed connections whose destination could not be reached",
            connect_errors.clone(),
        );
        registry.register(
            "revoked_connections",
            "Established connections reset because a policy change denied them",
            revoked.clone(),
        );
        registry.register(
            "policy_updates",
            "Policy updates, by result",
            updates.clone(),
        );
        let policy_ready = Gauge::default();
        registry.register(
            "policy_ready",
            "1 once a policy for this pod is loaded",
            policy_ready.clone(),
        );
        let policies_selecting = Gauge::default();
        registry.register(
            "policies_selecting_pod",
            "Policies that select this pod",
            policies_selecting.clone(),
        );
        let flow_events_dropped = Counter::default();
        registry.register(
            "flow_events_dropped",
            "Flow events dropped because stdout fell behind",
            flow_events_dropped.clone(),
        );
        let rule_hits = RuleHits::default();
        registry.register(
            "rule_flows",
            "Flows each policy rule allowed (the deciding side's rule; flows the flow log dropped are not counted)",
            rule_hits.0.clone(),
        );
        let denials = Denials::default();
        registry.register(
            "denials",
            "Denied and audited flows by the policy isolating the side that denied them (a flow denied where several policies isolate counts for each)",
            denials.0.clone(),
        );

        // One statement per lookup: `get_or_create` hands out a read guard, and a second lookup
        // that inserts while it lives would deadlock.
        fn get<S: Clone + std::hash::Hash + Eq, M: Clone + Default>(
            family: &Family<S, M>,
            labels: S,
        ) -> M
        where
            Family<S, M>: Clone,
        {
            // The guard ends with this function, before the next lookup.
            family.get_or_create(&labels).clone()
        }
        let dir = |d: DirectionLabel| {
            let conn = |v| {
                get(
                    &connections,
                    ConnLabels {
                        direction: d,
                        verdict: v,
                    },
                )
            };
            let by_dir = |f: &Family<DirLabels, Counter>| get(f, DirLabels { direction: d });
            DirectionMetrics {
                allowed: conn(VerdictLabel::allowed),
                denied: conn(VerdictLabel::denied),
                audit: conn(VerdictLabel::audit),
                open: get(&open, DirLabels { direction: d }),
                bytes_sent: by_dir(&sent),
                bytes_received: by_dir(&received),
                connect_errors: by_dir(&connect_errors),
                revoked: by_dir(&revoked),
            }
        };
        let dns_queries = Family::<ConnLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "DNS queries relayed, by verdict",
            dns_queries.clone(),
        );
        let dns_conn = |v| {
            get(
                &dns_queries,
                ConnLabels {
                    direction: DirectionLabel::egress,
                    verdict: v,
                },
            )
        };
        let dns = DirectionMetrics {
            allowed: dns_conn(VerdictLabel::allowed),
            denied: dns_conn(VerdictLabel::denied),
            audit: dns_conn(VerdictLabel::audit),
            ..DirectionMetrics::default()
        };
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests on connections with HTTP rules, by verdict",
            http_requests.clone(),
        );
        let http = HttpMetrics {
            allowed: get(&http_requests, HttpLabels { verdict: "allowed" }),
            denied: get(&http_requests, HttpLabels { verdict: "denied" }),
            audit: get(&http_requests, HttpLabels { verdict: "audit" }),
            refused: get(&http_requests, HttpLabels { verdict: "refused" }),
        };
        let fqdn = FqdnMetrics::default();
        registry.register(
            "fqdn_cache_names",
            "DNS names held for toFQDNs rules",
            fqdn.names.clone(),
        );
        registry.register(
            "fqdn_cache_addresses",
            "Addresses held for toFQDNs rules (name, address pairs)",
            fqdn.addresses.clone(),
        );
        registry.register(
            "fqdn_learned_addresses",
            "Addresses learned from DNS answers for toFQDNs rules",
            fqdn.learned.clone(),
        );
        registry.register(
            "fqdn_cache_evictions",
            "Names and addresses forgotten to stay within the cache's bounds",
            fqdn.evicted.clone(),
        );
        registry.register(
            "dns_ignored_answers",
            "Datagrams that did not answer the query they arrived for (stray or forged)",
            fqdn.ignored_answers.clone(),
        );
        registry.register(
            "dns_upstream_errors",
            "Queries the resolver did not answer in time or answered badly",
            fqdn.upstream_errors.clone(),
        );
        registry.register(
            "fqdn_server_name_denied",
            "Connections (and HTTP requests) only toFQDNs rules allow that were refused because their TLS SNI or HTTP Host is not one of the rules' names, or because they carry no name",
            fqdn.server_name_denied.clone(),
        );
        let policy_stream_connected = Gauge::default();
        registry.register(
            "policy_stream_connected",
            "1 while the control plane's feed is connected; 0 while the last policy is enforced without it",
            policy_stream_connected.clone(),
        );
        let policy_stream_reconnects = Counter::default();
        registry.register(
            "policy_stream_reconnects",
            "Times the control plane's feed was lost",
            policy_stream_reconnects.clone(),
        );
        let policy_applied = get(&updates, ResultLabels { result: "applied" });
        let policy_rejected = get(&updates, ResultLabels { result: "rejected" });
        Metrics {
            inbound: dir(DirectionLabel::ingress),
            outbound: dir(DirectionLabel::egress),
            dns,
            policy_applied,
            policy_rejected,
            policy_ready,
            policies_selecting,
            flow_events_dropped,
            denials,
            rule_hits,
            http,
            fqdn,
            policy_stream_connected,
            policy_stream_reconnects,
            registry,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_registered_once_and_encodes() {
        // Creating the metrics used to deadlock on a label lookup; this pins that it does not.
        let m = Metrics::new();
        m.outbound.verdict(FlowVerdict::Denied);
        m.inbound.bytes_sent.inc_by(42);
        let text = m.encode();
        assert!(
            text.contains("podwall_connections_total{direction=\"egress\",verdict=\"denied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("podwall_sent_bytes_total{direction=\"ingress\"} 42"),
            "{text}"
        );
        assert!(text.contains("podwall_policy_ready 0"), "{text}");
    }
}

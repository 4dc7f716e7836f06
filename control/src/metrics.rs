//! The control plane's metrics, one registry for every part: the feed server, the kube
//! source's watches, the webhook, policy status and the unprotected-pods report register here,
//! and the feed port's `/metrics` encodes it.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Seconds, 1 ms to about 16 s.
#[derive(Debug, Clone)]
pub struct DelayHistogram(pub Histogram);

impl Default for DelayHistogram {
    fn default() -> Self {
        DelayHistogram(Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        ))
    }
}

/// A kind of object, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Pod`, `NetworkPolicy`, ...
    pub kind: String,
}

/// A pod, as metric labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pod: String,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Watch failures by kind (each retried with backoff).
    pub watch_failures: Family<KindLabel, Counter>,
    /// Complete lists by kind (the first, and every relist).
    pub lists: Family<KindLabel, Counter>,
    /// Objects held by kind.
    pub objects_by_kind: Family<KindLabel, Gauge>,
    /// Pods selected by a policy but without a sidecar: the policy is not enforced for them.
    pub unprotected_pods: Gauge,
    /// Each pod counted in `unprotected_pods`, by namespace and name (1 while it is), so an
    /// alert can name it.
    pub unprotected_pod: Family<PodLabels, Gauge>,
    /// Pods with a sidecar.
    pub protected_pods: Gauge,
    /// PodwallPolicies and CiliumNetworkPolicies with an invalid field, by kind (they isolate
    /// the pods they select and allow nothing).
    pub invalid_policies: Family<KindLabel, Gauge>,
    /// The injection webhook's counters.
    pub webhook: Arc<crate::webhook::server::WebhookMetrics>,
    registry: Registry,
    /// Feeds open now.
    pub feeds_open: Gauge,
    /// Snapshots sent.
    pub snapshots: Counter,
    /// Deltas sent.
    pub deltas: Counter,
    /// Feed requests refused (token).
    pub refused: Counter,
    /// Plaintext feed requests refused because they carried a token while the control plane
    /// serves TLS: that token crossed the network in the clear.
    pub plaintext_tokens: Counter,
    /// The store's version.
    pub version: Gauge,
    /// Objects held.
    pub objects: Gauge,
    /// Bytes of snapshots and deltas sent to sidecars.
    pub bytes: Counter,
    /// From a change stored to its delta sent to a sidecar whose view it changed (stream lag).
    pub delta_delay: DelayHistogram,
}

impl ServerMetrics {
    /// Registers everything.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::registered())
    }

    fn registered() -> Self {
        let mut m = ServerMetrics {
            registry: Registry::with_prefix("podwall_control"),
            ..ServerMetrics::default()
        };
        m.registry
            .register("feeds_open", "Sidecar feeds open now", m.feeds_open.clone());
        m.registry.register(
            "snapshots",
            "Snapshots sent to sidecars",
            m.snapshots.clone(),
        );
        m.registry
            .register("deltas", "Deltas sent to sidecars", m.deltas.clone());
        m.registry.register(
            "feeds_refused",
            "Feed requests refused because the token is not the pod's",
            m.refused.clone(),
        );
        m.registry.register(
            "plaintext_tokens_refused",
            "Plaintext feed requests refused because they carried a token while the control plane serves TLS (the token crossed the network in the clear)",
            m.plaintext_tokens.clone(),
        );
        m.registry
            .register("version", "Version of the served state", m.version.clone());
        m.registry
            .register("objects", "Objects served", m.objects.clone());
        m.registry.register(
            "delta_delay_seconds",
            "Time from a change reaching the control plane to its delta being sent to a sidecar whose view it changes",
            m.delta_delay.0.clone(),
        );
        m.registry.register(
            "feed_bytes",
            "Bytes of snapshots and deltas sent to sidecars",
            m.bytes.clone(),
        );
        m.registry.register(
            "watch_failures",
            "API-server watch failures by kind (retried with backoff)",
            m.watch_failures.clone(),
        );
        m.registry.register(
            "lists",
            "Complete API-server lists by kind (first list and relists after 410 Gone)",
            m.lists.clone(),
        );
        m.registry.register(
            "objects_by_kind",
            "Objects held by kind",
            m.objects_by_kind.clone(),
        );
        m.registry.register(
            "unprotected_pods",
            "Pods selected by a policy but running without the podwall sidecar (not enforced)",
            m.unprotected_pods.clone(),
        );
        m.registry.register(
            "unprotected_pod",
            "1 for each pod selected by a policy but running without the podwall sidecar, by namespace and pod",
            m.unprotected_pod.clone(),
        );
        m.registry.register(
            "invalid_policies",
            "PodwallPolicies and CiliumNetworkPolicies with an invalid field, by kind: they isolate the pods they select and allow nothing",
            m.invalid_policies.clone(),
        );
        m.webhook.register(&mut m.registry);
        m.registry.register(
            "protected_pods",
            "Pods running with the podwall sidecar",
            m.protected_pods.clone(),
        );
        m
    }

    /// Everything, in the OpenMetrics text format `/metrics` serves.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl crate::source::kube::WatchObserver for ServerMetrics {
    fn watch_failed(&self, kind: &str) {
        self.watch_failures
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
    fn listed(&self, kind: &str) {
        self.lists
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}

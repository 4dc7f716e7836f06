//! Following the policy source: sources publish cluster states ([`PolicySource`]); [`follow`]
//! compiles each one into this pod's [`PodPolicy`] and publishes it for the connection
//! handlers. Until the first state that contains this pod arrives, nothing is published and
//! every connection is refused (fail closed). A later state without this pod is ignored: the
//! last policy stays enforced.

use std::sync::Arc;

use podwall_policy::{ClusterState, Direction, Engine};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::names::Names;
use crate::pod_policy::{ENFORCEMENT_ANNOTATION, Identity, PodPolicy};

/// Cluster states from a source (the control plane's feed, or a directory of YAML).
pub type StateReceiver = watch::Receiver<Option<Arc<ClusterState>>>;

/// Where the sidecar's cluster states come from. The sidecar never knows which: a directory of
/// YAML, the control plane's stream, a test.
pub trait PolicySource: Send + 'static {
    /// Publishes the first state and every change after it until the source ends; a state
    /// that cannot be read is reported by the source and not published.
    fn run(
        self: Box<Self>,
        publish: watch::Sender<Option<Arc<ClusterState>>>,
        metrics: Arc<Metrics>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    /// What the source is, for logs (`dir:/etc/podwall`).
    fn describe(&self) -> String;
}

/// What the sidecar knows of its own pod, beside what the cluster's objects say.
pub(crate) struct OwnPod {
    /// Which pod it is.
    pub identity: Identity,
    /// `proxy run --audit`.
    pub audit: bool,
    /// Its gateways, addresses of its node (see [`crate::gateways`]).
    pub gateways: Arc<[std::net::IpAddr]>,
}

/// Compiles every state the source publishes and publishes this pod's policy; names learned
/// under the previous policy are matched again against the new one.
pub(crate) async fn follow(
    own: OwnPod,
    mut states: StateReceiver,
    policies: watch::Sender<Option<Arc<PodPolicy>>>,
    current: Arc<arc_swap::ArcSwapOption<PodPolicy>>,
    metrics: Arc<Metrics>,
    names: Arc<Names>,
) {
    let mut generation = 0u64;
    loop {
        let state = states.borrow_and_update().clone();
        if let Some(state) = state {
            let id = own.identity.clone();
            let gateways = own.gateways.clone();
            // Compiling is CPU work: keep it off the threads that move bytes.
            let compiled = tokio::task::spawn_blocking(move || {
                let me = state.pod_by_name(&id.namespace, &id.name);
                me.map(|me| {
                    let mut state = (*state).clone();
                    // The node's addresses on the pod's link: NodePorts are open there too,
                    // and the host ports of the node's pods.
                    let pod = state.pod(me).clone();
                    state.services.add_node_addresses(&gateways, &pod);
                    let engine = Engine::compile(state);
                    let rules = podwall_l7::pod_http_rules(&engine, me);
                    let http = if rules.is_empty() {
                        None
                    } else {
                        match podwall_l7::HttpPolicy::compile(&rules) {
                            Ok(p) => Some(Arc::new(p)),
                            Err(e) => {
                                // Validated at load; should it still fail, deny rather than open.
                                tracing::error!(error = %e, "HTTP rules do not compile; connections that need them are refused");
                                None
                            }
                        }
                    };
                    let fqdn = if engine.fqdn_selectors().is_empty() {
                        None
                    } else {
                        match podwall_fqdn::Matcher::new(engine.fqdn_selectors()) {
                            Ok(m) => Some(Arc::new(m)),
                            Err(e) => {
                                // Validated at load; without a matcher no name is learned and
                                // toFQDNs rules allow nothing (fail closed).
                                tracing::error!(error = %e, "DNS name selectors do not compile; toFQDNs rules allow nothing");
                                None
                            }
                        }
                    };
                    let own_fqdn = engine.egress_fqdn(me);
                    (engine, me, http, fqdn, own_fqdn)
                })
            })
            .await;
            match compiled {
                Ok(Some((engine, me, http, fqdn, own_fqdn))) => {
                    generation += 1;
                    let pod = engine.state().pod(me);
                    // The pod's own annotation is read per connection (it covers its own side);
                    // this is for the log.
                    let audit = own.audit
                        || pod
                            .annotations
                            .get(ENFORCEMENT_ANNOTATION)
                            .map(String::as_str)
                            == Some("audit");
                    let selecting: std::collections::BTreeSet<_> = engine
                        .isolated_by(me, Direction::Ingress)
                        .iter()
                        .chain(engine.isolated_by(me, Direction::Egress))
                        .collect();
                    metrics.policies_selecting.set(selecting.len() as i64);
                    tracing::info!(
                        pod = %own.identity,
                        generation,
                        policies = engine.state().policies.len(),
                        selecting = selecting.len(),
                        ingress_isolated = !engine.isolated_by(me, Direction::Ingress).is_empty(),
                        egress_isolated = !engine.isolated_by(me, Direction::Egress).is_empty(),
                        audit,
                        "policy applied"
                    );
                    drop(selecting);
                    let observe_http = match pod.observe_http() {
                        Ok(ports) => ports,
                        Err(e) => {
                            // Only observation is lost: enforcement does not depend on it.
                            tracing::warn!(pod = %own.identity, error = %e, "HTTP requests are not logged without rules");
                            Vec::new()
                        }
                    };
                    if !observe_http.is_empty() {
                        tracing::info!(pod = %own.identity, ports = ?observe_http, "logging every HTTP request on these inbound ports (podwall.io/observe-http)");
                    }
                    let policy = Arc::new(PodPolicy {
                        engine,
                        me,
                        audit: own.audit,
                        generation,
                        http,
                        fqdn,
                        own_fqdn,
                        observe_http,
                    });
                    names.reselect(&policy);
                    // New connections read `current`; the channel then tells running ones.
                    current.store(Some(policy.clone()));
                    let _ = policies.send(Some(policy));
                    metrics.policy_applied.inc();
                    metrics.policy_ready.set(1);
                    // Compiling was the last use of much of the binary's code for a while.
                    // (After a pause, so that what runs right after an update is done too.)
                    // On this thread: reading smaps and advising takes about a millisecond, and
                    // a blocking-pool thread would touch its exit code afterwards.
                    tokio::spawn(async {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        crate::resident::settle();
                    });
                }
                Ok(None) => {
                    metrics.policy_rejected.inc();
                    tracing::error!(
                        pod = %own.identity,
                        "this pod is not in the policy source; {}",
                        if policies.borrow().is_some() { "keeping the last policy" } else { "refusing all connections until it is" }
                    );
                }
                Err(e) => tracing::error!(error = %e, "policy compilation failed"),
            }
        }
        if states.changed().await.is_err() {
            tracing::warn!("policy source ended; keeping the last policy");
            return;
        }
    }
}

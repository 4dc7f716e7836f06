//! The policy this sidecar enforces: the cluster state compiled, and which pod it is in it.
//!
//! Sources publish cluster states; [`follow`] compiles each one and publishes the result for
//! the connection handlers. Until the first state that contains this pod arrives, nothing is
//! published and every connection is refused (fail closed). A later state without this pod is
//! ignored: the last policy stays enforced.

use std::net::IpAddr;
use std::sync::Arc;

use podwall_policy::{
    ClusterState, Decision, Direction, Endpoint, Engine, FqdnId, PodId, Protocol, Query, Verdict,
};
use tokio::sync::watch;

use crate::flow::FlowVerdict;
use crate::metrics::Metrics;

/// The annotation that puts a pod in audit mode.
pub const ENFORCEMENT_ANNOTATION: &str = "podwall.io/enforcement";

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

/// The compiled policies, as connection handlers see them.
pub type PolicyReceiver = watch::Receiver<Option<Arc<PodPolicy>>>;

/// Which pod the sidecar belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A compiled policy and this pod's place in it.
#[derive(Debug)]
pub struct PodPolicy {
    /// Every pod's tables.
    pub engine: Engine,
    /// This pod.
    pub me: PodId,
    /// Would-be denials pass: `--audit` (every pod), or this pod's annotation.
    pub audit: bool,
    /// Counts updates, for logs.
    pub generation: u64,
    /// The HTTP rules of every policy selecting this pod, compiled once (none: no HTTP rules).
    pub http: Option<Arc<podwall_l7::HttpPolicy>>,
    /// Every DNS name selector of the policies, compiled once (none: there are none).
    pub fqdn: Option<Arc<podwall_fqdn::Matcher>>,
    /// The toFQDNs selectors of this pod's egress rules (sorted): the names it learns.
    pub own_fqdn: Vec<FqdnId>,
    /// Inbound ports whose HTTP requests are logged one by one although no HTTP rule applies
    /// (the pod's `podwall.io/observe-http` annotation; sorted).
    pub observe_http: Vec<u16>,
}

impl PodPolicy {
    /// The verdict for a connection this pod opens to `dst`.
    pub fn outbound(&self, dst: IpAddr, protocol: Protocol, port: u16) -> Verdict {
        self.outbound_learned(dst, protocol, port, &[])
    }

    /// The verdict for a connection this pod opens to `dst`, an address its DNS answers gave
    /// for names matching the selectors `names` (see [`fqdn_ids`](Self::fqdn_ids)).
    pub fn outbound_learned(
        &self,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
        names: &[FqdnId],
    ) -> Verdict {
        self.engine.verdict_learned(
            &Query {
                src: Endpoint::Pod(self.me),
                dst: Endpoint::Ip(dst),
                protocol,
                port,
            },
            names,
        )
    }

    /// The selectors of this pod's toFQDNs rules that match one of `names` (sorted): what a
    /// connection to an address learned for those names may use.
    pub fn fqdn_ids<S: AsRef<str>>(&self, names: &[S]) -> Vec<FqdnId> {
        let Some(matcher) = &self.fqdn else {
            return Vec::new();
        };
        let mut ids: Vec<FqdnId> = names
            .iter()
            .flat_map(|n| matcher.matching(n.as_ref()))
            .filter(|id| self.own_fqdn.binary_search(id).is_ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The verdict for a connection into this pod from `src`, to `port`.
    pub fn inbound(&self, src: IpAddr, protocol: Protocol, port: u16) -> Verdict {
        self.engine.verdict(&Query {
            src: Endpoint::Ip(src),
            dst: Endpoint::Pod(self.me),
            protocol,
            port,
        })
    }

    /// Whether a connection in `direction` is still allowed, or only denied by pods in audit
    /// mode (for re-checks on policy changes).
    pub fn allows(
        &self,
        direction: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
        names: &[FqdnId],
    ) -> bool {
        let (src, dst) = match direction {
            Direction::Egress => (Endpoint::Pod(self.me), Endpoint::Ip(peer)),
            Direction::Ingress => (Endpoint::Ip(peer), Endpoint::Pod(self.me)),
        };
        let query = Query {
            src,
            dst,
            protocol,
            port,
        };
        self.engine.allowed_learned(&query, names)
            || self.flow_verdict(&self.engine.verdict_learned(&query, names)) != FlowVerdict::Denied
    }

    /// Allowed; denied; or audit, when every side that denies belongs to a pod in audit mode
    /// (or this sidecar runs with `--audit`). Each pod's audit annotation covers its own
    /// policies, whichever sidecar sees the connection, but never an Admin-tier
    /// ClusterNetworkPolicy's Deny: a guardrail the namespace's owner cannot override is not
    /// theirs to switch to audit either (only `--audit`, the operator's, covers it).
    pub fn flow_verdict(&self, verdict: &Verdict) -> FlowVerdict {
        if verdict.allowed() {
            return FlowVerdict::Allowed;
        }
        let enforced = [&verdict.egress, &verdict.ingress]
            .into_iter()
            .filter(|side| !side.allowed())
            .any(|side| {
                self.admin_deny(side.decision) || !side.pod.is_some_and(|p| self.pod_in_audit(p))
            });
        if enforced && !self.audit {
            FlowVerdict::Denied
        } else {
            FlowVerdict::Audit
        }
    }

    /// Whether a denial of this pod's own side, decided by `decision`, passes in audit mode:
    /// the flag always, the pod's annotation unless an Admin-tier ClusterNetworkPolicy denied
    /// (the DNS proxy, the server-name and Host checks ask this).
    pub fn audit_covers(&self, decision: Decision) -> bool {
        self.audit || (self.pod_in_audit(self.me) && !self.admin_deny(decision))
    }

    /// An Admin-tier ClusterNetworkPolicy's Deny.
    fn admin_deny(&self, decision: Decision) -> bool {
        match decision {
            Decision::ClusterDeny(rule) => self
                .engine
                .state()
                .policy(rule.policy)
                .cluster
                .is_some_and(|c| c.tier == podwall_policy::Tier::Admin),
            _ => false,
        }
    }

    /// Whether this pod's own policies are in audit mode (flag or annotation).
    pub fn own_audit(&self) -> bool {
        self.audit || self.pod_in_audit(self.me)
    }

    fn pod_in_audit(&self, pod: PodId) -> bool {
        self.engine
            .state()
            .pod(pod)
            .annotations
            .get(ENFORCEMENT_ANNOTATION)
            .map(String::as_str)
            == Some("audit")
    }
}

/// Compiles every state the source publishes and publishes this pod's policy; names learned
/// under the previous policy are matched again against the new one.
pub async fn follow(
    identity: Identity,
    audit_flag: bool,
    mut states: StateReceiver,
    policies: watch::Sender<Option<Arc<PodPolicy>>>,
    current: Arc<arc_swap::ArcSwapOption<PodPolicy>>,
    metrics: Arc<Metrics>,
    names: Arc<crate::dns::Names>,
) {
    let mut generation = 0u64;
    loop {
        let state = states.borrow_and_update().clone();
        if let Some(state) = state {
            let id = identity.clone();
            // Compiling is CPU work: keep it off the threads that move bytes.
            let compiled = tokio::task::spawn_blocking(move || {
                let me = state.pod_by_name(&id.namespace, &id.name);
                me.map(|me| {
                    let engine = Engine::compile((*state).clone());
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
                    let audit = audit_flag
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
                        pod = %identity,
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
                            tracing::warn!(pod = %identity, error = %e, "HTTP requests are not logged without rules");
                            Vec::new()
                        }
                    };
                    if !observe_http.is_empty() {
                        tracing::info!(pod = %identity, ports = ?observe_http, "logging every HTTP request on these inbound ports (podwall.io/observe-http)");
                    }
                    let policy = Arc::new(PodPolicy {
                        engine,
                        me,
                        audit: audit_flag,
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
                        pod = %identity,
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

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}, annotations: {podwall.io/enforcement: audit}}
status: {podIP: 10.0.0.2, hostIP: 192.168.0.1}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guardrail}
spec:
  tier: TIER
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Deny, to: [{networks: [169.254.169.254/32]}]}
"#;

    fn policy(tier: &str, audit_flag: bool) -> PodPolicy {
        let mut loader = podwall_policy::Loader::new();
        loader
            .add_yaml("state", &STATE.replace("TIER", tier))
            .expect("yaml");
        let (state, report) = loader.finish();
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        let engine = Engine::compile(state);
        let me = engine.state().pod_by_name("shop", "api").expect("api");
        PodPolicy {
            engine,
            me,
            audit: audit_flag,
            generation: 1,
            http: None,
            fqdn: None,
            own_fqdn: Vec::new(),
            observe_http: Vec::new(),
        }
    }

    #[test]
    fn a_pods_audit_annotation_never_covers_an_admin_tier_deny_but_the_operators_flag_does() {
        let verdict = |p: &PodPolicy| {
            p.flow_verdict(&p.outbound("169.254.169.254".parse().expect("ip"), Protocol::Tcp, 80))
        };
        assert_eq!(verdict(&policy("Admin", false)), FlowVerdict::Denied);
        assert_eq!(verdict(&policy("Baseline", false)), FlowVerdict::Audit);
        assert_eq!(verdict(&policy("Admin", true)), FlowVerdict::Audit);
        // The same for the pod's own checks (DNS proxy, server name, Host).
        let decision = |p: &PodPolicy| {
            p.outbound("169.254.169.254".parse().expect("ip"), Protocol::Tcp, 80)
                .egress
                .decision
        };
        let admin = policy("Admin", false);
        assert!(!admin.audit_covers(decision(&admin)));
        let baseline = policy("Baseline", false);
        assert!(baseline.audit_covers(decision(&baseline)));
        let flagged = policy("Admin", true);
        assert!(flagged.audit_covers(decision(&flagged)));
    }
}

//! The policy this sidecar enforces: the cluster state compiled, which pod it is in it, and
//! what a verdict means for a flow ([`FlowVerdict`]: allowed, denied, or passed in audit).
//! [`crate::policy_follow`] compiles each state a source publishes into one.

use std::net::IpAddr;
use std::sync::Arc;

use podwall_policy::{
    Decision, Direction, Endpoint, Engine, FqdnId, PodId, Protocol, Query, Verdict,
};
use tokio::sync::watch;

use serde::Serialize;

/// The annotation that puts a pod in audit mode.
pub(crate) const ENFORCEMENT_ANNOTATION: &str = "podwall.io/enforcement";

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

/// The compiled policies, as connection handlers see them.
pub(crate) type PolicyReceiver = watch::Receiver<Option<Arc<PodPolicy>>>;

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

/// The policy of pod `t/client` in the cluster `yaml` describes, compiled as the sidecar does
/// (tests of what the sidecar does with a policy share it).
#[cfg(test)]
pub(crate) fn client_policy(yaml: &str, generation: u64) -> Arc<PodPolicy> {
    let mut loader = podwall_policy::Loader::new();
    loader.add_yaml("pods.yaml", yaml).expect("yaml");
    let (state, report) = loader.finish();
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    let engine = podwall_policy::Engine::compile(state);
    let me = engine
        .state()
        .pod_by_name("t", "client")
        .expect("client pod");
    let fqdn = (!engine.fqdn_selectors().is_empty())
        .then(|| Arc::new(podwall_fqdn::Matcher::new(engine.fqdn_selectors()).expect("selectors")));
    let own_fqdn = engine.egress_fqdn(me);
    Arc::new(PodPolicy {
        engine,
        me,
        audit: false,
        generation,
        http: None,
        fqdn,
        own_fqdn,
        observe_http: Vec::new(),
    })
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

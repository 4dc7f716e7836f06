//! Queries and verdicts: may this connection happen, and why.

use std::net::IpAddr;

use serde::Serialize;

use crate::model::{Direction, Protocol};
use crate::state::{PodId, PolicyId};

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A pod of the cluster state.
    Pod(PodId),
    /// An address; if it is a pod's address, the engine treats it as that pod.
    Ip(IpAddr),
}

/// A connection to judge: from `src` to `dst` on `protocol`/`port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    /// Who opens the connection.
    pub src: Endpoint,
    /// Who it is opened to.
    pub dst: Endpoint,
    /// Its protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
}

/// A DNS name selector of the compiled policies ([`Engine::fqdn_selectors`] lists them).
///
/// [`Engine::fqdn_selectors`]: crate::Engine::fqdn_selectors
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FqdnId(pub u32);

/// A rule of a policy: the policy, the direction, and the rule's 0-based index in that list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyId,
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// The rule's index in `spec.ingress` or `spec.egress`.
    pub index: u32,
}

/// Why one side (the source's egress or the destination's ingress) decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed: this end is not a pod, so no policy of it applies.
    NotAPod,
    /// Allowed: this end is a host-network pod, to which NetworkPolicy does not apply.
    HostNetwork,
    /// Allowed: no policy isolates the pod in this direction.
    NotIsolated,
    /// Allowed: a pod can always reach itself.
    SamePod,
    /// Allowed: traffic from the pod's own node (kubelet probes) is always allowed.
    OwnNode,
    /// Allowed by this rule.
    Rule(RuleRef),
    /// Denied: the pod is isolated and no rule of the isolating policies allows the connection.
    NoRuleMatched,
    /// Allowed by a ClusterNetworkPolicy rule whose action is Accept (its tier decided).
    ClusterAccept(RuleRef),
    /// Denied by a ClusterNetworkPolicy rule whose action is Deny (or a rule that failed
    /// closed).
    ClusterDeny(RuleRef),
}

impl Decision {
    /// Whether this side lets the connection through.
    pub fn allows(self) -> bool {
        !matches!(self, Decision::NoRuleMatched | Decision::ClusterDeny(_))
    }
}

/// The verdict of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideVerdict {
    /// Egress (the source's policies) or ingress (the destination's).
    pub direction: Direction,
    /// The pod whose policies were consulted, if this end is a pod.
    pub pod: Option<PodId>,
    /// Whether that pod is isolated in this direction ([`Engine::isolated_by`] names the
    /// policies).
    ///
    /// [`Engine::isolated_by`]: crate::Engine::isolated_by
    pub isolated: bool,
    /// What decided.
    pub decision: Decision,
    /// When the connection is allowed only at the HTTP level: the rules (each with HTTP rules)
    /// whose HTTP rules every request must match one of.
    pub http: Option<Vec<RuleRef>>,
    /// When the connection is allowed only at the DNS level: the rules (each with DNS rules)
    /// whose DNS rules every query's name must match one of ([`Engine::rule_dns`]).
    ///
    /// [`Engine::rule_dns`]: crate::Engine::rule_dns
    pub dns: Option<Vec<RuleRef>>,
}

impl SideVerdict {
    /// Whether this side allows the connection.
    pub fn allowed(&self) -> bool {
        self.decision.allows()
    }
}

/// A connection is allowed when both the source's egress and the destination's ingress allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The query, with addresses that belong to pods resolved to those pods.
    pub query: Query,
    /// The source address the connection uses, when known.
    pub src_ip: Option<IpAddr>,
    /// The destination address the connection uses, when known.
    pub dst_ip: Option<IpAddr>,
    /// The source's egress side.
    pub egress: SideVerdict,
    /// The destination's ingress side.
    pub ingress: SideVerdict,
    /// The DNS name selectors the destination address was learned for (by the source pod's DNS
    /// answers), as given to [`Engine::verdict_learned`]; empty otherwise.
    ///
    /// [`Engine::verdict_learned`]: crate::Engine::verdict_learned
    pub dst_names: Vec<FqdnId>,
}

impl Verdict {
    /// Both sides allow it.
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

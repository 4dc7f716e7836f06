//! podwall's policy model: what may talk to what, and why.
//!
//! This crate reads cluster state (Namespaces, Pods, NetworkPolicies) from YAML or JSON,
//! validates policies as the API server does, compiles them into per-pod rule tables and answers
//! `verdict(src, dst, protocol, port)` with an explanation naming the policy and rule on each
//! side. The analyzer, the sidecar and the control plane all decide with this code.
//!
//! It must never do I/O or depend on tokio: callers hand it text or parsed objects and get
//! answers back, so every decision can be tested and explained offline.
//!
//! Semantics are Kubernetes' `networking.k8s.io/v1` exactly: a pod is isolated in a direction
//! once any policy selecting it has that policy type; allows are a union over policies; a
//! connection needs the source's egress and the destination's ingress; traffic from a pod's own
//! node and from a pod to itself is always allowed. Where upstream leaves room (ipBlock against
//! pod addresses, host-network pods), the choice is documented on the item that makes it.

mod cilium;
mod cnp;
mod compile;
pub mod crd;
mod diagnostic;
mod engine;
mod error;
mod explain;
pub mod feed;
mod load;
pub mod locate;
mod model;
mod names;
mod netpol;
mod observe_http;
pub mod render;
mod selector;
pub mod services;
mod state;
mod validate;
mod verdict;

pub mod advise;
pub mod analyze;

pub use diagnostic::{Diagnostic, Severity};
pub use engine::{Engine, port_matches};
pub use error::Error;
pub use explain::{
    EndpointInfo, Explanation, NearMiss, RuleInfo, SideExplanation, describe_peer, describe_ports,
    describe_rule,
};
pub use load::{Loader, documents, objects};
pub use model::{
    Action, ClusterScope, ContainerPort, DefaultDeny, Direction, Entity, FqdnSelector, HeaderMatch,
    HeaderMismatch, HostPort, HttpRule, IpBlock, Labels, NAMESPACE_NAME_LABEL, Namespace,
    NamespaceScope, Node, Origin, Peer, Pod, Policy, PolicyKind, PolicyName, PortMatch, PortSpec,
    Protocol, ProtocolPort, Rule, Tier, UnknownProtocol,
};
pub use observe_http::{BadObserveHttp, OBSERVE_HTTP_ANNOTATION, parse_observe_http};
pub use selector::{LabelSelector, Operator, Requirement};
pub use state::{CLUSTER_DNS_LABEL, ClusterState, LoadReport, PodId, PolicyId};
pub use verdict::{Decision, Endpoint, FqdnId, Query, RuleRef, SideVerdict, Verdict};

//! podwall's DNS side: what `toFQDNs` and DNS rules match, what the pod's DNS answers teach, and
//! the DNS proxy that sees them.
//!
//! - [`pattern`]: `matchName` / `matchPattern` semantics (Cilium's), compiled into one automaton
//!   per policy.
//! - [`message`]: queries, refusals and answers on the wire (hickory-proto).
//! - [`cache`]: per pod, which addresses which names resolved to, with TTLs, bounded.
//! - [`decide`]: the verdict on a DNS query (the resolver at L4, then the DNS rules).
//!
//! What podwall does, beyond Cilium:
//!
//! - DNS is always intercepted, so a `toFQDNs` rule works without the operator also writing a
//!   DNS rule to make the proxy see the answers (Cilium's most common trap). And a pod whose
//!   egress is isolated may still ask its configured resolver (the sidecar's
//!   `/etc/resolv.conf`) for the names its `toFQDNs` rules select, even with no rule allowing
//!   DNS: the policy that names `api.github.com` works on its own. Other names need a rule.
//! - Learning is per pod (Cilium shares a node's answers between its pods): an address is
//!   allowed for a pod only when that pod's own DNS answer gave it.

pub mod cache;
pub mod decide;
pub mod forward;
pub mod message;
pub mod pattern;

pub use pattern::{Matcher, MatcherError, canonical};

//! The `podwall.io/observe-http` annotation: inbound ports of a pod whose HTTP requests its
//! sidecar parses and logs one by one although no HTTP rule applies (what Cilium's
//! `policy.cilium.io/proxy-visibility` does). Phase one of a rollout then sees methods and
//! paths, so `podwall advise` can propose HTTP rules where none exist yet.
//!
//! Read by the sidecar from its own pod in the policy state (so it may change on a running pod
//! and applies to connections opened after), checked by the webhook when a pod is created.

use crate::model::{Pod, Protocol};

/// The annotation: comma-separated port numbers or names of the pod's TCP container ports
/// (`"8080,http"`).
pub const OBSERVE_HTTP_ANNOTATION: &str = "podwall.io/observe-http";

/// An item of the annotation that names no port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "annotation {OBSERVE_HTTP_ANNOTATION}: {item:?} is neither a port number (1-65535) nor the name of one of the pod's TCP container ports"
)]
pub struct BadObserveHttp {
    /// The item as written.
    pub item: String,
}

/// The ports `value` names (sorted, without duplicates); `named` resolves a port name.
pub fn parse_observe_http(
    value: &str,
    named: impl Fn(&str) -> Option<u16>,
) -> Result<Vec<u16>, BadObserveHttp> {
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = match item.parse::<u16>() {
            Ok(p @ 1..) => Some(p),
            Ok(0) => None,
            Err(_) => named(item),
        };
        match port {
            Some(p) => ports.push(p),
            None => {
                return Err(BadObserveHttp {
                    item: item.to_string(),
                });
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

impl Pod {
    /// The inbound ports whose HTTP requests this pod's sidecar logs without rules (none when
    /// the annotation is absent).
    pub fn observe_http(&self) -> Result<Vec<u16>, BadObserveHttp> {
        match self.annotations.get(OBSERVE_HTTP_ANNOTATION) {
            None => Ok(Vec::new()),
            Some(value) => parse_observe_http(value, |name| {
                self.ports
                    .iter()
                    .find(|p| p.protocol == Protocol::Tcp && p.name.as_deref() == Some(name))
                    .map(|p| p.port)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_of_tcp_container_ports_are_read_sorted_once_each() {
        let named = |n: &str| (n == "http").then_some(8080);
        assert_eq!(
            parse_observe_http(" 9090, http,8080,,80 ", named),
            Ok(vec![80, 8080, 9090])
        );
        assert_eq!(parse_observe_http("", named), Ok(vec![]));
    }

    #[test]
    fn zero_out_of_range_and_unknown_names_are_refused_naming_the_item() {
        let none = |_: &str| None;
        for bad in ["0", "65536", "metrics", "-1", "80/TCP"] {
            let err = parse_observe_http(&format!("80,{bad}"), none).expect_err("refused");
            assert_eq!(err.item, bad);
            assert!(err.to_string().contains(OBSERVE_HTTP_ANNOTATION), "{err}");
        }
    }
}

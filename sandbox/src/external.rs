//! What lives outside the sandbox's cluster: hosts on the "internet" (`ExternalHost` documents)
//! and the cluster DNS serving their names.
//!
//! ```yaml
//! apiVersion: sandbox.podwall.io/v1alpha1
//! kind: ExternalHost
//! metadata: {name: github-api}
//! spec:
//!   address: 203.0.113.10        # a namespace of its own, routed by the node
//!   names: [api.github.com]      # served by the cluster DNS
//!   ports: [443]                 # TCP ports its server listens on
//!   ttl: 60                      # TTL of its DNS records (default 60)
//!   extraAddresses: []           # more A records for the names, with no host behind them
//!   domains: []                  # every name under these domains resolves to `address`
//!   aliases: []                  # a CNAME chain: aliases[0] -> aliases[1] -> ... -> names[0]
//! ```
//!
//! The policy loader skips these documents (they are not cluster objects), so the analyzer sees
//! these addresses as outside the cluster, as they are. When a pod is labelled
//! `k8s-app: kube-dns`, the sandbox runs dnsmasq in it on port 53 serving every external
//! host's names (anything else is NXDOMAIN), and every namespace's `resolv.conf` points at it.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// The API group of the sandbox's own documents.
pub const API_GROUP: &str = "sandbox.podwall.io/";

/// One external host, as declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalHost {
    /// `metadata.name`.
    pub name: String,
    /// Its address.
    pub address: IpAddr,
    /// DNS names for it.
    pub names: Vec<String>,
    /// TCP ports its server listens on.
    pub ports: Vec<u16>,
    /// TTL of its records, in seconds.
    pub ttl: u32,
    /// More A records for its names.
    pub extra_addresses: Vec<IpAddr>,
    /// Domains every name under which resolves to its address (TTL 60).
    #[serde(default)]
    pub domains: Vec<String>,
    /// A CNAME chain to its first name: `aliases[0]` is a CNAME for `aliases[1]`, ..., the
    /// last for `names[0]` (TTL 60).
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    address: IpAddr,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    ports: Vec<u16>,
    ttl: Option<u32>,
    #[serde(default)]
    extra_addresses: Vec<IpAddr>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    aliases: Vec<String>,
}

/// The `ExternalHost` documents under `dir`.
pub fn read(dir: &Path) -> Result<Vec<ExternalHost>, SandboxError> {
    let mut out = Vec::new();
    for file in podwall_control::source::read_paths(&[dir.to_path_buf()])? {
        let objects = podwall_policy::objects(&file.name, &file.text)
            .map_err(podwall_control::source::SourceError::from)?;
        for (_, v) in objects {
            let api = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
            if !api.starts_with(API_GROUP)
                || v.get("kind").and_then(|k| k.as_str()) != Some("ExternalHost")
            {
                continue;
            }
            let name = v
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            let spec: Spec = serde_json::from_value(v.get("spec").cloned().unwrap_or_default())
                .map_err(|e| {
                    SandboxError::Invalid(format!(
                        "{}: ExternalHost {name:?}: spec: {e}",
                        file.name
                    ))
                })?;
            if !spec.address.is_ipv4() {
                return Err(SandboxError::Invalid(format!(
                    "{}: ExternalHost {name:?}: the sandbox wires IPv4 only",
                    file.name
                )));
            }
            if !spec.aliases.is_empty() && spec.names.is_empty() {
                return Err(SandboxError::Invalid(format!(
                    "{}: ExternalHost {name:?}: spec.aliases needs a name in spec.names to point to",
                    file.name
                )));
            }
            out.push(ExternalHost {
                name,
                address: spec.address,
                names: spec.names,
                ports: spec.ports,
                ttl: spec.ttl.unwrap_or(60),
                extra_addresses: spec.extra_addresses,
                domains: spec.domains,
                aliases: spec.aliases,
            });
        }
    }
    Ok(out)
}

/// dnsmasq's arguments to serve these hosts' names (and NXDOMAIN for the rest) on `listen`.
pub fn dnsmasq_args(hosts: &[ExternalHost], listen: IpAddr, log: &Path) -> Vec<String> {
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--no-poll".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={listen}"),
        "--port=53".into(),
        "--user=root".into(),
        "--pid-file=".into(),
        "--address=/#/".into(),
        // TTL of the `domains` answers (host records carry their own).
        "--local-ttl=60".into(),
        "--log-queries".into(),
        format!("--log-facility={}", log.display()),
    ];
    for h in hosts {
        for domain in &h.domains {
            args.push(format!("--address=/{domain}/{}", h.address));
        }
        for name in &h.names {
            for ip in std::iter::once(&h.address).chain(&h.extra_addresses) {
                args.push(format!("--host-record={name},{ip},{}", h.ttl));
            }
        }
        // dnsmasq answers an alias with the whole chain and the target's A records.
        let chain = h.aliases.iter().chain(h.names.first());
        for (alias, target) in h.aliases.iter().zip(chain.skip(1)) {
            args.push(format!("--cname={alias},{target}"));
        }
    }
    args
}

/// The `resolv.conf` of every namespace when the cluster DNS is at `dns`.
pub fn resolv_conf(dns: IpAddr) -> String {
    format!("# written by podwall sandbox\nnameserver {dns}\noptions timeout:2 attempts:2\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_gets_every_address_with_its_ttl_and_the_rest_is_nxdomain() {
        let hosts = [ExternalHost {
            name: "gh".into(),
            address: "203.0.113.10".parse().expect("ip"),
            names: vec!["api.github.com".into(), "github.com".into()],
            ports: vec![443],
            ttl: 5,
            extra_addresses: vec!["203.0.113.11".parse().expect("ip")],
            domains: vec!["bench.example".into()],
            aliases: vec!["www.github.example".into(), "gh.cdn.example".into()],
        }];
        let args = dnsmasq_args(
            &hosts,
            "10.88.0.9".parse().expect("ip"),
            Path::new("/tmp/x"),
        );
        for want in [
            "--listen-address=10.88.0.9",
            "--address=/#/",
            "--host-record=api.github.com,203.0.113.10,5",
            "--host-record=api.github.com,203.0.113.11,5",
            "--host-record=github.com,203.0.113.10,5",
            "--address=/bench.example/203.0.113.10",
            "--cname=www.github.example,gh.cdn.example",
            "--cname=gh.cdn.example,api.github.com",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
    }
}

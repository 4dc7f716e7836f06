//! What a request says, checked to mean one thing to podwall and to every common backend,
//! before any rule sees it. The sidecar ([`crate::serve`]) and `podwall analyze check`
//! ([`crate::explain_request`]) admit requests with this one function, so they agree.
//!
//! Refused (400), because a backend could read them otherwise than the rules did:
//!
//! - more than one `Host` header (which one does the backend take?);
//! - a request whose URI names an authority (HTTP/1 absolute-form, HTTP/2 `:authority`) that a
//!   `Host` header contradicts (RFC 9112 says the URI wins; many backends read `Host`);
//! - `Upgrade: h2c`: after the switch the connection speaks HTTP/2 to the backend, request
//!   after request, none of them seen by the rules (other upgrades, WebSocket, are forwarded
//!   when the upgrade request itself is allowed; after `101` the connection is opaque);
//! - a path podwall cannot normalise the way backends do ([`crate::path`]: encoded separators,
//!   control characters, and segments that servlet containers read as dot-segments once they
//!   strip their `;` parameters, such as `/..;/`).
//!
//! The host rules see is the authority without its port (`api.example:8080` is `api.example`),
//! the same for the sidecar and the analyzer.

use std::borrow::Cow;

use http::HeaderMap;
use thiserror::Error;

use crate::path::{PathError, normalize};

/// Why a request is refused before the rules (400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refused {
    /// More than one `Host` header.
    #[error("more than one Host header")]
    ManyHosts,
    /// The URI's authority and the `Host` header name different hosts.
    #[error("the request's authority {authority:?} and its Host header {host:?} differ")]
    HostMismatch {
        /// From the URI.
        authority: String,
        /// From the header.
        host: String,
    },
    /// `Upgrade: h2c`.
    #[error("Upgrade: h2c would carry requests no rule sees")]
    H2c,
    /// An `Upgrade` header that is not plain ASCII (a backend could read `h2c` in it).
    #[error("an Upgrade header that is not plain ASCII")]
    UnreadableUpgrade,
    /// A host that is not a name, an IPv4 address or a bracketed IPv6 address, with an
    /// optional port (`[allowed.example]:80` would be read as `allowed.example`).
    #[error("the host {0:?} is not a name or an address")]
    BadHost(String),
    /// A path that cannot be normalised safely.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// A request as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<'a> {
    /// `path?query`, normalised: what is checked and what is forwarded.
    pub path: Cow<'a, str>,
    /// The host the request is for, without port, if it names one.
    pub host: Option<&'a str>,
}

/// Admits a request: `target` as sent (origin-form or absolute-form), `authority` from the URI
/// (absolute-form or HTTP/2 `:authority`), and its headers.
pub fn admit<'a>(
    target: &'a str,
    authority: Option<&'a str>,
    headers: &'a HeaderMap,
) -> Result<Admitted<'a>, Refused> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let header = hosts.next().map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if hosts.next().is_some() {
        return Err(Refused::ManyHosts);
    }
    if let (Some(a), Some(h)) = (authority, header)
        && !strip_port(a).eq_ignore_ascii_case(strip_port(h))
    {
        return Err(Refused::HostMismatch {
            authority: a.to_string(),
            host: h.to_string(),
        });
    }
    for host in authority.iter().chain(header.iter()) {
        if !valid_host(host) {
            return Err(Refused::BadHost(host.to_string()));
        }
    }
    let mut upgrades = Vec::new();
    for value in headers.get_all(http::header::UPGRADE) {
        upgrades.push(value.to_str().map_err(|_| Refused::UnreadableUpgrade)?);
    }
    if upgrades.iter().flat_map(|v| v.split(',')).any(is_h2c) {
        return Err(Refused::H2c);
    }
    Ok(Admitted {
        path: normalize(target)?,
        host: authority.or(header).map(strip_port),
    })
}

/// Whether an `Upgrade` token names h2c (`h2c`, `h2c/...`, any case, any spaces).
fn is_h2c(token: &str) -> bool {
    let name = token.split('/').next().unwrap_or("").trim();
    name.eq_ignore_ascii_case("h2c")
}

/// A URI host (RFC 3986 reg-name as names are written, IPv4, or `[IPv6]`) with an optional
/// numeric port; empty is allowed (HTTP/1.1 sends an empty Host when there is no authority).
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (host, "0"),
        }
    };
    !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `host` without its port: `[v6]:port`, `name:port`, or no port.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_must_be_names_or_addresses_with_a_port_at_most() {
        for ok in [
            "api.example",
            "API.example:8080",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "my_service.ns.svc",
            "",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "[allowed.example]:80",
            "[allowed.example]x",
            "[::1]x",
            "a.example:",
            "a.example:8o",
            "a b.example",
            "a.example@evil.example",
            "évil.example",
        ] {
            assert!(!valid_host(bad), "{bad}");
            let h = headers(&[("host", "allowed.example")]);
            if bad.is_ascii() && !bad.contains(' ') {
                let h2 = headers(&[("host", bad)]);
                assert!(
                    matches!(admit("/", None, &h2), Err(Refused::BadHost(_))),
                    "{bad}"
                );
            }
            assert!(matches!(
                admit("/", Some(bad), &h),
                Err(Refused::BadHost(_) | Refused::HostMismatch { .. })
            ));
        }
    }

    #[test]
    fn h2c_upgrades_are_refused_however_spelt_and_websocket_ones_go_on_to_the_rules() {
        for v in ["h2c", "H2C", "websocket, h2c", " h2c/1 "] {
            let h = headers(&[("host", "a"), ("upgrade", v)]);
            assert_eq!(admit("/", None, &h), Err(Refused::H2c), "{v}");
        }
        let mut h = headers(&[("host", "a")]);
        h.append(
            http::header::UPGRADE,
            http::HeaderValue::from_bytes(b"h2c,\xff").expect("value"),
        );
        assert_eq!(admit("/", None, &h), Err(Refused::UnreadableUpgrade));
        let ws = headers(&[("host", "a"), ("upgrade", "websocket")]);
        assert!(admit("/chat", None, &ws).is_ok());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn one_host_is_read_whatever_its_port_or_case() {
        let h = headers(&[("host", "API.example:8080")]);
        let a = admit("/api/v1", None, &h).expect("admitted");
        assert_eq!(a.host, Some("API.example"));
        assert_eq!(a.path, "/api/v1");
        let h = headers(&[("host", "api.example")]);
        assert_eq!(
            admit("http://api.example:80/x", Some("api.example:80"), &h)
                .expect("the same host")
                .host,
            Some("api.example")
        );
    }

    #[test]
    fn two_hosts_or_an_authority_a_host_header_contradicts_are_refused() {
        let two = headers(&[("host", "allowed.example"), ("host", "evil.example")]);
        assert_eq!(admit("/", None, &two), Err(Refused::ManyHosts));
        let evil = headers(&[("host", "evil.example")]);
        assert!(matches!(
            admit("http://allowed.example/", Some("allowed.example"), &evil),
            Err(Refused::HostMismatch { .. })
        ));
        // Absolute-form alone names its host.
        let none = HeaderMap::new();
        assert_eq!(
            admit("http://allowed.example/a", Some("allowed.example"), &none)
                .expect("admitted")
                .host,
            Some("allowed.example")
        );
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("api.local:8080"), "api.local");
        assert_eq!(strip_port("api.local"), "api.local");
        assert_eq!(strip_port("[fd00::1]:80"), "fd00::1");
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
    }
}

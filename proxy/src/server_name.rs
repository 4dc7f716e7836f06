//! The server name a client asks for on a connection that only a `toFQDNs` rule allows: the TLS
//! SNI of its ClientHello, or the `Host` of its first HTTP request, read with `peek` (nothing is
//! consumed, nothing terminated). The name must be one the rule allows, and one the address was
//! learned for: a CDN address learned for `api.github.com` does not carry `evil.example`.
//!
//! Protocols where the server speaks first (SMTP, SSH) or that are neither TLS nor HTTP pass
//! unchecked: there is no name to check. A TLS ClientHello without SNI, or an HTTP request
//! without `Host`, is refused: the name cannot be checked and a client that resolved a name
//! sends it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use podwall_policy::{FqdnId, Protocol};
use tokio::net::TcpStream;

use crate::pod_policy::PodPolicy;

/// How long the client may stay silent before the connection is taken to be server-first.
const FIRST_BYTES: Duration = Duration::from_secs(1);
/// How long a ClientHello or request head may take to arrive in full.
const WHOLE_HEAD: Duration = Duration::from_secs(5);
/// Largest head read.
const MAX_HEAD: usize = 16 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS ClientHello, with its SNI if it has one.
    Tls(Option<String>),
    /// An HTTP/1.x request, with its Host (without port) if it has one.
    Http(Option<String>),
    /// Something else.
    Other,
    /// Not enough bytes yet.
    Incomplete,
}

/// The verdict on the server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The name (checked) is allowed.
    Allowed(String),
    /// No name to check.
    NotApplicable,
    /// Refused, and why.
    Denied(String),
}

/// Reads the client's first bytes and checks the name they carry against the policy.
pub async fn check(
    client: &TcpStream,
    policy: &PodPolicy,
    dst: SocketAddr,
    names: &[FqdnId],
) -> Check {
    let mut buf = vec![0u8; MAX_HEAD];
    match tokio::time::timeout(FIRST_BYTES, client.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Check::NotApplicable,
    }
    let started = Instant::now();
    let first = loop {
        let n = match client.peek(&mut buf).await {
            Ok(n) => n,
            Err(e) => return Check::Denied(format!("cannot read the first bytes: {e}")),
        };
        match classify(&buf[..n]) {
            FirstBytes::Incomplete if n < buf.len() && started.elapsed() < WHOLE_HEAD => {
                // peek returns what is there without waiting for more: poll gently.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => break other,
        }
    };
    let (kind, name) = match first {
        FirstBytes::Tls(Some(n)) => ("TLS SNI", n),
        FirstBytes::Http(Some(n)) => ("HTTP Host", n),
        FirstBytes::Tls(None) => {
            return Check::Denied(format!(
                "TLS without SNI to {dst}: the server name cannot be checked against the toFQDNs names"
            ));
        }
        FirstBytes::Http(None) => {
            return Check::Denied(format!(
                "HTTP request without Host to {dst}: the server name cannot be checked against the toFQDNs names"
            ));
        }
        FirstBytes::Incomplete => {
            return Check::Denied(format!(
                "the TLS ClientHello or HTTP request head to {dst} did not arrive in full"
            ));
        }
        FirstBytes::Other => return Check::NotApplicable,
    };
    let ids: Vec<FqdnId> = policy
        .fqdn
        .as_ref()
        .map(|m| m.matching(&name))
        .unwrap_or_default()
        .into_iter()
        .filter(|id| names.binary_search(id).is_ok())
        .collect();
    if !ids.is_empty()
        && policy
            .outbound_learned(dst.ip(), Protocol::Tcp, dst.port(), &ids)
            .egress
            .allowed()
    {
        Check::Allowed(name)
    } else {
        Check::Denied(format!(
            "{kind} {name} is not a name the toFQDNs rules allow for {dst}"
        ))
    }
}

/// Classifies a connection's first bytes.
pub fn classify(buf: &[u8]) -> FirstBytes {
    match buf.first() {
        None => FirstBytes::Incomplete,
        Some(0x16) => tls(buf),
        Some(b) if b.is_ascii_uppercase() => http(buf),
        Some(_) => FirstBytes::Other,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// A TLS record carrying a ClientHello: its `server_name` extension (RFC 6066).
fn tls(buf: &[u8]) -> FirstBytes {
    if buf.len() < 5 {
        return FirstBytes::Incomplete;
    }
    if buf[1] != 0x03 {
        return FirstBytes::Other;
    }
    let record_len = u16_at(buf, 3).unwrap_or(0);
    let record = &buf[5..buf.len().min(5 + record_len)];
    if record.len() < 4 {
        return FirstBytes::Incomplete;
    }
    if record[0] != 0x01 {
        return FirstBytes::Tls(None); // a handshake, but not a ClientHello
    }
    let complete = buf.len() >= 5 + record_len;
    match client_hello_sni(&record[4..]) {
        Some(sni) => FirstBytes::Tls(sni),
        None if complete => FirstBytes::Tls(None),
        None => FirstBytes::Incomplete,
    }
}

/// The SNI of a ClientHello body: `Some(None)` when it has none, `None` when the bytes end
/// before the answer.
fn client_hello_sni(hello: &[u8]) -> Option<Option<String>> {
    // version (2), random (32)
    let mut at = 34;
    let session = usize::from(*hello.get(at)?);
    at += 1 + session;
    let suites = u16_at(hello, at)?;
    at += 2 + suites;
    let compression = usize::from(*hello.get(at)?);
    at += 1 + compression;
    let Some(ext_len) = u16_at(hello, at) else {
        return if at >= hello.len() { Some(None) } else { None };
    };
    at += 2;
    let end = at + ext_len;
    while at + 4 <= end {
        let kind = u16_at(hello, at)?;
        let len = u16_at(hello, at + 2)?;
        at += 4;
        if kind == 0 {
            let data = hello.get(at..at + len)?;
            // server_name_list: length, then (type, length, name) entries.
            let mut p = 2;
            while p + 3 <= data.len() {
                let name_type = data[p];
                let n = u16_at(data, p + 1)?;
                let name = data.get(p + 3..p + 3 + n)?;
                if name_type == 0 {
                    return Some(std::str::from_utf8(name).ok().map(str::to_ascii_lowercase));
                }
                p += 3 + n;
            }
            return Some(None);
        }
        at += len;
    }
    if end <= hello.len() { Some(None) } else { None }
}

/// An HTTP/1.x request head: its Host without the port.
fn http(buf: &[u8]) -> FirstBytes {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|h| strip_port(h.trim()).to_ascii_lowercase());
            FirstBytes::Http(host.filter(|h| !h.is_empty()))
        }
        Ok(httparse::Status::Partial) => FirstBytes::Incomplete,
        Err(_) => FirstBytes::Other,
    }
}

fn strip_port(host: &str) -> &str {
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

    /// A ClientHello as a TLS client sends it, with the extensions given.
    fn client_hello(extensions: &[u8]) -> Vec<u8> {
        let mut hello = vec![0x03, 0x03];
        hello.extend([7u8; 32]); // random
        hello.push(0); // no session id
        hello.extend([0x00, 0x02, 0x13, 0x01]); // one cipher suite
        hello.extend([0x01, 0x00]); // null compression
        hello.extend((extensions.len() as u16).to_be_bytes());
        hello.extend(extensions);
        let mut hs = vec![0x01];
        hs.extend(&(hello.len() as u32).to_be_bytes()[1..]);
        hs.extend(hello);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((hs.len() as u16).to_be_bytes());
        record.extend(hs);
        record
    }

    fn sni_ext(name: &str) -> Vec<u8> {
        let mut entry = vec![0u8];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        let mut ext = vec![0x00, 0x00];
        ext.extend((list.len() as u16).to_be_bytes());
        ext.extend(list);
        ext
    }

    #[test]
    fn the_sni_of_a_client_hello_is_found_among_other_extensions() {
        let mut exts = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats
        exts.extend(sni_ext("API.GitHub.com"));
        exts.extend([0x00, 0x10, 0x00, 0x00]); // empty ALPN-like extension
        assert_eq!(
            classify(&client_hello(&exts)),
            FirstBytes::Tls(Some("api.github.com".into()))
        );
    }

    #[test]
    fn a_client_hello_without_sni_has_none_and_a_partial_one_asks_for_more() {
        let hello = client_hello(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
        assert_eq!(classify(&hello), FirstBytes::Tls(None));
        let with_sni = client_hello(&sni_ext("example.com"));
        for cut in [1, 4, 20, with_sni.len() - 3] {
            assert_eq!(
                classify(&with_sni[..cut]),
                FirstBytes::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_http_request_gives_its_host_without_port() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: GitHub.com:443\r\nAccept: */*\r\n\r\n"),
            FirstBytes::Http(Some("github.com".into()))
        );
        assert_eq!(
            classify(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
            FirstBytes::Http(None)
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a"),
            FirstBytes::Incomplete
        );
    }

    #[test]
    fn other_protocols_are_not_checked() {
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.6\r\n"), FirstBytes::Other);
        assert_eq!(classify(&[0x00, 0x01, 0x02]), FirstBytes::Other);
        assert_eq!(classify(b"hello\n"), FirstBytes::Other);
    }
}

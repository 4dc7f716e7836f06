//! The server name a client asks for on a connection that only a `toFQDNs` rule allows. The
//! name must be one the rule allows, and one the address was learned for: a CDN address learned
//! for `api.github.com` does not carry `evil.example`.
//!
//! The sidecar connects to the server first, then waits for whoever speaks first, with no
//! timer deciding (a client that stays silent for a while and then sends another name is
//! judged all the same):
//!
//! - the client, with a TLS ClientHello (read in full, also when split over segments or
//!   records): its SNI is checked; without SNI, or with an encrypted ClientHello (ECH, whose
//!   inner name the server acts on and nobody else reads), the connection is refused. An
//!   allowed ClientHello is handed to the server alone, and nothing more of the client's
//!   passes until the server has answered with TLS: a ClientHello put before another protocol
//!   (SMTP, Redis, anything that answers junk and reads on) opens nothing;
//! - the client, with HTTP/1 (empty lines before the request line are tolerated, as RFC 9112
//!   lets servers do) or HTTP/2 (the prior-knowledge preface): the connection is served request
//!   by request and the `Host` (`:authority`) of *every* request is checked;
//! - the server (SMTP, SSH), or the client with anything else: there is no name to check, and
//!   the connection is refused unless `--allow-unnamed-fqdn-connections` says such protocols
//!   may pass on a name's address.
//!
//! Nothing is consumed or terminated: the first bytes are read with `peek`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use podwall_policy::{FqdnId, Protocol};
use tokio::net::TcpStream;

use crate::pod_policy::PodPolicy;

/// How long a ClientHello or request head may take to arrive in full once it has begun.
const WHOLE_HEAD: Duration = Duration::from_secs(5);
/// Largest head read.
const MAX_HEAD: usize = 16 * 1024;
/// Empty lines tolerated before an HTTP/1 request line.
const EMPTY_LINES: usize = 8;

/// How long the server may take to answer an allowed ClientHello.
const SERVER_ANSWER: Duration = Duration::from_secs(10);

/// A TLS ClientHello, as far as the name check reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// Its `server_name` (lower case), if it has one.
    pub sni: Option<String>,
    /// Whether it carries an encrypted ClientHello (`encrypted_client_hello`, or the draft
    /// `encrypted_server_name`): the name the server acts on is then hidden.
    pub encrypted: bool,
    /// How many bytes the records holding it take on the wire.
    pub len: usize,
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FirstBytes {
    /// A TLS ClientHello; `None` when the first handshake message is not one.
    Tls(Option<ClientHello>),
    /// An HTTP/1.x request, with its Host (without port) if it has one.
    Http(Option<String>),
    /// The HTTP/2 connection preface (prior knowledge).
    Http2,
    /// Something else.
    Other,
    /// Not enough bytes yet.
    Incomplete,
}

/// Who spoke first on a connection, and what the client said if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum First {
    /// The client, with this.
    Client(FirstBytes),
    /// The server, before the client said anything.
    Server,
    /// The client closed (or failed) before saying anything.
    Closed,
}

/// What the name check decided about a connection that only toFQDNs rules allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameCheck {
    /// TLS to an allowed server name; its ClientHello (`handed_over` bytes) is with the
    /// server, which answered with TLS.
    Checked {
        /// The SNI.
        name: String,
        /// Bytes of the client's the server has already.
        handed_over: u64,
    },
    /// HTTP: every request's Host is checked as it is served.
    PerRequest,
    /// No name to check, and `--allow-unnamed-fqdn-connections` lets it pass.
    Unnamed,
    /// Refused, and why.
    Denied(String),
    /// The client closed before saying anything.
    Closed,
}

/// Checks the server name the client asks `server` (connected to `dst`) for against the
/// toFQDNs selectors `names` the address was learned for (see the module header).
pub(crate) async fn check(
    client: &TcpStream,
    server: &TcpStream,
    policy: &PodPolicy,
    dst: SocketAddr,
    names: &[FqdnId],
    allow_unnamed: bool,
) -> NameCheck {
    const UNNAMED: &str = "no server name to check against the toFQDNs names (--allow-unnamed-fqdn-connections lets such protocols pass)";
    match Box::pin(first_message(client, server)).await {
        First::Client(FirstBytes::Tls(Some(hello))) if hello.encrypted => {
            NameCheck::Denied(format!(
                "TLS with an encrypted ClientHello (ECH) to {dst}: the server name it acts on is hidden"
            ))
        }
        First::Client(FirstBytes::Tls(Some(ClientHello {
            sni: Some(name),
            len,
            ..
        }))) => {
            if !name_allowed(policy, dst, names, &name) {
                return NameCheck::Denied(format!(
                    "TLS SNI {name} is not a name the toFQDNs rules allow for {dst}"
                ));
            }
            // The server must answer it with TLS before anything else of the client's passes.
            match hand_over_client_hello(client, server, len).await {
                Ok(()) => NameCheck::Checked {
                    name,
                    handed_over: len as u64,
                },
                Err(why) => NameCheck::Denied(format!("TLS SNI {name} to {dst}: {why}")),
            }
        }
        First::Client(FirstBytes::Tls(_)) => NameCheck::Denied(format!(
            "TLS without SNI to {dst}: the server name cannot be checked against the toFQDNs names"
        )),
        First::Client(FirstBytes::Http(_) | FirstBytes::Http2) => NameCheck::PerRequest,
        First::Client(FirstBytes::Incomplete) => NameCheck::Denied(format!(
            "the TLS ClientHello or HTTP request head to {dst} did not arrive in full"
        )),
        First::Client(FirstBytes::Other) | First::Server if allow_unnamed => NameCheck::Unnamed,
        First::Client(FirstBytes::Other) => {
            NameCheck::Denied(format!("neither TLS nor HTTP to {dst}: {UNNAMED}"))
        }
        First::Server => NameCheck::Denied(format!("{dst} spoke first: {UNNAMED}")),
        First::Closed => NameCheck::Closed,
    }
}

/// Waits for the first message on a connection: the client's, read in full, or the server's,
/// whichever comes first.
pub(crate) async fn first_message(client: &TcpStream, server: &TcpStream) -> First {
    // Readiness may be reported without data: each side is peeked to be sure, and a peek that
    // finds nothing clears the readiness so that the next wait is a real one.
    loop {
        tokio::select! {
            biased;
            r = client.readable() => {
                if r.is_err() {
                    return First::Closed;
                }
                match peek_now(client) {
                    Ok(0) | Err(Waiting::Failed) => return First::Closed,
                    Ok(_) => break,
                    Err(Waiting::Nothing) => {}
                }
            }
            r = server.readable() => {
                if r.is_err() {
                    return First::Closed;
                }
                match peek_now(server) {
                    Ok(0) | Err(Waiting::Failed) => return First::Closed,
                    // A client whose bytes arrived in the same instant still counts as first.
                    Ok(_) if !matches!(peek_now(client), Ok(n) if n > 0) => return First::Server,
                    Ok(_) => break,
                    Err(Waiting::Nothing) => {}
                }
            }
        }
    }
    let mut buf = vec![0u8; MAX_HEAD];
    let started = Instant::now();
    loop {
        let n = match client.peek(&mut buf).await {
            Ok(0) | Err(_) => return First::Closed,
            Ok(n) => n,
        };
        match classify(&buf[..n]) {
            FirstBytes::Incomplete if n < buf.len() && started.elapsed() < WHOLE_HEAD => {
                // peek returns what is there without waiting for more: poll gently.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return First::Client(other),
        }
    }
}

/// Why a non-blocking peek found no bytes.
enum Waiting {
    /// None yet (the stream's readiness is cleared).
    Nothing,
    /// The stream failed.
    Failed,
}

/// How many bytes wait to be read on `stream` (0: it was closed), without consuming them or
/// waiting.
fn peek_now(stream: &TcpStream) -> Result<usize, Waiting> {
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    match stream.try_io(tokio::io::Interest::READABLE, || {
        nix::sys::socket::recv(stream.as_raw_fd(), &mut probe, flags).map_err(std::io::Error::from)
    }) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(Waiting::Nothing),
        Err(_) => Err(Waiting::Failed),
    }
}

/// Whether `name` is one of the pod's toFQDNs names that `names` (those `dst` was learned for)
/// hold and that a rule allows to `dst`.
pub(crate) fn name_allowed(
    policy: &PodPolicy,
    dst: SocketAddr,
    names: &[FqdnId],
    name: &str,
) -> bool {
    let ids: Vec<FqdnId> = policy
        .fqdn
        .as_ref()
        .map(|m| m.matching(name))
        .unwrap_or_default()
        .into_iter()
        .filter(|id| names.binary_search(id).is_ok())
        .collect();
    !ids.is_empty()
        && policy
            .outbound_learned(dst.ip(), Protocol::Tcp, dst.port(), &ids)
            .egress
            .allowed()
}

/// Classifies a connection's first bytes.
pub(crate) fn classify(buf: &[u8]) -> FirstBytes {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if buf.first() == Some(&0x16) {
        return tls(buf);
    }
    if buf.starts_with(PREFACE) {
        return FirstBytes::Http2;
    }
    if PREFACE.starts_with(buf) {
        return FirstBytes::Incomplete;
    }
    // Empty lines before the request line: RFC 9112 lets a server ignore them, so a client
    // may send them first.
    let mut rest = buf;
    for _ in 0..EMPTY_LINES {
        match rest {
            [b'\r', b'\n', tail @ ..] | [b'\n', tail @ ..] => rest = tail,
            [b'\r'] => return FirstBytes::Incomplete,
            _ => break,
        }
    }
    match rest.first() {
        None => FirstBytes::Incomplete,
        Some(b) if b.is_ascii_uppercase() => http(rest),
        Some(_) => FirstBytes::Other,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// TLS records carrying a ClientHello: its `server_name` extension (RFC 6066). The handshake
/// message may be split over several records (and they over segments): the fragments are
/// joined until the ClientHello is whole.
fn tls(buf: &[u8]) -> FirstBytes {
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return FirstBytes::Incomplete;
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            // A record of another kind before the ClientHello was whole.
            return if handshake.is_empty() {
                FirstBytes::Other
            } else {
                FirstBytes::Tls(None)
            };
        }
        let end = at + 5 + u16_at(header, 3).unwrap_or(0);
        let len = u16_at(header, 3).unwrap_or(0);
        let fragment = &buf[at + 5..buf.len().min(at + 5 + len)];
        handshake.extend_from_slice(fragment);
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return FirstBytes::Tls(None); // a handshake, but not a ClientHello
            }
            let hello_len = usize::from(handshake[1]) << 16 | u16_at(&handshake, 2).unwrap_or(0);
            if handshake.len() >= 4 + hello_len {
                // The records holding it must end where it ends: what is handed over once the
                // name is checked is those records, and bytes after the ClientHello inside
                // them would reach the server unchecked (no client sends anything else in
                // its first flight's handshake records).
                if fragment.len() < len {
                    return FirstBytes::Incomplete;
                }
                if handshake.len() != 4 + hello_len {
                    return FirstBytes::Tls(None);
                }
                return match read_client_hello(&handshake[4..4 + hello_len]) {
                    Some((sni, encrypted)) => FirstBytes::Tls(Some(ClientHello {
                        sni,
                        encrypted,
                        len: end,
                    })),
                    None => FirstBytes::Tls(None),
                };
            }
        }
        if fragment.len() < len {
            return FirstBytes::Incomplete;
        }
        at += 5 + len;
    }
}

/// The SNI of a whole ClientHello body, and whether it is encrypted (ECH); `None` when the
/// body is malformed. Every extension is read: the ECH one may come after the SNI.
fn read_client_hello(hello: &[u8]) -> Option<(Option<String>, bool)> {
    // version (2), random (32)
    let mut at = 34;
    let session = usize::from(*hello.get(at)?);
    at += 1 + session;
    let suites = u16_at(hello, at)?;
    at += 2 + suites;
    let compression = usize::from(*hello.get(at)?);
    at += 1 + compression;
    let Some(ext_len) = u16_at(hello, at) else {
        return (at >= hello.len()).then_some((None, false));
    };
    at += 2;
    let end = at + ext_len;
    if end > hello.len() {
        return None;
    }
    let (mut sni, mut encrypted) = (None, false);
    while at + 4 <= end {
        let kind = u16_at(hello, at)?;
        let len = u16_at(hello, at + 2)?;
        at += 4;
        let data = hello.get(at..at + len)?;
        match kind {
            0 if sni.is_none() => {
                // server_name_list: length, then (type, length, name) entries.
                let mut p = 2;
                while p + 3 <= data.len() {
                    let name_type = data[p];
                    let n = u16_at(data, p + 1)?;
                    let name = data.get(p + 3..p + 3 + n)?;
                    if name_type == 0 {
                        sni = std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
                        break;
                    }
                    p += 3 + n;
                }
            }
            ECH | ESNI => encrypted = true,
            _ => {}
        }
        at += len;
    }
    Some((sni, encrypted))
}

/// `encrypted_client_hello` (RFC 9849) and the draft `encrypted_server_name`.
const ECH: usize = 0xfe0d;
const ESNI: usize = 0xffce;

/// Hands an allowed ClientHello (its first `len` bytes, already peeked) to the server, then
/// waits for the server's answer to be TLS (a handshake or alert record) before anything
/// more of the client's may pass. Why not, otherwise.
pub(crate) async fn hand_over_client_hello(
    client: &TcpStream,
    server: &TcpStream,
    len: usize,
) -> Result<(), String> {
    let mut hello = vec![0u8; len];
    let mut read = 0;
    while read < len {
        client.readable().await.map_err(|e| e.to_string())?;
        match client.try_read(&mut hello[read..]) {
            Ok(0) => return Err("the client closed during its ClientHello".into()),
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut written = 0;
    while written < len {
        server.writable().await.map_err(|e| e.to_string())?;
        match server.try_write(&hello[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let answer = async {
        let mut head = [0u8; 2];
        loop {
            match server.peek(&mut head).await {
                Ok(0) | Err(_) => return Err("the server closed without answering TLS".into()),
                Ok(1) => tokio::time::sleep(Duration::from_millis(5)).await,
                Ok(_) if matches!(head, [0x15 | 0x16, 0x03]) => return Ok(()),
                Ok(_) => {
                    return Err(
                        "the server did not answer the ClientHello with TLS: another protocol behind a ClientHello"
                            .to_string(),
                    );
                }
            }
        }
    };
    tokio::time::timeout(SERVER_ANSWER, answer)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the server did not answer the ClientHello within {SERVER_ANSWER:?}"
            ))
        })
}

/// An HTTP/1.x request head: its Host without the port, when the head is whole.
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
        // The request line is what makes it HTTP; the HTTP path (hyper, with its own limits)
        // reads the rest and checks every request's Host, so a long head is no reason to wait
        // or refuse here.
        Ok(httparse::Status::Partial) if req.version.is_some() => FirstBytes::Http(None),
        Ok(httparse::Status::Partial) => FirstBytes::Incomplete,
        Err(httparse::Error::TooManyHeaders) => FirstBytes::Http(None),
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
    fn any_first_bytes_classify_without_panic_and_a_name_found_is_one_sent() {
        // Seeds: what the end-to-end tests' clients send first (see podwall-fuzz for the
        // long-running mode).
        let mut exts = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00];
        exts.extend(sni_ext("api.example.com"));
        let mut ech = sni_ext("public.example");
        ech.extend([0xfe, 0x0d, 0x00, 0x04, 0, 1, 2, 3]);
        let seeds: Vec<Vec<u8>> = vec![
            client_hello(&exts),
            client_hello(&ech),
            client_hello(&[]),
            // Two records holding one ClientHello.
            {
                let whole = client_hello(&sni_ext("www.shop.example"));
                let hs = &whole[5..];
                let (a, b) = hs.split_at(hs.len() / 2);
                let mut out = Vec::new();
                for part in [a, b] {
                    out.extend([0x16, 0x03, 0x01]);
                    out.extend((part.len() as u16).to_be_bytes());
                    out.extend(part);
                }
                out
            },
            b"GET / HTTP/1.1\r\nHost: API.example.com:8080\r\nAccept: */*\r\n\r\n".to_vec(),
            b"\r\nPOST /api/v1/orders HTTP/1.0\r\nhost: [::1]:80\r\nContent-Length: 2\r\n\r\nhi"
                .to_vec(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        let lower = |input: &[u8]| String::from_utf8_lossy(input).to_ascii_lowercase();
        podwall_fuzz::run("first-bytes", &seeds, 2048, |input| match classify(input) {
            FirstBytes::Tls(Some(hello)) => {
                assert!(hello.len <= input.len(), "{hello:?}");
                if let Some(sni) = hello.sni {
                    assert_eq!(sni, sni.to_ascii_lowercase());
                    assert!(lower(input).contains(&sni), "{sni:?} was not sent");
                }
            }
            FirstBytes::Http(Some(host)) => {
                assert!(lower(input).contains(&host), "{host:?} was not sent");
            }
            _ => {}
        });
    }

    #[test]
    fn bytes_after_the_client_hello_inside_its_record_make_it_no_client_hello() {
        // Found by fuzzing: a record longer than the ClientHello in it was taken whole, and
        // what followed the ClientHello inside it would have been handed over unchecked.
        let mut hello = client_hello(&sni_ext("api.example.com"));
        let smuggled = b"GET /admin HTTP/1.1\r\nHost: other.example.com\r\n\r\n";
        let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize + smuggled.len();
        hello[3..5].copy_from_slice(&(record_len as u16).to_be_bytes());
        hello.extend_from_slice(smuggled);
        assert_eq!(classify(&hello), FirstBytes::Tls(None));
        // A record that claims more than has arrived is waited for, not judged.
        assert_eq!(classify(&hello[..hello.len() - 4]), FirstBytes::Incomplete);
    }

    #[test]
    fn the_sni_of_a_client_hello_is_found_among_other_extensions() {
        let mut exts = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats
        exts.extend(sni_ext("API.GitHub.com"));
        exts.extend([0x00, 0x10, 0x00, 0x00]); // empty ALPN-like extension
        let hello = client_hello(&exts);
        assert_eq!(
            classify(&hello),
            FirstBytes::Tls(Some(ClientHello {
                sni: Some("api.github.com".into()),
                encrypted: false,
                len: hello.len(),
            }))
        );
    }

    #[test]
    fn an_encrypted_client_hello_is_seen_wherever_its_extension_is() {
        for ext in [ECH, ESNI] {
            let ech = [(ext >> 8) as u8, ext as u8, 0x00, 0x02, 0xaa, 0xbb];
            let mut after = sni_ext("allowed.example");
            after.extend(ech);
            let mut before = ech.to_vec();
            before.extend(sni_ext("allowed.example"));
            for exts in [after, before] {
                let FirstBytes::Tls(Some(hello)) = classify(&client_hello(&exts)) else {
                    panic!("a ClientHello");
                };
                assert!(hello.encrypted, "{ext:#x}");
                assert_eq!(hello.sni.as_deref(), Some("allowed.example"));
            }
        }
    }

    #[test]
    fn a_client_hello_without_sni_has_none_and_a_partial_one_asks_for_more() {
        let hello = client_hello(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
        assert!(matches!(
            classify(&hello),
            FirstBytes::Tls(Some(ClientHello { sni: None, .. }))
        ));
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
        assert_eq!(classify(b"GET / HTT"), FirstBytes::Incomplete);
        // The request line is enough to know it is HTTP: a head with many or long headers
        // goes to the HTTP path, which checks its Host.
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a"),
            FirstBytes::Http(None)
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend(b"Host: a\r\n\r\n");
        assert_eq!(classify(&many), FirstBytes::Http(None));
    }

    #[test]
    fn other_protocols_are_not_checked() {
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.6\r\n"), FirstBytes::Other);
        assert_eq!(classify(&[0x00, 0x01, 0x02]), FirstBytes::Other);
        assert_eq!(classify(b"hello\n"), FirstBytes::Other);
    }

    #[test]
    fn a_client_hello_split_over_records_is_read_whole() {
        let whole = client_hello(&sni_ext("api.github.com"));
        // The same handshake message in two records of 40 bytes and the rest.
        let hs = &whole[5..];
        let mut split = Vec::new();
        for part in [&hs[..40], &hs[40..]] {
            split.extend([0x16, 0x03, 0x01]);
            split.extend((part.len() as u16).to_be_bytes());
            split.extend(part);
        }
        // What follows the ClientHello (early data) is not part of it.
        let hello_len = split.len();
        split.extend([0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        assert_eq!(
            classify(&split),
            FirstBytes::Tls(Some(ClientHello {
                sni: Some("api.github.com".into()),
                encrypted: false,
                len: hello_len,
            }))
        );
        assert_eq!(classify(&split[..50]), FirstBytes::Incomplete);
    }

    #[test]
    fn empty_lines_before_a_request_and_the_http2_preface_are_http() {
        assert_eq!(
            classify(b"\r\n\r\nGET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
            FirstBytes::Http(Some("evil.example".into()))
        );
        assert_eq!(classify(b"\r"), FirstBytes::Incomplete);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"),
            FirstBytes::Http2
        );
        assert_eq!(classify(b"PRI * HT"), FirstBytes::Incomplete);
    }
}

//! The small server every sandbox pod runs on each of its container ports.
//!
//! TCP: a client whose first bytes are an HTTP request line (`GET /...`, or the HTTP/2
//! preface) is served HTTP (HTTP/1.1, or HTTP/2 with prior knowledge): every request gets `200`
//! and a body naming the pod, the method and the path it received, and is logged on stdout.
//! Any other client (silent for a moment, or sending something else) gets one greeting line
//! naming the pod, the port the connection arrived on and the peer it came from, then an echo
//! of everything it sends until it half-closes. UDP: echoes each datagram. The greeting is how
//! probes tell a connection that reached the application from one a sidecar accepted and then
//! reset.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// What the greeting line starts with.
pub const GREETING: &str = "podwall-sandbox";

/// How long a silent client waits for the greeting.
const SILENCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether a connection's first bytes start an HTTP request: an upper-case method token
/// followed by a space (`PRI` for the HTTP/2 preface), or only such a token so far.
fn looks_like_http(first: &[u8]) -> bool {
    let token = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    token > 0 && (token == first.len() || first[token] == b' ')
}

/// HTTP: `200` with `podwall-sandbox <pod> <METHOD> <path>` for every request, each logged.
async fn serve_http(stream: tokio::net::TcpStream, pod: String, local: SocketAddr) {
    use http_body_util::Full;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // An upgrade (WebSocket or any other): switch protocols and echo what follows.
            if req.headers().contains_key(hyper::header::UPGRADE) {
                let proto = req.headers()[hyper::header::UPGRADE].clone();
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(io) = upgrade.await {
                        let mut io = hyper_util::rt::TokioIo::new(io);
                        let mut buf = vec![0u8; 4096];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                println!("{GREETING} {pod} upgrade {}", req.uri().path());
                let mut resp = hyper::Response::new(Full::new(bytes::Bytes::new()));
                *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut().insert(hyper::header::UPGRADE, proto);
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("upgrade"),
                );
                return std::future::ready(Ok::<_, std::convert::Infallible>(resp));
            }
            let hosts: Vec<&str> = req
                .headers()
                .get_all(hyper::header::HOST)
                .iter()
                .filter_map(|h| h.to_str().ok())
                .collect();
            // The target as it arrived (origin-form, or absolute-form in full) and every Host:
            // what this backend would act on.
            let line = format!(
                "{GREETING} {pod} {} {} port {} host {}",
                req.method(),
                if req.uri().authority().is_some() && req.version() < hyper::Version::HTTP_2 {
                    req.uri().to_string()
                } else {
                    req.uri()
                        .path_and_query()
                        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
                },
                local.port(),
                hosts.join(",")
            );
            println!("{line}");
            let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(format!("{line}\n"))));
            // gRPC clients want a gRPC status; others ignore it.
            if req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            {
                resp.headers_mut()
                    .insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(resp))
        });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// The greeting for a connection to `pod` on `local` from `peer`.
pub fn greeting(pod: &str, local: SocketAddr, peer: SocketAddr) -> String {
    // The listener is dual-stack: show IPv4 peers as IPv4.
    let peer = match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    };
    format!("{GREETING} {pod} port {} from {peer}\n", local.port())
}

/// A TCP listener on every address of both families (IPv4 only where IPv6 is off).
async fn listen_tcp(port: u16) -> std::io::Result<TcpListener> {
    match TcpListener::bind(("::", port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(("0.0.0.0", port)).await,
    }
}

/// Serves the ports until the process ends. Binding failures are returned at once.
pub async fn serve(pod: String, tcp: Vec<u16>, udp: Vec<u16>) -> std::io::Result<()> {
    // Tests hold a thousand connections to one server.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let mut tasks = Vec::new();
    for port in tcp {
        let listener = listen_tcp(port).await?;
        let pod = pod.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    continue;
                };
                let pod = pod.clone();
                tokio::spawn(async move {
                    let local = stream
                        .local_addr()
                        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                    // Does the client open with an HTTP request? Then it is HTTP.
                    let mut first = [0u8; 16];
                    let spoke = tokio::time::timeout(SILENCE, stream.peek(&mut first)).await;
                    if matches!(spoke, Ok(Ok(n)) if n > 0 && looks_like_http(&first[..n])) {
                        serve_http(stream, pod, local).await;
                        return;
                    }
                    if stream
                        .write_all(greeting(&pod, local, peer).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        }));
    }
    for port in udp {
        let socket = match UdpSocket::bind(("::", port)).await {
            Ok(s) => s,
            Err(_) => UdpSocket::bind(("0.0.0.0", port)).await?,
        };
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                if let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    let _ = socket.send_to(&buf[..n], peer).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http_and_other_openings_are_echoed() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(looks_like_http(b"DELE"));
        assert!(!looks_like_http(b"ping 0\n"));
        assert!(!looks_like_http(b"hello"));
        assert!(!looks_like_http(b"GET/"));
        assert!(!looks_like_http(b" GET"));
    }
}

//! The small server every sandbox pod runs on each of its container ports.
//!
//! TCP: on accept it sends one greeting line naming the pod, the port the connection arrived
//! on and the peer it came from, then echoes everything back until the peer half-closes, then
//! half-closes too. UDP: echoes each datagram. The greeting is how probes tell a connection
//! that reached the application from one a sidecar accepted and then reset.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// What the greeting line starts with.
pub const GREETING: &str = "podwall-sandbox";

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

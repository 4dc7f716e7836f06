//! The sidecar's exemption from its own capture: every socket it opens carries a mark
//! (`SO_MARK`), and the init rules let marked packets pass (see [`crate::init`]).
//!
//! Why a mark and not the sidecar's uid or group, as istio-iptables and linkerd2-proxy-init
//! use: a root app (the default) can `setgid`/`setuid` to any id, and a setgid binary hands its
//! group to anyone who runs it. Setting `SO_MARK` (and `IP_TRANSPARENT`) needs `CAP_NET_ADMIN`
//! or `CAP_NET_RAW` in the pod's network namespace; the sidecar has the first, and injection
//! drops the second from every app container (which also closes `AF_PACKET`, whose frames no
//! netfilter hook of the pod sees). An app that keeps `NET_RAW` has no boundary: docs/limits.md.
//!
//! The listeners are marked too, and the sockets they accept inherit it: the init rules check
//! that what was redirected lands on a marked socket, so an app that binds a sidecar port while
//! the sidecar is down receives nothing.
//!
//! The mark is process-wide: one sidecar per process. Zero (the library's default, for tests
//! without privileges) marks nothing.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};

use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// The mark `proxy init` and `proxy run` agree on unless told otherwise.
pub const DEFAULT_MARK: u32 = 0x1337;

static MARK: AtomicU32 = AtomicU32::new(0);

/// Sets the mark every socket the sidecar opens from now on carries, and checks that this
/// process may set it (it needs `CAP_NET_ADMIN`). Zero turns marking off.
pub fn set_mark(mark: u32) -> io::Result<()> {
    MARK.store(mark, Ordering::Relaxed);
    if mark != 0 {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        self::mark(&probe)?;
    }
    Ok(())
}

/// The mark in use (0: none).
pub fn current() -> u32 {
    MARK.load(Ordering::Relaxed)
}

/// Marks one socket.
pub fn mark<F: AsFd>(socket: &F) -> io::Result<()> {
    let mark = current();
    if mark == 0 {
        return Ok(());
    }
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &mark).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot mark a socket with SO_MARK {mark:#x} (the sidecar needs NET_ADMIN): {e}"
            ),
        )
    })
}

/// A TCP socket of the family of `addr`, marked.
pub fn tcp_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    mark(&socket)?;
    Ok(socket)
}

/// Connects to `addr` from a marked socket (callers bound the wait).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    tcp_socket(addr)?.connect(addr).await
}

/// A marked UDP socket on an ephemeral port, connected to `addr` (the kernel then drops
/// datagrams from any other address or port).
pub async fn udp_connected(addr: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let std = std::net::UdpSocket::bind(bind)?;
    mark(&std)?;
    std.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(std)?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// The dialer the HTTP path opens upstream connections with.
pub fn dial() -> podwall_l7::serve::Dial {
    static DIAL: LazyLock<podwall_l7::serve::Dial> =
        LazyLock::new(|| Arc::new(|addr| Box::pin(connect(addr))));
    DIAL.clone()
}

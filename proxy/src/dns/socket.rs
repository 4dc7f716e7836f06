//! The DNS proxy's UDP sockets: the listener (transparent, with each datagram's original
//! destination, when the sidecar may), reading a datagram with where it was going, and the
//! transparent sockets replies leave from so that the pod sees its resolver answer.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::sys::socket::{self as sock, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt};

use super::*;

/// A UDP socket for the DNS port: transparent with the original destination reported when the
/// capability allows, a plain one otherwise.
pub(crate) fn udp_listener(
    addr: SocketAddr,
    want_transparent: bool,
) -> std::io::Result<(UdpSocket, bool)> {
    if want_transparent {
        match transparent_socket(addr, true) {
            Ok(s) => return Ok((UdpSocket::from_std(s)?, true)),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot open a transparent DNS socket (the sidecar needs NET_ADMIN for TPROXY); \\
                 falling back to the configured resolver as every query's destination"
            ),
        }
    }
    let std = std::net::UdpSocket::bind(addr)?;
    crate::exempt::mark(&std)?;
    std.set_nonblocking(true)?;
    Ok((UdpSocket::from_std(std)?, false))
}

/// A UDP socket with `IP_TRANSPARENT`, bound to `addr` (which need not be local); `recv_orig`
/// asks for each datagram's original destination.
fn transparent_socket(addr: SocketAddr, recv_orig: bool) -> std::io::Result<std::net::UdpSocket> {
    let family = if addr.is_ipv4() {
        sock::AddressFamily::Inet
    } else {
        sock::AddressFamily::Inet6
    };
    let fd: OwnedFd = sock::socket(
        family,
        sock::SockType::Datagram,
        sock::SockFlag::SOCK_NONBLOCK | sock::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    crate::exempt::mark(&fd)?;
    sock::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    // IP_TRANSPARENT is an IP-level flag that IPv6 sockets honour too.
    sock::setsockopt(&fd, sockopt::IpTransparent, &true)?;
    if recv_orig {
        if addr.is_ipv4() {
            sock::setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true)?;
        } else {
            sock::setsockopt(&fd, sockopt::Ipv6OrigDstAddr, &true)?;
        }
    }
    sock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// One received datagram: the bytes, who sent it, where it was going.
pub(super) fn recv_with_orig(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = sock::recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )?;
    let from = msg
        .address
        .as_ref()
        .and_then(storage_to_std)
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    let mut orig = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                    orig = Some(SocketAddr::from((
                        std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                        u16::from_be(a.sin_port),
                    )));
                }
                ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                    orig = Some(SocketAddr::from((
                        std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                        u16::from_be(a.sin6_port),
                    )));
                }
                _ => {}
            }
        }
    }
    Ok((
        msg.bytes,
        from.map_v4_mapped(),
        orig.map(|o| o.map_v4_mapped()),
    ))
}

fn storage_to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// Replies leave from the resolver's address: a transparent socket per resolver, kept for the
/// pod's configured resolvers only (the app chooses every other address, and a socket kept
/// for each would let it use up the sidecar's file descriptors).
pub(super) struct ReplySockets {
    kept: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    configured: Vec<IpAddr>,
}

impl ReplySockets {
    /// None kept yet; sockets are kept for the `configured` resolvers only.
    pub(super) fn new(configured: Vec<IpAddr>) -> Self {
        ReplySockets {
            kept: Mutex::default(),
            configured,
        }
    }

    pub(super) fn get(&self, from: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
        let open = || -> std::io::Result<Arc<UdpSocket>> {
            Ok(Arc::new(UdpSocket::from_std(transparent_socket(
                from, false,
            )?)?))
        };
        if !self.configured.contains(&from.ip()) {
            return open();
        }
        let mut map = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&from) {
            return Ok(s.clone());
        }
        let s = open()?;
        map.insert(from, s.clone());
        Ok(s)
    }
}

//! The destination a redirected connection was really for (`SO_ORIGINAL_DST`, and
//! `IP6T_SO_ORIGINAL_DST` for IPv6), read from conntrack by the kernel.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// The original destination of an accepted connection. A connection that was not redirected
/// (no NAT entry) has its own local address as original destination.
///
/// `peer` is the peer address as `accept` gave it, unmapped: its family is the socket's (an
/// IPv6 socket reports IPv4 peers as `::ffff:a.b.c.d`), which picks the option to ask without
/// a `getsockname` per connection.
pub(crate) fn original_dst(stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
    let result = match peer {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).map(|sa| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst).map(|sa| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            ))
        }),
    };
    match result {
        Ok(addr) => Ok(addr.map_v4_mapped()),
        // No conntrack entry: the connection reached the listener directly.
        Err(nix::errno::Errno::ENOENT) => stream.local_addr(),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`: dual-stack listeners report IPv4 peers that way.
pub(crate) trait MapV4Mapped {
    /// The address with an IPv4-mapped IPv6 address turned into IPv4.
    fn map_v4_mapped(self) -> Self;
}

impl MapV4Mapped for SocketAddr {
    fn map_v4_mapped(self) -> Self {
        match self {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => self,
            },
            v4 => v4,
        }
    }
}

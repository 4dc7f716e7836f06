//! Ends a local TCP socket at once, as `ss -K` does (`SOCK_DESTROY` over sock_diag): the
//! kernel sends the peer a reset and the socket's owner sees `ECONNABORTED`. Revoking a
//! connection the kernel carries takes this, since no proxy holds it. Needs NET_ADMIN in the
//! namespace and a kernel built with `CONFIG_INET_DIAG_DESTROY`.
//!
//! The socket is first looked up by its two ends, and destroyed by the cookie that lookup
//! gives, only when it is a connection: the kernel's lookup by addresses falls back to the
//! *listening* socket when the connection is gone, and destroying that would close the app's
//! server.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;
const IPPROTO_TCP: u8 = 6;
/// `inet_diag_req_v2`: family, protocol, extensions, pad, states, then the socket id.
const REQUEST_LEN: usize = 8 + 48;

fn address_words(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A request of `kind` for the TCP socket whose local end is `local` and remote end `remote`
/// (and whose cookie is `cookie`, when known).
fn request(kind: u16, local: SocketAddr, remote: SocketAddr, cookie: [u8; 8]) -> Vec<u8> {
    let len = 16 + REQUEST_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    let family = match local.ip() {
        IpAddr::V4(_) => libc_af(AddressFamily::Inet),
        IpAddr::V6(_) => libc_af(AddressFamily::Inet6),
    };
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    // Every state.
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&address_words(local.ip()));
    m.extend_from_slice(&address_words(remote.ip()));
    // Any interface.
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&cookie);
    m
}

/// No cookie (`INET_DIAG_NOCOOKIE`): any socket the addresses find.
const NO_COOKIE: [u8; 8] = [0xff; 8];
/// TCP states a connection can be destroyed in (not LISTEN, TIME_WAIT or CLOSE).
fn is_connection(state: u8) -> bool {
    matches!(state, 1..=5 | 8 | 9 | 11)
}

/// What sock_diag answered: a socket (`inet_diag_msg`: its state, and its cookie at offset 44),
/// or a status.
fn answer(buf: &[u8]) -> io::Result<Option<(u8, [u8; 8])>> {
    let kind = buf
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| io::Error::other("sock_diag: short answer"))?;
    let body = buf.get(16..).unwrap_or(&[]);
    if kind == NLMSG_ERROR {
        let errno = body
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(-5);
        return match errno {
            0 => Ok(None),
            e if e == -(nix::errno::Errno::ENOENT as i32) => Ok(None),
            e => Err(io::Error::from_raw_os_error(-e)),
        };
    }
    let state = *body
        .get(1)
        .ok_or_else(|| io::Error::other("sock_diag: short answer"))?;
    let cookie: [u8; 8] = body
        .get(44..52)
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| io::Error::other("sock_diag: short answer"))?;
    Ok(Some((state, cookie)))
}

fn libc_af(f: AddressFamily) -> u8 {
    f as i32 as u8
}

fn ask(message: &[u8]) -> io::Result<Vec<u8>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    sendto(
        fd.as_raw_fd(),
        message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    buf.truncate(n);
    Ok(buf)
}

/// Destroys the connection; `Ok(false)` when there is none (closed already, in TIME_WAIT, or
/// not local).
pub(crate) fn destroy(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let found = answer(&ask(&request(
        SOCK_DIAG_BY_FAMILY,
        local,
        remote,
        NO_COOKIE,
    ))?)?;
    let Some((_, cookie)) = found.filter(|(state, _)| is_connection(*state)) else {
        return Ok(false);
    };
    answer(&ask(&request(SOCK_DESTROY, local, remote, cookie))?)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroy_request_names_the_socket_by_both_ends_in_network_order() {
        let m = request(
            SOCK_DESTROY,
            "10.0.0.1:8080".parse().expect("addr"),
            "10.0.0.2:40000".parse().expect("addr"),
            [1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert_eq!(m.len(), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(&m[16..18], &[2, IPPROTO_TCP]);
        assert_eq!(&m[24..26], &8080u16.to_be_bytes());
        assert_eq!(&m[26..28], &40000u16.to_be_bytes());
        assert_eq!(&m[28..32], &[10, 0, 0, 1]);
        assert_eq!(&m[44..48], &[10, 0, 0, 2]);
        assert_eq!(&m[64..72], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn only_a_connection_is_destroyed_never_a_listener_or_a_closing_socket() {
        // LISTEN, TIME_WAIT, CLOSE: what a lookup by addresses finds when the connection is gone.
        for state in [10, 6, 7] {
            assert!(!is_connection(state), "{state}");
        }
        for state in [1, 2, 3, 4, 5, 8, 9, 11] {
            assert!(is_connection(state), "{state}");
        }
        // An inet_diag_msg: family, state, timer, retrans, then the id whose cookie ends it.
        let mut msg = vec![0u8; 16];
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let mut body = vec![2u8, 10, 0, 0];
        body.extend([0u8; 40]);
        body.extend([9u8; 8]);
        body.extend([0u8; 20]);
        msg.extend(body);
        assert_eq!(answer(&msg).expect("answer"), Some((10, [9u8; 8])));
    }
}

//! The pod's TCP sockets over sock_diag, for the connections the kernel carries (no proxy
//! holds them). Both need NET_ADMIN in the namespace.
//!
//! - [`destroy`] ends a local TCP socket at once, as `ss -K` does (`SOCK_DESTROY`; a kernel
//!   built with `CONFIG_INET_DIAG_DESTROY`): the kernel sends the peer a reset and the
//!   socket's owner sees `ECONNABORTED`. Revocation takes this. The socket is first looked up
//!   by its two ends, and destroyed by the cookie that lookup gives, only when it is a
//!   connection: the kernel's lookup by addresses falls back to the *listening* socket when
//!   the connection is gone, and destroying that would close the app's server.
//! - [`Ends`] hears of every TCP socket of the namespace as the kernel frees it (the
//!   `SKNLGRP_INET*_TCP_DESTROY` groups), with its byte counts (`tcp_info`): a connection's
//!   end as its owner sees it, at once, without conntrack's accounting (a sysctl a pod often
//!   cannot set) or a message per TCP state change. The kernel builds these messages only
//!   while someone listens.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netlink::{NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
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
/// (and whose cookie is `cookie`, when known), bound to interface `dif` or to none, and its
/// `tcp_info` (its bytes) if `info`.
fn request(
    kind: u16,
    (local, remote): (SocketAddr, SocketAddr),
    cookie: [u8; 8],
    dif: u32,
    info: bool,
) -> Vec<u8> {
    let len = 16 + REQUEST_LEN;
    let mut m = Vec::with_capacity(len);
    crate::netlink::put_header(&mut m, len, kind, NLM_F_REQUEST | NLM_F_ACK, 1);
    let family = match local.ip() {
        IpAddr::V4(_) => libc_af(AddressFamily::Inet),
        IpAddr::V6(_) => libc_af(AddressFamily::Inet6),
    };
    let extensions = if info { 1 << (INET_DIAG_INFO - 1) } else { 0 };
    m.extend_from_slice(&[family, IPPROTO_TCP, extensions, 0]);
    // Every state.
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&address_words(local.ip()));
    m.extend_from_slice(&address_words(remote.ip()));
    m.extend_from_slice(&dif.to_ne_bytes());
    m.extend_from_slice(&cookie);
    m
}

/// `idiag_timer` of a time-wait socket (`inet_twsk_diag_fill`), whose state says TIME_WAIT or
/// FIN_WAIT2: a FIN_WAIT2 one is no connection either (its owner closed it, its full socket
/// is freed).
const TIME_WAIT_TIMER: u8 = 3;

/// No cookie (`INET_DIAG_NOCOOKIE`): any socket the addresses find.
const NO_COOKIE: [u8; 8] = [0xff; 8];
/// TCP states a connection can be destroyed in (not LISTEN, TIME_WAIT or CLOSE).
fn is_connection(state: u8) -> bool {
    matches!(state, 1..=5 | 8 | 9 | 11)
}

/// A socket a lookup found.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    /// Its TCP state (of a time-wait socket, the state it stands for: TIME_WAIT or
    /// FIN_WAIT2).
    state: u8,
    /// A time-wait socket: what stands for a connection its owner closed (`idiag_timer` 3).
    time_wait: bool,
    /// What names it to the kernel.
    cookie: [u8; 8],
    /// What it sent and received so far, when the kernel said.
    bytes: Option<(u64, u64)>,
}

impl Found {
    /// A connection, to destroy or to count as open: not a listener, not a time-wait socket.
    fn is_connection(&self) -> bool {
        !self.time_wait && is_connection(self.state)
    }
}

/// What sock_diag answered: a socket (`inet_diag_msg`: its state, its timer, its cookie at
/// offset 44, then attributes), or a status.
fn answer(buf: &[u8]) -> io::Result<Option<Found>> {
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
    let (state, timer) = body
        .get(1..3)
        .map(|b| (b[0], b[1]))
        .ok_or_else(|| io::Error::other("sock_diag: short answer"))?;
    let cookie: [u8; 8] = body
        .get(44..52)
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| io::Error::other("sock_diag: short answer"))?;
    let bytes = socket_end(body).and_then(|found| found.bytes);
    Ok(Some(Found {
        state,
        time_wait: timer == TIME_WAIT_TIMER,
        cookie,
        bytes,
    }))
}

fn libc_af(f: AddressFamily) -> u8 {
    f as i32 as u8
}

/// The receive buffer for freed sockets' messages (the kernel doubles it).
const ENDS_BUFFER: usize = 8 << 20;

/// The multicast groups of freed TCP sockets, IPv4 and IPv6 (`SKNLGRP_INET_TCP_DESTROY` = 1,
/// `SKNLGRP_INET6_TCP_DESTROY` = 3; group n is bit n - 1).
const TCP_DESTROY_GROUPS: u32 = 0b101;
/// `inet_diag_msg`'s length, and the attribute after it that holds `struct tcp_info`.
const DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
/// `tcpi_bytes_received`, `tcpi_bytes_sent` and `tcpi_bytes_retrans` in `struct tcp_info`
/// (Linux 4.19 and later).
const BYTES_RECEIVED_AT: usize = 128;
const BYTES_SENT_AT: usize = 200;
const BYTES_RETRANS_AT: usize = 208;
/// `tcpi_delivered` (Linux 4.18 and later): segments the peer acknowledged, the SYN or the
/// SYN-ACK counted, so none only for a socket whose handshake never completed.
const DELIVERED_AT: usize = 192;

/// A TCP socket of the pod that the kernel freed: its two ends and what it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SocketEnd {
    /// The pod's end.
    pub local: SocketAddr,
    /// The other end.
    pub remote: SocketAddr,
    /// Payload bytes the socket sent (retransmissions counted once), and received (where TCP
    /// counts a FIN received as one more: it numbers it as a byte).
    pub bytes: Option<(u64, u64)>,
    /// Whether its handshake ever completed (the peer acknowledged its SYN or SYN-ACK), when
    /// the kernel said (`tcpi_delivered`; before Linux 4.18, only a byte received says yes).
    pub established: Option<bool>,
}

fn address(family: u8, words: &[u8]) -> Option<IpAddr> {
    if family == libc_af(AddressFamily::Inet) {
        let v4: [u8; 4] = words.get(..4)?.try_into().ok()?;
        Some(IpAddr::from(v4))
    } else if family == libc_af(AddressFamily::Inet6) {
        let v6: [u8; 16] = words.get(..16)?.try_into().ok()?;
        Some(std::net::Ipv6Addr::from(v6).to_canonical())
    } else {
        None
    }
}

/// Reads one `SOCK_DIAG_BY_FAMILY` message's body: `inet_diag_msg`, then attributes.
fn socket_end(body: &[u8]) -> Option<SocketEnd> {
    let msg = body.get(..DIAG_MSG_LEN)?;
    let family = msg[0];
    let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let local = SocketAddr::new(address(family, &msg[8..24])?, port(4));
    let remote = SocketAddr::new(address(family, &msg[24..40])?, port(6));
    let info = crate::netlink::find(&body[DIAG_MSG_LEN..], INET_DIAG_INFO).unwrap_or(&[]);
    let counter = |at: usize| {
        info.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_ne_bytes)
    };
    let sent = counter(BYTES_SENT_AT)
        .zip(counter(BYTES_RETRANS_AT))
        .map(|(all, again)| all.saturating_sub(again));
    let received = counter(BYTES_RECEIVED_AT);
    // Without `tcpi_delivered` (before 4.18), a byte received says so too.
    let established = info
        .get(DELIVERED_AT..DELIVERED_AT + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|d| u32::from_ne_bytes(d) > 0)
        .or_else(|| received.is_some_and(|r| r > 0).then_some(true));
    Some(SocketEnd {
        local,
        remote,
        bytes: sent.zip(received),
        established,
    })
}

/// A sock_diag socket that hears of every TCP socket freed in the calling thread's namespace.
pub(crate) struct Ends {
    fd: std::os::fd::OwnedFd,
    buf: crate::netlink::EventBuffer,
}

impl Ends {
    /// Subscribes.
    pub(crate) fn subscribe() -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        // A burst of closes must not be lost to a small buffer (ENOBUFS says when it was): the
        // app frees a TCP socket in a few microseconds, and every one is heard of. Forced past
        // `rmem_max` (NET_ADMIN), which would cap it at a few hundred messages; the memory is
        // taken only while messages wait.
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(&fd, sockopt::RcvBufForce, &ENDS_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &ENDS_BUFFER);
        }
        // Only sockets that may be a judged connection's end take room in it (see
        // `ends_filter`); without the filter every freed socket still comes, and is read.
        let filtered = crate::ends_filter::own_addresses()
            .and_then(|own| crate::ends_filter::attach(&fd, &own));
        if let Err(e) = filtered {
            tracing::warn!(error = %e, "cannot filter freed sockets' messages: every one is read");
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, TCP_DESTROY_GROUPS))?;
        Ok(Ends {
            fd,
            buf: crate::netlink::EventBuffer::new(),
        })
    }

    /// Reads the next freed sockets and gives each to `each`: waiting for them, or, without
    /// `wait`, only those already there (`Ok(false)`: none were).
    pub(crate) fn next(&mut self, wait: bool, mut each: impl FnMut(SocketEnd)) -> io::Result<bool> {
        self.buf.read(&self.fd, wait, |kind, body| {
            if kind == SOCK_DIAG_BY_FAMILY
                && let Some(end) = socket_end(body)
            {
                each(end);
            }
        })
    }
}

/// Sends one request on a socket of its own and reads its answer (a socket, or a status). (A
/// socket kept for several would hold each lookup's acknowledgement, which follows the answer,
/// for the next request to read.)
fn ask(message: &[u8]) -> io::Result<Option<Found>> {
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
    let mut buf = [0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    answer(&buf[..n])
}

/// A connection [`destroy`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Destroyed {
    /// What its socket had sent and received (as [`SocketEnd::bytes`]), when the kernel said.
    pub bytes: Option<(u64, u64)>,
}

/// Destroys the connection; `Ok(None)` when there is none (closed already, in TIME_WAIT, or
/// not local).
pub(crate) fn destroy(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<Destroyed>> {
    // A socket bound to an interface (SO_BINDTODEVICE takes no capability) is found only on
    // that interface ([`interfaces`]). Every connection found is destroyed, not only the
    // first: an app may hold a decoy on the same addresses (unbound, its SYN dropped) beside
    // the socket it hides.
    let mut destroyed: Option<Destroyed> = None;
    // The first failure is returned once every interface had its turn.
    let mut failed = None;
    for &dif in interfaces().iter() {
        // A destroyed socket is out of the tables: the next lookup finds another, or none (a
        // few at most: one unbound, one bound to the interface).
        for _ in 0..4 {
            let found = match find((local, remote), dif, true) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => {
                    failed.get_or_insert(e);
                    break;
                }
            };
            let asked = ask(&request(
                SOCK_DESTROY,
                (local, remote),
                found.cookie,
                dif,
                false,
            ));
            if let Err(e) = asked {
                failed.get_or_insert(e);
                break;
            }
            // The bytes are those of the socket that carried the most: the connection's, not
            // a decoy's.
            let carried = |b: Option<(u64, u64)>| b.map_or(0, |(s, r)| s + r);
            if destroyed.is_none_or(|d| carried(found.bytes) > carried(d.bytes)) {
                destroyed = Some(Destroyed { bytes: found.bytes });
            }
        }
    }
    match (destroyed, failed) {
        (None, Some(e)) => Err(e),
        (destroyed, failed) => {
            if let Some(e) = failed {
                tracing::warn!(error = %e, %local, %remote, "destroyed a revoked connection's socket, but a lookup on another interface failed");
            }
            Ok(destroyed)
        }
    }
}

/// Where to look for a socket on given addresses: each of the namespace's interfaces (the
/// kernel's lookup by addresses finds a socket bound to an interface only when asked on that
/// interface, and an unbound one on any), or no interface when they cannot be listed. Listed
/// again at most once a second (an app cannot add one without NET_ADMIN; the list is asked
/// for on every revoked connection and every freed socket that never connected, which a
/// connection storm makes many).
fn interfaces() -> Arc<[u32]> {
    static LISTED: Mutex<Option<(Instant, Arc<[u32]>)>> = Mutex::new(None);
    let mut listed = LISTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, all)) = listed.as_ref()
        && at.elapsed() < Duration::from_secs(1)
    {
        return all.clone();
    }
    match nix::net::if_::if_nameindex() {
        Ok(all) if all.iter().next().is_some() => {
            let all: Arc<[u32]> = all.iter().map(|i| i.index()).collect();
            *listed = Some((Instant::now(), all.clone()));
            all
        }
        Ok(_) => Arc::from([0]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the interfaces: a socket bound to one is not found");
            Arc::from([0])
        }
    }
}

/// Whether a connection socket (not a listener, not TIME_WAIT) on these addresses is open, on
/// any interface (unbound ones are found on each).
pub(crate) fn connection_open(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    for &dif in interfaces().iter() {
        if find((local, remote), dif, false)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How often a lookup that failed is tried again without `tcp_info`.
const TRIES: usize = 3;

/// The connection (not a listener, not TIME_WAIT) on these addresses bound to `dif` or to no
/// interface, with its bytes when the kernel gives them (if `bytes`).
fn find(ends: (SocketAddr, SocketAddr), dif: u32, bytes: bool) -> io::Result<Option<Found>> {
    let lookup = |info| ask(&request(SOCK_DIAG_BY_FAMILY, ends, NO_COOKIE, dif, info));
    // The bytes are a courtesy: the answer with `tcp_info` carries other attributes of the
    // socket too, which its owner can change while the kernel builds it (its TCP MD5 keys,
    // until "net/diag: Do not race on dumping MD5 keys with adding new MD5 keys"), failing
    // the lookup; it is tried again without, a few times.
    let mut found = lookup(bytes);
    for _ in 0..TRIES {
        match &found {
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag lookup failed; trying again without tcp_info");
                found = lookup(false);
            }
            Ok(_) => break,
        }
    }
    Ok(found?.filter(Found::is_connection))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroy_request_names_the_socket_by_both_ends_in_network_order() {
        let m = request(
            SOCK_DESTROY,
            (
                "10.0.0.1:8080".parse().expect("addr"),
                "10.0.0.2:40000".parse().expect("addr"),
            ),
            [1, 2, 3, 4, 5, 6, 7, 8],
            7,
            false,
        );
        assert_eq!(m.len(), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(&m[16..18], &[2, IPPROTO_TCP]);
        assert_eq!(&m[24..26], &8080u16.to_be_bytes());
        assert_eq!(&m[26..28], &40000u16.to_be_bytes());
        assert_eq!(&m[28..32], &[10, 0, 0, 1]);
        assert_eq!(&m[44..48], &[10, 0, 0, 2]);
        // On the interface asked (a socket bound to one is found only there).
        assert_eq!(&m[60..64], &7u32.to_ne_bytes());
        assert_eq!(&m[64..72], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// A freed socket's message as the kernel broadcasts it: `inet_diag_msg`, the protocol,
    /// then `tcp_info` (as long as this kernel's).
    fn freed(local: SocketAddr, remote: SocketAddr, sent: u64, received: u64) -> Vec<u8> {
        let mut body = vec![0u8; DIAG_MSG_LEN];
        body[0] = match local {
            SocketAddr::V4(_) => 2,
            SocketAddr::V6(_) => 10,
        };
        body[1] = 7;
        body[4..6].copy_from_slice(&local.port().to_be_bytes());
        body[6..8].copy_from_slice(&remote.port().to_be_bytes());
        body[8..24].copy_from_slice(&address_words(local.ip()));
        body[24..40].copy_from_slice(&address_words(remote.ip()));
        crate::netlink::put_attr(&mut body, 5, &[IPPROTO_TCP]);
        let mut info = vec![0u8; 232];
        // Sent twice over, of which the retransmissions are 1,000 bytes.
        info[BYTES_SENT_AT..BYTES_SENT_AT + 8].copy_from_slice(&(sent + 1000).to_ne_bytes());
        info[BYTES_RETRANS_AT..BYTES_RETRANS_AT + 8].copy_from_slice(&1000u64.to_ne_bytes());
        info[BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8].copy_from_slice(&received.to_ne_bytes());
        // Its SYN and a segment after it acknowledged.
        info[DELIVERED_AT..DELIVERED_AT + 4].copy_from_slice(&2u32.to_ne_bytes());
        crate::netlink::put_attr(&mut body, INET_DIAG_INFO, &info);
        body
    }

    #[test]
    fn a_freed_socket_gives_its_two_ends_and_the_bytes_it_carried() {
        let local: SocketAddr = "10.0.0.1:40000".parse().expect("addr");
        let remote: SocketAddr = "10.0.0.2:8080".parse().expect("addr");
        assert_eq!(
            socket_end(&freed(local, remote, 5, 70_000)),
            Some(SocketEnd {
                local,
                remote,
                bytes: Some((5, 70_000)),
                established: Some(true),
            })
        );
        // One whose SYN nobody acknowledged (a decoy's, dropped): its handshake never completed.
        let mut decoy = freed(local, remote, 0, 0);
        let at = DIAG_MSG_LEN + 8 + 4 + DELIVERED_AT;
        decoy[at..at + 4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(socket_end(&decoy).and_then(|e| e.established), Some(false));
        let local6: SocketAddr = "[fd00::1]:40000".parse().expect("addr");
        let remote6: SocketAddr = "[fd00::2]:443".parse().expect("addr");
        let end = socket_end(&freed(local6, remote6, 0, 1)).expect("v6");
        assert_eq!((end.local, end.remote), (local6, remote6));
        // Kernels whose tcp_info stops before the byte counters (4.18), and before
        // `tcpi_delivered` too: the ends, without what is missing.
        let short = |info_len: usize| {
            let mut m = freed(local, remote, 1, 1);
            m.truncate(DIAG_MSG_LEN + 8 + 4 + info_len);
            let len = (4 + info_len) as u16;
            m[DIAG_MSG_LEN + 8..DIAG_MSG_LEN + 10].copy_from_slice(&len.to_ne_bytes());
            socket_end(&m).map(|e| (e.bytes, e.established))
        };
        assert_eq!(short(200), Some((None, Some(true))));
        // Before `tcpi_delivered`: the byte it received says it was a connection.
        assert_eq!(short(136), Some((None, Some(true))));
        assert_eq!(short(120), Some((None, None)));
        assert_eq!(socket_end(&[2u8; 40]), None, "truncated");
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
        let found = answer(&msg).expect("answer").expect("a socket");
        assert_eq!((found.state, found.cookie), (10, [9u8; 8]), "no tcp_info");
        assert_eq!(found.bytes, None);
        // A lookup's answer with `tcp_info` (it asks for it): what the socket carried so far.
        let mut msg = vec![0u8; 16];
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let mut body = freed(
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:8080".parse().expect("addr"),
            12,
            34,
        );
        body[1] = 1;
        body[44..52].copy_from_slice(&[7u8; 8]);
        msg.extend(body);
        let found = answer(&msg).expect("answer").expect("a socket");
        assert_eq!(
            found,
            Found {
                state: 1,
                time_wait: false,
                cookie: [7u8; 8],
                bytes: Some((12, 34)),
            }
        );
        assert!(found.is_connection());
        // The time-wait socket of a connection its owner closed while the peer had not: its
        // state says FIN_WAIT2, its timer says what it is. Not a connection.
        let mut msg = msg.clone();
        msg[16 + 1] = 5;
        msg[16 + 2] = TIME_WAIT_TIMER;
        let found = answer(&msg).expect("answer").expect("a socket");
        assert!(found.time_wait && !found.is_connection(), "{found:?}");
        let lookup = request(
            SOCK_DIAG_BY_FAMILY,
            (
                "10.0.0.1:40000".parse().expect("addr"),
                "10.0.0.2:8080".parse().expect("addr"),
            ),
            NO_COOKIE,
            0,
            true,
        );
        assert_eq!(
            lookup[18],
            1 << (INET_DIAG_INFO - 1),
            "tcp_info not asked for"
        );
    }
}

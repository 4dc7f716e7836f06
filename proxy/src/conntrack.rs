//! The pod's connection-tracking table, read and pruned over ctnetlink.
//!
//! The packet filter judges only the first packet of a UDP, SCTP or ping flow; the rest match
//! the flow's conntrack entry. When a policy change no longer allows a flow, removing its entry
//! makes its next packet a new flow again, which the init rules queue and the filter judges
//! (and drops). Only what that needs is here: a dump of the table and the removal of one entry,
//! identified by the original tuple and the entry's id exactly as the kernel gave them.
//!
//! Message layout (`linux/netfilter/nfnetlink_conntrack.h`): a netlink header, the 4-byte
//! `nfgenmsg` (address family, version, resource id), then attributes; the tuples are nested.

use std::io;

use crate::netlink::{
    NFGENMSG_LEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, align,
    attributes, find, frames, put_attr, status,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = nix::libc::AF_INET as u8;
const AF_INET6: u8 = nix::libc::AF_INET6 as u8;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// TCP conntrack states in which a connection has ended: both sides closed, or reset.
pub(crate) const TCP_TIME_WAIT: u8 = 7;
pub(crate) const TCP_CLOSE: u8 = 8;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;

/// One conntrack entry: its original direction, and what it takes to remove exactly it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The IP protocol number.
    pub protocol: u8,
    /// The original direction's source (who sent the first packet).
    pub src: IpAddr,
    /// And its destination.
    pub dst: IpAddr,
    /// Ports (0 for protocols without them).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The ICMP or ICMPv6 type of the packet that started it.
    pub icmp_type: Option<u8>,
    /// The connection mark.
    pub mark: u32,
    /// Bytes in the original and the reply direction, when the namespace counts them
    /// (`net.netfilter.nf_conntrack_acct`).
    pub bytes: Option<(u64, u64)>,
    /// A TCP entry's state (`TCP_CONNTRACK_*`), when the message carries it.
    pub tcp_state: Option<u8>,
    /// The attributes the removal repeats, as the dump gave them.
    pub(crate) key: Vec<u8>,
}

fn ip(payload: &[u8]) -> Option<IpAddr> {
    match payload.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).ok()?,
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).ok()?,
        ))),
        _ => None,
    }
}

fn port(payload: Option<&[u8]>) -> u16 {
    payload
        .and_then(|p| <[u8; 2]>::try_from(p).ok())
        .map_or(0, u16::from_be_bytes)
}

/// Reads one conntrack message's body (after the netlink header).
fn parse_entry(body: &[u8]) -> Option<Entry> {
    let family = *body.first()?;
    let attrs = body.get(NFGENMSG_LEN..)?;
    let mut key = Vec::new();
    let mut orig = None;
    for (kind, payload, whole) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(payload),
            CTA_ID | CTA_ZONE => {}
            _ => continue,
        }
        key.extend_from_slice(whole);
        key.resize(align(key.len()), 0);
    }
    let orig = orig?;
    let addrs = find(orig, CTA_TUPLE_IP)?;
    let proto = find(orig, CTA_TUPLE_PROTO)?;
    let (src, dst) = match family {
        AF_INET => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        AF_INET6 => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
        _ => return None,
    };
    let protocol = *find(proto, CTA_PROTO_NUM)?.first()?;
    let bytes_of = |kind| {
        find(attrs, kind)
            .and_then(|c| find(c, CTA_COUNTERS_BYTES))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    Some(Entry {
        family,
        protocol,
        src: ip(find(addrs, src)?)?,
        dst: ip(find(addrs, dst)?)?,
        sport: port(find(proto, CTA_PROTO_SRC_PORT)),
        dport: port(find(proto, CTA_PROTO_DST_PORT)),
        icmp_type: find(proto, CTA_PROTO_ICMP_TYPE)
            .or_else(|| find(proto, CTA_PROTO_ICMPV6_TYPE))
            .and_then(|p| p.first().copied()),
        mark: find(attrs, CTA_MARK)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
            .map_or(0, u32::from_be_bytes),
        bytes: bytes_of(CTA_COUNTERS_ORIG).zip(bytes_of(CTA_COUNTERS_REPLY)),
        tcp_state: find(attrs, CTA_PROTOINFO)
            .and_then(|p| find(p, CTA_PROTOINFO_TCP))
            .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
            .and_then(|s| s.first().copied()),
        key,
    })
}

fn header(len: usize, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(len);
    crate::netlink::put_header(&mut m, len, kind, flags, seq);
    m
}

fn dump_request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN;
    let mut m = header(
        len,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    // AF_UNSPEC: every family.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

/// A nested attribute's flag (ctnetlink reads tuples as nested either way).
const NLA_F_NESTED: u16 = 0x8000;

/// The original tuple of the TCP connection from `src` to `dst`, as ctnetlink takes it, and its
/// family; `None` for two families.
fn tcp_tuple(src: SocketAddr, dst: SocketAddr) -> Option<(u8, Vec<u8>)> {
    let mut ip = Vec::new();
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
            AF_INET
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            put_attr(&mut ip, CTA_IP_V6_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V6_DST, &d.octets());
            AF_INET6
        }
        _ => return None,
    };
    let mut proto = Vec::new();
    put_attr(&mut proto, CTA_PROTO_NUM, &[6]);
    put_attr(&mut proto, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
    put_attr(&mut proto, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    let mut tuple = Vec::new();
    put_attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut orig = Vec::new();
    put_attr(&mut orig, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    Some((family, orig))
}

/// Asks for the entry whose original tuple is `tuple` (the answer: the entry, or ENOENT).
fn get_request(family: u8, tuple: &[u8], seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + tuple.len();
    let mut m = header(
        len,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST,
        seq,
    );
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(tuple);
    m
}

fn delete_request(entry: &Entry, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + entry.key.len();
    let mut m = header(
        len,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    );
    m.extend_from_slice(&[entry.family, 0, 0, 0]);
    m.extend_from_slice(&entry.key);
    m
}

/// What one netlink message said.
enum Reply<'a> {
    Entry(&'a [u8]),
    Done,
    /// An acknowledgement (0) or an error (a negative errno).
    Status(i32),
    Other,
}

/// Splits a datagram into netlink messages.
fn messages(buf: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    frames(buf).map(|(kind, body)| match kind {
        NLMSG_DONE => Reply::Done,
        NLMSG_ERROR => Reply::Status(status(body)),
        k if k >> 8 == NFNL_SUBSYS_CTNETLINK => Reply::Entry(body),
        _ => Reply::Other,
    })
}

/// A ctnetlink socket in the calling thread's network namespace (needs NET_ADMIN there).
pub(crate) struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    /// Where a lookup's or removal's answer is read (one answer each, well under 8 KiB).
    answer: Vec<u8>,
}

/// A netfilter netlink socket in the calling thread's namespace.
fn netfilter_socket() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

impl Conntrack {
    /// Opens the socket.
    pub(crate) fn open() -> io::Result<Self> {
        Ok(Conntrack {
            fd: netfilter_socket()?,
            seq: 0,
            answer: vec![0u8; 8 * 1024],
        })
    }

    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        sendto(
            self.fd.as_raw_fd(),
            message,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// Every entry of the table (all families and protocols).
    pub(crate) fn dump(&mut self) -> io::Result<Vec<Entry>> {
        self.seq = self.seq.wrapping_add(1);
        self.send(&dump_request(self.seq))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            for reply in messages(&buf[..n]) {
                match reply {
                    Reply::Entry(body) => out.extend(parse_entry(body)),
                    Reply::Done => return Ok(out),
                    Reply::Status(0) | Reply::Other => {}
                    Reply::Status(e) => return Err(io::Error::from_raw_os_error(-e)),
                }
            }
        }
    }

    /// The mark of the TCP connection from `src` to `dst`, or `None` when conntrack has no
    /// entry whose original direction that is (forgot it, never confirmed it, or tracks the
    /// reverse connection).
    pub(crate) fn tcp_mark(&mut self, src: SocketAddr, dst: SocketAddr) -> io::Result<Option<u32>> {
        let Some((family, tuple)) = tcp_tuple(src, dst) else {
            return Ok(None);
        };
        self.seq = self.seq.wrapping_add(1);
        self.send(&get_request(family, &tuple, self.seq))?;
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.answer, MsgFlags::empty())?;
            for reply in messages(&self.answer[..n]) {
                match reply {
                    // The lookup finds a tuple in either direction: only an entry whose
                    // original direction is this connection's is it.
                    Reply::Entry(body) => {
                        return Ok(parse_entry(body)
                            .filter(|e| {
                                e.protocol == 6
                                    && SocketAddr::new(e.src, e.sport) == src
                                    && SocketAddr::new(e.dst, e.dport) == dst
                            })
                            .map(|e| e.mark));
                    }
                    Reply::Status(e) if e == -(nix::errno::Errno::ENOENT as i32) => {
                        return Ok(None);
                    }
                    Reply::Status(0) | Reply::Done | Reply::Other => {}
                    Reply::Status(e) => return Err(io::Error::from_raw_os_error(-e)),
                }
            }
        }
    }

    /// Removes one entry; `Ok(false)` when it was already gone.
    pub(crate) fn delete(&mut self, entry: &Entry) -> io::Result<bool> {
        self.seq = self.seq.wrapping_add(1);
        self.send(&delete_request(entry, self.seq))?;
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.answer, MsgFlags::empty())?;
            for reply in messages(&self.answer[..n]) {
                match reply {
                    Reply::Status(0) => return Ok(true),
                    Reply::Status(e) if e == -(nix::errno::Errno::ENOENT as i32) => {
                        return Ok(false);
                    }
                    Reply::Status(e) => return Err(io::Error::from_raw_os_error(-e)),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        crate::netlink::put_attr(&mut a, kind, payload);
        a
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    /// A UDP entry as the kernel sends it: both tuples, status, id.
    fn udp_entry_message() -> Vec<u8> {
        let tuple = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
            vec![
                nested(
                    CTA_TUPLE_IP,
                    &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[17]),
                        attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                        attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
                    ],
                ),
            ]
        };
        let body = [
            vec![2, 0, 0, 0],
            nested(
                CTA_TUPLE_ORIG,
                &tuple([10, 79, 0, 1], [10, 79, 0, 3], 40000, 5300),
            ),
            nested(2, &tuple([10, 79, 0, 3], [10, 79, 0, 1], 5300, 40000)),
            attr(3, &8u32.to_be_bytes()),
            attr(CTA_ID, &77u32.to_be_bytes()),
        ]
        .concat();
        let mut m = header(
            NLMSG_HDRLEN + body.len(),
            // Message 0 of the subsystem: IPCTNL_MSG_CT_NEW, as in a dump's replies.
            NFNL_SUBSYS_CTNETLINK << 8,
            2,
            1,
        );
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_dumped_udp_entry_gives_its_original_tuple() {
        let msg = udp_entry_message();
        let entries: Vec<Entry> = messages(&msg)
            .filter_map(|r| match r {
                Reply::Entry(b) => parse_entry(b),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(
            (
                e.family,
                e.protocol,
                e.src,
                e.dst,
                e.sport,
                e.dport,
                e.icmp_type
            ),
            (
                2,
                17,
                "10.79.0.1".parse().expect("ip"),
                "10.79.0.3".parse().expect("ip"),
                40000,
                5300,
                None
            )
        );
    }

    #[test]
    fn a_lookup_names_the_tcp_connection_by_its_original_tuple_in_its_family() {
        for (src, dst, family) in [
            ("10.79.0.1:40000", "10.79.0.3:8080", AF_INET),
            ("[fd79::1]:40000", "[fd79::3]:8080", AF_INET6),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) =
                (src.parse().expect("src"), dst.parse().expect("dst"));
            let (f, tuple) = tcp_tuple(src, dst).expect("one family");
            assert_eq!(f, family);
            let req = get_request(f, &tuple, 5);
            assert_eq!(
                u16::from_ne_bytes([req[4], req[5]]),
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
            );
            assert_eq!(u16::from_ne_bytes([req[6], req[7]]), NLM_F_REQUEST);
            let e = parse_entry(&req[NLMSG_HDRLEN..]).expect("the tuple reads back");
            assert_eq!(
                (e.family, e.protocol, e.src, e.sport, e.dst, e.dport),
                (family, 6, src.ip(), 40000, dst.ip(), 8080)
            );
        }
        let mixed = tcp_tuple(
            "10.79.0.1:1".parse().expect("v4"),
            "[fd79::3]:2".parse().expect("v6"),
        );
        assert!(mixed.is_none());
    }

    #[test]
    fn a_removal_repeats_the_original_tuple_and_the_id_only() {
        let msg = udp_entry_message();
        let Some(Reply::Entry(body)) = messages(&msg).next() else {
            panic!("no entry");
        };
        let entry = parse_entry(body).expect("entry");
        let req = delete_request(&entry, 9);
        assert_eq!(
            u16::from_ne_bytes([req[4], req[5]]),
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        );
        let kinds: Vec<u16> = attributes(&req[NLMSG_HDRLEN + NFGENMSG_LEN..])
            .map(|(k, _, _)| k)
            .collect();
        assert_eq!(kinds, [CTA_TUPLE_ORIG, CTA_ID]);
        assert_eq!(
            req.len(),
            u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize
        );
        assert_eq!(req[NLMSG_HDRLEN], 2, "the entry's family");
    }

    #[test]
    fn errors_and_the_end_of_a_dump_are_told_apart() {
        let mut m = header(NLMSG_HDRLEN + 4, NLMSG_ERROR, 0, 1);
        m.extend_from_slice(&(-2i32).to_ne_bytes());
        m.extend(header(NLMSG_HDRLEN, NLMSG_DONE, 0, 1));
        let replies: Vec<&str> = messages(&m)
            .map(|r| match r {
                Reply::Status(-2) => "enoent",
                Reply::Done => "done",
                _ => "other",
            })
            .collect();
        assert_eq!(replies, ["enoent", "done"]);
    }
}

//! Netlink framing, shared by the sidecar's netfilter (conntrack, NFQUEUE) and sock_diag
//! sockets: a datagram holds messages (a 16-byte header whose first word is the length and
//! whose next half-word is the type, then a body), and a body holds attributes (length, type,
//! payload), each padded to four bytes. Every reader here stops at the first length that does
//! not fit, so a malformed datagram is read no further, never past its end.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{MsgFlags, recv};

/// A message header's length.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// An acknowledgement or an error.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// The end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;
/// A request (every message the sidecar sends).
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
/// Asks for an acknowledgement.
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// netfilter's header after the netlink one: family, version, resource id.
pub(crate) const NFGENMSG_LEN: usize = 4;
/// The flags in an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `n` rounded up to netlink's four-byte alignment.
pub(crate) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The messages of a datagram: each one's type and body.
pub(crate) fn frames(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = buf.get(align(len)..).unwrap_or(&[]);
        Some((kind, body))
    })
}

/// An `NLMSG_ERROR` body's errno: 0 for an acknowledgement, negative for an error (EIO when
/// the body is cut short).
pub(crate) fn status(body: &[u8]) -> i32 {
    body.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(-(nix::errno::Errno::EIO as i32), i32::from_ne_bytes)
}

/// The attributes of a body: (type without flags, payload, whole attribute).
pub(crate) fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let whole = &buf[..len];
        buf = buf.get(align(len)..).unwrap_or(&[]);
        Some((kind, &whole[4..], whole))
    })
}

/// The payload of the first attribute of type `kind`.
pub(crate) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(buf)
        .find(|(k, _, _)| *k == kind)
        .map(|(_, p, _)| p)
}

/// Appends an attribute, padded.
pub(crate) fn put_attr(m: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    m.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize(align(m.len()), 0);
}

/// One datagram from a subscribed socket: waiting for it, or, without `wait`, `None` when
/// none is there.
pub(crate) fn receive(fd: &OwnedFd, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
    let flags = if wait {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    match recv(fd.as_raw_fd(), buf, flags) {
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m.resize(align(m.len()), 0);
        m
    }

    #[test]
    fn a_datagram_splits_into_its_messages_and_stops_at_a_length_that_does_not_fit() {
        let mut d = message(NLMSG_ERROR, &(-2i32).to_ne_bytes());
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 5, &[1, 2, 3]);
        put_attr(&mut attrs, 0x8000 | 6, &[9]);
        d.extend(message(0x0300, &attrs));
        let read: Vec<(u16, Vec<u8>)> = frames(&d).map(|(k, b)| (k, b.to_vec())).collect();
        assert_eq!(read.len(), 2);
        assert_eq!(status(&read[0].1), -2);
        assert_eq!(status(&[]), -(nix::errno::Errno::EIO as i32));
        assert_eq!(find(&read[1].1, 5), Some(&[1u8, 2, 3][..]));
        assert_eq!(
            find(&read[1].1, 6),
            Some(&[9u8][..]),
            "flags are not the type"
        );
        // Cut anywhere: no panic, and never a message that runs past the cut.
        for cut in 0..d.len() {
            for (_, body) in frames(&d[..cut]) {
                assert!(body.len() < cut);
                let _ = attributes(body).count();
            }
        }
    }
}

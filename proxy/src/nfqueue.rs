//! An NFQUEUE queue over nfnetlink (`linux/netfilter/nfnetlink_queue.h`), as the packet filter
//! reads it: the first packet of each new flow, judged in batches.
//!
//! One wake-up reads every packet waiting (up to [`BATCH`]) in one system call, each into its
//! own slot of one buffer made at bind time; the judge gives each its verdict; all the verdicts go back in one
//! `send` (one netlink message each: a verdict may carry a mark, and the kernel's batch verdict
//! gives one verdict and mark to a range of packets). Nothing is allocated per packet: the
//! buffers live as long as the queue.
//!
//! Message layout: a netlink header, the 4-byte `nfgenmsg` (family, version, the queue number
//! in network order), then attributes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::netlink::{
    NFGENMSG_LEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDRLEN, align, attributes, frames,
    put_attr, status,
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_REPEAT: u32 = 4;
/// Packets read per wake-up, at most.
pub(crate) const BATCH: usize = 64;
/// A verdict message: header, nfgenmsg, the verdict (4 + 8) and a mark (4 + 4).
const VERDICT_LEN: usize = NLMSG_HDRLEN + NFGENMSG_LEN + 12 + 8;

/// What becomes of a queued packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Dropped.
    Drop,
    /// Goes on.
    Accept,
    /// Walks its chain again, with this mark.
    Repeat {
        /// The packet's mark from now on.
        mark: u32,
    },
}

/// One queued packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    /// The kernel's id, which its verdict names.
    pub id: u32,
    /// The netfilter hook it was queued from.
    pub hook: u8,
    /// Its mark as it was queued (0 without one).
    pub mark: u32,
    /// Its first bytes (the copy range).
    pub payload: &'a [u8],
}

fn put_header(m: &mut Vec<u8>, len: usize, kind: u16, flags: u16, queue: u16) {
    crate::netlink::put_header(m, len, (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0);
    // AF_UNSPEC, version 0, the queue.
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
}

/// The one request that binds a queue: the kernel binds, then applies the parameters, before
/// it answers. Fail-open is masked in and cleared: a full queue drops what it cannot hold
/// rather than letting it pass unjudged.
fn bind_attrs(copy_range: u16, max_len: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
    let mut params = u32::from(copy_range).to_be_bytes().to_vec();
    params.push(NFQNL_COPY_PACKET);
    put_attr(&mut attrs, NFQA_CFG_PARAMS, &params);
    put_attr(&mut attrs, NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes());
    put_attr(
        &mut attrs,
        NFQA_CFG_MASK,
        &NFQA_CFG_F_FAIL_OPEN.to_be_bytes(),
    );
    put_attr(&mut attrs, NFQA_CFG_FLAGS, &0u32.to_be_bytes());
    attrs
}

/// A configuration request for `queue` carrying `attrs` (already encoded).
fn config_request(queue: u16, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    put_header(
        &mut m,
        len,
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        queue,
    );
    m.extend_from_slice(attrs);
    m
}

/// Appends the verdict on packet `id` of `queue` to `out`.
fn put_verdict(out: &mut Vec<u8>, queue: u16, id: u32, verdict: Verdict) {
    let (code, mark) = match verdict {
        Verdict::Drop => (NF_DROP, None),
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Repeat { mark } => (NF_REPEAT, Some(mark)),
    };
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + 12 + if mark.is_some() { 8 } else { 0 };
    put_header(out, len, NFQNL_MSG_VERDICT, NLM_F_REQUEST, queue);
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&code.to_be_bytes());
    header[4..].copy_from_slice(&id.to_be_bytes());
    put_attr(out, NFQA_VERDICT_HDR, &header);
    if let Some(mark) = mark {
        put_attr(out, NFQA_MARK, &mark.to_be_bytes());
    }
}

/// What one netlink message from the queue is.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    Packet(Packet<'a>),
    /// An acknowledgement (0) or an error (a negative errno), e.g. for a verdict on a packet
    /// the kernel no longer holds.
    Status(i32),
    Other,
}

/// Splits a datagram into the queue's messages.
fn messages(buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    frames(buf).map(|(kind, body)| match kind {
        NLMSG_ERROR => Message::Status(status(body)),
        k if k == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET => {
            packet(body.get(NFGENMSG_LEN..).unwrap_or(&[])).map_or(Message::Other, Message::Packet)
        }
        _ => Message::Other,
    })
}

/// Reads a packet message's attributes: its header (id, hook) and payload.
fn packet(attrs: &[u8]) -> Option<Packet<'_>> {
    let mut header = None;
    let mut payload: &[u8] = &[];
    let mut mark = 0;
    for (kind, value, _) in attributes(attrs) {
        match kind {
            // packet_id (be32), hw_protocol (be16), hook (u8).
            NFQA_PACKET_HDR if value.len() >= 7 => {
                header = Some((
                    u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
                    value[6],
                ));
            }
            NFQA_MARK if value.len() >= 4 => {
                mark = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
            }
            NFQA_PAYLOAD => payload = value,
            _ => {}
        }
    }
    let (id, hook) = header?;
    Some(Packet {
        id,
        hook,
        mark,
        payload,
    })
}

/// Gives each packet in `datagrams` (as read from queue `queue`) to `judge`, in order, and
/// writes their verdicts to `verdicts` (cleared first). Returns how many were judged.
pub(crate) fn judge_datagrams<'a>(
    datagrams: impl Iterator<Item = &'a [u8]>,
    queue: u16,
    verdicts: &mut Vec<u8>,
    judge: &mut impl FnMut(Packet<'_>) -> Verdict,
) -> usize {
    verdicts.clear();
    let mut judged = 0;
    for datagram in datagrams {
        for message in messages(datagram) {
            match message {
                Message::Packet(packet) => {
                    let verdict = judge(packet);
                    put_verdict(verdicts, queue, packet.id, verdict);
                    judged += 1;
                }
                Message::Status(e) if e != 0 => {
                    tracing::debug!(errno = -e, "packet filter: the kernel refused a verdict");
                }
                _ => {}
            }
        }
    }
    judged
}

/// A bound queue.
pub(crate) struct Queue {
    fd: OwnedFd,
    num: u16,
    /// [`BATCH`] slots, each the size of one packet message.
    buf: Vec<u8>,
    slot: usize,
    /// Bytes read into each slot.
    read: [usize; BATCH],
    verdicts: Vec<u8>,
}

impl Queue {
    /// Binds queue `num` (needs NET_ADMIN): each packet's first `copy_range` bytes are copied,
    /// at most `max_len` wait, and none passes while nobody reads (no fail-open).
    pub(crate) fn bind(num: u16, copy_range: u16, max_len: u32) -> io::Result<Queue> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        // A burst of new flows waits in the socket rather than being dropped.
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &(1 << 20));
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // Room for the attributes the kernel adds around the copied bytes (about 150 bytes
        // today), with plenty to spare: a message cut short would get no verdict.
        let slot = align(usize::from(copy_range) + 1024);
        let mut queue = Queue {
            fd,
            num,
            buf: vec![0u8; slot * BATCH],
            slot,
            read: [0; BATCH],
            verdicts: Vec::with_capacity(VERDICT_LEN * BATCH),
        };
        queue.configure(&bind_attrs(copy_range, max_len))?;
        Ok(queue)
    }

    /// Sends a configuration request and waits for its answer. A packet queued meanwhile (the
    /// queue is bound as the request is applied) is dropped rather than left without a
    /// verdict, which would hold it, and its place in the queue, for good.
    fn configure(&mut self, attrs: &[u8]) -> io::Result<()> {
        sendto(
            self.fd.as_raw_fd(),
            &config_request(self.num, attrs),
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            let mut answer = None;
            self.verdicts.clear();
            for message in messages(&self.buf[..n]) {
                match message {
                    Message::Status(0) => answer = Some(Ok(())),
                    Message::Status(e) => answer = Some(Err(io::Error::from_raw_os_error(-e))),
                    Message::Packet(p) => {
                        put_verdict(&mut self.verdicts, self.num, p.id, Verdict::Drop)
                    }
                    Message::Other => {}
                }
            }
            send_verdicts(&self.fd, &self.verdicts)?;
            if let Some(answer) = answer {
                return answer;
            }
        }
    }

    /// Waits for packets, gives each one waiting (up to [`BATCH`]) to `judge` in the order the
    /// kernel queued them, and sends their verdicts in one message, counted in `batches` from
    /// the first verdict to the send. Returns how many were judged.
    pub(crate) fn judge_batch(
        &mut self,
        batches: &crate::in_flight::Batches,
        mut judge: impl FnMut(Packet<'_>) -> Verdict,
    ) -> io::Result<usize> {
        // One call reads them all; an error after some were read comes with the next call, so
        // every packet read here gets its verdict (the kernel would hold one without for good).
        let slots = crate::netlink::receive_batch(
            &self.fd,
            &mut self.buf,
            self.slot,
            &mut self.read,
            true,
        )?;
        let datagrams = self.read[..slots]
            .iter()
            .enumerate()
            .map(|(i, &n)| &self.buf[i * self.slot..i * self.slot + n]);
        batches.judge(|| {
            let judged = judge_datagrams(datagrams, self.num, &mut self.verdicts, &mut judge);
            send_verdicts(&self.fd, &self.verdicts)?;
            Ok(judged)
        })
    }
}

/// Sends the verdicts put in `verdicts` (one netlink message each, in one datagram), if any.
fn send_verdicts(fd: &OwnedFd, verdicts: &[u8]) -> io::Result<()> {
    if !verdicts.is_empty() {
        sendto(
            fd.as_raw_fd(),
            verdicts,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
    }
    Ok(())
}

/// A packet message as the kernel sends it: header, nfgenmsg, packet header, mark, payload.
#[cfg(test)]
pub(crate) fn packet_message(queue: u16, id: u32, hook: u8, payload: &[u8]) -> Vec<u8> {
    marked_packet_message(queue, id, hook, 0, payload)
}

/// The same, for a packet with `mark`.
#[cfg(test)]
pub(crate) fn marked_packet_message(
    queue: u16,
    id: u32,
    hook: u8,
    mark: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut hdr = id.to_be_bytes().to_vec();
    hdr.extend(0x0800u16.to_be_bytes());
    hdr.push(hook);
    put_attr(&mut attrs, NFQA_PACKET_HDR, &hdr);
    put_attr(&mut attrs, NFQA_MARK, &mark.to_be_bytes());
    put_attr(&mut attrs, NFQA_PAYLOAD, payload);
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut m = Vec::new();
    put_header(&mut m, len, NFQNL_MSG_PACKET, 0, queue);
    m.extend(attrs);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_packet_gives_its_id_hook_mark_and_payload() {
        let m = marked_packet_message(1337, 0x0102_0304, 3, 0x7077_0003, &[0x45, 0, 0, 20]);
        let read: Vec<Message<'_>> = messages(&m).collect();
        assert_eq!(
            read,
            [Message::Packet(Packet {
                id: 0x0102_0304,
                hook: 3,
                mark: 0x7077_0003,
                payload: &[0x45, 0, 0, 20],
            })]
        );
        // Cut anywhere, it is no packet and no panic.
        for cut in 0..m.len() {
            let _ = messages(&m[..cut]).count();
        }
    }

    #[test]
    fn verdicts_go_back_one_message_each_in_one_buffer_a_repeat_with_its_mark() {
        let mut out = Vec::new();
        put_verdict(&mut out, 1337, 9, Verdict::Repeat { mark: 0x7077_0001 });
        put_verdict(&mut out, 1337, 10, Verdict::Drop);
        assert_eq!(out.len(), VERDICT_LEN + VERDICT_LEN - 8);
        let first = &out[..VERDICT_LEN];
        assert_eq!(
            u32::from_ne_bytes([first[0], first[1], first[2], first[3]]) as usize,
            VERDICT_LEN
        );
        assert_eq!(
            u16::from_ne_bytes([first[4], first[5]]),
            (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
        );
        assert_eq!(&first[18..20], &1337u16.to_be_bytes(), "the queue");
        // The verdict header: NF_REPEAT and the id, then the mark, all in network order.
        assert_eq!(&first[24..28], &NF_REPEAT.to_be_bytes());
        assert_eq!(&first[28..32], &9u32.to_be_bytes());
        assert_eq!(&first[32..36], &[8, 0, NFQA_MARK as u8, 0]);
        assert_eq!(&first[36..40], &0x7077_0001u32.to_be_bytes());
        let second = &out[VERDICT_LEN..];
        assert_eq!(&second[24..28], &NF_DROP.to_be_bytes());
        assert_eq!(&second[28..32], &10u32.to_be_bytes());
        assert_eq!(second.len(), VERDICT_LEN - 8, "no mark");
    }

    #[test]
    fn binding_asks_for_whole_packets_up_to_the_copy_range_and_no_fail_open() {
        let m = config_request(7, &bind_attrs(256, 4096));
        assert_eq!(
            u16::from_ne_bytes([m[4], m[5]]),
            (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
        );
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&m[18..20], &7u16.to_be_bytes());
        // The attributes, as the kernel reads them: (type, value) in order.
        let mut attrs = Vec::new();
        let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
        while at + 4 <= m.len() {
            let len = usize::from(u16::from_ne_bytes([m[at], m[at + 1]]));
            let kind = u16::from_ne_bytes([m[at + 2], m[at + 3]]);
            attrs.push((kind, m[at + 4..at + len].to_vec()));
            at += align(len);
        }
        assert_eq!(at, m.len(), "attributes fill the message");
        let value = |kind: u16| {
            attrs
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no attribute {kind}: {attrs:?}"))
        };
        assert_eq!(value(NFQA_CFG_CMD)[0], NFQNL_CFG_CMD_BIND);
        assert_eq!(value(NFQA_CFG_PARAMS), [0, 0, 1, 0, NFQNL_COPY_PACKET]);
        assert_eq!(value(NFQA_CFG_QUEUE_MAXLEN), 4096u32.to_be_bytes());
        // Fail-open is in the mask and cleared in the flags: the kernel turns it off.
        let mask = u32::from_be_bytes(value(NFQA_CFG_MASK).try_into().expect("u32"));
        let flags = u32::from_be_bytes(value(NFQA_CFG_FLAGS).try_into().expect("u32"));
        assert_ne!(mask & NFQA_CFG_F_FAIL_OPEN, 0);
        assert_eq!(flags & NFQA_CFG_F_FAIL_OPEN, 0);
    }
}

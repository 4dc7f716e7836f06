//! Which freed sockets' messages reach the sidecar at all: a classic BPF program on the
//! socket that hears of them ([`crate::sock_diag::Ends`]), run by the kernel before a message
//! is queued.
//!
//! Every TCP socket freed in the pod is broadcast, and an app frees one in a few microseconds
//! without connecting it (no judgement, no capability), so it can fill the socket's buffer
//! while the sidecar waits for CPU; the kernel then drops what does not fit, the end of a
//! kernel-carried connection among it. The messages of sockets without a remote port, and of
//! those whose remote is the pod itself (loopback, or one of its own addresses: connections
//! within the pod are never judged), are dropped before they take any room: no end the sidecar
//! can match is among them. (A connection's socket that was disconnected, by a zero linger or
//! `connect(AF_UNSPEC)`, has lost its remote port and byte counts before it is freed: its end
//! comes when conntrack forgets the connection, with or without this filter.)

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

/// One classic BPF instruction (`struct sock_filter`).
type Insn = nix::libc::sock_filter;

// Classic BPF opcodes (linux/bpf_common.h: class | size | mode, or class | op | source).
/// `BPF_LD | BPF_W | BPF_ABS`: a big-endian word of the message into A.
const LD_W_ABS: u16 = 0x20;
/// `BPF_LD | BPF_H | BPF_ABS`.
const LD_H_ABS: u16 = 0x28;
/// `BPF_LD | BPF_B | BPF_ABS`.
const LD_B_ABS: u16 = 0x30;
/// `BPF_ALU | BPF_AND | BPF_K`.
const ALU_AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JMP_JEQ_K: u16 = 0x15;
/// `BPF_RET | BPF_K`: keep that many bytes (0: drop).
const RET_K: u16 = 0x06;

// Where the fields are in a broadcast message: `nlmsghdr` (16 bytes), then `inet_diag_msg`.
const FAMILY_AT: u32 = 16;
const DPORT_AT: u32 = 22;
const DST_AT: u32 = 40;

const AF_INET6: u32 = 10;
/// At most this many addresses of each family are compared (more would only let more
/// messages through, never fewer; a pod has one or two, and every jump must stay within 255
/// instructions).
const MAX_ADDRESSES: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Drop,
    V6,
    V6One,
    V6Mapped,
    V6Own,
    Next(usize),
}

enum Op {
    Stmt(u16, u32),
    /// `A == k`: on to `then`, else to `otherwise` (`None`: the next instruction).
    Jeq(u32, Option<Label>, Option<Label>),
    At(Label),
}

/// The program for a namespace whose own addresses are `own`; `None` if it does not fit
/// classic BPF's jumps (it cannot with [`MAX_ADDRESSES`], but the check is cheap).
pub(crate) fn program(own: &[IpAddr]) -> Option<Vec<Insn>> {
    let v4: Vec<u32> = own
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(u32::from(*a)),
            IpAddr::V6(a) => a.to_ipv4_mapped().map(u32::from),
        })
        .take(MAX_ADDRESSES)
        .collect();
    let v6: Vec<[u32; 4]> = own
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(a) if a.to_ipv4_mapped().is_none() => {
                let o = a.octets();
                Some(std::array::from_fn(|i| {
                    u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                }))
            }
            _ => None,
        })
        .take(MAX_ADDRESSES)
        .collect();
    let loopback = u32::from(Ipv4Addr::new(127, 0, 0, 0));
    let mut ops = vec![
        // Never connected (or listening): no remote port.
        Op::Stmt(LD_H_ABS, DPORT_AT),
        Op::Jeq(0, Some(Label::Drop), None),
        Op::Stmt(LD_B_ABS, FAMILY_AT),
        Op::Jeq(AF_INET6, Some(Label::V6), None),
        // IPv4: loopback, or one of the pod's own.
        Op::Stmt(LD_W_ABS, DST_AT),
        Op::Stmt(ALU_AND_K, 0xff00_0000),
        Op::Jeq(loopback, Some(Label::Drop), None),
        Op::Stmt(LD_W_ABS, DST_AT),
    ];
    ops.extend(v4.iter().map(|&a| Op::Jeq(a, Some(Label::Drop), None)));
    ops.push(Op::Stmt(RET_K, u32::MAX));
    // IPv6: `::1`, an IPv4-mapped address of the above, or one of the pod's own.
    ops.extend([
        Op::At(Label::V6),
        Op::Stmt(LD_W_ABS, DST_AT),
        Op::Jeq(0, None, Some(Label::V6Own)),
        Op::Stmt(LD_W_ABS, DST_AT + 4),
        Op::Jeq(0, None, Some(Label::V6Own)),
        Op::Stmt(LD_W_ABS, DST_AT + 8),
        Op::Jeq(0, Some(Label::V6One), None),
        Op::Jeq(0xffff, Some(Label::V6Mapped), Some(Label::V6Own)),
        Op::At(Label::V6One),
        Op::Stmt(LD_W_ABS, DST_AT + 12),
        Op::Jeq(1, Some(Label::Drop), Some(Label::V6Own)),
        Op::At(Label::V6Mapped),
        Op::Stmt(LD_W_ABS, DST_AT + 12),
        Op::Stmt(ALU_AND_K, 0xff00_0000),
        Op::Jeq(loopback, Some(Label::Drop), None),
        Op::Stmt(LD_W_ABS, DST_AT + 12),
    ]);
    ops.extend(v4.iter().map(|&a| Op::Jeq(a, Some(Label::Drop), None)));
    ops.push(Op::At(Label::V6Own));
    for (n, words) in v6.iter().enumerate() {
        let next = Label::Next(n);
        for (i, &w) in words.iter().enumerate() {
            ops.push(Op::Stmt(LD_W_ABS, DST_AT + 4 * i as u32));
            let then = (i == 3).then_some(Label::Drop);
            ops.push(Op::Jeq(w, then, Some(next)));
        }
        ops.push(Op::At(next));
    }
    ops.extend([
        Op::Stmt(RET_K, u32::MAX),
        Op::At(Label::Drop),
        Op::Stmt(RET_K, 0),
    ]);
    assemble(&ops)
}

/// The addresses of this namespace's interfaces now (the pod's own, loopback's), read once
/// when the sidecar subscribes: an address added later is not filtered, which only lets
/// more messages through.
pub(crate) fn own_addresses() -> io::Result<Vec<IpAddr>> {
    let mut own: Vec<IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    own.sort();
    own.dedup();
    Ok(own)
}

/// Has the kernel run [`program`] for `own` on every message `fd` would receive.
#[allow(unsafe_code)]
pub(crate) fn attach(fd: &OwnedFd, own: &[IpAddr]) -> io::Result<()> {
    let mut filter =
        program(own).ok_or_else(|| io::Error::other("freed-socket filter too long"))?;
    let fprog = nix::libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::other("filter too long"))?,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `filter`, alive for the call; the kernel copies the program
    // before it returns and keeps no pointer to either.
    let set = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<nix::libc::sock_fprog>() as nix::libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Resolves labels into relative jumps.
fn assemble(ops: &[Op]) -> Option<Vec<Insn>> {
    let mut at = Vec::new();
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::At(label) => at.push((*label, n)),
            _ => n += 1,
        }
    }
    let position = |label: Label| at.iter().find(|(l, _)| *l == label).map(|&(_, p)| p);
    let mut out = Vec::with_capacity(n);
    for op in ops {
        let here = out.len();
        // A jump counts from the instruction after it.
        let offset = |label: Option<Label>| -> Option<usize> {
            match label {
                None => Some(0),
                Some(l) => position(l)?.checked_sub(here + 1),
            }
        };
        match *op {
            Op::At(_) => continue,
            Op::Stmt(code, k) => out.push(Insn {
                code,
                jt: 0,
                jf: 0,
                k,
            }),
            Op::Jeq(k, then, otherwise) => out.push(Insn {
                code: JMP_JEQ_K,
                jt: u8::try_from(offset(then)?).ok()?,
                jf: u8::try_from(offset(otherwise)?).ok()?,
                k,
            }),
        }
    }
    Some(out)
}

/// Runs `program` on `message` as the kernel would (the instructions [`program`] uses):
/// whether the message is kept. Out-of-range loads drop it, as in the kernel.
#[cfg(test)]
pub(crate) fn keeps(program: &[Insn], message: &[u8]) -> bool {
    let load = |at: u32, len: usize| -> Option<u32> {
        let at = at as usize;
        let bytes = message.get(at..at + len)?;
        Some(bytes.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)))
    };
    let (mut pc, mut a) = (0usize, 0u32);
    while let Some(insn) = program.get(pc) {
        pc += 1;
        match insn.code {
            LD_W_ABS | LD_H_ABS | LD_B_ABS => {
                let len = match insn.code {
                    LD_W_ABS => 4,
                    LD_H_ABS => 2,
                    _ => 1,
                };
                match load(insn.k, len) {
                    Some(v) => a = v,
                    None => return false,
                }
            }
            ALU_AND_K => a &= insn.k,
            JMP_JEQ_K => {
                pc += usize::from(if a == insn.k { insn.jt } else { insn.jf });
            }
            RET_K => return insn.k != 0,
            other => panic!("instruction {other:#x} not interpreted"),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A freed socket's broadcast message, as far as the filter reads it: `nlmsghdr`, then
    /// `inet_diag_msg` (family, state, ports, addresses), then some of what follows.
    fn freed(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 72 + 40];
        m[16] = if local.is_ipv4() { 2 } else { 10 };
        m[17] = 7;
        m[20..22].copy_from_slice(&local.port().to_be_bytes());
        m[22..24].copy_from_slice(&remote.port().to_be_bytes());
        let words = |ip: IpAddr| match ip {
            IpAddr::V4(a) => {
                let mut w = [0u8; 16];
                w[..4].copy_from_slice(&a.octets());
                w
            }
            IpAddr::V6(a) => a.octets(),
        };
        m[24..40].copy_from_slice(&words(local.ip()));
        m[40..56].copy_from_slice(&words(remote.ip()));
        m
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn only_sockets_that_were_connected_out_of_the_pod_take_room() {
        let own: Vec<IpAddr> = ["10.0.0.1", "127.0.0.1", "fd00::1", "::1"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        let program = program(&own).expect("fits");
        for (local, remote, kept, what) in [
            ("10.0.0.1:40000", "10.0.0.2:8080", true, "a connection out"),
            ("10.0.0.1:8080", "10.0.0.9:51000", true, "a connection in"),
            ("[fd00::1]:40000", "[fd00::2]:443", true, "over IPv6"),
            (
                "[::ffff:10.0.0.1]:40000",
                "[::ffff:10.0.0.2]:80",
                true,
                "IPv4 on an IPv6 socket",
            ),
            (
                "[fd00::1]:40000",
                "[fd00::1:0:0:1]:443",
                true,
                "an address like the pod's",
            ),
            ("10.0.0.1:40000", "10.0.0.2:0", false, "never connected"),
            ("[::]:0", "[::]:0", false, "never bound either"),
            ("127.0.0.1:40000", "127.0.0.1:8080", false, "loopback"),
            ("10.0.0.1:40000", "127.0.0.5:8080", false, "loopback's net"),
            (
                "10.0.0.1:40000",
                "10.0.0.1:8080",
                false,
                "the pod to itself",
            ),
            (
                "10.99.0.1:40000",
                "10.0.0.1:8080",
                false,
                "a freebound source to the pod",
            ),
            ("[::1]:40000", "[::1]:8080", false, "IPv6 loopback"),
            (
                "[fd00::1]:40000",
                "[fd00::1]:8080",
                false,
                "the pod to itself over IPv6",
            ),
            (
                "[::ffff:10.0.0.1]:1",
                "[::ffff:127.0.0.1]:80",
                false,
                "mapped loopback",
            ),
            (
                "[::ffff:10.0.0.1]:1",
                "[::ffff:10.0.0.1]:80",
                false,
                "mapped own address",
            ),
        ] {
            assert_eq!(
                keeps(&program, &freed(addr(local), addr(remote))),
                kept,
                "{what}: {local} -> {remote}"
            );
        }
        // Cut short: dropped, as the kernel drops a load past the end.
        assert!(!keeps(&program, &[0u8; 20]));
    }

    #[test]
    fn without_addresses_only_the_remote_port_and_loopback_decide() {
        let program = program(&[]).expect("fits");
        assert!(keeps(
            &program,
            &freed(addr("10.0.0.1:1"), addr("10.0.0.1:2"))
        ));
        assert!(!keeps(
            &program,
            &freed(addr("10.0.0.1:1"), addr("127.0.0.1:2"))
        ));
        assert!(!keeps(
            &program,
            &freed(addr("10.0.0.1:1"), addr("10.0.0.2:0"))
        ));
    }

    #[test]
    fn many_addresses_still_fit_classic_bpfs_jumps() {
        let own: Vec<IpAddr> = (0..200u32)
            .flat_map(|i| {
                [
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                    IpAddr::V6(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))),
                ]
            })
            .collect();
        let program = program(&own).expect("fits");
        // The first MAX_ADDRESSES of each family are compared; one past them is kept.
        assert!(!keeps(
            &program,
            &freed(addr("10.0.0.1:1"), addr("10.0.0.3:2"))
        ));
        assert!(!keeps(
            &program,
            &freed(addr("[fd00::1]:1"), addr("[fd00::3]:2"))
        ));
        assert!(keeps(
            &program,
            &freed(addr("10.0.0.1:1"), addr("10.0.0.100:2"))
        ));
        assert!(keeps(
            &program,
            &freed(addr("[fd00::1]:1"), addr("[fd00::64]:2"))
        ));
    }

    #[test]
    fn the_kernel_takes_the_program() {
        // SO_ATTACH_FILTER checks a classic program as it copies it in (any socket will do).
        let own = own_addresses().expect("interface addresses");
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        attach(&fd, &own).expect("attached");
    }
}

//! Copying a connection both ways, without the bytes entering user space.
//!
//! Each direction moves data socket -> pipe -> socket with `splice(2)`: the kernel hands pages
//! from one socket's receive queue to the other's send queue, and the proxy never allocates or
//! copies per chunk. Readiness comes from tokio, so a direction only reads while its pipe has
//! room (backpressure: a slow receiver stops the sender), and end of stream is passed on as a
//! half-close (`shutdown(SHUT_WR)`), so either side can finish sending and keep receiving. An
//! error on one side resets the other.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the side that opened the connection to the side it reached.
    pub client_to_server: u64,
    /// Back.
    pub server_to_client: u64,
}

/// A non-blocking pipe used as the in-kernel buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)? as usize;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

/// Moves one direction until end of stream, then half-closes the destination.
///
/// A pipe can be full (its slots used by small segments) before `capacity` bytes are in it, and
/// then splicing into it fails with `EAGAIN` just as an empty socket does. Only an `EAGAIN`
/// while the pipe is empty proves the socket has nothing to read; so only then may tokio clear
/// the socket's readiness (`try_io`). Otherwise the read is attempted directly and an `EAGAIN`
/// leaves the readiness alone; clearing it there would lose the wake-up for data already queued
/// and stall the connection.
async fn pump(src: &TcpStream, dst: &TcpStream, bytes: &mut u64) -> io::Result<()> {
    // The pipe is made when the first bytes arrive: idle connections hold no pipe (pipes count
    // against a per-user page budget, and a proxy holds thousands of connections).
    src.readable().await?;
    let pipe = Pipe::new()?;
    let fill = |want: usize| {
        splice(src.as_fd(), None, pipe.write.as_fd(), None, want, FLAGS).map_err(io::Error::from)
    };
    let mut buffered = 0usize;
    let mut eof = false;
    loop {
        if !eof && buffered < pipe.capacity {
            let want = pipe.capacity - buffered;
            let read = if buffered == 0 {
                src.try_io(Interest::READABLE, || fill(want))
            } else {
                fill(want)
            };
            match read {
                Ok(0) => eof = true,
                Ok(n) => buffered += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buffered == 0 {
                        src.readable().await?;
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if buffered > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_fd(), None, dst.as_fd(), None, buffered, FLAGS)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => {
                    buffered -= n;
                    *bytes += n as u64;
                }
                // The pipe holds data, so this is the destination's send buffer being full.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        } else if eof {
            // Everything is through: pass the end of stream on.
            return match shutdown(dst.as_raw_fd(), Shutdown::Write) {
                Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
    }
}

/// Copies both ways until both directions have ended. On an error in either direction both
/// connections are reset (zero linger) so neither peer mistakes it for a clean end.
pub async fn relay(client: &TcpStream, server: &TcpStream, t: &mut Transferred) -> io::Result<()> {
    let (up, down) = tokio::join!(
        pump(client, server, &mut t.client_to_server),
        pump(server, client, &mut t.server_to_client)
    );
    let result = up.and(down);
    if result.is_err() {
        reset(client);
        reset(server);
    }
    result
}

/// Makes the coming close send RST instead of FIN.
pub fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

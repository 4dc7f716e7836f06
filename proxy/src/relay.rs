//! Copying a connection both ways, cheaply for small messages and without copies for bulk.
//!
//! Each direction starts in copy mode: bytes are read into a per-thread scratch buffer and
//! written straight on, so a request or response costs one read and one write, and an idle or
//! chatty connection owns no buffer and no pipe. A read that fills the whole scratch buffer
//! means bulk data: the direction then switches to `splice(2)` through a pipe, and the kernel
//! moves pages from one socket to the other without them entering user space.
//!
//! Backpressure: a direction reads only when what it read before has been written (a slow
//! receiver stops the sender). Only when a write is short does the direction keep the remainder
//! in a buffer of its own until the destination drains. End of stream is passed on as a
//! half-close (`shutdown(SHUT_WR)`), so either side can finish sending and keep receiving. An
//! error on either side resets both.
//!
//! Readiness: tokio's readiness is edge-triggered. A short read or write proves the socket is
//! drained (or full) at that moment, and any later change raises a new edge, so readiness is
//! cleared then, as tokio's own `poll_read` does; that saves the extra `EAGAIN` system call per
//! message. A splice into a pipe is different: it can stop short because the pipe's slots are
//! used up while the socket still holds data, so in splice mode only an `EAGAIN` with an empty
//! pipe clears the socket's readiness.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{MsgFlags, Shutdown, recv, send, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// From the side that opened the connection to the side it reached.
    pub client_to_server: u64,
    /// Back.
    pub server_to_client: u64,
}

/// The copy-mode buffer: one per worker thread, used only between two awaits.
const SCRATCH: usize = 16 * 1024;
/// The pipe size asked for in splice mode (the kernel may refuse; the default 64 KiB stays).
const PIPE_SIZE: i32 = 1 << 20;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// A non-blocking pipe used as the in-kernel buffer of one direction in splice mode.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Fewer, larger splices for bulk; unprivileged users past their pipe budget keep 64 KiB.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)? as usize;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

const SPLICE: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

/// What one read in copy mode found.
enum Copied {
    /// Data, fewer bytes than the buffer holds: the socket is drained for now.
    Some,
    /// The buffer filled up: bulk data; switch to splice.
    Full,
    /// End of stream.
    Eof,
}

/// Writes what the destination could not take yet.
async fn flush(dst: &TcpStream, pending: &mut Vec<u8>, bytes: &mut u64) -> io::Result<()> {
    while !pending.is_empty() {
        match dst.try_io(Interest::WRITABLE, || {
            send(dst.as_raw_fd(), pending, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
        }) {
            Ok(n) => {
                pending.drain(..n);
                *bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copy mode: returns when the stream ends (`true`) or turns out to be bulk (`false`).
async fn copy(src: &TcpStream, dst: &TcpStream, bytes: &mut u64) -> io::Result<bool> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // Drain before reading more: that is the backpressure.
        flush(dst, &mut pending, bytes).await?;
        let mut found = Copied::Some;
        let read = src.try_io(Interest::READABLE, || {
            SCRATCH_BUF.with_borrow_mut(|buf| {
                let n = recv(src.as_raw_fd(), buf, MsgFlags::empty()).map_err(io::Error::from)?;
                if n == 0 {
                    found = Copied::Eof;
                    return Ok(());
                }
                let w = match send(dst.as_raw_fd(), &buf[..n], MsgFlags::MSG_NOSIGNAL) {
                    Ok(w) => w,
                    Err(nix::errno::Errno::EAGAIN) => 0,
                    Err(e) => return Err(io::Error::from(e)),
                };
                *bytes += w as u64;
                if w < n {
                    // The destination is full: keep the rest (the only allocation, only now).
                    pending.extend_from_slice(&buf[w..n]);
                }
                if n == buf.len() {
                    found = Copied::Full;
                    Ok(())
                } else {
                    // A short read drained the socket: clear readiness (see the module docs).
                    Err(would_block())
                }
            })
        });
        match read {
            Ok(()) => {
                flush(dst, &mut pending, bytes).await?;
                return Ok(matches!(found, Copied::Eof));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if pending.is_empty() {
                    src.readable().await?;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Splice mode: moves the rest of the stream through a pipe.
async fn splice_rest(src: &TcpStream, dst: &TcpStream, bytes: &mut u64) -> io::Result<()> {
    let pipe = Pipe::new()?;
    let fill = |want: usize| {
        splice(src.as_fd(), None, pipe.write.as_fd(), None, want, SPLICE).map_err(io::Error::from)
    };
    let mut buffered = 0usize;
    let mut eof = false;
    loop {
        if !eof && buffered < pipe.capacity {
            let want = pipe.capacity - buffered;
            // With an empty pipe, EAGAIN can only mean the socket is empty; otherwise the pipe
            // may be the one that is full, and the readiness must stay.
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
                splice(pipe.read.as_fd(), None, dst.as_fd(), None, buffered, SPLICE)
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
            return Ok(());
        }
    }
}

/// Moves one direction until end of stream, then half-closes the destination.
async fn pump(src: &TcpStream, dst: &TcpStream, bytes: &mut u64) -> io::Result<()> {
    if !copy(src, dst, bytes).await? {
        splice_rest(src, dst, bytes).await?;
    }
    match shutdown(dst.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copies both ways until both directions have ended. On an error in either direction both
/// connections are reset (zero linger) so neither peer mistakes it for a clean end.
pub(crate) async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    t: &mut Transferred,
) -> io::Result<()> {
    // An error in one direction ends both at once (the other may be idle forever).
    let result = tokio::try_join!(
        pump(client, server, &mut t.client_to_server),
        pump(server, client, &mut t.server_to_client)
    )
    .map(|_| ());
    if result.is_err() {
        reset(client);
        reset(server);
    }
    result
}

/// Makes the coming close send RST instead of FIN.
pub(crate) fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

//! Framing: every message is a 4-byte little-endian length, then that many bytes of postcard.
//! Frames have a size limit, bodies are read in pieces as they arrive (a lying length prefix
//! costs nothing until the bytes are really sent), and on a Unix socket a frame may carry file
//! descriptors (`SCM_RIGHTS`, attached to its first byte).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Largest frame accepted after the handshake: big enough for the content of a large unit
/// copied in one finalize, small enough that a hostile length cannot exhaust memory.
pub const MAX_FRAME: usize = 256 << 20;
/// Largest frame accepted before the peer has authenticated.
pub const MAX_HELLO_FRAME: usize = 4096;
/// Most descriptors one frame may carry.
pub const MAX_FDS: usize = 4;
/// A length prefix of this value, with descriptors attached, says that the body is not in the
/// stream but in the last attached descriptor: a sealed-size memory file holding exactly the
/// body. On a Unix socket, bodies of [`OUT_OF_LINE_MIN`] bytes or more travel so: two plain
/// copies instead of a socket's many small transfers, each a wake-up of the other process.
pub const OUT_OF_LINE: u32 = u32::MAX;
pub const OUT_OF_LINE_MIN: usize = 128 << 10;

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    #[error("connection closed inside a frame at stream offset {offset}: {got} of {want} bytes")]
    Truncated {
        offset: u64,
        got: usize,
        want: usize,
    },
    #[error("frame at stream offset {offset} is {len} bytes, over the limit of {limit}")]
    TooLarge {
        offset: u64,
        len: usize,
        limit: usize,
    },
    #[error("malformed frame at stream offset {offset}: {why}")]
    Malformed { offset: u64, why: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One received frame: its body (postcard bytes) and any descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// Offset of the frame's length prefix in the stream, for error messages.
    pub offset: u64,
}

impl Frame {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        decode(&self.body, self.offset)
    }
}

/// Decode a frame body; every byte must be used.
pub fn decode<T: DeserializeOwned>(body: &[u8], offset: u64) -> Result<T, WireError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(WireError::Malformed {
            offset,
            why: format!("{} trailing bytes after the message", rest.len()),
        }),
        Err(e) => Err(WireError::Malformed {
            offset,
            why: e.to_string(),
        }),
    }
}

/// A message as a frame: length prefix and body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; 4];
    let mut out =
        postcard::to_extend(msg, std::mem::take(&mut out)).map_err(|e| WireError::Malformed {
            offset: 0,
            why: format!("cannot encode: {e}"),
        })?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge {
            offset: 0,
            len,
            limit: MAX_FRAME,
        });
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Something frames are read from: a connection, or bytes in memory (tests).
pub trait Source {
    /// Read some bytes (0 at end of stream), collecting descriptors that arrive with them.
    fn read_some(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize>;
    /// Bytes consumed so far.
    fn position(&self) -> u64;
}

impl Source for &[u8] {
    fn read_some(&mut self, buf: &mut [u8], _fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        Read::read(self, buf)
    }
    fn position(&self) -> u64 {
        0
    }
}

fn fill(
    src: &mut impl Source,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    offset: u64,
) -> Result<usize, WireError> {
    let mut got = 0;
    while got < buf.len() {
        match src.read_some(&mut buf[got..], fds) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if fds.len() > MAX_FDS {
            return Err(WireError::Malformed {
                offset,
                why: format!("{} descriptors attached", fds.len()),
            });
        }
    }
    Ok(got)
}

/// Read one frame of at most `limit` bytes. `Err(Closed)` at a clean end of stream.
pub fn read_frame(src: &mut impl Source, limit: usize) -> Result<Frame, WireError> {
    let offset = src.position();
    let mut fds = Vec::new();
    let mut head = [0u8; 4];
    let got = fill(src, &mut head, &mut fds, offset)?;
    if got == 0 {
        return Err(WireError::Closed);
    }
    if got < 4 {
        return Err(WireError::Truncated {
            offset,
            got,
            want: 4,
        });
    }
    if u32::from_le_bytes(head) == OUT_OF_LINE {
        if let Some(fd) = fds.pop() {
            let body = read_out_of_line(fd, limit, offset)?;
            return Ok(Frame { body, fds, offset });
        }
    }
    let len = u32::from_le_bytes(head) as usize;
    if len > limit {
        return Err(WireError::TooLarge { offset, len, limit });
    }
    // Grow with what arrives (a megabyte at a time), not with what the prefix claims; read
    // straight into the body.
    let mut body = Vec::new();
    while body.len() < len {
        let start = body.len();
        // 64 KiB first, then doubling up to 1 MiB steps: a lying prefix costs little.
        let end = len.min(start + start.clamp(64 << 10, 1 << 20));
        body.resize(end, 0);
        let n = fill(src, &mut body[start..end], &mut fds, offset)?;
        if n < end - start {
            return Err(WireError::Truncated {
                offset,
                got: 4 + start + n,
                want: 4 + len,
            });
        }
    }
    Ok(Frame { body, fds, offset })
}

/// The body of an out-of-line frame: all of a regular file (a memfd), at most `limit` bytes.
fn read_out_of_line(fd: OwnedFd, limit: usize, offset: u64) -> Result<Vec<u8>, WireError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        // A pipe or socket could make us wait forever: only files are read.
        return Err(WireError::Malformed {
            offset,
            why: "an out-of-line body must be in a regular file".into(),
        });
    }
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if len > limit {
        return Err(WireError::TooLarge { offset, len, limit });
    }
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, 0)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => WireError::Truncated {
                offset,
                got: 0,
                want: len,
            },
            _ => WireError::Io(e),
        })?;
    Ok(body)
}

/// A memory file holding `body`, for an out-of-line frame.
fn out_of_line(body: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("kiln-frame", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(body)?;
    Ok(OwnedFd::from(f))
}

/// One end of a channel: a Unix socket (which can carry descriptors) or TCP.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    read_pos: u64,
}

#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl From<UnixStream> for Conn {
    fn from(s: UnixStream) -> Conn {
        Conn {
            stream: Stream::Unix(s),
            read_pos: 0,
        }
    }
}

impl From<TcpStream> for Conn {
    fn from(s: TcpStream) -> Conn {
        let _ = s.set_nodelay(true);
        Conn {
            stream: Stream::Tcp(s),
            read_pos: 0,
        }
    }
}

impl Source for Conn {
    fn read_some(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        let n = match &mut self.stream {
            Stream::Tcp(s) => s.read(buf)?,
            Stream::Unix(s) => {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(buf)];
                let r = rustix::net::recvmsg(
                    s.as_fd(),
                    &mut iov,
                    &mut control,
                    rustix::net::RecvFlags::CMSG_CLOEXEC,
                )?;
                for m in control.drain() {
                    if let rustix::net::RecvAncillaryMessage::ScmRights(got) = m {
                        fds.extend(got);
                    }
                }
                if r.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                    return Err(io::Error::other("too many descriptors attached to a frame"));
                }
                r.bytes
            }
        };
        self.read_pos += n as u64;
        Ok(n)
    }
    fn position(&self) -> u64 {
        self.read_pos
    }
}

impl Conn {
    pub fn is_unix(&self) -> bool {
        matches!(self.stream, Stream::Unix(_))
    }

    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(Conn {
            stream: match &self.stream {
                Stream::Unix(s) => Stream::Unix(s.try_clone()?),
                Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            },
            read_pos: self.read_pos,
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match &self.stream {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// Shut both directions down: the peer sees the end of the stream, and so does any other
    /// thread of ours reading from a clone.
    pub fn shutdown(&self) {
        let _ = match &self.stream {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.stream {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }

    pub fn recv(&mut self, limit: usize) -> Result<Frame, WireError> {
        read_frame(self, limit)
    }

    /// Send a message, with descriptors attached (Unix sockets only).
    pub fn send<T: Serialize>(&mut self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        let bytes = encode(msg)?;
        self.send_bytes(&bytes, fds)
    }

    /// Send an encoded frame (length prefix included).
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        match &mut self.stream {
            Stream::Tcp(s) => {
                if !fds.is_empty() {
                    return Err(io::Error::other("cannot pass descriptors over TCP").into());
                }
                s.write_all(bytes)?;
            }
            Stream::Unix(s) => {
                let memfd;
                let mut with_body: Vec<BorrowedFd<'_>>;
                let (bytes, fds) = if bytes.len() >= 4 + OUT_OF_LINE_MIN && fds.len() < MAX_FDS {
                    memfd = out_of_line(&bytes[4..])?;
                    with_body = fds.to_vec();
                    with_body.push(memfd.as_fd());
                    (&OUT_OF_LINE.to_le_bytes()[..], &with_body[..])
                } else {
                    (bytes, fds)
                };
                let mut sent = 0;
                if !fds.is_empty() {
                    let mut space =
                        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
                    if fds.len() > MAX_FDS
                        || !control.push(rustix::net::SendAncillaryMessage::ScmRights(fds))
                    {
                        return Err(io::Error::other("too many descriptors for one frame").into());
                    }
                    sent = loop {
                        match rustix::net::sendmsg(
                            s.as_fd(),
                            &[IoSlice::new(bytes)],
                            &mut control,
                            rustix::net::SendFlags::NOSIGNAL,
                        ) {
                            Ok(n) => break n,
                            Err(rustix::io::Errno::INTR) => continue,
                            Err(e) => return Err(io::Error::from(e).into()),
                        }
                    };
                }
                // MSG_NOSIGNAL: a vanished peer is an error, never SIGPIPE (the host may not
                // ignore it).
                while sent < bytes.len() {
                    match rustix::net::send(
                        s.as_fd(),
                        &bytes[sent..],
                        rustix::net::SendFlags::NOSIGNAL,
                    ) {
                        Ok(n) => sent += n,
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => return Err(io::Error::from(e).into()),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::from(a), Conn::from(b))
    }

    /// Large bodies travel out of line and arrive intact, with the frame's own descriptors.
    #[test]
    fn large_frames_go_out_of_line_and_arrive_whole() {
        let (mut a, mut b) = pair();
        let body: Vec<u8> = (0..OUT_OF_LINE_MIN * 3 + 7)
            .map(|i| (i * 31) as u8)
            .collect();
        let msg = serde_bytes::ByteBuf::from(body.clone());
        let extra = std::fs::File::open("/dev/null").unwrap();
        let t = std::thread::spawn(move || {
            a.send(&msg, &[extra.as_fd()]).unwrap();
            a.send(&serde_bytes::ByteBuf::from(vec![1u8, 2, 3]), &[])
                .unwrap();
        });
        let f = b.recv(MAX_FRAME).unwrap();
        assert_eq!(f.fds.len(), 1, "the frame's own descriptor, not the body's");
        assert_eq!(f.decode::<serde_bytes::ByteBuf>().unwrap().into_vec(), body);
        // The stream stays in step: a small frame after it.
        let g = b.recv(MAX_FRAME).unwrap();
        assert_eq!(
            g.decode::<serde_bytes::ByteBuf>().unwrap().into_vec(),
            [1, 2, 3]
        );
        assert_eq!(
            g.offset, 4,
            "the out-of-line frame is 4 bytes in the stream"
        );
        t.join().unwrap();
    }

    /// An out-of-line body must be a regular file within the limit: a pipe (which could block
    /// forever) or a too-large file is refused.
    #[test]
    fn out_of_line_bodies_are_checked() {
        let (mut a, mut b) = pair();
        let (r, _w) = std::io::pipe().unwrap();
        a.send_bytes(&OUT_OF_LINE.to_le_bytes(), &[r.as_fd()])
            .unwrap();
        match b.recv(MAX_FRAME) {
            Err(WireError::Malformed { why, .. }) => assert!(why.contains("regular file"), "{why}"),
            other => panic!("a pipe body was accepted: {other:?}"),
        }
        let big = out_of_line(&vec![7u8; 5000]).unwrap();
        a.send_bytes(&OUT_OF_LINE.to_le_bytes(), &[big.as_fd()])
            .unwrap();
        match b.recv(MAX_HELLO_FRAME) {
            Err(WireError::TooLarge { len: 5000, .. }) => {}
            other => panic!("an over-limit body was accepted: {other:?}"),
        }
    }
}

//! A listening executor: waits for controllers on a Unix socket or TCP, authenticates each one,
//! and serves it from a fresh executor process of its own, relaying frames. A fresh process per
//! controller means one session's code, crashes and exit handlers never touch another's, and
//! the listener itself runs no JIT'd code: when a session ends, however it ends, the listener
//! reports how its process ended and goes on listening.

use crate::auth::Token;
use crate::client::{client_handshake, spawn_child, Options};
use crate::error::{HandshakeError, SetupError};
use crate::proto::{ExitReport, Message, Welcome};
use crate::server::greet;
use crate::wire::{Conn, Frame, MAX_FRAME};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for ListenAddr {
    type Err = SetupError;
    fn from_str(s: &str) -> Result<Self, SetupError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(SetupError::BadAddress {
                    text: s.into(),
                    why: "needs a socket path",
                });
            }
            return Ok(ListenAddr::Unix(p.into()));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            let a = if a.contains(':') {
                a.to_string()
            } else {
                format!("127.0.0.1:{a}") // a bare port: loopback
            };
            let text = format!("tcp:{a}");
            return a
                .to_socket_addrs()
                .map_err(|error| SetupError::Resolve {
                    text: text.clone(),
                    error,
                })?
                .next()
                .map(ListenAddr::Tcp)
                .ok_or(SetupError::BadAddress {
                    text,
                    why: "resolves to no address",
                });
        }
        Err(SetupError::BadAddress {
            text: s.into(),
            why: "expected unix:PATH or tcp:HOST:PORT",
        })
    }
}

/// As parsed: `unix:PATH` or `tcp:IP:PORT`.
impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How to listen.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// Required for TCP; optional for a Unix socket (whose permissions already admit only its
    /// owner).
    pub token: Option<Token>,
    /// Serve one controller, then return.
    pub once: bool,
    /// Allow TCP on an address other than loopback.
    pub allow_non_loopback: bool,
    /// The executor program started for each controller, and its arguments (`--fd N` follows).
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Listen until killed (or, with `once`, for one controller). Prints `listening on ADDR` on
/// standard output when ready (with the real port when 0 was asked for).
pub fn listen(addr: &ListenAddr, opts: &ListenOptions) -> Result<(), SetupError> {
    let opts = Arc::new(opts.clone());
    match addr {
        ListenAddr::Tcp(a) => {
            if opts.token.is_none() {
                return Err(SetupError::TcpNeedsToken { addr: *a });
            }
            if !a.ip().is_loopback() && !opts.allow_non_loopback {
                return Err(SetupError::NonLoopback { addr: *a });
            }
            let l = TcpListener::bind(a).map_err(|e| SetupError::io(addr, e))?;
            let local = l.local_addr().map_err(|e| SetupError::io(addr, e))?;
            ready(&ListenAddr::Tcp(local));
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if session(Conn::from(c), &opts, opts.once) {
                    return Ok(());
                }
            }
        }
        ListenAddr::Unix(p) => {
            remove_stale_socket(p)?;
            // Owner-only from the start: no window in which others could connect.
            let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
            let l = UnixListener::bind(p);
            rustix::process::umask(old);
            let l = l.map_err(|e| SetupError::io(addr, e))?;
            ready(addr);
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if session(Conn::from(c), &opts, opts.once) {
                    let _ = std::fs::remove_file(p);
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn ready(addr: &ListenAddr) {
    use std::io::Write;
    let mut o = std::io::stdout();
    let _ = writeln!(o, "listening on {addr}");
    let _ = o.flush();
}

/// Remove a socket file left by a listener that is gone; refuse to touch anything else.
fn remove_stale_socket(p: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(p).is_ok() {
                return Err(SetupError::SocketInUse { path: p.into() });
            }
            std::fs::remove_file(p)
                .map_err(|e| SetupError::io(format_args!("unix:{}", p.display()), e))
        }
        Ok(_) => Err(SetupError::NotASocket { path: p.into() }),
        Err(_) => Ok(()),
    }
}

/// Handle one connection: in this thread when `once` (returns true when done), otherwise in a
/// thread of its own (returns false at once).
fn session(conn: Conn, opts: &Arc<ListenOptions>, once: bool) -> bool {
    let opts = Arc::clone(opts);
    let run = move || {
        if let Err(e) = relay(conn, &opts) {
            eprintln!("kiln-executor: session ended: {e}");
        }
    };
    if once {
        run();
        true
    } else {
        std::thread::spawn(run);
        false
    }
}

/// Most connections that may be waiting to authenticate at once (each holds a thread for up to
/// the handshake timeout); more are closed at once.
pub const MAX_UNAUTHENTICATED: usize = 32;

/// Counts a connection among those not yet authenticated, while it lives.
struct Unauthenticated;

static UNAUTHENTICATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Unauthenticated {
    fn enter() -> Option<Unauthenticated> {
        use std::sync::atomic::Ordering;
        let n = UNAUTHENTICATED.fetch_add(1, Ordering::SeqCst);
        if n >= MAX_UNAUTHENTICATED {
            UNAUTHENTICATED.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Unauthenticated)
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        UNAUTHENTICATED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why a listener's session ended early. The listener prints it; a peer that is refused is
/// told the same text. Private: no caller of the library meets one.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("more than {MAX_UNAUTHENTICATED} connections are waiting to authenticate; closed one")]
    TooManyWaiting,
    #[error("refused a peer of uid {uid}")]
    WrongUser { uid: u32 },
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("standard I/O descriptors missing")]
    StdioMissing,
    #[error("cannot start the executor: {0}")]
    Spawn(std::io::Error),
    /// The executor process started but did not complete its handshake with us.
    #[error("the executor process failed to start: {0}")]
    ExecutorFailed(kiln_target::Error),
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        error: std::io::Error,
    },
}

/// Authenticate the controller on `conn`, start its executor process, and welcome the
/// controller; the connection to the process, and the process.
fn admit(conn: &mut Conn, opts: &ListenOptions) -> Result<(Conn, Child), SessionError> {
    let waiting = Unauthenticated::enter().ok_or(SessionError::TooManyWaiting)?;
    if conn.is_unix() {
        // Only our own user, even if the socket's permissions were widened.
        let cred =
            rustix::net::sockopt::socket_peercred(conn.fd()).map_err(|e| SessionError::Io {
                what: "the peer's credentials",
                error: e.into(),
            })?;
        if cred.uid != rustix::process::getuid() {
            let _ = conn.send(&Welcome::Refused("wrong user".into()), &[]);
            let uid = cred.uid.as_raw();
            return Err(SessionError::WrongUser { uid });
        }
    }
    // Nothing is started, and nothing but the hello is read, before the peer has proved itself.
    let greeted = greet(conn, opts.token.as_ref())?;
    drop(waiting);
    let forward = greeted.stdio.is_empty();
    let mut cmd = Command::new(&opts.program);
    cmd.args(&opts.args);
    if forward {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    } else {
        let mut fds = greeted.stdio.into_iter();
        let (Some(i), Some(o), Some(e)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(SessionError::StdioMissing);
        };
        cmd.stdin(Stdio::from(i))
            .stdout(Stdio::from(o))
            .stderr(Stdio::from(e));
    }
    let (mut child_conn, mut child) = spawn_child(&mut cmd).map_err(SessionError::Spawn)?;
    let mut handshake = match client_handshake(&mut child_conn, &Options::default()) {
        Ok(h) => h,
        Err(e) => {
            let e = SessionError::ExecutorFailed(e);
            let _ = conn.send(&Welcome::Refused(e.to_string()), &[]);
            abandon(&child_conn, &mut child);
            return Err(e);
        }
    };
    handshake.shared_memory &= conn.is_unix();
    handshake.forwards_output = forward;
    let mac = opts
        .token
        .as_ref()
        .map(|t| t.server_proof(&greeted.nonce, &greeted.hello.nonce));
    let _ = conn.send(&Welcome::Accepted { handshake, mac }, &[]);
    Ok((child_conn, child))
}

/// Stop an executor process we started and will not use.
fn abandon(child_conn: &Conn, child: &mut Child) {
    child_conn.shutdown();
    let _ = child.kill();
    let _ = child.wait();
}

fn relay(mut conn: Conn, opts: &ListenOptions) -> Result<(), SessionError> {
    let (mut child_conn, mut child) = admit(&mut conn, opts)?;
    let _ = conn.set_read_timeout(None);
    let clones = conn
        .try_clone()
        .and_then(|to_controller| Ok((to_controller, child_conn.try_clone()?)));
    let (to_controller, mut child_in) = match clones {
        Ok(c) => c,
        Err(error) => {
            abandon(&child_conn, &mut child);
            return Err(SessionError::Io {
                what: "cloning the connections",
                error,
            });
        }
    };
    let writer = Arc::new(Mutex::new(to_controller));
    let unix = conn.is_unix();

    // Controller → executor. When the controller goes, the executor's channel closes and it
    // leaves without running anything further.
    let mut up = conn;
    let upward = std::thread::spawn(move || {
        loop {
            let Ok(f) = up.recv(MAX_FRAME) else { break };
            if child_in.send_bytes(&frame_bytes(&f), &[]).is_err() {
                break;
            }
        }
        child_in.shutdown();
        up.shutdown();
    });
    // The program's output, when it is not the controller's own.
    let mut outputs = Vec::new();
    for (stream, pipe) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            2u8,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let w = Arc::clone(&writer);
        outputs.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = Message::Output {
                            stream,
                            bytes: buf[..n].to_vec(),
                        };
                        if let Ok(mut w) = w.lock() {
                            let _ = w.send(&msg, &[]);
                        }
                    }
                }
            }
        }));
    }
    // Executor → controller, descriptors included (shared slabs) on a Unix socket.
    loop {
        let Ok(f) = child_conn.recv(MAX_FRAME) else {
            break;
        };
        let fds: Vec<BorrowedFd<'_>> = if unix {
            f.fds.iter().map(|d| d.as_fd()).collect()
        } else {
            Vec::new()
        };
        let sent = match writer.lock() {
            Ok(mut w) => w.send_bytes(&frame_bytes(&f), &fds).is_ok(),
            Err(_) => false, // a writer panicked: the controller gets nothing more
        };
        if !sent {
            break;
        }
    }
    child_conn.shutdown();
    for o in outputs {
        let _ = o.join();
    }
    let report = child
        .wait()
        .map(ExitReport::from_status)
        .unwrap_or(ExitReport::Unknown);
    if let Ok(mut w) = writer.lock() {
        let _ = w.send(&Message::Exited(report), &[]);
        w.shutdown();
    }
    let _ = upward.join();
    Ok(())
}

fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + f.body.len());
    v.extend_from_slice(&(f.body.len() as u32).to_le_bytes());
    v.extend_from_slice(&f.body);
    v
}

//! What can go wrong outside a session's requests, as types a program can act on.
//!
//! Two enums, because they are met at different moments by different callers:
//! - [`SetupError`]: once, before anything listens or connects: tokens, addresses, the
//!   listener's socket. The fix is in the configuration (a file's mode, an option), and the
//!   program that gets one stops or asks its user.
//! - [`HandshakeError`]: per connection, in the executor's greeting of a controller. A listener
//!   logs it and goes on listening for the next; the peer is told the same text.
//!
//! A caller of one never sees the other's variants. Requests of a running session fail with
//! [`kiln_target::Error`], as in process; the controller's side of the handshake does too
//! ([`kiln_target::Error::Channel`]), since it is part of reaching an executor.
//!
//! As in `kiln::Error`, an I/O error is part of the message and not a separate
//! [`std::error::Error::source`], so that error chains (`{:#}`) do not print it twice; the
//! `error` fields keep it for a program to inspect (`error.kind()`).

use crate::proto::PROTOCOL_VERSION;
use crate::wire::WireError;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a token came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Bytes given to [`crate::Token::new`].
    Given,
    /// A token file ([`crate::Token::from_file`]).
    File(PathBuf),
    /// The `KILN_TOKEN` environment variable ([`crate::Token::from_env`]).
    Env,
}

impl TokenOrigin {
    fn prefix(&self) -> String {
        match self {
            TokenOrigin::Given => String::new(),
            TokenOrigin::File(p) => format!("{}: ", p.display()),
            TokenOrigin::Env => format!("{}: ", crate::auth::TOKEN_ENV),
        }
    }
}

/// A token, an address or a listener that cannot be set up.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The token is shorter than [`crate::auth::MIN_TOKEN_LEN`] bytes (surrounding whitespace
    /// not counted).
    #[error("{}the token is {len} bytes; at least {} are required", .origin.prefix(), crate::auth::MIN_TOKEN_LEN)]
    TokenTooShort { len: usize, origin: TokenOrigin },
    /// The token file may be read by its group or others (`mode`: its permission bits).
    #[error("{}: the token file is readable by others (mode {mode:o}); chmod 600 it", .path.display())]
    TokenFileMode { path: PathBuf, mode: u32 },
    /// An operation on `what` (a token file's path, `unix:PATH`, `tcp:ADDR`, `--fd N`, ...)
    /// failed.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// `text` is not an address of the form needed.
    #[error("{text:?}: {why}")]
    BadAddress { text: String, why: &'static str },
    /// `tcp:HOST:PORT` whose host or port does not resolve.
    #[error("{text:?}: {error}")]
    Resolve { text: String, error: std::io::Error },
    /// `text` is not a memory mode.
    #[error("{text:?}: expected shared, copy or auto")]
    BadMemoryMode { text: String },
    /// `--fd` was given something other than a descriptor number.
    #[error("--fd {text:?}: not a descriptor number")]
    BadFd { text: String },
    /// A TCP listener was asked for without a token: anyone who can reach the port could run
    /// code.
    #[error(
        "tcp:{addr}: a TCP listener needs a token (--token-file or {})",
        crate::auth::TOKEN_ENV
    )]
    TcpNeedsToken { addr: SocketAddr },
    /// A TCP listener on an address other than loopback, without `allow_non_loopback`.
    #[error(
        "tcp:{addr} is not a loopback address; pass --allow-non-loopback to accept \
         controllers from other hosts (traffic is not encrypted: prefer an SSH tunnel)"
    )]
    NonLoopback { addr: SocketAddr },
    /// Another listener answers on the socket path.
    #[error("unix:{}: another listener is there", .path.display())]
    SocketInUse { path: PathBuf },
    /// Something other than a socket is at the socket path; it is left alone.
    #[error("unix:{}: exists and is not a socket", .path.display())]
    NotASocket { path: PathBuf },
}

impl SetupError {
    pub(crate) fn io(what: impl std::fmt::Display, error: std::io::Error) -> SetupError {
        SetupError::Io {
            what: what.to_string(),
            error,
        }
    }
}

/// The executor's greeting of a controller failed ([`crate::server::greet`]).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The system's random source failed.
    #[error("no random nonce: {0}")]
    Nonce(std::io::Error),
    /// The connection refused a read timeout (the hello must come within
    /// [`crate::server::HANDSHAKE_TIMEOUT`]).
    #[error("setting the handshake timeout: {0}")]
    SetTimeout(std::io::Error),
    /// Our hello could not be sent (the peer is gone).
    #[error("sending hello: {0}")]
    SendHello(WireError),
    /// The controller's hello did not arrive (closed, timed out, too large).
    #[error("reading the controller's hello: {0}")]
    ReadHello(WireError),
    /// The controller's hello arrived but is not one.
    #[error("bad hello: {0}")]
    BadHello(WireError),
    /// The peer's hello lacks the protocol's magic: it is not a kiln controller.
    #[error("the peer is not a kiln controller")]
    NotKiln,
    /// The controller speaks another protocol version.
    #[error("protocol version {theirs} is not this executor's {PROTOCOL_VERSION}")]
    Version { theirs: u32 },
    /// The controller did not prove it holds the token.
    #[error("authentication failed")]
    AuthenticationFailed,
}

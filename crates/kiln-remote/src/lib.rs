//! Kiln out of process: the controller links, an executor process runs.
//!
//! - [`proto`]: the messages; [`wire`]: framing (length-prefixed postcard, size limits,
//!   descriptors over Unix sockets); [`auth`]: challenge–response with a shared secret.
//! - [`RemoteExecutor`]: the controller side, an [`kiln_target::Executor`] like the in-process
//!   one, reached by spawning `kiln-executor` or connecting to a listening one.
//! - [`server`]: the executor side, the same target runtime that runs code in process;
//!   [`listen`]: a listener that authenticates controllers and gives each a process of its own.
//!
//! The protocol is described in `docs/protocol.md`.
#![forbid(unsafe_code)]

pub mod auth;
mod book;
pub mod client;
mod error;
pub mod listen;
mod mux;
pub mod proto;
pub mod server;
pub mod wire;

pub use auth::Token;
pub use client::{Endpoint, MemoryMode, Options, RemoteExecutor};
pub use error::{HandshakeError, SetupError, TokenOrigin};
pub use listen::{ListenAddr, ListenOptions};
pub use proto::ExitReport;

const USAGE: &str = "\
kiln-executor: runs code linked by a kiln controller in this process

Usage:
  kiln-executor --listen unix:PATH [--token-file FILE] [--once]
  kiln-executor --listen tcp:HOST:PORT (--token-file FILE | KILN_TOKEN=...) [--once] [--allow-non-loopback]
  kiln-executor --fd N      (serve the controller on inherited socket N; `kiln run --executor spawn` does this)

A Unix socket is created owner-only and admits only this user. A TCP listener requires a shared
secret of at least 16 bytes (from --token-file, mode 600, or KILN_TOKEN) and binds to loopback
unless --allow-non-loopback is given; traffic is not encrypted. Each controller gets a fresh
executor process; the listener itself runs no JIT'd code.
";

/// The `kiln-executor` command. `prefix`: the arguments that make the running program act as
/// an executor again (empty for `kiln-executor` itself), for the processes a listener starts.
pub fn executor_main(args: &[String], prefix: &[String]) -> i32 {
    let mut fd = None;
    let mut listen_at = None;
    let mut token_file = None;
    let mut once = false;
    let mut non_loopback = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fd" => fd = it.next().cloned(),
            "--listen" => listen_at = it.next().cloned(),
            "--token-file" => token_file = it.next().cloned(),
            "--once" => once = true,
            "--allow-non-loopback" => non_loopback = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return 0;
            }
            "-V" | "--version" => {
                println!(
                    "kiln-executor {} (protocol {})",
                    env!("CARGO_PKG_VERSION"),
                    proto::PROTOCOL_VERSION
                );
                return 0;
            }
            other => {
                eprintln!("kiln-executor: unknown argument {other:?}\n\n{USAGE}");
                return 2;
            }
        }
    }
    if let Some(fd) = fd {
        return match inherited_conn(&fd) {
            Ok(conn) => server::serve(conn),
            Err(e) => {
                eprintln!("kiln-executor: {e}");
                2
            }
        };
    }
    let Some(at) = listen_at else {
        eprintln!("kiln-executor: nothing to do\n\n{USAGE}");
        return 2;
    };
    let r = (|| -> Result<(), SetupError> {
        let addr: ListenAddr = at.parse()?;
        let token = match (token_file, Token::from_env()) {
            (Some(f), _) => Some(Token::from_file(std::path::Path::new(&f))?),
            (None, Some(t)) => Some(t?),
            (None, None) => None,
        };
        let program = std::env::current_exe().map_err(|e| SetupError::io("own executable", e))?;
        listen::listen(
            &addr,
            &ListenOptions {
                token,
                once,
                allow_non_loopback: non_loopback,
                program,
                args: prefix.to_vec(),
            },
        )
    })();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln-executor: {e}");
            1
        }
    }
}

/// The connection a spawning controller handed us as descriptor `text`.
fn inherited_conn(text: &str) -> Result<wire::Conn, SetupError> {
    let n: i32 = text.parse().map_err(|_| SetupError::BadFd {
        text: text.to_string(),
    })?;
    let fd = kiln_target::process::take_inherited_fd(n)
        .map_err(|e| SetupError::io(format_args!("--fd {n}"), e))?;
    Ok(wire::Conn::from(std::os::unix::net::UnixStream::from(fd)))
}

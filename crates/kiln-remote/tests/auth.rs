//! Who may run code: a TCP listener admits only controllers that prove they hold the token,
//! starts nothing and runs nothing for the others (whatever they send), and stays up for the
//! next; the controller admits only executors that prove the same; a listener refuses to start
//! in an unsafe configuration; a Unix socket is owner-only.

mod common;

use common::*;
use kiln_remote::auth::Token;
use kiln_remote::proto::*;
use kiln_remote::wire::{self, Conn, WireError, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_remote::{
    Endpoint, ExitReport, HandshakeError, ListenAddr, ListenOptions, MemoryMode, Options,
    RemoteExecutor, SetupError, TokenOrigin,
};
use kiln_target::{ExecutorAddr, TargetInfo};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A TCP listener with a token, a marker program, and a library whose constructor writes
/// `bad_marker` (which no unauthenticated peer may ever get loaded).
struct Setup {
    dir: tempfile::TempDir,
    listener: Listener,
    token: Token,
    program: PathBuf,
    bad_library: PathBuf,
    bad_marker: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempdir();
        let (tf, token) = token_file(dir.path(), "token", 0o600);
        let program = compile_c(dir.path(), "marker", MARKER_PROGRAM);
        let bad_marker = dir.path().join("bad-marker");
        let bad_library = mark_library(dir.path(), "bad", &bad_marker);
        let listener = Listener::start(
            dir.path(),
            &[
                "--listen",
                "tcp:127.0.0.1:0",
                "--token-file",
                tf.to_str().unwrap(),
            ],
        );
        assert!(
            listener.addr.starts_with("tcp:127.0.0.1:"),
            "{}",
            listener.addr
        );
        Setup {
            dir,
            listener,
            token,
            program,
            bad_library,
            bad_marker,
        }
    }

    fn opts(&self, token: Option<Token>) -> Options {
        Options {
            token,
            ..Options::default()
        }
    }

    /// A correct controller runs the marker program: proof that the listener is up and works.
    fn good_client_runs(&mut self, what: &str) {
        self.listener.assert_alive(what);
        let ex = Arc::new(
            RemoteExecutor::connect(
                &self.listener.endpoint(),
                self.opts(Some(self.token.clone())),
            )
            .unwrap_or_else(|e| panic!("{what}: the right token was refused: {e}")),
        );
        assert!(!ex.shares_memory(), "memory cannot be shared over TCP");
        let s = linked(ex.clone(), &self.program);
        let marker = self
            .dir
            .path()
            .join(format!("ran-{}", what.replace(' ', "-")));
        let st = s
            .run_main("main", &["marker".into(), marker.display().to_string()])
            .unwrap_or_else(|e| panic!("{what}: run_main: {e}"));
        assert_eq!(st, 42, "{what}");
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap_or_default(),
            "ran\n",
            "{what}: the program did not run"
        );
        assert_eq!(ex.exit(st).expect("exit"), ExitReport::Code(42), "{what}");
        drop(s);
    }

    /// Nothing ran for a refused peer, and the listener started no process for it.
    fn assert_nothing_ran(&mut self, what: &str) {
        assert!(
            !self.bad_marker.exists(),
            "{what}: an unauthenticated peer got code run (its library was loaded)"
        );
        let kids = children_of(self.listener.pid());
        assert!(
            kids.is_empty(),
            "{what}: the listener started processes {kids:?} for an unauthenticated peer"
        );
        self.listener.assert_alive(what);
    }

    fn raw(&self) -> Conn {
        let c = TcpStream::connect(self.listener.tcp_addr()).expect("connecting");
        c.set_read_timeout(Some(HANG)).unwrap();
        Conn::from(c)
    }

    /// Requests an attacker would pipeline after its hello: load the marker library, run.
    fn attack_requests(&self) -> Vec<u8> {
        let mut b = wire::encode(&Request {
            id: 1,
            writes: Vec::new(),
            call: Call::LoadLibrary(self.bad_library.display().to_string()),
        })
        .unwrap();
        b.extend(
            wire::encode(&Request {
                id: 2,
                writes: Vec::new(),
                call: Call::RunMain {
                    entry: ExecutorAddr(0x1000),
                    args: vec!["x".into()],
                },
            })
            .unwrap(),
        );
        b
    }
}

fn read_hello(conn: &mut Conn) -> ServerHello {
    let h: ServerHello = conn
        .recv(MAX_HELLO_FRAME)
        .and_then(|f| f.decode())
        .expect("the listener's hello");
    assert_eq!(h.magic, MAGIC);
    assert_eq!(h.version, PROTOCOL_VERSION);
    assert!(h.auth, "a TCP listener must ask for the token");
    h
}

/// After a refused hello: the peer gets `Welcome::Refused` (unless the connection was reset
/// first) and nothing else, certainly no reply to a request.
fn expect_refused(conn: &mut Conn, what: &str) -> Option<String> {
    let mut refused = None;
    let mut n = 0;
    loop {
        match conn.recv(MAX_FRAME) {
            Ok(f) => {
                n += 1;
                match (n, f.decode::<Welcome>()) {
                    (1, Ok(Welcome::Refused(why))) => refused = Some(why),
                    (1, Ok(Welcome::Accepted { .. })) => panic!("{what}: accepted"),
                    _ => panic!(
                        "{what}: frame {n} after the hello ({} bytes): {:?}",
                        f.body.len(),
                        f.decode::<Message>()
                    ),
                }
            }
            Err(WireError::Closed) => return refused,
            Err(WireError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the listener neither refused nor closed within {HANG:?}")
            }
            // A reset: the listener closed with our unread requests in its buffer.
            Err(_) => return refused,
        }
    }
}

#[test]
fn right_token_runs_the_program() {
    let mut s = Setup::new();
    s.good_client_runs("first session");
    // Loading a library runs its constructor: the marker mechanism of the refused cases works.
    let good_marker = s.dir.path().join("good-marker");
    let lib = mark_library(s.dir.path(), "good", &good_marker);
    let ex = RemoteExecutor::connect(&s.listener.endpoint(), s.opts(Some(s.token.clone())))
        .expect("connect");
    kiln_target::Executor::load_library(&ex, &lib).expect("loading the library");
    assert_eq!(
        std::fs::read_to_string(&good_marker).unwrap_or_default(),
        "loaded\n"
    );
    assert_eq!(ex.exit(0).expect("exit"), ExitReport::Code(0));
    s.good_client_runs("second session");
}

#[test]
fn no_token_is_refused() {
    let mut s = Setup::new();
    // The library controller refuses to go on without a token.
    match RemoteExecutor::connect(&s.listener.endpoint(), s.opts(None)) {
        Ok(_) => panic!("connected without a token"),
        Err(e) => assert!(e.to_string().contains("token"), "{e}"),
    }
    // A raw peer says hello without a proof, then asks for code to run.
    let mut c = s.raw();
    let _ = read_hello(&mut c);
    let mut bytes = wire::encode(&ClientHello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        nonce: [7; 32],
        mac: None,
        stdio_attached: false,
    })
    .unwrap();
    bytes.extend(s.attack_requests());
    let _ = c.send_bytes(&bytes, &[]);
    if let Some(why) = expect_refused(&mut c, "no proof") {
        assert!(why.contains("authentication"), "{why}");
    }
    s.assert_nothing_ran("no proof");
    s.good_client_runs("after a peer without a token");
}

#[test]
fn wrong_token_is_refused() {
    let mut s = Setup::new();
    let wrong = Token::new(b"not-the-right-token-at-all").unwrap();
    match RemoteExecutor::connect(&s.listener.endpoint(), s.opts(Some(wrong.clone()))) {
        Ok(_) => panic!("connected with the wrong token"),
        Err(e) => assert!(e.to_string().contains("authentication failed"), "{e}"),
    }
    // Raw: a proof made with the wrong token, a proof of the wrong length... each with
    // requests pipelined behind it.
    for (what, mac) in [
        ("wrong-token proof", Some(true)),
        ("all-zero proof", Some(false)),
    ] {
        let mut c = s.raw();
        let h = read_hello(&mut c);
        let cn = [9u8; 32];
        let mac = match mac {
            Some(true) => wrong.client_proof(&h.nonce, &cn),
            _ => [0; 32],
        };
        let mut bytes = wire::encode(&ClientHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            nonce: cn,
            mac: Some(mac),
            stdio_attached: false,
        })
        .unwrap();
        bytes.extend(s.attack_requests());
        let _ = c.send_bytes(&bytes, &[]);
        if let Some(why) = expect_refused(&mut c, what) {
            assert!(why.contains("authentication"), "{what}: {why}");
        }
        s.assert_nothing_ran(what);
    }
    // The server's proof is not a client's proof (direction tags): reflecting fails.
    let mut c = s.raw();
    let h = read_hello(&mut c);
    let cn = [5u8; 32];
    let reflected = s.token.server_proof(&h.nonce, &cn);
    assert_ne!(reflected, s.token.client_proof(&h.nonce, &cn));
    let mut bytes = wire::encode(&ClientHello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        nonce: cn,
        mac: Some(reflected),
        stdio_attached: false,
    })
    .unwrap();
    bytes.extend(s.attack_requests());
    let _ = c.send_bytes(&bytes, &[]);
    expect_refused(&mut c, "a server proof as the client's");
    s.assert_nothing_ran("a server proof as the client's");
    s.good_client_runs("after wrong tokens");
}

#[test]
fn request_without_handshake_is_refused() {
    let mut s = Setup::new();
    // A peer that ignores the handshake: its first frame is a request to run code.
    let mut c = s.raw();
    let mut bytes = wire::encode(&Request {
        id: 1,
        writes: Vec::new(),
        call: Call::RunMain {
            entry: ExecutorAddr(0x401000),
            args: vec!["x".into()],
        },
    })
    .unwrap();
    bytes.extend(s.attack_requests());
    c.send_bytes(&bytes, &[]).expect("sending");
    // It gets the listener's hello (sent on connect), then a refusal at most.
    let _ = read_hello(&mut c);
    expect_refused(&mut c, "a request instead of a hello");
    s.assert_nothing_ran("a request instead of a hello");

    // The same with the library-loading request first.
    let mut c = s.raw();
    c.send_bytes(&s.attack_requests(), &[]).expect("sending");
    let _ = read_hello(&mut c);
    expect_refused(&mut c, "LoadLibrary instead of a hello");
    s.assert_nothing_ran("LoadLibrary instead of a hello");

    // Garbage, an oversized first frame, and a peer that connects and says nothing and leaves.
    for (what, bytes) in [
        ("garbage", vec![0xffu8; 64]),
        ("an oversized hello", {
            let mut b = ((MAX_HELLO_FRAME + 1) as u32).to_le_bytes().to_vec();
            b.extend(vec![0; 128]);
            b
        }),
        ("nothing", Vec::new()),
    ] {
        let mut c = s.raw();
        if !bytes.is_empty() {
            c.send_bytes(&bytes, &[]).expect("sending");
        }
        let _ = read_hello(&mut c);
        c.shutdown();
        s.assert_nothing_ran(what);
    }
    s.good_client_runs("after peers that skipped the handshake");
}

#[test]
fn replayed_hello_is_refused() {
    let mut s = Setup::new();
    // A successful session, its ClientHello recorded on the way.
    let mut c = s.raw();
    let h1 = read_hello(&mut c);
    let cn = [0x3c; 32];
    let recorded = wire::encode(&ClientHello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        nonce: cn,
        mac: Some(s.token.client_proof(&h1.nonce, &cn)),
        stdio_attached: false,
    })
    .unwrap();
    c.send_bytes(&recorded, &[]).expect("sending");
    let w: Welcome = c
        .recv(MAX_HELLO_FRAME * 4)
        .and_then(|f| f.decode())
        .expect("welcome");
    match w {
        Welcome::Accepted { mac, .. } => {
            let m = mac.expect("the listener proves it holds the token");
            assert!(
                s.token.verify_server(&h1.nonce, &cn, &m),
                "the listener's proof"
            );
        }
        Welcome::Refused(why) => panic!("the genuine hello was refused: {why}"),
    }
    c.shutdown();
    drop(c);
    let pid = s.listener.pid();
    wait_until("the recorded session's process is gone", || {
        children_of(pid).is_empty()
    });

    // The replay: the same bytes to a new connection (a new nonce).
    let mut c = s.raw();
    let h2 = read_hello(&mut c);
    assert_ne!(h1.nonce, h2.nonce, "the listener reused its nonce");
    let mut bytes = recorded.clone();
    bytes.extend(s.attack_requests());
    let _ = c.send_bytes(&bytes, &[]);
    if let Some(why) = expect_refused(&mut c, "replayed hello") {
        assert!(why.contains("authentication"), "{why}");
    }
    s.assert_nothing_ran("replayed hello");
    s.good_client_runs("after a replay");
}

// ---- the controller's side: the executor must prove it holds the token too ----

/// A fake executor on a loopback port: it greets with `auth`, reads the controller's hello,
/// and welcomes it with `mac`. Returns the address and a handle yielding the hello it got.
fn fake_executor(
    auth: bool,
    mac: Option<[u8; 32]>,
) -> (String, std::thread::JoinHandle<Option<ClientHello>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().ok()?;
        s.set_read_timeout(Some(HANG)).ok()?;
        let mut c = Conn::from(s);
        c.send(
            &ServerHello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                auth,
                nonce: [0x77; 32],
            },
            &[],
        )
        .ok()?;
        let hello: ClientHello = c.recv(MAX_HELLO_FRAME).ok()?.decode().ok()?;
        let _ = c.send(
            &Welcome::Accepted {
                handshake: Handshake {
                    info: TargetInfo {
                        triple: "x86_64-unknown-linux-gnu".into(),
                        page_size: 4096,
                        pid: 1,
                    },
                    bootstrap: Vec::new(),
                    shared_memory: false,
                    forwards_output: true,
                    slabs: true,
                },
                mac,
            },
            &[],
        );
        // Hold the connection until the controller is done with it.
        let _ = c.recv(MAX_FRAME);
        Some(hello)
    });
    (addr, h)
}

#[test]
fn executor_that_cannot_prove_the_token_is_refused() {
    let token = Token::new(b"kiln-test-secret-0123456789abcdef").unwrap();
    for (what, mac) in [("no proof", None), ("a forged proof", Some([0xab; 32]))] {
        let (addr, h) = fake_executor(true, mac);
        let r = RemoteExecutor::connect(
            &Endpoint::Tcp(addr),
            Options {
                token: Some(token.clone()),
                ..Options::default()
            },
        );
        match r {
            Ok(_) => panic!("{what}: accepted an executor that did not prove the token"),
            Err(e) => assert!(e.to_string().contains("prove"), "{what}: {e}"),
        }
        let hello = h.join().unwrap().expect("the fake executor got a hello");
        assert!(hello.mac.is_some(), "{what}: the controller sent its proof");
    }
}

/// An impostor on the port (any local user can bind a loopback port first) claims to need no
/// token. A genuine TCP listener always asks for one (it refuses to start without), so a
/// controller holding a token must not accept an executor that proves nothing.
#[test]
fn executor_that_skips_authentication_over_tcp_is_refused() {
    let token = Token::new(b"kiln-test-secret-0123456789abcdef").unwrap();
    let (addr, h) = fake_executor(false, None);
    let r = RemoteExecutor::connect(
        &Endpoint::Tcp(addr.clone()),
        Options {
            token: Some(token),
            ..Options::default()
        },
    );
    let accepted = r.is_ok();
    drop(r);
    let _ = h.join();
    assert!(
        !accepted,
        "a controller holding a token accepted the executor at tcp:{addr}, which claimed to \
         need no authentication and proved nothing (downgrade)"
    );
}

#[test]
fn token_proofs_are_bound_to_direction_and_nonces() {
    let t = Token::new(b"  0123456789abcdef  \n").expect("16 bytes after trimming");
    let other = Token::new(b"0123456789abcdeF").unwrap();
    let (sn, cn) = ([1u8; 32], [2u8; 32]);
    let c = t.client_proof(&sn, &cn);
    let s = t.server_proof(&sn, &cn);
    assert_ne!(c, s);
    assert!(t.verify_client(&sn, &cn, &c));
    assert!(t.verify_server(&sn, &cn, &s));
    assert!(
        !t.verify_client(&sn, &cn, &s),
        "a server proof passes as a client's"
    );
    assert!(
        !t.verify_server(&sn, &cn, &c),
        "a client proof passes as a server's"
    );
    assert!(!t.verify_client(&cn, &sn, &c), "nonces swapped");
    assert!(!t.verify_client(&[3; 32], &cn, &c), "another server nonce");
    assert!(!other.verify_client(&sn, &cn, &c), "another token");
    assert!(!t.verify_client(&sn, &cn, &c[..31]), "a truncated proof");
    assert!(!t.verify_client(&sn, &cn, &[]), "an empty proof");
    for (bytes, what) in [
        (&b"0123456789abcde"[..], "15 bytes"),
        (b"   0123456789abcde   ", "15 bytes and spaces"),
    ] {
        match Token::new(bytes) {
            Err(SetupError::TokenTooShort {
                len: 15,
                origin: TokenOrigin::Given,
            }) => {}
            r => panic!("{what}: {r:?}"),
        }
    }
    assert!(!format!("{t:?}").contains("0123"), "Debug shows the secret");
}

// ---- listener configuration ----

/// Run `kiln-executor ARGS` expecting it to refuse to start; its stderr.
fn refuses(args: &[&str], env: &[(&str, &str)], what: &str) -> String {
    let mut cmd = Command::new(EXECUTOR);
    cmd.args(args).env_remove(kiln_remote::auth::TOKEN_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{what}: kiln-executor {args:?} ended with {} (expected a refusal); stderr: {stderr}",
        out.status
    );
    assert!(
        !stdout.contains("listening on"),
        "{what}: it listened: {stdout}"
    );
    stderr
}

#[test]
fn listener_refuses_unsafe_configurations() {
    let dir = tempdir();
    let (good, _) = token_file(dir.path(), "token600", 0o600);
    let (open, _) = token_file(dir.path(), "token644", 0o644);
    let (group, _) = token_file(dir.path(), "token640", 0o640);
    let short = dir.path().join("short");
    std::fs::write(&short, b"tooshort\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = dir.path().join("missing");
    let sock = dir.path().join("sock");
    let s = |p: &Path| p.display().to_string();

    let e = refuses(&["--listen", "tcp:127.0.0.1:0"], &[], "TCP without a token");
    assert!(e.contains("token"), "{e}");
    let e = refuses(
        &["--listen", "tcp:127.0.0.1:0"],
        &[(kiln_remote::auth::TOKEN_ENV, "short")],
        "TCP with a short KILN_TOKEN",
    );
    assert!(e.contains("16"), "{e}");
    let e = refuses(
        &["--listen", "tcp:0.0.0.0:0", "--token-file", &s(&good)],
        &[],
        "all interfaces without --allow-non-loopback",
    );
    assert!(e.contains("--allow-non-loopback"), "{e}");
    let e = refuses(
        &["--listen", "tcp:127.0.0.1:0", "--token-file", &s(&open)],
        &[],
        "a token file of mode 644",
    );
    assert!(e.contains("chmod 600") || e.contains("readable"), "{e}");
    let e = refuses(
        &["--listen", "tcp:127.0.0.1:0", "--token-file", &s(&group)],
        &[],
        "a token file of mode 640",
    );
    assert!(e.contains("chmod 600") || e.contains("readable"), "{e}");
    let e = refuses(
        &["--listen", "tcp:127.0.0.1:0", "--token-file", &s(&short)],
        &[],
        "a 8-byte token",
    );
    assert!(e.contains("16"), "{e}");
    refuses(
        &["--listen", "tcp:127.0.0.1:0", "--token-file", &s(&missing)],
        &[],
        "a missing token file",
    );
    refuses(
        &[
            "--listen",
            &format!("unix:{}", s(&sock)),
            "--token-file",
            &s(&open),
        ],
        &[],
        "a Unix listener with a token file of mode 644",
    );
    refuses(
        &["--listen", "tcp:127.0.0.1:0", "--bogus"],
        &[],
        "an unknown option",
    );
    refuses(&[], &[], "no arguments");
    refuses(&["--fd", "1"], &[], "standard output as the channel");
    refuses(
        &["--fd", "12345"],
        &[],
        "a closed descriptor as the channel",
    );
    assert!(!sock.exists(), "a refused listener left its socket");
}

#[test]
fn unix_socket_is_owner_only() {
    let dir = tempdir();
    let sock = dir.path().join("sock");
    // Even with a permissive umask inherited.
    let script = format!(
        "umask 000; exec '{EXECUTOR}' --listen 'unix:{}'",
        sock.display()
    );
    let mut l = Listener::start_with(dir.path(), Command::new("/bin/sh").args(["-c", &script]));
    let meta = std::fs::symlink_metadata(&sock).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o077,
        0,
        "the socket has mode {mode:o}: others may connect"
    );
    // And it serves its owner.
    let ex = RemoteExecutor::connect(&l.endpoint(), Options::default()).expect("connect");
    assert!(ex.shares_memory(), "a Unix socket shares memory by default");
    assert_eq!(ex.exit(3).expect("exit"), ExitReport::Code(3));
    l.assert_alive("after a session");
}

#[test]
fn unix_listener_with_a_token_requires_it() {
    let dir = tempdir();
    let (tf, token) = token_file(dir.path(), "token", 0o600);
    let sock = dir.path().join("sock");
    let mut l = Listener::start(
        dir.path(),
        &[
            "--listen",
            &format!("unix:{}", sock.display()),
            "--token-file",
            tf.to_str().unwrap(),
        ],
    );
    match RemoteExecutor::connect(&l.endpoint(), Options::default()) {
        Ok(_) => panic!("connected without the token"),
        Err(e) => assert!(e.to_string().contains("token"), "{e}"),
    }
    let wrong = Token::new(b"not-the-right-token-at-all").unwrap();
    assert!(RemoteExecutor::connect(
        &l.endpoint(),
        Options {
            token: Some(wrong),
            ..Options::default()
        }
    )
    .is_err());
    assert!(children_of(l.pid()).is_empty());
    let ex = RemoteExecutor::connect(
        &l.endpoint(),
        Options {
            token: Some(token),
            ..Options::default()
        },
    )
    .expect("the right token");
    assert_eq!(ex.exit(0).expect("exit"), ExitReport::Code(0));
    l.assert_alive("after refusals and a session");
}

#[test]
fn socket_path_conflicts_are_refused() {
    let dir = tempdir();
    // A regular file where the socket should go: refused, and left alone.
    let file = dir.path().join("file");
    std::fs::write(&file, b"precious").unwrap();
    let e = refuses(
        &["--listen", &format!("unix:{}", file.display())],
        &[],
        "a regular file at the socket path",
    );
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // A live listener there: the second one refuses, the first still serves.
    let sock = dir.path().join("sock");
    let mut l = Listener::unix(dir.path(), &sock);
    let e = refuses(
        &["--listen", &format!("unix:{}", sock.display())],
        &[],
        "a second listener on a live socket",
    );
    assert!(e.contains("another listener"), "{e}");
    let ex = RemoteExecutor::connect(&l.endpoint(), Options::default()).expect("connect");
    assert_eq!(ex.exit(0).expect("exit"), ExitReport::Code(0));
    l.assert_alive("after a second listener was refused");
}

// ---- typed errors (the same refusals as above, as a program embedding the library sees them) ----

#[test]
fn token_file_errors_are_typed() {
    let dir = tempdir();
    let (open, _) = token_file(dir.path(), "token644", 0o644);
    let e = Token::from_file(&open).expect_err("a token file of mode 644");
    match &e {
        SetupError::TokenFileMode { path, mode } => assert_eq!((path, *mode), (&open, 0o644)),
        e => panic!("a token file of mode 644: {e:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains(&open.display().to_string()) && text.contains("chmod 600"),
        "{text}"
    );
    let short = dir.path().join("short");
    std::fs::write(&short, b"tooshort\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = Token::from_file(&short).expect_err("an 8-byte token file");
    match &e {
        SetupError::TokenTooShort { len, origin } => {
            assert_eq!((*len, origin), (8, &TokenOrigin::File(short.clone())))
        }
        e => panic!("an 8-byte token file: {e:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains(&short.display().to_string()) && text.contains("16"),
        "{text}"
    );
    let missing = dir.path().join("missing");
    match Token::from_file(&missing) {
        Err(SetupError::Io { what, error }) => {
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
            assert_eq!(what, missing.display().to_string());
        }
        r => panic!("a missing token file: {r:?}"),
    }
}

/// `listen` with options that must be refused before anything is bound; it would block
/// listening if it accepted them, so it runs in a thread, waited for up to [`HANG`].
fn listen_refuses(addr: &str, token: Option<Token>, what: &str) -> SetupError {
    let addr: ListenAddr = addr.parse().unwrap_or_else(|e| panic!("{what}: {e}"));
    let opts = ListenOptions {
        token,
        once: true,
        allow_non_loopback: false,
        program: PathBuf::from(EXECUTOR),
        args: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(kiln_remote::listen::listen(&addr, &opts));
    });
    match rx.recv_timeout(HANG) {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("{what}: listen served"),
        Err(_) => panic!("{what}: listen did not refuse within {HANG:?}"),
    }
}

#[test]
fn listener_setup_errors_are_typed() {
    let dir = tempdir();
    let token = Token::new(b"kiln-test-secret-0123456789abcdef").unwrap();
    match listen_refuses("tcp:127.0.0.1:0", None, "TCP without a token") {
        SetupError::TcpNeedsToken { addr } => assert_eq!(addr.to_string(), "127.0.0.1:0"),
        e => panic!("TCP without a token: {e:?}"),
    }
    match listen_refuses("tcp:0.0.0.0:0", Some(token.clone()), "all interfaces") {
        SetupError::NonLoopback { addr } => assert!(addr.ip().is_unspecified(), "{addr}"),
        e => panic!("all interfaces without allow_non_loopback: {e:?}"),
    }
    let file = dir.path().join("file");
    std::fs::write(&file, b"precious").unwrap();
    let at = format!("unix:{}", file.display());
    match listen_refuses(&at, None, "a regular file at the socket path") {
        SetupError::NotASocket { path } => assert_eq!(path, file),
        e => panic!("a regular file at the socket path: {e:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // Someone listens there (the kernel accepts our probe into the backlog).
    let sock = dir.path().join("sock");
    let _held = std::os::unix::net::UnixListener::bind(&sock).expect("binding a socket");
    let at = format!("unix:{}", sock.display());
    match listen_refuses(&at, Some(token), "a live socket") {
        SetupError::SocketInUse { path } => assert_eq!(path, sock),
        e => panic!("a live socket: {e:?}"),
    }
    assert!(sock.exists(), "a live listener's socket was removed");
}

#[test]
fn address_errors_are_typed() {
    for text in ["unix:", "udp:1234", "/tmp/sock"] {
        match text.parse::<ListenAddr>() {
            Err(SetupError::BadAddress { text: t, why }) => {
                assert_eq!(t, text);
                assert!(!why.is_empty());
            }
            r => panic!("listen address {text:?}: {r:?}"),
        }
    }
    // A bare port is loopback's; no port at all does not resolve.
    match "tcp:".parse::<ListenAddr>() {
        Err(SetupError::Resolve { text, .. }) => assert_eq!(text, "tcp:127.0.0.1:"),
        r => panic!("listen address \"tcp:\": {r:?}"),
    }
    for text in ["unix:", "tcp:localhost", "localhost:1234"] {
        match text.parse::<Endpoint>() {
            Err(SetupError::BadAddress { text: t, .. }) => assert_eq!(t, text),
            r => panic!("endpoint {text:?}: {r:?}"),
        }
    }
    match "fast".parse::<MemoryMode>() {
        Err(SetupError::BadMemoryMode { text }) => assert_eq!(text, "fast"),
        r => panic!("memory mode \"fast\": {r:?}"),
    }
    // A listen address prints as it is written.
    for text in ["tcp:127.0.0.1:7", "unix:/tmp/some.sock"] {
        let a: ListenAddr = text.parse().unwrap();
        assert_eq!(a.to_string(), text);
    }
}

/// A controller's hello (the encoded frame), made from the executor's.
type MakeHello = Box<dyn FnOnce(&ServerHello) -> Vec<u8>>;

/// The executor's side of the handshake on a socket pair, against a controller that sends
/// `hello` (built from the executor's hello); the greeting's error and what the peer was told.
fn greet_with(
    token: Option<Token>,
    hello: impl FnOnce(&ServerHello) -> Vec<u8>,
) -> (HandshakeError, Option<String>) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut conn = Conn::from(theirs);
        kiln_remote::server::greet(&mut conn, token.as_ref()).map(|_| ())
    });
    let mut conn = Conn::from(ours);
    conn.set_read_timeout(Some(HANG)).unwrap();
    let h: ServerHello = conn
        .recv(MAX_HELLO_FRAME)
        .and_then(|f| f.decode())
        .expect("the executor's hello");
    conn.send_bytes(&hello(&h), &[]).expect("sending hello");
    let told = match conn.recv(MAX_HELLO_FRAME * 4).and_then(|f| f.decode()) {
        Ok(Welcome::Refused(why)) => Some(why),
        Ok(Welcome::Accepted { .. }) => panic!("greet sent a welcome"),
        Err(_) => None,
    };
    let e = server
        .join()
        .expect("greet panicked")
        .expect_err("greet accepted");
    (e, told)
}

#[test]
fn handshake_errors_are_typed() {
    let token = Token::new(b"kiln-test-secret-0123456789abcdef").unwrap();
    let client = |version: u32, magic: [u8; 8], proof: Option<Token>| {
        move |h: &ServerHello| {
            let cn = [5u8; 32];
            wire::encode(&ClientHello {
                magic,
                version,
                nonce: cn,
                mac: proof.as_ref().map(|t| t.client_proof(&h.nonce, &cn)),
                stdio_attached: false,
            })
            .unwrap()
        }
    };
    let wrong = Token::new(b"not-the-right-token-at-all").unwrap();
    let next = PROTOCOL_VERSION + 1;
    let cases: Vec<(&str, Option<Token>, MakeHello)> = vec![
        ("next version", None, Box::new(client(next, MAGIC, None))),
        (
            "wrong magic",
            None,
            Box::new(client(PROTOCOL_VERSION, *b"NOTKILN!", None)),
        ),
        (
            "wrong token",
            Some(token.clone()),
            Box::new(client(PROTOCOL_VERSION, MAGIC, Some(wrong.clone()))),
        ),
        (
            "no proof",
            Some(token.clone()),
            Box::new(client(PROTOCOL_VERSION, MAGIC, None)),
        ),
        (
            "not a hello",
            None,
            Box::new(|_: &ServerHello| wire::encode(&7u8).unwrap()),
        ),
    ];
    for (what, token, hello) in cases {
        let (e, told) = greet_with(token, hello);
        let ok = match what {
            "next version" => matches!(e, HandshakeError::Version { theirs } if theirs == next),
            "wrong magic" => matches!(e, HandshakeError::NotKiln),
            "wrong token" | "no proof" => matches!(e, HandshakeError::AuthenticationFailed),
            _ => matches!(e, HandshakeError::BadHello(_)),
        };
        assert!(ok, "{what}: {e:?}");
        // The peer is told what the executor logs.
        assert_eq!(told.as_deref(), Some(e.to_string().as_str()), "{what}");
    }
}

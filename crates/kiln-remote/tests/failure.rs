//! A live executor against a misbehaving controller: malformed frames, a wrong protocol version,
//! requests it must refuse, and a controller that goes away (cleanly, abruptly, while code
//! runs, or killed outright). The executor answers what it can, says why it stops when it
//! stops, and always ends with an exit status of its own, never a crash.

mod common;

use common::*;
use kiln_remote::client::{client_handshake, spawn_child};
use kiln_remote::proto::*;
use kiln_remote::wire::{self, Conn, WireError, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_remote::{Options, RemoteExecutor};
use kiln_target::{AllocId, ExecutorAddr, FinalizeRequest, MemProt, Placement, Segment, SlabId};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

/// A spawned `kiln-executor --fd N`, handshake done; its standard output and error are not
/// ours (piped to nowhere), so its complaints do not clutter the test output.
fn executor() -> (Conn, Child) {
    let (mut conn, child) = raw_executor();
    client_handshake(&mut conn, &Options::default()).expect("handshake");
    (conn, child)
}

/// A spawned `kiln-executor --fd N`, before the handshake.
fn raw_executor() -> (Conn, Child) {
    let _g = spawn_lock();
    spawn_child(
        Command::new(EXECUTOR)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("starting kiln-executor")
}

/// The exit status of an executor, which must be an exit (with a code), not a signal.
fn exit_code(child: &mut Child, what: &str) -> i32 {
    let st: ExitStatus = wait_child(child, what);
    match st.code() {
        Some(c) => c,
        None => panic!(
            "{what}: the executor was killed by signal {:?} instead of exiting",
            st.signal()
        ),
    }
}

/// Read frames until the connection ends; the messages that decoded.
fn drain(conn: &mut Conn) -> Vec<Message> {
    conn.set_read_timeout(Some(HANG)).expect("timeout");
    let mut out = Vec::new();
    loop {
        match conn.recv(MAX_FRAME) {
            Ok(f) => out.push(
                f.decode::<Message>()
                    .expect("the executor sent a valid message"),
            ),
            Err(WireError::Closed) => return out,
            Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the executor neither answered nor closed within {HANG:?}")
            }
            Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the executor neither answered nor closed within {HANG:?}")
            }
            Err(_) => return out,
        }
    }
}

fn protocol_error(msgs: &[Message], what: &str) -> String {
    match msgs {
        [Message::ProtocolError(why)] => why.clone(),
        other => panic!("{what}: expected one ProtocolError, got {other:?}"),
    }
}

fn request(id: u64, call: Call) -> Request {
    Request {
        id,
        writes: Vec::new(),
        call,
    }
}

/// Send a request and read its reply.
fn call(conn: &mut Conn, id: u64, call: Call) -> Result<Value, String> {
    call_with(conn, request(id, call))
}

fn call_with(conn: &mut Conn, req: Request) -> Result<Value, String> {
    let id = req.id;
    conn.send(&req, &[]).expect("sending a request");
    conn.set_read_timeout(Some(HANG)).expect("timeout");
    let f = conn
        .recv(MAX_FRAME)
        .expect("a reply (the executor is alive)");
    match f.decode::<Message>().expect("a valid message") {
        Message::Reply { id: rid, result } => {
            assert_eq!(rid, id, "reply to the wrong request");
            result
        }
        other => panic!("expected a reply to {id}, got {other:?}"),
    }
}

fn lookup(conn: &mut Conn, id: u64, name: &str) -> Option<ExecutorAddr> {
    match call(
        conn,
        id,
        Call::Lookup {
            names: vec![serde_bytes::ByteBuf::from(name.as_bytes().to_vec())],
            libraries: Vec::new(),
            process: true,
        },
    ) {
        Ok(Value::Lookup(v)) if v.len() == 1 => v[0],
        other => panic!("lookup {name}: {other:?}"),
    }
}

#[test]
fn oversized_frame_gets_a_protocol_error() {
    let (mut conn, mut child) = executor();
    let mut bytes = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    conn.send_bytes(&bytes, &[]).expect("sending");
    let why = protocol_error(&drain(&mut conn), "oversized frame");
    assert!(why.contains("over the limit"), "{why}");
    let code = exit_code(&mut child, "after an oversized frame");
    assert_ne!(code, 0, "a protocol error is not a clean exit");
}

#[test]
fn huge_claimed_frame_gets_a_protocol_error() {
    // u32::MAX: the largest a prefix can claim.
    let (mut conn, mut child) = executor();
    conn.send_bytes(&u32::MAX.to_le_bytes(), &[])
        .expect("sending");
    let why = protocol_error(&drain(&mut conn), "4 GiB frame");
    assert!(why.contains("over the limit"), "{why}");
    assert_ne!(exit_code(&mut child, "after a 4 GiB frame"), 0);
}

#[test]
fn undecodable_frames_get_a_protocol_error() {
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("0xff bytes", vec![0xff; 10]),
        ("an unknown call", vec![1, 0, 0x7f]),
        ("an empty body", Vec::new()),
        ("a client hello again", {
            let f = wire::encode(&ClientHello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                nonce: [1; 32],
                mac: None,
                stdio_attached: false,
            })
            .unwrap();
            f[4..].to_vec()
        }),
        ("a request with trailing bytes", {
            let mut f = wire::encode(&request(1, Call::Write)).unwrap()[4..].to_vec();
            f.extend_from_slice(&[0, 0]);
            f
        }),
    ];
    for (what, body) in bodies {
        let (mut conn, mut child) = executor();
        // A valid request first: the executor is serving.
        assert!(lookup(&mut conn, 1, "printf").is_some(), "{what}: printf");
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        conn.send_bytes(&frame, &[]).expect("sending");
        let why = protocol_error(&drain(&mut conn), what);
        assert!(why.contains("malformed"), "{what}: {why}");
        assert_ne!(exit_code(&mut child, what), 0, "{what}");
    }
}

#[test]
fn half_a_frame_then_close() {
    let (mut conn, mut child) = executor();
    let full = wire::encode(&request(
        5,
        Call::RunMain {
            entry: ExecutorAddr(0x1234),
            args: vec!["never".into()],
        },
    ))
    .unwrap();
    conn.send_bytes(&full[..full.len() / 2], &[])
        .expect("sending");
    drop(conn);
    // Whatever it says to nobody, it exits, with a status.
    exit_code(&mut child, "after half a frame");

    // Half a length prefix.
    let (mut conn, mut child) = executor();
    conn.send_bytes(&[0x10, 0], &[]).expect("sending");
    drop(conn);
    exit_code(&mut child, "after half a length prefix");
}

/// We stop writing but keep reading. The executor either says what went wrong (a
/// `ProtocolError` about the cut frame) or, as its hangup watcher sees the half close first,
/// just leaves; nothing else, and it exits with a status.
#[test]
fn half_a_frame_then_half_close() {
    let (mut conn, mut child) = executor();
    let full = wire::encode(&request(7, Call::Write)).unwrap();
    conn.send_bytes(&full[..full.len() - 1], &[])
        .expect("sending");
    // Shut down our writing side only.
    half_close(&conn);
    let msgs = drain(&mut conn);
    for m in &msgs {
        match m {
            Message::ProtocolError(why) => assert!(why.contains("inside a frame"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    exit_code(&mut child, "after half a frame and a half close");
}

fn half_close(conn: &Conn) {
    use std::os::fd::AsFd;
    rustix::net::shutdown(conn.fd().as_fd(), rustix::net::Shutdown::Write).expect("shutdown");
}

#[test]
fn wrong_protocol_version_is_refused() {
    for (what, magic, version, says) in [
        (
            "next version",
            MAGIC,
            PROTOCOL_VERSION + 1,
            format!("protocol version {}", PROTOCOL_VERSION + 1),
        ),
        ("version 0", MAGIC, 0, "protocol version 0".into()),
        (
            "wrong magic",
            *b"NOTKILN!",
            PROTOCOL_VERSION,
            "not a kiln controller".into(),
        ),
    ] {
        let (mut conn, mut child) = raw_executor();
        let hello: ServerHello = conn
            .recv(MAX_HELLO_FRAME)
            .and_then(|f| f.decode())
            .expect("the executor's hello");
        assert_eq!(hello.magic, MAGIC);
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert!(!hello.auth, "a spawned executor asks for no token");
        conn.send(
            &ClientHello {
                magic,
                version,
                nonce: [3; 32],
                mac: None,
                stdio_attached: false,
            },
            &[],
        )
        .expect("sending hello");
        let w: Welcome = conn
            .recv(MAX_HELLO_FRAME * 4)
            .and_then(|f| f.decode())
            .unwrap_or_else(|e| panic!("{what}: no welcome: {e}"));
        match w {
            Welcome::Refused(why) => assert!(why.contains(&says), "{what}: {why}"),
            Welcome::Accepted { .. } => panic!("{what}: accepted"),
        }
        // Nothing more is read: even a request after the refusal gets nothing but the end.
        let _ = conn.send(&request(1, Call::Exit(0)), &[]);
        assert!(
            drain(&mut conn).is_empty(),
            "{what}: more after the refusal"
        );
        assert_ne!(exit_code(&mut child, what), 0, "{what}");
    }
}

#[test]
fn oversized_hello_is_refused() {
    let (mut conn, mut child) = raw_executor();
    let _hello = conn.recv(MAX_HELLO_FRAME).expect("hello");
    let mut f = ((MAX_HELLO_FRAME + 1) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&vec![0; MAX_HELLO_FRAME + 1]);
    let _ = conn.send_bytes(&f, &[]);
    drop(conn);
    assert_ne!(exit_code(&mut child, "oversized hello"), 0);
}

/// Requests the runtime must refuse with an error reply, the executor serving on.
#[test]
fn invalid_requests_get_error_replies() {
    let (mut conn, mut child) = executor();
    let cases: Vec<(&str, Request)> = vec![
        (
            "reserve 2^64-1 bytes",
            request(
                1,
                Call::Reserve {
                    size: u64::MAX,
                    placement: Placement::Anywhere,
                },
            ),
        ),
        (
            "reserve inside an empty window",
            request(
                2,
                Call::Reserve {
                    size: 0x1000,
                    placement: Placement::Within {
                        lo: 0x2000,
                        hi: 0x2000,
                    },
                },
            ),
        ),
        (
            "deallocate an unknown allocation",
            request(3, Call::Deallocate(AllocId(999))),
        ),
        (
            "initializers of an unknown allocation",
            request(4, Call::RunInitializers(AllocId(12345))),
        ),
        (
            "release an unknown slab",
            request(5, Call::ReleaseSlab(SlabId(77))),
        ),
        (
            "patch an unknown slab",
            request(
                6,
                Call::Patch {
                    slab: SlabId(3),
                    addr: ExecutorAddr(0x1000),
                    bytes: vec![0x90; 4],
                },
            ),
        ),
        (
            "writes into an unknown slab",
            Request {
                id: 7,
                writes: vec![WireWrite::Fill {
                    slab: SlabId(9),
                    addr: ExecutorAddr(0x1000),
                    len: u64::MAX,
                    byte: 0xcc,
                }],
                call: Call::Write,
            },
        ),
        (
            "a slab of 2^64-1 bytes",
            request(
                8,
                Call::CreateSlab {
                    sizes: [u64::MAX, 1, 1],
                    placement: Placement::Anywhere,
                    shared: true,
                },
            ),
        ),
        (
            "load a missing library",
            request(9, Call::LoadLibrary("/nonexistent/libnothing.so".into())),
        ),
        (
            "a symbol name with a NUL",
            request(
                10,
                Call::Lookup {
                    names: vec![serde_bytes::ByteBuf::from(b"pri\0ntf".to_vec())],
                    libraries: Vec::new(),
                    process: true,
                },
            ),
        ),
        (
            "lookup in an unknown library",
            request(
                11,
                Call::Lookup {
                    names: vec![serde_bytes::ByteBuf::from(b"printf".to_vec())],
                    libraries: vec![kiln_target::LibraryId(42)],
                    process: true,
                },
            ),
        ),
    ];
    for (what, req) in cases {
        match call_with(&mut conn, req) {
            Err(why) => assert!(!why.is_empty(), "{what}"),
            Ok(v) => panic!("{what}: succeeded with {v:?}"),
        }
    }
    // Still serving.
    assert!(lookup(&mut conn, 100, "printf").is_some());
    conn.send(&request(0, Call::Exit(9)), &[]).expect("exit");
    assert_eq!(exit_code(&mut child, "exit after refused requests"), 9);
}

// ---- the controller goes away ----

#[test]
fn controller_closes_after_the_handshake() {
    let (conn, mut child) = executor();
    drop(conn);
    assert_eq!(
        exit_code(&mut child, "controller gone after the handshake"),
        0
    );
}

#[test]
fn controller_closes_during_the_handshake() {
    let (mut conn, mut child) = raw_executor();
    let _hello = conn.recv(MAX_HELLO_FRAME).expect("hello");
    drop(conn);
    exit_code(&mut child, "controller gone during the handshake");
}

#[test]
fn controller_closes_between_requests() {
    let (mut conn, mut child) = executor();
    assert!(lookup(&mut conn, 1, "malloc").is_some());
    conn.shutdown();
    assert_eq!(exit_code(&mut child, "controller gone between requests"), 0);
}

/// A unit of its own reservation whose code jumps to `target` (`mov rax, target; jmp rax`):
/// the executor runs only its units' code. Uses request ids `id` and `id + 1`.
fn trampoline(conn: &mut Conn, id: u64, target: ExecutorAddr) -> ExecutorAddr {
    const PAGE: u64 = 4096; // x86-64 Linux
    let reserve = Call::Reserve {
        size: PAGE,
        placement: Placement::Anywhere,
    };
    let base = match call(conn, id, reserve) {
        Ok(Value::Addr(a)) => a,
        other => panic!("reserve: {other:?}"),
    };
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&target.0.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xe0]);
    let unit = FinalizeRequest {
        reservation: (base, PAGE),
        segments: vec![Segment {
            addr: base,
            prot: MemProt::ReadExec,
            content: code,
            zero_fill: 0,
        }],
        ..Default::default()
    };
    match call(conn, id + 1, Call::Finalize(unit)) {
        Ok(Value::Alloc(_)) => base,
        other => panic!("finalize: {other:?}"),
    }
}

/// While code runs in the executor nobody reads its connection; the controller hanging up
/// must still end it. The code here is libc's `pause`, called as `main` (through a unit that
/// jumps to it).
#[test]
fn controller_closes_while_code_runs() {
    let (mut conn, mut child) = executor();
    let pid = child.id();
    let pause = lookup(&mut conn, 1, "pause").expect("pause is in the executor");
    let entry = trampoline(&mut conn, 2, pause);
    conn.send(
        &request(
            4,
            Call::RunMain {
                entry,
                args: vec!["pause".into()],
            },
        ),
        &[],
    )
    .expect("sending RunMain");
    // Its main thread is in pause (34) or ppoll (271), not in recvmsg (47) any more.
    wait_until("the executor is running pause()", || {
        matches!(current_syscall(pid).as_deref(), Some("34" | "271"))
    });
    conn.shutdown();
    drop(conn);
    assert_eq!(exit_code(&mut child, "controller gone while code runs"), 0);
}

/// Through the library: the remote executor is dropped without `exit`: the executor leaves.
#[test]
fn remote_executor_dropped() {
    let ex = spawn_remote(Options::default()).expect("spawning");
    let pid = ex.pid();
    drop(ex);
    assert_reaped(pid, "a dropped remote executor");
}

/// The controller process itself is killed (SIGKILL: no chance to say goodbye) while its
/// program runs: the executor must not outlive it. The controller is the `kiln` command.
#[test]
fn kiln_killed_while_its_program_runs() {
    let kiln = PathBuf::from(EXECUTOR).with_file_name("kiln");
    assert!(
        kiln.is_file(),
        "{} does not exist: this test runs the kiln command (package kiln-cli) next to \
         kiln-executor; run `cargo build --workspace` (with the same CARGO_TARGET_DIR) first",
        kiln.display()
    );
    let dir = tempdir();
    let obj = compile_c(dir.path(), "forever", FOREVER_PROGRAM);
    let marker = dir.path().join("started");
    let mut k = {
        let _g = spawn_lock();
        Command::new(&kiln)
            .args(["run", "--executor", "spawn"])
            .arg(&obj)
            .arg("--")
            .arg(&marker)
            .env("KILN_EXECUTOR", EXECUTOR)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting kiln")
    };
    wait_until("the program started", || marker.exists());
    let exe = std::fs::canonicalize(EXECUTOR).expect("the executor path");
    let executors: Vec<u32> = children_of(k.id())
        .into_iter()
        .filter(|c| std::fs::read_link(format!("/proc/{c}/exe")).is_ok_and(|p| p == exe))
        .collect();
    let [ex_pid] = executors[..] else {
        let _ = k.kill();
        let _ = k.wait();
        panic!("expected one kiln-executor child of kiln, found {executors:?}");
    };
    kill9(k.id());
    let st = wait_child(&mut k, "kiln");
    assert_eq!(st.signal(), Some(9));
    wait_until("the executor of a killed kiln is gone", || {
        not_running(ex_pid)
    });
}

/// The controller of a listener's session is the listener; killing the listener while a
/// session's code runs must end that session's process too.
#[test]
fn listener_killed_while_a_session_runs() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "forever", FOREVER_PROGRAM);
    let sock = dir.path().join("sock");
    let mut l = Listener::unix(dir.path(), &sock);
    let ex =
        Arc::new(RemoteExecutor::connect(&l.endpoint(), Options::default()).expect("connecting"));
    let pid = ex.pid();
    let (s, rx) = start_forever(ex.clone(), &obj, &dir.path().join("started"));
    kill9(l.pid());
    let _ = l.child.wait();
    wait_until("the session process of a killed listener is gone", || {
        not_running(pid)
    });
    let r = rx
        .recv_timeout(HANG)
        .expect("run_main returned")
        .map_err(|e| e.to_string());
    assert!(
        r.is_err(),
        "run_main succeeded after its listener died: {r:?}"
    );
    drop(s);
}

/// A listener (not `--once`) outlives its sessions, however they end, and serves the next.
#[test]
fn listener_serves_again_after_a_controller_leaves_mid_session() {
    use kiln_target::Executor;
    let dir = tempdir();
    let obj = compile_c(dir.path(), "marker", MARKER_PROGRAM);
    let sock = dir.path().join("sock");
    let mut l = Listener::unix(dir.path(), &sock);
    let endpoint = l.endpoint();

    // 1: a raw controller sends half a request and vanishes.
    let mut conn = Conn::from(std::os::unix::net::UnixStream::connect(&sock).expect("connect"));
    let h = client_handshake(&mut conn, &Options::default()).expect("handshake");
    let first = h.info.pid;
    assert!(children_of(l.pid()).contains(&first));
    let f = wire::encode(&request(1, Call::Write)).unwrap();
    conn.send_bytes(&f[..f.len() - 1], &[]).expect("sending");
    drop(conn);
    wait_until("the first session's process is gone", || {
        proc_stat(first).is_none()
    });
    l.assert_alive("after a controller vanished mid-request");

    // 2: a controller links a program and is dropped without running or exiting it.
    let ex = Arc::new(RemoteExecutor::connect(&endpoint, Options::default()).expect("connect"));
    let second = ex.pid();
    assert_ne!(second, first, "each controller gets a fresh process");
    let s = linked(ex.clone(), &obj);
    drop(s);
    drop(ex);
    wait_until("the second session's process is gone", || {
        proc_stat(second).is_none()
    });
    l.assert_alive("after a controller was dropped mid-session");

    // 3: the next controller runs its program.
    let ex = Arc::new(RemoteExecutor::connect(&endpoint, Options::default()).expect("connect"));
    let s = linked(ex.clone(), &obj);
    let marker = dir.path().join("ran");
    let st = s
        .run_main("main", &["marker".into(), marker.display().to_string()])
        .expect("run_main");
    assert_eq!(st, 42);
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");
    assert_eq!(
        ex.exit(st).expect("exit"),
        kiln_remote::ExitReport::Code(42)
    );
    drop(s);
    let _ = ex
        .lookup(&[b"printf"], &[], true)
        .expect_err("a call after exit");
    l.assert_alive("after three sessions");
    assert!(
        children_of(l.pid()).is_empty(),
        "the listener keeps session processes"
    );
}

//! The controller against a hostile or broken executor (README: "a hostile executor cannot
//! crash the controller with malformed messages"): a fake executor on a Unix socket greets
//! properly, then answers the first request with something wrong. The controller's call must
//! return an error, promptly, never panic or hang.

mod common;

use common::*;
use kiln_remote::proto::*;
use kiln_remote::wire::{self, Conn, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_remote::{Endpoint, Options, RemoteExecutor};
use kiln_target::{Executor, ExecutorAddr, Placement, SlabId, SlabInfo, TargetInfo};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;

fn handshake(shared_memory: bool) -> Handshake {
    Handshake {
        info: TargetInfo {
            triple: "x86_64-unknown-linux-gnu".into(),
            page_size: 4096,
            pid: 1,
        },
        bootstrap: Vec::new(),
        shared_memory,
        forwards_output: false,
        slabs: true,
    }
}

/// Serve one controller on a fresh Unix socket: `greet` does the executor's side of the
/// handshake, then `answer` gets the first request. Returns the endpoint.
fn fake(
    dir: &std::path::Path,
    greet: impl FnOnce(&mut Conn) -> Option<()> + Send + 'static,
    answer: impl FnOnce(&mut Conn, Request) + Send + 'static,
) -> Endpoint {
    let path = dir.join("fake.sock");
    let l = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        let mut c = Conn::from(s);
        let _ = c.set_read_timeout(Some(HANG));
        if greet(&mut c).is_none() {
            return;
        }
        let Ok(req) = c.recv(MAX_FRAME).and_then(|f| f.decode::<Request>()) else {
            return;
        };
        answer(&mut c, req);
        // Stay until the controller hangs up.
        let _ = c.recv(MAX_FRAME);
    });
    Endpoint::Unix(path)
}

fn greet_ok(shared: bool) -> impl FnOnce(&mut Conn) -> Option<()> + Send + 'static {
    move |c: &mut Conn| {
        c.send(
            &ServerHello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                auth: false,
                nonce: [1; 32],
            },
            &[],
        )
        .ok()?;
        let _: ClientHello = c.recv(MAX_HELLO_FRAME).ok()?.decode().ok()?;
        c.send(
            &Welcome::Accepted {
                handshake: handshake(shared),
                mac: None,
            },
            &[],
        )
        .ok()
    }
}

fn reply(c: &mut Conn, id: u64, v: Value) {
    let _ = c.send(&Message::Reply { id, result: Ok(v) }, &[]);
}

/// Connect to a fake that answers a `lookup` of two names with `answer`; the lookup's error.
fn lookup_error(what: &str, answer: impl FnOnce(&mut Conn, Request) + Send + 'static) -> String {
    let dir = tempdir();
    let ep = fake(dir.path(), greet_ok(false), answer);
    let ex = RemoteExecutor::connect(&ep, Options::default()).expect("the fake's handshake");
    let r = with_deadline(what, move || {
        let r = ex.lookup(&[b"a", b"b"], &[], true);
        drop(ex);
        r.map_err(|e| e.to_string())
    });
    match r {
        Ok(v) => panic!("{what}: the lookup succeeded with {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn wrong_replies_are_errors() {
    let e = lookup_error("a reply to another request", |c, r| {
        reply(c, r.id + 1, Value::Lookup(vec![None, None]))
    });
    assert!(e.contains("reply to request"), "{e}");
    let e = lookup_error("a reply of the wrong kind", |c, r| {
        reply(c, r.id, Value::Status(0))
    });
    assert!(e.contains("unexpected reply"), "{e}");
    let e = lookup_error("a lookup of the wrong length", |c, r| {
        reply(c, r.id, Value::Lookup(vec![Some(ExecutorAddr(1))]))
    });
    assert!(e.contains("unexpected reply"), "{e}");
    let e = lookup_error("an error reply", |c, r| {
        let _ = c.send(
            &Message::Reply {
                id: r.id,
                result: Err("no such thing".into()),
            },
            &[],
        );
    });
    assert!(e.contains("no such thing"), "{e}");
    let e = lookup_error("a protocol error", |c, _| {
        let _ = c.send(&Message::ProtocolError("go away".into()), &[]);
    });
    assert!(e.contains("go away"), "{e}");
    let e = lookup_error("an exit report", |c, _| {
        let _ = c.send(&Message::Exited(ExitReport::Signal(6)), &[]);
    });
    assert!(e.contains("signal 6"), "{e}");
}

#[test]
fn malformed_frames_are_errors() {
    let e = lookup_error("an oversized frame", |c, _| {
        let _ = c.send_bytes(&((MAX_FRAME + 1) as u32).to_le_bytes(), &[]);
    });
    assert!(e.contains("over the limit"), "{e}");
    let e = lookup_error("a 4 GiB frame", |c, _| {
        let _ = c.send_bytes(&u32::MAX.to_le_bytes(), &[]);
    });
    assert!(e.contains("over the limit"), "{e}");
    let e = lookup_error("garbage", |c, _| {
        let _ = c.send_bytes(
            &[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[],
        );
    });
    assert!(e.contains("malformed"), "{e}");
    let e = lookup_error("trailing bytes", |c, r| {
        let mut f = wire::encode(&Message::Reply {
            id: r.id,
            result: Ok(Value::Lookup(vec![None, None])),
        })
        .unwrap();
        f.push(0);
        let n = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&n.to_le_bytes());
        let _ = c.send_bytes(&f, &[]);
    });
    assert!(e.contains("trailing"), "{e}");
    let e = lookup_error("a huge claimed frame, then the end", |c, _| {
        let mut f = (200u32 << 20).to_le_bytes().to_vec();
        f.extend_from_slice(&[0; 100]);
        let _ = c.send_bytes(&f, &[]);
        c.shutdown();
    });
    assert!(e.contains("inside a frame"), "{e}");
    let e = lookup_error("half a reply, then the end", |c, r| {
        let f = wire::encode(&Message::Reply {
            id: r.id,
            result: Ok(Value::Lookup(vec![None, None])),
        })
        .unwrap();
        let _ = c.send_bytes(&f[..f.len() / 2], &[]);
        c.shutdown();
    });
    assert!(e.contains("lost the connection"), "{e}");
    let e = lookup_error("no reply, the end", |c, _| c.shutdown());
    assert!(e.contains("lost the connection"), "{e}");
}

#[test]
fn bad_handshakes_are_errors() {
    type Greet = Box<dyn FnOnce(&mut Conn) -> Option<()> + Send>;
    let cases: Vec<(&str, &str, Greet)> = vec![
        (
            "wrong magic",
            "not a kiln executor",
            Box::new(|c: &mut Conn| {
                c.send(
                    &ServerHello {
                        magic: *b"HTTP/1.1",
                        version: PROTOCOL_VERSION,
                        auth: false,
                        nonce: [0; 32],
                    },
                    &[],
                )
                .ok()
            }),
        ),
        (
            "another version",
            "version",
            Box::new(|c: &mut Conn| {
                c.send(
                    &ServerHello {
                        magic: MAGIC,
                        version: PROTOCOL_VERSION + 1,
                        auth: false,
                        nonce: [0; 32],
                    },
                    &[],
                )
                .ok()
            }),
        ),
        (
            "an oversized hello",
            "over the limit",
            Box::new(|c: &mut Conn| {
                c.send_bytes(&((MAX_HELLO_FRAME + 1) as u32).to_le_bytes(), &[])
                    .ok()
            }),
        ),
        (
            "an oversized welcome",
            "over the limit",
            Box::new(|c: &mut Conn| {
                greet_hello(c)?;
                let mut h = handshake(false);
                h.bootstrap = (0..2000)
                    .map(|i| (format!("symbol_{i:08}"), ExecutorAddr(i)))
                    .collect();
                c.send(
                    &Welcome::Accepted {
                        handshake: h,
                        mac: None,
                    },
                    &[],
                )
                .ok()
            }),
        ),
        (
            "a refusal",
            "refused: not today",
            Box::new(|c: &mut Conn| {
                greet_hello(c)?;
                c.send(&Welcome::Refused("not today".into()), &[]).ok()
            }),
        ),
        (
            "silence, then the end",
            "hello",
            Box::new(|c: &mut Conn| {
                c.shutdown();
                None
            }),
        ),
    ];
    for (what, expect, greet) in cases {
        let dir = tempdir();
        let ep = fake(dir.path(), greet, |_, _| {});
        let r = with_deadline(what, move || {
            RemoteExecutor::connect(&ep, Options::default())
                .map(drop)
                .map_err(|e| e.to_string())
        });
        match r {
            Ok(()) => panic!("{what}: connected"),
            Err(e) => assert!(e.contains(expect), "{what}: {e}"),
        }
    }
}

fn greet_hello(c: &mut Conn) -> Option<()> {
    c.send(
        &ServerHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            auth: false,
            nonce: [0; 32],
        },
        &[],
    )
    .ok()?;
    let _: ClientHello = c.recv(MAX_HELLO_FRAME).ok()?.decode().ok()?;
    Some(())
}

/// Shared memory: the slab the executor claims must come with a memory file that really holds
/// it; anything else is an error, not a mapping of nothing.
#[test]
fn bad_shared_slabs_are_errors() {
    let regions_ok = [
        (ExecutorAddr(0x7f00_0000_0000), 0x1000),
        (ExecutorAddr(0x7f00_0000_1000), 0x1000),
        (ExecutorAddr(0x7f00_0000_2000), 0x1000),
    ];
    type Regions = [(ExecutorAddr, u64); 3];
    // What, the regions claimed, the memory file's length (None: no file), the error expected.
    let cases: Vec<(&str, Regions, Option<u64>, &str)> = vec![
        (
            "no descriptor",
            regions_ok,
            None,
            "without its memory descriptor",
        ),
        ("a file too small", regions_ok, Some(0x1000), "less than"),
        (
            "regions of 2^64-1 bytes",
            [
                (ExecutorAddr(0), u64::MAX),
                (ExecutorAddr(u64::MAX), 1),
                (ExecutorAddr(0), 1),
            ],
            Some(0x3000),
            "impossible regions",
        ),
        (
            "regions not contiguous",
            [
                (ExecutorAddr(0x1000), 0x1000),
                (ExecutorAddr(0x9000), 0x1000),
                (ExecutorAddr(0xa000), 0x1000),
            ],
            Some(0x3000),
            "impossible regions",
        ),
        (
            "an empty slab",
            [
                (ExecutorAddr(0x1000), 0),
                (ExecutorAddr(0x1000), 0),
                (ExecutorAddr(0x1000), 0),
            ],
            Some(0x3000),
            "impossible regions",
        ),
    ];
    for (what, regions, file_len, expect) in cases {
        let dir = tempdir();
        let file = dir.path().join("mem");
        let answer = {
            let file = file.clone();
            move |c: &mut Conn, r: Request| {
                let msg = Message::Reply {
                    id: r.id,
                    result: Ok(Value::Slab(SlabInfo {
                        id: SlabId(0),
                        regions,
                    })),
                };
                match file_len {
                    None => {
                        let _ = c.send(&msg, &[]);
                    }
                    Some(n) => {
                        let f = std::fs::File::create(&file).expect("memory file");
                        f.set_len(n).expect("set_len");
                        let _ = c.send(&msg, &[f.as_fd()]);
                    }
                }
            }
        };
        let ep = fake(dir.path(), greet_ok(true), answer);
        let ex = RemoteExecutor::connect(&ep, Options::default()).expect("handshake");
        assert!(ex.shares_memory(), "{what}: shared mode");
        let r = with_deadline(what, move || {
            let r = ex.create_slab([0x1000; 3], Placement::Anywhere);
            drop(ex);
            r.map(drop).map_err(|e| e.to_string())
        });
        match r {
            Ok(()) => panic!("{what}: the slab was accepted"),
            Err(e) => assert!(e.contains(expect), "{what}: {e}"),
        }
    }
}

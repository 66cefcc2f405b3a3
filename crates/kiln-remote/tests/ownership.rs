//! The remote executor refuses what it does not own, as the in-process one does (see
//! kiln-target's tests/ownership.rs):
//! - through [`RemoteExecutor`], in shared and in copy memory mode, every safe method with the
//!   executor's stack, heap and libc code, address 0, the top of the address space, wrapping
//!   sizes, straddling ranges, stale ids;
//! - from a hostile controller that speaks the protocol itself, past the client's own checks:
//!   every request gets an error reply.
//!
//! Each time the executor process stays alive, its libc code and its own code are unchanged
//! (read through /proc/PID/mem), and legitimate units still link, run and go.

mod common;

use common::*;
use kiln_remote::client::{client_handshake, spawn_child};
use kiln_remote::proto::*;
use kiln_remote::wire::{Conn, MAX_FRAME};
use kiln_remote::{MemoryMode, Options};
use kiln_target::*;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};

const PAGE: u64 = 4096; // x86-64 Linux

/// `mov eax, 42; ret` at 0, `int3` padding, `ret` at 8.
const CODE: [u8; 9] = [0xb8, 42, 0, 0, 0, 0xc3, 0xcc, 0xcc, 0xc3];

/// A mapping of process `pid`: (start, end) of the first line of /proc/PID/maps matching.
fn mapping(pid: u32, matches: impl Fn(&str) -> bool) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let line = maps.lines().find(|l| matches(l))?;
    let (a, b) = line.split_whitespace().next()?.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn read_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).expect("opening /proc/PID/mem");
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, addr)
        .expect("reading the executor's memory");
    v
}

/// The executor's memory that is not its controller's to touch, and what its code held.
struct Foreign {
    pid: u32,
    /// (what, page address)
    pages: Vec<(&'static str, u64)>,
    code_before: Vec<(u64, Vec<u8>)>,
}

impl Foreign {
    fn of(pid: u32, printf: ExecutorAddr) -> Foreign {
        let stack = mapping(pid, |l| l.ends_with("[stack]")).expect("the executor's stack");
        let exe_text = mapping(pid, |l| l.contains("r-xp") && l.ends_with("kiln-executor"))
            .expect("the executor's own code");
        let libc = printf.0 & !(PAGE - 1);
        let mut pages = vec![
            ("the executor's stack", stack.1 - PAGE),
            ("libc's code", libc),
            ("the executor's own code", exe_text.0),
            ("address 0", 0),
            ("the top of the address space", !(PAGE - 1)),
        ];
        if let Some(heap) = mapping(pid, |l| l.ends_with("[heap]")) {
            pages.push(("the executor's heap", heap.0));
        }
        let code_before = [libc, exe_text.0]
            .into_iter()
            .map(|a| (a, read_mem(pid, a, PAGE as usize)))
            .collect();
        Foreign {
            pid,
            pages,
            code_before,
        }
    }

    fn assert_unchanged(&self) {
        for (a, before) in &self.code_before {
            assert!(
                read_mem(self.pid, *a, PAGE as usize) == *before,
                "the executor's code at {a:#x} changed"
            );
        }
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T>, what: &str) {
    if let Ok(v) = r {
        panic!("{what}: accepted ({v:?}), should be refused")
    }
}

fn seg(addr: u64, prot: MemProt, content: &[u8], zero_fill: u64) -> Segment {
    Segment {
        addr: ExecutorAddr(addr),
        prot,
        content: content.to_vec(),
        zero_fill,
    }
}

/// A unit in its own reservation of two pages: CODE, then a page of data.
fn unit(base: u64) -> FinalizeRequest {
    FinalizeRequest {
        reservation: (ExecutorAddr(base), 2 * PAGE),
        segments: vec![
            seg(base, MemProt::ReadExec, &CODE, 0),
            seg(base.wrapping_add(PAGE), MemProt::ReadWrite, &[7; 16], 0),
        ],
        ..Default::default()
    }
}

fn slab_unit_request(code: u64) -> FinalizeRequest {
    FinalizeRequest {
        segments: vec![seg(code, MemProt::ReadExec, &[], CODE.len() as u64)],
        in_slab: true,
        ..Default::default()
    }
}

/// A segment of `size` bytes of code at `addr`, for [`Executor::finalize_slab_unit`].
fn code_segment(addr: u64, size: u64) -> SlabSegment {
    SlabSegment {
        addr: ExecutorAddr(addr),
        size,
        prot: MemProt::ReadExec,
    }
}

fn through_the_client(memory: MemoryMode) {
    let ex = spawn_remote(Options {
        memory,
        ..Options::default()
    })
    .expect("spawning kiln-executor");
    assert_eq!(ex.shares_memory(), memory == MemoryMode::Shared);
    let printf = ex.lookup(&[b"printf"], &[], true).unwrap()[0].expect("printf");
    let foreign = Foreign::of(ex.pid(), printf);
    let s = ex
        .create_slab([PAGE, PAGE, PAGE], Placement::Anywhere)
        .expect("a slab");
    let code = s.regions[0].0 .0;
    let a = ex.reserve(2 * PAGE, Placement::Anywhere).unwrap().0;
    let mut nothing = |_: &mut [&mut [u8]]| panic!("must not be called");
    // In copy mode the client fills scratch buffers before the executor sees the ranges (it
    // checks them when the writes arrive, with the finalize): the closure may run, the unit
    // must still be refused.
    let mut no_unit = |_: &mut [&mut [u8]]| Some(UnitActions::default());
    for &(what, addr) in &foreign.pages {
        let x = ExecutorAddr(addr);
        refused(ex.release(x, PAGE), what);
        refused(ex.finalize(unit(addr)), what);
        refused(ex.finalize(slab_unit_request(addr)), what);
        refused(ex.call_void(x), what);
        refused(ex.run_main(x, &[]), what);
        refused(ex.write_slab(s.id, &[SlabWrite::Fill(x, 64, 0xcc)]), what);
        refused(ex.with_slab_memory(s.id, &[(x, 64)], &mut nothing), what);
        refused(
            ex.finalize_slab_unit(s.id, &[code_segment(addr, 64)], &mut no_unit),
            what,
        );
        refused(ex.patch(s.id, x, &[0xcc; 8]), what);
        let mut req = unit(a);
        req.actions.push(ActionPair {
            finalize: Some(Action::CallVoid(x)),
            dealloc: None,
        });
        refused(ex.finalize(req), what);
        refused(
            ex.finalize(FinalizeRequest {
                initializers: vec![x],
                ..unit(a)
            }),
            what,
        );
    }
    refused(ex.release(ExecutorAddr(a), u64::MAX), "a wrapping size");
    refused(
        ex.release(ExecutorAddr(a), 4 * PAGE),
        "more than the reservation",
    );
    refused(
        ex.write_slab(
            s.id,
            &[SlabWrite::Fill(ExecutorAddr(code + 0xff0), 0x20, 0)],
        ),
        "straddling two regions",
    );
    for (what, addr, len) in [
        ("straddling two regions", code + 0xff0, 0x20),
        ("a length that wraps", code + 8, u64::MAX - 4),
    ] {
        refused(
            ex.finalize_slab_unit(s.id, &[code_segment(addr, len)], &mut no_unit),
            what,
        );
    }
    refused(
        ex.finalize_slab_unit(
            s.id,
            &[code_segment(code, 16), code_segment(code + 8, 16)],
            &mut no_unit,
        ),
        "overlapping segments in one call",
    );
    refused(
        ex.finalize_slab_unit(SlabId(999), &[code_segment(code, 16)], &mut no_unit),
        "an unknown slab",
    );
    for id in [0, 12345, u64::MAX] {
        refused(ex.deallocate(AllocId(id)), "an unknown allocation");
        refused(ex.run_initializers(AllocId(id)), "an unknown allocation");
    }
    refused(ex.release_slab(SlabId(999)), "an unknown slab");
    refused(
        ex.lookup(&[b"printf"], &[LibraryId(5)], true),
        "an unknown library",
    );
    refused(
        ex.load_library(std::path::Path::new("/nonexistent/libnothing.so")),
        "a missing library",
    );
    refused(
        ex.create_slab([!(PAGE - 1), PAGE, PAGE], Placement::Anywhere),
        "a slab size that wraps",
    );

    // Legitimate units still work: one in its reservation, one in the slab.
    let id = ex.finalize(unit(a)).expect("a unit in its reservation");
    refused(
        ex.release(ExecutorAddr(a), 2 * PAGE),
        "a reservation in use",
    );
    ex.run_initializers(id).unwrap();
    assert_eq!(ex.run_main(ExecutorAddr(a), &[]).unwrap(), 42);
    ex.call_void(ExecutorAddr(a + 8)).unwrap();
    refused(ex.call_void(ExecutorAddr(a + PAGE)), "its data");
    ex.deallocate(id).unwrap();
    refused(ex.deallocate(id), "a deallocated unit");
    refused(ex.run_main(ExecutorAddr(a), &[]), "a deallocated unit");

    let entry = code + 0x43; // the immediate at +0x44 is 4-aligned
    ex.with_slab_memory(
        s.id,
        &[(ExecutorAddr(entry), CODE.len() as u64)],
        &mut |b| b[0].copy_from_slice(&CODE),
    )
    .unwrap();
    let id = ex
        .finalize(slab_unit_request(entry))
        .expect("a unit in the slab");
    refused(
        ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(entry), 4, 0xcc)]),
        "a live unit's bytes",
    );
    refused(
        ex.with_slab_memory(s.id, &[(ExecutorAddr(entry + 2), 2)], &mut nothing),
        "a live unit's bytes",
    );
    refused(
        ex.finalize_slab_unit(s.id, &[code_segment(entry + 4, 4)], &mut no_unit),
        "a live unit's bytes",
    );
    // A unit written and finalized in one call; one whose writer gives up leaves its range
    // free, one whose actions point outside it is refused.
    let other = code + 0x83;
    let gave_up = ex.finalize_slab_unit(s.id, &[code_segment(other, 9)], &mut |b| {
        b[0].copy_from_slice(&CODE);
        None
    });
    assert!(gave_up.unwrap().is_none());
    let mut outside = Some(UnitActions {
        initializers: vec![ExecutorAddr(entry)],
        ..Default::default()
    });
    refused(
        ex.finalize_slab_unit(s.id, &[code_segment(other, 9)], &mut |b| {
            b[0].copy_from_slice(&CODE);
            outside.take()
        }),
        "an initializer in another unit",
    );
    let id2 = ex
        .finalize_slab_unit(s.id, &[code_segment(other, 9)], &mut |b| {
            b[0].copy_from_slice(&CODE);
            Some(UnitActions::default())
        })
        .unwrap()
        .expect("a unit in the slab");
    assert_eq!(ex.run_main(ExecutorAddr(other), &[]).unwrap(), 42);
    ex.deallocate(id2).unwrap();
    refused(ex.run_main(ExecutorAddr(other), &[]), "a deallocated unit");
    refused(ex.release_slab(s.id), "a slab with a live unit");
    assert_eq!(ex.run_main(ExecutorAddr(entry), &[]).unwrap(), 42);
    ex.patch(s.id, ExecutorAddr(entry + 1), &7u32.to_le_bytes())
        .unwrap();
    assert_eq!(ex.run_main(ExecutorAddr(entry), &[]).unwrap(), 7);
    ex.deallocate(id).unwrap();
    ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(entry), 9, 0xcc)])
        .unwrap();
    ex.release_slab(s.id).unwrap();
    refused(ex.release_slab(s.id), "a released slab");
    refused(
        ex.finalize_slab_unit(s.id, &[code_segment(code, 16)], &mut no_unit),
        "a released slab",
    );
    refused(
        ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(code), 4, 0)]),
        "a released slab",
    );

    foreign.assert_unchanged();
    assert!(
        ex.lookup(&[b"malloc"], &[], true).unwrap()[0].is_some(),
        "the executor still answers"
    );
    assert_eq!(ex.exit(0).expect("exit"), ExitReport::Code(0));
}

#[test]
fn client_refuses_foreign_memory_shared() {
    through_the_client(MemoryMode::Shared);
}

#[test]
fn client_refuses_foreign_memory_copied() {
    through_the_client(MemoryMode::Copy);
}

/// A controller that speaks the protocol itself.
struct Hostile {
    conn: Conn,
    child: std::process::Child,
    next: u64,
}

impl Hostile {
    fn start() -> Hostile {
        let (mut conn, child) = {
            let _g = spawn_lock();
            spawn_child(Command::new(EXECUTOR).stdin(Stdio::null()))
                .expect("starting kiln-executor")
        };
        client_handshake(&mut conn, &Options::default()).expect("handshake");
        conn.set_read_timeout(Some(HANG)).expect("timeout");
        Hostile {
            conn,
            child,
            next: 1,
        }
    }

    fn send(&mut self, writes: Vec<WireWrite>, call: Call) -> std::result::Result<Value, String> {
        let id = self.next;
        self.next += 1;
        self.conn
            .send(&Request { id, writes, call }, &[])
            .expect("sending a request");
        let frame = self
            .conn
            .recv(MAX_FRAME)
            .expect("a reply (the executor is alive)");
        match frame.decode::<Message>().expect("a valid message") {
            Message::Reply { id: rid, result } if rid == id => result,
            other => panic!("unexpected message {other:?}"),
        }
    }

    fn call(&mut self, call: Call) -> std::result::Result<Value, String> {
        self.send(Vec::new(), call)
    }

    fn refused(&mut self, writes: Vec<WireWrite>, call: Call, what: &str) {
        if let Ok(v) = self.send(writes, call) {
            panic!("{what}: accepted ({v:?}), should be refused")
        }
    }
}

#[test]
fn hostile_requests_get_error_replies() {
    let mut h = Hostile::start();
    let pid = h.child.id();
    let printf = match h.call(Call::Lookup {
        names: vec![serde_bytes::ByteBuf::from(b"printf".to_vec())],
        libraries: Vec::new(),
        process: true,
    }) {
        Ok(Value::Lookup(v)) => v[0].expect("printf"),
        other => panic!("lookup: {other:?}"),
    };
    let foreign = Foreign::of(pid, printf);
    let slab = match h.call(Call::CreateSlab {
        sizes: [PAGE; 3],
        placement: Placement::Anywhere,
        shared: false,
    }) {
        Ok(Value::Slab(s)) => s,
        other => panic!("create_slab: {other:?}"),
    };
    let code = slab.regions[0].0 .0;
    let pages = foreign.pages.clone();
    for &(what, addr) in &pages {
        let x = ExecutorAddr(addr);
        let write = |len| WireWrite::Fill {
            slab: slab.id,
            addr: x,
            len,
            byte: 0xcc,
        };
        h.refused(vec![write(PAGE)], Call::Write, what);
        h.refused(vec![write(u64::MAX)], Call::Write, what);
        h.refused(
            vec![WireWrite::Bytes {
                slab: slab.id,
                addr: x,
                bytes: vec![0xcc; 64],
            }],
            Call::Write,
            what,
        );
        h.refused(
            Vec::new(),
            Call::Release {
                addr: x,
                size: PAGE,
            },
            what,
        );
        h.refused(
            Vec::new(),
            Call::Release {
                addr: x,
                size: u64::MAX,
            },
            what,
        );
        h.refused(Vec::new(), Call::Finalize(unit(addr)), what);
        h.refused(Vec::new(), Call::Finalize(slab_unit_request(addr)), what);
        h.refused(
            Vec::new(),
            Call::Patch {
                slab: slab.id,
                addr: x,
                bytes: vec![0xcc; 8],
            },
            what,
        );
        h.refused(
            Vec::new(),
            Call::RunMain {
                entry: x,
                args: Vec::new(),
            },
            what,
        );
        h.refused(Vec::new(), Call::CallVoid(x), what);
    }
    // Stale and forged ids.
    h.refused(Vec::new(), Call::ReleaseSlab(SlabId(77)), "an unknown slab");
    h.refused(
        vec![WireWrite::Fill {
            slab: SlabId(77),
            addr: ExecutorAddr(code),
            len: 4,
            byte: 0,
        }],
        Call::Write,
        "an unknown slab",
    );
    h.refused(
        Vec::new(),
        Call::Deallocate(AllocId(3)),
        "an unknown allocation",
    );
    h.refused(
        Vec::new(),
        Call::RunInitializers(AllocId(3)),
        "an unknown allocation",
    );
    // Impossible sizes and placements.
    for (what, call) in [
        (
            "a reservation of 2^64 - 1 bytes",
            Call::Reserve {
                size: u64::MAX,
                placement: Placement::Anywhere,
            },
        ),
        (
            "an empty window at the top",
            Call::Reserve {
                size: PAGE,
                placement: Placement::Within {
                    lo: u64::MAX,
                    hi: 0,
                },
            },
        ),
        (
            "a fixed address on libc",
            Call::Reserve {
                size: PAGE,
                placement: Placement::Fixed(printf.0 & !(PAGE - 1)),
            },
        ),
        (
            "slab sizes that wrap",
            Call::CreateSlab {
                sizes: [!(PAGE - 1), PAGE, PAGE],
                placement: Placement::Anywhere,
                shared: true,
            },
        ),
        (
            "a static TLS block with an impossible alignment",
            Call::AllocateStaticTls {
                image: vec![1; 8],
                block_size: 8,
                align: 1 << 40,
            },
        ),
    ] {
        h.refused(Vec::new(), call, what);
    }
    // A unit in the slab, written and finalized in one request; then writes over it.
    let entry = code + 0x40;
    let unit_writes = vec![WireWrite::Bytes {
        slab: slab.id,
        addr: ExecutorAddr(entry),
        bytes: CODE.to_vec(),
    }];
    let id = match h.send(unit_writes, Call::Finalize(slab_unit_request(entry))) {
        Ok(Value::Alloc(id)) => id,
        other => panic!("finalize: {other:?}"),
    };
    h.refused(
        vec![WireWrite::Fill {
            slab: slab.id,
            addr: ExecutorAddr(entry + 4),
            len: 1,
            byte: 0xcc,
        }],
        Call::Write,
        "a live unit's bytes",
    );
    h.refused(
        Vec::new(),
        Call::ReleaseSlab(slab.id),
        "a slab with a live unit",
    );
    assert!(matches!(
        h.call(Call::RunMain {
            entry: ExecutorAddr(entry),
            args: Vec::new()
        }),
        Ok(Value::Status(42))
    ));
    assert!(h.call(Call::Deallocate(id)).is_ok());
    h.refused(Vec::new(), Call::Deallocate(id), "a deallocated unit");
    assert!(h.call(Call::ReleaseSlab(slab.id)).is_ok());

    foreign.assert_unchanged();
    assert!(
        h.child.try_wait().expect("try_wait").is_none(),
        "the executor is alive"
    );
    h.conn
        .send(
            &Request {
                id: 0,
                writes: Vec::new(),
                call: Call::Exit(0),
            },
            &[],
        )
        .expect("sending exit");
    let st = wait_child(&mut h.child, "the executor leaving");
    assert_eq!(st.code(), Some(0), "a clean exit, not a crash: {st:?}");
}

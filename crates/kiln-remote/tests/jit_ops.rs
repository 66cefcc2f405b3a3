//! The JIT layer's executor operations out of process, in shared and in copy memory mode (see
//! kiln-target's tests/jit_ops.rs for the same in process):
//! - `read_memory`: a unit's code read back (from the controller's mapping of a shared slab, or
//!   over the wire); the executor's stack, libc, its own code and freed units refused;
//! - `write_live`: an 8-byte immediate rewritten while the executor runs the function in a loop
//!   (in shared mode the controller's stores land while the code runs), then code rewritten;
//! - `move_allocation`: a unit with unwind info and a destructor moved: it runs and unwinds at
//!   its new address, the old registration is gone, the destructor did not run (and runs once
//!   when the unit goes), the controller's book follows the move; a registration failing after
//!   the copy; refused moves leave the executor's slab bytes unchanged (/proc/PID/mem).

mod common;

use common::*;
use kiln_remote::{MemoryMode, Options, RemoteExecutor};
use kiln_target::*;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const A: u64 = 0x1111_1111_1111_1111;
const B: u64 = 0x2222_2222_2222_2222;
const REGION: u64 = 0x4000;
const PAGE: u64 = 4096;

// ---- machine code (as in kiln-target's tests/jit_ops.rs) ------------------------------------

/// `movabs rax, imm64; ret` (the immediate at +2).
fn get_code(v: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xb8];
    c.extend_from_slice(&v.to_le_bytes());
    c.push(0xc3);
    c
}

/// `u64 count_strays(u64 n, u64 a, u64 b)`: calls the `get` 16 bytes before it `n` times and
/// counts results that are neither `a` nor `b`.
fn count_strays_code() -> Vec<u8> {
    let mut c = vec![
        0x53, 0x41, 0x54, 0x41, 0x55, // push rbx; push r12; push r13
        0x48, 0x89, 0xfb, // mov rbx, rdi
        0x45, 0x31, 0xe4, // xor r12d, r12d
        0xe8, // call get (ends 0x10 into this function, 0x20 after get)
    ];
    c.extend_from_slice(&(-0x20i32).to_le_bytes());
    c.extend_from_slice(&[
        0x48, 0x39, 0xf0, 0x74, 0x08, // cmp rax, rsi; je next
        0x48, 0x39, 0xd0, 0x74, 0x03, // cmp rax, rdx; je next
        0x49, 0xff, 0xc4, // inc r12
        0x48, 0xff, 0xcb, 0x75, 0xe9, // next: dec rbx; jnz the call
        0x4c, 0x89, 0xe0, // mov rax, r12
        0x41, 0x5d, 0x41, 0x5c, 0x5b, 0xc3, // pop r13; pop r12; pop rbx; ret
    ]);
    c
}

/// `u64 frames(fn walk)`: `walk(count_one, &counter)` (`_Unwind_Backtrace`), returns the count
/// of frames (1 when the unwinder cannot get past this one). Unwind info covers 36 bytes.
fn frames_code() -> Vec<u8> {
    vec![
        0x48, 0x83, 0xec, 0x18, // sub rsp, 24
        0x48, 0xc7, 0x04, 0x24, 0, 0, 0, 0, // mov qword [rsp], 0
        0x48, 0x89, 0xf8, // mov rax, rdi
        0x48, 0x8d, 0x3d, 0x0e, 0, 0, 0, // lea rdi, [rip + count_one]
        0x48, 0x89, 0xe6, // mov rsi, rsp
        0xff, 0xd0, // call rax
        0x48, 0x8b, 0x04, 0x24, // mov rax, [rsp]
        0x48, 0x83, 0xc4, 0x18, // add rsp, 24
        0xc3, // ret
        0x48, 0xff, 0x06, 0x31, 0xc0, 0xc3, // count_one: inc qword [rsi]; xor eax, eax; ret
    ]
}

/// `.eh_frame` for `frames` at `code`, as it lies at `at` (52 bytes; PC-relative start).
fn eh_frame(at: u64, code: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&[1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b]);
    v.extend_from_slice(&[0x0c, 7, 8, 0x90, 1, 0, 0]);
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&28u32.to_le_bytes());
    v.extend_from_slice(&(code.wrapping_sub(at + 32) as u32).to_le_bytes());
    v.extend_from_slice(&36u32.to_le_bytes());
    v.extend_from_slice(&[0, 0x44, 0x0e, 32, 0x40 | 31, 0x0e, 8, 0]);
    v.extend_from_slice(&[0; 4]);
    v
}

/// `lock inc qword [rip + (counter - here - 8)]; ret`: a destructor that counts its runs.
fn count_into(here: u64, counter: u64) -> Vec<u8> {
    let mut c = vec![0xf0, 0x48, 0xff, 0x05];
    c.extend_from_slice(&(counter.wrapping_sub(here + 8) as u32).to_le_bytes());
    c.push(0xc3);
    c
}

// ---- helpers --------------------------------------------------------------------------------

fn executor(memory: MemoryMode) -> RemoteExecutor {
    let ex = spawn_remote(Options {
        memory,
        ..Options::default()
    })
    .expect("spawning kiln-executor");
    assert_eq!(ex.shares_memory(), memory == MemoryMode::Shared);
    ex
}

fn read_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).expect("opening /proc/PID/mem");
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, addr)
        .expect("reading the executor's memory");
    v
}

fn slab_bytes(pid: u32, s: &SlabInfo) -> Vec<u8> {
    s.regions
        .iter()
        .flat_map(|(a, n)| read_mem(pid, a.0, *n as usize))
        .collect()
}

/// The first mapping of `pid` whose /proc/PID/maps line matches: (start, end).
fn mapping(pid: u32, matches: impl Fn(&str) -> bool) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| matches(l)).expect("a mapping");
    let (a, b) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        u64::from_str_radix(a, 16).unwrap(),
        u64::from_str_radix(b, 16).unwrap(),
    )
}

fn wx_mappings(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| {
            let p = l.split_whitespace().nth(1).unwrap_or("");
            p.contains('w') && p.contains('x')
        })
        .map(String::from)
        .collect()
}

fn refused<T: std::fmt::Debug>(r: Result<T>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?}), should be refused"),
        Err(e) => e,
    }
}

fn at(s: &SlabInfo, region: usize, off: u64) -> u64 {
    s.regions[region].0 .0 + off
}

fn finalize(
    ex: &RemoteExecutor,
    s: &SlabInfo,
    parts: &[(u64, MemProt, Vec<u8>)],
    actions: Vec<ActionPair>,
    deinitializers: Vec<Action>,
) -> Result<AllocId> {
    let ranges: Vec<(ExecutorAddr, u64)> = parts
        .iter()
        .map(|(a, _, b)| (ExecutorAddr(*a), b.len() as u64))
        .collect();
    ex.with_slab_memory(s.id, &ranges, &mut |m| {
        for (slice, (_, _, b)) in m.iter_mut().zip(parts) {
            slice.copy_from_slice(b);
        }
    })?;
    ex.finalize(FinalizeRequest {
        segments: parts
            .iter()
            .map(|(a, p, b)| Segment {
                addr: ExecutorAddr(*a),
                prot: *p,
                content: Vec::new(),
                zero_fill: b.len() as u64,
            })
            .collect(),
        actions,
        deinitializers,
        in_slab: true,
        ..Default::default()
    })
}

fn eh_pair(addr: u64) -> ActionPair {
    let a = ExecutorAddr(addr);
    ActionPair {
        finalize: Some(Action::RegisterEhFrame { addr: a, size: 52 }),
        dealloc: Some(Action::DeregisterEhFrame { addr: a, size: 52 }),
    }
}

/// `get` (immediate 8-byte aligned: `off` ≡ 6 mod 8) and `count_strays` 16 bytes after it.
fn get_unit(ex: &RemoteExecutor, s: &SlabInfo, off: u64, v: u64) -> (AllocId, u64) {
    let mut code = get_code(v);
    code.resize(16, 0xcc);
    code.extend(count_strays_code());
    let get = at(s, 0, off);
    let id =
        finalize(ex, s, &[(get, MemProt::ReadExec, code)], vec![], vec![]).expect("the get unit");
    (id, get)
}

fn frames_at(ex: &RemoteExecutor, f: u64) -> u64 {
    let walk = ex.lookup(&[b"_Unwind_Backtrace"], &[], true).unwrap()[0]
        .expect("_Unwind_Backtrace in the executor");
    ex.call(ExecutorAddr(f), &[walk.0]).unwrap()
}

fn mv(from: u64, to: u64, len: u64) -> SegmentMove {
    SegmentMove {
        from: ExecutorAddr(from),
        to: ExecutorAddr(to),
        len,
    }
}

const MODES: [MemoryMode; 2] = [MemoryMode::Shared, MemoryMode::Copy];

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn reads_back_what_the_executor_owns() {
    for mode in MODES {
        let ex = executor(mode);
        let pid = ex.pid();
        let s = ex.create_slab([REGION; 3], Placement::Anywhere).unwrap();
        let (id, get) = get_unit(&ex, &s, 0x106, A);
        assert_eq!(ex.read_memory(ExecutorAddr(get), 11).unwrap(), get_code(A));
        for r in 0..3 {
            let (a, n) = s.regions[r];
            assert_eq!(
                ex.read_memory(a, n).unwrap(),
                read_mem(pid, a.0, n as usize)
            );
        }
        // A unit in a reservation of its own: read by the executor.
        let base = ex.reserve(PAGE, Placement::Anywhere).unwrap();
        let own = ex
            .finalize(FinalizeRequest {
                reservation: (base, PAGE),
                segments: vec![Segment {
                    addr: base,
                    prot: MemProt::ReadExec,
                    content: get_code(B),
                    zero_fill: 0,
                }],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ex.read_memory(base, 11).unwrap(), get_code(B));
        refused(ex.read_memory(base, 12), "past the segment");
        ex.deallocate(own).unwrap();
        refused(ex.read_memory(base, 11), "a freed unit's reservation");
        let stack = mapping(pid, |l| l.ends_with("[stack]"));
        let own_code = mapping(pid, |l| l.contains("r-xp") && l.ends_with("kiln-executor"));
        let libc = ex.lookup(&[b"printf"], &[], true).unwrap()[0].unwrap();
        for (what, addr) in [
            ("the executor's stack", stack.1 - PAGE),
            ("the executor's own code", own_code.0),
            ("libc's code", libc.0),
            ("address 0", 0),
            ("straddling two regions", at(&s, 0, REGION - 8)),
        ] {
            refused(ex.read_memory(ExecutorAddr(addr), 16), what);
        }
        refused(
            ex.read_memory(s.regions[0].0, MAX_READ + 1),
            "more than MAX_READ",
        );
        ex.deallocate(id).unwrap();
        // Slab memory stays readable after its unit went.
        assert_eq!(ex.read_memory(ExecutorAddr(get), 11).unwrap(), get_code(A));
    }
}

/// The executor runs `count_strays` (10,000 calls of `get` a round) round after round while
/// another controller thread rewrites `get`'s immediate with `write_live`, alternating A and B:
/// every value seen is A or B. In shared mode the controller's stores land in the pages while
/// the executor runs the loop.
#[test]
fn write_live_while_the_executor_runs_the_code() {
    for mode in MODES {
        let ex = Arc::new(executor(mode));
        let s = ex.create_slab([REGION; 3], Placement::Anywhere).unwrap();
        let (_, get) = get_unit(&ex, &s, 0x106, A);
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let runner = {
            let (ex, stop, rounds) = (ex.clone(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let mut strays = 0;
                while !stop.load(Ordering::Relaxed) {
                    strays += ex.call(ExecutorAddr(get + 16), &[10_000, A, B]).unwrap();
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                strays
            })
        };
        let mut writes = 0u64;
        while writes < 500 || rounds.load(Ordering::Relaxed) < 50 {
            let v = if writes.is_multiple_of(2) { B } else { A };
            let whole = get_code(v);
            let w = if writes % 4 < 2 {
                SlabWrite::Bytes(ExecutorAddr(get + 2), &whole[2..10])
            } else {
                SlabWrite::Bytes(ExecutorAddr(get), &whole)
            };
            ex.write_live(s.id, &[w]).unwrap();
            writes += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let strays = runner.join().unwrap();
        assert_eq!(strays, 0, "{mode:?}: a torn immediate was executed");
        // A different body, then the bytes read back; no page writable and executable.
        let body = [0xb8, 5, 0, 0, 0, 0x83, 0xc0, 37, 0xc3];
        ex.write_live(s.id, &[SlabWrite::Bytes(ExecutorAddr(get), &body)])
            .unwrap();
        assert_eq!(ex.call(ExecutorAddr(get), &[]).unwrap(), 42);
        assert_eq!(ex.read_memory(ExecutorAddr(get), 9).unwrap(), body);
        assert!(wx_mappings(ex.pid()).is_empty(), "{mode:?}");
        assert!(wx_mappings(std::process::id()).is_empty(), "{mode:?}");
    }
}

/// The unit: `frames` at `code`, its `.eh_frame` at `eh`, a destructor at `code + 0x40` that
/// counts into 8 bytes of data at `data`.
fn moving_unit(ex: &RemoteExecutor, s: &SlabInfo, code: u64, eh: u64, data: u64) -> AllocId {
    let id = finalize(
        ex,
        s,
        &[
            (code, MemProt::ReadExec, frames_code()),
            (
                code + 0x40,
                MemProt::ReadExec,
                count_into(code + 0x40, data),
            ),
            (eh, MemProt::Read, eh_frame(eh, code)),
            (data, MemProt::ReadWrite, vec![0; 8]),
        ],
        vec![eh_pair(eh)],
        vec![Action::CallVoid(ExecutorAddr(code + 0x40))],
    )
    .expect("the moving unit");
    ex.run_initializers(id).unwrap();
    id
}

fn counted(ex: &RemoteExecutor, data: u64) -> u64 {
    u64::from_le_bytes(
        ex.read_memory(ExecutorAddr(data), 8)
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

#[test]
fn moved_code_runs_and_unwinds_in_the_executor() {
    for mode in MODES {
        let ex = executor(mode);
        let s = ex.create_slab([REGION; 3], Placement::Anywhere).unwrap();
        let (code, eh, data) = (at(&s, 0, 0x100), at(&s, 1, 0x100), at(&s, 2, 0x100));
        let id = moving_unit(&ex, &s, code, eh, data);
        assert!(
            frames_at(&ex, code) > 2,
            "{mode:?}: unwinds where it was linked"
        );
        let d = 0x1000;
        let len = frames_code().len() as u64;
        ex.move_allocation(
            id,
            &[mv(code, code + d, len), mv(eh, eh + d, 52)],
            vec![eh_pair(eh + d)],
        )
        .unwrap();
        assert!(
            frames_at(&ex, code + d) > 2,
            "{mode:?}: unwinds where it went"
        );
        assert!(matches!(
            ex.call(ExecutorAddr(code), &[0]),
            Err(Error::Remote(_))
        ));
        assert_eq!(counted(&ex, data), 0, "{mode:?}: moving ran the destructor");
        // The book followed: the old range is free to write, the new one is a live unit's.
        refused(
            ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(code + d), 4, 0xcc)]),
            "the moved unit's new range",
        );
        // A unit finalized over the old bytes (a slab unit's content is what the slab holds):
        // the unwinder no longer knows that address.
        let stale = ex
            .finalize(FinalizeRequest {
                segments: vec![Segment {
                    addr: ExecutorAddr(code),
                    prot: MemProt::ReadExec,
                    content: Vec::new(),
                    zero_fill: len,
                }],
                in_slab: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            frames_at(&ex, code),
            1,
            "{mode:?}: the old registration is gone"
        );
        ex.deallocate(stale).unwrap();
        ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(code), len, 0xcc)])
            .unwrap();
        ex.deallocate(id).unwrap();
        assert_eq!(counted(&ex, data), 1, "{mode:?}: the destructor ran once");
    }
}

#[test]
fn refused_moves_change_nothing_and_late_failures_say_so() {
    for mode in MODES {
        let ex = executor(mode);
        let pid = ex.pid();
        let s = ex.create_slab([REGION; 3], Placement::Anywhere).unwrap();
        let s2 = ex.create_slab([REGION; 3], Placement::Anywhere).unwrap();
        let (code, eh, data) = (at(&s, 0, 0x100), at(&s, 1, 0x100), at(&s, 2, 0x100));
        let id = moving_unit(&ex, &s, code, eh, data);
        let (neighbour, n_get) = get_unit(&ex, &s, 0x806, A);
        let (gone, _) = get_unit(&ex, &s, 0xc06, A);
        ex.deallocate(gone).unwrap();
        let len = frames_code().len() as u64;
        let to = code + 0x1000;
        let stack = mapping(pid, |l| l.ends_with("[stack]"));
        let before = (slab_bytes(pid, &s), slab_bytes(pid, &s2));
        let cases: Vec<(&str, AllocId, Vec<SegmentMove>)> = vec![
            ("a deallocated unit", gone, vec![mv(code, to, len)]),
            ("an unknown id", AllocId(u64::MAX), vec![]),
            ("not a segment", id, vec![mv(code + 1, to, len - 1)]),
            ("onto a live unit", id, vec![mv(code, n_get - 8, len)]),
            (
                "onto its own other segment",
                id,
                vec![mv(code, code + 0x28, len)],
            ),
            (
                "into the read-only region",
                id,
                vec![mv(code, at(&s, 1, 0x800), len)],
            ),
            (
                "into another slab",
                id,
                vec![mv(code, at(&s2, 0, 0x100), len)],
            ),
            (
                "onto the executor's stack",
                id,
                vec![mv(code, stack.1 - PAGE, len)],
            ),
            (
                "past the region",
                id,
                vec![mv(code, at(&s, 0, REGION - 8), len)],
            ),
            (
                "a destination that wraps",
                id,
                vec![mv(code, u64::MAX - 8, len)],
            ),
        ];
        for (what, unit, moves) in cases {
            refused(ex.move_allocation(unit, &moves, vec![eh_pair(eh)]), what);
            assert!(
                (slab_bytes(pid, &s), slab_bytes(pid, &s2)) == before,
                "{mode:?}, {what}: a refused move changed the executor's memory"
            );
            assert!(
                frames_at(&ex, code) > 2,
                "{mode:?}, {what}: registration lost"
            );
        }
        refused(
            ex.move_allocation(id, &[mv(code, to, len)], vec![eh_pair(to)]),
            "code registered as unwind info",
        );
        assert!((slab_bytes(pid, &s), slab_bytes(pid, &s2)) == before);

        // A registration that fails after the copy (the TLS module is another unit's).
        let module = TLS_MODULE_TAG | 0x7e57;
        let tls = |image: u64| ActionPair {
            finalize: Some(Action::RegisterTls {
                module,
                image: ExecutorAddr(image),
                image_size: 8,
                block_size: 8,
                align: 8,
                static_offset: None,
            }),
            dealloc: Some(Action::DeregisterTls { module }),
        };
        let holder = finalize(
            &ex,
            &s,
            &[(at(&s, 1, 0x800), MemProt::Read, vec![1; 8])],
            vec![tls(at(&s, 1, 0x800))],
            vec![],
        )
        .unwrap();
        let e = refused(
            ex.move_allocation(
                id,
                &[mv(code, to, len), mv(eh, eh + 0x1000, 52)],
                vec![eh_pair(eh + 0x1000), tls(data)],
            ),
            "a TLS module registered already",
        );
        assert!(matches!(e, Error::AfterMove { .. }), "{mode:?}: {e}");
        assert_eq!(
            frames_at(&ex, to),
            1,
            "{mode:?}: no registration after the failure"
        );
        ex.move_allocation(id, &[], vec![eh_pair(eh + 0x1000)])
            .unwrap();
        assert!(
            frames_at(&ex, to) > 2,
            "{mode:?}: registered by a move of nothing"
        );
        // The book knows where the unit is: the old range takes writes, the new one does not.
        ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(code), len, 0xcc)])
            .unwrap();
        refused(
            ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(to), 4, 0xcc)]),
            "the moved unit",
        );
        refused(
            ex.write_live(s.id, &[SlabWrite::Fill(ExecutorAddr(eh + 0x1000), 4, 0)]),
            "registered unwind info where it now is",
        );
        for u in [id, neighbour, holder] {
            ex.deallocate(u).unwrap();
        }
    }
}

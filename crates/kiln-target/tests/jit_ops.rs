//! The executor operations a JIT layer stands on, in process (and what the simulated executor
//! makes of them):
//! - `read_memory`: a live unit's code and any slab bytes read back; the stack, the heap, libc,
//!   freed units' reservations, other executors' memory and ranges being written refused;
//! - `write_live`: an 8-byte immediate rewritten while another thread runs the function in a
//!   loop (it sees the old or the new value, never a mix), code rewritten wholesale, refusals;
//! - `move_allocation`: a unit with unwind info, gdb objects, an initializer and a destructor
//!   moved; it runs at its new address, unwinding (`_Unwind_Backtrace`, a Rust panic) goes
//!   through it there and no longer through the old copy, its destructor did not run and runs
//!   from the new place when it goes; slides over its own old range; a registration that fails
//!   after the copy; every refused move leaves every byte of the slab unchanged (read through
//!   /proc/self/mem).
#![allow(unsafe_code)] // calling JIT'd code directly: the panic through moved frames

use kiln_target::*;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

const A: u64 = 0x1111_1111_1111_1111;
const B: u64 = 0x2222_2222_2222_2222;
const REGION: u64 = 0x4000;

// ---- machine code ---------------------------------------------------------------------------

/// `get`: `movabs rax, imm64; ret` (the immediate at +2).
fn get_code(v: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xb8];
    c.extend_from_slice(&v.to_le_bytes());
    c.push(0xc3);
    c
}

/// `u64 count_strays(u64 n, u64 a, u64 b)`: calls the `get` at `rel` from its own start `n`
/// times, and returns how many results were neither `a` nor `b`.
fn count_strays_code(rel_to_get: i32) -> Vec<u8> {
    let call = (rel_to_get - 0x10).to_le_bytes(); // the call ends 0x10 into the function
    let mut c = vec![
        0x53, // push rbx
        0x41, 0x54, // push r12
        0x41, 0x55, // push r13
        0x48, 0x89, 0xfb, // mov rbx, rdi
        0x45, 0x31, 0xe4, // xor r12d, r12d
        0xe8, // call get
    ];
    c.extend_from_slice(&call);
    c.extend_from_slice(&[
        0x48, 0x39, 0xf0, // cmp rax, rsi
        0x74, 0x08, // je next
        0x48, 0x39, 0xd0, // cmp rax, rdx
        0x74, 0x03, // je next
        0x49, 0xff, 0xc4, // inc r12
        0x48, 0xff, 0xcb, // next: dec rbx
        0x75, 0xe9, // jnz the call
        0x4c, 0x89, 0xe0, // mov rax, r12
        0x41, 0x5d, // pop r13
        0x41, 0x5c, // pop r12
        0x5b, // pop rbx
        0xc3, // ret
    ]);
    c
}

/// `u64 frames(fn walk)`: calls `walk(count_one, &counter)` — `_Unwind_Backtrace` counts the
/// frames above it — and returns the count (1 when the unwinder cannot get past this frame).
/// `count_one` follows at +36; the unwind info covers the first 36 bytes.
const FRAMES_LEN: u32 = 36;
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
        // count_one(context, counter): ++*counter; return _URC_NO_REASON
        0x48, 0xff, 0x06, // inc qword [rsi]
        0x31, 0xc0, // xor eax, eax
        0xc3, // ret
    ]
}

/// `movabs rax, target; jmp rax`: 12 bytes that work at any address.
fn jump_to(target: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xb8];
    c.extend_from_slice(&target.to_le_bytes());
    c.extend_from_slice(&[0xff, 0xe0]);
    c
}

/// An `.eh_frame` (CIE, one FDE for `frames` at `code`, terminator) as it lies at `at`:
/// 52 bytes. The FDE's start is PC-relative, so moving code and unwind info by the same
/// distance keeps it right.
fn eh_frame(at: u64, code: u64) -> Vec<u8> {
    let mut v = Vec::new();
    // CIE: length 20, id 0, version 1, "zR", code align 1, data align -8, return address r16,
    // augmentation: FDE pointers pcrel|sdata4; CFA = rsp + 8, return address at CFA - 8.
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&[1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b]);
    v.extend_from_slice(&[0x0c, 7, 8, 0x90, 1, 0, 0]);
    // FDE: length 20, CIE pointer, pc_begin (pcrel), pc_range, no augmentation data; after
    // `sub rsp, 24` (4 bytes) the CFA is rsp + 32, after `add rsp, 24` (at 35) rsp + 8.
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&28u32.to_le_bytes());
    let pc_begin = code.wrapping_sub(at + 32) as u32;
    v.extend_from_slice(&pc_begin.to_le_bytes());
    v.extend_from_slice(&FRAMES_LEN.to_le_bytes());
    v.extend_from_slice(&[0, 0x44, 0x0e, 32, 0x40 | 31, 0x0e, 8, 0]);
    v.extend_from_slice(&[0; 4]);
    v
}

// ---- helpers --------------------------------------------------------------------------------

fn read_mem(addr: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open("/proc/self/mem").expect("opening /proc/self/mem");
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, addr)
        .expect("reading /proc/self/mem");
    v
}

/// Every byte of a slab, read by the kernel (not by the executor under test).
fn slab_bytes(s: &SlabInfo) -> Vec<u8> {
    s.regions
        .iter()
        .flat_map(|(a, n)| read_mem(a.0, *n as usize))
        .collect()
}

fn refused<T: std::fmt::Debug>(r: Result<T>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?}), should be refused"),
        Err(e) => e,
    }
}

fn new_slab(ex: &InProcessExecutor) -> SlabInfo {
    ex.create_slab([REGION; 3], Placement::Anywhere)
        .expect("a slab")
}

fn at(s: &SlabInfo, region: usize, off: u64) -> u64 {
    s.regions[region].0 .0 + off
}

/// What a unit is made of: (address, protection, bytes) per segment, then its actions.
#[derive(Default)]
struct UnitSpec {
    parts: Vec<(u64, MemProt, Vec<u8>)>,
    actions: Vec<ActionPair>,
    initializers: Vec<ExecutorAddr>,
    deinitializers: Vec<Action>,
}

fn finalize(ex: &InProcessExecutor, s: &SlabInfo, u: UnitSpec) -> Result<AllocId> {
    let ranges: Vec<(ExecutorAddr, u64)> = u
        .parts
        .iter()
        .map(|(a, _, b)| (ExecutorAddr(*a), b.len() as u64))
        .collect();
    ex.with_slab_memory(s.id, &ranges, &mut |m| {
        for (slice, (_, _, b)) in m.iter_mut().zip(&u.parts) {
            slice.copy_from_slice(b);
        }
    })?;
    ex.finalize(FinalizeRequest {
        segments: u
            .parts
            .iter()
            .map(|(a, p, b)| Segment {
                addr: ExecutorAddr(*a),
                prot: *p,
                content: Vec::new(),
                zero_fill: b.len() as u64,
            })
            .collect(),
        actions: u.actions,
        initializers: u.initializers,
        deinitializers: u.deinitializers,
        in_slab: true,
        ..Default::default()
    })
}

fn eh_pair(addr: u64, size: u64) -> ActionPair {
    ActionPair {
        finalize: Some(Action::RegisterEhFrame {
            addr: ExecutorAddr(addr),
            size,
        }),
        dealloc: Some(Action::DeregisterEhFrame {
            addr: ExecutorAddr(addr),
            size,
        }),
    }
}

fn gdb_pair(key: u64, objects: usize) -> ActionPair {
    ActionPair {
        finalize: Some(Action::RegisterGdbObjects {
            key,
            objects: (0..objects).map(|i| Bytes(vec![i as u8; 8])).collect(),
        }),
        dealloc: Some(Action::DeregisterGdbObjects { key }),
    }
}

fn unwind_backtrace(ex: &dyn Executor) -> u64 {
    ex.lookup(&[b"_Unwind_Backtrace"], &[], true).unwrap()[0]
        .expect("_Unwind_Backtrace in this process (libgcc_s)")
        .0
}

/// A unit holding `get` (its immediate 8-byte aligned) and `count_strays`, at code offset
/// `off` (≡ 6 mod 8): (unit, get, count_strays).
fn get_unit(ex: &InProcessExecutor, s: &SlabInfo, off: u64, v: u64) -> (AllocId, u64, u64) {
    assert_eq!(off % 8, 6);
    let mut code = get_code(v);
    code.resize(16, 0xcc);
    let strays_off = code.len() as i32;
    code.extend(count_strays_code(-strays_off));
    let get = at(s, 0, off);
    let id = finalize(
        ex,
        s,
        UnitSpec {
            parts: vec![(get, MemProt::ReadExec, code)],
            ..Default::default()
        },
    )
    .expect("the get unit");
    (id, get, get + 16)
}

fn wx_mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            let p = l.split_whitespace().nth(1).unwrap_or("");
            p.contains('w') && p.contains('x')
        })
        .map(String::from)
        .collect()
}

// ---- read_memory ----------------------------------------------------------------------------

#[test]
fn reads_back_what_it_owns_and_nothing_else() {
    let ex = InProcessExecutor::new();
    let other = InProcessExecutor::new();
    let s = new_slab(&ex);
    let (id, get, _) = get_unit(&ex, &s, 0x106, A);
    assert_eq!(ex.read_memory(ExecutorAddr(get), 11).unwrap(), get_code(A));
    // A patch is read back; so are free slab bytes and whole regions.
    ex.patch(s.id, ExecutorAddr(get + 2), &B.to_le_bytes())
        .unwrap();
    assert_eq!(ex.read_memory(ExecutorAddr(get), 11).unwrap(), get_code(B));
    assert_eq!(
        ex.read_memory(ExecutorAddr(at(&s, 2, 0x100)), 8).unwrap(),
        [0; 8]
    );
    for r in 0..3 {
        let (a, n) = s.regions[r];
        assert_eq!(ex.read_memory(a, n).unwrap(), read_mem(a.0, n as usize));
    }
    assert!(ex.read_memory(ExecutorAddr(get), 0).unwrap().is_empty());
    // Its own reservation: the segment, not the rest of its page.
    let page = ex.info().page_size;
    let base = ex.reserve(page, Placement::Anywhere).unwrap();
    let own = ex
        .finalize(FinalizeRequest {
            reservation: (base, page),
            segments: vec![Segment {
                addr: base,
                prot: MemProt::ReadExec,
                content: get_code(A),
                zero_fill: 5,
            }],
            ..Default::default()
        })
        .unwrap();
    let mut expect = get_code(A);
    expect.extend([0; 5]);
    assert_eq!(ex.read_memory(base, 16).unwrap(), expect);
    refused(ex.read_memory(base, 17), "past the segment's end");
    refused(other.read_memory(base, 8), "another executor's unit");
    refused(
        other.read_memory(ExecutorAddr(get), 8),
        "another executor's slab",
    );
    ex.deallocate(own).unwrap();
    refused(ex.read_memory(base, 8), "a freed unit's reservation");
    // A slab unit that went: its bytes are slab memory still, and still readable.
    ex.deallocate(id).unwrap();
    assert_eq!(ex.read_memory(ExecutorAddr(get), 11).unwrap(), get_code(B));

    let stack = std::hint::black_box([0x5au8; 64]);
    let heap = std::hint::black_box(vec![0xa5u8; 64]);
    let libc = ex.lookup(&[b"printf"], &[], true).unwrap()[0].unwrap();
    for (what, addr, len) in [
        ("the stack", stack.as_ptr() as u64, 8),
        ("the heap", heap.as_ptr() as u64, 8),
        ("libc's code", libc.0, 16),
        ("address 0", 0, 8),
        ("the top of the address space", u64::MAX - 15, 8),
        ("straddling two regions", at(&s, 0, REGION - 8), 16),
        ("past the slab", at(&s, 2, REGION - 8), 16),
    ] {
        assert!(
            matches!(
                refused(ex.read_memory(ExecutorAddr(addr), len), what),
                Error::NotOwned { .. }
            ),
            "{what}"
        );
    }
    assert!(matches!(
        refused(ex.read_memory(ExecutorAddr(get), u64::MAX), "wraps"),
        Error::InvalidRequest(_) | Error::RangeWraps { .. }
    ));
    refused(
        ex.read_memory(s.regions[0].0, MAX_READ + 1),
        "more than MAX_READ",
    );
    // A range a call is writing is not read (its writable slice is out).
    let working = ExecutorAddr(at(&s, 1, 0x800));
    ex.with_slab_memory(s.id, &[(working, 64)], &mut |m| {
        m[0].fill(7);
        assert!(matches!(
            ex.read_memory(ExecutorAddr(working.0 + 8), 8),
            Err(Error::Busy(_))
        ));
    })
    .unwrap();
    assert_eq!(ex.read_memory(working, 64).unwrap(), [7; 64]);
}

// ---- write_live -----------------------------------------------------------------------------

/// Another thread runs `count_strays` (10,000 calls of `get` a round) for as long as this one
/// rewrites `get`'s 8-byte aligned immediate through `write_live` (20,000 times, and at least
/// through 100 rounds), alternating A and B: every value it saw was A or B. Half the writes
/// cover all of `get` (unaligned head and tail bytes rewritten with the same values, the
/// immediate as one aligned word). (Written as two 4-byte halves in two calls instead, torn
/// immediates are seen.)
#[test]
fn write_live_changes_a_running_constant_atomically() {
    let ex = Arc::new(InProcessExecutor::new());
    let s = new_slab(&ex);
    let (_, get, strays) = get_unit(&ex, &s, 0x106, A);
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (ex, rounds, stop) = (ex.clone(), rounds.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut strays_seen = 0;
            while !stop.load(Ordering::Relaxed) {
                strays_seen += ex.call(ExecutorAddr(strays), &[10_000, A, B]).unwrap();
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            strays_seen
        })
    };
    let mut writes = 0u64;
    while writes < 20_000 || rounds.load(Ordering::Relaxed) < 100 {
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
    let strays_seen = runner.join().unwrap();
    let rounds = rounds.load(Ordering::Relaxed);
    assert_eq!(
        strays_seen, 0,
        "torn immediates were executed ({writes} writes, {rounds} rounds)"
    );
    eprintln!("{writes} writes during {rounds} rounds");
    // After write_live returns, no thread runs the old value.
    ex.write_live(
        s.id,
        &[SlabWrite::Bytes(
            ExecutorAddr(get + 2),
            &0x77u64.to_le_bytes(),
        )],
    )
    .unwrap();
    assert_eq!(ex.call(ExecutorAddr(get), &[]).unwrap(), 0x77);
    assert!(wx_mappings().is_empty(), "{:?}", wx_mappings());
    eprintln!("cores serialized by {}", sync_cores_method());
}

#[test]
fn write_live_rewrites_code_and_refuses_what_it_must() {
    let ex = InProcessExecutor::new();
    let s = new_slab(&ex);
    let (_, get, _) = get_unit(&ex, &s, 0x106, A);
    // A different body, 9 bytes: mov eax, 5; add eax, 37; ret.
    let body = [0xb8, 5, 0, 0, 0, 0x83, 0xc0, 37, 0xc3];
    ex.write_live(s.id, &[SlabWrite::Bytes(ExecutorAddr(get), &body)])
        .unwrap();
    assert_eq!(ex.call(ExecutorAddr(get), &[]).unwrap(), 42);
    assert_eq!(ex.read_memory(ExecutorAddr(get), 9).unwrap(), body);
    // Free space, a fill across the unit and free space, in one call.
    let free = at(&s, 0, 0x800);
    ex.write_live(
        s.id,
        &[
            SlabWrite::Fill(ExecutorAddr(free), 0x40, 0xcc),
            SlabWrite::Bytes(ExecutorAddr(get + 9), &[0xcc; 7]),
        ],
    )
    .unwrap();
    assert_eq!(ex.call(ExecutorAddr(get), &[]).unwrap(), 42);

    // A unit with registered unwind info; another slab; a range being written.
    let frames = at(&s, 0, 0x400);
    let eh = at(&s, 1, 0x400);
    finalize(
        &ex,
        &s,
        UnitSpec {
            parts: vec![
                (frames, MemProt::ReadExec, frames_code()),
                (eh, MemProt::Read, eh_frame(eh, frames)),
            ],
            actions: vec![eh_pair(eh, 52)],
            ..Default::default()
        },
    )
    .unwrap();
    let s2 = new_slab(&ex);
    let working = ExecutorAddr(at(&s, 2, 0x100));
    let stack = std::hint::black_box([0u8; 64]);
    let libc = ex.lookup(&[b"printf"], &[], true).unwrap()[0].unwrap();
    let before = slab_bytes(&s);
    ex.with_slab_memory(s.id, &[(working, 32)], &mut |_| {
        for (what, slab, addr, len) in [
            ("registered unwind info", s.id, eh + 24, 8),
            ("another slab's id", s2.id, get, 8),
            ("an unknown slab", SlabId(999), get, 8),
            ("the stack", s.id, stack.as_ptr() as u64, 8),
            ("libc's code", s.id, libc.0, 8),
            ("address 0", s.id, 0, 8),
            ("straddling two regions", s.id, at(&s, 0, REGION - 4), 8),
            ("a length that wraps", s.id, get, u64::MAX - 2),
            ("a range being written", s.id, working.0 + 16, 8),
        ] {
            let w = SlabWrite::Fill(ExecutorAddr(addr), len, 0x90);
            refused(ex.write_live(slab, &[w]), what);
        }
    })
    .unwrap();
    assert!(slab_bytes(&s) == before, "a refused write changed the slab");
    assert!(frames_at(&ex, frames) > 2, "the unit keeps its unwind info");
    let sim = SimulatedExecutor::new(0x7100_0000_0000, Default::default());
    refused(
        sim.write_live(
            SlabId(0),
            &[SlabWrite::Fill(ExecutorAddr(0x7100_0000_0000), 1, 0)],
        ),
        "the simulated executor has no slabs",
    );
}

// ---- move_allocation ------------------------------------------------------------------------

static INITS: AtomicU32 = AtomicU32::new(0);
static DTORS: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_init() {
    INITS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn count_dtor() {
    DTORS.fetch_add(1, Ordering::SeqCst);
}

extern "C-unwind" fn panicking_walk(_count_one: u64, _counter: u64) -> u64 {
    panic!("unwinding through moved code");
}

/// The unit `move_allocation` moves: `frames` at `code`, its `.eh_frame` at `eh`, jumps to
/// `count_init` and `count_dtor` as initializer and destructor at `code + 0x30` and `+ 0x40`
/// (a second code segment), gdb objects under `key`.
fn moving_unit(ex: &InProcessExecutor, s: &SlabInfo, code: u64, eh: u64, key: u64) -> AllocId {
    let mut stubs = jump_to(count_init as *const () as u64);
    stubs.resize(16, 0xcc);
    stubs.extend(jump_to(count_dtor as *const () as u64));
    finalize(
        ex,
        s,
        UnitSpec {
            parts: vec![
                (code, MemProt::ReadExec, frames_code()),
                (code + 0x30, MemProt::ReadExec, stubs),
                (eh, MemProt::Read, eh_frame(eh, code)),
            ],
            actions: vec![eh_pair(eh, 52), gdb_pair(key, 1)],
            initializers: vec![ExecutorAddr(code + 0x30)],
            deinitializers: vec![Action::CallVoid(ExecutorAddr(code + 0x40))],
        },
    )
    .expect("the moving unit")
}

fn frames_at(ex: &InProcessExecutor, f: u64) -> u64 {
    ex.call(ExecutorAddr(f), &[unwind_backtrace(ex)]).unwrap()
}

/// Count the frames from a copy of `frames` that is no unit's code any more (the executor
/// would refuse to call it): whether the unwinder still knows its old address.
fn frames_from_stale_copy(ex: &InProcessExecutor, f: u64) -> u64 {
    // SAFETY: `f` holds a copy of `frames` (the move left its old bytes in place, in slab
    // memory that stays mapped): code with this signature that calls `walk` and returns.
    let stale =
        unsafe { InProcessExecutor::function::<extern "C" fn(u64) -> u64>(ExecutorAddr(f)) };
    stale(unwind_backtrace(ex))
}

/// One test owns the process-wide counters (initializers, destructors, gdb objects).
#[test]
fn moved_code_runs_and_unwinds_at_its_new_address() {
    let ex = InProcessExecutor::new();
    let s = new_slab(&ex);
    let (code, eh) = (at(&s, 0, 0x100), at(&s, 1, 0x100));
    let gdb_before = debug_sinks::registered_objects();
    let id = moving_unit(&ex, &s, code, eh, 0x1111);
    ex.run_initializers(id).unwrap();
    assert_eq!(INITS.load(Ordering::SeqCst), 1);
    assert!(
        frames_at(&ex, code) > 2,
        "unwinds through the unit where it was linked"
    );
    assert_eq!(debug_sinks::registered_objects(), gdb_before + 1);

    // Code and unwind info move by the same distance (the FDE's start is PC-relative); the
    // stubs stay. New registrations: the .eh_frame where it now is, two gdb objects.
    let d = 0x1000;
    let moves = [
        SegmentMove {
            from: ExecutorAddr(code),
            to: ExecutorAddr(code + d),
            len: frames_code().len() as u64,
        },
        SegmentMove {
            from: ExecutorAddr(eh),
            to: ExecutorAddr(eh + d),
            len: 52,
        },
    ];
    ex.move_allocation(id, &moves, vec![eh_pair(eh + d, 52), gdb_pair(0x2222, 2)])
        .unwrap();
    assert!(
        frames_at(&ex, code + d) > 2,
        "unwinds through the moved unit"
    );
    assert_eq!(
        frames_from_stale_copy(&ex, code),
        1,
        "the old registration is gone"
    );
    assert!(matches!(
        ex.call(ExecutorAddr(code), &[0]),
        Err(Error::NotCode(_))
    ));
    assert_eq!(debug_sinks::registered_objects(), gdb_before + 2);
    // A Rust panic unwinds through the moved frame (the process would abort otherwise).
    // SAFETY: `code + d` is the live unit's `frames`, which calls its argument as
    // `walk(u64, u64)` — a C-unwind function here.
    let f = unsafe {
        InProcessExecutor::function::<extern "C-unwind" fn(u64) -> u64>(ExecutorAddr(code + d))
    };
    let caught = std::panic::catch_unwind(|| f(panicking_walk as *const () as u64));
    assert!(caught.is_err());
    assert_eq!(DTORS.load(Ordering::SeqCst), 0, "moving ran no destructor");
    assert_eq!(INITS.load(Ordering::SeqCst), 1);

    // The stubs move too, now; the old range is poisoned, as a session frees it: the
    // destructor runs from where the stub went.
    let stubs = code + 0x30;
    ex.move_allocation(
        id,
        &[SegmentMove {
            from: ExecutorAddr(stubs),
            to: ExecutorAddr(stubs + 0x2000),
            len: 0x1c,
        }],
        vec![eh_pair(eh + d, 52)],
    )
    .unwrap();
    assert_eq!(
        debug_sinks::registered_objects(),
        gdb_before,
        "gdb objects not re-registered"
    );
    ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(code), 0x80, 0xcc)])
        .unwrap();
    ex.deallocate(id).unwrap();
    assert_eq!(DTORS.load(Ordering::SeqCst), 1);
    assert!(wx_mappings().is_empty());
}

/// Code slides over part of its own old range, down and then up (memmove): same bytes, runs.
#[test]
fn slides_over_its_own_old_range() {
    let ex = InProcessExecutor::new();
    let s = new_slab(&ex);
    let (id, get, strays) = get_unit(&ex, &s, 0x206, A);
    let len = 16 + count_strays_code(0).len() as u64;
    let bytes = ex.read_memory(ExecutorAddr(get), len).unwrap();
    let mut now = get;
    for to in [get - 0x10, get + 0x8] {
        ex.move_allocation(
            id,
            &[SegmentMove {
                from: ExecutorAddr(now),
                to: ExecutorAddr(to),
                len,
            }],
            Vec::new(),
        )
        .unwrap();
        now = to;
        assert_eq!(ex.read_memory(ExecutorAddr(to), len).unwrap(), bytes);
        assert_eq!(ex.call(ExecutorAddr(to), &[]).unwrap(), A);
        assert_eq!(
            ex.call(ExecutorAddr(to + (strays - get)), &[1000, A, B])
                .unwrap(),
            0
        );
    }
    // What the unit left is free again (writes over a live unit are refused).
    ex.write_slab(
        s.id,
        &[SlabWrite::Fill(ExecutorAddr(get - 0x10), 0x18, 0xcc)],
    )
    .unwrap();
    assert_eq!(ex.call(ExecutorAddr(now), &[]).unwrap(), A);
    ex.deallocate(id).unwrap();
}

/// Code moves without its unwind info (moves by a different distance need the FDE fixed up):
/// registrations dropped by one move, the `.eh_frame` rewritten with `write_live` (refused while
/// it was registered), registered again by a move of nothing.
#[test]
fn unwind_info_fixed_up_then_registered_again() {
    let ex = InProcessExecutor::new();
    let s = new_slab(&ex);
    let (code, eh) = (at(&s, 0, 0x100), at(&s, 1, 0x100));
    let id = finalize(
        &ex,
        &s,
        UnitSpec {
            parts: vec![
                (code, MemProt::ReadExec, frames_code()),
                (eh, MemProt::Read, eh_frame(eh, code)),
            ],
            actions: vec![eh_pair(eh, 52)],
            ..Default::default()
        },
    )
    .unwrap();
    let fixed = eh_frame(eh, code + 0x240);
    refused(
        ex.write_live(s.id, &[SlabWrite::Bytes(ExecutorAddr(eh), &fixed)]),
        "registered unwind info",
    );
    let code_move = [SegmentMove {
        from: ExecutorAddr(code),
        to: ExecutorAddr(code + 0x240),
        len: frames_code().len() as u64,
    }];
    ex.move_allocation(id, &code_move, Vec::new()).unwrap();
    assert_eq!(frames_at(&ex, code + 0x240), 1, "no unwind info registered");
    ex.write_live(s.id, &[SlabWrite::Bytes(ExecutorAddr(eh), &fixed)])
        .unwrap();
    ex.move_allocation(id, &[], vec![eh_pair(eh, 52)]).unwrap();
    assert!(frames_at(&ex, code + 0x240) > 2);
    ex.deallocate(id).unwrap();
}

/// A registration that fails after the bytes moved (a TLS module another unit holds): the
/// error says so, the unit runs at its new address without registrations, and a move of nothing
/// registers it.
#[test]
fn a_registration_failing_after_the_copy() {
    let ex = InProcessExecutor::new();
    let s = new_slab(&ex);
    let module = TLS_MODULE_TAG | 0x6a17;
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
    let holder_image = at(&s, 1, 0x800);
    let holder = finalize(
        &ex,
        &s,
        UnitSpec {
            parts: vec![(holder_image, MemProt::Read, vec![1; 8])],
            actions: vec![tls(holder_image)],
            ..Default::default()
        },
    )
    .unwrap();
    let (code, eh) = (at(&s, 0, 0x100), at(&s, 1, 0x100));
    let id = finalize(
        &ex,
        &s,
        UnitSpec {
            parts: vec![
                (code, MemProt::ReadExec, frames_code()),
                (eh, MemProt::Read, eh_frame(eh, code)),
                (eh + 0x40, MemProt::Read, vec![2; 8]),
            ],
            actions: vec![eh_pair(eh, 52)],
            ..Default::default()
        },
    )
    .unwrap();
    let moves = [
        SegmentMove {
            from: ExecutorAddr(code),
            to: ExecutorAddr(code + 0x80),
            len: frames_code().len() as u64,
        },
        SegmentMove {
            from: ExecutorAddr(eh),
            to: ExecutorAddr(eh + 0x80),
            len: 52,
        },
    ];
    let e = refused(
        ex.move_allocation(id, &moves, vec![eh_pair(eh + 0x80, 52), tls(eh + 0x40)]),
        "a TLS module registered already",
    );
    assert!(matches!(e, Error::AfterMove { .. }), "{e}");
    assert_eq!(
        frames_at(&ex, code + 0x80),
        1,
        "the .eh_frame registration was undone"
    );
    ex.move_allocation(id, &[], vec![eh_pair(eh + 0x80, 52)])
        .unwrap();
    assert!(frames_at(&ex, code + 0x80) > 2);
    ex.deallocate(id).unwrap();
    ex.deallocate(holder).unwrap();
}

static HOLD: std::sync::OnceLock<Barrier> = std::sync::OnceLock::new();

extern "C" fn hold_walk(_count_one: u64, _counter: u64) -> u64 {
    let b = HOLD.get().unwrap();
    b.wait(); // the unit is pinned now
    b.wait(); // the refusal was checked
    0
}

#[test]
fn refused_moves_change_nothing() {
    let ex = Arc::new(InProcessExecutor::new());
    let s = new_slab(&ex);
    let s2 = new_slab(&ex);
    let (code, eh) = (at(&s, 0, 0x100), at(&s, 1, 0x100));
    let id = finalize(
        &ex,
        &s,
        UnitSpec {
            parts: vec![
                (code, MemProt::ReadExec, frames_code()),
                (code + 0x30, MemProt::ReadExec, vec![0xc3; 16]),
                (eh, MemProt::Read, eh_frame(eh, code)),
            ],
            actions: vec![eh_pair(eh, 52)],
            ..Default::default()
        },
    )
    .unwrap();
    let (neighbour, n_get, _) = get_unit(&ex, &s, 0x806, A);
    let (gone, _, _) = get_unit(&ex, &s, 0xc06, A);
    ex.deallocate(gone).unwrap();
    let page = ex.info().page_size;
    let base = ex.reserve(page, Placement::Anywhere).unwrap();
    let own = ex
        .finalize(FinalizeRequest {
            reservation: (base, page),
            segments: vec![Segment {
                addr: base,
                prot: MemProt::ReadExec,
                content: get_code(A),
                zero_fill: 0,
            }],
            ..Default::default()
        })
        .unwrap();
    let len = frames_code().len() as u64;
    let mv = |from: u64, to: u64, len: u64| SegmentMove {
        from: ExecutorAddr(from),
        to: ExecutorAddr(to),
        len,
    };
    let to = code + 0x1000;
    let good_actions = || vec![eh_pair(eh, 52)];
    let stack = std::hint::black_box([0u8; 64]);
    let heap = std::hint::black_box(vec![0u8; 64]);
    let libc = ex.lookup(&[b"printf"], &[], true).unwrap()[0].unwrap().0;
    let mut cases: Vec<(&str, AllocId, Vec<SegmentMove>, Vec<ActionPair>)> = vec![
        ("a deallocated unit", gone, vec![mv(code, to, len)], vec![]),
        ("an unknown id", AllocId(u64::MAX), vec![], vec![]),
        (
            "a unit in its own reservation",
            own,
            vec![mv(base.0, base.0 + 64, 11)],
            vec![],
        ),
        (
            "not a segment's start",
            id,
            vec![mv(code + 1, to, len - 1)],
            good_actions(),
        ),
        (
            "not a segment's length",
            id,
            vec![mv(code, to, len + 1)],
            good_actions(),
        ),
        (
            "another unit's segment",
            id,
            vec![mv(n_get, to, 16)],
            good_actions(),
        ),
        (
            "a segment moved twice",
            id,
            vec![mv(code, to, len), mv(code, to + 0x100, len)],
            good_actions(),
        ),
        (
            "onto a live unit",
            id,
            vec![mv(code, n_get - 8, len)],
            good_actions(),
        ),
        (
            "onto another segment of its own",
            id,
            vec![mv(code, code + 0x28, len)],
            good_actions(),
        ),
        (
            "into the read-only region",
            id,
            vec![mv(code, at(&s, 1, 0x800), len)],
            good_actions(),
        ),
        (
            "into another slab",
            id,
            vec![mv(code, at(&s2, 0, 0x100), len)],
            good_actions(),
        ),
        (
            "onto the stack",
            id,
            vec![mv(code, stack.as_ptr() as u64, len)],
            good_actions(),
        ),
        (
            "onto the heap",
            id,
            vec![mv(code, heap.as_ptr() as u64, len)],
            good_actions(),
        ),
        ("onto libc", id, vec![mv(code, libc, len)], good_actions()),
        ("onto address 0", id, vec![mv(code, 0, len)], good_actions()),
        (
            "past the region's end",
            id,
            vec![mv(code, at(&s, 0, REGION - 8), len)],
            good_actions(),
        ),
        (
            "a destination that wraps",
            id,
            vec![mv(code, u64::MAX - 8, len)],
            good_actions(),
        ),
        (
            "destinations that overlap",
            id,
            vec![mv(code, to, len), mv(code + 0x30, to + 8, 16)],
            good_actions(),
        ),
        (
            "unwind info registered where it no longer is",
            id,
            vec![mv(eh, eh + 0x200, 52)],
            vec![eh_pair(eh, 52)],
        ),
        (
            "code registered as unwind info",
            id,
            vec![mv(code, to, len)],
            vec![eh_pair(to, len)],
        ),
        (
            "a static TLS block never allocated",
            id,
            vec![mv(code, to, len)],
            vec![ActionPair {
                finalize: Some(Action::RegisterTls {
                    module: TLS_MODULE_TAG | 0x5151,
                    image: ExecutorAddr(eh),
                    image_size: 8,
                    block_size: 8,
                    align: 8,
                    static_offset: Some(-0x4000_0000),
                }),
                dealloc: Some(Action::DeregisterTls {
                    module: TLS_MODULE_TAG | 0x5151,
                }),
            }],
        ),
        (
            "an action outside the unit",
            id,
            vec![mv(code, to, len)],
            vec![ActionPair {
                finalize: Some(Action::CallVoid(ExecutorAddr(n_get))),
                dealloc: None,
            }],
        ),
    ];
    let before = (slab_bytes(&s), slab_bytes(&s2), read_mem(base.0, 11));
    let unchanged = |what: &str| {
        let now = (slab_bytes(&s), slab_bytes(&s2), read_mem(base.0, 11));
        assert!(now == before, "{what}: a refused move changed memory");
        assert!(
            frames_at(&ex, code) > 2,
            "{what}: the unit lost its registration"
        );
    };
    for (what, unit, moves, actions) in cases.drain(..) {
        refused(ex.move_allocation(unit, &moves, actions), what);
        unchanged(what);
    }
    // A destination being written, and a unit whose code runs: refused until they are done.
    ex.with_slab_memory(s.id, &[(ExecutorAddr(to + 0x20), 8)], &mut |_| {
        assert!(matches!(
            ex.move_allocation(id, &[mv(code, to, len)], good_actions()),
            Err(Error::Busy(_))
        ));
    })
    .unwrap();
    unchanged("a destination being written");
    let hold = HOLD.get_or_init(|| Barrier::new(2));
    let running = {
        let ex = ex.clone();
        std::thread::spawn(move || ex.call(ExecutorAddr(code), &[hold_walk as *const () as u64]))
    };
    hold.wait();
    assert!(matches!(
        ex.move_allocation(id, &[mv(code, to, len)], good_actions()),
        Err(Error::Busy(_))
    ));
    hold.wait();
    running.join().unwrap().unwrap();
    unchanged("a unit whose code runs");
    // And then the move goes through.
    ex.move_allocation(id, &[mv(code, to, len)], Vec::new())
        .unwrap();
    assert_eq!(ex.call(ExecutorAddr(n_get), &[]).unwrap(), A);
    for u in [id, neighbour, own] {
        ex.deallocate(u).unwrap();
    }
}

// ---- the simulated executor -----------------------------------------------------------------

#[test]
fn simulated_reads_what_it_finalized_and_moves_nothing() {
    let ex = SimulatedExecutor::new(0x7100_0000_0000, Default::default());
    let a = ex.reserve(0x2000, Placement::Anywhere).unwrap();
    let id = ex
        .finalize(FinalizeRequest {
            reservation: (a, 0x2000),
            segments: vec![Segment {
                addr: a,
                prot: MemProt::ReadExec,
                content: get_code(A),
                zero_fill: 5,
            }],
            ..Default::default()
        })
        .unwrap();
    let mut expect = get_code(A);
    expect.extend([0; 5]);
    assert_eq!(ex.read_memory(a, 16).unwrap(), expect);
    assert_eq!(
        ex.read_memory(ExecutorAddr(a.0 + 10), 3).unwrap(),
        [0xc3, 0, 0]
    );
    refused(ex.read_memory(a, 17), "past the segment");
    refused(
        ex.read_memory(ExecutorAddr(0x5000_0000_0000), 8),
        "not its memory",
    );
    let e = refused(
        ex.move_allocation(
            id,
            &[SegmentMove {
                from: a,
                to: ExecutorAddr(a.0 + 0x1000),
                len: 16,
            }],
            Vec::new(),
        ),
        "a unit in its own reservation",
    );
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    ex.deallocate(id).unwrap();
    refused(ex.read_memory(a, 8), "a freed unit");
    assert!(matches!(
        refused(ex.move_allocation(id, &[], Vec::new()), "a freed unit"),
        Error::UnknownAllocation(_)
    ));
}

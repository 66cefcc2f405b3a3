//! Every safe method of the executors, called with memory and ids they do not own: the stack,
//! the heap, libc's code, address 0 and the top of the address space, sizes that wrap, ranges
//! straddling two reservations, another executor's memory, deallocated units, released slabs,
//! actions that point outside their unit. Each call must return an error, change no byte of
//! the victims (read back through /proc/self/mem), and leave the process running; afterwards
//! the legitimate flows still work.

use kiln_target::*;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};

/// `mov eax, 42; ret` at 0, `int3` padding, `ret` at 8.
const CODE: [u8; 9] = [0xb8, 42, 0, 0, 0, 0xc3, 0xcc, 0xcc, 0xc3];

fn read_mem(addr: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open("/proc/self/mem").expect("opening /proc/self/mem");
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, addr)
        .expect("reading /proc/self/mem");
    v
}

/// Memory that belongs to someone else, with the bytes it held at the start.
struct Victims {
    ranges: Vec<(&'static str, u64, u64)>,
    before: Vec<Vec<u8>>,
}

impl Victims {
    fn new(ranges: Vec<(&'static str, u64, u64)>) -> Victims {
        let before = ranges
            .iter()
            .map(|&(_, a, n)| read_mem(a, n as usize))
            .collect();
        Victims { ranges, before }
    }

    fn assert_unchanged(&self) {
        for ((what, a, n), before) in self.ranges.iter().zip(&self.before) {
            assert!(
                read_mem(*a, *n as usize) == *before,
                "the bytes of {what} at {a:#x} changed"
            );
        }
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?}), should be refused"),
        Err(e) => e,
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
fn unit(base: u64, page: u64) -> FinalizeRequest {
    FinalizeRequest {
        reservation: (ExecutorAddr(base), 2 * page),
        segments: vec![
            seg(base, MemProt::ReadExec, &CODE, 0),
            seg(base.wrapping_add(page), MemProt::ReadWrite, &[7; 16], 0),
        ],
        ..Default::default()
    }
}

fn with_action(
    mut req: FinalizeRequest,
    finalize: Action,
    dealloc: Option<Action>,
) -> FinalizeRequest {
    req.actions.push(ActionPair {
        finalize: Some(finalize),
        dealloc,
    });
    req
}

fn libc_page(ex: &dyn Executor) -> u64 {
    let printf = ex.lookup(&[b"printf"], &[], true).unwrap()[0].expect("printf is in the process");
    printf.0 & !0xfff
}

/// Two adjacent reservations of `n` pages each: (first, second). Made by reserving both at
/// once, releasing, and reserving the two halves at fixed addresses (retried: other tests'
/// threads map memory too).
fn adjacent(ex: &dyn Executor, page: u64, n: u64) -> (u64, u64) {
    for _ in 0..16 {
        let a = ex.reserve(2 * n * page, Placement::Anywhere).unwrap();
        ex.release(a, 2 * n * page).unwrap();
        let Ok(first) = ex.reserve(n * page, Placement::Fixed(a.0)) else {
            continue;
        };
        match ex.reserve(n * page, Placement::Fixed(a.0 + n * page)) {
            Ok(second) => return (first.0, second.0),
            Err(_) => ex.release(first, n * page).unwrap(),
        }
    }
    panic!("no two adjacent reservations in 16 tries");
}

/// The refusals both executors share: reservations, finalize, actions, ids, calls. `foreign`
/// are (name, address) of memory the executor does not own.
fn common_refusals(ex: &dyn Executor, other: &dyn Executor, foreign: &[(&str, u64)]) {
    let page = ex.info().page_size;
    let (a, b) = adjacent(ex, page, 2);
    let theirs = other.reserve(2 * page, Placement::Anywhere).unwrap().0;
    for &(what, addr) in foreign {
        refused(ex.release(ExecutorAddr(addr), page), what);
        refused(ex.finalize(unit(addr, page)), what);
        refused(ex.call_void(ExecutorAddr(addr)), what);
        refused(ex.run_main(ExecutorAddr(addr), &[]), what);
    }
    for (what, addr, size) in [
        ("straddling two reservations", a, 4 * page),
        ("part of a reservation", a, page),
        ("the tail of a reservation", a + page, page),
        ("a size that wraps", a, u64::MAX - a + 1 + page),
        ("a huge size", a, u64::MAX),
        ("another executor's reservation", theirs, 2 * page),
    ] {
        refused(ex.release(ExecutorAddr(addr), size), what);
        let mut req = unit(a, page);
        req.reservation = (ExecutorAddr(addr), size);
        refused(ex.finalize(req), what);
    }
    other.release(ExecutorAddr(theirs), 2 * page).unwrap();
    // Segments outside their reservation, wrapping, overlapping.
    let mut req = unit(a, page);
    req.segments[1].addr = ExecutorAddr(b);
    refused(ex.finalize(req), "a segment in the next reservation");
    let mut req = unit(a, page);
    req.segments[1].zero_fill = page;
    refused(
        ex.finalize(req),
        "a segment running into the next reservation",
    );
    let mut req = unit(a, page);
    req.segments[1].zero_fill = u64::MAX;
    assert!(matches!(
        refused(ex.finalize(req), "a wrapping zero fill"),
        Error::RangeWraps { .. }
    ));
    let mut req = unit(a, page);
    req.segments[1].addr = ExecutorAddr(a);
    refused(ex.finalize(req), "overlapping segments");
    // Actions that point outside their unit.
    let code = ExecutorAddr(a);
    let data = ExecutorAddr(a + page);
    for &(what, addr) in foreign {
        let x = ExecutorAddr(addr);
        for req in [
            with_action(unit(a, page), Action::CallVoid(x), None),
            with_action(
                unit(a, page),
                Action::CallVoid(code),
                Some(Action::CallVoid(x)),
            ),
            with_action(unit(a, page), Action::CxaFinalize { dso: x }, None),
            with_action(
                unit(a, page),
                Action::ResolveIfunc {
                    resolver: code,
                    slot: x,
                },
                None,
            ),
            with_action(
                unit(a, page),
                Action::ResolveIfunc {
                    resolver: x,
                    slot: data,
                },
                None,
            ),
            with_action(
                unit(a, page),
                Action::RegisterEhFrame { addr: x, size: 16 },
                Some(Action::DeregisterEhFrame { addr: x, size: 16 }),
            ),
            with_action(
                unit(a, page),
                Action::RegisterTls {
                    module: TLS_MODULE_TAG | 0x1234,
                    image: x,
                    image_size: 8,
                    block_size: 8,
                    align: 8,
                    static_offset: None,
                },
                Some(Action::DeregisterTls {
                    module: TLS_MODULE_TAG | 0x1234,
                }),
            ),
            with_action(
                unit(a, page),
                Action::DiscardTranslations { addr: x, size: 16 },
                None,
            ),
            FinalizeRequest {
                initializers: vec![x],
                ..unit(a, page)
            },
            FinalizeRequest {
                deinitializers: vec![Action::CallVoid(x)],
                ..unit(a, page)
            },
        ] {
            assert!(
                matches!(
                    refused(ex.finalize(req), what),
                    Error::BadAction { .. } | Error::RangeWraps { .. }
                ),
                "{what}"
            );
        }
    }
    for (why, req) in [
        (
            "data is not code",
            with_action(unit(a, page), Action::CallVoid(data), None),
        ),
        (
            "the IFUNC slot is in code",
            with_action(
                unit(a, page),
                Action::ResolveIfunc {
                    resolver: code,
                    slot: code,
                },
                None,
            ),
        ),
        (
            "a registration never undone",
            with_action(
                unit(a, page),
                Action::RegisterEhFrame {
                    addr: data,
                    size: 4,
                },
                None,
            ),
        ),
        (
            "a deregistration of something else",
            with_action(
                unit(a, page),
                Action::CallVoid(code),
                Some(Action::DeregisterTls {
                    module: TLS_MODULE_TAG | 0x99,
                }),
            ),
        ),
        (
            "a static TLS block never allocated",
            with_action(
                unit(a, page),
                Action::RegisterTls {
                    module: TLS_MODULE_TAG | 0x77,
                    image: data,
                    image_size: 8,
                    block_size: 8,
                    align: 8,
                    static_offset: Some(-0x4000_0000),
                },
                Some(Action::DeregisterTls {
                    module: TLS_MODULE_TAG | 0x77,
                }),
            ),
        ),
    ] {
        refused(ex.finalize(req), why);
    }
    // Stale and foreign ids.
    for id in [0, u64::MAX, 1 << 40] {
        refused(ex.deallocate(AllocId(id)), "an unknown allocation");
        refused(ex.run_initializers(AllocId(id)), "an unknown allocation");
    }
    refused(
        ex.lookup(&[b"printf"], &[LibraryId(77)], false),
        "an unknown library",
    );
    refused(
        ex.load_library(std::path::Path::new("/nonexistent/libkiln-nothing.so")),
        "a missing library",
    );
    refused(
        ex.allocate_static_tls(&[1; 16], 8, 8),
        "an image larger than its block",
    );
    refused(
        ex.allocate_static_tls(&[], 8, 3),
        "an alignment that is no power of two",
    );
    // After all that, the reservation is intact and the unit finalizes in it; then its id goes
    // stale.
    let id = ex
        .finalize(unit(a, page))
        .expect("a unit in its own reservation");
    refused(
        ex.release(ExecutorAddr(a), 2 * page),
        "a reservation in use",
    );
    refused(ex.finalize(unit(a, page)), "a reservation in use");
    refused(ex.call_void(ExecutorAddr(a + page)), "a data segment");
    assert!(
        other.deallocate(id).is_err() && other.call_void(code).is_err(),
        "another executor's unit"
    );
    ex.run_initializers(id).unwrap();
    ex.deallocate(id).unwrap();
    refused(ex.deallocate(id), "a deallocated unit");
    refused(ex.run_initializers(id), "a deallocated unit");
    assert!(matches!(
        refused(ex.call_void(code), "a deallocated unit's code"),
        Error::NotCode(_)
    ));
    refused(
        ex.release(ExecutorAddr(a), 2 * page),
        "a deallocated unit's reservation",
    );
    ex.release(ExecutorAddr(b), 2 * page).unwrap();
    refused(
        ex.release(ExecutorAddr(b), 2 * page),
        "a released reservation",
    );
}

#[test]
fn in_process_refuses_what_it_does_not_own() {
    let ex = InProcessExecutor::new();
    let other = InProcessExecutor::new();
    let stack = std::hint::black_box([0x5au8; 4096]);
    let heap = std::hint::black_box(vec![0xa5u8; 3 * 4096].into_boxed_slice());
    let libc = libc_page(&ex);
    let heap_page = (heap.as_ptr() as u64 + 4095) & !4095;
    let stack_addr = stack.as_ptr() as u64;
    let victims = Victims::new(vec![
        ("a stack buffer", stack_addr, 4096),
        ("a heap buffer", heap.as_ptr() as u64, heap.len() as u64),
        ("libc's code", libc, 4096),
    ]);
    let foreign = [
        ("the stack", stack_addr & !4095),
        ("the heap", heap_page),
        ("libc's code", libc),
        ("address 0", 0),
        ("the top of the address space", !4095),
    ];
    common_refusals(&ex, &other, &foreign);
    slab_refusals(&ex, &foreign);
    victims.assert_unchanged();
    assert_eq!(stack[4095], 0x5a);
}

#[test]
fn simulated_refuses_what_it_does_not_own() {
    let ex = SimulatedExecutor::new(0x7100_0000_0000, Default::default());
    let other = SimulatedExecutor::new(0x7200_0000_0000, Default::default());
    let foreign = [
        ("somewhere else", 0x5000_0000_0000),
        ("address 0", 0),
        ("the top of the address space", !4095),
    ];
    common_refusals(&ex, &other, &foreign);
    // Its own live code: checked, then not run (it runs nothing).
    let a = ex.reserve(0x2000, Placement::Anywhere).unwrap();
    ex.finalize(unit(a.0, 0x1000)).unwrap();
    assert!(matches!(ex.call_void(a), Err(Error::InvalidRequest(_))));
    assert!(matches!(
        ex.call_void(ExecutorAddr(a.0 + 0x1000)),
        Err(Error::NotCode(_))
    ));
    assert!(!ex.supports_slabs());
    refused(ex.create_slab([0x1000; 3], Placement::Anywhere), "no slabs");
}

/// A slab of three one-page regions (code, read-only, data).
fn slab(ex: &InProcessExecutor) -> SlabInfo {
    ex.create_slab([0x1000, 0x1000, 0x1000], Placement::Anywhere)
        .expect("a slab")
}

/// Write CODE into region 0 at `at` and finalize it (with a registered, empty eh_frame in the
/// read-only region): (unit, entry).
fn slab_unit(ex: &InProcessExecutor, s: &SlabInfo, at: u64, eh_at: u64) -> Result<(AllocId, u64)> {
    let code = s.regions[0].0 .0 + at;
    let eh = s.regions[1].0 .0 + eh_at;
    ex.with_slab_memory(
        s.id,
        &[(ExecutorAddr(code), 9), (ExecutorAddr(eh), 4)],
        &mut |b| {
            b[0].copy_from_slice(&CODE);
            b[1].fill(0);
        },
    )?;
    let id = ex.finalize(FinalizeRequest {
        segments: vec![
            seg(code, MemProt::ReadExec, &[], 9),
            seg(eh, MemProt::Read, &[], 4),
        ],
        actions: vec![ActionPair {
            finalize: Some(Action::RegisterEhFrame {
                addr: ExecutorAddr(eh),
                size: 4,
            }),
            dealloc: Some(Action::DeregisterEhFrame {
                addr: ExecutorAddr(eh),
                size: 4,
            }),
        }],
        in_slab: true,
        ..Default::default()
    })?;
    Ok((id, code))
}

/// A segment of `size` bytes of code at `addr`, for [`Executor::finalize_slab_unit`].
fn code_segment(addr: u64, size: u64) -> SlabSegment {
    SlabSegment {
        addr: ExecutorAddr(addr),
        size,
        prot: MemProt::ReadExec,
    }
}

fn slab_refusals(ex: &InProcessExecutor, foreign: &[(&str, u64)]) {
    let s = slab(ex);
    let [(code, _), (ro, _), (data, _)] = s.regions;
    let stale = slab(ex);
    ex.release_slab(stale.id).unwrap();
    refused(ex.release_slab(stale.id), "a released slab");
    refused(ex.release_slab(SlabId(9999)), "an unknown slab");
    for sizes in [[0x1001, 0, 0], [0; 3], [!0xfff, 0x1000, 0x1000]] {
        refused(
            ex.create_slab(sizes, Placement::Anywhere),
            "impossible region sizes",
        );
    }
    let mut nothing = |_: &mut [&mut [u8]]| panic!("must not be called");
    let mut no_unit = |_: &mut [&mut [u8]]| -> Option<UnitActions> { panic!("must not be called") };
    for &(what, addr) in foreign {
        let x = ExecutorAddr(addr);
        refused(
            ex.write_slab(s.id, &[SlabWrite::Bytes(x, &[0xcc; 8])]),
            what,
        );
        refused(ex.write_slab(s.id, &[SlabWrite::Fill(x, 4096, 0xcc)]), what);
        refused(ex.with_slab_memory(s.id, &[(x, 8)], &mut nothing), what);
        refused(
            ex.finalize_slab_unit(s.id, &[code_segment(addr, 16)], &mut no_unit),
            what,
        );
        refused(ex.patch(s.id, x, &[0xcc; 8]), what);
        let req = FinalizeRequest {
            segments: vec![seg(addr, MemProt::ReadExec, &[], 16)],
            in_slab: true,
            ..Default::default()
        };
        refused(ex.finalize(req), what);
    }
    for (what, addr, len) in [
        ("straddling two regions", code.0 + 0xff0, 0x20),
        ("past the slab's end", data.0 + 0xff0, 0x20),
        ("a length that wraps", code.0 + 8, u64::MAX - 4),
    ] {
        let x = ExecutorAddr(addr);
        refused(ex.write_slab(s.id, &[SlabWrite::Fill(x, len, 0xcc)]), what);
        refused(ex.with_slab_memory(s.id, &[(x, len)], &mut nothing), what);
        refused(
            ex.finalize_slab_unit(s.id, &[code_segment(addr, len)], &mut no_unit),
            what,
        );
    }
    refused(
        ex.finalize_slab_unit(
            stale.id,
            &[code_segment(stale.regions[0].0 .0, 4)],
            &mut no_unit,
        ),
        "a released slab",
    );
    refused(
        ex.finalize_slab_unit(
            s.id,
            &[code_segment(code.0, 16), code_segment(code.0 + 8, 16)],
            &mut no_unit,
        ),
        "overlapping segments in one call",
    );
    refused(
        ex.finalize_slab_unit(s.id, &[code_segment(ro.0 + 0x100, 16)], &mut no_unit),
        "code in the read-only region",
    );
    refused(
        ex.write_slab(stale.id, &[SlabWrite::Fill(stale.regions[0].0, 4, 0)]),
        "a released slab",
    );
    refused(
        ex.with_slab_memory(
            s.id,
            &[(code, 16), (ExecutorAddr(code.0 + 8), 16)],
            &mut nothing,
        ),
        "overlapping ranges in one call",
    );
    refused(
        ex.patch(s.id, ExecutorAddr(code.0 + 2), &[0; 4]),
        "a misaligned patch",
    );
    refused(ex.patch(s.id, code, &[0; 3]), "a patch of 3 bytes");
    refused(
        ex.patch(stale.id, stale.regions[0].0, &[0; 4]),
        "a released slab",
    );

    // A live unit in the slab: its bytes are not written, its slab not released.
    let (id, entry) = slab_unit(ex, &s, 0x40, 0x10).expect("a unit in the slab");
    let wrong_region = FinalizeRequest {
        segments: vec![seg(ro.0 + 0x100, MemProt::ReadExec, &[], 16)],
        in_slab: true,
        ..Default::default()
    };
    refused(ex.finalize(wrong_region), "code in the read-only region");
    assert!(slab_unit(ex, &s, 0x44, 0x80).is_err(), "over a live unit");
    for (what, addr, prot) in [
        ("its code", entry + 4, MemProt::ReadExec),
        ("its eh_frame", ro.0 + 0x10, MemProt::Read),
    ] {
        let x = ExecutorAddr(addr);
        assert!(matches!(
            refused(ex.write_slab(s.id, &[SlabWrite::Fill(x, 4, 0xcc)]), what),
            Error::Busy(_)
        ));
        refused(ex.with_slab_memory(s.id, &[(x, 4)], &mut nothing), what);
        assert!(matches!(
            refused(
                ex.finalize_slab_unit(
                    s.id,
                    &[SlabSegment {
                        prot,
                        ..code_segment(addr, 4)
                    }],
                    &mut no_unit
                ),
                what
            ),
            Error::Busy(_)
        ));
    }
    refused(
        ex.patch(s.id, ExecutorAddr(ro.0 + 0x10), &[1, 2, 3, 4]),
        "registered unwind info",
    );
    assert!(matches!(
        refused(ex.release_slab(s.id), "a slab with a live unit"),
        Error::Busy(_)
    ));
    assert_eq!(ex.run_main(ExecutorAddr(entry), &[]).unwrap(), 42);
    refused(
        ex.patch(s.id, ExecutorAddr(entry + 1), &[7, 0, 0, 0]),
        "misaligned",
    );
    // The session's freeing: deallocate, then fill the range with int3.
    ex.deallocate(id).unwrap();
    refused(ex.run_main(ExecutorAddr(entry), &[]), "a deallocated unit");
    ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(entry), 9, 0xcc)])
        .unwrap();
    ex.release_slab(s.id).unwrap();
    refused(
        ex.run_main(ExecutorAddr(entry), &[]),
        "a released slab's code",
    );
}

#[test]
fn slab_units_run_and_patch() {
    let ex = InProcessExecutor::new();
    let s = slab(&ex);
    let (id, entry) = slab_unit(&ex, &s, 0x40, 0x10).unwrap();
    ex.run_initializers(id).unwrap();
    assert_eq!(ex.run_main(ExecutorAddr(entry), &[]).unwrap(), 42);
    ex.call_void(ExecutorAddr(entry + 8)).unwrap();
    // `mov eax, imm32` at entry + 0: the immediate at entry + 1 is not aligned; move the unit
    // so that it is. A second unit at 0x83 puts its immediate at 0x84.
    let (id2, entry2) = slab_unit(&ex, &s, 0x83, 0x20).unwrap();
    ex.patch(s.id, ExecutorAddr(entry2 + 1), &7u32.to_le_bytes())
        .unwrap();
    assert_eq!(ex.run_main(ExecutorAddr(entry2), &[]).unwrap(), 7);
    assert_eq!(ex.run_main(ExecutorAddr(entry), &[]).unwrap(), 42);
    ex.deallocate(id).unwrap();
    ex.deallocate(id2).unwrap();
    ex.release_slab(s.id).unwrap();
}

/// `finalize_slab_unit`: while the writer holds a new unit's bytes nobody else writes, reads,
/// patches, runs or takes them; a writer that gives up, panics or asks for actions outside its
/// unit leaves the memory free; units with and without actions go live and run.
#[test]
fn slab_units_in_one_request() {
    let ex = InProcessExecutor::new();
    let s = slab(&ex);
    let [(code, _), (ro, _), _] = s.regions;
    let at = code.0 + 0x43; // the immediate at +0x44 is 4-aligned
    let id = ex
        .finalize_slab_unit(s.id, &[code_segment(at, 9)], &mut |b| {
            b[0].copy_from_slice(&CODE);
            let inside = ExecutorAddr(at + 4);
            assert!(matches!(
                ex.finalize_slab_unit(s.id, &[code_segment(at + 4, 4)], &mut |_| None),
                Err(Error::Busy(_))
            ));
            assert!(ex
                .with_slab_memory(s.id, &[(inside, 4)], &mut |_| {})
                .is_err());
            assert!(ex
                .write_slab(s.id, &[SlabWrite::Fill(inside, 1, 0)])
                .is_err());
            assert!(ex
                .write_live(s.id, &[SlabWrite::Fill(inside, 1, 0)])
                .is_err());
            assert!(ex.patch(s.id, inside, &[0; 4]).is_err());
            assert!(ex.read_memory(ExecutorAddr(at), 9).is_err());
            assert!(matches!(
                ex.run_main(ExecutorAddr(at), &[]),
                Err(Error::NotCode(_))
            ));
            Some(UnitActions::default())
        })
        .unwrap()
        .expect("a live unit");
    assert_eq!(ex.run_main(ExecutorAddr(at), &[]).unwrap(), 42);
    assert_eq!(ex.read_memory(ExecutorAddr(at), 9).unwrap(), CODE);
    assert!(matches!(
        refused(
            ex.finalize_slab_unit(s.id, &[code_segment(at + 8, 8)], &mut |_| None),
            "over a live unit"
        ),
        Error::Busy(_)
    ));
    ex.patch(s.id, ExecutorAddr(at + 1), &7u32.to_le_bytes())
        .unwrap();
    assert_eq!(ex.run_main(ExecutorAddr(at), &[]).unwrap(), 7);

    // Writers that do not finish: the range is free again each time.
    let other = code.0 + 0x100;
    let eh = ro.0 + 0x10;
    let segments = [
        code_segment(other, 9),
        SlabSegment {
            addr: ExecutorAddr(eh),
            size: 4,
            prot: MemProt::Read,
        },
    ];
    let gave_up = ex.finalize_slab_unit(s.id, &segments, &mut |b| {
        b[0].copy_from_slice(&CODE);
        None
    });
    assert!(gave_up.unwrap().is_none(), "a writer that gives up");
    let outside = |unit: UnitActions, what: &str| {
        let mut unit = Some(unit);
        refused(
            ex.finalize_slab_unit(s.id, &segments, &mut |_| unit.take()),
            what,
        );
    };
    outside(
        UnitActions {
            actions: vec![ActionPair {
                finalize: Some(Action::CallVoid(ExecutorAddr(at))),
                dealloc: None,
            }],
            ..Default::default()
        },
        "an action in another unit's code",
    );
    outside(
        UnitActions {
            initializers: vec![ExecutorAddr(eh)],
            ..Default::default()
        },
        "an initializer outside its code",
    );
    outside(
        UnitActions {
            deinitializers: vec![Action::CallVoid(ExecutorAddr(0))],
            ..Default::default()
        },
        "a deinitializer at address 0",
    );
    let module = TLS_MODULE_TAG | eh;
    outside(
        UnitActions {
            actions: vec![ActionPair {
                finalize: Some(Action::RegisterTls {
                    module,
                    image: ExecutorAddr(eh),
                    image_size: 0,
                    block_size: 16,
                    align: 8,
                    static_offset: Some(-0x40),
                }),
                dealloc: Some(Action::DeregisterTls { module }),
            }],
            ..Default::default()
        },
        "a static TLS block this executor did not hand out",
    );
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ex.finalize_slab_unit(s.id, &segments, &mut |_| panic!("the writer fails"))
    }));
    assert!(panicked.is_err(), "the writer's panic goes on");

    // The range takes a unit with actions: unwind info registered, an initializer and a
    // destructor.
    let id2 = ex
        .finalize_slab_unit(s.id, &segments, &mut |b| {
            b[0].copy_from_slice(&CODE);
            b[1].fill(0);
            Some(UnitActions {
                actions: vec![ActionPair {
                    finalize: Some(Action::RegisterEhFrame {
                        addr: ExecutorAddr(eh),
                        size: 4,
                    }),
                    dealloc: Some(Action::DeregisterEhFrame {
                        addr: ExecutorAddr(eh),
                        size: 4,
                    }),
                }],
                initializers: vec![ExecutorAddr(other + 8)],
                deinitializers: vec![Action::CallVoid(ExecutorAddr(other + 8))],
            })
        })
        .unwrap()
        .expect("a live unit with actions");
    refused(
        ex.patch(s.id, ExecutorAddr(eh), &[1, 2, 3, 4]),
        "registered unwind info",
    );
    ex.run_initializers(id2).unwrap();
    assert_eq!(ex.run_main(ExecutorAddr(other), &[]).unwrap(), 42);
    ex.deallocate(id).unwrap();
    ex.deallocate(id2).unwrap();
    refused(ex.run_main(ExecutorAddr(at), &[]), "a deallocated unit");
    refused(ex.deallocate(id2), "a deallocated unit");
    // Nothing was left behind: no unit, no claim.
    ex.release_slab(s.id).unwrap();
}

/// Threads write and finalize units in one slab at once, each through `finalize_slab_unit`:
/// disjoint units are written concurrently (each thread holds its slice while the others get
/// theirs), overlapping ones are refused.
#[test]
fn concurrent_slab_units() {
    const THREADS: usize = 4;
    let ex = Arc::new(InProcessExecutor::new());
    let s = slab(&ex);
    let all_inside = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS as u64)
        .map(|i| {
            let (ex, all_inside) = (ex.clone(), all_inside.clone());
            std::thread::spawn(move || {
                let at = s.regions[0].0 .0 + 0x100 * i;
                let id = ex
                    .finalize_slab_unit(s.id, &[code_segment(at, 9)], &mut |b| {
                        all_inside.wait();
                        let mut code = CODE;
                        code[1] = i as u8;
                        b[0].copy_from_slice(&code);
                        let next = s.regions[0].0 .0 + 0x100 * ((i + 1) % THREADS as u64);
                        assert!(matches!(
                            ex.finalize_slab_unit(s.id, &[code_segment(next, 4)], &mut |_| None),
                            Err(Error::Busy(_))
                        ));
                        all_inside.wait();
                        Some(UnitActions::default())
                    })
                    .unwrap()
                    .expect("a live unit");
                let r = ex.run_main(ExecutorAddr(at), &[]).unwrap();
                ex.deallocate(id).unwrap();
                r
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i as i32);
    }
    ex.release_slab(s.id).unwrap();
}

#[test]
fn reservation_units_run_and_go() {
    let ex = InProcessExecutor::new();
    let page = ex.info().page_size;
    let a = ex.reserve(2 * page, Placement::Anywhere).unwrap();
    let mut req = unit(a.0, page);
    req.initializers = vec![ExecutorAddr(a.0 + 8)];
    req.deinitializers = vec![Action::CallVoid(ExecutorAddr(a.0 + 8))];
    let id = ex.finalize(req).unwrap();
    ex.run_initializers(id).unwrap();
    ex.run_initializers(id).unwrap(); // once only; the second is a no-op
    assert_eq!(ex.run_main(a, &[]).unwrap(), 42);
    ex.deallocate(id).unwrap();
    // A failed finalize leaves the reservation to its owner, as it was.
    let b = ex.reserve(2 * page, Placement::Anywhere).unwrap();
    let bad = with_action(unit(b.0, page), Action::CallVoid(ExecutorAddr(0)), None);
    refused(ex.finalize(bad), "an action outside its unit");
    ex.release(b, 2 * page).unwrap();
}

/// Threads prepare units in one slab at once: disjoint ranges are handed out concurrently
/// (each thread holds its slice while the others get theirs), overlapping ones are refused.
#[test]
fn concurrent_working_memory() {
    const THREADS: usize = 4;
    let ex = Arc::new(InProcessExecutor::new());
    let s = slab(&ex);
    let all_inside = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS as u64)
        .map(|i| {
            let (ex, all_inside) = (ex.clone(), all_inside.clone());
            std::thread::spawn(move || {
                let at = ExecutorAddr(s.regions[0].0 .0 + 0x100 * i);
                ex.with_slab_memory(s.id, &[(at, 9)], &mut |b| {
                    // Every thread is inside its closure at once: no lock is held here.
                    all_inside.wait();
                    let mut code = CODE;
                    code[1] = i as u8;
                    b[0].copy_from_slice(&code);
                    let overlap =
                        ExecutorAddr(s.regions[0].0 .0 + 0x100 * ((i + 1) % THREADS as u64));
                    assert!(matches!(
                        ex.with_slab_memory(s.id, &[(overlap, 4)], &mut |_| {}),
                        Err(Error::Busy(_))
                    ));
                    assert!(ex.write_slab(s.id, &[SlabWrite::Fill(at, 1, 0)]).is_err());
                    assert!(ex.patch(s.id, ExecutorAddr(at.0), &[0; 4]).is_err());
                    all_inside.wait();
                })
                .unwrap();
                let id = ex
                    .finalize(FinalizeRequest {
                        segments: vec![seg(at.0, MemProt::ReadExec, &[], 9)],
                        in_slab: true,
                        ..Default::default()
                    })
                    .unwrap();
                let r = ex.run_main(at, &[]).unwrap();
                ex.deallocate(id).unwrap();
                r
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i as i32);
    }
    ex.release_slab(s.id).unwrap();
}

/// `CODE` returning `n` (`mov eax, n; ret`), for a unit of `finalize_slab_unit`.
fn code_returning(n: u32) -> [u8; 9] {
    let mut code = CODE;
    code[1..5].copy_from_slice(&n.to_le_bytes());
    code
}

/// Each slab has a table of its own: two threads finalize units into two slabs at once while a
/// third removes them. Every check still holds in each slab (a range being written cannot be
/// claimed again, a live unit's bytes cannot be claimed, a removed unit cannot be called or
/// removed twice), ids never repeat across slabs, and the removed units' memory is reused (the
/// second round writes where the first one's units were).
#[test]
fn units_of_two_slabs_at_once_while_a_third_thread_removes() {
    const UNITS: u32 = 300;
    let ex = Arc::new(InProcessExecutor::new());
    let slabs = [0, 1].map(|_| {
        ex.create_slab([0x10000, 0x1000, 0x1000], Placement::Anywhere)
            .expect("a slab")
    });
    type Removal = (AllocId, u64, std::sync::mpsc::Sender<()>);
    let (to_remover, removals) = std::sync::mpsc::channel::<Removal>();
    let writers: Vec<_> = slabs
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let (ex, s, to_remover) = (ex.clone(), *s, to_remover.clone());
            std::thread::spawn(move || {
                let (freed, acks) = std::sync::mpsc::channel();
                let mut ids = Vec::new();
                for round in 0..2 {
                    for i in 0..UNITS {
                        let at = s.regions[0].0 .0 + 0x40 * u64::from(i);
                        let value = 1000 * t as u32 + i;
                        let id = ex
                            .finalize_slab_unit(s.id, &[code_segment(at, 9)], &mut |b| {
                                b[0].copy_from_slice(&code_returning(value));
                                let again = ex.with_slab_memory(
                                    s.id,
                                    &[(ExecutorAddr(at + 4), 4)],
                                    &mut |_| {},
                                );
                                assert!(matches!(again, Err(Error::Busy(_))), "{again:?}");
                                Some(UnitActions::default())
                            })
                            .unwrap_or_else(|e| panic!("round {round}, unit {i}: {e}"))
                            .expect("a live unit");
                        assert_eq!(ex.run_main(ExecutorAddr(at), &[]).unwrap(), value as i32);
                        refused(
                            ex.with_slab_memory(s.id, &[(ExecutorAddr(at), 1)], &mut |_| {}),
                            "a live unit's bytes",
                        );
                        ids.push(id);
                        to_remover.send((id, at, freed.clone())).unwrap();
                    }
                    // The second round reuses the addresses: wait until the remover freed them
                    // (an error if it stopped).
                    for _ in 0..UNITS {
                        acks.recv().expect("the remover stopped");
                    }
                }
                ids
            })
        })
        .collect();
    drop(to_remover);
    let remover = {
        let ex = ex.clone();
        std::thread::spawn(move || {
            let mut removed = 0;
            for (id, at, freed) in removals {
                ex.deallocate(id).unwrap();
                refused(ex.deallocate(id), "removed twice");
                refused(ex.run_main(ExecutorAddr(at), &[]), "a removed unit");
                refused(ex.run_initializers(id), "a removed unit");
                removed += 1;
                freed.send(()).unwrap();
            }
            removed
        })
    };
    let mut ids: Vec<u64> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .map(|id| id.0)
        .collect();
    assert_eq!(remover.join().unwrap(), 4 * UNITS as usize);
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an allocation id was handed out twice");
    for s in &slabs {
        ex.release_slab(s.id).unwrap();
        refused(ex.release_slab(s.id), "released twice");
    }
}

/// What spans the per-slab tables is checked too: one request's segments in two slabs, ids
/// that name no allocation (another slab's counter, an unknown slab, a released one), a read
/// across two slabs.
#[test]
fn requests_across_slabs_and_forged_ids_are_refused() {
    let ex = InProcessExecutor::new();
    let (a, b) = (slab(&ex), slab(&ex));
    let (code_a, ro_b) = (a.regions[0].0 .0, b.regions[1].0 .0);
    refused(
        ex.finalize(FinalizeRequest {
            segments: vec![
                seg(code_a, MemProt::ReadExec, &[], 9),
                seg(ro_b, MemProt::Read, &[], 4),
            ],
            in_slab: true,
            ..Default::default()
        }),
        "segments in two slabs",
    );
    // Nothing was taken: the same code range makes a unit.
    let id = ex
        .finalize_slab_unit(a.id, &[code_segment(code_a, 9)], &mut |b| {
            b[0].copy_from_slice(&CODE);
            Some(UnitActions::default())
        })
        .unwrap()
        .expect("a live unit");
    assert_eq!(ex.run_main(ExecutorAddr(code_a), &[]).unwrap(), 42);
    for forged in [
        id.0 + 1,
        id.0 ^ (1 << 40),
        id.0 | (0xff_ffff << 40),
        u64::MAX,
        0,
        1,
    ] {
        refused(ex.deallocate(AllocId(forged)), "a forged id");
        refused(ex.run_initializers(AllocId(forged)), "a forged id");
    }
    let (end_a, start_b) = (a.regions[2].0 .0 + a.regions[2].1, b.regions[0].0 .0);
    if end_a == start_b {
        refused(
            ex.read_memory(ExecutorAddr(end_a - 8), 16),
            "a read across two slabs",
        );
    }
    ex.release_slab(b.id).unwrap();
    refused(
        ex.finalize_slab_unit(b.id, &[code_segment(b.regions[0].0 .0, 9)], &mut |_| None),
        "a released slab",
    );
    ex.deallocate(id).unwrap();
    ex.release_slab(a.id).unwrap();
}

/// A unit of one code segment at `addr` returning `n`, written and made live by
/// `finalize_slab_unit` (a dense unit of the slab's table).
fn dense_unit(ex: &InProcessExecutor, s: &SlabInfo, addr: u64, n: u32) -> Result<AllocId> {
    ex.finalize_slab_unit(s.id, &[code_segment(addr, 9)], &mut |b| {
        b[0].copy_from_slice(&code_returning(n));
        Some(UnitActions::default())
    })
    .map(|id| id.expect("a live unit"))
}

/// The ids of one-segment slab units name their slot and its generation: a freed unit's id
/// reaches nothing, even once a new unit lives at the same address (in the same slot), and ids
/// made up from a real one (another slot, another generation, another table) reach nothing
/// either. Units freed and reused many times keep their bytes to themselves.
#[test]
fn stale_and_forged_ids_of_dense_units_are_refused() {
    let ex = InProcessExecutor::new();
    let s = slab(&ex);
    let code = s.regions[0].0 .0;
    let first = dense_unit(&ex, &s, code, 1).unwrap();
    ex.deallocate(first).unwrap();
    let second = dense_unit(&ex, &s, code, 2).unwrap();
    assert_ne!(first, second, "a new id at the same address");
    refused(ex.deallocate(first), "a stale id");
    refused(ex.run_initializers(first), "a stale id");
    refused(
        ex.move_allocation(
            first,
            &[SegmentMove {
                from: ExecutorAddr(code),
                to: ExecutorAddr(code + 0x100),
                len: 9,
            }],
            Vec::new(),
        ),
        "a stale id",
    );
    assert_eq!(ex.call(ExecutorAddr(code), &[]).unwrap(), 2, "the new unit");
    for forged in [
        second.0 + 1,         // another generation of its slot
        second.0 + (1 << 15), // the next slot, unused
        second.0 - (1 << 15), // no slot below it
        second.0 ^ (1 << 39), // a counter's id in its table
        second.0 ^ (1 << 41), // another table
        second.0 | 0x7fff,    // the last generation
    ] {
        refused(ex.deallocate(AllocId(forged)), "a forged id");
        refused(ex.run_initializers(AllocId(forged)), "a forged id");
    }
    // Many units placed, freed and placed again over the same bytes: each new unit's bytes are
    // its own (never claimed twice: a write over a live unit is refused), and every id of a
    // freed one stays dead.
    let mut dead = vec![first];
    let mut live = vec![(second, code, 2)];
    for round in 0..50u32 {
        for (i, slot_addr) in (1..8u64).map(|k| (k, code + k * 16)) {
            let n = round * 100 + i as u32;
            match live.iter().position(|&(_, a, _)| a == slot_addr) {
                Some(j) if (round + i as u32).is_multiple_of(3) => {
                    let (id, _, _) = live.swap_remove(j);
                    ex.deallocate(id).unwrap();
                    dead.push(id);
                }
                Some(_) => {
                    refused(dense_unit(&ex, &s, slot_addr, n), "over a live unit");
                    refused(
                        ex.write_slab(s.id, &[SlabWrite::Fill(ExecutorAddr(slot_addr), 1, 0xcc)]),
                        "a write over a live unit",
                    );
                }
                None => live.push((dense_unit(&ex, &s, slot_addr, n).unwrap(), slot_addr, n)),
            }
        }
    }
    for &(id, addr, n) in &live {
        assert_eq!(ex.call(ExecutorAddr(addr), &[]).unwrap(), u64::from(n));
        assert!(!dead.contains(&id), "an id handed out twice");
    }
    for &id in &dead {
        refused(ex.deallocate(id), "a stale id");
    }
    for (id, _, _) in live {
        ex.deallocate(id).unwrap();
    }
    ex.release_slab(s.id).unwrap();
}

/// A dense unit moves like any other: checked, its bytes copied, its old range free, its id
/// the same; while it moves or dies it is not moved, pinned or freed again.
#[test]
fn dense_units_move() {
    let ex = InProcessExecutor::new();
    let s = slab(&ex);
    let code = s.regions[0].0 .0;
    let a = dense_unit(&ex, &s, code, 7).unwrap();
    let b = dense_unit(&ex, &s, code + 0x40, 8).unwrap();
    let mv = |from: u64, to: u64| SegmentMove {
        from: ExecutorAddr(from),
        to: ExecutorAddr(to),
        len: 9,
    };
    refused(
        ex.move_allocation(a, &[mv(code, code + 0x3c)], Vec::new()),
        "onto the next unit",
    );
    refused(
        ex.move_allocation(a, &[mv(code + 1, code + 0x100)], Vec::new()),
        "not its segment",
    );
    refused(
        ex.move_allocation(a, &[mv(code, s.regions[1].0 .0)], Vec::new()),
        "into another region",
    );
    ex.move_allocation(a, &[mv(code, code + 0x200)], Vec::new())
        .unwrap();
    assert_eq!(ex.call(ExecutorAddr(code + 0x200), &[]).unwrap(), 7);
    refused(ex.call(ExecutorAddr(code), &[]), "its old place");
    // The old range is free for a new unit; the moved one's is not.
    let c = dense_unit(&ex, &s, code, 9).unwrap();
    refused(dense_unit(&ex, &s, code + 0x204, 1), "over the moved unit");
    assert_eq!(ex.call(ExecutorAddr(code), &[]).unwrap(), 9);
    ex.deallocate(a).unwrap();
    refused(ex.deallocate(a), "freed twice");
    refused(
        ex.move_allocation(a, &[mv(code + 0x200, code + 0x300)], Vec::new()),
        "a freed unit",
    );
    for id in [b, c] {
        ex.deallocate(id).unwrap();
    }
    ex.release_slab(s.id).unwrap();
}

/// Threads reserving in the same window at once all get a range (one that loses a race for a
/// start reads the gaps again), and no two ranges overlap.
#[test]
fn concurrent_reservations_in_one_window_all_succeed() {
    let e = Arc::new(InProcessExecutor::new());
    // A 4 GiB window around this function: what a link near the host asks for.
    let here = concurrent_reservations_in_one_window_all_succeed as *const () as u64;
    let (lo, hi) = (here.saturating_sub(1 << 31), here.saturating_add(1 << 31));
    let size = 16 << 20;
    for _ in 0..20 {
        let start = Arc::new(Barrier::new(8));
        let got: Vec<u64> = (0..8)
            .map(|_| {
                let (e, start) = (e.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    e.reserve(size, Placement::Within { lo, hi }).map(|a| a.0)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().expect("a reservation in the window"))
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0] + size <= w[1], "{:#x} and {:#x} overlap", w[0], w[1]);
        }
        for a in got {
            assert!(lo <= a && a + size <= hi);
            e.release(ExecutorAddr(a), size).unwrap();
        }
    }
}

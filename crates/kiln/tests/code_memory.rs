//! Code memory (issue 4): link-and-remove cycles stay flat, patching a running call site through
//! the writable alias, and W^X throughout.

#![allow(unsafe_code)] // calling JIT'd code through typed function pointers, as a user would

mod common;
use common::*;
use kiln::{DebugOptions, InProcessExecutor, Session};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn compile(name: &str, src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("kiln-codemem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s, o) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.o")));
    std::fs::write(&s, src).unwrap();
    let ok = Command::new("cc")
        .args(["-c", "-O2", "-o"])
        .arg(&o)
        .arg(&s)
        .status();
    assert!(ok.expect("cc is required").success());
    std::fs::read(&o).unwrap()
}

const SMALL: &str = r#"
#include <stdlib.h>
static int calls;
int table[4] = {1, 2, 3, 4};
int small(int x) { calls++; return abs(x) + table[x & 3] + calls * 0; }
"#;

/// The flatness tests count this process's mappings and resident memory: they run one at a time.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Link and remove a small object many times (1,000,000 unless KILN_CYCLES says otherwise):
/// resident memory and the number of mappings stay flat, and the unit lands at the same address
/// every time (its slab ranges are reused).
#[test]
fn link_remove_cycles_stay_flat() {
    let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let cycles: usize = std::env::var("KILN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let obj = compile("small", SMALL);
    let mut s = Session::in_process();
    s.set_debug(DebugOptions::none());
    let mut addrs = std::collections::BTreeSet::new();
    let mut one = |s: &mut Session, i: usize| {
        s.add_object("small.o", obj.clone());
        let u = s.link().unwrap();
        let f = s.lookup("small").unwrap();
        addrs.insert(f.0);
        // SAFETY: `int small(int)` in a live unit.
        let f = unsafe { InProcessExecutor::function::<extern "C" fn(i32) -> i32>(f) };
        assert_eq!(f(-5), 5 + 4, "cycle {i}"); // abs(-5) + table[-5 & 3]
        s.remove(u).unwrap();
    };
    // Warm-up: the allocator's arenas and the slab's pages settle in the first few thousand.
    for i in 0..10_000 {
        one(&mut s, i);
    }
    let (rss0, maps0) = (status_kib("VmRSS:"), mappings());
    let start = std::time::Instant::now();
    for i in 0..cycles {
        one(&mut s, i);
    }
    let (rss1, maps1) = (status_kib("VmRSS:"), mappings());
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{cycles} link-and-remove cycles in {:.1} s: resident {rss0} KiB -> {rss1} KiB, mappings {maps0} -> {maps1}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        rss1 <= rss0 + 4096,
        "resident memory grew: {rss0} KiB -> {rss1} KiB"
    );
    assert!(maps1 <= maps0 + 2, "mappings grew: {maps0} -> {maps1}");
    assert_eq!(
        addrs.len(),
        1,
        "the unit's range is reused: {} distinct addresses",
        addrs.len()
    );
}

/// The same with a distinct symbol name in each cycle (a graph defining `fn_<i>`): names are
/// not interned or leaked anywhere, so resident memory stays flat however many names come and go.
#[test]
fn link_remove_cycles_with_distinct_names_stay_flat() {
    let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    use kiln::arch::x86_64::EdgeKind;
    use kiln::graph::{InMemoryEdge, InMemoryGraph};
    let cycles: usize = std::env::var("KILN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    // int fn_i(int x) { return abs(x); } as `jmp abs`
    let one = |i: usize| {
        let name = format!("fn_{i}");
        let mut g = InMemoryGraph::new(format!("graph_{i}"));
        g.add_function(
            &name,
            vec![0xe9, 0, 0, 0, 0],
            vec![InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "abs", -4)],
            None,
        );
        let u = s.link_graph(&g).unwrap();
        let f = s.lookup(&name).unwrap();
        assert_eq!(
            s.executor().call(f, &[(-5i64) as u64]).unwrap() as i32,
            5,
            "cycle {i}"
        );
        s.remove(u).unwrap();
        assert!(s.lookup(&name).is_none());
    };
    for i in 0..10_000 {
        one(i);
    }
    let (rss0, maps0) = (status_kib("VmRSS:"), mappings());
    for i in 10_000..10_000 + cycles {
        one(i);
    }
    let (rss1, maps1) = (status_kib("VmRSS:"), mappings());
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{cycles} cycles with distinct names: resident {rss0} KiB -> {rss1} KiB, mappings {maps0} -> {maps1}"
    );
    assert!(
        rss1 <= rss0 + 4096,
        "resident memory grew: {rss0} KiB -> {rss1} KiB"
    );
    assert!(maps1 <= maps0 + 2, "mappings grew: {maps0} -> {maps1}");
}

/// A call site in finalized code is retargeted through the slab's writable alias while another
/// thread calls it in a loop: the loop sees the old target, then the new one, and never crashes.
/// /proc/self/maps shows no writable-and-executable mapping before, during and after.
#[test]
fn patch_running_call_site_through_the_alias() {
    let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    use kiln::arch::x86_64::EdgeKind;
    use kiln::graph::{InMemoryEdge, InMemoryGraph};
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    let mut g = InMemoryGraph::new("targets");
    g.add_function("ret_one", vec![0xb8, 1, 0, 0, 0, 0xc3], vec![], None); // mov $1, %eax; ret
    g.add_function("ret_two", vec![0xb8, 2, 0, 0, 0, 0xc3], vec![], None); // mov $2, %eax; ret
                                                                           // caller: three nops so that the call's rel32 is 4-byte aligned (block align 16, call at 3,
                                                                           // rel32 at 4), then call ret_one; ret.
    g.add_function(
        "caller",
        vec![0x90, 0x90, 0x90, 0xe8, 0, 0, 0, 0, 0xc3],
        vec![InMemoryEdge::new(4, EdgeKind::BranchPCRel32, "ret_one", -4)],
        None,
    );
    s.add_graph(g);
    s.link().unwrap();
    assert!(wx_mappings().is_empty(), "{:?}", wx_mappings());
    let caller = s.lookup("caller").unwrap();
    let two = s.lookup("ret_two").unwrap();
    // SAFETY: `int caller(void)` in a live unit, which outlives the thread (joined below).
    let f = unsafe { InProcessExecutor::function::<extern "C" fn() -> i32>(caller) };
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let runner = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = f();
                seen[(r as usize).min(2)].fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while seen[1].load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    // New rel32: from the end of the call (caller + 8) to ret_two.
    let rel = (two.0 as i64 - (caller.0 as i64 + 8)) as i32;
    s.patch(kiln::ExecutorAddr(caller.0 + 4), &rel.to_le_bytes())
        .unwrap();
    assert!(wx_mappings().is_empty(), "{:?}", wx_mappings());
    let before = seen[2].load(Ordering::Relaxed);
    while seen[2].load(Ordering::Relaxed) < before + 1000 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    assert_eq!(f(), 2, "the call site now reaches ret_two");
    assert_eq!(
        seen[0].load(Ordering::Relaxed),
        0,
        "no other result ever came back"
    );
    // Unaligned or odd-sized patches of running code are refused.
    assert!(s.patch(kiln::ExecutorAddr(caller.0 + 3), &[0; 4]).is_err());
    assert!(s.patch(kiln::ExecutorAddr(caller.0 + 4), &[0; 3]).is_err());
    assert!(wx_mappings().is_empty());
}

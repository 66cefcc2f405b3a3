//! Code that changes after linking: units moved to new addresses with their callers relinked and
//! their unwind info registered again; definitions replaced with callers retargeted.

mod common;

use common::jit::{caller, constant};
use kiln::graph::FrameDescription;
use kiln::{CodeMemory, DebugOptions, ExecutorAddr, Session, SlabMemory, UnitOptions};
use kiln_target::Placement;
use std::sync::Arc;

fn setup() -> (Session, Arc<SlabMemory>, UnitOptions) {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    let info = s
        .executor()
        .create_slab([1 << 20, 1 << 16, 1 << 16], Placement::Anywhere)
        .unwrap();
    let memory = Arc::new(SlabMemory::fixed(&[info]));
    let options = UnitOptions {
        memory: Some(memory.clone()),
        relink: true,
        ..UnitOptions::new(s.default_scope())
    };
    (s, memory, options)
}

fn call(s: &Session, name: &str) -> u64 {
    let f = s
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} is not defined"));
    s.executor().call(f, &[]).unwrap()
}

/// A free code range of `size` bytes in `memory`'s slab.
fn free_code(memory: &SlabMemory, s: &Session, size: u64) -> ExecutorAddr {
    let slab = memory.slab_of(s.lookup("base").unwrap()).unwrap();
    memory.allocate(slab, 0, size, 16).unwrap().addr
}

#[test]
fn a_moved_unit_runs_at_its_new_place_and_its_callers_follow() {
    let (s, memory, options) = setup();
    let base = s.link_graph_with(&constant("base", 40), &options).unwrap();
    s.link_graph_with(&caller("mid", "base", 1), &options)
        .unwrap();
    s.link_graph_with(&caller("top", "mid", 1), &options)
        .unwrap();
    assert_eq!(call(&s, "top"), 42);
    let old = s.lookup("base").unwrap();
    let segs = s.unit_segments(base).unwrap();
    assert_eq!(segs.len(), 1, "code only");
    let to = free_code(&memory, &s, segs[0].1);
    s.move_unit(base, &[to]).unwrap();
    let new = s.lookup("base").unwrap();
    assert_eq!(new, to, "the symbol follows the code");
    assert_ne!(new, old);
    assert_eq!(s.unit_at(new).map(|u| u.0), Some(base));
    assert!(s.unit_at(old).is_none_or(|u| u.0 != base));
    // Poison the old range: a caller still going there would trap.
    let slab = memory.slab_of(old).unwrap();
    let old_range = kiln::SlabRange {
        slab,
        region: 0,
        addr: old,
        size: segs[0].1,
    };
    memory.free(&**s.executor(), &[old_range]);
    assert_eq!(call(&s, "base"), 40);
    assert_eq!(
        call(&s, "mid"),
        41,
        "mid's call was relinked to the new place"
    );
    assert_eq!(call(&s, "top"), 42);
    // The caller moves too: its own call is relinked (the callee did not move this time).
    let mid = s.unit_at(s.lookup("mid").unwrap()).unwrap().0;
    let mid_size = s.unit_segments(mid).unwrap()[0].1;
    let to = free_code(&memory, &s, mid_size);
    s.move_unit(mid, &[to]).unwrap();
    assert_eq!(call(&s, "mid"), 41);
    assert_eq!(call(&s, "top"), 42);
}

#[test]
fn unwind_info_follows_moved_code() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SAW: AtomicBool = AtomicBool::new(false);
    extern "C" fn callback() -> u64 {
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        SAW.store(
            bt.lines()
                .any(|l| l.trim_end().ends_with("::unwind_info_follows_moved_code")),
            Ordering::SeqCst,
        );
        9
    }
    let (s, memory, options) = setup();
    s.define("rust_callback", callback as *const () as u64);
    let mut g = kiln::graph::InMemoryGraph::new("framed");
    g.add_function(
        "base",
        vec![0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x5d, 0xc3],
        vec![kiln::graph::InMemoryEdge::new(
            5,
            kiln::arch::x86_64::EdgeKind::BranchPCRel32,
            "rust_callback",
            -4,
        )],
        Some(FrameDescription::FramePointer),
    );
    let u = s.link_graph_with(&g, &options).unwrap();
    assert_eq!(call(&s, "base"), 9);
    assert!(SAW.swap(false, Ordering::SeqCst));
    let segs = s.unit_segments(u).unwrap();
    let slab = memory.slab_of(segs[0].0).unwrap();
    // Move the code and its read-only data (the FDE) by different distances.
    let code = memory.allocate(slab, 0, segs[0].1, 16).unwrap().addr;
    let ro = memory.allocate(slab, 1, segs[1].1, 8).unwrap().addr;
    s.move_unit(u, &[code, ro]).unwrap();
    assert_eq!(s.lookup("base"), Some(code));
    assert_eq!(call(&s, "base"), 9);
    assert!(
        SAW.load(Ordering::SeqCst),
        "the unwinder walks through the moved frame: its FDE was fixed up and registered again"
    );
}

#[test]
fn a_redefinition_retargets_callers_and_leaves_the_old_code_until_removed() {
    let (s, _memory, options) = setup();
    let v1 = s.link_graph_with(&constant("base", 5), &options).unwrap();
    let user = s
        .link_graph_with(&caller("user", "base", 1), &options)
        .unwrap();
    assert_eq!(call(&s, "user"), 6);
    let old_addr = s.lookup("base").unwrap();
    let v2 = s.redefine(v1, &constant("base", 7), &options).unwrap();
    assert_ne!(s.lookup("base"), Some(old_addr));
    assert_eq!(call(&s, "base"), 7);
    assert_eq!(call(&s, "user"), 8, "the caller was retargeted");
    assert_eq!(s.dependencies(user).unwrap(), [v2]);
    assert!(s.dependents(v1).unwrap().is_empty());
    // The old code still runs (frames may be in it) until the VM removes it.
    assert_eq!(s.executor().call(old_addr, &[]).unwrap(), 5);
    s.remove(v1).unwrap();
    assert_eq!(call(&s, "user"), 8);
    assert!(matches!(
        s.remove(v2),
        Err(kiln::Error::HasDependents { .. })
    ));
}

/// With every debug sink on, a move registers the unit again at its new place: the perf map
/// gets a line there, the jitdump a `JIT_CODE_MOVE` record from the old address to the new,
/// gdb an object whose code is at the new address (and valgrind's discard is done by the
/// executor, not by an action naming the old range, which would be refused).
#[test]
fn a_unit_moves_with_every_debug_sink_on() {
    use kiln_target::jitdump_format as jd;
    let dir = std::env::temp_dir().join(format!("kiln-moving-sinks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s, memory, options) = setup();
    s.set_debug(DebugOptions {
        gdb: true,
        perf_map: true,
        jitdump: Some(dir.clone()),
        valgrind: true,
    });
    let mut g = kiln::graph::InMemoryGraph::new("framed_sinks");
    g.add_function(
        "moving_with_sinks",
        vec![0x55, 0x48, 0x89, 0xe5, 0xb8, 0x2a, 0, 0, 0, 0x5d, 0xc3],
        vec![],
        Some(FrameDescription::FramePointer),
    );
    let u = s.link_graph_with(&g, &options).unwrap();
    s.link_graph_with(&caller("calls_moving", "moving_with_sinks", 1), &options)
        .unwrap();
    let old = s.lookup("moving_with_sinks").unwrap();
    let objects = kiln_target::debug_sinks::registered_objects();
    let segs = s.unit_segments(u).unwrap();
    let slab = memory.slab_of(segs[0].0).unwrap();
    let to: Vec<ExecutorAddr> = segs
        .iter()
        .enumerate()
        .map(|(r, &(_, n))| memory.allocate(slab, r, n, 16).unwrap().addr)
        .collect();
    s.move_unit(u, &to).unwrap();
    let new = s.lookup("moving_with_sinks").unwrap();
    assert_eq!(new, to[0]);
    assert_eq!(call(&s, "moving_with_sinks"), 42);
    assert_eq!(call(&s, "calls_moving"), 43);
    assert_eq!(
        kiln_target::debug_sinks::registered_objects(),
        objects,
        "gdb: the old object went, the new one came"
    );
    let map = std::fs::read_to_string(kiln_target::debug_sinks::perf_map_path()).unwrap();
    assert!(
        map.lines()
            .any(|l| l.starts_with(&format!("{:x} ", new.0)) && l.ends_with(" moving_with_sinks")),
        "no perf map line at the new address {new}:\n{map}"
    );
    let dump = std::fs::read(dir.join(format!("jit-{}.dump", std::process::id()))).unwrap();
    let moves: Vec<jd::CodeMove> = jd::records(&dump[jd::FileHeader::SIZE..])
        .map(|r| r.unwrap())
        .filter(|r| r.header.id == jd::JIT_CODE_MOVE)
        .map(|r| jd::CodeMove::read(r.body).unwrap())
        .collect();
    assert!(
        moves
            .iter()
            .any(|m| m.old_code_addr == old.0 && m.new_code_addr == new.0),
        "no JIT_CODE_MOVE {old} -> {new}: {moves:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

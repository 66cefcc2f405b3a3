//! The library API in this process: link, look up, call, remove — with W^X checked in
//! /proc/self/maps and destructors/exit handlers observed through a host callback.

#![allow(unsafe_code)] // calling JIT'd code through typed function pointers, as a user would

mod common;
use common::*;
use kiln::{InProcessExecutor, Session};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

fn compile(name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-inproc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s, o) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.o")));
    std::fs::write(&s, src).unwrap();
    let ok = Command::new("cc")
        .args(["-c", "-O2"])
        .args(flags)
        .arg("-o")
        .arg(&o)
        .arg(&s)
        .status();
    assert!(
        ok.expect("cc is required").success(),
        "cc failed for {name}"
    );
    o
}

static EVENTS: AtomicU32 = AtomicU32::new(0);
extern "C" fn host_note(what: u32) {
    // Record the order of events as decimal digits: 1 = constructor, 2 = atexit handler,
    // 3 = destructor.
    let old = EVENTS.load(Ordering::SeqCst);
    EVENTS.store(old * 10 + what, Ordering::SeqCst);
}

const UNIT: &str = r#"
#include <stdlib.h>
extern void host_note(unsigned);
static void on_exit_handler(void) { host_note(2); }
__attribute__((constructor)) static void ctor(void) { host_note(1); atexit(on_exit_handler); }
__attribute__((destructor)) static void dtor(void) { host_note(3); }
static int counter;
int bump(int by) { counter += by; return counter; }
const char *where(void) { return "in a JIT'd unit"; }
"#;

#[test]
fn link_call_remove_with_wx_and_destructors() {
    let obj = compile("unit", UNIT, &["-fPIC"]);
    let s = Session::in_process();
    s.define("host_note", host_note as *const () as u64);
    s.add_file(&obj).unwrap();
    let unit = s.link().unwrap();
    assert!(
        wx_mappings().is_empty(),
        "W+X mappings after link: {:?}",
        wx_mappings()
    );
    s.run_initializers().unwrap();
    assert_eq!(EVENTS.load(Ordering::SeqCst), 1, "constructor ran once");
    let bump = s.lookup("bump").expect("bump is exported");
    // SAFETY: `bump` is `int bump(int)` in a live unit.
    let f = unsafe { InProcessExecutor::function::<extern "C" fn(i32) -> i32>(bump) };
    assert_eq!(f(2), 2);
    assert_eq!(f(40), 42);
    assert!(mapped(bump.0));
    s.remove(unit).unwrap();
    // Exit handler registered with the unit's __dso_handle, then the destructor.
    assert_eq!(
        EVENTS.load(Ordering::SeqCst),
        123,
        "events in order: ctor, atexit handler, dtor"
    );
    assert!(
        s.lookup("bump").is_none(),
        "symbols of a removed unit disappear"
    );
    // The unit's code range went back to its slab, overwritten with int3 so that a stale call
    // traps instead of running whatever is linked there next.
    assert!(mapped(bump.0), "slab memory stays mapped for reuse");
    // SAFETY: the address is inside a live slab's r-x region (just checked mapped).
    let first = unsafe { std::ptr::read_volatile(bump.0 as *const u8) };
    assert_eq!(first, 0xcc, "freed code is poisoned with int3");
    assert!(wx_mappings().is_empty());
}

#[test]
fn later_units_see_earlier_ones_and_undefined_are_reported_together() {
    let a = compile("a", "int base_value(void) { return 40; }", &[]);
    let b = compile(
        "b",
        "extern int base_value(void); int plus_two(void) { return base_value() + 2; }",
        &[],
    );
    let c = compile(
        "c",
        "extern int nope_one(void); extern int nope_two; int use(void) { return nope_one() + nope_two; }",
        &[],
    );
    let s = Session::in_process();
    s.add_file(&a).unwrap();
    s.link().unwrap();
    s.add_file(&b).unwrap();
    s.link().unwrap();
    let p = s.lookup("plus_two").unwrap();
    // SAFETY: `int plus_two(void)` in a live unit.
    let f = unsafe { InProcessExecutor::function::<extern "C" fn() -> i32>(p) };
    assert_eq!(f(), 42);
    s.add_file(&c).unwrap();
    let e = s.link().unwrap_err().to_string();
    assert!(
        e.contains("nope_one") && e.contains("nope_two") && e.contains("c.o"),
        "{e}"
    );
}

/// In-memory graphs, as a JIT compiler builds them: a function calling a host function, a second
/// unit tail-calling the first by name, and a producer-described frame that lets the unwinder
/// walk through JIT'd code back into this test.
#[test]
fn in_memory_graphs_link_call_and_unwind() {
    use kiln::arch::x86_64::EdgeKind;
    use kiln::graph::{FrameDescription, InMemoryEdge, InMemoryGraph};
    let s = Session::in_process();
    // int jit_abs_sum(int a, int b) { return abs(a + b); }  with a frame-pointer prologue.
    let code = vec![
        0x55, // push %rbp
        0x48, 0x89, 0xe5, // mov %rsp, %rbp
        0x8d, 0x3c, 0x37, // lea (%rdi,%rsi), %edi
        0xe8, 0, 0, 0, 0,    // call abs
        0x5d, // pop %rbp
        0xc3, // ret
    ];
    let mut g = InMemoryGraph::new("jit-unit-1");
    g.add_function(
        "jit_abs_sum",
        code,
        vec![InMemoryEdge::new(8, EdgeKind::BranchPCRel32, "abs", -4)],
        Some(FrameDescription::FramePointer),
    );
    s.add_graph(g);
    s.link().unwrap();
    let mut g2 = InMemoryGraph::new("jit-unit-2");
    g2.add_function(
        "jit_tail",
        vec![0xe9, 0, 0, 0, 0], // jmp jit_abs_sum
        vec![InMemoryEdge::new(
            1,
            EdgeKind::BranchPCRel32,
            "jit_abs_sum",
            -4,
        )],
        None,
    );
    s.add_graph(g2);
    s.link().unwrap();
    let f = s.lookup("jit_tail").unwrap();
    // SAFETY: `int jit_tail(int, int)` in a live unit.
    let f = unsafe { InProcessExecutor::function::<extern "C" fn(i32, i32) -> i32>(f) };
    assert_eq!(f(-5, -7), 12);

    // A JIT'd frame-pointer function calling back into Rust, which walks the stack.
    static SAW_CALLER: AtomicU32 = AtomicU32::new(0);
    extern "C" fn callback() {
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        // The test function's own frame (not this callback, whose path contains its name).
        let caller = bt.lines().any(|l| {
            l.trim_end()
                .ends_with("::in_memory_graphs_link_call_and_unwind")
        });
        if caller {
            SAW_CALLER.store(1, Ordering::SeqCst);
        }
    }
    let mut g3 = InMemoryGraph::new("jit-unit-3");
    g3.add_function(
        "jit_calls_back",
        vec![0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x5d, 0xc3], // push; mov; call cb; pop; ret
        vec![InMemoryEdge::new(
            5,
            EdgeKind::BranchPCRel32,
            "rust_callback",
            -4,
        )],
        Some(FrameDescription::FramePointer),
    );
    s.define("rust_callback", callback as *const () as u64);
    s.add_graph(g3);
    s.link().unwrap();
    let f = s.lookup("jit_calls_back").unwrap();
    // SAFETY: `void jit_calls_back(void)` in a live unit.
    let f = unsafe { InProcessExecutor::function::<extern "C" fn()>(f) };
    f();
    assert_eq!(
        SAW_CALLER.load(Ordering::SeqCst),
        1,
        "the unwinder walked through the JIT'd frame back into the test"
    );
    // Malformed graphs are errors, not panics.
    let mut bad = InMemoryGraph::new("bad");
    bad.add_function(
        "f",
        vec![0xc3],
        vec![InMemoryEdge::new(0, EdgeKind::Delta32, "x", 0)],
        None,
    );
    s.add_graph(bad);
    let e = s.link().unwrap_err().to_string();
    assert!(e.contains("bad") && e.contains("outside its block"), "{e}");
}

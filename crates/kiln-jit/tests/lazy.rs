//! kiln-jit's lazy functions, in process and with the code in a spawned executor (shared and
//! copied memory): 8 threads making the first call at once (one compilation, every answer
//! right, every caller's call site patched to the compiled code), arguments in every register
//! and on the stack passing through the first call, compile errors going to the VM's error
//! handler, call sites that cannot be patched left working, a lazy function whose code and
//! callers a compaction moves and which is then redefined (stub and callers follow, directly),
//! and no writable+executable mapping.
//!
//! This test program has a main of its own (`harness = false`): started with
//! `--kiln-executor` it serves as the executor the remote cases spawn. Arguments: a substring
//! of the test names to run only those.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::Session;
use kiln_jit::{
    Jit, JitGraph, LazyContext, LazyFailureHandler, LazyStatus, RegionKind, ZoneConfig,
};
use kiln_target::{ExecutorAddr, LAZY_STUB};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{session, Scenario, Where};

mod support;

fn jit_on(s: &Arc<Session>) -> Arc<Jit> {
    Arc::new(Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).expect("reserving a zone"))
}

/// `long CODE(long a, long b, long c) { return a + b + c + k; }` under the code name.
fn add3(cx: &LazyContext<'_>, k: i8) -> JitGraph {
    let mut g = InMemoryGraph::new(cx.code_name);
    g.add_function(
        cx.code_name,
        // lea (%rdi,%rsi), %rax; add %rdx, %rax; add $k, %rax; ret
        vec![
            0x48, 0x8d, 0x04, 0x37, 0x48, 0x01, 0xd0, 0x48, 0x83, 0xc0, k as u8, 0xc3,
        ],
        vec![],
        None,
    );
    JitGraph::new(g)
}

/// Where the rel32 of each caller shape lies, from the function's start.
const ALIGNED_REL32: u64 = 8;
const UNALIGNED_REL32: u64 = 5;

/// `long NAME(a, b, c) { return CALLEE(a, b, c); }` as `sub $8,%rsp; nop3; call CALLEE; add
/// $8,%rsp; ret`: the call's rel32 at offset 8, 4-byte aligned (functions start 16-aligned), and
/// not a tail call, so the call site is the one that enters the stub.
fn aligned_caller(name: &str, callee: &str) -> JitGraph {
    let code = vec![
        0x48, 0x83, 0xec, 0x08, // sub $8, %rsp
        0x0f, 0x1f, 0x00, // nop
        0xe8, 0, 0, 0, 0, // call callee
        0x48, 0x83, 0xc4, 0x08, // add $8, %rsp
        0xc3,
    ];
    caller_graph(name, code, ALIGNED_REL32, EdgeKind::BranchPCRel32, callee)
}

/// The same without the nop: the rel32 at offset 5, which one atomic store cannot change.
fn unaligned_caller(name: &str, callee: &str) -> JitGraph {
    let code = vec![
        0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08, 0xc3,
    ];
    caller_graph(name, code, UNALIGNED_REL32, EdgeKind::BranchPCRel32, callee)
}

/// `movabs $CALLEE, %rax; call *%rax`: an indirect call, nothing to patch.
fn indirect_caller(name: &str, callee: &str) -> JitGraph {
    let mut code = vec![0x48, 0x83, 0xec, 0x08, 0x48, 0xb8];
    code.extend([0; 8]);
    code.extend([0xff, 0xd0, 0x48, 0x83, 0xc4, 0x08, 0xc3]);
    caller_graph(name, code, 6, EdgeKind::Pointer64, callee)
}

fn caller_graph(name: &str, code: Vec<u8>, at: u64, kind: EdgeKind, callee: &str) -> JitGraph {
    let addend = if kind == EdgeKind::BranchPCRel32 {
        -4
    } else {
        0
    };
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![InMemoryEdge::new(at as u32, kind, callee, addend)],
        None,
    );
    JitGraph::new(g)
}

/// Where the call whose rel32 is `at` bytes into function `f` goes, read back from the executor.
fn call_target(s: &Session, f: ExecutorAddr, at: u64) -> u64 {
    let field = f.0 + at;
    let b = s
        .executor()
        .read_memory(ExecutorAddr(field), 4)
        .expect("reading a call site back");
    let rel = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    (field + 4).wrapping_add_signed(i64::from(rel))
}

/// The 8-byte jump slot of the stub at `stub`.
fn stub_slot(s: &Session, stub: ExecutorAddr) -> u64 {
    let b = s
        .executor()
        .read_memory(ExecutorAddr(stub.0 + LAZY_STUB.target_offset as u64), 8)
        .expect("reading a stub's slot back");
    u64::from_le_bytes(<[u8; 8]>::try_from(b.as_slice()).expect("8 bytes"))
}

fn lookup(s: &Session, name: &str) -> ExecutorAddr {
    s.lookup(name)
        .unwrap_or_else(|| panic!("{name} is not defined"))
}

/// Compile C source `src` and link it into a unit of `s`'s default scope.
fn link_c(s: &Session, name: &str, src: &str) {
    let dir = tempfile::Builder::new()
        .prefix("kiln-jit-lazy-")
        .tempdir()
        .expect("a temporary directory");
    let (c, o): (PathBuf, PathBuf) = (
        dir.path().join(format!("{name}.c")),
        dir.path().join(format!("{name}.o")),
    );
    std::fs::write(&c, src).expect("writing C source");
    let out = Command::new("cc")
        .args(["-c", "-O1", "-o"])
        .arg(&o)
        .arg(&c)
        .output()
        .expect("running cc");
    assert!(
        out.status.success(),
        "cc {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.add_file(&o).expect("adding the object");
    s.link().expect("linking the C object");
}

/// 8 pthreads wait at a barrier, then each calls `caller_T(T, 1000 * T, 7)`; `eight_at_once`
/// returns how many got `T + 1000 * T + 7 + 10`.
const EIGHT_THREADS: &str = r#"
#include <pthread.h>
#define F(i) extern long caller_##i(long, long, long);
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
static long (*const fns[8])(long, long, long) = {
    caller_0, caller_1, caller_2, caller_3, caller_4, caller_5, caller_6, caller_7,
};
static pthread_barrier_t start;
static long results[8];
static void *worker(void *arg) {
    long t = (long)arg;
    pthread_barrier_wait(&start);
    results[t] = fns[t](t, 1000 * t, 7);
    return 0;
}
long eight_at_once(void) {
    pthread_t th[8];
    pthread_barrier_init(&start, 0, 8);
    for (long t = 0; t < 8; t++)
        if (pthread_create(&th[t], 0, worker, (void *)t) != 0)
            return -1;
    for (int t = 0; t < 8; t++)
        pthread_join(th[t], 0);
    pthread_barrier_destroy(&start);
    long right = 0;
    for (long t = 0; t < 8; t++)
        right += results[t] == t + 1000 * t + 7 + 10;
    return right;
}
"#;

/// 8 threads make the first call of one lazy function at once, each from its own caller: the
/// callback ran once, every thread got the right answer, and every caller's call site now
/// calls the compiled code (not the stub).
fn eight_threads_at_once(at: Where) {
    let s = session(at);
    let jit = jit_on(&s);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let f = jit
        .declare_lazy("lazy_add3", move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            // Long enough that the other threads arrive while this one compiles (the test
            // holds however they interleave: it asserts no timing).
            std::thread::sleep(Duration::from_millis(50));
            Ok(add3(cx, 10))
        })
        .unwrap();
    assert_eq!(jit.lazy_status(&f), Some(LazyStatus::NotCompiled));
    for t in 0..8 {
        let caller = aligned_caller(&format!("caller_{t}"), "lazy_add3");
        jit.link(RegionKind::Method, &caller).unwrap();
        let c = lookup(&s, &format!("caller_{t}"));
        assert_eq!(
            call_target(&s, c, ALIGNED_REL32),
            f.addr.0,
            "calls the stub"
        );
    }
    link_c(&s, "eight", EIGHT_THREADS);
    let right = s.executor().call(lookup(&s, "eight_at_once"), &[]).unwrap();
    assert_eq!(right, 8, "every thread got the right answer ({at:?})");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the callback ran once");
    let Some(LazyStatus::Compiled {
        code, redirected, ..
    }) = jit.lazy_status(&f)
    else {
        panic!("not compiled: {:?}", jit.lazy_status(&f))
    };
    assert_eq!(code, lookup(&s, "lazy_add3.code"));
    assert_eq!(stub_slot(&s, f.addr), code.0, "the stub jumps to the code");
    for t in 0..8 {
        let c = lookup(&s, &format!("caller_{t}"));
        assert_eq!(
            call_target(&s, c, ALIGNED_REL32),
            code.0,
            "caller_{t} calls the code directly ({at:?})"
        );
    }
    assert_eq!(redirected.len(), 8, "{redirected:?}");
    let again = s.executor().call(lookup(&s, "eight_at_once"), &[]).unwrap();
    assert_eq!(again, 8, "and afterwards, through the patched calls");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `long mix(long a..f, double x0..x7, long g, long h)`: a weighted sum with distinct weights
/// (1..6 for the integers, 7..14 for the truncated doubles, 15 and 16 for the stack
/// arguments), so that any argument lost or moved changes the result.
fn mix_code() -> Vec<u8> {
    let mut code = vec![
        0x48, 0x89, 0xf8, // mov %rdi, %rax
        0x48, 0x8d, 0x04, 0x70, // lea (%rax,%rsi,2), %rax
        0x48, 0x6b, 0xd2, 0x03, 0x48, 0x01, 0xd0, // imul $3, %rdx; add %rdx, %rax
        0x48, 0x6b, 0xc9, 0x04, 0x48, 0x01, 0xc8, // imul $4, %rcx; add %rcx, %rax
        0x4d, 0x6b, 0xc0, 0x05, 0x4c, 0x01, 0xc0, // imul $5, %r8; add %r8, %rax
        0x4d, 0x6b, 0xc9, 0x06, 0x4c, 0x01, 0xc8, // imul $6, %r9; add %r9, %rax
    ];
    for i in 0..8u8 {
        // cvttsd2si %xmm<i>, %rdx; imul $(7 + i), %rdx; add %rdx, %rax
        code.extend([0xf2, 0x48, 0x0f, 0x2c, 0xd0 + i]);
        code.extend([0x48, 0x6b, 0xd2, 7 + i, 0x48, 0x01, 0xd0]);
    }
    for (disp, weight) in [(8u8, 15u8), (16, 16)] {
        // mov disp(%rsp), %rdx; imul $weight, %rdx; add %rdx, %rax
        code.extend([0x48, 0x8b, 0x54, 0x24, disp]);
        code.extend([0x48, 0x6b, 0xd2, weight, 0x48, 0x01, 0xd0]);
    }
    code.push(0xc3);
    code
}

const CALL_MIX: &str = r#"
extern long lazy_mix(long, long, long, long, long, long, double, double, double, double,
                     double, double, double, double, long, long);
long call_mix(long base) {
    return lazy_mix(base + 1, base + 2, base + 3, base + 4, base + 5, base + 6,
                    10.75, 20.75, 30.75, 40.75, 50.75, 60.75, 70.75, 80.75,
                    base + 1000, base + 2000) + 1;
}
"#;

fn mix_expected(base: i64) -> u64 {
    let ints: i64 = (1..=6).map(|i| i * (base + i)).sum();
    let doubles: i64 = (0..8).map(|i| (7 + i) * (10 * (i + 1))).sum();
    (ints + doubles + 15 * (base + 1000) + 16 * (base + 2000) + 1) as u64
}

/// Six integer arguments, eight doubles and two on the stack reach the compiled code through
/// the first call (the trampoline in between) and later ones.
fn arguments_pass_through(at: Where) {
    let s = session(at);
    let jit = jit_on(&s);
    jit.declare_lazy("lazy_mix", |cx| {
        let mut g = InMemoryGraph::new(cx.code_name);
        g.add_function(cx.code_name, mix_code(), vec![], None);
        Ok(JitGraph::new(g))
    })
    .unwrap();
    link_c(&s, "call_mix", CALL_MIX);
    let call_mix = lookup(&s, "call_mix");
    for base in [0i64, 100, -7] {
        let got = s.executor().call(call_mix, &[base as u64]).unwrap();
        assert_eq!(got, mix_expected(base), "base {base} ({at:?})");
    }
}

/// `long interp_bridge(long a) { return a + 5000; }`: where the VM sends calls of functions it
/// could not compile.
fn bridge() -> JitGraph {
    let mut g = InMemoryGraph::new("bridge");
    // lea 5000(%rdi), %rax; ret
    g.add_function(
        "interp_bridge",
        vec![0x48, 0x8d, 0x87, 0x88, 0x13, 0x00, 0x00, 0xc3],
        vec![],
        None,
    );
    JitGraph::new(g)
}

/// A callback's error, and a graph without the code name, go to the VM's error handler, whose
/// answer (the interpreter bridge) every call of the function then reaches; it is asked once.
fn compile_errors_reach_the_vm(at: Where) {
    let s = session(at);
    let jit = jit_on(&s);
    jit.link(RegionKind::Fixed, &bridge()).unwrap();
    let bridge_addr = lookup(&s, "interp_bridge");
    // (name, message) of each failure the handler heard of.
    type Heard = Vec<(Option<String>, String)>;
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let handler: LazyFailureHandler = {
        let heard = heard.clone();
        Arc::new(move |f| {
            heard
                .lock()
                .unwrap()
                .push((f.name.map(str::to_string), f.message.to_string()));
            Some(bridge_addr)
        })
    };
    jit.set_lazy_error_handler(Some(handler)).unwrap();
    let broken = jit
        .declare_lazy("broken", |_| Err("no code for this one".into()))
        .unwrap();
    let nameless = jit
        .declare_lazy("nameless", |_| {
            let mut g = InMemoryGraph::new("nameless");
            g.add_function("some_other_name", vec![0xc3], vec![], None);
            Ok(JitGraph::new(g))
        })
        .unwrap();
    jit.link(RegionKind::Method, &aligned_caller("call_broken", "broken"))
        .unwrap();
    let caller = lookup(&s, "call_broken");
    for a in [1u64, 2, 3] {
        assert_eq!(s.executor().call(caller, &[a, 0, 0]).unwrap(), a + 5000);
    }
    assert_eq!(s.executor().call(nameless.addr, &[9]).unwrap(), 5009);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 2, "asked once per function: {heard:?}");
    assert_eq!(heard[0].0.as_deref(), Some("broken"));
    assert!(heard[0].1.contains("no code for this one"), "{heard:?}");
    assert_eq!(heard[1].0.as_deref(), Some("nameless"));
    assert!(
        heard[1].1.contains("defines no function nameless.code"),
        "{heard:?}"
    );
    assert!(
        s.lookup("some_other_name").is_none(),
        "the unusable graph was removed again"
    );
    match jit.lazy_status(&broken) {
        Some(LazyStatus::Failed(m)) => assert!(m.contains("no code for this one"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        call_target(&s, caller, ALIGNED_REL32),
        broken.addr.0,
        "a failed function's callers keep calling its stub"
    );
    jit.set_lazy_error_handler(None).unwrap();
}

/// Calls that one atomic store cannot retarget — an unaligned rel32, an indirect call — keep
/// working, through the stub, whose slot now leads to the code; they are not patched.
fn unpatchable_calls_stay_correct(at: Where) {
    let s = session(at);
    let jit = jit_on(&s);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let f = jit
        .declare_lazy("lazy_add3", move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(add3(cx, 10))
        })
        .unwrap();
    let again = jit.declare_lazy("lazy_add3", |cx| Ok(add3(cx, 0)));
    assert!(again.is_err(), "a name is declared once: {again:?}");
    jit.link(
        RegionKind::Method,
        &unaligned_caller("unaligned", "lazy_add3"),
    )
    .unwrap();
    jit.link(
        RegionKind::Method,
        &indirect_caller("indirect", "lazy_add3"),
    )
    .unwrap();
    let (unaligned, indirect) = (lookup(&s, "unaligned"), lookup(&s, "indirect"));
    let ex = s.executor().clone();
    assert_eq!(ex.call(unaligned, &[1, 2, 3]).unwrap(), 16, "first call");
    assert_eq!(ex.call(indirect, &[1, 2, 4]).unwrap(), 17);
    assert_eq!(ex.call(unaligned, &[1, 2, 5]).unwrap(), 18);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let Some(LazyStatus::Compiled {
        code, redirected, ..
    }) = jit.lazy_status(&f)
    else {
        panic!("not compiled")
    };
    assert!(redirected.is_empty(), "nothing was patched: {redirected:?}");
    assert_eq!(
        call_target(&s, unaligned, UNALIGNED_REL32),
        f.addr.0,
        "the unaligned call still calls the stub"
    );
    assert_eq!(
        stub_slot(&s, f.addr),
        code.0,
        "whose slot leads to the code"
    );
}

/// A lazy function called, compacted (its code and one caller move), called again, redefined,
/// compacted again: the stub and the callers always reach the current code, directly.
fn compacted_and_redefined(at: Where) {
    let s = session(at);
    let jit = jit_on(&s);
    let f = jit
        .declare_lazy("lazy_add3", |cx| Ok(add3(cx, 10)))
        .unwrap();
    jit.link(RegionKind::Method, &aligned_caller("low", "lazy_add3"))
        .unwrap();
    let mut filler = InMemoryGraph::new("drop_me");
    filler.add_function("drop_me", vec![0xc3; 512], vec![], None);
    let filler = jit
        .link(RegionKind::Method, &JitGraph::new(filler))
        .unwrap();
    jit.link(RegionKind::Method, &aligned_caller("high", "lazy_add3"))
        .unwrap();
    let ex = s.executor().clone();
    assert_eq!(ex.call(lookup(&s, "low"), &[1, 2, 3]).unwrap(), 16);
    let code_now = || match jit.lazy_status(&f) {
        Some(LazyStatus::Compiled { code, .. }) => code,
        other => panic!("not compiled: {other:?}"),
    };
    let old_code = code_now();
    let drop_filler = |u| {
        if u == filler.unit {
            kiln_jit::Verdict::Drop
        } else {
            kiln_jit::Verdict::Keep
        }
    };
    let report = jit.compact(drop_filler).unwrap();
    let code = code_now();
    assert_eq!(report.translate(old_code), Some(code));
    assert_ne!(code, old_code, "the code moved");
    let check = |want_k: u64, code: ExecutorAddr| {
        for caller in ["low", "high"] {
            let c = lookup(&s, caller);
            assert_eq!(ex.call(c, &[1, 2, 3]).unwrap(), 6 + want_k, "{caller}");
            assert_eq!(call_target(&s, c, ALIGNED_REL32), code.0, "{caller} direct");
        }
        assert_eq!(ex.call(f.addr, &[1, 1, 1]).unwrap(), 3 + want_k, "the stub");
        assert_eq!(stub_slot(&s, f.addr), code.0);
    };
    check(10, code);
    jit.redefine("lazy_add3", &add3_named("lazy_add3.code", 20))
        .unwrap();
    let code = code_now();
    check(20, code);
    jit.reclaim_retired().unwrap();
    let report = jit.compact(|_| kiln_jit::Verdict::Keep).unwrap();
    assert!(report.dropped.is_empty());
    check(20, code_now());
}

/// [`add3`] under any name.
fn add3_named(name: &str, k: i8) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        vec![
            0x48, 0x8d, 0x04, 0x37, 0x48, 0x01, 0xd0, 0x48, 0x83, 0xc0, k as u8, 0xc3,
        ],
        vec![],
        None,
    );
    JitGraph::new(g)
}

/// No mapping of this process is writable and executable.
fn no_wx_mapping() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let wx: Vec<&str> = maps
        .lines()
        .filter(|l| {
            let perms = l.split_whitespace().nth(1).unwrap_or("");
            perms.contains('w') && perms.contains('x')
        })
        .collect();
    assert!(wx.is_empty(), "writable and executable: {wx:?}");
}

fn main() {
    support::main(|| {
        let all: [(&str, Scenario); 5] = [
            ("eight_threads_at_once", eight_threads_at_once),
            ("arguments_pass_through", arguments_pass_through),
            ("compile_errors_reach_the_vm", compile_errors_reach_the_vm),
            (
                "unpatchable_calls_stay_correct",
                unpatchable_calls_stay_correct,
            ),
            ("compacted_and_redefined", compacted_and_redefined),
        ];
        let mut tests = support::in_places(&all, &support::EVERYWHERE);
        tests.push(("no_wx_mapping_afterwards".into(), Box::new(no_wx_mapping)));
        tests
    });
}

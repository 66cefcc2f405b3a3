//! The session API a JIT compiler uses: definitions on demand, retry after a failed link,
//! dependents, scopes and visibility, lookups, and many compiler threads.
#![allow(unsafe_code)] // calling JIT'd code through typed function pointers, as a user would

mod common;

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph, InMemorySymbol, Visibility};
use kiln::{DebugOptions, Error, ExecutorAddr, Generated, InProcessExecutor, Inputs, Session};
use std::path::PathBuf;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

fn session() -> Session {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    s
}

use common::jit::{caller, constant, run_threads};

fn call(s: &Session, name: &str) -> i32 {
    let addr = s
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} is not defined"));
    // SAFETY: every function these tests define is `int f(void)`, in a unit that stays live
    // for the call.
    let f = unsafe { InProcessExecutor::function::<extern "C" fn() -> i32>(addr) };
    f()
}

fn undefined_names(e: &Error) -> Vec<String> {
    match e {
        Error::Unresolved(u) => u.undefined.iter().map(|r| r.name.clone()).collect(),
        other => panic!("expected undefined symbols, got {other}"),
    }
}

#[test]
fn generators_answer_with_addresses_graphs_and_nothing() {
    let s = session();
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = asked.clone();
    // The host's `abs` by address; `seven` as a graph whose own undefined name (`two`) goes
    // through the generators again; everything else is not ours.
    let abs = s.executor().lookup(&[b"abs"], &[], true).unwrap()[0].unwrap();
    s.add_generator(s.default_scope(), move |name: &str| {
        log.lock().unwrap().push(name.to_string());
        Ok(match name {
            "host_abs" => Generated::Address(abs),
            "seven" => Generated::Graph(caller("seven", "two", 5)),
            "two" => Generated::Graph(constant("two", 2)),
            _ => Generated::NotMine,
        })
    });
    let unit = s.link_graph(&caller("nine", "seven", 2)).unwrap();
    assert_eq!(call(&s, "nine"), 9);
    assert_eq!(
        call(&s, "seven"),
        7,
        "the generated graph's symbols are published"
    );
    assert_eq!(
        s.unit_symbols(unit).unwrap().len(),
        3,
        "nine, seven and two are one unit"
    );
    let mut g = InMemoryGraph::new("uses-abs");
    g.add_function(
        "uses_abs",
        vec![0xbf, 0xf9, 0xff, 0xff, 0xff, 0xe9, 0, 0, 0, 0], // mov $-7, %edi; jmp host_abs
        vec![InMemoryEdge::new(
            6,
            EdgeKind::BranchPCRel32,
            "host_abs",
            -4,
        )],
        None,
    );
    s.link_graph(&g).unwrap();
    assert_eq!(call(&s, "uses_abs"), 7);
    // A name no generator knows: the error lists it with its referrer, as data.
    let e = s
        .link_graph(&caller("bad", "nobody_has_this", 0))
        .unwrap_err();
    assert_eq!(undefined_names(&e), ["nobody_has_this"]);
    let Error::Unresolved(u) = &e else {
        unreachable!()
    };
    assert_eq!(u.undefined[0].referenced_by, ["bad.graph"]);
    assert!(asked
        .lock()
        .unwrap()
        .contains(&"nobody_has_this".to_string()));
}

#[test]
fn a_generator_error_fails_the_link() {
    let s = session();
    s.add_generator(s.default_scope(), |name: &str| -> kiln::Result<Generated> {
        Err(Error::Usage(format!("cannot compile {name}")))
    });
    let e = s.link_graph(&caller("f", "g", 0)).unwrap_err();
    assert_eq!(e.to_string(), "cannot compile g");
    assert!(s.units().is_empty());
}

#[test]
fn a_failed_link_keeps_its_inputs_and_leaves_nothing_in_the_executor() {
    let s = session();
    // Through the session's pending inputs...
    s.add_graph(caller("outer", "inner", 1));
    let e = s.link().unwrap_err();
    assert_eq!(undefined_names(&e), ["inner"]);
    assert!(s.units().is_empty());
    s.add_graph(constant("inner", 41));
    s.link().expect("the second link has both graphs");
    assert_eq!(call(&s, "outer"), 42);
    // ...and through a compiler thread's own Inputs.
    let mut inputs = Inputs::new();
    inputs.add_graph(caller("outer2", "inner2", 2));
    let scope = s.default_scope();
    assert!(s.link_inputs(scope, &inputs).is_err());
    assert!(!inputs.is_empty(), "the inputs are left as they were");
    s.define("inner2", s.lookup("inner").unwrap().0);
    s.link_inputs(scope, &inputs).unwrap();
    assert_eq!(call(&s, "outer2"), 43);
    // A link that fails after memory was allocated (a fixup out of range) gives it back: the
    // same unit linked before and after 200 such failures lands at the same address.
    let first = s.link_graph(&constant("probe", 1)).unwrap();
    let probe_at = s.lookup("probe").unwrap();
    s.remove(first).unwrap();
    let mut bad = InMemoryGraph::new("bad-fixup");
    bad.add_function(
        "bad",
        vec![0x74, 0x00, 0xc3], // je abs (an 8-bit displacement cannot reach libc)
        vec![InMemoryEdge::new(1, EdgeKind::Delta8, "abs", -1)],
        None,
    );
    for _ in 0..200 {
        assert!(matches!(s.link_graph(&bad), Err(Error::Fixup(_))));
    }
    s.link_graph(&constant("probe", 1)).unwrap();
    assert_eq!(
        s.lookup("probe"),
        Some(probe_at),
        "failed links leaked slab memory"
    );
}

#[test]
fn units_know_who_depends_on_them() {
    let s = session();
    let base = s.link_graph(&constant("base", 10)).unwrap();
    let mid = s.link_graph(&caller("mid", "base", 1)).unwrap();
    let top = s.link_graph(&caller("top", "mid", 1)).unwrap();
    let other = s.link_graph(&caller("other", "base", 5)).unwrap();
    assert_eq!(s.dependents(base).unwrap(), [mid, other]);
    assert_eq!(s.dependencies(top).unwrap(), [mid]);
    assert_eq!(call(&s, "top"), 12);
    match s.remove(base).unwrap_err() {
        Error::HasDependents { unit, dependents } => {
            assert_eq!(unit, base);
            assert_eq!(*dependents, [mid, other]);
        }
        e => panic!("expected HasDependents, got {e}"),
    }
    assert_eq!(call(&s, "top"), 12, "a refused removal changes nothing");
    let removed = s.remove_with_dependents(mid).unwrap();
    assert_eq!(removed, [top, mid], "dependents first");
    assert!(s.lookup("top").is_none() && s.lookup("mid").is_none());
    assert_eq!(s.dependents(base).unwrap(), [other]);
    s.remove(other).unwrap();
    s.remove(base).unwrap();
    // A removed unit's names can be defined again, and stale ids are errors.
    s.link_graph(&constant("base", 20)).unwrap();
    assert_eq!(call(&s, "base"), 20);
    assert!(matches!(s.remove(base), Err(Error::Usage(_))));
    assert!(s.dependents(top).is_err());
}

#[test]
fn two_strong_definitions_in_one_scope_clash() {
    let s = session();
    s.link_graph(&constant("dup", 1)).unwrap();
    match s.link_graph(&constant("dup", 2)).unwrap_err() {
        Error::Duplicate(d) => {
            assert_eq!(d[0].name, "dup");
            assert_eq!(d[0].second, "dup.graph");
        }
        e => panic!("expected Duplicate, got {e}"),
    }
    assert_eq!(call(&s, "dup"), 1, "the first definition stays");
    assert_eq!(s.units().len(), 1, "the clashing unit was removed again");
}

/// The session prepares a unit's record outside its lock and finds clashes only when it
/// publishes: a refused unit must leave nothing (no name, no dependency, no pin, no memory),
/// whether its one definition clashes or the second of several does.
#[test]
fn a_unit_refused_at_publishing_leaves_nothing_behind() {
    let s = session();
    let base = s.link_graph(&constant("base", 10)).unwrap();
    s.link_graph(&constant("dup", 1)).unwrap();
    let probe = s.link_graph(&constant("probe", 1)).unwrap();
    let probe_at = s.lookup("probe").unwrap();
    s.remove(probe).unwrap();
    // Two definitions, the second clashing; the unit binds to `base`.
    let mut two = caller("fresh", "base", 1);
    two.add_function("dup", vec![0xb8, 2, 0, 0, 0, 0xc3], vec![], None);
    // One definition, clashing; it binds to `base` too.
    let one = caller("dup", "base", 2);
    for g in [&two, &one].into_iter().cycle().take(100) {
        match s.link_graph(g).unwrap_err() {
            Error::Duplicate(d) => {
                assert_eq!(d.len(), 1);
                assert_eq!(d[0].name, "dup");
            }
            e => panic!("expected Duplicate, got {e}"),
        }
    }
    assert!(
        s.lookup("fresh").is_none(),
        "no name of a refused unit stays"
    );
    assert_eq!(call(&s, "dup"), 1, "the first definition stays");
    assert_eq!(s.units().len(), 2);
    assert!(s.dependents(base).unwrap().is_empty());
    s.link_graph(&constant("probe", 1)).unwrap();
    assert_eq!(
        s.lookup("probe"),
        Some(probe_at),
        "refused units leaked memory"
    );
    // No pin is left on `base` either: it can be removed.
    s.remove(base).unwrap();
}

/// A scope id of another session is an error, not a crash, and leaves nothing.
#[test]
fn a_scope_of_another_session_is_refused() {
    let other = session();
    other.create_scope("a").unwrap();
    let foreign = other.create_scope("b").unwrap();
    let s = session();
    let e = s.link_graph_in(foreign, &constant("lost", 1)).unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    assert!(s.units().is_empty() && s.lookup("lost").is_none());
    assert!(s.lookup_symbol(foreign, "lost").is_none());
}

/// A graph with a hidden helper `h` returning `value` and an exported `NAME` calling it.
fn with_hidden_helper(name: &str, value: i32) -> InMemoryGraph {
    let mut g = caller(name, "h", 0);
    let mut helper = constant("h", value);
    let mut section = helper.sections.remove(0);
    section.blocks[0].symbols = vec![InMemorySymbol {
        name: "h".into(),
        offset: 0,
        size: 6,
        visibility: Visibility::Hidden,
        weak: false,
        callable: true,
    }];
    g.sections.push(section);
    g
}

#[test]
fn scopes_keep_hidden_symbols_apart() {
    let s = session();
    let a = s.create_scope("module-a").unwrap();
    let b = s.create_scope("module-b").unwrap();
    assert!(s.create_scope("module-a").is_err());
    assert_eq!(s.scope_by_name("module-b"), Some(b));
    // Each module has a hidden `h` of its own: no clash, and each binds its own.
    s.link_graph_in(a, &with_hidden_helper("a_entry", 1))
        .unwrap();
    s.link_graph_in(b, &with_hidden_helper("b_entry", 2))
        .unwrap();
    // Units of a scope see its hidden symbols...
    s.link_graph_in(a, &caller("a_more", "h", 10)).unwrap();
    // ...units of other scopes do not, but see exported ones.
    let user = s.create_scope("user").unwrap();
    s.set_search_order(user, &[a, b]).unwrap();
    let e = s.link_graph_in(user, &caller("bad", "h", 0)).unwrap_err();
    assert_eq!(undefined_names(&e), ["h"]);
    s.link_graph_in(user, &caller("u", "b_entry", 100)).unwrap();
    let info = s.lookup_symbol(user, "u").unwrap();
    assert!(info.exported && info.kind == kiln::SymbolKind::Function && info.size == 9);
    assert_eq!(s.lookup_symbol(a, "h").map(|i| i.exported), Some(false));
    assert!(s.lookup_symbol(user, "h").is_none());
    // Call through the addresses the scopes report.
    let at = |scope, name| s.lookup_symbol(scope, name).unwrap().addr;
    let call_at = |addr: ExecutorAddr| {
        // SAFETY: `int f(void)` in a live unit.
        let f = unsafe { InProcessExecutor::function::<extern "C" fn() -> i32>(addr) };
        f()
    };
    assert_eq!(call_at(at(a, "a_entry")), 1);
    assert_eq!(call_at(at(b, "b_entry")), 2);
    assert_eq!(call_at(at(a, "a_more")), 11);
    assert_eq!(call_at(at(user, "u")), 102);
    // The default scope sees none of them.
    assert!(s.lookup("a_entry").is_none());
}

#[test]
fn removal_runs_dependents_destructors_first() {
    static ORDER: Mutex<Vec<i32>> = Mutex::new(Vec::new());
    extern "C" fn record(v: i32) {
        ORDER.lock().unwrap().push(v);
    }
    let dir = std::env::temp_dir().join(format!("kiln-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let object = |name: &str, src: &str| -> PathBuf {
        let c = dir.join(format!("{name}.c"));
        let o = dir.join(format!("{name}.o"));
        std::fs::write(&c, src).unwrap();
        let st = std::process::Command::new("cc")
            .args(["-c", "-O1", "-fPIC", "-o"])
            .arg(&o)
            .arg(&c)
            .status()
            .expect("cc");
        assert!(st.success());
        o
    };
    let lib = object(
        "lib",
        "void record(int); int lib_value(void) { return 5; }\n\
         __attribute__((destructor)) static void bye(void) { record(1); }",
    );
    let user = object(
        "user",
        "void record(int); int lib_value(void); int user_value(void) { return lib_value() + 1; }\n\
         __attribute__((destructor)) static void bye(void) { record(2); }",
    );
    let s = session();
    s.define("record", record as *const () as u64);
    s.add_file(&lib).unwrap();
    let l = s.link().unwrap();
    s.add_file(&user).unwrap();
    let u = s.link().unwrap();
    s.run_initializers().unwrap();
    assert_eq!(call(&s, "user_value"), 6);
    assert_eq!(s.remove_with_dependents(l).unwrap(), [u, l]);
    assert_eq!(
        *ORDER.lock().unwrap(),
        [2, 1],
        "the dependent's destructor ran first"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// 8 threads each link and remove units that call each other's published functions: no
/// deadlock, no lost or doubly defined symbol, every call right.
#[test]
fn eight_threads_link_and_remove_units_that_call_each_other() {
    let s = Arc::new(session());
    let per_thread = 10_000 / 2; // target and caller units: 10,000 units per thread
    run_threads(&s, 8, per_thread, &|s, name| call(s, name));
    assert!(s.units().is_empty(), "every unit was removed");
    assert!(s.lookup("t0_f0").is_none());
}

#[test]
fn the_executor_calls_functions_with_arguments() {
    let s = session();
    let mut g = InMemoryGraph::new("add");
    // u64 add3(u64 a, u64 b, u64 c) { return a + b + c; }
    g.add_function(
        "add3",
        vec![0x48, 0x8d, 0x04, 0x37, 0x48, 0x01, 0xd0, 0xc3], // lea (%rdi,%rsi),%rax; add %rdx,%rax; ret
        vec![],
        None,
    );
    s.link_graph(&g).unwrap();
    let f = s.lookup("add3").unwrap();
    assert_eq!(s.executor().call(f, &[40, 1, 1]).unwrap(), 42);
    assert_eq!(s.executor().call(f, &[1, 2, 3, 4, 5, 6]).unwrap(), 6);
    assert!(
        s.executor().call(f, &[0; 7]).is_err(),
        "at most six arguments"
    );
    let not_code = ExecutorAddr(&s as *const Session as u64);
    assert!(
        s.executor().call(not_code, &[]).is_err(),
        "only code of live units"
    );
}

#[test]
fn relink_records_name_targets_and_incoming_edges() {
    use kiln::{RelinkTarget, UnitOptions};
    let s = session();
    let options = UnitOptions {
        relink: true,
        ..UnitOptions::new(s.default_scope())
    };
    let callee = s.link_graph_with(&constant("callee", 5), &options).unwrap();
    let caller_unit = s
        .link_graph_with(&caller("caller_fn", "callee", 1), &options)
        .unwrap();
    let plain = s.link_graph(&caller("plain", "callee", 2)).unwrap();
    assert!(s.relink_record(plain).is_none(), "only when asked");
    let rec = s.relink_record(caller_unit).unwrap();
    assert_eq!(rec.edges.len(), 1);
    let e = rec.edges[0];
    assert_eq!(
        e.offset, 1,
        "the call's rel32, one byte into the code segment"
    );
    let callee_at = s.lookup("callee").unwrap();
    match e.target {
        RelinkTarget::Unit {
            unit,
            segment,
            offset,
        } => {
            assert_eq!(unit, callee);
            let seg = s.unit_segments(callee).unwrap()[usize::from(segment)];
            assert_eq!(seg.0 .0 + offset, callee_at.0);
        }
        t => panic!("expected a target in the callee's unit, got {t:?}"),
    }
    assert_eq!(s.incoming_edges(callee).unwrap(), [(caller_unit, 0)]);
    assert_eq!(s.unit_at(callee_at).map(|u| u.0), Some(callee));
    s.remove(caller_unit).unwrap();
    assert!(s.incoming_edges(callee).unwrap().is_empty());
    s.remove(plain).unwrap();
    s.remove(callee).unwrap();
    assert!(s.unit_at(callee_at).is_none());
}

/// A graph's own `.eh_frame` section (as a code generator's unwind info would be written): its
/// FDE is registered, so the unwinder walks from Rust, through the JIT'd frame, back into the
/// test.
#[test]
fn graph_eh_frame_sections_are_registered() {
    use kiln::graph::{BlockContent, GraphSectionKind, InMemoryBlock, InMemorySection};
    use std::sync::atomic::AtomicBool;
    static SAW: AtomicBool = AtomicBool::new(false);
    extern "C" fn callback() -> u64 {
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let seen = bt.lines().any(|l| {
            l.trim_end()
                .ends_with("::graph_eh_frame_sections_are_registered")
        });
        SAW.store(seen, Ordering::SeqCst);
        7
    }
    let s = session();
    s.define("rust_callback", callback as *const () as u64);
    // push %rbp; mov %rsp,%rbp; call rust_callback; pop %rbp; ret
    let code = vec![0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x5d, 0xc3];
    let mut g = InMemoryGraph::new("with-eh-frame");
    g.add_function(
        "framed",
        code.clone(),
        vec![InMemoryEdge::new(
            5,
            EdgeKind::BranchPCRel32,
            "rust_callback",
            -4,
        )],
        None,
    );
    // CIE (zR, pcrel|sdata4, CFA = rsp+8, RA at CFA-8) and an FDE for the 11 bytes.
    let mut eh = vec![
        20, 0, 0, 0, 0, 0, 0, 0, 1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0,
    ];
    let fde_at = eh.len();
    eh.extend_from_slice(&28u32.to_le_bytes());
    eh.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes()); // CIE pointer: back to 0
    eh.extend_from_slice(&[0; 4]); // pc_begin: an edge
    eh.extend_from_slice(&(code.len() as u32).to_le_bytes());
    eh.extend_from_slice(&[0, 0x41, 0x0e, 16, 0x86, 2, 0x43, 0x0d, 6]);
    eh.resize(fde_at + 32, 0);
    g.sections.push(InMemorySection {
        name: ".eh_frame".into(),
        prot: kiln_target::MemProt::Read,
        kind: GraphSectionKind::EhFrame,
        blocks: vec![InMemoryBlock {
            content: BlockContent::Bytes(eh),
            align: 8,
            symbols: vec![],
            edges: vec![InMemoryEdge::new(
                (fde_at + 8) as u32,
                EdgeKind::Delta32,
                "framed",
                0,
            )],
            frame: None,
        }],
    });
    s.link_graph(&g).unwrap();
    assert_eq!(call(&s, "framed"), 7);
    assert!(
        SAW.load(Ordering::SeqCst),
        "the unwinder walked through the JIT'd frame"
    );
}

/// A graph's thread-local section: each thread sees its own copy, initialised from the image.
#[test]
fn graph_tls_sections_give_each_thread_a_copy() {
    use kiln::graph::{
        BlockContent, GraphSectionKind, InMemoryBlock, InMemorySection, InMemorySymbol,
    };
    let s = Arc::new(session());
    let mut g = InMemoryGraph::new("tls");
    // int bump(void) { return ++counter; } with local-exec TLS:
    // mov %fs:0,%rax; mov counter@tpoff(%rax),%ecx; inc %ecx; mov %ecx,counter@tpoff(%rax);
    // mov %ecx,%eax; ret
    let code = vec![
        0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, // mov %fs:0, %rax
        0x8b, 0x88, 0, 0, 0, 0, // mov disp32(%rax), %ecx
        0xff, 0xc1, // inc %ecx
        0x89, 0x88, 0, 0, 0, 0, // mov %ecx, disp32(%rax)
        0x89, 0xc8, // mov %ecx, %eax
        0xc3,
    ];
    g.add_function(
        "bump",
        code,
        vec![
            InMemoryEdge::new(11, EdgeKind::TpOff32, "counter", 0),
            InMemoryEdge::new(19, EdgeKind::TpOff32, "counter", 0),
        ],
        None,
    );
    g.sections.push(InMemorySection {
        name: ".tdata".into(),
        prot: kiln_target::MemProt::ReadWrite,
        kind: GraphSectionKind::Tls,
        blocks: vec![InMemoryBlock {
            content: BlockContent::Bytes(41u32.to_le_bytes().to_vec()),
            align: 4,
            symbols: vec![InMemorySymbol {
                name: "counter".into(),
                offset: 0,
                size: 4,
                visibility: Visibility::Hidden,
                weak: false,
                callable: false,
            }],
            edges: vec![],
            frame: None,
        }],
    });
    s.link_graph(&g).unwrap();
    assert_eq!(call(&s, "bump") as u32, 42);
    assert_eq!(call(&s, "bump") as u32, 43);
    let t = {
        let s = s.clone();
        std::thread::spawn(move || call(&s, "bump") as u32)
    };
    assert_eq!(
        t.join().unwrap(),
        42,
        "another thread starts from the image"
    );
}

//! `Session::link_function`: a function the JIT lends (name, code and edges borrowed) links
//! into the unit a one-function `InMemoryGraph` would, with the same checks and errors.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{EdgeRef, FrameDescription, FunctionRef, InMemoryGraph};
use kiln::{DebugOptions, Error, Generated, Session, UnitOptions};

fn session() -> Session {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    s
}

fn call(s: &Session, scope: kiln::ScopeId, name: &str) -> u64 {
    let f = s
        .lookup_symbol(scope, name)
        .unwrap_or_else(|| panic!("{name} is not defined"));
    s.executor().call(f.addr, &[]).expect("call")
}

/// `mov eax, N; ret`
fn constant(n: u8) -> [u8; 6] {
    [0xb8, n, 0, 0, 0, 0xc3]
}

/// `call TARGET; add eax, N; ret`, its call at offset 1.
fn adds(n: u8) -> [u8; 9] {
    [0xe8, 0, 0, 0, 0, 0x83, 0xc0, n, 0xc3]
}

fn call_to(target: &str) -> [EdgeRef<'_>; 1] {
    [EdgeRef::new(1, EdgeKind::BranchPCRel32, target, -4)]
}

/// The graph a function stands for, built the usual way.
fn as_graph(f: &FunctionRef) -> InMemoryGraph {
    f.to_graph()
}

#[test]
fn links_runs_and_calls_other_units() {
    let s = session();
    let scope = s.default_scope();
    let base = constant(40);
    let u1 = s
        .link_function(&FunctionRef::new("base", &base, &[]))
        .unwrap();
    let code = adds(2);
    let edges = call_to("base");
    let u2 = s
        .link_function(&FunctionRef::new("plus_two", &code, &edges))
        .unwrap();
    assert_eq!(call(&s, scope, "base"), 40);
    assert_eq!(call(&s, scope, "plus_two") as u32, 42);
    assert_eq!(s.dependencies(u2).unwrap(), vec![u1]);
    let symbols = s.unit_symbols(u2).unwrap();
    assert_eq!(symbols.len(), 1);
    assert_eq!(symbols[0].0, "plus_two");
    assert_eq!(symbols[0].1.size, code.len() as u64);
    // A unit bound to by another is not removed from under it.
    assert!(s.remove(u1).is_err());
    s.remove(u2).unwrap();
    s.remove(u1).unwrap();
    assert!(s.lookup("base").is_none());
}

#[test]
fn calls_itself_and_graph_units_call_it() {
    let s = session();
    // f: `mov eax, 5; ret` reached through a jump to itself+5: `jmp f+5 (rel32 to f, addend
    // 5-4)` lands on its own `mov`.
    let code = [0xe9, 0, 0, 0, 0, 0xb8, 5, 0, 0, 0, 0xc3];
    let edges = [EdgeRef::new(1, EdgeKind::BranchPCRel32, "selfish", 1)];
    s.link_function(&FunctionRef::new("selfish", &code, &edges))
        .unwrap();
    assert_eq!(call(&s, s.default_scope(), "selfish"), 5);
    // A graph's function calls the borrowed one, as it would another graph's.
    let code = adds(1);
    let g = as_graph(&FunctionRef::new(
        "graph_caller",
        &code,
        &call_to("selfish"),
    ));
    s.link_graph(&g).unwrap();
    assert_eq!(call(&s, s.default_scope(), "graph_caller"), 6);
}

#[test]
fn undefined_names_are_reported_as_for_graphs() {
    let s = session();
    s.set_process_symbols(false);
    let code = adds(1);
    let edges = call_to("nowhere_to_be_found");
    let f = FunctionRef::new("orphan", &code, &edges);
    let borrowed = s.link_function(&f).unwrap_err();
    let graph = s.link_graph(&as_graph(&f)).unwrap_err();
    assert!(matches!(borrowed, Error::Unresolved(_)), "{borrowed}");
    assert!(borrowed.to_string().contains("nowhere_to_be_found"));
    assert_eq!(borrowed.to_string(), graph.to_string());
    assert!(s.units().is_empty(), "a failed link leaves nothing behind");
    // Defined later, the same function links.
    let target = constant(3);
    s.link_function(&FunctionRef::new("nowhere_to_be_found", &target, &[]))
        .unwrap();
    s.link_function(&f).unwrap();
    assert_eq!(call(&s, s.default_scope(), "orphan"), 4);
}

#[test]
fn malformed_edges_are_refused_with_the_graphs_errors() {
    let s = session();
    let code = constant(1);
    let cases: [(&str, [EdgeRef; 1]); 2] = [
        // A 4-byte field at 4 of a 6-byte function ends past it.
        ("past_end", [EdgeRef::new(4, EdgeKind::Delta32, "x", 0)]),
        (
            "far_away",
            [EdgeRef::new(u32::MAX, EdgeKind::Pointer64, "x", 0)],
        ),
    ];
    for (name, edges) in &cases {
        let f = FunctionRef::new(name, &code, edges);
        let borrowed = s.link_function(&f).unwrap_err();
        let graph = s.link_graph(&as_graph(&f)).unwrap_err();
        assert!(matches!(borrowed, Error::Malformed { .. }), "{borrowed}");
        assert!(
            borrowed.to_string().contains("lies outside its block"),
            "{borrowed}"
        );
        assert_eq!(borrowed.to_string(), graph.to_string());
    }
    // A frame-pointer frame needs the prologue's bytes at least.
    let tiny = [0xc3];
    let f = FunctionRef {
        frame: Some(FrameDescription::FramePointer),
        ..FunctionRef::new("tiny", &tiny, &[])
    };
    let borrowed = s.link_function(&f).unwrap_err();
    let graph = s.link_graph(&as_graph(&f)).unwrap_err();
    assert!(borrowed.to_string().contains("frame-pointer"), "{borrowed}");
    assert_eq!(borrowed.to_string(), graph.to_string());
    assert!(s.units().is_empty());
}

#[test]
fn a_second_strong_definition_is_refused() {
    let s = session();
    let one = constant(1);
    let two = constant(2);
    s.link_function(&FunctionRef::new("twice_defined", &one, &[]))
        .unwrap();
    let again = s.link_function(&FunctionRef::new("twice_defined", &two, &[]));
    assert!(again.is_err());
    assert_eq!(call(&s, s.default_scope(), "twice_defined"), 1);
}

#[test]
fn scopes_and_options_are_honoured() {
    let s = session();
    let scope = s.create_scope("module").unwrap();
    let code = constant(9);
    let options = UnitOptions {
        relink: true,
        ..UnitOptions::new(scope)
    };
    let unit = s
        .link_function_with(&FunctionRef::new("in_module", &code, &[]), &options)
        .unwrap();
    assert_eq!(s.unit_scope(unit).unwrap(), scope);
    assert_eq!(call(&s, scope, "in_module"), 9);
    assert!(
        s.lookup("in_module").is_none(),
        "the default scope does not search the module's scope"
    );
    assert!(
        s.relink_record(unit).is_some(),
        "relink: true keeps a record"
    );
    // The same name in another scope is another symbol.
    let other = constant(10);
    s.link_function(&FunctionRef::new("in_module", &other, &[]))
        .unwrap();
    assert_eq!(call(&s, s.default_scope(), "in_module"), 10);
    assert_eq!(call(&s, scope, "in_module"), 9);
}

#[test]
fn a_frame_pointer_function_gets_its_fde() {
    let s = session();
    s.set_collect_stats(true);
    // push rbp; mov rbp, rsp; mov eax, 11; pop rbp; ret
    let code = [0x55, 0x48, 0x89, 0xe5, 0xb8, 11, 0, 0, 0, 0x5d, 0xc3];
    let f = FunctionRef {
        frame: Some(FrameDescription::FramePointer),
        ..FunctionRef::new("framed", &code, &[])
    };
    let unit = s.link_function(&f).unwrap();
    assert_eq!(call(&s, s.default_scope(), "framed"), 11);
    let stats = s.stats(unit).expect("stats");
    let graph_unit = {
        let g = as_graph(&FunctionRef {
            name: "framed_graph",
            ..f
        });
        s.link_graph(&g).unwrap()
    };
    let graph_stats = s.stats(graph_unit).expect("stats");
    // The function, its CIE and FDE, and the terminator: as for the graph.
    assert_eq!(stats.blocks, graph_stats.blocks);
    assert_eq!(stats.live_blocks, graph_stats.live_blocks);
    assert!(stats.blocks >= 3, "{} blocks", stats.blocks);
}

#[test]
fn generators_are_asked_for_what_a_function_misses() {
    let s = session();
    s.set_process_symbols(false);
    s.add_generator(s.default_scope(), |name: &str| {
        Ok(match name {
            "made_on_demand" => {
                let mut g = InMemoryGraph::new("made");
                g.add_function(name, constant(30).to_vec(), vec![], None);
                Generated::Graph(g)
            }
            _ => Generated::NotMine,
        })
    });
    let code = adds(3);
    let edges = call_to("made_on_demand");
    s.link_function(&FunctionRef::new("asks", &code, &edges))
        .unwrap();
    assert_eq!(call(&s, s.default_scope(), "asks"), 33);
}

#[test]
fn several_functions_make_one_unit() {
    let s = session();
    // even(n) / odd(n) call each other (mutual recursion, one unit):
    // even: test edi,edi; je 1f; dec edi; jmp odd; 1: mov eax,1; ret
    // odd:  test edi,edi; je 1f; dec edi; jmp even; 1: xor eax,eax; ret
    let even = [
        0x85, 0xff, 0x74, 0x07, 0xff, 0xcf, 0xe9, 0, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0xc3,
    ];
    let odd = [
        0x85, 0xff, 0x74, 0x07, 0xff, 0xcf, 0xe9, 0, 0, 0, 0, 0x31, 0xc0, 0xc3,
    ];
    let to_odd = [EdgeRef::new(7, EdgeKind::BranchPCRel32, "odd", -4)];
    let to_even = [EdgeRef::new(7, EdgeKind::BranchPCRel32, "even", -4)];
    let functions = [
        FunctionRef::new("even", &even, &to_odd),
        FunctionRef::new("odd", &odd, &to_even),
    ];
    let options = UnitOptions::new(s.default_scope());
    let unit = s.link_functions_with(&functions, &options).unwrap();
    let even_at = s.lookup("even").unwrap();
    assert_eq!(s.executor().call(even_at, &[10]).unwrap() as u32, 1);
    assert_eq!(s.executor().call(even_at, &[7]).unwrap() as u32, 0);
    assert_eq!(s.unit_symbols(unit).unwrap().len(), 2);
    assert_eq!(s.units(), vec![unit]);
    s.remove(unit).unwrap();
    assert!(s.lookup("odd").is_none());
    // Nothing to link is a usage error, not an empty unit.
    assert!(matches!(
        s.link_functions_with(&[], &options),
        Err(Error::Usage(_))
    ));
    assert!(s.units().is_empty());
}

//! `Session::link_graphs_as_unit`: many graphs linked into one unit, referencing each other in
//! any order.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, Error, Session};

/// `name(n) = n == 0 ? 0 : other(n - 1) + 1`: with two of them calling each other, `a(n) = n`
/// only if each call reached the other function.
fn countdown(name: &str, other: &str) -> InMemoryGraph {
    let code = vec![
        0x85, 0xff, // test edi, edi
        0x74, 0x14, // jz zero
        0x83, 0xef, 0x01, // sub edi, 1
        0x48, 0x83, 0xec, 0x08, // sub rsp, 8
        0xe8, 0, 0, 0, 0, // call other
        0x48, 0x83, 0xc4, 0x08, // add rsp, 8
        0x83, 0xc0, 0x01, // add eax, 1
        0xc3, // ret
        0x31, 0xc0, // zero: xor eax, eax
        0xc3, // ret
    ];
    let mut g = InMemoryGraph::new(name);
    let call = InMemoryEdge::new(12, EdgeKind::BranchPCRel32, other, -4);
    g.add_function(name, code, vec![call], None);
    g
}

/// `name() = value`.
fn constant(name: &str, value: u8) -> InMemoryGraph {
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, vec![0xb8, value, 0, 0, 0, 0xc3], vec![], None);
    g
}

fn session() -> Session {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    s
}

fn call(s: &Session, name: &str, arg: u64) -> u64 {
    let f = s
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} is not defined"));
    s.executor().call(f, &[arg]).expect("calling JIT'd code") & 0xffff_ffff
}

#[test]
fn mutually_recursive_graphs_link_as_one_unit() {
    let s = session();
    let batch = [
        countdown("even_odd_a", "even_odd_b"),
        countdown("even_odd_b", "even_odd_a"),
    ];
    // One unit per graph, in order, cannot link the cycle: the first graph's callee is not
    // defined yet, and the failed link leaves nothing.
    match s.link_graphs(s.default_scope(), &batch) {
        Err(Error::Unresolved(u)) => {
            assert_eq!(u.undefined[0].name, "even_odd_b", "{u:?}");
        }
        other => panic!("expected an undefined even_odd_b, got {other:?}"),
    }
    assert!(s.units().is_empty());
    let unit = s
        .link_graphs_as_unit(s.default_scope(), &batch)
        .expect("the batch links");
    assert_eq!(s.units(), vec![unit]);
    for n in [0, 1, 7, 100] {
        assert_eq!(call(&s, "even_odd_a", n), n, "a({n})");
        assert_eq!(call(&s, "even_odd_b", n), n, "b({n})");
    }
    // Both functions are the unit's, and go with it.
    let mut names: Vec<String> = s
        .unit_symbols(unit)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    assert_eq!(names, ["even_odd_a", "even_odd_b"]);
    s.remove(unit).unwrap();
    assert!(s.lookup("even_odd_a").is_none() && s.lookup("even_odd_b").is_none());
}

#[test]
fn a_batch_binds_to_earlier_units_and_later_units_to_it() {
    let s = session();
    let base = s.link_graph(&constant("batch_base", 5)).unwrap();
    // The batch's first graph calls a later one of the batch, which calls the earlier unit.
    let mut first = InMemoryGraph::new("batch_first");
    let edge = InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "batch_second", -4);
    first.add_function("batch_first", vec![0xe9, 0, 0, 0, 0], vec![edge], None);
    let mut second = InMemoryGraph::new("batch_second");
    let edge = InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "batch_base", -4);
    second.add_function("batch_second", vec![0xe9, 0, 0, 0, 0], vec![edge], None);
    let batch = s
        .link_graphs_as_unit(s.default_scope(), &[first, second])
        .unwrap();
    assert_eq!(call(&s, "batch_first", 0), 5);
    assert_eq!(s.dependencies(batch).unwrap(), vec![base]);
    // A later unit binding to the batch depends on it: removing the batch alone is refused.
    let mut user = InMemoryGraph::new("batch_user");
    let edge = InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "batch_first", -4);
    user.add_function("batch_user", vec![0xe9, 0, 0, 0, 0], vec![edge], None);
    let user = s.link_graph(&user).unwrap();
    assert_eq!(call(&s, "batch_user", 0), 5);
    assert!(
        s.remove(batch).is_err(),
        "a unit others bind to is not removed alone"
    );
    let removed = s.remove_with_dependents(batch).unwrap();
    assert!(
        removed.contains(&user) && removed.contains(&batch),
        "{removed:?}"
    );
    assert_eq!(s.units(), vec![base]);
}

#[test]
fn bad_batches_are_refused_and_leave_nothing() {
    let s = session();
    let scope = s.default_scope();
    assert!(matches!(
        s.link_graphs_as_unit(scope, &[]),
        Err(Error::Usage(_))
    ));
    // Two graphs of the batch defining one name.
    let twice = [constant("batch_twice", 1), constant("batch_twice", 2)];
    assert!(s.link_graphs_as_unit(scope, &twice).is_err());
    // A name no graph, unit or define provides.
    let mut dangling = InMemoryGraph::new("batch_dangling");
    let edge = InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "batch_nowhere", -4);
    dangling.add_function("batch_dangling", vec![0xe9, 0, 0, 0, 0], vec![edge], None);
    match s.link_graphs_as_unit(scope, &[constant("batch_fine", 3), dangling]) {
        Err(Error::Unresolved(u)) => assert_eq!(u.undefined[0].name, "batch_nowhere"),
        other => panic!("expected batch_nowhere undefined, got {other:?}"),
    }
    assert!(s.units().is_empty());
    assert!(s.lookup("batch_fine").is_none() && s.lookup("batch_twice").is_none());
    // The session still links after the failures.
    let batch = [constant("batch_fine", 3), constant("batch_twice", 2)];
    s.link_graphs_as_unit(scope, &batch).unwrap();
    assert_eq!(call(&s, "batch_fine", 0), 3);
    assert_eq!(call(&s, "batch_twice", 0), 2);
}

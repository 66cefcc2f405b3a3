//! Many compiler threads sharing one session whose code runs in a spawned executor: the same
//! workload as kiln's in-process test (kiln/tests/common/jit.rs), with every call made in the
//! executor.

mod common;
#[path = "../../kiln/tests/common/jit.rs"]
mod jit;

use kiln::Session;
use kiln_remote::{MemoryMode, Options};
use std::sync::Arc;

fn run(memory: MemoryMode) {
    let ex = common::spawn_remote(Options {
        memory,
        ..Options::default()
    })
    .expect("spawning kiln-executor");
    let s = Arc::new(Session::new(Arc::new(ex)));
    s.set_debug(kiln::DebugOptions::none());
    // `int g(void)` called as main: it ignores argc and argv.
    let call = |s: &Session, name: &str| {
        let addr = s
            .lookup(name)
            .unwrap_or_else(|| panic!("{name} is not defined"));
        s.executor()
            .run_main(addr, &[])
            .expect("calling in the executor")
    };
    jit::run_threads(&s, 8, 10_000 / 2, &call);
    assert!(s.units().is_empty(), "every unit was removed");
}

#[test]
fn eight_threads_link_and_remove_in_a_shared_memory_executor() {
    common::with_deadline("8 threads, shared memory", || run(MemoryMode::Shared));
}

#[test]
fn eight_threads_link_and_remove_in_a_copy_executor() {
    common::with_deadline("8 threads, copied memory", || run(MemoryMode::Copy));
}

#[test]
fn a_spawned_executor_calls_functions_with_arguments() {
    let ex = common::spawn_remote(Options::default()).expect("spawning kiln-executor");
    let s = Session::new(Arc::new(ex));
    s.set_debug(kiln::DebugOptions::none());
    let mut g = kiln::graph::InMemoryGraph::new("add");
    g.add_function(
        "add3",
        vec![0x48, 0x8d, 0x04, 0x37, 0x48, 0x01, 0xd0, 0xc3],
        vec![],
        None,
    );
    s.link_graph(&g).unwrap();
    let f = s.lookup("add3").unwrap();
    assert_eq!(s.executor().call(f, &[40, 1, 1]).unwrap(), 42);
    assert!(s.executor().call(f, &[0; 7]).is_err());
}

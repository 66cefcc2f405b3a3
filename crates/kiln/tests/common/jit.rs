//! Small in-memory graphs and a many-threads workload, shared by kiln's and kiln-remote's tests.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{Error, Session};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// `int NAME(void) { return value; }`
pub fn constant(name: &str, value: i32) -> InMemoryGraph {
    let mut code = vec![0xb8];
    code.extend_from_slice(&value.to_le_bytes());
    code.push(0xc3);
    let mut g = InMemoryGraph::new(format!("{name}.graph"));
    g.add_function(name, code, vec![], None);
    g
}

/// `int NAME(void) { return CALLEE() + add; }`
pub fn caller(name: &str, callee: &str, add: i8) -> InMemoryGraph {
    let code = vec![0xe8, 0, 0, 0, 0, 0x83, 0xc0, add as u8, 0xc3];
    let mut g = InMemoryGraph::new(format!("{name}.graph"));
    g.add_function(
        name,
        code,
        vec![InMemoryEdge::new(1, EdgeKind::BranchPCRel32, callee, -4)],
        None,
    );
    g
}

/// Thread `t` links target units `t{t}_f{i}`
/// (returning `t * 1_000_000 + i`) and caller units `t{t}_g{i}` calling the newest target of
/// thread `t + 1`, calls each caller and checks its result, removes the caller, and removes
/// its own targets once no caller binds to them.
pub fn run_threads(
    s: &Arc<Session>,
    threads: usize,
    per_thread: usize,
    call: &(dyn Fn(&Session, &str) -> i32 + Sync),
) {
    let newest: Arc<Vec<AtomicU64>> =
        Arc::new((0..threads).map(|_| AtomicU64::new(u64::MAX)).collect());
    let checked = AtomicUsize::new(0);
    // Which threads are through their loop of links.
    let looped: Vec<AtomicBool> = (0..threads).map(|_| AtomicBool::new(false)).collect();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (s, newest, checked, looped) = (s.clone(), newest.clone(), &checked, &looped);
            scope.spawn(move || {
                let mut targets = std::collections::VecDeque::new();
                for i in 0..per_thread {
                    let value = (t * 1_000_000 + i) as i32;
                    let f = s
                        .link_graph(&constant(&format!("t{t}_f{i}"), value))
                        .unwrap();
                    targets.push_back(f);
                    newest[t].store(i as u64, Ordering::Release);
                    let other = (t + 1) % threads;
                    // The callee may be removed between reading its name and linking against
                    // it (the other thread went 4 targets further meanwhile): the link then
                    // fails cleanly (undefined), and the caller is tried again against the
                    // other thread's newest target, a few times.
                    for _attempt in 0..16 {
                        let j = newest[other].load(Ordering::Acquire);
                        if j == u64::MAX {
                            break;
                        }
                        let callee = format!("t{other}_f{j}");
                        let g_name = format!("t{t}_g{i}");
                        match s.link_graph(&caller(&g_name, &callee, 1)) {
                            Ok(g) => {
                                let want = (other * 1_000_000) as i32 + j as i32 + 1;
                                assert_eq!(call(&s, &g_name), want, "{g_name} -> {callee}");
                                checked.fetch_add(1, Ordering::Relaxed);
                                s.remove(g).unwrap();
                                break;
                            }
                            Err(Error::Unresolved(u)) => assert_eq!(u.undefined[0].name, callee),
                            Err(e) => panic!("{g_name}: {e}"),
                        }
                    }
                    // Keep the newest few targets; older ones go once nothing binds to them.
                    while targets.len() > 4 {
                        match s.remove(targets[0]) {
                            Ok(()) => {
                                targets.pop_front();
                            }
                            Err(Error::HasDependents { .. } | Error::UnitInUse(_)) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                // Thread t - 1 calls this thread's targets: they stay until it is through its
                // loop too (else, on a loaded machine, a thread that ran ahead would leave
                // the one calling it nothing to call).
                looped[t].store(true, Ordering::Release);
                while !looped[(t + threads - 1) % threads].load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                newest[t].store(u64::MAX, Ordering::Release);
                // The last targets: other threads' callers are removed by them, eventually.
                while let Some(f) = targets.pop_front() {
                    loop {
                        match s.remove(f) {
                            Ok(()) => break,
                            Err(Error::HasDependents { .. } | Error::UnitInUse(_)) => {
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert!(
        checked.load(Ordering::Relaxed) > threads * per_thread / 2,
        "most callers linked and ran ({} of {})",
        checked.load(Ordering::Relaxed),
        threads * per_thread
    );
}

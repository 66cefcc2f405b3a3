//! Compaction of a method region: 5,000 units filling 1 MiB of code, 50,000 calls between them,
//! half of the units dropped (issue 12's measurement). Prints, asserts nothing but correctness.
//!
//! ```text
//! cargo run --release -p kiln-jit --example compact_bench [-- UNITS CALLS_PER_UNIT ROUNDS]
//! ```
//!
//! For each setting (debug sinks off; gdb, perf map, jitdump and valgrind on): link the units,
//! compact (every odd unit dropped: no unit calls an odd one), check that survivors still
//! compute what they computed, print the time and where it went. Then the same moves made one
//! unit at a time with `Session::move_unit` (the unbatched path), and the memory kiln keeps per
//! unit and per edge to relink them.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session, UnitId};
use kiln_jit::{Jit, JitGraph, RegionKind, Verdict, ZoneConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Code bytes per unit (the function, then `int3` padding): 5,000 of them fill 1 MiB.
const UNIT_BYTES: usize = 208;

/// `u32 uN(u32 depth)`: `add`, plus (if depth > 0) each callee called with depth - 1.
fn unit(name: &str, add: u32, callees: &[String]) -> JitGraph {
    let mut code = vec![0x53, 0x41, 0x54, 0x48, 0x83, 0xec, 0x08, 0xbb];
    code.extend(add.to_le_bytes());
    // mov %edi,%r12d; test %r12d,%r12d; jz done; dec %r12d
    let skip = 3 + 10 * callees.len();
    code.extend([0x41, 0x89, 0xfc, 0x45, 0x85, 0xe4, 0x74, skip as u8]);
    code.extend([0x41, 0xff, 0xcc]);
    let mut edges = Vec::new();
    for c in callees {
        // mov %r12d,%edi; call c; add %eax,%ebx
        let at = code.len();
        code.extend([0x44, 0x89, 0xe7, 0xe8, 0, 0, 0, 0, 0x01, 0xc3]);
        edges.push(InMemoryEdge::new(
            (at + 4) as u32,
            EdgeKind::BranchPCRel32,
            c,
            -4,
        ));
    }
    // done: mov %ebx,%eax; add $8,%rsp; pop %r12; pop %rbx; ret
    code.extend([0x89, 0xd8, 0x48, 0x83, 0xc4, 0x08, 0x41, 0x5c, 0x5b, 0xc3]);
    assert!(code.len() <= UNIT_BYTES && skip < 128);
    code.resize(UNIT_BYTES, 0xcc);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, edges, None);
    JitGraph::new(g)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A zone holding `units` units; unit i calls `calls` random even units below it (the first
/// few call none). Returns the session, the zone, each unit's (id, add, callees) and the
/// number of edges.
struct Setup {
    session: Arc<Session>,
    jit: Jit,
    units: Vec<(UnitId, u32, Vec<usize>)>,
    edges: usize,
    link_time: Duration,
}

fn setup(n: usize, calls: usize, debug: &DebugOptions) -> Setup {
    let session = Arc::new(Session::in_process());
    session.set_debug(debug.clone());
    // 2.25 MiB: the method region's code part is 1.5 MiB (units use 1 MiB of it).
    let jit = Jit::new(session.clone(), &ZoneConfig::new(9 << 18)).expect("zone");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut units = Vec::with_capacity(n);
    let mut edges = 0;
    let start = Instant::now();
    for i in 0..n {
        let callees: Vec<usize> = if i < 2 * calls {
            Vec::new()
        } else {
            (0..calls)
                .map(|_| 2 * rng.below((i / 2) as u64) as usize)
                .collect()
        };
        let names: Vec<String> = callees.iter().map(|c| format!("u{c}")).collect();
        let add = (i as u32).wrapping_mul(2_654_435_761);
        let linked = jit
            .link(RegionKind::Method, &unit(&format!("u{i}"), add, &names))
            .expect("link");
        edges += callees.len();
        units.push((linked.unit, add, callees));
    }
    Setup {
        session,
        jit,
        units,
        edges,
        link_time: start.elapsed(),
    }
}

/// What unit `i` returns at depth 1.
fn expected(units: &[(UnitId, u32, Vec<usize>)], i: usize) -> u32 {
    let (_, add, callees) = &units[i];
    callees
        .iter()
        .fold(*add, |acc, &c| acc.wrapping_add(units[c].1))
}

/// Call every surviving unit at depth 1 (each of its calls runs) and compare.
fn check(s: &Setup) {
    for (i, (_, _, _)) in s.units.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let f = s.session.lookup(&format!("u{i}")).expect("survivor");
        let got = s.session.executor().call(f, &[1]).expect("call") as u32;
        assert_eq!(got, expected(&s.units, i), "u{i} after compaction");
    }
}

/// CPU time of this thread (on a shared machine, wall time includes other processes' turns).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn compaction(n: usize, calls: usize, debug: &DebugOptions, label: &str) {
    let s = setup(n, calls, debug);
    let odd: std::collections::HashSet<UnitId> = s
        .units
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, u)| u.0)
        .collect();
    let start = Instant::now();
    let cpu = thread_cpu();
    let report = s
        .jit
        .compact(|u| {
            if odd.contains(&u) {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        })
        .expect("compact");
    let took = start.elapsed();
    let cpu = thread_cpu() - cpu;
    check(&s);
    let t = report.times;
    println!(
        "{label}: {n} units, {} edges, {} KiB of code: compaction {} (CPU {}; verdicts {}, drop {} \
         units {}, layout {}, move {} units {}, finish {}); linking them took {}",
        s.edges,
        report.used_before[0] >> 10,
        us(took),
        us(cpu),
        us(t.verdicts),
        report.dropped.len(),
        us(t.drop),
        us(t.layout),
        report.moved.len(),
        us(t.moves),
        us(t.finish),
        us(s.link_time),
    );
    println!(
        "    code used {} -> {} KiB, largest free range {} KiB",
        report.used_before[0] >> 10,
        report.used_after[0] >> 10,
        report.largest_free[0] >> 10
    );
}

/// The same compaction's moves, one unit per `Session::move_unit` (the dropped units removed
/// first, then every survivor slid down in address order).
fn one_by_one(n: usize, calls: usize) {
    let s = setup(n, calls, &DebugOptions::none());
    let start = Instant::now();
    for (i, u) in s.units.iter().enumerate().rev() {
        if i % 2 == 1 {
            s.jit.remove(u.0).expect("remove");
        }
    }
    let dropped = start.elapsed();
    let mut at = s.jit.zone().method().code().0 .0;
    let start = Instant::now();
    for (i, u) in s.units.iter().enumerate() {
        if i % 2 == 1 {
            continue;
        }
        let (old, size) = s.session.unit_segments(u.0).unwrap()[0];
        if old.0 != at {
            s.session.move_unit(u.0, &[ExecutorAddr(at)]).expect("move");
        }
        at = (at + size).next_multiple_of(16);
    }
    let moved = start.elapsed();
    check(&s);
    println!(
        "one unit per Session::move_unit (sinks off): removing {} units {}, moving {} units {}",
        n / 2,
        us(dropped),
        n - n / 2,
        us(moved)
    );
    // The zone's free lists were not told: drop everything with the session.
    std::mem::forget(s.jit);
}

fn memory(n: usize, calls: usize, debug: &DebugOptions, label: &str) {
    let s = setup(n, calls, debug);
    let mut total = kiln::RelinkBytes::default();
    for u in &s.units {
        let b = s.session.relink_bytes(u.0).expect("bytes");
        total.record += b.record;
        total.edges += b.edges;
        total.actions += b.actions;
        total.incoming += b.incoming;
    }
    let per_edge = (total.edges + total.incoming) as f64 / s.edges as f64;
    let per_unit = (total.total() - total.edges - total.incoming) as f64 / n as f64;
    println!(
        "{label}: kept for relinking: {} KiB for {n} units and {} edges: per edge {per_edge:.1} B \
         (RelinkEdge {} B in the caller's record, and the callee's incoming list entry), per \
         unit {per_unit:.0} B besides (record {} B, actions as linked {} B on average)",
        total.total() >> 10,
        s.edges,
        std::mem::size_of::<kiln::RelinkEdge>(),
        (total.record - total.edges) / n as u64,
        total.actions / n as u64,
    );
}

fn main() {
    // UNITS CALLS_PER_UNIT ROUNDS, then `off` to measure only with the sinks off (for profiling).
    let only_off = std::env::args().any(|a| a == "off");
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "off")
        .map(|a| {
            a.parse()
                .expect("numbers: UNITS CALLS_PER_UNIT ROUNDS [off]")
        })
        .collect();
    let n = args.first().copied().unwrap_or(5000);
    let calls = args.get(1).copied().unwrap_or(10);
    let rounds = args.get(2).copied().unwrap_or(3);
    let on = DebugOptions {
        gdb: true,
        perf_map: true,
        jitdump: Some(std::env::temp_dir().join("kiln-compact-bench")),
        valgrind: true,
    };
    let _ = std::fs::create_dir_all(std::env::temp_dir().join("kiln-compact-bench"));
    for _ in 0..rounds {
        compaction(n, calls, &DebugOptions::none(), "sinks off");
    }
    if only_off {
        return;
    }
    for _ in 0..rounds {
        compaction(n, calls, &on, "sinks on (gdb, perf map, jitdump, valgrind)");
    }
    one_by_one(n, calls);
    memory(n, calls, &DebugOptions::none(), "sinks off");
    memory(n, calls, &on, "sinks on");
    let _ = std::fs::remove_file(kiln_target::debug_sinks::perf_map_path());
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("kiln-compact-bench"));
}

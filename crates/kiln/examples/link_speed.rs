//! How long linking one small function takes: N one-function graphs (each calling libc's `abs`
//! and the function before it), linked into an in-process session with the debug sinks off. A
//! quick loop for profiling the link path; `benches/jit-functions` is the benchmark against
//! peers.
//!
//! ```text
//! cargo run --release -p kiln --example link_speed -- [N] [--sinks LIST] [--per-unit K] [--borrowed]
//! ```
//!
//! - `N`: functions to link (default 100,000).
//! - `--sinks LIST`: debug sinks on, comma-separated: `gdb`, `perf-map`, `jitdump`, `valgrind`
//!   (default none), to measure what each adds per unit.
//! - `--per-unit K`: link K graphs together as one unit (`Session::link_graphs_as_unit`) instead of each
//!   graph as a unit of its own (`Session::link_graph`): what a JIT that compiles and frees in
//!   batches pays per function.
//! - `--borrowed`: lend each function to kiln (`Session::link_function`, code and edges
//!   borrowed) instead of building an `InMemoryGraph` for it; with `--per-unit K`, K at a
//!   time as one unit (`Session::link_functions_with`).

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{EdgeRef, FunctionRef, InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, Session};
use std::time::Instant;

struct Args {
    n: usize,
    sinks: String,
    per_unit: usize,
    borrowed: bool,
}

fn parse_args() -> Result<Args, kiln::Error> {
    let usage = |why: String| {
        kiln::Error::Usage(format!(
            "{why} (link_speed [N] [--sinks LIST] [--per-unit K] [--borrowed])"
        ))
    };
    let mut a = Args {
        n: 100_000,
        sinks: String::new(),
        per_unit: 1,
        borrowed: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--sinks" => a.sinks = value("--sinks")?,
            "--borrowed" => a.borrowed = true,
            "--per-unit" => {
                let v = value("--per-unit")?;
                a.per_unit = v
                    .parse()
                    .ok()
                    .filter(|&k| k > 0)
                    .ok_or_else(|| usage(format!("--per-unit {v}")))?;
            }
            n => a.n = n.parse().map_err(|_| usage(format!("unexpected {n:?}")))?,
        }
    }
    Ok(a)
}

fn main() -> Result<(), kiln::Error> {
    let args = parse_args()?;
    let n = args.n;
    let s = Session::in_process();
    let jitdump_dir = std::env::temp_dir().join(format!("link_speed-{}", std::process::id()));
    s.set_debug(debug_options(&args.sinks, &jitdump_dir)?);
    let abs = s.executor().lookup(&[b"abs"], &[], true)?[0].expect("abs");
    s.define("abs", abs.0);
    // f_i(x) = abs(x) + f_{i-1}(x) + 1: call abs; call prev; with padding to 160 bytes.
    let mut code = vec![0x90u8; 160];
    code[..5].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
    code[5..10].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
    code[159] = 0xc3;
    let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let graph = |i: usize| {
        let mut g = InMemoryGraph::new(names[i].clone());
        let prev = if i == 0 { "abs" } else { &names[i - 1] };
        g.add_function(
            &names[i],
            code.clone(),
            vec![
                InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "abs", -4),
                InMemoryEdge::new(6, EdgeKind::BranchPCRel32, prev, -4),
            ],
            None,
        );
        g
    };
    let rss_before = vm_rss();
    let start = Instant::now();
    let edges_of = |i: usize| {
        let prev = if i == 0 { "abs" } else { &names[i - 1] };
        [
            EdgeRef::new(1, EdgeKind::BranchPCRel32, "abs", -4),
            EdgeRef::new(6, EdgeKind::BranchPCRel32, prev, -4),
        ]
    };
    if args.borrowed && args.per_unit == 1 {
        for (i, name) in names.iter().enumerate() {
            let edges = edges_of(i);
            s.link_function(&FunctionRef::new(name, &code, &edges))?;
        }
    } else if args.borrowed {
        let options = kiln::UnitOptions::new(s.default_scope());
        for first in (0..n).step_by(args.per_unit) {
            let batch = first..(first + args.per_unit).min(n);
            let edges: Vec<_> = batch.clone().map(edges_of).collect();
            let functions: Vec<FunctionRef> = batch
                .zip(&edges)
                .map(|(i, e)| FunctionRef::new(&names[i], &code, e))
                .collect();
            s.link_functions_with(&functions, &options)?;
        }
    } else if args.per_unit == 1 {
        for i in 0..n {
            s.link_graph(&graph(i))?;
        }
    } else {
        for first in (0..n).step_by(args.per_unit) {
            let batch: Vec<InMemoryGraph> =
                (first..(first + args.per_unit).min(n)).map(graph).collect();
            s.link_graphs_as_unit(s.default_scope(), &batch)?;
        }
    }
    let t = start.elapsed();
    let rss = vm_rss().saturating_sub(rss_before) as f64;
    println!(
        "{n} functions, {} per unit, in {:.3} s: {:.0} ns per function, {:.0} functions/s; VmRSS \
         +{:.0} bytes per function ({:.2} per code byte)",
        args.per_unit,
        t.as_secs_f64(),
        t.as_nanos() as f64 / n as f64,
        n as f64 / t.as_secs_f64(),
        rss / n as f64,
        rss / (n * code.len()) as f64
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&jitdump_dir);
    Ok(())
}

/// The debug sinks named in `list` on, the others off.
fn debug_options(list: &str, jitdump_dir: &std::path::Path) -> Result<DebugOptions, kiln::Error> {
    let mut options = DebugOptions::none();
    for sink in list.split(',').filter(|s| !s.is_empty()) {
        match sink {
            "gdb" => options.gdb = true,
            "perf-map" => options.perf_map = true,
            "valgrind" => options.valgrind = true,
            "jitdump" => {
                std::fs::create_dir_all(jitdump_dir)
                    .map_err(|e| kiln::Error::Usage(format!("{}: {e}", jitdump_dir.display())))?;
                options.jitdump = Some(jitdump_dir.to_path_buf());
            }
            other => {
                return Err(kiln::Error::Usage(format!(
                    "unknown sink {other:?} (gdb, perf-map, jitdump, valgrind)"
                )))
            }
        }
    }
    Ok(options)
}

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`; 0 if unreadable).
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

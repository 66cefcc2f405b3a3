//! What kiln-jit's lazy functions cost, in one run: the first call (the callback returns one
//! small graph, which is linked into the method region; the stub and the calling site are
//! patched), in process and out of process; and the steady-state call after it, 10^8 calls in
//! a loop of kiln-linked code making a direct call to the lazy name, against the same loop
//! calling the function directly and calling through a stub whose slot was patched but whose
//! call site was not (ORC's lazy reexports: an indirect jump on every call). Printed, not
//! asserted: a benchmark, not a test.
//!
//! `cargo run --release -p kiln-jit --example lazy_calls` (the example serves as its own
//! executor process for the out-of-process half).

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::Session;
use kiln_jit::{Jit, JitGraph, LazyStatus, RegionKind, ZoneConfig};
use kiln_remote::{Options, RemoteExecutor};
use kiln_target::ExecutorAddr;
use std::sync::Arc;
use std::time::Instant;

const SERVE: &str = "--serve-as-executor";

/// `long add(long a, long b) { return a + b; }`
const ADD: &[u8] = &[0x48, 0x8d, 0x04, 0x37, 0xc3];

/// `long loop(long n)`: `r = 0; while (n--) r = TARGET(r, 1); return r;` with the call's rel32
/// at offset 0x1c (4-byte aligned: a site kiln can patch) and the loop head 16-byte aligned.
const LOOP: &[u8] = &[
    0x53, 0x41, 0x54, 0x41, 0x55, // push %rbx; push %r12; push %r13
    0x48, 0x89, 0xfb, // mov %rdi, %rbx
    0x45, 0x31, 0xe4, // xor %r12d, %r12d
    0x48, 0x85, 0xdb, // test %rbx, %rbx
    0x74, 0x18, // je 0x28
    0x4c, 0x89, 0xe7, // 0x10: mov %r12, %rdi
    0xbe, 0x01, 0x00, 0x00, 0x00, // mov $1, %esi
    0x0f, 0x1f, 0x00, // nopl (%rax)
    0xe8, 0, 0, 0, 0, // call TARGET
    0x49, 0x89, 0xc4, // mov %rax, %r12
    0x48, 0xff, 0xcb, // dec %rbx
    0x75, 0xe8, // jne 0x10
    0x4c, 0x89, 0xe0, // 0x28: mov %r12, %rax
    0x41, 0x5d, 0x41, 0x5c, 0x5b, // pop %r13; pop %r12; pop %rbx
    0xc3,
];
const LOOP_CALL_REL32: u32 = 0x1c;

/// `long caller(long a, long b) { return CALLEE(a, b); }`, the call's rel32 4-byte aligned.
const CALLER: &[u8] = &[
    0x48, 0x83, 0xec, 0x08, 0x0f, 0x1f, 0x00, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08, 0xc3,
];

fn function(name: &str, code: &[u8], edge: Option<(u32, EdgeKind, &str)>) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    let edges = edge
        .map(|(at, kind, target)| vec![InMemoryEdge::new(at, kind, target, -4)])
        .into_iter()
        .flatten()
        .collect();
    g.add_function(name, code.to_vec(), edges, None);
    // 64-byte aligned: the loops and their callees sit alike in cache lines and fetch blocks,
    // so that the steady-state ratios compare calls, not code placement.
    if let Some(block) = g.sections.last_mut().and_then(|s| s.blocks.first_mut()) {
        block.align = 64;
    }
    JitGraph::new(g)
}

fn lookup(s: &Session, name: &str) -> anyhow::Result<ExecutorAddr> {
    s.lookup(name)
        .ok_or_else(|| anyhow::anyhow!("{name} is not defined"))
}

const ROUNDS: usize = 5;
/// Runs each steady-state loop is split into.
const CHUNKS: u64 = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// First calls: `n` lazy functions, each called once through a caller of its own making a
/// direct call (the call site gets patched), each call timed alone, then each caller called
/// again (through the patched site). Nanoseconds: the median first call, the median second
/// call (what calling from here costs), over [`ROUNDS`] rounds of fresh functions. Medians of
/// single calls, so that a machine busy with other work shows what a call costs when it runs,
/// not how often it was preempted.
fn first_calls(jit: &Arc<Jit>, n: usize) -> anyhow::Result<(f64, f64)> {
    let s = jit.session().clone();
    let ex = s.executor().clone();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut callers = Vec::new();
        for i in 0..n {
            let name = format!("lazy_{round}_{i}");
            jit.declare_lazy(&name, |cx| Ok(function(cx.code_name, ADD, None)))?;
            let caller = format!("caller_{round}_{i}");
            let g = function(&caller, CALLER, Some((8, EdgeKind::BranchPCRel32, &name)));
            jit.link(RegionKind::Method, &g)?;
            callers.push(lookup(&s, &caller)?);
        }
        for times in [&mut first, &mut second] {
            for c in &callers {
                let t = Instant::now();
                let r = ex.call(*c, &[1, 2])?;
                times.push(t.elapsed().as_nanos() as f64);
                anyhow::ensure!(r == 3, "a caller returned {r}");
            }
        }
    }
    Ok((median(first), median(second)))
}

fn report_first(n: usize, (first, second): (f64, f64), link: f64) {
    println!(
        "  first call ({n} functions x {ROUNDS} rounds, median): {:7.0} ns over a later call \
         ({first:.0} ns, a later call {second:.0} ns: calling from the controller)",
        first - second
    );
    println!("    of it, the Jit::link of the graph the callback returns: {link:.0} ns");
}

/// For comparison with a first call: ns per `Jit::link` of the graph a callback returns,
/// alone (median of `n` x [`ROUNDS`] single links).
fn link_alone(jit: &Jit, n: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..n {
            let g = function(&format!("alone_{round}_{i}"), ADD, None);
            let t = Instant::now();
            jit.link(RegionKind::Method, &g)?;
            times.push(t.elapsed().as_nanos() as f64);
        }
    }
    Ok(median(times))
}

/// Steady state: ns per call of the loop calling a lazy function after its first call (site
/// patched), the function directly, and a stub whose slot is patched but whose call site is
/// not (ORC-style).
fn steady_state(jit: &Arc<Jit>, calls: u64) -> anyhow::Result<[(f64, f64); 3]> {
    let s = jit.session().clone();
    let compile = |cx: &kiln_jit::LazyContext<'_>| Ok(function(cx.code_name, ADD, None));
    let lazy = jit.declare_lazy("steady_lazy", compile)?;
    let orc = jit.declare_lazy("steady_orc", compile)?;
    jit.link(RegionKind::Method, &function("add_direct", ADD, None))?;
    // The loops in the fixed region (no relink records): the ORC-style loop's call site stays
    // unpatched when its stub is resolved from elsewhere.
    for (name, target) in [
        ("loop_lazy", "steady_lazy"),
        ("loop_direct", "add_direct"),
        ("loop_orc", "steady_orc"),
    ] {
        let edge = Some((LOOP_CALL_REL32, EdgeKind::BranchPCRel32, target));
        jit.link(RegionKind::Fixed, &function(name, LOOP, edge))?;
    }
    let ex = s.executor().clone();
    let (loop_lazy, loop_direct, loop_orc) = (
        lookup(&s, "loop_lazy")?,
        lookup(&s, "loop_direct")?,
        lookup(&s, "loop_orc")?,
    );
    // First calls: the lazy one from its loop's call site (patched), the ORC-style one from
    // here (the executor's call, not kiln code: its loop's site keeps calling the stub).
    ex.call(loop_lazy, &[1])?;
    ex.call(orc.addr, &[1, 1])?;
    for (f, want_patched) in [(&lazy, true), (&orc, false)] {
        let Some(LazyStatus::Compiled { redirected, .. }) = jit.lazy_status(f) else {
            anyhow::bail!("{} was not compiled", f.name);
        };
        anyhow::ensure!(
            redirected.is_empty() != want_patched,
            "{}: redirected {redirected:?}",
            f.name
        );
    }
    let time = |f: ExecutorAddr, n: u64| -> anyhow::Result<f64> {
        let t = Instant::now();
        let r = ex.call(f, &[n])?;
        anyhow::ensure!(r == n, "the loop returned {r}");
        Ok(t.elapsed().as_nanos() as f64 / n as f64)
    };
    // `calls` per loop, run as CHUNKS runs of calls / CHUNKS, the three loops interleaved run
    // by run (so that frequency changes and other work on the machine hit all three alike);
    // each loop's fastest run and median run.
    let chunk = (calls / CHUNKS).max(1);
    let mut runs: [Vec<f64>; 3] = Default::default();
    for _ in 0..CHUNKS {
        for (r, f) in runs.iter_mut().zip([loop_lazy, loop_direct, loop_orc]) {
            r.push(time(f, chunk)?);
        }
    }
    Ok(runs.map(|r| {
        let best = r.iter().copied().fold(f64::INFINITY, f64::min);
        (best, median(r))
    }))
}

/// What a cross-modifying-code sync (the `write_live` after patching a call site) costs in
/// this process, in ns.
fn sync_cost() -> f64 {
    const N: u32 = 1000;
    let t = Instant::now();
    for _ in 0..N {
        let _ = kiln_target::sync_cores();
    }
    t.elapsed().as_nanos() as f64 / f64::from(N)
}

fn report_steady(what: &str, calls: u64, [lazy, direct, orc]: [(f64, f64); 3]) {
    println!(
        "  steady state, {calls} calls per loop in {CHUNKS} runs ({what}): ns/call, fastest run \
         (median run), and the fastest over the direct call's:"
    );
    let line = |name: &str, (best, med): (f64, f64)| {
        println!(
            "    {name:34} {best:6.3} ({med:6.3})  {:.3}x",
            best / direct.0
        );
    };
    line("lazy function, call site patched:", lazy);
    line("direct call:", direct);
    line("ORC-style, through the stub:", orc);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(SERVE) {
        std::process::exit(kiln_remote::executor_main(&args[1..], &[]));
    }
    let calls: u64 = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000_000);

    let local = Arc::new(Session::in_process());
    local.set_debug(kiln::DebugOptions::none());
    let jit = Arc::new(Jit::new(local, &ZoneConfig::new(64 << 20))?);
    const IN_PROCESS: usize = 2_000;
    println!(
        "in process (cross-modifying-code sync by {}: {:.0} ns each):",
        kiln_target::sync_cores_method(),
        sync_cost()
    );
    let first = first_calls(&jit, IN_PROCESS)?;
    report_first(IN_PROCESS, first, link_alone(&jit, IN_PROCESS)?);
    report_steady("in process", calls, steady_state(&jit, calls)?);
    drop(jit);

    let exe = std::env::current_exe()?;
    let remote = RemoteExecutor::spawn(&exe, &[SERVE], Options::default())?;
    let shared = remote.shares_memory();
    let s = Arc::new(Session::new(Arc::new(remote)));
    s.set_debug(kiln::DebugOptions::none());
    let jit = Arc::new(Jit::new(s, &ZoneConfig::new(64 << 20))?);
    const OUT_OF_PROCESS: usize = 200;
    println!(
        "out of process ({} memory):",
        if shared { "shared" } else { "copied" }
    );
    let first = first_calls(&jit, OUT_OF_PROCESS)?;
    report_first(OUT_OF_PROCESS, first, link_alone(&jit, OUT_OF_PROCESS)?);
    report_steady("in the executor", calls, steady_state(&jit, calls)?);
    Ok(())
}

//! What the first call through a lazy stub costs, in process and out of process: the
//! trampoline, the registry and (out of process) the round trip to the controller, with a
//! handler that returns an address linked already. Printed, not asserted (a benchmark, not a test).
//!
//! `cargo run --release -p kiln-remote --example lazy_first_call` (the example serves as its own
//! executor process).
//!
//! A JIT'd loop calls each of N stubs once (first calls), then the same stubs again (their slots
//! still point at the trampoline: cached resolution), then the stubs patched to the function, then
//! the function directly. Per-call times are the loop's time over N. The loop's indirect call
//! goes to a new address for each stub (a mispredicted branch, and code not in the cache, as a
//! real first call's is), and always to the same one in the direct pass.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{
    BlockContent, InMemoryBlock, InMemoryEdge, InMemoryGraph, InMemorySection, InMemorySymbol,
};
use kiln::Session;
use kiln_remote::{Options, RemoteExecutor};
use kiln_target::{ExecutorAddr, LazyHandler, MemProt, LAZY_STUB, LAZY_TRAMPOLINE_SYMBOL};
use std::sync::Arc;
use std::time::Instant;

const SERVE: &str = "--serve-as-executor";

/// `long call_all(long (**fns)(long, long), long n)`: calls `fns[i](1, 2)` for each i, returns
/// the sum.
const CALL_ALL: &[u8] = &[
    0x53, // push %rbx
    0x41, 0x54, // push %r12
    0x41, 0x55, // push %r13 (three pushes: the stack is 16-byte aligned for the calls)
    0x48, 0x89, 0xfb, // mov %rdi, %rbx
    0x49, 0x89, 0xf4, // mov %rsi, %r12
    0x45, 0x31, 0xed, // xor %r13d, %r13d
    0x4d, 0x85, 0xe4, // 14: test %r12, %r12
    0x74, 0x18, // jz 43
    0xbf, 1, 0, 0, 0, // mov $1, %edi
    0xbe, 2, 0, 0, 0, // mov $2, %esi
    0xff, 0x13, // call *(%rbx)
    0x49, 0x01, 0xc5, // add %rax, %r13
    0x48, 0x83, 0xc3, 0x08, // add $8, %rbx
    0x49, 0xff, 0xcc, // dec %r12
    0xeb, 0xe3, // jmp 14
    0x4c, 0x89, 0xe8, // 43: mov %r13, %rax
    0x41, 0x5d, // pop %r13
    0x41, 0x5c, // pop %r12
    0x5b, // pop %rbx
    0xc3, // ret
];

/// A read-write table `name` of 8-byte pointers to `targets`.
fn table(name: &str, targets: &[String]) -> InMemoryGraph {
    let mut g = InMemoryGraph::new(format!("{name}.graph"));
    g.sections.push(InMemorySection {
        name: ".data".into(),
        prot: MemProt::ReadWrite,
        kind: kiln::graph::GraphSectionKind::Regular,
        blocks: vec![InMemoryBlock {
            content: BlockContent::Bytes(vec![0; 8 * targets.len()]),
            align: 8,
            symbols: vec![InMemorySymbol {
                name: name.into(),
                offset: 0,
                size: 8 * targets.len() as u64,
                visibility: kiln::graph::Visibility::Default,
                weak: false,
                callable: false,
            }],
            edges: targets
                .iter()
                .enumerate()
                .map(|(i, t)| InMemoryEdge::new(8 * i as u32, EdgeKind::Pointer64, t, 0))
                .collect(),
            frame: None,
        }],
    });
    g
}

const ROUNDS: usize = 5;

/// Time per call of each pass, in ns, on session `s` with `n` stubs: the median of [`ROUNDS`]
/// rounds, each with fresh stubs.
fn measure(s: &Session, n: usize) -> anyhow::Result<[f64; 4]> {
    let mut g = InMemoryGraph::new("code");
    // long add(long a, long b) { return a + b; }
    g.add_function("add", vec![0x48, 0x8d, 0x04, 0x37, 0xc3], vec![], None);
    g.add_function("call_all", CALL_ALL.to_vec(), vec![], None);
    s.link_graph(&g)?;
    let rounds = (0..ROUNDS)
        .map(|round| measure_round(s, n, round))
        .collect::<anyhow::Result<Vec<[f64; 4]>>>()?;
    Ok(std::array::from_fn(|i| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[ROUNDS / 2]
    }))
}

fn lookup(s: &Session, name: &str) -> anyhow::Result<ExecutorAddr> {
    s.lookup(name)
        .ok_or_else(|| anyhow::anyhow!("{name} is not defined"))
}

fn measure_round(s: &Session, n: usize, round: usize) -> anyhow::Result<[f64; 4]> {
    let ex = s.executor().clone();
    let add = lookup(s, "add")?;
    let call_all = lookup(s, "call_all")?;
    let handler: LazyHandler = Arc::new(move |_| Ok(add));
    let mut stubs = InMemoryGraph::new(format!("stubs{round}"));
    let names: Vec<String> = (0..n).map(|i| format!("lazy_{round}_{i}")).collect();
    for name in &names {
        let key = ex.declare_lazy(handler.clone())?;
        stubs.add_function(
            name,
            LAZY_STUB.instantiate(key, ExecutorAddr::NULL),
            vec![InMemoryEdge::new(
                LAZY_STUB.target_offset as u32,
                EdgeKind::Pointer64,
                LAZY_TRAMPOLINE_SYMBOL,
                0,
            )],
            None,
        );
    }
    s.link_graph(&stubs)?;
    let (stub_table, direct_table) = (format!("stubs_{round}"), format!("direct_{round}"));
    s.link_graph(&table(&stub_table, &names))?;
    s.link_graph(&table(&direct_table, &vec!["add".to_string(); n]))?;
    let stub_table = lookup(s, &stub_table)?;
    let direct_table = lookup(s, &direct_table)?;

    let pass = |table: ExecutorAddr| -> anyhow::Result<f64> {
        let t = Instant::now();
        let sum = ex.call(call_all, &[table.0, n as u64])?;
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        anyhow::ensure!(sum == 3 * n as u64, "the loop summed {sum}");
        Ok(ns)
    };
    let first = pass(stub_table)?;
    let cached = pass(stub_table)?;
    for name in &names {
        let slot = ExecutorAddr(lookup(s, name)?.0 + LAZY_STUB.target_offset as u64);
        s.patch(slot, &add.0.to_le_bytes())?;
    }
    let patched = pass(stub_table)?;
    let direct = pass(direct_table)?;
    Ok([first, cached, patched, direct])
}

fn report(what: &str, n: usize, [first, cached, patched, direct]: [f64; 4]) {
    println!("{what} ({n} stubs, median of {ROUNDS} rounds):");
    println!("  first call (trampoline + registry + handler): {first:10.1} ns");
    println!("  later call, stub not patched (cached):         {cached:10.1} ns");
    println!("  later call, stub patched to the function:      {patched:10.1} ns");
    println!("  direct call:                                   {direct:10.1} ns");
    println!(
        "  first-call overhead over a patched call:       {:10.1} ns",
        first - patched
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(SERVE) {
        std::process::exit(kiln_remote::executor_main(&args[1..], &[]));
    }
    let local = Session::in_process();
    local.set_debug(kiln::DebugOptions::none());
    const IN_PROCESS: usize = 20_000;
    report("in process", IN_PROCESS, measure(&local, IN_PROCESS)?);

    let exe = std::env::current_exe()?;
    let remote = RemoteExecutor::spawn(&exe, &[SERVE], Options::default())?;
    let shared = remote.shares_memory();
    let s = Session::new(Arc::new(remote));
    s.set_debug(kiln::DebugOptions::none());
    const OUT_OF_PROCESS: usize = 2_000;
    report(
        &format!(
            "out of process ({} memory)",
            if shared { "shared" } else { "copied" }
        ),
        OUT_OF_PROCESS,
        measure(&s, OUT_OF_PROCESS)?,
    );
    Ok(())
}

//! Benchmark (not a test): compile, define and finalize 10,000 Cranelift functions of mixed size
//! through cranelift-jit's `JITModule` and through `KilnModule`, and split the wall time into
//! Cranelift's compile and the backend's part; resident memory per function; executable
//! mappings. Each configuration runs in a child process of its own, from the same baseline.
//!
//! ```sh
//! cargo run --release -p kiln-cranelift --example bench [-- --count N]
//! ```
//! The table and how to read it: docs/cranelift.md.
#![allow(unsafe_code)] // calling the finalized functions to check them

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{types::I64, AbiParam, InstBuilder, Signature};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module, ModuleReloc};
use kiln_cranelift::{KilnBuilder, KilnModule};
use std::process::Command;
use std::time::{Duration, Instant};

extern "C" fn bench_host(x: i64) -> i64 {
    x ^ 0x55
}

/// Function `i`: `k` multiply-adds of its argument (k from 2 to 160, by a fixed xorshift, so
/// code sizes are mixed), plus `f(i-1)(x)`, plus `bench_host(x)` for every tenth function.
fn steps(i: u64) -> i64 {
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    2 + (s % 159) as i64
}

fn expected(n: usize, x: i64) -> i64 {
    let mut prev = 0i64;
    for i in 0..n {
        let mut v = x;
        for j in 0..steps(i as u64) {
            v = v.wrapping_mul(j * 2 + 3).wrapping_add(j + 1);
        }
        if i > 0 {
            v = v.wrapping_add(prev);
        }
        if i.is_multiple_of(10) {
            v = v.wrapping_add(bench_host(x));
        }
        prev = v;
    }
    prev
}

fn signature<M: Module>(m: &M) -> Signature {
    let mut s = m.make_signature();
    s.params.push(AbiParam::new(I64));
    s.returns.push(AbiParam::new(I64));
    s
}

/// The IR of function `i` in `ctx` (not timed).
fn build<M: Module>(m: &mut M, ctx: &mut Context, ids: &[FuncId], host: FuncId, i: usize) {
    m.clear_context(ctx);
    ctx.func.signature = signature(m);
    let config = m.target_config();
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let x = b.block_params(block)[0];
    let mut v = x;
    for j in 0..steps(i as u64) {
        v = b.ins().imul_imm_s(v, j * 2 + 3);
        v = b.ins().iadd_imm_s(v, j + 1);
    }
    if i > 0 {
        let f = m.declare_func_in_func(ids[i - 1], b.func);
        let c = b.ins().call(f, &[x]);
        let r = b.inst_results(c)[0];
        v = b.ins().iadd(v, r);
    }
    if i.is_multiple_of(10) {
        let f = m.declare_func_in_func(host, b.func);
        let c = b.ins().call(f, &[x]);
        let r = b.inst_results(c)[0];
        v = b.ins().iadd(v, r);
    }
    b.ins().return_(&[v]);
    b.seal_all_blocks();
    b.finalize(config);
}

struct Run {
    compile: Duration,
    define_finalize: Duration,
    /// The backend's part in CPU time of this thread (the backends start no threads).
    backend_cpu: Duration,
    code_bytes: u64,
    check: i64,
    /// `memory()` after the last finalize, with the module alive.
    after: Memory,
}

/// Compile every function with Cranelift (timed: Cranelift's part), then define the compiled
/// code and finalize through the backend (timed: the backend's part). `batch`: finalize once at
/// the end; otherwise after every function.
fn run<M: Module>(
    m: &mut M,
    n: usize,
    batch: bool,
    define: &mut dyn FnMut(&mut M, FuncId, &Context),
    finalize: &mut dyn FnMut(&mut M),
    address: &dyn Fn(&M, FuncId) -> *const u8,
) -> Run {
    let host = m
        .declare_function("bench_host", Linkage::Import, &signature(m))
        .unwrap();
    let ids: Vec<FuncId> = (0..n)
        .map(|i| {
            m.declare_function(&format!("f{i}"), Linkage::Export, &signature(m))
                .unwrap()
        })
        .collect();
    let mut ctx = m.make_context();
    let mut compile = Duration::ZERO;
    let mut define_finalize = Duration::ZERO;
    let mut backend_cpu = Duration::ZERO;
    let mut code_bytes = 0u64;
    for i in 0..n {
        build(m, &mut ctx, &ids, host, i);
        let t = Instant::now();
        let code = ctx.compile(m.isa(), &mut ControlPlane::default()).unwrap();
        compile += t.elapsed();
        code_bytes += code.code_buffer().len() as u64;
        backend_part(&mut define_finalize, &mut backend_cpu, || {
            define(m, ids[i], &ctx);
            if !batch {
                finalize(m);
            }
        });
    }
    backend_part(&mut define_finalize, &mut backend_cpu, || finalize(m));
    let last: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(address(m, ids[n - 1])) };
    Run {
        compile,
        define_finalize,
        backend_cpu,
        code_bytes,
        check: last(3),
        after: memory(),
    }
}

/// Run the backend's part of one step, adding its wall and CPU time. Not inlined, so that
/// `valgrind --tool=callgrind --toggle-collect='*backend_part*'` counts the backend's
/// instructions alone (docs/cranelift.md).
#[inline(never)]
fn backend_part(wall: &mut Duration, cpu: &mut Duration, step: impl FnOnce()) {
    let (t, c) = (Instant::now(), thread_cpu());
    step();
    *cpu += thread_cpu().saturating_sub(c);
    *wall += t.elapsed();
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What the process holds: VmRSS, and the executable mappings not backed by a file (where JIT'd
/// code lives): how many, and their resident size (KiB).
#[derive(Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    exec_maps: u64,
    exec_rss_kib: u64,
}

fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut exec_maps, mut exec_rss_kib, mut in_exec) = (0, 0, false);
    for l in smaps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            let path = f.get(5).copied().unwrap_or("");
            let file = path.starts_with('/')
                && !path.starts_with("/dev/zero")
                && !path.starts_with("/memfd:");
            in_exec = f.get(1).is_some_and(|p| p.contains('x')) && !file && !path.starts_with('[');
            exec_maps += u64::from(in_exec);
        } else if in_exec && f.first() == Some(&"Rss:") {
            exec_rss_kib += f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Memory {
        rss_kib,
        exec_maps,
        exec_rss_kib,
    }
}

fn child(name: &str, mode: &str, n: usize) {
    let batch = mode == "batch";
    let before = memory();
    let r = match name {
        "cranelift-jit" => {
            let mut b = JITBuilder::new(default_libcall_names()).unwrap();
            b.symbol("bench_host", bench_host as *const u8);
            let mut m = JITModule::new(b);
            // What JITModule::define_function does after compiling: its relocations, then
            // define_function_bytes's copy into its memory.
            let mut define = |m: &mut JITModule, id, ctx: &Context| {
                let code = ctx.compiled_code().unwrap();
                let relocs: Vec<ModuleReloc> = code
                    .buffer
                    .relocs()
                    .iter()
                    .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id))
                    .collect();
                let align = u64::from(code.buffer.alignment);
                m.define_function_bytes(id, align, code.code_buffer(), &relocs)
                    .unwrap();
            };
            let r = run(
                &mut m,
                n,
                batch,
                &mut define,
                &mut |m| m.finalize_definitions().unwrap(),
                &|m, id| m.get_finalized_function(id),
            );
            unsafe { m.free_memory() };
            r
        }
        _ => {
            let mut b = KilnBuilder::new(default_libcall_names()).unwrap();
            b.symbol("bench_host", bench_host as *const u8);
            b.debug(if name == "kiln" {
                kiln::DebugOptions::none()
            } else {
                kiln::DebugOptions::default()
            });
            let mut m = KilnModule::new(b);
            run(
                &mut m,
                n,
                batch,
                &mut |m, id, ctx| m.define_compiled_function(id, ctx).unwrap(),
                &mut |m| m.finalize_definitions().unwrap(),
                &|m, id| m.get_finalized_function(id),
            )
        }
    };
    let after = r.after;
    let ok = if r.check == expected(n, 3) {
        "ok"
    } else {
        "WRONG"
    };
    // One line for the parent: name mode compile_s backend_s backend_cpu_s code_bytes rss_kib
    // maps exec_rss_kib check
    println!(
        "RESULT {name} {mode} {:.6} {:.6} {:.6} {} {} {} {} {ok}",
        r.compile.as_secs_f64(),
        r.define_finalize.as_secs_f64(),
        r.backend_cpu.as_secs_f64(),
        r.code_bytes,
        after.rss_kib.saturating_sub(before.rss_kib),
        after.exec_maps as i64 - before.exec_maps as i64,
        after.exec_rss_kib.saturating_sub(before.exec_rss_kib),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], &args[i + 2], n);
        return;
    }
    println!(
        "{n} Cranelift functions (2-160 multiply-adds each, a call to the previous one, every tenth a call to the host)\n"
    );
    println!(
        "{:<36} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>10} {:>7} {:>5}",
        "backend, finalize",
        "compile",
        "backend",
        "µs/fn",
        "cpu µs/fn",
        "code/fn",
        "RSS/fn",
        "x RSS/fn",
        "x maps",
        "check"
    );
    let mut rows = Vec::new();
    for mode in ["each", "batch"] {
        for name in ["cranelift-jit", "kiln", "kiln+gdb"] {
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--count", &n.to_string(), "--child", name, mode])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
                println!(
                    "{name} {mode}: failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| f[i].parse::<f64>().unwrap();
            let (compile, backend, cpu, code, rss, maps, xrss) =
                (num(3), num(4), num(5), num(6), num(7), num(8), num(9));
            let per = |kib: f64| kib * 1024.0 / n as f64;
            let label = format!(
                "{name}, {}",
                if mode == "each" {
                    "after each function"
                } else {
                    "once"
                }
            );
            println!(
                "{label:<36} {compile:>8.3}s {backend:>8.3}s {:>8.2} {:>9.2} {:>7.0}B {:>8.0}B {:>9.0}B {maps:>+7} {:>5}",
                backend * 1e6 / n as f64,
                cpu * 1e6 / n as f64,
                code / n as f64,
                per(rss),
                per(xrss),
                f[10]
            );
            rows.push((name, mode, backend, cpu, rss, xrss));
        }
    }
    println!("\ncompile: Cranelift's Context::compile. backend: defining the compiled code and finalizing");
    println!("  (µs/fn: wall time; cpu µs/fn: this thread's CPU time, less disturbed by other processes)");
    println!("  (cranelift-jit: the relocations its define_function makes, define_function_bytes;");
    println!("  kiln: define_compiled_function, unwind information included; kiln+gdb: with the gdb sink).");
    println!(
        "RSS/fn: growth of VmRSS per function (code, the backend's bookkeeping, allocator slack)."
    );
    println!("x RSS/fn: resident executable memory per function (not file-backed; after running every function).");
    println!("x maps: new executable mappings.");
    for mode in ["each", "batch"] {
        let get = |n: &str| rows.iter().find(|r| r.0 == n && r.1 == mode).copied();
        if let (Some(j), Some(k)) = (get("cranelift-jit"), get("kiln")) {
            println!(
                "kiln / cranelift-jit, {}: backend time {:.2}x (CPU {:.2}x), RSS {:.2}x, executable RSS {:.3}x",
                if mode == "each" {
                    "finalize after each function"
                } else {
                    "finalize once"
                },
                k.2 / j.2,
                k.3 / j.3,
                k.4 / j.4,
                k.5 / j.5
            );
        }
    }
    println!("\nredefine_function (kiln only: cranelift-jit has no redefinition), 200 redefinitions of f:");
    for callers in [1, 100, 1000] {
        redefinitions(callers, 200);
    }
}

/// `callers` functions call `f(x) = x + 1`; `f` is redefined `rounds` times (each body compiled
/// before the clock starts), and each old body reclaimed at once. Prints the backend's CPU time
/// per redefinition and per reclaim.
fn redefinitions(callers: usize, rounds: usize) {
    let mut b = KilnBuilder::new(default_libcall_names()).unwrap();
    b.debug(kiln::DebugOptions::none());
    let mut m = KilnModule::new(b);
    let sig = signature(&m);
    let f = m.declare_function("f", Linkage::Export, &sig).unwrap();
    let mut ctx = m.make_context();
    let plus = |m: &mut KilnModule, ctx: &mut Context, k: i64, call: Option<FuncId>| {
        m.clear_context(ctx);
        ctx.func.signature = signature(m);
        let config = m.target_config();
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let mut v = b.block_params(block)[0];
        if let Some(callee) = call {
            let r = m.declare_func_in_func(callee, b.func);
            let c = b.ins().call(r, &[v]);
            v = b.inst_results(c)[0];
        }
        let v = b.ins().iadd_imm_s(v, k);
        b.ins().return_(&[v]);
        b.seal_all_blocks();
        b.finalize(config);
    };
    plus(&mut m, &mut ctx, 1, None);
    m.define_function(f, &mut ctx).unwrap();
    let mut ids = Vec::new();
    for i in 0..callers {
        let id = m
            .declare_function(&format!("caller{i}"), Linkage::Export, &sig)
            .unwrap();
        plus(&mut m, &mut ctx, 0, Some(f));
        m.define_function(id, &mut ctx).unwrap();
        ids.push(id);
    }
    m.finalize_definitions().unwrap();
    let (mut redefine, mut reclaim) = (Duration::ZERO, Duration::ZERO);
    for k in 2..rounds as i64 + 2 {
        plus(&mut m, &mut ctx, k, None);
        ctx.compile(m.isa(), &mut ControlPlane::default()).unwrap();
        let c = thread_cpu();
        m.redefine_function(f, &mut ctx).unwrap();
        let r = thread_cpu();
        m.reclaim_retired().unwrap();
        reclaim += thread_cpu().saturating_sub(r);
        redefine += r.saturating_sub(c);
    }
    let last: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(m.get_finalized_function(ids[callers - 1])) };
    let ok = if last(1) == rounds as i64 + 2 {
        "ok"
    } else {
        "WRONG"
    };
    println!(
        "  {callers:>5} caller(s): {:>8.1} cpu µs per redefinition, {:>6.1} per reclaim   {ok}",
        redefine.as_secs_f64() * 1e6 / rounds as f64,
        reclaim.as_secs_f64() * 1e6 / rounds as f64
    );
}

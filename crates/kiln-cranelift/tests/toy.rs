//! A toy language compiled with cranelift-frontend (see `toy/lang.rs`) and run through
//! `KilnModule`: in this process, and in a spawned executor process (this test binary started
//! again with `--kiln-executor`, which makes it serve kiln's executor protocol).
//!
//! `harness = false`: the test is `main`, so that the same binary can be the executor.
#![allow(unsafe_code)] // calling finalized code

#[path = "toy/lang.rs"]
mod lang;

use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use kiln_cranelift::{KilnBuilder, KilnModule};
use kiln_remote::{Options, RemoteExecutor};
use std::sync::Arc;

const LIBRARY: &str = "
fn gcd(a, b) { while b != 0 { let t = a % b; a = b; b = t; } return a; }
fn is_prime(n) {
    if n < 2 { return 0; }
    let d = 2;
    while d * d <= n { if n % d == 0 { return 0; } d = d + 1; }
    return 1;
}
fn even(n) { if n == 0 { return 1; } return odd(n - 1); }
fn odd(n) { if n == 0 { return 0; } return even(n - 1); }
";

/// (program, expected result of its `main`); each may call the library, linked earlier.
const PROGRAMS: &[(&str, i64)] = &[
    ("fn fib(n) { if n < 2 { return n; } return fib(n - 1) + fib(n - 2); }
      fn main() { return fib(24); }", 46368),
    ("fn main() { let i = 0; let s = 0; while i < 100 { i = i + 1; s = s + i * i; } return s; }", 338350),
    ("fn main() { let n = 0; let c = 0; while n < 1000 { c = c + is_prime(n); n = n + 1; } return c; }", 168),
    ("fn main() { return gcd(1071, 462) * 1000 + even(101) * 10 + odd(101); }", 21001),
    ("fn steps(n) { let s = 0; while n != 1 { if n % 2 == 0 { n = n / 2; } else { n = 3 * n + 1; } s = s + 1; } return s; }
      fn main() { let best = 0; let i = 1; while i < 1000 { let s = steps(i); if s > best { best = s; } i = i + 1; } return best; }", 178),
    ("fn main() { return -(2 * (3 + 4)) - -5 + 10 / 3 - 10 % 3; }", -7),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--kiln-executor") {
        std::process::exit(kiln_remote::executor_main(&args[2..], &args[1..2]));
    }
    // libtest's flags (e.g. --nocapture) are accepted and ignored.
    parse_errors();
    in_process();
    in_executor();
    println!("toy: all checks passed");
}

fn parse_errors() {
    for bad in [
        "fn main( { }",
        "fn main() { return 1 }",
        "fn main() { x = 1; }",
        "fn main() { return f(); }",
        "fn main() { $ }",
    ] {
        let mut m = KilnModule::new(KilnBuilder::new(default_libcall_names()).unwrap());
        assert!(lang::compile(&mut m, bad).is_err(), "{bad:?} compiled");
    }
    println!("toy: malformed programs are refused");
}

/// The library in one finalize batch, each program in one of its own.
fn compile_all(m: &mut KilnModule) -> Vec<FuncId> {
    lang::compile(m, LIBRARY).unwrap();
    m.finalize_definitions().unwrap();
    let mut mains = Vec::new();
    for (i, (src, _)) in PROGRAMS.iter().enumerate() {
        // Each program's main gets a name of its own.
        let src = src.replace("main", &format!("main{i}"));
        let ids = lang::compile(m, &src).unwrap();
        m.finalize_definitions().unwrap();
        mains.push(ids[&format!("main{i}")]);
    }
    mains
}

fn in_process() {
    let mut m = KilnModule::new(KilnBuilder::new(default_libcall_names()).unwrap());
    let mains = compile_all(&mut m);
    for ((src, want), id) in PROGRAMS.iter().zip(mains) {
        let f: extern "C" fn() -> i64 =
            unsafe { std::mem::transmute(m.get_finalized_function(id)) };
        assert_eq!(f(), *want, "{src}");
    }
    println!("toy: {} programs ran in process", PROGRAMS.len());
}

/// `int entry(int argc, char **argv, char **envp)` returning `callee()` (which must fit in an
/// `int`): the shape an executor can call.
fn entry_point(m: &mut KilnModule, name: &str, callee: FuncId, callee_returns_i32: bool) -> FuncId {
    let mut sig = m.make_signature();
    sig.params.push(AbiParam::new(types::I32));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I32));
    let id = m.declare_function(name, Linkage::Export, &sig).unwrap();
    let config = m.target_config();
    let mut ctx = m.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let f = m.declare_func_in_func(callee, b.func);
    let c = b.ins().call(f, &[]);
    let r = b.inst_results(c)[0];
    let r = if callee_returns_i32 {
        r
    } else {
        b.ins().ireduce(types::I32, r)
    };
    b.ins().return_(&[r]);
    b.seal_all_blocks();
    b.finalize(config);
    m.define_function(id, &mut ctx).unwrap();
    id
}

fn in_executor() {
    let exe = std::env::current_exe().unwrap();
    let executor =
        Arc::new(RemoteExecutor::spawn(&exe, &["--kiln-executor"], Options::default()).unwrap());
    let mut b = KilnBuilder::new(default_libcall_names()).unwrap();
    b.executor(executor.clone());
    let mut m = KilnModule::new(b);
    let mains = compile_all(&mut m);
    let entries: Vec<FuncId> = mains
        .iter()
        .enumerate()
        .map(|(i, id)| entry_point(&mut m, &format!("entry{i}"), *id, false))
        .collect();
    // getpid, looked up in the executor's process.
    let mut pid_sig = m.make_signature();
    pid_sig.returns.push(AbiParam::new(types::I32));
    let getpid = m
        .declare_function("getpid", Linkage::Import, &pid_sig)
        .unwrap();
    let pid_entry = entry_point(&mut m, "entry_pid", getpid, true);
    m.finalize_definitions().unwrap();
    for ((src, want), id) in PROGRAMS.iter().zip(entries) {
        assert_eq!(
            i64::from(m.run_main(id, &["toy".into()]).unwrap()),
            *want,
            "{src}"
        );
    }
    let pid = m.run_main(pid_entry, &["toy".into()]).unwrap();
    assert_eq!(pid as u32, executor.pid());
    assert_ne!(pid as u32, std::process::id());
    println!(
        "toy: {} programs ran in executor process {pid}",
        PROGRAMS.len()
    );
    remote_calls_redefinition_and_lazy(&mut m, &mains);
}

/// In the executor: functions called with arguments and a 64-bit result (no wrapper), a
/// redefinition its callers follow, and a lazy function compiled on its first remote call
/// (the resolution runs here, in the controller).
fn remote_calls_redefinition_and_lazy(m: &mut KilnModule, mains: &[FuncId]) {
    for ((src, want), id) in PROGRAMS.iter().zip(mains) {
        assert_eq!(m.call(*id, &[]).unwrap() as i64, *want, "{src}");
    }
    let Some(cranelift_module::FuncOrDataId::Func(gcd)) = m.declarations().get_name("gcd") else {
        panic!("gcd is declared by the library");
    };
    assert_eq!(m.call(gcd, &[1071, 462]).unwrap(), 21);
    let ids = lang::compile(
        m,
        "fn k() { return 1; } fn user(x) { return k() * 10 + x; }",
    )
    .unwrap();
    m.finalize_definitions().unwrap();
    let (k, user) = (ids["k"], ids["user"]);
    assert_eq!(m.call(user, &[3]).unwrap(), 13);
    let mut ctx = m.make_context();
    ctx.func.signature = m.declarations().get_function_decl(k).signature.clone();
    {
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.switch_to_block(block);
        let two = b.ins().iconst(types::I64, 2);
        b.ins().return_(&[two]);
        b.seal_all_blocks();
        b.finalize(m.target_config());
    }
    m.redefine_function(k, &mut ctx).unwrap();
    assert_eq!(
        m.call(user, &[3]).unwrap(),
        23,
        "the caller follows the new k"
    );
    assert_eq!(m.reclaim_retired().unwrap().len(), 1);
    let mut sig = m.make_signature();
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    let lazy = m
        .declare_lazy_function("lazy_sub", Linkage::Export, &sig, |b| {
            let config = b.module.target_config();
            let mut fctx = FunctionBuilderContext::new();
            let mut fb = FunctionBuilder::new(&mut b.ctx.func, &mut fctx);
            let block = fb.create_block();
            fb.append_block_params_for_function_params(block);
            fb.switch_to_block(block);
            let (x, y) = (fb.block_params(block)[0], fb.block_params(block)[1]);
            let r = fb.ins().isub(x, y);
            fb.ins().return_(&[r]);
            fb.seal_all_blocks();
            fb.finalize(config);
            Ok(())
        })
        .unwrap();
    assert_eq!(m.call(lazy, &[50, 8]).unwrap(), 42);
    assert!(matches!(
        m.lazy_status(lazy),
        Some(kiln_cranelift::LazyStatus::Compiled { .. })
    ));
    assert_eq!(m.call(lazy, &[8, 50]).unwrap() as i64, -42);
    // A lazy function that cannot be compiled: the error handler (run here, in the controller)
    // sends the call to gcd, which takes the same arguments.
    let gcd_addr = m.function_address(gcd).unwrap();
    let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let h = heard.clone();
    m.set_lazy_error_handler(Some(Arc::new(move |name, message| {
        h.lock().unwrap().push(format!("{name:?}: {message}"));
        Some(gcd_addr)
    })))
    .unwrap();
    let broken = m
        .declare_lazy_function("lazy_broken", Linkage::Export, &sig, |_| {
            Err("not today".into())
        })
        .unwrap();
    assert_eq!(m.call(broken, &[1071, 462]).unwrap(), 21);
    assert_eq!(m.call(broken, &[12, 18]).unwrap(), 6);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(
        heard[0].contains("lazy_broken") && heard[0].contains("not today"),
        "{heard:?}"
    );
    println!(
        "toy: calls with arguments, a redefinition, a lazy function and a failed one in the executor"
    );
}

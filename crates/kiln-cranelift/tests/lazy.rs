//! Lazy functions: compiled on the first call, from a Cranelift function or from the host, with
//! the arguments preserved; recursion and calls into the module from the lazy body; compile
//! errors reported to the error handler, which chooses where the call goes.
#![allow(unsafe_code)] // calling finalized code

mod common;

use common::{call, define};
use cranelift_codegen::ir::{types::I64, InstBuilder, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use kiln_cranelift::{KilnBuilder, KilnModule, LazyBuild, LazyStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type F1 = extern "C" fn(i64) -> i64;
type F6 = extern "C" fn(i64, i64, i64, i64, i64, i64) -> i64;

fn module() -> KilnModule {
    let m = KilnModule::new(KilnBuilder::new(default_libcall_names()).unwrap());
    m.session().set_debug(kiln::DebugOptions::none());
    m
}

fn addr<T: Copy>(m: &KilnModule, id: FuncId) -> T {
    let p = m.get_finalized_function(id);
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*const u8>());
    unsafe { std::mem::transmute_copy::<*const u8, T>(&p) }
}

/// Fill `b.ctx` with a body over its i64 parameters.
fn body(
    b: &mut LazyBuild<'_>,
    f: impl FnOnce(&kiln_cranelift::LazyModule<'_>, &mut FunctionBuilder, &[Value]) -> Value,
) {
    let config = b.module.target_config();
    let mut fctx = FunctionBuilderContext::new();
    let mut fb = FunctionBuilder::new(&mut b.ctx.func, &mut fctx);
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    fb.switch_to_block(entry);
    let args = fb.block_params(entry).to_vec();
    let r = f(&b.module, &mut fb, &args);
    fb.ins().return_(&[r]);
    fb.seal_all_blocks();
    fb.finalize(config);
}

#[test]
fn first_call_from_a_cranelift_function_and_from_the_host() {
    let mut m = module();
    let compiled = Arc::new(AtomicUsize::new(0));
    // sq_plus(a, b, c) = a*a + b - c, compiled on its first call.
    let sig3 = common::sig(&m, 3);
    let sq_plus = {
        let compiled = compiled.clone();
        m.declare_lazy_function("sq_plus", Linkage::Export, &sig3, move |b| {
            compiled.fetch_add(1, Ordering::SeqCst);
            body(b, |_, fb, p| {
                let sq = fb.ins().imul(p[0], p[0]);
                let s = fb.ins().iadd(sq, p[1]);
                fb.ins().isub(s, p[2])
            });
            Ok(())
        })
        .unwrap()
    };
    let caller = define(&mut m, "caller", Linkage::Export, 1, |m, b, p| {
        let ten = b.ins().iconst(I64, 10);
        let three = b.ins().iconst(I64, 3);
        let r = call(m, b, sq_plus, &[p[0], ten, three]);
        b.ins().iadd_imm_s(r, 1000)
    });
    m.finalize_definitions().unwrap();
    assert_eq!(m.lazy_status(sq_plus), Some(LazyStatus::NotCompiled));
    assert_eq!(m.lazy_status(caller), None);
    assert_eq!(
        compiled.load(Ordering::SeqCst),
        0,
        "not compiled before a call"
    );
    let stub = m.function_address(sq_plus).unwrap();

    let caller: F1 = addr(&m, caller);
    assert_eq!(
        caller(5),
        25 + 10 - 3 + 1000,
        "first call, from Cranelift code"
    );
    assert_eq!(compiled.load(Ordering::SeqCst), 1);
    let Some(LazyStatus::Compiled { code, .. }) = m.lazy_status(sq_plus) else {
        panic!("{:?}", m.lazy_status(sq_plus));
    };
    assert_ne!(code, stub);
    for x in [-4i64, 0, 7, 1 << 20] {
        assert_eq!(caller(x), x * x + 10 - 3 + 1000);
    }
    assert_eq!(
        m.function_address(sq_plus).unwrap(),
        stub,
        "the stub stays the address"
    );
    let f: extern "C" fn(i64, i64, i64) -> i64 = addr(&m, sq_plus);
    assert_eq!(f(3, 4, 5), 8, "through the stub, from the host");
    assert_eq!(compiled.load(Ordering::SeqCst), 1, "compiled once");

    // First call from the host, six arguments (every argument register).
    let sig6 = common::sig(&m, 6);
    let mix = m
        .declare_lazy_function("mix", Linkage::Export, &sig6, |b| {
            body(b, |_, fb, p| {
                let mut acc = p[0];
                for (i, v) in p[1..].iter().enumerate() {
                    let scaled = fb
                        .ins()
                        .imul_imm_s(*v, (i as i64 + 2) * if i % 2 == 0 { -1 } else { 1 });
                    acc = fb.ins().iadd(acc, scaled);
                }
                acc
            });
            Ok(())
        })
        .unwrap();
    m.finalize_definitions().unwrap();
    let mix: F6 = addr(&m, mix);
    let expect = |a: [i64; 6]| a[0] - 2 * a[1] + 3 * a[2] - 4 * a[3] + 5 * a[4] - 6 * a[5];
    for args in [[1, 2, 3, 4, 5, 6], [-9, 100, 7, -3, 0, 11]] {
        assert_eq!(
            mix(args[0], args[1], args[2], args[3], args[4], args[5]),
            expect(args)
        );
    }
    // Lazy functions live as long as the module.
    assert!(m.free_function(sq_plus).is_err());
    let mut ctx = common::body_context(&mut m, 3, |_, _, p| p[0]);
    assert!(m.redefine_function(sq_plus, &mut ctx).is_err());
}

#[test]
fn a_lazy_body_calls_itself_and_the_module() {
    let mut m = module();
    let dec = define(&mut m, "dec", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], -1)
    });
    m.finalize_definitions().unwrap();
    let sig = common::sig(&m, 1);
    // fact(n) = n <= 1 ? 1 : n * fact(dec(n))
    let fact = m
        .declare_lazy_function("fact", Linkage::Export, &sig, move |b| {
            let me = b.module.func_id();
            let config = b.module.target_config();
            let dec_ref = b.module.declare_func_in_func(dec, &mut b.ctx.func)?;
            let fact_ref = b.module.declare_func_in_func(me, &mut b.ctx.func)?;
            let mut fctx = FunctionBuilderContext::new();
            let mut fb = FunctionBuilder::new(&mut b.ctx.func, &mut fctx);
            let (entry, base, rec) = (fb.create_block(), fb.create_block(), fb.create_block());
            fb.append_block_params_for_function_params(entry);
            fb.switch_to_block(entry);
            let n = fb.block_params(entry)[0];
            let small = fb.ins().icmp_imm_s(
                cranelift_codegen::ir::condcodes::IntCC::SignedLessThanOrEqual,
                n,
                1,
            );
            fb.ins().brif(small, base, &[], rec, &[]);
            fb.switch_to_block(base);
            let one = fb.ins().iconst(I64, 1);
            fb.ins().return_(&[one]);
            fb.switch_to_block(rec);
            let c = fb.ins().call(dec_ref, &[n]);
            let m1 = fb.inst_results(c)[0];
            let c = fb.ins().call(fact_ref, &[m1]);
            let r = fb.inst_results(c)[0];
            let r = fb.ins().imul(n, r);
            fb.ins().return_(&[r]);
            fb.seal_all_blocks();
            fb.finalize(config);
            Ok(())
        })
        .unwrap();
    m.finalize_definitions().unwrap();
    let fact: F1 = addr(&m, fact);
    assert_eq!(fact(10), 3_628_800);
    assert_eq!(fact(1), 1);
    // `dec` is now bound by the lazy body: not freeable.
    assert!(m.free_function(dec).is_err());
}

/// What the error handler heard: the function's name and the message.
type Failure = (Option<String>, String);

extern "C" fn fallback(x: i64) -> i64 {
    -x
}

#[test]
fn compile_errors_go_to_the_error_handler() {
    let mut m = module();
    let heard: Arc<Mutex<Vec<Failure>>> = Arc::default();
    {
        let heard = heard.clone();
        m.set_lazy_error_handler(Some(Arc::new(move |name, message| {
            heard
                .lock()
                .unwrap()
                .push((name.map(str::to_string), message.to_string()));
            Some(kiln::ExecutorAddr(fallback as *const () as usize as u64))
        })))
        .unwrap();
    }
    let sig = common::sig(&m, 1);
    let refused = m
        .declare_lazy_function("refused", Linkage::Export, &sig, |_| {
            Err("this function is not written yet".into())
        })
        .unwrap();
    // IR that Cranelift's verifier rejects: a block without a terminator.
    let invalid = m
        .declare_lazy_function("invalid", Linkage::Export, &sig, |b| {
            let mut fctx = FunctionBuilderContext::new();
            let mut fb = FunctionBuilder::new(&mut b.ctx.func, &mut fctx);
            let entry = fb.create_block();
            fb.append_block_params_for_function_params(entry);
            fb.switch_to_block(entry);
            let x = fb.block_params(entry)[0];
            fb.ins().iadd_imm_s(x, 1);
            Ok(())
        })
        .unwrap();
    // A body calling a module function that was never defined: the link fails.
    let ghost = m.declare_function("ghost", Linkage::Export, &sig).unwrap();
    let unlinked = m
        .declare_lazy_function("unlinked", Linkage::Export, &sig, move |b| {
            body(b, |module, fb, p| {
                let g = module.declare_func_in_func(ghost, fb.func).unwrap();
                let c = fb.ins().call(g, &[p[0]]);
                fb.inst_results(c)[0]
            });
            Ok(())
        })
        .unwrap();
    let caller = define(&mut m, "calls_refused", Linkage::Export, 1, |m, b, p| {
        let r = call(m, b, refused, &[p[0]]);
        b.ins().iadd_imm_s(r, 100)
    });
    m.finalize_definitions().unwrap();

    let caller: F1 = addr(&m, caller);
    assert_eq!(
        caller(7),
        93,
        "the handler sent the call to fallback(7) = -7"
    );
    assert_eq!(caller(8), 92, "and every later one");
    assert_eq!(addr::<F1>(&m, invalid)(5), -5);
    assert_eq!(addr::<F1>(&m, unlinked)(6), -6);

    let heard = heard.lock().unwrap().clone();
    let message = |name: &str| {
        heard
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no failure for {name} in {heard:?}"))
    };
    assert!(message("refused").contains("this function is not written yet"));
    assert!(message("invalid").contains("Cranelift could not compile it"));
    assert!(
        message("unlinked").contains("ghost"),
        "{}",
        message("unlinked")
    );
    assert_eq!(
        heard
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("refused"))
            .count(),
        1
    );
    for (id, part) in [
        (refused, "not written yet"),
        (invalid, "Cranelift"),
        (unlinked, "ghost"),
    ] {
        match m.lazy_status(id) {
            Some(LazyStatus::Failed(msg)) => assert!(msg.contains(part), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
    m.set_lazy_error_handler(None).unwrap();
}

/// Four threads make the first call at once: one resolution, every caller gets the result.
#[test]
fn concurrent_first_calls_compile_once() {
    let mut m = module();
    let compiled = Arc::new(AtomicUsize::new(0));
    let sig = common::sig(&m, 1);
    let triple = {
        let compiled = compiled.clone();
        m.declare_lazy_function("triple", Linkage::Export, &sig, move |b| {
            compiled.fetch_add(1, Ordering::SeqCst);
            // Widen the window in which the other threads arrive.
            std::thread::sleep(std::time::Duration::from_millis(20));
            body(b, |_, fb, p| fb.ins().imul_imm_s(p[0], 3));
            Ok(())
        })
        .unwrap()
    };
    m.finalize_definitions().unwrap();
    let f: F1 = addr(&m, triple);
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                f(t + 10)
            })
        })
        .collect();
    let results: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results, [30, 33, 36, 39]);
    assert_eq!(compiled.load(Ordering::SeqCst), 1);
}

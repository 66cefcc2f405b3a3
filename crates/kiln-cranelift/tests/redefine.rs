//! `redefine_function`: callers of every batch follow the new body, data pointers too, old
//! bodies are freed by the grace protocol, and a thread calling through the function meanwhile
//! sees only whole bodies, never an older one after a newer one.
#![allow(unsafe_code)] // calling finalized code

mod common;

use common::{body_context, call, define, vm_rss_kib};
use cranelift_codegen::ir::InstBuilder;
use cranelift_module::{default_libcall_names, DataDescription, FuncId, Linkage, Module};
use kiln_cranelift::{Error, KilnBuilder, KilnModule};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

type F1 = extern "C" fn(i64) -> i64;

fn module() -> KilnModule {
    let m = KilnModule::new(KilnBuilder::new(default_libcall_names()).unwrap());
    m.session().set_debug(kiln::DebugOptions::none());
    m
}

fn f1(m: &KilnModule, id: FuncId) -> F1 {
    unsafe { std::mem::transmute::<*const u8, F1>(m.get_finalized_function(id)) }
}

/// `f(x) = x + k` as a context for `redefine_function`.
fn plus(m: &mut KilnModule, k: i64) -> cranelift_codegen::Context {
    body_context(m, 1, move |_, b, p| b.ins().iadd_imm_s(p[0], k))
}

#[test]
fn callers_of_every_batch_and_data_pointers_follow_the_new_body() {
    let mut m = module();
    let g = define(&mut m, "g", Linkage::Export, 1, |_, _, p| p[0]);
    let f = define(&mut m, "f", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 1)
    });
    let early = define(&mut m, "early", Linkage::Export, 1, |m, b, p| {
        let r = call(m, b, f, &[p[0]]);
        b.ins().imul_imm_s(r, 2)
    });
    // A read-only table holding f's address.
    let table = m
        .declare_data("table", Linkage::Export, false, false)
        .unwrap();
    let mut desc = DataDescription::new();
    desc.define_zeroinit(8);
    let fref = m.declare_func_in_data(f, &mut desc);
    desc.write_function_addr(0, fref);
    m.define_data(table, &desc).unwrap();
    m.finalize_definitions().unwrap();
    let late = define(&mut m, "late", Linkage::Export, 1, |m, b, p| {
        let r = call(m, b, f, &[p[0]]);
        b.ins().iadd_imm_s(r, 100)
    });
    m.finalize_definitions().unwrap();
    let old_f = f1(&m, f);
    assert_eq!((f1(&m, early)(1), f1(&m, late)(1)), (4, 102));

    let mut ctx = plus(&mut m, 10);
    m.redefine_function(f, &mut ctx).unwrap();
    assert_eq!(f1(&m, f)(1), 11, "the new body");
    assert_eq!(f1(&m, early)(1), 22, "a caller of the same batch follows");
    assert_eq!(f1(&m, late)(1), 111, "a caller of a later batch follows");
    let word = unsafe { *(m.get_finalized_data(table).0 as *const u64) };
    assert_eq!(word, m.function_address(f).unwrap().0, "the table follows");
    assert_ne!(old_f as usize, f1(&m, f) as usize);
    assert_eq!(
        old_f(1),
        2,
        "an address taken before is the old body's, still there"
    );
    // Code defined after the redefinition binds to the new body.
    let after = define(&mut m, "after", Linkage::Export, 1, |m, b, p| {
        call(m, b, f, &[p[0]])
    });
    m.finalize_definitions().unwrap();
    assert_eq!(f1(&m, after)(5), 15);

    // Twice more, with bodies that call g; then the grace protocol frees the three old bodies.
    for k in [20, 30] {
        let mut ctx = body_context(&mut m, 1, move |m, b, p| {
            let r = call(m, b, g, &[p[0]]);
            b.ins().iadd_imm_s(r, k)
        });
        m.redefine_function(f, &mut ctx).unwrap();
    }
    assert_eq!(f1(&m, early)(1), 62);
    assert_eq!(m.retired().len(), 3);
    // The old bodies still call `g`: it cannot be freed until they are reclaimed.
    match m.free_function(g) {
        Err(Error::Referenced { referenced_by, .. }) => {
            assert!(
                referenced_by
                    .iter()
                    .any(|r| r.contains("a retired body of f")),
                "{referenced_by:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let units_before = m.session().units().len();
    let e = m.grace_start();
    // Retired after e began: not freed by reclaim(e).
    let mut ctx = plus(&mut m, 40);
    m.redefine_function(f, &mut ctx).unwrap();
    let freed = m.reclaim(e).unwrap();
    assert_eq!(freed.len(), 3);
    assert_eq!(m.retired().len(), 1);
    assert_eq!(m.session().units().len(), units_before + 1 - 3);
    assert_eq!(m.reclaim_retired().unwrap().len(), 1);
    assert!(m.retired().is_empty());
    assert_eq!(
        (f1(&m, early)(1), f1(&m, late)(1), f1(&m, after)(1)),
        (82, 141, 41)
    );
    // A future epoch is refused.
    assert!(m.reclaim(kiln_cranelift::Epoch(1_000)).is_err());
    // Freeing follows the current body: refused while referenced, then allowed.
    assert!(matches!(m.free_function(f), Err(Error::Referenced { .. })));
    for g in [early, late, after] {
        m.free_function(g).unwrap();
    }
    m.free_data(table).unwrap();
    m.free_function(f).unwrap();
    m.free_function(g).unwrap();
    assert!(m.session().units().is_empty());
}

#[test]
fn what_cannot_be_redefined_is_refused_and_the_old_body_stays() {
    let mut m = module();
    let sig = common::sig(&m, 1);
    let pending = define(&mut m, "pending", Linkage::Export, 1, |_, _, p| p[0]);
    let mut ctx = plus(&mut m, 1);
    let e = m.redefine_function(pending, &mut ctx).unwrap_err();
    assert!(e.to_string().contains("not finalized"), "{e}");
    // Mutual recursion shares a unit.
    let odd = m.declare_function("odd", Linkage::Export, &sig).unwrap();
    let even = define(&mut m, "even", Linkage::Export, 1, |m, b, p| {
        call(m, b, odd, &[p[0]])
    });
    define(&mut m, "odd", Linkage::Export, 1, |m, b, p| {
        call(m, b, even, &[p[0]])
    });
    m.finalize_definitions().unwrap();
    let mut ctx = plus(&mut m, 1);
    let e = m.redefine_function(odd, &mut ctx).unwrap_err();
    assert!(e.to_string().contains("linked together with even"), "{e}");
    // A body referring to something undefined: refused, the old body stays.
    let ghost = m.declare_function("ghost", Linkage::Export, &sig).unwrap();
    let mut ctx = body_context(&mut m, 1, |m, b, p| call(m, b, ghost, &[p[0]]));
    let e = m.redefine_function(pending, &mut ctx).unwrap_err();
    assert!(e.to_string().contains("ghost"), "{e}");
    assert_eq!(f1(&m, pending)(7), 7);
    assert!(m.retired().is_empty());
}

/// A thread calls `caller` (which calls `f`) in a loop while `f` is redefined 300 times, each
/// old body reclaimed once the thread has finished a call that began after the redefinition
/// (the grace protocol's "every thread has left it"). Every result is a whole body's, and they
/// never go back to an older body.
#[test]
fn redefining_while_a_thread_calls_it() {
    let mut m = module();
    let f = define(&mut m, "f", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 0)
    });
    let caller = define(&mut m, "caller", Linkage::Export, 1, |m, b, p| {
        call(m, b, f, &[p[0]])
    });
    m.finalize_definitions().unwrap();
    let caller = f1(&m, caller);
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicI64::new(0));
    let worker = {
        let (stop, calls, last) = (stop.clone(), calls.clone(), last.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(Ordering::Acquire) {
                let r = caller(0);
                assert!(r >= seen, "went back from body {seen} to {r}");
                seen = r;
                last.store(r, Ordering::Release);
                calls.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    let rss_before = vm_rss_kib();
    for k in 1..=300 {
        let mut ctx = plus(&mut m, k);
        m.redefine_function(f, &mut ctx).unwrap();
        let e = m.grace_start();
        // Two more completed calls: the second began after the redefinition.
        let c = calls.load(Ordering::Acquire);
        while calls.load(Ordering::Acquire) < c + 2 {
            // A worker that failed its assertion stops counting: report it, do not wait.
            if worker.is_finished() {
                worker.join().unwrap();
                unreachable!("the worker stopped before being told to");
            }
            std::thread::yield_now();
        }
        assert_eq!(
            last.load(Ordering::Acquire),
            k,
            "a call begun after it sees it"
        );
        assert_eq!(m.reclaim(e).unwrap().len(), 1);
    }
    stop.store(true, Ordering::Release);
    worker.join().unwrap();
    assert!(m.retired().is_empty());
    let grown = vm_rss_kib().saturating_sub(rss_before);
    assert!(grown < 4096, "300 redefinitions grew VmRSS by {grown} KiB");
}

/// Local (hidden) and preemptible (weak) functions are redefined the same way.
#[test]
fn local_and_preemptible_functions_are_redefined() {
    let mut m = module();
    for linkage in [Linkage::Local, Linkage::Preemptible, Linkage::Hidden] {
        let name = format!("{linkage:?}_f");
        let f = define(&mut m, &name, linkage, 1, |_, b, p| {
            b.ins().iadd_imm_s(p[0], 1)
        });
        let user = define(
            &mut m,
            &format!("{name}_user"),
            Linkage::Export,
            1,
            |m, b, p| call(m, b, f, &[p[0]]),
        );
        m.finalize_definitions().unwrap();
        assert_eq!(f1(&m, user)(1), 2, "{linkage:?}");
        let mut ctx = plus(&mut m, 5);
        m.redefine_function(f, &mut ctx).unwrap();
        assert_eq!(f1(&m, user)(1), 6, "{linkage:?}");
        assert_eq!(f1(&m, f)(1), 6, "{linkage:?}");
    }
    assert_eq!(m.reclaim_retired().unwrap().len(), 3);
}

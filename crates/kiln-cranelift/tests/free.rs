//! Freeing single definitions: while other code runs, refused while referenced, and 100,000
//! define/free cycles in flat memory.
#![allow(unsafe_code)] // calling finalized code

mod common;

use common::{call, define, vm_rss_kib};
use cranelift_codegen::ir::{types::I64, InstBuilder};
use cranelift_module::{default_libcall_names, FuncOrDataId, Linkage, Module};
use kiln_cranelift::{Error, KilnBuilder, KilnModule};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

type F1 = extern "C" fn(i64) -> i64;

fn module() -> KilnModule {
    KilnModule::new(KilnBuilder::new(default_libcall_names()).unwrap())
}

fn f1(m: &KilnModule, id: cranelift_module::FuncId) -> F1 {
    unsafe { std::mem::transmute::<*const u8, F1>(m.get_finalized_function(id)) }
}

#[test]
fn freeing_is_refused_while_referenced_and_works_after() {
    let mut m = module();
    let leaf = define(&mut m, "leaf", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 1)
    });
    m.finalize_definitions().unwrap();
    let user = define(&mut m, "user", Linkage::Export, 1, |m, b, p| {
        let r = call(m, b, leaf, &[p[0]]);
        b.ins().imul_imm_s(r, 2)
    });
    m.finalize_definitions().unwrap();
    assert_eq!(f1(&m, user)(4), 10);

    match m.free_function(leaf) {
        Err(Error::Referenced {
            name,
            referenced_by,
        }) => {
            assert_eq!(name, "leaf");
            assert_eq!(referenced_by, vec!["user".to_string()]);
        }
        other => panic!("freeing a referenced function: {other:?}"),
    }
    // Still there and still running.
    assert_eq!(f1(&m, leaf)(1), 2);
    m.free_function(user).unwrap();
    assert!(matches!(
        m.function_address(user),
        Err(Error::NotFinalized(_))
    ));
    m.free_function(leaf).unwrap();
    assert!(m.session().units().is_empty());

    // A freed function may be defined again, and new code binds to the new body.
    define(&mut m, "leaf", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 100)
    });
    m.finalize_definitions().unwrap();
    assert_eq!(f1(&m, leaf)(1), 101);
    // Referring to a freed (undefined) function is an error, not a crash.
    m.free_function(leaf).unwrap();
    define(&mut m, "late", Linkage::Export, 1, |m, b, p| {
        call(m, b, leaf, &[p[0]])
    });
    let e = m.finalize_definitions().unwrap_err().to_string();
    assert!(
        e.contains("late refers to leaf, which is declared but not defined"),
        "{e}"
    );
}

#[test]
fn definitions_linked_together_are_freed_together() {
    let mut m = module();
    let sig = common::sig(&m, 1);
    // A chain in one batch (user -> ping -> pong, and a table pointing at both): one unit each.
    let ping = m.declare_function("ping", Linkage::Export, &sig).unwrap();
    let pong = define(&mut m, "pong", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 7)
    });
    define(&mut m, "ping", Linkage::Export, 1, |m, b, p| {
        call(m, b, pong, &[p[0]])
    });
    let table = m
        .declare_data("table", Linkage::Export, false, false)
        .unwrap();
    let mut d = cranelift_module::DataDescription::new();
    d.define_zeroinit(16);
    let (a, b) = (
        m.declare_func_in_data(ping, &mut d),
        m.declare_func_in_data(pong, &mut d),
    );
    d.write_function_addr(0, a);
    d.write_function_addr(8, b);
    m.define_data(table, &d).unwrap();
    let user = define(&mut m, "user", Linkage::Export, 1, |m, b, p| {
        call(m, b, ping, &[p[0]])
    });
    m.finalize_definitions().unwrap();
    assert_eq!(f1(&m, user)(1), 8);
    assert_eq!(m.session().units().len(), 4);
    match m.free_function(pong) {
        Err(Error::Referenced {
            name,
            mut referenced_by,
        }) => {
            referenced_by.sort();
            assert_eq!(name, "pong");
            assert_eq!(referenced_by, vec!["ping".to_string(), "table".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    // Freeing what refers to it along with it is fine.
    let all = [
        FuncOrDataId::Func(user),
        FuncOrDataId::Data(table),
        FuncOrDataId::Func(ping),
        FuncOrDataId::Func(pong),
    ];
    m.free_definitions(&all).unwrap();
    assert!(m.session().units().is_empty());

    // Mutual recursion: one unit, freed as one.
    let is_even = m
        .declare_function("is_even", Linkage::Export, &sig)
        .unwrap();
    let is_odd = m.declare_function("is_odd", Linkage::Export, &sig).unwrap();
    define(&mut m, "is_even", Linkage::Export, 1, |m, b, p| {
        call(m, b, is_odd, &[p[0]])
    });
    define(&mut m, "is_odd", Linkage::Export, 1, |m, b, p| {
        call(m, b, is_even, &[p[0]])
    });
    m.finalize_definitions().unwrap();
    assert_eq!(m.session().units().len(), 1);
    match m.free_function(is_even) {
        Err(Error::SharesUnit { name, with }) => {
            assert_eq!(
                (name.as_str(), with),
                ("is_even", vec!["is_odd".to_string()])
            );
        }
        other => panic!("{other:?}"),
    }
    m.free_definitions(&[FuncOrDataId::Func(is_even), FuncOrDataId::Func(is_odd)])
        .unwrap();
    assert!(m.session().units().is_empty());
}

/// One thread calls a function in a loop while the main thread defines, calls and frees
/// thousands of others around it (their memory is reused under the running code's feet).
#[test]
fn freeing_while_others_run() {
    let mut m = module();
    let keep = define(&mut m, "keep", Linkage::Export, 1, |_, b, p| {
        let x = b.ins().imul_imm_s(p[0], 3);
        b.ins().iadd_imm_s(x, 1)
    });
    m.finalize_definitions().unwrap();
    let keep_fn = f1(&m, keep);
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let runner = {
        let (stop, calls, wrong) = (stop.clone(), calls.clone(), wrong.clone());
        std::thread::spawn(move || {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                if keep_fn(i) != i * 3 + 1 {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let user = m
        .declare_function("user", Linkage::Export, &common::sig(&m, 1))
        .unwrap();
    for round in 0..2000i64 {
        define(&mut m, "user", Linkage::Export, 1, |m, b, p| {
            let r = call(m, b, keep, &[p[0]]);
            b.ins().iadd_imm_s(r, round)
        });
        m.finalize_definitions().unwrap();
        assert_eq!(f1(&m, user)(round), round * 3 + 1 + round);
        m.free_function(user).unwrap();
    }
    // The runner has been running all along.
    while calls.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert_eq!(m.session().units().len(), 1);
}

/// 100,000 cycles of define, finalize, call and free of one function (with its unwind
/// information registered and a gdb object each time): resident memory stays flat.
#[test]
fn define_free_cycles_stay_flat() {
    let mut m = module();
    m.session().set_debug(kiln::DebugOptions::default());
    let f = m
        .declare_function("cycle", Linkage::Export, &common::sig(&m, 1))
        .unwrap();
    let cycle = |m: &mut KilnModule, i: i64| {
        define(m, "cycle", Linkage::Export, 1, |_, b, p| {
            let x = b.ins().iconst(I64, i);
            b.ins().iadd(p[0], x)
        });
        m.finalize_definitions().unwrap();
        assert_eq!(f1(m, f)(1), i + 1);
        let addr = m.function_address(f).unwrap();
        m.free_function(f).unwrap();
        addr
    };
    for i in 0..2000 {
        cycle(&mut m, i); // warm up: slabs, free lists, allocator caches
    }
    let before = vm_rss_kib();
    let mut addresses = std::collections::BTreeSet::new();
    for i in 0..100_000 {
        addresses.insert(cycle(&mut m, i).0);
    }
    let after = vm_rss_kib();
    println!(
        "VmRSS {before} kB -> {after} kB over 100,000 cycles; {} distinct addresses",
        addresses.len()
    );
    // Generous: 100,000 leaked units of ~100 bytes of code plus bookkeeping would be tens of MB.
    assert!(
        after < before + 8 * 1024,
        "VmRSS grew from {before} kB to {after} kB"
    );
    // Freed memory is reused: the function keeps coming back to a few places.
    assert!(
        addresses.len() < 100,
        "{} distinct addresses",
        addresses.len()
    );
}

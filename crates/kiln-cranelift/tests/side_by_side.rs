//! One Cranelift program, written once over `M: Module`, run with cranelift-jit's `JITModule`
//! and with `KilnModule` (non-PIC and PIC): the same results, which are also checked against
//! values computed here. Then what only kiln does: thread-local data.
#![allow(unsafe_code)] // calling finalized code

mod common;

use common::{call, define, sig, Backend};
use cranelift_codegen::ir::{
    condcodes::IntCC, types::I64, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind,
};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, DataDescription, Linkage, Module};
use kiln_cranelift::{KilnBuilder, KilnModule};

extern "C" fn host_add3(a: i64, b: i64, c: i64) -> i64 {
    a * 100 + b * 10 + c
}

type F0 = extern "C" fn() -> i64;
type F1 = extern "C" fn(i64) -> i64;
type F2 = extern "C" fn(i64, i64) -> i64;

/// Everything the program computes, in a fixed order.
fn program<M: Backend>(m: &mut M) -> Vec<i64> {
    let mut out = Vec::new();
    // Batch 1: recursion, and mutual recursion (one unit in kiln).
    let fib = define(m, "fib", Linkage::Export, 1, |m, b, p| {
        let n = p[0];
        let small = b.ins().icmp_imm_s(IntCC::SignedLessThan, n, 2);
        let (base, rec) = (b.create_block(), b.create_block());
        let join = b.create_block();
        b.append_block_param(join, I64);
        b.ins().brif(small, base, &[], rec, &[]);
        b.switch_to_block(base);
        b.ins().jump(join, &[n.into()]);
        b.switch_to_block(rec);
        let fib = m
            .declare_function("fib", Linkage::Export, &sig(m, 1))
            .unwrap();
        let n1 = b.ins().iadd_imm_s(n, -1);
        let n2 = b.ins().iadd_imm_s(n, -2);
        let a = call(m, b, fib, &[n1]);
        let c = call(m, b, fib, &[n2]);
        let s = b.ins().iadd(a, c);
        b.ins().jump(join, &[s.into()]);
        b.switch_to_block(join);
        b.block_params(join)[0]
    });
    let square = define(m, "square", Linkage::Local, 1, |_, b, p| {
        b.ins().imul(p[0], p[0])
    });
    let parity = |m: &mut M, name: &str, other: &str, at_zero: i64| {
        define(m, name, Linkage::Hidden, 1, |m, b, p| {
            let other = m
                .declare_function(other, Linkage::Hidden, &sig(m, 1))
                .unwrap();
            let zero = b.ins().icmp_imm_s(IntCC::Equal, p[0], 0);
            let (done, more) = (b.create_block(), b.create_block());
            let join = b.create_block();
            b.append_block_param(join, I64);
            b.ins().brif(zero, done, &[], more, &[]);
            b.switch_to_block(done);
            let v = b.ins().iconst(I64, at_zero);
            b.ins().jump(join, &[v.into()]);
            b.switch_to_block(more);
            let n1 = b.ins().iadd_imm_s(p[0], -1);
            let r = call(m, b, other, &[n1]);
            b.ins().jump(join, &[r.into()]);
            b.switch_to_block(join);
            b.block_params(join)[0]
        })
    };
    let is_even = parity(m, "is_even", "is_odd", 1);
    let is_odd = parity(m, "is_odd", "is_even", 0);
    m.finalize();
    let f1 = |m: &M, id| unsafe { std::mem::transmute::<*const u8, F1>(m.function(id)) };
    out.push(f1(m, fib)(20));
    out.push(f1(m, square)(12));
    out.push(f1(m, is_even)(10));
    out.push(f1(m, is_odd)(7));

    // Batch 2: calls into batch 1, a host function, an import from libc, a libcall (memcpy),
    // data that points to functions and to other data, zero-initialised data.
    let host_add3_id = {
        let mut s = sig(m, 3);
        s.params.truncate(3);
        m.declare_function("host_add3", Linkage::Import, &s)
            .unwrap()
    };
    let labs = m
        .declare_function("labs", Linkage::Import, &sig(m, 1))
        .unwrap();
    let mix = define(m, "mix", Linkage::Export, 1, |m, b, p| {
        let sq = call(m, b, square, &[p[0]]);
        let fb = call(m, b, fib, &[p[0]]);
        let one = b.ins().iconst(I64, 1);
        let two = b.ins().iconst(I64, 2);
        let h = call(m, b, host_add3_id, &[p[0], one, two]);
        let neg = b.ins().ineg(p[0]);
        let a = call(m, b, labs, &[neg]);
        let s = b.ins().iadd(sq, fb);
        let s = b.ins().iadd(s, h);
        b.ins().iadd(s, a)
    });
    let copy = define(m, "copy_through_memcpy", Linkage::Export, 1, |m, b, p| {
        let slot = |b: &mut cranelift_frontend::FunctionBuilder| {
            b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 8, 3))
        };
        let (src, dst) = (slot(b), slot(b));
        b.ins().stack_store(I64, p[0], src, 0);
        let (sa, da) = (
            b.ins().stack_addr(I64, src, 0),
            b.ins().stack_addr(I64, dst, 0),
        );
        let size = b.ins().iconst(I64, 8);
        b.call_memcpy(m.target_config(), da, sa, size);
        b.ins().stack_load(I64, I64, dst, 0)
    });
    let table = m
        .declare_data("table", Linkage::Export, false, false)
        .unwrap();
    let mut d = DataDescription::new();
    d.define_zeroinit(16);
    let (sq_ref, fib_ref) = (
        m.declare_func_in_data(square, &mut d),
        m.declare_func_in_data(fib, &mut d),
    );
    d.write_function_addr(0, sq_ref);
    d.write_function_addr(8, fib_ref);
    m.define_data(table, &d).unwrap();
    let counter = m
        .declare_data("counter", Linkage::Local, true, false)
        .unwrap();
    let mut d = DataDescription::new();
    d.define(Box::new(5i64.to_le_bytes()));
    m.define_data(counter, &d).unwrap();
    let counter_ptr = m
        .declare_data("counter_ptr", Linkage::Export, true, false)
        .unwrap();
    let mut d = DataDescription::new();
    d.define_zeroinit(16);
    let gv = m.declare_data_in_data(counter, &mut d);
    d.write_data_addr(8, gv, 0);
    m.define_data(counter_ptr, &d).unwrap();
    let zeros = m
        .declare_data("zeros", Linkage::Export, true, false)
        .unwrap();
    let mut d = DataDescription::new();
    d.define_zeroinit(64);
    m.define_data(zeros, &d).unwrap();
    let call_table = define(m, "call_table", Linkage::Export, 2, |m, b, p| {
        let gv = m.declare_data_in_func(table, b.func);
        let base = b.ins().symbol_value(I64, gv);
        let off = b.ins().imul_imm_s(p[0], 8);
        let at = b.ins().iadd(base, off);
        let f = b.ins().load(I64, MemFlagsData::trusted(), at, 0);
        let s = b.import_signature(sig(m, 1));
        let c = b.ins().call_indirect(s, f, &[p[1]]);
        b.inst_results(c)[0]
    });
    let bump = define(m, "bump", Linkage::Export, 0, |m, b, _| {
        let gv = m.declare_data_in_func(counter_ptr, b.func);
        let at = b.ins().symbol_value(I64, gv);
        let p = b.ins().load(I64, MemFlagsData::trusted(), at, 8);
        let v = b.ins().load(I64, MemFlagsData::trusted(), p, 0);
        let v = b.ins().iadd_imm_s(v, 1);
        b.ins().store(MemFlagsData::trusted(), v, p, 0);
        v
    });
    let read_zeros = define(m, "read_zeros", Linkage::Export, 0, |m, b, _| {
        let gv = m.declare_data_in_func(zeros, b.func);
        let at = b.ins().symbol_value(I64, gv);
        let v = b.ins().load(I64, MemFlagsData::trusted(), at, 56);
        b.ins().iadd_imm_s(v, 7)
    });
    m.finalize();
    out.push(f1(m, mix)(10));
    out.push(f1(m, copy)(1234));
    let f2 = |m: &M, id| unsafe { std::mem::transmute::<*const u8, F2>(m.function(id)) };
    out.push(f2(m, call_table)(0, 9));
    out.push(f2(m, call_table)(1, 10));
    let f0 = |m: &M, id| unsafe { std::mem::transmute::<*const u8, F0>(m.function(id)) };
    out.push(f0(m, bump)());
    out.push(f0(m, bump)());
    out.push(f0(m, read_zeros)());
    // The data itself: the table holds the functions' addresses, counter_ptr the counter's.
    let (t, tsize) = m.data(table);
    let words = unsafe { std::slice::from_raw_parts(t as *const usize, 2) };
    out.push((words[0] == m.function(square) as usize) as i64);
    out.push((words[1] == m.function(fib) as usize) as i64);
    out.push(tsize as i64);
    let (cp, _) = m.data(counter_ptr);
    let target = unsafe { *(cp as *const usize).add(1) };
    out.push((target == m.data(counter).0 as usize) as i64);
    out.push(unsafe { *(m.data(counter).0 as *const i64) });
    out
}

const EXPECTED: [i64; 16] = [
    6765,                 // fib(20)
    144,                  // square(12)
    1,                    // is_even(10)
    1,                    // is_odd(7)
    100 + 55 + 1012 + 10, // mix(10)
    1234,                 // through memcpy
    81,                   // table[0] = square
    55,                   // table[1] = fib
    6,
    7, // bump, bump
    7, // zeros + 7
    1,
    1,
    16, // the table's words and size
    1,  // counter_ptr points at counter
    7,  // counter after two bumps
];

fn kiln(flags: &[(&str, &str)]) -> KilnModule {
    let mut b = KilnBuilder::with_flags(flags, default_libcall_names()).unwrap();
    b.symbol("host_add3", host_add3 as *const u8);
    KilnModule::new(b)
}

#[test]
fn jit_and_kiln_agree() {
    let mut jb = JITBuilder::new(default_libcall_names()).unwrap();
    jb.symbol("host_add3", host_add3 as *const u8);
    let mut jit = JITModule::new(jb);
    let from_jit = program(&mut jit);
    let mut kiln = kiln(&[]);
    let from_kiln = program(&mut kiln);
    assert_eq!(from_jit, EXPECTED);
    assert_eq!(from_kiln, from_jit);
    // Kiln linked one unit per definition, and one for the two mutually recursive ones.
    let units = kiln.session().units().len();
    assert_eq!(
        units, 12,
        "fib, square, is_even+is_odd; mix, copy, 4 data objects, 3 more functions"
    );
    unsafe { jit.free_memory() };
    kiln.free_memory();
}

/// PIC code reaches what is not colocated through the GOT (`X86GOTPCRel4`), which
/// cranelift-jit refuses; kiln builds the GOT.
#[test]
fn pic_code_runs_the_same() {
    let mut kiln = kiln(&[("is_pic", "true")]);
    assert!(kiln.isa().flags().is_pic());
    assert_eq!(program(&mut kiln), EXPECTED);
}

/// Thread-local data (general-dynamic model), which cranelift-jit does not support: each thread
/// starts from the initial value.
#[test]
fn thread_local_data() {
    let mut m = kiln(&[]);
    let tls = m
        .declare_data("tls_counter", Linkage::Export, true, true)
        .unwrap();
    let mut d = DataDescription::new();
    d.define(Box::new(100i64.to_le_bytes()));
    m.define_data(tls, &d).unwrap();
    let bump = define(&mut m, "tls_bump", Linkage::Export, 0, |m, b, _| {
        let gv = m.declare_data_in_func(tls, b.func);
        let at = b.ins().tls_value(I64, gv);
        let v = b.ins().load(I64, MemFlagsData::trusted(), at, 0);
        let v = b.ins().iadd_imm_s(v, 1);
        b.ins().store(MemFlagsData::trusted(), v, at, 0);
        v
    });
    m.finalize_definitions().unwrap();
    let f = unsafe { std::mem::transmute::<*const u8, F0>(m.get_finalized_function(bump)) };
    assert_eq!((f(), f(), f()), (101, 102, 103));
    let other = std::thread::spawn(move || (f(), f())).join().unwrap();
    assert_eq!(other, (101, 102));
    assert_eq!(f(), 104);

    // A function of a later batch cannot reach it: kiln binds TLS only within a unit.
    define(&mut m, "late_tls_user", Linkage::Export, 0, |m, b, _| {
        let gv = m.declare_data_in_func(tls, b.func);
        let at = b.ins().tls_value(I64, gv);
        b.ins().load(I64, MemFlagsData::trusted(), at, 0)
    });
    let e = m.finalize_definitions().unwrap_err().to_string();
    assert!(
        e.contains("late_tls_user uses thread-local tls_counter"),
        "{e}"
    );
}

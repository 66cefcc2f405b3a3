//! A Rust panic unwinds through Cranelift-compiled frames: kiln registered the `.eh_frame`
//! made from Cranelift's unwind information, including where each frame saved callee-saved
//! registers. (Without it the panic cannot unwind and the process aborts.)
#![allow(unsafe_code)] // calling finalized code

mod common;

use common::{call, define};
use cranelift_codegen::ir::InstBuilder;
use cranelift_module::{default_libcall_names, Linkage, Module};
use kiln_cranelift::{KilnBuilder, KilnModule};
use std::hint::black_box;

extern "C-unwind" fn host_maybe_panic(x: i64) -> i64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x + 1
}

type F1 = extern "C-unwind" fn(i64) -> i64;

fn module(flags: &[(&str, &str)]) -> KilnModule {
    let mut b = KilnBuilder::with_flags(flags, default_libcall_names()).unwrap();
    b.symbol("host_maybe_panic", host_maybe_panic as *const u8);
    KilnModule::new(b)
}

/// outer(x) -> middle(x) -> host_maybe_panic(x), each Cranelift frame keeping values live
/// across its call (so it saves callee-saved registers, which the unwinder must restore).
fn build(m: &mut KilnModule) -> cranelift_module::FuncId {
    let host = m
        .declare_function("host_maybe_panic", Linkage::Import, &common::sig(m, 1))
        .unwrap();
    let live_across =
        |m: &mut KilnModule, b: &mut cranelift_frontend::FunctionBuilder, callee, x| {
            let vals: Vec<_> = (1..=6).map(|k| b.ins().imul_imm_s(x, k * 7 + 1)).collect();
            let r = call(m, b, callee, &[x]);
            vals.into_iter().fold(r, |acc, v| b.ins().iadd(acc, v))
        };
    let middle = define(m, "middle", Linkage::Export, 1, |m, b, p| {
        live_across(m, b, host, p[0])
    });
    let outer = define(m, "outer", Linkage::Export, 1, |m, b, p| {
        live_across(m, b, middle, p[0])
    });
    m.finalize_definitions().unwrap();
    outer
}

fn expected(x: i64) -> i64 {
    let s: i64 = (1..=6).map(|k| x * (k * 7 + 1)).sum();
    (x + 1) + s + s
}

fn panics_through(m: &mut KilnModule) {
    let outer = build(m);
    let f = unsafe { std::mem::transmute::<*const u8, F1>(m.get_finalized_function(outer)) };
    assert_eq!(f(1), expected(1));
    // Values this frame keeps in callee-saved registers across the unwind.
    let keep: Vec<u64> = (0..8)
        .map(|i| black_box(0x1234_5678_u64.rotate_left(i)))
        .collect();
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the panic is expected
    let r = std::panic::catch_unwind(|| f(black_box(3)));
    std::panic::set_hook(prev_hook);
    let payload = r.expect_err("the panic came back through the Cranelift frames");
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert_eq!(msg, "boom at 3");
    let again: Vec<u64> = (0..8).map(|i| 0x1234_5678_u64.rotate_left(i)).collect();
    assert_eq!(black_box(keep), again);
    // The code still runs after the unwind.
    assert_eq!(f(5), expected(5));
}

#[test]
fn panic_unwinds_through_cranelift_frames() {
    panics_through(&mut module(&[]));
}

#[test]
fn panic_unwinds_through_pic_frames_with_frame_pointers() {
    panics_through(&mut module(&[
        ("is_pic", "true"),
        ("preserve_frame_pointers", "true"),
    ]));
}

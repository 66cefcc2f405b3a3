//! gdb names Cranelift functions linked by kiln: a pending breakpoint on one is hit, and the
//! backtrace shows it and its Cranelift caller by name.
//!
//! The parent test runs this test binary again under `gdb -batch`, with `KILN_CRANELIFT_GDB_CHILD`
//! set so that the child test does its work (it does nothing in a normal run). A missing gdb
//! fails the test.

mod common;

use common::{call, define};
use cranelift_codegen::ir::InstBuilder;
use cranelift_module::{default_libcall_names, Linkage};
use kiln_cranelift::{KilnBuilder, KilnModule};
use std::process::{Command, Stdio};

const CHILD: &str = "KILN_CRANELIFT_GDB_CHILD";

#[test]
fn child_runs_cranelift_code() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let mut b = KilnBuilder::new(default_libcall_names()).unwrap();
    b.debug(kiln::DebugOptions {
        gdb: true,
        ..kiln::DebugOptions::none()
    });
    let mut m = KilnModule::new(b);
    let leaf = define(&mut m, "cranelift_leaf", Linkage::Export, 1, |_, b, p| {
        b.ins().imul_imm_s(p[0], 3)
    });
    let caller = define(&mut m, "cranelift_caller", Linkage::Export, 1, |m, b, p| {
        let r = call(m, b, leaf, &[p[0]]);
        b.ins().iadd_imm_s(r, 1)
    });
    m.finalize_definitions().unwrap();
    let addr = m.function_address(caller).unwrap();
    #[allow(unsafe_code)] // calling finalized code
    let f: extern "C" fn(i64) -> i64 = unsafe { kiln::InProcessExecutor::function(addr) };
    println!("cranelift_caller(5) = {}", f(5));
}

#[test]
fn gdb_names_cranelift_functions() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx"])
        .args(["-ex", "set breakpoint pending on"])
        .args(["-ex", "break cranelift_leaf"])
        .args(["-ex", "run"])
        .args(["-ex", "bt"])
        .args(["-ex", "info symbol $pc"])
        .args(["-ex", "continue"])
        .arg("--args")
        .arg(&exe)
        .args([
            "--exact",
            "child_runs_cranelift_code",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("KILN_DEBUG")
        .stdin(Stdio::null())
        .output()
        .expect("gdb is required for this test");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Breakpoint 1, ") && text.contains("in cranelift_leaf ()"),
        "{text}"
    );
    let bt: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        bt.first().is_some_and(|l| l.contains("cranelift_leaf")),
        "{text}"
    );
    assert!(
        bt.get(1).is_some_and(|l| l.contains("cranelift_caller")),
        "{text}"
    );
    // `info symbol $pc`: "cranelift_leaf + N in section .text of <in-memory@...>".
    assert!(
        text.lines()
            .any(|l| l.starts_with("cranelift_leaf") && l.contains(" in section .text of ")),
        "{text}"
    );
    assert!(text.contains("cranelift_caller(5) = 16"), "{text}");
}

//! gdb names JIT'd Lox functions: stopped in a runtime helper called from compiled code, `bt`
//! shows the compiled frames by their Lox names (`lox:inner`, `lox:outer`, `lox:script`) and the
//! entry trampoline. kiln registers each compiled function's in-memory object with gdb's JIT
//! interface (its gdb sink is on by default). Needs `gdb` (scripts/test installs it).

use std::path::Path;
use std::process::Command;

const PROGRAM: &str =
    "fun inner(x) {\n  print x;\n}\nfun outer(x) {\n  inner(x + 1);\n}\nouter(41);\n";

#[test]
fn backtrace_in_jit_code_names_lox_functions() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lox-gdb");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the work dir");
    let program = dir.join("bt.lox");
    std::fs::write(&program, PROGRAM).expect("write the program");

    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "set debuginfod enabled off"])
        .args(["-ex", "break kiln_lox::jit::runtime::lox_rt_print"])
        .args(["-ex", "run", "-ex", "bt", "-ex", "continue", "--args"])
        .arg(env!("CARGO_BIN_EXE_kiln-lox"))
        .arg("--jit=always")
        .arg(&program)
        .output()
        .expect("run gdb (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let frames: Vec<&str> = stdout.lines().filter(|l| l.starts_with('#')).collect();
    let position = |name: &str| {
        frames
            .iter()
            .position(|f| f.contains(name))
            .unwrap_or_else(|| panic!("no frame {name} in the backtrace:\n{stdout}\n{stderr}"))
    };
    assert!(
        frames[0].contains("lox_rt_print"),
        "stopped elsewhere:\n{stdout}"
    );
    // The compiled frames, innermost first, then the trampoline that entered machine code.
    let inner = position("lox:inner");
    let outer = position("lox:outer");
    let script = position("lox:script");
    let enter = position("lox_enter");
    assert!(
        inner < outer && outer < script && script < enter,
        "{stdout}"
    );
    // The program goes on after the breakpoint and prints what it prints without gdb.
    assert!(
        stdout.contains("42"),
        "the program's output is missing:\n{stdout}"
    );
}

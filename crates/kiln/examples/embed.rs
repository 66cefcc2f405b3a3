//! Kiln as a library: compile a C function with the system compiler, link it into this process,
//! look it up, and call it through a typed function pointer.
//!
//! Run with `cargo run -p kiln --example embed`.

// Calling JIT'd code through a raw function pointer is the one unsafe step a user of a JIT
// takes; kiln itself keeps its unsafe code inside kiln-target.
#![allow(unsafe_code)]

use kiln::{InProcessExecutor, Session};
use std::process::Command;

const SOURCE: &str = r#"
#include <stdio.h>
#include <math.h>
static int counter;
int add_and_count(int a, int b) { counter++; return a + b; }
double hypotenuse(double a, double b) { return sqrt(a * a + b * b); }
int calls(void) { return counter; }
"#;

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kiln-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (src, obj) = (dir.join("f.c"), dir.join("f.o"));
    std::fs::write(&src, SOURCE)?;
    let ok = Command::new("cc")
        .args(["-c", "-O2", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()?
        .success();
    anyhow::ensure!(ok, "cc failed");

    let session = Session::in_process();
    session.add_file(&obj)?; // objects, archives, .so files or ld scripts
    session.add_library("m")?; // like -lm: follows Debian's libm.so linker script
    let unit = session.link()?;
    session.run_initializers()?;
    println!("{}", session.stats(unit).expect("unit exists"));

    let add = session.lookup("add_and_count").expect("defined");
    let hyp = session.lookup("hypotenuse").expect("defined");
    let calls = session.lookup("calls").expect("defined");
    // SAFETY: the symbols are functions of a live unit with exactly these C signatures.
    let (add, hyp, calls) = unsafe {
        (
            InProcessExecutor::function::<extern "C" fn(i32, i32) -> i32>(add),
            InProcessExecutor::function::<extern "C" fn(f64, f64) -> f64>(hyp),
            InProcessExecutor::function::<extern "C" fn() -> i32>(calls),
        )
    };
    println!("add_and_count(2, 40) = {}", add(2, 40));
    println!("hypotenuse(3, 4) = {}", hyp(3.0, 4.0));
    println!("calls() = {}", calls());
    session.remove(unit)?; // destructors run, registrations undone, memory released
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

//! Kiln out of process as a library: compile a C program, link it here, run it in a child
//! `kiln-executor` (the same `Session` API as in process, with a `RemoteExecutor`).
//!
//! Run with `cargo build -p kiln-remote --bin kiln-executor && cargo run -p kiln-remote --example
//! remote` (the example looks for kiln-executor next to itself, in target/debug).

use kiln::Session;
use kiln_remote::{ExitReport, MemoryMode, Options, RemoteExecutor};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const SOURCE: &str = r#"
#include <stdio.h>
#include <unistd.h>
static void bye(void) { printf("exit handler in %d\n", (int)getpid()); }
int main(int argc, char **argv) {
    atexit(bye);
    printf("main in %d (the controller is %s)\n", (int)getpid(), argv[1]);
    return 3;
}
"#;

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kiln-remote-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (src, obj) = (dir.join("p.c"), dir.join("p.o"));
    std::fs::write(&src, SOURCE)?;
    let ok = Command::new("cc")
        .args(["-c", "-O2", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()?
        .success();
    anyhow::ensure!(ok, "cc failed");

    // target/debug/examples/remote -> target/debug/kiln-executor
    let exe: PathBuf = std::env::current_exe()?
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("kiln-executor"))
        .filter(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("build kiln-executor first (see the top of this file)"))?;
    let opts = Options {
        memory: MemoryMode::Shared, // or Copy; Auto picks shared when it can
        ..Options::default()
    };
    let executor = Arc::new(RemoteExecutor::spawn(&exe, &[], opts)?);
    println!(
        "executor pid {}, memory {}",
        executor.pid(),
        if executor.shares_memory() {
            "shared"
        } else {
            "copied"
        }
    );

    let session = Session::new(executor.clone());
    session.add_file(&obj)?;
    let unit = session.link()?;
    println!("{}", session.stats(unit).expect("unit exists"));
    session.run_initializers()?;
    let status = session.run_main("main", &["p".into(), std::process::id().to_string()])?;
    // Leave as a native program would: exit handlers run in the executor, then it exits.
    match executor.exit(status)? {
        ExitReport::Code(c) => println!("the program exited with {c}"),
        other => println!("the executor ended: {other:?}"),
    }
    // Its code lived in the executor, which is gone: nothing is left to undo there.
    session.detach();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

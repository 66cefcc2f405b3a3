//! The library API under the real tools (DESIGN.md test layer 5): gdb sees a unit linked in this
//! process and forgets it when the unit is removed; under valgrind, code freed and replaced by
//! different code at the same address runs in its new version.
//!
//! Each parent test compiles its C sources, then runs this test binary again under the tool
//! (`gdb -batch` or `valgrind`) with `KILN_DEBUG_TOOLS_CHILD` naming the child test to run; the
//! child tests do nothing in a normal run. A missing tool fails the test.

use kiln::{DebugOptions, Session};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "KILN_DEBUG_TOOLS_CHILD";
const OBJ_DIR: &str = "KILN_DEBUG_TOOLS_OBJECTS";
const TIMEOUT: Duration = Duration::from_secs(120);

const PROBE: &str = r#"
int probe_helper(int x) { return x * 2 + 1; }
int jit_probe(int argc, char **argv, char **envp) {
    return probe_helper(argc) + 40;
}
"#;

/// Two versions of the same function, with code of the same size: linked one after the other
/// at the same address.
const VERSION_1: &str = "int which(int argc, char **argv, char **envp) { return 1; }\n";
const VERSION_2: &str = "int which(int argc, char **argv, char **envp) { return 2; }\n";

fn is_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|c| c == name)
}

fn objects_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-debug-tools-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compile(dir: &Path, name: &str, src: &str) -> PathBuf {
    let (s, o) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.o")));
    std::fs::write(&s, src).unwrap();
    let st = Command::new("cc")
        .args(["-c", "-g", "-O1", "-o"])
        .arg(&o)
        .arg(&s)
        .status()
        .unwrap_or_else(|e| panic!("cc is required for this test: {e}"));
    assert!(st.success(), "cc failed on {name}");
    o
}

/// Runs `tool args… <this test binary> --exact CHILD` with the child's environment, killing it
/// after [`TIMEOUT`].
fn run_child_under(tool: &str, tool_args: &[&str], child: &str, dir: &Path) -> Output {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(tool);
    cmd.args(tool_args)
        .arg(&exe)
        .args(["--exact", child, "--nocapture", "--test-threads=1"])
        .env(CHILD, child)
        .env(OBJ_DIR, dir)
        // The child's sinks are chosen by the child, not by the caller's environment.
        .env_remove(DebugOptions::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} (is it installed?): {e}"));
    let start = Instant::now();
    while p.try_wait().expect("waiting").is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = p.kill();
            panic!("{tool} on {child} timed out after {}s", TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// gdb stops here after the unit has been removed, with the address `jit_probe` had.
#[inline(never)]
fn after_removal(addr: u64) {
    std::hint::black_box(addr);
}

#[test]
fn child_gdb_removal() {
    if !is_child("child_gdb_removal") {
        return;
    }
    let dir = PathBuf::from(std::env::var(OBJ_DIR).unwrap());
    let s = Session::in_process();
    s.set_debug(DebugOptions {
        gdb: true,
        ..DebugOptions::none()
    });
    s.add_file(dir.join("probe.o")).unwrap();
    s.add_root("jit_probe");
    let unit = s.link().unwrap();
    s.run_initializers().unwrap();
    let addr = s.lookup("jit_probe").unwrap().0;
    let r = s.run_main("jit_probe", &["probe".to_string()]).unwrap();
    println!("jit_probe returned {r}");
    s.remove(unit).unwrap();
    after_removal(addr);
}

#[test]
fn gdb_forgets_removed_unit() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = objects_dir("gdb");
    compile(&dir, "probe", PROBE);
    let out = run_child_under(
        "gdb",
        &[
            "-nx",
            "-batch",
            "-ex",
            "set breakpoint pending on",
            "-ex",
            "break jit_probe",
            "-ex",
            "break debug_tools::after_removal",
            "-ex",
            "run",
            "-ex",
            "echo @@LIVE\\n",
            "-ex",
            "bt 2",
            "-ex",
            "info symbol $pc",
            "-ex",
            "continue",
            "-ex",
            "echo @@REMOVED\\n",
            "-ex",
            "info symbol addr",
            "-ex",
            "info line jit_probe",
            "-ex",
            "kill",
            "--args",
        ],
        "child_gdb_removal",
        &dir,
    );
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (live, removed) = stdout
        .split_once("@@REMOVED")
        .unwrap_or_else(|| panic!("gdb did not reach the removal point:\n{all}"));
    let live = live
        .split_once("@@LIVE")
        .unwrap_or_else(|| panic!("the pending breakpoint on jit_probe was not hit:\n{all}"))
        .1;
    // While the unit lives: gdb stopped in it, names it with its line, and knows its objfile.
    assert!(
        live.lines()
            .any(|l| l.starts_with("#0") && l.contains("jit_probe") && l.contains("probe.c:")),
        "no `jit_probe … at probe.c:N` frame:\n{all}"
    );
    assert!(
        live.contains("jit_probe in section .text of <in-memory@"),
        "gdb does not place $pc in the registered object:\n{all}"
    );
    // After removal: the address and the name are unknown.
    assert!(
        removed.contains("No symbol matches addr"),
        "gdb still names the freed address:\n{all}"
    );
    assert!(
        !removed.contains("in section .text of <in-memory@"),
        "gdb still knows the object:\n{all}"
    );
    let removed_err = String::from_utf8_lossy(&out.stderr);
    assert!(
        removed_err.contains("Function \"jit_probe\" not defined")
            || removed.contains("Function \"jit_probe\" not defined"),
        "gdb still knows jit_probe after removal:\n{all}"
    );
}

#[test]
fn child_valgrind_replace() {
    if !is_child("child_valgrind_replace") {
        return;
    }
    let dir = PathBuf::from(std::env::var(OBJ_DIR).unwrap());
    println!(
        "running_on_valgrind={}",
        kiln_target::debug_sinks::running_on_valgrind()
    );
    let s = Session::in_process();
    s.set_debug(DebugOptions {
        valgrind: true,
        ..DebugOptions::none()
    });
    s.set_want_map(true);
    s.add_file(dir.join("v1.o")).unwrap();
    s.add_root("which");
    let u1 = s.link().unwrap();
    let base = s.link_map(u1).unwrap().memory[0].addr;
    let at1 = s.lookup("which").unwrap();
    let r1 = s.run_main("which", &[]).unwrap();
    s.remove(u1).unwrap();

    // The freed range goes back to the slab; the next unit reuses it (first fit), so the new
    // code lands at the same address as the old.
    let _ = base;
    s.add_file(dir.join("v2.o")).unwrap();
    s.add_root("which");
    s.link().unwrap();
    let at2 = s.lookup("which").unwrap();
    let r2 = s.run_main("which", &[]).unwrap();
    println!("replaced code at {at1} / {at2}: {r1} -> {r2}");
}

#[test]
fn valgrind_runs_replaced_code() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = objects_dir("valgrind");
    compile(&dir, "v1", VERSION_1);
    compile(&dir, "v2", VERSION_2);
    let out = run_child_under(
        "valgrind",
        &["--error-exitcode=9", "-q"],
        "child_valgrind_replace",
        &dir,
    );
    let all = text(&out);
    assert!(out.status.success(), "valgrind failed:\n{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("running_on_valgrind=1"), "{all}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("replaced code at "))
        .unwrap_or_else(|| panic!("the child did not finish:\n{all}"));
    let (addrs, results) = line["replaced code at ".len()..].split_once(": ").unwrap();
    let (a1, a2) = addrs.split_once(" / ").unwrap();
    assert_eq!(
        a1, a2,
        "the second version is not at the same address: {line}"
    );
    assert_eq!(results, "1 -> 2", "valgrind ran the freed code: {line}");
}

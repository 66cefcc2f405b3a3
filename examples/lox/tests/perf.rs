//! perf sees JIT'd Lox functions by their Lox names: with kiln's perf-map sink on
//! (`KILN_DEBUG=perf`), `/tmp/perf-PID.map` lists `lox:fib` and `lox:script`, and `perf report`
//! of a run of recursive fib puts `lox:fib` first. Needs `perf` (scripts/test installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

const FIB: &str =
    "fun fib(n) {\n  if (n < 2) return n;\n  return fib(n - 2) + fib(n - 1);\n}\nprint fib(27);\n";

fn workdir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lox-perf-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the work dir");
    dir
}

/// `(start, size, name)` of each line of a perf map.
fn read_map(pid: u32) -> Vec<(u64, u64, String)> {
    let path = format!("/tmp/perf-{pid}.map");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let _ = std::fs::remove_file(&path);
    text.lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let mut hex = || u64::from_str_radix(f.next().unwrap_or(""), 16).expect(l);
            let (start, size) = (hex(), hex());
            (start, size, f.next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn perf_map_names_compiled_functions_after_lox() {
    let dir = workdir("map");
    let program = dir.join("fib.lox");
    std::fs::write(&program, FIB).expect("write the program");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln-lox"))
        .arg("--jit=always")
        .arg(&program)
        .env("KILN_DEBUG", "perf")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln-lox");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for kiln-lox");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "196418\n");
    let entries = read_map(pid);
    for name in ["lox:fib", "lox:script", "lox_enter", "lox_interp_bridge"] {
        let entry = entries.iter().find(|e| e.2 == name);
        assert!(
            entry.is_some_and(|e| e.1 > 0),
            "{name} missing from the map: {entries:?}"
        );
    }
}

#[test]
fn perf_report_puts_the_lox_function_first() {
    let dir = workdir("report");
    let program = dir.join("fib.lox");
    std::fs::write(&program, FIB).expect("write the program");
    let data = dir.join("perf.data");
    let record = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(&data)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_kiln-lox"))
        .arg("--jit=on")
        .arg(&program)
        .env("KILN_DEBUG", "perf")
        .env("HOME", &dir)
        .current_dir(&dir)
        .output()
        .expect("run perf record (perf must be installed)");
    assert!(
        record.status.success(),
        "perf record failed: {}",
        String::from_utf8_lossy(&record.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&record.stdout), "196418\n");
    let report = Command::new("perf")
        .args(["report", "--stdio", "--sort", "sym", "-i"])
        .arg(&data)
        .env("HOME", &dir)
        .current_dir(&dir)
        .output()
        .expect("run perf report");
    let text = String::from_utf8_lossy(&report.stdout);
    let first = text
        .lines()
        .find(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()));
    assert!(
        first.is_some_and(|l| l.contains("lox:fib")),
        "perf report does not put lox:fib first:\n{text}"
    );
    // The map perf read: the pid is in the samples.
    let script = Command::new("perf")
        .args(["script", "-F", "pid", "-i"])
        .arg(&data)
        .env("HOME", &dir)
        .current_dir(&dir)
        .output()
        .expect("run perf script");
    if let Some(pid) = String::from_utf8_lossy(&script.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u32>().ok())
    {
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }
}

//! The debug sinks follow code that compaction moved: `perf report` names the moved function at
//! its new address, gdb's `bt` inside it shows file:line, a C++ exception unwinds through moved
//! frames of three units, and valgrind runs moved code (new code where freed code was) with no
//! errors.
//!
//! The tool tests run this test binary again under the tool (`perf record`, `gdb -batch`,
//! `valgrind`) with `KILN_SINKS_FOLLOW_CHILD` naming the child test to run; child tests do
//! nothing in a normal run. A missing tool or compiler fails the test.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{Jit, JitGraph, RegionKind, Verdict, ZoneConfig};
use kiln_target::MemProt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD: &str = "KILN_SINKS_FOLLOW_CHILD";
const DIR: &str = "KILN_SINKS_FOLLOW_DIR";
const TIMEOUT: Duration = Duration::from_secs(300);

fn is_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|c| c == name)
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn workdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sinks-follow-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compile `src` (C, or C++ when `cxx`) with debug info into `dir/name.o`.
fn compile(dir: &Path, name: &str, src: &str, cxx: bool) -> PathBuf {
    let (ext, compiler) = if cxx { ("cpp", "g++") } else { ("c", "cc") };
    let (s, o) = (
        dir.join(format!("{name}.{ext}")),
        dir.join(format!("{name}.o")),
    );
    std::fs::write(&s, src).unwrap();
    let st = Command::new(compiler)
        .args([
            "-c",
            "-g",
            "-O1",
            "-fno-inline",
            "-fno-omit-frame-pointer",
            "-o",
        ])
        .arg(&o)
        .arg(&s)
        .status()
        .unwrap_or_else(|e| panic!("{compiler} is required for this test: {e}"));
    assert!(st.success(), "{compiler} failed on {name}");
    o
}

/// Runs `tool args… <this test binary> --exact CHILD`, killing it after [`TIMEOUT`].
fn run_child_under(tool: &str, tool_args: &[&str], child: &str, dir: &Path) -> Output {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(tool);
    cmd.args(tool_args)
        .arg(&exe)
        .args(["--exact", child, "--nocapture", "--test-threads=1"])
        .env(CHILD, child)
        .env(DIR, dir)
        .env("HOME", dir) // perf keeps its caches under $HOME
        .env_remove(DebugOptions::ENV)
        .current_dir(dir)
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

/// A function of `size` bytes of `int3` (never called) with read-only data and data of the same
/// size: a unit to drop, leaving a gap in every part of the region.
fn filler(name: &str, size: usize) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, vec![0xcc; size], vec![], None);
    g.add_data(&format!("{name}_ro"), vec![1; size], 16, MemProt::Read);
    g.add_data(&format!("{name}_rw"), vec![2; size], 16, MemProt::ReadWrite);
    JitGraph::new(g)
}

fn drop_fillers(s: &Session) -> impl FnMut(kiln::UnitId) -> Verdict + '_ {
    move |u| {
        let names = s.unit_symbols(u).unwrap();
        if names.iter().any(|(n, _)| n.starts_with("filler")) {
            Verdict::Drop
        } else {
            Verdict::Keep
        }
    }
}

/// A zone in a session with `debug` sinks; `objects` (name, path) linked into the method region,
/// each after a filler unit; then a compaction that drops the fillers, so every object moves.
/// Returns the session, the zone, and the (old, new) address of each function in `watch`.
fn moved_objects(
    debug: DebugOptions,
    defines: &[(&str, u64)],
    objects: &[(&str, PathBuf)],
    watch: &[&str],
) -> (Arc<Session>, Jit, Vec<(u64, u64)>) {
    let s = Arc::new(Session::in_process());
    s.set_debug(debug);
    for (name, addr) in defines {
        s.define(*name, *addr);
    }
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    for (i, (name, path)) in objects.iter().enumerate() {
        jit.link(
            RegionKind::Method,
            &filler(&format!("filler_dropped_in_front_{i}"), 64 + 96 * i),
        )
        .unwrap();
        jit.link_object(RegionKind::Method, name, std::fs::read(path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let before: Vec<u64> = watch.iter().map(|w| s.lookup(w).unwrap().0).collect();
    let report = jit.compact(drop_fillers(&s)).unwrap();
    assert_eq!(report.dropped.len(), objects.len());
    let moves: Vec<(u64, u64)> = watch
        .iter()
        .zip(before)
        .map(|(w, old)| {
            let new = s.lookup(w).unwrap().0;
            assert_eq!(report.translate(ExecutorAddr(old)), Some(ExecutorAddr(new)));
            assert_ne!(old, new, "{w} moved");
            (old, new)
        })
        .collect();
    (s, jit, moves)
}

// ---- perf ----------------------------------------------------------------------------------

const HOT_C: &str = r#"
long hot_loop(long n) {
    long s = 0;
    for (long i = 0; i < n; i++)
        s += (i ^ (s >> 3)) & 0xff;
    return s;
}
"#;

/// Which line of the child's output starts with `prefix` (the test harness may print its
/// `test NAME ... ` in front of the first one).
fn printed<'o>(out: &'o str, prefix: &str) -> Option<&'o str> {
    out.lines()
        .find_map(|l| Some(l.split_once(prefix)?.1.trim()))
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not hexadecimal: {s:?}"))
}

#[test]
fn child_perf() {
    if !is_child("child_perf") {
        return;
    }
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let (s, _jit, moves) = moved_objects(
        DebugOptions {
            perf_map: true,
            jitdump: Some(dir.clone()),
            ..DebugOptions::none()
        },
        &[],
        &[("hot.o", dir.join("hot.o"))],
        &["hot_loop"],
    );
    println!();
    println!("pid {}", std::process::id());
    println!("moved hot_loop {:#x} -> {:#x}", moves[0].0, moves[0].1);
    let f = s.lookup("hot_loop").unwrap();
    let r = s.executor().call(f, &[300_000_000]).unwrap();
    println!("hot_loop returned {r}");
}

/// The first `perf report --stdio` line that carries samples.
fn top_of_report(dir: &Path, data: &Path) -> (String, String) {
    let out = Command::new("perf")
        .args([
            "report",
            "-i",
            data.to_str().unwrap(),
            "--stdio",
            "--sort",
            "sym",
        ])
        .env("HOME", dir)
        .current_dir(dir)
        .output()
        .expect("perf report");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let top = text
        .lines()
        .find(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .unwrap_or("")
        .to_string();
    (top, text)
}

/// The child runs hot_loop after a compaction moved it over a dropped unit (whose name is the
/// longer, and whose perf map line starts where hot_loop's new one does). Through the perf map,
/// and through the jitdump (`JIT_CODE_MOVE`, `perf inject --jit`), perf names hot_loop.
#[test]
fn perf_names_the_moved_function_at_its_new_address() {
    if in_child() {
        return;
    }
    let dir = workdir("perf");
    compile(&dir, "hot", HOT_C, false);
    let data = dir.join("perf.data");
    let out = run_child_under(
        "perf",
        &[
            "record",
            "-k",
            "mono",
            "-e",
            "cpu-clock",
            "-o",
            data.to_str().unwrap(),
            "--",
        ],
        "child_perf",
        &dir,
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid: u32 = printed(&stdout, "pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid:\n{all}"));
    let (old, new) = printed(&stdout, "moved hot_loop ")
        .and_then(|l| l.split_once(" -> "))
        .map(|(o, n)| (hex(o), hex(n)))
        .unwrap_or_else(|| panic!("the child did not compact:\n{all}"));
    // The map has hot_loop's line at the old address, and one at the new address, after the
    // dropped filler's line there.
    let map_path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let map = std::fs::read_to_string(&map_path).unwrap();
    let line_at = |addr: u64, name: &str| {
        map.lines()
            .position(|l| l.starts_with(&format!("{addr:x} ")) && l.ends_with(&format!(" {name}")))
    };
    let (old_line, filler_line, new_line) = (
        line_at(old, "hot_loop"),
        line_at(new, "filler_dropped_in_front_0"),
        line_at(new, "hot_loop"),
    );
    assert!(
        old_line.is_some() && filler_line.is_some() && new_line > filler_line,
        "{map}"
    );
    let (top, report) = top_of_report(&dir, &data);
    assert!(
        top.contains("hot_loop"),
        "perf report (perf map) does not put hot_loop first:\n{report}\n{map}"
    );
    // The jitdump: hot_loop's load at the old address, then a move to the new one.
    use kiln_target::jitdump_format as jd;
    let dump = std::fs::read(dir.join(format!("jit-{pid}.dump"))).unwrap();
    let moved = jd::records(&dump[jd::FileHeader::SIZE..])
        .map(|r| r.unwrap())
        .filter(|r| r.header.id == jd::JIT_CODE_MOVE)
        .filter_map(|r| jd::CodeMove::read(r.body))
        .any(|m| m.old_code_addr == old && m.new_code_addr == new);
    assert!(
        moved,
        "no JIT_CODE_MOVE {old:#x} -> {new:#x} in the jitdump"
    );
    let injected = dir.join("perf.jit.data");
    let inject = Command::new("perf")
        .args(["inject", "--jit", "-i"])
        .arg(&data)
        .arg("-o")
        .arg(&injected)
        .env("HOME", &dir)
        .current_dir(&dir)
        .output()
        .expect("perf inject");
    assert!(
        inject.status.success(),
        "perf inject: {}",
        String::from_utf8_lossy(&inject.stderr)
    );
    let (top, report) = top_of_report(&dir, &injected);
    let _ = std::fs::remove_file(&map_path);
    assert!(
        top.contains("hot_loop"),
        "perf report (jitdump) does not put hot_loop first:\n{report}"
    );
}

// ---- gdb -----------------------------------------------------------------------------------

const PROBE_C: &str = r#"
extern void sinks_stop(int);
int jit_probe(int x) {
    int y = x * 3;
    sinks_stop(y);
    return y + 1;
}
"#;

/// gdb stops here, called from the moved `jit_probe`.
#[inline(never)]
extern "C" fn sinks_stop(y: i32) {
    std::hint::black_box(y);
}

/// Whether a debugger is attached to this thread (gdb attaches a process's threads one by one;
/// once this one is, it stops until gdb has set its breakpoints and continues).
fn traced() -> bool {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .is_some_and(|v| v.trim() != "0")
}

/// Compacts (jit_probe moves), then waits for gdb to attach before calling it. (Started under
/// gdb, the process would get no slabs — a debugger cannot put breakpoints into their shared
/// code mappings — and zone units would not be in the zone, so nothing could move.)
#[test]
fn child_gdb() {
    if !is_child("child_gdb") {
        return;
    }
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let (s, _jit, moves) = moved_objects(
        DebugOptions {
            gdb: true,
            ..DebugOptions::none()
        },
        &[("sinks_stop", sinks_stop as *const () as u64)],
        &[("probe.o", dir.join("probe.o"))],
        &["jit_probe"],
    );
    let size = s
        .lookup_symbol(s.default_scope(), "jit_probe")
        .unwrap()
        .size;
    println!();
    println!(
        "moved jit_probe {:#x} -> {:#x} size {size:#x}",
        moves[0].0, moves[0].1
    );
    println!("ready {}", std::process::id());
    let start = Instant::now();
    while !traced() {
        assert!(start.elapsed() < TIMEOUT, "gdb never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = s
        .executor()
        .call(s.lookup("jit_probe").unwrap(), &[5])
        .unwrap();
    println!("jit_probe returned {r}");
}

/// gdb attaches to a process whose JIT'd C function compaction moved, stops in a function it
/// calls, and `bt` shows the moved function with its file and line, at its new address.
#[test]
fn gdb_shows_the_moved_function_with_its_line() {
    use std::io::BufRead;
    if in_child() {
        return;
    }
    let dir = workdir("gdb");
    compile(&dir, "probe", PROBE_C, false);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_gdb", "--nocapture", "--test-threads=1"])
        .env(CHILD, "child_gdb")
        .env(DIR, &dir)
        .env_remove(DebugOptions::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let pid = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("the child ended before it was ready:\n{seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        if let Some(pid) = printed(&line, "ready ") {
            break pid.to_string();
        }
    };
    let gdb = run_child_gdb(&pid, &dir);
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    seen.push_str(&rest.join("\n"));
    let all = format!("{}\n--- child ---\n{seen}", text(&gdb));
    assert!(status.success(), "{all}");
    let (range, size) = printed(&seen, "moved jit_probe ")
        .and_then(|l| l.split_once(" size "))
        .unwrap_or_else(|| panic!("the child did not compact:\n{all}"));
    let new = hex(range.split(" -> ").nth(1).unwrap());
    let size = hex(size);
    let out = String::from_utf8_lossy(&gdb.stdout).into_owned();
    let stopped = out
        .split_once("@@STOPPED")
        .unwrap_or_else(|| panic!("gdb did not stop in sinks_stop:\n{all}"))
        .1;
    // Frame 1 is jit_probe, at its new address, with its file and line.
    let frame = stopped
        .lines()
        .find(|l| l.starts_with("#1"))
        .unwrap_or_else(|| panic!("no frame #1:\n{all}"));
    assert!(
        frame.contains("jit_probe") && frame.contains("probe.c:5"),
        "frame #1 is not `jit_probe … at probe.c:5`: {frame}\n{all}"
    );
    let pc = frame
        .split_whitespace()
        .nth(1)
        .map(hex)
        .unwrap_or_else(|| panic!("no pc in {frame}"));
    assert!(
        new <= pc && pc < new + size,
        "the return address {pc:#x} is not in the moved jit_probe ({new:#x}..+{size:#x})\n{all}"
    );
    assert!(
        stopped.contains("jit_probe + ") && stopped.contains("in section .text of <in-memory@"),
        "gdb does not place the pc in the registered object:\n{all}"
    );
    assert!(seen.contains("jit_probe returned 16"), "{all}");
}

/// `gdb -p PID`: break in sinks_stop, continue, show the stack, detach.
fn run_child_gdb(pid: &str, dir: &Path) -> Output {
    let mut cmd = Command::new("gdb");
    cmd.args([
        "-nx",
        "-batch",
        "-p",
        pid,
        "-ex",
        "break sinks_follow::sinks_stop",
        "-ex",
        "continue",
        "-ex",
        "echo @@STOPPED\\n",
        "-ex",
        "bt 3",
        "-ex",
        "frame 1",
        "-ex",
        "info symbol $pc",
        "-ex",
        "detach",
    ])
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let p = cmd.spawn().expect("gdb is required for this test");
    p.wait_with_output().expect("gdb output")
}

// ---- C++ exceptions ------------------------------------------------------------------------

const THROWER_CPP: &str = r#"
#include <stdexcept>
extern "C" int thrower(int x) {
    if (x > 0)
        throw std::runtime_error("boom");
    return x;
}
"#;

const MIDDLE_CPP: &str = r#"
extern "C" int thrower(int x);
struct Guard { int *count; ~Guard() { ++*count; } };
extern "C" int middle(int x, int *unwound) {
    Guard g{unwound};
    int r = thrower(x);
    return r + 7;
}
"#;

const CATCHER_CPP: &str = r#"
#include <stdexcept>
extern "C" int middle(int x, int *unwound);
static int unwound;
extern "C" int catcher(int x) {
    try {
        return middle(x, &unwound);
    } catch (const std::runtime_error &e) {
        return 1000 + unwound * 100 + x;
    }
}
"#;

/// A C++ exception thrown in one moved unit unwinds through a second (running its destructor)
/// and is caught in a third: their `.eh_frame` and `.gcc_except_table` moved with their code and
/// were registered again.
#[test]
fn a_cxx_exception_unwinds_through_moved_frames() {
    if in_child() {
        return;
    }
    let dir = workdir("cxx");
    let objects = [
        ("thrower.o", compile(&dir, "thrower", THROWER_CPP, true)),
        ("middle.o", compile(&dir, "middle", MIDDLE_CPP, true)),
        ("catcher.o", compile(&dir, "catcher", CATCHER_CPP, true)),
    ];
    let s = Arc::new(Session::in_process());
    s.set_debug(DebugOptions::none());
    let libstdcxx = Command::new("g++")
        .arg("-print-file-name=libstdc++.so")
        .output()
        .expect("g++");
    let libstdcxx = PathBuf::from(String::from_utf8_lossy(&libstdcxx.stdout).trim());
    s.add_shared_library(&libstdcxx).unwrap();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    let mut units = Vec::new();
    for (i, (name, path)) in objects.iter().enumerate() {
        jit.link(
            RegionKind::Method,
            &filler(&format!("filler{i}"), 64 + 200 * i),
        )
        .unwrap();
        units.push(
            jit.link_object(RegionKind::Method, name, std::fs::read(path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unit,
        );
    }
    let catcher = |x: u64| {
        s.executor()
            .call(s.lookup("catcher").unwrap(), &[x])
            .unwrap() as i32
    };
    // middle's destructor counts every exit from it, by return or by unwinding.
    assert_eq!(catcher(0), 7);
    assert_eq!(catcher(3), 1203, "caught after unwinding middle");
    let before: Vec<Vec<(ExecutorAddr, u64)>> =
        units.iter().map(|u| s.unit_segments(*u).unwrap()).collect();
    let report = jit.compact(drop_fillers(&s)).unwrap();
    for (u, old) in units.iter().zip(&before) {
        assert!(report.moved.contains(u));
        let now = s.unit_segments(*u).unwrap();
        assert!(
            old.iter().zip(&now).all(|(o, n)| n.0 < o.0 || n.1 == 0),
            "every segment moved: {old:?} -> {now:?}"
        );
    }
    assert_eq!(catcher(0), 7);
    assert_eq!(catcher(4), 1404, "caught through the moved frames");
}

// ---- valgrind ------------------------------------------------------------------------------

/// `u64 NAME(void) { return value + CALLEE(); }` (or just `value`).
fn adder(name: &str, value: u32, callee: Option<&str>, pad: usize) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    let (mut code, edges) = match callee {
        Some(c) => {
            // sub $8,%rsp; call c; add $8,%rsp; add $value,%eax; ret
            let mut code = vec![
                0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08,
            ];
            code.push(0x05);
            code.extend(value.to_le_bytes());
            (
                code,
                vec![InMemoryEdge::new(5, EdgeKind::BranchPCRel32, c, -4)],
            )
        }
        None => {
            let mut code = vec![0xb8];
            code.extend(value.to_le_bytes());
            (code, vec![])
        }
    };
    code.push(0xc3);
    code.resize(code.len() + pad, 0xcc);
    g.add_function(name, code, edges, None);
    JitGraph::new(g)
}

#[test]
fn child_valgrind() {
    if !is_child("child_valgrind") {
        return;
    }
    let s = Arc::new(Session::in_process());
    s.set_debug(DebugOptions {
        valgrind: true,
        ..DebugOptions::none()
    });
    let jit = Jit::new(s.clone(), &ZoneConfig::new(1 << 20)).unwrap();
    // Fillers that run before they are dropped (so valgrind has translated their code), then
    // functions that slide into their places.
    for i in 0..4 {
        jit.link(
            RegionKind::Method,
            &adder(&format!("filler{i}"), 900 + i, None, 32),
        )
        .unwrap();
        jit.link(
            RegionKind::Method,
            &adder(
                &format!("f{i}"),
                i + 1,
                (i > 0).then(|| format!("f{}", i - 1)).as_deref(),
                8,
            ),
        )
        .unwrap();
    }
    let call = |n: &str| s.executor().call(s.lookup(n).unwrap(), &[]).unwrap();
    let fillers: Vec<u64> = (0..4).map(|i| call(&format!("filler{i}"))).collect();
    let before = call("f3");
    let old_f0 = s.lookup("filler0").unwrap();
    let report = jit.compact(drop_fillers(&s)).unwrap();
    // f0 now starts where filler0 was: valgrind must run the new code there, not its old
    // translation of filler0.
    println!(
        "f0 moved onto filler0's old place: {}",
        s.lookup("f0") == Some(old_f0)
    );
    println!(
        "fillers {fillers:?}; f3 {before} -> {}; f0 {}; moved {}",
        call("f3"),
        call("f0"),
        report.moved.len()
    );
}

#[test]
fn valgrind_runs_moved_code_without_errors() {
    if in_child() {
        return;
    }
    let dir = workdir("valgrind");
    let out = run_child_under(
        "valgrind",
        &["--error-exitcode=9", "-q"],
        "child_valgrind",
        &dir,
    );
    let all = text(&out);
    assert!(out.status.success(), "valgrind failed:\n{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("f0 moved onto filler0's old place: true"),
        "{all}"
    );
    assert!(
        stdout.contains("fillers [900, 901, 902, 903]; f3 10 -> 10; f0 1; moved 4"),
        "{all}"
    );
}

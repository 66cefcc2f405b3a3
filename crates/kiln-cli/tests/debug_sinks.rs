//! Test layer 5 (DESIGN.md): the tools see JIT'd code. `kiln run` under `gdb -batch` (pending
//! breakpoints, `bt` with file:line for DWARF and names alone for objects without it, including
//! a Debian archive), under `perf record` with `--perf-map` and `--jitdump` (maps and dumps parsed
//! back, `perf report`/`perf inject --jit`/`perf annotate` name the hot function and its line,
//! the jitted .so carries the function's FDE, and `--call-graph dwarf` unwinds from a JIT'd leaf
//! into its JIT'd caller), and under `valgrind` (a zlib driver runs with no errors). A missing
//! tool fails the test.

mod common;

use common::{run, Ran, KILN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

fn workdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("debug-sinks-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cc(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let s = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&s, src).unwrap();
    let ran = must(
        Command::new("cc")
            .arg("-c")
            .args(flags)
            .arg("-o")
            .arg(&o)
            .arg(&s),
        dir,
        &format!("cc-{name}"),
    );
    assert!(ran.status.success(), "{}", ran.describe());
    o
}

/// Runs a command (a missing tool is a failure), with stdout/stderr kept in `dir`.
fn must(cmd: &mut Command, dir: &Path, tag: &str) -> Ran {
    // The caller's KILN_DEBUG must not change what these tests expect.
    cmd.env_remove("KILN_DEBUG");
    run(cmd, &dir.join(tag), TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn show(r: &Ran) -> String {
    format!(
        "{}\n--- stdout ---\n{}",
        r.describe(),
        common::indent(&common::tail(&r.stdout_text(), 60))
    )
}

const MAIN_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
int nodebug_leaf(int x);
__attribute__((noinline)) int jit_leaf(int x) {
    if (x > 1000) abort();
    return nodebug_leaf(x) + 1;
}
__attribute__((noinline)) int jit_middle(int x) { return jit_leaf(x * 2) + 3; }
int main(int argc, char **argv) {
    printf("result %d\n", jit_middle(argc));
    return 0;
}
"#;

const NODEBUG_C: &str = r#"#include <stdio.h>
static __attribute__((noinline)) int nodebug_static(int x) { printf("in nodebug %d\n", x); return x + 7; }
__attribute__((noinline)) int nodebug_leaf(int x) { return nodebug_static(x) * 2; }
"#;

/// The frames of gdb's `bt` output that belong to the JIT'd program (up to its `main`).
fn jit_frames(stdout: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in stdout.lines().filter(|l| l.starts_with('#')) {
        out.push(l.to_string());
        if l.contains(" main (") || l.contains(" in main (") {
            break;
        }
    }
    out
}

/// The gdb tests' objects: MAIN_C with DWARF, NODEBUG_C without.
fn gdb_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    (
        cc(dir, "main", MAIN_C, &["-g", "-O2"]),
        cc(dir, "nodebug", NODEBUG_C, &["-O2"]),
    )
}

fn gdb(dir: &Path, commands: &[&str], kiln_args: &[&str]) -> Ran {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-ex", "set breakpoint pending on"]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    cmd.arg("--args").arg(KILN).arg("run").args(kiln_args);
    must(&mut cmd, dir, "gdb")
}

#[test]
fn gdb_names_jit_functions_with_lines_and_without_dwarf() {
    let dir = workdir("gdb");
    let (main, nodebug) = gdb_inputs(&dir);
    let (m, n) = (main.to_str().unwrap(), nodebug.to_str().unwrap());
    let r = gdb(
        &dir,
        &[
            "break nodebug_static",
            "run",
            "bt",
            "info symbol $pc",
            "kill",
        ],
        &[m, n],
    );
    let out = r.stdout_text();
    assert!(
        out.lines()
            .any(|l| l.starts_with("Breakpoint 1, ") && l.contains("in nodebug_static ()")),
        "the pending breakpoint on nodebug_static was not hit:\n{}",
        show(&r)
    );
    let frames = jit_frames(&out);
    let frame = |name: &str| {
        frames
            .iter()
            .find(|f| f.contains(&format!(" {name} (")))
            .unwrap_or_else(|| panic!("no frame for {name} in bt:\n{}", show(&r)))
            .clone()
    };
    // No DWARF: names alone.
    for f in ["nodebug_static", "nodebug_leaf"] {
        assert!(!frame(f).contains(" at "), "{}", show(&r));
    }
    // DWARF: names with file:line.
    for (f, line) in [("jit_leaf", 6), ("jit_middle", 8), ("main", 10)] {
        assert!(
            frame(f).ends_with(&format!("main.c:{line}")),
            "{f} should be at main.c:{line}:\n{}",
            show(&r)
        );
    }
    assert!(
        out.contains("nodebug_static in section .text of <in-memory@"),
        "{}",
        show(&r)
    );
}

const LUA_DRIVER: &str = r#"#include <stdio.h>
#include <lua5.4/lua.h>
#include <lua5.4/lauxlib.h>
#include <lua5.4/lualib.h>
int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    int r = luaL_dostring(L, "local ok = pcall(function() return 1 end) return ok");
    printf("lua %d\n", r);
    lua_close(L);
    return r;
}
"#;

#[test]
fn gdb_names_debian_archive_functions() {
    let dir = workdir("gdb-lua");
    let drv = cc(&dir, "driver", LUA_DRIVER, &["-g", "-O2"]);
    let r = gdb(
        &dir,
        &["break luaB_pcall", "run", "bt", "kill"],
        &[
            drv.to_str().unwrap(),
            "/usr/lib/x86_64-linux-gnu/liblua5.4.a",
            "-lm",
            "-ldl",
        ],
    );
    let out = r.stdout_text();
    assert!(
        out.lines()
            .any(|l| l.starts_with("Breakpoint 1, ") && l.contains("in luaB_pcall ()")),
        "the pending breakpoint on luaB_pcall (liblua5.4.a, no DWARF) was not hit:\n{}",
        show(&r)
    );
    let frames = jit_frames(&out);
    for f in ["luaD_precall", "lua_pcallk"] {
        assert!(
            frames.iter().any(|l| l.contains(&format!(" in {f} ()"))),
            "no frame named {f}:\n{}",
            show(&r)
        );
    }
    assert!(
        frames
            .iter()
            .any(|l| l.contains(" main () at ") && l.contains("driver.c:")),
        "{}",
        show(&r)
    );
    assert!(
        !frames.iter().any(|l| l.contains(" ?? ")),
        "unnamed JIT'd frames:\n{}",
        show(&r)
    );
}

const HOT_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) unsigned long hot_loop(unsigned long n) {
    unsigned long acc = 0;
    for (unsigned long i = 0; i < n; i++) {
        acc = acc * 6364136223846793005UL + i;
        acc ^= acc >> 17;
    }
    return acc;
}
int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 1000;
    printf("pid %d\n", (int)getpid());
    printf("%lu\n", hot_loop(n) & 1);
    return 0;
}
"#;

/// The PID the JIT'd program printed.
fn printed_pid(r: &Ran) -> u32 {
    r.stdout_text()
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the program did not print its pid:\n{}", show(r)))
}

/// (value, size) of a symbol of an object, from `nm -S`.
fn nm_symbol(dir: &Path, obj: &Path, name: &str) -> (u64, u64) {
    let r = must(Command::new("nm").arg("-S").arg(obj), dir, "nm");
    r.stdout_text()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == name).then(|| {
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    u64::from_str_radix(f[1], 16).unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("nm -S: no {name}:\n{}", show(&r)))
}

/// `perf` with its caches kept in `dir` (perf writes build-id caches under $HOME).
fn perf(dir: &Path, args: &[&str], tag: &str) -> Ran {
    let r = must(
        Command::new("perf")
            .args(args)
            .env("HOME", dir)
            .current_dir(dir),
        dir,
        tag,
    );
    assert!(r.status.success(), "{}", show(&r));
    r
}

/// `perf inject --jit`: perf.data with the JIT'd code of the jitdump turned into .so files.
fn perf_inject(dir: &Path, data: &Path) -> PathBuf {
    let injected = dir.join("perf.jit.data");
    perf(
        dir,
        &[
            "inject",
            "--jit",
            "-i",
            data.to_str().unwrap(),
            "-o",
            injected.to_str().unwrap(),
        ],
        "perf-inject",
    );
    injected
}

/// The `perf report --stdio` lines that carry samples.
fn report_lines(r: &Ran) -> Vec<String> {
    r.stdout_text()
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn perf_map_lists_functions_and_perf_report_names_them() {
    perf_map_case("perf-map", &[]);
}

/// Out of process the executor writes the map, under its own pid; with copied memory its slabs
/// are shared anonymous memory, which perf resolves through the map as in process. (With shared
/// memory the code lives in a memfd, which perf takes for a file it cannot read: docs/protocol.md.)
#[test]
fn perf_map_out_of_process() {
    perf_map_case("perf-map-oop", &["--executor", "spawn", "--memory", "copy"]);
}

fn perf_map_case(tag: &str, mode: &[&str]) {
    let dir = workdir(tag);
    let hot = cc(&dir, "hot", HOT_C, &["-g", "-O2"]);
    let data = dir.join("perf.data");
    let r = perf(
        &dir,
        &[
            "record",
            "-e",
            "cpu-clock",
            "-o",
            data.to_str().unwrap(),
            "--",
            KILN,
            "run",
        ]
        .into_iter()
        .chain(mode.iter().copied())
        .chain(["--perf-map", hot.to_str().unwrap(), "--", "150000000"])
        .collect::<Vec<_>>(),
        "perf-record",
    );
    let pid = printed_pid(&r);
    let map_path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let map = std::fs::read_to_string(&map_path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", map_path.display(), show(&r)));
    let entries: Vec<(u64, u64, String)> = map
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let (a, s, n) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            (
                u64::from_str_radix(a, 16).unwrap_or_else(|_| panic!("bad line {l:?}")),
                u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad line {l:?}")),
                n.to_string(),
            )
        })
        .collect();
    let (_, size) = nm_symbol(&dir, &hot, "hot_loop");
    let hot_entry = entries
        .iter()
        .find(|e| e.2 == "hot_loop")
        .unwrap_or_else(|| panic!("no hot_loop in {}:\n{map}", map_path.display()));
    assert_eq!(hot_entry.1, size, "hot_loop's size is its st_size");
    assert!(entries.iter().any(|e| e.2 == "main" && e.1 > 0), "{map}");
    let report = perf(
        &dir,
        &[
            "report",
            "-i",
            data.to_str().unwrap(),
            "--stdio",
            "--sort",
            "sym",
        ],
        "perf-report",
    );
    let top = report_lines(&report);
    assert!(
        top.first().is_some_and(|l| l.contains("hot_loop")),
        "perf report does not put hot_loop first:\n{}",
        show(&report)
    );
    let _ = std::fs::remove_file(&map_path);
}

/// jitdump file, parsed: header fields and records (id, timestamp, body).
struct Dump {
    pid: u32,
    mach: u32,
    records: Vec<(u32, u64, Vec<u8>)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn cstr(b: &[u8], at: usize) -> (String, usize) {
    let n = b[at..]
        .iter()
        .position(|c| *c == 0)
        .expect("NUL-terminated string");
    (
        String::from_utf8_lossy(&b[at..at + n]).into_owned(),
        at + n + 1,
    )
}

/// Parses a jitdump file as the Linux kernel's jitdump-specification.txt describes it.
fn parse_jitdump(b: &[u8]) -> Dump {
    assert!(b.len() >= 40, "jitdump shorter than its header");
    assert_eq!(u32_at(b, 0), 0x4A69_5444, "magic");
    assert_eq!(u32_at(b, 4), 1, "version");
    let header_size = u32_at(b, 8) as usize;
    assert_eq!(header_size, 40, "total_size of the header");
    let (mach, pid) = (u32_at(b, 12), u32_at(b, 20));
    assert_eq!(u64_at(b, 32), 0, "flags: no arch timestamp");
    let mut records = Vec::new();
    let mut at = header_size;
    while at < b.len() {
        assert!(at + 16 <= b.len(), "truncated record header at {at}");
        let (id, size, ts) = (u32_at(b, at), u32_at(b, at + 4) as usize, u64_at(b, at + 8));
        assert!(
            size >= 16 && at + size <= b.len(),
            "record at {at}: size {size}"
        );
        records.push((id, ts, b[at + 16..at + size].to_vec()));
        at += size;
    }
    Dump { pid, mach, records }
}

#[test]
fn jitdump_parses_back_and_perf_inject_names_the_source_line() {
    let dir = workdir("jitdump");
    let hot = cc(&dir, "hot", HOT_C, &["-g", "-O2"]);
    let data = dir.join("perf.data");
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let r = perf(
        &dir,
        &[
            "record",
            "-k",
            "mono",
            "-e",
            "cpu-clock",
            "-o",
            data.to_str().unwrap(),
            "--",
            KILN,
            "run",
            &format!("--jitdump={}", dumps.display()),
            hot.to_str().unwrap(),
            "--",
            "150000000",
        ],
        "perf-record",
    );
    let pid = printed_pid(&r);
    let path = dumps.join(format!("jit-{pid}.dump"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dump = parse_jitdump(&bytes);
    assert_eq!((dump.pid, dump.mach), (pid, 62));

    // Records: timestamps never go back; the file ends with JIT_CODE_CLOSE; each load has a
    // unique code index and the executor's pid.
    assert!(dump.records.windows(2).all(|w| w[0].1 <= w[1].1));
    assert_eq!(
        dump.records.last().map(|r| r.0),
        Some(3),
        "JIT_CODE_CLOSE last"
    );
    let mut indexes = Vec::new();
    let mut hot_load = None;
    let mut hot_index = 0;
    for (i, (id, _, body)) in dump.records.iter().enumerate() {
        if *id != 0 {
            continue;
        }
        assert_eq!(u32_at(body, 0), pid, "JIT_CODE_LOAD pid");
        let (vma, addr, size, index) = (
            u64_at(body, 8),
            u64_at(body, 16),
            u64_at(body, 24),
            u64_at(body, 32),
        );
        assert_eq!(vma, addr);
        indexes.push(index);
        let (name, code_at) = cstr(body, 40);
        assert_eq!(body.len() - code_at, size as usize, "{name}: code bytes");
        if name == "hot_loop" {
            hot_load = Some((i, addr, body[code_at..].to_vec()));
            hot_index = index;
        }
    }
    let mut unique = indexes.clone();
    unique.dedup();
    assert_eq!(unique.len(), indexes.len(), "code indexes {indexes:?}");
    let (i, addr, code) = hot_load.expect("a JIT_CODE_LOAD for hot_loop");

    // Its code is the object's: hot_loop has no relocations, so the bytes are those of .text.
    let (value, size) = nm_symbol(&dir, &hot, "hot_loop");
    let text = dir.join("text.bin");
    let ran = must(
        Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&hot)
            .arg(&text),
        &dir,
        "objcopy",
    );
    assert!(ran.status.success(), "{}", show(&ran));
    let text = std::fs::read(&text).unwrap();
    assert_eq!(code, text[value as usize..(value + size) as usize]);

    // Just before it, JIT_CODE_UNWINDING_INFO: .eh_frame then .eh_frame_hdr, whose one table
    // entry is the FDE of hot_loop, at the addresses perf gives them in its .so (code at 0,
    // .eh_frame at align8(size)).
    let (id, _, unwind) = &dump.records[i - 1];
    assert_eq!(
        *id, 4,
        "a JIT_CODE_UNWINDING_INFO record precedes hot_loop's load"
    );
    let (data_size, hdr_size) = (u64_at(unwind, 0) as usize, u64_at(unwind, 8) as usize);
    assert!(hdr_size == 20 && data_size > hdr_size && 24 + data_size <= unwind.len());
    assert_eq!((unwind.len() + 16) % 8, 0, "padded to 8 bytes");
    let hdr = &unwind[24 + data_size - hdr_size..24 + data_size];
    assert_eq!(&hdr[..4], &[1, 0x1b, 0x03, 0x3b]);
    assert_eq!(u32_at(hdr, 8), 1, "one FDE");
    let hdr_at = size.next_multiple_of(8) as i64 + (data_size - hdr_size) as i64;
    let i32_at = |b: &[u8], at: usize| i64::from(u32_at(b, at) as i32);
    assert_eq!(
        hdr_at + i32_at(hdr, 12),
        0,
        "the table's entry is hot_loop's start"
    );

    // The JIT_CODE_DEBUG_INFO record before that: lines of hot.c inside the function.
    let (id, _, dbg) = &dump.records[i - 2];
    assert_eq!(
        *id, 2,
        "a JIT_CODE_DEBUG_INFO record precedes hot_loop's load"
    );
    assert_eq!(u64_at(dbg, 0), addr);
    let n = u64_at(dbg, 8);
    assert!(n > 0);
    let mut at = 16;
    let mut lines = Vec::new();
    for _ in 0..n {
        let (ea, line) = (u64_at(dbg, at), u32_at(dbg, at + 8));
        let (file, next) = cstr(dbg, at + 16);
        assert!((addr..addr + size).contains(&ea), "entry address {ea:#x}");
        assert!(file.ends_with("/hot.c"), "{file}");
        lines.push(line);
        at = next;
    }
    assert_eq!(at, dbg.len());
    assert!(
        lines.iter().all(|l| (4..=11).contains(l)) && lines.contains(&7),
        "hot_loop spans lines 4..=11 of hot.c: {lines:?}"
    );

    // perf: inject the JIT'd code, then the report names hot_loop with a line of hot.c, and
    // annotate disassembles it.
    let injected = perf_inject(&dir, &data);
    // perf wrote the unwinding data into hot_loop's .so: the FDE spans the function's symbol.
    let so = dumps.join(format!("jitted-{pid}-{hot_index}.so"));
    let (sym, fde) = so_symbol_and_fde(&dir, &so, "hot_loop");
    assert_eq!(
        fde,
        (sym.0, sym.0 + size),
        "FDE of hot_loop in {}",
        so.display()
    );
    let report = perf(
        &dir,
        &[
            "report",
            "-i",
            injected.to_str().unwrap(),
            "--stdio",
            "--sort",
            "sym,srcline",
        ],
        "perf-report",
    );
    assert!(
        report_lines(&report)
            .first()
            .is_some_and(|l| l.contains("hot_loop") && l.contains("hot.c:")),
        "perf report does not name hot_loop with its source line:\n{}",
        show(&report)
    );
    let annotate = perf(
        &dir,
        &[
            "annotate",
            "-i",
            injected.to_str().unwrap(),
            "--stdio",
            "-s",
            "hot_loop",
        ],
        "perf-annotate",
    );
    assert!(
        annotate.stdout_text().contains("imul"),
        "perf annotate does not disassemble hot_loop:\n{}",
        show(&annotate)
    );
}

/// (value, size) of `name` in an ELF file's symbol table, and the pc range of its only FDE,
/// with `readelf`.
fn so_symbol_and_fde(dir: &Path, so: &Path, name: &str) -> ((u64, u64), (u64, u64)) {
    let syms = must(Command::new("readelf").arg("-sW").arg(so), dir, "readelf-s");
    let sym = syms
        .stdout_text()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 8 && f[7] == name).then(|| {
                (
                    u64::from_str_radix(f[1], 16).unwrap(),
                    f[2].parse::<u64>().unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("no {name} in {}:\n{}", so.display(), show(&syms)));
    let frames = must(
        Command::new("readelf").arg("--debug-dump=frames").arg(so),
        dir,
        "readelf-frames",
    );
    let fdes: Vec<(u64, u64)> = frames
        .stdout_text()
        .lines()
        .filter(|l| l.contains(" FDE "))
        .filter_map(|l| {
            let (a, b) = l.split_once("pc=")?.1.split_once("..")?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b.trim(), 16).ok()?,
            ))
        })
        .collect();
    assert_eq!(
        fdes.len(),
        1,
        "one FDE in {}:\n{}",
        so.display(),
        show(&frames)
    );
    (sym, fdes[0])
}

/// A caller and, in a second object linked after it, a hot leaf that saves two registers (so
/// the CFA moves: unwinding it needs its CFI, not a frame pointer). No calls into the host, so
/// no stub follows the leaf: it is the last code of the unit.
const CALLER_C: &str = r#"unsigned long jit_leaf(unsigned long n);
volatile unsigned long jit_result;
__attribute__((noinline)) unsigned long jit_parent(unsigned long n) {
    unsigned long acc = 0;
    for (unsigned long k = 0; k < 100; k++) acc += jit_leaf(n / 100 + (acc & 1));
    return acc;
}
int main(void) {
    jit_result = jit_parent(150000000UL);
    return 0;
}
"#;

const LEAF_C: &str = r#"unsigned long jit_leaf(unsigned long n) {
    unsigned long acc = n;
    __asm__ volatile("" ::: "rbx", "r12");
    for (unsigned long i = 0; i < n; i++) {
        acc = acc * 6364136223846793005UL + i;
        acc ^= acc >> 17;
    }
    return acc;
}
"#;

#[test]
fn perf_call_graph_dwarf_unwinds_through_jit_code() {
    let dir = workdir("jitdump-unwind");
    let flags = [
        "-O2",
        "-fomit-frame-pointer",
        "-fno-reorder-blocks-and-partition",
    ];
    let caller = cc(&dir, "caller", CALLER_C, &flags);
    let leaf = cc(&dir, "leaf", LEAF_C, &flags);
    let data = dir.join("perf.data");
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    perf(
        &dir,
        &[
            "record",
            "-k",
            "mono",
            "-e",
            "cpu-clock",
            "-F",
            "1000",
            "--call-graph",
            "dwarf,4096",
            "-o",
            data.to_str().unwrap(),
            "--",
            KILN,
            "run",
            &format!("--jitdump={}", dumps.display()),
            caller.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ],
        "perf-record",
    );
    let dump_path = std::fs::read_dir(&dumps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "dump"))
        .expect("a jit-PID.dump");
    let dump = parse_jitdump(&std::fs::read(&dump_path).unwrap());
    // perf 6.1 unwinds with libunwind, which reads the FDE through perf's mapping of the
    // jitted .so: jit_leaf's mapping must reach over its unwinding data (mapped_size > 0),
    // which it can because nothing follows it.
    let leaf_at = dump
        .records
        .iter()
        .position(|(id, _, body)| *id == 0 && cstr(body, 40).0 == "jit_leaf")
        .expect("a JIT_CODE_LOAD for jit_leaf");
    let (id, _, unwind) = &dump.records[leaf_at - 1];
    assert_eq!(*id, 4, "unwinding info precedes jit_leaf's load");
    assert_eq!(
        u64_at(unwind, 16),
        u64_at(unwind, 0),
        "jit_leaf's unwinding data is mapped"
    );

    let injected = perf_inject(&dir, &data);
    let report = perf(
        &dir,
        &[
            "report",
            "-i",
            injected.to_str().unwrap(),
            "--stdio",
            "--no-children",
            "-G",
        ],
        "perf-report",
    );
    // The hot entry is jit_leaf, and its caller-first call graph has jit_parent above it.
    let out = report.stdout_text();
    assert!(
        report_lines(&report)
            .first()
            .is_some_and(|l| l.contains("jit_leaf")),
        "perf report does not put jit_leaf first:\n{}",
        show(&report)
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        lines
            .windows(2)
            .any(|w| w[0] == "---jit_parent" && w[1] == "jit_leaf"),
        "perf report -G does not show jit_parent calling jit_leaf:\n{}",
        show(&report)
    );
}

#[test]
fn valgrind_runs_zlib_driver_without_errors() {
    let dir = workdir("valgrind");
    let src = common::repo_root().join("tests/corpus/drivers/driver_zlib.c");
    let drv = dir.join("zlib.o");
    let ran = must(
        Command::new("cc")
            .args(["-c", "-g", "-O2", "-o"])
            .arg(&drv)
            .arg(&src),
        &dir,
        "cc",
    );
    assert!(ran.status.success(), "{}", show(&ran));
    let libz = "/usr/lib/x86_64-linux-gnu/libz.a";
    let native = dir.join("native");
    let ran = must(
        Command::new("cc")
            .arg("-o")
            .arg(&native)
            .arg(&drv)
            .arg(libz),
        &dir,
        "link",
    );
    assert!(ran.status.success(), "{}", show(&ran));
    let expected = must(&mut Command::new(&native), &dir, "native");
    let r = must(
        Command::new("valgrind")
            .args(["--error-exitcode=9", "-q", KILN, "run", "--valgrind"])
            .arg(&drv)
            .arg(libz),
        &dir,
        "valgrind",
    );
    assert_eq!(r.code(), Some(0), "valgrind reported errors:\n{}", show(&r));
    assert_eq!(r.stdout, expected.stdout, "{}", show(&r));
}

#[test]
fn kiln_debug_is_checked_and_enables_sinks() {
    let dir = workdir("env");
    let hot = cc(&dir, "hot", HOT_C, &["-O2"]);
    // Not through `must`, which clears KILN_DEBUG.
    let r = run(
        Command::new(KILN)
            .arg("run")
            .arg(&hot)
            .env("KILN_DEBUG", "gdb,bogus"),
        &dir.join("bad"),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.code(), Some(125), "{}", show(&r));
    assert!(
        r.stderr.contains("KILN_DEBUG") && r.stderr.contains("bogus"),
        "{}",
        show(&r)
    );
    let r = run(
        Command::new(KILN)
            .arg("run")
            .arg(&hot)
            .env("KILN_DEBUG", "none,perfmap"),
        &dir.join("ok"),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.code(), Some(0), "{}", show(&r));
    let map = PathBuf::from(format!("/tmp/perf-{}.map", printed_pid(&r)));
    let text = std::fs::read_to_string(&map).unwrap_or_else(|e| panic!("{}: {e}", map.display()));
    assert!(text.lines().any(|l| l.ends_with(" hot_loop")), "{text}");
    let _ = std::fs::remove_file(&map);
}

/// Out of process the code is registered with gdb's JIT interface in the executor: gdb following
/// `kiln run --executor spawn` into its child stops at a pending breakpoint in JIT'd code, with
/// file and line; killing the executor there makes kiln say so.
#[test]
fn gdb_follows_into_the_executor() {
    let dir = workdir("gdb-oop");
    let (main, nodebug) = gdb_inputs(&dir);
    let (m, n) = (main.to_str().unwrap(), nodebug.to_str().unwrap());
    let r = gdb(
        &dir,
        &[
            "set follow-fork-mode child",
            "break jit_leaf",
            "run",
            "bt",
            "kill",
        ],
        &["--executor", "spawn", m, n],
    );
    let out = r.stdout_text();
    assert!(
        out.lines()
            .any(|l| l.contains("hit Breakpoint 1, ") && l.contains("jit_leaf")),
        "the pending breakpoint on jit_leaf was not hit in the executor:\n{}",
        show(&r)
    );
    let frames = jit_frames(&out);
    assert!(
        frames
            .iter()
            .any(|f| f.contains(" jit_middle (") && f.ends_with("main.c:8")),
        "{}",
        show(&r)
    );
    assert!(
        r.stderr.contains("killed by signal 9 (SIGKILL)"),
        "kiln did not report the killed executor:\n{}",
        show(&r)
    );
}

/// llvm-jitlink's `-perf-support`: the jitdump goes where LLVM's perf support puts it,
/// `$JITDUMPDIR/.debug/jit/llvm-IR-jit-DATE-XXXXXX/jit-PID.dump`, a new directory per run.
#[test]
fn perf_support_writes_the_jitdump_where_llvm_does() {
    let dir = workdir("perf-support");
    let hot = cc(&dir, "hot", HOT_C, &["-g", "-O2"]);
    let base = dir.join("dumps");
    let mut pids = Vec::new();
    for (i, spelling) in ["-perf-support", "--perf-support"].iter().enumerate() {
        let r = must(
            Command::new(KILN)
                .args(["run", spelling])
                .arg(&hot)
                .args(["--", "1000"])
                .env("JITDUMPDIR", &base),
            &dir,
            &format!("kiln-{i}"),
        );
        assert_eq!(r.code(), Some(0), "{}", show(&r));
        pids.push(printed_pid(&r));
    }
    let jit = base.join(".debug/jit");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&jit)
        .unwrap_or_else(|e| panic!("{}: {e}", jit.display()))
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "one directory per run: {dirs:?}");
    let mut found = Vec::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_str().unwrap();
        let (date, random) = name
            .strip_prefix("llvm-IR-jit-")
            .and_then(|r| r.split_once('-'))
            .unwrap_or_else(|| panic!("{name}: not llvm-IR-jit-DATE-XXXXXX"));
        assert!(
            date.len() == 8 && date.bytes().all(|c| c.is_ascii_digit()),
            "{name}"
        );
        assert!(
            random.len() == 6 && random.bytes().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let dump = parse_jitdump(&std::fs::read(&p).unwrap());
            assert_eq!(
                p.file_name().unwrap().to_str().unwrap(),
                format!("jit-{}.dump", dump.pid)
            );
            found.push(dump.pid);
        }
    }
    found.sort();
    pids.sort();
    assert_eq!(found, pids);
    // With --jitdump as well, the directory would be ambiguous.
    let r = must(
        Command::new(KILN)
            .args(["run", "-perf-support", "--jitdump=x"])
            .arg(&hot),
        &dir,
        "both",
    );
    assert_eq!(r.code(), Some(2), "{}", show(&r));
}

//! `kiln bench --remote`: what running the linked code in another process costs.
//!
//! Like `kiln bench`, it prints numbers and asserts nothing about time. Four measurements:
//!
//! 1. Whole processes, per corpus driver (and a tiny object): `kiln run --noexec` in process, with
//!    `--executor spawn --memory shared` and with `--memory copy`, and `llvm-jitlink -noexec` in
//!    process and with `-oop-executor`: wall time (median and minimum of `--runs`, one warm-up
//!    each, the five commands taking turns to go first), then each tool's own link-phase timer
//!    (kiln's `--show-stats` total, llvm-jitlink's `-show-times` total), and kiln's phases for
//!    SQLite.
//! 2. Round trips through the library: a [`Session`] on the in-process executor and on
//!    [`RemoteExecutor`]s (shared, copy) links a tiny object and removes it `--iterations` times;
//!    µs per link+remove, per executor call by kind, and per bare `lookup("malloc")`.
//! 3. Executor start-up: spawn to completed handshake, and `exit(0)`, `--spawns` times.
//! 4. Executor size: VmRSS of a kiln-executor after its handshake and after SQLite is linked into
//!    it, and the peak RSS (`/usr/bin/time`) of kiln-executor and llvm-jitlink-executor for the
//!    same whole-process runs.
//!
//! See docs/bench.md.

use super::{
    check_corpus, driver_row, first_error_line, host_inputs, kiln_link_ms, llvm_jitlink_version,
    llvm_link_ms, median, min, ms, run_captured, time_once, BenchArgs, Cmd, Driver, DRIVERS,
};
use anyhow::{bail, Context, Result};
use kiln::{Executor, Session};
use kiln_remote::{MemoryMode, RemoteExecutor};
use kiln_target::{
    Action, AllocId, ExecutorAddr, FinalizeRequest, LibraryId, Placement, SlabId, SlabInfo,
    SlabWrite, TargetInfo,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tiny program of the round-trip loop and the `(tiny)` row: one external reference
/// (`strlen`), `.eh_frame`, a `main`.
const TINY_C: &str = "\
#include <string.h>
int kiln_bench_tiny(const char *s) { return (int)strlen(s) + 1; }
int main(int argc, char **argv) { (void)argc; return kiln_bench_tiny(argv[0]) == 0; }
";

/// Column order of the whole-process measurements.
const TOOLS: [&str; 5] = [
    "kiln in-proc",
    "kiln shared",
    "kiln copy",
    "llvm in-proc",
    "llvm oop",
];
const K_IN: usize = 0;
const K_SHARED: usize = 1;
const K_COPY: usize = 2;
const L_IN: usize = 3;
const L_OOP: usize = 4;

/// What was measured of one command line.
#[derive(Default)]
struct Measured {
    wall_ms: Vec<f64>,
    link_ms: Vec<f64>,
    /// kiln's `--show-stats` phases, one list per run.
    phases: Vec<Vec<(String, f64)>>,
    failed: Option<String>,
}

struct Row {
    name: String,
    cmds: [Cmd; 5],
    results: [Measured; 5],
}

pub fn run(a: BenchArgs) -> Result<()> {
    let kiln = std::env::current_exe().context("cannot find the kiln executable")?;
    check_corpus(&a.corpus)?;
    let llvm_version = llvm_jitlink_version(&a.llvm_jitlink)?;
    let llvm_executor = a.llvm_jitlink.with_file_name("llvm-jitlink-executor");
    if !llvm_executor.is_file() {
        bail!(
            "{} is missing (it comes with llvm-jitlink in Debian's llvm-14)",
            llvm_executor.display()
        );
    }
    for d in &a.drivers {
        if !DRIVERS.iter().any(|x| x.name == d) {
            let names: Vec<_> = DRIVERS.iter().map(|x| x.name).collect();
            bail!("unknown driver {d:?} (the corpus has {})", names.join(", "));
        }
    }
    let (exec_program, exec_args) = crate::executor_program()?;
    let tmp = std::env::temp_dir().join(format!("kiln-bench-remote-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let r = (|| {
        let tiny = compile_tiny(&tmp)?;
        println!(
            "kiln bench --remote: {} timed runs per command after 1 warm-up, taking turns; {} \
             library iterations; {} spawns",
            a.runs, a.iterations, a.spawns
        );
        println!("  kiln:                  {}", kiln.display());
        println!(
            "  executor (spawn):      {}{}",
            exec_program.display(),
            exec_args
                .iter()
                .map(|s| format!(" {s}"))
                .collect::<String>()
        );
        println!(
            "  llvm-jitlink:          {} ({llvm_version})",
            a.llvm_jitlink.display()
        );
        println!("  llvm-jitlink-executor: {}", llvm_executor.display());
        println!();

        // 1. Whole processes.
        let mut rows = vec![tiny_row(&tiny, &kiln, &a.llvm_jitlink, &llvm_executor)?];
        let drivers: Vec<&Driver> = DRIVERS
            .iter()
            .filter(|d| a.drivers.is_empty() || a.drivers.iter().any(|x| x == d.name))
            .collect();
        for d in &drivers {
            let base = driver_row(d, &a.corpus, &kiln, &a.llvm_jitlink)?;
            rows.push(row(d.name, base.kiln, base.llvm, &llvm_executor));
        }
        for row in &mut rows {
            eprintln!("kiln bench --remote: {} ...", row.name);
            if a.verbose {
                for c in &row.cmds {
                    eprintln!("  {}", c.display());
                }
            }
            measure(row, a.runs)?;
        }
        print_whole_process(&rows, a.runs);
        print_phases(&rows, a.runs);

        // 2. Round trips through the library.
        eprintln!("kiln bench --remote: round trips ...");
        let tiny_bytes =
            std::fs::read(&tiny).with_context(|| format!("cannot read {}", tiny.display()))?;
        let mut loops = Vec::new();
        for (name, mode) in [
            ("in-process", None),
            ("spawn shared", Some(MemoryMode::Shared)),
            ("spawn copy", Some(MemoryMode::Copy)),
        ] {
            loops.push((
                name,
                round_trips(&exec_program, &exec_args, mode, &tiny_bytes, a.iterations)?,
            ));
        }
        let echo = [
            ("(echo: unix socket, thread)", unix_echo(a.iterations)?),
            ("(echo: pipes, cat process)", cat_echo(a.iterations)?),
        ];
        print_round_trips(&loops, &echo, a.iterations);

        // 3. Start-up.
        eprintln!("kiln bench --remote: start-up ...");
        let startup = startup(&exec_program, &exec_args, a.spawns)?;
        print_startup(&startup, a.spawns, &rows[0]);

        // 4. Size.
        eprintln!("kiln bench --remote: size ...");
        if let Some(d) = drivers.iter().find(|d| d.name == "sqlite") {
            library_sqlite(&a, &exec_program, &exec_args, d)?;
        }
        print_size(&exec_program, &exec_args, &rows, &llvm_executor, &tmp)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

fn compile_tiny(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("tiny.c");
    let obj = dir.join("tiny.o");
    std::fs::write(&src, TINY_C).with_context(|| format!("cannot write {}", src.display()))?;
    let out = Command::new("cc")
        .args(["-c", "-O2", "-o"])
        .arg(&obj)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .context("cannot run cc to compile the tiny object")?;
    if !out.status.success() {
        bail!(
            "cc failed to compile the tiny object: {}",
            first_error_line(&out.stderr, out.status)
        );
    }
    Ok(obj)
}

/// Insert `extra` after the first `at` arguments.
fn insert(cmd: &Cmd, at: usize, extra: &[&str]) -> Cmd {
    let mut c = cmd.clone();
    for (i, e) in extra.iter().enumerate() {
        c.args.insert(at + i, e.into());
    }
    c
}

/// The five command lines from the in-process kiln (`kiln run --noexec ...`) and llvm-jitlink
/// (`llvm-jitlink -noexec ...`) ones.
fn row(name: &str, kiln: Cmd, llvm: Cmd, llvm_executor: &Path) -> Row {
    let spawn = |mode| insert(&kiln, 2, &["--executor", "spawn", "--memory", mode]);
    let oop = format!("-oop-executor={}", llvm_executor.display());
    Row {
        name: name.to_string(),
        cmds: [
            kiln.clone(),
            spawn("shared"),
            spawn("copy"),
            llvm.clone(),
            insert(&llvm, 0, &[&oop]),
        ],
        results: Default::default(),
    }
}

fn tiny_row(tiny: &Path, kiln: &Path, llvm_jitlink: &Path, llvm_executor: &Path) -> Result<Row> {
    let k = Cmd::new(kiln).arg("run").arg("--noexec").arg(tiny);
    let mut l = Cmd::new(llvm_jitlink)
        .arg("-noexec")
        .arg("-no-process-syms")
        .arg(tiny);
    for a in host_inputs(&[])? {
        l = l.arg(a);
    }
    Ok(row("(tiny)", k, l, llvm_executor))
}

fn is_kiln(tool: usize) -> bool {
    tool < L_IN
}

fn measure(row: &mut Row, runs: u32) -> Result<()> {
    let n = row.cmds.len();
    for (cmd, m) in row.cmds.iter().zip(&mut row.results) {
        if let Err(e) = run_captured(cmd)? {
            m.failed = Some(e);
        }
    }
    let ok: Vec<bool> = row.results.iter().map(|m| m.failed.is_none()).collect();
    // Take turns: run i starts with command i mod 5.
    let order = |i: usize| (0..n).map(move |k| (i + k) % n);
    for i in 0..runs as usize {
        for t in order(i) {
            if ok[t] {
                let w = time_once(&row.cmds[t])?;
                row.results[t].wall_ms.push(w);
            }
        }
    }
    let with_stats: Vec<Cmd> = row
        .cmds
        .iter()
        .enumerate()
        .map(|(t, c)| {
            if is_kiln(t) {
                c.clone().arg("--show-stats")
            } else {
                c.clone().arg("-show-times")
            }
        })
        .collect();
    for i in 0..runs as usize {
        for t in order(i) {
            if !ok[t] {
                continue;
            }
            let cmd = &with_stats[t];
            let stderr = run_captured(cmd)?
                .map_err(|e| anyhow::anyhow!("`{}` failed: {e}", cmd.display()))?;
            let parse = if is_kiln(t) {
                kiln_link_ms
            } else {
                llvm_link_ms
            };
            let total = parse(&stderr).with_context(|| {
                format!(
                    "no link time in the output of `{}`:\n{stderr}",
                    cmd.display()
                )
            })?;
            let m = &mut row.results[t];
            m.link_ms.push(total);
            if is_kiln(t) {
                m.phases.push(kiln_phases(&stderr));
            }
        }
    }
    Ok(())
}

/// The `phases:` lines of kiln's `--show-stats` (`    parse    0.161 ms`), total excluded.
fn kiln_phases(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .skip_while(|l| l.trim() != "phases:")
        .skip(1)
        .filter_map(|l| {
            let (name, v) = l.trim().strip_suffix("ms")?.trim().rsplit_once(' ')?;
            Some((name.trim().to_string(), v.trim().parse().ok()?))
        })
        .filter(|(n, _)| n != "total")
        .collect()
}

/// `num / den` as `1.23x`.
fn rx(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}x", n / d),
        _ => "-".to_string(),
    }
}

/// Columns aligned (the first to the left), a rule under the header.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut all = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    all.extend(rows.iter().cloned());
    let widths: Vec<usize> = (0..header.len())
        .map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, r) in all.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("{}", rule.join("  "));
        }
    }
}

/// One row per driver, one column per tool.
fn print_per_tool(rows: &[Row], cell: impl Fn(&Measured) -> String) {
    let mut header = vec!["driver"];
    header.extend(TOOLS);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            std::iter::once(r.name.clone())
                .chain(r.results.iter().map(&cell))
                .collect()
        })
        .collect();
    print_table(&header, &table);
}

fn print_whole_process(rows: &[Row], runs: u32) {
    let wall = |m: &Measured| match (median(&m.wall_ms), min(&m.wall_ms)) {
        (Some(med), Some(lo)) => format!("{} ({})", ms(med), ms(lo)),
        _ if m.failed.is_some() => "failed".to_string(),
        _ => "-".to_string(),
    };
    println!("Whole process: wall ms, median (min) of {runs} runs");
    print_per_tool(rows, wall);
    println!();

    println!("Ratios of the medians above (wall), and of the link phases (link)");
    let header = [
        "driver",
        "shared/in-proc",
        "copy/in-proc",
        "copy/shared",
        "llvm oop/in-proc",
        "llvm-oop/kiln-shared",
        "llvm-oop/kiln-copy",
    ];
    let mut table = Vec::new();
    for r in rows {
        for (what, f) in [
            (
                "wall",
                (|m: &Measured| median(&m.wall_ms)) as fn(&Measured) -> Option<f64>,
            ),
            ("link", |m: &Measured| median(&m.link_ms)),
        ] {
            let v: Vec<Option<f64>> = r.results.iter().map(f).collect();
            table.push(vec![
                format!("{} {what}", r.name),
                rx(v[K_SHARED], v[K_IN]),
                rx(v[K_COPY], v[K_IN]),
                rx(v[K_COPY], v[K_SHARED]),
                rx(v[L_OOP], v[L_IN]),
                rx(v[L_OOP], v[K_SHARED]),
                rx(v[L_OOP], v[K_COPY]),
            ]);
        }
    }
    print_table(&header, &table);
    println!();

    println!(
        "Link phase: each tool's own timer, ms, median of {runs} runs (kiln --show-stats \
         \"total\": parse to finalize, executor round trips included; llvm-jitlink -show-times \
         total)"
    );
    print_per_tool(rows, |m| {
        median(&m.link_ms).map_or_else(
            || if m.failed.is_some() { "failed" } else { "-" }.to_string(),
            ms,
        )
    });
    for r in rows {
        for (t, m) in r.results.iter().enumerate() {
            if let Some(e) = &m.failed {
                println!("{}: {} failed: {e}", r.name, TOOLS[t]);
            }
        }
    }
    println!();
}

/// kiln's phases, median per phase, for SQLite (else the last driver measured).
fn print_phases(rows: &[Row], runs: u32) {
    let Some(r) = rows
        .iter()
        .find(|r| r.name == "sqlite")
        .or_else(|| rows.last())
    else {
        return;
    };
    let names: Vec<String> = r.results[K_IN]
        .phases
        .first()
        .map(|p| p.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return;
    }
    println!(
        "{}: kiln --show-stats phases, ms, median of {runs} runs",
        r.name
    );
    let phase = |m: &Measured, name: &str| {
        let v: Vec<f64> = m
            .phases
            .iter()
            .filter_map(|p| p.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
            .collect();
        median(&v)
    };
    let mut table = Vec::new();
    for n in names.iter().map(String::as_str).chain(["total"]) {
        let v: Vec<Option<f64>> = r.results[..L_IN]
            .iter()
            .map(|m| {
                if n == "total" {
                    median(&m.link_ms)
                } else {
                    phase(m, n)
                }
            })
            .collect();
        table.push(vec![
            n.to_string(),
            v[K_IN].map_or("-".into(), |x| format!("{x:.3}")),
            v[K_SHARED].map_or("-".into(), |x| format!("{x:.3}")),
            v[K_COPY].map_or("-".into(), |x| format!("{x:.3}")),
        ]);
    }
    print_table(&["phase", "in-proc", "shared", "copy"], &table);
    println!();
}

/// An executor that counts and times the calls made to another.
struct Counting {
    inner: Arc<dyn Executor>,
    calls: Mutex<Vec<(&'static str, u64, Duration)>>,
    payload: Mutex<Payload>,
}

/// Bytes handed to the executor.
#[derive(Default, Clone, Copy)]
struct Payload {
    /// Written into slabs (working memory handed out by `with_slab_memory`, and `write_slab`).
    slab: u64,
    /// Segment content of finalize requests (units outside slabs).
    segments: u64,
    /// Debug objects for gdb's JIT interface, in finalize requests.
    gdb: u64,
}

impl Counting {
    fn new(inner: Arc<dyn Executor>) -> Self {
        Counting {
            inner,
            calls: Mutex::new(Vec::new()),
            payload: Mutex::new(Payload::default()),
        }
    }

    fn timed<R>(&self, name: &'static str, f: impl FnOnce(&dyn Executor) -> R) -> R {
        let start = Instant::now();
        let r = f(&*self.inner);
        let d = start.elapsed();
        let mut c = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        match c.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => {
                e.1 += 1;
                e.2 += d;
            }
            None => c.push((name, 1, d)),
        }
        r
    }

    fn take(&self) -> Vec<(&'static str, u64, Duration)> {
        *self.payload.lock().unwrap_or_else(|e| e.into_inner()) = Payload::default();
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn count_bytes(&self, f: impl FnOnce(&mut Payload)) {
        f(&mut self.payload.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Executor for Counting {
    fn info(&self) -> &TargetInfo {
        self.inner.info()
    }
    fn reserve(&self, size: u64, placement: Placement) -> kiln_target::Result<ExecutorAddr> {
        self.timed("reserve", |e| e.reserve(size, placement))
    }
    fn release(&self, addr: ExecutorAddr, size: u64) -> kiln_target::Result<()> {
        self.timed("release", |e| e.release(addr, size))
    }
    fn finalize(&self, request: FinalizeRequest) -> kiln_target::Result<AllocId> {
        let segments: u64 = request
            .segments
            .iter()
            .map(|s| s.content.len() as u64)
            .sum();
        let gdb: u64 = request
            .actions
            .iter()
            .filter_map(|p| match &p.finalize {
                Some(Action::RegisterGdbObjects { objects, .. }) => {
                    Some(objects.iter().map(|o| o.0.len() as u64).sum::<u64>())
                }
                _ => None,
            })
            .sum();
        self.count_bytes(|p| {
            p.segments += segments;
            p.gdb += gdb;
        });
        self.timed("finalize", |e| e.finalize(request))
    }
    fn deallocate(&self, id: AllocId) -> kiln_target::Result<()> {
        self.timed("deallocate", |e| e.deallocate(id))
    }
    fn run_initializers(&self, id: AllocId) -> kiln_target::Result<()> {
        self.timed("run_initializers", |e| e.run_initializers(id))
    }
    fn load_library(&self, path: &Path) -> kiln_target::Result<LibraryId> {
        self.timed("load_library", |e| e.load_library(path))
    }
    fn lookup(
        &self,
        names: &[&[u8]],
        libraries: &[LibraryId],
        process: bool,
    ) -> kiln_target::Result<Vec<Option<ExecutorAddr>>> {
        self.timed("lookup", |e| e.lookup(names, libraries, process))
    }
    fn runtime_symbols(&self) -> &[(String, ExecutorAddr)] {
        self.inner.runtime_symbols()
    }
    fn allocate_static_tls(
        &self,
        image: &[u8],
        block_size: u64,
        align: u64,
    ) -> kiln_target::Result<i64> {
        self.timed("allocate_static_tls", |e| {
            e.allocate_static_tls(image, block_size, align)
        })
    }
    fn supports_slabs(&self) -> bool {
        self.inner.supports_slabs()
    }
    fn create_slab(&self, sizes: [u64; 3], placement: Placement) -> kiln_target::Result<SlabInfo> {
        self.timed("create_slab", |e| e.create_slab(sizes, placement))
    }
    fn write_slab(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> kiln_target::Result<()> {
        let n: u64 = writes
            .iter()
            .map(|w| match w {
                SlabWrite::Bytes(_, b) => b.len() as u64,
                SlabWrite::Fill(_, len, _) => *len,
            })
            .sum();
        self.count_bytes(|p| p.slab += n);
        self.timed("write_slab", |e| e.write_slab(slab, writes))
    }
    fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> kiln_target::Result<()> {
        let n: u64 = ranges.iter().map(|(_, n)| n).sum();
        self.count_bytes(|p| p.slab += n);
        self.timed("with_slab_memory", |e| e.with_slab_memory(slab, ranges, f))
    }
    fn patch(&self, slab: SlabId, addr: ExecutorAddr, bytes: &[u8]) -> kiln_target::Result<()> {
        self.timed("patch", |e| e.patch(slab, addr, bytes))
    }
    fn release_slab(&self, slab: SlabId) -> kiln_target::Result<()> {
        self.timed("release_slab", |e| e.release_slab(slab))
    }
    fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> kiln_target::Result<i32> {
        self.timed("run_main", |e| e.run_main(entry, args))
    }
    fn call_void(&self, f: ExecutorAddr) -> kiln_target::Result<()> {
        self.timed("call_void", |e| e.call_void(f))
    }
}

/// What the library loop measured for one executor.
struct Loop {
    /// µs per link+remove, one per iteration.
    link_remove_us: Vec<f64>,
    /// Executor calls made by the measured iterations: name, count, total time.
    calls: Vec<(&'static str, u64, Duration)>,
    /// µs of the link's own "finalize" phase, one per iteration.
    finalize_phase_us: Vec<f64>,
    /// µs per bare `lookup(["malloc"])`, one per call.
    lookup_us: Vec<f64>,
}

fn spawn(program: &Path, args: &[String], memory: MemoryMode) -> Result<RemoteExecutor> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = kiln_remote::Options {
        memory,
        ..Default::default()
    };
    RemoteExecutor::spawn(program, &args, opts)
        .with_context(|| format!("cannot start the executor {}", program.display()))
}

fn round_trips(
    program: &Path,
    args: &[String],
    mode: Option<MemoryMode>,
    tiny: &[u8],
    iterations: u32,
) -> Result<Loop> {
    let remote = mode
        .map(|m| spawn(program, args, m))
        .transpose()?
        .map(Arc::new);
    let inner: Arc<dyn Executor> = match &remote {
        Some(r) => r.clone(),
        None => Arc::new(kiln::InProcessExecutor::new()),
    };
    let counting = Arc::new(Counting::new(inner));
    let s = Session::new(counting.clone());
    s.set_collect_stats(true);
    let warmup = (iterations / 10).max(10);
    let mut out = Loop {
        link_remove_us: Vec::with_capacity(iterations as usize),
        calls: Vec::new(),
        finalize_phase_us: Vec::with_capacity(iterations as usize),
        lookup_us: Vec::with_capacity(iterations as usize),
    };
    for i in 0..warmup + iterations {
        if i == warmup {
            counting.take();
        }
        let start = Instant::now();
        s.add_object("tiny.o", tiny.to_vec());
        let u = s.link().context("linking the tiny object")?;
        let fin = s.stats(u).and_then(|st| {
            st.phases
                .iter()
                .find(|(n, _)| *n == "finalize")
                .map(|(_, d)| d.as_secs_f64() * 1e6)
        });
        s.remove(u).context("removing the tiny object")?;
        let us = start.elapsed().as_secs_f64() * 1e6;
        if i >= warmup {
            out.link_remove_us.push(us);
            out.finalize_phase_us.extend(fin);
        }
    }
    out.calls = counting.take();
    let ex: &dyn Executor = &*counting;
    for i in 0..warmup + iterations {
        let start = Instant::now();
        let r = ex.lookup(&[b"malloc"], &[], true)?;
        let us = start.elapsed().as_secs_f64() * 1e6;
        if r.first().copied().flatten().is_none() {
            bail!("the executor does not know malloc");
        }
        if i >= warmup {
            out.lookup_us.push(us);
        }
    }
    drop(s);
    drop(counting);
    if let Some(r) = remote {
        r.exit(0).context("ending the executor")?;
    }
    Ok(out)
}

/// µs per 1-byte round trip to a thread echoing on the other end of a Unix socket pair (the
/// transport `spawn` uses), one per round trip.
fn unix_echo(iterations: u32) -> Result<Vec<f64>> {
    use std::io::{Read, Write};
    let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while theirs.read_exact(&mut b).is_ok() && theirs.write_all(&b).is_ok() {}
    });
    let r = echo_loop(&mut ours.try_clone()?, &mut ours, iterations);
    let _ = ours.shutdown(std::net::Shutdown::Both);
    let _ = echo.join();
    r
}

/// µs per 1-byte round trip through `cat` over pipes, one per round trip: what the machine's
/// scheduler charges for waking another process and being woken by it.
fn cat_echo(iterations: u32) -> Result<Vec<f64>> {
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cat")?;
    let (Some(mut to), Some(mut from)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("cat has no pipes");
    };
    let r = echo_loop(&mut to, &mut from, iterations);
    drop(to);
    child.wait()?;
    r
}

fn echo_loop(
    to: &mut impl std::io::Write,
    from: &mut impl std::io::Read,
    iterations: u32,
) -> Result<Vec<f64>> {
    let warmup = (iterations / 10).max(10);
    let mut out = Vec::with_capacity(iterations as usize);
    let mut b = [0u8; 1];
    for i in 0..warmup + iterations {
        let start = Instant::now();
        to.write_all(b"x")?;
        from.read_exact(&mut b)?;
        if i >= warmup {
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"))
}

fn print_round_trips(loops: &[(&str, Loop)], echo: &[(&str, Vec<f64>)], iterations: u32) {
    println!(
        "Round trips through the library: link a tiny object (one function calling strlen, plus \
         main) and remove it, {iterations} times after {} warm-up; then Executor::lookup([\"malloc\"]) \
         {iterations} times",
        (iterations / 10).max(10)
    );
    let header = [
        "executor",
        "link+remove µs",
        "(mean)",
        "finalize call µs",
        "finalize phase µs",
        "calls per link+remove",
        "lookup µs",
        "(min)",
    ];
    let mut table = Vec::new();
    for (name, l) in loops {
        let n = l.link_remove_us.len().max(1) as f64;
        let per_call = |what: &str| {
            l.calls
                .iter()
                .find(|(c, _, _)| *c == what)
                .map(|(_, k, d)| d.as_secs_f64() * 1e6 / *k as f64)
        };
        let round_trips: u64 = l
            .calls
            .iter()
            .filter(|(c, _, _)| !matches!(*c, "write_slab" | "with_slab_memory"))
            .map(|(_, k, _)| k)
            .sum();
        table.push(vec![
            name.to_string(),
            us(median(&l.link_remove_us)),
            us(Some(l.link_remove_us.iter().sum::<f64>() / n)),
            us(per_call("finalize")),
            us(median(&l.finalize_phase_us)),
            format!("{:.2}", round_trips as f64 / n),
            us(median(&l.lookup_us)),
            us(min(&l.lookup_us)),
        ]);
    }
    for (name, v) in echo {
        let mut baseline = vec![name.to_string()];
        baseline.extend(["-"; 5].map(String::from));
        baseline.extend([us(median(v)), us(min(v))]);
        table.push(baseline);
    }
    print_table(&header, &table);
    println!(
        "µs: median per iteration (mean in brackets). finalize call: mean time inside \
         Executor::finalize (the round trip, with copy mode's batched writes); finalize phase: \
         the link's \"finalize\" phase (building the request, debug objects, the call). \
         calls: Executor calls that cross to the executor, per iteration. lookup: median (min) per \
         call. (echo): one byte written and read back, from a thread on a Unix socket pair \
         (spawn's transport) and from a `cat` child over pipes: the machine's floor for a round \
         trip."
    );
    println!();
    println!("Executor calls per link+remove: count per iteration, mean µs per call");
    let mut names: Vec<&str> = Vec::new();
    for (_, l) in loops {
        for (c, _, _) in &l.calls {
            if !names.contains(c) {
                names.push(c);
            }
        }
    }
    let header: Vec<&str> = std::iter::once("call")
        .chain(loops.iter().map(|(n, _)| *n))
        .collect();
    let table: Vec<Vec<String>> = names
        .iter()
        .map(|c| {
            std::iter::once(c.to_string())
                .chain(loops.iter().map(|(_, l)| {
                    let n = l.link_remove_us.len().max(1) as f64;
                    l.calls.iter().find(|(x, _, _)| x == c).map_or_else(
                        || "-".to_string(),
                        |(_, k, d)| {
                            format!(
                                "{:.2} x {:.1}",
                                *k as f64 / n,
                                d.as_secs_f64() * 1e6 / *k as f64
                            )
                        },
                    )
                }))
                .collect()
        })
        .collect();
    print_table(&header, &table);
    println!("(write_slab and with_slab_memory stay in the controller: a memory copy in shared mode, a queue in copy mode.)");
    println!();
}

struct Startup {
    handshake_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    version_ms: Vec<f64>,
}

fn startup(program: &Path, args: &[String], spawns: u32) -> Result<Startup> {
    let mut s = Startup {
        handshake_ms: Vec::new(),
        exit_ms: Vec::new(),
        version_ms: Vec::new(),
    };
    let version = args
        .iter()
        .fold(Cmd::new(program), |c, a| c.arg(a))
        .arg("--version");
    for i in 0..spawns + 2 {
        let t0 = Instant::now();
        let ex = spawn(program, args, MemoryMode::Shared)?;
        let t1 = Instant::now();
        ex.exit(0).context("ending the executor")?;
        let t2 = Instant::now();
        let v = time_once(&version)?;
        if i >= 2 {
            s.handshake_ms.push((t1 - t0).as_secs_f64() * 1e3);
            s.exit_ms.push((t2 - t1).as_secs_f64() * 1e3);
            s.version_ms.push(v);
        }
    }
    Ok(s)
}

fn print_startup(s: &Startup, spawns: u32, tiny: &Row) {
    println!("Executor start-up, ms, median (min) of {spawns}");
    let both = |v: &[f64]| match (median(v), min(v)) {
        (Some(m), Some(lo)) => format!("{} ({})", ms(m), ms(lo)),
        _ => "-".to_string(),
    };
    let total: Vec<f64> = s
        .handshake_ms
        .iter()
        .zip(&s.exit_ms)
        .map(|(a, b)| a + b)
        .collect();
    print_table(
        &["what", "ms"],
        &[
            vec!["spawn to handshake done".into(), both(&s.handshake_ms)],
            vec!["exit(0) until reaped".into(), both(&s.exit_ms)],
            vec!["both".into(), both(&total)],
            vec![
                "`kiln-executor --version` process".into(),
                both(&s.version_ms),
            ],
        ],
    );
    let diff = |a: usize, b: usize| match (
        median(&tiny.results[a].wall_ms),
        median(&tiny.results[b].wall_ms),
    ) {
        (Some(x), Some(y)) => ms(x - y),
        _ => "-".to_string(),
    };
    println!(
        "Going out of process for the tiny object, whole process (medians above): kiln shared - \
         in-proc {} ms, copy - in-proc {} ms; llvm-jitlink oop - in-proc {} ms",
        diff(K_SHARED, K_IN),
        diff(K_COPY, K_IN),
        diff(L_OOP, L_IN)
    );
    println!();
}

/// `Name:   1234 kB` fields of /proc/PID/status, in kB.
fn proc_status(pid: u32) -> Result<Vec<(String, u64)>> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((k.to_string(), kb))
        })
        .collect())
}

const RSS_FIELDS: [&str; 5] = ["VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"];

/// A shell script that runs `program` under `/usr/bin/time`, its peak RSS (kB) written to `out`.
fn rss_wrapper(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    out: &Path,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let script = dir.join(name);
    let mut text = format!(
        "#!/bin/sh\nexec /usr/bin/time -f %M -o {} {}",
        quote(&out.to_string_lossy()),
        quote(&program.to_string_lossy())
    );
    for a in args {
        text.push(' ');
        text.push_str(&quote(a));
    }
    text.push_str(" \"$@\"\n");
    std::fs::write(&script, text).with_context(|| format!("cannot write {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// Run `cmd` (with `env`) once; the peak RSS in MB that its wrapped executor wrote to `out`.
fn peak_rss(
    cmd: &Cmd,
    env: Option<(&str, &Path)>,
    out: &Path,
) -> Result<std::result::Result<f64, String>> {
    let _ = std::fs::remove_file(out);
    let mut c = cmd.command();
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    let o = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", cmd.display()))?;
    if !o.status.success() {
        return Ok(Err(first_error_line(&o.stderr, o.status)));
    }
    let text = std::fs::read_to_string(out).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .next_back()
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| format!("/usr/bin/time wrote no size: {text:?}")))
}

/// SQLite linked through the library into a fresh executor of each kind, `runs` times.
fn library_sqlite(a: &BenchArgs, program: &Path, args: &[String], d: &Driver) -> Result<()> {
    println!(
        "SQLite linked through the library (Session::new(executor), add_file, add_library, \
         link), a fresh executor each time, median of {} runs",
        a.runs
    );
    let mut calls_table = Vec::new();
    let mut rss_table = Vec::new();
    let mut call_names: Vec<&str> = Vec::new();
    let mut per_mode = Vec::new();
    for (name, mode) in [
        ("in-process", None),
        ("spawn shared", Some(MemoryMode::Shared)),
        ("spawn copy", Some(MemoryMode::Copy)),
    ] {
        let mut link_ms = Vec::new();
        let mut add_ms = Vec::new();
        let mut calls: Vec<(&'static str, Vec<u64>, Vec<f64>)> = Vec::new();
        let mut payload = Payload::default();
        let mut rss: Vec<[Vec<(String, u64)>; 2]> = Vec::new();
        for _ in 0..a.runs {
            let remote = mode
                .map(|m| spawn(program, args, m))
                .transpose()?
                .map(Arc::new);
            let inner: Arc<dyn Executor> = match &remote {
                Some(r) => r.clone(),
                None => Arc::new(kiln::InProcessExecutor::new()),
            };
            let vm_rss = |r: &Option<Arc<RemoteExecutor>>| -> Result<Vec<(String, u64)>> {
                r.as_ref().map_or(Ok(Vec::new()), |r| proc_status(r.pid()))
            };
            let before = vm_rss(&remote)?;
            let counting = Arc::new(Counting::new(inner));
            let s = Session::new(counting.clone());
            let t0 = Instant::now();
            s.add_file(a.corpus.join("drivers").join(format!("{}.o", d.name)))?;
            s.add_file(a.corpus.join("archives").join(d.archive))?;
            for l in d.libs {
                s.add_library(l)?;
            }
            s.add_root("main");
            let t1 = Instant::now();
            s.link().context("linking SQLite through the library")?;
            let t2 = Instant::now();
            rss.push([before, vm_rss(&remote)?]);
            add_ms.push((t1 - t0).as_secs_f64() * 1e3);
            link_ms.push((t2 - t1).as_secs_f64() * 1e3);
            payload = *counting.payload.lock().unwrap_or_else(|e| e.into_inner());
            for (c, k, dur) in counting.take() {
                let i = match calls.iter().position(|(x, _, _)| *x == c) {
                    Some(i) => i,
                    None => {
                        calls.push((c, Vec::new(), Vec::new()));
                        calls.len() - 1
                    }
                };
                calls[i].1.push(k);
                calls[i].2.push(dur.as_secs_f64() * 1e3);
                if !call_names.contains(&c) {
                    call_names.push(c);
                }
            }
            drop(s);
            drop(counting);
            if let Some(r) = remote {
                r.exit(0).context("ending the executor")?;
            }
        }
        let mb = |n: u64| format!("{:.2}", n as f64 / (1 << 20) as f64);
        calls_table.push(vec![
            name.to_string(),
            cell_ms(median(&add_ms)),
            cell_ms(median(&link_ms)),
            mb(payload.slab),
            mb(payload.segments),
            mb(payload.gdb),
        ]);
        if mode.is_some() {
            for (i, when) in ["after handshake", "SQLite linked"].iter().enumerate() {
                let mut cells = vec![format!("{name}: {when}")];
                cells.extend(RSS_FIELDS.iter().map(|f| {
                    let v: Vec<f64> = rss
                        .iter()
                        .filter_map(|r| r[i].iter().find(|(k, _)| k == f))
                        .map(|(_, x)| *x as f64)
                        .collect();
                    median(&v).map_or("-".into(), |x| format!("{:.1}", x / 1024.0))
                }));
                rss_table.push(cells);
            }
        }
        per_mode.push((name, calls));
    }
    print_table(
        &[
            "executor",
            "add inputs ms",
            "link ms",
            "slab MB",
            "segment MB",
            "gdb objects MB",
        ],
        &calls_table,
    );
    println!(
        "add inputs: add_file and add_library (which loads -lm -lpthread -ldl into the executor); \
         link: Session::link, parse to finalize. MB: bytes handed to the executor by the link: \
         written into slabs (shared: in place; copy: sent), finalize segments, debug objects for \
         gdb (sent in the finalize request in both modes)."
    );
    println!();
    println!("Executor calls during add inputs + link: count, total ms (medians)");
    let mut header = vec!["call"];
    header.extend(per_mode.iter().map(|(n, _)| *n));
    let table: Vec<Vec<String>> = call_names
        .iter()
        .map(|c| {
            std::iter::once(c.to_string())
                .chain(per_mode.iter().map(|(_, calls)| {
                    calls.iter().find(|(x, _, _)| x == c).map_or_else(
                        || "-".to_string(),
                        |(_, k, d)| {
                            let k: Vec<f64> = k.iter().map(|x| *x as f64).collect();
                            format!(
                                "{} x, {:.3}",
                                median(&k).unwrap_or(0.0),
                                median(d).unwrap_or(0.0)
                            )
                        },
                    )
                }))
                .collect()
        })
        .collect();
    print_table(&header, &table);
    println!();
    println!(
        "kiln-executor resident size (VmRSS from /proc/PID/status), MB, median of {} runs",
        a.runs
    );
    let mut header = vec!["executor"];
    header.extend(RSS_FIELDS);
    print_table(&header, &rss_table);
    println!();
    Ok(())
}

fn cell_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), ms)
}

fn print_size(
    program: &Path,
    args: &[String],
    rows: &[Row],
    llvm_executor: &Path,
    tmp: &Path,
) -> Result<()> {
    if !Path::new("/usr/bin/time").is_file() {
        println!(
            "Peak executor RSS: /usr/bin/time is missing (apt-get install time); not measured"
        );
        return Ok(());
    }
    println!("Peak executor RSS, MB (maxrss from /usr/bin/time around the executor), one run of each whole-process command");
    let out = tmp.join("rss");
    let kiln_wrap = rss_wrapper(tmp, "kiln-executor-rss", program, args, &out)?;
    let llvm_wrap = rss_wrapper(tmp, "llvm-jitlink-executor-rss", llvm_executor, &[], &out)?;
    let mut table = Vec::new();
    for r in rows {
        let cell = |x: Result<std::result::Result<f64, String>>| -> Result<(String, Option<f64>)> {
            Ok(match x? {
                Ok(mb) => (format!("{mb:.1}"), Some(mb)),
                Err(e) => (format!("failed: {e}"), None),
            })
        };
        let mut cells = vec![r.name.clone()];
        let mut vals = Vec::new();
        for t in [K_SHARED, K_COPY] {
            let (c, v) = if r.results[t].failed.is_some() {
                ("failed".into(), None)
            } else {
                cell(peak_rss(
                    &r.cmds[t],
                    Some(("KILN_EXECUTOR", &kiln_wrap)),
                    &out,
                ))?
            };
            cells.push(c);
            vals.push(v);
        }
        let oop = Cmd {
            program: r.cmds[L_OOP].program.clone(),
            args: std::iter::once(format!("-oop-executor={}", llvm_wrap.display()).into())
                .chain(r.cmds[L_OOP].args[1..].iter().cloned())
                .collect(),
        };
        let (c, v) = if r.results[L_OOP].failed.is_some() {
            ("failed".into(), None)
        } else {
            cell(peak_rss(&oop, None, &out))?
        };
        cells.push(c);
        cells.push(rx(v, vals[0]));
        table.push(cells);
    }
    print_table(
        &[
            "driver",
            "kiln-executor (shared)",
            "kiln-executor (copy)",
            "llvm-jitlink-executor",
            "llvm/kiln-shared",
        ],
        &table,
    );
    println!();
    Ok(())
}

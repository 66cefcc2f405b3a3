//! `kiln bench`: link each corpus driver with `kiln run --noexec` and with LLVM's
//! `llvm-jitlink -noexec` in the same measurement, and print how they compare.
//!
//! This is a benchmark, not a test: it asserts nothing about time. What it measures, per driver:
//! - whole-process wall time of both commands (one warm-up each, then `--runs` runs, the two tools
//!   alternating, the order swapped every run), median and minimum;
//! - instructions executed by the whole process under valgrind (callgrind), one run each;
//! - each tool's own in-process link time (kiln's `--show-stats` "total", llvm-jitlink's
//!   `-show-times` total), median of `--runs` further runs, so that process start-up and link
//!   cost can be told apart.
//!
//! llvm-jitlink runs with `-no-process-syms`: it resolves libc and the manifest's host libraries
//! from the files `ld` would find for `-lc -lm ...` (shared objects via `-preload=`, archives as
//! inputs) rather than from its own process, which also holds LLVM's exports.
//!
//! `kiln bench --remote` measures out-of-process execution instead (bench_remote.rs).
//! See docs/bench.md.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "bench_remote.rs"]
mod remote;

#[derive(Args)]
pub struct BenchArgs {
    /// The corpus directory, as made by `tests/corpus/setup.sh DIR` (DIR/drivers/NAME.o,
    /// DIR/archives/LIB.a).
    #[arg(long, default_value = "target/corpus", value_name = "DIR")]
    corpus: PathBuf,
    /// Timed runs of each tool per driver, after one warm-up run each.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Count instructions with valgrind (callgrind). The default is on when `valgrind` is on PATH.
    #[arg(long)]
    valgrind: bool,
    /// Do not run valgrind.
    #[arg(long, conflicts_with = "valgrind")]
    no_valgrind: bool,
    /// The llvm-jitlink to compare with (LLVM 14; other versions' flags may differ).
    #[arg(
        long,
        default_value = "/usr/lib/llvm-14/bin/llvm-jitlink",
        value_name = "PATH"
    )]
    llvm_jitlink: PathBuf,
    /// Print each measured command line (to stderr) before measuring it.
    #[arg(long, short)]
    verbose: bool,
    /// Measure out-of-process execution instead: kiln in process vs `--executor spawn` with
    /// shared and copied memory vs `llvm-jitlink -oop-executor`, round trips, executor start-up
    /// and size (see docs/bench.md).
    #[arg(long)]
    remote: bool,
    /// With --remote: link+remove iterations and bare round trips per executor.
    #[arg(long, default_value_t = 2000, value_name = "N", requires = "remote", value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// With --remote: executors spawned (and ended) to time start-up.
    #[arg(long, default_value_t = 50, value_name = "N", requires = "remote", value_parser = clap::value_parser!(u32).range(1..))]
    spawns: u32,
    /// Only these drivers (default: all of lua, sqlite, zlib, lzma, jsonc).
    #[arg(value_name = "DRIVER")]
    drivers: Vec<String>,
}

/// A corpus driver: `drivers/NAME.o`, the archive it needs and the host libraries (`-l`) a native
/// link needs. Mirrors tests/corpus/manifest.tsv.
struct Driver {
    name: &'static str,
    archive: &'static str,
    libs: &'static [&'static str],
}

const DRIVERS: &[Driver] = &[
    Driver {
        name: "lua",
        archive: "liblua5.4.a",
        libs: &["m", "dl"],
    },
    Driver {
        name: "sqlite",
        archive: "libsqlite3.a",
        libs: &["m", "pthread", "dl"],
    },
    Driver {
        name: "zlib",
        archive: "libz.a",
        libs: &[],
    },
    Driver {
        name: "lzma",
        archive: "liblzma.a",
        libs: &["pthread"],
    },
    Driver {
        name: "jsonc",
        archive: "libjson-c.a",
        libs: &[],
    },
];

/// The project's aim: llvm-jitlink does at least this many times the work of kiln for SQLite.
const SQLITE_AIM: f64 = 10.0;

/// A command line to measure.
#[derive(Clone)]
struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Cmd {
    fn new(program: &Path) -> Self {
        Cmd {
            program: program.to_path_buf(),
            args: Vec::new(),
        }
    }

    fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null());
        c
    }

    fn display(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(|a| a.as_os_str()))
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The two command lines of one table row.
struct Row {
    name: String,
    kiln: Cmd,
    llvm: Cmd,
    /// Whether the tools print a link phase (not for the start-up row).
    link_phase: bool,
}

/// What was measured of one tool on one row.
#[derive(Default)]
struct Measured {
    /// Wall times in milliseconds; empty if the tool failed.
    wall_ms: Vec<f64>,
    instructions: Option<u64>,
    link_ms: Option<f64>,
    /// The first line of the tool's error output, if it failed.
    failed: Option<String>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.remote {
        return remote::run(a);
    }
    let kiln = std::env::current_exe().context("cannot find the kiln executable")?;
    check_corpus(&a.corpus)?;
    let llvm_version = llvm_jitlink_version(&a.llvm_jitlink)?;
    let valgrind = if a.no_valgrind {
        false
    } else if a.valgrind {
        if !on_path("valgrind") {
            bail!("--valgrind: valgrind is not on PATH (install it: apt-get install valgrind)");
        }
        true
    } else {
        on_path("valgrind")
    };
    for d in &a.drivers {
        if !DRIVERS.iter().any(|x| x.name == d) {
            let names: Vec<_> = DRIVERS.iter().map(|x| x.name).collect();
            bail!("unknown driver {d:?} (the corpus has {})", names.join(", "));
        }
    }

    let mut rows = vec![Row {
        name: "(start-up)".into(),
        kiln: Cmd::new(&kiln).arg("--version"),
        llvm: Cmd::new(&a.llvm_jitlink).arg("--version"),
        link_phase: false,
    }];
    for d in DRIVERS
        .iter()
        .filter(|d| a.drivers.is_empty() || a.drivers.iter().any(|x| x == d.name))
    {
        rows.push(driver_row(d, &a.corpus, &kiln, &a.llvm_jitlink)?);
    }

    println!(
        "kiln bench: {} timed runs per tool after 1 warm-up, alternating",
        a.runs
    );
    println!("  kiln:         {}", kiln.display());
    println!(
        "  llvm-jitlink: {} ({llvm_version})",
        a.llvm_jitlink.display()
    );
    if !valgrind {
        println!("  valgrind: off (instructions not counted)");
    }
    println!();

    let mut results = Vec::new();
    for row in &rows {
        eprintln!("kiln bench: {} ...", row.name);
        if a.verbose {
            eprintln!("  {}\n  {}", row.kiln.display(), row.llvm.display());
        }
        results.push(measure(row, a.runs, valgrind)?);
    }

    print_table(&rows, &results, a.runs, valgrind);
    print_summary(&rows, &results, valgrind);
    Ok(())
}

fn check_corpus(dir: &Path) -> Result<()> {
    if dir.join("drivers").is_dir() && dir.join("archives").is_dir() {
        return Ok(());
    }
    let script = Path::new("tests/corpus/setup.sh");
    let how = if script.is_file() {
        format!("run `{} {}`", script.display(), dir.display())
    } else {
        format!(
            "run `tests/corpus/setup.sh {}` in the kiln repository",
            dir.display()
        )
    };
    bail!(
        "corpus directory {} is missing or incomplete (needs drivers/ and archives/): {how} \
         (it installs Debian's static libraries if they are missing, which needs root), \
         or pass --corpus DIR",
        dir.display()
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn llvm_jitlink_version(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run llvm-jitlink at {} (install LLVM 14: apt-get install llvm-14, or pass \
             --llvm-jitlink PATH)",
                path.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --version failed ({})", path.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| l.contains("version"))
        .unwrap_or("version unknown")
        .to_string())
}

fn driver_row(d: &Driver, corpus: &Path, kiln: &Path, llvm_jitlink: &Path) -> Result<Row> {
    let object = corpus.join("drivers").join(format!("{}.o", d.name));
    let archive = corpus.join("archives").join(d.archive);
    for f in [&object, &archive] {
        if !f.is_file() {
            bail!(
                "{} is missing from the corpus: rebuild it with `tests/corpus/setup.sh {}`",
                f.display(),
                corpus.display()
            );
        }
    }
    let mut k = Cmd::new(kiln)
        .arg("run")
        .arg("--noexec")
        .arg(&object)
        .arg(&archive);
    for l in d.libs {
        k = k.arg(format!("-l{l}"));
    }
    let mut j = Cmd::new(llvm_jitlink)
        .arg("-noexec")
        .arg("-no-process-syms")
        .arg(&object)
        .arg(&archive);
    for a in host_inputs(d.libs)? {
        j = j.arg(a);
    }
    Ok(Row {
        name: d.name.to_string(),
        kiln: k,
        llvm: j,
        link_phase: true,
    })
}

/// llvm-jitlink arguments for libc and `libs`: the files `ld` finds for `-lc -lNAME...` (GNU ld
/// scripts followed), shared objects as `-preload=FILE`, archives as inputs.
fn host_inputs(libs: &[&str]) -> Result<Vec<OsString>> {
    let search = kiln::LibrarySearch::default();
    let mut files = Vec::new();
    for l in std::iter::once(&"c").chain(libs) {
        let path = search.find(l)?;
        expand(&search, path, &mut files, 0)?;
    }
    let mut out = Vec::new();
    for f in files {
        let bytes = read_prefix(&f)?;
        let arg = if bytes.starts_with(b"!<arch>\n") {
            f.into_os_string()
        } else {
            let mut a = OsString::from("-preload=");
            a.push(f);
            a
        };
        if !out.contains(&arg) {
            out.push(arg);
        }
    }
    Ok(out)
}

/// Append `path` to `files`, or the files it names if it is a GNU ld script.
fn expand(
    search: &kiln::LibrarySearch,
    path: PathBuf,
    files: &mut Vec<PathBuf>,
    depth: u32,
) -> Result<()> {
    let head = read_prefix(&path)?;
    if head.starts_with(b"\x7fELF") || head.starts_with(b"!<arch>\n") {
        files.push(path);
        return Ok(());
    }
    if depth > 4 {
        bail!("linker scripts nest too deeply at {}", path.display());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    for f in search.expand_script(&path, &text)? {
        expand(search, f, files, depth + 1)?;
    }
    Ok(())
}

fn read_prefix(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(8);
    std::fs::File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut buf))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(buf)
}

/// The first non-empty line of a failed run's output.
fn first_error_line(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(
            || format!("exited with {status} and no message"),
            str::to_string,
        )
}

/// Run once, capturing stderr; Err is the first line of the error output.
fn run_captured(cmd: &Cmd) -> Result<std::result::Result<String, String>> {
    let out = cmd
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", cmd.program.display()))?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    } else {
        Err(first_error_line(&out.stderr, out.status))
    })
}

/// Wall time of one run in milliseconds, output discarded.
fn time_once(cmd: &Cmd) -> Result<f64> {
    let start = Instant::now();
    let status = cmd
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", cmd.program.display()))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("`{}` succeeded once, then failed ({status})", cmd.display());
    }
    Ok(ms)
}

fn measure(row: &Row, runs: u32, valgrind: bool) -> Result<[Measured; 2]> {
    let cmds = [&row.kiln, &row.llvm];
    let mut m: [Measured; 2] = Default::default();
    // Warm-up, which also finds out whether each tool can link this driver at all.
    for (cmd, m) in cmds.iter().zip(&mut m) {
        if let Err(e) = run_captured(cmd)? {
            m.failed = Some(e);
        }
    }
    let ok = [m[0].failed.is_none(), m[1].failed.is_none()];
    for i in 0..runs as usize {
        // Alternate, swapping the order every run so neither tool always goes first.
        for t in [i % 2, 1 - i % 2] {
            if ok[t] {
                m[t].wall_ms.push(time_once(cmds[t])?);
            }
        }
    }
    if row.link_phase {
        let with_stats = [
            row.kiln.clone().arg("--show-stats"),
            row.llvm.clone().arg("-show-times"),
        ];
        let parse: [fn(&str) -> Option<f64>; 2] = [kiln_link_ms, llvm_link_ms];
        let mut phase: [Vec<f64>; 2] = Default::default();
        for i in 0..runs as usize {
            for t in [i % 2, 1 - i % 2] {
                if !ok[t] {
                    continue;
                }
                let stderr = run_captured(&with_stats[t])?
                    .map_err(|e| anyhow::anyhow!("`{}` failed: {e}", with_stats[t].display()))?;
                let ms = parse[t](&stderr).with_context(|| {
                    format!(
                        "no link time in the output of `{}`:\n{stderr}",
                        with_stats[t].display()
                    )
                })?;
                phase[t].push(ms);
            }
        }
        for t in 0..2 {
            m[t].link_ms = median(&phase[t]);
        }
    }
    if valgrind {
        for t in 0..2 {
            if ok[t] {
                m[t].instructions = Some(count_instructions(cmds[t])?);
            }
        }
    }
    Ok(m)
}

/// kiln `--show-stats`: the line `    total     4.373 ms` under "phases".
fn kiln_link_ms(stderr: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("total")?;
        rest.trim().strip_suffix("ms")?.trim().parse().ok()
    })
}

/// llvm-jitlink `-show-times`: `Total Execution Time: 0.0489 seconds (0.0490 wall clock)`.
fn llvm_link_ms(stderr: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Total Execution Time:")?;
        let wall = rest.split_once('(')?.1.strip_suffix("wall clock)")?;
        wall.trim().parse::<f64>().ok().map(|s| s * 1e3)
    })
}

/// Instructions executed by the whole process, counted by callgrind.
fn count_instructions(cmd: &Cmd) -> Result<u64> {
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--callgrind-out-file=/dev/null")
        .arg(&cmd.program)
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run valgrind")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "`valgrind --tool=callgrind {}` failed ({}):\n{stderr}",
            cmd.display(),
            out.status
        );
    }
    parse_instructions(&stderr).with_context(|| {
        format!(
            "no instruction count in valgrind's output for `{}`:\n{stderr}",
            cmd.display()
        )
    })
}

/// callgrind's `==PID== Collected : 37022739`, or the `I   refs:  37,022,739` line.
fn parse_instructions(stderr: &str) -> Option<u64> {
    let number = |s: &str| s.trim().replace(',', "").parse::<u64>().ok();
    let after = |key: &str| {
        stderr
            .lines()
            .find_map(|l| l.split_once(key).and_then(|(_, r)| number(r)))
    };
    after("Collected :").or_else(|| after("refs:"))
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio(llvm: Option<f64>, kiln: Option<f64>) -> Option<f64> {
    match (llvm, kiln) {
        (Some(l), Some(k)) if k > 0.0 => Some(l / k),
        _ => None,
    }
}

fn cell<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn print_table(rows: &[Row], results: &[[Measured; 2]], runs: u32, valgrind: bool) {
    let header = [
        "driver",
        "kiln ms",
        "llvm-jitlink ms",
        "ratio",
        "kiln Minstr",
        "llvm-jitlink Minstr",
        "ratio",
        "kiln link ms",
        "llvm-jitlink link ms",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let mut notes = Vec::new();
    for (row, [k, l]) in rows.iter().zip(results) {
        let wall = |m: &Measured| match (median(&m.wall_ms), min(&m.wall_ms)) {
            (Some(med), Some(lo)) => format!("{} ({})", ms(med), ms(lo)),
            _ => "-".to_string(),
        };
        let minstr = |m: &Measured| cell(m.instructions, |n| format!("{:.1}", n as f64 / 1e6));
        let failed = |m: &Measured, text: &str| m.failed.as_ref().map(|_| text.to_string());
        let either_failed = failed(k, "kiln failed").or_else(|| failed(l, "failed"));
        let r = |x: Option<f64>| {
            either_failed
                .clone()
                .unwrap_or_else(|| cell(x, |x| format!("{x:.1}x")))
        };
        let instr = |m: &Measured| m.instructions.map(|n| n as f64);
        table.push(vec![
            row.name.clone(),
            wall(k),
            wall(l),
            r(ratio(median(&l.wall_ms), median(&k.wall_ms))),
            minstr(k),
            minstr(l),
            if valgrind {
                r(ratio(instr(l), instr(k)))
            } else {
                "-".into()
            },
            cell(k.link_ms, ms),
            cell(l.link_ms, ms),
        ]);
        for (tool, m) in [("kiln", k), ("llvm-jitlink", l)] {
            if let Some(e) = &m.failed {
                notes.push(format!("{}: {tool} failed: {e}", row.name));
            }
        }
    }
    let (head, body) = table.split_first().expect("the header row");
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    remote::print_table(&head, body);
    println!();
    println!(
        "ms: whole-process wall time, median (min) of {runs} runs; ratio: llvm-jitlink / kiln.\n\
         Minstr: million instructions executed by the whole process (valgrind --tool=callgrind).\n\
         link ms: each tool's own in-process link time (kiln --show-stats \"total\", llvm-jitlink \
         -show-times total), median of {runs} runs.\n\
         (start-up): `--version` of each tool, the cost of starting the process at all."
    );
    for n in notes {
        println!("{n}");
    }
}

fn print_summary(rows: &[Row], results: &[[Measured; 2]], valgrind: bool) {
    let Some((_, [k, l])) = rows.iter().zip(results).find(|(r, _)| r.name == "sqlite") else {
        return;
    };
    println!();
    if let Some(e) = k.failed.as_ref().or(l.failed.as_ref()) {
        println!("SQLite: no comparison ({e})");
        return;
    }
    let link = ratio(l.link_ms, k.link_ms).map_or(String::new(), |r| {
        format!("; link phase alone: {r:.1}x by time")
    });
    match ratio(
        l.instructions.map(|n| n as f64),
        k.instructions.map(|n| n as f64),
    ) {
        Some(r) => println!(
            "SQLite: llvm-jitlink executes {r:.1}x the instructions of kiln (whole process){link}. \
             Aim: at least {SQLITE_AIM:.0}x less work than llvm-jitlink: {}.",
            if r >= SQLITE_AIM { "met" } else { "not met" }
        ),
        None => println!(
            "SQLite: instructions not counted ({}){link}; aim: at least {SQLITE_AIM:.0}x less work \
             than llvm-jitlink.",
            if valgrind { "valgrind gave no count" } else { "valgrind off" }
        ),
    }
}

//! `kiln`: link relocatable objects, archives and C/C++ sources into memory and run them.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kiln::Session;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod bench;

/// Exit status when kiln itself fails (bad input, link error), as `env` and `timeout` use.
const KILN_FAILED: u8 = 125;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A JIT linker: links ELF objects and static archives into memory and runs them",
    long_about = "Kiln links relocatable ELF x86-64 objects (.o), static archives (.a), shared \
                  libraries (.so) and C/C++ sources into executable memory of this process, resolving \
                  symbols against each other, libraries and the process itself, and runs them.\n\n\
                  Logging: KILN_LOG=debug (or info, trace, kiln=debug) shows what the linker decides.",
    after_help = "Examples:\n  kiln run examples/hello/hello.c\n  kiln run main.o libfoo.a -lm -- arg1 arg2\n  kiln run --noexec --show-stats driver.o /usr/lib/x86_64-linux-gnu/libsqlite3.a -lm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Link the inputs and call the entry point (main) with the arguments after `--`.
    #[command(
        after_help = "The program's exit status (its return value, or what it passed to exit()) \
                      is kiln's. If linking fails, kiln prints why and exits with status 125 \
                      without running anything.\n\nExamples:\n  kiln run hello.c\n  \
                      kiln run driver.o /usr/lib/x86_64-linux-gnu/liblua5.4.a -lm -ldl -- script.lua\n  \
                      kiln run --show-stats --noexec prog.o -L build -lfoo\n  \
                      kiln run --executor spawn --memory copy hello.c"
    )]
    Run(Box<RunArgs>),
    /// Measure linking (kiln vs llvm-jitlink) on the corpus drivers; prints ratios.
    Bench(bench::BenchArgs),
    /// Act as `kiln-executor` (used when that binary is not installed next to kiln).
    #[command(hide = true, disable_help_flag = true)]
    Executor {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Objects (.o), archives (.a), shared libraries (.so), C (.c) or C++ (.cc, .cpp) sources.
    /// Sources are compiled with `cc`/`c++ -c -g -O2` first.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Arguments for the program (after `--`); argv[0] is the first input's name.
    #[arg(last = true, value_name = "ARG")]
    args: Vec<String>,
    /// Add DIR to the library search path (searched before the system's).
    #[arg(short = 'L', value_name = "DIR")]
    lib_dirs: Vec<PathBuf>,
    /// Link library NAME (libNAME.so, else libNAME.a), or `:FILE` for that exact file name.
    #[arg(short = 'l', value_name = "NAME")]
    libs: Vec<String>,
    /// Prefer static archives for -l.
    #[arg(long = "static")]
    static_only: bool,
    /// Do not bind symbols of the kiln process itself (libc and what kiln loaded).
    #[arg(long)]
    no_process_symbols: bool,
    /// Define an absolute symbol (hex with 0x, or decimal).
    #[arg(long = "define", visible_aliases = ["define-abs", "abs"], value_name = "SYM=ADDR", value_parser = parse_define)]
    defines: Vec<(String, u64)>,
    /// The function to call: `int SYM(int argc, char **argv, char **envp)`.
    #[arg(long, default_value = "main", value_name = "SYM")]
    entry: String,
    /// Link and finalize memory (addresses, fixups, protections) but run nothing, not even
    /// constructors.
    #[arg(long)]
    noexec: bool,
    /// Place the linked code at exactly this address. With --noexec, nothing is mapped: the
    /// address is a fake one (as llvm-jitlink's -noexec -slab-address), for check tests.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    slab_address: Option<u64>,
    /// Fail if the linked unit takes more than SIZE bytes (suffixes Kb, Mb, Gb). llvm-jitlink's
    /// -slab-allocate, where a bare number means Kb, is accepted too.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    slab_size: Option<u64>,
    /// Page size of the fake slab (--noexec --slab-address): segments are aligned to it.
    #[arg(long, value_name = "N", value_parser = parse_addr, requires_all = ["noexec", "slab_address"])]
    slab_page_size: Option<u64>,
    /// After linking, evaluate the `# jitlink-check: EXPR = EXPR` lines of FILE (llvm-jitlink's
    /// dialect, see docs/check-tests.md); any failure exits with status 1 before anything runs.
    #[arg(long, value_name = "FILE")]
    check: Vec<PathBuf>,
    /// The name in check lines: `# NAME: EXPR = EXPR`.
    #[arg(long, value_name = "NAME", default_value = kiln::check::DEFAULT_CHECK_NAME)]
    check_name: String,
    /// Only the symbols listed in FILE (one per line, `#` starts a comment) may be bound outside
    /// the linked inputs (libraries, the process, --define); any other reference fails the link
    /// before anything runs, naming the symbol and the object.
    #[arg(long, value_name = "FILE")]
    allow_symbols: Option<PathBuf>,
    /// Print statistics after linking (to stderr): segments, sections, symbols, edges by kind,
    /// GOT entries, stubs, relaxations, archive members, time per phase.
    #[arg(long)]
    show_stats: bool,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    debug: DebugArgs,
}

#[derive(Args)]
#[command(next_help_heading = "Out-of-process execution (see docs/protocol.md)")]
struct RemoteArgs {
    /// Where the code runs: `inprocess` (this process), `spawn` (a new kiln-executor child
    /// process, found next to kiln or through KILN_EXECUTOR), or `connect=unix:PATH` /
    /// `connect=tcp:HOST:PORT` (a listening `kiln-executor --listen ...`)
    #[arg(long, value_name = "WHERE", default_value = "inprocess", value_parser = parse_executor)]
    executor: ExecutorChoice,
    /// How code memory reaches an out-of-process executor: `shared` (a memory file mapped by
    /// both processes; nothing copied), `copy` (content sent in messages) or `auto` (shared
    /// when possible)
    #[arg(long, value_name = "MODE", default_value = "auto")]
    memory: kiln_remote::MemoryMode,
    /// The shared secret for a TCP executor (default: the KILN_TOKEN environment variable)
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
enum ExecutorChoice {
    InProcess,
    Spawn,
    Connect(kiln_remote::Endpoint),
}

fn parse_executor(s: &str) -> Result<ExecutorChoice, String> {
    match s {
        "inprocess" | "in-process" => Ok(ExecutorChoice::InProcess),
        "spawn" => Ok(ExecutorChoice::Spawn),
        _ => match s.strip_prefix("connect=") {
            Some(e) => e.parse().map(ExecutorChoice::Connect),
            None => Err(format!(
                "{s:?}: expected inprocess, spawn, connect=unix:PATH or connect=tcp:HOST:PORT"
            )),
        },
    }
}

/// Debugger and profiler sinks. `KILN_DEBUG` sets them too: `all`, `none`, or a comma list of
/// `gdb`, `perfmap`, `jitdump[=DIR]`, `valgrind` (`no-NAME` turns one off); flags add to it.
#[derive(Args)]
#[command(
    next_help_heading = "Debugging and profiling (also KILN_DEBUG=all, none, or a list of gdb, perfmap, jitdump[=DIR], valgrind, no-NAME; see docs/debugging.md)"
)]
struct DebugArgs {
    /// Register the linked code with gdb's JIT interface (on by default; KILN_DEBUG=no-gdb turns
    /// it off): gdb names JIT'd functions, with file:line where there is DWARF.
    #[arg(long)]
    gdb: bool,
    /// Write /tmp/perf-PID.map (one line per JIT'd function and stub) for `perf report`.
    #[arg(long)]
    perf_map: bool,
    /// Write DIR/jit-PID.dump (code, names, line tables) for `perf inject --jit`; DIR defaults
    /// to the current directory.
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true, default_missing_value = ".")]
    jitdump: Option<PathBuf>,
    /// Tell valgrind when code is freed (on by default; free outside valgrind).
    #[arg(long)]
    valgrind: bool,
}

impl DebugArgs {
    /// `KILN_DEBUG` (over the defaults), then the flags.
    fn options(&self) -> Result<kiln::DebugOptions> {
        let mut o = kiln::DebugOptions::from_env().map_err(anyhow::Error::msg)?;
        o.gdb |= self.gdb;
        o.perf_map |= self.perf_map;
        if let Some(d) = &self.jitdump {
            o.jitdump = Some(d.clone());
        }
        o.valgrind |= self.valgrind;
        Ok(o)
    }
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not an address: {e}"))
}

/// A size in bytes, with an optional suffix Kb, Mb or Gb (any case; K, M, G, KiB… too).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{s:?} is not a size (a number with Kb, Mb or Gb)")),
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (a number with Kb, Mb or Gb)"))
}

/// llvm-jitlink's spellings of the `run` options, rewritten to kiln's before clap parses them:
/// clap has no single-dash long options, so `-noexec` would read as `-n -o -e …`. Only
/// arguments after `run` and before `--` are touched; `-slab-allocate N` without a unit means
/// N Kb, as in llvm-jitlink.
fn llvm_jitlink_spellings(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const RENAMES: [(&str, &str); 9] = [
        ("noexec", "--noexec"),
        ("slab-address", "--slab-address"),
        ("slab-page-size", "--slab-page-size"),
        ("slab-allocate", "--slab-size"),
        ("abs", "--define"),
        ("define-abs", "--define"),
        ("check", "--check"),
        ("check-name", "--check-name"),
        ("no-process-syms", "--no-process-symbols"),
    ];
    let mut out = Vec::new();
    let mut subcommand = None;
    let mut after_dashes = false;
    let mut slab_value_next = false;
    for (i, arg) in args.into_iter().enumerate() {
        let Some(text) = arg.to_str().filter(|_| i > 0 && !after_dashes) else {
            out.push(arg);
            continue;
        };
        if std::mem::take(&mut slab_value_next) {
            out.push(kb_default(text).into());
            continue;
        }
        // The subcommand is the first argument that is not an option.
        if subcommand.is_none() && !text.starts_with('-') {
            subcommand = Some(text == "run");
            out.push(arg);
            continue;
        }
        if subcommand != Some(true) {
            out.push(arg);
            continue;
        }
        if text == "--" {
            after_dashes = true;
            out.push(arg);
            continue;
        }
        let name = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .filter(|n| n.len() > 1);
        let (name, value) = match name.map(|n| n.split_once('=').unwrap_or((n, ""))) {
            Some((n, v)) => (n, v),
            None => {
                out.push(arg);
                continue;
            }
        };
        match RENAMES.iter().find(|(from, _)| *from == name) {
            Some((from, to)) => {
                let value = if *from == "slab-allocate" && !value.is_empty() {
                    kb_default(value)
                } else {
                    value.to_string()
                };
                slab_value_next = *from == "slab-allocate" && !text.contains('=');
                out.push(if text.contains('=') {
                    format!("{to}={value}").into()
                } else {
                    (*to).into()
                });
            }
            None => out.push(arg),
        }
    }
    out
}

/// llvm-jitlink's -slab-allocate counts in Kb when no unit is given.
fn kb_default(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) {
        format!("{v}Kb")
    } else {
        v.to_string()
    }
}

fn parse_define(s: &str) -> Result<(String, u64), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SYM=ADDR, got {s:?}"))?;
    Ok((name.to_string(), parse_addr(addr)?))
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(llvm_jitlink_spellings(std::env::args_os()));
    let r = match cli.command {
        Command::Run(a) => run(*a),
        Command::Bench(b) => bench::run(b).map(|_| 0),
        Command::Executor { args } => {
            std::process::exit(kiln_remote::executor_main(&args, &["executor".into()]))
        }
    };
    match r {
        Ok(code) => {
            // Like returning from a native main: exit() runs the exit handlers of the JIT'd code
            // (then kiln's, which runs its destructors) and flushes its stdio buffers.
            std::process::exit(code)
        }
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(KILN_FAILED)
        }
    }
}

/// Compile C/C++ sources to objects in a temporary directory; returns (objects, any C++).
fn compile_sources(inputs: &[PathBuf], tmp: &Path) -> Result<(Vec<PathBuf>, bool)> {
    let mut out = Vec::new();
    let mut cxx = false;
    for (i, p) in inputs.iter().enumerate() {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let compiler = match ext {
            "c" => "cc",
            "cc" | "cpp" | "cxx" | "C" => {
                cxx = true;
                "c++"
            }
            _ => {
                out.push(p.clone());
                continue;
            }
        };
        std::fs::create_dir_all(tmp)?;
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("input");
        let obj = tmp.join(format!("{i}-{stem}.o"));
        let status = std::process::Command::new(compiler)
            .args(["-c", "-g", "-O2", "-o"])
            .arg(&obj)
            .arg(p)
            .status()
            .with_context(|| format!("cannot run {compiler} to compile {}", p.display()))?;
        if !status.success() {
            bail!("{compiler} failed to compile {}", p.display());
        }
        out.push(obj);
    }
    Ok((out, cxx))
}

/// Start or reach the executor the user chose.
fn remote_executor(choice: &ExecutorChoice, r: &RemoteArgs) -> Result<kiln_remote::RemoteExecutor> {
    let token = match &r.token_file {
        Some(f) => Some(kiln_remote::Token::from_file(f).map_err(anyhow::Error::msg)?),
        None => kiln_remote::Token::from_env()
            .transpose()
            .map_err(anyhow::Error::msg)?,
    };
    let opts = kiln_remote::Options {
        memory: r.memory,
        token,
        attach_stdio: true,
    };
    Ok(match choice {
        ExecutorChoice::Connect(e) => kiln_remote::RemoteExecutor::connect(e, opts)?,
        _ => {
            let (program, args) = executor_program()?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kiln_remote::RemoteExecutor::spawn(&program, &args, opts)?
        }
    })
}

/// `KILN_EXECUTOR`, else `kiln-executor` next to this program, else this program acting as
/// one (`kiln executor`).
fn executor_program() -> Result<(PathBuf, Vec<String>)> {
    if let Some(p) = std::env::var_os("KILN_EXECUTOR") {
        return Ok((PathBuf::from(p), Vec::new()));
    }
    let me = std::env::current_exe().context("locating the kiln executable")?;
    let sibling = me.with_file_name("kiln-executor");
    if sibling.is_file() {
        return Ok((sibling, Vec::new()));
    }
    Ok((me, vec!["executor".into()]))
}

/// The program's exit status when its executor process ended on its own: the program called
/// `exit()` (its status is ours), or it died by a signal (say so; 128 + signal, like a shell).
fn executor_end(report: kiln_remote::ExitReport) -> i32 {
    match report {
        kiln_remote::ExitReport::Code(c) => c,
        kiln_remote::ExitReport::Signal(sig) => {
            eprintln!(
                "kiln: the executor process was killed by signal {sig}{}",
                kiln_target::signal_name(sig)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            128 + sig
        }
        kiln_remote::ExitReport::Unknown => {
            eprintln!("kiln: the executor process is gone");
            KILN_FAILED as i32
        }
    }
}

/// If `e` says the executor process ended, how.
fn ended(e: &kiln::Error) -> Option<kiln_remote::ExitReport> {
    match e {
        kiln::Error::Target(kiln_target::Error::ExecutorExited { code, signal }) => {
            Some(match (code, signal) {
                (_, Some(s)) => kiln_remote::ExitReport::Signal(*s),
                (Some(c), None) => kiln_remote::ExitReport::Code(*c),
                _ => kiln_remote::ExitReport::Unknown,
            })
        }
        _ => None,
    }
}

fn run(a: RunArgs) -> Result<i32> {
    let mut remote: Option<Arc<kiln_remote::RemoteExecutor>> = None;
    // --noexec --slab-address: fake addresses, nothing mapped (see kiln::check::SlabExecutor).
    let mut s = match (a.noexec, a.slab_address) {
        (true, Some(base)) => Session::new(Arc::new(
            kiln::check::SlabExecutor::new(
                base,
                a.slab_page_size.unwrap_or(4096),
                !a.no_process_symbols,
            )
            .map_err(anyhow::Error::msg)?,
        )),
        _ => match &a.remote.executor {
            ExecutorChoice::InProcess => Session::in_process(),
            choice => {
                let ex = Arc::new(remote_executor(choice, &a.remote)?);
                remote = Some(Arc::clone(&ex));
                Session::new(ex)
            }
        },
    };
    s.set_want_map(!a.check.is_empty());
    s.search.dirs = a.lib_dirs.clone();
    s.search.static_only = a.static_only;
    s.set_process_symbols(!a.no_process_symbols);
    s.set_fixed_address(a.slab_address);
    s.set_debug(a.debug.options()?);
    if let Some(f) = &a.allow_symbols {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading allow-list {}", f.display()))?;
        let names = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        s.set_allow_list(Some(names));
    }
    for (n, v) in &a.defines {
        s.define(n.clone(), *v);
    }
    let tmp = std::env::temp_dir().join(format!("kiln-{}", std::process::id()));
    let compiled = compile_sources(&a.inputs, &tmp);
    let (objects, cxx) = match compiled {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let added: Result<()> = (|| {
        for o in &objects {
            s.add_file(o)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    added?;
    let mut libs = a.libs.clone();
    if cxx {
        for l in ["stdc++", "m"] {
            if !libs.iter().any(|x| x == l) {
                libs.push(l.to_string());
            }
        }
    }
    for l in &libs {
        s.add_library(l)?;
    }
    s.add_root(a.entry.clone());
    let unit = s.link()?;
    if let Some(limit) = a.slab_size {
        check_slab_size(&s, unit, a.slab_address, limit)?;
    }
    if !run_checks(&s, unit, &a)? {
        return Ok(1);
    }
    if a.show_stats {
        if let Some(st) = s.stats(unit) {
            eprintln!("{st}");
        }
    }
    if a.noexec {
        // The process exits next: unmapping and deregistering first would be wasted work.
        std::mem::forget(s);
        return match remote {
            Some(ex) => Ok(executor_end(ex.exit(0)?)),
            None => Ok(0),
        };
    }
    let mut argv = vec![a.inputs[0].display().to_string()];
    argv.extend(a.args.iter().cloned());
    let status = s
        .run_initializers()
        .and_then(|_| s.run_main(&a.entry, &argv));
    // The session is not dropped: the process exits with the code still mapped, as a native
    // program does, so exit handlers that reference it are safe.
    std::mem::forget(s);
    match (remote, status) {
        (None, status) => Ok(status?),
        // The executor leaves as a native program would; its end is the program's.
        (Some(ex), Ok(status)) => Ok(executor_end(ex.exit(status)?)),
        (Some(_), Err(e)) => match ended(&e) {
            Some(report) => Ok(executor_end(report)),
            None => Err(e.into()),
        },
    }
}

/// `--slab-size`: the unit, from the slab address (or its lowest segment), must fit.
fn check_slab_size(s: &Session, unit: kiln::UnitId, base: Option<u64>, limit: u64) -> Result<()> {
    let Some(st) = s.stats(unit) else {
        return Ok(());
    };
    let lo = st.segments.iter().map(|g| g.1).min().unwrap_or(0);
    let hi = st.segments.iter().map(|g| g.1 + g.2).max().unwrap_or(lo);
    let used = hi - base.unwrap_or(lo).min(lo);
    if used > limit {
        bail!(
            "the linked unit needs {used:#x} bytes, more than the slab's {limit:#x} (--slab-size)"
        );
    }
    Ok(())
}

/// `--check FILE…`: prints failures and a count per file; false if any check failed.
fn run_checks(s: &Session, unit: kiln::UnitId, a: &RunArgs) -> Result<bool> {
    let mut ok = true;
    for f in &a.check {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading check file {}", f.display()))?;
        let report = kiln::check::check_unit(
            s,
            unit,
            &text,
            &a.check_name,
            &a.defines,
            !a.no_process_symbols,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for failure in &report.failures {
            eprintln!("kiln: {}: {failure}", f.display());
        }
        if report.ok() {
            eprintln!("kiln: {}: {} checks passed", f.display(), report.passed);
        } else {
            eprintln!(
                "kiln: {}: {} of {} checks failed",
                f.display(),
                report.failures.len(),
                report.total()
            );
            ok = false;
        }
    }
    Ok(ok)
}

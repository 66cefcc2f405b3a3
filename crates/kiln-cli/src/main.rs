//! `kiln`: link relocatable objects, archives and C/C++ sources into memory and run them.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kiln::Session;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod bench;
mod cxx_runtime;
mod lazy;
mod llvm_jitlink;

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
                      kiln run --executor spawn --memory copy hello.c\n\n\
                      llvm-jitlink's spellings work too, with one dash or two: -noexec, \
                      -entry=SYM, -abs/-define-abs SYM=ADDR, -slab-address, -slab-allocate \
                      (a bare number means Kb), -slab-page-size, -check, -check-name, \
                      -no-process-syms, -show-times/-show-sizes (--show-stats), \
                      -debugger-support (--gdb), -perf-support, -oop-executor[=PATH] \
                      (--executor spawn), -oop-executor-connect=HOST:PORT, -preload=LIB (an \
                      input), -args A B (after --), -L DIR, -lNAME; for example \
                      `kiln run -noexec -slab-allocate 100Kb -slab-address 0x7ff00000 -abs \
                      far=0x123456789000 -check test.s test.o`."
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
    #[arg(long, visible_alias = "no-process-syms")]
    no_process_symbols: bool,
    /// Do not add the C++ runtime. When the inputs reference it (`__cxa_throw`, `std::`,
    /// operator new, … — C++ objects, archives or sources), kiln links `-lstdc++ -lm -lgcc_s`
    /// after the other libraries, as `g++` does (KILN_LOG=info says so).
    #[arg(long)]
    no_cxx_runtime: bool,
    /// Define an absolute symbol (hex with 0x, or decimal). The symbols the linker defines
    /// for the unit (_GLOBAL_OFFSET_TABLE_, __dso_handle, _TLS_MODULE_BASE_) cannot be given.
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
    #[arg(long, value_name = "NAME", default_value = kiln::internal::check::DEFAULT_CHECK_NAME)]
    check_name: String,
    /// Only the symbols listed in FILE (one per line, `#` starts a comment) may be bound outside
    /// the linked inputs (libraries, the process, --define); any other reference fails the link
    /// before anything runs, naming the symbol and the object.
    #[arg(long, value_name = "FILE")]
    allow_symbols: Option<PathBuf>,
    /// Print statistics after linking (to stderr): segments, sections, symbols, edges by kind,
    /// GOT entries, stubs, relaxations, archive members, time per phase. With --lazy, also
    /// (when the program returns) how many inputs and bytes were linked of how many available.
    #[arg(long, visible_aliases = ["show-times", "show-sizes"])]
    show_stats: bool,
    /// Link the objects and archive members given on the command line when they are first
    /// needed, not up front (as llvm-jitlink's lazy mode): calls to their functions go through
    /// lazy stubs whose first call links the object and then gets out of the way (the call
    /// that entered the stub is patched to call the function directly where one atomic store
    /// can do it); a reference to their data links the object at once. The object defining the
    /// entry point, objects with constructors, and -l libraries are linked up front. A
    /// function's address taken outside its object is its stub's. See docs/lazy.md.
    #[arg(long, conflicts_with = "slab_address")]
    lazy: bool,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    debug: DebugArgs,
}

#[derive(Args)]
#[command(next_help_heading = "Out-of-process execution (see docs/protocol.md)")]
struct RemoteArgs {
    /// Where the code runs: `inprocess` (this process), `spawn` (a new kiln-executor child
    /// process, found next to kiln or through KILN_EXECUTOR; `spawn=PATH` runs PATH), or
    /// `connect=unix:PATH` /
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
    /// A child process: this executor program, or the default one.
    Spawn(Option<PathBuf>),
    Connect(kiln_remote::Endpoint),
}

fn parse_executor(s: &str) -> Result<ExecutorChoice, String> {
    match s {
        "inprocess" | "in-process" => Ok(ExecutorChoice::InProcess),
        "spawn" => Ok(ExecutorChoice::Spawn(None)),
        _ => match (s.strip_prefix("connect="), s.strip_prefix("spawn=")) {
            (Some(e), _) => e
                .parse()
                .map(ExecutorChoice::Connect)
                .map_err(|e: kiln_remote::SetupError| e.to_string()),
            (_, Some(program)) if !program.is_empty() => {
                Ok(ExecutorChoice::Spawn(Some(program.into())))
            }
            _ => Err(format!(
                "{s:?}: expected inprocess, spawn, spawn=PROGRAM, connect=unix:PATH or \
                 connect=tcp:HOST:PORT"
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
    #[arg(long, visible_alias = "debugger-support")]
    gdb: bool,
    /// Write /tmp/perf-PID.map (one line per JIT'd function and stub) for `perf report`.
    #[arg(long)]
    perf_map: bool,
    /// Write DIR/jit-PID.dump (code, names, line tables) for `perf inject --jit`; DIR defaults
    /// to the current directory.
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true, default_missing_value = ".")]
    jitdump: Option<PathBuf>,
    /// llvm-jitlink's -perf-support: a jitdump where LLVM's perf support writes it,
    /// $JITDUMPDIR/.debug/jit/llvm-IR-jit-DATE-XXXXXX/jit-PID.dump ($HOME when JITDUMPDIR is
    /// not set).
    #[arg(long, conflicts_with = "jitdump")]
    perf_support: bool,
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
        if self.perf_support {
            o.jitdump = Some(llvm_jitlink::perf_support_dir().map_err(anyhow::Error::msg)?);
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
    let cli = parse_command_line();
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

/// The command line, in kiln's spellings or llvm-jitlink's (see [`llvm_jitlink`]); exits with
/// clap's message and status 2 when it is wrong, as clap does.
fn parse_command_line() -> Cli {
    let mut command = Cli::command();
    let run = command.find_subcommand("run");
    let long_names: Vec<String> = run
        .into_iter()
        .flat_map(|r| r.get_arguments())
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
        })
        .map(str::to_string)
        .collect();
    let args = match llvm_jitlink::rewrite(std::env::args_os(), &long_names) {
        Ok(args) => args,
        Err(e) => command
            .error(clap::error::ErrorKind::UnknownArgument, e)
            .exit(),
    };
    let matches = command.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Compile C/C++ sources to objects in a temporary directory; returns the objects (and the
/// other inputs, in order) and the first C++ source, if any.
fn compile_sources(inputs: &[PathBuf], tmp: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let mut out = Vec::new();
    let mut cxx = None;
    for (i, p) in inputs.iter().enumerate() {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let compiler = match ext {
            "c" => "cc",
            "cc" | "cpp" | "cxx" | "C" => {
                cxx.get_or_insert_with(|| p.clone());
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

/// Add the inputs (sources compiled first), the `-l` libraries, and after them the C++
/// runtime when the inputs need it (see [`cxx_runtime`]). With `--lazy`, objects and archive
/// members wait in a [`lazy::LazyLinker`] (returned) but those linked up front.
fn add_inputs(s: &Arc<Session>, a: &RunArgs) -> Result<Option<Arc<lazy::LazyLinker>>> {
    let tmp = std::env::temp_dir().join(format!("kiln-{}", std::process::id()));
    let added = compile_sources(&a.inputs, &tmp).and_then(|(objects, cxx_source)| {
        let waiting = if a.lazy {
            Some(lazy_inputs(s, &objects)?)
        } else {
            for o in &objects {
                s.add_file(o)?;
            }
            None
        };
        // Before the compiled objects are removed with the directory.
        Ok((
            waiting,
            cxx_runtime_reason(s, a, &objects, cxx_source.as_deref()),
        ))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    let (waiting, reason) = added?;
    let mut libs = a.libs.clone();
    if let Some(reason) = reason {
        let extra: Vec<String> = cxx_runtime::libraries(a.static_only)
            .iter()
            .filter(|l| !libs.iter().any(|x| x == *l))
            .map(|l| l.to_string())
            .collect();
        tracing::info!(
            "{reason}: linking {} as g++ does (--no-cxx-runtime turns this off)",
            extra
                .iter()
                .map(|l| format!("-l{l}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        libs.extend(extra);
    }
    for l in &libs {
        if a.lazy {
            // Loaded now, so that the lazy linker sees which names they define.
            let p = s.library_search().find(l)?;
            if kiln::internal::identify(&file_start(&p)?) == kiln::internal::FileKind::SharedLibrary
            {
                s.add_shared_library(&p)?;
            }
        }
        s.add_library(l)?;
    }
    let Some(waiting) = waiting else {
        return Ok(None);
    };
    let setup = lazy::LazyLinker::setup(s, waiting, &a.entry)?;
    for input in setup.eager {
        s.add_object(input.name, input.bytes);
    }
    Ok(Some(setup.linker))
}

/// `--lazy`: the objects and archive members among `files`, read; other files (shared
/// libraries, linker scripts) are added as usual.
fn lazy_inputs(s: &Session, files: &[PathBuf]) -> Result<Vec<lazy::Input>> {
    use kiln::internal::FileKind;
    let mut inputs = Vec::new();
    for f in files {
        let name = f.display().to_string();
        match kiln::internal::identify(&file_start(f)?) {
            FileKind::Relocatable => {
                let bytes = std::fs::read(f).with_context(|| format!("reading {name}"))?;
                inputs.push(lazy::Input::parse(name, bytes)?);
            }
            FileKind::Archive => {
                let bytes = std::fs::read(f).with_context(|| format!("reading {name}"))?;
                inputs.extend(lazy::Input::members(&name, &bytes)?);
            }
            _ => s.add_file(f)?,
        }
    }
    Ok(inputs)
}

/// The first bytes of a file: enough to tell what it is.
fn file_start(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut start = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut start))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(start)
}

/// Why the C++ runtime is linked, or None: a C++ source among the inputs, or an input (object,
/// archive member, `-l` archive) that references the runtime.
fn cxx_runtime_reason(
    s: &Session,
    a: &RunArgs,
    objects: &[PathBuf],
    cxx_source: Option<&Path>,
) -> Option<String> {
    if a.no_cxx_runtime {
        return None;
    }
    if let Some(src) = cxx_source {
        return Some(format!("{} is C++", src.display()));
    }
    let mut files = objects.to_vec();
    files.extend(
        a.libs
            .iter()
            .filter_map(|l| s.library_search().find(l).ok()),
    );
    cxx_runtime::first_reference(&files)
        .map(|r| format!("{} references the C++ runtime ({})", r.input, r.symbol))
}

/// Start or reach the executor the user chose.
fn remote_executor(choice: &ExecutorChoice, r: &RemoteArgs) -> Result<kiln_remote::RemoteExecutor> {
    let token = match &r.token_file {
        // The errors name the file or KILN_TOKEN.
        Some(f) => Some(kiln_remote::Token::from_file(f)?),
        None => kiln_remote::Token::from_env().transpose()?,
    };
    let opts = kiln_remote::Options {
        memory: r.memory,
        token,
        attach_stdio: true,
    };
    Ok(match choice {
        ExecutorChoice::Connect(e) => kiln_remote::RemoteExecutor::connect(e, opts)?,
        ExecutorChoice::Spawn(Some(program)) => {
            kiln_remote::RemoteExecutor::spawn(program, &[], opts)?
        }
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
    // --noexec --slab-address: fake addresses, nothing mapped (see kiln::internal::check::SlabExecutor).
    let s = Arc::new(match (a.noexec, a.slab_address) {
        (true, Some(base)) => Session::new(Arc::new(
            kiln::internal::check::SlabExecutor::new(
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
    });
    s.set_want_map(!a.check.is_empty());
    // One link: its statistics cost nothing worth saving (--show-stats, --slab-size read them).
    s.set_collect_stats(true);
    s.set_library_search(kiln::LibrarySearch {
        dirs: a.lib_dirs.clone(),
        static_only: a.static_only,
    });
    s.set_process_symbols(!a.no_process_symbols);
    s.set_fixed_address(a.slab_address);
    s.set_debug(a.debug.options()?);
    if let Some(f) = &a.allow_symbols {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading allow-list {}", f.display()))?;
        let names = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty());
        s.set_allow_list(names);
    }
    for (n, v) in &a.defines {
        if let Some(sym) = kiln::internal::check::linker_defined(n) {
            bail!(
                "--define {n}: `{n}` is defined by the linker ({}); no --define can change it",
                sym.meaning
            );
        }
        s.define(n.clone(), *v);
    }
    let lazy = add_inputs(&s, &a)?;
    s.add_root(a.entry.clone());
    // With --lazy the main unit keeps its edges, so that a stub's first call finds every
    // direct call of it the unit makes (Session::bypass_lazy_stub).
    let unit = s.link_with(&kiln::UnitOptions {
        relink: lazy.is_some(),
        ..kiln::UnitOptions::new(s.default_scope())
    })?;
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
    let lazy_stats = || {
        if let (true, Some(l)) = (a.show_stats, &lazy) {
            eprintln!("{}", l.stats());
        }
    };
    if a.noexec {
        lazy_stats();
        // The process exits next: unmapping and deregistering first would be wasted work.
        detach(s);
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
    lazy_stats();
    // The session is not dropped: the process exits with the code still mapped, as a native
    // program does, so exit handlers that reference it are safe.
    detach(s);
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

/// Leave the session's code mapped for the process's exit (see [`Session::detach`]). With
/// `--lazy` a resolution in progress on another thread may still hold the session: it is then
/// leaked, which leaves the code mapped too.
fn detach(s: Arc<Session>) {
    match Arc::try_unwrap(s) {
        Ok(s) => s.detach(),
        Err(shared) => std::mem::forget(shared),
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
        let report = kiln::internal::check::check_unit(
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

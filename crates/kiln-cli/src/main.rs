//! `kiln`: link relocatable objects, archives and C/C++ sources into memory and run them.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kiln::Session;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
                      kiln run --show-stats --noexec prog.o -L build -lfoo"
    )]
    Run(RunArgs),
    /// Measure linking (kiln vs llvm-jitlink) on the corpus drivers; prints ratios.
    Bench(bench::BenchArgs),
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
    #[arg(long = "define", value_name = "SYM=ADDR", value_parser = parse_define)]
    defines: Vec<(String, u64)>,
    /// The function to call: `int SYM(int argc, char **argv, char **envp)`.
    #[arg(long, default_value = "main", value_name = "SYM")]
    entry: String,
    /// Link and finalize memory (addresses, fixups, protections) but run nothing, not even
    /// constructors.
    #[arg(long)]
    noexec: bool,
    /// Place the linked code at exactly this address.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    slab_address: Option<u64>,
    /// Only the symbols listed in FILE (one per line, `#` starts a comment) may be bound outside
    /// the linked inputs (libraries, the process, --define); any other reference fails the link
    /// before anything runs, naming the symbol and the object.
    #[arg(long, value_name = "FILE")]
    allow_symbols: Option<PathBuf>,
    /// Print statistics after linking (to stderr): segments, sections, symbols, edges by kind,
    /// GOT entries, stubs, relaxations, archive members, time per phase.
    #[arg(long)]
    show_stats: bool,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not an address: {e}"))
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
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Run(a) => run(a),
        Command::Bench(b) => bench::run(b).map(|_| 0),
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

fn run(a: RunArgs) -> Result<i32> {
    let mut s = Session::in_process();
    s.search.dirs = a.lib_dirs.clone();
    s.search.static_only = a.static_only;
    s.set_process_symbols(!a.no_process_symbols);
    s.set_fixed_address(a.slab_address);
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
    if a.show_stats {
        if let Some(st) = s.stats(unit) {
            eprintln!("{st}");
        }
    }
    if a.noexec {
        return Ok(0);
    }
    s.run_initializers()?;
    let mut argv = vec![a.inputs[0].display().to_string()];
    argv.extend(a.args.iter().cloned());
    let status = s.run_main(&a.entry, &argv)?;
    // The session is not dropped: the process exits with the code still mapped, as a native
    // program does, so exit handlers that reference it are safe.
    std::mem::forget(s);
    Ok(status)
}

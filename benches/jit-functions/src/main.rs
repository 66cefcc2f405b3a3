//! Issues 4 and 11's benchmarks: 100,000 small functions linked by kiln (one at a time, from
//! several threads, in batches, with each debug sink on), by cranelift-jit and by a naive
//! page-per-function loop (functions per second, memory per code byte); and the time to link
//! and remove the SQLite corpus driver. See docs/bench-jit.md.
//!
//! Each linker runs in a child process of its own (this executable again, with `--child NAME`),
//! so that every one starts from the same memory baseline and none inherits another's heap.

mod code;
mod corpus;
mod cranelift;
mod harness;
mod kiln_jit;
mod naive;
mod procmem;
mod report;

use harness::Schedule;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

const USAGE: &str = "\
usage: jit-functions [--count N] [--runs N] [--threads N] [--batch N] [--time-limit SECS]
                     [--only NAME,...] [--cranelift-arena] [--host-by-dlsym] [--kiln-frames]
                     [--corpus DIR] [--corpus-runs N] [--no-corpus]

  --count N          functions to link (default 100000)
  --runs N           run every linker N times, round robin; the table shows the median run
                     (default 3)
  --threads N        compiler threads of the threaded kiln rows (default 2)
  --batch N          graphs per call in the batch rows (default 1000): Session::link_graphs
                     (a unit each), Session::link_graphs_as_unit and link_functions_with (one
                     unit), and cranelift-jit finalizing once per batch
  --time-limit SECS  stop a linker's loop after this long and report what it linked (default 300)
  --only LIST        run only these: naive, cranelift, cranelift-arena, kiln, kiln-borrowed, kiln-threads,
                     kiln-borrowed-threads, kiln-sessions, kiln-batch, kiln-batch-unit, kiln-borrowed-unit,
                     cranelift-batch, kiln-gdb, kiln-perf-map, kiln-jitdump, kiln-all-sinks, kiln-stats, corpus
  --cranelift-arena  also run cranelift-jit with its ArenaMemoryProvider
  --host-by-dlsym    kiln and cranelift-jit find `abs` themselves instead of being given it
  --kiln-frames      kiln writes and registers an FDE per function (FrameDescription::FramePointer)
  --corpus DIR       the corpus (tests/corpus/setup.sh DIR), default /tmp/corpus
  --corpus-runs N    link-and-remove runs of the SQLite driver (default 50)
  --no-corpus        skip the SQLite benchmark
";

#[derive(Clone)]
pub struct Options {
    count: usize,
    runs: usize,
    threads: usize,
    batch: usize,
    time_limit: u64,
    only: Option<Vec<String>>,
    cranelift_arena: bool,
    host_by_dlsym: bool,
    kiln_frames: bool,
    corpus: PathBuf,
    corpus_runs: usize,
    no_corpus: bool,
    child: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        count: 100_000,
        runs: 3,
        threads: 2,
        batch: 1000,
        time_limit: 300,
        only: None,
        cranelift_arena: false,
        host_by_dlsym: false,
        kiln_frames: false,
        corpus: PathBuf::from("/tmp/corpus"),
        corpus_runs: 50,
        no_corpus: false,
        child: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{a} needs {what}"));
        let number = |v: String| {
            v.replace('_', "")
                .parse::<usize>()
                .map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--count" => o.count = number(value("a count")?)?,
            "--runs" => o.runs = number(value("a count")?)?.max(1),
            "--threads" => o.threads = number(value("a count")?)?.max(1),
            "--batch" => o.batch = number(value("a count")?)?.max(1),
            "--time-limit" => o.time_limit = number(value("seconds")?)? as u64,
            "--only" => {
                o.only = Some(
                    value("a list")?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                )
            }
            "--cranelift-arena" => o.cranelift_arena = true,
            "--host-by-dlsym" => o.host_by_dlsym = true,
            "--kiln-frames" => o.kiln_frames = true,
            "--corpus" => o.corpus = PathBuf::from(value("a directory")?),
            "--corpus-runs" => o.corpus_runs = number(value("a count")?)?.max(1),
            "--no-corpus" => o.no_corpus = true,
            "--child" => o.child = Some(value("a name")?),
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if let Some(only) = &o.only {
        let known = linkers(&o);
        if let Some(bad) = only
            .iter()
            .find(|n| *n != "corpus" && !known.iter().any(|l| l.name == n.as_str()))
        {
            return Err(format!("--only: unknown name {bad}"));
        }
    }
    Ok(o)
}

/// A linker under test, as the parent runs it: its name (for `--only` and `--child`), its label
/// in the table, and whether it is a table row (the stats run is a diagnostic, printed apart).
pub struct Linker {
    pub name: &'static str,
    pub label: String,
    pub in_table: bool,
}

/// Every linker, in the order they run in each round.
fn linkers(o: &Options) -> Vec<Linker> {
    let row = |name, label: &str| Linker {
        name,
        label: label.to_string(),
        in_table: true,
    };
    vec![
        row("naive", "naive mmap"),
        row("cranelift", "cranelift-jit"),
        row("cranelift-arena", "cranelift-jit (arena)"),
        row("kiln", "kiln, 1 thread"),
        row("kiln-borrowed", "kiln, link_function"),
        row("kiln-threads", &format!("kiln, {} threads", o.threads)),
        row(
            "kiln-borrowed-threads",
            &format!("kiln, {} threads, link_function", o.threads),
        ),
        row(
            "kiln-sessions",
            &format!("kiln, {} thr, {} sessions", o.threads, o.threads),
        ),
        row("kiln-batch", &format!("kiln, batches of {}", o.batch)),
        row("kiln-batch-unit", &format!("kiln, {} a unit", o.batch)),
        row(
            "kiln-borrowed-unit",
            &format!("kiln, {} a unit, link_functions", o.batch),
        ),
        row(
            "cranelift-batch",
            &format!("cranelift-jit, {} a finalize", o.batch),
        ),
        row("kiln-gdb", "kiln + gdb"),
        row("kiln-perf-map", "kiln + perf map"),
        row("kiln-jitdump", "kiln + jitdump"),
        row("kiln-all-sinks", "kiln + all sinks"),
        Linker {
            name: "kiln-stats",
            label: "kiln, stats on".into(),
            in_table: false,
        },
    ]
}

fn wanted(o: &Options, name: &str) -> bool {
    match &o.only {
        Some(list) => list.iter().any(|x| x == name),
        None => name != "cranelift-arena" || o.cranelift_arena,
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("jit-functions: {e}");
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = o.child.clone() {
        return child(&o, &name);
    }
    parent(&o)
}

// ---- child: run one linker, print machine-readable lines on stdout ----

/// How the child runs linker `name`: its schedule, and for kiln its setup.
fn plan(o: &Options, name: &str) -> Result<(Schedule, Option<kiln_jit::KilnSetup>), String> {
    let one = Schedule::OneAtATime { timed: false };
    let (schedule, sinks) = match name {
        "naive" | "cranelift" | "cranelift-arena" => return Ok((one, None)),
        "cranelift-batch" => return Ok((Schedule::UnitBatches(o.batch), None)),
        "kiln" | "kiln-borrowed" => (one, "none"),
        "kiln-threads" | "kiln-sessions" | "kiln-borrowed-threads" => {
            (Schedule::Threads(o.threads), "none")
        }
        "kiln-batch" => (Schedule::Batches(o.batch), "none"),
        "kiln-batch-unit" | "kiln-borrowed-unit" => (Schedule::UnitBatches(o.batch), "none"),
        "kiln-gdb" => (one, "gdb"),
        "kiln-perf-map" => (one, "perf-map"),
        "kiln-jitdump" => (one, "jitdump"),
        "kiln-all-sinks" => (one, "all"),
        "kiln-stats" => (Schedule::OneAtATime { timed: true }, "none"),
        _ => return Err(format!("unknown linker {name}")),
    };
    let setup = kiln_jit::KilnSetup {
        debug: kiln_jit::debug_options(sinks)?,
        stats: name == "kiln-stats",
        sessions: if name == "kiln-sessions" {
            o.threads
        } else {
            1
        },
        host_by_dlsym: o.host_by_dlsym,
        frames: o.kiln_frames,
        borrowed: name.starts_with("kiln-borrowed"),
    };
    Ok((schedule, Some(setup)))
}

fn child(o: &Options, name: &str) -> ExitCode {
    if name == "corpus" {
        match corpus::run(&o.corpus, o.corpus_runs) {
            Ok(lines) => lines.iter().for_each(|l| println!("DETAIL {l}")),
            Err(e) => println!("CORPUS_ERR {e}"),
        }
        return ExitCode::SUCCESS;
    }
    let (schedule, setup) = match plan(o, name) {
        Ok(p) => p,
        Err(e) => {
            println!("STOPPED {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut inputs = code::inputs(o.count, schedule.chains());
    let (count, dlsym) = (o.count, o.host_by_dlsym);
    let kiln_setup = setup.clone();
    let make = move || -> Result<Box<dyn harness::Jit>, String> {
        if let Some(setup) = &kiln_setup {
            return Ok(Box::new(kiln_jit::KilnJit::new(setup)?));
        }
        Ok(match name {
            "naive" => Box::new(naive::NaiveJit::new()),
            "cranelift" | "cranelift-batch" => Box::new(cranelift::CraneliftJit::new(
                cranelift::Memory::System,
                count,
                dlsym,
            )?),
            "cranelift-arena" => Box::new(cranelift::CraneliftJit::new(
                cranelift::Memory::Arena,
                count,
                dlsym,
            )?),
            _ => return Err(format!("unknown linker {name}")),
        })
    };
    let limit = Duration::from_secs(o.time_limit);
    let result = harness::run(&make, &mut inputs, schedule, limit, name);
    if let Some(setup) = &setup {
        kiln_jit::remove_sink_files(&setup.debug);
    }
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            println!("STOPPED {e}");
            return ExitCode::FAILURE;
        }
    };
    let g = r.growth;
    println!(
        "RESULT requested={} done={} code_bytes={} elapsed_ns={} cpu_ns={} vm_size={} \
         vm_rss={} exec={} exec_rss={} maps={}",
        r.requested,
        r.done,
        r.code_bytes,
        r.elapsed.as_nanos(),
        r.cpu.as_nanos(),
        g.vm_size,
        g.vm_rss,
        g.exec_mapped,
        g.exec_rss,
        g.mappings
    );
    match &r.verified {
        Ok(s) => println!("VERIFY_OK {s}"),
        Err(e) => println!("VERIFY_ERR {e}"),
    }
    if let Some(s) = &r.stopped {
        println!("STOPPED {s}");
    }
    for d in &r.details {
        println!("DETAIL {d}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Skip tearing down 100,000 units (and the inputs): not measured.
    std::process::exit(0)
}

// ---- parent: run each linker in a child, print the table ----

fn run_child(o: &Options, name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--child", name])
        .args(["--count", &o.count.to_string()])
        .args(["--threads", &o.threads.to_string()])
        .args(["--batch", &o.batch.to_string()])
        .args(["--time-limit", &o.time_limit.to_string()])
        .args(["--corpus-runs", &o.corpus_runs.to_string()])
        .arg("--corpus")
        .arg(&o.corpus);
    if o.host_by_dlsym {
        cmd.arg("--host-by-dlsym");
    }
    if o.kiln_frames {
        cmd.arg("--kiln-frames");
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !text.contains("RESULT ") && !text.contains("DETAIL ") && !text.contains("_ERR ") {
        return Err(format!(
            "the child process failed ({}){}",
            out.status,
            if text.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", text.trim())
            }
        ));
    }
    Ok(text)
}

fn parent(o: &Options) -> ExitCode {
    let all = linkers(o);
    let chosen: Vec<&Linker> = all.iter().filter(|l| wanted(o, l.name)).collect();
    let load_before = report::load_average();
    let mut runs: Vec<Vec<report::Run>> = chosen.iter().map(|_| Vec::new()).collect();
    // Round robin: a burst of load from the machine's other users falls on every linker alike.
    for round in 0..o.runs {
        for (l, runs) in chosen.iter().zip(&mut runs) {
            eprintln!(
                "running {} (round {} of {}) ...",
                l.label,
                round + 1,
                o.runs
            );
            runs.push(match run_child(o, l.name) {
                Ok(text) => report::parse_run(&text),
                Err(e) => report::Run::failed(o.count, e),
            });
        }
    }
    if !chosen.is_empty() {
        let rows: Vec<report::Row> = chosen
            .iter()
            .zip(runs)
            .map(|(l, runs)| report::Row::of(l, runs))
            .collect();
        report::print(o, &rows, [load_before, report::load_average()]);
    }
    if !o.no_corpus && wanted(o, "corpus") {
        println!();
        eprintln!("running the SQLite corpus benchmark ...");
        match run_child(o, "corpus") {
            Ok(text) => {
                for line in text.lines() {
                    if let Some(l) = line.strip_prefix("DETAIL ") {
                        println!("{l}");
                    } else if let Some(e) = line.strip_prefix("CORPUS_ERR ") {
                        println!("SQLite benchmark skipped: {e}");
                    }
                }
            }
            Err(e) => println!("SQLite benchmark failed: {e}"),
        }
    }
    ExitCode::SUCCESS
}

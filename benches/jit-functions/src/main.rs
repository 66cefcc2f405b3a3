//! Issue 4's benchmarks: 100,000 small functions linked one at a time by kiln, by cranelift-jit
//! and by a naive page-per-function loop (functions per second, mapped bytes per code byte); and
//! the time to link and remove the SQLite corpus driver. See docs/bench-jit.md.
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

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

const USAGE: &str = "\
usage: jit-functions [--count N] [--time-limit SECS] [--only NAME,...] [--cranelift-arena]
                     [--host-by-dlsym] [--kiln-frames]
                     [--corpus DIR] [--corpus-runs N] [--no-corpus]

  --count N          functions to link (default 100000)
  --time-limit SECS  stop a linker's loop after this long and report what it linked (default 300)
  --only LIST        run only these: naive, cranelift, cranelift-arena, kiln, corpus
  --cranelift-arena  also run cranelift-jit with its ArenaMemoryProvider
  --host-by-dlsym    kiln and cranelift-jit find `abs` themselves instead of being given it
  --kiln-frames      kiln writes and registers an FDE per function (FrameDescription::FramePointer)
  --corpus DIR       the corpus (tests/corpus/setup.sh DIR), default /tmp/corpus
  --corpus-runs N    link-and-remove runs of the SQLite driver (default 50)
  --no-corpus        skip the SQLite benchmark
";

#[derive(Clone)]
struct Options {
    count: usize,
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
    Ok(o)
}

/// The linkers under test, in the order they run: (name for --only, label in the table).
const JITS: [(&str, &str); 4] = [
    ("naive", "naive mmap"),
    ("cranelift", "cranelift-jit"),
    ("cranelift-arena", "cranelift-jit (arena)"),
    ("kiln", "kiln"),
];

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

fn child(o: &Options, name: &str) -> ExitCode {
    if name == "corpus" {
        match corpus::run(&o.corpus, o.corpus_runs) {
            Ok(lines) => lines.iter().for_each(|l| println!("DETAIL {l}")),
            Err(e) => println!("CORPUS_ERR {e}"),
        }
        return ExitCode::SUCCESS;
    }
    let mut inputs = code::inputs(o.count);
    let (count, dlsym, frames) = (o.count, o.host_by_dlsym, o.kiln_frames);
    let make = move || -> Result<Box<dyn harness::Jit>, String> {
        Ok(match name {
            "naive" => Box::new(naive::NaiveJit::new()),
            "cranelift" => Box::new(cranelift::CraneliftJit::new(
                cranelift::Memory::System,
                count,
                dlsym,
            )?),
            "cranelift-arena" => Box::new(cranelift::CraneliftJit::new(
                cranelift::Memory::Arena,
                count,
                dlsym,
            )?),
            "kiln" => Box::new(kiln_jit::KilnJit::new(dlsym, frames)),
            _ => return Err(format!("unknown linker {name}")),
        })
    };
    let limit = Duration::from_secs(o.time_limit);
    let r = match harness::run(&make, &mut inputs, limit, name) {
        Ok(r) => r,
        Err(e) => {
            println!("STOPPED {e}");
            return ExitCode::FAILURE;
        }
    };
    let g = r.growth;
    println!(
        "RESULT requested={} done={} code_bytes={} elapsed_ns={} vm_size={} vm_rss={} \
         exec={} exec_rss={} maps={}",
        r.requested,
        r.done,
        r.code_bytes,
        r.elapsed.as_nanos(),
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

#[derive(Default)]
struct Row {
    label: &'static str,
    done: usize,
    requested: usize,
    code_bytes: u64,
    secs: f64,
    vm_size: i64,
    vm_rss: i64,
    exec: i64,
    exec_rss: i64,
    maps: i64,
    verified: Option<Result<String, String>>,
    stopped: Option<String>,
    details: Vec<String>,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.done as f64 / self.secs.max(1e-9)
    }
    fn per_code_byte(&self, v: i64) -> f64 {
        v as f64 / self.code_bytes.max(1) as f64
    }
}

fn run_child(o: &Options, name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--child", name])
        .args(["--count", &o.count.to_string()])
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

fn parse_row(label: &'static str, text: &str) -> Row {
    let mut r = Row {
        label,
        ..Row::default()
    };
    for line in text.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "RESULT" => {
                for kv in rest.split_whitespace() {
                    let Some((k, v)) = kv.split_once('=') else {
                        continue;
                    };
                    let n: i64 = v.parse().unwrap_or(0);
                    match k {
                        "requested" => r.requested = n as usize,
                        "done" => r.done = n as usize,
                        "code_bytes" => r.code_bytes = n as u64,
                        "elapsed_ns" => r.secs = n as f64 / 1e9,
                        "vm_size" => r.vm_size = n,
                        "vm_rss" => r.vm_rss = n,
                        "exec" => r.exec = n,
                        "exec_rss" => r.exec_rss = n,
                        "maps" => r.maps = n,
                        _ => {}
                    }
                }
            }
            "VERIFY_OK" => r.verified = Some(Ok(rest.to_string())),
            "VERIFY_ERR" => r.verified = Some(Err(rest.to_string())),
            "STOPPED" => r.stopped = Some(rest.to_string()),
            "DETAIL" => r.details.push(rest.to_string()),
            _ => {}
        }
    }
    r
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn parent(o: &Options) -> ExitCode {
    let mut rows: Vec<Row> = Vec::new();
    if JITS.iter().any(|(name, _)| wanted(o, name)) {
        let sizes = code::sizes(o.count);
        let total: usize = sizes.iter().sum();
        println!(
            "{} functions of {}-{} bytes ({:.1} MB of code, {:.0} bytes on average), each its own \
             unit, linked one at a time; each calls libc abs and the function before it",
            o.count,
            code::MIN_SIZE,
            code::MAX_SIZE,
            total as f64 / 1e6,
            total as f64 / o.count as f64
        );
    }
    for (name, label) in JITS {
        if !wanted(o, name) {
            continue;
        }
        eprintln!("running {label} ...");
        match run_child(o, name) {
            Ok(text) => rows.push(parse_row(label, &text)),
            Err(e) => rows.push(Row {
                label,
                requested: o.count,
                stopped: Some(e),
                ..Row::default()
            }),
        }
    }
    if !rows.is_empty() {
        print_table(o, &rows);
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

fn print_table(o: &Options, rows: &[Row]) {
    println!();
    println!(
        "{:<22} {:>7} {:>8} {:>12} {:>9} {:>8} {:>6} {:>9} {:>9}  check",
        "",
        "linked",
        "seconds",
        "functions/s",
        "VmSize/B",
        "VmRSS/B",
        "r-x/B",
        "r-x RSS/B",
        "mappings"
    );
    println!("{}", "-".repeat(110));
    for r in rows {
        let check = match &r.verified {
            Some(Ok(s)) => format!("ok, {s}"),
            Some(Err(e)) => format!("FAILED: {e}"),
            None => "-".into(),
        };
        println!(
            "{:<22} {:>7} {:>8.2} {:>12} {:>9.2} {:>8.2} {:>6.2} {:>9.2} {:>+9}  {}",
            r.label,
            r.done,
            r.secs,
            thousands(r.per_second()),
            r.per_code_byte(r.vm_size),
            r.per_code_byte(r.vm_rss),
            r.per_code_byte(r.exec),
            r.per_code_byte(r.exec_rss),
            r.maps,
            check
        );
    }
    println!();
    for line in [
        "VmSize/B   growth of VmSize (all mapped address space, reservations too) per byte of code",
        "VmRSS/B    growth of VmRSS (resident memory, heap too) per byte of code",
        "r-x/B      growth of the executable mappings not backed by a file (anonymous, shared",
        "           anonymous or memfd: JIT'd code) per byte of code; r-x RSS/B: of their",
        "           resident part (Rss in smaps), read after the check ran the whole chain",
        "mappings   growth of the number of mappings (the kernel's limit: vm.max_map_count)",
        "(VmSize and VmRSS from /proc/self/status, the rest from /proc/self/smaps)",
    ] {
        println!("{line}");
    }
    println!(
        "kiln: debug sinks off (DebugOptions::none()); {}{}",
        if o.host_by_dlsym {
            "abs found by each linker's own lookup (--host-by-dlsym)"
        } else {
            "abs given to each linker by address (Session::define, JITBuilder::symbol)"
        },
        if o.kiln_frames {
            "; kiln registers an FDE per function (--kiln-frames)"
        } else {
            ""
        }
    );
    for r in rows {
        if let Some(s) = &r.stopped {
            println!(
                "{}: {s} ({} of {} functions linked)",
                r.label, r.done, r.requested
            );
        }
    }
    let find = |l: &str| rows.iter().find(|r| r.label == l && r.done > 0);
    if let Some(k) = find("kiln") {
        println!();
        for peer in ["cranelift-jit", "cranelift-jit (arena)", "naive mmap"] {
            let Some(p) = find(peer) else { continue };
            let ratio = |a: f64, b: f64| {
                let r = a / b;
                if !r.is_finite() || r <= 0.0 {
                    "-".to_string()
                } else if r >= 0.1 {
                    format!("{r:.2}x")
                } else {
                    format!("{r:.5}x (1/{:.0})", 1.0 / r)
                }
            };
            println!(
                "kiln / {peer}: functions/s {}, VmSize/B {}, VmRSS/B {}, r-x RSS/B {}",
                ratio(k.per_second(), p.per_second()),
                ratio(k.per_code_byte(k.vm_size), p.per_code_byte(p.vm_size)),
                ratio(k.per_code_byte(k.vm_rss), p.per_code_byte(p.vm_rss)),
                ratio(k.per_code_byte(k.exec_rss), p.per_code_byte(p.exec_rss)),
            );
        }
        let met = |ok: bool| if ok { "met" } else { "not met" };
        let partial = if k.done == k.requested {
            String::new()
        } else {
            format!(" (over the {} of {} functions linked)", k.done, k.requested)
        };
        println!(
            "aim (issue 4): at least 500,000 functions/s: kiln {} functions/s, {}{partial}",
            thousands(k.per_second()),
            met(k.per_second() >= 500_000.0),
        );
        let judge = |v: i64| {
            let b = k.per_code_byte(v);
            format!("{b:.2} ({})", met(b <= 1.3))
        };
        println!(
            "aim (issue 4): at most 1.3 mapped bytes per code byte: kiln VmSize {}, VmRSS {}, \
             r-x RSS {}{partial}",
            judge(k.vm_size),
            judge(k.vm_rss),
            judge(k.exec_rss),
        );
    }
    for r in rows {
        if !r.details.is_empty() {
            println!();
            for d in &r.details {
                println!("{d}");
            }
        }
    }
}

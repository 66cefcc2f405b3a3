//! `kiln-lox --bench-against CLOX`: runs every benchmark program with clox and with kiln-lox in
//! each JIT mode (`--jit=off`, `--jit=on`, `--jit=always`), rotating which goes first from run
//! to run, and prints the median wall time of each, kiln-lox's time over clox's per mode, and
//! the geometric mean of those ratios. A benchmark, not a test: it prints numbers, it asserts
//! only that every run prints what clox prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct BenchOptions {
    /// Path of the clox binary.
    pub clox: String,
    pub runs: usize,
    /// Directory of `.lox` programs (default: the crate's `bench/`).
    pub dir: Option<String>,
    /// Run kiln-lox with --gc-stress (to measure its cost).
    pub gc_stress: bool,
    /// The JIT modes to measure (`off`, `on`, `always`); all three when empty.
    pub modes: Vec<String>,
}

/// One thing to time: a binary and its arguments before the program's path.
struct Runner {
    label: String,
    binary: PathBuf,
    args: Vec<String>,
}

pub fn run(options: &BenchOptions) -> Result<(), String> {
    let kiln = std::env::current_exe().map_err(|e| format!("cannot find kiln-lox itself: {e}"))?;
    let dir = options
        .dir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"));
    let mut programs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lox"))
        .collect();
    programs.sort();
    if programs.is_empty() {
        return Err(format!("no .lox programs in {}", dir.display()));
    }
    let modes = if options.modes.is_empty() {
        vec!["off".to_string(), "on".into(), "always".into()]
    } else {
        options.modes.clone()
    };
    let mut runners = vec![Runner {
        label: "clox".into(),
        binary: PathBuf::from(&options.clox),
        args: vec![],
    }];
    for mode in &modes {
        let mut args = vec![format!("--jit={mode}")];
        if options.gc_stress {
            args.push("--gc-stress".into());
        }
        runners.push(Runner {
            label: format!("jit={mode}"),
            binary: kiln.clone(),
            args,
        });
    }

    print!("| program |");
    for r in &runners {
        print!(" {} (s) |", r.label);
    }
    for r in &runners[1..] {
        print!(" {} / clox |", r.label);
    }
    println!();
    println!("|---|{}", "---:|".repeat(2 * runners.len() - 1));
    let mut log_sums = vec![0.0; runners.len() - 1];
    for program in &programs {
        let medians = time_program(&runners, program, options.runs)?;
        let name = program
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        print!("| {name} |");
        for m in &medians {
            print!(" {m:.3} |");
        }
        for (i, m) in medians[1..].iter().enumerate() {
            let ratio = m / medians[0];
            log_sums[i] += ratio.ln();
            print!(" {ratio:.2} |");
        }
        println!();
    }
    print!("| **geometric mean** |{}", " |".repeat(runners.len()));
    let geomeans: Vec<f64> = log_sums
        .iter()
        .map(|s| (s / programs.len() as f64).exp())
        .collect();
    for g in &geomeans {
        print!(" **{g:.2}** |");
    }
    println!();
    println!(
        "\n{} runs each, order rotated from run to run; wall time of the whole process; \
         ratios below 1 mean kiln-lox is faster.",
        options.runs
    );
    let speedups: Vec<String> = runners[1..]
        .iter()
        .zip(&geomeans)
        .map(|(r, g)| format!("{} {:.2}x", r.label, 1.0 / g))
        .collect();
    println!(
        "Speed-up over clox, geometric mean: {}.",
        speedups.join(", ")
    );
    Ok(())
}

/// Checks that every runner prints what clox prints, then times `runs` rounds and returns the
/// median of each runner.
fn time_program(runners: &[Runner], program: &Path, runs: usize) -> Result<Vec<f64>, String> {
    let expected = output(&runners[0], program)?;
    for r in &runners[1..] {
        if output(r, program)? != expected {
            return Err(format!(
                "{}: kiln-lox {} and clox print different output",
                program.display(),
                r.args.join(" ")
            ));
        }
    }
    let mut times = vec![Vec::new(); runners.len()];
    for round in 0..runs {
        for k in 0..runners.len() {
            let i = (round + k) % runners.len();
            times[i].push(time(&runners[i], program)?);
        }
    }
    Ok(times.iter_mut().map(|t| median(t)).collect())
}

fn output(runner: &Runner, program: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new(&runner.binary)
        .args(&runner.args)
        .arg(program)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", runner.binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            runner.binary.display(),
            program.display(),
            out.status
        ));
    }
    Ok(out.stdout)
}

fn time(runner: &Runner, program: &Path) -> Result<f64, String> {
    let start = Instant::now();
    let status = Command::new(&runner.binary)
        .args(&runner.args)
        .arg(program)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{}: {e}", runner.binary.display()))?;
    let elapsed: Duration = start.elapsed();
    if !status.success() {
        return Err(format!(
            "{} {} failed: {status}",
            runner.binary.display(),
            program.display()
        ));
    }
    Ok(elapsed.as_secs_f64())
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

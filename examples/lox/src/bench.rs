//! `kiln-lox --bench-against CLOX`: runs every benchmark program with kiln-lox and with clox,
//! alternating which goes first, and prints the median wall time of each, their ratio, and
//! the geometric mean of the ratios. A benchmark, not a test: it prints numbers, it asserts
//! only that both VMs print the same output.

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
    let kiln_args: Vec<&str> = if options.gc_stress {
        vec!["--gc-stress"]
    } else {
        vec![]
    };

    println!("| program | kiln-lox median (s) | clox median (s) | kiln-lox / clox |");
    println!("|---|---:|---:|---:|");
    let mut log_sum = 0.0;
    for program in &programs {
        let kiln_out = output(&kiln, &kiln_args, program)?;
        let clox_out = output(Path::new(&options.clox), &[], program)?;
        if kiln_out != clox_out {
            return Err(format!(
                "{}: kiln-lox and clox print different output",
                program.display()
            ));
        }
        let mut kiln_times = Vec::new();
        let mut clox_times = Vec::new();
        for run in 0..options.runs {
            if run % 2 == 0 {
                kiln_times.push(time(&kiln, &kiln_args, program)?);
                clox_times.push(time(Path::new(&options.clox), &[], program)?);
            } else {
                clox_times.push(time(Path::new(&options.clox), &[], program)?);
                kiln_times.push(time(&kiln, &kiln_args, program)?);
            }
        }
        let (k, c) = (median(&mut kiln_times), median(&mut clox_times));
        let ratio = k / c;
        log_sum += ratio.ln();
        let name = program
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("| {name} | {k:.3} | {c:.3} | {ratio:.2} |");
    }
    let geomean = (log_sum / programs.len() as f64).exp();
    println!("| **geometric mean** | | | **{geomean:.2}** |");
    println!(
        "\n{} runs each, alternating; wall time of the whole process.",
        options.runs
    );
    Ok(())
}

fn output(binary: &Path, args: &[&str], program: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new(binary)
        .args(args)
        .arg(program)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            binary.display(),
            program.display(),
            out.status
        ));
    }
    Ok(out.stdout)
}

fn time(binary: &Path, args: &[&str], program: &Path) -> Result<f64, String> {
    let start = Instant::now();
    let status = Command::new(binary)
        .args(args)
        .arg(program)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let elapsed: Duration = start.elapsed();
    if !status.success() {
        return Err(format!(
            "{} {} failed: {status}",
            binary.display(),
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

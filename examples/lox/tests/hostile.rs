//! Broken programs never crash kiln-lox: every test program cut short at several points, and
//! with bytes replaced by punctuation, either runs, or stops with a compile or runtime error.
//! A mutated program may loop forever (a mutation can turn `i < 3` into `i = 3`): those are
//! stopped after a few seconds and count as fine — looping is not crashing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lox_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("tests/lox exists") {
        let path = entry.expect("readable").path();
        if path.is_dir() {
            lox_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "lox") {
            out.push(path);
        }
    }
    out.sort();
}

/// Runs a source; returns a problem description if kiln-lox crashed.
fn crashes(source: &[u8], args: &[&str], scratch: &Path) -> Option<String> {
    std::fs::write(scratch, source).expect("write mutated program");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-lox"))
        .args(args)
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln-lox");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(3) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .ok();
    let clean_exit = matches!(status.code(), Some(0 | 65 | 70));
    let panicked = stderr.contains("panicked") || stderr.contains("thread failed");
    (!clean_exit || panicked).then(|| format!("status {status}, stderr:\n{stderr}"))
}

#[test]
fn truncated_and_mutated_programs_do_not_crash() {
    let mut files = Vec::new();
    lox_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lox"),
        &mut files,
    );
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile.lox");
    let mut failures = Vec::new();
    let mut runs = 0;
    // A fixed linear congruential sequence: the same mutations every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    for file in &files {
        let source = std::fs::read(file).expect("read");
        if source.len() > 20_000 {
            continue;
        }
        for cut in 1..6 {
            let prefix = &source[..source.len() * cut / 6];
            runs += 1;
            // Tiered and compiled-up-front in turn: the JIT meets the broken programs too.
            let mode: &[&str] = if cut % 2 == 0 { &[] } else { &["--jit=always"] };
            if let Some(problem) = crashes(prefix, mode, &scratch) {
                failures.push(format!(
                    "{} cut at {}/6 {mode:?}: {problem}",
                    file.display(),
                    cut
                ));
            }
        }
        if source.is_empty() {
            continue;
        }
        let mut mutated = source.clone();
        for _ in 0..3 {
            let at = next() % mutated.len();
            mutated[at] = b"(){};.,=+-*/!<>\"a1 "[next() % 19];
        }
        for mode in [&["--gc-stress"][..], &["--jit=always", "--gc-stress"]] {
            runs += 1;
            if let Some(problem) = crashes(&mutated, mode, &scratch) {
                let text = String::from_utf8_lossy(&mutated).into_owned();
                failures.push(format!(
                    "{} mutated {mode:?}:\n{text}\n{problem}",
                    file.display()
                ));
            }
        }
    }
    for failure in &failures {
        eprintln!("{failure}");
    }
    assert!(runs > 500, "only {runs} runs");
    assert!(
        failures.is_empty(),
        "{} of {runs} broken programs crashed kiln-lox (above)",
        failures.len()
    );
}

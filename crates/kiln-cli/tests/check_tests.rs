//! Check tests (DESIGN.md, tests layer 2): every `tests/check/*.s` is assembled with llvm-mc,
//! linked by `kiln run` at a fixed fake slab address without running, and its
//! `# jitlink-check:` lines are evaluated. See docs/check-tests.md.
//!
//! Directives a test file may carry (each on a line of its own, any number of them):
//!
//! - `# kiln-check: args=ARGS` — more arguments for `kiln run` (whitespace-separated), e.g.
//!   `-abs far=0x123456789000`.
//! - `# kiln-check: slab-address=ADDR` — instead of the default 0x7ff00000.
//! - `# kiln-check: mc-args=ARGS` — more arguments for llvm-mc.
//! - `# kiln-check: expect-error=TEXT` — the link (or the checks) must fail, and kiln's error
//!   output must contain TEXT (each such line).
//! - `# kiln-check: xfail=WHY` — a known linker bug: the run must fail (so that a fix is
//!   noticed and the mark removed).
//!
//! A missing llvm-mc fails the test: it is a tool the test command needs, not an option.

use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_SLAB: &str = "0x7ff00000";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn llvm_mc() -> PathBuf {
    let pinned = Path::new("/usr/lib/llvm-14/bin/llvm-mc");
    if pinned.exists() {
        return pinned.to_path_buf();
    }
    for name in ["llvm-mc-14", "llvm-mc"] {
        if Command::new(name).arg("--version").output().is_ok() {
            return PathBuf::from(name);
        }
    }
    panic!(
        "llvm-mc is needed by the check tests (tests/check/*.s) and was not found: \
         install llvm-14 (apt-get install llvm-14)"
    );
}

#[derive(Default, Debug)]
struct Directives {
    args: Vec<String>,
    mc_args: Vec<String>,
    slab: Option<String>,
    expect_errors: Vec<String>,
    xfail: Option<String>,
}

fn directives(source: &str, file: &Path) -> Directives {
    let mut d = Directives::default();
    for (i, line) in source.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("# kiln-check:") else {
            continue;
        };
        let (key, value) = rest
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: expected KEY=VALUE", file.display(), i + 1));
        let value = value.trim().to_string();
        match key.trim() {
            "args" => d.args.extend(value.split_whitespace().map(String::from)),
            "mc-args" => d.mc_args.extend(value.split_whitespace().map(String::from)),
            "slab-address" => d.slab = Some(value),
            "expect-error" => d.expect_errors.push(value),
            "xfail" => d.xfail = Some(value),
            k => panic!("{}:{}: unknown directive {k:?}", file.display(), i + 1),
        }
    }
    d
}

/// Assemble, link and check one file; Err(why) if it did not behave as its directives say.
fn run_one(mc: &Path, src: &Path, tmp: &Path) -> Result<String, String> {
    let source = std::fs::read_to_string(src).map_err(|e| format!("cannot read: {e}"))?;
    let d = directives(&source, src);
    let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    let obj = tmp.join(format!("{stem}.o"));
    let out = Command::new(mc)
        .args(["-triple=x86_64-unknown-linux-gnu", "-filetype=obj"])
        .args(&d.mc_args)
        .arg("-o")
        .arg(&obj)
        .arg(src)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", mc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "llvm-mc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let slab = d.slab.as_deref().unwrap_or(DEFAULT_SLAB);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "run",
            "-noexec",
            "-slab-allocate",
            "1Mb",
            "-slab-address",
            slab,
        ])
        .args(["-slab-page-size", "4096", "-no-process-syms", "-check"])
        .arg(src)
        .args(&d.args)
        .arg(&obj)
        .output()
        .map_err(|e| format!("cannot run kiln: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    if let Some(why) = &d.xfail {
        return if out.status.success() {
            Err(format!(
                "marked xfail ({why}) but passed: remove the xfail directive\n{stderr}"
            ))
        } else {
            Ok(format!("xfail ({why})"))
        };
    }
    if !d.expect_errors.is_empty() {
        if out.status.success() {
            return Err(format!(
                "expected an error containing {:?}, but kiln succeeded:\n{stderr}",
                d.expect_errors
            ));
        }
        if code != Some(125) && code != Some(1) {
            return Err(format!(
                "kiln failed abnormally ({:?}):\n{stderr}",
                out.status
            ));
        }
        for want in &d.expect_errors {
            if !stderr.contains(want.as_str()) {
                return Err(format!(
                    "kiln failed, but its error does not contain {want:?}:\n{stderr}"
                ));
            }
        }
        return Ok("failed as expected".into());
    }
    if !out.status.success() || !stderr.contains("checks passed") {
        return Err(format!("kiln exited with {:?}:\n{stderr}", out.status));
    }
    Ok(stderr.trim().to_string())
}

#[test]
fn check_tests() {
    let mc = llvm_mc();
    let dir = repo().join("tests/check");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "s"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "too few check tests in {}",
        dir.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match run_one(&mc, f, tmp.path()) {
            Ok(msg) => eprintln!("ok    {name}: {msg}"),
            Err(why) => {
                eprintln!("FAIL  {name}: {why}");
                failures.push(name);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} check tests failed: {failures:?}",
        failures.len(),
        files.len()
    );
}

/// The CLI's llvm-jitlink spellings and the check report, on a small generated test.
#[test]
fn spellings_and_reports() {
    let mc = llvm_mc();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("t.s");
    std::fs::write(
        &src,
        "\t.text\n\t.globl main\nmain:\n\tcallq far\n\tretq\n\
         # jitlink-check: decode_operand(main, 0) = stub_addr(t.o, far) - next_pc(main)\n\
         # jitlink-check: *{8}got_addr(t.o, far) = far\n\
         # jitlink-check: main = 0x7ff00000\n\
         # other: main = 1\n",
    )
    .unwrap();
    let obj = tmp.path().join("t.o");
    let st = Command::new(&mc)
        .args(["-triple=x86_64-unknown-linux-gnu", "-filetype=obj", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let kiln = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("run")
            .args(args)
            .arg(&obj)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = src.to_str().unwrap();
    // llvm-jitlink's spellings, with `=` and without, and kiln's own.
    for args in [
        &[
            "-noexec",
            "-slab-allocate",
            "100Kb",
            "-slab-address",
            "0x7ff00000",
            "-slab-page-size",
            "4096",
            "-abs",
            "far=0x123456789000",
            "-check",
            check,
        ][..],
        &[
            "--noexec",
            "--slab-size",
            "102400",
            "--slab-address",
            "0x7ff00000",
            "--define",
            "far=0x123456789000",
            "--check",
            check,
        ][..],
        &[
            "--noexec",
            "--slab-allocate",
            "100",
            "--slab-address",
            "0x7ff00000",
            "--define-abs",
            "far=0x123456789000",
            "--check",
            check,
        ][..],
    ] {
        let (code, err) = kiln(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(err.contains("3 checks passed"), "{args:?}: {err}");
    }
    let eq_forms = [
        "-noexec".to_string(),
        "-slab-allocate=100".into(),
        "-slab-address=0x7ff00000".into(),
        "-define-abs=far=0x123456789000".into(),
        format!("-check={check}"),
    ];
    let eq_forms: Vec<&str> = eq_forms.iter().map(String::as_str).collect();
    let (code, err) = kiln(&eq_forms);
    assert_eq!(code, Some(0), "{err}");
    // -check-name picks other lines.
    let (code, err) = kiln(&[
        "-noexec",
        "-slab-address",
        "0x7ff00000",
        "-abs",
        "far=0x123456789000",
        "-check",
        check,
        "-check-name",
        "other",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 9: check failed: main = 1"), "{err}");
    assert!(
        err.contains("left side:  0x7ff00000\n    right side: 0x1"),
        "{err}"
    );
    assert!(err.contains("1 of 1 checks failed"), "{err}");
    // A slab too small for the unit.
    let (code, err) = kiln(&[
        "-noexec",
        "-slab-allocate",
        "1Kb",
        "-slab-address",
        "0x7ff00000",
        "-abs",
        "far=0x123456789000",
    ]);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("more than the slab's 0x400"), "{err}");
    // The slab page size needs a fake slab.
    let (code, err) = kiln(&["-slab-page-size", "4096"]);
    assert_eq!(code, Some(2), "{err}");
    // A wrong size.
    let (code, err) = kiln(&["-noexec", "-slab-allocate", "12Qb"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a size"), "{err}");
}

/// Every option kiln shares with llvm-jitlink, spelled as llvm-jitlink spells it (one dash,
/// `=` or a separate value), links and checks exactly as kiln's own spelling does.
#[test]
fn llvm_jitlink_command_lines_work_like_kilns() {
    let mc = llvm_mc();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("x.s");
    std::fs::write(
        &src,
        "\t.text\n\t.globl start\nstart:\n\tcallq foo\n\tmovq bar@GOTPCREL(%rip), %rax\n\tretq\n\
         # jitlink-check: decode_operand(start, 0) = stub_addr(x.o, foo) - next_pc(start)\n\
         # jitlink-check: *{8}got_addr(x.o, foo) = foo\n\
         # jitlink-check: foo = 0x123456789000\n\
         # jitlink-check: bar = 0x1000\n\
         # jitlink-check: start = 0x7000000\n\
         # other: start = 0x7000000\n",
    )
    .unwrap();
    let obj = tmp.path().join("x.o");
    let st = Command::new(&mc)
        .args(["-triple=x86_64-unknown-linux-gnu", "-filetype=obj", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let kiln = |args: &[String]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("run")
            .args(args)
            .arg(&obj)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = src.display().to_string();
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
    let llvm = words(&format!(
        "-noexec -entry=start -abs foo=0x123456789000 -define-abs=bar=0x1000 \
         -slab-address=0x7000000 -slab-allocate 64 -slab-page-size=4096 -no-process-syms \
         -check={check}"
    ));
    let kilns = words(&format!(
        "--noexec --entry start --define foo=0x123456789000 --define bar=0x1000 \
         --slab-address 0x7000000 --slab-size 64Kb --slab-page-size 4096 \
         --no-process-symbols --check {check}"
    ));
    let llvm_run = kiln(&llvm);
    assert_eq!(llvm_run.0, Some(0), "{llvm:?}: {}", llvm_run.2);
    assert!(llvm_run.2.contains("5 checks passed"), "{}", llvm_run.2);
    assert_eq!(llvm_run, kiln(&kilns), "{llvm:?} and {kilns:?} differ");
    // Both spellings of the check name, the slab limit, and statistics.
    for name in [
        "-check-name=other",
        "-check-name other",
        "--check-name=other",
    ] {
        let mut args = words("-noexec -entry start -slab-address 0x7000000 -no-process-syms");
        args.extend(words("-abs foo=1 -abs bar=2"));
        args.extend(words(name));
        args.push(format!("-check={check}"));
        let (code, _, err) = kiln(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(err.contains("1 checks passed"), "{args:?}: {err}");
    }
    for stats in ["-show-stats", "-show-times", "-show-sizes", "--show-stats"] {
        let mut args = words("-noexec -entry=start -abs foo=1 -abs bar=2");
        args.push(stats.into());
        let (code, _, err) = kiln(&args);
        assert_eq!(code, Some(0), "{stats}: {err}");
        assert!(err.contains("kiln link statistics"), "{stats}: {err}");
    }
    let (code, _, err) = kiln(&words(
        "-noexec -entry=start -abs foo=1 -abs bar=2 -slab-address=0x7000000 -slab-allocate=1",
    ));
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("more than the slab's 0x400"), "{err}");
    // An llvm-jitlink option without a kiln equivalent is named, not misread.
    let (code, _, err) = kiln(&words("-noexec -phony-externals"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("-phony-externals has no kiln equivalent"),
        "{err}"
    );
}

/// `kiln run --help` tells llvm-jitlink users that their spellings work.
#[test]
fn help_mentions_llvm_jitlink_spellings() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "llvm-jitlink's spellings work too",
        "-noexec",
        "-entry=SYM",
        "-abs/-define-abs",
        "-slab-allocate",
        "-perf-support",
        "--no-process-syms",
        "--show-times",
        "--debugger-support",
    ] {
        assert!(help.contains(s), "run --help lacks {s}:\n{help}");
    }
}

//! Test layer 3 (DESIGN.md): run-and-compare. Every program in `tests/programs/` is compiled with
//! gcc/g++ under several flag sets, linked natively and run, then run by `kiln run` from the same
//! objects; stdout and exit status must be identical. One #[test] per program; each test runs all
//! of its trials (flag set × variant) and reports every failing trial by name.
//! The directive format and the flag sets are described in tests/programs/README.md.
//!
//! Every trial also runs the program out of process (`kiln run --executor spawn`), alternating
//! the memory mode between trials (shared, copy, shared, ...), so each program runs in both.

mod common;

use common::{indent, run, stdout_difference, tail, Ran, KILN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Flag sets; a set starting with `clang ` is built with clang-14/clang++-14 instead of gcc/g++.
const C_FLAG_SETS: &[&str] = &[
    "-O0",
    "-O2",
    "-O2 -g",
    "-O2 -ffunction-sections -fdata-sections",
    "clang -O2 -g",
];
const CXX_FLAG_SETS: &[&str] = &["-O0", "-O2", "clang -O2"];

/// The compiler for a flag set and a source.
fn compiler(clang: bool, cxx: bool) -> &'static str {
    match (clang, cxx) {
        (false, false) => "gcc",
        (false, true) => "g++",
        (true, false) => "clang-14",
        (true, true) => "clang++-14",
    }
}
/// The flag set whose native build is the oracle for the trial where kiln compiles the sources
/// itself (it uses `cc -c -g -O2`).
const C_SOURCE_REFERENCE: &str = "-O2 -g";
const CXX_SOURCE_REFERENCE: &str = "-O2";

const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
const NATIVE_TIMEOUT: Duration = Duration::from_secs(30);
const KILN_TIMEOUT: Duration = Duration::from_secs(60);
const ENV_VALUE: &str = "kiln-test-env-value";

/// One #[test] per program, and the list that `every_program_has_a_test` checks against the
/// directory. Add new programs here.
macro_rules! programs {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run_program(stringify!($name)); } )*
        const PROGRAMS: &[&str] = &[$(stringify!($name)),*];
    };
}

programs!(
    // C, one object
    globals,
    jump_tables,
    varargs,
    weak_undef,
    setjmp_longjmp,
    qsort_callback,
    exit_from_main,
    exit_call,
    argv_envp,
    ctor_priority,
    init_fini_sections,
    // C, several objects
    multi,
    weak_def,
    common,
    visibility,
    archive,
    ctors_dtors,
    tls_dynamic,
    tls_static,
    ifunc,
    backtrace_frames,
    // C++
    cxx_virtual_rtti,
    cxx_stl_iostream,
    cxx_exceptions,
    cxx_static_init,
    cxx_exit,
    cxx_comdat,
    // negative: kiln must refuse
    duplicate_symbol,
    undefined_symbols,
);

fn programs_dir() -> PathBuf {
    common::repo_root().join("tests/programs")
}

#[test]
fn every_program_has_a_test() {
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(programs_dir()).expect("reading tests/programs") {
        let path = entry.expect("reading tests/programs").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            // tests/programs/rust is built by rustc and run by tests/rust.rs.
            if name != "rust" {
                on_disk.push(name);
            }
        } else if let Some(stem) = name
            .strip_suffix(".c")
            .or_else(|| name.strip_suffix(".cc"))
            .or_else(|| name.strip_suffix(".cpp"))
        {
            on_disk.push(stem.to_string());
        }
    }
    let missing: Vec<_> = on_disk
        .iter()
        .filter(|n| !PROGRAMS.contains(&n.as_str()))
        .collect();
    let stale: Vec<_> = PROGRAMS
        .iter()
        .filter(|n| !on_disk.iter().any(|d| d == *n))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "tests/programs and the programs! list in run_compare.rs disagree: without a test {missing:?}, without a program {stale:?}"
    );
}

#[test]
fn directive_words() {
    assert_eq!(
        split_words(r#"alpha beta --gamma=3 """#).unwrap(),
        ["alpha", "beta", "--gamma=3", ""]
    );
    assert_eq!(split_words(r#"a"b c"d  e"#).unwrap(), ["ab cd", "e"]);
    assert!(split_words(r#"unterminated "quote"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// Programs and directives

struct Source {
    path: PathBuf,
    stem: String,
    cxx: bool,
    file_cflags: Vec<String>,
    in_archive: bool,
}

#[derive(Default)]
struct Program {
    name: String,
    sources: Vec<Source>,
    cxx: bool,
    cflags: Vec<String>,
    variants: Vec<(String, Vec<String>)>,
    libs: Vec<String>,
    args: Vec<String>,
    expect_exit: i32,
    /// Each entry: alternatives, one of which kiln's stderr must contain (case-insensitive).
    expect_fail: Vec<Vec<String>>,
}

impl Program {
    fn load(name: &str) -> Result<Program, String> {
        let dir = programs_dir();
        let mut files = Vec::new();
        if dir.join(name).is_dir() {
            for entry in
                std::fs::read_dir(dir.join(name)).map_err(|e| format!("reading {name}/: {e}"))?
            {
                let path = entry.map_err(|e| e.to_string())?.path();
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("c" | "cc" | "cpp")
                ) {
                    files.push(path);
                }
            }
            files.sort();
        } else {
            for ext in ["c", "cc", "cpp"] {
                let path = dir.join(format!("{name}.{ext}"));
                if path.is_file() {
                    files.push(path);
                }
            }
        }
        if files.is_empty() {
            return Err(format!("no program `{name}` in {}", dir.display()));
        }
        let mut program = Program {
            name: name.to_string(),
            ..Program::default()
        };
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let stem = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let cxx = path.extension().is_some_and(|e| e != "c");
            let mut source = Source {
                path,
                stem,
                cxx,
                file_cflags: Vec::new(),
                in_archive: false,
            };
            program.parse_directives(&text, &mut source)?;
            program.cxx |= cxx;
            program.sources.push(source);
        }
        if program.sources.iter().all(|s| s.in_archive) {
            return Err(format!(
                "{name}: every source is in-archive; nothing would pull the members in"
            ));
        }
        Ok(program)
    }

    fn parse_directives(&mut self, text: &str, source: &mut Source) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("//").map(str::trim_start) else {
                continue;
            };
            let Some(directive) = rest.strip_prefix("kiln-test:") else {
                continue;
            };
            let where_ = format!("{}:{}", source.path.display(), n + 1);
            let directive = directive.trim();
            let (key, value) = directive.split_once('=').unwrap_or((directive, ""));
            let words = || split_words(value).map_err(|e| format!("{where_}: {e}"));
            match key.trim() {
                "cflags" => self.cflags.extend(words()?),
                "file-cflags" => source.file_cflags.extend(words()?),
                "libs" => self.libs.extend(words()?),
                "args" => self.args.extend(words()?),
                "variant" => {
                    let (name, flags) = value
                        .split_once(':')
                        .ok_or_else(|| format!("{where_}: expected `variant=NAME:FLAGS`"))?;
                    self.variants.push((
                        name.trim().to_string(),
                        split_words(flags).map_err(|e| format!("{where_}: {e}"))?,
                    ));
                }
                "expect-exit" => {
                    self.expect_exit = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("{where_}: expect-exit needs a number"))?
                }
                "expect-fail" => {
                    let alternatives: Vec<String> = value
                        .split('|')
                        .map(|a| a.trim().to_string())
                        .filter(|a| !a.is_empty())
                        .collect();
                    if alternatives.is_empty() {
                        return Err(format!("{where_}: expect-fail needs a substring"));
                    }
                    self.expect_fail.push(alternatives);
                }
                "in-archive" => source.in_archive = true,
                other => return Err(format!("{where_}: unknown directive `{other}`")),
            }
        }
        Ok(())
    }

    /// Whether kiln can also be given the sources themselves (it compiles them with its own flags).
    fn has_source_trial(&self) -> bool {
        self.cflags.is_empty()
            && self.variants.is_empty()
            && self.expect_fail.is_empty()
            && self
                .sources
                .iter()
                .all(|s| s.file_cflags.is_empty() && !s.in_archive)
    }

    fn flag_sets(&self) -> &'static [&'static str] {
        if self.cxx {
            CXX_FLAG_SETS
        } else {
            C_FLAG_SETS
        }
    }
}

/// Splits a directive value into words at whitespace; `"..."` groups (and `""` is an empty word).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quote in `{s}`"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

// ---------------------------------------------------------------------------------------------
// Trials

struct Trial {
    name: String,
    /// The out-of-process memory mode this trial also runs with.
    remote_memory: &'static str,
    /// Built with clang-14 rather than gcc.
    clang: bool,
    /// The flag set's name (to find the reference for the source trial).
    flag_set: &'static str,
    flags: Vec<String>,
    dir: PathBuf,
}

/// What a trial produced: its verdict, and the native run (the oracle for the source trial).
struct Outcome {
    name: String,
    result: Result<(), String>,
    flag_set: &'static str,
    native: Option<Ran>,
}

fn run_program(name: &str) {
    let program = match Program::load(name) {
        Ok(p) => p,
        Err(e) => panic!("{name}: {e}"),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!("run-compare-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temporary directory");
    let root = tmp.path().to_path_buf();
    let mut trials = Vec::new();
    let variants: Vec<Option<&(String, Vec<String>)>> = if program.variants.is_empty() {
        vec![None]
    } else {
        program.variants.iter().map(Some).collect()
    };
    for &flag_set in program.flag_sets() {
        for variant in &variants {
            let (clang, set) = match flag_set.strip_prefix("clang ") {
                Some(rest) => (true, rest),
                None => (false, flag_set),
            };
            // clang 14 has no TLS descriptor dialect (-mtls-dialect=gnu2 arrived in clang 19):
            // that variant is gcc's only.
            if clang
                && variant.is_some_and(|(_, v)| v.iter().any(|f| f.starts_with("-mtls-dialect")))
            {
                continue;
            }
            let mut flags: Vec<String> = set.split_whitespace().map(String::from).collect();
            flags.extend(program.cflags.iter().cloned());
            let mut label = format!("{} {set}", compiler(clang, program.cxx));
            if let Some((vname, vflags)) = variant {
                flags.extend(vflags.iter().cloned());
                label = format!("{label}, {vname}");
            }
            let dir = root.join(format!("t{}", trials.len()));
            trials.push(Trial {
                remote_memory: if trials.len() % 2 == 0 {
                    "shared"
                } else {
                    "copy"
                },
                name: format!("{name} [{label}]"),
                clang,
                flag_set,
                flags,
                dir,
            });
        }
    }

    let mut outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = trials
            .iter()
            .map(|t| s.spawn(|| run_trial(&program, t)))
            .collect();
        handles
            .into_iter()
            .zip(&trials)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| Outcome {
                    name: t.name.clone(),
                    result: Err("the trial's thread panicked".into()),
                    flag_set: t.flag_set,
                    native: None,
                })
            })
            .collect()
    });

    if program.has_source_trial() {
        let reference = if program.cxx {
            CXX_SOURCE_REFERENCE
        } else {
            C_SOURCE_REFERENCE
        };
        let native = outcomes
            .iter()
            .find(|o| o.flag_set == reference)
            .and_then(|o| o.native.as_ref());
        let trial_name = format!("{name} [kiln compiles]");
        let result = match native {
            None => Err(format!(
                "no native `{reference}` run to compare with (see that trial)"
            )),
            Some(native) => source_trial(&program, native, &root.join("source")),
        };
        outcomes.push(Outcome {
            name: trial_name,
            result,
            flag_set: "",
            native: None,
        });
    }

    if std::env::var_os("KILN_TEST_KEEP").is_some() {
        println!("{name}: build directories kept in {}", tmp.keep().display());
    }
    let total = outcomes.len();
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.result {
            Ok(()) => {
                println!("ok   {}", o.name);
                None
            }
            Err(e) => Some(format!("FAIL {}\n{}", o.name, indent(e))),
        })
        .collect();
    if !failures.is_empty() {
        panic!(
            "{} of {total} trials of `{name}` failed (KILN_TEST_KEEP=1 keeps the build directories):\n\n{}\n",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

fn run_trial(program: &Program, trial: &Trial) -> Outcome {
    let mut native = None;
    let result = run_trial_inner(program, trial, &mut native);
    Outcome {
        name: trial.name.clone(),
        result,
        flag_set: trial.flag_set,
        native,
    }
}

fn run_trial_inner(
    program: &Program,
    trial: &Trial,
    native_out: &mut Option<Ran>,
) -> Result<(), String> {
    let dir = &trial.dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;

    // Compile every source.
    let mut objects = Vec::new();
    let mut members = Vec::new();
    for source in &program.sources {
        let object = dir.join(format!("{}.o", source.stem));
        let mut cmd = Command::new(compiler(trial.clang, source.cxx));
        cmd.arg("-c")
            .args(&trial.flags)
            .args(&source.file_cflags)
            .arg(&source.path)
            .arg("-o")
            .arg(&object);
        let ran = run(
            &mut cmd,
            &dir.join(format!("compile-{}", source.stem)),
            COMPILE_TIMEOUT,
        )?;
        if !ran.status.success() {
            return Err(format!(
                "compiling failed (a broken test or toolchain): {}",
                ran.describe()
            ));
        }
        if source.in_archive {
            members.push(object);
        } else {
            objects.push(object);
        }
    }
    let mut inputs = objects.clone();
    if !members.is_empty() {
        let archive = dir.join(format!("lib{}.a", program.name));
        let mut cmd = Command::new("ar");
        cmd.arg("rcs").arg(&archive).args(&members);
        let ran = run(&mut cmd, &dir.join("ar"), COMPILE_TIMEOUT)?;
        if !ran.status.success() {
            return Err(format!("ar failed: {}", ran.describe()));
        }
        inputs.push(archive);
    }

    if !program.expect_fail.is_empty() {
        let kiln = run_kiln(program, &inputs, dir, None)?;
        check_refusal(program, &kiln)?;
        let remote = run_kiln(program, &inputs, dir, Some(trial.remote_memory))?;
        return check_refusal(program, &remote)
            .map_err(|e| format!("out of process ({} memory): {e}", trial.remote_memory));
    }

    // Native link and run: the oracle.
    let exe = dir.join("native");
    let mut cmd = Command::new(compiler(trial.clang, program.cxx));
    cmd.args(&inputs)
        .args(&program.libs)
        .arg("-lm")
        .arg("-o")
        .arg(&exe);
    let ran = run(&mut cmd, &dir.join("link-native"), COMPILE_TIMEOUT)?;
    if !ran.status.success() {
        return Err(format!(
            "the native link failed (a broken test or toolchain): {}",
            ran.describe()
        ));
    }
    let mut cmd = Command::new(&exe);
    cmd.args(&program.args);
    set_env(&mut cmd, dir);
    let native = run(&mut cmd, &dir.join("native-run"), NATIVE_TIMEOUT)?;
    if native.code() != Some(program.expect_exit) {
        return Err(format!(
            "the native program {} but should exit with {} (a broken test, not a kiln bug); stdout:\n{}\nstderr:\n{}",
            native.status_text(),
            program.expect_exit,
            indent(&tail(&native.stdout_text(), 30)),
            indent(&tail(&native.stderr, 30))
        ));
    }

    let kiln = run_kiln(program, &inputs, dir, None);
    let mut result = kiln.and_then(|k| compare(&native, &k));
    if result.is_ok() {
        let remote = run_kiln(program, &inputs, dir, Some(trial.remote_memory));
        result = remote
            .and_then(|k| compare(&native, &k))
            .map_err(|e| format!("out of process ({} memory): {e}", trial.remote_memory));
    }
    *native_out = Some(native);
    result
}

/// `kiln run SOURCES...`: kiln compiles the sources itself.
fn source_trial(program: &Program, native: &Ran, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let sources: Vec<PathBuf> = program.sources.iter().map(|s| s.path.clone()).collect();
    let kiln = run_kiln(program, &sources, dir, None)?;
    compare(native, &kiln)
}

fn set_env(cmd: &mut Command, dir: &Path) {
    cmd.current_dir(dir)
        .env("KILN_TEST_ENV", ENV_VALUE)
        .env("LC_ALL", "C");
}

/// `kiln run INPUTS LIBS`, in process, or out of process with the given memory mode.
fn run_kiln(
    program: &Program,
    inputs: &[PathBuf],
    dir: &Path,
    remote_memory: Option<&str>,
) -> Result<Ran, String> {
    let mut cmd = Command::new(KILN);
    cmd.arg("run");
    if let Some(m) = remote_memory {
        cmd.args(["--executor", "spawn", "--memory", m]);
    }
    // C++ programs get their runtime as from `c++`, without -lstdc++ (kiln sees the
    // references); C programs name -lm as they do for `cc`.
    cmd.args(inputs).args(&program.libs);
    cmd.arg("-lm");
    if !program.args.is_empty() {
        cmd.arg("--").args(&program.args);
    }
    set_env(&mut cmd, dir);
    let log = match remote_memory {
        Some(m) => format!("kiln-run-{m}"),
        None => "kiln-run".into(),
    };
    run(&mut cmd, &dir.join(log), KILN_TIMEOUT)
}

fn compare(native: &Ran, kiln: &Ran) -> Result<(), String> {
    let same_status = native.status.code().is_some() && native.status.code() == kiln.status.code();
    let same_stdout = native.stdout == kiln.stdout;
    if same_status && same_stdout {
        return Ok(());
    }
    let mut msg = String::new();
    if !same_status {
        msg.push_str(&format!(
            "exit status differs: native {}, kiln {}\n",
            native.status_text(),
            kiln.status_text()
        ));
    }
    if !same_stdout {
        msg.push_str(&stdout_difference(&native.stdout, &kiln.stdout));
    }
    msg.push_str(&format!(
        "kiln stderr:\n{}\ncommand: {}",
        indent(&tail(&kiln.stderr, 30)),
        kiln.command
    ));
    Err(msg)
}

/// A negative test: kiln must refuse cleanly (non-zero status, no panic, no signal), run nothing
/// (empty stdout), and say why.
fn check_refusal(program: &Program, kiln: &Ran) -> Result<(), String> {
    let mut problems = Vec::new();
    match kiln.code() {
        Some(0) => problems.push("kiln exited with status 0, but this link must fail".to_string()),
        Some(_) => {}
        None => problems.push(format!(
            "kiln {} instead of reporting an error",
            kiln.status_text()
        )),
    }
    if kiln.stderr.contains("panicked at") {
        problems.push("kiln panicked (a panic on input is a bug)".to_string());
    }
    if !kiln.stdout.is_empty() {
        problems.push(format!(
            "the program ran (stdout is not empty):\n{}",
            indent(&tail(&kiln.stdout_text(), 10))
        ));
    }
    let stderr = kiln.stderr.to_lowercase();
    for alternatives in &program.expect_fail {
        if !alternatives
            .iter()
            .any(|a| stderr.contains(&a.to_lowercase()))
        {
            problems.push(format!(
                "kiln's stderr does not mention {}",
                alternatives.join(" or ")
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}\nkiln {}; stderr:\n{}\ncommand: {}",
        problems.join("\n"),
        kiln.status_text(),
        indent(&tail(&kiln.stderr, 30)),
        kiln.command
    ))
}

//! `kiln run --lazy`: the multi-object C program in tests/lazy/ (calls across objects, a call
//! chain, function pointers, data references, a function named like libc's `random`, objects
//! never called, two of them archive members) gives the same output and exit status as its
//! native build, while `--show-stats` shows that the objects never called were never linked
//! and that direct calls were redirected from stubs to their functions. In process, and in a
//! spawned executor with shared and with copied memory.

mod common;

use common::{indent, repo_root, run, stdout_difference, tail, Ran, KILN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The program's objects, in link order, and the members of its archive `libextra.a`.
const OBJECTS: &[&str] = &["main", "chain", "steps", "data", "strings", "unused"];
const ARCHIVED: &[&str] = &["ops", "more_unused"];
/// What runs: every input but `unused.o` and `libextra.a(more_unused.o)`.
const LINKED: usize = 6;
const AVAILABLE: usize = 8;

const TIMEOUT: Duration = Duration::from_secs(60);

fn sources() -> PathBuf {
    repo_root().join("tests/lazy")
}

fn must_run(cmd: &mut Command, capture: &Path) -> Ran {
    run(cmd, capture, TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// The program compiled with `gcc -c FLAGS`, its archive, and its native run.
struct Built {
    dir: tempfile::TempDir,
    inputs: Vec<PathBuf>,
    native: Ran,
}

fn build(flags: &str) -> Built {
    let dir = tempfile::Builder::new()
        .prefix("kiln-lazy-test-")
        .tempdir()
        .expect("a temporary directory");
    let d = dir.path();
    let object = |name: &str| -> PathBuf {
        let o = d.join(format!("{name}.o"));
        let r = must_run(
            Command::new("gcc")
                .arg("-c")
                .args(flags.split_whitespace())
                .arg("-o")
                .arg(&o)
                .arg(sources().join(format!("{name}.c"))),
            &d.join(format!("cc-{name}")),
        );
        assert!(r.status.success(), "{}", r.describe());
        o
    };
    let mut inputs: Vec<PathBuf> = OBJECTS.iter().map(|n| object(n)).collect();
    let members: Vec<PathBuf> = ARCHIVED.iter().map(|n| object(n)).collect();
    let archive = d.join("libextra.a");
    let r = must_run(
        Command::new("ar").arg("rcs").arg(&archive).args(&members),
        &d.join("ar"),
    );
    assert!(r.status.success(), "{}", r.describe());
    inputs.push(archive);
    let exe = d.join("native");
    let r = must_run(
        Command::new("gcc").args(&inputs).arg("-o").arg(&exe),
        &d.join("ld"),
    );
    assert!(r.status.success(), "{}", r.describe());
    let native = must_run(&mut Command::new(&exe), &d.join("native"));
    assert_eq!(
        native.code(),
        Some(4),
        "the native build: {}",
        native.describe()
    );
    Built {
        dir,
        inputs,
        native,
    }
}

/// What `--show-stats` says of the lazy inputs: (inputs linked, available, bytes linked,
/// available, calls redirected), from its line
/// `lazy: N of M inputs linked (K up front), B of T bytes; S stubs made, C called, R calls
/// redirected to their function`.
fn lazy_stats(stderr: &str) -> (usize, usize, u64, u64, usize) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("lazy: "))
        .unwrap_or_else(|| panic!("no lazy statistics in:\n{}", indent(&tail(stderr, 30))));
    let words: Vec<&str> = line.split_whitespace().collect();
    let word = |i: usize| words.get(i).copied().unwrap_or("");
    assert!(
        word(4) == "inputs" && word(12) == "bytes;" && word(19) == "calls",
        "unexpected statistics line {line:?}"
    );
    let num = |i: usize| -> u64 {
        word(i)
            .trim_end_matches(',')
            .parse()
            .unwrap_or_else(|_| panic!("word {i} of {line:?} is no number"))
    };
    (
        num(1) as usize,
        num(3) as usize,
        num(9),
        num(11),
        num(18) as usize,
    )
}

/// `kiln run --lazy --show-stats EXTRA INPUTS` gives the native run's output and status, and
/// links only what runs.
fn same_as_native(b: &Built, extra: &[&str], what: &str) {
    let r = must_run(
        Command::new(KILN)
            .args(["run", "--lazy", "--show-stats"])
            .args(extra)
            .args(&b.inputs)
            .current_dir(b.dir.path()),
        &b.dir.path().join(format!("kiln-{what}")),
    );
    assert_eq!(
        r.code(),
        b.native.code(),
        "{what}: exit status differs from native: {}",
        r.describe()
    );
    assert!(
        r.stdout == b.native.stdout,
        "{what}: output differs from native: {}\n{}",
        stdout_difference(&b.native.stdout, &r.stdout),
        r.describe()
    );
    let (linked, available, bytes, all_bytes, redirected) = lazy_stats(&r.stderr);
    assert_eq!(
        (linked, available),
        (LINKED, AVAILABLE),
        "{what}: inputs linked of available"
    );
    assert!(bytes < all_bytes, "{what}: {bytes} of {all_bytes} bytes");
    // `sub_via_aligned_call` in main.c calls op_sub with a 4-byte aligned rel32.
    assert!(redirected >= 1, "{what}: no call redirected");
}

#[test]
fn lazy_run_matches_native_o2() {
    same_as_native(&build("-O2"), &[], "-O2");
}

#[test]
fn lazy_run_matches_native_o0() {
    same_as_native(&build("-O0 -g"), &[], "-O0 -g");
}

#[test]
fn lazy_run_matches_native_in_a_spawned_executor() {
    let b = build("-O2");
    for memory in ["shared", "copy"] {
        same_as_native(
            &b,
            &["--executor", "spawn", "--memory", memory],
            &format!("spawn, {memory} memory"),
        );
    }
}

/// Nothing runs: the object with `main` is linked, and `data.o` because main refers to its
/// data; every function stays a stub.
#[test]
fn lazy_noexec_links_only_main_and_data() {
    let b = build("-O2");
    let r = must_run(
        Command::new(KILN)
            .args(["run", "--lazy", "--show-stats", "--noexec"])
            .args(&b.inputs),
        &b.dir.path().join("kiln-noexec"),
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(r.stdout.is_empty());
    let (linked, available, ..) = lazy_stats(&r.stderr);
    assert_eq!((linked, available), (2, AVAILABLE), "{}", r.stderr);
    assert!(r.stderr.contains("0 called"), "{}", r.stderr);
}

/// Sources on the command line are objects like any other (kiln compiles them with `cc -O2 -g`).
#[test]
fn lazy_run_of_sources() {
    let b = build("-O2 -g");
    let mut sources: Vec<PathBuf> = OBJECTS
        .iter()
        .chain(ARCHIVED)
        .map(|n| sources().join(format!("{n}.c")))
        .collect();
    sources.sort();
    let r = must_run(
        Command::new(KILN)
            .args(["run", "--lazy", "--show-stats"])
            .args(&sources)
            .current_dir(b.dir.path()),
        &b.dir.path().join("kiln-sources"),
    );
    assert_eq!(r.code(), b.native.code(), "{}", r.describe());
    assert!(
        r.stdout == b.native.stdout,
        "{}",
        stdout_difference(&b.native.stdout, &r.stdout)
    );
    let (linked, available, ..) = lazy_stats(&r.stderr);
    assert_eq!((linked, available), (LINKED, AVAILABLE), "{}", r.stderr);
}

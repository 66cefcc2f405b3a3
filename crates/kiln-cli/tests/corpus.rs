//! Test layer 4 (DESIGN.md): real libraries. `tests/corpus/setup.sh` installs Debian's static
//! archives (if missing), builds one driver per library and records a native run; each test then
//! runs `kiln run OUT/drivers/NAME.o OUT/archives/LIB.a HOST-LIBS` and compares stdout and exit
//! status with the native run, in process and out of process (`--executor spawn`) with shared
//! and with copied memory. A failed setup (missing packages, no compiler) fails every test.

mod common;

use common::{indent, run, stdout_difference, tail, KILN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

const SETUP_TIMEOUT: Duration = Duration::from_secs(900); // may run apt-get
const KILN_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn corpus_lua() {
    run_driver("lua");
}

#[test]
fn corpus_sqlite() {
    run_driver("sqlite");
}

#[test]
fn corpus_zlib() {
    run_driver("zlib");
}

#[test]
fn corpus_lzma() {
    run_driver("lzma");
}

#[test]
fn corpus_jsonc() {
    run_driver("jsonc");
}

const DRIVERS: &[&str] = &["lua", "sqlite", "zlib", "lzma", "jsonc"];

fn corpus_dir() -> PathBuf {
    common::repo_root().join("tests/corpus")
}

/// One manifest line: name, Debian package, static archive, host libraries for the link.
struct Entry {
    name: String,
    archive: PathBuf,
    libs: Vec<String>,
}

fn manifest() -> Vec<Entry> {
    let path = corpus_dir().join("manifest.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 3, "{}: malformed line {l:?}", path.display());
            Entry {
                name: f[0].to_string(),
                archive: PathBuf::from(f[2]),
                libs: f
                    .get(3)
                    .map(|s| s.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[test]
fn every_manifest_entry_has_a_test() {
    let names: Vec<String> = manifest().into_iter().map(|e| e.name).collect();
    assert_eq!(
        names, DRIVERS,
        "tests/corpus/manifest.tsv and the tests in corpus.rs disagree"
    );
}

/// Runs setup.sh once per test binary; every test waits for it.
static SETUP: LazyLock<Result<PathBuf, String>> = LazyLock::new(|| {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-corpus");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut cmd = Command::new("bash");
    cmd.arg(corpus_dir().join("setup.sh")).arg(&out);
    let ran = run(&mut cmd, &out.join("setup"), SETUP_TIMEOUT)?;
    if !ran.status.success() {
        return Err(format!(
            "{}\nstdout:\n{}",
            ran.describe(),
            indent(&tail(&ran.stdout_text(), 20))
        ));
    }
    Ok(out)
});

fn run_driver(name: &str) {
    let out = match &*SETUP {
        Ok(out) => out,
        Err(e) => {
            panic!("corpus driver `{name}`: tests/corpus/setup.sh failed, so nothing was run:\n{e}")
        }
    };
    let entry = manifest()
        .into_iter()
        .find(|e| e.name == name)
        .expect("driver in manifest.tsv");
    let archive_name = entry.archive.file_name().expect("archive file name");
    let read = |file: &str| {
        let path = out.join("native").join(file);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("corpus driver `{name}`: reading {}: {e}", path.display()))
    };
    let expected_stdout = read(&format!("{name}.expected"));
    let expected_status: i32 = String::from_utf8_lossy(&read(&format!("{name}.status")))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("corpus driver `{name}`: malformed {name}.status"));

    // In process, then out of process with each memory mode.
    let mut failures = Vec::new();
    for (label, extra) in [
        ("in process", &[][..]),
        (
            "out of process, shared memory",
            &["--executor", "spawn", "--memory", "shared"][..],
        ),
        (
            "out of process, copied memory",
            &["--executor", "spawn", "--memory", "copy"][..],
        ),
    ] {
        let run_dir = out
            .join("kiln")
            .join(name)
            .join(label.replace([' ', ','], "-"));
        std::fs::create_dir_all(&run_dir).expect("creating the run directory");
        let mut cmd = Command::new(KILN);
        cmd.arg("run")
            .args(extra)
            .arg(out.join("drivers").join(format!("{name}.o")))
            .arg(out.join("archives").join(archive_name))
            .args(&entry.libs)
            .current_dir(&run_dir);
        let kiln = match run(&mut cmd, &run_dir.join("kiln-run"), KILN_TIMEOUT) {
            Ok(k) => k,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let same_status = kiln.code() == Some(expected_status);
        let same_stdout = kiln.stdout == expected_stdout;
        if same_status && same_stdout {
            continue;
        }
        let mut msg = format!("{label}: differs from the native build:\n");
        if !same_status {
            msg.push_str(&format!(
                "exit status differs: native exited with status {expected_status}, kiln {}\n",
                kiln.status_text()
            ));
        }
        if !same_stdout {
            msg.push_str(&stdout_difference(&expected_stdout, &kiln.stdout));
        }
        msg.push_str(&format!(
            "kiln stderr:\n{}\ncommand: {}",
            indent(&tail(&kiln.stderr, 30)),
            kiln.command
        ));
        failures.push(msg);
    }
    if !failures.is_empty() {
        panic!(
            "corpus driver `{name}` under kiln:\n{}",
            failures.join("\n\n")
        );
    }
}

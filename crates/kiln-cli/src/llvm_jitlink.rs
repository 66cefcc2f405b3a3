//! llvm-jitlink's command line, accepted by `kiln run`: its spellings of the options the two
//! share (single dash included), and its perf support's jitdump directory.
//!
//! clap has no single-dash long options (`-noexec` would read as `-n -o -e …`), so the
//! arguments of `run` are rewritten to kiln's spellings before clap parses them — only names
//! that are known, only between `run` and `--`. The options are llvm-jitlink 14's
//! (`llvm-jitlink --help-hidden`) plus `-abs` and `-perf-support` of later versions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How an llvm-jitlink option that kiln has no long option of the same name is spelled in kiln.
enum Spelling {
    /// The same meaning under another name: `--NAME` (the value, if any, follows as given).
    Renamed(&'static str),
    /// `-slab-allocate`: kiln's `--slab-size`, where a bare number means Kb.
    SizeInKb,
    /// `-args A B…`: the rest of the command line is the program's, as after kiln's `--`.
    ProgramArgs,
    /// `-oop-executor[=PATH]`: `--executor=spawn[=PATH]`.
    SpawnExecutor,
    /// `-oop-executor-connect=HOST:PORT`: `--executor=connect=tcp:HOST:PORT`.
    ConnectExecutor,
    /// `-preload=LIB`: a shared library input.
    Input,
    /// An llvm-jitlink option kiln has no equivalent for: a clear error, not clap's reading of
    /// the name as a cluster of short flags.
    Unsupported(&'static str),
}

/// llvm-jitlink options whose kiln spelling differs by more than the dash. Options spelled
/// the same (`-noexec`, `-entry`, `-check`, `-check-name`, `-slab-address`, `-slab-page-size`,
/// `-define-abs`, `-abs`, `-show-stats`, `-perf-support`) are kiln's own long names or aliases,
/// which any single-dash spelling reaches.
const LLVM_JITLINK: &[(&str, Spelling)] = &[
    ("no-process-syms", Spelling::Renamed("--no-process-symbols")),
    ("slab-allocate", Spelling::SizeInKb),
    ("show-times", Spelling::Renamed("--show-stats")),
    ("show-sizes", Spelling::Renamed("--show-stats")),
    ("debugger-support", Spelling::Renamed("--gdb")),
    ("args", Spelling::ProgramArgs),
    ("oop-executor", Spelling::SpawnExecutor),
    ("oop-executor-connect", Spelling::ConnectExecutor),
    ("preload", Spelling::Input),
    (
        "hidden-l",
        Spelling::Unsupported("libraries with hidden visibility"),
    ),
    (
        "load_hidden",
        Spelling::Unsupported("libraries with hidden visibility"),
    ),
    (
        "jd",
        Spelling::Unsupported("JITDylibs: kiln links all inputs into one unit"),
    ),
    ("harness", Spelling::Unsupported("test harness files")),
    ("orc-runtime", Spelling::Unsupported("the ORC runtime")),
    (
        "phony-externals",
        Spelling::Unsupported("phony externals (undefined symbols are errors)"),
    ),
    (
        "add-self-relocations",
        Spelling::Unsupported("self relocations"),
    ),
    (
        "show-addrs",
        Spelling::Unsupported("printing addresses (use --check or KILN_LOG=debug)"),
    ),
    (
        "show-graph",
        Spelling::Unsupported("printing the graph (KILN_LOG=trace shows the link)"),
    ),
    (
        "show-relocated-section-contents",
        Spelling::Unsupported("printing section contents"),
    ),
    (
        "show-entry-es",
        Spelling::Unsupported("printing the execution session"),
    ),
    (
        "show-init-es",
        Spelling::Unsupported("printing the execution session"),
    ),
];

/// The rewriting of one command line: kiln's arguments, or why one cannot be accepted.
pub fn rewrite(
    args: impl IntoIterator<Item = OsString>,
    run_long_names: &[String],
) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    let mut in_run = None; // Some(true) once the subcommand `run` is seen
    let mut after_dashes = false;
    let mut kb_value_next = false;
    for (i, arg) in args.into_iter().enumerate() {
        let Some(text) = arg.to_str().filter(|_| i > 0 && !after_dashes) else {
            out.push(arg);
            continue;
        };
        if std::mem::take(&mut kb_value_next) {
            out.push(kb_default(text).into());
            continue;
        }
        // The subcommand is the first argument that is not an option.
        if in_run.is_none() && !text.starts_with('-') {
            in_run = Some(text == "run");
        }
        if in_run != Some(true) || !text.starts_with('-') || text == "-" {
            out.push(arg);
            continue;
        }
        if text == "--" {
            after_dashes = true;
            out.push(arg);
            continue;
        }
        let dashes = if text.starts_with("--") { 2 } else { 1 };
        let (name, value) = match text[dashes..].split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (&text[dashes..], None),
        };
        // `-hidden-lNAME` is a prefix option, like `-lNAME`.
        let name = if name.starts_with("hidden-l") {
            "hidden-l"
        } else {
            name
        };
        if let Some((_, spelling)) = LLVM_JITLINK.iter().find(|(n, _)| *n == name) {
            let (kiln_arg, next) = translate(spelling, &text[..dashes + name.len()], value)?;
            out.push(kiln_arg);
            match next {
                Next::Options => {}
                Next::SizeValue => kb_value_next = true,
                Next::ProgramArgs => after_dashes = true,
            }
            continue;
        }
        // `-lNAME`, `-LDIR` are the short options, whatever follows.
        let short_with_value = text.starts_with("-l") || text.starts_with("-L");
        if dashes == 1 && !short_with_value && run_long_names.iter().any(|n| n == name) {
            out.push(format!("-{text}").into());
        } else {
            out.push(arg);
        }
    }
    Ok(out)
}

/// What follows an option translated by [`translate`].
enum Next {
    Options,
    /// The size of `-slab-allocate SIZE`.
    SizeValue,
    /// The program's arguments.
    ProgramArgs,
}

/// kiln's argument for the llvm-jitlink `option` (as written, without its value).
fn translate(
    spelling: &Spelling,
    option: &str,
    value: Option<&str>,
) -> Result<(OsString, Next), String> {
    Ok(match (spelling, value) {
        (Spelling::Renamed(to), v) => (with_value(to, v), Next::Options),
        (Spelling::SizeInKb, Some(v)) => (
            format!("--slab-size={}", kb_default(v)).into(),
            Next::Options,
        ),
        (Spelling::SizeInKb, None) => ("--slab-size".into(), Next::SizeValue),
        (Spelling::ProgramArgs, None) => ("--".into(), Next::ProgramArgs),
        (Spelling::ProgramArgs, Some(_)) => {
            return Err(format!(
                "{option}: takes no value; the program's arguments follow it"
            ))
        }
        (Spelling::SpawnExecutor, v) => (
            with_value("--executor", Some(&with_value_str("spawn", v))),
            Next::Options,
        ),
        (Spelling::ConnectExecutor, Some(host_port)) => (
            format!("--executor=connect=tcp:{host_port}").into(),
            Next::Options,
        ),
        (Spelling::ConnectExecutor, None) => {
            return Err(format!("{option}: expected {option}=HOST:PORT"))
        }
        (Spelling::Input, Some(library)) => (library.into(), Next::Options),
        (Spelling::Input, None) => return Err(format!("{option}: expected {option}=LIBRARY")),
        (Spelling::Unsupported(what), _) => {
            return Err(format!(
                "llvm-jitlink's {option} has no kiln equivalent: kiln does not support {what}"
            ))
        }
    })
}

fn with_value_str(name: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{name}={v}"),
        None => name.to_string(),
    }
}

fn with_value(name: &str, value: Option<&str>) -> OsString {
    with_value_str(name, value).into()
}

/// llvm-jitlink's -slab-allocate counts in Kb when no unit is given.
fn kb_default(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) {
        format!("{v}Kb")
    } else {
        v.to_string()
    }
}

/// The directory llvm-jitlink's `-perf-support` writes its jitdump into, created:
/// `$JITDUMPDIR/.debug/jit/llvm-IR-jit-YYYYMMDD-XXXXXX` (else under `$HOME`, else `.`), with
/// six random hex digits, as LLVM's perf support lays it out (`PerfJITEventListener.cpp` in
/// LLVM 14, `JITLoaderPerf.cpp` later). The same name, not a kiln-specific one, so that
/// scripts which look for `.debug/jit/llvm-IR-jit-*/jit-*.dump` find kiln's dump too; perf
/// itself finds it through the dump's mapping. The date is UTC (LLVM uses local time).
pub fn perf_support_dir() -> Result<PathBuf, String> {
    let base = std::env::var_os("JITDUMPDIR")
        .or_else(|| std::env::var_os("HOME"))
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    unique_dump_dir(&base)
}

/// A new `BASE/.debug/jit/llvm-IR-jit-YYYYMMDD-XXXXXX`.
fn unique_dump_dir(base: &Path) -> Result<PathBuf, String> {
    let parent = base.join(".debug").join("jit");
    std::fs::create_dir_all(&parent).map_err(|e| {
        format!(
            "cannot create the jitdump directory {}: {e}",
            parent.display()
        )
    })?;
    let date = utc_date(std::time::SystemTime::now());
    for attempt in 0..64u32 {
        let dir = parent.join(format!("llvm-IR-jit-{date}-{:06x}", random24(attempt)));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "cannot create a unique jitdump directory in {}",
        parent.display()
    ))
}

/// 24 random bits: std's per-process random hash keys, mixed with the time and the attempt.
fn random24(attempt: u32) -> u32 {
    use std::hash::BuildHasher;
    let keys = std::collections::hash_map::RandomState::new();
    let hash = keys.hash_one((attempt, std::process::id(), std::time::SystemTime::now()));
    (hash & 0xff_ffff) as u32
}

/// `YYYYMMDD` of a time, in UTC.
fn utc_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}{m:02}{d:02}")
}

/// The proleptic Gregorian date of a day counted from 1970-01-01: eras of 400 years (146,097
/// days), the year starting in March so that the leap day comes last.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `path` is a jitdump directory laid out as [`perf_support_dir`] makes them.
#[cfg(test)]
fn is_llvm_layout(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parts: Vec<&str> = name.rsplitn(2, '-').collect();
    path.parent().is_some_and(|p| p.ends_with(".debug/jit"))
        && parts.len() == 2
        && parts[0].len() == 6
        && parts[0].bytes().all(|c| c.is_ascii_hexdigit())
        && parts[1]
            .strip_prefix("llvm-IR-jit-")
            .is_some_and(|d| d.len() == 8 && d.bytes().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "noexec",
            "entry",
            "define",
            "define-abs",
            "abs",
            "check",
            "check-name",
            "slab-address",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn rw(args: &[&str]) -> Result<Vec<String>, String> {
        let args = args.iter().map(OsString::from);
        rewrite(args, &names()).map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn single_dash_long_names_become_double_dash() {
        assert_eq!(
            rw(&[
                "kiln",
                "run",
                "-noexec",
                "-entry=main",
                "-abs",
                "f=1",
                "x.o"
            ])
            .unwrap(),
            [
                "kiln",
                "run",
                "--noexec",
                "--entry=main",
                "--abs",
                "f=1",
                "x.o"
            ]
        );
        // Short options keep their meaning: -lm is not `--lm`, -L dir stays.
        assert_eq!(
            rw(&["kiln", "run", "-lm", "-L", "dir", "-Ldir", "-l=m", "x.o"]).unwrap(),
            ["kiln", "run", "-lm", "-L", "dir", "-Ldir", "-l=m", "x.o"]
        );
        // Unknown names are left to clap, which reports them.
        assert_eq!(
            rw(&["kiln", "run", "-bogus"]).unwrap(),
            ["kiln", "run", "-bogus"]
        );
    }

    #[test]
    fn only_between_run_and_dashes() {
        assert_eq!(
            rw(&["kiln", "run", "x.o", "--", "-noexec", "-args"]).unwrap(),
            ["kiln", "run", "x.o", "--", "-noexec", "-args"]
        );
        assert_eq!(
            rw(&["kiln", "bench", "-noexec"]).unwrap(),
            ["kiln", "bench", "-noexec"]
        );
    }

    #[test]
    fn llvm_jitlink_renames() {
        assert_eq!(
            rw(&[
                "kiln",
                "run",
                "-no-process-syms",
                "-slab-allocate",
                "100",
                "-slab-allocate=2Mb",
                "-show-times",
                "-debugger-support",
                "-preload=/lib/libz.so",
                "x.o",
                "-args",
                "-noexec",
                "a"
            ])
            .unwrap(),
            [
                "kiln",
                "run",
                "--no-process-symbols",
                "--slab-size",
                "100Kb",
                "--slab-size=2Mb",
                "--show-stats",
                "--gdb",
                "/lib/libz.so",
                "x.o",
                "--",
                "-noexec",
                "a"
            ]
        );
        assert_eq!(
            rw(&[
                "kiln",
                "run",
                "-oop-executor",
                "--oop-executor=/bin/e",
                "-oop-executor-connect=h:7"
            ])
            .unwrap(),
            [
                "kiln",
                "run",
                "--executor=spawn",
                "--executor=spawn=/bin/e",
                "--executor=connect=tcp:h:7"
            ]
        );
    }

    #[test]
    fn options_without_equivalent_are_named() {
        let e = rw(&["kiln", "run", "-phony-externals", "x.o"]).unwrap_err();
        assert!(e.contains("-phony-externals has no kiln equivalent"), "{e}");
        let e = rw(&["kiln", "run", "-load_hidden=x", "x.o"]).unwrap_err();
        assert!(e.contains("-load_hidden has no kiln equivalent"), "{e}");
        // Not `-h` (help) followed by flags.
        let e = rw(&["kiln", "run", "-hidden-lfoo", "x.o"]).unwrap_err();
        assert!(e.contains("-hidden-l has no kiln equivalent"), "{e}");
        assert!(rw(&["kiln", "run", "-oop-executor-connect"]).is_err());
        assert!(rw(&["kiln", "run", "-args=1"]).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_753), (2024, 1, 31));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(utc_date(t), "20000229");
    }

    #[test]
    fn perf_support_dirs_are_unique_and_in_llvm_layout() {
        let tmp = std::env::temp_dir().join(format!("kiln-perf-dir-{}", std::process::id()));
        let a = unique_dump_dir(&tmp).unwrap();
        let b = unique_dump_dir(&tmp).unwrap();
        assert_ne!(a, b);
        for d in [&a, &b] {
            assert!(d.is_dir() && d.starts_with(&tmp), "{}", d.display());
            assert!(is_llvm_layout(d), "{}", d.display());
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

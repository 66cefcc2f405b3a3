//! Shared by the run-and-compare and corpus tests: running commands with a time limit and a
//! process-wide job limit, and describing their results.
#![allow(dead_code)] // each test binary uses a different part

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The repository root (this file is in crates/kiln-cli/tests/common/).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Limits how many external commands (compilers, programs) run at once across all tests of the
/// binary, so that parallel tests do not overload the machine and trip the time limits.
struct Jobs {
    free: Mutex<usize>,
    cv: Condvar,
}

static JOBS: LazyLock<Jobs> = LazyLock::new(|| {
    let n = std::env::var("KILN_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    Jobs {
        free: Mutex::new(n),
        cv: Condvar::new(),
    }
});

struct JobSlot;

impl JobSlot {
    fn acquire() -> JobSlot {
        let mut free = JOBS.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = JOBS.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        JobSlot
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        *JOBS.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        JOBS.cv.notify_one();
    }
}

/// The result of a command that ran to completion (or was killed by a signal).
pub struct Ran {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn status_text(&self) -> String {
        status_text(&self.status)
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// The command, its status and its stderr: for messages about a failed tool.
    pub fn describe(&self) -> String {
        format!(
            "`{}` {}\n{}",
            self.command,
            self.status_text(),
            indent(&tail(&self.stderr, 30))
        )
    }
}

pub fn status_text(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!(
            "was killed by signal {s}{}",
            if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => "ended in an unknown way".to_string(),
    }
}

/// Shell-like rendering of a command line, for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            let _ = write!(s, " '{}'", a.replace('\'', "'\\''"));
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured in `capture_prefix.stdout` and
/// `.stderr`, killing it after `timeout`. Err only when the command could not be started or timed
/// out (a missing tool is an error, never a skip).
pub fn run(cmd: &mut Command, capture_prefix: &Path, timeout: Duration) -> Result<Ran, String> {
    let command = command_line(cmd);
    let out_path = capture_prefix.with_extension("stdout");
    let err_path = capture_prefix.with_extension("stderr");
    let out = File::create(&out_path)
        .map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
    let err = File::create(&err_path)
        .map_err(|e| format!("cannot create {}: {e}", err_path.display()))?;
    let _slot = JobSlot::acquire();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run `{command}`: {e} (is the tool installed and on PATH?)"))?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read(&err_path).unwrap_or_default();
                return Err(format!(
                    "`{command}` timed out after {}s and was killed; stderr:\n{}",
                    timeout.as_secs(),
                    indent(&tail(&String::from_utf8_lossy(&stderr), 30))
                ));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("waiting for `{command}`: {e}")),
        }
    };
    let stdout =
        std::fs::read(&out_path).map_err(|e| format!("reading {}: {e}", out_path.display()))?;
    let stderr =
        std::fs::read(&err_path).map_err(|e| format!("reading {}: {e}", err_path.display()))?;
    Ok(Ran {
        command,
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= n {
        return s.trim_end().to_string();
    }
    format!(
        "[... {} lines cut ...]\n{}",
        lines.len() - n,
        lines[lines.len() - n..].join("\n")
    )
}

pub fn indent(s: &str) -> String {
    if s.trim().is_empty() {
        return "    (empty)".to_string();
    }
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Describes how `actual` differs from `expected`: the first differing line and some context.
pub fn stdout_difference(expected: &[u8], actual: &[u8]) -> String {
    let e = String::from_utf8_lossy(expected);
    let a = String::from_utf8_lossy(actual);
    let el: Vec<&str> = e.split_inclusive('\n').collect();
    let al: Vec<&str> = a.split_inclusive('\n').collect();
    let first = el
        .iter()
        .zip(&al)
        .position(|(x, y)| x != y)
        .unwrap_or(el.len().min(al.len()));
    let mut s = format!(
        "stdout differs from line {} on (native: {} lines, {} bytes; kiln: {} lines, {} bytes)\n",
        first + 1,
        el.len(),
        expected.len(),
        al.len(),
        actual.len()
    );
    let from = first.saturating_sub(2);
    for (label, lines) in [("native", &el), ("kiln", &al)] {
        let _ = writeln!(s, "  {label} stdout, lines {}..:", from + 1);
        let shown: Vec<String> = lines
            .iter()
            .skip(from)
            .take(8)
            .map(|l| format!("    |{}", l.trim_end_matches('\n')))
            .collect();
        if shown.is_empty() {
            s.push_str("    (nothing)\n");
        } else {
            s.push_str(&shown.join("\n"));
            s.push('\n');
        }
    }
    s
}

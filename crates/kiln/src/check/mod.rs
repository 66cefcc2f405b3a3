//! Check tests in llvm-jitlink's dialect: `# jitlink-check: EXPR = EXPR` lines, evaluated
//! against where a link put everything (a [`crate::link::LinkMap`]).
//!
//! ```text
//! # jitlink-check: decode_operand(test_call, 0) = \
//! # jitlink-check:     stub_addr(test.o, far_func) - next_pc(test_call)
//! # jitlink-check: *{8}got_addr(test.o, data) = data
//! ```
//!
//! The expression language is described in [`expr`]; `docs/check-tests.md` describes the
//! dialect for test writers, and where it departs from llvm-jitlink 14.
//!
//! Lines: a check line starts (after blanks) with a comment marker — `#`, `//` or `;` —
//! optional blanks, the check name (`jitlink-check` unless `-check-name` says otherwise) and a
//! colon. A trailing `\` continues the check on the next line; that line may repeat the prefix
//! (as LLVM's tests do) or not.

pub mod disasm;
pub mod env;
pub mod eval;
pub mod expr;
pub mod linker_defined;
pub mod slab;

pub use env::LinkMapEnv;
pub use eval::{eval, CheckEnv};
pub use expr::{parse_check, parse_expr, Check, Expr, ParseError};
pub use linker_defined::{linker_defined, LinkerDefined, LINKER_DEFINED};
pub use slab::SlabExecutor;

use crate::session::{Session, UnitId};
use std::fmt;

/// The check name llvm-jitlink uses by default.
pub const DEFAULT_CHECK_NAME: &str = "jitlink-check";

/// One check as written: the (first) line it is on, and its text after the prefix, with
/// continuation lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub line: usize,
    pub text: String,
}

/// The text after `<marker> NAME:` if `line` is a check line.
fn after_prefix<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let l = line.trim_start();
    let l = ["#", "//", ";"]
        .iter()
        .find_map(|m| l.strip_prefix(m))?
        .trim_start();
    l.strip_prefix(name)?.strip_prefix(':')
}

/// A comment marker and blanks removed from the start of a continuation line.
fn strip_marker(line: &str) -> &str {
    let l = line.trim_start();
    ["#", "//", ";"]
        .iter()
        .find_map(|m| l.strip_prefix(m))
        .unwrap_or(l)
}

/// The checks of a file, with their line numbers (1-based).
pub fn extract_checks(source: &str, name: &str) -> Result<Vec<CheckLine>, String> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains(':') {
        return Err(format!(
            "check name {name:?}: must be non-empty, without blanks or `:`"
        ));
    }
    let mut out = Vec::new();
    let mut lines = source.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(first) = after_prefix(line, name) else {
            continue;
        };
        let mut text = first.trim().to_string();
        while let Some(head) = text.strip_suffix('\\') {
            text = head.trim_end().to_string();
            let Some((_, next)) = lines.next() else {
                return Err(format!(
                    "line {}: the check ends with `\\` but the file ends there",
                    i + 1
                ));
            };
            let more = after_prefix(next, name).unwrap_or_else(|| strip_marker(next));
            text.push(' ');
            text.push_str(more.trim());
        }
        out.push(CheckLine {
            line: i + 1,
            text: text.trim().to_string(),
        });
    }
    Ok(out)
}

/// Why one check did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The text is not an expression of the dialect.
    Syntax(ParseError),
    /// It could not be evaluated (an unknown symbol, memory that was not linked, …).
    Eval(String),
    /// Both sides evaluated, to different values.
    Mismatch { lhs: u64, rhs: u64 },
}

/// A check that did not pass.
#[derive(Clone, Debug)]
pub struct CheckFailure {
    pub line: usize,
    pub text: String,
    pub failure: Failure,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Syntax(e) => {
                writeln!(f, "line {}: malformed check: {}", self.line, e.message)?;
                writeln!(f, "    {}", self.text)?;
                let col = self
                    .text
                    .char_indices()
                    .take_while(|(i, _)| *i < e.pos)
                    .count();
                write!(f, "    {}^", " ".repeat(col))
            }
            Failure::Eval(why) => write!(
                f,
                "line {}: cannot evaluate check: {}\n    {why}",
                self.line, self.text
            ),
            Failure::Mismatch { lhs, rhs } => write!(
                f,
                "line {}: check failed: {}\n    left side:  {lhs:#x}\n    right side: {rhs:#x}",
                self.line, self.text
            ),
        }
    }
}

/// The outcome of the checks of one file.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub passed: usize,
    pub failures: Vec<CheckFailure>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn total(&self) -> usize {
        self.passed + self.failures.len()
    }
}

/// Evaluate one check.
pub fn run_check(text: &str, env: &dyn CheckEnv) -> Result<(), Failure> {
    let c = parse_check(text).map_err(Failure::Syntax)?;
    let lhs = eval(&c.lhs, env).map_err(Failure::Eval)?;
    let rhs = eval(&c.rhs, env).map_err(Failure::Eval)?;
    if lhs == rhs {
        Ok(())
    } else {
        Err(Failure::Mismatch { lhs, rhs })
    }
}

/// Evaluate every check; all are evaluated even after a failure.
pub fn run_checks(checks: &[CheckLine], env: &dyn CheckEnv) -> CheckReport {
    let mut r = CheckReport::default();
    for c in checks {
        match run_check(&c.text, env) {
            Ok(()) => r.passed += 1,
            Err(failure) => r.failures.push(CheckFailure {
                line: c.line,
                text: c.text.clone(),
                failure,
            }),
        }
    }
    r
}

/// Evaluate the checks of `source` (named `name`) against unit `unit` of `session`, which must
/// have been linked with [`Session::set_want_map`] on. Symbols the unit does not define are
/// taken from `defines` (`-abs`/`--define`), then the executor's runtime symbols, then (if
/// `process`) the executor process — except the symbols the linker defines for the unit
/// ([`LINKER_DEFINED`]), which are the unit's even when no input references them. A file
/// without checks is an error, as in llvm-jitlink.
pub fn check_unit(
    session: &Session,
    unit: UnitId,
    source: &str,
    name: &str,
    defines: &[(String, u64)],
    process: bool,
) -> Result<CheckReport, String> {
    let map = session.link_map(unit).ok_or(
        "the unit was linked without a link map (Session::set_want_map(true) before linking)",
    )?;
    let checks = extract_checks(source, name)?;
    if checks.is_empty() {
        return Err(format!(
            "no checks: no line starts with `# {name}:` (or `// {name}:`, `; {name}:`)"
        ));
    }
    let ex = session.executor();
    let outside = |sym: &str| -> Option<u64> {
        if let Some(a) = session.lookup(sym) {
            return Some(a.0);
        }
        if let Some((_, a)) = defines.iter().rev().find(|(n, _)| n == sym) {
            return Some(*a);
        }
        if let Some((_, a)) = ex.runtime_symbols().iter().find(|(n, _)| *n == sym) {
            return Some(a.0);
        }
        if !process {
            return None;
        }
        ex.lookup(&[sym.as_bytes()], &[], true)
            .ok()?
            .first()
            .copied()
            .flatten()
            .map(|a| a.0)
    };
    let env = LinkMapEnv::new(&map).with_outside(outside);
    let report = run_checks(&checks, &env);
    Ok(report)
}

#[cfg(test)]
mod tests;

//! Kiln's errors: types a program can act on, with messages that say what, where, and what to do.

use crate::arch::FixupError;
use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in the input something is wrong: file (and archive member), section, offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub section: Option<String>,
    pub offset: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(s) = &self.section {
            write!(f, ": section {s}")?;
        }
        if let Some(o) = self.offset {
            write!(f, ", offset {o:#x}")?;
        }
        Ok(())
    }
}

/// A symbol and the inputs whose live code references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolReference {
    pub name: String,
    /// Inputs (files, archive members `lib.a(x.o)`, graphs) that reference it.
    pub referenced_by: Vec<String>,
}

/// Why symbols could not be bound: every problem of a link, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unresolved {
    /// Found nowhere: not in the link's inputs, the session's units, the runtime, its libraries,
    /// the process, or its definition generators.
    pub undefined: Vec<SymbolReference>,
    /// Defined outside the inputs but not on the allow-list.
    pub not_allowed: Vec<SymbolReference>,
    /// Thread-local symbols defined outside the JIT'd code (not supported).
    pub foreign_tls: Vec<SymbolReference>,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = [
            ("undefined symbols:", &self.undefined),
            ("symbols not on the allow-list:", &self.not_allowed),
            (
                "thread-local symbols defined outside the JIT'd code (not supported):",
                &self.foreign_tls,
            ),
        ];
        let mut first = true;
        for (head, list) in groups {
            if list.is_empty() {
                continue;
            }
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{head}")?;
            for r in list {
                write!(f, "\n  {}", r.name)?;
                if !r.referenced_by.is_empty() {
                    write!(f, " (referenced by {})", list_text(&r.referenced_by))?;
                }
            }
        }
        Ok(())
    }
}

/// At most five names, then how many more.
fn list_text(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let mut s = shown.join(", ");
    if names.len() > 5 {
        s.push_str(&format!(" and {} more", names.len() - 5));
    }
    s
}

/// Two strong definitions of one symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateSymbol {
    pub name: String,
    /// Where the definition that was there first lives (an input, or a unit of the session).
    pub first: String,
    pub second: String,
}

/// A relocation that could not be applied, with everything needed to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixupFailure {
    pub file: String,
    pub section: String,
    /// Offset of the field in its section (block).
    pub offset: u64,
    /// Executor address of the field.
    pub address: u64,
    /// The psABI relocation (`R_X86_64_PC32`).
    pub relocation: &'static str,
    /// The edge kind (`Delta32`).
    pub kind: &'static str,
    pub target: String,
    /// The value of the target the formula used (its address, size, TLS offset).
    pub target_value: u64,
    pub addend: i64,
    /// What the architecture refused (out of range, wrong instruction shape, misaligned)...
    pub error: Option<FixupError>,
    /// ...or why the target has no usable value.
    pub target_problem: Option<&'static str>,
    /// What to do about it, when kiln knows.
    pub hint: Option<&'static str>,
}

impl fmt::Display for FixupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: section {}, offset {:#x} (address {:#x}): {} ({}) fixup to {}: ",
            self.file,
            self.section,
            self.offset,
            self.address,
            self.relocation,
            self.kind,
            self.target
        )?;
        match (&self.error, self.target_problem) {
            (
                Some(FixupError::OutOfRange {
                    value,
                    range,
                    width,
                }),
                _,
            ) => write!(
                f,
                "value {value:#x} (target {:#x}, addend {}, at {:#x}) does not fit in {}",
                self.target_value,
                self.addend,
                self.address,
                crate::arch::range_text(*range, *width)
            )?,
            (Some(e), _) => write!(f, "{e}")?,
            (None, Some(p)) => write!(f, "{p}")?,
            (None, None) => write!(f, "failed")?,
        }
        if let Some(h) = self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

/// Errors of the kiln linker.
///
/// Every `Result` of the pipeline and of the session's calls moves an `Error`'s size, so it is
/// kept at 32 bytes (a test pins it; `kiln_target::Error` is held inline in that much): what is
/// large and rare is boxed (a [`Location`], [`Unresolved`]'s lists, a [`FixupFailure`], the
/// texts of variants that carry more than one thing).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is malformed: truncated, inconsistent, out of range.
    #[error("{at}: malformed input: {what}")]
    Malformed { at: Box<Location>, what: Box<str> },
    /// The input is well formed but uses something kiln does not support (yet).
    #[error("{at}: unsupported: {what}")]
    Unsupported { at: Box<Location>, what: Box<str> },
    /// Symbols could not be bound (undefined, not allowed, thread-local outside the code).
    /// Nothing was linked; whatever inputs were added stay added.
    #[error("{0}")]
    Unresolved(Box<Unresolved>),
    /// Symbols defined twice by strong definitions.
    #[error("duplicate symbols:{}", duplicates_text(.0))]
    Duplicate(Vec<DuplicateSymbol>),
    /// A relocation could not be applied.
    #[error("{0}")]
    Fixup(Box<FixupFailure>),
    /// Reading an input failed. (The I/O error is part of the message, not a separate source,
    /// so that error chains do not print it twice.)
    #[error("{path}: {error}")]
    Io {
        path: Box<str>,
        error: std::io::Error,
    },
    /// A library named with `-l` (or a file an ld script names) was not found.
    #[error("cannot find {what}; searched {}", .searched.join(", "))]
    NotFound {
        what: kiln_target::Text,
        searched: Box<[String]>,
    },
    /// The API was misused: an unknown unit, an entry point the code does not define, a patch
    /// outside the session's memory.
    #[error("{0}")]
    Usage(String),
    /// Other live units bind to the unit: remove them first, or remove them with it.
    #[error("{unit} cannot be removed: {} bind{} to it", units_text(dependents), if dependents.len() == 1 { "s" } else { "" })]
    HasDependents {
        unit: crate::UnitId,
        dependents: Box<[crate::UnitId]>,
    },
    /// A link in progress (on another thread) binds to the unit; try again when it is done.
    #[error("{0} is in use by a link in progress")]
    UnitInUse(crate::UnitId),
    /// Kiln broke one of its own rules: a bug, please report it.
    #[error("internal error (a bug in kiln): {0}")]
    Internal(String),
    /// The executor refused or failed a request.
    #[error(transparent)]
    Target(#[from] kiln_target::Error),
}

fn units_text(units: &[crate::UnitId]) -> String {
    let names: Vec<String> = units.iter().map(|u| u.to_string()).collect();
    list_text(&names)
}

fn duplicates_text(d: &[DuplicateSymbol]) -> String {
    d.iter()
        .map(|d| {
            format!(
                "\n  {} is defined in {} and in {}",
                d.name, d.first, d.second
            )
        })
        .collect()
}

impl Error {
    pub(crate) fn malformed(
        file: &str,
        section: Option<&str>,
        offset: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            at: Box::new(Location {
                file: file.to_string(),
                section: section.map(str::to_string),
                offset,
            }),
            what: what.into().into(),
        }
    }

    pub(crate) fn unsupported(
        file: &str,
        section: Option<&str>,
        offset: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            at: Box::new(Location {
                file: file.to_string(),
                section: section.map(str::to_string),
                offset,
            }),
            what: what.into().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Result` of the pipeline and of the session's wrappers moves an `Error`: keep it
    /// small (boxing what is large and rare), so that a `Result<UnitId>` is four words.
    #[test]
    fn errors_stay_small() {
        use std::mem::size_of;
        assert!(size_of::<Error>() <= 32, "{}", size_of::<Error>());
        assert!(size_of::<Result<crate::UnitId>>() <= 32);
        assert!(size_of::<Result<()>>() <= 32);
    }

    #[test]
    fn boxed_payloads_read_as_before() {
        let e = Error::malformed("a.o", Some(".text"), Some(16), "truncated");
        assert_eq!(
            e.to_string(),
            "a.o: section .text, offset 0x10: malformed input: truncated"
        );
        let Error::Malformed { at, what } = &e else {
            panic!("{e}")
        };
        assert_eq!((at.file.as_str(), &**what), ("a.o", "truncated"));
        let e = Error::Unresolved(Box::new(Unresolved {
            undefined: vec![SymbolReference {
                name: "f".into(),
                referenced_by: vec!["g".into()],
            }],
            ..Unresolved::default()
        }));
        assert_eq!(e.to_string(), "undefined symbols:\n  f (referenced by g)");
        if let Error::Unresolved(u) = &e {
            assert_eq!(u.undefined[0].name, "f");
        }
        let e = Error::NotFound {
            what: "-lfoo".into(),
            searched: vec!["/usr/lib".to_string(), "/lib".to_string()].into(),
        };
        assert_eq!(e.to_string(), "cannot find -lfoo; searched /usr/lib, /lib");
    }
}

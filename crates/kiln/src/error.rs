use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in the input something is wrong: file (and archive member), section, offset.
#[derive(Debug, Clone, Default)]
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

/// Errors of the kiln linker.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is malformed: truncated, inconsistent, out of range.
    #[error("{at}: malformed input: {what}")]
    Malformed { at: Location, what: String },
    /// The input is well formed but uses something kiln does not support (yet).
    #[error("{at}: unsupported: {what}")]
    Unsupported { at: Location, what: String },
    /// Symbol resolution failed (undefined or duplicate symbols); the message lists them all.
    #[error("{0}")]
    Resolve(String),
    /// A relocation could not be applied (out of range).
    #[error("{0}")]
    Fixup(String),
    /// Reading an input failed. (The I/O error is part of the message, not a separate source,
    /// so that error chains do not print it twice.)
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// A library named with `-l` was not found, a compiler failed, or the API was misused.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Target(#[from] kiln_target::Error),
}

impl Error {
    pub(crate) fn malformed(
        file: &str,
        section: Option<&str>,
        offset: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            at: Location {
                file: file.to_string(),
                section: section.map(str::to_string),
                offset,
            },
            what: what.into(),
        }
    }

    pub(crate) fn unsupported(
        file: &str,
        section: Option<&str>,
        offset: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            at: Location {
                file: file.to_string(),
                section: section.map(str::to_string),
                offset,
            },
            what: what.into(),
        }
    }
}

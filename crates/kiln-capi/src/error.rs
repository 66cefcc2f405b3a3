//! `kiln_error_t`: a kind C can switch on and a message a person can read.

use crate::ffi::types::*;
use kiln_core::Error;
use std::ffi::{CStr, CString};

/// An error as C sees it. The message is kept NUL-terminated, so that `kiln_error_message`
/// can hand out a pointer that is also a C string.
#[derive(Debug)]
pub(crate) struct CError {
    kind: kiln_error_kind_t,
    message: CString,
}

impl CError {
    pub(crate) fn new(kind: kiln_error_kind_t, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.contains('\0') {
            message = message.replace('\0', "\\0");
        }
        let message = CString::new(message).unwrap_or_default();
        CError { kind, message }
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(KILN_ERROR_INVALID_ARGUMENT, message)
    }

    pub(crate) fn invalid_handle(message: impl Into<String>) -> Self {
        Self::new(KILN_ERROR_INVALID_HANDLE, message)
    }

    pub(crate) fn kind(&self) -> kiln_error_kind_t {
        self.kind
    }

    pub(crate) fn set_kind(&mut self, kind: kiln_error_kind_t) {
        self.kind = kind;
    }

    pub(crate) fn message(&self) -> &str {
        // Built from a `String`: always UTF-8.
        self.message.to_str().unwrap_or_default()
    }

    pub(crate) fn message_c(&self) -> &CStr {
        &self.message
    }

    /// The same error, its message prefixed with where it happened (the entry point's name).
    pub(crate) fn context(self, at: &str) -> Self {
        Self::new(self.kind, format!("{at}: {}", self.message()))
    }
}

impl From<Error> for CError {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Malformed { .. } => KILN_ERROR_MALFORMED,
            Error::Unsupported { .. } => KILN_ERROR_UNSUPPORTED,
            Error::Unresolved(_) => KILN_ERROR_UNRESOLVED,
            Error::Duplicate(_) => KILN_ERROR_DUPLICATE,
            Error::Fixup(_) => KILN_ERROR_FIXUP,
            Error::Io { .. } => KILN_ERROR_IO,
            Error::NotFound { .. } => KILN_ERROR_NOT_FOUND,
            Error::Usage(_) => KILN_ERROR_USAGE,
            Error::HasDependents { .. } => KILN_ERROR_HAS_DEPENDENTS,
            Error::UnitInUse(_) => KILN_ERROR_UNIT_IN_USE,
            Error::Internal(_) => KILN_ERROR_INTERNAL,
            Error::Target(_) => KILN_ERROR_EXECUTOR,
            // `kiln::Error` is non-exhaustive: a kind added there is "other" here until it
            // gets a constant of its own.
            _ => KILN_ERROR_OTHER,
        };
        CError::new(kind, e.to_string())
    }
}

impl From<kiln_target::Error> for CError {
    fn from(e: kiln_target::Error) -> Self {
        CError::from(Error::Target(e))
    }
}

use crate::ExecutorAddr;
use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the target runtime.
///
/// Every `Result` of the runtime (and of kiln's pipeline, which wraps this type) moves an
/// `Error`'s size, so it is kept at 32 bytes (a test pins it): a variant's payload is at most
/// three words, and the texts of the rare variants that carry more than one thing are a
/// [`Text`], one pointer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reserve {size:#x} bytes of address space{where_}: {why}")]
    Reserve { size: u64, where_: Text, why: Text },
    #[error("memory operation on {addr}..+{size:#x} failed: {why}")]
    Memory {
        addr: ExecutorAddr,
        size: u64,
        why: Text,
    },
    #[error("cannot load library {path}: {why}")]
    LoadLibrary { path: Text, why: Text },
    #[error("unknown library handle {0}")]
    UnknownLibrary(u32),
    #[error("unknown allocation {0}")]
    UnknownAllocation(u64),
    #[error("symbol name {0:?} contains a NUL byte")]
    BadSymbolName(String),
    #[error("cannot register unwind info at {addr}: {why}")]
    EhFrame { addr: ExecutorAddr, why: Text },
    #[error("thread-local storage: {0}")]
    Tls(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Arithmetic on an address and a size from a request overflowed: the range would wrap past
    /// the end of the address space.
    #[error("the range {addr}..+{size:#x} wraps past the end of the address space")]
    RangeWraps { addr: ExecutorAddr, size: u64 },
    /// A safe call named memory this executor does not own (or not in the form the call
    /// needs): the stack, the heap, a library's code, another executor's memory, a range
    /// straddling two reservations, a freed unit.
    #[error("{addr}..+{size:#x} is not {what}")]
    NotOwned {
        addr: ExecutorAddr,
        size: u64,
        /// What the range would have to be, e.g. "a reservation of this executor".
        what: Text,
    },
    /// Memory or an object the executor owns is in a state the call cannot act on now: a slab
    /// that still holds live units, a range another call is writing, code that is running.
    #[error("{0}")]
    Busy(String),
    #[error("unknown slab {0}")]
    UnknownSlab(u32),
    /// A finalize or dealloc action names something outside the unit it belongs to, or undoes
    /// something its finalize half did not do.
    #[error("action {action} refused: {why}")]
    BadAction { action: Text, why: Text },
    /// An address to call is not executable code of a live unit of this executor.
    #[error("{0} is not executable code of a live unit of this executor")]
    NotCode(ExecutorAddr),
    /// The channel to an out-of-process executor failed, or it answered nonsense.
    #[error("executor channel: {0}")]
    Channel(String),
    /// The executor refused or failed a request (its own error, carried back as a value).
    #[error("executor: {0}")]
    Remote(String),
    /// The executor process is gone: it exited (`code`, e.g. JIT'd code called `exit()`) or was
    /// killed by `signal`.
    #[error("{}", exited_text(*.code, *.signal))]
    ExecutorExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// [`crate::Executor::move_allocation`] moved the allocation's bytes, then something failed
    /// (registering it at its new addresses): it is live there, without the new registrations.
    #[error("allocation {id} was moved to its new addresses, but: {why}")]
    AfterMove { id: u64, why: Text },
    /// A debugger or profiler sink (gdb, perf map, jitdump) could not record the code.
    #[error("{sink}: {why}")]
    DebugSink { sink: &'static str, why: Text },
}

/// The text of a rare error, held behind one pointer so that the error it is part of stays
/// small (see [`Error`]). It reads as a `str` (`Deref`, `Display`), and is made from a `&str`
/// or a `String` with `into()`.
#[derive(Clone, PartialEq, Eq, Default)]
#[allow(clippy::box_collection)] // the point: one pointer, where a `String` is three words
pub struct Text(Box<String>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Box::new(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Box::new(s.to_string()))
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        *t.0
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

fn exited_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(s)) => format!(
            "the executor process was killed by signal {s}{}",
            signal_name(s)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        (Some(c), None) => format!("the executor process exited with status {c}"),
        (None, None) => "the executor process is gone".to_string(),
    }
}

/// The conventional name of a Linux signal number.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES
        .get(usize::try_from(sig).ok()?)
        .copied()
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Result` of the runtime moves an `Error`; kiln's `Error` holds one in a variant.
    #[test]
    fn errors_stay_small() {
        assert!(
            std::mem::size_of::<Error>() <= 32,
            "{}",
            std::mem::size_of::<Error>()
        );
        assert!(std::mem::size_of::<Result<u64>>() <= 32);
        assert_eq!(std::mem::size_of::<Text>(), 8);
    }

    #[test]
    fn texts_read_and_print_as_their_strings() {
        let e = Error::Reserve {
            size: 0x1000,
            where_: " at 0x7000".into(),
            why: String::from("the range is not free").into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reserve 0x1000 bytes of address space at 0x7000: the range is not free"
        );
        let t = Text::from("abc");
        assert_eq!(&*t, "abc");
        assert_eq!(format!("{t:?}"), "\"abc\"");
        assert_eq!(String::from(t), "abc");
    }
}

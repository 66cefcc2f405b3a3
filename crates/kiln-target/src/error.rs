use crate::ExecutorAddr;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the target runtime.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reserve {size:#x} bytes of address space{where_}: {why}")]
    Reserve {
        size: u64,
        where_: String,
        why: String,
    },
    #[error("memory operation on {addr}..+{size:#x} failed: {why}")]
    Memory {
        addr: ExecutorAddr,
        size: u64,
        why: String,
    },
    #[error("cannot load library {path}: {why}")]
    LoadLibrary { path: String, why: String },
    #[error("unknown library handle {0}")]
    UnknownLibrary(u32),
    #[error("unknown allocation {0}")]
    UnknownAllocation(u64),
    #[error("symbol name {0:?} contains a NUL byte")]
    BadSymbolName(String),
    #[error("cannot register unwind info at {addr}: {why}")]
    EhFrame { addr: ExecutorAddr, why: String },
    #[error("thread-local storage: {0}")]
    Tls(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
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
    /// A debugger or profiler sink (gdb, perf map, jitdump) could not record the code.
    #[error("{sink}: {why}")]
    DebugSink { sink: &'static str, why: String },
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

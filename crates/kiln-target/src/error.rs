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
        what: &'static str,
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
    BadAction { action: String, why: String },
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
    AfterMove { id: u64, why: String },
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

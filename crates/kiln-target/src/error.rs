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
    /// A debugger or profiler sink (gdb, perf map, jitdump) could not record the code.
    #[error("{sink}: {why}")]
    DebugSink { sink: &'static str, why: String },
}

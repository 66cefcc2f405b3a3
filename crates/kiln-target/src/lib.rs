//! Kiln's target runtime: everything that happens in the process where JIT'd code runs.
//!
//! The controller (the `kiln` crate) parses, links and decides; it never dereferences an
//! [`ExecutorAddr`]. It talks to the process that runs the code only through the [`Executor`]
//! trait. [`InProcessExecutor`] implements that trait by calling this runtime directly; an
//! out-of-process executor runs the same runtime behind an RPC channel.
//!
//! Unsafe code lives here only, in the small modules under `sys/`, each block with a
//! `// SAFETY:` comment.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod addr;
mod error;
mod executor;
mod inprocess;
mod simulated;
mod sys;

pub use addr::{ExecutorAddr, MemProt};
pub use error::{Error, Result};
pub use executor::{
    Action, ActionPair, AllocId, Executor, FinalizeRequest, LibraryId, Placement, Segment,
    TargetInfo,
};
pub use inprocess::InProcessExecutor;
pub use simulated::SimulatedExecutor;
pub use sys::tls::TLS_MODULE_TAG;

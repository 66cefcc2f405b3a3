//! Kiln's target runtime: everything that happens in the process where JIT'd code runs.
//!
//! The controller (the `kiln` crate) parses, links and decides; it never dereferences an
//! [`ExecutorAddr`]. It talks to the process that runs the code only through the [`Executor`]
//! trait. [`InProcessExecutor`] implements that trait by calling this runtime directly; an
//! out-of-process executor runs the same runtime behind an RPC channel.
//!
//! Unsafe code lives here only, in the small modules under `sys/` (the rest of the crate denies
//! it), each block with a `// SAFETY:` comment. What a safe call can and cannot do: see
//! `docs/safety.md`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod addr;
mod eh_frame;
mod error;
mod executor;
mod inprocess;
pub mod jitdump_format;
mod lazy;
mod plan;
mod ranges;
mod shards;
mod simulated;
#[allow(unsafe_code)]
mod sys;
mod table;

pub use addr::{ExecutorAddr, MemProt};
pub use error::{signal_name, Error, Result, Text};
pub use executor::{slab_memory_by_copy, slab_unit_by_two_calls};
pub use executor::{
    Action, ActionPair, AllocId, Bytes, Executor, FinalizeRequest, LibraryId, PerfMapEntry,
    Placement, Segment, SegmentMove, SlabId, SlabInfo, SlabSegment, SlabWrite, TargetInfo,
    UnitActions, MAX_READ,
};
pub use inprocess::InProcessExecutor;
pub use lazy::{
    LazyErrorHandler, LazyHandler, LazyRequest, LazyRuntime, LazyState, StubKey, StubTemplate,
    LAZY_STUB, LAZY_TRAMPOLINE_SYMBOL,
};
pub use simulated::SimulatedExecutor;
pub use sys::process;
pub use sys::raw_memory::RawMemory;
pub use sys::slab::{SharedSlab, SlabClaim};
pub use sys::sync::{sync_cores, sync_cores_method};
pub use sys::tls::TLS_MODULE_TAG;

/// What the debugger and profiler sinks left in this process: for hosts and tests.
pub mod debug_sinks {
    pub use crate::sys::gdb::{
        __jit_debug_descriptor, __jit_debug_register_code, registered_objects, GdbDescriptor,
    };
    pub use crate::sys::perf::path as perf_map_path;
    pub use crate::sys::valgrind::{discard_translations, running_on_valgrind};
}

//! Kiln: a JIT linker. It takes relocatable ELF objects, static archives and graphs a JIT
//! compiler builds in memory, and makes them run in an executor's memory — this process, or
//! another one: parse → resolve → passes → layout → fixups → finalize.
//!
//! A [`Session`] is the whole API: it links inputs into units, keeps their symbols in
//! [scopes](Session::create_scope), asks [generators](DefinitionGenerator) for missing
//! definitions, knows which units depend on which, looks symbols up, runs code and removes
//! units. It can be shared by compiler threads.
//!
//! ```no_run
//! use kiln::Session;
//! let s = Session::in_process();
//! s.add_file("hello.o")?;
//! s.link()?;
//! s.run_initializers()?;
//! let status = s.run_main("main", &["hello".to_string()])?;
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! A JIT compiler builds [`graph::InMemoryGraph`]s instead of objects:
//!
//! ```
//! use kiln::arch::x86_64::EdgeKind;
//! use kiln::graph::{InMemoryEdge, InMemoryGraph};
//! use kiln::Session;
//!
//! let s = Session::in_process();
//! # s.set_debug(kiln::DebugOptions::none());
//! // int answer(void) { return 42; }
//! let mut g = InMemoryGraph::new("answer");
//! g.add_function("answer", vec![0xb8, 42, 0, 0, 0, 0xc3], vec![], None);
//! s.link_graph(&g)?;
//! // int twice(void) { return answer() * 2; }: a call through a PC-relative edge
//! let mut g = InMemoryGraph::new("twice");
//! let code = vec![0xe8, 0, 0, 0, 0, 0x01, 0xc0, 0xc3]; // call answer; add %eax,%eax; ret
//! g.add_function("twice", code, vec![InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "answer", -4)], None);
//! let unit = s.link_graph(&g)?;
//! assert!(s.lookup("twice").is_some());
//! assert_eq!(s.dependencies(unit)?.len(), 1);
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! No unsafe code here: everything that touches executor memory goes through
//! [`kiln_target::Executor`]. `docs/architecture.md` in the repository is the map.
#![forbid(unsafe_code)]

pub mod arch;
mod debug;
mod elf;
mod error;
pub mod graph;
mod link;
mod memory;
mod search;
mod session;

// The check dialect (llvm-jitlink's `-check`) and the raw pipeline: for the `kiln` command and
// kiln's own tests, not part of the API.
mod check;

pub use debug::DebugOptions;
pub use error::{
    DuplicateSymbol, Error, FixupFailure, Location, Result, SymbolReference, Unresolved,
};
pub use kiln_target::{Executor, ExecutorAddr, InProcessExecutor};
pub use link::relink::{RelinkEdge, RelinkRecord, RelinkTarget};
pub use link::{LinkMap, LinkStats, MappedBytes, MappedSection, MappedSymbol, TableEntry};
pub use memory::{slab_extent, CodeMemory, SlabAllocator, SlabMemory, SlabRange, SLAB_GRAIN};
pub use search::LibrarySearch;
pub use session::{
    lazy_stub_graph, CallLeft, CallRedirect, CallSite, DefinitionGenerator, Generated, Inputs,
    RelinkBytes, RelocationInfo, ScopeId, Session, StubBypass, SymbolInfo, SymbolKind, UnitId,
    UnitOptions,
};

/// For the `kiln` command and kiln's own tests: the check dialect, the raw pipeline, the
/// debug-object builders. Not a stable API.
#[doc(hidden)]
pub mod internal {
    /// llvm-jitlink's `-check` dialect.
    pub mod check {
        pub use crate::check::*;
    }
    /// The debug sinks' builders (gdb objects, jitdump records).
    pub mod debug {
        pub use crate::debug::*;
    }
    pub use crate::elf::{identify, FileKind};
    pub use crate::link::{link, LinkInput, LinkedUnit, NoSession};
}

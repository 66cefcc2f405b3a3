//! Kiln: a JIT linker. It takes relocatable ELF objects and static archives (from gcc, clang or
//! rustc) and makes them run in executor memory: parse → resolve → passes → layout → fixups →
//! finalize. See `DESIGN.md` in the repository for the map.
//!
//! ```no_run
//! use kiln::Session;
//! let mut s = Session::in_process();
//! s.add_file("hello.o").unwrap();
//! s.link().unwrap();
//! s.run_initializers().unwrap();
//! let status = s.run_main("main", &["hello".to_string()]).unwrap();
//! # let _ = status;
//! ```
//!
//! No unsafe code here: everything that touches executor memory goes through
//! [`kiln_target::Executor`].
#![forbid(unsafe_code)]

pub mod arch;
pub mod check;
pub mod debug;
pub mod elf;
mod error;
pub mod graph;
pub mod link;
pub mod memory;
mod search;
mod session;

pub use debug::DebugOptions;
pub use error::{Error, Location, Result};
pub use kiln_target::{Executor, ExecutorAddr, InProcessExecutor};
pub use link::{LinkStats, LinkedUnit};
pub use search::LibrarySearch;
pub use session::{Session, UnitId};

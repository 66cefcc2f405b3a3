//! The only place with `unsafe` code: small, checked wrappers over the system, and
//! (`owned`) the in-process executor's operations that its ownership table guards.
pub(crate) mod actions;
pub(crate) mod call;
pub(crate) mod dl;
pub(crate) mod eh;
pub(crate) mod gdb;
pub(crate) mod jitdump;
pub(crate) mod lazy;
pub(crate) mod mem;
pub(crate) mod owned;
pub(crate) mod perf;
pub mod process;
pub(crate) mod raw_memory;
pub(crate) mod slab;
pub(crate) mod static_tls;
pub(crate) mod sync;
pub mod tls;
pub(crate) mod valgrind;

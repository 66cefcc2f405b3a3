//! Kiln's C API: `libkiln.so`, `libkiln.a` and `include/kiln.h`, for VMs and runtimes written
//! in C and C++. The header is the documentation; `scripts/install-capi PREFIX` installs it.
//!
//! The shape follows wasmtime's C API: opaque handles, one `_delete` per object, every function
//! that can fail returns a `kiln_error_t *` (NULL on success), outputs through pointers.
//!
//! Two promises to C callers, kept here rather than left to them:
//! - **No Rust panic crosses into C.** Every entry point runs under [`ffi::guard`], which turns a
//!   panic into an error.
//! - **A NULL, deleted or foreign handle gives an error, never a crash.** Handles are not
//!   addresses: they are ids in a registry ([`handle`]), never reused, so a stale one is found
//!   missing instead of read. Units and scopes are plain numbers checked against the session.
//!
//! Unsafe code (reading C strings and arrays, writing through out-pointers, calling C
//! callbacks, the exported symbols themselves) lives in the one module [`ffi`]; everything else
//! is safe Rust over kiln's public API.
#![deny(unsafe_code)]

mod edge_kind;
mod error;
mod executor;
#[allow(unsafe_code)]
mod ffi;
mod graph;
mod handle;
mod jit;
mod session;

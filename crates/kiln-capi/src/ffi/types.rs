//! The C types and constants of kiln.h, as Rust sees them. The header check
//! (`tests/header.rs`) compares every `KILN_*` constant and callback type here with kiln.h.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

// ---- opaque handles (never dereferenced: see crate::handle) ----

#[repr(C)]
pub struct kiln_session_t {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct kiln_graph_t {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct kiln_error_t {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct kiln_generated_t {
    _opaque: [u8; 0],
}

// ---- plain values ----

pub type kiln_unit_t = u64;
pub type kiln_scope_t = u32;
pub type kiln_section_t = u32;
pub type kiln_block_t = u32;
pub type kiln_edge_kind_t = u32;
pub type kiln_prot_t = u32;
pub type kiln_visibility_t = u32;
pub type kiln_error_kind_t = u32;

/// A definition generator: see `kiln_session_add_generator` in kiln.h.
pub type kiln_generator_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        name: *const c_char,
        name_len: usize,
        scope: kiln_scope_t,
        answer: *mut kiln_generated_t,
    ) -> *mut kiln_error_t,
>;

// ---- error kinds ----

pub const KILN_ERROR_OTHER: kiln_error_kind_t = 0;
pub const KILN_ERROR_INVALID_ARGUMENT: kiln_error_kind_t = 1;
pub const KILN_ERROR_INVALID_HANDLE: kiln_error_kind_t = 2;
pub const KILN_ERROR_UNKNOWN_UNIT: kiln_error_kind_t = 3;
pub const KILN_ERROR_UNDEFINED: kiln_error_kind_t = 4;
pub const KILN_ERROR_UNRESOLVED: kiln_error_kind_t = 5;
pub const KILN_ERROR_DUPLICATE: kiln_error_kind_t = 6;
pub const KILN_ERROR_MALFORMED: kiln_error_kind_t = 7;
pub const KILN_ERROR_UNSUPPORTED: kiln_error_kind_t = 8;
pub const KILN_ERROR_FIXUP: kiln_error_kind_t = 9;
pub const KILN_ERROR_IO: kiln_error_kind_t = 10;
pub const KILN_ERROR_NOT_FOUND: kiln_error_kind_t = 11;
pub const KILN_ERROR_HAS_DEPENDENTS: kiln_error_kind_t = 12;
pub const KILN_ERROR_UNIT_IN_USE: kiln_error_kind_t = 13;
pub const KILN_ERROR_USAGE: kiln_error_kind_t = 14;
pub const KILN_ERROR_EXECUTOR: kiln_error_kind_t = 15;
pub const KILN_ERROR_CALLBACK: kiln_error_kind_t = 16;
pub const KILN_ERROR_INTERNAL: kiln_error_kind_t = 17;
pub const KILN_ERROR_PANIC: kiln_error_kind_t = 18;

// ---- memory protection of graph sections ----

pub const KILN_PROT_READ: kiln_prot_t = 1;
pub const KILN_PROT_READ_WRITE: kiln_prot_t = 2;
pub const KILN_PROT_READ_EXEC: kiln_prot_t = 3;

// ---- symbol visibility and flags ----

pub const KILN_VISIBILITY_DEFAULT: kiln_visibility_t = 0;
pub const KILN_VISIBILITY_HIDDEN: kiln_visibility_t = 1;
pub const KILN_VISIBILITY_LOCAL: kiln_visibility_t = 2;

pub const KILN_SYMBOL_CALLABLE: u32 = 1;
pub const KILN_SYMBOL_WEAK: u32 = 2;

// ---- debug sinks ----

pub const KILN_DEBUG_GDB: u32 = 1;
pub const KILN_DEBUG_PERF_MAP: u32 = 2;
pub const KILN_DEBUG_JITDUMP: u32 = 4;
pub const KILN_DEBUG_VALGRIND: u32 = 8;

// ---- scopes ----

pub const KILN_SCOPE_DEFAULT: kiln_scope_t = 0;

// ---- edge kinds (kiln::arch::EdgeKind; see crate::edge_kind) ----

pub const KILN_EDGE_KEEP_ALIVE: kiln_edge_kind_t = 0;
pub const KILN_EDGE_X86_64_POINTER64: kiln_edge_kind_t = 1;
pub const KILN_EDGE_X86_64_POINTER32: kiln_edge_kind_t = 2;
pub const KILN_EDGE_X86_64_POINTER32_SIGNED: kiln_edge_kind_t = 3;
pub const KILN_EDGE_X86_64_POINTER16: kiln_edge_kind_t = 4;
pub const KILN_EDGE_X86_64_POINTER8: kiln_edge_kind_t = 5;
pub const KILN_EDGE_X86_64_DELTA64: kiln_edge_kind_t = 6;
pub const KILN_EDGE_X86_64_DELTA32: kiln_edge_kind_t = 7;
pub const KILN_EDGE_X86_64_DELTA16: kiln_edge_kind_t = 8;
pub const KILN_EDGE_X86_64_DELTA8: kiln_edge_kind_t = 9;
pub const KILN_EDGE_X86_64_NEG_DELTA32: kiln_edge_kind_t = 10;
pub const KILN_EDGE_X86_64_BRANCH_PCREL32: kiln_edge_kind_t = 11;
pub const KILN_EDGE_X86_64_GOT_DELTA32: kiln_edge_kind_t = 12;
pub const KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE: kiln_edge_kind_t = 13;
pub const KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE_REX: kiln_edge_kind_t = 14;
pub const KILN_EDGE_X86_64_GOT_LOAD_RELAXED: kiln_edge_kind_t = 15;
pub const KILN_EDGE_X86_64_GOT_LOAD_RELAXED_REX: kiln_edge_kind_t = 16;
pub const KILN_EDGE_X86_64_GOT_DELTA64: kiln_edge_kind_t = 17;
pub const KILN_EDGE_X86_64_GOT_OFFSET64: kiln_edge_kind_t = 18;
pub const KILN_EDGE_X86_64_DELTA_FROM_GOT64: kiln_edge_kind_t = 19;
pub const KILN_EDGE_X86_64_GOT_BASE_DELTA32: kiln_edge_kind_t = 20;
pub const KILN_EDGE_X86_64_GOT_BASE_DELTA64: kiln_edge_kind_t = 21;
pub const KILN_EDGE_X86_64_PLT_OFFSET_FROM_GOT64: kiln_edge_kind_t = 22;
pub const KILN_EDGE_X86_64_SIZE32: kiln_edge_kind_t = 23;
pub const KILN_EDGE_X86_64_SIZE64: kiln_edge_kind_t = 24;
pub const KILN_EDGE_X86_64_TLS_GD_DELTA32: kiln_edge_kind_t = 25;
pub const KILN_EDGE_X86_64_TLS_LD_DELTA32: kiln_edge_kind_t = 26;
pub const KILN_EDGE_X86_64_DTP_OFF32: kiln_edge_kind_t = 27;
pub const KILN_EDGE_X86_64_DTP_OFF64: kiln_edge_kind_t = 28;
pub const KILN_EDGE_X86_64_TLS_MODULE64: kiln_edge_kind_t = 29;
pub const KILN_EDGE_X86_64_TP_OFF32: kiln_edge_kind_t = 30;
pub const KILN_EDGE_X86_64_TP_OFF64: kiln_edge_kind_t = 31;
pub const KILN_EDGE_X86_64_GOT_TP_OFF_DELTA32: kiln_edge_kind_t = 32;
pub const KILN_EDGE_X86_64_TLS_DESC_TO_LOCAL_EXEC: kiln_edge_kind_t = 33;
pub const KILN_EDGE_X86_64_TLS_DESC_CALL_TO_NOP: kiln_edge_kind_t = 34;

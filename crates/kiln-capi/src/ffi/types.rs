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
#[repr(C)]
pub struct kiln_jit_t {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct kiln_move_map_t {
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
pub type kiln_region_t = u32;
pub type kiln_site_kind_t = u32;
pub type kiln_verdict_t = u32;
pub type kiln_pin_reason_t = u32;

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

/// A lazy function's compile callback: see `kiln_jit_declare_lazy` in kiln.h.
pub type kiln_lazy_compile_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        jit: *mut kiln_jit_t,
        name: *const c_char,
        code_name: *const c_char,
        out_graph: *mut *mut kiln_graph_t,
    ) -> *mut kiln_error_t,
>;

/// The VM's handler for lazy functions that cannot be compiled: see
/// `kiln_jit_set_lazy_error_handler` in kiln.h.
pub type kiln_lazy_error_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        name: *const c_char,
        key: u64,
        message: *const c_char,
    ) -> u64,
>;

/// A moving GC's forwarding function: see `kiln_jit_update_heap_refs` in kiln.h.
pub type kiln_heap_forward_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, heap_ref: *const kiln_heap_ref_t) -> u64>;

/// The VM's verdict per unit at a compaction: see `kiln_jit_compact` in kiln.h.
pub type kiln_verdict_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, unit: kiln_unit_t) -> kiln_verdict_t>;

// ---- structures (the header check compares their fields with kiln.h's) ----

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kiln_zone_config_t {
    pub size: u64,
    pub fixed_size: u64,
    pub placement: u32,
    pub address: u64,
    pub reach: *const u64,
    pub reach_count: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_zone_info_t {
    pub base: u64,
    pub size: u64,
    pub fixed_code: u64,
    pub fixed_code_size: u64,
    pub method_code: u64,
    pub method_code_size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kiln_site_t {
    pub unit: kiln_unit_t,
    pub addr: u64,
    pub kind: kiln_site_kind_t,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kiln_heap_ref_t {
    pub unit: kiln_unit_t,
    pub addr: u64,
    pub width: u32,
    pub value: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kiln_edge_t {
    pub offset: u32,
    pub kind: kiln_edge_kind_t,
    pub target: *const c_char,
    pub addend: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kiln_write_t {
    pub addr: u64,
    pub bytes: *const u8,
    pub len: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kiln_ic_t {
    pub key: kiln_site_t,
    pub target: kiln_site_t,
    pub empty: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_ic_state_t {
    pub state: u32,
    pub key: u64,
    pub target: u64,
    pub since: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_pic_config_t {
    pub key_register: u32,
    pub key_width: u32,
    pub max_cases: u32,
    pub miss: u64,
    pub megamorphic: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_pic_case_t {
    pub key: u64,
    pub target: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_pic_state_t {
    pub megamorphic: bool,
    pub cases: usize,
    pub stub: kiln_unit_t,
    pub entry: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_redefined_t {
    pub new_unit: kiln_unit_t,
    pub old_unit: kiln_unit_t,
    pub since: u64,
    pub retargeted: usize,
    pub unmapped: usize,
    pub unreached: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kiln_pic_named_case_t {
    pub key: u64,
    pub target: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_range_t {
    pub unit: kiln_unit_t,
    pub start: u64,
    pub size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_compaction_t {
    pub dropped: usize,
    pub moved: usize,
    pub pinned: usize,
    pub used_before: u64,
    pub used_after: u64,
    pub largest_free_code: u64,
    pub nanoseconds: u64,
    pub times: kiln_compaction_times_t,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_compaction_times_t {
    pub verdicts_ns: u64,
    pub drop_ns: u64,
    pub layout_ns: u64,
    pub moves_ns: u64,
    pub finish_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_pinned_t {
    pub unit: kiln_unit_t,
    pub reason: kiln_pin_reason_t,
    pub user: kiln_unit_t,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_range_move_t {
    pub unit: kiln_unit_t,
    pub from: u64,
    pub to: u64,
    pub size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_reclaimed_t {
    pub freed: usize,
    pub kept: usize,
    pub ics_completed: usize,
    pub ic_errors: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kiln_lazy_status_t {
    pub state: u32,
    pub unit: kiln_unit_t,
    pub code: u64,
    pub redirected: usize,
}

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
pub const KILN_ERROR_STALE: kiln_error_kind_t = 19;

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

// ---- kiln-jit ----

pub const KILN_ZONE_ANYWHERE: u32 = 0;
pub const KILN_ZONE_EXACTLY: u32 = 1;
pub const KILN_ZONE_NEAR: u32 = 2;
pub const KILN_ZONE_WITHIN_REACH: u32 = 3;

pub const KILN_REGION_FIXED: kiln_region_t = 0;
pub const KILN_REGION_METHOD: kiln_region_t = 1;

pub const KILN_SITE_REL32: kiln_site_kind_t = 0;
pub const KILN_SITE_ABS64: kiln_site_kind_t = 1;
pub const KILN_SITE_IMM32: kiln_site_kind_t = 2;

pub const KILN_IC_EMPTY: u32 = 0;
pub const KILN_IC_SET: u32 = 1;
pub const KILN_IC_PENDING: u32 = 2;

pub const KILN_PIC_KEY_RAX: u32 = 0;
pub const KILN_PIC_KEY_RCX: u32 = 1;
pub const KILN_PIC_KEY_RDX: u32 = 2;
pub const KILN_PIC_KEY_RBX: u32 = 3;
pub const KILN_PIC_KEY_RSI: u32 = 6;
pub const KILN_PIC_KEY_RDI: u32 = 7;
pub const KILN_PIC_KEY_R8: u32 = 8;
pub const KILN_PIC_KEY_R9: u32 = 9;
pub const KILN_PIC_KEY_R10: u32 = 10;

pub const KILN_PIC_KEY_32: u32 = 32;
pub const KILN_PIC_KEY_64: u32 = 64;

pub const KILN_LAZY_NOT_COMPILED: u32 = 0;
pub const KILN_LAZY_COMPILED: u32 = 1;
pub const KILN_LAZY_FAILED: u32 = 2;

pub const KILN_VERDICT_KEEP: kiln_verdict_t = 0;
pub const KILN_VERDICT_DROP: kiln_verdict_t = 1;
pub const KILN_VERDICT_PIN: kiln_verdict_t = 2;

pub const KILN_PIN_VERDICT: kiln_pin_reason_t = 0;
pub const KILN_PIN_USED_WITHOUT_RELINK: kiln_pin_reason_t = 1;
pub const KILN_PIN_CANNOT_MOVE: kiln_pin_reason_t = 2;
pub const KILN_PIN_LINKING: kiln_pin_reason_t = 3;
pub const KILN_PIN_RETIRED: kiln_pin_reason_t = 4;

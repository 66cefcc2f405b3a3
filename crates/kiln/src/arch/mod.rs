//! Per-architecture code: edge kinds, relocation mapping, fixups, stubs, relaxation.
pub mod x86_64;

//! x86-64 (System V psABI, ELF).
//!
//! Code is position independent in practice: gcc and clang default to PIE, which reaches
//! everything with 32-bit PC-relative displacements (`R_X86_64_PC32`, `PLT32`) and reaches
//! symbols that may live in another module through the GOT (`GOTPCREL`, and its relaxable forms
//! `GOTPCRELX`/`REX_GOTPCRELX`). PIE code also assumes that data it references directly is
//! within ±2 GiB — in a normal executable the linker makes *copy relocations* for libc's
//! `stdout`; a JIT cannot, so kiln places code within ±2 GiB of the host libraries instead.
//!
//! Calls: a `call` to a function that is out of range goes through a stub (`jmp *GOT(%rip)`);
//! in range, it is direct. GOT loads whose target is in range are relaxed as GNU ld and lld
//! relax them: `mov` becomes `lea`, `call *GOT(%rip)` becomes `addr32 call`, and
//! `jmp *GOT(%rip)` becomes `jmp` followed by a one-byte `nop` (the relaxable relocation types
//! promise the instruction shapes that make this legal).
//!
//! Thread-local storage: the general- and local-dynamic models call `__tls_get_addr` with a
//! `{module, offset}` pair in the GOT; kiln gives each unit a module value of its own and its
//! runtime answers for it. Local-exec (`TPOFF32`) and initial-exec (`GOTTPOFF`) address
//! variables at a fixed offset from the thread pointer `%fs`; for units that use them, the
//! runtime reserves the unit's TLS block in the static TLS area of every thread (through glibc,
//! see kiln-target's `static_tls`), and the offset is known before fixups. TLS descriptors
//! (`-mtls-dialect=gnu2`) are then relaxed to local-exec: `lea x@tlsdesc(%rip), %rax` becomes
//! `mov $x@tpoff, %rax` and `call *x@tlscall(%rax)` a two-byte nop, as a static linker does.
//!
//! Notation in the edge kinds (psABI): S symbol address, A addend, P address of the fixup,
//! GOT address of the GOT, G address of the symbol's GOT entry, L address of the symbol's call
//! target (the symbol, or its stub), Z symbol size.
//!
//! Files: [`relocs`] is the relocation table and the fixups, `tables` builds GOT entries, stubs
//! and TLS pairs, `templates` holds the code the linker writes.

pub mod relocs;
mod tables;
mod templates;

use super::{
    Arch, EdgeInfo, EhFrameKinds, FixupError, FixupValues, FramePointerUnwind, TableContext,
    Tables, Templates,
};
use crate::graph::LinkGraph;

pub use relocs::EdgeKind;

/// The x86-64 architecture.
#[derive(Debug)]
pub struct X86_64;

/// How far kiln lets a 32-bit PC-relative reference reach: 2 GiB less 1 MiB, the margin leaving
/// room for addends (a `call` 4 bytes before its target's start, an access at an offset into a
/// structure).
pub const PC_RELATIVE_32_REACH: u64 = (1 << 31) - (1 << 20);

impl Arch for X86_64 {
    fn name(&self) -> &'static str {
        "x86-64"
    }

    fn elf_machine(&self) -> u16 {
        object::elf::EM_X86_64.0
    }

    fn pc_relative_32_reach(&self) -> u64 {
        PC_RELATIVE_32_REACH
    }

    fn edge_for_relocation(&self, r_type: u32) -> Result<Option<super::EdgeKind>, String> {
        relocs::edge_for_relocation(r_type).map(|k| k.map(super::EdgeKind::X86_64))
    }

    fn relocation_name(&self, r_type: u32) -> String {
        relocs::relocation_name(r_type)
    }

    fn edge_info(&self, kind: super::EdgeKind) -> Option<&'static EdgeInfo> {
        match kind {
            super::EdgeKind::KeepAlive => Some(&EdgeInfo::KEEP_ALIVE),
            super::EdgeKind::X86_64(k) => Some(&relocs::row(k).info),
        }
    }

    fn apply_fixup(
        &self,
        kind: super::EdgeKind,
        buf: &mut [u8],
        off: usize,
        v: FixupValues,
    ) -> Result<(), FixupError> {
        match kind {
            super::EdgeKind::KeepAlive => Ok(()),
            super::EdgeKind::X86_64(k) => relocs::apply(k, buf, off, v),
        }
    }

    fn reapply_fixup(
        &self,
        kind: super::EdgeKind,
        buf: &mut [u8],
        off: usize,
        v: FixupValues,
    ) -> Result<(), FixupError> {
        match kind {
            super::EdgeKind::KeepAlive => Ok(()),
            super::EdgeKind::X86_64(k) => relocs::reapply(k, buf, off, v),
        }
    }

    fn build_tables(&self, g: &mut LinkGraph, cx: &TableContext) -> Tables {
        tables::build(g, cx)
    }

    fn templates(&self) -> &'static Templates {
        &templates::TEMPLATES
    }

    fn eh_frame_kinds(&self) -> EhFrameKinds {
        EhFrameKinds {
            cie_pointer: EdgeKind::NegDelta32.into(),
            pc_relative_32: EdgeKind::Delta32.into(),
        }
    }

    fn frame_pointer_unwind(&self) -> &'static FramePointerUnwind {
        &templates::FRAME_POINTER_UNWIND
    }
}

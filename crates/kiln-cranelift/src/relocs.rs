//! Cranelift's relocations as kiln edge kinds: one table for x86-64.
//!
//! | Cranelift `Reloc` | emitted for | kiln `EdgeKind` (as an ELF relocation) |
//! |---|---|---|
//! | `Abs8` | `movabs` of a far symbol (non-PIC), pointers in data | `Pointer64` (`R_X86_64_64`) |
//! | `Abs4` | 32-bit pointers in data | `Pointer32` (`R_X86_64_32`) |
//! | `X86CallPCRel4` on `call`/`jmp rel32` | calls and tail calls to colocated functions | `BranchPCRel32` (`R_X86_64_PLT32`): a stub if the target is out of reach |
//! | `X86CallPCRel4` elsewhere | `lea sym(%rip)` of a colocated function or data object | `Delta32` (`R_X86_64_PC32`): the address itself, never a stub |
//! | `X86CallPLTRel4` | the `__tls_get_addr` call of the general-dynamic TLS sequence | `BranchPCRel32` (`R_X86_64_PLT32`) |
//! | `X86PCRel4` | PC-relative data references | `Delta32` (`R_X86_64_PC32`) |
//! | `X86GOTPCRel4` on `movq sym@GOTPCREL(%rip), %reg` | address of a non-colocated symbol (PIC) | `GotDelta32Relaxable { rex: true }` (`R_X86_64_REX_GOTPCRELX`): kiln turns the load into a `lea` when the target is in reach |
//! | `X86GOTPCRel4` elsewhere | — | `GotDelta32` (`R_X86_64_GOTPCREL`) |
//! | `ElfX86_64TlsGd` | `data16 lea sym@tlsgd(%rip), %rdi` | `TlsGdDelta32` (`R_X86_64_TLSGD`) |
//!
//! Everything else (`X86SecRel` and the other COFF, Mach-O, AArch64, RISC-V, s390x and Pulley
//! kinds) belongs to other targets and is refused with an error. Cranelift's own JIT resolves
//! the first rows only; it panics on the GOT and PLT kinds, which PIC code needs.

use cranelift_codegen::binemit::Reloc;
use kiln::arch::x86_64::{relocs::row, EdgeKind};

/// The edge kind for a relocation at `offset` in `bytes` (code or data), or why there is none.
pub(crate) fn edge_kind(reloc: Reloc, bytes: &[u8], offset: u32) -> Result<EdgeKind, &'static str> {
    let before = |n: usize| {
        (offset as usize)
            .checked_sub(n)
            .and_then(|i| bytes.get(i).copied())
    };
    Ok(match reloc {
        Reloc::Abs8 => EdgeKind::Pointer64,
        Reloc::Abs4 => EdgeKind::Pointer32,
        Reloc::X86PCRel4 => EdgeKind::Delta32,
        // `call rel32` (E8) and `jmp rel32` (E9) may go through a stub; a `lea` must get the
        // address itself (its ModRM byte for %rip-relative operands is never E8/E9).
        Reloc::X86CallPCRel4 if matches!(before(1), Some(0xe8 | 0xe9)) => EdgeKind::BranchPCRel32,
        Reloc::X86CallPCRel4 => EdgeKind::Delta32,
        Reloc::X86CallPLTRel4 => EdgeKind::BranchPCRel32,
        // `movq disp32(%rip), %reg`: REX.W, 8B, ModRM with mod 00 and r/m 101.
        Reloc::X86GOTPCRel4
            if before(3).is_some_and(|rex| rex & 0xf8 == 0x48)
                && before(2) == Some(0x8b)
                && before(1).is_some_and(|modrm| modrm & 0xc7 == 0x05) =>
        {
            EdgeKind::GotDelta32Relaxable { rex: true }
        }
        Reloc::X86GOTPCRel4 => EdgeKind::GotDelta32,
        Reloc::ElfX86_64TlsGd => EdgeKind::TlsGdDelta32,
        Reloc::X86SecRel => return Err("a COFF section-relative relocation (Windows TLS)"),
        Reloc::MachOX86_64Tlv => return Err("a Mach-O thread-local variable relocation"),
        _ => return Err("not an x86-64 ELF relocation"),
    })
}

/// The width in bytes of the field an edge of `kind` writes.
pub(crate) fn width(kind: EdgeKind) -> u8 {
    row(kind).info.width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_branch_and_leas_take_the_address() {
        let call = [0xe8, 0, 0, 0, 0];
        assert_eq!(
            edge_kind(Reloc::X86CallPCRel4, &call, 1),
            Ok(EdgeKind::BranchPCRel32)
        );
        let lea = [0x48, 0x8d, 0x05, 0, 0, 0, 0];
        assert_eq!(
            edge_kind(Reloc::X86CallPCRel4, &lea, 3),
            Ok(EdgeKind::Delta32)
        );
        // A relocation at offset 0 has no instruction before it: an address.
        assert_eq!(
            edge_kind(Reloc::X86CallPCRel4, &call, 0),
            Ok(EdgeKind::Delta32)
        );
    }

    #[test]
    fn got_loads_are_relaxable_only_when_they_are_movq() {
        let movq = [0x4c, 0x8b, 0x1d, 0, 0, 0, 0]; // movq x@GOTPCREL(%rip), %r11
        assert_eq!(
            edge_kind(Reloc::X86GOTPCRel4, &movq, 3),
            Ok(EdgeKind::GotDelta32Relaxable { rex: true })
        );
        let other = [0x48, 0x03, 0x05, 0, 0, 0, 0]; // addq x@GOTPCREL(%rip), %rax
        assert_eq!(
            edge_kind(Reloc::X86GOTPCRel4, &other, 3),
            Ok(EdgeKind::GotDelta32)
        );
    }

    #[test]
    fn every_mapped_kind_writes_a_field() {
        for k in [
            EdgeKind::Pointer64,
            EdgeKind::Pointer32,
            EdgeKind::Delta32,
            EdgeKind::BranchPCRel32,
            EdgeKind::GotDelta32,
            EdgeKind::GotDelta32Relaxable { rex: true },
            EdgeKind::TlsGdDelta32,
        ] {
            let expected = match k {
                EdgeKind::Pointer64 => 8,
                _ => 4,
            };
            assert_eq!(width(k), expected, "{k:?}");
        }
    }

    #[test]
    fn foreign_relocations_are_refused() {
        for r in [
            Reloc::X86SecRel,
            Reloc::Arm64Call,
            Reloc::MachOX86_64Tlv,
            Reloc::RiscvCallPlt,
        ] {
            assert!(edge_kind(r, &[0; 8], 4).is_err(), "{r:?}");
        }
    }
}

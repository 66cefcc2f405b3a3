//! Code and unwind records the linker writes itself.

use super::EdgeKind::{BranchPCRel32, Delta32};
use crate::arch::{
    EdgeKind, FramePointerUnwind, Template, TemplateEdge, TemplateTarget, Templates,
};

/// A stub: `jmp *GOT_ENTRY(%rip)`, padded to 8 bytes. The displacement at offset 2 is a
/// [`Delta32`] to the GOT entry with addend -4.
pub const STUB: [u8; 8] = [0xff, 0x25, 0, 0, 0, 0, 0xcc, 0xcc];
pub const STUB_FIXUP_OFFSET: u32 = 2;

const fn edge(offset: u32, kind: super::EdgeKind, target: TemplateTarget) -> TemplateEdge {
    TemplateEdge {
        offset,
        kind: EdgeKind::X86_64(kind),
        target,
        addend: -4,
    }
}

pub static TEMPLATES: Templates = Templates {
    init_prologue: &[0x48, 0x83, 0xec, 0x08], // sub $8, %rsp (realigns the stack as crti.o does)
    init_epilogue: &[0x48, 0x83, 0xc4, 0x08, 0xc3], // add $8, %rsp; ret
    // As glibc's libc_nonshared.a defines it, for one unit:
    // `lea __dso_handle(%rip), %rdx; xor %esi, %esi; jmp __cxa_atexit`.
    atexit: Template {
        code: &[
            0x48, 0x8d, 0x15, 0, 0, 0, 0, // lea __dso_handle(%rip), %rdx
            0x31, 0xf6, // xor %esi, %esi
            0xe9, 0, 0, 0, 0, // jmp callee
        ],
        align: 16,
        edges: &[
            edge(3, Delta32, TemplateTarget::DsoHandle),
            edge(10, BranchPCRel32, TemplateTarget::Callee),
        ],
    },
    // `lea __dso_handle(%rip), %rcx; jmp __register_atfork`.
    atfork: Template {
        code: &[
            0x48, 0x8d, 0x0d, 0, 0, 0, 0, // lea __dso_handle(%rip), %rcx
            0xe9, 0, 0, 0, 0, // jmp callee
        ],
        align: 16,
        edges: &[
            edge(3, Delta32, TemplateTarget::DsoHandle),
            edge(8, BranchPCRel32, TemplateTarget::Callee),
        ],
    },
    jump: Template {
        code: &[0xe9, 0, 0, 0, 0], // jmp callee
        align: 16,
        edges: &[edge(1, BranchPCRel32, TemplateTarget::Callee)],
    },
    ret: &[0xc3],
    stub_size: STUB.len() as u64,
};

/// x86-64 CIE: version 1, augmentation "zR", code alignment 1, data alignment -8, return address
/// column 16 (%rip), FDE pointers pc-relative sdata4; CFA = %rsp + 8, return address at CFA - 8.
const CIE: [u8; 24] = [
    20, 0, 0, 0, // length
    0, 0, 0, 0, // CIE id
    1, b'z', b'R', 0, // version, augmentation
    1, 0x78, 16, // code align 1, data align -8 (sleb), RA column 16
    1, 0x1b, // augmentation data: FDE encoding pcrel|sdata4
    0x0c, 7, 8, // DW_CFA_def_cfa rsp, 8
    0x90, 1, // DW_CFA_offset rip, 1 * -8
    0, 0, // padding (DW_CFA_nop)
];

/// FDE for a function that starts with `push %rbp` (1 byte) then `mov %rsp, %rbp` (3 bytes) and
/// keeps %rbp as its frame pointer until it returns. The CIE pointer (offset 4) and pc_begin
/// (offset 8) are edges; pc_range (offset 12) is the function's size.
fn frame_pointer_fde(range: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&28u32.to_le_bytes()); // length
    v.extend_from_slice(&[0; 4]); // CIE pointer
    v.extend_from_slice(&[0; 4]); // pc_begin
    v.extend_from_slice(&range.to_le_bytes()); // pc_range
    v.push(0); // augmentation data length
    v.extend_from_slice(&[
        0x41, // DW_CFA_advance_loc 1 (after push %rbp)
        0x0e, 16, // DW_CFA_def_cfa_offset 16
        0x86, 2,    // DW_CFA_offset rbp, 2 * -8
        0x43, // DW_CFA_advance_loc 3 (after mov %rsp, %rbp)
        0x0d, 6, // DW_CFA_def_cfa_register rbp
    ]);
    v.resize(32, 0); // DW_CFA_nop padding
    v
}

pub static FRAME_POINTER_UNWIND: FramePointerUnwind = FramePointerUnwind {
    cie: &CIE,
    min_function_size: 4,
    fde: frame_pointer_fde,
    cie_pointer_offset: 4,
    pc_begin_offset: 8,
};

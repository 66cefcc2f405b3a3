//! The x86-64 relocation table and fixups.
//!
//! [`ROWS`] has one row per edge kind: the ELF relocation type it comes from (if any), its
//! width, range, formula, what its S is, how it constrains placement, and its names. Everything
//! else — mapping relocations, applying fixups, naming kinds in errors and statistics — reads
//! the table; only instruction rewrites (relaxations) are code of their own, in [`apply`].

use crate::arch::{
    write_value, EdgeInfo, FixupError, FixupValues, Formula, Range, Reach, TargetValue,
};
use object::elf;

/// The x86-64 edge kinds. Each documents its formula (psABI notation, see the module above);
/// [`ROWS`] gives width and range.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeKind {
    /// `S + A`, 64 bits (R_X86_64_64).
    Pointer64,
    /// `S + A`, unsigned 32 bits (R_X86_64_32).
    Pointer32,
    /// `S + A`, signed 32 bits (R_X86_64_32S).
    Pointer32Signed,
    /// `S + A`, 16 bits (R_X86_64_16), signed or unsigned.
    Pointer16,
    /// `S + A`, 8 bits (R_X86_64_8), signed or unsigned.
    Pointer8,
    /// `S + A - P`, 64 bits (R_X86_64_PC64).
    Delta64,
    /// `S + A - P`, signed 32 bits (R_X86_64_PC32).
    Delta32,
    /// `S + A - P`, signed 16 bits (R_X86_64_PC16).
    Delta16,
    /// `S + A - P`, signed 8 bits (R_X86_64_PC8).
    Delta8,
    /// `P - S + A`, signed 32 bits: an FDE's pointer back to its CIE.
    NegDelta32,
    /// `L + A - P`, signed 32 bits (R_X86_64_PLT32): direct when S is in range, else via a stub.
    BranchPCRel32,
    /// `G + A - P`, signed 32 bits (R_X86_64_GOTPCREL): always through the GOT.
    GotDelta32,
    /// `G + A - P`, signed 32 bits (R_X86_64_GOTPCRELX, REX_GOTPCRELX): relaxed to
    /// `S + A - P` with the instruction rewritten when S is in range.
    GotDelta32Relaxable { rex: bool },
    /// A relaxed [`EdgeKind::GotDelta32Relaxable`]: `S + A - P`, and the instruction rewritten.
    GotLoadRelaxed { rex: bool },
    /// `G + A - P`, 64 bits (R_X86_64_GOTPCREL64).
    GotDelta64,
    /// `G - GOT + A`, 64 bits (R_X86_64_GOT64).
    GotOffset64,
    /// `S + A - GOT`, 64 bits (R_X86_64_GOTOFF64).
    DeltaFromGot64,
    /// `GOT + A - P`, signed 32 bits (R_X86_64_GOTPC32).
    GotBaseDelta32,
    /// `GOT + A - P`, 64 bits (R_X86_64_GOTPC64).
    GotBaseDelta64,
    /// `L - GOT + A`, 64 bits (R_X86_64_PLTOFF64).
    PltOffsetFromGot64,
    /// `Z + A`, unsigned 32 bits (R_X86_64_SIZE32).
    Size32,
    /// `Z + A`, 64 bits (R_X86_64_SIZE64).
    Size64,
    /// `GD(S) + A - P`, signed 32 bits, GD(S) the `{module, offset}` pair of S (R_X86_64_TLSGD).
    TlsGdDelta32,
    /// `LD + A - P`, signed 32 bits, LD the unit's `{module, 0}` pair (R_X86_64_TLSLD).
    TlsLdDelta32,
    /// `S - TLS + A`, 32 bits: offset in the unit's TLS block (R_X86_64_DTPOFF32).
    DtpOff32,
    /// `S - TLS + A`, 64 bits (R_X86_64_DTPOFF64).
    DtpOff64,
    /// The unit's TLS module value, 64 bits (first word of a `{module, offset}` pair).
    TlsModule64,
    /// `S - TP + A`, signed 32 bits: offset from the thread pointer (R_X86_64_TPOFF32).
    TpOff32,
    /// `S - TP + A`, 64 bits (R_X86_64_TPOFF64; also the content of initial-exec GOT entries).
    TpOff64,
    /// `G + A - P`, signed 32 bits, G a GOT entry holding `S - TP` (R_X86_64_GOTTPOFF).
    GotTpOffDelta32,
    /// R_X86_64_GOTPC32_TLSDESC relaxed to local-exec: the `lea` becomes `mov $(S - TP), %rax`.
    TlsDescToLocalExec,
    /// R_X86_64_TLSDESC_CALL relaxed to local-exec: `call *(%rax)` becomes a two-byte nop.
    TlsDescCallToNop,
}

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    pub kind: EdgeKind,
    /// The ELF relocation type that becomes this kind.
    pub r_type: Option<elf::RelocationType>,
    pub info: EdgeInfo,
}

// One argument per column of the table, so that each row reads as one line.
#[allow(clippy::too_many_arguments)]
const fn entry(
    kind: EdgeKind,
    r_type: Option<elf::RelocationType>,
    name: &'static str,
    relocation: &'static str,
    (width, range): (u8, Range),
    formula: Formula,
    value: TargetValue,
    reach: Reach,
) -> Row {
    Row {
        kind,
        r_type,
        info: EdgeInfo {
            name,
            relocation,
            width,
            range,
            formula,
            value,
            reach,
            // The kinds `apply` does more for than `write_value`.
            rewrites: matches!(
                kind,
                GotLoadRelaxed { .. } | TlsDescToLocalExec | TlsDescCallToNop
            ),
            table_bytes: super::tables::bytes_upper_bound(kind) as u8,
        },
    }
}

const S64: (u8, Range) = (8, Range::Wrapping);
const I32: (u8, Range) = (4, Range::Signed);

use EdgeKind::*;
use Formula::{Absolute as Abs, PcRelative as Pc};
use Reach::{PcRelative32 as Near, Unconstrained as Free};
use TargetValue::Address as Addr;

/// The table: one row per edge kind, in the order of [`EdgeKind::index`].
#[rustfmt::skip]
pub static ROWS: [Row; 33] = [
    entry(Pointer64, Some(elf::R_X86_64_64), "Pointer64", "R_X86_64_64", S64, Abs, Addr, Free),
    entry(Pointer32, Some(elf::R_X86_64_32), "Pointer32", "R_X86_64_32", (4, Range::Unsigned), Abs, Addr, Reach::Absolute32),
    entry(Pointer32Signed, Some(elf::R_X86_64_32S), "Pointer32Signed", "R_X86_64_32S", I32, Abs, Addr, Reach::Absolute32),
    entry(Pointer16, Some(elf::R_X86_64_16), "Pointer16", "R_X86_64_16", (2, Range::SignedOrUnsigned), Abs, Addr, Free),
    entry(Pointer8, Some(elf::R_X86_64_8), "Pointer8", "R_X86_64_8", (1, Range::SignedOrUnsigned), Abs, Addr, Free),
    entry(Delta64, Some(elf::R_X86_64_PC64), "Delta64", "R_X86_64_PC64", S64, Pc, Addr, Free),
    entry(Delta32, Some(elf::R_X86_64_PC32), "Delta32", "R_X86_64_PC32 (or a GOT/TLS reference through its entry)", I32, Pc, Addr, Near),
    entry(Delta16, Some(elf::R_X86_64_PC16), "Delta16", "R_X86_64_PC16", (2, Range::Signed), Pc, Addr, Near),
    entry(Delta8, Some(elf::R_X86_64_PC8), "Delta8", "R_X86_64_PC8", (1, Range::Signed), Pc, Addr, Near),
    entry(NegDelta32, None, "NegDelta32", "(eh_frame CIE pointer)", I32, Formula::NegPcRelative, Addr, Free),
    entry(BranchPCRel32, Some(elf::R_X86_64_PLT32), "BranchPCRel32", "R_X86_64_PLT32", I32, Pc, Addr, Reach::PcRelative32WithFallback),
    entry(GotDelta32, Some(elf::R_X86_64_GOTPCREL), "GotDelta32", "R_X86_64_GOTPCREL", I32, Pc, Addr, Free),
    entry(GotDelta32Relaxable { rex: false }, Some(elf::R_X86_64_GOTPCRELX), "GotDelta32Relaxable", "R_X86_64_GOTPCRELX", I32, Pc, Addr, Reach::PcRelative32WithFallback),
    entry(GotDelta32Relaxable { rex: true }, Some(elf::R_X86_64_REX_GOTPCRELX), "GotDelta32Relaxable(rex)", "R_X86_64_REX_GOTPCRELX", I32, Pc, Addr, Reach::PcRelative32WithFallback),
    entry(GotLoadRelaxed { rex: false }, None, "GotLoadRelaxed", "R_X86_64_GOTPCRELX", I32, Pc, Addr, Free),
    entry(GotLoadRelaxed { rex: true }, None, "GotLoadRelaxed(rex)", "R_X86_64_REX_GOTPCRELX", I32, Pc, Addr, Free),
    entry(GotDelta64, Some(elf::R_X86_64_GOTPCREL64), "GotDelta64", "R_X86_64_GOTPCREL64", S64, Pc, Addr, Free),
    entry(GotOffset64, Some(elf::R_X86_64_GOT64), "GotOffset64", "R_X86_64_GOT64", S64, Formula::GotRelative, Addr, Free),
    entry(DeltaFromGot64, Some(elf::R_X86_64_GOTOFF64), "DeltaFromGot64", "R_X86_64_GOTOFF64", S64, Formula::GotRelative, Addr, Free),
    entry(GotBaseDelta32, Some(elf::R_X86_64_GOTPC32), "GotBaseDelta32", "R_X86_64_GOTPC32", I32, Formula::GotBasePcRelative, TargetValue::None, Free),
    entry(GotBaseDelta64, Some(elf::R_X86_64_GOTPC64), "GotBaseDelta64", "R_X86_64_GOTPC64", S64, Formula::GotBasePcRelative, TargetValue::None, Free),
    entry(PltOffsetFromGot64, Some(elf::R_X86_64_PLTOFF64), "PltOffsetFromGot64", "R_X86_64_PLTOFF64", S64, Formula::GotRelative, Addr, Free),
    entry(Size32, Some(elf::R_X86_64_SIZE32), "Size32", "R_X86_64_SIZE32", (4, Range::Unsigned), Abs, TargetValue::Size, Free),
    entry(Size64, Some(elf::R_X86_64_SIZE64), "Size64", "R_X86_64_SIZE64", S64, Abs, TargetValue::Size, Free),
    entry(TlsGdDelta32, Some(elf::R_X86_64_TLSGD), "TlsGdDelta32", "R_X86_64_TLSGD", I32, Pc, Addr, Free),
    entry(TlsLdDelta32, Some(elf::R_X86_64_TLSLD), "TlsLdDelta32", "R_X86_64_TLSLD", I32, Pc, Addr, Free),
    entry(DtpOff32, Some(elf::R_X86_64_DTPOFF32), "DtpOff32", "R_X86_64_DTPOFF32", (4, Range::SignedOrUnsigned), Abs, TargetValue::TlsBlockOffset, Free),
    entry(DtpOff64, Some(elf::R_X86_64_DTPOFF64), "DtpOff64", "R_X86_64_DTPOFF64", S64, Abs, TargetValue::TlsBlockOffset, Free),
    entry(TlsModule64, None, "TlsModule64", "(TLS module word)", S64, Abs, TargetValue::TlsModule, Free),
    entry(TpOff32, Some(elf::R_X86_64_TPOFF32), "TpOff32", "R_X86_64_TPOFF32", I32, Abs, TargetValue::ThreadPointerOffset, Free),
    entry(TpOff64, Some(elf::R_X86_64_TPOFF64), "TpOff64", "R_X86_64_TPOFF64", S64, Abs, TargetValue::ThreadPointerOffset, Free),
    entry(GotTpOffDelta32, Some(elf::R_X86_64_GOTTPOFF), "GotTpOffDelta32", "R_X86_64_GOTTPOFF", I32, Pc, Addr, Free),
    // The value is S alone: the rewritten `mov $imm32` has no PC-relative addend.
    entry(TlsDescToLocalExec, Some(elf::R_X86_64_GOTPC32_TLSDESC), "TlsDescToLocalExec", "R_X86_64_GOTPC32_TLSDESC", I32, Abs, TargetValue::ThreadPointerOffset, Free),
];

/// A row for the relocation that has no kind of its own: `R_X86_64_TLSDESC_CALL` writes the
/// two bytes of a nop, no value.
static TLSDESC_CALL: Row = entry(
    TlsDescCallToNop,
    Some(elf::R_X86_64_TLSDESC_CALL),
    "TlsDescCallToNop",
    "R_X86_64_TLSDESC_CALL",
    (2, Range::Wrapping),
    Formula::None,
    TargetValue::None,
    Free,
);

/// Relocation types that exist but have no place in a relocatable object kiln links, with why.
static REFUSED: &[(elf::RelocationType, &str, &str)] = &[
    (
        elf::R_X86_64_TLSDESC,
        "R_X86_64_TLSDESC",
        "a TLS descriptor in data (only the code sequence of -mtls-dialect=gnu2 is supported)",
    ),
    (
        elf::R_X86_64_GOT32,
        "R_X86_64_GOT32",
        "a 32-bit GOT offset (i386-style; not emitted for x86-64)",
    ),
    (
        elf::R_X86_64_COPY,
        "R_X86_64_COPY",
        "a dynamic relocation (it belongs to linked executables)",
    ),
    (
        elf::R_X86_64_GLOB_DAT,
        "R_X86_64_GLOB_DAT",
        "a dynamic relocation (it belongs to linked executables)",
    ),
    (
        elf::R_X86_64_JUMP_SLOT,
        "R_X86_64_JUMP_SLOT",
        "a dynamic relocation (it belongs to linked executables)",
    ),
    (
        elf::R_X86_64_RELATIVE,
        "R_X86_64_RELATIVE",
        "a dynamic relocation (it belongs to linked executables)",
    ),
    (
        elf::R_X86_64_IRELATIVE,
        "R_X86_64_IRELATIVE",
        "a dynamic relocation (it belongs to linked executables)",
    ),
    (
        elf::R_X86_64_DTPMOD64,
        "R_X86_64_DTPMOD64",
        "a dynamic relocation (it belongs to linked executables)",
    ),
    (
        elf::R_X86_64_GOTPLT64,
        "R_X86_64_GOTPLT64",
        "an obsolete large-model relocation",
    ),
];

impl EdgeKind {
    /// The position of the kind's row in [`ROWS`] (past the end: [`TlsDescCallToNop`]).
    pub const fn index(self) -> usize {
        match self {
            Pointer64 => 0,
            Pointer32 => 1,
            Pointer32Signed => 2,
            Pointer16 => 3,
            Pointer8 => 4,
            Delta64 => 5,
            Delta32 => 6,
            Delta16 => 7,
            Delta8 => 8,
            NegDelta32 => 9,
            BranchPCRel32 => 10,
            GotDelta32 => 11,
            GotDelta32Relaxable { rex: false } => 12,
            GotDelta32Relaxable { rex: true } => 13,
            GotLoadRelaxed { rex: false } => 14,
            GotLoadRelaxed { rex: true } => 15,
            GotDelta64 => 16,
            GotOffset64 => 17,
            DeltaFromGot64 => 18,
            GotBaseDelta32 => 19,
            GotBaseDelta64 => 20,
            PltOffsetFromGot64 => 21,
            Size32 => 22,
            Size64 => 23,
            TlsGdDelta32 => 24,
            TlsLdDelta32 => 25,
            DtpOff32 => 26,
            DtpOff64 => 27,
            TlsModule64 => 28,
            TpOff32 => 29,
            TpOff64 => 30,
            GotTpOffDelta32 => 31,
            TlsDescToLocalExec => 32,
            TlsDescCallToNop => 33,
        }
    }

    /// This kind's row of the table.
    pub fn info(self) -> &'static EdgeInfo {
        &row(self).info
    }
}

/// The row of `kind`.
#[inline]
pub fn row(kind: EdgeKind) -> &'static Row {
    ROWS.get(kind.index()).unwrap_or(&TLSDESC_CALL)
}

/// Relocation type → row, for every type below this bound (x86-64's types are small numbers).
const TYPES: usize = 48;

/// [`ROWS`] indexed by relocation type (`u8::MAX`: no row), built at compile time from the table.
static ROW_OF_TYPE: [u8; TYPES] = {
    let mut by_type = [u8::MAX; TYPES];
    let mut i = 0;
    while i < ROWS.len() {
        if let Some(t) = ROWS[i].r_type {
            by_type[t.0 as usize] = i as u8;
        }
        i += 1;
    }
    by_type
};

/// The edge kind of an ELF relocation type (`Ok(None)` for `R_X86_64_NONE`).
pub fn edge_for_relocation(r_type: u32) -> Result<Option<EdgeKind>, String> {
    if r_type == elf::R_X86_64_NONE.0 {
        return Ok(None);
    }
    if r_type == elf::R_X86_64_TLSDESC_CALL.0 {
        return Ok(Some(TlsDescCallToNop));
    }
    if let Some(&i) = ROW_OF_TYPE.get(r_type as usize) {
        if let Some(r) = ROWS.get(usize::from(i)) {
            return Ok(Some(r.kind));
        }
    }
    match REFUSED.iter().find(|(t, _, _)| t.0 == r_type) {
        Some((_, name, why)) => Err(format!("{name}: {why}")),
        None => Err(format!(
            "unknown relocation type {}",
            relocation_name(r_type)
        )),
    }
}

/// The psABI name of a relocation type, for messages.
pub fn relocation_name(r_type: u32) -> String {
    if r_type == elf::R_X86_64_NONE.0 {
        return "R_X86_64_NONE".into();
    }
    let supported = ROWS
        .iter()
        .chain(std::iter::once(&TLSDESC_CALL))
        .find(|r| r.r_type.is_some_and(|t| t.0 == r_type))
        .map(|r| {
            r.info
                .relocation
                .split(' ')
                .next()
                .unwrap_or(r.info.relocation)
        });
    let refused = || {
        REFUSED
            .iter()
            .find(|(t, _, _)| t.0 == r_type)
            .map(|(_, n, _)| *n)
    };
    match supported.or_else(refused) {
        Some(n) => n.to_string(),
        None => format!("R_X86_64_<{r_type}>"),
    }
}

/// Apply the fixup of `kind` at `off` in `buf` (the block's bytes): the instruction rewrite the
/// kind implies (checked against the instruction's shape), then the table's formula.
pub fn apply(kind: EdgeKind, buf: &mut [u8], off: usize, v: FixupValues) -> Result<(), FixupError> {
    match kind {
        GotLoadRelaxed { rex } => relax_got_load(buf, off, rex, v),
        TlsDescToLocalExec => {
            rewrite_tlsdesc_lea(buf, off)?;
            write_value(&row(kind).info, buf, off, FixupValues { addend: 0, ..v })
        }
        TlsDescCallToNop => {
            // ff 10  call *(%rax)  →  66 90  xchg %ax, %ax
            let field = buf.get_mut(off..off + 2).ok_or(FixupError::OutsideBlock)?;
            if field != [0xff, 0x10] {
                return Err(FixupError::WrongInstruction {
                    expected: "call *(%rax) (ff 10)",
                });
            }
            field.copy_from_slice(&[0x66, 0x90]);
            Ok(())
        }
        _ => write_value(&row(kind).info, buf, off, v),
    }
}

/// Apply `kind` again where [`apply`] applied it before: the instruction is as `apply` left it,
/// only the value is written (for the relaxed `jmp`, one byte earlier, as `apply` put it).
pub fn reapply(
    kind: EdgeKind,
    buf: &mut [u8],
    off: usize,
    v: FixupValues,
) -> Result<(), FixupError> {
    match kind {
        GotLoadRelaxed { .. } if off >= 2 && buf.get(off - 2) == Some(&0xe9) => {
            let at = FixupValues {
                place: v.place.wrapping_sub(1),
                ..v
            };
            write_value(&row(kind).info, buf, off - 1, at)
        }
        TlsDescToLocalExec => {
            write_value(&row(kind).info, buf, off, FixupValues { addend: 0, ..v })
        }
        TlsDescCallToNop => Ok(()),
        _ => write_value(&row(kind).info, buf, off, v),
    }
}

/// `REX.W 8d /r  lea x@tlsdesc(%rip), %reg` → `REX.W c7 /0  mov $tpoff, %reg` (gcc may compute
/// the descriptor into any register and move it to %rax later).
fn rewrite_tlsdesc_lea(buf: &mut [u8], off: usize) -> Result<(), FixupError> {
    let wrong = FixupError::WrongInstruction {
        expected: "lea x@tlsdesc(%rip), %reg (REX.W 8d /r)",
    };
    let insn = off
        .checked_sub(3)
        .and_then(|s| buf.get_mut(s..off))
        .ok_or(wrong.clone())?;
    let (rex, op, modrm) = (insn[0], insn[1], insn[2]);
    if rex & 0xfb != 0x48 || op != 0x8d || modrm & 0xc7 != 0x05 {
        return Err(wrong);
    }
    insn.copy_from_slice(&[0x48 | ((rex >> 2) & 1), 0xc7, 0xc0 | ((modrm >> 3) & 7)]);
    Ok(())
}

/// Whether the instruction around a GOTPCRELX fixup at `off` can be rewritten to reach the
/// symbol directly: `mov foo@GOTPCREL(%rip), %reg` → `lea`, `call *foo@GOTPCREL(%rip)` →
/// `addr32 call foo`, `jmp *foo@GOTPCREL(%rip)` → `jmp foo; nop`. Other shapes (arithmetic
/// with a GOT operand) keep the GOT.
pub fn can_relax_got_load(content: &[u8], off: usize, rex: bool) -> bool {
    let (Some(&op), Some(&modrm)) = (
        off.checked_sub(2).and_then(|i| content.get(i)),
        off.checked_sub(1).and_then(|i| content.get(i)),
    ) else {
        return false;
    };
    let mov = op == 0x8b && modrm & 0xc7 == 0x05;
    if rex {
        // A REX prefix before the opcode; only mov is relaxed.
        let prefix = off.checked_sub(3).and_then(|i| content.get(i));
        prefix.is_some_and(|p| p & 0xf0 == 0x40) && mov
    } else {
        mov || (op == 0xff && (modrm == 0x15 || modrm == 0x25))
    }
}

/// Rewrite a relaxable GOT load to reach S directly, with the bytes GNU ld and lld produce, and
/// write the displacement.
fn relax_got_load(buf: &mut [u8], off: usize, rex: bool, v: FixupValues) -> Result<(), FixupError> {
    if off.checked_add(4).is_none_or(|end| end > buf.len()) {
        return Err(FixupError::OutsideBlock);
    }
    if !can_relax_got_load(buf, off, rex) {
        return Err(FixupError::WrongInstruction {
            expected: "mov, call * or jmp * through the GOT",
        });
    }
    let info = &row(GotLoadRelaxed { rex }).info;
    let (op, modrm) = (buf[off - 2], buf[off - 1]);
    match (op, modrm) {
        (0xff, 0x25) => {
            // jmp *disp(%rip) → e9 rel32; 90: the displacement moves one byte earlier, and so
            // does the place it is relative to.
            let mut field = [0u8; 5];
            let at = FixupValues {
                place: v.place.wrapping_sub(1),
                ..v
            };
            write_value(info, &mut field, 1, at)?;
            field[0] = 0xe9;
            buf[off - 2..off + 3].copy_from_slice(&field);
            buf[off + 3] = 0x90;
            Ok(())
        }
        _ => {
            write_value(info, buf, off, v)?;
            if op == 0x8b {
                buf[off - 2] = 0x8d; // mov → lea
            } else {
                buf[off - 2] = 0x67; // call * → addr32 call
                buf[off - 1] = 0xe8;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The linker's writer applies kinds whose row does not say `rewrites` with `write_value`
    /// alone: for them `apply` must do exactly that, whatever the values (in range or not).
    #[test]
    fn kinds_without_rewrites_are_write_value_alone() {
        let values = [
            (0x1000u64, 0x2000u64, -4i64),
            (0x7fff_0000_0000, 0x1000, 0),
            (0x1000, u64::MAX - 8, 8),
            (0x40_0000, 0x40_0010, 0x7fff_ffff),
        ];
        let mut plain = 0;
        for row in ROWS.iter().chain([&TLSDESC_CALL]) {
            if row.info.rewrites {
                continue;
            }
            plain += 1;
            for (place, target, addend) in values {
                let v = FixupValues {
                    target,
                    addend,
                    place,
                    got: 0x3000,
                };
                let (mut a, mut b) = ([0xccu8; 12], [0xccu8; 12]);
                let applied = apply(row.kind, &mut a, 2, v);
                let written = write_value(&row.info, &mut b, 2, v);
                assert_eq!(applied, written, "{}", row.info.name);
                assert_eq!(a, b, "{}", row.info.name);
            }
        }
        assert!(plain > 20, "most kinds are plain: {plain}");
        for r in ROWS.iter().chain([&TLSDESC_CALL]) {
            let bound = super::super::tables::bytes_upper_bound(r.kind);
            assert_eq!(u64::from(r.info.table_bytes), bound, "{}", r.info.name);
        }
        for kind in [
            GotLoadRelaxed { rex: true },
            TlsDescToLocalExec,
            TlsDescCallToNop,
        ] {
            assert!(row(kind).info.rewrites, "{kind:?}");
        }
    }

    fn fix(
        kind: EdgeKind,
        buf: &mut [u8],
        off: usize,
        p: u64,
        s: u64,
        a: i64,
        got: u64,
    ) -> Result<(), FixupError> {
        apply(
            kind,
            buf,
            off,
            FixupValues {
                target: s,
                addend: a,
                place: p,
                got,
            },
        )
    }

    #[test]
    fn table_rows_are_in_index_order_and_types_map_back() {
        for (i, r) in ROWS.iter().enumerate() {
            assert_eq!(r.kind.index(), i, "{:?}", r.kind);
            assert_eq!(row(r.kind).kind, r.kind);
            if let Some(t) = r.r_type {
                assert_eq!(
                    edge_for_relocation(t.0),
                    Ok(Some(r.kind)),
                    "{}",
                    r.info.relocation
                );
                assert!(r.info.relocation.starts_with(&relocation_name(t.0)));
            }
        }
        assert_eq!(row(TlsDescCallToNop).kind, TlsDescCallToNop);
        assert_eq!(edge_for_relocation(elf::R_X86_64_NONE.0), Ok(None));
        assert!(edge_for_relocation(elf::R_X86_64_TLSDESC.0)
            .unwrap_err()
            .contains("TLS descriptor"));
        assert!(edge_for_relocation(elf::R_X86_64_COPY.0)
            .unwrap_err()
            .starts_with("R_X86_64_COPY"));
        assert!(edge_for_relocation(9999)
            .unwrap_err()
            .contains("unknown relocation type R_X86_64_<9999>"));
    }

    #[test]
    fn delta32_writes_and_checks_range() {
        let mut b = [0u8; 8];
        fix(Delta32, &mut b, 2, 0x1000, 0x2000, -4, 0).unwrap();
        assert_eq!(&b[2..6], &(0x1000i32 - 4).to_le_bytes());
        let e = fix(Delta32, &mut b, 2, 0x1000, 0x1_0000_2000, -4, 0).unwrap_err();
        assert!(matches!(
            e,
            FixupError::OutOfRange {
                range: Range::Signed,
                width: 4,
                ..
            }
        ));
    }

    #[test]
    fn size32_is_unsigned() {
        let mut b = [0u8; 4];
        fix(Size32, &mut b, 0, 0, 24, 1, 0).unwrap();
        assert_eq!(u32::from_le_bytes(b), 25);
        let e = fix(Size32, &mut b, 0, 0, 24, -100, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("value {:#x} does not fit in uint32", -76i128)
        );
        assert!(fix(Size32, &mut b, 0, 0, 1 << 32, 0, 0).is_err());
    }

    #[test]
    fn relax_mov_to_lea() {
        // mov 0(%rip), %rax  = 48 8b 05 <disp32>
        let mut code = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert!(can_relax_got_load(&code, 3, true));
        fix(
            GotLoadRelaxed { rex: true },
            &mut code,
            3,
            0x1003,
            0x2000,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(code[..3], [0x48, 0x8d, 0x05]);
        assert_eq!(
            i32::from_le_bytes(code[3..].try_into().unwrap()),
            0x2000 - 4 - 0x1003
        );
    }

    #[test]
    fn relax_call_and_jmp_as_gnu_ld_does() {
        // call *disp(%rip) at 0xfe → addr32 call func
        let mut call = [0xff, 0x15, 0, 0, 0, 0];
        fix(
            GotLoadRelaxed { rex: false },
            &mut call,
            2,
            0x100,
            0x200,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(call[..2], [0x67, 0xe8]);
        assert_eq!(
            i32::from_le_bytes(call[2..6].try_into().unwrap()),
            0x200 - 0x104
        );
        // jmp *disp(%rip) at 0xfe → jmp func (e9 at 0xfe, rel32 at 0xff); nop at 0x103.
        let mut jmp = [0xff, 0x25, 0, 0, 0, 0, 0xcc];
        fix(
            GotLoadRelaxed { rex: false },
            &mut jmp,
            2,
            0x100,
            0x200,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(jmp[0], 0xe9);
        let next = 0xfe + 5;
        assert_eq!(
            i32::from_le_bytes(jmp[1..5].try_into().unwrap()),
            0x200 - next
        );
        assert_eq!(jmp[5], 0x90);
        assert_eq!(jmp[6], 0xcc, "nothing written past the instruction");
        // add foo@GOTPCREL(%rip), %rax is not relaxable.
        let mut add = [0x48, 0x03, 0x05, 0, 0, 0, 0];
        assert!(!can_relax_got_load(&add, 3, true));
        let e = fix(GotLoadRelaxed { rex: true }, &mut add, 3, 0, 0, 0, 0).unwrap_err();
        assert!(matches!(e, FixupError::WrongInstruction { .. }));
        assert!(
            !can_relax_got_load(&[0x8b], 1, false),
            "too close to the start"
        );
    }

    #[test]
    fn reapplying_after_a_move_keeps_the_relaxed_instruction() {
        // jmp *GOT(%rip) relaxed at P = 0x100, then the code moves by 0x1000.
        let mut jmp = [0xff, 0x25, 0, 0, 0, 0, 0xcc];
        fix(
            GotLoadRelaxed { rex: false },
            &mut jmp,
            2,
            0x100,
            0x200,
            -4,
            0,
        )
        .unwrap();
        let v = FixupValues {
            target: 0x200,
            addend: -4,
            place: 0x1100,
            got: 0,
        };
        reapply(GotLoadRelaxed { rex: false }, &mut jmp, 2, v).unwrap();
        assert_eq!(jmp[0], 0xe9);
        assert_eq!(
            i32::from_le_bytes(jmp[1..5].try_into().unwrap()),
            0x200 - (0x10fe + 5)
        );
        assert_eq!(jmp[5], 0x90);
        // A call still a call, to the new place.
        let mut call = [0xe8, 0, 0, 0, 0];
        fix(BranchPCRel32, &mut call, 1, 0x1001, 0x2000, -4, 0).unwrap();
        let v = FixupValues {
            target: 0x3000,
            addend: -4,
            place: 0x1001,
            got: 0,
        };
        reapply(BranchPCRel32, &mut call, 1, v).unwrap();
        assert_eq!(
            i32::from_le_bytes(call[1..5].try_into().unwrap()),
            0x3000 - 0x1005
        );
    }

    #[test]
    fn tls_descriptor_relaxed_to_local_exec() {
        let mut code = [0x48, 0x8d, 0x05, 0, 0, 0, 0, 0xff, 0x10];
        fix(
            TlsDescToLocalExec,
            &mut code,
            3,
            0,
            (-0x40i64) as u64,
            -4,
            0,
        )
        .unwrap();
        fix(TlsDescCallToNop, &mut code, 7, 0, 0, 0, 0).unwrap();
        assert_eq!(code, [0x48, 0xc7, 0xc0, 0xc0, 0xff, 0xff, 0xff, 0x66, 0x90]);
        // lea x@tlsdesc(%rip), %r11  →  mov $tpoff, %r11
        let mut r11 = [0x4c, 0x8d, 0x1d, 0, 0, 0, 0];
        fix(TlsDescToLocalExec, &mut r11, 3, 0, (-0x40i64) as u64, -4, 0).unwrap();
        assert_eq!(r11, [0x49, 0xc7, 0xc3, 0xc0, 0xff, 0xff, 0xff]);
        let mut wrong = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert!(matches!(
            fix(TlsDescToLocalExec, &mut wrong, 3, 0, 0, 0, 0),
            Err(FixupError::WrongInstruction { .. })
        ));
        let mut not_call = [0x90, 0x90];
        assert!(fix(TlsDescCallToNop, &mut not_call, 0, 0, 0, 0, 0).is_err());
        assert_eq!(not_call, [0x90, 0x90]);
    }

    /// Every kind: bytes before, the edge (P, S, A, GOT), bytes after; and each checked kind
    /// out of range once.
    #[test]
    fn every_kind_bytes_before_and_after() {
        let (p, got) = (0x7000_0000_1000u64, 0x7000_0000_8000u64);
        // (kind, S, A, expected bytes at offset 1 in a 10-byte 0xaa buffer)
        let le32 = |v: i32| v.to_le_bytes().to_vec();
        let le64 = |v: u64| v.to_le_bytes().to_vec();
        let cases: Vec<(EdgeKind, u64, i64, Vec<u8>)> = vec![
            (
                Pointer64,
                0x1122_3344_5566_7788,
                0,
                le64(0x1122_3344_5566_7788),
            ),
            (
                Pointer32,
                0x8000_0010,
                -0x10,
                0x8000_0000u32.to_le_bytes().to_vec(),
            ),
            (Pointer32Signed, 0x10, -0x20, le32(-0x10)),
            (Pointer16, 0xfffe, 1, 0xffffu16.to_le_bytes().to_vec()),
            (Pointer8, 0x7f, 0, vec![0x7f]),
            (Delta64, p + 0x10, -4, le64(0xc)),
            (Delta32, p - 0x100, -4, le32(-0x104)),
            (Delta16, p + 0x100, 0, 0x100i16.to_le_bytes().to_vec()),
            (Delta8, p + 0x10, -4, vec![0x0c]),
            (NegDelta32, p - 0x40, 0, le32(0x40)),
            (BranchPCRel32, p + 0x1000, -4, le32(0xffc)),
            (GotDelta32, got + 8, -4, le32(0x7004)),
            (GotDelta64, got + 8, -4, le64(0x7004)),
            (GotOffset64, got + 16, 0, le64(16)),
            (
                DeltaFromGot64,
                got - 0x100,
                0,
                (-0x100i64).to_le_bytes().to_vec(),
            ),
            (GotBaseDelta32, 0, 3, le32(0x7003)),
            (GotBaseDelta64, 0, 3, le64(0x7003)),
            (PltOffsetFromGot64, got + 0x40, 0, le64(0x40)),
            (Size32, 24, 1, 25u32.to_le_bytes().to_vec()),
            (Size64, 24, 0, le64(24)),
            (TlsGdDelta32, p + 0x20, -4, le32(0x1c)),
            (TlsLdDelta32, p + 0x20, -4, le32(0x1c)),
            (DtpOff32, 0x30, 4, 0x34u32.to_le_bytes().to_vec()),
            (DtpOff64, 0x30, 4, le64(0x34)),
            (
                TlsModule64,
                0x4b4c_0000_0000_0001,
                0,
                le64(0x4b4c_0000_0000_0001),
            ),
            (TpOff32, (-0x40i64) as u64, 8, le32(-0x38)),
            (
                TpOff64,
                (-0x40i64) as u64,
                8,
                (-0x38i64).to_le_bytes().to_vec(),
            ),
            (GotTpOffDelta32, p + 0x20, -4, le32(0x1c)),
        ];
        for (kind, s, a, want) in cases {
            let mut buf = [0xaau8; 10];
            fix(kind, &mut buf, 1, p, s, a, got).unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
            assert_eq!(buf[0], 0xaa, "{kind:?} wrote before its field");
            assert_eq!(&buf[1..1 + want.len()], &want[..], "{kind:?}");
            assert_eq!(usize::from(kind.info().width), want.len(), "{kind:?} width");
            assert!(
                buf[1 + want.len()..].iter().all(|b| *b == 0xaa),
                "{kind:?} wrote past its field"
            );
        }
        // Negative absolute symbols (64-bit two's complement) fit signed fields.
        let mut buf = [0u8; 4];
        fix(
            Pointer32Signed,
            &mut buf,
            0,
            p,
            0xffff_ffff_ffff_8000,
            0,
            got,
        )
        .unwrap();
        assert_eq!(i32::from_le_bytes(buf), -0x8000);
        assert!(fix(Pointer32, &mut buf, 0, p, 0xffff_ffff_ffff_8000, 0, got).is_err());
        let mut b2 = [0u8; 2];
        fix(Pointer16, &mut b2, 0, p, (-2i64) as u64, 0, got).unwrap();
        assert_eq!(b2, [0xfe, 0xff]);
        let far = p + (1 << 32);
        for kind in [
            Pointer32Signed,
            Delta32,
            BranchPCRel32,
            GotDelta32,
            NegDelta32,
            GotBaseDelta32,
            TlsGdDelta32,
        ] {
            let mut buf = [0u8; 10];
            let (s, g) = match kind {
                GotBaseDelta32 => (0, far),
                NegDelta32 => (p - (1 << 32), got),
                _ => (far, got),
            };
            assert!(
                fix(kind, &mut buf, 1, p, s, 0, g).is_err(),
                "{kind:?} must be range checked"
            );
            assert_eq!(buf, [0u8; 10], "{kind:?} wrote despite the error");
        }
        for (kind, v) in [
            (Pointer32, 1u64 << 32),
            (Pointer16, 1 << 16),
            (Pointer8, 1 << 8),
            (Delta16, p + (1 << 15)),
            (Delta8, p + 128),
        ] {
            let mut buf = [0u8; 10];
            assert!(
                fix(kind, &mut buf, 1, p, v, 0, got).is_err(),
                "{kind:?} must be range checked"
            );
        }
    }
}

//! Architectures: what an edge means, how it is applied, and the code the linker writes itself.
//!
//! The generic pipeline (graphs, ELF parsing, resolution, dead-stripping, layout, finalize) knows
//! an edge only as an [`EdgeKind`] and asks the architecture, through `Arch`, everything that
//! depends on the instruction set:
//!
//! - the relocation table: which ELF relocation type becomes which edge kind, and for each kind
//!   its width, its range, its formula, what its "S" is, and its name in messages
//!   ([`EdgeInfo`]);
//! - fixups: `Arch::apply_fixup` (the formula through [`write_value`], plus instruction
//!   rewrites such as GOT relaxation), failing with a typed [`FixupError`];
//! - GOT, stubs and TLS tables: `Arch::build_tables` decides which edges need them once the
//!   unit's address range is known, and rewrites those edges;
//! - the code the linker synthesizes (`Templates`): `.init`/`.fini` glue, libc_nonshared's
//!   tail calls, jumps, and the unwind records of producer-described frames.
//!
//! x86-64 is the only architecture. Adding one (say AArch64) means a new `arch/aarch64/` module
//! implementing `Arch`, a variant of [`EdgeKind`] for its kinds, and a line in `for_elf_machine`
//! and `for_triple`; nothing outside `arch/` names an architecture.

pub mod x86_64;

use crate::graph::{BlockId, InputId, LinkGraph, SymbolId};

/// The kind of an edge (a relocation, or a reference the linker made): generic kinds the
/// pipeline itself understands, or one architecture's kinds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeKind {
    /// No fixup: keeps the target alive while the source is.
    KeepAlive,
    X86_64(x86_64::EdgeKind),
}

impl EdgeKind {
    /// The kind's table row, read off the kind itself (its variant names its architecture):
    /// what `Arch::edge_info` answers for its own kinds, without a call through `dyn Arch`
    /// (about 30 instructions an edge on the paths that run per edge: fixups, placement).
    #[inline(always)]
    pub fn info(self) -> &'static EdgeInfo {
        match self {
            EdgeKind::KeepAlive => &EdgeInfo::KEEP_ALIVE,
            EdgeKind::X86_64(k) => &x86_64::relocs::row(k).info,
        }
    }

    /// The ELF `e_machine` of the architecture the kind belongs to ([`Arch::elf_machine`]),
    /// `None` for a generic kind every architecture takes: read off the kind, so that a check
    /// that an edge is of its graph's architecture compares two numbers rather than calling
    /// through `dyn Arch` (`Arch::edge_info`) for every edge.
    #[inline(always)]
    pub(crate) fn elf_machine(self) -> Option<u16> {
        match self {
            EdgeKind::KeepAlive => None,
            EdgeKind::X86_64(_) => Some(object::elf::EM_X86_64.0),
        }
    }

    /// Whether the kind's row is the plain 32-bit PC-relative one: S the target's address,
    /// `S + A - P` into a signed 32-bit field, no instruction rewrite (calls, jumps and data
    /// references, a JIT's usual edges). The fixup writer takes these on a straight path.
    #[inline(always)]
    pub fn is_plain_pc_relative_32(self) -> bool {
        use x86_64::EdgeKind::{BranchPCRel32, Delta32};
        matches!(self, EdgeKind::X86_64(BranchPCRel32 | Delta32))
    }
}

impl From<x86_64::EdgeKind> for EdgeKind {
    fn from(k: x86_64::EdgeKind) -> Self {
        EdgeKind::X86_64(k)
    }
}

/// What the fixup formula calls S for an edge: the target symbol's address, or another
/// property of it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TargetValue {
    /// The symbol's address (or, after the table pass, its GOT entry's or stub's address).
    Address,
    /// The symbol's size (`Z` in the psABI).
    Size,
    /// The unit's TLS module value (the first word of a `{module, offset}` pair).
    TlsModule,
    /// The symbol's offset in the unit's TLS block.
    TlsBlockOffset,
    /// The symbol's offset from the thread pointer (static TLS).
    ThreadPointerOffset,
    /// Nothing: the edge rewrites an instruction and writes no value of its target.
    None,
}

/// How a fixup's value is computed. S is the [`TargetValue`], A the addend, P the address of the
/// fixup, GOT the address of the unit's GOT.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Formula {
    /// `S + A`
    Absolute,
    /// `S + A - P`
    PcRelative,
    /// `P - S + A` (an FDE's pointer back to its CIE)
    NegPcRelative,
    /// `S + A - GOT`
    GotRelative,
    /// `GOT + A - P`
    GotBasePcRelative,
    /// No value is written.
    None,
}

/// The values a field of a fixup can hold; a value outside is an error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Range {
    /// Two's complement signed.
    Signed,
    /// Unsigned.
    Unsigned,
    /// Either signed or unsigned (an 8- or 16-bit absolute, `SIZE32`, `DTPOFF32`).
    SignedOrUnsigned,
    /// Any value; the field is the low bits (64-bit fields).
    Wrapping,
}

/// How an edge constrains where the unit can be placed, relative to host symbols it reaches.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The value is not an address relative to the code.
    Unconstrained,
    /// A 32-bit PC-relative reference with no fallback: the target must be within reach.
    PcRelative32,
    /// A 32-bit PC-relative reference that falls back to a stub or a GOT entry when the target
    /// is out of reach: nice to have within reach.
    PcRelative32WithFallback,
    /// A 32-bit absolute address of a symbol: the target (the unit's own symbols) must lie in
    /// the low (or, signed, the low or high) 2 GiB.
    Absolute32,
}

/// One row of an architecture's relocation table: everything about one edge kind.
#[derive(Copy, Clone, Debug)]
pub struct EdgeInfo {
    /// The kind's name in statistics (`Delta32`).
    pub name: &'static str,
    /// The psABI name of the relocation it comes from (`R_X86_64_PC32`), or what it is for
    /// kinds the linker makes (`(eh_frame CIE pointer)`).
    pub relocation: &'static str,
    /// Bytes the fixup writes.
    pub width: u8,
    pub range: Range,
    pub formula: Formula,
    pub value: TargetValue,
    pub reach: Reach,
    /// Applying the kind does more than write the formula's value (it rewrites the
    /// instruction: a relaxation, a TLS model change): only `Arch::apply_fixup` applies it.
    /// A kind without this flag is applied by [`write_value`] alone, as the linker's writer
    /// does (one table row per edge, no call through the architecture).
    pub rewrites: bool,
    /// An upper bound of the bytes of GOT entries and stubs an edge of this kind can need (in
    /// the row: placement reads it with the reach, one look-up per edge).
    pub table_bytes: u8,
}

impl EdgeInfo {
    /// The row of [`EdgeKind::KeepAlive`].
    pub const KEEP_ALIVE: EdgeInfo = EdgeInfo {
        name: "KeepAlive",
        relocation: "(keep-alive)",
        width: 0,
        range: Range::Wrapping,
        formula: Formula::None,
        value: TargetValue::None,
        reach: Reach::Unconstrained,
        rewrites: false,
        table_bytes: 0,
    };
}

/// Why a fixup could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FixupError {
    /// The value does not fit the field.
    #[error("value {value:#x} does not fit in {}", range_text(*range, *width))]
    OutOfRange {
        value: i128,
        range: Range,
        width: u8,
    },
    /// An instruction rewrite (a relaxation) found an instruction of another shape.
    #[error("the instruction at the fixup is not {expected}")]
    WrongInstruction { expected: &'static str },
    /// The field is not aligned as the relocation requires.
    #[error("the fixup address {address:#x} is not aligned to {align}")]
    Misaligned { address: u64, align: u64 },
    /// The field lies outside its block (a second line of defence: edges are checked when
    /// graphs are built).
    #[error("the fixup's field lies outside its block")]
    OutsideBlock,
    /// The edge kind belongs to another architecture than the link's.
    #[error("edge kind {0:?} does not belong to this architecture")]
    ForeignKind(EdgeKind),
}

/// `int32`, `uint32`, `16 bits (signed or unsigned)`: the field's range in messages.
pub(crate) fn range_text(range: Range, width: u8) -> String {
    let bits = u32::from(width) * 8;
    match range {
        Range::Signed => format!("int{bits}"),
        Range::Unsigned => format!("uint{bits}"),
        Range::SignedOrUnsigned => format!("{bits} bits (signed or unsigned)"),
        Range::Wrapping => format!("{bits} bits"),
    }
}

/// The inputs of one fixup, named so that two addresses cannot be swapped silently.
#[derive(Copy, Clone, Debug)]
pub struct FixupValues {
    /// S: what [`EdgeInfo::value`] says (an address, a size, a TLS offset).
    pub target: u64,
    /// A
    pub addend: i64,
    /// P: the address of the field.
    pub place: u64,
    /// GOT: the address of the unit's GOT.
    pub got: u64,
}

/// Compute `info`'s formula from `v` and write it, range checked, at `off` in `buf`. Nothing is
/// written when it fails.
#[inline]
pub fn write_value(
    info: &EdgeInfo,
    buf: &mut [u8],
    off: usize,
    v: FixupValues,
) -> Result<(), FixupError> {
    if write_common_field(info, buf, off, v) {
        return Ok(());
    }
    write_value_exactly(info, buf, off, v)
}

/// [`write_value`] for the two fields nearly every fixup has (a signed 32-bit field: calls,
/// PC-relative data; a 64-bit pointer) in 64-bit arithmetic, a few instructions where the
/// 128-bit computation and its range check cost about 80. `false` (nothing written) for any
/// other field, and whenever the 64-bit computation overflows or the value does not fit: the
/// exact path then decides, with its error.
#[inline(always)]
fn write_common_field(info: &EdgeInfo, buf: &mut [u8], off: usize, v: FixupValues) -> bool {
    let (s, a, p, got) = (v.target as i64, v.addend, v.place as i64, v.got as i64);
    match (info.width, info.range) {
        (4, Range::Signed) => {
            // A 64-bit result that did not overflow is the exact (128-bit) value. (P is
            // unsigned there, S signed: a place above `i64::MAX` is left to the exact path.)
            let value = match info.formula {
                Formula::Absolute => s.checked_add(a),
                Formula::PcRelative if p >= 0 => s.checked_add(a).and_then(|x| x.checked_sub(p)),
                _ => None,
            };
            let Some(value) = value.and_then(|x| i32::try_from(x).ok()) else {
                return false;
            };
            match buf.get_mut(off..).and_then(|b| b.first_chunk_mut::<4>()) {
                Some(field) => {
                    *field = value.to_le_bytes();
                    true
                }
                None => false,
            }
        }
        (8, Range::Wrapping) => {
            // A 64-bit field holds the low 64 bits of the value: wrapping arithmetic is exact.
            let value = match info.formula {
                Formula::Absolute => s.wrapping_add(a),
                Formula::PcRelative => s.wrapping_add(a).wrapping_sub(p),
                Formula::GotRelative => s.wrapping_add(a).wrapping_sub(got),
                _ => return false,
            };
            match buf.get_mut(off..).and_then(|b| b.first_chunk_mut::<8>()) {
                Some(field) => {
                    *field = value.to_le_bytes();
                    true
                }
                None => false,
            }
        }
        _ => false,
    }
}

/// [`write_value`] for any field, in 128-bit arithmetic: the value as the psABI defines it,
/// checked against the field's range.
fn write_value_exactly(
    info: &EdgeInfo,
    buf: &mut [u8],
    off: usize,
    v: FixupValues,
) -> Result<(), FixupError> {
    // The psABI computes in 64-bit two's complement: an absolute symbol at
    // 0xffff_ffff_ffff_8000 is -0x8000 and fits a signed 32-bit field.
    let s = v.target as i64 as i128;
    let (a, p, got) = (v.addend as i128, v.place as i128, v.got as i128);
    let value = match info.formula {
        Formula::Absolute => s + a,
        Formula::PcRelative => s + a - p,
        Formula::NegPcRelative => p - s + a,
        Formula::GotRelative => s + a - got,
        Formula::GotBasePcRelative => got + a - p,
        Formula::None => return Ok(()),
    };
    let width = usize::from(info.width);
    let field = off
        .checked_add(width)
        .and_then(|end| buf.get_mut(off..end))
        .ok_or(FixupError::OutsideBlock)?;
    if !fits(value, info.range, info.width) {
        return Err(FixupError::OutOfRange {
            value,
            range: info.range,
            width: info.width,
        });
    }
    let bytes = (value as u64).to_le_bytes();
    // Copies of a constant width: no call to memcpy for a 4-byte field.
    match width {
        4 => field.copy_from_slice(&bytes[..4]),
        8 => field.copy_from_slice(&bytes),
        _ => field.copy_from_slice(&bytes[..width]),
    }
    Ok(())
}

fn fits(v: i128, range: Range, width: u8) -> bool {
    let bits = u32::from(width) * 8;
    // (A field of no bytes writes nothing: anything fits it.)
    if bits >= 64 || bits == 0 || range == Range::Wrapping {
        return true;
    }
    // The bits above a signed field are copies of its sign bit; above an unsigned one, zeros.
    // (Shifts, not range bounds: no 128-bit constants to build for every fixup.)
    let above_sign = v >> (bits - 1);
    let above_field = v >> bits;
    match range {
        Range::Signed => above_sign == 0 || above_sign == -1,
        Range::Unsigned => above_field == 0,
        Range::SignedOrUnsigned => above_sign == -1 || above_field == 0,
        Range::Wrapping => true,
    }
}

/// A piece of code the linker writes, with its edges: to the unit's `__dso_handle`, or to the
/// callee the template is instantiated for.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Template {
    pub code: &'static [u8],
    pub align: u64,
    pub edges: &'static [TemplateEdge],
}

#[derive(Copy, Clone, Debug)]
pub(crate) struct TemplateEdge {
    pub offset: u32,
    pub kind: EdgeKind,
    pub target: TemplateTarget,
    pub addend: i64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum TemplateTarget {
    /// The unit's `__dso_handle`.
    DsoHandle,
    /// The symbol the template is made for (the callee of a tail call, a jump's target).
    Callee,
}

/// The code the generic passes synthesize.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Templates {
    /// `.init`/`.fini` fragments are concatenated between these (as crti.o and crtn.o frame them).
    pub init_prologue: &'static [u8],
    pub init_epilogue: &'static [u8],
    /// `int atexit(void (*f)(void))` for one unit: `__cxa_atexit(f, NULL, __dso_handle)`, a tail
    /// call to the callee (also `at_quick_exit` → `__cxa_at_quick_exit`).
    pub atexit: Template,
    /// `pthread_atfork(prepare, parent, child)` → `__register_atfork(..., __dso_handle)`.
    pub atfork: Template,
    /// A jump to the callee (rustc's allocator shim).
    pub jump: Template,
    /// A one-instruction function that returns.
    pub ret: &'static [u8],
    /// Bytes of one stub (a jump through a GOT entry).
    pub stub_size: u64,
}

/// The edge kinds `.eh_frame` records use, so that the generic splitter and the frame records of
/// in-memory graphs make the right edges.
#[derive(Copy, Clone, Debug)]
pub(crate) struct EhFrameKinds {
    /// An FDE's CIE pointer: `P - S`, 32 bits.
    pub cie_pointer: EdgeKind,
    /// A 32-bit PC-relative pointer (`pcrel | sdata4`).
    pub pc_relative_32: EdgeKind,
}

/// Unwind records for a function that starts with the architecture's standard frame-pointer
/// prologue: a CIE (shared by a graph's functions) and an FDE template whose CIE pointer (at
/// `cie_pointer_offset`) and pc_begin (at `pc_begin_offset`, [`EhFrameKinds::pc_relative_32`])
/// are edges, and whose pc_range is the function's size.
#[derive(Copy, Clone, Debug)]
pub(crate) struct FramePointerUnwind {
    pub cie: &'static [u8],
    /// The smallest function the FDE can describe (the prologue's length).
    pub min_function_size: u64,
    pub fde: fn(function_size: u32) -> Vec<u8>,
    pub cie_pointer_offset: u32,
    pub pc_begin_offset: u32,
}

/// GOT entries, stubs and other tables built for one unit, for link maps and debug sinks.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tables {
    /// (target, GOT entry symbol)
    pub got: Vec<(SymbolId, SymbolId)>,
    /// (target, stub symbol)
    pub stubs: Vec<(SymbolId, SymbolId)>,
    /// (IFUNC resolver, writable slot its result goes to)
    pub ifunc_slots: Vec<(SymbolId, SymbolId)>,
    /// The unit's GOT, if it has one.
    pub got_block: Option<BlockId>,
    pub stats: TableStats,
}

/// Counts for `--show-stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    pub got_entries: usize,
    pub stubs: usize,
    pub loads_relaxed: usize,
    pub calls_direct: usize,
    pub tls_pairs: usize,
}

/// Where the table pass may put what it makes, and where the unit will be.
pub(crate) struct TableContext {
    /// The unit's GOT block, if it has one already (the pass makes it when it needs one).
    pub got: Option<BlockId>,
    /// The input that owns what the linker makes.
    pub linker_input: InputId,
    /// Every address of the unit lies in `[lo, hi)`.
    pub lo: u64,
    pub hi: u64,
}

/// An instruction set and its ELF psABI.
pub(crate) trait Arch: Send + Sync + std::fmt::Debug {
    /// `x86-64`
    fn name(&self) -> &'static str;
    /// `e_machine` of its ELF objects.
    fn elf_machine(&self) -> u16;
    /// How far a 32-bit PC-relative reference reaches, with the margin kiln keeps for addends:
    /// a target within this distance of every byte of the unit is in reach.
    fn pc_relative_32_reach(&self) -> u64;
    /// The edge kind of an ELF relocation type; `Ok(None)` for relocations with no effect
    /// (`R_*_NONE`); `Err` says why a type is refused.
    fn edge_for_relocation(&self, r_type: u32) -> Result<Option<EdgeKind>, String>;
    /// The psABI name of a relocation type.
    fn relocation_name(&self, r_type: u32) -> String;
    /// The table row of an edge kind of this architecture ([`EdgeInfo::KEEP_ALIVE`] for
    /// [`EdgeKind::KeepAlive`], `None` for another architecture's kinds).
    fn edge_info(&self, kind: EdgeKind) -> Option<&'static EdgeInfo>;
    /// Apply one fixup: write the formula's value at `off` in `buf` (the block's bytes), after
    /// any instruction rewrite the kind implies.
    fn apply_fixup(
        &self,
        kind: EdgeKind,
        buf: &mut [u8],
        off: usize,
        v: FixupValues,
    ) -> Result<(), FixupError>;
    /// Apply an edge again to code it was applied to before (after the code or its target
    /// moved): the value only, for the instruction as the first application left it (a relaxed
    /// GOT load is already a `lea` or a direct jump).
    fn reapply_fixup(
        &self,
        kind: EdgeKind,
        buf: &mut [u8],
        off: usize,
        v: FixupValues,
    ) -> Result<(), FixupError>;
    /// Build GOT entries, stubs and TLS pairs for the live edges of `g` that need them, now
    /// that the unit's range is known, and rewrite those edges to them.
    fn build_tables(&self, g: &mut LinkGraph, cx: &TableContext) -> Tables;
    fn templates(&self) -> &'static Templates;
    fn eh_frame_kinds(&self) -> EhFrameKinds;
    fn frame_pointer_unwind(&self) -> &'static FramePointerUnwind;
}

/// The architecture of ELF objects with this `e_machine`.
pub(crate) fn for_elf_machine(machine: u16) -> Option<&'static dyn Arch> {
    match machine {
        m if m == object::elf::EM_X86_64.0 => Some(&x86_64::X86_64),
        _ => None,
    }
}

/// The architecture of an executor with this target triple (`x86_64-unknown-linux-gnu`).
pub(crate) fn for_triple(triple: &str) -> Option<&'static dyn Arch> {
    // Whether `arch` is the triple's first component: compared in place, without splitting
    // the triple (asked on every link).
    let first_is = |arch: &str| {
        triple
            .strip_prefix(arch)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    };
    if first_is("x86_64") {
        Some(&x86_64::X86_64)
    } else {
        None
    }
}

/// Every edge kind there is: each x86-64 row's, the x86-64 kind without a row of its own, and
/// the generic kind (for tests that compare a shortcut with the general answer, kind by kind).
#[cfg(test)]
pub(crate) fn every_kind() -> Vec<EdgeKind> {
    let mut kinds: Vec<EdgeKind> = x86_64::relocs::ROWS
        .iter()
        .map(|r| EdgeKind::X86_64(r.kind))
        .collect();
    kinds.push(EdgeKind::X86_64(x86_64::EdgeKind::TlsDescCallToNop));
    kinds.push(EdgeKind::KeepAlive);
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_pc_relative_32_kinds_have_that_row() {
        let mut found = 0;
        for row in x86_64::relocs::ROWS.iter() {
            let kind = EdgeKind::X86_64(row.kind);
            if !kind.is_plain_pc_relative_32() {
                continue;
            }
            found += 1;
            let info = kind.info();
            assert_eq!(
                (
                    info.width,
                    info.range,
                    info.formula,
                    info.value,
                    info.rewrites
                ),
                (
                    4,
                    Range::Signed,
                    Formula::PcRelative,
                    TargetValue::Address,
                    false
                ),
                "{}",
                info.name
            );
        }
        assert_eq!(found, 2);
        assert!(!EdgeKind::KeepAlive.is_plain_pc_relative_32());
    }

    /// What the graph builders read off a kind (its architecture, its row) is what the graph's
    /// architecture answers through `Arch::edge_info`, for every kind: its own kinds' rows,
    /// the generic kind's, and `None` for a kind of another architecture.
    #[test]
    fn a_kind_says_its_architecture_and_row_as_edge_info_does() {
        let arch = for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        for kind in every_kind() {
            let by_kind = kind
                .elf_machine()
                .is_none_or(|m| m == arch.elf_machine())
                .then(|| kind.info());
            let by_arch = arch.edge_info(kind);
            assert!(by_arch.is_some(), "{kind:?}");
            // (By value: `KEEP_ALIVE` is a constant, which need not have one address.)
            assert_eq!(
                by_kind.map(|i| format!("{i:?}")),
                by_arch.map(|i| format!("{i:?}")),
                "{kind:?}"
            );
        }
        assert_eq!(EdgeKind::KeepAlive.elf_machine(), None);
        assert_eq!(
            EdgeKind::X86_64(x86_64::EdgeKind::Delta32).elf_machine(),
            Some(arch.elf_machine())
        );
    }

    #[test]
    fn the_architecture_is_the_triples_first_component() {
        let name = |t: &str| for_triple(t).map(|a| a.name());
        assert_eq!(name("x86_64-unknown-linux-gnu"), Some("x86-64"));
        assert_eq!(name("x86_64"), Some("x86-64"));
        assert_eq!(name("x86_64h-apple-darwin"), None);
        assert_eq!(name("aarch64-unknown-linux-gnu"), None);
        assert_eq!(name(""), None);
    }

    const ROW: EdgeInfo = EdgeInfo {
        name: "T",
        relocation: "T",
        width: 4,
        range: Range::Signed,
        formula: Formula::PcRelative,
        value: TargetValue::Address,
        reach: Reach::PcRelative32,
        rewrites: false,
        table_bytes: 0,
    };

    #[test]
    fn write_value_checks_range_and_writes_nothing_on_error() {
        let mut b = [0xaau8; 8];
        let v = |target| FixupValues {
            target,
            addend: -4,
            place: 0x1000,
            got: 0,
        };
        write_value(&ROW, &mut b, 2, v(0x2000)).unwrap();
        assert_eq!(&b[2..6], &0xffci32.to_le_bytes());
        assert_eq!([b[0], b[1], b[6], b[7]], [0xaa; 4]);
        let before = b;
        let e = write_value(&ROW, &mut b, 2, v(0x1_0000_2000)).unwrap_err();
        assert!(matches!(e, FixupError::OutOfRange { width: 4, .. }));
        assert_eq!(e.to_string(), "value 0x100000ffc does not fit in int32");
        assert_eq!(b, before);
        assert_eq!(
            write_value(&ROW, &mut b, 6, v(0x2000)),
            Err(FixupError::OutsideBlock)
        );
    }

    /// The 64-bit path of the common fields writes what the exact path writes, and leaves
    /// every value it cannot prove to it (same error, nothing written), at the edges of the
    /// 32- and 64-bit ranges and of the block.
    #[test]
    fn common_fields_agree_with_the_exact_computation() {
        let edges: Vec<i64> = [0, 1, 4, 0x7fff_fffb, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff]
            .into_iter()
            .flat_map(|x: i64| [x, -x, x - 1, -x - 1])
            .chain([i64::MAX, i64::MIN, i64::MAX - 3, i64::MIN + 3])
            .collect();
        for (width, range) in [(4, Range::Signed), (8, Range::Wrapping)] {
            for formula in [
                Formula::Absolute,
                Formula::PcRelative,
                Formula::GotRelative,
                Formula::NegPcRelative,
            ] {
                let row = EdgeInfo {
                    width,
                    range,
                    formula,
                    ..ROW
                };
                for &s in &edges {
                    for &a in &edges {
                        for &p in &[0i64, 0x1000, -0x1000, i64::MAX, i64::MIN] {
                            let v = FixupValues {
                                target: s as u64,
                                addend: a,
                                place: p as u64,
                                got: p.wrapping_add(0x40) as u64,
                            };
                            for off in [0, 6, 12] {
                                let (mut fast, mut exact) = ([0x5au8; 16], [0x5au8; 16]);
                                let r = write_value(&row, &mut fast, off, v);
                                let e = write_value_exactly(&row, &mut exact, off, v);
                                assert_eq!((r, fast), (e, exact), "{row:?} {v:?} at {off}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ranges() {
        assert!(fits(-128, Range::Signed, 1) && !fits(128, Range::Signed, 1));
        assert!(fits(255, Range::Unsigned, 1) && !fits(-1, Range::Unsigned, 1));
        assert!(fits(-128, Range::SignedOrUnsigned, 1) && fits(255, Range::SignedOrUnsigned, 1));
        assert!(!fits(256, Range::SignedOrUnsigned, 1));
        assert!(fits(i64::MIN as i128, Range::Wrapping, 8));
        assert!(fits(-(1 << 31), Range::Signed, 4) && !fits(-(1 << 31) - 1, Range::Signed, 4));
        assert!(fits((1 << 31) - 1, Range::Signed, 4) && !fits(1 << 31, Range::Signed, 4));
        assert!(fits((1 << 32) - 1, Range::Unsigned, 4) && !fits(1 << 32, Range::Unsigned, 4));
        assert!(
            fits(-32768, Range::SignedOrUnsigned, 2) && !fits(-32769, Range::SignedOrUnsigned, 2)
        );
        assert!(
            fits(65535, Range::SignedOrUnsigned, 2) && !fits(65536, Range::SignedOrUnsigned, 2)
        );
        assert!(!fits(-(1i128 << 70), Range::Signed, 4) && !fits(1i128 << 70, Range::Unsigned, 4));
    }
}

//! Fixups: every live edge applied in working memory, through the architecture.

use super::layout::{Layout, SegmentLayout};
use crate::arch::{EdgeInfo, FixupError, FixupValues, Reach, TargetValue};
use crate::error::{Error, FixupFailure, Result};
use crate::graph::*;

/// Values a fixup needs besides the symbol.
pub struct FixupContext {
    pub got_base: u64,
    pub tls_module: u64,
    /// Offset of the unit's TLS block from the thread pointer, when it lives in static TLS.
    pub tp_offset: Option<i64>,
}

/// Apply every edge of every live block into new working memory, one buffer per segment.
pub fn apply_fixups(g: &LinkGraph, layout: &Layout, ctx: &FixupContext) -> Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = layout
        .segments
        .iter()
        .map(|s| vec![0u8; s.content_size as usize])
        .collect();
    let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| b.as_mut_slice()).collect();
    apply_fixups_into(g, layout, ctx, &mut bufs)?;
    Ok(out)
}

/// Apply every edge of every live block into `bufs`, one per segment (at least `content_size`
/// long; what lies beyond is left alone).
pub fn apply_fixups_into(
    g: &LinkGraph,
    layout: &Layout,
    ctx: &FixupContext,
    bufs: &mut [&mut [u8]],
) -> Result<()> {
    for (seg, buf) in layout.segments.iter().zip(bufs.iter_mut()) {
        apply_segment_fixups(g, seg, ctx, buf)?;
    }
    Ok(())
}

/// Apply every edge of segment `seg`'s blocks into `buf` (at least `content_size` long; what
/// lies beyond is left alone): [`apply_fixups_into`] for one segment.
pub fn apply_segment_fixups(
    g: &LinkGraph,
    seg: &SegmentLayout,
    ctx: &FixupContext,
    buf: &mut [u8],
) -> Result<()> {
    if (buf.len() as u64) < seg.content_size {
        return Err(Error::Internal(
            "working memory smaller than its segment".into(),
        ));
    }
    for &b in &seg.blocks {
        let blk = &g.blocks[b.idx()];
        if blk.is_zero_fill() {
            continue;
        }
        let start = (blk.addr - seg.addr) as usize;
        fixup_block(g, b, &mut buf[start..], ctx)?;
    }
    Ok(())
}

/// The unit's TLS image (`.tdata` blocks, fixed up), for a static TLS request. Needs no thread
/// pointer offset: TLS data does not refer to TLS offsets.
pub fn tls_image(g: &LinkGraph, layout: &Layout, ctx: &FixupContext) -> Result<Vec<u8>> {
    let Some(t) = &layout.tls else {
        return Ok(Vec::new());
    };
    let mut buf = vec![0u8; t.image_size as usize];
    for seg in &layout.segments {
        for &b in &seg.blocks {
            let blk = &g.blocks[b.idx()];
            if g.sections[blk.section.idx()].kind == SectionKind::Tls && !blk.is_zero_fill() {
                let start = (blk.addr - t.image_addr) as usize;
                fixup_block(g, b, &mut buf[start..], ctx)?;
            }
        }
    }
    Ok(buf)
}

/// Copy block `b` to the start of `dst` and apply its edges there. Plain 32-bit PC-relative
/// edges (a JIT's calls, most of an object's) are written here ([`write_plain_pc_relative_32`]),
/// any other through [`fixup_edge`]. (Inlined into its two callers: as a call, its prologue and
/// epilogue and its caller's cost about 38 instructions a one-function unit; `#[inline]` alone
/// left it a call.)
#[inline(always)]
fn fixup_block(g: &LinkGraph, b: BlockId, dst: &mut [u8], ctx: &FixupContext) -> Result<()> {
    let blk = &g.blocks[b.idx()];
    let Content::Bytes(bytes) = &blk.content else {
        return Ok(());
    };
    let dst = &mut dst[..bytes.len()];
    dst.copy_from_slice(bytes);
    for e in &blk.edges {
        if !write_plain_pc_relative_32(g, blk.addr, e, dst) {
            fixup_edge(g, b, e, dst, ctx)?;
        }
    }
    Ok(())
}

/// Apply edge `e` of block `b` (its bytes in `dst`): its row looked up once; kinds that only
/// write their formula's value are written without a call through the architecture
/// ([`crate::arch::EdgeInfo::rewrites`]). (Out of line: inlined into the block's loop, what it
/// keeps at hand cost every block, a JIT's one-function unit included, about 30 instructions
/// of loads and spills before its first edge.)
#[inline(never)]
fn fixup_edge(
    g: &LinkGraph,
    b: BlockId,
    e: &Edge,
    dst: &mut [u8],
    ctx: &FixupContext,
) -> Result<()> {
    let addr = g.blocks[b.idx()].addr;
    let info = e.kind.info();
    let s = target_value(g, e, info, ctx).map_err(|why| fixup_failure(g, b, e, 0, why))?;
    let v = FixupValues {
        target: s,
        addend: e.addend,
        place: addr + u64::from(e.offset),
        got: ctx.got_base,
    };
    let off = e.offset as usize;
    let applied = if info.rewrites {
        g.arch.apply_fixup(e.kind, dst, off, v)
    } else {
        crate::arch::write_value(info, dst, off, v)
    };
    applied.map_err(|err| fixup_failure(g, b, e, s, Why::Fixup(err)))
}

/// Edge `e` of the block at `addr` (its bytes in `dst`) written straight when it is a plain
/// 32-bit PC-relative reference ([`crate::arch::EdgeKind::is_plain_pc_relative_32`]: a JIT's
/// calls) to a target with an address ([`plain_address`]: a host symbol, another unit's
/// function, a symbol of the unit's own code or data): `S + A - P` as int32, as
/// [`crate::arch::write_value`] computes it, without the row's look-up and matches. `false`
/// (nothing written) for any other edge or target, and whenever the value or the field does
/// not fit: the general path then writes it, or says why it cannot.
#[inline(always)]
fn write_plain_pc_relative_32(g: &LinkGraph, addr: u64, e: &Edge, dst: &mut [u8]) -> bool {
    if !e.kind.is_plain_pc_relative_32() {
        return false;
    }
    let Some(s) = plain_address(g, &g.symbols[e.target.idx()]) else {
        return false;
    };
    // (A place above `i64::MAX` is left to the general path, as `write_value` leaves it.)
    let value = addr
        .checked_add(u64::from(e.offset))
        .and_then(|place| i64::try_from(place).ok())
        .and_then(|place| (s as i64).checked_add(e.addend)?.checked_sub(place))
        .and_then(|x| i32::try_from(x).ok());
    let field = dst
        .get_mut(e.offset as usize..)
        .and_then(|b| b.first_chunk_mut::<4>());
    match (value, field) {
        (Some(v), Some(field)) => {
            *field = v.to_le_bytes();
            true
        }
        _ => false,
    }
}

/// The address of `s` when it has one: an absolute symbol's, or a symbol's in a block that is
/// not thread-local. `None` for any other ([`address`] says why). (Always inline: the straight
/// path of a JIT's call reads it.)
#[inline(always)]
fn plain_address(g: &LinkGraph, s: &Symbol) -> Option<u64> {
    match s.def {
        SymbolDef::Absolute(a) => Some(a),
        SymbolDef::Defined { block, offset } => {
            let blk = &g.blocks[block.idx()];
            (g.sections[blk.section.idx()].kind != SectionKind::Tls).then(|| blk.addr + offset)
        }
        _ => None,
    }
}

/// S for edge `e`, as its fixup used it (`None` if it has none: the link would have failed).
pub(super) fn target_value_of(g: &LinkGraph, e: &Edge, ctx: &FixupContext) -> Option<u64> {
    target_value(g, e, e.kind.info(), ctx).ok()
}

/// Why a fixup failed: its target has no value it can use, or the architecture refused it.
enum Why {
    Target(&'static str),
    Fixup(FixupError),
}

/// S for edge `e`: what the kind's row (`info`) says its target value is. (Inlined: the writer
/// calls it for every edge; as a call, about 11 instructions an edge more.)
#[inline(always)]
fn target_value(
    g: &LinkGraph,
    e: &Edge,
    info: &EdgeInfo,
    ctx: &FixupContext,
) -> std::result::Result<u64, Why> {
    let s = &g.symbols[e.target.idx()];
    let tls_offset = || match s.def {
        SymbolDef::Defined { block, offset } => Some(g.blocks[block.idx()].tls_offset + offset),
        _ => None,
    };
    match info.value {
        TargetValue::None => Ok(0),
        TargetValue::TlsModule => Ok(ctx.tls_module),
        TargetValue::Size => Ok(s.size),
        TargetValue::TlsBlockOffset => match s.def {
            SymbolDef::Absolute(0) => Ok(0),
            _ => tls_offset().ok_or(Why::Target(
                "the thread-local symbol is not defined in this unit",
            )),
        },
        TargetValue::ThreadPointerOffset => {
            let tp = ctx.tp_offset.ok_or(Why::Target(
                "the unit has no static TLS block (internal error)",
            ))?;
            match (tls_offset(), s.def) {
                (Some(off), _) => Ok(tp.wrapping_add(off as i64) as u64),
                (None, SymbolDef::Absolute(v)) if s.tls => Ok(tp.wrapping_add(v as i64) as u64),
                _ => Err(Why::Target(
                    "the thread-local symbol is not defined in this unit (local-exec and \
                     initial-exec references to host TLS are not supported)",
                )),
            }
        }
        TargetValue::Address => address(g, s),
    }
}

fn address(g: &LinkGraph, s: &Symbol) -> std::result::Result<u64, Why> {
    plain_address(g, s).ok_or_else(|| no_address(s))
}

/// Why `s` has no address ([`plain_address`] gave none).
#[cold]
fn no_address(s: &Symbol) -> Why {
    Why::Target(match s.def {
        SymbolDef::Defined { .. } => "a thread-local symbol is referenced by a non-TLS relocation",
        SymbolDef::Discarded => {
            "the target lies in a discarded section (a duplicate COMDAT group, or a section kiln \
             does not load)"
        }
        SymbolDef::Absolute(_) | SymbolDef::Undefined | SymbolDef::Common { .. } => {
            "the target is undefined"
        }
    })
}

fn fixup_failure(g: &LinkGraph, b: BlockId, e: &Edge, target_value: u64, why: Why) -> Error {
    let info = e.kind.info();
    let host =
        matches!(g.symbols[e.target.idx()].def, SymbolDef::Absolute(a) if a > u64::from(u32::MAX));
    let hint = (host && info.reach == Reach::Absolute32).then_some(
        "non-PIE code reaches this host symbol with an absolute 32-bit address, which would \
         need a copy relocation (a JIT cannot make one): compile with -fPIE or -fPIC",
    );
    let sec = g.section_of(b);
    let blk = &g.blocks[b.idx()];
    let (error, target_problem) = match why {
        Why::Fixup(f) => (Some(f), None),
        Why::Target(t) => (None, Some(t)),
    };
    Error::Fixup(Box::new(FixupFailure {
        file: g.input_name(sec.input).to_string(),
        section: String::from_utf8_lossy(sec.name).into_owned(),
        offset: u64::from(e.offset),
        address: blk.addr + u64::from(e.offset),
        relocation: info.relocation,
        kind: info.name,
        target: g.name_of(e.target),
        target_value,
        addend: e.addend,
        error,
        target_problem,
        hint,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::EdgeKind as X86;
    use crate::arch::{write_value, EdgeKind};

    /// [`plain_address`] is what [`address`] gives, and `None` wherever that fails: a symbol
    /// defined in code, data and TLS blocks, absolute, undefined, common, discarded.
    #[test]
    fn a_plain_address_is_the_general_one() {
        use kiln_target::MemProt;
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let mut g = LinkGraph::new(arch);
        let input = g.add_input("t", true);
        let mut blocks = Vec::new();
        for (kind, addr) in [
            (SectionKind::Regular, 0x7000_1000u64),
            (SectionKind::Tls, 0x7000_2000),
            (SectionKind::Regular, 0),
        ] {
            let section = g.add_section(Section {
                name: b".s",
                prot: MemProt::Read,
                kind,
                input,
                retain: false,
                elf_index: 0,
            });
            let b = g.add_block(section, Content::Zero(64), 8);
            g.blocks[b.idx()].addr = addr;
            blocks.push(b);
        }
        let mut defs = vec![
            SymbolDef::Absolute(0),
            SymbolDef::Absolute(u64::MAX),
            SymbolDef::Undefined,
            SymbolDef::Common { size: 8, align: 8 },
            SymbolDef::Discarded,
        ];
        for &block in &blocks {
            for offset in [0u64, 8, 63] {
                defs.push(SymbolDef::Defined { block, offset });
            }
        }
        let (mut some, mut none) = (0, 0);
        for def in defs {
            let id = g.add_local(def, input);
            let general = address(&g, &g.symbols[id.idx()]).ok();
            assert_eq!(plain_address(&g, &g.symbols[id.idx()]), general, "{def:?}");
            if general.is_some() {
                some += 1;
            } else {
                none += 1;
            }
        }
        assert!(some >= 8 && none >= 6, "{some} {none}");
    }

    /// A graph with one host symbol at `target`.
    fn graph_with_host(target: u64) -> (LinkGraph<'static>, SymbolId) {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let mut g = LinkGraph::new(arch);
        let input = g.add_input("t", true);
        let host = g.add_symbol(crate::graph::fixtures::function_symbol(
            b"host",
            SymbolDef::Absolute(target),
            input,
        ));
        (g, host)
    }

    /// The straight path writes what the general one (`write_value` with the kind's row)
    /// writes, and leaves to it whatever it does not write: values at the edges of int32,
    /// places above `i64::MAX`, fields past the buffer, kinds of other rows.
    #[test]
    fn plain_pc_relative_32_is_written_as_the_general_path_writes_it() {
        let kinds = [
            X86::BranchPCRel32,
            X86::Delta32,
            X86::Pointer64,
            X86::Delta64,
        ];
        let addrs = [
            0x1000u64,
            0x7fff_0000_0000,
            i64::MAX as u64 - 4,
            1 << 63,
            u64::MAX - 2,
        ];
        let targets = [
            0u64,
            0x1000,
            0x1000 + (1 << 31) - 1,
            0x1000 + (1 << 31),
            0x7fff_8000_0000,
            0x7fff_0000_0000 - (1 << 31),
            u64::MAX,
        ];
        let (mut written, mut declined) = (0, 0);
        for kind in kinds {
            for &addr in &addrs {
                for &target in &targets {
                    for addend in [-4i64, 0, 8, i64::MIN, i64::MAX] {
                        for offset in [0u32, 4, 6] {
                            let (g, host) = graph_with_host(target);
                            let e = Edge {
                                offset,
                                kind: EdgeKind::from(kind),
                                target: host,
                                addend,
                            };
                            let mut fast = [0xaau8; 8];
                            let mut general = [0xaau8; 8];
                            if !write_plain_pc_relative_32(&g, addr, &e, &mut fast) {
                                assert_eq!(fast, [0xaa; 8], "nothing written when declined");
                                declined += 1;
                                continue;
                            }
                            written += 1;
                            let v = FixupValues {
                                target,
                                addend,
                                place: addr + u64::from(offset),
                                got: 0,
                            };
                            let r = write_value(e.kind.info(), &mut general, offset as usize, v);
                            assert_eq!(r, Ok(()), "{kind:?} {addr:#x} {target:#x} {addend}");
                            assert_eq!(fast, general, "{kind:?} {addr:#x} {target:#x} {addend}");
                        }
                    }
                }
            }
        }
        assert!(
            written > 50 && declined > 50,
            "{written} written, {declined} declined"
        );
    }
}

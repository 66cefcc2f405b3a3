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

/// Copy block `b` to the start of `dst` and apply its edges there. Each edge's row is looked up
/// once; kinds that only write their formula's value are written here, without a call through
/// the architecture ([`crate::arch::EdgeInfo::rewrites`]).
fn fixup_block(g: &LinkGraph, b: BlockId, dst: &mut [u8], ctx: &FixupContext) -> Result<()> {
    let blk = &g.blocks[b.idx()];
    let Content::Bytes(bytes) = &blk.content else {
        return Ok(());
    };
    let dst = &mut dst[..bytes.len()];
    dst.copy_from_slice(bytes);
    for e in &blk.edges {
        let info = e.kind.info();
        let s = target_value(g, e, info, ctx).map_err(|why| fixup_failure(g, b, e, 0, why))?;
        let v = FixupValues {
            target: s,
            addend: e.addend,
            place: blk.addr + u64::from(e.offset),
            got: ctx.got_base,
        };
        let off = e.offset as usize;
        let applied = if info.rewrites {
            g.arch.apply_fixup(e.kind, dst, off, v)
        } else {
            crate::arch::write_value(info, dst, off, v)
        };
        applied.map_err(|err| fixup_failure(g, b, e, s, Why::Fixup(err)))?;
    }
    Ok(())
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
    match s.def {
        SymbolDef::Defined { block, offset } => {
            let blk = &g.blocks[block.idx()];
            if g.sections[blk.section.idx()].kind == SectionKind::Tls {
                return Err(Why::Target(
                    "a thread-local symbol is referenced by a non-TLS relocation",
                ));
            }
            Ok(blk.addr + offset)
        }
        SymbolDef::Absolute(a) => Ok(a),
        SymbolDef::Discarded => Err(Why::Target(
            "the target lies in a discarded section (a duplicate COMDAT group, or a section kiln \
             does not load)",
        )),
        SymbolDef::Undefined | SymbolDef::Common { .. } => {
            Err(Why::Target("the target is undefined"))
        }
    }
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

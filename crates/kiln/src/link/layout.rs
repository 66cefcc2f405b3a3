//! Layout (segments and addresses) and fixups (applying every edge in working memory).

use crate::arch::x86_64::{self as arch, EdgeKind};
use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;

/// One segment of the unit: blocks of one protection, contiguous, page aligned.
#[derive(Debug)]
pub struct SegmentLayout {
    pub prot: MemProt,
    pub addr: u64,
    /// Bytes with content (working memory is this long), then `zero_size` bytes of zeros.
    pub content_size: u64,
    pub zero_size: u64,
    pub blocks: Vec<BlockId>,
}

#[derive(Debug, Default)]
pub struct TlsLayout {
    pub image_addr: u64,
    pub image_size: u64,
    pub block_size: u64,
    pub align: u64,
}

#[derive(Debug)]
pub struct Layout {
    pub segments: Vec<SegmentLayout>,
    pub tls: Option<TlsLayout>,
    pub size: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Ordering inside a segment: content first, eh_frame records together and their terminator last
/// among them, the TLS image in one piece, zero fill at the end; otherwise input order.
fn class(g: &LinkGraph, b: BlockId) -> u8 {
    let blk = &g.blocks[b.idx()];
    let sec = &g.sections[blk.section.idx()];
    match sec.kind {
        SectionKind::Tls => 3,
        SectionKind::EhFrame => 1,
        SectionKind::EhFrameTerminator => 2,
        _ if blk.is_zero_fill() => 9,
        _ => 0,
    }
}

/// Assign addresses starting at `base`, segments page aligned and consecutive: the layout of a
/// unit in a reservation of its own.
pub fn layout(g: &mut LinkGraph, base: u64, page: u64) -> Result<Layout> {
    let mut cursor = base;
    let mut l = layout_with(g, page, &mut |_, size, _| {
        let start = align_up(cursor, page);
        cursor = start + size;
        Ok(start)
    })?;
    l.size = align_up(cursor, page) - base;
    Ok(l)
}

/// The protection classes, in the order segments are laid out.
pub const PROTS: [MemProt; 3] = [MemProt::ReadExec, MemProt::Read, MemProt::ReadWrite];

/// Assign addresses: for each non-empty protection class (index into [`PROTS`]), `place` is
/// asked for the start of a range of `size` bytes aligned to `align`.
pub fn layout_with(
    g: &mut LinkGraph,
    page: u64,
    place: &mut dyn FnMut(usize, u64, u64) -> Result<u64>,
) -> Result<Layout> {
    let mut per: [Vec<(u8, BlockId)>; 3] = Default::default();
    let mut tbss: Vec<BlockId> = Vec::new();
    for i in 0..g.blocks.len() {
        let b = BlockId(i as u32);
        let blk = &g.blocks[i];
        if !blk.live {
            continue;
        }
        let sec = &g.sections[blk.section.idx()];
        if sec.kind == SectionKind::Tls && blk.is_zero_fill() {
            tbss.push(b);
            continue;
        }
        let slot = PROTS.iter().position(|p| *p == sec.prot).unwrap_or(1);
        per[slot].push((class(g, b), b));
    }
    let mut segments = Vec::new();
    let mut tls = TlsLayout {
        align: 1,
        ..Default::default()
    };
    let mut has_tls = !tbss.is_empty();
    let mut image_rel = 0u64;
    for (slot, list) in per.iter_mut().enumerate() {
        if list.is_empty() {
            continue;
        }
        list.sort_by_key(|(c, b)| (*c, *b));
        // Offsets relative to a start aligned to `align`, the largest alignment in the class.
        let mut align = 1u64;
        let mut rel: Vec<u64> = Vec::with_capacity(list.len());
        let mut cursor = 0u64;
        let mut content_end = 0u64;
        let mut tls_started = false;
        for &(c, b) in list.iter() {
            let balign = g.blocks[b.idx()].align;
            align = align.max(balign);
            if c == 3 {
                tls.align = tls.align.max(balign);
                if !tls_started {
                    // The image starts at a page-aligned offset so that offsets in it are
                    // offsets in every thread's block whatever the TLS alignment.
                    tls_started = true;
                    has_tls = true;
                    let a = 4096.min(page);
                    align = align.max(a);
                    cursor = align_up(cursor, a);
                    image_rel = cursor;
                }
            }
            cursor = align_up(cursor, balign);
            rel.push(cursor);
            let size = g.blocks[b.idx()].size();
            cursor = cursor
                .checked_add(size)
                .filter(|c| *c < (1 << 40))
                .ok_or_else(|| Error::Usage("the unit is too large to lay out".into()))?;
            if c == 3 {
                tls.image_size = cursor - image_rel;
            }
            if c != 9 {
                content_end = cursor;
            }
        }
        let start = place(slot, cursor, align)?;
        for (&(c, b), r) in list.iter().zip(rel) {
            let blk = &mut g.blocks[b.idx()];
            blk.addr = start + r;
            if c == 3 {
                blk.tls_offset = r - image_rel;
            }
        }
        if tls_started {
            tls.image_addr = start + image_rel;
        }
        segments.push(SegmentLayout {
            prot: PROTS[slot],
            addr: start,
            content_size: content_end,
            zero_size: cursor - content_end,
            blocks: list.iter().map(|(_, b)| *b).collect(),
        });
    }
    if has_tls {
        let mut off = tls.image_size;
        for b in tbss {
            let blk = &mut g.blocks[b.idx()];
            tls.align = tls.align.max(blk.align);
            off = align_up(off, blk.align);
            blk.tls_offset = off;
            off += blk.size();
        }
        tls.block_size = align_up(off.max(1), tls.align);
        if tls.align > page {
            return Err(Error::Usage(format!(
                "TLS alignment {} is larger than a page",
                tls.align
            )));
        }
    }
    Ok(Layout {
        segments,
        tls: has_tls.then_some(tls),
        size: 0,
    })
}

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
        if (buf.len() as u64) < seg.content_size {
            return Err(Error::Usage(
                "internal: working memory smaller than its segment".into(),
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

/// Copy block `b` to the start of `dst` and apply its edges there.
fn fixup_block(g: &LinkGraph, b: BlockId, dst: &mut [u8], ctx: &FixupContext) -> Result<()> {
    let blk = &g.blocks[b.idx()];
    let Content::Bytes(bytes) = &blk.content else {
        return Ok(());
    };
    let dst = &mut dst[..bytes.len()];
    dst.copy_from_slice(bytes);
    for e in &blk.edges {
        if e.kind == EdgeKind::KeepAlive {
            continue;
        }
        let s = target_value(g, e, ctx).map_err(|why| fixup_error(g, b, e, why))?;
        let p = blk.addr + e.offset as u64;
        arch::apply(e.kind, dst, e.offset as usize, p, s, e.addend, ctx.got_base).map_err(|r| {
            fixup_error(
                g,
                b,
                e,
                format!(
                    "value {:#x} (target {s:#x}, addend {}, at {p:#x}) does not fit in {}",
                    r.value, e.addend, r.bits
                ),
            )
        })?;
    }
    Ok(())
}

fn target_value(g: &LinkGraph, e: &Edge, ctx: &FixupContext) -> std::result::Result<u64, String> {
    let s = &g.symbols[e.target.idx()];
    match e.kind {
        EdgeKind::TlsModule64 => return Ok(ctx.tls_module),
        EdgeKind::Size32 | EdgeKind::Size64 => return Ok(s.size),
        EdgeKind::DtpOff32 | EdgeKind::DtpOff64 => {
            return match s.def {
                SymbolDef::Defined { block, offset } => {
                    Ok(g.blocks[block.idx()].tls_offset + offset)
                }
                SymbolDef::Absolute(0) => Ok(0),
                _ => Err("thread-local symbol is not defined in this unit".into()),
            }
        }
        EdgeKind::TpOff32 | EdgeKind::TpOff64 | EdgeKind::TlsDescToLocalExec => {
            let tp = ctx
                .tp_offset
                .ok_or("the unit has no static TLS block (internal error)")?;
            return match s.def {
                SymbolDef::Defined { block, offset } => {
                    Ok((tp + (g.blocks[block.idx()].tls_offset + offset) as i64) as u64)
                }
                SymbolDef::Absolute(v) if s.tls => Ok((tp + v as i64) as u64),
                _ => Err(
                    "thread-local symbol is not defined in this unit (local-exec and \
                          initial-exec references to host TLS are not supported)"
                        .into(),
                ),
            };
        }
        EdgeKind::TlsDescCallToNop => return Ok(0),
        _ => {}
    }
    match s.def {
        SymbolDef::Defined { block, offset } => {
            let blk = &g.blocks[block.idx()];
            if g.sections[blk.section.idx()].kind == SectionKind::Tls {
                return Err("a thread-local symbol is referenced by a non-TLS relocation".into());
            }
            Ok(blk.addr + offset)
        }
        SymbolDef::Absolute(a) => Ok(a),
        SymbolDef::Discarded => Err("the target lies in a discarded section (a duplicate COMDAT group, or a section kiln does not load)".into()),
        SymbolDef::Undefined | SymbolDef::Common { .. } => Err("the target is undefined".into()),
    }
}

fn fixup_error(g: &LinkGraph, b: BlockId, e: &Edge, mut why: String) -> Error {
    let host =
        matches!(g.symbols[e.target.idx()].def, SymbolDef::Absolute(a) if a > u32::MAX as u64);
    if host && matches!(e.kind, EdgeKind::Pointer32 | EdgeKind::Pointer32Signed) {
        why.push_str(
            "; non-PIE code reaches this host symbol with an absolute 32-bit address, which would \
             need a copy relocation (a JIT cannot make one): compile with -fPIE or -fPIC",
        );
    }
    let sec = g.section_of(b);
    let blk = &g.blocks[b.idx()];
    Error::Fixup(format!(
        "{}: section {}, offset {:#x} (address {:#x}): {} ({:?}) fixup to {}: {why}",
        g.input_name(sec.input),
        String::from_utf8_lossy(sec.name),
        e.offset,
        blk.addr + e.offset as u64,
        e.kind.elf_name(),
        e.kind,
        g.name_of(e.target),
    ))
}

//! Layout: which blocks go into which segment, in what order, at which address.

use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;
use smallvec::SmallVec;

/// A segment's blocks, in layout order (inline up to a few: a JIT's unit allocates no list).
pub type SegmentBlocks = SmallVec<[BlockId; 4]>;

/// One segment of the unit: blocks of one protection, contiguous.
#[derive(Debug)]
pub struct SegmentLayout {
    pub prot: MemProt,
    pub addr: u64,
    /// Bytes with content (working memory is this long), then `zero_size` bytes of zeros.
    pub content_size: u64,
    pub zero_size: u64,
    /// The alignment its start needs (its blocks' largest): a move keeps it.
    pub align: u64,
    pub blocks: SegmentBlocks,
}

#[derive(Debug, Default)]
pub struct TlsLayout {
    pub image_addr: u64,
    pub image_size: u64,
    pub block_size: u64,
    pub align: u64,
}

/// (Filled in place, [`layout_with`]: the caller keeps it where the link's steps read it, not
/// returned and moved, about 200 bytes each time.)
#[derive(Debug, Default)]
pub struct Layout {
    /// One per protection class at most (inline: no allocation).
    pub segments: SmallVec<[SegmentLayout; 3]>,
    pub tls: Option<TlsLayout>,
    /// Bytes from the first segment's start to the last one's end, page aligned (for a unit in
    /// a reservation of its own; 0 for a unit in slabs).
    pub size: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Where a block goes inside its segment. Blocks are ordered by class, then by input order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    /// Ordinary content.
    Content,
    /// `.eh_frame` records, together...
    EhFrame,
    /// ...and their zero terminator right after them.
    EhFrameTerminator,
    /// The TLS image (`.tdata`), in one piece.
    TlsImage,
    /// Zero fill, at the end (it needs no working memory).
    ZeroFill,
}

fn place_of(g: &LinkGraph, b: BlockId) -> Place {
    let blk = &g.blocks[b.idx()];
    match g.sections[blk.section.idx()].kind {
        SectionKind::Tls => Place::TlsImage,
        SectionKind::EhFrame => Place::EhFrame,
        SectionKind::EhFrameTerminator => Place::EhFrameTerminator,
        _ if blk.is_zero_fill() => Place::ZeroFill,
        _ => Place::Content,
    }
}

/// The protection classes, in the order segments are laid out.
pub const PROTS: [MemProt; 3] = [MemProt::ReadExec, MemProt::Read, MemProt::ReadWrite];

/// The index of `prot` in [`PROTS`].
pub fn prot_slot(prot: MemProt) -> usize {
    match prot {
        MemProt::ReadExec => 0,
        MemProt::Read => 1,
        MemProt::ReadWrite => 2,
    }
}

/// Assign addresses starting at `base`, segments page aligned and consecutive: the layout of a
/// unit in a reservation of its own, into `out` (an empty layout).
pub fn layout_at(g: &mut LinkGraph, base: u64, page: u64, out: &mut Layout) -> Result<()> {
    let mut cursor = base;
    layout_with(g, page, out, &mut |_, size, _| {
        let start = align_up(cursor, page);
        cursor = start + size;
        Ok(start)
    })?;
    out.size = align_up(cursor, page) - base;
    Ok(())
}

/// A segment's blocks at offsets from its start, before the start is known.
struct Planned {
    offsets: SmallVec<[u64; 4]>,
    /// The largest alignment of its blocks: the start must be aligned to it.
    align: u64,
    size: u64,
    content_size: u64,
    /// Offset of the TLS image in the segment, if it has one.
    tls_image: Option<u64>,
}

/// Assign addresses into `out` (an empty layout, [`Layout::default`]): for each non-empty
/// protection class (index into [`PROTS`]), `place` is asked for the start of a range of
/// `size` bytes aligned to `align`.
///
/// Generic over `place` only for the one-block path (small, inlined at each of the two callers,
/// with `place` inlined into it); the general path takes it as a `dyn` closure.
#[inline]
pub fn layout_with(
    g: &mut LinkGraph,
    page: u64,
    out: &mut Layout,
    place: &mut impl FnMut(usize, u64, u64) -> Result<u64>,
) -> Result<()> {
    // A JIT's unit is one block most of the time: its one segment is that block, with no
    // lists to fill and sort (what follows costs it about 400 instructions; this about 60).
    match only_block(g) {
        Some(b) => layout_one_block(g, b, out, place),
        None => layout_blocks(g, page, out, place),
    }
}

/// [`layout_with`] for any unit: blocks sorted into segments by protection and place.
fn layout_blocks(
    g: &mut LinkGraph,
    page: u64,
    layout: &mut Layout,
    place: &mut dyn FnMut(usize, u64, u64) -> Result<u64>,
) -> Result<()> {
    // (Filled in place: returned, the lists were copied once more, ~170 bytes.)
    let mut per_prot: [Placed; 3] = Default::default();
    let mut tbss = SmallVec::new();
    blocks_by_prot(g, &mut per_prot, &mut tbss);
    let mut tls = TlsLayout {
        align: 1,
        ..Default::default()
    };
    for (slot, blocks) in per_prot.iter().enumerate() {
        if blocks.is_empty() {
            continue;
        }
        let plan = plan_segment(g, blocks, page, &mut tls)?;
        let start = place(slot, plan.size, plan.align)?;
        for (&(p, b), off) in blocks.iter().zip(&plan.offsets) {
            let blk = &mut g.blocks[b.idx()];
            blk.addr = start + off;
            if let (Place::TlsImage, Some(image)) = (p, plan.tls_image) {
                blk.tls_offset = off - image;
            }
        }
        if let Some(image) = plan.tls_image {
            tls.image_addr = start + image;
        }
        layout.segments.push(SegmentLayout {
            prot: PROTS[slot],
            addr: start,
            content_size: plan.content_size,
            zero_size: plan.size - plan.content_size,
            align: plan.align,
            blocks: blocks.iter().map(|(_, b)| *b).collect(),
        });
    }
    let has_tls = segments_hold_tls(g);
    if has_tls {
        layout_tbss(g, &tbss, &mut tls, page)?;
        layout.tls = Some(tls);
    }
    Ok(())
}

/// The unit's block if it has exactly one live block and that is not thread-local (a TLS block
/// needs the TLS layout).
fn only_block(g: &LinkGraph) -> Option<BlockId> {
    let mut live = g.blocks.iter().enumerate().filter(|(_, b)| b.live);
    let (i, blk) = live.next()?;
    if live.next().is_some() || g.sections[blk.section.idx()].kind == SectionKind::Tls {
        return None;
    }
    Some(BlockId(i as u32))
}

/// The layout of a unit whose only block is `b`: what [`plan_segment`] makes of one block (at
/// offset 0 of a segment aligned to it), without the lists.
#[inline]
fn layout_one_block(
    g: &mut LinkGraph,
    b: BlockId,
    layout: &mut Layout,
    place: &mut impl FnMut(usize, u64, u64) -> Result<u64>,
) -> Result<()> {
    let blk = &g.blocks[b.idx()];
    let slot = prot_slot(g.sections[blk.section.idx()].prot);
    let size = Some(blk.size())
        .filter(|s| *s < (1 << 40))
        .ok_or_else(too_large)?;
    let align = blk.align.max(1);
    let content_size = if place_of(g, b) == Place::ZeroFill {
        0
    } else {
        size
    };
    let start = place(slot, size, align)?;
    g.blocks[b.idx()].addr = start;
    layout.segments.push(SegmentLayout {
        prot: PROTS[slot],
        addr: start,
        content_size,
        zero_size: size - content_size,
        align,
        blocks: smallvec::smallvec![b],
    });
    Ok(())
}

#[cold]
#[inline(never)]
fn too_large() -> Error {
    Error::Usage("the unit is too large to lay out".into())
}

/// Blocks of one protection class with their places (inline up to a few).
type Placed = SmallVec<[(Place, BlockId); 4]>;

/// Live blocks per protection class into `per`, sorted as they will be laid out; `.tbss` blocks
/// into `tbss` (they occupy no memory of the unit: only each thread's TLS block).
fn blocks_by_prot(g: &LinkGraph, per: &mut [Placed; 3], tbss: &mut SmallVec<[BlockId; 4]>) {
    for (i, blk) in g.blocks.iter().enumerate() {
        let b = BlockId(i as u32);
        if !blk.live {
            continue;
        }
        let sec = &g.sections[blk.section.idx()];
        if sec.kind == SectionKind::Tls && blk.is_zero_fill() {
            tbss.push(b);
            continue;
        }
        per[prot_slot(sec.prot)].push((place_of(g, b), b));
    }
    for list in per.iter_mut() {
        list.sort_by_key(|(p, b)| (*p, *b));
    }
}

/// Whether the unit has thread-local storage (`.tdata` or `.tbss` blocks).
fn segments_hold_tls(g: &LinkGraph) -> bool {
    g.may_have(SectionKind::Tls.bit())
        && g.blocks
            .iter()
            .any(|b| b.live && g.sections[b.section.idx()].kind == SectionKind::Tls)
}

/// Offsets of a segment's blocks from its (aligned) start.
fn plan_segment(
    g: &LinkGraph,
    blocks: &[(Place, BlockId)],
    page: u64,
    tls: &mut TlsLayout,
) -> Result<Planned> {
    let mut p = Planned {
        offsets: SmallVec::with_capacity(blocks.len()),
        align: 1,
        size: 0,
        content_size: 0,
        tls_image: None,
    };
    for &(place, b) in blocks {
        let blk = &g.blocks[b.idx()];
        p.align = p.align.max(blk.align);
        if place == Place::TlsImage {
            tls.align = tls.align.max(blk.align);
            if p.tls_image.is_none() {
                // The image starts at a page-aligned offset so that offsets in it are offsets
                // in every thread's block whatever the TLS alignment.
                let a = 4096.min(page);
                p.align = p.align.max(a);
                p.size = align_up(p.size, a);
                p.tls_image = Some(p.size);
            }
        }
        p.size = align_up(p.size, blk.align);
        p.offsets.push(p.size);
        p.size = p
            .size
            .checked_add(blk.size())
            .filter(|c| *c < (1 << 40))
            .ok_or_else(|| Error::Usage("the unit is too large to lay out".into()))?;
        if let Some(image) = p.tls_image.filter(|_| place == Place::TlsImage) {
            tls.image_size = p.size - image;
        }
        if place != Place::ZeroFill {
            p.content_size = p.size;
        }
    }
    Ok(p)
}

/// `.tbss` follows the TLS image in each thread's block.
fn layout_tbss(g: &mut LinkGraph, tbss: &[BlockId], tls: &mut TlsLayout, page: u64) -> Result<()> {
    let mut off = tls.image_size;
    for &b in tbss {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph of one live block (`kind`, `prot`, `content`, `align`) after a dead one.
    fn one_block_graph<'a>(
        kind: SectionKind,
        prot: MemProt,
        content: Content<'a>,
        align: u64,
    ) -> LinkGraph<'a> {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let mut g = LinkGraph::new(arch);
        let input = g.add_input("t", true);
        let section = g.add_section(Section {
            name: b"s",
            prot,
            kind,
            input,
            retain: false,
            elf_index: 0,
        });
        g.add_block(section, Content::Zero(8), 8);
        let b = g.add_block(section, content, align);
        g.blocks[b.idx()].live = true;
        g
    }

    /// The one-block layout is what the general one makes of that block: same segment, same
    /// request to `place`, same address for the block.
    #[test]
    fn one_block_layout_matches_the_general_layout() {
        let code = [0x90u8; 37];
        let cases = [
            (SectionKind::Regular, MemProt::ReadExec, 16, false),
            (SectionKind::Regular, MemProt::ReadWrite, 64, true),
            (SectionKind::Regular, MemProt::Read, 1, false),
            (SectionKind::EhFrameTerminator, MemProt::Read, 4, true),
        ];
        for (kind, prot, align, zero) in cases {
            let content = || {
                if zero {
                    Content::Zero(40)
                } else {
                    Content::Bytes(code[..].into())
                }
            };
            let mut asked = Vec::new();
            let mut place = |slot: usize, size: u64, align: u64| {
                asked.push((slot, size, align));
                Ok(0x10_0000 + 0x1000 * asked.len() as u64)
            };
            let mut one = one_block_graph(kind, prot, content(), align);
            assert_eq!(only_block(&one), Some(BlockId(1)));
            let (mut a, mut b) = (Layout::default(), Layout::default());
            layout_with(&mut one, 4096, &mut a, &mut place).unwrap();
            let mut general = one_block_graph(kind, prot, content(), align);
            layout_blocks(&mut general, 4096, &mut b, &mut place).unwrap();
            assert_eq!(asked[0], asked[1], "{kind:?} {prot:?}: the same request");
            assert_eq!(asked[0].1, if zero { 40 } else { 37 });
            let (sa, sb) = (&a.segments[..], &b.segments[..]);
            assert_eq!((sa.len(), sb.len()), (1, 1));
            assert_eq!(sa[0].prot, sb[0].prot);
            assert_eq!(
                (sa[0].content_size, sa[0].zero_size, sa[0].align),
                (sb[0].content_size, sb[0].zero_size, sb[0].align),
                "{kind:?} {prot:?}"
            );
            assert_eq!(sa[0].blocks[..], sb[0].blocks[..]);
            assert_eq!(one.blocks[1].addr, sa[0].addr);
            assert_eq!(general.blocks[1].addr, sb[0].addr);
            assert!(a.tls.is_none() && b.tls.is_none());
        }
    }

    /// A unit whose only block is thread-local takes the general path (it needs a TLS layout).
    #[test]
    fn a_lone_tls_block_is_not_a_one_block_unit() {
        let g = one_block_graph(SectionKind::Tls, MemProt::Read, Content::Zero(8), 8);
        assert_eq!(only_block(&g), None);
    }
}

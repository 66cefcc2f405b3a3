//! Relink records: what a unit keeps of its edges so that they can be applied again after code
//! moved (compaction) or a target changed (redefinition), without the graph.
//!
//! Each edge is kept as (segment, offset, kind, addend, target), the target named by where it
//! lies: inside the unit (segment, offset), or at an absolute address (which the session
//! classifies further as a place inside another unit). Memory: a `RelinkEdge` (40 bytes) per
//! edge, and 16 more in the target's list of incoming edges when the target is another unit
//! (`Session::relink_bytes` counts what a unit holds).

use super::layout::Layout;
use crate::arch::{EdgeKind, FixupError, FixupValues, TargetValue};
use crate::graph::*;

/// What a unit keeps of its edges. See the module docs.
#[derive(Debug, Clone)]
pub struct RelinkRecord {
    arch: &'static dyn crate::arch::Arch,
    /// The unit's segments when it was linked: (protection index 0 code / 1 read-only / 2 data,
    /// address, size).
    pub segments: Vec<(u8, u64, u64)>,
    /// The alignment each segment's start needs: where a move may put it.
    pub aligns: Vec<u64>,
    pub edges: Vec<RelinkEdge>,
    /// The unit's GOT: (segment, offset), if it has one (GOT-relative edges need it).
    pub got: Option<(u8, u64)>,
    /// False if an edge's value depends on where the unit is in a way a move cannot re-apply
    /// (its TLS module value is derived from its first address): such a unit must not move.
    pub movable: bool,
}

/// One edge: its field is `offset` bytes into `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelinkEdge {
    pub segment: u8,
    pub offset: u32,
    pub kind: EdgeKind,
    pub addend: i64,
    pub target: RelinkTarget,
}

/// Where an edge's target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelinkTarget {
    /// In the unit itself: `offset` bytes into `segment`.
    Internal { segment: u8, offset: u64 },
    /// At `offset` bytes into segment `segment` of another live unit of the session.
    Unit {
        unit: crate::UnitId,
        segment: u8,
        offset: u64,
    },
    /// A fixed address (the host, a definition), or a value that is not an address (a size, a
    /// TLS offset): it does not change when code moves.
    Absolute(u64),
}

/// The record of a laid-out unit: every edge of its live blocks (edges of `.tbss` and other
/// blocks without memory have none), with the target value each had.
pub(super) fn record(
    g: &LinkGraph,
    layout: &Layout,
    got: Option<BlockId>,
    value_of: &dyn Fn(&Edge) -> Option<u64>,
) -> RelinkRecord {
    let segment_of = |addr: u64| -> Option<(u8, u64)> {
        layout.segments.iter().enumerate().find_map(|(i, s)| {
            (s.addr <= addr && addr < s.addr + s.content_size + s.zero_size)
                .then(|| (i as u8, addr - s.addr))
        })
    };
    let mut rec = RelinkRecord {
        arch: g.arch,
        segments: layout
            .segments
            .iter()
            .map(|s| {
                let slot = super::layout::prot_slot(s.prot) as u8;
                (slot, s.addr, s.content_size + s.zero_size)
            })
            .collect(),
        aligns: layout.segments.iter().map(|s| s.align).collect(),
        edges: Vec::new(),
        got: got.and_then(|b| segment_of(g.blocks[b.idx()].addr)),
        movable: true,
    };
    for blk in g.blocks.iter().filter(|b| b.live && !b.is_zero_fill()) {
        let Some((segment, base)) = segment_of(blk.addr) else {
            continue; // .tbss and the like: no memory of the unit
        };
        for e in &blk.edges {
            let info = g.edge_info(e.kind);
            if info.width == 0 && e.kind == EdgeKind::KeepAlive {
                continue;
            }
            if info.value == TargetValue::TlsModule {
                rec.movable = false;
            }
            let target = match (info.value, g.symbols[e.target.idx()].def) {
                (TargetValue::Address, SymbolDef::Defined { block, offset }) => {
                    match segment_of(g.blocks[block.idx()].addr + offset) {
                        Some((segment, offset)) => RelinkTarget::Internal { segment, offset },
                        None => RelinkTarget::Absolute(value_of(e).unwrap_or(0)),
                    }
                }
                _ => RelinkTarget::Absolute(value_of(e).unwrap_or(0)),
            };
            rec.edges.push(RelinkEdge {
                segment,
                offset: (base + u64::from(e.offset)) as u32,
                kind: e.kind,
                addend: e.addend,
                target,
            });
        }
    }
    rec.edges.shrink_to_fit();
    rec
}

impl RelinkRecord {
    /// Write the edges `which` selects again into `bytes` (the unit's segments' current bytes,
    /// one slice per segment, now at `segment_addrs`), with each target's address now given by
    /// `target` (`None`: leave the edge as it is) and the unit's GOT at its segment's new
    /// address. What a fixup writes is checked as it was at link time (range, instruction).
    pub fn reapply(
        &self,
        segment_addrs: &[u64],
        bytes: &mut [&mut [u8]],
        which: &dyn Fn(usize) -> bool,
        target: &dyn Fn(&RelinkTarget) -> Option<u64>,
    ) -> Result<(), (usize, FixupError)> {
        let got = self
            .got
            .and_then(|(s, off)| Some(segment_addrs.get(usize::from(s))? + off))
            .unwrap_or(0);
        for (i, e) in self.edges.iter().enumerate().filter(|(i, _)| which(*i)) {
            let Some(s) = target(&e.target) else {
                continue;
            };
            let seg = usize::from(e.segment);
            let (Some(&base), Some(buf)) = (segment_addrs.get(seg), bytes.get_mut(seg)) else {
                return Err((i, FixupError::OutsideBlock));
            };
            let v = FixupValues {
                target: s,
                addend: e.addend,
                place: base + u64::from(e.offset),
                got,
            };
            self.arch
                .reapply_fixup(e.kind, buf, e.offset as usize, v)
                .map_err(|err| (i, err))?;
        }
        Ok(())
    }
}

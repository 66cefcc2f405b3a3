//! The memory a unit is linked into: a reservation of its own, or ranges of a shared slab. It
//! releases itself if the link fails, so that no error path leaves memory behind in the
//! executor.

use super::fixup::{apply_fixups, apply_fixups_into, FixupContext};
use super::layout::{layout_at, layout_with, Layout};
use crate::error::{Error, Result};
use crate::graph::LinkGraph;
use crate::memory::CodeMemory;
use kiln_target::{
    AllocId, Executor, ExecutorAddr, FinalizeRequest, MemProt, Placement, Segment, SlabId,
    SlabSegment, UnitActions,
};

/// The most segments a unit in slab memory has: one per slab region.
const SLAB_SEGMENTS: usize = 3;

pub(crate) struct UnitMemory<'x> {
    ex: &'x dyn Executor,
    place: Place<'x>,
    /// Set once the unit is finalized: the memory then belongs to it.
    kept: bool,
}

enum Place<'x> {
    Reservation {
        base: u64,
        size: u64,
    },
    Slab {
        memory: &'x dyn CodeMemory,
        id: SlabId,
        range: (u64, u64),
        /// What the unit holds so far.
        ranges: super::SlabRanges,
    },
}

impl<'x> UnitMemory<'x> {
    /// A reservation of `size` bytes of its own, placed as asked.
    pub fn reserve(ex: &'x dyn Executor, size: u64, placement: Placement) -> Result<Self> {
        let base = ex.reserve(size, placement)?.0;
        tracing::debug!("reserved {size:#x} bytes at {base:#x} ({placement:?})");
        Ok(UnitMemory {
            ex,
            place: Place::Reservation { base, size },
            kept: false,
        })
    }

    /// Room in a slab that lies within `placement` and can hold the unit's classes.
    pub fn in_slab(
        ex: &'x dyn Executor,
        memory: &'x dyn CodeMemory,
        placement: Placement,
        sizes: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<Self> {
        let (id, range) = memory.choose(ex, placement, sizes, aligns)?;
        Ok(UnitMemory {
            ex,
            place: Place::Slab {
                memory,
                id,
                range,
                ranges: super::SlabRanges::new(),
            },
            kept: false,
        })
    }

    /// Every address of the unit will lie in `[lo, hi)`.
    pub fn range(&self) -> (u64, u64) {
        match &self.place {
            Place::Reservation { base, size } => (*base, base + size),
            Place::Slab { range, .. } => *range,
        }
    }

    /// The reservation (base, size) the executor releases with the unit; (0, 0) in a slab.
    pub fn reservation(&self) -> (ExecutorAddr, u64) {
        match self.place {
            Place::Reservation { base, size } => (ExecutorAddr(base), size),
            Place::Slab { .. } => (ExecutorAddr(0), 0),
        }
    }

    /// Assign addresses to the unit's blocks.
    pub fn layout(&mut self, g: &mut LinkGraph, page: u64) -> Result<Layout> {
        match &mut self.place {
            Place::Reservation { base, size } => {
                let layout = layout_at(g, *base, page)?;
                if layout.size > *size {
                    return Err(Error::Internal(format!(
                        "layout {:#x} exceeds reservation {size:#x}",
                        layout.size
                    )));
                }
                Ok(layout)
            }
            Place::Slab {
                memory, id, ranges, ..
            } => layout_with(g, page, &mut |slot, size, align| {
                let r = memory.allocate(*id, slot, size, align)?;
                ranges.push(r);
                Ok(r.addr.0)
            }),
        }
    }

    /// Apply the fixups into the unit's working memory, let `read_back` read the final bytes
    /// (initializer arrays, debug objects, the link map) and say what the unit's finalize runs,
    /// and finalize it. In a slab the working memory is the slab's writable alias, and the
    /// executor takes the unit's ranges, writes and makes it live in one request
    /// ([`Executor::finalize_slab_unit`]); otherwise buffers that travel with the segments in
    /// a [`FinalizeRequest`].
    pub fn write_and_finalize<R>(
        &self,
        g: &LinkGraph,
        layout: &Layout,
        ctx: &FixupContext,
        read_back: impl FnOnce(&[&[u8]]) -> (R, UnitActions),
    ) -> Result<(R, AllocId)> {
        let Place::Slab { id, .. } = self.place else {
            return self.finalize_in_reservation(g, layout, ctx, read_back);
        };
        // A slab unit has a segment per protection class at most (one per slab region): fixed
        // arrays, not vectors, carry its segments.
        let n = layout.segments.len();
        if n > SLAB_SEGMENTS {
            return Err(Error::Internal(format!("{n} segments for one slab")));
        }
        let none = SlabSegment {
            addr: ExecutorAddr(0),
            size: 0,
            prot: MemProt::Read,
        };
        let mut segments = [none; SLAB_SEGMENTS];
        for (r, s) in segments.iter_mut().zip(&layout.segments) {
            *r = SlabSegment {
                addr: ExecutorAddr(s.addr),
                size: s.content_size + s.zero_size,
                prot: s.prot,
            };
        }
        let mut read_back = Some(read_back);
        let mut result = None;
        let alloc = self
            .ex
            .finalize_slab_unit(id, &segments[..n], &mut |bufs| {
                // The range may hold a removed unit's bytes: zero fill is written, not assumed.
                for (buf, seg) in bufs.iter_mut().zip(&layout.segments) {
                    if let Some(tail) = buf.get_mut(seg.content_size as usize..) {
                        tail.fill(0);
                    }
                }
                let read_back = read_back.take()?;
                // (`read_back` runs once: `result` is still `None` here, and `get_or_insert`
                // says so, where an assignment would drop the old value first.)
                if let Err(e) = apply_fixups_into(g, layout, ctx, bufs) {
                    result.get_or_insert(Err(e));
                    return None;
                }
                let mut refs: [&[u8]; SLAB_SEGMENTS] = [&[]; SLAB_SEGMENTS];
                for (r, b) in refs.iter_mut().zip(bufs.iter()) {
                    *r = b;
                }
                let (r, unit) = read_back(&refs[..bufs.len().min(SLAB_SEGMENTS)]);
                result.get_or_insert(Ok(r));
                Some(unit)
            })?;
        let result = result.ok_or_else(|| {
            Error::Internal("the executor did not provide the unit's slab memory".into())
        })??;
        let alloc = alloc.ok_or_else(|| {
            Error::Internal("the executor did not finalize the unit it wrote".into())
        })?;
        Ok((result, alloc))
    }

    /// [`UnitMemory::write_and_finalize`] for a unit in a reservation of its own: the bytes
    /// travel in the finalize request.
    fn finalize_in_reservation<R>(
        &self,
        g: &LinkGraph,
        layout: &Layout,
        ctx: &FixupContext,
        read_back: impl FnOnce(&[&[u8]]) -> (R, UnitActions),
    ) -> Result<(R, AllocId)> {
        let work = apply_fixups(g, layout, ctx)?;
        let refs: Vec<&[u8]> = work.iter().map(Vec::as_slice).collect();
        let (result, unit) = read_back(&refs);
        let segments = layout
            .segments
            .iter()
            .zip(work)
            .map(|(s, content)| Segment {
                addr: ExecutorAddr(s.addr),
                prot: s.prot,
                content,
                zero_fill: s.zero_size,
            })
            .collect();
        let alloc = self.ex.finalize(FinalizeRequest {
            reservation: self.reservation(),
            segments,
            actions: unit.actions,
            initializers: unit.initializers,
            deinitializers: unit.deinitializers,
            in_slab: false,
        })?;
        Ok((result, alloc))
    }

    /// The unit is finalized: its memory is its own now. Returns the slab ranges it holds.
    pub fn keep(mut self) -> super::SlabRanges {
        self.kept = true;
        match &mut self.place {
            Place::Slab { ranges, .. } => std::mem::take(ranges),
            Place::Reservation { .. } => super::SlabRanges::new(),
        }
    }
}

impl Drop for UnitMemory<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match &self.place {
            Place::Reservation { base, size } => {
                let _ = self.ex.release(ExecutorAddr(*base), *size);
            }
            Place::Slab { memory, ranges, .. } => memory.free(self.ex, ranges),
        }
    }
}

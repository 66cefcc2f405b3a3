//! The memory a unit is linked into: a reservation of its own, or ranges of a shared slab. It
//! releases itself if the link fails, so that no error path leaves memory behind in the
//! executor.

use super::fixup::{apply_fixups, apply_fixups_into, apply_segment_fixups, FixupContext};
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
    /// No memory yet ([`UnitMemory::unplaced`]): nothing to release.
    Unplaced,
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
    /// Memory to be placed by [`UnitMemory::reserve`] or [`UnitMemory::in_slab`]. (Made
    /// first and placed where the link keeps it: built by a function that returned it, the
    /// 168-byte value was moved out of the result.)
    pub fn unplaced(ex: &'x dyn Executor) -> Self {
        UnitMemory {
            ex,
            place: Place::Unplaced,
            kept: false,
        }
    }

    /// A reservation of `size` bytes of its own, placed as asked (for unplaced memory).
    pub fn reserve(&mut self, size: u64, placement: Placement) -> Result<()> {
        debug_assert!(matches!(self.place, Place::Unplaced));
        let base = self.ex.reserve(size, placement)?.0;
        tracing::debug!("reserved {size:#x} bytes at {base:#x} ({placement:?})");
        self.place = Place::Reservation { base, size };
        Ok(())
    }

    /// Room in a slab that lies within `placement` and can hold the unit's classes (for
    /// unplaced memory). (Inlined into the link's reserve.)
    #[inline]
    pub fn in_slab(
        &mut self,
        memory: &'x dyn CodeMemory,
        placement: Placement,
        sizes: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<()> {
        debug_assert!(matches!(self.place, Place::Unplaced));
        let (id, range) = memory.choose(self.ex, placement, sizes, aligns)?;
        self.place = Place::Slab {
            memory,
            id,
            range,
            ranges: super::SlabRanges::new(),
        };
        Ok(())
    }

    /// Every address of the unit will lie in `[lo, hi)`.
    pub fn range(&self) -> (u64, u64) {
        match &self.place {
            Place::Reservation { base, size } => (*base, base + size),
            Place::Slab { range, .. } => *range,
            Place::Unplaced => (0, 0),
        }
    }

    /// The reservation (base, size) the executor releases with the unit; (0, 0) in a slab.
    pub fn reservation(&self) -> (ExecutorAddr, u64) {
        match self.place {
            Place::Reservation { base, size } => (ExecutorAddr(base), size),
            Place::Slab { .. } | Place::Unplaced => (ExecutorAddr(0), 0),
        }
    }

    /// Assign addresses to the unit's blocks, into `layout` (an empty one: the caller's, filled
    /// in place).
    pub fn layout(&mut self, g: &mut LinkGraph, page: u64, layout: &mut Layout) -> Result<()> {
        match &mut self.place {
            Place::Reservation { base, size } => {
                layout_at(g, *base, page, layout)?;
                if layout.size > *size {
                    return Err(Error::Internal(format!(
                        "layout {:#x} exceeds reservation {size:#x}",
                        layout.size
                    )));
                }
                Ok(())
            }
            Place::Slab {
                memory, id, ranges, ..
            } => layout_with(g, page, layout, &mut |slot, size, align| {
                let r = memory.allocate(*id, slot, size, align)?;
                ranges.push(r);
                Ok(r.addr.0)
            }),
            Place::Unplaced => Err(unplaced()),
        }
    }

    /// Apply the fixups into the unit's working memory, let `read_back` read the final bytes
    /// (initializer arrays, debug objects, the link map) and say what the unit's finalize runs,
    /// and finalize it. In a slab the working memory is the slab's writable alias, and the
    /// executor takes the unit's ranges, writes and makes it live in one request
    /// ([`Executor::finalize_slab_unit`]); otherwise buffers that travel with the segments in
    /// a [`FinalizeRequest`].
    ///
    /// `read_back` runs once: a writer the executor calls again is refused (it returns no
    /// actions) once a result is there. (`FnMut`, not `FnOnce`: taken out of an `Option` in
    /// the writer, the captured closure was copied on every link; for the same reason it is
    /// lent, not moved, to the path that runs it.)
    pub fn write_and_finalize<R>(
        &self,
        g: &LinkGraph,
        layout: &Layout,
        ctx: &FixupContext,
        mut read_back: impl FnMut(&[&[u8]]) -> (R, UnitActions),
    ) -> Result<(R, AllocId)> {
        let Place::Slab { id, .. } = self.place else {
            return self.finalize_in_reservation(g, layout, ctx, &mut read_back);
        };
        if let [one] = &layout.segments[..] {
            return self.finalize_one_segment(id, one, g, ctx, &mut read_back);
        }
        self.finalize_segments(id, g, layout, ctx, &mut read_back)
    }

    /// [`UnitMemory::write_and_finalize`] for a slab unit of any number of segments.
    fn finalize_segments<R>(
        &self,
        id: SlabId,
        g: &LinkGraph,
        layout: &Layout,
        ctx: &FixupContext,
        mut read_back: impl FnMut(&[&[u8]]) -> (R, UnitActions),
    ) -> Result<(R, AllocId)> {
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
        let mut result = None;
        let alloc = self
            .ex
            .finalize_slab_unit(id, &segments[..n], &mut |bufs| {
                // Written once: a second call is refused ([`UnitMemory::write_and_finalize`]).
                if result.is_some() {
                    return None;
                }
                // The range may hold a removed unit's bytes: zero fill is written, not assumed.
                for (buf, seg) in bufs.iter_mut().zip(&layout.segments) {
                    if let Some(tail) = buf.get_mut(seg.content_size as usize..) {
                        if !tail.is_empty() {
                            tail.fill(0);
                        }
                    }
                }
                // (`result` is still `None` here, and `get_or_insert` says so, where an
                // assignment would drop the old value first.)
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
        written(result, alloc)
    }

    /// [`UnitMemory::write_and_finalize`] for a slab unit of one segment (`seg`, the layout's
    /// only one; a JIT's function): the same steps, with one segment and one slice instead of
    /// arrays of up to three.
    fn finalize_one_segment<R>(
        &self,
        id: SlabId,
        seg: &super::layout::SegmentLayout,
        g: &LinkGraph,
        ctx: &FixupContext,
        mut read_back: impl FnMut(&[&[u8]]) -> (R, UnitActions),
    ) -> Result<(R, AllocId)> {
        let segment = SlabSegment {
            addr: ExecutorAddr(seg.addr),
            size: seg.content_size + seg.zero_size,
            prot: seg.prot,
        };
        let mut result = None;
        let alloc = self.ex.finalize_slab_unit(id, &[segment], &mut |bufs| {
            // Written once: a second call is refused ([`UnitMemory::write_and_finalize`]).
            if result.is_some() {
                return None;
            }
            let [buf] = bufs else {
                return None;
            };
            // The range may hold a removed unit's bytes: zero fill is written, not assumed.
            // (Code has none: without the test, `fill` called `memset` for no bytes, about 20
            // instructions a unit.)
            if let Some(tail) = buf.get_mut(seg.content_size as usize..) {
                if !tail.is_empty() {
                    tail.fill(0);
                }
            }
            // (`result` is still `None` here; see `finalize_segments`.)
            if let Err(e) = apply_segment_fixups(g, seg, ctx, buf) {
                result.get_or_insert(Err(e));
                return None;
            }
            let (r, unit) = read_back(&[&**buf]);
            // (Stored under a test of its own rather than by `get_or_insert`: the actions are
            // then moved to the writer's result with fewer copies, 3 instructions a unit.)
            if result.is_none() {
                result = Some(Ok(r));
            }
            Some(unit)
        })?;
        written(result, alloc)
    }

    /// [`UnitMemory::write_and_finalize`] for a unit in a reservation of its own: the bytes
    /// travel in the finalize request.
    fn finalize_in_reservation<R>(
        &self,
        g: &LinkGraph,
        layout: &Layout,
        ctx: &FixupContext,
        mut read_back: impl FnMut(&[&[u8]]) -> (R, UnitActions),
    ) -> Result<(R, AllocId)> {
        if let Place::Unplaced = self.place {
            return Err(unplaced());
        }
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
    /// (By reference: taking `self`, the 168-byte value was moved in.)
    pub fn keep(&mut self) -> super::SlabRanges {
        self.kept = true;
        match &mut self.place {
            Place::Slab { ranges, .. } => std::mem::take(ranges),
            Place::Reservation { .. } | Place::Unplaced => super::SlabRanges::new(),
        }
    }
}

impl Drop for UnitMemory<'_> {
    /// (Inline: a kept unit's memory, every link that succeeds, is one test; releasing it is out
    /// of line.)
    #[inline]
    fn drop(&mut self) {
        if !self.kept {
            self.release();
        }
    }
}

impl UnitMemory<'_> {
    /// Give the memory back (the link failed before the unit was finalized).
    #[cold]
    #[inline(never)]
    fn release(&mut self) {
        match &self.place {
            Place::Reservation { base, size } => {
                let _ = self.ex.release(ExecutorAddr(*base), *size);
            }
            Place::Slab { memory, ranges, .. } => memory.free(self.ex, ranges),
            Place::Unplaced => {}
        }
    }
}

/// Memory used before it was placed: a bug of the linker's.
#[cold]
#[inline(never)]
fn unplaced() -> Error {
    Error::Internal("the unit's memory is used before it is placed".into())
}

/// The writer's result with the unit's id, once the executor has written and finalized a slab
/// unit; else why not (the writer's error first). (Matched as a pair: the result is moved into
/// the returned value once, not through a local.)
#[inline(always)]
fn written<R>(result: Option<Result<R>>, alloc: Option<AllocId>) -> Result<(R, AllocId)> {
    match (result, alloc) {
        (Some(Ok(r)), Some(alloc)) => Ok((r, alloc)),
        (result, _) => Err(not_written(result.map(|r| r.map(drop)))),
    }
}

/// Why [`written`] has no unit: the writer's error, or the executor's failure to call it or
/// to finalize what it wrote.
#[cold]
#[inline(never)]
fn not_written(result: Option<Result<()>>) -> Error {
    match result {
        None => Error::Internal("the executor did not provide the unit's slab memory".into()),
        Some(Err(e)) => e,
        Some(Ok(())) => Error::Internal("the executor did not finalize the unit it wrote".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::EdgeKind as X86;
    use crate::graph::{fixtures, Content, Edge, SymbolDef};
    use crate::memory::SlabMemory;
    use kiln_target::InProcessExecutor;

    /// A graph of one live code block of 37 bytes with two edges: a 64-bit pointer to a host
    /// address and a call to its own start (bytes that do not depend on where it lies).
    fn one_function() -> LinkGraph<'static> {
        let (mut g, input, section) = fixtures::graph_with_text("t", true, false);
        let b = g.add_block(
            section,
            Content::Bytes([0x90u8; 37][..].to_vec().into()),
            16,
        );
        let symbol = |name: &'static [u8], def| fixtures::function_symbol(name, def, input);
        let host = g.add_symbol(symbol(b"host", SymbolDef::Absolute(0x1234_5678_9abc)));
        let own = g.add_symbol(symbol(
            b"f",
            SymbolDef::Defined {
                block: b,
                offset: 0,
            },
        ));
        let blk = &mut g.blocks[b.idx()];
        blk.live = true;
        blk.edges.push(Edge {
            offset: 2,
            kind: X86::Pointer64.into(),
            target: host,
            addend: 8,
        });
        blk.edges.push(Edge {
            offset: 20,
            kind: X86::BranchPCRel32.into(),
            target: own,
            addend: -4,
        });
        g
    }

    /// A one-segment unit is written and finalized by its own path as by the general one: the
    /// same bytes seen by `read_back` and left in memory, both units live.
    #[test]
    fn one_segment_is_written_and_finalized_as_any_unit() {
        let ex = InProcessExecutor::new();
        let memory = SlabMemory::new();
        let ctx = FixupContext {
            got_base: 0,
            tls_module: 0,
            tp_offset: None,
        };
        let mut seen = Vec::new();
        for general in [false, true] {
            let mut g = one_function();
            let sizes = [0x100, 0, 0];
            let (placement, aligns) = (Placement::Anywhere, [16, 1, 1]);
            let mut m = UnitMemory::unplaced(&ex);
            m.in_slab(&memory, placement, sizes, aligns).unwrap();
            let mut layout = Layout::default();
            m.layout(&mut g, 4096, &mut layout).unwrap();
            let Place::Slab { id, .. } = m.place else {
                panic!("a slab unit");
            };
            let read_back = |work: &[&[u8]]| (work.concat(), UnitActions::default());
            let (bytes, alloc) = if general {
                m.finalize_segments(id, &g, &layout, &ctx, read_back)
            } else {
                m.finalize_one_segment(id, &layout.segments[0], &g, &ctx, read_back)
            }
            .unwrap();
            let addr = layout.segments[0].addr;
            assert_eq!(bytes.len(), 37);
            assert_eq!(bytes[2..10], (0x1234_5678_9abcu64 + 8).to_le_bytes());
            assert_eq!(
                bytes[20..24],
                (-24i32).to_le_bytes(),
                "a call to its own start"
            );
            assert_eq!(ex.read_memory(ExecutorAddr(addr), 37).unwrap(), bytes);
            seen.push(bytes);
            m.keep();
            ex.deallocate(alloc).unwrap();
        }
        assert_eq!(seen[0], seen[1]);
        memory.release_all(&ex);
    }
}

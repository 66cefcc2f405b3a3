//! Address bookkeeping for slabs: which ranges of each slab region are free. The executor maps
//! slabs (kiln-target); this side decides where each unit goes, so that thousands of small units
//! share pages and memory freed by removed units is reused.

use crate::error::{Error, Result};
use kiln_target::{Executor, ExecutorAddr, Placement, SlabId, SlabInfo, SlabWrite};
use std::collections::{BTreeMap, BTreeSet};

/// Free ranges of one region, coalesced, indexed by start (for coalescing) and by size (for a
/// best-fit search that does not walk the small gaps alignment leaves behind).
#[derive(Debug, Default)]
struct FreeList {
    ranges: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
}

impl FreeList {
    fn insert(&mut self, start: u64, len: u64) {
        self.ranges.insert(start, len);
        self.by_size.insert((len, start));
    }

    fn remove(&mut self, start: u64) -> Option<u64> {
        let len = self.ranges.remove(&start)?;
        self.by_size.remove(&(len, start));
        Some(len)
    }

    /// The smallest free range that holds `size` bytes at `align`.
    fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        let (start, len, at) = self.by_size.range((size, 0)..).find_map(|&(len, start)| {
            let at = start.checked_next_multiple_of(align)?;
            (at.checked_add(size)? <= start + len).then_some((start, len, at))
        })?;
        self.remove(start);
        if at > start {
            self.insert(start, at - start);
        }
        if at + size < start + len {
            self.insert(at + size, start + len - (at + size));
        }
        Some(at)
    }

    fn free(&mut self, mut start: u64, mut len: u64) {
        if len == 0 {
            return;
        }
        if let Some((&ps, &pl)) = self.ranges.range(..start).next_back() {
            if ps + pl == start {
                self.remove(ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.remove(start + len) {
            len += nl;
        }
        self.insert(start, len);
    }

    fn largest(&self) -> u64 {
        self.by_size.last().map_or(0, |(len, _)| *len)
    }
}

#[derive(Debug)]
struct Slab {
    info: SlabInfo,
    free: [FreeList; 3],
}

impl Slab {
    fn start(&self) -> u64 {
        self.info.regions[0].0 .0
    }
    fn end(&self) -> u64 {
        let (a, n) = self.info.regions[2];
        a.0 + n
    }
}

/// A range a unit holds in a slab region.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlabRange {
    pub slab: SlabId,
    pub region: usize,
    pub addr: ExecutorAddr,
    pub size: u64,
}

/// The slabs of one executor, as seen by one session.
#[derive(Debug)]
pub struct SlabAllocator {
    slabs: Vec<Slab>,
    /// Bytes per region of a new slab (address space: pages cost memory only when used).
    pub region_size: u64,
}

impl Default for SlabAllocator {
    fn default() -> Self {
        SlabAllocator {
            slabs: Vec::new(),
            region_size: 32 << 20,
        }
    }
}

impl SlabAllocator {
    /// A slab that lies within `placement` and can hold `sizes` (with `aligns`) in its regions,
    /// made if none exists. Returns its index.
    pub fn slab_for(
        &mut self,
        ex: &dyn Executor,
        placement: Placement,
        sizes: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<usize> {
        let fits = |s: &Slab| {
            let placed = match placement {
                Placement::Anywhere => true,
                Placement::Within { lo, hi } => lo <= s.start() && s.end() <= hi,
                Placement::Fixed(_) => false,
            };
            placed && (0..3).all(|r| sizes[r] == 0 || s.free[r].largest() >= sizes[r] + aligns[r])
        };
        if let Some(i) = self.slabs.iter().position(fits) {
            return Ok(i);
        }
        let page = ex.info().page_size;
        let region = |r: usize| {
            let want = sizes[r].saturating_add(aligns[r]).saturating_mul(2);
            want.max(self.region_size).div_ceil(page) * page
        };
        let info = ex.create_slab([region(0), region(1), region(2)], placement)?;
        tracing::debug!(
            "new slab {:?} at {} ({placement:?})",
            info.id,
            info.regions[0].0
        );
        let mut free: [FreeList; 3] = Default::default();
        for (r, (a, n)) in info.regions.iter().enumerate() {
            free[r].free(a.0, *n);
        }
        self.slabs.push(Slab { info, free });
        Ok(self.slabs.len() - 1)
    }

    /// The whole range of slab `i`, where the code runs.
    pub fn range(&self, i: usize) -> (u64, u64) {
        (self.slabs[i].start(), self.slabs[i].end())
    }

    pub fn id(&self, i: usize) -> SlabId {
        self.slabs[i].info.id
    }

    pub fn allocate(
        &mut self,
        i: usize,
        region: usize,
        size: u64,
        align: u64,
    ) -> Result<SlabRange> {
        let s = &mut self.slabs[i];
        let addr = if size == 0 {
            s.info.regions[region].0 .0
        } else {
            s.free[region].allocate(size, align.max(1)).ok_or_else(|| {
                Error::Usage(format!("slab {:?}: no room for {size:#x} bytes", s.info.id))
            })?
        };
        Ok(SlabRange {
            slab: s.info.id,
            region,
            addr: ExecutorAddr(addr),
            size,
        })
    }

    /// Return ranges; freed code is overwritten with `int3` first, so that a stale call into it
    /// traps instead of running whatever comes next.
    pub fn free(&mut self, ex: &dyn Executor, ranges: &[SlabRange]) {
        for r in ranges {
            let Some(s) = self.slabs.iter_mut().find(|s| s.info.id == r.slab) else {
                continue;
            };
            if r.region == 0 && r.size > 0 {
                let _ = ex.write_slab(r.slab, &[SlabWrite::Fill(r.addr, r.size, 0xcc)]);
            }
            s.free[r.region].free(r.addr.0, r.size);
        }
    }

    /// The slab holding `addr`, if any.
    pub fn slab_of(&self, addr: ExecutorAddr) -> Option<SlabId> {
        self.slabs
            .iter()
            .find(|s| s.start() <= addr.0 && addr.0 < s.end())
            .map(|s| s.info.id)
    }

    /// Unmap every slab (no unit may live in them any more).
    pub fn release_all(&mut self, ex: &dyn Executor) {
        for s in self.slabs.drain(..) {
            let _ = ex.release_slab(s.info.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_list_allocates_aligned_and_coalesces() {
        let mut f = FreeList::default();
        f.free(0x1000, 0x1000);
        let a = f.allocate(0x10, 16).unwrap();
        let b = f.allocate(0x30, 64).unwrap();
        assert_eq!(a, 0x1000);
        assert_eq!(b, 0x1040, "aligned to 64");
        assert_eq!(f.ranges.len(), 2, "the alignment gap stays free");
        f.free(a, 0x10);
        f.free(b, 0x30);
        assert_eq!(f.ranges.len(), 1, "everything coalesced");
        assert_eq!(f.largest(), 0x1000);
        assert!(f.allocate(0x2000, 1).is_none());
    }
}

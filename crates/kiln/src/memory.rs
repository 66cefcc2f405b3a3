//! Address bookkeeping for slabs: which ranges of each slab region are free. The executor maps
//! slabs (kiln-target); this side decides where each unit goes, so that thousands of small units
//! share pages and memory freed by removed units is reused.
//!
//! [`CodeMemory`] is what a link asks for memory: the session's own [`SlabMemory`] (slabs made
//! as needed, near what the code reaches), or one a JIT layer provides (a code zone's regions).

use crate::error::{Error, Result};
use kiln_target::{Executor, ExecutorAddr, Placement, SlabId, SlabInfo, SlabWrite};
use std::collections::{BTreeMap, BTreeSet};

/// A unit's extent in a slab region is its size rounded up to this, at an address aligned to at
/// least this: units of any length then leave no alignment gaps between them (a JIT's functions
/// have any length; each gap would be a free range no unit fits in, kept in two B-trees, about
/// 30 bytes per unit). Allocating, freeing and rebuilding a region's free list all count in
/// these extents, and so must anything that places units itself (kiln-jit's compaction).
pub const SLAB_GRAIN: u64 = 16;

/// `size` as the extent it holds in a slab region.
pub fn slab_extent(size: u64) -> u64 {
    size.next_multiple_of(SLAB_GRAIN)
}

/// Free ranges of one region: the untouched end of the region (the tail, allocated by bumping a
/// pointer), and ranges freed before it, coalesced, indexed by start (for coalescing) and by size
/// (for a best-fit search that does not walk the small gaps alignment leaves behind). A region
/// that only fills costs a pointer bump per allocation; freed ranges are reused first.
#[derive(Debug, Default)]
struct FreeList {
    ranges: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    /// `[start, end)` never allocated since the list was made (or given back to it whole).
    tail: (u64, u64),
}

impl FreeList {
    /// A list whose free space is `[start, start + len)`.
    fn new(start: u64, len: u64) -> Self {
        FreeList {
            tail: (start, start + len),
            ..Default::default()
        }
    }

    fn insert(&mut self, start: u64, len: u64) {
        self.ranges.insert(start, len);
        self.by_size.insert((len, start));
    }

    fn remove(&mut self, start: u64) -> Option<u64> {
        let len = self.ranges.remove(&start)?;
        self.by_size.remove(&(len, start));
        Some(len)
    }

    /// The smallest freed range that holds `size` bytes at `align`, else the tail. (Inlined:
    /// a filling region's allocation is a bump of its tail, a few instructions beside a call's.)
    #[inline]
    fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        let size = size.checked_next_multiple_of(SLAB_GRAIN)?;
        let align = align.max(SLAB_GRAIN);
        if !self.by_size.is_empty() {
            if let Some(at) = self.best_fit(size, align) {
                return Some(at);
            }
        }
        let (start, end) = self.tail;
        let at = next_multiple(start, align)?;
        if at.checked_add(size)? > end {
            return None;
        }
        if at > start {
            self.insert(start, at - start);
        }
        self.tail.0 = at + size;
        Some(at)
    }

    fn best_fit(&mut self, size: u64, align: u64) -> Option<u64> {
        let fits = |&(len, start): &(u64, u64)| {
            let at = next_multiple(start, align)?;
            (at.checked_add(size)? <= start + len).then_some((start, len, at))
        };
        // A range of `size + align - 1` bytes or more holds the block wherever it starts; a
        // shorter one only if its start suits the alignment. Try a few of those (the best fits),
        // then the smallest sure one: a region full of small alignment gaps (thousands of tiny
        // units, as a JIT makes) must not be scanned whole on every allocation.
        const UNSURE_TRIES: usize = 8;
        let sure = size.checked_add(align - 1)?;
        let (start, len, at) = self
            .by_size
            .range((size, 0)..(sure, 0))
            .take(UNSURE_TRIES)
            .find_map(fits)
            .or_else(|| self.by_size.range((sure, 0)..).next().and_then(fits))?;
        self.remove(start);
        if at > start {
            self.insert(start, at - start);
        }
        if at + size < start + len {
            self.insert(at + size, start + len - (at + size));
        }
        Some(at)
    }

    fn free(&mut self, mut start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut len = slab_extent(len);
        if let Some((&ps, &pl)) = self.ranges.range(..start).next_back() {
            if ps + pl == start {
                self.remove(ps);
                start = ps;
                len += pl;
            }
        }
        if start + len == self.tail.0 {
            self.tail.0 = start; // back into the tail
            return;
        }
        if let Some(nl) = self.remove(start + len) {
            len += nl;
        }
        self.insert(start, len);
    }

    fn largest(&self) -> u64 {
        let freed = self.by_size.last().map_or(0, |(len, _)| *len);
        freed.max(self.tail.1 - self.tail.0)
    }

    /// Whether a free range of `len` bytes or more is left: `largest() >= len`, asking the
    /// B-tree only when the tail is too short (a filling region's usual answer is its tail).
    fn has_room(&self, len: u64) -> bool {
        self.tail.1 - self.tail.0 >= len || self.largest() >= len
    }
}

/// `v` rounded up to a multiple of `align` (`None` on overflow): with a mask for a power of two
/// (every alignment an object file or a JIT asks for), without the division
/// `checked_next_multiple_of` makes for any other.
#[inline(always)]
fn next_multiple(v: u64, align: u64) -> Option<u64> {
    if align.is_power_of_two() {
        Some(v.checked_add(align - 1)? & !(align - 1))
    } else {
        v.checked_next_multiple_of(align)
    }
}

#[cold]
#[inline(never)]
fn no_room(slab: SlabId, size: u64) -> Error {
    Error::Usage(format!("slab {slab:?}: no room for {size:#x} bytes"))
}

#[cold]
#[inline(never)]
fn no_slab(slab: SlabId) -> Error {
    Error::Usage(format!("no slab {slab:?} in this code memory"))
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
    /// Whether each region has room for its class's size plus alignment slack.
    #[inline]
    fn has_room(&self, sizes: [u64; 3], aligns: [u64; 3]) -> bool {
        (0..3).all(|r| sizes[r] == 0 || self.free[r].has_room(sizes[r] + aligns[r]))
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
    /// Whether new slabs are made when none fits (not for a zone's fixed set of slabs).
    growable: bool,
}

impl Default for SlabAllocator {
    fn default() -> Self {
        SlabAllocator {
            slabs: Vec::new(),
            region_size: 32 << 20,
            growable: true,
        }
    }
}

impl SlabAllocator {
    /// A slab that lies within `placement` and can hold `sizes` (with `aligns`) in its regions,
    /// made if none exists. Returns its index. (Inlined into the one caller of a link: a call
    /// costs it its prologue and epilogue, about 20 instructions a unit.)
    #[inline]
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
            placed && s.has_room(sizes, aligns)
        };
        if let Some(i) = self.slabs.iter().position(fits) {
            return Ok(i);
        }
        self.new_slab_for(ex, placement, sizes, aligns)
    }

    /// [`SlabAllocator::slab_for`] when no slab fits: a new one (out of line: a slab holds
    /// thousands of functions).
    #[cold]
    #[inline(never)]
    fn new_slab_for(
        &mut self,
        ex: &dyn Executor,
        placement: Placement,
        sizes: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<usize> {
        if !self.growable {
            // Only these slabs: the placement asked for is what would be nice; the fixups say
            // what is out of reach (calls get stubs, GOT loads keep the GOT).
            let room = |s: &Slab| s.has_room(sizes, aligns);
            return self.slabs.iter().position(room).ok_or_else(|| {
                Error::Usage(format!(
                    "no room for {} + {} + {} bytes (code, read-only, data) in this code memory",
                    sizes[0], sizes[1], sizes[2]
                ))
            });
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
        let free = info.regions.map(|(a, n)| FreeList::new(a.0, n));
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

    /// `size` bytes aligned to `align` in region `region` of slab `i`. (Inlined, as
    /// [`SlabAllocator::slab_for`].)
    #[inline]
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
            let id = s.info.id;
            s.free[region]
                .allocate(size, align.max(1))
                .ok_or_else(|| no_room(id, size))?
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
        // One write per slab, not per range.
        let mut poison: Vec<(SlabId, Vec<SlabWrite>)> = Vec::new();
        for r in ranges {
            let Some(s) = self.slabs.iter_mut().find(|s| s.info.id == r.slab) else {
                continue;
            };
            if r.region == 0 && r.size > 0 {
                let fill = SlabWrite::Fill(r.addr, r.size, 0xcc);
                match poison.iter_mut().find(|(id, _)| *id == r.slab) {
                    Some((_, w)) => w.push(fill),
                    None => poison.push((r.slab, vec![fill])),
                }
            }
            s.free[r.region].free(r.addr.0, r.size);
        }
        for (slab, writes) in poison {
            let _ = ex.write_slab(slab, &writes);
        }
    }

    /// Manage only these slabs (made by the caller, e.g. a code zone's regions), all free.
    pub fn fixed(slabs: &[SlabInfo]) -> Self {
        let mut a = SlabAllocator {
            growable: false,
            ..Default::default()
        };
        for info in slabs {
            let free = info.regions.map(|(addr, n)| FreeList::new(addr.0, n));
            a.slabs.push(Slab { info: *info, free });
        }
        a
    }

    /// Make the free ranges of `region` of slab `id` everything but the extents of `used`
    /// (sorted or not, overlapping or not): after a compaction moved what lives there.
    pub fn rebuild_region(&mut self, id: SlabId, region: usize, used: &[(u64, u64)]) -> Result<()> {
        let s = self
            .slabs
            .iter_mut()
            .find(|s| s.info.id == id)
            .ok_or_else(|| Error::Usage(format!("no slab {id:?} in this code memory")))?;
        let (start, len) = s
            .info
            .regions
            .get(region)
            .copied()
            .ok_or_else(|| Error::Usage(format!("slab {id:?} has no region {region}")))?;
        let mut used: Vec<(u64, u64)> = used.to_vec();
        used.sort_unstable();
        let end = start.0 + len;
        let mut at = start.0;
        let mut gaps = Vec::new();
        for (a, n) in used {
            if a < start.0 || a.checked_add(n).is_none_or(|e| e > end) {
                return Err(Error::Usage(format!(
                    "used range {a:#x}+{n:#x} lies outside region {region} of slab {id:?}"
                )));
            }
            if a > at {
                gaps.push((at, a - at));
            }
            // Its extent, as `allocate` gave it. Ranges may overlap (a unit's segment and the
            // extent around it, both given): their union is used.
            at = at.max((a + slab_extent(n)).min(end));
        }
        // What follows the last used range is the tail; the gaps before it are freed ranges.
        let mut free = FreeList::new(at, end - at);
        for (a, n) in gaps {
            free.insert(a, n);
        }
        s.free[region] = free;
        Ok(())
    }

    /// The free ranges of `region` of slab `id`, by address: what a compaction may use (the
    /// rest is held by units, or by links in progress that allocated and have not published).
    pub fn free_ranges(&self, id: SlabId, region: usize) -> Result<Vec<(u64, u64)>> {
        let s = self
            .slabs
            .iter()
            .find(|s| s.info.id == id)
            .ok_or_else(|| Error::Usage(format!("no slab {id:?} in this code memory")))?;
        let free = s
            .free
            .get(region)
            .ok_or_else(|| Error::Usage(format!("slab {id:?} has no region {region}")))?;
        let (tail, end) = free.tail;
        let mut ranges: Vec<(u64, u64)> = free.ranges.iter().map(|(&a, &n)| (a, n)).collect();
        // Freed ranges lie below the untouched tail (a range that reaches it joins it).
        if tail < end {
            ranges.push((tail, end - tail));
        }
        Ok(ranges)
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

    /// Gaps too small for a block at its alignment are passed over, a gap that suits it is
    /// taken, and a larger range holds it wherever that range starts.
    #[test]
    fn best_fit_passes_gaps_that_cannot_hold_the_block() {
        let mut f = FreeList::new(0x10_0000, 0x10_0000);
        // 64-byte gaps starting 16 bytes into a 128-byte line: no 48-byte block aligned to 64
        // fits in one.
        for i in 0..1000u64 {
            f.insert(0x1000 + 128 * i + 0x10, 0x40);
        }
        f.insert(0x9_0010, 0x100);
        assert_eq!(
            f.allocate(0x30, 64),
            Some(0x9_0040),
            "the range that surely fits"
        );
        // A shorter gap that starts aligned does hold it.
        f.insert(0x8_0000, 0x30);
        assert_eq!(f.allocate(0x30, 64), Some(0x8_0000));
        assert_eq!(f.ranges.get(&0x8_0000), None, "taken whole");
    }

    #[test]
    fn units_of_any_length_leave_no_gaps_and_free_whole_extents() {
        let mut f = FreeList::new(0x1000, 0x1000);
        // Lengths a JIT's functions have: each extent a multiple of the grain, back to back.
        let a = f.allocate(0x45, 1).unwrap();
        let b = f.allocate(0x9b, 8).unwrap();
        let c = f.allocate(0x10, 16).unwrap();
        assert_eq!((a, b, c), (0x1000, 0x1050, 0x10f0));
        assert!(f.ranges.is_empty(), "no alignment gap recorded");
        // Freeing with the unit's own length gives back its whole extent: b's room is reused
        // by a unit of b's extent, and freeing all returns everything to the tail.
        f.free(b, 0x9b);
        assert_eq!(f.ranges.get(&0x1050), Some(&0xa0));
        assert_eq!(f.allocate(0xa0, 16), Some(0x1050));
        f.free(a, 0x45);
        f.free(0x1050, 0xa0);
        f.free(c, 0x10);
        assert!(f.ranges.is_empty() && f.tail == (0x1000, 0x2000));
    }

    /// The mask's rounding is `checked_next_multiple_of`'s, overflow included.
    #[test]
    fn next_multiple_rounds_as_the_division_does() {
        let values = [
            0,
            1,
            15,
            16,
            17,
            0x1000,
            0x1001,
            u64::MAX - 16,
            u64::MAX - 1,
            u64::MAX,
        ];
        for v in values {
            for align in [1, 2, 16, 64, 4096, 1 << 63, 3, 24, 1000] {
                assert_eq!(
                    next_multiple(v, align),
                    v.checked_next_multiple_of(align),
                    "{v:#x} {align}"
                );
            }
        }
    }

    #[test]
    fn free_list_allocates_aligned_and_coalesces() {
        let mut f = FreeList::new(0x1000, 0x1000);
        let a = f.allocate(0x10, 16).unwrap();
        let b = f.allocate(0x30, 64).unwrap();
        assert_eq!(a, 0x1000);
        assert_eq!(b, 0x1040, "aligned to 64");
        assert_eq!(f.ranges.len(), 1, "the alignment gap stays free");
        assert_eq!(f.tail, (0x1070, 0x2000), "the rest is the untouched tail");
        f.free(a, 0x10);
        assert_eq!(
            f.allocate(0x20, 16),
            Some(0x1000),
            "freed space first (coalesced with the gap)"
        );
        f.free(0x1000, 0x20);
        f.free(b, 0x30);
        assert!(
            f.ranges.is_empty(),
            "everything coalesced back into the tail"
        );
        assert_eq!(f.largest(), 0x1000);
        assert!(f.allocate(0x2000, 1).is_none());
    }
}

/// Where a unit's memory comes from. A link asks it for a slab in reach of what the unit
/// references, then for a range per protection class; a removed unit's ranges go back.
pub trait CodeMemory: Send + Sync + std::fmt::Debug {
    /// A slab within `placement` whose regions can hold `sizes` bytes (each class aligned to
    /// `aligns`): its id and its whole range.
    fn choose(
        &self,
        ex: &dyn Executor,
        placement: Placement,
        sizes: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<(SlabId, (u64, u64))>;
    /// `size` bytes aligned to `align` in region `region` (0 code, 1 read-only, 2 data) of slab
    /// `slab`.
    fn allocate(&self, slab: SlabId, region: usize, size: u64, align: u64) -> Result<SlabRange>;
    /// Take ranges back (code is poisoned with `int3` first).
    fn free(&self, ex: &dyn Executor, ranges: &[SlabRange]);
    /// The slab holding `addr`, if it is one of this memory's.
    fn slab_of(&self, addr: ExecutorAddr) -> Option<SlabId>;
    /// Unmap every slab this memory made (no unit may live in them any more).
    fn release_all(&self, ex: &dyn Executor);
}

/// Slabs behind locks: the session's own code memory, and the building block of others (a
/// code zone's regions: [`SlabMemory::fixed`]).
///
/// The session's memory ([`SlabMemory::new`]) keeps its slabs in lanes, one per core the
/// process may use (up to 8), each with its own lock and its own slabs: threads
/// linking at once each stay in a lane, so their units land in different slabs and neither the
/// allocator's lock nor the executor's table of a slab is shared between them. A thread keeps
/// the lane it last used, and moves on to a free one when it finds its lane busy. A fixed
/// memory has one lane.
///
/// ```
/// use kiln::{SlabMemory, UnitOptions};
/// use std::sync::Arc;
/// let s = kiln::Session::in_process();
/// // One slab of 1 MiB of code, 64 KiB of read-only data and 64 KiB of data, for some units.
/// let slab = s.executor().create_slab([1 << 20, 1 << 16, 1 << 16], kiln_target::Placement::Anywhere)?;
/// let options = UnitOptions {
///     memory: Some(Arc::new(SlabMemory::fixed(&[slab]))),
///     ..UnitOptions::new(s.default_scope())
/// };
/// # let _ = options;
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Debug)]
pub struct SlabMemory {
    lanes: Box<[Lane]>,
}

/// The most lanes of a [`SlabMemory`]: each may hold slabs of its own (address space, and a
/// partly used page per region).
const MAX_LANES: usize = 8;

/// One lane's slabs, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane(std::sync::Mutex<SlabAllocator>);

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlabAllocator> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`LANE`] before this thread's first link through a memory of several lanes.
const NO_LANE: usize = usize::MAX;

thread_local! {
    /// The lane this thread used last (modulo a memory's lane count), [`NO_LANE`] until it
    /// first needs one. Initialized constant, so that reading it costs no check of a lazy
    /// initializer.
    static LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(NO_LANE) };
}

/// This thread's lane among `n` (> 1): threads start spread over the lanes in the order they
/// first link.
fn lane_of_thread(n: usize) -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let lane = LANE.with(|l| {
        let mut lane = l.get();
        if lane == NO_LANE {
            lane = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % MAX_LANES;
            l.set(lane);
        }
        lane
    });
    // (A lane below `n` needs no division, ~20 instructions: the usual case.)
    if lane < n {
        lane
    } else {
        lane % n
    }
}

/// The lane after `i` among `n`, wrapping round.
fn next_lane(i: usize, n: usize) -> usize {
    if i + 1 == n {
        0
    } else {
        i + 1
    }
}

/// Lanes of a new growable memory: the cores this process may run on, at most [`MAX_LANES`].
fn lane_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, MAX_LANES))
    })
}

impl Default for SlabMemory {
    fn default() -> Self {
        Self::with_lanes(lane_count())
    }
}

impl SlabMemory {
    /// Slabs made as needed, in a lane per core.
    pub fn new() -> Self {
        Self::default()
    }

    /// Slabs made as needed, in `n` lanes (at least one).
    fn with_lanes(n: usize) -> Self {
        SlabMemory {
            lanes: (0..n.max(1)).map(|_| Lane::default()).collect(),
        }
    }

    /// Only these slabs (all free), never more: one lane.
    pub fn fixed(slabs: &[SlabInfo]) -> Self {
        SlabMemory {
            lanes: Box::new([Lane(std::sync::Mutex::new(SlabAllocator::fixed(slabs)))]),
        }
    }

    /// The allocator of the first lane, locked: for a JIT layer that rebuilds free lists after
    /// moving code in a fixed memory (whose one lane holds all its slabs).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SlabAllocator> {
        self.lanes[0].lock()
    }

    /// This thread's lane, locked: the one it used last if free, else the next free one (which
    /// it keeps), else its own once free.
    fn my_lane(&self) -> std::sync::MutexGuard<'_, SlabAllocator> {
        let n = self.lanes.len();
        // One lane (a fixed memory, one core): no choice to make, nothing to remember.
        if n == 1 {
            return self.lanes[0].lock();
        }
        let mine = lane_of_thread(n);
        let mut i = mine;
        for k in 0..n {
            if let Some(guard) = try_lock(&self.lanes[i]) {
                if k > 0 {
                    LANE.with(|l| l.set(i));
                }
                return guard;
            }
            i = next_lane(i, n);
        }
        self.lanes[mine].lock()
    }

    /// The lane holding slab `slab`, locked, with the slab's index in it: this thread's lane
    /// first (where the slab it just chose lies).
    fn lane_of(&self, slab: SlabId) -> Option<(std::sync::MutexGuard<'_, SlabAllocator>, usize)> {
        let n = self.lanes.len();
        let mut lane = if n == 1 { 0 } else { lane_of_thread(n) };
        for _ in 0..n {
            let a = self.lanes[lane].lock();
            if let Some(i) = a.slabs.iter().position(|s| s.info.id == slab) {
                return Some((a, i));
            }
            drop(a);
            lane = next_lane(lane, n);
        }
        None
    }
}

/// The lane's lock if nobody holds it (a poisoned one is taken: the allocator's methods leave it
/// consistent).
fn try_lock(lane: &Lane) -> Option<std::sync::MutexGuard<'_, SlabAllocator>> {
    match lane.0.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

impl CodeMemory for SlabMemory {
    fn choose(
        &self,
        ex: &dyn Executor,
        placement: Placement,
        sizes: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<(SlabId, (u64, u64))> {
        let mut a = self.my_lane();
        let i = a.slab_for(ex, placement, sizes, aligns)?;
        Ok((a.id(i), a.range(i)))
    }

    fn allocate(&self, slab: SlabId, region: usize, size: u64, align: u64) -> Result<SlabRange> {
        let (mut a, i) = self.lane_of(slab).ok_or_else(|| no_slab(slab))?;
        a.allocate(i, region, size, align)
    }

    fn free(&self, ex: &dyn Executor, ranges: &[SlabRange]) {
        // Each lane frees the ranges of its own slabs and passes over the others.
        for lane in self.lanes.iter() {
            lane.lock().free(ex, ranges)
        }
    }

    fn slab_of(&self, addr: ExecutorAddr) -> Option<SlabId> {
        self.lanes.iter().find_map(|l| l.lock().slab_of(addr))
    }

    fn release_all(&self, ex: &dyn Executor) {
        for lane in self.lanes.iter() {
            lane.lock().release_all(ex)
        }
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;
    use kiln_target::InProcessExecutor;

    const SIZES: [u64; 3] = [0x100, 0x100, 0x100];
    const ALIGNS: [u64; 3] = [16, 16, 16];

    /// A thread that finds its lane busy takes another and keeps it: two threads linking at once
    /// place their units in two slabs, and each slab's ranges are allocated and freed through
    /// the lane that holds it, whichever thread asks.
    #[test]
    fn busy_lanes_send_threads_to_other_slabs() {
        let ex = InProcessExecutor::new();
        let m = SlabMemory::with_lanes(2);
        let (first, _) = m.choose(&ex, Placement::Anywhere, SIZES, ALIGNS).unwrap();
        let held = m.my_lane();
        let first_lane: *const SlabAllocator = &*held;
        let (second, other_lane) = std::thread::scope(|s| {
            s.spawn(|| {
                let lane = {
                    let g = m.my_lane();
                    &*g as *const SlabAllocator as usize
                };
                let (slab, _) = m.choose(&ex, Placement::Anywhere, SIZES, ALIGNS).unwrap();
                (slab, lane)
            })
            .join()
            .unwrap()
        });
        assert_ne!(
            other_lane, first_lane as usize,
            "a busy lane is passed over"
        );
        drop(held);
        assert_ne!(first, second, "the other lane made a slab of its own");
        // This thread allocates in both slabs; the ranges go back to their lanes.
        let a = m.allocate(first, 0, 0x40, 16).unwrap();
        let b = m.allocate(second, 0, 0x40, 16).unwrap();
        assert_eq!((a.slab, b.slab), (first, second));
        assert_eq!(m.slab_of(b.addr), Some(second));
        m.free(&ex, &[a, b]);
        assert_eq!(
            m.allocate(second, 0, 0x40, 16).unwrap().addr,
            b.addr,
            "freed"
        );
        assert!(
            m.allocate(SlabId(u32::MAX), 0, 0x40, 16).is_err(),
            "no such slab"
        );
        m.release_all(&ex);
        assert!(m.allocate(first, 0, 0x40, 16).is_err(), "released");
    }
}

//! Disjoint address ranges, found in O(log n): the ownership table's index of what an executor
//! owns (reservations, slabs, allocations' segments, ranges being written).

use std::collections::BTreeMap;

/// The most ranges one chunk of a [`RangeMap`] holds.
const CHUNK: usize = 64;

/// Half-open ranges `[start, end)`, non-empty and pairwise disjoint, each with a value. Because
/// the ranges are disjoint, sorting them by start sorts their ends too, so the only range that
/// can overlap `[a, b)` is the last one starting before `b`.
///
/// Kept sorted in chunks of up to [`CHUNK`] ranges, in a B-tree keyed by each chunk's first
/// start: a lookup is a search of a tree with a sixty-fourth of the entries, then a binary
/// search in one chunk. A range placed after every other (a JIT's units mostly come in address
/// order) is appended to the last chunk, which is left full when a new one starts: the ranges
/// are packed, where a B-tree of ranges fed in ascending order leaves its leaves half empty.
#[derive(Debug)]
pub(crate) struct RangeMap<V> {
    /// Each chunk non-empty, sorted by start, its key its first range's start; every range of
    /// a chunk starts below the next chunk's key.
    chunks: BTreeMap<u64, Vec<(u64, u64, V)>>,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        RangeMap {
            chunks: BTreeMap::new(),
        }
    }
}

impl<V> RangeMap<V> {
    /// The range that overlaps `[start, end)`, if any (an empty query overlaps nothing).
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> Option<(u64, u64, &V)> {
        if start >= end {
            return None;
        }
        // The last chunk whose first range starts before `end` holds the last such range.
        let (_, c) = self.chunks.range(..end).next_back()?;
        let i = c.partition_point(|r| r.0 < end);
        let (s, e, v) = c.get(i.checked_sub(1)?)?;
        (*e > start).then_some((*s, *e, v))
    }

    /// Every range that overlaps `[start, end)`, last first.
    pub(crate) fn overlapping_all(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, &V)> + '_ {
        // Walking back from the last range starting before `end`, the first one that ends at
        // or before `start` ends the overlap (the ends are sorted too).
        let upper = if start < end { end } else { 0 };
        self.chunks
            .range(..upper)
            .rev()
            .flat_map(move |(_, c)| c[..c.partition_point(|r| r.0 < upper)].iter().rev())
            .map(|(s, e, v)| (*s, *e, v))
            .take_while(move |&(_, e, _)| e > start)
    }

    /// Whether any range lies (even partly) in `[start, end)`.
    pub(crate) fn any_in(&self, start: u64, end: u64) -> bool {
        self.overlapping(start, end).is_some()
    }

    /// The range holding address `addr`.
    #[cfg(test)]
    pub(crate) fn containing(&self, addr: u64) -> Option<(u64, u64, &V)> {
        self.overlapping(addr, addr.checked_add(1)?)
    }

    /// The range holding all of `[start, end)` (`start < end`).
    pub(crate) fn enclosing(&self, start: u64, end: u64) -> Option<(u64, u64, &V)> {
        let (s, e, v) = self.overlapping(start, end)?;
        (s <= start && end <= e).then_some((s, e, v))
    }

    /// The range starting exactly at `start`.
    pub(crate) fn get(&self, start: u64) -> Option<(u64, &V)> {
        let (_, c) = self.chunks.range(..=start).next_back()?;
        let i = c.binary_search_by_key(&start, |r| r.0).ok()?;
        c.get(i).map(|(_, e, v)| (*e, v))
    }

    pub(crate) fn get_mut(&mut self, start: u64) -> Option<(u64, &mut V)> {
        let (_, c) = self.chunks.range_mut(..=start).next_back()?;
        let i = c.binary_search_by_key(&start, |r| r.0).ok()?;
        c.get_mut(i).map(|(_, e, v)| (*e, v))
    }

    /// Add `[start, end)`; refused (returning `v`) if it is empty or overlaps a range.
    pub(crate) fn insert(&mut self, start: u64, end: u64, v: V) -> Result<(), V> {
        if start >= end || self.any_in(start, end) {
            return Err(v);
        }
        self.insert_disjoint(start, end, v);
        Ok(())
    }

    /// Add `[start, end)`, which the caller has checked is non-empty and overlaps no range
    /// (under the same `&mut` borrow): no search for an overlap, where [`RangeMap::insert`]
    /// makes one first. Checked again in debug builds.
    pub(crate) fn insert_disjoint(&mut self, start: u64, end: u64, v: V) {
        debug_assert!(start < end && !self.any_in(start, end));
        // After every range, with room in the last chunk: a push, found down the tree's right
        // edge without a search (a range query costs several times that).
        if let Some(mut last) = self.chunks.last_entry() {
            let c = last.get_mut();
            if c.len() < CHUNK && c.last().is_some_and(|r| r.0 < start) {
                c.push((start, end, v));
                return;
            }
        }
        let Some((_, c)) = self.chunks.range_mut(..=start).next_back() else {
            return self.insert_first(start, end, v);
        };
        let i = c.partition_point(|r| r.0 < start);
        if c.len() < CHUNK {
            c.insert(i, (start, end, v));
            return;
        }
        // Full: a new chunk after it. An append starts the new chunk and leaves this one full;
        // otherwise the upper half moves over.
        let at = if i == CHUNK { CHUNK } else { CHUNK / 2 };
        let mut tail = Vec::with_capacity(CHUNK);
        tail.extend(c.drain(at..));
        if i >= at {
            tail.insert(i - at, (start, end, v));
        } else {
            c.insert(i, (start, end, v));
        }
        let key = tail[0].0;
        self.chunks.insert(key, tail);
    }

    /// Add a range that starts before every other one (or the first range of all).
    fn insert_first(&mut self, start: u64, end: u64, v: V) {
        let mut c = match self.chunks.first_entry() {
            Some(first) if first.get().len() < CHUNK => first.remove(),
            _ => Vec::new(),
        };
        c.insert(0, (start, end, v));
        self.chunks.insert(start, c);
    }

    /// Remove the range starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) -> Option<(u64, V)> {
        remove_chunked(&mut self.chunks, start, |r| r.0).map(|(_, e, v)| (e, v))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64, &V)> {
        self.chunks
            .values()
            .flat_map(|c| c.iter())
            .map(|(s, e, v)| (*s, *e, v))
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A few disjoint ranges (the claims of the calls writing right now: a handful per thread), in
/// a sorted vector: a binary search to find, no allocation once it has grown, unlike a B-tree
/// that allocates its first node for every first entry.
#[derive(Debug, Default)]
pub(crate) struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Index of the first range ending after `start`.
    fn first_after(&self, start: u64) -> usize {
        self.ranges.partition_point(|&(_, e)| e <= start)
    }

    pub(crate) fn any_in(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .ranges
                .get(self.first_after(start))
                .is_some_and(|&(s, _)| s < end)
    }

    /// Add `[start, end)`; refused if it is empty or overlaps a range.
    pub(crate) fn insert(&mut self, start: u64, end: u64) -> Result<(), ()> {
        if start >= end || self.any_in(start, end) {
            return Err(());
        }
        let i = self.first_after(start);
        self.ranges.insert(i, (start, end));
        Ok(())
    }

    /// Remove the range starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) {
        if let Ok(i) = self.ranges.binary_search_by_key(&start, |&(s, _)| s) {
            self.ranges.remove(i);
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The starts of disjoint ranges within one slab, each with the slot of its dense unit
/// ([`crate::table`]): 32-bit offsets from the slab's start, 8 bytes a range. The ends are the
/// units' (`end_of`), not stored twice. Kept as [`RangeMap`] keeps its ranges, sorted chunks of
/// up to [`CHUNK`] under a B-tree keyed by each chunk's first start, except that the last chunk
/// is kept outside the tree: an append (a JIT's units mostly come in address order) is a push
/// onto it, with no walk down the tree.
#[derive(Debug, Default)]
pub(crate) struct OffsetIndex {
    /// Every chunk but the last, each non-empty, keyed by its first start.
    chunks: BTreeMap<u32, Vec<(u32, u32)>>,
    /// The last chunk: its starts are above every start in `chunks`. Empty only when `chunks`
    /// is.
    tail: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Every (start, slot) whose range overlaps `[start, end)`, last first, given each slot's
    /// end. Walking back from the last start before `end`, the first range that ends at or
    /// before `start` ends the overlap (the ranges are disjoint, so their ends are sorted too).
    pub(crate) fn overlapping<'a>(
        &'a self,
        start: u32,
        end: u32,
        end_of: impl Fn(u32) -> u32 + 'a,
    ) -> impl Iterator<Item = (u32, u32)> + 'a {
        let upper = if start < end { end } else { 0 };
        let tail = &self.tail[..self.tail.partition_point(|r| r.0 < upper)];
        tail.iter()
            .rev()
            .chain(
                self.chunks
                    .range(..upper)
                    .rev()
                    .flat_map(move |(_, c)| c[..c.partition_point(|r| r.0 < upper)].iter().rev()),
            )
            .copied()
            .take_while(move |&(_, slot)| end_of(slot) > start)
    }

    /// Add a range starting at `start` for `slot`; the caller has checked that it overlaps no
    /// range here.
    #[inline]
    pub(crate) fn insert(&mut self, start: u32, slot: u32) {
        // The usual case, inline: above every start, room in the tail without growing it.
        let n = self.tail.len();
        if self.tail.last().is_some_and(|r| r.0 < start) && n < self.tail.capacity() && n < CHUNK {
            self.tail.push((start, slot));
            return;
        }
        self.insert_generally(start, slot);
    }

    /// [`OffsetIndex::insert`] anywhere, growing the tail or moving it into the tree.
    #[cold]
    #[inline(never)]
    fn insert_generally(&mut self, start: u32, slot: u32) {
        if self.tail.last().is_none_or(|r| r.0 < start) {
            if self.tail.len() == CHUNK {
                let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
                self.chunks.insert(full[0].0, full);
            }
            self.tail.push((start, slot));
            return;
        }
        if self.tail[0].0 < start {
            if self.tail.len() == CHUNK {
                // Full: its lower half goes into the tree.
                let upper = self.tail.split_off(CHUNK / 2);
                let lower = std::mem::replace(&mut self.tail, upper);
                self.chunks.insert(lower[0].0, lower);
            }
            let at = self.tail.partition_point(|r| r.0 < start);
            if at > 0 {
                self.tail.insert(at, (start, slot));
                return;
            }
        }
        self.insert_in_tree(start, slot);
    }

    /// [`OffsetIndex::insert`] below the tail's first start.
    fn insert_in_tree(&mut self, start: u32, slot: u32) {
        let Some((_, c)) = self.chunks.range_mut(..=start).next_back() else {
            let mut c = match self.chunks.first_entry() {
                Some(first) if first.get().len() < CHUNK => first.remove(),
                _ => Vec::new(),
            };
            c.insert(0, (start, slot));
            self.chunks.insert(start, c);
            return;
        };
        let i = c.partition_point(|r| r.0 < start);
        if c.len() < CHUNK {
            c.insert(i, (start, slot));
            return;
        }
        let mut upper = c.split_off(CHUNK / 2);
        if i >= CHUNK / 2 {
            upper.insert(i - CHUNK / 2, (start, slot));
        } else {
            c.insert(i, (start, slot));
        }
        self.chunks.insert(upper[0].0, upper);
    }

    /// Remove the range starting at `start`; returns its slot.
    pub(crate) fn remove(&mut self, start: u32) -> Option<u32> {
        if self.tail.first().is_some_and(|r| r.0 <= start) {
            let i = self.tail.binary_search_by_key(&start, |r| r.0).ok()?;
            let (_, slot) = self.tail.remove(i);
            if self.tail.is_empty() {
                self.tail = self.chunks.pop_last().map(|(_, c)| c).unwrap_or_default();
            } else {
                shrink_if_sparse(&mut self.tail);
            }
            return Some(slot);
        }
        remove_chunked(&mut self.chunks, start, |r| r.0).map(|(_, slot)| slot)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.tail.is_empty() && self.chunks.is_empty()
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.chunks.values().flatten().chain(&self.tail).copied()
    }
}

/// Remove the entry starting at `start` from sorted entries in chunks (each chunk non-empty,
/// keyed by its first entry's start, all its starts below the next chunk's key), keeping those
/// rules.
fn remove_chunked<K: Ord + Copy, T>(
    chunks: &mut BTreeMap<K, Vec<T>>,
    start: K,
    start_of: impl Fn(&T) -> K,
) -> Option<T> {
    let (&key, c) = chunks.range_mut(..=start).next_back()?;
    let i = c.binary_search_by_key(&start, &start_of).ok()?;
    let entry = c.remove(i);
    if c.is_empty() {
        chunks.remove(&key);
    } else {
        shrink_if_sparse(c);
        if i == 0 {
            // Its key is its first entry's start.
            if let Some(c) = chunks.remove(&key) {
                chunks.insert(start_of(&c[0]), c);
            }
        }
    }
    Some(entry)
}

/// A chunk mostly emptied by removals: its memory follows what it holds.
fn shrink_if_sparse<T>(c: &mut Vec<T>) {
    if c.len() * 4 <= c.capacity() {
        c.shrink_to(c.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_queries() {
        let mut m = RangeMap::default();
        m.insert(0x1000, 0x2000, 'a').unwrap();
        m.insert(0x3000, 0x4000, 'b').unwrap();
        assert_eq!(m.insert(0x1fff, 0x2001, 'c'), Err('c'));
        assert_eq!(m.insert(0x500, 0x1001, 'c'), Err('c'));
        assert_eq!(m.insert(0x5000, 0x5000, 'c'), Err('c'), "empty");
        m.insert(0x2000, 0x3000, 'c').unwrap();
        assert_eq!(m.containing(0x2fff).map(|r| *r.2), Some('c'));
        assert_eq!(m.containing(0x4000), None);
        assert_eq!(m.enclosing(0x3000, 0x4000).map(|r| *r.2), Some('b'));
        assert_eq!(m.enclosing(0x2800, 0x3800), None, "straddles two");
        assert!(m.any_in(0, u64::MAX));
        assert!(!m.any_in(0x4000, u64::MAX));
        assert!(!m.any_in(0, 0x1000));
        assert_eq!(m.containing(u64::MAX), None);
        let all: Vec<char> = m.overlapping_all(0x1fff, 0x3001).map(|r| *r.2).collect();
        assert_eq!(all, ['b', 'c', 'a']);
        assert_eq!(m.overlapping_all(0x2000, 0x2000).count(), 0, "empty");
        assert_eq!(m.overlapping_all(0x4000, u64::MAX).count(), 0);
        assert_eq!(m.remove(0x2000), Some((0x3000, 'c')));
        assert!(!m.any_in(0x2000, 0x3000));
    }

    /// A reproducible stream of pseudo-random numbers (xorshift64).
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// Many inserts and removals (ascending runs, random places, below everything) against a
    /// plain list of the ranges: chunks split, empty, shrink and change keys.
    #[test]
    fn chunks_agree_with_a_list() {
        let mut m = RangeMap::default();
        let mut list: Vec<(u64, u64, u32)> = Vec::new();
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut bump = 1_000_000u64;
        for n in 0..20_000u32 {
            let r = next();
            let (start, len) = match r % 8 {
                // A JIT's ascending placement.
                0..=3 => {
                    bump += 16 + r % 48;
                    (bump, 1 + (r >> 8) % 32)
                }
                4 => (r % 1_000, 1 + (r >> 8) % 8),
                _ => ((r >> 4) % 2_000_000, 1 + (r >> 8) % 64),
            };
            let end = start + len;
            let expect_free = !list.iter().any(|&(s, e, _)| s < end && start < e);
            assert_eq!(
                m.insert(start, end, n).is_ok(),
                expect_free,
                "insert {start}..{end}"
            );
            if expect_free {
                list.push((start, end, n));
            }
            if r.is_multiple_of(3) && !list.is_empty() {
                let (s, e, v) = list.swap_remove((r >> 16) as usize % list.len());
                assert_eq!(m.remove(s), Some((e, v)));
                assert_eq!(m.remove(s), None);
            }
            if n % 1000 == 0 {
                list.sort_unstable();
                let all: Vec<(u64, u64, u32)> = m.iter().map(|(s, e, v)| (s, e, *v)).collect();
                assert_eq!(all, list);
            }
            let q = next() % 2_100_000;
            let found = m.overlapping(q, q + 40).map(|(s, e, v)| (s, e, *v));
            let mut hits: Vec<_> = list
                .iter()
                .copied()
                .filter(|&(s, e, _)| s < q + 40 && q < e)
                .collect();
            hits.sort_unstable();
            assert_eq!(found, hits.last().copied(), "overlapping {q}");
            let every: Vec<_> = m
                .overlapping_all(q, q + 40)
                .map(|(s, e, v)| (s, e, *v))
                .collect();
            assert_eq!(every, hits.iter().rev().copied().collect::<Vec<_>>());
            if let Some(&(s, e, v)) = hits.first() {
                assert_eq!(m.get(s).map(|(e, v)| (e, *v)), Some((e, v)));
                assert_eq!(m.containing(e - 1).map(|r| *r.2), Some(v));
            }
        }
        for (s, e, v) in list.drain(..) {
            assert_eq!(m.remove(s), Some((e, v)));
        }
        assert!(m.is_empty());
    }

    #[test]
    fn range_set() {
        let mut s = RangeSet::default();
        s.insert(0x3000, 0x4000).unwrap();
        s.insert(0x1000, 0x2000).unwrap();
        assert!(s.insert(0x1fff, 0x3001).is_err());
        assert!(s.insert(0x5000, 0x5000).is_err(), "empty");
        s.insert(0x2000, 0x3000).unwrap();
        assert!(s.any_in(0x3fff, 0x4000));
        assert!(!s.any_in(0x4000, u64::MAX));
        assert!(!s.any_in(0, 0x1000));
        s.remove(0x2000);
        assert!(!s.any_in(0x2000, 0x3000));
        s.remove(0x1000);
        s.remove(0x3000);
        assert!(s.is_empty());
    }

    /// The offset index against a plain list: appends, inserts inside and below the tail,
    /// removals that empty the tail and chunks.
    #[test]
    fn offset_index_agrees_with_a_list() {
        let mut ix = OffsetIndex::default();
        let mut list: Vec<(u32, u32)> = Vec::new();
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        // Every range is 4 bytes long at a multiple of 8: disjoint by construction.
        let mut bump = 1_000u32;
        for n in 0..6_000u32 {
            let r = next();
            let start = if r % 4 < 2 {
                bump += 8 * (1 + (r >> 8) as u32 % 4);
                bump
            } else {
                8 * ((r >> 16) as u32 % (bump / 8 + 1))
            };
            if !list.iter().any(|&(s, _)| s == start) {
                ix.insert(start, n);
                list.push((start, n));
            }
            if r % 5 < 2 && !list.is_empty() {
                let (s, slot) = list.swap_remove((r >> 24) as usize % list.len());
                assert_eq!(ix.remove(s), Some(slot));
                assert_eq!(ix.remove(s), None);
            }
            list.sort_unstable();
            if n % 500 == 0 {
                assert_eq!(ix.iter().collect::<Vec<_>>(), list);
            }
            let q = 8 * ((next() >> 8) as u32 % (bump / 8 + 2));
            let slots: std::collections::HashMap<u32, u32> =
                list.iter().map(|&(s, slot)| (slot, s)).collect();
            let found: Vec<_> = ix.overlapping(q, q + 20, |slot| slots[&slot] + 4).collect();
            let want: Vec<_> = list
                .iter()
                .rev()
                .copied()
                .filter(|&(s, _)| s < q + 20 && q < s + 4)
                .collect();
            assert_eq!(found, want, "overlapping {q}");
        }
        for (s, slot) in list.drain(..) {
            assert_eq!(ix.remove(s), Some(slot));
        }
        assert!(ix.is_empty());
    }
}

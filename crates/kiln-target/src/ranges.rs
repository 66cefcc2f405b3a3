//! Disjoint address ranges, found in O(log n): the ownership table's index of what an executor
//! owns (reservations, slabs, allocations' segments, ranges being written).

use std::collections::BTreeMap;

/// Half-open ranges `[start, end)`, non-empty and pairwise disjoint, each with a value. Keyed by
/// start; because the ranges are disjoint their ends are sorted too, so the only range that can
/// overlap `[a, b)` is the last one starting before `b`.
#[derive(Debug)]
pub(crate) struct RangeMap<V> {
    map: BTreeMap<u64, (u64, V)>,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        RangeMap {
            map: BTreeMap::new(),
        }
    }
}

impl<V> RangeMap<V> {
    /// The range that overlaps `[start, end)`, if any (an empty query overlaps nothing).
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> Option<(u64, u64, &V)> {
        if start >= end {
            return None;
        }
        let (&s, (e, v)) = self.map.range(..end).next_back()?;
        (*e > start).then_some((s, *e, v))
    }

    /// Every range that overlaps `[start, end)`, last first.
    pub(crate) fn overlapping_all(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, &V)> + '_ {
        // Disjoint ranges have sorted ends too: walking back from the last range starting
        // before `end`, the first one that ends at or before `start` ends the overlap.
        let upper = if start < end { end } else { 0 };
        self.map
            .range(..upper)
            .rev()
            .map(|(s, (e, v))| (*s, *e, v))
            .take_while(move |&(_, e, _)| e > start)
    }

    /// Whether any range lies (even partly) in `[start, end)`.
    pub(crate) fn any_in(&self, start: u64, end: u64) -> bool {
        self.overlapping(start, end).is_some()
    }

    /// The range holding address `addr`.
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
        self.map.get(&start).map(|(e, v)| (*e, v))
    }

    pub(crate) fn get_mut(&mut self, start: u64) -> Option<(u64, &mut V)> {
        self.map.get_mut(&start).map(|(e, v)| (*e, v))
    }

    /// Add `[start, end)`; refused (returning `v`) if it is empty or overlaps a range.
    pub(crate) fn insert(&mut self, start: u64, end: u64, v: V) -> Result<(), V> {
        if start >= end || self.any_in(start, end) {
            return Err(v);
        }
        self.map.insert(start, (end, v));
        Ok(())
    }

    /// Add `[start, end)`, which the caller has checked is non-empty and overlaps no range
    /// (under the same `&mut` borrow): one B-tree insert, where [`RangeMap::insert`] searches
    /// for an overlap first. Checked again in debug builds.
    pub(crate) fn insert_disjoint(&mut self, start: u64, end: u64, v: V) {
        debug_assert!(start < end && !self.any_in(start, end));
        self.map.insert(start, (end, v));
    }

    /// Remove the range starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) -> Option<(u64, V)> {
        self.map.remove(&start)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64, &V)> {
        self.map.iter().map(|(s, (e, v))| (*s, *e, v))
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
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
}

//! Storage for the session's unit records, sized for a JIT that keeps a million small units:
//! records in fixed chunks that never move once written (a table that grows by rehashing would
//! move every record each time it doubles), found through an index from unit id to slot
//! (arrays of consecutive ids); short lists kept inline while they hold one element (most
//! units define one name, bind to a few units and have few dependents); and the index of
//! segments by address, in sorted runs that ascending inserts fill.

use super::state::Unit;
use rustc_hash::FxHashMap;
use std::ops::{Deref, DerefMut};

/// A list that holds one element without a heap allocation, in two words (for elements of
/// one word or of a fat pointer): a unit record holds three of these. Reads as a slice;
/// `push` and `extend` behave as `Vec`'s.
#[derive(Clone, Debug)]
pub(crate) enum Few<T> {
    One(T),
    /// Any other length: empty without an allocation, else boxed (a `Vec` inline would make
    /// every list three words for the few that hold more than one element).
    #[allow(clippy::box_collection)]
    Many(Option<Box<Vec<T>>>),
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few::Many(None)
    }
}

impl<T> Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(x) => std::slice::from_ref(x),
            Few::Many(Some(v)) => v,
            Few::Many(None) => &[],
        }
    }
}

impl<T> DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Few::One(x) => std::slice::from_mut(x),
            Few::Many(Some(v)) => v,
            Few::Many(None) => &mut [],
        }
    }
}

impl<T> Few<T> {
    pub(crate) fn push(&mut self, x: T) {
        match self {
            Few::Many(Some(v)) if !v.is_empty() => v.push(x),
            Few::Many(_) => *self = Few::One(x),
            Few::One(_) => {
                if let Few::One(first) = std::mem::take(self) {
                    *self = Few::Many(Some(Box::new(vec![first, x])));
                }
            }
        }
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Few<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            Few::One(x) => Some(x).into_iter().chain(Vec::new()),
            Few::Many(v) => None.into_iter().chain(v.map_or_else(Vec::new, |v| *v)),
        }
    }
}

impl<T> From<Few<T>> for Vec<T> {
    fn from(few: Few<T>) -> Vec<T> {
        match few {
            Few::One(x) => vec![x],
            Few::Many(v) => v.map_or_else(Vec::new, |v| *v),
        }
    }
}

impl<T> From<Vec<T>> for Few<T> {
    /// Without copying a list of two or more.
    fn from(mut v: Vec<T>) -> Few<T> {
        match v.len() {
            0 => Few::default(),
            1 => v.pop().map_or_else(Few::default, Few::One),
            _ => Few::Many(Some(Box::new(v))),
        }
    }
}

impl<T> Extend<T> for Few<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for x in items {
            self.push(x);
        }
    }
}

impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut few = Few::default();
        few.extend(items);
        few
    }
}

/// Records per chunk.
const CHUNK: usize = 1024;

/// The live units by id. Ids come from a counter and are never reused; slots are.
#[derive(Default)]
pub(crate) struct UnitTable {
    index: IdIndex,
    /// Records, [`Unit::vacant`] in a free slot (an `Option<Unit>` would take 8 bytes more:
    /// the record has no spare bit pattern for `None`).
    chunks: Vec<Box<[Unit]>>,
    /// Slots of removed units, taken again first.
    free: Vec<u32>,
}

impl UnitTable {
    fn slot(&self, s: u32) -> Option<&Unit> {
        let s = s as usize;
        Some(&self.chunks.get(s / CHUNK)?[s % CHUNK]).filter(|u| !u.is_vacant())
    }

    fn slot_mut(&mut self, s: u32) -> &mut Unit {
        let s = s as usize;
        &mut self.chunks[s / CHUNK][s % CHUNK]
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&Unit> {
        self.slot(self.index.get(*id)?)
    }

    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut Unit> {
        let s = self.index.get(*id)?;
        Some(self.slot_mut(s)).filter(|u| !u.is_vacant())
    }

    /// Enter unit `id` (a new id: a unit already there under it would be dropped).
    #[inline]
    pub(crate) fn insert(&mut self, id: u64, unit: Unit) {
        let s = match self.free.pop() {
            Some(s) => s,
            None => self.add_chunk(),
        };
        *self.slot_mut(s) = unit;
        if let Some(old) = self.index.insert(id, s) {
            self.vacate(old);
        }
    }

    /// A new chunk of free slots (once in [`CHUNK`] inserts): the first of its slots, taken.
    #[cold]
    #[inline(never)]
    fn add_chunk(&mut self) -> u32 {
        let used = self.chunks.len() * CHUNK;
        self.chunks
            .push((0..CHUNK).map(|_| Unit::vacant()).collect());
        // Every slot of the new chunk but the first is free, lowest taken first.
        self.free
            .extend((used + 1..used + CHUNK).rev().map(|s| s as u32));
        used as u32
    }

    /// Slot `s` freed (not on a session's path: its ids are new).
    #[cold]
    #[inline(never)]
    fn vacate(&mut self, s: u32) {
        *self.slot_mut(s) = Unit::vacant();
        self.free.push(s);
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<Unit> {
        let s = self.index.remove(*id)?;
        let unit = std::mem::replace(self.slot_mut(s), Unit::vacant());
        self.free.push(s);
        Some(unit).filter(|u| !u.is_vacant())
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len
    }

    /// The ids of the live units, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.iter().map(|(id, _)| id)
    }

    /// (id, unit) of the live units, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Unit)> + '_ {
        self.index
            .iter()
            .filter_map(|(id, s)| Some((id, self.slot(s)?)))
    }
}

/// Ids per array of [`IdIndex`].
const IDS: usize = 256;

/// Unit id → slot. Ids count up, and a JIT's live units are mostly recent ones: slots in
/// arrays of [`IDS`] consecutive ids (4 bytes a unit, no hashing). An array most of whose units
/// are gone (fewer than an eighth live) hands its survivors to a hash map and is freed, unless
/// new ids still go into it: sparse survivors cost what a hash map costs (about 22 bytes each),
/// never a whole array. The list of arrays grows by a pointer per [`IDS`] ids ever made.
#[derive(Default)]
struct IdIndex {
    /// Array k holds ids k·IDS..(k+1)·IDS.
    dense: Vec<Option<Box<IdArray>>>,
    sparse: FxHashMap<u64, u32>,
    len: usize,
}

struct IdArray {
    /// Slot + 1 of each id; 0: none.
    slots: [u32; IDS],
    live: u32,
}

impl IdIndex {
    fn split(id: u64) -> (usize, usize) {
        ((id / IDS as u64) as usize, (id % IDS as u64) as usize)
    }

    #[inline]
    fn get(&self, id: u64) -> Option<u32> {
        let (k, i) = Self::split(id);
        if let Some(Some(a)) = self.dense.get(k) {
            if let Some(s) = a.slots[i].checked_sub(1) {
                return Some(s);
            }
        }
        self.get_sparse(id)
    }

    /// [`IdIndex::get`] of an id no array holds (a unit of an array handed to the map, or
    /// none).
    #[cold]
    #[inline(never)]
    fn get_sparse(&self, id: u64) -> Option<u32> {
        if self.sparse.is_empty() {
            return None;
        }
        self.sparse.get(&id).copied()
    }

    /// Enter `id` at `slot`; the slot it had, if it was there already.
    #[inline]
    fn insert(&mut self, id: u64, slot: u32) -> Option<u32> {
        let (k, i) = Self::split(id);
        // A session's insert: a new id into the newest array.
        if k + 1 == self.dense.len() {
            if let Some(a) = &mut self.dense[k] {
                if a.slots[i] == 0 {
                    a.slots[i] = slot + 1;
                    a.live += 1;
                    self.len += 1;
                    return None;
                }
            }
        }
        self.insert_elsewhere(id, slot)
    }

    /// [`IdIndex::insert`] of an id that starts an array, is there already, or is in an
    /// older array.
    #[cold]
    #[inline(never)]
    fn insert_elsewhere(&mut self, id: u64, slot: u32) -> Option<u32> {
        let (k, i) = Self::split(id);
        if self.get(id).is_some() {
            // Not on a session's path (its ids are new): the old entry out first.
            let old = self.remove(id);
            self.insert(id, slot);
            return old;
        }
        let newest = k + 1 >= self.dense.len();
        if self.dense.len() <= k {
            // The array that was the newest no longer takes new ids: mostly empty (a JIT that
            // removes what it links), it goes now, not never.
            let last = self.dense.len().checked_sub(1);
            self.dense.resize_with(k + 1, || None);
            if let Some(last) = last {
                if self.dense[last]
                    .as_ref()
                    .is_some_and(|a| (a.live as usize) < IDS / 8)
                {
                    self.hand_to_map(last);
                }
            }
        }
        self.len += 1;
        match &mut self.dense[k] {
            Some(a) => {
                a.slots[i] = slot + 1;
                a.live += 1;
            }
            None if newest => {
                let mut a = Box::new(IdArray {
                    slots: [0; IDS],
                    live: 1,
                });
                a.slots[i] = slot + 1;
                self.dense[k] = Some(a);
            }
            // An id of an array handed to the map already.
            None => {
                self.sparse.insert(id, slot);
            }
        }
        None
    }

    fn remove(&mut self, id: u64) -> Option<u32> {
        let (k, i) = Self::split(id);
        let newest = k + 1 >= self.dense.len();
        if let Some(Some(a)) = self.dense.get_mut(k) {
            if let Some(s) = a.slots[i].checked_sub(1) {
                a.slots[i] = 0;
                a.live -= 1;
                self.len -= 1;
                if !newest && (a.live as usize) < IDS / 8 {
                    self.hand_to_map(k);
                }
                return Some(s);
            }
        }
        let s = self.sparse.remove(&id)?;
        self.len -= 1;
        Some(s)
    }

    /// Array `k`'s ids into the hash map; the array freed.
    fn hand_to_map(&mut self, k: usize) {
        let Some(a) = self.dense[k].take() else {
            return;
        };
        let first = (k * IDS) as u64;
        for (i, &s) in a.slots.iter().enumerate() {
            if let Some(s) = s.checked_sub(1) {
                self.sparse.insert(first + i as u64, s);
            }
        }
    }

    /// (id, slot) of every id, in no particular order.
    fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let dense = self.dense.iter().enumerate().flat_map(|(k, a)| {
            let first = (k * IDS) as u64;
            a.iter().flat_map(move |a| {
                a.slots
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, &s)| Some((first + i as u64, s.checked_sub(1)?)))
            })
        });
        dense.chain(self.sparse.iter().map(|(&id, &s)| (id, s)))
    }
}

/// Entries per run of [`AddrIndex`].
const RUN: usize = 128;

/// Every live unit's segments by start address, for "which unit holds this address". A JIT
/// links units at ascending addresses: a B-tree splits its leaves in the middle, and ascending
/// inserts then leave every leaf half full (62 bytes per segment). Here sorted runs of up to
/// [`RUN`] entries, found by binary search over the runs; a run that fills when the insert
/// goes to its end starts a new run instead of splitting, so ascending inserts fill every run.
/// An entry is 8 bytes, its start and unit relative to its run's (a segment's size is in its
/// unit's record, not here): a run holds starts within 4 GiB of its base and units within
/// 2^24 ids of its base, and a segment that does not fit the run it falls into gets a run of
/// its own (the rare path: a JIT's neighbours are near in address and in id).
#[derive(Default)]
pub(crate) struct AddrIndex {
    /// Non-empty runs, in address order; each sorted by start.
    runs: Vec<Run>,
}

struct Run {
    /// What its entries' starts and units count from.
    base_start: u64,
    base_unit: u64,
    entries: Vec<AddrEntry>,
}

/// One segment: its start's offset from its run's base, and `unit offset << 8 | segment`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct AddrEntry {
    start: u32,
    unit_seg: u32,
}

/// How many unit ids one run spans.
const UNIT_SPAN: u64 = 1 << 24;

impl Run {
    fn new(start: u64, unit: u64, seg: u8) -> Run {
        let mut entries = Vec::with_capacity(RUN);
        entries.push(AddrEntry {
            start: 0,
            unit_seg: u32::from(seg),
        });
        Run {
            base_start: start,
            base_unit: unit,
            entries,
        }
    }

    /// `(start, unit, seg)` as an entry of this run, if it fits.
    #[inline]
    fn entry(&self, start: u64, unit: u64, seg: u8) -> Option<AddrEntry> {
        let start = u32::try_from(start.checked_sub(self.base_start)?).ok()?;
        let unit = unit
            .checked_sub(self.base_unit)
            .filter(|&u| u < UNIT_SPAN)?;
        Some(AddrEntry {
            start,
            unit_seg: (unit as u32) << 8 | u32::from(seg),
        })
    }

    /// [`Run::entry`], the run's base lowered first if `start` or `unit` is below it and
    /// every entry still fits (segments inserted in descending order share runs too).
    fn fitted(&mut self, start: u64, unit: u64, seg: u8) -> Option<AddrEntry> {
        if let Some(e) = self.entry(start, unit, seg) {
            return Some(e);
        }
        let (base_start, base_unit) = (self.base_start.min(start), self.base_unit.min(unit));
        let (last_start, _, _) = self.get(self.entries.last()?);
        let top_unit = self.entries.iter().map(|e| e.unit_seg >> 8).max()?;
        let top_unit = (self.base_unit + u64::from(top_unit)).max(unit);
        if last_start.max(start) - base_start > u64::from(u32::MAX)
            || top_unit - base_unit >= UNIT_SPAN
        {
            return None;
        }
        let (shift_start, shift_unit) = (self.base_start - base_start, self.base_unit - base_unit);
        for e in &mut self.entries {
            // (Both fit: checked above.)
            e.start += shift_start as u32;
            e.unit_seg += (shift_unit as u32) << 8;
        }
        (self.base_start, self.base_unit) = (base_start, base_unit);
        self.entry(start, unit, seg)
    }

    #[inline]
    fn start(&self, e: &AddrEntry) -> u64 {
        self.base_start + u64::from(e.start)
    }

    fn first_start(&self) -> u64 {
        self.entries
            .first()
            .map_or(self.base_start, |e| self.start(e))
    }

    fn last_start(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.base_start, |e| self.start(e))
    }

    /// (start, unit, segment) of `e`.
    fn get(&self, e: &AddrEntry) -> (u64, u64, u8) {
        let unit = self.base_unit + u64::from(e.unit_seg >> 8);
        (self.start(e), unit, e.unit_seg as u8)
    }

    /// Where `start` is or would go in this run.
    fn position(&self, start: u64) -> usize {
        self.entries.partition_point(|e| self.start(e) < start)
    }

    /// Its entries after `at`, as a run of the same base.
    fn split_off(&mut self, at: usize) -> Run {
        let mut entries = self.entries.split_off(at);
        entries.reserve(RUN / 2);
        Run {
            base_start: self.base_start,
            base_unit: self.base_unit,
            entries,
        }
    }

    /// `other`'s entries appended, if every one fits this run's base.
    fn absorb(&mut self, other: &Run) -> bool {
        let moved: Option<Vec<AddrEntry>> = other
            .entries
            .iter()
            .map(|e| {
                let (start, unit, seg) = other.get(e);
                self.entry(start, unit, seg)
            })
            .collect();
        match moved {
            Some(moved) => {
                self.entries.extend(moved);
                true
            }
            None => false,
        }
    }
}

impl AddrIndex {
    /// The run that holds (or would hold) `start`: the last whose first start is at most
    /// `start`, or the first.
    fn run_of(&self, start: u64) -> usize {
        self.runs
            .partition_point(|r| r.first_start() <= start)
            .saturating_sub(1)
    }

    /// Enter segment `seg` of `unit`, starting at `start` (a start not in the index).
    #[inline]
    pub(crate) fn insert(&mut self, start: u64, unit: u64, seg: u8) {
        // A JIT's usual insert: past the last entry, into the last run's room and span.
        if let Some(run) = self.runs.last_mut() {
            let past = run.entries.last().is_some_and(|e| run.start(e) < start);
            if past && run.entries.len() < RUN {
                if let Some(e) = run.entry(start, unit, seg) {
                    run.entries.push(e);
                    return;
                }
            }
        }
        self.insert_slow(start, unit, seg);
    }

    /// [`AddrIndex::insert`] of a segment not past the last, or not in the last run's room
    /// or span.
    #[cold]
    #[inline(never)]
    fn insert_slow(&mut self, start: u64, unit: u64, seg: u8) {
        // Past the last entry: onto the last run, or a new run when that is full or too far.
        let last = self.runs.len().checked_sub(1);
        if last.is_none_or(|l| self.runs[l].last_start() < start) {
            match last.map(|l| &mut self.runs[l]) {
                Some(run) if run.entries.len() < RUN => {
                    if let Some(e) = run.fitted(start, unit, seg) {
                        run.entries.push(e);
                        return;
                    }
                }
                _ => {}
            }
            self.runs.push(Run::new(start, unit, seg));
            return;
        }
        let r = self.run_of(start);
        let run = &mut self.runs[r];
        let at = run.position(start);
        let Some(entry) = run.fitted(start, unit, seg) else {
            // Not within the run's span: a run of its own between the run's two parts.
            let mut place = r + 1;
            if at < run.entries.len() {
                let right = run.split_off(at);
                if run.entries.is_empty() {
                    self.runs[r] = right;
                    place = r;
                } else {
                    self.runs.insert(r + 1, right);
                }
            }
            self.runs.insert(place, Run::new(start, unit, seg));
            return;
        };
        if run.entries.len() < RUN {
            run.entries.insert(at, entry);
        } else if at == RUN {
            // Past the end of a full run: a run of its own, the full one stays full.
            self.runs.insert(r + 1, Run::new(start, unit, seg));
        } else {
            let mut right = run.split_off(RUN / 2);
            match at.checked_sub(RUN / 2) {
                Some(k) => right.entries.insert(k, entry),
                None => run.entries.insert(at, entry),
            }
            self.runs.insert(r + 1, right);
        }
    }

    /// Take out the segment starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) {
        if self.runs.is_empty() {
            return;
        }
        let r = self.run_of(start);
        let run = &mut self.runs[r];
        let at = run.position(start);
        if run.entries.get(at).is_none_or(|e| run.start(e) != start) {
            return;
        }
        run.entries.remove(at);
        if run.entries.is_empty() {
            self.runs.remove(r);
        } else if run.entries.len() < RUN / 4 {
            // A short run joins its neighbour when both fit in one (and its entries in the
            // neighbour's span): removals leave no trail of short runs (each holding the
            // capacity it had when full).
            let len = run.entries.len();
            let next = r + 1;
            if self
                .runs
                .get(next)
                .is_some_and(|n| n.entries.len() + len <= RUN)
                && self.join(r, next)
            {
                return;
            }
            if r > 0 && self.runs[r - 1].entries.len() + len <= RUN && self.join(r - 1, r) {
                return;
            }
            self.runs[r].entries.shrink_to(RUN / 2);
        }
    }

    /// Run `right` (the one after `left`) into `left`, if its entries fit `left`'s span.
    fn join(&mut self, left: usize, right: usize) -> bool {
        let (a, b) = self.runs.split_at_mut(right);
        if !a[left].absorb(&b[0]) {
            return false;
        }
        self.runs.remove(right);
        true
    }

    /// The segment that starts last at or below `addr` (the only one that can hold it):
    /// (start, unit, segment index).
    pub(crate) fn last_at_or_below(&self, addr: u64) -> Option<(u64, u64, u8)> {
        let run = self.runs.get(self.run_of(addr))?;
        let i = run
            .entries
            .partition_point(|e| run.start(e) <= addr)
            .checked_sub(1)?;
        Some(run.get(&run.entries[i]))
    }

    /// The segments that start below `end`, highest start first: (start, unit, segment).
    pub(crate) fn below(&self, end: u64) -> impl Iterator<Item = (u64, u64, u8)> + '_ {
        let r = self.runs.partition_point(|r| r.first_start() < end);
        let upto = r
            .checked_sub(1)
            .map_or(0, |last| self.runs[last].position(end));
        self.runs[..r]
            .iter()
            .rev()
            .enumerate()
            .flat_map(move |(k, run)| {
                let entries = if k == 0 {
                    &run.entries[..upto]
                } else {
                    &run.entries[..]
                };
                entries.iter().rev().map(move |e| run.get(e))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{AddrIndex, Few, IdIndex, IDS, RUN};

    #[test]
    fn few_behaves_as_a_vec() {
        let mut f: Few<u64> = Few::default();
        assert!(f.is_empty());
        f.push(7);
        assert!(matches!(f, Few::One(7)), "one element stays inline");
        f.push(8);
        f.push(9);
        assert_eq!(&*f, &[7, 8, 9]);
        let mut f: Few<u64> = Few::default();
        f.extend([1, 2]);
        f[1] = 3;
        assert!(f.contains(&3));
        let g: Few<u64> = [5].into_iter().collect();
        assert!(matches!(g, Few::One(5)));
        assert_eq!(g.len(), 1);
        assert_eq!(g.clone().into_iter().collect::<Vec<_>>(), vec![5]);
        assert_eq!(Vec::from(g), vec![5]);
        let many: Few<u64> = [1, 2, 3].into_iter().collect();
        assert_eq!(many.clone().into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(Vec::from(many), vec![1, 2, 3]);
        assert!(matches!(Few::from(vec![4]), Few::One(4)));
        assert!(Few::<u64>::from(Vec::new()).is_empty());
        assert_eq!(&*Few::from(vec![4, 5]), &[4, 5]);
    }

    #[test]
    fn few_is_two_words() {
        use std::mem::size_of;
        assert_eq!(size_of::<Few<u64>>(), 16);
        assert_eq!(size_of::<Few<std::sync::Arc<str>>>(), 16);
    }

    /// The index against a sorted list, through ascending, descending and scattered inserts
    /// and removals.
    #[test]
    fn addr_index_finds_what_a_sorted_list_finds() {
        let mut index = AddrIndex::default();
        let mut model: Vec<(u64, u64, u64)> = Vec::new(); // (start, end, unit)
        let check = |index: &AddrIndex, model: &[(u64, u64, u64)]| {
            assert_eq!(
                index.runs.iter().map(|r| r.entries.len()).sum::<usize>(),
                model.len()
            );
            for &(s, e, u) in model {
                let seg = (u % 3) as u8;
                assert_eq!(index.last_at_or_below(s), Some((s, u, seg)));
                assert_eq!(index.last_at_or_below(e), Some((s, u, seg)));
                assert_ne!(index.last_at_or_below(s - 1), Some((s, u, seg)));
                let below: Vec<u64> = index.below(e).map(|x| x.0).collect();
                let want: Vec<u64> = model
                    .iter()
                    .rev()
                    .filter(|x| x.0 < e)
                    .map(|x| x.0)
                    .collect();
                assert_eq!(below, want);
            }
            assert_eq!(index.last_at_or_below(0), None);
            assert_eq!(index.below(0).count(), 0);
        };
        let add = |index: &mut AddrIndex, model: &mut Vec<(u64, u64, u64)>, k: u64| {
            let (s, e) = (0x1000 + k * 64, 0x1000 + k * 64 + 40);
            index.insert(s, k + 1, ((k + 1) % 3) as u8);
            model.push((s, e, k + 1));
            model.sort_unstable();
        };
        // Ascending: runs fill completely.
        for k in 0..(3 * RUN as u64) {
            add(&mut index, &mut model, 2 * k + 1000);
        }
        assert_eq!(index.runs.len(), 3);
        assert!(index.runs.iter().all(|r| r.entries.len() == RUN));
        check(&index, &model);
        // Descending and scattered into the middle: runs split.
        for k in (0..300u64).rev() {
            add(&mut index, &mut model, k);
        }
        for k in 0..(3 * RUN as u64) {
            add(&mut index, &mut model, 2 * k + 1001);
        }
        check(&index, &model);
        // Remove most, scattered: short runs merge.
        let starts: Vec<u64> = model.iter().map(|x| x.0).collect();
        for (i, s) in starts.iter().enumerate() {
            if i % 7 != 0 {
                index.remove(*s);
            }
        }
        model = model
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 7 == 0)
            .map(|x| x.1)
            .collect();
        check(&index, &model);
        assert!(index.runs.len() <= model.len().div_ceil(RUN / 4));
        // Removing what is not there changes nothing.
        index.remove(3);
        index.remove(starts[1]);
        check(&index, &model);
        for s in starts {
            index.remove(s);
        }
        assert!(index.runs.is_empty());
    }

    /// Segments whose starts lie more than 4 GiB apart and whose units more than 2^24 ids
    /// apart, in ascending, descending and scattered order: each outside its neighbours' span
    /// takes a run of its own, and every lookup finds what a sorted list finds.
    #[test]
    fn addr_index_keeps_far_segments_in_runs_of_their_own() {
        let mut index = AddrIndex::default();
        let mut model: Vec<(u64, u64, u8)> = Vec::new(); // (start, unit, segment)
        let far = |k: u64| -> (u64, u64, u8) {
            let start = 0x1000 + (k % 7) * (5 << 30) + k * 64;
            let unit = 1 + (k % 5) * (1 << 24) + k;
            (start, unit, (k % 3) as u8)
        };
        let mut order: Vec<u64> = (0..600).collect();
        // Scattered: a fixed permutation.
        order.sort_by_key(|&k| (k * 7919) % 601);
        for (n, k) in order.into_iter().enumerate() {
            let (s, u, g) = far(k);
            index.insert(s, u, g);
            model.push((s, u, g));
            if n % 50 == 0 || n == 599 {
                model.sort_unstable();
                for &(s, u, g) in &model {
                    assert_eq!(index.last_at_or_below(s), Some((s, u, g)));
                    assert_eq!(index.last_at_or_below(s + 63), Some((s, u, g)));
                }
                let below: Vec<(u64, u64, u8)> = index.below(u64::MAX).collect();
                let want: Vec<(u64, u64, u8)> = model.iter().rev().copied().collect();
                assert_eq!(below, want);
            }
        }
        for r in &index.runs {
            let starts: Vec<u64> = r.entries.iter().map(|e| r.start(e)).collect();
            assert!(starts.windows(2).all(|w| w[0] < w[1]));
        }
        // Removed, most of them: runs join only when the span allows; none is left empty.
        for (i, &(s, _, _)) in model.iter().enumerate() {
            if i % 5 != 0 {
                index.remove(s);
            }
        }
        model = model.into_iter().step_by(5).collect();
        assert!(index.runs.iter().all(|r| !r.entries.is_empty()));
        let below: Vec<(u64, u64, u8)> = index.below(u64::MAX).collect();
        assert_eq!(below, model.iter().rev().copied().collect::<Vec<_>>());
        for &(s, u, g) in &model {
            assert_eq!(index.last_at_or_below(s), Some((s, u, g)));
        }
        for &(s, _, _) in &model {
            index.remove(s);
        }
        assert!(index.runs.is_empty());
    }

    #[test]
    fn addr_entries_are_one_word() {
        assert_eq!(std::mem::size_of::<super::AddrEntry>(), 8);
    }

    /// The id index against a map, with ids removed so that arrays go sparse and ids entered
    /// again into arrays handed over already.
    #[test]
    fn id_index_finds_what_a_map_finds() {
        use std::collections::BTreeMap;
        let mut index = IdIndex::default();
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        let n = 10 * IDS as u64;
        for id in 1..n {
            index.insert(id, (id * 7) as u32);
            model.insert(id, (id * 7) as u32);
        }
        // Keep every 16th id of the older arrays: they go to the map.
        for id in 1..n - IDS as u64 {
            if id % 16 != 0 {
                assert_eq!(index.remove(id), model.remove(&id));
            }
        }
        assert!(!index.sparse.is_empty());
        assert!(index.dense[..9].iter().all(Option::is_none));
        // An id of a freed array, entered again (not what a session does, but allowed).
        assert_eq!(index.insert(17, 5), None);
        model.insert(17, 5);
        // An id there already: its old slot comes back.
        assert_eq!(index.insert(16, 9), Some(16 * 7));
        assert_eq!(index.insert(n - 1, 8), Some(((n - 1) * 7) as u32));
        model.insert(16, 9);
        model.insert(n - 1, 8);
        assert_eq!(index.remove(3), None);
        assert_eq!(index.len, model.len());
        for id in 0..n + 5 {
            assert_eq!(index.get(id), model.get(&id).copied(), "id {id}");
        }
        let mut all: Vec<(u64, u32)> = index.iter().collect();
        all.sort_unstable();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }

    /// A unit linked and removed, again and again: no array outlives its ids.
    #[test]
    fn id_index_of_link_and_remove_cycles_stays_small() {
        let mut index = IdIndex::default();
        for id in 1..(20 * IDS as u64) {
            index.insert(id, 0);
            assert_eq!(index.remove(id), Some(0));
        }
        assert_eq!(index.dense.iter().filter(|a| a.is_some()).count(), 1);
        assert!(index.sparse.is_empty() && index.len == 0);
    }
}

//! Storage for the session's unit records, sized for a JIT that keeps a million small units:
//! records in fixed chunks that never move once written (a table that grows by rehashing would
//! move every record each time it doubles), found through a small index from unit id to slot;
//! and short lists kept inline while they hold one element (most units define one name, bind
//! to a few units and have few dependents).

use super::state::Unit;
use rustc_hash::FxHashMap;
use std::ops::{Deref, DerefMut};

/// A list that holds one element without a heap allocation. Reads as a slice; `push`,
/// `retain` and `extend` behave as `Vec`'s.
#[derive(Clone, Debug)]
pub(crate) enum Few<T> {
    One(T),
    /// Any other length (empty: no allocation either).
    Many(Vec<T>),
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few::Many(Vec::new())
    }
}

impl<T> Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(x) => std::slice::from_ref(x),
            Few::Many(v) => v,
        }
    }
}

impl<T> DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Few::One(x) => std::slice::from_mut(x),
            Few::Many(v) => v,
        }
    }
}

impl<T> Few<T> {
    pub(crate) fn push(&mut self, x: T) {
        match self {
            Few::Many(v) if !v.is_empty() => v.push(x),
            Few::Many(_) => *self = Few::One(x),
            Few::One(_) => {
                if let Few::One(first) = std::mem::take(self) {
                    *self = Few::Many(vec![first, x]);
                }
            }
        }
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            Few::One(x) if !keep(x) => *self = Few::default(),
            Few::One(_) => {}
            Few::Many(v) => v.retain(keep),
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
            Few::Many(v) => None.into_iter().chain(v),
        }
    }
}

impl<T> From<Few<T>> for Vec<T> {
    fn from(few: Few<T>) -> Vec<T> {
        match few {
            Few::One(x) => vec![x],
            Few::Many(v) => v,
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
    /// Unit id → slot.
    index: FxHashMap<u64, u32>,
    chunks: Vec<Box<[Option<Unit>]>>,
    /// Slots of removed units, taken again first.
    free: Vec<u32>,
}

impl UnitTable {
    fn slot(&self, s: u32) -> Option<&Unit> {
        let s = s as usize;
        self.chunks.get(s / CHUNK)?[s % CHUNK].as_ref()
    }

    fn slot_mut(&mut self, s: u32) -> &mut Option<Unit> {
        let s = s as usize;
        &mut self.chunks[s / CHUNK][s % CHUNK]
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&Unit> {
        self.slot(*self.index.get(id)?)
    }

    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut Unit> {
        let s = *self.index.get(id)?;
        self.slot_mut(s).as_mut()
    }

    /// Enter unit `id` (an id not in the table).
    pub(crate) fn insert(&mut self, id: u64, unit: Unit) {
        self.remove(&id);
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                let used = self.chunks.len() * CHUNK;
                self.chunks.push((0..CHUNK).map(|_| None).collect());
                // Every slot of the new chunk but the first is free, lowest taken first.
                self.free
                    .extend((used + 1..used + CHUNK).rev().map(|s| s as u32));
                used as u32
            }
        };
        *self.slot_mut(s) = Some(unit);
        self.index.insert(id, s);
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<Unit> {
        let s = self.index.remove(id)?;
        let unit = self.slot_mut(s).take();
        self.free.push(s);
        unit
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The ids of the live units, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> + '_ {
        self.index.keys()
    }

    /// (id, unit) of the live units, in no particular order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        self.into_iter()
    }
}

/// `for (id, unit) in &table`, as over a map.
pub(crate) struct Iter<'a> {
    table: &'a UnitTable,
    index: std::collections::hash_map::Iter<'a, u64, u32>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a u64, &'a Unit);
    fn next(&mut self) -> Option<Self::Item> {
        self.index
            .by_ref()
            .find_map(|(id, s)| Some((id, self.table.slot(*s)?)))
    }
}

impl<'a> IntoIterator for &'a UnitTable {
    type Item = (&'a u64, &'a Unit);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        Iter {
            table: self,
            index: self.index.iter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Few;

    #[test]
    fn few_behaves_as_a_vec() {
        let mut f: Few<u64> = Few::default();
        assert!(f.is_empty());
        f.push(7);
        assert!(matches!(f, Few::One(7)), "one element stays inline");
        f.push(8);
        f.push(9);
        assert_eq!(&*f, &[7, 8, 9]);
        f.retain(|x| *x != 8);
        assert_eq!(&*f, &[7, 9]);
        f.retain(|_| false);
        assert!(f.is_empty());
        f.extend([1, 2]);
        f[1] = 3;
        assert!(f.contains(&3));
        let g: Few<u64> = [5].into_iter().collect();
        assert!(matches!(g, Few::One(5)));
        let mut one = g.clone();
        one.retain(|_| false);
        assert!(one.is_empty() && g.len() == 1);
        assert_eq!(g.clone().into_iter().collect::<Vec<_>>(), vec![5]);
        assert_eq!(Vec::from(g), vec![5]);
        let many: Few<u64> = [1, 2, 3].into_iter().collect();
        assert_eq!(many.clone().into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(Vec::from(many), vec![1, 2, 3]);
    }
}

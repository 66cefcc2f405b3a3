//! A scope's symbol table: name → definition, sized for a JIT that keeps a million one-name
//! units. The names lie end to end in one string per table and an entry says where its name
//! is: a name costs its bytes (an `Arc<str>` each would cost an allocation of at least 32
//! bytes and a 16-byte pointer in the entry). Entries are 32 bytes.

use super::state::Def;
use hashbrown::hash_table::{Entry, HashTable, OccupiedEntry, VacantEntry};
use std::hash::Hasher;

/// The hash a [`SymbolTable`] files `name` under. A link hashes each name once: binding looks
/// it up in every scope of the search order with that hash, publishing checks for clashes and
/// inserts with it (computed before the session's lock is taken).
pub(crate) fn name_hash(name: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    h.finish()
}

/// A scope's symbols, hashed by [`name_hash`] over the names' bytes (so a link looks names up
/// as the bytes it has, without checking they are UTF-8 first; a name that is not UTF-8 is
/// never found, as no definition's name is such).
///
/// In [`SHARDS`] hash tables, picked by bits of the hash the tables themselves do not use
/// (they take the low bits for the bucket, the top seven for the tag): a table grows by
/// rehashing all of its entries, under the session's write lock, and a shard's growth stops
/// other threads' links for a sixteenth of what one table's would.
#[derive(Default)]
pub(crate) struct SymbolTable {
    shards: [HashTable<Symbol>; SHARDS],
    names: Names,
}

const SHARDS: usize = 16;

/// The shard of a name's hash.
fn shard(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

/// The names of a [`SymbolTable`]'s entries, end to end.
#[derive(Default)]
pub(crate) struct Names {
    text: String,
    /// Bytes of `text` no entry names any more (removed entries'): compacted away when they
    /// are more than half (a JIT that links and removes for ever keeps at most twice its live
    /// names' bytes).
    dead: usize,
}

/// Below this many bytes of names a table is not compacted.
const COMPACT_FROM: usize = 4096;

/// One name of a scope: where its name is in the table's [`Names`], and its definition. The
/// defining unit's record keeps the name's hash ([`super::state::Unit::names`]).
pub(crate) struct Symbol {
    at: u32,
    len: u32,
    pub def: Def,
}

impl Names {
    fn of(&self, s: &Symbol) -> &str {
        let at = s.at as usize;
        // (An entry names what the table appended for it: in bounds, on char boundaries.)
        self.text.get(at..at + s.len as usize).unwrap_or_default()
    }

    /// Whether `s` is unit `unit`'s entry under `hash` (the table's probe may offer entries
    /// of other hashes).
    fn is(&self, s: &Symbol, hash: u64, unit: u64) -> bool {
        s.def.unit() == unit && name_hash(self.of(s).as_bytes()) == hash
    }
}

/// A name's slot in a [`SymbolTable`], as [`SymbolTable::slot`] finds it.
pub(crate) enum Slot<'t> {
    Taken(OccupiedEntry<'t, Symbol>),
    Free(FreeSlot<'t>),
}

/// Where a name that is not in a [`SymbolTable`] goes.
pub(crate) struct FreeSlot<'t> {
    entry: VacantEntry<'t, Symbol>,
    names: &'t mut Names,
}

impl FreeSlot<'_> {
    /// Enter `name` (the name the slot was found for: [`SymbolTable::make_room`] was asked
    /// for its bytes) with `def`.
    pub(crate) fn insert(self, name: &str, def: Def) {
        let at = self.names.text.len();
        self.names.text.push_str(name);
        self.entry.insert(Symbol {
            at: at as u32,
            len: name.len() as u32,
            def,
        });
    }
}

impl SymbolTable {
    /// The definition of `name`, whose [`name_hash`] is `hash`.
    pub(crate) fn find(&self, hash: u64, name: &[u8]) -> Option<&Def> {
        let names = &self.names;
        self.shards[shard(hash)]
            .find(hash, |s| names.of(s).as_bytes() == name)
            .map(|s| &s.def)
    }

    /// Where `name` (hashed to `hash`) is or would go: one probe for a check and an insert.
    pub(crate) fn slot(&mut self, hash: u64, name: &str) -> Slot<'_> {
        let names = &self.names;
        let entry = self.shards[shard(hash)].entry(
            hash,
            |s| names.of(s) == name,
            |s| name_hash(names.of(s).as_bytes()),
        );
        match entry {
            Entry::Occupied(o) => Slot::Taken(o),
            Entry::Vacant(entry) => Slot::Free(FreeSlot {
                entry,
                names: &mut self.names,
            }),
        }
    }

    /// Whether `more` bytes of new names fit (names are found by 32-bit offsets), after
    /// compacting the names if that helps.
    pub(crate) fn make_room(&mut self, more: usize) -> bool {
        let fits = |t: &Self| t.names.text.len().saturating_add(more) <= u32::MAX as usize;
        if !fits(self) && self.names.dead > 0 {
            self.compact();
        }
        fits(self)
    }

    /// Take out the entry of unit `unit` under `hash` (one of its record's names).
    pub(crate) fn remove_of(&mut self, hash: u64, unit: u64) {
        let names = &self.names;
        let table = &mut self.shards[shard(hash)];
        if let Ok(o) = table.find_entry(hash, |s| names.is(s, hash, unit)) {
            let (s, _) = o.remove();
            self.names.dead += s.len as usize;
            let n = &self.names;
            if n.dead > n.text.len() / 2 && n.text.len() >= COMPACT_FROM {
                self.compact();
            }
        }
    }

    /// The names no entry uses, dropped: every entry's name copied into a new string.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.names);
        let mut text = String::with_capacity(old.text.len() - old.dead);
        for s in self.shards.iter_mut().flat_map(|t| t.iter_mut()) {
            let at = text.len();
            text.push_str(old.of(s));
            s.at = at as u32;
        }
        self.names = Names { text, dead: 0 };
    }

    /// The names and definitions of unit `unit`, whose record's names are `hashes`, in that
    /// order.
    pub(crate) fn of_unit(&self, hashes: &[u64], unit: u64) -> Vec<(&str, Def)> {
        let names = &self.names;
        let mut out = Vec::with_capacity(hashes.len());
        for (i, &h) in hashes.iter().enumerate() {
            // (Two names with one hash: both found the first time.)
            if !hashes[..i].contains(&h) {
                let table = &self.shards[shard(h)];
                let mine = table.iter_hash(h).filter(|s| names.is(s, h, unit));
                out.extend(mine.map(|s| (names.of(s), s.def)));
            }
        }
        out
    }

    /// The definitions of [`SymbolTable::of_unit`], each given to `f` to change.
    pub(crate) fn for_unit_mut(&mut self, hashes: &[u64], unit: u64, mut f: impl FnMut(&mut Def)) {
        let names = &self.names;
        for (i, &h) in hashes.iter().enumerate() {
            if !hashes[..i].contains(&h) {
                let table = &mut self.shards[shard(h)];
                for s in table.iter_hash_mut(h).filter(|s| names.is(s, h, unit)) {
                    f(&mut s.def);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::state::SymbolKind;

    fn def(unit: u64) -> Def {
        Def::new(0x1000 * unit, 8, unit, SymbolKind::Function, true, false)
    }

    fn add(t: &mut SymbolTable, name: &str, unit: u64) {
        let h = name_hash(name.as_bytes());
        assert!(t.make_room(name.len()));
        match t.slot(h, name) {
            Slot::Free(slot) => slot.insert(name, def(unit)),
            Slot::Taken(_) => panic!("{name} is there already"),
        }
    }

    #[test]
    fn entries_are_four_words() {
        assert_eq!(std::mem::size_of::<Symbol>(), 32);
    }

    #[test]
    fn names_spread_over_the_shards() {
        let mut t = SymbolTable::default();
        for i in 0..4096u64 {
            add(&mut t, &format!("f{i}"), i + 1);
        }
        for table in &t.shards {
            assert!((128..=384).contains(&table.len()), "{}", table.len());
        }
    }

    /// Names linked and removed again and again: found while live, gone when removed, and the
    /// names' string stays within twice the live names' bytes.
    #[test]
    fn names_are_found_removed_and_compacted() {
        let mut t = SymbolTable::default();
        let name = |i: u64| format!("function_{i}");
        let live = 200u64;
        for i in 1..20_000u64 {
            add(&mut t, &name(i), i);
            if i > live {
                let old = i - live;
                t.remove_of(name_hash(name(old).as_bytes()), old);
            }
            if i % 997 == 0 {
                for j in i.saturating_sub(live - 1).max(1)..=i {
                    let n = name(j);
                    let d = t.find(name_hash(n.as_bytes()), n.as_bytes());
                    assert_eq!(d.map(|d| d.unit()), Some(j), "{n}");
                }
                let gone = name(i - live);
                assert!(t
                    .find(name_hash(gone.as_bytes()), gone.as_bytes())
                    .is_none());
                let live_bytes: usize = (i - live + 1..=i).map(|j| name(j).len()).sum();
                assert!(t.names.text.len() <= (2 * live_bytes).max(COMPACT_FROM));
            }
        }
        // Looked up by unit, and changed in place.
        let n = name(19_999);
        let h = name_hash(n.as_bytes());
        assert_eq!(t.of_unit(&[h, h], 19_999), vec![(n.as_str(), def(19_999))]);
        assert!(
            t.of_unit(&[h], 19_998).is_empty(),
            "another unit's hash finds nothing"
        );
        t.for_unit_mut(&[h], 19_999, |d| d.addr = 7);
        assert_eq!(t.find(h, n.as_bytes()).map(|d| d.addr), Some(7));
        // Not a name at all.
        assert!(t.find(name_hash(b"\xff"), b"\xff").is_none());
    }
}

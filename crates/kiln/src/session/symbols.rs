//! A scope's symbol table: name → definition, sized for a JIT that keeps a million one-name
//! units. The names lie end to end in one byte string per table, each behind its length, and
//! an entry says where its name is: a name costs its bytes and a byte or two (an `Arc<str>`
//! each would cost an allocation of at least 32 bytes and a 16-byte pointer in the entry).
//! Entries are 24 bytes: the name's length is in the string, and a size of 4 GiB or more too
//! (the rare path: [`BIG`]).

use super::state::Def;
use hashbrown::hash_table::{Entry, HashTable, OccupiedEntry, VacantEntry};
use std::hash::Hasher;

/// The key a [`SymbolTable`] files `name` under: 32 bits of a hash of its bytes. A link hashes
/// each name once: binding looks it up in every scope of the search order with that key,
/// publishing checks for clashes and inserts with it (computed before the session's lock is
/// taken), and a unit's record keeps the keys of its names (4 bytes each, where the whole
/// 64-bit hash took 8) to find its entries again.
pub(crate) fn name_key(name: &[u8]) -> u32 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    // (The product's high half depends on every bit of the hash.)
    (h.finish().wrapping_mul(MIX) >> 32) as u32
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
const SPREAD: u64 = 0xd6e8_feb8_6659_fd93;

/// The 64-bit hash the tables take for a key: its low bits pick the bucket (the key's low bits,
/// permuted), its top seven the tag (mixed from all 32).
fn table_hash(key: u32) -> u64 {
    u64::from(key).wrapping_mul(SPREAD)
}

/// A scope's symbols, filed by [`name_key`] over the names' bytes (so a link looks names up
/// as the bytes it has, without checking they are UTF-8 first; a name that is not UTF-8 is
/// never found, as no definition's name is such).
///
/// In [`SHARDS`] hash tables, picked by the key's top bits (the tables' buckets take its low
/// bits): a table grows by rehashing all of its entries, under the session's write lock, and a
/// shard's growth stops other threads' links for a sixteenth of what one table's would.
#[derive(Default)]
pub(crate) struct SymbolTable {
    shards: [HashTable<Symbol>; SHARDS],
    names: Names,
}

const SHARDS: usize = 16;

/// The shard of a name's key.
fn shard(key: u32) -> usize {
    (key >> 28) as usize % SHARDS
}

/// The names of a [`SymbolTable`]'s entries, end to end, each as its length (LEB128: one byte
/// below 128), its bytes and, for a [`BIG`] symbol, its size (8 bytes, little-endian).
#[derive(Default)]
pub(crate) struct Names {
    text: Vec<u8>,
    /// Bytes of `text` no entry names any more (removed entries'): compacted away when they
    /// are more than half (a JIT that links and removes for ever keeps at most twice its live
    /// names' bytes).
    dead: usize,
}

/// Below this many bytes of names a table is not compacted.
const COMPACT_FROM: usize = 4096;

/// [`Symbol::size`] of a symbol of 4 GiB or more: its size is after its name.
const BIG: u32 = u32::MAX;

/// One name of a scope: where its name is in the table's [`Names`], and its definition (a
/// [`Def`] packed: its size in 32 bits unless [`BIG`]). The defining unit's record keeps the
/// name's key ([`super::state::Unit::names`]).
pub(crate) struct Symbol {
    addr: u64,
    /// [`Def::unit_flags`].
    unit_flags: u64,
    at: u32,
    size: u32,
}

/// The bytes [`Names`] takes for a name of `len` bytes and a symbol of `size` bytes: what
/// [`SymbolTable::make_room`] is asked for.
pub(crate) fn room_for(len: usize, size: u64) -> usize {
    let big = if size >= u64::from(BIG) { 8 } else { 0 };
    leb128_len(len) + len + big
}

fn leb128_len(mut x: usize) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

impl Names {
    /// The name at `at`, and where its bytes end.
    fn name_end(&self, at: u32) -> (&[u8], usize) {
        let mut i = at as usize;
        let (mut len, mut shift) = (0usize, 0);
        // (An entry names what the table appended for it: in bounds; a length read past the
        // end, or a shift past 63 bits, would give an empty name, not a panic.)
        while let Some(&b) = self.text.get(i) {
            i += 1;
            len |= usize::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        let end = i.saturating_add(len);
        (self.text.get(i..end).unwrap_or_default(), end)
    }

    fn name(&self, at: u32) -> &[u8] {
        let at = at as usize;
        match self.text.get(at) {
            // (Most names: shorter than 128 bytes, a length of one byte.)
            Some(&len) if len < 0x80 => self
                .text
                .get(at + 1..at + 1 + usize::from(len))
                .unwrap_or_default(),
            _ => self.name_end(at as u32).0,
        }
    }

    /// The definition of entry `s`.
    fn def(&self, s: &Symbol) -> Def {
        let size = if s.size == BIG {
            let (_, end) = self.name_end(s.at);
            let bytes = self.text.get(end..end + 8).unwrap_or_default();
            u64::from_le_bytes(bytes.try_into().unwrap_or_default())
        } else {
            u64::from(s.size)
        };
        Def::from_packed(s.addr, size, s.unit_flags)
    }

    /// The bytes entry `s` takes in `text`.
    fn len_of(&self, s: &Symbol) -> usize {
        let (_, end) = self.name_end(s.at);
        end - s.at as usize + if s.size == BIG { 8 } else { 0 }
    }

    /// Append `name` for a symbol of `size` bytes: its offset and its [`Symbol::size`].
    fn append(&mut self, name: &[u8], size: u64) -> (u32, u32) {
        let at = self.text.len() as u32;
        // (Most names: a length of one byte, a size that fits the entry.)
        let small = u32::try_from(size).ok().filter(|&s| s != BIG);
        if let (Some(small), true) = (small, name.len() < 0x80) {
            self.text.reserve(1 + name.len());
            self.text.push(name.len() as u8);
            self.text.extend_from_slice(name);
            return (at, small);
        }
        self.text.reserve(room_for(name.len(), size));
        let mut len = name.len();
        while len >= 0x80 {
            self.text.push(len as u8 | 0x80);
            len >>= 7;
        }
        self.text.push(len as u8);
        self.text.extend_from_slice(name);
        match u32::try_from(size) {
            Ok(small) if small != BIG => (at, small),
            _ => {
                self.text.extend_from_slice(&size.to_le_bytes());
                (at, BIG)
            }
        }
    }

    /// Entry `s` made to hold `def` (its name moves to the end of `text` if its size changes
    /// between small and [`BIG`] or within [`BIG`]).
    fn store(&mut self, s: &mut Symbol, def: Def) {
        s.addr = def.addr;
        s.unit_flags = def.unit_flags();
        let small = u32::try_from(def.size).ok().filter(|&x| x != BIG);
        match small {
            Some(size) if s.size != BIG => s.size = size,
            _ if self.def(s).size == def.size => {}
            _ => {
                self.dead += self.len_of(s);
                let name = self.name(s.at).to_vec();
                (s.at, s.size) = self.append(&name, def.size);
            }
        }
    }

    /// Whether `s` is unit `unit`'s entry under `key` (the table's probe may offer entries
    /// of other keys).
    fn is(&self, s: &Symbol, key: u32, unit: u64) -> bool {
        Def::unit_of(s.unit_flags) == unit && name_key(self.name(s.at)) == key
    }
}

/// A name's slot in a [`SymbolTable`], as [`SymbolTable::slot`] finds it.
pub(crate) enum Slot<'t> {
    Taken(TakenSlot<'t>),
    Free(FreeSlot<'t>),
}

/// A name that is in a [`SymbolTable`].
pub(crate) struct TakenSlot<'t> {
    entry: OccupiedEntry<'t, Symbol>,
    names: &'t mut Names,
}

impl TakenSlot<'_> {
    pub(crate) fn def(&self) -> Def {
        self.names.def(self.entry.get())
    }

    /// Its definition becomes `def` ([`SymbolTable::make_room`] was asked for the name's
    /// bytes: a size that no longer fits where it was moves the name).
    pub(crate) fn replace(mut self, def: Def) {
        self.names.store(self.entry.get_mut(), def);
    }
}

/// Where a name that is not in a [`SymbolTable`] goes.
pub(crate) struct FreeSlot<'t> {
    entry: VacantEntry<'t, Symbol>,
    names: &'t mut Names,
}

impl FreeSlot<'_> {
    /// Enter `name` (the name the slot was found for: [`SymbolTable::make_room`] was asked
    /// for its [`room_for`]) with `def`.
    pub(crate) fn insert(self, name: &[u8], def: Def) {
        let (at, size) = self.names.append(name, def.size);
        self.entry.insert(Symbol {
            addr: def.addr,
            unit_flags: def.unit_flags(),
            at,
            size,
        });
    }
}

impl SymbolTable {
    /// The definition of `name`, whose [`name_key`] is `key`.
    pub(crate) fn find(&self, key: u32, name: &[u8]) -> Option<Def> {
        let names = &self.names;
        self.shards[shard(key)]
            .find(table_hash(key), |s| names.name(s.at) == name)
            .map(|s| names.def(s))
    }

    /// Where `name` (keyed `key`) is or would go: one probe for a check and an insert.
    pub(crate) fn slot(&mut self, key: u32, name: &[u8]) -> Slot<'_> {
        let names = &self.names;
        let entry = self.shards[shard(key)].entry(
            table_hash(key),
            |s| names.name(s.at) == name,
            |s| table_hash(name_key(names.name(s.at))),
        );
        match entry {
            Entry::Occupied(entry) => Slot::Taken(TakenSlot {
                entry,
                names: &mut self.names,
            }),
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

    /// Take out the entry of unit `unit` under `key` (one of its record's names).
    pub(crate) fn remove_of(&mut self, key: u32, unit: u64) {
        let names = &self.names;
        let table = &mut self.shards[shard(key)];
        if let Ok(o) = table.find_entry(table_hash(key), |s| names.is(s, key, unit)) {
            let (s, _) = o.remove();
            self.names.dead += self.names.len_of(&s);
            let n = &self.names;
            if n.dead > n.text.len() / 2 && n.text.len() >= COMPACT_FROM {
                self.compact();
            }
        }
    }

    /// The names no entry uses, dropped: every entry's name copied into a new string.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.names);
        let mut text = Vec::with_capacity(old.text.len() - old.dead);
        for s in self.shards.iter_mut().flat_map(|t| t.iter_mut()) {
            let at = s.at as usize;
            let len = old.len_of(s);
            s.at = text.len() as u32;
            text.extend_from_slice(old.text.get(at..at + len).unwrap_or_default());
        }
        self.names = Names { text, dead: 0 };
    }

    /// The names and definitions of unit `unit`, whose record's names are `keys`, in that
    /// order.
    pub(crate) fn of_unit(&self, keys: &[u32], unit: u64) -> Vec<(&str, Def)> {
        let names = &self.names;
        let mut out = Vec::with_capacity(keys.len());
        for (i, &k) in keys.iter().enumerate() {
            // (Two names with one key: both found the first time.)
            if !keys[..i].contains(&k) {
                let table = &self.shards[shard(k)];
                let mine = table
                    .iter_hash(table_hash(k))
                    .filter(|s| names.is(s, k, unit));
                // (Every name entered was a `str`.)
                out.extend(mine.map(|s| {
                    let name = std::str::from_utf8(names.name(s.at)).unwrap_or_default();
                    (name, names.def(s))
                }));
            }
        }
        out
    }

    /// The addresses of [`SymbolTable::of_unit`]'s definitions, each replaced by `f` of it.
    pub(crate) fn move_unit(&mut self, keys: &[u32], unit: u64, mut f: impl FnMut(u64) -> u64) {
        let names = &self.names;
        for (i, &k) in keys.iter().enumerate() {
            if !keys[..i].contains(&k) {
                let table = &mut self.shards[shard(k)];
                for s in table.iter_hash_mut(table_hash(k)) {
                    if names.is(s, k, unit) {
                        s.addr = f(s.addr);
                    }
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

    fn add_def(t: &mut SymbolTable, name: &str, d: Def) {
        let k = name_key(name.as_bytes());
        assert!(t.make_room(room_for(name.len(), d.size)));
        match t.slot(k, name.as_bytes()) {
            Slot::Free(slot) => slot.insert(name.as_bytes(), d),
            Slot::Taken(_) => panic!("{name} is there already"),
        }
    }

    fn add(t: &mut SymbolTable, name: &str, unit: u64) {
        add_def(t, name, def(unit));
    }

    #[test]
    fn entries_are_three_words() {
        assert_eq!(std::mem::size_of::<Symbol>(), 24);
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
                t.remove_of(name_key(name(old).as_bytes()), old);
            }
            if i % 997 == 0 {
                for j in i.saturating_sub(live - 1).max(1)..=i {
                    let n = name(j);
                    let d = t.find(name_key(n.as_bytes()), n.as_bytes());
                    assert_eq!(d.map(|d| d.unit()), Some(j), "{n}");
                }
                let gone = name(i - live);
                assert!(t.find(name_key(gone.as_bytes()), gone.as_bytes()).is_none());
                let live_bytes: usize = (i - live + 1..=i).map(|j| name(j).len() + 1).sum();
                assert!(t.names.text.len() <= (2 * live_bytes).max(COMPACT_FROM));
            }
        }
        // Looked up by unit, and moved.
        let n = name(19_999);
        let k = name_key(n.as_bytes());
        assert_eq!(t.of_unit(&[k, k], 19_999), vec![(n.as_str(), def(19_999))]);
        assert!(
            t.of_unit(&[k], 19_998).is_empty(),
            "another unit's key finds nothing"
        );
        t.move_unit(&[k], 19_999, |a| a + 7);
        assert_eq!(
            t.find(k, n.as_bytes()).map(|d| d.addr),
            Some(0x1000 * 19_999 + 7)
        );
        // Not a name at all.
        assert!(t.find(name_key(b"\xff"), b"\xff").is_none());
    }

    /// What does not fit the packed entry: a name of 128 bytes or more (a longer length
    /// prefix), a size of 4 GiB or more (after the name), and a size that changes between the
    /// two; all survive compaction.
    #[test]
    fn long_names_and_big_sizes_take_the_rare_path() {
        let mut t = SymbolTable::default();
        let long = "x".repeat(20_000);
        let big = Def::new(0x5000, 1 << 40, 3, SymbolKind::Data, false, true);
        let edge = Def::new(
            0x6000,
            u64::from(u32::MAX),
            4,
            SymbolKind::Data,
            true,
            false,
        );
        add_def(&mut t, &long, big);
        add_def(&mut t, "edge", edge);
        add(&mut t, "small", 5);
        let find = |t: &SymbolTable, n: &str| t.find(name_key(n.as_bytes()), n.as_bytes());
        assert_eq!(find(&t, &long), Some(big));
        assert_eq!(find(&t, "edge"), Some(edge));
        assert_eq!(find(&t, "small"), Some(def(5)));
        assert_eq!(
            t.of_unit(&[name_key(long.as_bytes())], 3),
            vec![(long.as_str(), big)]
        );
        // Redefined with another size each way.
        for (n, d) in [
            (
                "small",
                Def::new(0x7000, 1 << 33, 6, SymbolKind::Data, true, false),
            ),
            (
                "edge",
                Def::new(0x8000, 16, 7, SymbolKind::Function, true, false),
            ),
            (
                "edge",
                Def::new(0x8000, 1 << 35, 7, SymbolKind::Function, true, false),
            ),
        ] {
            assert!(t.make_room(room_for(n.len(), d.size)));
            match t.slot(name_key(n.as_bytes()), n.as_bytes()) {
                Slot::Taken(o) => o.replace(d),
                Slot::Free(_) => panic!("{n} is not there"),
            }
            assert_eq!(find(&t, n), Some(d));
        }
        assert_eq!(find(&t, &long), Some(big));
        t.remove_of(name_key(long.as_bytes()), 3);
        assert!(find(&t, &long).is_none());
        t.compact();
        assert_eq!(t.names.dead, 0);
        assert!(t.names.text.len() < 100, "{}", t.names.text.len());
        assert_eq!(find(&t, "edge").map(|d| d.size), Some(1 << 35));
        assert_eq!(find(&t, "small").map(|d| d.size), Some(1 << 33));
    }
}

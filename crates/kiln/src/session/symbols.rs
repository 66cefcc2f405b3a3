//! A scope's symbol table: name → definition, sized for a JIT that keeps a million one-name
//! units. The names lie end to end in one byte string per table, each behind its length and
//! before its symbol's size, and an entry says where its name is: a name costs its bytes and
//! two or three more (an `Arc<str>` each would cost an allocation of at least 32 bytes and a
//! 16-byte pointer in the entry). Entries are 24 bytes and keep their name's key: a table
//! that grows rehashes its entries without reading or hashing their names, and a unit's
//! entry is found by key and unit alone.

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
/// below 128), its bytes and its symbol's size (LEB128: one byte below 128, two below 16 KiB).
/// The size is read only when a definition is (a lookup, a clash), never while probing.
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

/// One name of a scope: where its name (and its size) is in the table's [`Names`], the rest of
/// its [`Def`], and the name's [`name_key`] (the defining unit's record keeps it too:
/// [`super::state::Unit::names`]).
pub(crate) struct Symbol {
    addr: u64,
    /// [`Def::unit_flags`].
    unit_flags: u64,
    at: u32,
    key: u32,
}

/// At least the bytes [`Names`] takes for a name of `len` bytes and a symbol of any size: what
/// [`SymbolTable::make_room`] is asked for (a bound, so that asking costs no more than an add:
/// the room is only short near 4 GiB of names).
pub(crate) fn room_for(len: usize) -> usize {
    len.saturating_add(2 * LEB128_MAX)
}

/// The most bytes a number takes in LEB128 (64 bits, 7 a byte).
const LEB128_MAX: usize = 10;

/// The bytes of `x` in LEB128: one for each 7 bits it needs, one for 0.
fn leb128_len(x: u64) -> usize {
    let bits = 64 - (x | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The LEB128 number at `i` in `text`, and where it ends. (Entries name what the table
/// appended for them: in bounds; a number read past the end, or past 64 bits, gives what was
/// read, not a panic.)
fn read_leb128(text: &[u8], mut i: usize) -> (u64, usize) {
    let (mut x, mut shift) = (0u64, 0u32);
    while let Some(&b) = text.get(i) {
        i += 1;
        x |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        shift += 7;
        if b < 0x80 {
            break;
        }
    }
    (x, i)
}

fn push_leb128(text: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        text.push(x as u8 | 0x80);
        x >>= 7;
    }
    text.push(x as u8);
}

impl Names {
    /// The name at `at`, and where its bytes end (where its size starts).
    fn name_end(&self, at: u32) -> (&[u8], usize) {
        let at = at as usize;
        let (start, len) = match self.text.get(at) {
            Some(&len) if len < 0x80 => (at + 1, usize::from(len)),
            _ => {
                let (len, start) = read_leb128(&self.text, at);
                (start, usize::try_from(len).unwrap_or(usize::MAX))
            }
        };
        let end = start.saturating_add(len);
        (self.text.get(start..end).unwrap_or_default(), end)
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

    /// The size after a name that ends at `end`, and where it ends.
    #[inline]
    fn size_end(&self, end: usize) -> (u64, usize) {
        // (Most sizes: below 16 KiB, one or two bytes; the last entry's size of one byte
        // takes the general path.)
        match self.text.get(end..end + 2) {
            Some(&[low, _]) if low < 0x80 => (u64::from(low), end + 1),
            Some(&[low, high]) if high < 0x80 => {
                (u64::from(low & 0x7f) | u64::from(high) << 7, end + 2)
            }
            _ => read_leb128(&self.text, end),
        }
    }

    /// The definition of entry `s`.
    fn def(&self, s: &Symbol) -> Def {
        let (size, _) = self.size_end(self.name_end(s.at).1);
        Def::from_packed(s.addr, size, s.unit_flags)
    }

    /// The bytes entry `s` takes in `text`.
    fn len_of(&self, s: &Symbol) -> usize {
        let (_, end) = self.size_end(self.name_end(s.at).1);
        end - s.at as usize
    }

    /// Append `name` for a symbol of `size` bytes: its offset. (Always inline: it stayed a
    /// call of ~97 instructions with LTO, for a link's one name.)
    #[inline(always)]
    fn append(&mut self, name: &[u8], size: u64) -> u32 {
        let at = self.text.len() as u32;
        // (Most entries: a name below 128 bytes, a size below 16 KiB: no loops.)
        let (Ok(len @ 0..0x80), Ok(size @ 0..0x4000)) =
            (u8::try_from(name.len()), u16::try_from(size))
        else {
            return self.append_long(name, size);
        };
        self.text.reserve(3 + name.len());
        self.text.push(len);
        self.text.extend_from_slice(name);
        match u8::try_from(size) {
            Ok(small @ 0..0x80) => self.text.push(small),
            _ => self
                .text
                .extend_from_slice(&[size as u8 | 0x80, (size >> 7) as u8]),
        }
        at
    }

    /// [`Names::append`] of a name of 128 bytes or more, or a size of 16 KiB or more.
    #[cold]
    #[inline(never)]
    fn append_long(&mut self, name: &[u8], size: u64) -> u32 {
        let at = self.text.len() as u32;
        self.text.reserve(room_for(name.len()));
        push_leb128(&mut self.text, name.len() as u64);
        self.text.extend_from_slice(name);
        push_leb128(&mut self.text, size);
        at
    }

    /// Entry `s` made to hold `def`: a new size is written over the old one if it takes as
    /// many bytes, else the name moves to the end of `text` with it.
    fn store(&mut self, s: &mut Symbol, def: Def) {
        s.addr = def.addr;
        s.unit_flags = def.unit_flags();
        let (_, end) = self.name_end(s.at);
        let (old, size_end) = self.size_end(end);
        if old == def.size {
            return;
        }
        if leb128_len(def.size) == size_end - end {
            let mut size = Vec::with_capacity(size_end - end);
            push_leb128(&mut size, def.size);
            if let Some(old) = self.text.get_mut(end..size_end) {
                old.copy_from_slice(&size);
            }
        } else {
            self.dead += self.len_of(s);
            let name = self.name(s.at).to_vec();
            s.at = self.append(&name, def.size);
        }
    }
}

impl Symbol {
    /// Whether it is unit `unit`'s entry under `key` (the table's probe may offer entries of
    /// other keys).
    fn is(&self, key: u32, unit: u64) -> bool {
        self.key == key && Def::unit_of(self.unit_flags) == unit
    }

    /// Whether it is the entry of `name`, keyed `key`.
    #[inline]
    fn named(&self, names: &Names, key: u32, name: &[u8]) -> bool {
        self.key == key && names.name(self.at) == name
    }
}

/// A name [`SymbolTable::find`] found: its entry, read only as far as asked (binding reads
/// its address, not its size).
#[derive(Copy, Clone)]
pub(crate) struct Found<'t> {
    names: &'t Names,
    symbol: &'t Symbol,
}

impl Found<'_> {
    pub(crate) fn addr(&self) -> u64 {
        self.symbol.addr
    }

    /// The unit that defines it.
    pub(crate) fn unit(&self) -> u64 {
        Def::unit_of(self.symbol.unit_flags)
    }

    /// Visible to other scopes.
    pub(crate) fn exported(&self) -> bool {
        Def::from_packed(self.symbol.addr, 0, self.symbol.unit_flags).exported()
    }

    /// The whole definition (its size read from the names).
    pub(crate) fn def(&self) -> Def {
        self.names.def(self.symbol)
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
    key: u32,
}

impl FreeSlot<'_> {
    /// Enter `name` (the name the slot was found for: [`SymbolTable::make_room`] was asked
    /// for its [`room_for`]) with `def`.
    #[inline(always)]
    pub(crate) fn insert(self, name: &[u8], def: Def) {
        let at = self.names.append(name, def.size);
        self.entry.insert(Symbol {
            addr: def.addr,
            unit_flags: def.unit_flags(),
            at,
            key: self.key,
        });
    }
}

impl SymbolTable {
    /// The entry of `name`, whose [`name_key`] is `key`. (Always inline: it stayed a call of
    /// ~129 instructions with LTO, for each name a link binds.)
    #[inline(always)]
    pub(crate) fn find(&self, key: u32, name: &[u8]) -> Option<Found<'_>> {
        let names = &self.names;
        let symbol =
            self.shards[shard(key)].find(table_hash(key), |s| s.named(names, key, name))?;
        Some(Found { names, symbol })
    }

    /// Where `name` (keyed `key`) is or would go: one probe for a check and an insert.
    #[inline]
    pub(crate) fn slot(&mut self, key: u32, name: &[u8]) -> Slot<'_> {
        let names = &self.names;
        // (A growing table rehashes its entries by their keys: their names are not read.)
        let entry = self.shards[shard(key)].entry(
            table_hash(key),
            |s| s.named(names, key, name),
            |s| table_hash(s.key),
        );
        match entry {
            Entry::Occupied(entry) => Slot::Taken(TakenSlot {
                entry,
                names: &mut self.names,
            }),
            Entry::Vacant(entry) => Slot::Free(FreeSlot {
                entry,
                names: &mut self.names,
                key,
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
        let table = &mut self.shards[shard(key)];
        if let Ok(o) = table.find_entry(table_hash(key), |s| s.is(key, unit)) {
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
                let mine = table.iter_hash(table_hash(k)).filter(|s| s.is(k, unit));
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
        for (i, &k) in keys.iter().enumerate() {
            if !keys[..i].contains(&k) {
                let table = &mut self.shards[shard(k)];
                for s in table.iter_hash_mut(table_hash(k)) {
                    if s.is(k, unit) {
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
        assert!(t.make_room(room_for(name.len())));
        match t.slot(k, name.as_bytes()) {
            Slot::Free(slot) => slot.insert(name.as_bytes(), d),
            Slot::Taken(_) => panic!("{name} is there already"),
        }
    }

    fn add(t: &mut SymbolTable, name: &str, unit: u64) {
        add_def(t, name, def(unit));
    }

    /// The bytes an entry takes in the names: its length, its bytes, its size.
    fn entry_len(len: usize, size: u64) -> usize {
        leb128_len(len as u64) + len + leb128_len(size)
    }

    #[test]
    fn entries_are_three_words() {
        assert_eq!(std::mem::size_of::<Symbol>(), 24);
    }

    /// The one-byte readings of a name's length and its size (most entries') against the
    /// general LEB128 reading, for lengths and sizes around each width; and a size written
    /// again in place or, when it needs more or fewer bytes, with the name moved.
    #[test]
    fn names_and_sizes_read_back_at_every_width() {
        let lens = [0usize, 1, 127, 128, 300, 16_383, 16_384, 20_000];
        let sizes = [
            0u64,
            1,
            127,
            128,
            160,
            16_383,
            16_384,
            u64::from(u32::MAX),
            1 << 40,
            u64::MAX,
        ];
        let mut names = Names::default();
        let mut entries = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            for (j, &size) in sizes.iter().enumerate() {
                let name: Vec<u8> = (0..len).map(|k| b'a' + ((i + j + k) % 26) as u8).collect();
                let before = names.text.len();
                let at = names.append(&name, size);
                assert_eq!(names.text.len() - before, entry_len(len, size));
                assert!(entry_len(len, size) <= room_for(len));
                let s = Symbol {
                    addr: 0x1000,
                    unit_flags: Def::new(0, 0, 9, SymbolKind::Data, true, false).unit_flags(),
                    at,
                    key: name_key(&name),
                };
                entries.push((name, size, s));
            }
        }
        for (name, size, s) in &entries {
            let (len, start) = read_leb128(&names.text, s.at as usize);
            assert_eq!(len, name.len() as u64);
            assert_eq!((read_leb128(&names.text, start + name.len()).0), *size);
            assert_eq!(names.name(s.at), &name[..]);
            assert_eq!(names.def(s).size, *size);
            assert_eq!(names.len_of(s), entry_len(name.len(), *size));
            assert!(s.is(name_key(name), 9) && !s.is(name_key(name), 8));
        }
        // Sizes written again: same width in place, another width at the end.
        for (name, size, mut s) in entries {
            for new in [size ^ 1, 200, 5, u64::MAX] {
                let (at, dead, text) = (s.at, names.dead, names.text.len());
                let old = names.def(&s).size;
                names.store(
                    &mut s,
                    Def::new(0x2000, new, 9, SymbolKind::Data, true, false),
                );
                let in_place = old == new || leb128_len(old) == leb128_len(new);
                assert_eq!(s.at == at, in_place, "{old} -> {new}");
                assert_eq!(names.dead > dead, !in_place);
                assert_eq!(names.text.len() > text, !in_place);
                assert_eq!(
                    (names.name(s.at), names.def(&s)),
                    (&name[..], {
                        Def::new(0x2000, new, 9, SymbolKind::Data, true, false)
                    })
                );
            }
        }
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
                    let d = t
                        .find(name_key(n.as_bytes()), n.as_bytes())
                        .map(|d| d.def());
                    assert_eq!(d.map(|d| d.unit()), Some(j), "{n}");
                }
                let gone = name(i - live);
                assert!(t.find(name_key(gone.as_bytes()), gone.as_bytes()).is_none());
                let live_bytes: usize = (i - live + 1..=i)
                    .map(|j| entry_len(name(j).len(), 8))
                    .sum();
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
            t.find(k, n.as_bytes()).map(|d| d.addr()),
            Some(0x1000 * 19_999 + 7)
        );
        // Not a name at all.
        assert!(t.find(name_key(b"\xff"), b"\xff").is_none());
    }

    /// What does not take one byte in the names: a name of 128 bytes or more (a longer length
    /// prefix), a size of 4 GiB or more, and a size that changes between them (moving the
    /// name); all survive compaction.
    #[test]
    fn long_names_and_big_sizes_survive_redefinition_and_compaction() {
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
        let find = |t: &SymbolTable, n: &str| {
            t.find(name_key(n.as_bytes()), n.as_bytes())
                .map(|d| d.def())
        };
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
            assert!(t.make_room(room_for(n.len())));
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

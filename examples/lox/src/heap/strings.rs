//! Strings in the heap: packing bytes into words, hashing, and the intern table.
//!
//! Every Lox string is interned, so string equality is identity (one word compare, in the
//! interpreter and in JIT'd code). The intern table holds its strings weakly: the GC drops the
//! entries whose strings died and rebuilds the table with the moved ones.

use super::layout::{self, string};
use super::memory::Memory;
use crate::value::{ObjRef, Value};

/// FNV-1a, 32 bits.
pub fn hash_bytes(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 2_166_136_261;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(16_777_619);
    }
    hash
}

/// Packs `bytes` little-endian into `out` (cleared first), zero-padding the last word.
pub fn pack(bytes: &[u8], out: &mut Vec<u64>) {
    out.clear();
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        out.push(u64::from_le_bytes(word));
    }
}

pub fn len_hash(len: usize, hash: u32) -> u64 {
    (len as u64) << 32 | u64::from(hash)
}

pub fn string_len(mem: &Memory, s: ObjRef) -> usize {
    (mem.load(s, string::LEN_HASH) >> 32) as usize
}

pub fn string_hash(mem: &Memory, s: ObjRef) -> u32 {
    mem.load(s, string::LEN_HASH) as u32
}

/// Appends the bytes of string `s` to `out`.
pub fn append_bytes(mem: &Memory, s: ObjRef, out: &mut Vec<u8>) {
    let len = string_len(mem, s);
    let start = out.len();
    for i in 0..len.div_ceil(8) {
        out.extend_from_slice(&mem.load(s, string::BYTES + i).to_le_bytes());
    }
    out.truncate(start + len);
}

/// The longest string: its length must fit the 31 bits `LEN_HASH` gives it, and the object the
/// size field.
pub const MAX_STRING_LEN: usize = (1 << 31) - 1;

/// Weak set of interned strings, open addressing keyed by the strings' stored hashes.
pub struct StringTable {
    /// Value bits of a string, or 0 for an empty slot. Length is a power of two.
    slots: Vec<u64>,
    count: usize,
}

impl StringTable {
    pub fn new() -> StringTable {
        StringTable {
            slots: vec![0; 64],
            count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The interned string with these packed bytes, if there is one.
    pub fn find(&self, mem: &Memory, packed: &[u64], len: usize, hash: u32) -> Option<ObjRef> {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        let want = len_hash(len, hash);
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            let s = Value(slot).as_obj();
            if mem.load(s, string::LEN_HASH) == want && mem.words_equal(s, string::BYTES, packed) {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a string known not to be present.
    pub fn insert(&mut self, mem: &Memory, s: ObjRef) {
        if (self.count + 1) * 4 > self.slots.len() * 3 {
            let doubled = vec![0; self.slots.len() * 2];
            let old = std::mem::replace(&mut self.slots, doubled);
            self.count = 0;
            for slot in old.into_iter().filter(|&w| w != 0) {
                self.insert_unchecked(mem, Value(slot).as_obj());
            }
        }
        self.insert_unchecked(mem, s);
    }

    fn insert_unchecked(&mut self, mem: &Memory, s: ObjRef) {
        let mask = self.slots.len() - 1;
        let mut i = string_hash(mem, s) as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Value::obj(s).0;
        self.count += 1;
    }

    /// After a collection: keeps the strings that survived, at their new offsets (`forwarded`
    /// gives the new reference of a live string, `None` for a dead one); `mem` is the to-space.
    pub fn sweep(&mut self, mem: &Memory, forwarded: impl Fn(u64) -> Option<u64>) {
        let live: Vec<u64> = self
            .slots
            .iter()
            .filter(|&&w| w != 0)
            .filter_map(|&w| forwarded(w))
            .collect();
        let mut capacity = 64;
        while live.len() * 4 > capacity * 3 / 2 {
            capacity *= 2;
        }
        self.slots = vec![0; capacity];
        self.count = 0;
        for w in live {
            self.insert_unchecked(mem, Value(w).as_obj());
        }
    }
}

impl Default for StringTable {
    fn default() -> Self {
        StringTable::new()
    }
}

/// Words a new string of `len` bytes needs.
pub fn string_words(len: usize) -> usize {
    layout::string::words(len)
}

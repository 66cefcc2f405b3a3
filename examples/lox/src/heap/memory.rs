//! The word arena that holds every Lox object: one semispace.
//!
//! Objects are addressed by `ObjRef` (a byte offset from the base of the space); this module is
//! the only one that touches the words, through small bounds-checked `#[inline]` accessors. No
//! Rust reference into object memory outlives a call: allocation may move everything, so
//! callers keep offsets (in roots) and load again.
//!
//! Later the space will be backed by a region that JIT'd code addresses as `base + offset`; the
//! base changes only when the space grows or the GC flips, both of which happen only inside
//! an allocation, so machine code reloads the base after any call that may allocate.

use super::layout::{self, Tag};
use crate::value::{ObjRef, Value};

pub struct Memory {
    words: Vec<u64>,
    /// Next free word. Word 0 is never allocated, so no object lives at offset 0.
    top: usize,
}

impl Memory {
    pub fn new(capacity_words: usize) -> Memory {
        let capacity_words = capacity_words.max(16);
        Memory {
            words: vec![0; capacity_words],
            top: 1,
        }
    }

    #[inline]
    pub fn load(&self, obj: ObjRef, field: usize) -> u64 {
        self.words[obj.word() + field]
    }

    #[inline]
    pub fn store(&mut self, obj: ObjRef, field: usize, word: u64) {
        self.words[obj.word() + field] = word;
    }

    #[inline]
    pub fn load_value(&self, obj: ObjRef, field: usize) -> Value {
        Value(self.load(obj, field))
    }

    #[inline]
    pub fn store_value(&mut self, obj: ObjRef, field: usize, value: Value) {
        self.store(obj, field, value.0)
    }

    #[inline]
    pub fn tag(&self, obj: ObjRef) -> u64 {
        layout::header_tag(self.load(obj, 0))
    }

    #[inline]
    pub fn has_tag(&self, value: Value, tag: Tag) -> bool {
        value.is_obj() && self.tag(value.as_obj()) == tag as u64
    }

    #[inline]
    pub fn size_words(&self, obj: ObjRef) -> usize {
        layout::header_size(self.load(obj, 0))
    }

    /// `count` consecutive words starting at field `first`.
    #[inline]
    pub fn words(&self, obj: ObjRef, first: usize, count: usize) -> &[u64] {
        let start = obj.word() + first;
        &self.words[start..start + count]
    }

    #[inline]
    pub fn words_mut(&mut self, obj: ObjRef, first: usize, count: usize) -> &mut [u64] {
        let start = obj.word() + first;
        &mut self.words[start..start + count]
    }

    /// Carves `size_words` words off the free space, writes the header and clears the fields to
    /// nil. `None` when the space is full: the caller collects or grows first.
    #[inline]
    pub fn bump(&mut self, tag: Tag, size_words: usize) -> Option<ObjRef> {
        let start = self.top;
        let end = start.checked_add(size_words)?;
        if end > self.words.len() || size_words == 0 || size_words > layout::MAX_OBJECT_WORDS {
            return None;
        }
        self.top = end;
        self.words[start] = layout::header(tag, size_words);
        self.words[start + 1..end].fill(Value::NIL.0);
        Some(ObjRef::from_word(start))
    }

    pub fn free_words(&self) -> usize {
        self.words.len() - self.top
    }

    pub fn used_words(&self) -> usize {
        self.top
    }

    pub fn capacity_words(&self) -> usize {
        self.words.len()
    }

    /// Makes the space `capacity_words` long, keeping the objects (offsets stay valid).
    pub fn resize(&mut self, capacity_words: usize) {
        debug_assert!(capacity_words >= self.top);
        self.words.resize(capacity_words, 0);
    }

    /// Empties the space for reuse as a to-space.
    pub fn reset(&mut self) {
        self.top = 1;
    }

    /// Overwrites everything allocated with a pattern no header or value has, so that a stale
    /// reference into a dead space fails loudly (used under --gc-stress).
    pub fn poison(&mut self) {
        self.words[..self.top].fill(POISON);
    }

    /// Raw access for the collector, which copies whole objects between spaces.
    pub(super) fn raw(&self) -> &[u64] {
        &self.words
    }

    pub(super) fn raw_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Appends a copy of `object` (header included) and returns its offset; the collector has
    /// sized the space so that everything live fits.
    pub(super) fn append(&mut self, object: &[u64]) -> ObjRef {
        let start = self.top;
        self.words[start..start + object.len()].copy_from_slice(object);
        self.top += object.len();
        ObjRef::from_word(start)
    }
}

/// Tag 0xEE is no object type; the value is a number, so a poisoned word read as a Value does
/// not pass for a reference either.
pub const POISON: u64 = 0x0000_dead_beef_00ee;

//! The word arena that holds every Lox object: one semispace.
//!
//! Objects are addressed by `ObjRef` (a byte offset from the base of the space); this module is
//! the only one that touches the words, through small bounds-checked `#[inline]` accessors.
//!
//! The words live in a `kiln_target::RawMemory`: memory this process shares with the JIT'd
//! code, which reads field `k` of the object at `r` as `[heap_base + r + 8*k]`. Rust never holds
//! a reference into it (every access is a copy, checked against the mapping), so JIT'd code may
//! write it while Rust holds a `&Memory`. The mapping is reserved at its largest size up front
//! (address space only; pages are committed when first touched), so growing a space changes a
//! number and moves nothing: the base of a space never changes. Machine code reloads the base
//! of the *current* space after any call that may allocate, because a collection swaps the
//! spaces.
//!
//! The bump pointer lives in the space itself, so that machine code allocates inline: word 0
//! is `top` (the next free word), word 1 the limit machine code allocates up to (the capacity,
//! or 0 to send every allocation to the runtime, as `--gc-stress` does); objects start at
//! word 2, so no object lives at offset 0.

use kiln_target::RawMemory;

use super::layout::{self, Tag};
use crate::value::{ObjRef, Value};

pub struct Memory {
    raw: RawMemory,
    /// Words in use by the VM's policy (the space grows up to the mapping's size).
    capacity_words: usize,
}

/// Word index of the next free word (`top`), for machine code: `[heap_base + 8*TOP_WORD]`.
pub const TOP_WORD: usize = 0;
/// Word index of the limit of inline allocation in machine code.
pub const LIMIT_WORD: usize = 1;
/// The first word an object can start at.
pub const FIRST_OBJECT_WORD: usize = 2;

/// The mapping could not be made (the address-space limit of the process, usually).
#[derive(Debug)]
pub struct MapError(pub String);

impl Memory {
    /// A space of `capacity_words`, which can grow up to `max_words` without moving.
    pub fn new(capacity_words: usize, max_words: usize) -> Result<Memory, MapError> {
        let raw = RawMemory::new(max_words.max(16) * 8).map_err(|e| MapError(e.to_string()))?;
        let memory = Memory {
            raw,
            capacity_words: capacity_words.clamp(16, max_words.max(16)),
        };
        memory.set_top(FIRST_OBJECT_WORD);
        Ok(memory)
    }

    #[inline]
    fn top(&self) -> usize {
        self.word(TOP_WORD) as usize
    }

    #[inline]
    fn set_top(&self, top: usize) {
        self.set_word(TOP_WORD, top as u64)
    }

    /// Lets machine code allocate inline up to `limit` words (0: never inline).
    pub fn set_inline_limit(&mut self, limit: usize) {
        self.set_word(LIMIT_WORD, limit.min(self.capacity_words) as u64)
    }

    /// Address of word 0, for machine code.
    pub fn base_address(&self) -> u64 {
        self.raw.base().0
    }

    #[inline]
    fn word(&self, index: usize) -> u64 {
        self.raw.load_u64(index * 8)
    }

    #[inline]
    fn set_word(&self, index: usize, word: u64) {
        self.raw.store_u64(index * 8, word)
    }

    #[inline]
    pub fn load(&self, obj: ObjRef, field: usize) -> u64 {
        self.word(obj.word() + field)
    }

    #[inline]
    pub fn store(&mut self, obj: ObjRef, field: usize, word: u64) {
        self.set_word(obj.word() + field, word)
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

    /// Whether the `count` words from field `first` of `obj` equal `words`.
    pub fn words_equal(&self, obj: ObjRef, first: usize, words: &[u64]) -> bool {
        let start = obj.word() + first;
        words
            .iter()
            .enumerate()
            .all(|(i, &w)| self.word(start + i) == w)
    }

    /// Appends the `count` words from field `first` of `obj` to `out`.
    pub fn copy_words_out(&self, obj: ObjRef, first: usize, count: usize, out: &mut Vec<u64>) {
        let start = obj.word() + first;
        out.extend((start..start + count).map(|i| self.word(i)));
    }

    /// Writes `words` from field `first` of `obj` on.
    pub fn copy_words_in(&mut self, obj: ObjRef, first: usize, words: &[u64]) {
        let start = obj.word() + first;
        for (i, &w) in words.iter().enumerate() {
            self.set_word(start + i, w);
        }
    }

    /// Carves `size_words` words off the free space, writes the header and clears the fields to
    /// nil. `None` when the space is full: the caller collects or grows first.
    #[inline]
    pub fn bump(&mut self, tag: Tag, size_words: usize) -> Option<ObjRef> {
        let start = self.top();
        let end = start.checked_add(size_words)?;
        if end > self.capacity_words || size_words == 0 || size_words > layout::MAX_OBJECT_WORDS {
            return None;
        }
        self.set_top(end);
        self.set_word(start, layout::header(tag, size_words));
        for i in start + 1..end {
            self.set_word(i, Value::NIL.0);
        }
        Some(ObjRef::from_word(start))
    }

    pub fn free_words(&self) -> usize {
        self.capacity_words - self.top()
    }

    pub fn used_words(&self) -> usize {
        self.top()
    }

    pub fn capacity_words(&self) -> usize {
        self.capacity_words
    }

    /// The most words this space can grow to.
    pub fn max_words(&self) -> usize {
        self.raw.len() / 8
    }

    /// Makes the space `capacity_words` long (at most `max_words`), keeping the objects: the
    /// mapping is already that large, so nothing moves.
    pub fn resize(&mut self, capacity_words: usize) {
        debug_assert!(capacity_words >= self.top());
        self.capacity_words = capacity_words.min(self.max_words());
    }

    /// Empties the space for reuse as a to-space.
    pub fn reset(&mut self) {
        self.set_top(FIRST_OBJECT_WORD);
    }

    /// Overwrites everything allocated with a pattern no header or value has, so that a stale
    /// reference into a dead space fails loudly (used under --gc-stress).
    pub fn poison(&mut self) {
        for i in FIRST_OBJECT_WORD..self.top() {
            self.set_word(i, POISON);
        }
    }

    /// Word `index` of the space, for the collector's scan.
    pub(super) fn raw_word(&self, index: usize) -> u64 {
        self.word(index)
    }

    pub(super) fn set_raw_word(&mut self, index: usize, word: u64) {
        self.set_word(index, word)
    }

    /// Appends a copy of the `size` words of `object` in `from` (header included) and returns
    /// its offset; the collector has sized the space so that everything live fits.
    pub(super) fn append_copy(&mut self, from: &Memory, object: ObjRef, size: usize) -> ObjRef {
        let start = self.top();
        let source = object.word();
        for i in 0..size {
            self.set_word(start + i, from.word(source + i));
        }
        self.set_top(start + size);
        ObjRef::from_word(start)
    }
}

/// Tag 0xEE is no object type; the value is a number, so a poisoned word read as a Value does
/// not pass for a reference either.
pub const POISON: u64 = 0x0000_dead_beef_00ee;

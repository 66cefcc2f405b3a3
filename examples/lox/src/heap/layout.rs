//! Object layouts in the word heap: what machine code reads at which offset.
//!
//! Every object starts with a header word; the fields follow in fixed word slots. The byte
//! offset of field `k` of the object at `r` is `r.0 + 8 * k`, so JIT'd code addresses it as
//! `[heap_base + r + 8*k]`.
//!
//! Header word:
//!
//! ```text
//! bits 0..8    type tag (Tag)
//! bits 8..40   size of the object in words, header included
//! bits 40..64  zero
//! forwarded:   bits 0..8 = FORWARDED, bits 8..56 = byte offset of the copy in to-space
//! ```
//!
//! Word 1 of an instance is its shape. No other kind of object ever holds a shape in word 1,
//! so "word 1 equals the cached shape" is a complete inline-cache guard for any object
//! reference (docs/lox.md, "Inline caches").
//!
//! Every word after the header is either a Value or a raw integer below 2^50 (which reads as
//! a number), except the bytes of a string; the GC scans all words of non-string objects and
//! forwards the references (`value::is_obj_bits`).

/// Object type tags (header bits 0..8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Tag {
    String = 1,
    Closure = 2,
    Upvalue = 3,
    Class = 4,
    Instance = 5,
    BoundMethod = 6,
    Native = 7,
    Shape = 8,
    /// Open-addressing table of (key string, value) pairs: a class's methods.
    Table = 9,
    /// A plain array of values: an instance's overflow fields.
    Array = 10,
}

/// Header tag of an object that the GC has copied; the rest of the header is the new offset.
pub const FORWARDED: u64 = 0xff;
const TAG_MASK: u64 = 0xff;
const SIZE_SHIFT: u32 = 8;
const SIZE_MASK: u64 = 0xffff_ffff;

/// The largest object, in words (the size field's range).
pub const MAX_OBJECT_WORDS: usize = SIZE_MASK as usize;

#[inline]
pub fn header(tag: Tag, size_words: usize) -> u64 {
    debug_assert!(size_words <= MAX_OBJECT_WORDS);
    tag as u64 | (size_words as u64) << SIZE_SHIFT
}

#[inline]
pub fn header_tag(h: u64) -> u64 {
    h & TAG_MASK
}

#[inline]
pub fn header_size(h: u64) -> usize {
    ((h >> SIZE_SHIFT) & SIZE_MASK) as usize
}

#[inline]
pub fn forwarded_header(new_offset: u64) -> u64 {
    FORWARDED | new_offset << SIZE_SHIFT
}

#[inline]
pub fn forwarded_offset(h: u64) -> u64 {
    h >> SIZE_SHIFT
}

/// Words of the header and fixed fields of each kind of object, and the index of each field.
pub mod string {
    /// `len << 32 | hash`: length (< 2^31) in the high half keeps the word number-like.
    pub const LEN_HASH: usize = 1;
    /// First word of the bytes, packed little-endian, zero-padded to a whole word.
    pub const BYTES: usize = 2;

    pub fn words(len: usize) -> usize {
        BYTES + len.div_ceil(8)
    }
}

pub mod closure {
    /// Raw index of the function's prototype (`bytecode::Proto`).
    pub const PROTO: usize = 1;
    /// First upvalue reference; there are `Proto::upvalue_count` of them.
    pub const UPVALUES: usize = 2;
}

pub mod upvalue {
    /// Raw value-stack slot index while open; `Value::NIL` once closed.
    pub const SLOT: usize = 1;
    /// The captured value once closed.
    pub const CLOSED: usize = 2;
    /// Next open upvalue (lower stack slot) or nil.
    pub const NEXT: usize = 3;
    pub const WORDS: usize = 4;
}

pub mod class {
    pub const NAME: usize = 1;
    /// A `Tag::Table` of name → closure.
    pub const METHODS: usize = 2;
    /// The shape new instances start with.
    pub const ROOT_SHAPE: usize = 3;
    /// The `init` closure, or nil: calling a class reads it directly.
    pub const INITIALIZER: usize = 4;
    pub const WORDS: usize = 5;
}

pub mod instance {
    pub const SHAPE: usize = 1;
    /// An `Array` holding the fields past the inline capacity, or nil.
    pub const OVERFLOW: usize = 2;
    /// First inline field; the shape's inline capacity says how many there are.
    pub const FIELDS: usize = 3;
}

pub mod bound_method {
    pub const RECEIVER: usize = 1;
    pub const METHOD: usize = 2;
    pub const WORDS: usize = 3;
}

pub mod native {
    /// Raw index of the native function (`vm::natives`).
    pub const ID: usize = 1;
    pub const WORDS: usize = 2;
}

/// A shape (hidden class): the fields of an instance in the order they were added. Shapes form
/// a tree per class: the root has no fields, each child adds one field to its parent.
pub mod shape {
    /// The class whose instances have this shape (word 1 of a shape is never a shape).
    pub const CLASS: usize = 1;
    pub const PARENT: usize = 2;
    /// Name (interned string) of the field this shape adds; nil at the root.
    pub const KEY: usize = 3;
    /// Raw `inline_capacity << 32 | field_count`.
    pub const COUNTS: usize = 4;
    /// First child shape (transition), or nil.
    pub const FIRST_CHILD: usize = 5;
    /// Next sibling in the parent's child list, or nil.
    pub const NEXT_SIBLING: usize = 6;
    pub const WORDS: usize = 7;

    pub fn counts(inline_capacity: usize, field_count: usize) -> u64 {
        (inline_capacity as u64) << 32 | field_count as u64
    }
    pub fn field_count(counts: u64) -> usize {
        (counts & 0xffff_ffff) as usize
    }
    pub fn inline_capacity(counts: u64) -> usize {
        (counts >> 32) as usize
    }
}

/// Open-addressing hash table keyed by interned strings (identity), with the string's stored
/// hash. Capacity is a power of two; no deletions, so no tombstones.
pub mod table {
    /// Raw number of entries in use.
    pub const COUNT: usize = 1;
    /// Entry `i` is the key at `ENTRIES + 2i` (nil when empty) and the value after it.
    pub const ENTRIES: usize = 2;

    pub fn words(capacity: usize) -> usize {
        ENTRIES + 2 * capacity
    }
    pub fn capacity(size_words: usize) -> usize {
        (size_words - ENTRIES) / 2
    }
}

pub mod array {
    /// First element; the object's size says how many there are.
    pub const ELEMENTS: usize = 1;
}

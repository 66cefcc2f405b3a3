//! Cheney's copying collector over two semispaces.
//!
//! Why copying: allocation is a bump of `top` against a limit (three instructions in JIT'd
//! code), collection costs time in proportion to what survives, the heap is compacted for free,
//! and a forwarding header is all the bookkeeping a move needs. The price is the second
//! semispace. References are offsets, and a space grows in place, so growing moves no object.
//!
//! The copy is breadth-first and needs no mark stack: roots are forwarded into to-space, then a
//! scan pointer walks to-space forwarding every reference in every copied object until it
//! meets the allocation pointer.

use super::layout::{self, Tag, FORWARDED};
use super::memory::Memory;
use crate::value::{is_obj_bits, Value, OBJ_TAG};

pub struct Copier<'a> {
    from: &'a mut Memory,
    to: &'a mut Memory,
    /// Reference slots rewritten (roots and object fields).
    pub refs_updated: u64,
}

impl<'a> Copier<'a> {
    pub fn new(from: &'a mut Memory, to: &'a mut Memory) -> Copier<'a> {
        Copier {
            from,
            to,
            refs_updated: 0,
        }
    }

    /// The to-space reference for the reference `word`, copying the object on first sight.
    /// Words that are not references come back unchanged.
    pub fn forward(&mut self, word: u64) -> u64 {
        if !is_obj_bits(word) {
            return word;
        }
        let old = Value(word).as_obj();
        let header = self.from.load(old, 0);
        let new_offset = if layout::header_tag(header) == FORWARDED {
            layout::forwarded_offset(header)
        } else {
            check_header(header, old.0);
            let size = layout::header_size(header);
            let new = self.to.append_copy(self.from, old, size);
            self.from.store(old, 0, layout::forwarded_header(new.0));
            new.0
        };
        self.refs_updated += 1;
        OBJ_TAG | new_offset
    }

    /// Forwards every reference in every object copied so far, and in those it copies.
    pub fn scan(&mut self) {
        let mut scan = super::memory::FIRST_OBJECT_WORD;
        while scan < self.to.used_words() {
            let header = self.to.raw_word(scan);
            let size = layout::header_size(header);
            if layout::header_tag(header) != Tag::String as u64 {
                for field in scan + 1..scan + size {
                    let word = self.to.raw_word(field);
                    if is_obj_bits(word) {
                        let new = self.forward(word);
                        self.to.set_raw_word(field, new);
                    }
                }
            }
            scan += size;
        }
    }

    /// For a weak reference: the new reference if its object survived, `None` if it died.
    /// Non-references survive unchanged.
    pub fn survivor(&self, word: u64) -> Option<u64> {
        if !is_obj_bits(word) {
            return Some(word);
        }
        let header = self.from.load(Value(word).as_obj(), 0);
        (layout::header_tag(header) == FORWARDED)
            .then(|| OBJ_TAG | layout::forwarded_offset(header))
    }

    pub fn to_space(&self) -> &Memory {
        self.to
    }
}

/// A reference whose header is not an object's means the heap is corrupt (a stale reference
/// survived a collection): stop before copying garbage.
fn check_header(header: u64, offset: u64) {
    let tag = layout::header_tag(header);
    let known = (Tag::String as u64..=Tag::Array as u64).contains(&tag);
    assert!(
        known && layout::header_size(header) > 0,
        "kiln-lox: heap corrupt: reference to offset {offset:#x} with header {header:#x}"
    );
}

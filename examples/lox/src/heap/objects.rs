//! Reading and updating objects in place: method tables, shapes and fields. Nothing here
//! allocates, so references passed in stay valid for the whole call.

use super::layout::{array, instance, shape, table};
use super::memory::Memory;
use super::strings::string_hash;
use crate::value::{ObjRef, Value};

/// Where an instance keeps field number `index` of its shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FieldLocation {
    /// Instance word.
    Inline(usize),
    /// Element of the overflow array.
    Overflow(usize),
}

pub fn field_location(index: usize, inline_capacity: usize) -> FieldLocation {
    if index < inline_capacity {
        FieldLocation::Inline(instance::FIELDS + index)
    } else {
        FieldLocation::Overflow(index - inline_capacity)
    }
}

pub fn shape_counts(mem: &Memory, s: ObjRef) -> (usize, usize) {
    let counts = mem.load(s, shape::COUNTS);
    (shape::inline_capacity(counts), shape::field_count(counts))
}

/// Index of the field named `key` in shape `s` (walking towards the root), if it has one.
pub fn find_field(mem: &Memory, s: ObjRef, key: Value) -> Option<usize> {
    let mut at = s;
    loop {
        let k = mem.load_value(at, shape::KEY);
        if k.is_nil() {
            return None;
        }
        if k == key {
            return Some(shape_counts(mem, at).1 - 1);
        }
        at = mem.load_value(at, shape::PARENT).as_obj();
    }
}

/// The child of shape `s` that adds field `key`, if it was created before.
pub fn find_transition(mem: &Memory, s: ObjRef, key: Value) -> Option<ObjRef> {
    let mut child = mem.load_value(s, shape::FIRST_CHILD);
    while !child.is_nil() {
        if mem.load_value(child.as_obj(), shape::KEY) == key {
            return Some(child.as_obj());
        }
        child = mem.load_value(child.as_obj(), shape::NEXT_SIBLING);
    }
    None
}

pub fn load_field(mem: &Memory, obj: ObjRef, location: FieldLocation) -> Value {
    match location {
        FieldLocation::Inline(word) => mem.load_value(obj, word),
        FieldLocation::Overflow(i) => {
            let overflow = mem.load_value(obj, instance::OVERFLOW).as_obj();
            mem.load_value(overflow, array::ELEMENTS + i)
        }
    }
}

/// Stores into an existing field (the overflow array, if needed, is big enough).
pub fn store_field(mem: &mut Memory, obj: ObjRef, location: FieldLocation, value: Value) {
    match location {
        FieldLocation::Inline(word) => mem.store_value(obj, word, value),
        FieldLocation::Overflow(i) => {
            let overflow = mem.load_value(obj, instance::OVERFLOW).as_obj();
            mem.store_value(overflow, array::ELEMENTS + i, value)
        }
    }
}

/// Elements the overflow array of `obj` has room for.
pub fn overflow_capacity(mem: &Memory, obj: ObjRef) -> usize {
    let overflow = mem.load_value(obj, instance::OVERFLOW);
    if overflow.is_nil() {
        0
    } else {
        mem.size_words(overflow.as_obj()) - array::ELEMENTS
    }
}

/// Entry index for `key` in table `t`: where it is, or the empty entry where it would go.
fn table_slot(mem: &Memory, t: ObjRef, key: Value) -> usize {
    let capacity = table::capacity(mem.size_words(t));
    let mask = capacity - 1;
    let mut i = string_hash(mem, key.as_obj()) as usize & mask;
    loop {
        let k = mem.load_value(t, table::ENTRIES + 2 * i);
        if k == key || k.is_nil() {
            return i;
        }
        i = (i + 1) & mask;
    }
}

pub fn table_get(mem: &Memory, t: ObjRef, key: Value) -> Option<Value> {
    let i = table_slot(mem, t, key);
    let k = mem.load_value(t, table::ENTRIES + 2 * i);
    (!k.is_nil()).then(|| mem.load_value(t, table::ENTRIES + 2 * i + 1))
}

/// Whether one more key fits without passing a 75% load.
pub fn table_has_room(mem: &Memory, t: ObjRef) -> bool {
    let capacity = table::capacity(mem.size_words(t));
    (mem.load(t, table::COUNT) as usize + 1) * 4 <= capacity * 3
}

/// Sets `key` to `value`; the table must have room (`table_has_room`).
pub fn table_set(mem: &mut Memory, t: ObjRef, key: Value, value: Value) {
    let i = table_slot(mem, t, key);
    if mem.load_value(t, table::ENTRIES + 2 * i).is_nil() {
        let count = mem.load(t, table::COUNT);
        mem.store(t, table::COUNT, count + 1);
        mem.store_value(t, table::ENTRIES + 2 * i, key);
    }
    mem.store_value(t, table::ENTRIES + 2 * i + 1, value);
}

/// Copies every entry of table `from` into table `to`, which has room for them.
pub fn table_copy(mem: &mut Memory, from: ObjRef, to: ObjRef) {
    let capacity = table::capacity(mem.size_words(from));
    for i in 0..capacity {
        let key = mem.load_value(from, table::ENTRIES + 2 * i);
        if !key.is_nil() {
            let value = mem.load_value(from, table::ENTRIES + 2 * i + 1);
            table_set(mem, to, key, value);
        }
    }
}

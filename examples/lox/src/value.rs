//! Lox values, NaN-boxed in one `u64`.
//!
//! Machine code tests and unboxes these with one or two instructions, so the encoding is fixed
//! and documented bit by bit (docs/lox.md, "Values"):
//!
//! ```text
//! number   any f64 whose bits do not have all of QNAN (0x7ffc_0000_0000_0000) set
//! nil      QNAN | 0b000
//! false    QNAN | 0b001
//! true     QNAN | 0b011
//! undef    QNAN | 0b100         a global slot not defined yet; never a Lox value
//! object   SIGN | QNAN | offset  offset: byte offset of the object's header in the heap (< 2^48)
//! ```
//!
//! The arithmetic NaNs the CPU produces (0x7ff8…, 0xfff8…) do not have bit 50 set, so every
//! NaN a Lox program can compute is a number. A raw integer below 2^50 stored in a heap word
//! reads as a (denormal) number, never as an object: the GC can scan every word of an object
//! and forward only what `is_obj` says is a reference (see `heap::layout`).

/// Bits that make a NaN ours (quiet NaN plus bit 50).
pub const QNAN: u64 = 0x7ffc_0000_0000_0000;
/// The sign bit: set on object references.
pub const SIGN: u64 = 0x8000_0000_0000_0000;
/// Tag bits of an object reference.
pub const OBJ_TAG: u64 = SIGN | QNAN;
/// The payload of an object reference: a byte offset into the heap.
pub const PAYLOAD_MASK: u64 = 0x0000_ffff_ffff_ffff;

/// A NaN-boxed Lox value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub struct Value(pub u64);

impl Value {
    pub const NIL: Value = Value(QNAN);
    pub const FALSE: Value = Value(QNAN | 0b001);
    pub const TRUE: Value = Value(QNAN | 0b011);
    /// Marks a global slot that has no definition (yet). Never stored where Lox can read it.
    pub const UNDEFINED: Value = Value(QNAN | 0b100);

    #[inline]
    pub fn number(n: f64) -> Value {
        Value(n.to_bits())
    }

    #[inline]
    pub fn bool(b: bool) -> Value {
        if b {
            Value::TRUE
        } else {
            Value::FALSE
        }
    }

    #[inline]
    pub fn obj(r: ObjRef) -> Value {
        Value(OBJ_TAG | r.0)
    }

    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & QNAN != QNAN
    }

    #[inline]
    pub fn as_number(self) -> f64 {
        f64::from_bits(self.0)
    }

    #[inline]
    pub fn is_obj(self) -> bool {
        is_obj_bits(self.0)
    }

    /// The referenced object; meaningful only when `is_obj`.
    #[inline]
    pub fn as_obj(self) -> ObjRef {
        ObjRef(self.0 & PAYLOAD_MASK)
    }

    #[inline]
    pub fn is_nil(self) -> bool {
        self == Value::NIL
    }

    /// `nil` and `false` are falsey, everything else is truthy.
    #[inline]
    pub fn is_falsey(self) -> bool {
        self.0 | 1 == Value::FALSE.0
    }

    #[inline]
    pub fn is_bool(self) -> bool {
        self.0 | 0b10 == Value::TRUE.0
    }
}

/// Whether a heap word holds an object reference (the GC's test).
#[inline]
pub fn is_obj_bits(bits: u64) -> bool {
    bits & OBJ_TAG == OBJ_TAG
}

/// Lox equality: numbers by IEEE comparison (NaN is not equal to itself), everything else by
/// identity (strings are interned, so equal strings are the same object).
#[inline]
pub fn values_equal(a: Value, b: Value) -> bool {
    if a.is_number() && b.is_number() {
        a.as_number() == b.as_number()
    } else {
        a == b
    }
}

/// A reference to a heap object: the byte offset of its header from the base of the current
/// semispace. Offsets stay valid when the space is reallocated to grow; the GC rewrites them
/// when it moves objects.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ObjRef(pub u64);

impl ObjRef {
    /// Index of the header word in the heap's word array.
    #[inline]
    pub fn word(self) -> usize {
        (self.0 >> 3) as usize
    }

    #[inline]
    pub fn from_word(word: usize) -> ObjRef {
        ObjRef((word as u64) << 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_disjoint() {
        let specials = [Value::NIL, Value::FALSE, Value::TRUE, Value::UNDEFINED];
        for v in specials {
            assert!(!v.is_number() && !v.is_obj());
        }
        assert!(Value::NIL.is_falsey() && Value::FALSE.is_falsey());
        assert!(!Value::TRUE.is_falsey() && !Value::UNDEFINED.is_falsey());
        assert!(Value::TRUE.is_bool() && Value::FALSE.is_bool() && !Value::NIL.is_bool());
        let o = Value::obj(ObjRef(8 * 12345));
        assert!(o.is_obj() && !o.is_number() && !o.is_falsey());
        assert_eq!(o.as_obj(), ObjRef(8 * 12345));
    }

    #[test]
    fn computed_nans_are_numbers() {
        let zero = std::hint::black_box(0.0f64);
        let nan = zero / zero;
        assert!(Value::number(nan).is_number());
        assert!(Value::number(-nan).is_number());
        assert!(!values_equal(Value::number(nan), Value::number(nan)));
        assert!(Value::number(f64::INFINITY).is_number());
        // Small raw integers (proto ids, counts) stored in heap words are never references.
        assert!(!is_obj_bits(12345) && !is_obj_bits((1 << 50) - 1));
    }
}

//! The value stack and the call frames: two fixed regions of words, laid out for machine code.
//!
//! Both are power-of-two arrays indexed with a mask, so a safe access never panics and needs no
//! bounds check; the VM keeps indices in range by construction (a call checks that the callee's
//! `max_stack` fits, frames are limited to `FRAMES_MAX`), so the mask never wraps in practice.
//! JIT'd code will address them as `[stack_base + 8*slot]` and
//! `[frames_base + 8*(FRAME_WORDS*frame + field)]`.

use crate::value::Value;

/// Value stack slots. clox has 64 frames × 256 slots; this leaves room for temporaries beyond
/// the locals, which clox does not check.
pub const STACK_SLOTS: usize = 1 << 16;
/// Call depth limit: "Stack overflow." beyond it, as in clox.
pub const FRAMES_MAX: usize = 64;

/// A frame record: the closure running, where it resumes, where its slot 0 is.
pub mod frame {
    /// The closure (Value); slot 0 holds the callee or the receiver, so the frame keeps the
    /// closure itself as a GC root.
    pub const CLOSURE: usize = 0;
    /// Raw bytecode index the frame resumes at (saved when it calls).
    pub const IP: usize = 1;
    /// Raw value-stack index of slot 0.
    pub const BASE: usize = 2;
    /// Reserved for the JIT: the machine-code return address of a compiled frame (0 when the
    /// frame is interpreted).
    pub const NATIVE_RETURN: usize = 3;
    pub const WORDS: usize = 4;
}

const STACK_MASK: usize = STACK_SLOTS - 1;
const FRAME_WORDS_TOTAL: usize = FRAMES_MAX * frame::WORDS;
const FRAME_MASK: usize = FRAME_WORDS_TOTAL - 1;

pub struct ValueStack {
    slots: Box<[u64; STACK_SLOTS]>,
}

impl ValueStack {
    pub fn new() -> ValueStack {
        let slots = vec![Value::NIL.0; STACK_SLOTS].into_boxed_slice();
        ValueStack {
            slots: slots
                .try_into()
                .unwrap_or_else(|_| unreachable!("length is STACK_SLOTS")),
        }
    }

    #[inline]
    pub fn get(&self, slot: usize) -> Value {
        Value(self.slots[slot & STACK_MASK])
    }

    #[inline]
    pub fn set(&mut self, slot: usize, value: Value) {
        self.slots[slot & STACK_MASK] = value.0;
    }

    /// Slots `0..len` (the live part), for the GC.
    pub fn live_mut(&mut self, len: usize) -> &mut [u64] {
        &mut self.slots[..len.min(STACK_SLOTS)]
    }
}

impl Default for ValueStack {
    fn default() -> Self {
        ValueStack::new()
    }
}

pub struct Frames {
    words: Box<[u64; FRAME_WORDS_TOTAL]>,
}

impl Frames {
    pub fn new() -> Frames {
        Frames {
            words: Box::new([0; FRAME_WORDS_TOTAL]),
        }
    }

    #[inline]
    fn at(index: usize, field: usize) -> usize {
        (index * frame::WORDS + field) & FRAME_MASK
    }

    #[inline]
    pub fn closure(&self, index: usize) -> Value {
        Value(self.words[Frames::at(index, frame::CLOSURE)])
    }

    #[inline]
    pub fn ip(&self, index: usize) -> usize {
        self.words[Frames::at(index, frame::IP)] as usize
    }

    #[inline]
    pub fn base(&self, index: usize) -> usize {
        self.words[Frames::at(index, frame::BASE)] as usize
    }

    #[inline]
    pub fn set_ip(&mut self, index: usize, ip: usize) {
        self.words[Frames::at(index, frame::IP)] = ip as u64;
    }

    #[inline]
    pub fn set(&mut self, index: usize, closure: Value, ip: usize, base: usize) {
        self.words[Frames::at(index, frame::CLOSURE)] = closure.0;
        self.words[Frames::at(index, frame::IP)] = ip as u64;
        self.words[Frames::at(index, frame::BASE)] = base as u64;
        self.words[Frames::at(index, frame::NATIVE_RETURN)] = 0;
    }

    /// The closure slot of every frame in `0..count`, for the GC.
    pub fn visit_closures(&mut self, count: usize, visit: &mut dyn FnMut(&mut u64)) {
        for index in 0..count.min(FRAMES_MAX) {
            visit(&mut self.words[Frames::at(index, frame::CLOSURE)]);
        }
    }
}

impl Default for Frames {
    fn default() -> Self {
        Frames::new()
    }
}

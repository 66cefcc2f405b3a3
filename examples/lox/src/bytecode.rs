//! Bytecode: instruction set, function prototypes, the code space and the inline caches.
//!
//! All functions' code lives in one byte vector (`Program::code`), a function being a range of
//! it, so a frame's position is one index and a call sets it from the prototype. Operands that
//! index tables shared by the whole VM (constants, globals, inline caches, prototypes) are u32
//! little-endian; jumps are u32 byte distances from the end of the jump instruction. The code
//! only grows (by compiling), never moves, and is not in the GC heap: a prototype is permanent.
//!
//! The compiler also counts what clox's own encoding would take (constants per function, jump
//! distances in clox bytes), so that the limits and their errors are exactly clox's.

/// Opcodes. The comment gives the operands and the stack effect.
pub mod op {
    /// k:u32 — push constant k.
    pub const CONSTANT: u8 = 0;
    pub const NIL: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const FALSE: u8 = 3;
    pub const POP: u8 = 4;
    /// s:u8 — push slot s of the frame.
    pub const GET_LOCAL: u8 = 5;
    /// s:u8 — slot s = top (kept).
    pub const SET_LOCAL: u8 = 6;
    /// g:u32 — push global slot g ("Undefined variable" when undefined).
    pub const GET_GLOBAL: u8 = 7;
    /// g:u32 — global g = pop.
    pub const DEFINE_GLOBAL: u8 = 8;
    /// g:u32 — global g = top (kept), which must be defined.
    pub const SET_GLOBAL: u8 = 9;
    /// i:u8 — push upvalue i of the running closure.
    pub const GET_UPVALUE: u8 = 10;
    /// i:u8 — upvalue i = top (kept).
    pub const SET_UPVALUE: u8 = 11;
    /// ic:u32 — replace the instance on top by its property (field, or bound method).
    pub const GET_PROPERTY: u8 = 12;
    /// ic:u32 — `[instance, value] → [value]`, setting the field.
    pub const SET_PROPERTY: u8 = 13;
    /// ic:u32 — [this, superclass] → [bound method of the superclass].
    pub const GET_SUPER: u8 = 14;
    pub const EQUAL: u8 = 15;
    pub const GREATER: u8 = 16;
    pub const LESS: u8 = 17;
    pub const ADD: u8 = 18;
    pub const SUBTRACT: u8 = 19;
    pub const MULTIPLY: u8 = 20;
    pub const DIVIDE: u8 = 21;
    pub const NOT: u8 = 22;
    pub const NEGATE: u8 = 23;
    pub const PRINT: u8 = 24;
    /// d:u32 — jump forward d bytes.
    pub const JUMP: u8 = 25;
    /// d:u32 — jump forward d bytes when the top is falsey (kept).
    pub const JUMP_IF_FALSE: u8 = 26;
    /// d:u32 — jump back d bytes.
    pub const LOOP: u8 = 27;
    /// argc:u8 — call the value below the arguments.
    pub const CALL: u8 = 28;
    /// ic:u32 argc:u8 — call a method (or callable field) of the receiver below the arguments.
    pub const INVOKE: u8 = 29;
    /// ic:u32 argc:u8 — [this, args…, superclass] → call the superclass's method.
    pub const SUPER_INVOKE: u8 = 30;
    /// p:u32 then (is_local:u8 index:u8) per upvalue — push a new closure of prototype p.
    pub const CLOSURE: u8 = 31;
    /// Close the upvalue of the top slot, pop it.
    pub const CLOSE_UPVALUE: u8 = 32;
    pub const RETURN: u8 = 33;
    /// k:u32 — push a new class named by constant k.
    pub const CLASS: u8 = 34;
    /// `[superclass, subclass] → [superclass]`: copy the methods down.
    pub const INHERIT: u8 = 35;
    /// k:u32 — `[class, closure] → [class]`: define method named by constant k.
    pub const METHOD: u8 = 36;
}

#[inline]
pub fn read_u32(code: &[u8], at: usize) -> u32 {
    let bytes: [u8; 4] = match code[at..at + 4].try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("a 4-byte slice"),
    };
    u32::from_le_bytes(bytes)
}

/// A compiled function: what the interpreter (and later the JIT) needs to run it.
#[derive(Debug, Clone, Default)]
pub struct Proto {
    /// None for the top-level script.
    pub name: Option<Box<[u8]>>,
    pub arity: usize,
    pub upvalue_count: usize,
    /// First byte of the function's code in `Program::code`.
    pub code_start: usize,
    /// Bytes of code (the function's code is `code_start..code_start + code_len`).
    pub code_len: usize,
    /// The most value-stack slots the function uses, slot 0 and parameters included: a call
    /// checks that they fit, so the body needs no check per push.
    pub max_stack: usize,
}

/// Everything compiled so far.
#[derive(Default, Clone)]
pub struct Program {
    pub code: Vec<u8>,
    /// Source line of each byte of `code`.
    pub lines: Vec<u32>,
    pub protos: Vec<Proto>,
}

/// What an inline cache has learned. Keys are shapes for instance sites and classes for
/// `super` sites; see docs/lox.md ("Inline caches").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IcKind {
    Empty,
    /// The field is inline at instance word `slot`.
    InlineField,
    /// The field is element `slot` of the overflow array.
    OverflowField,
    /// The property is the method `target` of the shape's class.
    Method,
    /// (set) The field does not exist yet: store it inline at word `slot` and move the
    /// instance to shape `target`.
    AddInlineField,
}

/// One inline cache (monomorphic: a miss overwrites it), as it is stored in the VM region
/// (`vm::region::ic`), where the interpreter and JIT'd code both read it. Weak: when its key or
/// target dies, the GC empties it. The property name each cache is for is kept apart
/// (`Vm::ic_names`), since only the slow paths need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineCache {
    /// Value bits of the shape or class this entry is for; nil when empty.
    pub key: u64,
    pub kind: IcKind,
    pub slot: u32,
    /// Value bits of the method closure or the new shape; nil when unused.
    pub target: u64,
}

impl InlineCache {
    pub fn empty() -> InlineCache {
        InlineCache {
            key: crate::value::Value::NIL.0,
            kind: IcKind::Empty,
            slot: 0,
            target: crate::value::Value::NIL.0,
        }
    }
}

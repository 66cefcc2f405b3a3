//! kiln-lox: Lox, the language of Robert Nystrom's *Crafting Interpreters*, as a bytecode VM
//! with a template JIT on kiln: NaN-boxed values, a flat word heap with shapes and a copying
//! GC, frames and stack in memory shared with machine code, inline caches per instruction,
//! tiering from the interpreter to x86-64 code. See docs/lox.md.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bytecode;
pub mod compiler;
pub mod heap;
pub mod jit;
pub mod scanner;
pub mod value;
pub mod vm;

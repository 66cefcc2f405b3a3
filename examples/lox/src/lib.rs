//! kiln-lox: Lox, the language of Robert Nystrom's *Crafting Interpreters*, as a bytecode VM
//! laid out for a template JIT: NaN-boxed values, a flat word heap with shapes and a copying
//! GC, frames and stack in word regions, inline caches per instruction. See docs/lox.md.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bytecode;
pub mod compiler;
pub mod heap;
pub mod scanner;
pub mod value;
pub mod vm;

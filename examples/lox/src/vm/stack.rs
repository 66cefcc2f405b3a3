//! The shape of the value stack and the call frames, which live in the VM region
//! (`region.rs`) where JIT'd code addresses them as `[r12 + STACK_OFFSET + 8*slot]` and
//! `[r12 + FRAMES_OFFSET + 8*(frame::WORDS*frame + field)]`.

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
    /// Raw bytecode index the frame resumes at (saved when it calls, and by JIT'd code before
    /// anything that may raise an error, so that the stack trace is right).
    pub const IP: usize = 1;
    /// Raw value-stack index of slot 0.
    pub const BASE: usize = 2;
    /// The machine return address of a compiled frame (the address in its caller's machine
    /// code, or in the entry trampoline), 0 when the frame is interpreted.
    pub const NATIVE_RETURN: usize = 3;
    pub const WORDS: usize = 4;
}

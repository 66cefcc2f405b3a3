//! The lazy-resolution trampoline: machine code that a lazy stub jumps to, and the Rust function
//! it calls. The registry (what runs, once, and where execution continues) is safe code in
//! `crate::lazy`; this module holds only what must be written below Rust's ABI.
//!
//! Convention (x86-64 System V; docs/lazy.md is the reference for stub writers):
//!
//! - A stub is entered by a `call` (or a tail `jmp` in place of a call) from code that passes a
//!   C call's arguments: rdi, rsi, rdx, rcx, r8, r9, xmm0–xmm7, rax (the number of vector
//!   registers a varargs call uses), r10 (the static chain), and the stack above the return
//!   address.
//! - The stub puts its key in r11 (free at a call boundary: not an argument register, not
//!   preserved) and jumps to the trampoline. It pushes nothing.
//! - The trampoline saves every argument register, calls [`lazy_entry`]`(key, return address)`
//!   with a 16-byte aligned stack, restores them all, and jumps to the address it got back: the
//!   resolved function runs as if the caller had called it, and returns straight to the caller.
//!
//! What is not preserved: r11 (the key, then the target) and the flags, which no call preserves;
//! the upper halves of ymm0–ymm7 and zmm0–zmm7, which only `__m256`/`__m512` arguments use (the
//! Rust side may run AVX code, e.g. glibc's `memcpy`, that ends with `vzeroupper`). Functions
//! taking 256- or 512-bit vectors by value must not be lazy.

use std::panic::{catch_unwind, AssertUnwindSafe};

// The frame, from the stub's caller's stack pointer S (S ≡ 0 mod 16 before its `call`):
//   S-8    return address into the caller      (entry: rsp ≡ 8 mod 16)
//   S-16   saved rbp                           (rbp points here: CFA = rbp + 16)
//          then rsp is rounded down to 16 bytes (a no-op for a caller that kept the ABI's
//          alignment; one that did not still gets aligned saves and a correct call into Rust)
//   -64    rdi rsi rdx rcx r8 r9 rax r10       (8 pushes: rsp ≡ 0 mod 16)
//   -192   xmm0..xmm7, 16 bytes each, aligned  (rsp ≡ 0 mod 16 at the call below, as the ABI wants)
// The CFI lets debuggers, profilers and the unwinder walk from the Rust side through this frame
// straight to the stub's caller (the stub itself pushes nothing). `endbr64` (a no-op without
// CET) makes it a valid target of the stub's indirect jump where indirect branch tracking is on.
//
// SAFETY: the code restores every register it changes except r11 and the flags (free at a call
// boundary), writes no memory but its own frame below the stack pointer it was entered with,
// calls `lazy_entry` as the C ABI requires (arguments in rdi and rsi, rsp 16-byte aligned at the
// call), and leaves rsp exactly as it found it before the final `jmp`.
core::arch::global_asm!(
    ".pushsection .text.kiln_lazy_trampoline,\"ax\",@progbits",
    ".globl kiln_lazy_trampoline",
    ".hidden kiln_lazy_trampoline",
    ".type kiln_lazy_trampoline,@function",
    ".p2align 4",
    "kiln_lazy_trampoline:",
    ".cfi_startproc",
    "endbr64",
    "pushq %rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset %rbp, -16",
    "movq %rsp, %rbp",
    ".cfi_def_cfa_register %rbp",
    "andq $-16, %rsp",
    "pushq %rdi",
    "pushq %rsi",
    "pushq %rdx",
    "pushq %rcx",
    "pushq %r8",
    "pushq %r9",
    "pushq %rax",
    "pushq %r10",
    "subq $128, %rsp",
    "movaps %xmm0, 0(%rsp)",
    "movaps %xmm1, 16(%rsp)",
    "movaps %xmm2, 32(%rsp)",
    "movaps %xmm3, 48(%rsp)",
    "movaps %xmm4, 64(%rsp)",
    "movaps %xmm5, 80(%rsp)",
    "movaps %xmm6, 96(%rsp)",
    "movaps %xmm7, 112(%rsp)",
    "movq %r11, %rdi",
    "movq 8(%rbp), %rsi",
    "call {entry}",
    "movq %rax, %r11",
    "movaps 0(%rsp), %xmm0",
    "movaps 16(%rsp), %xmm1",
    "movaps 32(%rsp), %xmm2",
    "movaps 48(%rsp), %xmm3",
    "movaps 64(%rsp), %xmm4",
    "movaps 80(%rsp), %xmm5",
    "movaps 96(%rsp), %xmm6",
    "movaps 112(%rsp), %xmm7",
    "addq $128, %rsp",
    "popq %r10",
    "popq %rax",
    "popq %r9",
    "popq %r8",
    "popq %rcx",
    "popq %rdx",
    "popq %rsi",
    "popq %rdi",
    "movq %rbp, %rsp",
    "popq %rbp",
    ".cfi_def_cfa %rsp, 8",
    "jmpq *%r11",
    ".cfi_endproc",
    ".size kiln_lazy_trampoline, . - kiln_lazy_trampoline",
    ".popsection",
    entry = sym lazy_entry,
    options(att_syntax)
);

extern "C" {
    /// The trampoline above. Never called from Rust: only its address is taken.
    fn kiln_lazy_trampoline();
}

/// Where lazy stubs jump: the trampoline's address in this process.
pub(crate) fn trampoline_address() -> u64 {
    // Taking the address of an extern function is safe; only calling it would not be.
    kiln_lazy_trampoline as *const () as u64
}

/// Called by the trampoline with the stub's key and the stub's caller's return address; returns
/// where to continue. Never unwinds into the trampoline (there is no Rust frame above it to
/// catch a panic): a panic here is a bug in the registry, reported and fatal.
extern "C" fn lazy_entry(key: u64, return_addr: u64) -> u64 {
    // The trampoline calls this with a 16-byte aligned stack and every argument register
    // saved, and jumps to what it returns with them restored. The registry returns a handler's
    // (or the error handler's) address, or ends the process: it never returns without a target.
    match catch_unwind(AssertUnwindSafe(|| {
        crate::lazy::LazyRuntime::global().enter(key, return_addr)
    })) {
        Ok(target) => target,
        Err(_) => crate::lazy::fatal(key, "the lazy-function registry panicked"),
    }
}

//! Valgrind client requests, without valgrind's C header.
//!
//! Valgrind translates machine code before running it and caches the translations by address.
//! It notices `munmap`, but not memory that is reused or rewritten in place (a slab handing the
//! same range to new code, a patched call site): those must be announced, or valgrind keeps
//! running the old code. The announcement is a *client request*: a sequence of instructions that
//! does nothing on a real CPU (four rotations of `rdi` by 3+13+61+51 = 128 bits, then
//! `xchg rbx, rbx`) and that valgrind's decoder recognises. `rax` points at the request and its
//! five arguments; the answer comes back in `rdx`, which holds a default value on a real CPU.

/// `VG_USERREQ__RUNNING_ON_VALGRIND`: answers the nesting depth (0 on a real CPU).
const RUNNING_ON_VALGRIND: u64 = 0x1001;
/// `VG_USERREQ__DISCARD_TRANSLATIONS(addr, len)`.
const DISCARD_TRANSLATIONS: u64 = 0x1002;

/// Sends a client request; returns `default` when not running under valgrind.
fn client_request(default: u64, request: u64, args: [u64; 5]) -> u64 {
    let block: [u64; 6] = [request, args[0], args[1], args[2], args[3], args[4]];
    let result: u64;
    // SAFETY: on a real CPU the sequence only rotates rdi by a multiple of 64 bits (leaving it
    // unchanged) and exchanges rbx with itself: no register, memory or stack effect besides the
    // flags (declared clobbered by leaving out `preserves_flags`). Under valgrind, the core reads
    // the six words at `rax` (a live local array) and writes the answer to rdx, declared as the
    // output. Memory is not declared `nomem`/`readonly`, so the array is written before the
    // sequence runs and the compiler cannot move or drop it.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") block.as_ptr(),
            inout("rdx") default => result,
            options(nostack),
        );
    }
    result
}

/// How many valgrinds this process runs under (0 on a real CPU).
pub fn running_on_valgrind() -> u64 {
    client_request(0, RUNNING_ON_VALGRIND, [0; 5])
}

/// Tells valgrind to forget its translations of `[addr, addr + size)`. A no-op on a real CPU
/// (a handful of instructions), so it is always safe to call.
pub fn discard_translations(addr: u64, size: u64) {
    client_request(0, DISCARD_TRANSLATIONS, [addr, size, 0, 0, 0]);
}

//! Calling into JIT'd code.

use crate::ExecutorAddr;
use std::ffi::{c_char, CString};

type MainFn = unsafe extern "C" fn(i32, *const *const c_char, *const *const c_char) -> i32;
type VoidFn = unsafe extern "C" fn();
type CxaFinalize = unsafe extern "C" fn(*mut libc::c_void);

extern "C" {
    static environ: *const *const c_char;
}

/// # Safety
/// `entry` must be the address of finalized code with the C signature of `main`.
///
/// The argument strings and the argv array are never freed: a native program's argv lives as
/// long as the process, and exit handlers and threads that outlive `main` may read it.
pub(crate) unsafe fn main(entry: ExecutorAddr, args: &[String]) -> i32 {
    let cargs: &'static [CString] = Vec::leak(
        args.iter()
            .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
            .collect(),
    );
    let mut argv: Vec<*const c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let argv: &'static [*const c_char] = Vec::leak(argv);
    // SAFETY: `entry` is code with `main`'s signature (this function's contract); argv is
    // NULL-terminated and lives as long as the process; environ is the process's environment.
    unsafe {
        let f = std::mem::transmute::<u64, MainFn>(entry.0);
        f(args.len() as i32, argv.as_ptr(), environ)
    }
}

/// # Safety
/// `f` must be the address of finalized code with the C signature `void f(void)`.
pub(crate) unsafe fn void(f: ExecutorAddr) {
    // SAFETY: `f` is code with the signature `void f(void)` (this function's contract).
    unsafe { std::mem::transmute::<u64, VoidFn>(f.0)() }
}

impl crate::InProcessExecutor {
    /// A typed function pointer to finalized code in this process.
    ///
    /// Nothing is checked: this is how a host calls JIT'd code directly, at full speed.
    ///
    /// # Safety
    /// `addr` must be the address of a finalized, still-live function in this process whose C
    /// ABI signature is exactly `F` (an `extern "C" fn(..) -> ..` pointer type), and the unit
    /// that holds it must outlive every call through the pointer.
    ///
    /// # Panics
    /// If `F` is not the size of a pointer.
    pub unsafe fn function<F: Copy>(addr: ExecutorAddr) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
        // SAFETY: F is pointer-sized (asserted); that it is a function pointer type matching
        // the code at `addr` is the caller's promise.
        unsafe { std::mem::transmute_copy::<usize, F>(&(addr.0 as usize)) }
    }
}

/// Run the `__cxa_atexit` handlers registered for `dso` (glibc's dlclose mechanism): only
/// handlers registered with exactly this handle run.
///
/// # Safety
/// `dso` must be an address inside a unit of the caller's whose memory is still mapped: the
/// handle that unit's code registered its handlers with. (Another object's handle would run
/// its destructors while it is still in use; NULL would run every handler in the process.)
pub(crate) unsafe fn cxa_finalize(dso: ExecutorAddr) {
    if let Ok(Some(f)) = super::dl::sym(None, b"__cxa_finalize") {
        // SAFETY: `__cxa_finalize(void *dso)` is glibc's, with this signature; `dso` is a
        // handle of the caller's live unit (this function's contract), so only that unit's
        // handlers run, while its code is still mapped.
        unsafe { std::mem::transmute::<u64, CxaFinalize>(f.0)(dso.0 as *mut libc::c_void) }
    }
}

/// Call an IFUNC resolver and store the implementation it chose at `slot`.
///
/// # Safety
/// `resolver` must be finalized code with the signature `void *resolver(void)`, and `slot` 8
/// writable bytes that nothing else accesses concurrently.
pub(crate) unsafe fn resolve_ifunc(resolver: ExecutorAddr, slot: ExecutorAddr) {
    type Resolver = unsafe extern "C" fn() -> *const std::ffi::c_void;
    // SAFETY: `resolver` is code with the resolver's signature and `slot` 8 writable bytes
    // nobody else accesses (this function's contract).
    unsafe {
        let f = std::mem::transmute::<u64, Resolver>(resolver.0);
        let chosen = f() as u64;
        (slot.0 as *mut u64).write_unaligned(chosen);
    }
}

/// Call `f` with up to six integer or pointer arguments, as `u64 f(u64, ..., u64)` in the
/// System V ABI (the first six arguments travel in rdi, rsi, rdx, rcx, r8, r9; a function that
/// takes fewer ignores the rest), and return rax.
///
/// # Safety
/// `f` must be finalized code whose C signature takes at most six integer or pointer arguments
/// and returns an integer, a pointer or nothing (rax is then meaningless), and what it does with
/// the arguments is the caller's responsibility.
pub(crate) unsafe fn with_args(f: ExecutorAddr, args: &[u64; 6]) -> u64 {
    type SixArgs = unsafe extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let f = std::mem::transmute::<u64, SixArgs>(f.0);
        f(args[0], args[1], args[2], args[3], args[4], args[5])
    }
}

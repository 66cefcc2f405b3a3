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
    // SAFETY: guaranteed by the caller; argv is NULL-terminated and lives as long as the
    // process; environ is the process's environment.
    unsafe {
        let f = std::mem::transmute::<u64, MainFn>(entry.0);
        f(args.len() as i32, argv.as_ptr(), environ)
    }
}

/// # Safety
/// `f` must be the address of finalized code with the C signature `void f(void)`.
pub(crate) unsafe fn void(f: ExecutorAddr) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::mem::transmute::<u64, VoidFn>(f.0)() }
}

/// Run the `__cxa_atexit` handlers registered for `dso` (glibc's dlclose mechanism).
pub(crate) fn cxa_finalize(dso: ExecutorAddr) {
    if let Ok(Some(f)) = super::dl::sym(None, b"__cxa_finalize") {
        // SAFETY: `__cxa_finalize(void *dso)` is glibc's; it runs only handlers registered with
        // this exact handle, which belong to code that is still mapped.
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
    // SAFETY: guaranteed by the caller.
    unsafe {
        let f = std::mem::transmute::<u64, Resolver>(resolver.0);
        let chosen = f() as u64;
        (slot.0 as *mut u64).write_unaligned(chosen);
    }
}

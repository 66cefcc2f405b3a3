//! The exported C functions, and the only unsafe code of the crate: reading what C passes
//! (strings, byte arrays, arrays of strings), writing through its out-pointers, and calling
//! its callbacks.
//!
//! An exported function that reads or writes through a pointer argument is an
//! `unsafe extern "C" fn` whose contract is the one kiln.h states for it (those taking only
//! handles and numbers are safe); they share one:
//!
//! - pointer arguments are NULL or valid for what the header says (a NUL-terminated string, an
//!   array of `len` elements, a writable object), for the duration of the call;
//! - handles (`kiln_session_t *`, …) may be anything: they are looked up, never dereferenced.
//!
//! Each function runs its body under [`guard`] (no panic leaves it) and checks every pointer for
//! NULL before using it, and every out-pointer before doing any work, so that a NULL out-pointer
//! is reported instead of a result lost.

pub(crate) mod types;

mod compact;
mod error;
mod generator;
mod graph;
mod jit;
mod lazy;
mod session;

use crate::error::CError;
use std::ffi::{c_char, CStr};
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use types::*;

/// Run the body of entry point `at`: its error, or a panic turned into one, becomes a
/// `kiln_error_t` handle; success is NULL.
fn guard(at: &str, body: impl FnOnce() -> Result<(), CError>) -> *mut kiln_error_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => error::into_handle(e.context(at)),
        Err(panic) => error::into_handle(panicked(at, &*panic)),
    }
}

/// Run the body of an entry point that reports nothing (the `_delete` functions): a panic is
/// caught and dropped, never unwound into C.
fn guard_quiet(body: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(body));
}

fn panicked(at: &str, panic: &(dyn std::any::Any + Send)) -> CError {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    CError::new(
        KILN_ERROR_PANIC,
        format!("{at}: internal error (a bug in kiln, please report it): {what}"),
    )
}

/// A handle value as C holds it.
fn to_handle<T>(value: usize) -> *mut T {
    std::ptr::without_provenance_mut(value)
}

/// The value of a handle C passed.
fn handle_value<T>(p: *const T) -> usize {
    p.addr()
}

/// A NUL-terminated string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn c_str<'a>(p: *const c_char, arg: &str) -> Result<&'a CStr, CError> {
    if p.is_null() {
        return Err(CError::invalid_argument(format!("{arg} is NULL")));
    }
    // SAFETY: not NULL (checked above); the caller guarantees a NUL-terminated string that
    // outlives the call, which is as long as 'a is used (the entry point's body).
    Ok(unsafe { CStr::from_ptr(p) })
}

/// A NUL-terminated UTF-8 string argument (symbol and section names).
///
/// # Safety
/// As [`c_str`].
unsafe fn utf8<'a>(p: *const c_char, arg: &str) -> Result<&'a str, CError> {
    // SAFETY: the caller's guarantee, passed on.
    let s = unsafe { c_str(p, arg)? };
    s.to_str().map_err(|e| {
        CError::invalid_argument(format!(
            "{arg} is not valid UTF-8 (at byte {}): {:?}",
            e.valid_up_to(),
            String::from_utf8_lossy(s.to_bytes())
        ))
    })
}

/// A path argument: any bytes but NUL (paths need not be UTF-8).
///
/// # Safety
/// As [`c_str`].
unsafe fn c_path<'a>(p: *const c_char, arg: &str) -> Result<&'a Path, CError> {
    // SAFETY: the caller's guarantee, passed on.
    let s = unsafe { c_str(p, arg)? };
    Ok(Path::new(std::ffi::OsStr::from_bytes(s.to_bytes())))
}

/// An array of `len` bytes (NULL allowed when `len` is 0).
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes valid for the call.
unsafe fn c_bytes<'a>(p: *const u8, len: usize, arg: &str) -> Result<&'a [u8], CError> {
    c_array(p, len, arg)
}

/// An array of `len` elements (NULL allowed when `len` is 0).
///
/// # Safety
/// `p` is NULL or points to `len` initialized elements valid for the call.
unsafe fn c_array<'a, T>(p: *const T, len: usize, arg: &str) -> Result<&'a [T], CError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CError::invalid_argument(format!(
            "{arg} is NULL but its length is {len}"
        )));
    }
    if len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(CError::invalid_argument(format!(
            "{arg}: length {len} is larger than any array"
        )));
    }
    if !p.is_aligned() {
        return Err(CError::invalid_argument(format!("{arg} is misaligned")));
    }
    // SAFETY: not NULL and aligned (checked), `len` elements fit in an isize (checked), and the
    // caller guarantees they are readable and initialized for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An array of `n` UTF-8 strings.
///
/// # Safety
/// `p` is NULL or points to `n` pointers, each NULL or to a NUL-terminated string, valid for
/// the call.
unsafe fn c_strings<'a>(
    p: *const *const c_char,
    n: usize,
    arg: &str,
) -> Result<Vec<&'a str>, CError> {
    // SAFETY: the caller's guarantee, passed on.
    let ptrs = unsafe { c_array(p, n, arg)? };
    ptrs.iter()
        .enumerate()
        // SAFETY: each element is NULL (reported) or a string, as the caller guarantees.
        .map(|(i, s)| unsafe { utf8(*s, &format!("{arg}[{i}]")) })
        .collect()
}

/// Where a function writes a result: checked not NULL before the function does anything.
struct Out<'a, T> {
    ptr: *mut T,
    _call: PhantomData<&'a mut T>,
}

impl<T> Out<'_, T> {
    fn set(self, value: T) {
        // SAFETY: `ptr` is not NULL and writable for the call (see `out`); unaligned writes are
        // allowed, so a misaligned pointer from C is no undefined behaviour here.
        unsafe { self.ptr.write_unaligned(value) }
    }
}

/// A required out-pointer.
///
/// # Safety
/// `p` is NULL or points to a writable `T` valid for the call.
unsafe fn out<'a, T>(p: *mut T, arg: &str) -> Result<Out<'a, T>, CError> {
    if p.is_null() {
        return Err(CError::invalid_argument(format!("{arg} is NULL")));
    }
    Ok(Out {
        ptr: p,
        _call: PhantomData,
    })
}

/// An out-pointer the caller may leave NULL.
///
/// # Safety
/// As [`out`].
unsafe fn out_optional<'a, T>(p: *mut T) -> Option<Out<'a, T>> {
    (!p.is_null()).then_some(Out {
        ptr: p,
        _call: PhantomData,
    })
}

/// Where a function writes a list: a caller's array of `cap` elements (filled with as many as
/// fit) and the list's full length (so that a caller with too small an array learns how much
/// to allocate). Checked before the function does anything.
struct OutList<'a, T> {
    array: *mut T,
    cap: usize,
    count: Out<'a, usize>,
}

impl<T: Copy> OutList<'_, T> {
    fn set(self, items: &[T]) {
        let n = items.len().min(self.cap);
        if n > 0 {
            // SAFETY: `array` is not NULL, aligned and has room for `cap` >= `n` elements (see
            // `out_list`); `items` is a Rust slice and cannot overlap C's array.
            unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), self.array, n) };
        }
        self.count.set(items.len());
    }
}

/// A list out-pointer pair: `array` may be NULL only if `cap` is 0; `count` is required.
///
/// # Safety
/// `array` is NULL or points to `cap` writable elements, and `count` is NULL or writable, for
/// the call.
unsafe fn out_list<'a, T>(
    array: *mut T,
    cap: usize,
    count: *mut usize,
    arg: &str,
) -> Result<OutList<'a, T>, CError> {
    // SAFETY: the caller's guarantee, passed on.
    let count = unsafe { out(count, "out_count")? };
    if cap > 0 && (array.is_null() || !array.is_aligned()) {
        return Err(CError::invalid_argument(format!(
            "{arg} is NULL or misaligned but its capacity is {cap}"
        )));
    }
    Ok(OutList { array, cap, count })
}

/// The version of kiln behind this library, as a static string ("0.1.0").
#[no_mangle]
pub extern "C" fn kiln_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_not_an_unwind() {
        let e = guard("kiln_test_entry", || panic!("boom"));
        assert!(!e.is_null());
        assert_eq!(error::kiln_error_kind(e), KILN_ERROR_PANIC);
        let mut msg: *const c_char = std::ptr::null();
        let mut len = 0usize;
        // SAFETY: both out-pointers are valid locals.
        unsafe { error::kiln_error_message(e, &mut msg, &mut len) };
        // SAFETY: kiln_error_message points `msg` at `len` bytes followed by a NUL, alive until
        // the error is deleted below.
        let text = unsafe { CStr::from_ptr(msg) }.to_str().unwrap().to_string();
        assert_eq!(text.len(), len);
        assert!(
            text.starts_with("kiln_test_entry: internal error"),
            "{text}"
        );
        assert!(text.ends_with("boom"), "{text}");
        error::kiln_error_delete(e);
        assert_eq!(error::kiln_error_kind(e), KILN_ERROR_INVALID_HANDLE);
        // A quiet guard swallows the panic.
        guard_quiet(|| panic!("quiet"));
    }

    #[test]
    fn out_pointers_and_arrays_are_checked() {
        // SAFETY: NULL is allowed and reported.
        let e = unsafe { out::<u64>(std::ptr::null_mut(), "out_addr") }
            .err()
            .unwrap();
        assert_eq!(e.kind(), KILN_ERROR_INVALID_ARGUMENT);
        // SAFETY: NULL with a length is reported before anything is read.
        let e = unsafe { c_bytes(std::ptr::null(), 3, "bytes") }.unwrap_err();
        assert!(e.message().contains("bytes is NULL but its length is 3"));
        // SAFETY: a length no array can have is reported before anything is read.
        let one = [0u64];
        let e = unsafe { c_array(one.as_ptr(), usize::MAX, "big") }.unwrap_err();
        assert!(e.message().contains("larger than any array"));
        // SAFETY: an empty array may be NULL.
        assert!(unsafe { c_bytes(std::ptr::null(), 0, "bytes") }
            .unwrap()
            .is_empty());
    }
}

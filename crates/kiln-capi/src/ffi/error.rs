//! `kiln_error_*`.

use super::types::*;
use super::{guard_quiet, handle_value, out_optional, to_handle};
use crate::error::CError;
use crate::handle::{Registry, Tag};
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

static ERRORS: Registry<CError> = Registry::new(Tag::Error);

/// Hand an error to C.
pub(super) fn into_handle(e: CError) -> *mut kiln_error_t {
    to_handle(ERRORS.insert(e))
}

/// Take back an error C hands to kiln (a callback's): it is kiln's to delete now.
pub(super) fn take(e: *mut kiln_error_t, arg: &str) -> Result<Arc<CError>, CError> {
    ERRORS.remove(handle_value(e), arg)
}

/// # Safety
/// `msg` and `len` are NULL or writable; see kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_error_message(
    e: *const kiln_error_t,
    msg: *mut *const c_char,
    len: *mut usize,
) {
    guard_quiet(|| {
        // The message lives in the registry until kiln_error_delete; for a handle that is not
        // a live error, a static message says so.
        let (text, n) = match ERRORS.get(handle_value(e), "the error") {
            Ok(err) => (err.message_c().as_ptr(), err.message_c().to_bytes().len()),
            Err(_) => {
                let m = c"(not a live kiln_error_t: NULL, deleted, or not an error)";
                (m.as_ptr(), m.to_bytes().len())
            }
        };
        // SAFETY: NULL or writable, as the contract says.
        if let Some(o) = unsafe { out_optional(msg) } {
            o.set(text);
        }
        // SAFETY: as above.
        if let Some(o) = unsafe { out_optional(len) } {
            o.set(n);
        }
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_error_kind(e: *const kiln_error_t) -> kiln_error_kind_t {
    catch_unwind(AssertUnwindSafe(|| {
        ERRORS
            .get(handle_value(e), "the error")
            .map_or(KILN_ERROR_INVALID_HANDLE, |err| err.kind())
    }))
    .unwrap_or(KILN_ERROR_PANIC)
}

/// # Safety
/// `message` is NULL or a NUL-terminated string; see kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_error_new(message: *const c_char) -> *mut kiln_error_t {
    let made = catch_unwind(AssertUnwindSafe(|| {
        let text = if message.is_null() {
            "(an error with no message)".to_string()
        } else {
            // SAFETY: not NULL; a NUL-terminated string as the contract says.
            let s = unsafe { std::ffi::CStr::from_ptr(message) };
            String::from_utf8_lossy(s.to_bytes()).into_owned()
        };
        into_handle(CError::new(KILN_ERROR_CALLBACK, text))
    }));
    // Only a failure to record the error could panic here; there is nothing left to report
    // it with.
    made.unwrap_or(std::ptr::null_mut())
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_error_delete(e: *mut kiln_error_t) {
    guard_quiet(|| {
        let _ = ERRORS.remove(handle_value(e), "the error");
    })
}

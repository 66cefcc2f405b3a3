//! Lazy functions with C compile callbacks, and the VM's handler for those that fail.
//!
//! A compile callback runs on the thread of the function's first call, inside kiln's resolver
//! (not inside any `kiln_*` call of that thread): nothing may unwind out of it, so the Rust side
//! of each callback catches panics and turns a C error into the message kiln-jit hands to the
//! VM's error handler.

use super::generator::UserData;
use super::jit::jit;
use super::types::*;
use super::{guard, out, out_optional, to_handle, utf8};
use crate::error::CError;
use kiln_jit::{JitGraph, LazyContext, LazyFailure, LazyStatus};
use kiln_target::ExecutorAddr;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

type Compile = unsafe extern "C" fn(
    *mut c_void,
    *mut kiln_jit_t,
    *const c_char,
    *const c_char,
    *mut *mut kiln_graph_t,
) -> *mut kiln_error_t;

type OnError = unsafe extern "C" fn(*mut c_void, *const c_char, u64, *const c_char) -> u64;

/// Run a compile callback: the graph it hands over (taken and deleted), or its error's message.
fn compile(
    callback: Compile,
    user: &UserData,
    jit: usize,
    cx: &LazyContext<'_>,
) -> Result<JitGraph, String> {
    let name = CString::new(cx.name).map_err(|_| "its name contains NUL".to_string())?;
    let code_name = CString::new(cx.code_name).map_err(|_| "its name contains NUL".to_string())?;
    let mut graph: *mut kiln_graph_t = std::ptr::null_mut();
    // SAFETY: `callback` has this signature (kiln_lazy_compile_fn, the contract of
    // kiln_jit_declare_lazy); the strings are NUL-terminated and outlive the call; `graph` is a
    // local the callback may write a handle to; the JIT handle is a value, never dereferenced.
    let failed = unsafe {
        callback(
            user.0,
            to_handle(jit),
            name.as_ptr(),
            code_name.as_ptr(),
            &mut graph,
        )
    };
    if !failed.is_null() {
        // A graph handed over with an error is deleted unused.
        let _ = super::graph::take(graph, "*out_graph");
        let why = match super::error::take(failed, "the callback's return value") {
            Ok(e) => e.message().to_string(),
            Err(e) => e.message().to_string(),
        };
        return Err(why);
    }
    if graph.is_null() {
        return Err("the callback returned neither a graph nor an error".into());
    }
    super::graph::take(graph, "the graph the callback returned").map_err(|e| e.message().into())
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_declare_lazy(
    j: *mut kiln_jit_t,
    name: *const c_char,
    callback: kiln_lazy_compile_fn,
    user: *mut c_void,
    out_addr: *mut u64,
) -> *mut kiln_error_t {
    guard("kiln_jit_declare_lazy", || {
        let handle = super::handle_value(j);
        let cj = jit(j)?;
        // SAFETY: the contract of this function.
        let (name, o) = unsafe { (utf8(name, "name")?, out(out_addr, "out_addr")?) };
        let callback = callback.ok_or_else(|| CError::invalid_argument("callback is NULL"))?;
        let user = UserData(user);
        let f = cj
            .jit
            .declare_lazy(name, move |cx| {
                catch_unwind(AssertUnwindSafe(|| compile(callback, &user, handle, cx)))
                    .unwrap_or_else(|_| Err("internal error: kiln panicked (a bug)".into()))
            })
            .map_err(|e| cj.error(e))?;
        o.set(f.addr.0);
        cj.remember_lazy(f);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_lazy_status(
    j: *mut kiln_jit_t,
    name: *const c_char,
    out_status: *mut kiln_lazy_status_t,
    out_failure: *mut *mut kiln_error_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_lazy_status", || {
        let cj = jit(j)?;
        // SAFETY: the contract of this function.
        let (name, o, failure) = unsafe {
            (
                utf8(name, "name")?,
                out(out_status, "out_status")?,
                out_optional(out_failure),
            )
        };
        let f = cj.lazy_function(name)?;
        let status = cj.jit.lazy_status(&f).unwrap_or(LazyStatus::NotCompiled);
        let mut message = None;
        o.set(match status {
            LazyStatus::NotCompiled => kiln_lazy_status_t {
                state: KILN_LAZY_NOT_COMPILED,
                ..Default::default()
            },
            LazyStatus::Compiled {
                unit,
                code,
                redirected,
            } => kiln_lazy_status_t {
                state: KILN_LAZY_COMPILED,
                unit: cj.c_unit(unit),
                code: code.0,
                redirected: redirected.len(),
            },
            LazyStatus::Failed(m) => {
                message = Some(m);
                kiln_lazy_status_t {
                    state: KILN_LAZY_FAILED,
                    ..Default::default()
                }
            }
        });
        if let Some(failure) = failure {
            failure.set(match message {
                Some(m) => super::error::into_handle(CError::new(KILN_ERROR_CALLBACK, m)),
                None => std::ptr::null_mut(),
            });
        }
        Ok(())
    })
}

/// Ask the VM's C handler where a failed lazy function's calls continue.
fn on_error(callback: OnError, user: &UserData, f: &LazyFailure<'_>) -> Option<ExecutorAddr> {
    let name = f.name.and_then(|n| CString::new(n).ok());
    let message = CString::new(f.message.replace('\0', "\\0")).unwrap_or_default();
    let name_ptr = name.as_deref().map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `callback` has this signature (kiln_lazy_error_fn, the contract of
    // kiln_jit_set_lazy_error_handler); the strings are NULL or NUL-terminated and outlive the
    // call.
    let at = unsafe { callback(user.0, name_ptr, f.key.0, message.as_ptr()) };
    (at != 0).then_some(ExecutorAddr(at))
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_jit_set_lazy_error_handler(
    j: *mut kiln_jit_t,
    callback: kiln_lazy_error_fn,
    user: *mut c_void,
) -> *mut kiln_error_t {
    guard("kiln_jit_set_lazy_error_handler", || {
        let cj = jit(j)?;
        let handler = callback.map(|callback| {
            let user = UserData(user);
            let h: kiln_jit::LazyFailureHandler = Arc::new(move |f: &LazyFailure<'_>| {
                // A panic here would abort in the resolver: none is expected; it aborts the
                // call as "no handler" would.
                catch_unwind(AssertUnwindSafe(|| on_error(callback, &user, f))).unwrap_or_default()
            });
            h
        });
        cj.jit
            .set_lazy_error_handler(handler)
            .map_err(|e| cj.error(e))
    })
}

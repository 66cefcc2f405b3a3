//! Definition generators with C callbacks, and `kiln_generated_*`, how a callback answers.
//!
//! During a callback its answer is a `kiln_generated_t` handle, removed from the registry when
//! the callback returns: an answer kept and used later is a stale handle (an error), and an
//! answer never given means "not mine".

use super::types::*;
use super::{c_bytes, guard, handle_value, to_handle, utf8};
use crate::error::CError;
use crate::handle::{Registry, Tag};
use crate::session::{c_scope, note_callback_failure, Numbering};
use kiln_core::{DefinitionGenerator, Error, ExecutorAddr, Generated, ScopeId};
use std::ffi::{c_char, c_void, CString};
use std::sync::{Arc, Mutex};

struct Answer {
    /// The name asked for, for messages.
    name: String,
    given: Mutex<Option<Generated>>,
}

static ANSWERS: Registry<Answer> = Registry::new(Tag::Generated);

/// The `user` pointer of a generator, handed back to its callback.
pub(super) struct UserData(pub(super) *mut c_void);

// SAFETY: kiln never reads through the pointer; it only passes it to the callback. kiln.h
// states that callbacks run on other threads than the one that registered them (whichever
// thread links, or first calls a lazy function; possibly several at once), so making the data
// behind the pointer usable from those threads is part of the caller's contract.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

type Callback = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    usize,
    kiln_scope_t,
    *mut kiln_generated_t,
) -> *mut kiln_error_t;

struct CGenerator {
    callback: Callback,
    user: UserData,
    scopes: Arc<Mutex<Numbering<ScopeId>>>,
}

impl DefinitionGenerator for CGenerator {
    fn generate(&self, name: &str, scope: ScopeId) -> kiln_core::Result<Generated> {
        // A name C cannot read as a string is not one a C generator can define.
        let Ok(c_name) = CString::new(name) else {
            return Ok(Generated::NotMine);
        };
        let handle = ANSWERS.insert(Answer {
            name: name.to_string(),
            given: Mutex::new(None),
        });
        let scope = c_scope(&self.scopes, scope);
        // SAFETY: `callback` has this signature (kiln_generator_fn, the contract of
        // kiln_session_add_generator); `c_name` is a NUL-terminated string of `name.len()`
        // bytes that outlives the call; the answer is a handle (a value, never dereferenced).
        let failed = unsafe {
            (self.callback)(
                self.user.0,
                c_name.as_ptr(),
                name.len(),
                scope,
                to_handle(handle),
            )
        };
        let answer = ANSWERS.remove(handle, "answer");
        if !failed.is_null() {
            let why = match super::error::take(failed, "the callback's return value") {
                Ok(e) => e.message().to_string(),
                Err(e) => e.message().to_string(),
            };
            note_callback_failure();
            return Err(Error::Usage(format!(
                "definition generator for {name} failed: {why}"
            )));
        }
        let given = answer.ok().and_then(|a| a.given.lock().ok()?.take());
        Ok(given.unwrap_or(Generated::NotMine))
    }
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_add_generator(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    callback: kiln_generator_fn,
    user: *mut c_void,
) -> *mut kiln_error_t {
    guard("kiln_session_add_generator", || {
        let s = super::session::session(s)?;
        let callback = callback.ok_or_else(|| CError::invalid_argument("callback is NULL"))?;
        let scope_id = s.scope(scope)?;
        s.session.add_generator(
            scope_id,
            CGenerator {
                callback,
                user: UserData(user),
                scopes: s.scope_numbers(),
            },
        );
        Ok(())
    })
}

/// Record what a callback answered; one answer per question.
fn give(
    answer: *mut kiln_generated_t,
    what: impl FnOnce() -> Result<Generated, CError>,
) -> Result<(), CError> {
    let a = ANSWERS.get(handle_value(answer), "answer")?;
    let mut given = a.given.lock().unwrap_or_else(|e| e.into_inner());
    if given.is_some() {
        return Err(CError::invalid_argument(format!(
            "{} is answered already (one answer per question)",
            a.name
        )));
    }
    *given = Some(what()?);
    Ok(())
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_generated_address(
    answer: *mut kiln_generated_t,
    addr: u64,
) -> *mut kiln_error_t {
    guard("kiln_generated_address", || {
        give(answer, || Ok(Generated::Address(ExecutorAddr(addr))))
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_generated_graph(
    answer: *mut kiln_generated_t,
    g: *const kiln_graph_t,
) -> *mut kiln_error_t {
    guard("kiln_generated_graph", || {
        let g = super::graph::graph(g)?;
        give(answer, || Ok(Generated::Graph(super::graph::snapshot(&g))))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_generated_object(
    answer: *mut kiln_generated_t,
    name: *const c_char,
    bytes: *const u8,
    len: usize,
) -> *mut kiln_error_t {
    guard("kiln_generated_object", || {
        // SAFETY: the contract of this function.
        let (name, bytes) = unsafe { (utf8(name, "name")?, c_bytes(bytes, len, "bytes")?) };
        give(answer, || {
            Ok(Generated::Object {
                name: name.to_string(),
                bytes: bytes.to_vec(),
            })
        })
    })
}

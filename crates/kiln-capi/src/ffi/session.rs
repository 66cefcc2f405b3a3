//! `kiln_session_*`: inputs, settings, linking, lookups, units, scopes, running code.

use super::types::*;
use super::{
    c_array, c_bytes, c_path, c_str, c_strings, guard, guard_quiet, handle_value, out, out_list,
    out_optional, to_handle, utf8,
};
use crate::error::CError;
use crate::handle::{Registry, Tag};
use crate::session::CSession;
use kiln_core::graph::{EdgeRef, FunctionRef};
use kiln_core::{DebugOptions, ExecutorAddr, Session, UnitOptions};
use smallvec::SmallVec;
use std::ffi::c_char;
use std::sync::Arc;

pub(super) static SESSIONS: Registry<CSession> = Registry::new(Tag::Session);

/// The session behind handle `s`.
pub(super) fn session(s: *mut kiln_session_t) -> Result<Arc<CSession>, CError> {
    SESSIONS.get(handle_value(s), "s")
}

// ---- creating and deleting ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_new(
    out_session: *mut *mut kiln_session_t,
) -> *mut kiln_error_t {
    guard("kiln_session_new", || {
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_session, "out")? };
        o.set(to_handle(
            SESSIONS.insert(CSession::new(Session::in_process())),
        ));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_new_spawned(
    executor_path_or_null: *const c_char,
    out_session: *mut *mut kiln_session_t,
) -> *mut kiln_error_t {
    guard("kiln_session_new_spawned", || {
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_session, "out")? };
        let program = match executor_path_or_null.is_null() {
            true => None,
            // SAFETY: not NULL; a string, as the contract says.
            false => Some(unsafe { c_path(executor_path_or_null, "executor_path")? }),
        };
        let s = crate::executor::spawned_session(program)?;
        o.set(to_handle(SESSIONS.insert(CSession::new(s))));
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_delete(s: *mut kiln_session_t) {
    // The session ends here, or when the last call still using it on another thread returns.
    guard_quiet(|| drop(SESSIONS.remove(handle_value(s), "s")))
}

// ---- inputs for the next link ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_add_file(
    s: *mut kiln_session_t,
    path: *const c_char,
) -> *mut kiln_error_t {
    guard("kiln_session_add_file", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let path = unsafe { c_path(path, "path")? };
        s.session.add_file(path).map_err(|e| s.error(e))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_add_object(
    s: *mut kiln_session_t,
    name: *const c_char,
    bytes: *const u8,
    len: usize,
) -> *mut kiln_error_t {
    guard("kiln_session_add_object", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (name, bytes) = unsafe { (utf8(name, "name")?, c_bytes(bytes, len, "bytes")?) };
        s.session.add_object(name, bytes.to_vec());
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_add_archive(
    s: *mut kiln_session_t,
    name: *const c_char,
    bytes: *const u8,
    len: usize,
) -> *mut kiln_error_t {
    guard("kiln_session_add_archive", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (name, bytes) = unsafe { (utf8(name, "name")?, c_bytes(bytes, len, "bytes")?) };
        s.session.add_archive(name, bytes.to_vec());
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_add_library(
    s: *mut kiln_session_t,
    spec: *const c_char,
) -> *mut kiln_error_t {
    guard("kiln_session_add_library", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let spec = unsafe { utf8(spec, "spec")? };
        s.session.add_library(spec).map_err(|e| s.error(e))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_add_shared_library(
    s: *mut kiln_session_t,
    path: *const c_char,
) -> *mut kiln_error_t {
    guard("kiln_session_add_shared_library", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let path = unsafe { c_path(path, "path")? };
        s.session.add_shared_library(path).map_err(|e| s.error(e))
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_add_graph(
    s: *mut kiln_session_t,
    g: *const kiln_graph_t,
) -> *mut kiln_error_t {
    guard("kiln_session_add_graph", || {
        let s = session(s)?;
        let g = super::graph::graph(g)?;
        s.session.add_graph(super::graph::snapshot(&g));
        Ok(())
    })
}

// ---- settings ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_define(
    s: *mut kiln_session_t,
    name: *const c_char,
    addr: u64,
) -> *mut kiln_error_t {
    guard("kiln_session_define", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let name = unsafe { utf8(name, "name")? };
        s.session.define(name, addr);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_set_allow_list(
    s: *mut kiln_session_t,
    names: *const *const c_char,
    n: usize,
) -> *mut kiln_error_t {
    guard("kiln_session_set_allow_list", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let names = unsafe { c_strings(names, n, "names")? };
        s.session.set_allow_list(names);
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_clear_allow_list(s: *mut kiln_session_t) -> *mut kiln_error_t {
    guard("kiln_session_clear_allow_list", || {
        session(s)?.session.clear_allow_list();
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_set_process_symbols(
    s: *mut kiln_session_t,
    on: bool,
) -> *mut kiln_error_t {
    guard("kiln_session_set_process_symbols", || {
        session(s)?.session.set_process_symbols(on);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_set_debug(
    s: *mut kiln_session_t,
    sinks: u32,
    jitdump_dir: *const c_char,
) -> *mut kiln_error_t {
    guard("kiln_session_set_debug", || {
        let s = session(s)?;
        let known = KILN_DEBUG_GDB | KILN_DEBUG_PERF_MAP | KILN_DEBUG_JITDUMP | KILN_DEBUG_VALGRIND;
        if sinks & !known != 0 {
            return Err(CError::invalid_argument(format!(
                "sinks {sinks:#x}: only KILN_DEBUG_GDB, _PERF_MAP, _JITDUMP and _VALGRIND exist"
            )));
        }
        let jitdump = sinks & KILN_DEBUG_JITDUMP != 0;
        let dir = match (jitdump, jitdump_dir.is_null()) {
            (true, true) => Some(std::path::PathBuf::from(".")),
            // SAFETY: not NULL; a string, as the contract says.
            (true, false) => Some(unsafe { c_path(jitdump_dir, "jitdump_dir")? }.to_path_buf()),
            (false, true) => None,
            (false, false) => {
                return Err(CError::invalid_argument(
                    "jitdump_dir is given but KILN_DEBUG_JITDUMP is not in sinks",
                ))
            }
        };
        s.session.set_debug(DebugOptions {
            gdb: sinks & KILN_DEBUG_GDB != 0,
            perf_map: sinks & KILN_DEBUG_PERF_MAP != 0,
            jitdump: dir,
            valgrind: sinks & KILN_DEBUG_VALGRIND != 0,
        });
        Ok(())
    })
}

// ---- linking ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_link(
    s: *mut kiln_session_t,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_link", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_unit, "out_unit")? };
        let unit = s.linking(|| s.session.link())?;
        o.set(s.c_unit(unit));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_link_graph(
    s: *mut kiln_session_t,
    g: *const kiln_graph_t,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_link_graph", || {
        // SAFETY: the contract of this function.
        unsafe { link_graph(s, KILN_SCOPE_DEFAULT, g, out_unit) }
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_link_graph_in(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    g: *const kiln_graph_t,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_link_graph_in", || {
        // SAFETY: the contract of this function.
        unsafe { link_graph(s, scope, g, out_unit) }
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_link_graphs_as_unit(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    graphs: *const *mut kiln_graph_t,
    count: usize,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_link_graphs_as_unit", || {
        let s = session(s)?;
        if count == 0 {
            return Err(CError::invalid_argument("count is 0: no graphs to link"));
        }
        // SAFETY: the contract of this function: `graphs` points to `count` graph pointers.
        let handles = unsafe { c_array(graphs, count, "graphs")? };
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_unit, "out_unit")? };
        let scope = s.scope(scope)?;
        // Copies, as for one graph: no builder lock is held while generators run.
        let graphs = handles
            .iter()
            .map(|&g| {
                let builder = super::graph::graph(g.cast_const())?;
                Ok(super::graph::snapshot(&builder))
            })
            .collect::<Result<Vec<_>, CError>>()?;
        let unit = s.linking(|| s.session.link_graphs_as_unit(scope, &graphs))?;
        o.set(s.c_unit(unit));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_link_function(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    name: *const c_char,
    code: *const u8,
    len: usize,
    edges: *const kiln_edge_t,
    n_edges: usize,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_link_function", || {
        let s = session(s)?;
        // SAFETY: the contract of this function: `name` is NULL or a C string, `code` points
        // to `len` bytes, `edges` to `n_edges` edges, `out_unit` is NULL or writable.
        let (name, code, c_edges, o) = unsafe {
            (
                utf8(name, "name")?,
                c_bytes(code, len, "code")?,
                c_array(edges, n_edges, "edges")?,
                out(out_unit, "out_unit")?,
            )
        };
        // The edges' targets borrowed from the caller's strings, in a list on the stack for
        // a function's usual few edges.
        let mut edges: SmallVec<[EdgeRef; 8]> = SmallVec::with_capacity(c_edges.len());
        for (i, e) in c_edges.iter().enumerate() {
            // The edge's index named only in an error: no message built per edge.
            if e.target.is_null() {
                return Err(CError::invalid_argument(format!(
                    "edges[{i}].target is NULL"
                )));
            }
            edges.push(EdgeRef {
                offset: e.offset,
                kind: crate::graph::edge_kind(e.kind)?,
                // SAFETY: the contract of this function: each edge's `target` is NULL (refused
                // above) or a C string.
                target: unsafe { utf8(e.target, "an edge's target")? },
                addend: e.addend,
            });
        }
        let scope = s.scope(scope)?;
        let function = FunctionRef::new(name, code, &edges);
        let unit = s.linking(|| {
            s.session
                .link_function_with(&function, &UnitOptions::new(scope))
        })?;
        o.set(s.c_unit(unit));
        Ok(())
    })
}

/// # Safety
/// `out_unit` is NULL or writable.
unsafe fn link_graph(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    g: *const kiln_graph_t,
    out_unit: *mut kiln_unit_t,
) -> Result<(), CError> {
    let s = session(s)?;
    let g = super::graph::graph(g)?;
    // SAFETY: the caller's guarantee.
    let o = unsafe { out(out_unit, "out_unit")? };
    let scope = s.scope(scope)?;
    // Linked from a copy: the builder's lock is not held while generators (which may use the
    // same graph) run.
    let graph = super::graph::snapshot(&g);
    let unit = s.linking(|| s.session.link_graph_in(scope, &graph))?;
    o.set(s.c_unit(unit));
    Ok(())
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_run_initializers(s: *mut kiln_session_t) -> *mut kiln_error_t {
    guard("kiln_session_run_initializers", || {
        let s = session(s)?;
        s.session.run_initializers().map_err(|e| s.error(e))
    })
}

// ---- lookups ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_lookup(
    s: *mut kiln_session_t,
    name: *const c_char,
    out_addr: *mut u64,
) -> *mut kiln_error_t {
    guard("kiln_session_lookup", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (name, o) = unsafe { (utf8(name, "name")?, out(out_addr, "out_addr")?) };
        o.set(s.lookup(KILN_SCOPE_DEFAULT, name)?.addr.0);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_lookup_symbol(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    name: *const c_char,
    out_addr: *mut u64,
    out_size: *mut u64,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_lookup_symbol", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (name, addr) = unsafe { (utf8(name, "name")?, out(out_addr, "out_addr")?) };
        let info = s.lookup(scope, name)?;
        addr.set(info.addr.0);
        // SAFETY: NULL or writable, as the contract says.
        if let Some(o) = unsafe { out_optional(out_size) } {
            o.set(info.size);
        }
        // SAFETY: as above.
        if let Some(o) = unsafe { out_optional(out_unit) } {
            o.set(s.c_unit(info.unit));
        }
        Ok(())
    })
}

// ---- units ----

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_session_remove(
    s: *mut kiln_session_t,
    unit: kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_session_remove", || session(s)?.remove(unit))
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_remove_with_dependents(
    s: *mut kiln_session_t,
    unit: kiln_unit_t,
    removed: *mut kiln_unit_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_session_remove_with_dependents", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(removed, cap, out_count, "removed")? };
        o.set(&s.remove_with_dependents(unit)?);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_dependents(
    s: *mut kiln_session_t,
    unit: kiln_unit_t,
    out_units: *mut kiln_unit_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_session_dependents", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_units, cap, out_count, "out_units")? };
        let list = s.session.dependents(s.unit(unit)?);
        o.set(&s.c_units(&list.map_err(|e| s.error(e))?));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_dependencies(
    s: *mut kiln_session_t,
    unit: kiln_unit_t,
    out_units: *mut kiln_unit_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_session_dependencies", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_units, cap, out_count, "out_units")? };
        let list = s.session.dependencies(s.unit(unit)?);
        let mut list = s.c_units(&list.map_err(|e| s.error(e))?);
        list.sort_unstable();
        o.set(&list);
        Ok(())
    })
}

// ---- scopes ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_create_scope(
    s: *mut kiln_session_t,
    name: *const c_char,
    out_scope: *mut kiln_scope_t,
) -> *mut kiln_error_t {
    guard("kiln_session_create_scope", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (name, o) = unsafe { (utf8(name, "name")?, out(out_scope, "out_scope")?) };
        let scope = s.session.create_scope(name).map_err(|e| s.error(e))?;
        o.set(s.c_scope(scope));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_scope_by_name(
    s: *mut kiln_session_t,
    name: *const c_char,
    out_scope: *mut kiln_scope_t,
) -> *mut kiln_error_t {
    guard("kiln_session_scope_by_name", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (name, o) = unsafe { (utf8(name, "name")?, out(out_scope, "out_scope")?) };
        let scope = s.session.scope_by_name(name).ok_or_else(|| {
            CError::new(KILN_ERROR_NOT_FOUND, format!("no scope is named {name:?}"))
        })?;
        o.set(s.c_scope(scope));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_set_search_order(
    s: *mut kiln_session_t,
    scope: kiln_scope_t,
    order: *const kiln_scope_t,
    n: usize,
) -> *mut kiln_error_t {
    guard("kiln_session_set_search_order", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let order = unsafe { c_array(order, n, "order")? };
        let order = order
            .iter()
            .map(|o| s.scope(*o))
            .collect::<Result<Vec<_>, _>>()?;
        let scope = s.scope(scope)?;
        s.session
            .set_search_order(scope, &order)
            .map_err(|e| s.error(e))
    })
}

// ---- running code ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_call_void(
    s: *mut kiln_session_t,
    name: *const c_char,
) -> *mut kiln_error_t {
    guard("kiln_session_call_void", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let name = unsafe { utf8(name, "name")? };
        s.session.call_void(name).map_err(|e| s.error(e))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_run_main(
    s: *mut kiln_session_t,
    entry: *const c_char,
    argv: *const *const c_char,
    argc: usize,
    out_status: *mut i32,
) -> *mut kiln_error_t {
    guard("kiln_session_run_main", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let (entry, o) = unsafe { (utf8(entry, "entry")?, out(out_status, "out_status")?) };
        // SAFETY: the contract of this function.
        let args = unsafe { c_array(argv, argc, "argv")? };
        let args = args
            .iter()
            .enumerate()
            // SAFETY: each element is NULL (reported) or a string, as the contract says.
            .map(|(i, a)| {
                unsafe { c_str(*a, &format!("argv[{i}]")) }
                    .map(|a| a.to_string_lossy().into_owned())
            })
            .collect::<Result<Vec<String>, _>>()?;
        o.set(s.session.run_main(entry, &args).map_err(|e| s.error(e))?);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_session_patch(
    s: *mut kiln_session_t,
    addr: u64,
    bytes: *const u8,
    len: usize,
) -> *mut kiln_error_t {
    guard("kiln_session_patch", || {
        let s = session(s)?;
        // SAFETY: the contract of this function.
        let bytes = unsafe { c_bytes(bytes, len, "bytes")? };
        s.session
            .patch(ExecutorAddr(addr), bytes)
            .map_err(|e| s.error(e))
    })
}

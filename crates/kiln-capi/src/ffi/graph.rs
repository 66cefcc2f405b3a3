//! `kiln_graph_*`: building in-memory graphs.

use super::types::*;
use super::{c_bytes, guard, guard_quiet, handle_value, out, to_handle, utf8};
use crate::error::CError;
use crate::graph::{self as builder, GraphBuilder};
use crate::handle::{Registry, Tag};
use kiln_core::graph::{BlockContent, InMemoryEdge, InMemoryGraph};
use std::ffi::c_char;
use std::sync::{Arc, Mutex, MutexGuard};

/// A graph is built through a lock: building one graph from two threads at once is safe (the
/// order of what they add is theirs to arrange).
static GRAPHS: Registry<Mutex<GraphBuilder>> = Registry::new(Tag::Graph);

pub(super) fn graph(g: *const kiln_graph_t) -> Result<Arc<Mutex<GraphBuilder>>, CError> {
    GRAPHS.get(handle_value(g), "g")
}

fn lock(g: &Mutex<GraphBuilder>) -> MutexGuard<'_, GraphBuilder> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

/// A copy of the graph as it is now (what a link or a generator's answer takes).
pub(super) fn snapshot(g: &Mutex<GraphBuilder>) -> InMemoryGraph {
    lock(g).graph().clone()
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_new(
    name: *const c_char,
    out_graph: *mut *mut kiln_graph_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_new", || {
        // SAFETY: the contract of this function.
        let (name, o) = unsafe { (utf8(name, "name")?, out(out_graph, "out")?) };
        o.set(to_handle(
            GRAPHS.insert(Mutex::new(GraphBuilder::new(name))),
        ));
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_graph_delete(g: *mut kiln_graph_t) {
    guard_quiet(|| drop(GRAPHS.remove(handle_value(g), "g")))
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_section(
    g: *mut kiln_graph_t,
    name: *const c_char,
    prot: kiln_prot_t,
    out_section: *mut kiln_section_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_section", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let (name, o) = unsafe { (utf8(name, "name")?, out(out_section, "out_section")?) };
        let prot = builder::prot(prot)?;
        o.set(lock(&g).add_section(name, prot));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_block(
    g: *mut kiln_graph_t,
    section: kiln_section_t,
    bytes: *const u8,
    len: usize,
    align: u64,
    out_block: *mut kiln_block_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_block", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let (bytes, o) = unsafe { (c_bytes(bytes, len, "bytes")?, out(out_block, "out_block")?) };
        let content = BlockContent::Bytes(bytes.to_vec());
        o.set(lock(&g).add_block(section, content, align)?);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_zero_block(
    g: *mut kiln_graph_t,
    section: kiln_section_t,
    size: u64,
    align: u64,
    out_block: *mut kiln_block_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_zero_block", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_block, "out_block")? };
        o.set(lock(&g).add_block(section, BlockContent::Zero(size), align)?);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_symbol(
    g: *mut kiln_graph_t,
    block: kiln_block_t,
    name: *const c_char,
    offset: u64,
    size: u64,
    visibility: kiln_visibility_t,
    flags: u32,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_symbol", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let name = unsafe { utf8(name, "name")? };
        let symbol = builder::symbol(name, offset, size, visibility, flags)?;
        let added = lock(&g).add_symbol(block, symbol);
        added
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_edge(
    g: *mut kiln_graph_t,
    block: kiln_block_t,
    offset: u32,
    kind: kiln_edge_kind_t,
    target: *const c_char,
    addend: i64,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_edge", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let target = unsafe { utf8(target, "target")? };
        let edge = InMemoryEdge::new(offset, builder::edge_kind(kind)?, target, addend);
        let added = lock(&g).add_edge(block, edge);
        added
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_graph_set_frame_pointer(
    g: *mut kiln_graph_t,
    block: kiln_block_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_set_frame_pointer", || {
        let g = graph(g)?;
        let set = lock(&g).set_frame_pointer(block);
        set
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_function(
    g: *mut kiln_graph_t,
    name: *const c_char,
    code: *const u8,
    len: usize,
    out_block: *mut kiln_block_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_function", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let (name, code, o) = unsafe {
            (
                utf8(name, "name")?,
                c_bytes(code, len, "code")?,
                out(out_block, "out_block")?,
            )
        };
        o.set(lock(&g).add_function(name, code.to_vec()));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_data(
    g: *mut kiln_graph_t,
    name: *const c_char,
    bytes: *const u8,
    len: usize,
    align: u64,
    prot: kiln_prot_t,
    out_block: *mut kiln_block_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_data", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let (name, bytes, o) = unsafe {
            (
                utf8(name, "name")?,
                c_bytes(bytes, len, "bytes")?,
                out(out_block, "out_block")?,
            )
        };
        let prot = builder::prot(prot)?;
        o.set(lock(&g).add_data(name, bytes.to_vec(), align, prot));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_site(
    g: *mut kiln_graph_t,
    symbol: *const c_char,
    offset: u64,
    kind: kiln_site_kind_t,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_site", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let symbol = unsafe { utf8(symbol, "symbol")? };
        let kind = crate::jit::site_kind(kind)?;
        lock(&g).add_site(symbol, offset, kind);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_graph_add_heap_ref(
    g: *mut kiln_graph_t,
    symbol: *const c_char,
    offset: u64,
    width: u32,
) -> *mut kiln_error_t {
    guard("kiln_graph_add_heap_ref", || {
        let g = graph(g)?;
        // SAFETY: the contract of this function.
        let symbol = unsafe { utf8(symbol, "symbol")? };
        let added = lock(&g).add_heap_ref(symbol, offset, width);
        added
    })
}

/// A copy of the graph with its sites and heap references, as kiln-jit links it.
pub(super) fn jit_snapshot(g: &Mutex<GraphBuilder>) -> kiln_jit::JitGraph {
    lock(g).jit_graph()
}

/// Take a graph C handed over (a lazy function's compile callback's): it is deleted, and its
/// contents returned.
pub(super) fn take(g: *mut kiln_graph_t, arg: &str) -> Result<kiln_jit::JitGraph, CError> {
    let g = GRAPHS.remove(handle_value(g), arg)?;
    Ok(jit_snapshot(&g))
}

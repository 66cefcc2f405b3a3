//! `kiln_jit_*`: the code zone, linking into its regions, write windows, sites, inline caches,
//! PICs, redefinition with epochs, heap references. (Lazy functions: `lazy.rs`.)

use super::generator::UserData;
use super::types::*;
use super::{
    c_array, guard, guard_quiet, handle_value, out, out_list, out_optional, to_handle, utf8,
};
use crate::error::CError;
use crate::handle::{Registry, Tag};
use crate::jit::{self as cjit, CJit};
use kiln_jit::{IcState, IcUpdate, Pic, PicConfig, PicState, PicTarget, Reclaimed, Redefine};
use kiln_target::ExecutorAddr;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::Arc;

pub(super) static JITS: Registry<CJit> = Registry::new(Tag::Jit);

/// The JIT behind handle `jit`.
pub(super) fn jit(j: *mut kiln_jit_t) -> Result<Arc<CJit>, CError> {
    JITS.get(handle_value(j), "jit")
}

/// A C struct argument passed by pointer (required).
///
/// # Safety
/// `p` is NULL or points to a readable `T` valid for the call.
unsafe fn c_struct<T: Copy>(p: *const T, arg: &str) -> Result<T, CError> {
    if p.is_null() {
        return Err(CError::invalid_argument(format!("{arg} is NULL")));
    }
    // SAFETY: not NULL (checked); the caller guarantees a readable `T`. An unaligned read
    // accepts a misaligned pointer from C without undefined behaviour.
    Ok(unsafe { p.read_unaligned() })
}

// ---- the zone ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_new(
    s: *mut kiln_session_t,
    config: *const kiln_zone_config_t,
    out_jit: *mut *mut kiln_jit_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_new", || {
        let s = super::session::session(s)?;
        // SAFETY: the contract of this function.
        let (config, o) = unsafe { (c_struct(config, "config")?, out(out_jit, "out")?) };
        // SAFETY: `reach` points to `reach_count` addresses, as the contract says.
        let reach = unsafe { c_array(config.reach, config.reach_count, "config->reach")? };
        let config = cjit::zone_config(&config, reach)?;
        let j = CJit::new(s, &config)?;
        o.set(to_handle(JITS.insert(j)));
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_jit_delete(j: *mut kiln_jit_t) {
    guard_quiet(|| {
        if let Ok(j) = JITS.remove(handle_value(j), "jit") {
            let session = Arc::clone(&j.session);
            // The zone's units go with the JIT (unless a call on another thread still holds it).
            drop(j);
            session.forget_removed();
        }
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_zone(
    j: *mut kiln_jit_t,
    out_info: *mut kiln_zone_info_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_zone", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_info, "out_info")? };
        let zone = j.jit.zone();
        let (base, size) = zone.range();
        let (fixed, fixed_size) = zone.fixed().code();
        let (method, method_size) = zone.method().code();
        o.set(kiln_zone_info_t {
            base: base.0,
            size,
            fixed_code: fixed.0,
            fixed_code_size: fixed_size,
            method_code: method.0,
            method_code_size: method_size,
        });
        Ok(())
    })
}

// ---- units ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_link(
    j: *mut kiln_jit_t,
    region: kiln_region_t,
    g: *const kiln_graph_t,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_link", || {
        let j = jit(j)?;
        let g = super::graph::graph(g)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_unit, "out_unit")? };
        let region = cjit::region(region)?;
        let graph = super::graph::jit_snapshot(&g);
        let linked = j.linking(|| j.jit.link(region, &graph))?;
        o.set(j.c_unit(linked.unit));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_link_object(
    j: *mut kiln_jit_t,
    region: kiln_region_t,
    name: *const c_char,
    bytes: *const u8,
    len: usize,
    out_unit: *mut kiln_unit_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_link_object", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (name, bytes, o) = unsafe {
            (
                super::utf8(name, "name")?,
                super::c_bytes(bytes, len, "bytes")?,
                out(out_unit, "out_unit")?,
            )
        };
        let region = cjit::region(region)?;
        let linked = j.linking(|| j.jit.link_object(region, name, bytes.to_vec()))?;
        o.set(j.c_unit(linked.unit));
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_unit_region(
    j: *mut kiln_jit_t,
    unit: kiln_unit_t,
    out_region: *mut kiln_region_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_unit_region", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_region, "out_region")? };
        let linked = j.jit.unit(j.unit(unit)?);
        o.set(match linked.map(|l| l.region) {
            Some(kiln_jit::RegionKind::Fixed) => KILN_REGION_FIXED,
            _ => KILN_REGION_METHOD,
        });
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_unit_sites(
    j: *mut kiln_jit_t,
    unit: kiln_unit_t,
    out_sites: *mut kiln_site_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_unit_sites", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_sites, cap, out_count, "out_sites")? };
        let linked = j.jit.unit(j.unit(unit)?);
        let sites: Vec<kiln_site_t> = linked
            .map(|l| l.sites.iter().map(|s| j.c_site(s)).collect())
            .unwrap_or_default();
        o.set(&sites);
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_jit_remove(j: *mut kiln_jit_t, unit: kiln_unit_t) -> *mut kiln_error_t {
    guard("kiln_jit_remove", || {
        let j = jit(j)?;
        let result = j.jit.remove(j.unit(unit)?);
        j.session.forget_removed();
        result.map_err(|e| j.error(e))
    })
}

// ---- the write window ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_write(
    j: *mut kiln_jit_t,
    writes: *const kiln_write_t,
    n: usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_write", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let writes = unsafe { c_array(writes, n, "writes")? };
        let bytes = writes
            .iter()
            .enumerate()
            // SAFETY: each write's `bytes` points to `len` bytes, as the contract says.
            .map(|(i, w)| unsafe { super::c_bytes(w.bytes, w.len, &format!("writes[{i}].bytes")) })
            .collect::<Result<Vec<&[u8]>, _>>()?;
        j.jit
            .write(|window| {
                for (w, b) in writes.iter().zip(&bytes) {
                    window.write(ExecutorAddr(w.addr), b)?;
                }
                Ok(())
            })
            .map_err(|e| j.error(e))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_read(
    j: *mut kiln_jit_t,
    addr: u64,
    buf: *mut u8,
    len: usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_read", || {
        let j = jit(j)?;
        if len > 0 && buf.is_null() {
            return Err(CError::invalid_argument(format!(
                "buf is NULL but its length is {len}"
            )));
        }
        let bytes = j
            .jit
            .write(|w| w.read(ExecutorAddr(addr), len as u64))
            .map_err(|e| j.error(e))?;
        let n = bytes.len().min(len);
        if n > 0 {
            // SAFETY: `buf` is not NULL and has room for `len` >= `n` bytes (the contract);
            // `bytes` is a Rust vector and cannot overlap it.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, n) };
        }
        Ok(())
    })
}

// ---- sites ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_retarget(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    target: u64,
) -> *mut kiln_error_t {
    guard("kiln_jit_retarget", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let site = j.site(&unsafe { c_struct(site, "site")? })?;
        j.jit
            .retarget(&site, ExecutorAddr(target))
            .map_err(|e| j.error(e))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_set_value(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    value: u64,
) -> *mut kiln_error_t {
    guard("kiln_jit_set_value", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let site = j.site(&unsafe { c_struct(site, "site")? })?;
        j.jit.set_value(&site, value).map_err(|e| j.error(e))
    })
}

// ---- inline caches ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_ic_new(
    j: *mut kiln_jit_t,
    key: *const kiln_site_t,
    target: *const kiln_site_t,
    empty: u64,
    out_ic: *mut kiln_ic_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_ic_new", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (key, target, o) = unsafe {
            (
                c_struct(key, "key")?,
                c_struct(target, "target")?,
                out(out_ic, "out_ic")?,
            )
        };
        let ic = j
            .jit
            .mono_ic(j.site(&key)?, j.site(&target)?, empty)
            .map_err(|e| j.error(e))?;
        o.set(kiln_ic_t {
            key: j.c_site(&ic.key),
            target: j.c_site(&ic.target),
            empty: ic.empty,
        });
        Ok(())
    })
}

fn c_ic_state(s: IcState) -> kiln_ic_state_t {
    match s {
        IcState::Empty => kiln_ic_state_t {
            state: KILN_IC_EMPTY,
            ..Default::default()
        },
        IcState::Set { key, target } => kiln_ic_state_t {
            state: KILN_IC_SET,
            key,
            target: target.0,
            since: 0,
        },
        IcState::Pending { key, target, since } => kiln_ic_state_t {
            state: KILN_IC_PENDING,
            key,
            target: target.0,
            since: since.0,
        },
    }
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_ic_set(
    j: *mut kiln_jit_t,
    ic: *const kiln_ic_t,
    key: u64,
    target: u64,
    out_state: *mut kiln_ic_state_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_ic_set", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (ic, o) = unsafe { (c_struct(ic, "ic")?, out_optional(out_state)) };
        let ic = j.ic(&ic)?;
        let update = ic
            .set(&j.jit, key, ExecutorAddr(target))
            .map_err(|e| j.error(e))?;
        if let Some(o) = o {
            o.set(kiln_ic_state_t {
                state: match update {
                    IcUpdate::Done => KILN_IC_SET,
                    IcUpdate::Pending(_) => KILN_IC_PENDING,
                },
                key,
                target,
                since: match update {
                    IcUpdate::Done => 0,
                    IcUpdate::Pending(e) => e.0,
                },
            });
        }
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_ic_clear(
    j: *mut kiln_jit_t,
    ic: *const kiln_ic_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_ic_clear", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let ic = j.ic(&unsafe { c_struct(ic, "ic")? })?;
        ic.clear(&j.jit).map_err(|e| j.error(e))
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_ic_state(
    j: *mut kiln_jit_t,
    ic: *const kiln_ic_t,
    out_state: *mut kiln_ic_state_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_ic_state", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (ic, o) = unsafe { (c_struct(ic, "ic")?, out(out_state, "out_state")?) };
        let state = j.ic(&ic)?.state(&j.jit).map_err(|e| j.error(e))?;
        o.set(c_ic_state(state));
        Ok(())
    })
}

// ---- polymorphic inline caches ----

fn c_pic_state(j: &CJit, s: PicState) -> kiln_pic_state_t {
    match s {
        PicState::Polymorphic { cases, stub, entry } => kiln_pic_state_t {
            megamorphic: false,
            cases,
            stub: j.c_unit(stub),
            entry: entry.0,
        },
        PicState::Megamorphic => kiln_pic_state_t {
            megamorphic: true,
            ..Default::default()
        },
    }
}

/// kiln-jit's PIC configuration of a C one, with its miss and megamorphic targets.
fn pic_config(
    config: &kiln_pic_config_t,
    miss: PicTarget,
    megamorphic: Option<PicTarget>,
) -> Result<PicConfig, CError> {
    let mut pic = PicConfig::new(miss);
    pic.register = cjit::key_register(config.key_register)?;
    pic.width = cjit::key_width(config.key_width)?;
    if config.max_cases != 0 {
        pic.max_cases = config.max_cases as usize;
    }
    pic.megamorphic = megamorphic;
    Ok(pic)
}

/// The megamorphic handler named from C. kiln-jit resolves it only when the PIC overflows,
/// and then among the symbols of live units in the JIT's scope (not `kiln_session_define`'s
/// names, libraries or generators, which only links see): checked here the same way, so that
/// a name that would not resolve then is an error now, before anything changes.
fn megamorphic_target(j: &CJit, name: &str) -> Result<PicTarget, CError> {
    if j.jit.session().lookup_symbol(j.jit.scope(), name).is_none() {
        return Err(CError::new(
            KILN_ERROR_UNDEFINED,
            format!(
                "the PIC's megamorphic handler {name} is not defined by a live unit in the \
                 JIT's scope"
            ),
        ));
    }
    Ok(PicTarget::Name(name.to_string()))
}

/// A failed PIC link names the stub's made-up graph as the referrer of the undefined target;
/// C callers read that the name was one of the PIC's targets.
fn pic_link_error(e: CError) -> CError {
    const STUB: &str = "(referenced by __kiln_pic_";
    let mut message = e.message().to_string();
    if !message.contains(STUB) {
        return e;
    }
    while let Some(at) = message.find(STUB) {
        let end = message[at..]
            .find(')')
            .map_or(message.len(), |i| at + i + 1);
        message.replace_range(at..end, "(a target of this PIC)");
    }
    CError::new(e.kind(), message)
}

fn build_pic(
    j: &CJit,
    site: &kiln_site_t,
    config: &PicConfig,
    cases: &[(u64, PicTarget)],
) -> Result<(), CError> {
    let site = j.site(site)?;
    j.jit
        .build_pic(&site, config, cases)
        .map(drop)
        .map_err(|e| pic_link_error(j.error(e)))
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_pic_build(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    config: *const kiln_pic_config_t,
    cases: *const kiln_pic_case_t,
    n: usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_pic_build", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (site, config, cases) = unsafe {
            (
                c_struct(site, "site")?,
                c_struct(config, "config")?,
                c_array(cases, n, "cases")?,
            )
        };
        if config.miss == 0 {
            return Err(CError::invalid_argument("config->miss is 0"));
        }
        let megamorphic =
            (config.megamorphic != 0).then_some(PicTarget::Addr(ExecutorAddr(config.megamorphic)));
        let pic = pic_config(
            &config,
            PicTarget::Addr(ExecutorAddr(config.miss)),
            megamorphic,
        )?;
        let cases: Vec<(u64, PicTarget)> = cases
            .iter()
            .map(|c| (c.key, PicTarget::Addr(ExecutorAddr(c.target))))
            .collect();
        build_pic(&j, &site, &pic, &cases)
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_pic_build_named(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    config: *const kiln_pic_config_t,
    miss: *const c_char,
    megamorphic: *const c_char,
    cases: *const kiln_pic_named_case_t,
    n: usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_pic_build_named", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (site, config, cases) = unsafe {
            (
                c_struct(site, "site")?,
                c_struct(config, "config")?,
                c_array(cases, n, "cases")?,
            )
        };
        // SAFETY: the contract of this function: `miss` is a string; `megamorphic` is NULL
        // or a string.
        let (miss, megamorphic) = unsafe {
            (
                utf8(miss, "miss")?,
                (!megamorphic.is_null())
                    .then(|| utf8(megamorphic, "megamorphic"))
                    .transpose()?,
            )
        };
        let megamorphic = megamorphic.map(|m| megamorphic_target(&j, m)).transpose()?;
        let miss = PicTarget::Name(miss.to_string());
        let pic = pic_config(&config, miss, megamorphic)?;
        let mut named = Vec::with_capacity(cases.len());
        for (i, c) in cases.iter().enumerate() {
            // SAFETY: each case's `target` is a string (the contract of this function).
            let name = unsafe { utf8(c.target, &format!("cases[{i}].target"))? };
            named.push((c.key, PicTarget::Name(name.to_string())));
        }
        build_pic(&j, &site, &pic, &named)
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_pic_grow(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    key: u64,
    target: u64,
    out_state: *mut kiln_pic_state_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_pic_grow", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (site, o) = unsafe { (c_struct(site, "site")?, out_optional(out_state)) };
        let pic = Pic {
            site: j.site(&site)?,
        };
        let state = pic
            .grow(&j.jit, key, ExecutorAddr(target))
            .map_err(|e| j.error(e))?;
        if let Some(o) = o {
            o.set(c_pic_state(&j, state));
        }
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_pic_grow_named(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    key: u64,
    target: *const c_char,
    out_state: *mut kiln_pic_state_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_pic_grow_named", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (site, target, o) = unsafe {
            (
                c_struct(site, "site")?,
                utf8(target, "target")?,
                out_optional(out_state),
            )
        };
        let pic = Pic {
            site: j.site(&site)?,
        };
        let state = pic
            .grow(&j.jit, key, PicTarget::Name(target.to_string()))
            .map_err(|e| pic_link_error(j.error(e)))?;
        if let Some(o) = o {
            o.set(c_pic_state(&j, state));
        }
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_pic_state(
    j: *mut kiln_jit_t,
    site: *const kiln_site_t,
    out_state: *mut kiln_pic_state_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_pic_state", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let (site, o) = unsafe { (c_struct(site, "site")?, out(out_state, "out_state")?) };
        let pic = Pic {
            site: j.site(&site)?,
        };
        o.set(c_pic_state(&j, pic.state(&j.jit).map_err(|e| j.error(e))?));
        Ok(())
    })
}

// ---- redefinition and reclaiming ----

/// # Safety
/// `out_redefined` is NULL or writable.
unsafe fn redefine(
    j: &CJit,
    old: Redefine<'_>,
    g: *const kiln_graph_t,
    out_redefined: *mut kiln_redefined_t,
) -> Result<(), CError> {
    let g = super::graph::graph(g)?;
    // SAFETY: the caller's guarantee.
    let o = unsafe { out_optional(out_redefined) };
    let graph = super::graph::jit_snapshot(&g);
    let r = j.linking(|| j.jit.redefine(old, &graph))?;
    if let Some(o) = o {
        o.set(kiln_redefined_t {
            new_unit: j.c_unit(r.new.unit),
            old_unit: j.c_unit(r.old),
            since: r.since.0,
            retargeted: r.retargeted.len(),
            unmapped: r.unmapped.len(),
            unreached: r.unreached.len(),
        });
    }
    Ok(())
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_redefine(
    j: *mut kiln_jit_t,
    old: kiln_unit_t,
    g: *const kiln_graph_t,
    out_redefined: *mut kiln_redefined_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_redefine", || {
        let j = jit(j)?;
        let old = j.unit(old)?;
        // SAFETY: the contract of this function.
        unsafe { redefine(&j, Redefine::Unit(old), g, out_redefined) }
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_redefine_name(
    j: *mut kiln_jit_t,
    name: *const c_char,
    g: *const kiln_graph_t,
    out_redefined: *mut kiln_redefined_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_redefine_name", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let name = unsafe { super::utf8(name, "name")? };
        // SAFETY: the contract of this function.
        unsafe { redefine(&j, Redefine::Name(name), g, out_redefined) }
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_grace_start(
    j: *mut kiln_jit_t,
    out_epoch: *mut u64,
) -> *mut kiln_error_t {
    guard("kiln_jit_grace_start", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out(out_epoch, "out_epoch")? };
        o.set(j.jit.grace_start().0);
        Ok(())
    })
}

fn c_reclaimed(r: &Reclaimed) -> kiln_reclaimed_t {
    kiln_reclaimed_t {
        freed: r.freed.len(),
        kept: r.kept.len(),
        ics_completed: r.ics_completed,
        ic_errors: r.ic_errors.len(),
    }
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_reclaim(
    j: *mut kiln_jit_t,
    safe_epoch: u64,
    out_reclaimed: *mut kiln_reclaimed_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_reclaim", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_optional(out_reclaimed) };
        let r = j.jit.reclaim(kiln_jit::Epoch(safe_epoch));
        j.session.forget_removed();
        let r = r.map_err(|e| j.error(e))?;
        if let Some(o) = o {
            o.set(c_reclaimed(&r));
        }
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_retired(
    j: *mut kiln_jit_t,
    out_ranges: *mut kiln_range_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_retired", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_ranges, cap, out_count, "out_ranges")? };
        let ranges: Vec<kiln_range_t> = j
            .jit
            .retired()
            .iter()
            .flat_map(|r| {
                let unit = j.c_unit(r.unit);
                r.segments
                    .iter()
                    .filter(|(_, size)| *size > 0)
                    .map(move |(a, size)| kiln_range_t {
                        unit,
                        start: a.0,
                        size: *size,
                    })
            })
            .collect();
        o.set(&ranges);
        Ok(())
    })
}

// ---- heap references ----

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_heap_refs(
    j: *mut kiln_jit_t,
    out_refs: *mut kiln_heap_ref_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_heap_refs", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_refs, cap, out_count, "out_refs")? };
        let refs: Vec<kiln_heap_ref_t> = j
            .heap_refs()?
            .iter()
            .map(|(r, v)| j.c_heap_ref(r, *v))
            .collect();
        o.set(&refs);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_update_heap_refs(
    j: *mut kiln_jit_t,
    forward: kiln_heap_forward_fn,
    user: *mut c_void,
    out_changed: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_update_heap_refs", || {
        let j = jit(j)?;
        let forward = forward.ok_or_else(|| CError::invalid_argument("forward is NULL"))?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_optional(out_changed) };
        let user = UserData(user);
        // A value that does not fit a 32-bit reference fails it all (kiln-jit checks before
        // writing anything); the callback runs with the zone's code held in place.
        let changed = j
            .jit
            .update_heap_refs(|r, value| {
                let c = j.c_heap_ref(r, value);
                // SAFETY: `forward` has this signature (kiln_heap_forward_fn, the contract of
                // this function); `c` is a local that outlives the call.
                unsafe { forward(user.0, &c) }
            })
            .map_err(|e| j.error(e))?;
        if let Some(o) = o {
            o.set(changed);
        }
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_write_heap_refs(
    j: *mut kiln_jit_t,
    refs: *const kiln_heap_ref_t,
    n: usize,
) -> *mut kiln_error_t {
    guard("kiln_jit_write_heap_refs", || {
        let j = jit(j)?;
        // SAFETY: the contract of this function.
        let refs = unsafe { c_array(refs, n, "refs")? };
        let live: HashMap<(kiln_unit_t, u64), kiln_jit::HeapRef> = j
            .heap_refs()?
            .into_iter()
            .map(|(r, _)| ((j.c_unit(r.unit), r.addr.0), r))
            .collect();
        let values = refs
            .iter()
            .map(|c| {
                let r = live.get(&(c.unit, c.addr)).ok_or_else(|| {
                    CError::new(
                        KILN_ERROR_STALE,
                        format!(
                            "{:#x} (unit {}) is not a heap reference of a live unit of this \
                                 zone",
                            c.addr, c.unit
                        ),
                    )
                })?;
                Ok((*r, c.value))
            })
            .collect::<Result<Vec<_>, CError>>()?;
        j.write_heap_refs(&values)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_undefined_pic_target_is_named_as_one() {
        let e = CError::new(
            KILN_ERROR_UNRESOLVED,
            "undefined symbols:\n  a (referenced by __kiln_pic_7f00_3)\n  b (referenced by \
             __kiln_pic_7f00_3)",
        );
        let e = pic_link_error(e);
        assert_eq!(e.kind(), KILN_ERROR_UNRESOLVED);
        assert_eq!(
            e.message(),
            "undefined symbols:\n  a (a target of this PIC)\n  b (a target of this PIC)"
        );
        let other = pic_link_error(CError::new(KILN_ERROR_USAGE, "x (referenced by y)"));
        assert_eq!(other.message(), "x (referenced by y)");
    }
}

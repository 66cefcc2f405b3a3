//! `kiln_jit_compact` and `kiln_move_map_*`: compaction of the method region, and the move map
//! a VM rewrites its stacks' return addresses and saved pcs with.

use super::jit::jit;
use super::types::*;
use super::{guard, guard_quiet, handle_value, out, out_list, out_optional, to_handle};
use crate::error::CError;
use crate::handle::{Registry, Tag};
use crate::jit::CJit;
use kiln_jit::{CompactionReport, CompactionTimes, MoveMap, PinReason, RegionKind, Verdict};
use kiln_target::ExecutorAddr;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// A move map as C holds it: kiln-jit's, with the moves in C's unit numbers, and the
/// compaction's per-unit results (C numbers taken before the dropped units' were forgotten).
struct CMoveMap {
    map: MoveMap,
    moves: Vec<kiln_range_move_t>,
    dropped_units: Vec<kiln_unit_t>,
    moved_units: Vec<kiln_unit_t>,
    pinned: Vec<kiln_pinned_t>,
}

static MAPS: Registry<CMoveMap> = Registry::new(Tag::MoveMap);

fn move_map(m: *const kiln_move_map_t) -> Result<Arc<CMoveMap>, CError> {
    MAPS.get(handle_value(m), "map")
}

fn verdict(v: kiln_verdict_t) -> Result<Verdict, CError> {
    match v {
        KILN_VERDICT_KEEP => Ok(Verdict::Keep),
        KILN_VERDICT_DROP => Ok(Verdict::Drop),
        KILN_VERDICT_PIN => Ok(Verdict::Pin),
        _ => Err(CError::invalid_argument(format!(
            "the verdict callback returned {v}, not a KILN_VERDICT_*: nothing was compacted"
        ))),
    }
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_jit_compact(
    j: *mut kiln_jit_t,
    callback: kiln_verdict_fn,
    user: *mut c_void,
    out_report: *mut kiln_compaction_t,
    out_map: *mut *mut kiln_move_map_t,
) -> *mut kiln_error_t {
    guard("kiln_jit_compact", || {
        let j = jit(j)?;
        let callback = callback.ok_or_else(|| CError::invalid_argument("verdict is NULL"))?;
        // SAFETY: the contract of this function.
        let (report_out, map_out) = unsafe { (out_optional(out_report), out_optional(out_map)) };
        // Every verdict is asked and checked before anything changes (the C callback cannot
        // report an error from inside the compaction). A unit linked meanwhile is kept.
        let mut units: Vec<_> = j
            .jit
            .session()
            .units()
            .into_iter()
            .filter(|u| {
                j.jit
                    .unit(*u)
                    .is_some_and(|l| l.region == RegionKind::Method)
            })
            .collect();
        units.sort_unstable();
        let mut verdicts = HashMap::new();
        for u in units {
            // SAFETY: `callback` has this signature (kiln_verdict_fn, the contract of this
            // function); it gets a number, no pointer of kiln's.
            let v = unsafe { callback(user, j.c_unit(u)) };
            verdicts.insert(u, verdict(v)?);
        }
        let result = j
            .jit
            .compact(|u| verdicts.get(&u).copied().unwrap_or(Verdict::Keep));
        // The dropped units' C numbers are named before the session forgets them.
        let result = result.map(|report| (counts(&report), c_move_map(&j, report)));
        j.session.forget_removed();
        let (counts, map) = result.map_err(|e| j.error(e))?;
        if let Some(o) = report_out {
            o.set(counts);
        }
        if let Some(o) = map_out {
            o.set(to_handle(MAPS.insert(map)));
        }
        Ok(())
    })
}

fn nanoseconds(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn c_times(t: &CompactionTimes) -> kiln_compaction_times_t {
    kiln_compaction_times_t {
        verdicts_ns: nanoseconds(t.verdicts),
        drop_ns: nanoseconds(t.drop),
        layout_ns: nanoseconds(t.layout),
        moves_ns: nanoseconds(t.moves),
        finish_ns: nanoseconds(t.finish),
    }
}

fn counts(report: &CompactionReport) -> kiln_compaction_t {
    kiln_compaction_t {
        dropped: report.dropped.len(),
        moved: report.moved.len(),
        pinned: report.pinned.len(),
        used_before: report.used_before.iter().sum(),
        used_after: report.used_after.iter().sum(),
        largest_free_code: report.largest_free[0],
        nanoseconds: nanoseconds(report.times.total()),
        times: c_times(&report.times),
    }
}

/// The per-unit results and the map of a report, in C's unit numbers.
fn c_move_map(j: &CJit, report: CompactionReport) -> CMoveMap {
    let moves = report
        .map
        .moves()
        .iter()
        .map(|m| kiln_range_move_t {
            unit: j.c_unit(m.unit),
            from: m.old.0,
            to: m.new.0,
            size: m.size,
        })
        .collect();
    let pinned = report
        .pinned
        .iter()
        .map(|(unit, why)| {
            let (reason, user) = match why {
                PinReason::Verdict => (KILN_PIN_VERDICT, 0),
                PinReason::UsedWithoutRelink(user) => {
                    (KILN_PIN_USED_WITHOUT_RELINK, j.c_unit(*user))
                }
                PinReason::CannotMove => (KILN_PIN_CANNOT_MOVE, 0),
                PinReason::Linking => (KILN_PIN_LINKING, 0),
                PinReason::Retired => (KILN_PIN_RETIRED, 0),
            };
            kiln_pinned_t {
                unit: j.c_unit(*unit),
                reason,
                user,
            }
        })
        .collect();
    CMoveMap {
        moves,
        dropped_units: j.session.c_units(&report.dropped),
        moved_units: j.session.c_units(&report.moved),
        pinned,
        map: report.map,
    }
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_move_map_translate(
    map: *const kiln_move_map_t,
    pc: u64,
    out_pc: *mut u64,
    out_dropped: *mut bool,
) -> *mut kiln_error_t {
    guard("kiln_move_map_translate", || {
        let m = move_map(map)?;
        // SAFETY: the contract of this function.
        let (o, dropped) = unsafe { (out(out_pc, "out_pc")?, out_optional(out_dropped)) };
        let now = m.map.translate(ExecutorAddr(pc));
        o.set(now.map_or(0, |a| a.0));
        if let Some(d) = dropped {
            d.set(now.is_none());
        }
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_move_map_moves(
    map: *const kiln_move_map_t,
    out_moves: *mut kiln_range_move_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_move_map_moves", || {
        let m = move_map(map)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_moves, cap, out_count, "out_moves")? };
        o.set(&m.moves);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_move_map_dropped(
    map: *const kiln_move_map_t,
    out_ranges: *mut kiln_range_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_move_map_dropped", || {
        let m = move_map(map)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_ranges, cap, out_count, "out_ranges")? };
        let ranges: Vec<kiln_range_t> = m
            .map
            .dropped()
            .iter()
            .map(|&(start, size)| kiln_range_t {
                unit: 0,
                start,
                size,
            })
            .collect();
        o.set(&ranges);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_move_map_dropped_units(
    map: *const kiln_move_map_t,
    out_units: *mut kiln_unit_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_move_map_dropped_units", || {
        let m = move_map(map)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_units, cap, out_count, "out_units")? };
        o.set(&m.dropped_units);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_move_map_moved_units(
    map: *const kiln_move_map_t,
    out_units: *mut kiln_unit_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_move_map_moved_units", || {
        let m = move_map(map)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_units, cap, out_count, "out_units")? };
        o.set(&m.moved_units);
        Ok(())
    })
}

/// # Safety
/// See the module [`super`] and kiln.h.
#[no_mangle]
pub unsafe extern "C" fn kiln_move_map_pinned(
    map: *const kiln_move_map_t,
    out_pinned: *mut kiln_pinned_t,
    cap: usize,
    out_count: *mut usize,
) -> *mut kiln_error_t {
    guard("kiln_move_map_pinned", || {
        let m = move_map(map)?;
        // SAFETY: the contract of this function.
        let o = unsafe { out_list(out_pinned, cap, out_count, "out_pinned")? };
        o.set(&m.pinned);
        Ok(())
    })
}

/// See kiln.h.
#[no_mangle]
pub extern "C" fn kiln_move_map_delete(map: *mut kiln_move_map_t) {
    guard_quiet(|| drop(MAPS.remove(handle_value(map), "map")))
}

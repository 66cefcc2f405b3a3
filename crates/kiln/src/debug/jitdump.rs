//! jitdump records (format: the Linux kernel's `tools/perf/Documentation/jitdump-specification.txt`).
//!
//! Every record starts with `{u32 id, u32 total_size, u64 timestamp}`; integers are in the
//! executor's byte order (little endian on x86-64). The executor fills in the timestamp, and the
//! PID, thread and code index of `JIT_CODE_LOAD`/`JIT_CODE_MOVE` (see
//! `kiln_target`'s jitdump sink); they are written as 0 here.
//!
//! For each function of a unit: `JIT_CODE_DEBUG_INFO` (its line table, if the input has DWARF)
//! and then `JIT_CODE_LOAD` (name and code bytes) — perf attaches a debug-info record to the load
//! that follows it. `JIT_CODE_UNWINDING_INFO` is not written: perf needs it only to unwind
//! through JIT'd frames with `--call-graph dwarf`, and frame-pointer and LBR call graphs do not
//! use it.

use super::dwarf::{line_table, LineTable};
use super::{Function, Unit};
use crate::graph::InputId;
use rustc_hash::FxHashMap;

pub const JIT_CODE_LOAD: u32 = 0;
pub const JIT_CODE_MOVE: u32 = 1;
pub const JIT_CODE_DEBUG_INFO: u32 = 2;
pub const JIT_CODE_CLOSE: u32 = 3;
pub const JIT_CODE_UNWINDING_INFO: u32 = 4;

/// A line of a `JIT_CODE_DEBUG_INFO` record: code at `addr` comes from `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugEntry {
    pub addr: u64,
    pub line: u32,
    pub discriminator: u32,
    pub file: String,
}

fn record_header(out: &mut Vec<u8>, id: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // total_size, set by `finish`
    out.extend_from_slice(&0u64.to_le_bytes()); // timestamp, set by the executor
    start
}

fn finish(out: &mut [u8], start: usize) {
    let size = (out.len() - start) as u32;
    out[start + 4..start + 8].copy_from_slice(&size.to_le_bytes());
}

/// Append a `JIT_CODE_LOAD` record: `name`, loaded at `addr`, with these bytes.
pub fn code_load(out: &mut Vec<u8>, name: &str, addr: u64, code: &[u8]) {
    let start = record_header(out, JIT_CODE_LOAD);
    out.extend_from_slice(&0u32.to_le_bytes()); // pid
    out.extend_from_slice(&0u32.to_le_bytes()); // tid
    out.extend_from_slice(&addr.to_le_bytes()); // vma
    out.extend_from_slice(&addr.to_le_bytes()); // code_addr
    out.extend_from_slice(&(code.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // code_index
    out.extend(name.bytes().filter(|b| *b != 0));
    out.push(0);
    out.extend_from_slice(code);
    finish(out, start);
}

/// Append a `JIT_CODE_MOVE` record: code of `size` bytes moved from `old` to `new`.
pub fn code_move(out: &mut Vec<u8>, old: u64, new: u64, size: u64) {
    let start = record_header(out, JIT_CODE_MOVE);
    out.extend_from_slice(&0u32.to_le_bytes()); // pid
    out.extend_from_slice(&0u32.to_le_bytes()); // tid
    out.extend_from_slice(&new.to_le_bytes()); // vma
    out.extend_from_slice(&old.to_le_bytes());
    out.extend_from_slice(&new.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // code_index
    finish(out, start);
}

/// Append a `JIT_CODE_DEBUG_INFO` record for the code at `addr`.
pub fn debug_info(out: &mut Vec<u8>, addr: u64, entries: &[DebugEntry]) {
    let start = record_header(out, JIT_CODE_DEBUG_INFO);
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.addr.to_le_bytes());
        out.extend_from_slice(&e.line.to_le_bytes());
        out.extend_from_slice(&e.discriminator.to_le_bytes());
        out.extend(e.file.bytes().filter(|b| *b != 0));
        out.push(0);
    }
    finish(out, start);
}

/// The records of a unit: for each function, its line table (when there is DWARF) then its code.
pub(crate) fn unit_records(u: &Unit, funcs: &[Function]) -> Vec<u8> {
    let ranges = u.section_ranges();
    let mut tables: FxHashMap<InputId, LineTable> = FxHashMap::default();
    let mut out = Vec::new();
    for f in funcs {
        let Some(code) = u.bytes(f.addr, f.size) else {
            continue;
        };
        let table = tables.entry(f.input).or_insert_with(|| {
            let data = u.g.inputs.get(f.input.idx()).map_or(&[][..], |i| i.data);
            if data.is_empty() {
                return LineTable::default();
            }
            let addr = |i: usize| ranges.get(&(f.input, i as u32)).map(|r| r.0);
            line_table(data, &addr).unwrap_or_else(|why| {
                tracing::warn!(
                    "jitdump: no line table for {}: {why}",
                    u.g.input_name(f.input)
                );
                LineTable::default()
            })
        });
        let rows = table.rows_in(f.addr, f.addr + f.size);
        if !rows.is_empty() {
            let entries: Vec<DebugEntry> = rows
                .iter()
                .map(|r| DebugEntry {
                    addr: r.addr,
                    line: r.line,
                    discriminator: 0,
                    file: table
                        .files
                        .get(r.file as usize)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect();
            debug_info(&mut out, f.addr, &entries);
        }
        code_load(&mut out, &f.name, f.addr, code);
    }
    out
}

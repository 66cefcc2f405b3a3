//! jitdump records (format: the Linux kernel's `tools/perf/Documentation/jitdump-specification.txt`).
//!
//! Every record starts with `{u32 id, u32 total_size, u64 timestamp}`; integers are in the
//! executor's byte order (little endian on x86-64). The executor fills in the timestamp, and the
//! PID, thread and code index of `JIT_CODE_LOAD`/`JIT_CODE_MOVE` (see
//! `kiln_target`'s jitdump sink); they are written as 0 here.
//!
//! For each function of a unit: `JIT_CODE_DEBUG_INFO` (its line table, if the input has DWARF),
//! `JIT_CODE_UNWINDING_INFO` (its CIEs and FDEs, if it has any) and then `JIT_CODE_LOAD` (name
//! and code bytes): perf attaches the debug-info and unwinding records to the load that follows
//! them.
//!
//! # Unwinding data, as `perf inject --jit` uses it
//!
//! perf (checked by experiment with perf 6.1) writes each load into its own `jitted-PID-N.so`:
//! `.text` at 0x80 holding the code, then `.eh_frame` at `ALIGN_8(0x80 + code_size)` holding
//! the first `unwinding_size - eh_frame_hdr_size` bytes of the record's data, and
//! `.eh_frame_hdr` right after it holding the last `eh_frame_hdr_size` bytes. So the data is
//! `.eh_frame` *then* `.eh_frame_hdr` (the specification's text says the opposite; perf reads
//! it this way), and every PC-relative or data-relative value in it must be relative to that
//! layout, not to where the code and the unit's `.eh_frame` are in the process:
//!
//! - `.eh_frame`: the CIEs and FDEs of the function, rewritten: CIE augmentation `zR` (`zRS`
//!   for a signal frame) with FDE pointers `pcrel|sdata4`; personality and LSDA are dropped
//!   (perf runs neither, and their pointers would lead nowhere in the `.so`); the call frame
//!   instructions are copied. Each FDE's pc_begin is re-expressed relative to the code at 0 and
//!   `.eh_frame` at `align8(code_size)` (0x80 is a multiple of 8). A zero terminator ends it.
//! - `.eh_frame_hdr`: version 1, `eh_frame_ptr` `pcrel|sdata4`, `fde_count` `udata4`, and the
//!   table `datarel|sdata4` (relative to the header), sorted by initial location.
//!
//! `mapped_size`: perf extends its map of the jitted `.so` to `align8(code_size) +
//! mapped_size` bytes from the code address, and perf's libunwind-based unwinder reads the
//! `.eh_frame_hdr` table and the FDEs through that map (with 0 it cannot unwind the function).
//! In a unit the next function usually starts right after the code, where perf pretends the
//! unwinding data is; a longer map would then be cut by the next function's (perf trims
//! overlapping maps). So `mapped_size` is the data's size only where the region after the code
//! holds no other function of the unit and lies inside the unit (the last function of the
//! code, or one followed by a large enough gap), and 0 elsewhere. See docs/debugging.md.

use super::dwarf::{line_table, LineTable};
use super::{Function, Unit};
use crate::graph::{InputId, SectionKind};
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

/// Append a `JIT_CODE_UNWINDING_INFO` record: `data` is `.eh_frame` followed by an
/// `.eh_frame_hdr` of `eh_frame_hdr_size` bytes (see the module documentation); `mapped_size` is
/// `data.len()` or 0. The record is padded to 8 bytes.
pub fn unwinding_info(out: &mut Vec<u8>, data: &[u8], eh_frame_hdr_size: u64, mapped_size: u64) {
    let start = record_header(out, JIT_CODE_UNWINDING_INFO);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes()); // unwinding_size
    out.extend_from_slice(&eh_frame_hdr_size.to_le_bytes());
    out.extend_from_slice(&mapped_size.to_le_bytes());
    out.extend_from_slice(data);
    out.resize(start + (out.len() - start).next_multiple_of(8), 0);
    finish(out, start);
}

// Pointer encodings (DW_EH_PE_*) and call frame instructions (DW_CFA_*) used below.
const PE_ABSPTR: u8 = 0x00;
const PE_UDATA4: u8 = 0x03;
const PE_SDATA4: u8 = 0x0b;
const PE_PCREL: u8 = 0x10;
const PE_DATAREL: u8 = 0x30;
const PE_INDIRECT: u8 = 0x80;
const CFA_NOP: u8 = 0x00;

/// Little-endian reader over a record; every read is bounds checked.
struct Reader<'b> {
    b: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn new(b: &'b [u8]) -> Self {
        Reader { b, at: 0 }
    }
    fn bytes(&mut self, n: usize) -> Option<&'b [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn le<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
    fn uleb(&mut self) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }
    fn sleb(&mut self) -> Option<i64> {
        let (mut v, mut shift) = (0i64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }
    fn cstr(&mut self) -> Option<&'b [u8]> {
        let n = self.b.get(self.at..)?.iter().position(|c| *c == 0)?;
        let s = self.bytes(n)?;
        self.at += 1;
        Some(s)
    }
    /// A value in the format of pointer encoding `enc` (its low nibble), sign extended; the
    /// application (pcrel, ...) is the caller's.
    fn encoded(&mut self, enc: u8) -> Option<u64> {
        Some(match enc & 0x0f {
            0x00 | 0x04 => u64::from_le_bytes(self.le()?),
            0x01 => self.uleb()?,
            0x02 => u64::from(u16::from_le_bytes(self.le()?)),
            0x03 => u64::from(u32::from_le_bytes(self.le()?)),
            0x09 => self.sleb()? as u64,
            0x0a => i16::from_le_bytes(self.le()?) as u64,
            0x0b => i32::from_le_bytes(self.le()?) as u64,
            0x0c => i64::from_le_bytes(self.le()?) as u64,
            _ => return None,
        })
    }
}

/// Whether `insns` are call frame instructions that keep their meaning when the record is
/// rewritten: every opcode known, and no `DW_CFA_set_loc` (its operand is an address in the
/// FDE's pointer encoding, which the rewrite changes).
fn plain_instructions(insns: &[u8]) -> bool {
    let mut r = Reader::new(insns);
    let ok = |r: &mut Reader| -> Option<()> {
        while r.at < r.b.len() {
            let op = r.u8()?;
            match op >> 6 {
                1 | 3 => continue, // advance_loc, restore: operand in the opcode
                2 => {
                    r.uleb()?; // offset
                    continue;
                }
                _ => {}
            }
            match op {
                0x00 | 0x0a | 0x0b => {} // nop, remember_state, restore_state
                0x02 => drop(r.bytes(1)?),
                0x03 => drop(r.bytes(2)?),
                0x04 => drop(r.bytes(4)?),
                0x06..=0x08 | 0x0d | 0x0e | 0x2e => drop(r.uleb()?),
                0x13 => drop(r.sleb()?),
                0x05 | 0x09 | 0x0c | 0x14 | 0x2f => {
                    r.uleb()?;
                    r.uleb()?;
                }
                0x11 | 0x12 | 0x15 => {
                    r.uleb()?;
                    r.sleb()?;
                }
                0x0f => {
                    let n = r.uleb()?;
                    r.bytes(usize::try_from(n).ok()?)?;
                }
                0x10 | 0x16 => {
                    r.uleb()?;
                    let n = r.uleb()?;
                    r.bytes(usize::try_from(n).ok()?)?;
                }
                _ => return None, // set_loc (0x01) or unknown
            }
        }
        Some(())
    };
    ok(&mut r).is_some()
}

/// A CIE of the unit's `.eh_frame`: what its rewritten copy keeps.
struct Cie<'w> {
    version: u8,
    /// Code and data alignment factors and return address register, as encoded.
    factors: &'w [u8],
    signal_frame: bool,
    /// Pointer encoding of its FDEs' pc_begin and pc_range.
    fde_enc: u8,
    /// Augmentation data present (`z`): its FDEs have augmentation data too.
    z: bool,
    instructions: &'w [u8],
}

/// An FDE of the unit's `.eh_frame`, at final addresses.
struct Fde<'w> {
    /// Index of its CIE in [`EhFrame::cies`].
    cie: usize,
    pc_begin: u64,
    pc_range: u64,
    instructions: &'w [u8],
}

/// `rec` is one whole record (length field included). None for what the rewrite cannot keep
/// the meaning of: other versions or augmentations, or unusual instructions.
fn parse_cie(rec: &[u8]) -> Option<Cie<'_>> {
    let mut r = Reader::new(rec);
    let len = u32::from_le_bytes(r.le()?) as usize;
    if len.checked_add(4)? != rec.len() || u32::from_le_bytes(r.le()?) != 0 {
        return None;
    }
    let version = r.u8()?;
    if version != 1 && version != 3 {
        return None;
    }
    let aug = r.cstr()?;
    let factors_at = r.at;
    r.uleb()?;
    r.sleb()?;
    if version == 1 {
        r.u8()?;
    } else {
        r.uleb()?;
    }
    let factors = &rec[factors_at..r.at];
    let (mut fde_enc, mut signal_frame) = (PE_ABSPTR, false);
    let z = aug.first() == Some(&b'z');
    if z {
        let n = usize::try_from(r.uleb()?).ok()?;
        let mut d = Reader::new(r.bytes(n)?);
        for c in &aug[1..] {
            match c {
                b'R' => fde_enc = d.u8()?,
                b'L' => drop(d.u8()?),
                b'P' => {
                    let enc = d.u8()?;
                    if enc & 0x70 == 0x50 {
                        return None; // aligned: its size depends on the record's address
                    }
                    d.encoded(enc)?;
                }
                b'S' => signal_frame = true,
                _ => return None,
            }
        }
    } else if !aug.is_empty() {
        return None;
    }
    let instructions = &rec[r.at..];
    plain_instructions(instructions).then_some(Cie {
        version,
        factors,
        signal_frame,
        fde_enc,
        z,
        instructions,
    })
}

/// `rec` is one whole FDE record, at `addr`; `cie_at` finds a CIE of `cies` by address.
fn parse_fde<'w>(
    rec: &'w [u8],
    addr: u64,
    cies: &[Cie],
    cie_at: &FxHashMap<u64, usize>,
) -> Option<Fde<'w>> {
    let mut r = Reader::new(rec);
    let len = u32::from_le_bytes(r.le()?) as usize;
    let cie_ptr = u32::from_le_bytes(r.le()?);
    if len.checked_add(4)? != rec.len() || cie_ptr == 0 {
        return None;
    }
    let cie_index = *cie_at.get(&(addr + 4).checked_sub(u64::from(cie_ptr))?)?;
    let cie = &cies[cie_index];
    let enc = cie.fde_enc;
    let field = addr + r.at as u64;
    let raw = r.encoded(enc)?;
    let pc_begin = match enc & 0x70 {
        _ if enc & PE_INDIRECT != 0 => return None,
        0x00 => raw,
        PE_PCREL => field.wrapping_add(raw),
        _ => return None,
    };
    let pc_range = r.encoded(enc & 0x0f)?;
    if cie.z {
        let n = usize::try_from(r.uleb()?).ok()?;
        r.bytes(n)?;
    }
    let instructions = &rec[r.at..];
    plain_instructions(instructions).then_some(Fde {
        cie: cie_index,
        pc_begin,
        pc_range,
        instructions,
    })
}

/// The unit's live CIEs and FDEs (sorted by pc_begin), from their final bytes.
struct EhFrame<'w> {
    cies: Vec<Cie<'w>>,
    fdes: Vec<Fde<'w>>,
}

/// Parse `records` (address, bytes of one whole CIE or FDE); what cannot be rewritten is left
/// out.
fn parse_eh_frame<'w>(records: &[(u64, &'w [u8])]) -> EhFrame<'w> {
    let is_cie = |rec: &[u8]| rec.get(4..8) == Some(&[0, 0, 0, 0][..]);
    let mut cies = Vec::new();
    let mut cie_at = FxHashMap::default();
    for &(addr, rec) in records.iter().filter(|(_, rec)| is_cie(rec)) {
        if let Some(c) = parse_cie(rec) {
            cie_at.insert(addr, cies.len());
            cies.push(c);
        }
    }
    let mut fdes: Vec<Fde> = records
        .iter()
        .filter(|(_, rec)| !is_cie(rec))
        .filter_map(|&(addr, rec)| parse_fde(rec, addr, &cies, &cie_at))
        .collect();
    fdes.sort_unstable_by_key(|f| f.pc_begin);
    EhFrame { cies, fdes }
}

fn unit_eh_frame<'w>(u: &'w Unit) -> EhFrame<'w> {
    let records: Vec<(u64, &[u8])> =
        u.g.blocks
            .iter()
            .filter(|b| b.live && u.g.sections[b.section.idx()].kind == SectionKind::EhFrame)
            .filter_map(|b| Some((b.addr, u.bytes(b.addr, b.size())?)))
            .collect();
    parse_eh_frame(&records)
}

/// Buffers of [`unwinding_data`], kept from one function to the next.
#[derive(Default)]
struct Scratch {
    /// The unwinding data.
    data: Vec<u8>,
    /// (CIE index, its position in `data`).
    cies: Vec<(usize, usize)>,
    /// (initial location, FDE position), both from the start of the code.
    table: Vec<(i64, i64)>,
}

/// Pad the record that starts at `start` with `DW_CFA_nop` to a multiple of 4 bytes and set its
/// length.
fn end_record(out: &mut Vec<u8>, start: usize) {
    out.resize(start + (out.len() - start).next_multiple_of(4), CFA_NOP);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The unwinding data of `f` laid out as perf inject places it after the code (see the module
/// documentation), into `s.data`: `.eh_frame` (its CIEs and FDEs, rewritten, and a terminator)
/// then `.eh_frame_hdr`. Returns the header's size; None if no FDE covers `f` (or one does not
/// fit the encodings).
fn unwinding_data(eh: &EhFrame, f: &Function, s: &mut Scratch) -> Option<u64> {
    s.data.clear();
    s.cies.clear();
    s.table.clear();
    let out = &mut s.data;
    // Offsets below are from the start of the code; `.eh_frame` starts at `base`.
    let base = f.size.next_multiple_of(8) as i64;
    let end = f.addr + f.size;
    // From the last FDE that starts before the function (it may cover its start).
    let lo = eh
        .fdes
        .partition_point(|d| d.pc_begin < f.addr)
        .saturating_sub(1);
    for d in eh.fdes[lo..]
        .iter()
        .take_while(|d| d.pc_begin < end)
        .filter(|d| d.pc_begin.saturating_add(d.pc_range) > f.addr)
    {
        let cie_pos = match s.cies.iter().find(|(c, _)| *c == d.cie) {
            Some(&(_, p)) => p,
            None => {
                let cie = &eh.cies[d.cie];
                let p = out.len();
                out.extend_from_slice(&[0; 8]); // length, CIE id
                out.push(cie.version);
                out.extend_from_slice(if cie.signal_frame { b"zRS\0" } else { b"zR\0" });
                out.extend_from_slice(cie.factors);
                out.extend_from_slice(&[1, PE_PCREL | PE_SDATA4]);
                out.extend_from_slice(cie.instructions);
                end_record(out, p);
                s.cies.push((d.cie, p));
                p
            }
        };
        let p = out.len();
        let pc = d.pc_begin.wrapping_sub(f.addr) as i64;
        let field = base + p as i64 + 8;
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&((p + 4 - cie_pos) as u32).to_le_bytes());
        out.extend_from_slice(&i32::try_from(pc - field).ok()?.to_le_bytes());
        out.extend_from_slice(&u32::try_from(d.pc_range).ok()?.to_le_bytes());
        out.push(0); // augmentation data length
        out.extend_from_slice(d.instructions);
        end_record(out, p);
        s.table.push((pc, base + p as i64));
    }
    if s.table.is_empty() {
        return None;
    }
    out.extend_from_slice(&[0; 4]); // terminator
    let hdr = base + out.len() as i64;
    s.table.sort_unstable();
    let rel = |v: i64| i32::try_from(v).ok().map(i32::to_le_bytes);
    let hdr_start = out.len();
    out.extend_from_slice(&[1, PE_PCREL | PE_SDATA4, PE_UDATA4, PE_DATAREL | PE_SDATA4]);
    out.extend_from_slice(&rel(base - (hdr + 4))?);
    out.extend_from_slice(&(s.table.len() as u32).to_le_bytes());
    for &(pc, fde) in &s.table {
        out.extend_from_slice(&rel(pc - hdr)?);
        out.extend_from_slice(&rel(fde - hdr)?);
    }
    Some((out.len() - hdr_start) as u64)
}

/// The records of a unit: for each function, its line table (when there is DWARF), its
/// unwinding data (when it has an FDE), then its code.
pub(crate) fn unit_records(u: &Unit, funcs: &[Function]) -> Vec<u8> {
    let ranges = u.section_ranges();
    let eh = unit_eh_frame(u);
    // Where perf would map a function's unwinding data without covering other code: before the
    // end of the unit, and after the end of every function that starts before it (`funcs` is
    // sorted by address; `reach[i]` is the furthest end among `funcs[..=i]`).
    let unit_end = u
        .layout
        .segments
        .iter()
        .map(|s| s.addr + s.content_size + s.zero_size)
        .max()
        .unwrap_or(0);
    let reach: Vec<u64> = funcs
        .iter()
        .scan(0u64, |m, f| {
            *m = (*m).max(f.addr + f.size);
            Some(*m)
        })
        .collect();
    let free = |lo: u64, hi: u64| {
        let n = funcs.partition_point(|g| g.addr < hi);
        hi <= unit_end && (n == 0 || reach[n - 1] <= lo)
    };
    let mut tables: FxHashMap<InputId, LineTable> = FxHashMap::default();
    let mut scratch = Scratch::default();
    // Code, plus room for the other records of a typical function.
    let mut out = Vec::with_capacity(funcs.iter().map(|f| f.size as usize + 256).sum());
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
        if let Some(hdr_size) = unwinding_data(&eh, f, &mut scratch) {
            let data = &scratch.data;
            let lo = f.addr + f.size.next_multiple_of(8);
            let mapped = free(lo, lo + data.len() as u64);
            let mapped_size = if mapped { data.len() as u64 } else { 0 };
            unwinding_info(&mut out, data, hdr_size, mapped_size);
        }
        code_load(&mut out, &f.name, f.addr, code);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: length, then `body`, padded with nops to a multiple of 4.
    fn rec(body: &[u8]) -> Vec<u8> {
        let mut r = vec![0; 4];
        r.extend_from_slice(body);
        end_record(&mut r, 0);
        r
    }

    /// `.eh_frame` + `.eh_frame_hdr` of a function of `code_size` bytes, decoded as perf lays
    /// it out: for each table entry, (pc_begin and pc_range relative to the code, CIE
    /// augmentation, CIE instructions, FDE instructions).
    type Decoded = Vec<(i64, u64, Vec<u8>, Vec<u8>, Vec<u8>)>;
    fn decode(data: &[u8], hdr_size: u64, code_size: u64) -> Decoded {
        let base = code_size.next_multiple_of(8) as i64;
        let eh_len = data.len() - hdr_size as usize;
        let hdr_at = base + eh_len as i64; // offsets from the code
        let h = &data[eh_len..];
        assert_eq!(&h[..4], &[1, 0x1b, 0x03, 0x3b], "version and encodings");
        let i32_at =
            |b: &[u8], at: usize| i64::from(i32::from_le_bytes(b[at..at + 4].try_into().unwrap()));
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(hdr_at + 4 + i32_at(h, 4), base, "eh_frame_ptr");
        let n = u32_at(h, 8) as usize;
        assert_eq!(h.len(), 12 + 8 * n);
        assert_eq!(&data[eh_len - 4..eh_len], &[0; 4], "terminator");
        let mut out = Vec::new();
        let mut last = i64::MIN;
        for k in 0..n {
            let loc = hdr_at + i32_at(h, 12 + 8 * k);
            assert!(loc >= last, "table sorted");
            last = loc;
            let fde = (hdr_at + i32_at(h, 16 + 8 * k) - base) as usize;
            let len = u32_at(data, fde) as usize;
            let cie = fde + 4 - u32_at(data, fde + 4) as usize;
            let pc = base + fde as i64 + 8 + i32_at(data, fde + 8);
            assert_eq!(pc, loc, "table entry and FDE agree");
            let range = u64::from(u32_at(data, fde + 12));
            assert_eq!(data[fde + 16], 0, "no FDE augmentation data");
            let fde_insns = data[fde + 17..fde + 4 + len].to_vec();
            let cie_len = u32_at(data, cie) as usize;
            assert_eq!(
                (u32_at(data, cie + 4), data[cie + 8]),
                (0, 1),
                "CIE id, version"
            );
            let aug_end = cie + 9 + data[cie + 9..].iter().position(|c| *c == 0).unwrap();
            let aug = data[cie + 9..aug_end].to_vec();
            // code align 1, data align -8, return address 16; then `1, pcrel|sdata4`.
            assert_eq!(&data[aug_end + 1..aug_end + 6], &[1, 0x78, 16, 1, 0x1b]);
            let cie_insns = data[aug_end + 6..cie + 4 + cie_len].to_vec();
            out.push((pc, range, aug, cie_insns, fde_insns));
        }
        out
    }

    fn func(addr: u64, size: u64) -> Function {
        Function {
            name: "f".into(),
            addr,
            size,
            input: InputId(0),
        }
    }

    /// gcc's CIE for C with exceptions ("zPLR": personality through a GOT-like slot, LSDA and
    /// FDE pointers pcrel|sdata4), at 0x5000, and an FDE of `f` (0x1000, 0x43 bytes) after it.
    fn zplr() -> (Vec<u8>, Vec<u8>) {
        let mut cie = vec![0, 0, 0, 0, 1];
        cie.extend_from_slice(b"zPLR\0");
        cie.extend_from_slice(&[1, 0x78, 16, 7, 0x9b, 0xed, 0xff, 0xff, 0xff, 0x1b, 0x1b]);
        cie.extend_from_slice(&[0x0c, 7, 8, 0x90, 1]); // def_cfa rsp+8; rip at cfa-8
        let cie = rec(&cie);
        let fde_addr = 0x5000 + cie.len() as u64;
        let mut fde = ((fde_addr + 4 - 0x5000) as u32).to_le_bytes().to_vec();
        let pc = 0x1000i64 - (fde_addr as i64 + 8);
        fde.extend_from_slice(&(pc as i32).to_le_bytes());
        fde.extend_from_slice(&0x43u32.to_le_bytes());
        fde.extend_from_slice(&[4, 0xaa, 0xbb, 0xcc, 0xdd]); // LSDA pointer
        fde.extend_from_slice(&[0x41, 0x0e, 0x10, 0x83, 0x02]); // advance 1; cfa+16; rbx
        (cie, rec(&fde))
    }

    fn data_of(eh: &EhFrame, f: &Function) -> Option<(Vec<u8>, u64)> {
        let mut s = Scratch::default();
        let hdr = unwinding_data(eh, f, &mut s)?;
        Some((s.data, hdr))
    }

    #[test]
    fn personality_and_lsda_are_dropped_and_pcs_are_relative_to_perfs_layout() {
        let (cie, fde) = zplr();
        let eh = parse_eh_frame(&[(0x5000, &cie), (0x5000 + cie.len() as u64, &fde)]);
        let (data, hdr) = data_of(&eh, &func(0x1000, 0x43)).expect("unwinding data");
        assert_eq!(data.len() % 4, 0);
        let d = decode(&data, hdr, 0x43);
        assert_eq!(d.len(), 1);
        let (pc, range, aug, cie_insns, fde_insns) = &d[0];
        assert_eq!((*pc, *range), (0, 0x43), "covers the code at 0");
        assert_eq!(aug, b"zR");
        assert_eq!(&cie_insns[..5], &[0x0c, 7, 8, 0x90, 1]);
        assert!(cie_insns[5..].iter().all(|b| *b == 0), "nop padding");
        assert_eq!(&fde_insns[..5], &[0x41, 0x0e, 0x10, 0x83, 0x02]);
        // The record: sizes, then the data, padded to 8.
        let mut r = Vec::new();
        unwinding_info(&mut r, &data, hdr, data.len() as u64);
        assert_eq!(r.len() % 8, 0);
        assert_eq!(
            u32::from_le_bytes(r[0..4].try_into().unwrap()),
            JIT_CODE_UNWINDING_INFO
        );
        assert_eq!(
            u32::from_le_bytes(r[4..8].try_into().unwrap()) as usize,
            r.len()
        );
        let u = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap());
        assert_eq!(
            (u(16), u(24), u(32)),
            (data.len() as u64, hdr, data.len() as u64)
        );
        assert_eq!(&r[40..40 + data.len()], &data[..]);
    }

    #[test]
    fn a_symbol_inside_an_fde_and_absolute_pointers() {
        // Version 1 CIE without augmentation: pc_begin is an absolute 8-byte address; 'S' is
        // not possible without 'z', so a second CIE "zRS" with udata8 absolute pointers.
        let mut plain = vec![0, 0, 0, 0, 1, 0, 1, 0x78, 16];
        plain.extend_from_slice(&[0x0c, 7, 8, 0x90, 1]);
        let plain = rec(&plain);
        let mut sig = vec![0, 0, 0, 0, 1];
        sig.extend_from_slice(b"zRS\0");
        sig.extend_from_slice(&[1, 0x78, 16, 1, 0x04, 0x0c, 7, 8]);
        let sig = rec(&sig);
        let (pa, sa) = (0x8000u64, 0x8100u64);
        let fde = |at: u64, cie: u64, begin: u64, range: u64, z: bool| {
            let mut f = ((at + 4 - cie) as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&begin.to_le_bytes());
            f.extend_from_slice(&range.to_le_bytes());
            if z {
                f.push(0);
            }
            f.extend_from_slice(&[0x02, 0x20, 0x0e, 0x20]); // advance_loc1 32; cfa+32
            rec(&f)
        };
        let f1 = fde(0x8200, pa, 0x2000, 0x100, false);
        let f2 = fde(0x8300, sa, 0x2100, 0x10, true);
        let eh = parse_eh_frame(&[(pa, &plain), (sa, &sig), (0x8200, &f1), (0x8300, &f2)]);
        // `f` starts 0x40 into the first FDE's range and reaches into the second.
        let (data, hdr) = data_of(&eh, &func(0x2040, 0xc8)).expect("unwinding data");
        let d = decode(&data, hdr, 0xc8);
        assert_eq!(d.len(), 2, "both FDEs, each with its CIE");
        assert_eq!(
            (d[0].0, d[0].1, d[0].2.as_slice()),
            (-0x40, 0x100, &b"zR"[..])
        );
        assert_eq!(
            (d[1].0, d[1].1, d[1].2.as_slice()),
            (0xc0, 0x10, &b"zRS"[..])
        );
        assert_eq!(&d[1].4[..4], &[0x02, 0x20, 0x0e, 0x20]);
        // Code no FDE covers has no unwinding data.
        assert!(data_of(&eh, &func(0x3000, 0x10)).is_none());
    }

    #[test]
    fn records_whose_meaning_the_rewrite_would_change_are_left_out() {
        let (cie, _) = zplr();
        // DW_CFA_set_loc: its operand is in the FDE pointer encoding.
        assert!(!plain_instructions(&[0x01, 0, 0, 0, 0]));
        assert!(plain_instructions(&[
            0x0f, 2, 0x77, 0x08, 0x2e, 0x10, 0x40, 0xc3
        ]));
        assert!(
            !plain_instructions(&[0x0f, 5, 0x77]),
            "truncated expression"
        );
        // Unknown augmentation, other versions.
        let mut b = vec![0, 0, 0, 0, 1];
        b.extend_from_slice(b"zB\0");
        b.extend_from_slice(&[1, 0x78, 16, 0]);
        assert!(parse_cie(&rec(&b)).is_none());
        let mut v4 = cie.clone();
        v4[8] = 4;
        assert!(parse_cie(&v4).is_none());
        assert!(parse_cie(&cie).is_some());
        // Length field that disagrees with the block.
        assert!(parse_cie(&cie[..cie.len() - 4]).is_none());
    }
}

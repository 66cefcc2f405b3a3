//! jitdump records of a unit (the format, and the encoders of every record:
//! [`kiln_target::jitdump_format`]).
//!
//! The executor fills in the timestamp, and the PID, thread and code index of `JIT_CODE_LOAD`
//! (see `kiln_target`'s jitdump sink); they are written as 0 here.
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
//! - `.eh_frame`: the CIEs and FDEs of the function (read with `gimli`, written with
//!   `gimli::write`), rewritten: CIE augmentation `zR` (`zRS`
//!   for a signal frame) with FDE pointers `pcrel|sdata4`; personality and LSDA are dropped
//!   (perf runs neither, and their pointers would lead nowhere in the `.so`); the call frame
//!   instructions keep their rules (gimli may choose a shorter encoding of the same rule). Each FDE's pc_begin is re-expressed relative to the code at 0 and
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
use gimli::write::Writer as _;
use gimli::{constants, read, write, LittleEndian, UnwindSection};
use kiln_target::jitdump_format as format;
use rustc_hash::FxHashMap;

/// The sections gimli reads here: little-endian slices.
type Slice<'w> = gimli::EndianSlice<'w, LittleEndian>;

/// CIE and FDE pointer encoding of the rewritten `.eh_frame`, and of `eh_frame_ptr` in its
/// header: PC-relative, signed 4 bytes.
const PCREL_SDATA4: constants::DwEhPe =
    constants::DwEhPe(constants::DW_EH_PE_pcrel.0 | constants::DW_EH_PE_sdata4.0);

/// What the rewritten records are written as: 32-bit DWARF, CFI version 1, 8-byte addresses.
const ENCODING: gimli::Encoding = gimli::Encoding {
    format: gimli::Format::Dwarf32,
    version: 1,
    address_size: 8,
};

/// The unit's `.eh_frame`, read: the CIEs the rewrite can copy (as their copies) and the FDEs
/// that use them.
struct UnitCfi<'w> {
    eh: gimli::EhFrame<Slice<'w>>,
    bases: gimli::BaseAddresses,
    cies: Vec<write::CommonInformationEntry>,
    /// (index of its CIE's copy in `cies`, FDE), sorted by initial address.
    fdes: Vec<(usize, read::FrameDescriptionEntry<Slice<'w>>)>,
}

impl UnitCfi<'_> {
    /// The FDEs whose range meets `[lo, hi)`.
    fn fdes_meeting(
        &self,
        lo: u64,
        hi: u64,
    ) -> impl Iterator<Item = &(usize, read::FrameDescriptionEntry<Slice<'_>>)> {
        // From the last FDE that starts before `lo` (it may cover it).
        let first = self
            .fdes
            .partition_point(|(_, d)| d.initial_address() < lo)
            .saturating_sub(1);
        self.fdes[first..]
            .iter()
            .take_while(move |(_, d)| d.initial_address() < hi)
            .filter(move |(_, d)| d.initial_address().saturating_add(d.len()) > lo)
    }
}

/// The unit's `.eh_frame`: its live records (one block each) read from the final bytes of the
/// range they span.
fn unit_cfi<'w>(u: &'w Unit) -> UnitCfi<'w> {
    let blocks: Vec<(u64, u64)> =
        u.g.blocks
            .iter()
            .filter(|b| b.live && u.g.sections[b.section.idx()].kind == SectionKind::EhFrame)
            .map(|b| (b.addr, b.size()))
            .collect();
    let lo = blocks.iter().map(|b| b.0).min().unwrap_or(0);
    let hi = blocks.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
    let Some(section) = u.bytes(lo, hi.saturating_sub(lo)) else {
        return read_cfi(&[], 0, &[]);
    };
    let records: Vec<(usize, usize)> = blocks
        .iter()
        .map(|&(addr, size)| ((addr - lo) as usize, size as usize))
        .collect();
    read_cfi(section, lo, &records)
}

/// Read the records at `records` (offset, size) of `section`, an `.eh_frame` at `address`;
/// CIEs the rewrite cannot copy without changing their meaning are left out, and their FDEs.
fn read_cfi<'w>(section: &'w [u8], address: u64, records: &[(usize, usize)]) -> UnitCfi<'w> {
    let mut eh = gimli::EhFrame::new(section, LittleEndian);
    eh.set_address_size(8);
    let bases = gimli::BaseAddresses::default().set_eh_frame(address);
    // CIEs first (FDEs refer to them): offset in `section` → (CIE, index of its copy).
    let mut cie_at = FxHashMap::default();
    let mut cies = Vec::new();
    let mut fde_records = Vec::new();
    for &(offset, size) in records {
        match eh.cie_from_offset(&bases, gimli::EhFrameOffset(offset)) {
            Ok(cie) if cie.entry_len() + 4 == size => {
                if let Some(copy) = rewritten_cie(&eh, &bases, &cie) {
                    cie_at.insert(offset, (cie, cies.len()));
                    cies.push(copy);
                }
            }
            Err(gimli::Error::NotCieId(_)) => fde_records.push((offset, size)),
            _ => {}
        }
    }
    let mut fdes = Vec::with_capacity(fde_records.len());
    for (offset, size) in fde_records {
        let Ok(partial) = eh.partial_fde_from_offset(&bases, gimli::EhFrameOffset(offset)) else {
            continue;
        };
        let Some((cie, copy)) = cie_at.get(&partial.cie_offset().0) else {
            continue;
        };
        match partial.parse(|_, _, _| Ok(cie.clone())) {
            Ok(fde) if fde.entry_len() + 4 == size => fdes.push((*copy, fde)),
            _ => {}
        }
    }
    fdes.sort_unstable_by_key(|(_, f)| f.initial_address());
    UnitCfi {
        eh,
        bases,
        cies,
        fdes,
    }
}

/// The copy of `cie` that the rewritten `.eh_frame` holds: augmentation `zR` (`zRS`), FDE
/// pointers `pcrel|sdata4`, no personality, its factors and instructions. None for a CIE whose
/// FDEs the rewrite cannot keep the meaning of.
fn rewritten_cie(
    eh: &gimli::EhFrame<Slice>,
    bases: &gimli::BaseAddresses,
    cie: &read::CommonInformationEntry<Slice>,
) -> Option<write::CommonInformationEntry> {
    // `.eh_frame` knows versions 1 and 3 (gimli also reads `.debug_frame`'s 4).
    if !matches!(cie.version(), 1 | 3) {
        return None;
    }
    // FDE pointers kiln can re-express: direct, absolute or PC-relative.
    let fde_pointers = cie
        .fde_address_encoding()
        .unwrap_or(constants::DW_EH_PE_absptr);
    if fde_pointers.is_indirect()
        || !matches!(
            fde_pointers.application(),
            constants::DW_EH_PE_absptr | constants::DW_EH_PE_pcrel
        )
    {
        return None;
    }
    // The copy is version 1, whose return address register is one byte, written as a ULEB128
    // by gimli: the same byte below 0x80.
    let ra = cie.return_address_register();
    if ra.0 >= 0x80 {
        return None;
    }
    // gimli::write divides by both factors when it encodes instructions: 0 is no factor.
    let code_align = u8::try_from(cie.code_alignment_factor())
        .ok()
        .filter(|f| *f != 0)?;
    let data_align = i8::try_from(cie.data_alignment_factor())
        .ok()
        .filter(|f| *f != 0)?;
    let mut copy = write::CommonInformationEntry::new(ENCODING, code_align, data_align, ra);
    copy.fde_address_encoding = PCREL_SDATA4;
    copy.signal_trampoline = cie.is_signal_trampoline();
    let mut instructions = cie.instructions(eh, bases);
    while let Some(i) = instructions.next().ok()? {
        match converted(i, cie, eh)? {
            Step::Rule(rule) => copy.add_instruction(rule),
            // A CIE's instructions hold at the start of every FDE: an advance there has no
            // place in the copy.
            Step::Advance(0) | Step::Nothing => {}
            Step::Advance(_) => return None,
        }
    }
    Some(copy)
}

/// A call frame instruction, converted.
enum Step {
    /// Move the location on by this many bytes.
    Advance(u32),
    /// A rule (`gimli::write` holds offsets unfactored, and factors them again on writing).
    Rule(write::CallFrameInstruction),
    /// A `DW_CFA_nop`.
    Nothing,
}

/// `i`, of a record of `cie` in `eh`, for `gimli::write`. None for what the rewrite cannot keep:
/// `DW_CFA_set_loc` (its operand is in the FDE pointer encoding, which the rewrite changes),
/// AArch64's instruction, offsets beyond 32 bits.
fn converted(
    i: read::CallFrameInstruction<usize>,
    cie: &read::CommonInformationEntry<Slice>,
    eh: &gimli::EhFrame<Slice>,
) -> Option<Step> {
    use read::CallFrameInstruction as From;
    use write::CallFrameInstruction as To;
    let data =
        |factored: i64| i32::try_from(factored.checked_mul(cie.data_alignment_factor())?).ok();
    let unsigned_data = |factored: u64| data(i64::try_from(factored).ok()?);
    let offset = |offset: u64| i32::try_from(offset).ok();
    let expression = |e: read::UnwindExpression<usize>| {
        let bytes = e.get(eh).ok()?.0.slice().to_vec();
        Some(write::Expression::raw(bytes))
    };
    let rule = match i {
        From::SetLoc { .. } | From::NegateRaState => return None,
        From::AdvanceLoc { delta } => {
            let factor = u32::try_from(cie.code_alignment_factor()).ok()?;
            return Some(Step::Advance(delta.checked_mul(factor)?));
        }
        From::Nop => return Some(Step::Nothing),
        From::DefCfa {
            register,
            offset: o,
        } => To::Cfa(register, offset(o)?),
        From::DefCfaSf {
            register,
            factored_offset,
        } => To::Cfa(register, data(factored_offset)?),
        From::DefCfaRegister { register } => To::CfaRegister(register),
        From::DefCfaOffset { offset: o } => To::CfaOffset(offset(o)?),
        From::DefCfaOffsetSf { factored_offset } => To::CfaOffset(data(factored_offset)?),
        From::DefCfaExpression { expression: e } => To::CfaExpression(expression(e)?),
        From::Undefined { register } => To::Undefined(register),
        From::SameValue { register } => To::SameValue(register),
        From::Offset {
            register,
            factored_offset,
        } => To::Offset(register, unsigned_data(factored_offset)?),
        From::OffsetExtendedSf {
            register,
            factored_offset,
        } => To::Offset(register, data(factored_offset)?),
        From::ValOffset {
            register,
            factored_offset,
        } => To::ValOffset(register, unsigned_data(factored_offset)?),
        From::ValOffsetSf {
            register,
            factored_offset,
        } => To::ValOffset(register, data(factored_offset)?),
        From::Register {
            dest_register,
            src_register,
        } => To::Register(dest_register, src_register),
        From::Expression {
            register,
            expression: e,
        } => To::Expression(register, expression(e)?),
        From::ValExpression {
            register,
            expression: e,
        } => To::ValExpression(register, expression(e)?),
        From::Restore { register } => To::Restore(register),
        From::RememberState => To::RememberState,
        From::RestoreState => To::RestoreState,
        From::ArgsSize { size } => To::ArgsSize(u32::try_from(size).ok()?),
    };
    Some(Step::Rule(rule))
}

/// The copy of `fde`, at `address` (as gimli::write takes it), with the same rules. None if an
/// instruction cannot be kept or its range does not fit 32 bits.
fn rewritten_fde(
    cfi: &UnitCfi,
    fde: &read::FrameDescriptionEntry<Slice>,
    address: u64,
) -> Option<write::FrameDescriptionEntry> {
    let range = u32::try_from(fde.len()).ok()?;
    let mut copy = write::FrameDescriptionEntry::new(write::Address::Constant(address), range);
    let mut at = 0u32;
    let mut from = fde.instructions(&cfi.eh, &cfi.bases);
    while let Some(i) = from.next().ok()? {
        match converted(i, fde.cie(), &cfi.eh)? {
            Step::Advance(delta) => at = at.checked_add(delta)?,
            Step::Rule(rule) => copy.add_instruction(at, rule),
            Step::Nothing => {}
        }
    }
    Some(copy)
}

/// The unwinding data of `f` laid out as perf inject places it after the code (see the module
/// documentation): `.eh_frame` (its CIEs and FDEs, rewritten, and a terminator) then
/// `.eh_frame_hdr`. Returns the data and the header's size; None if no FDE covers `f` (or one
/// does not fit the encodings).
fn unwinding_data(cfi: &UnitCfi, f: &Function) -> Option<(Vec<u8>, u64)> {
    // Offsets from the start of the code; `.eh_frame` starts at `base`.
    let base = f.size.next_multiple_of(8);
    let mut table = write::FrameTable::default();
    for (copy, d) in cfi.fdes_meeting(f.addr, f.addr + f.size) {
        // gimli writes a PC-relative pointer relative to its place in the section it writes,
        // which starts at 0: so the address is given relative to the start of `.eh_frame`.
        let pc = d.initial_address().wrapping_sub(f.addr).wrapping_sub(base);
        // An FDE whose instructions cannot be rewritten is left out.
        if let Some(fde) = rewritten_fde(cfi, d, pc) {
            let cie = table.add_cie(cfi.cies[*copy].clone());
            table.add_fde(cie, fde);
        }
    }
    if table.fde_count() == 0 {
        return None;
    }
    let mut eh_frame = write::EhFrame(write::EndianVec::new(LittleEndian));
    table.write_eh_frame(&mut eh_frame).ok()?;
    let mut data = eh_frame.0.into_vec();
    data.extend_from_slice(&[0; 4]); // terminator
    let hdr = eh_frame_hdr(&data, base)?;
    data.extend_from_slice(&hdr);
    Some((data, hdr.len() as u64))
}

/// The `.eh_frame_hdr` for `eh_frame` placed `base` bytes after the code, and the header right
/// after it: version 1, `eh_frame_ptr` `pcrel|sdata4`, `fde_count` `udata4`, a table
/// `datarel|sdata4` (relative to the header) sorted by initial location. The FDEs are found by
/// reading `eh_frame` back (gimli's writer does not say where it put them).
fn eh_frame_hdr(eh_frame: &[u8], base: u64) -> Option<Vec<u8>> {
    let mut section = gimli::EhFrame::new(eh_frame, LittleEndian);
    section.set_address_size(8);
    let bases = gimli::BaseAddresses::default().set_eh_frame(base);
    // (initial location, FDE), from the start of the code.
    let mut table: Vec<(i64, i64)> = Vec::new();
    let mut entries = section.entries(&bases);
    while let Some(entry) = entries.next().ok()? {
        if let read::CieOrFde::Fde(partial) = entry {
            let fde = partial.parse(gimli::EhFrame::cie_from_offset).ok()?;
            table.push((
                fde.initial_address() as i64,
                (base as usize + fde.offset()) as i64,
            ));
        }
    }
    table.sort_unstable();
    let hdr = (base as usize + eh_frame.len()) as i64;
    let mut w = write::EndianVec::new(LittleEndian);
    w.write_u8(1).ok()?; // version
    w.write_u8(PCREL_SDATA4.0).ok()?;
    w.write_u8(constants::DW_EH_PE_udata4.0).ok()?;
    w.write_u8(constants::DW_EH_PE_datarel.0 | constants::DW_EH_PE_sdata4.0)
        .ok()?;
    w.write_sdata(base as i64 - (hdr + 4), 4).ok()?; // eh_frame_ptr, relative to itself
    w.write_udata(table.len() as u64, 4).ok()?;
    for (pc, fde) in table {
        w.write_sdata(pc - hdr, 4).ok()?;
        w.write_sdata(fde - hdr, 4).ok()?;
    }
    Some(w.into_vec())
}

/// Where perf may map a function's unwinding data (after its code) without covering other code:
/// before the end of the unit, and after the end of every function that starts before it.
struct RoomAfterCode<'f> {
    funcs: &'f [Function],
    /// `reach[i]`: the furthest end among `funcs[..=i]` (`funcs` is sorted by address).
    reach: Vec<u64>,
    unit_end: u64,
}

impl<'f> RoomAfterCode<'f> {
    fn new(u: &Unit, funcs: &'f [Function]) -> Self {
        let unit_end = u
            .layout
            .segments
            .iter()
            .map(|s| s.addr + s.content_size + s.zero_size)
            .max()
            .unwrap_or(0);
        let reach = funcs
            .iter()
            .scan(0u64, |m, f| {
                *m = (*m).max(f.addr + f.size);
                Some(*m)
            })
            .collect();
        RoomAfterCode {
            funcs,
            reach,
            unit_end,
        }
    }

    /// Whether `[lo, hi)` lies in the unit and holds no function.
    fn is_free(&self, lo: u64, hi: u64) -> bool {
        let n = self.funcs.partition_point(|g| g.addr < hi);
        hi <= self.unit_end && (n == 0 || self.reach[n - 1] <= lo)
    }
}

/// The line tables of a unit's inputs at final addresses, read when first needed.
struct LineTables<'u, 'g, 'a> {
    u: &'u Unit<'g, 'a>,
    ranges: FxHashMap<(InputId, u32), (u64, u64)>,
    tables: FxHashMap<InputId, LineTable>,
}

impl<'u, 'g, 'a> LineTables<'u, 'g, 'a> {
    fn new(u: &'u Unit<'g, 'a>) -> Self {
        LineTables {
            u,
            ranges: u.section_ranges(),
            tables: FxHashMap::default(),
        }
    }

    fn of(&mut self, input: InputId) -> &LineTable {
        let (u, ranges) = (self.u, &self.ranges);
        self.tables.entry(input).or_insert_with(|| {
            let data = u.g.inputs.get(input.idx()).map_or(&[][..], |i| i.data);
            if data.is_empty() {
                return LineTable::default();
            }
            let addr = |i: usize| ranges.get(&(input, i as u32)).map(|r| r.0);
            line_table(data, &addr).unwrap_or_else(|why| {
                let name = u.g.input_name(input);
                tracing::warn!("jitdump: no line table for {name}: {why}");
                LineTable::default()
            })
        })
    }
}

/// The records of `f` (whose final bytes are `code`): its line table (when there is DWARF), its
/// unwinding data (when it has an FDE), then its code.
fn function_records(
    out: &mut Vec<u8>,
    f: &Function,
    code: &[u8],
    lines: &mut LineTables,
    cfi: &UnitCfi,
    room: &RoomAfterCode,
) -> Result<(), format::FormatError> {
    let table = lines.of(f.input);
    let rows = table.rows_in(f.addr, f.addr + f.size);
    if !rows.is_empty() {
        let entries = rows.iter().map(|r| {
            let entry = format::DebugEntry {
                addr: r.addr,
                lineno: r.line,
                discrim: 0,
            };
            let file = table.files.get(r.file as usize).map_or("", String::as_str);
            (entry, file)
        });
        format::debug_info(out, f.addr, entries)?;
    }
    if let Some((data, hdr_size)) = unwinding_data(cfi, f) {
        let lo = f.addr + f.size.next_multiple_of(8);
        let mapped = room.is_free(lo, lo + data.len() as u64);
        let mapped_size = if mapped { data.len() as u64 } else { 0 };
        format::unwinding_info(out, &data, hdr_size, mapped_size)?;
    }
    format::code_load(out, f.addr, &f.name, code)
}

/// The records of a unit: for each function, its line table (when there is DWARF), its
/// unwinding data (when it has an FDE), then its code.
pub(crate) fn unit_records(u: &Unit, funcs: &[Function]) -> Vec<u8> {
    let cfi = unit_cfi(u);
    let room = RoomAfterCode::new(u, funcs);
    let mut lines = LineTables::new(u);
    // Code, plus room for the other records of a typical function.
    let mut out = Vec::with_capacity(funcs.iter().map(|f| f.size as usize + 256).sum());
    for f in funcs {
        let Some(code) = u.bytes(f.addr, f.size) else {
            continue;
        };
        let start = out.len();
        if let Err(why) = function_records(&mut out, f, code, &mut lines, &cfi, &room) {
            // None of its records: perf attaches lines and unwinding data to the next load.
            out.truncate(start);
            tracing::warn!("jitdump: no records for {}: {why}", f.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: length, then `body`, padded with `DW_CFA_nop` to a multiple of 4.
    fn rec(body: &[u8]) -> Vec<u8> {
        let mut r = vec![0; 4];
        r.extend_from_slice(body);
        r.resize(r.len().next_multiple_of(4), 0);
        let len = (r.len() - 4) as u32;
        r[..4].copy_from_slice(&len.to_le_bytes());
        r
    }

    /// `f` of the CFI of `records` laid out one after the other from `address`.
    fn with_cfi<T>(address: u64, records: &[&[u8]], f: impl FnOnce(&UnitCfi) -> T) -> T {
        let mut section = Vec::new();
        let mut at = Vec::new();
        for r in records {
            at.push((section.len(), r.len()));
            section.extend_from_slice(r);
        }
        f(&read_cfi(&section, address, &at))
    }

    /// `.eh_frame` + `.eh_frame_hdr` of a function of `code_size` bytes, decoded by hand as
    /// perf lays it out: for each table entry, (pc_begin and pc_range relative to the code, CIE
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
        zplr_with(&[0x0c, 7, 8, 0x90, 1]) // def_cfa rsp+8; rip at cfa-8
    }

    /// [`zplr`] with these initial instructions in the CIE.
    fn zplr_with(cie_instructions: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut cie = vec![0, 0, 0, 0, 1];
        cie.extend_from_slice(b"zPLR\0");
        cie.extend_from_slice(&[1, 0x78, 16, 7, 0x9b, 0xed, 0xff, 0xff, 0xff, 0x1b, 0x1b]);
        cie.extend_from_slice(cie_instructions);
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

    #[test]
    fn personality_and_lsda_are_dropped_and_pcs_are_relative_to_perfs_layout() {
        let (cie, fde) = zplr();
        let (data, hdr) = with_cfi(0x5000, &[&cie, &fde], |cfi| {
            unwinding_data(cfi, &func(0x1000, 0x43))
        })
        .expect("unwinding data");
        assert_eq!(data.len() % 4, 0);
        let d = decode(&data, hdr, 0x43);
        assert_eq!(d.len(), 1);
        let (pc, range, aug, cie_insns, fde_insns) = &d[0];
        assert_eq!((*pc, *range), (0, 0x43), "covers the code at 0");
        assert_eq!(aug, b"zR");
        assert_eq!(&cie_insns[..5], &[0x0c, 7, 8, 0x90, 1]);
        assert!(cie_insns[5..].iter().all(|b| *b == 0), "nop padding");
        assert_eq!(&fde_insns[..5], &[0x41, 0x0e, 0x10, 0x83, 0x02]);
        assert!(fde_insns[5..].iter().all(|b| *b == 0), "nop padding");
        // The record: sizes, then the data, padded to 8.
        let mut r = Vec::new();
        format::unwinding_info(&mut r, &data, hdr, data.len() as u64).unwrap();
        assert_eq!(r.len() % 8, 0);
        let record = format::record_at(&r).unwrap();
        assert_eq!(
            (record.id, record.total_size as usize),
            (format::JIT_CODE_UNWINDING_INFO, r.len())
        );
        let (info, body) = format::parse_unwinding_info(&r[16..]).unwrap();
        assert_eq!(
            (
                info.unwinding_size,
                info.eh_frame_hdr_size,
                info.mapped_size
            ),
            (data.len() as u64, hdr, data.len() as u64)
        );
        assert_eq!(body, &data[..]);
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
        let (pa, sa) = (0x8000u64, 0x8000 + plain.len() as u64);
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
        let f1_at = sa + sig.len() as u64;
        let f1 = fde(f1_at, pa, 0x2000, 0x100, false);
        let f2 = fde(f1_at + f1.len() as u64, sa, 0x2100, 0x10, true);
        // `f` starts 0x40 into the first FDE's range and reaches into the second; code no FDE
        // covers has no unwinding data.
        let (spanning, uncovered) = with_cfi(pa, &[&plain, &sig, &f1, &f2], |cfi| {
            (
                unwinding_data(cfi, &func(0x2040, 0xc8)),
                unwinding_data(cfi, &func(0x3000, 0x10)),
            )
        });
        assert!(uncovered.is_none());
        let (data, hdr) = spanning.expect("unwinding data");
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
        // The same rules: advance_loc 32 (in its one-byte form), def_cfa_offset 32.
        assert_eq!(&d[1].4[..3], &[0x60, 0x0e, 0x20]);
    }

    #[test]
    fn records_whose_meaning_the_rewrite_would_change_are_left_out() {
        let fdes = |insns: &[u8]| {
            let (cie, fde) = zplr_with(insns);
            with_cfi(0x5000, &[&cie, &fde], |c| c.fdes.len())
        };
        assert_eq!(fdes(&[0x0c, 7, 8, 0x90, 1]), 1);
        // DW_CFA_set_loc: its operand is in the FDE pointer encoding.
        assert_eq!(fdes(&[0x01, 0, 0, 0, 0]), 0);
        // def_cfa_expression, GNU_args_size, advance_loc 0, restore.
        assert_eq!(fdes(&[0x0f, 2, 0x77, 0x08, 0x2e, 0x10, 0x40, 0xc3]), 1);
        // Alignment factors of 0 (gimli::write would divide by them).
        let mut zero_factor = vec![0, 0, 0, 0, 1];
        zero_factor.extend_from_slice(b"zR\0");
        zero_factor.extend_from_slice(&[1, 0, 16, 1, 0x1b, 0x90, 1]);
        assert!(with_cfi(0x5000, &[&rec(&zero_factor)], |c| c
            .cies
            .is_empty()));
        // A CIE that advances the location; a truncated expression.
        assert_eq!(fdes(&[0x41]), 0);
        assert_eq!(fdes(&[0x0f, 5, 0x77]), 0);
        let (cie, fde) = zplr();
        // An FDE whose instructions include DW_CFA_set_loc: left out, so `f` has none.
        let mut set_loc = fde.clone();
        assert_eq!(set_loc[21], 0x41, "advance_loc 1");
        set_loc[21] = 0x01;
        let data = with_cfi(0x5000, &[&cie, &set_loc], |c| {
            unwinding_data(c, &func(0x1000, 0x43))
        });
        assert!(data.is_none());
        // Unknown augmentation, CIE version 4.
        let mut b = vec![0, 0, 0, 0, 1];
        b.extend_from_slice(b"zB\0");
        b.extend_from_slice(&[1, 0x78, 16, 0]);
        assert!(with_cfi(0x5000, &[&rec(&b)], |c| c.cies.is_empty()));
        let mut v4 = cie.clone();
        v4[8] = 4;
        assert!(with_cfi(0x5000, &[&v4], |c| c.cies.is_empty()));
        assert_eq!(with_cfi(0x5000, &[&cie], |c| c.cies.len()), 1);
        // A block whose size disagrees with the record's length field.
        let mut section = cie.clone();
        section.extend_from_slice(&fde);
        let short = read_cfi(&section, 0x5000, &[(0, cie.len() - 4)]);
        assert!(short.cies.is_empty());
    }

    #[test]
    fn every_single_byte_mutation_is_read_or_refused_without_a_panic() {
        let (cie, fde) = zplr();
        let mut section = cie.clone();
        section.extend_from_slice(&fde);
        let records = [(0, cie.len()), (cie.len(), fde.len())];
        let mut kept = 0;
        for at in 0..section.len() {
            for byte in 0..=255u8 {
                let mut m = section.clone();
                m[at] = byte;
                let cfi = read_cfi(&m, 0x5000, &records);
                if let Some((data, hdr)) = unwinding_data(&cfi, &func(0x1000, 0x43)) {
                    assert!(hdr as usize <= data.len());
                    kept += 1;
                }
            }
        }
        assert!(
            kept > 0,
            "the mutations that keep the meaning are rewritten"
        );
    }
}

//! Line tables of an input object at the unit's final addresses, for jitdump.
//!
//! DWARF in a relocatable object is itself relocatable: addresses in `.debug_line` and
//! `.debug_info`, and offsets into the string sections, are relocations against section symbols.
//! Each debug section is copied and its `.rela` section applied with the final address of every
//! loaded section (0 for the rest), then gimli reads the result.

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::LittleEndian as LE;
use std::borrow::Cow;

/// One row of a line table: `addr` is the first address of code from `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LineRow {
    pub addr: u64,
    pub line: u32,
    /// Index into [`LineTable::files`].
    pub file: u32,
}

#[derive(Default)]
pub(crate) struct LineTable {
    pub files: Vec<String>,
    /// Sorted by address.
    pub rows: Vec<LineRow>,
}

impl LineTable {
    /// Rows whose address lies in `[lo, hi)`.
    pub fn rows_in(&self, lo: u64, hi: u64) -> &[LineRow] {
        let a = self.rows.partition_point(|r| r.addr < lo);
        let b = self.rows.partition_point(|r| r.addr < hi);
        &self.rows[a..b.max(a)]
    }
}

/// Reads the line tables of `data`, with `section_addr(index)` the final address of each ELF
/// section (`None` for sections that were not loaded).
pub(crate) fn line_table(
    data: &[u8],
    section_addr: &dyn Fn(usize) -> Option<u64>,
) -> Result<LineTable, String> {
    let header = FileHeader64::<LE>::parse(data).map_err(|e| e.to_string())?;
    let sections = header.sections(LE, data).map_err(|e| e.to_string())?;
    let symtab = sections
        .symbols(LE, data, elf::SHT_SYMTAB)
        .map_err(|e| e.to_string())?;
    let find = |name: &str| -> Option<usize> {
        sections
            .enumerate()
            .find(|(_, sh)| sections.section_name(LE, sh).ok() == Some(name.as_bytes()))
            .map(|(i, _)| i.0)
    };
    if find(".debug_line").is_none() {
        return Ok(LineTable::default());
    }
    // A debug section with its relocations applied.
    let load = |id: gimli::SectionId| -> Result<Cow<[u8]>, String> {
        let Some(idx) = find(id.name()) else {
            return Ok(Cow::Borrowed(&[][..]));
        };
        let sh = sections
            .section(object::SectionIndex(idx))
            .map_err(|e| e.to_string())?;
        if sh.sh_flags(LE).0 & elf::SHF_COMPRESSED.0 != 0 {
            return Err(format!("{} is compressed", id.name()));
        }
        let bytes = sh.data(LE, data).map_err(|e| e.to_string())?;
        let rela = sections
            .iter()
            .find(|r| r.sh_type(LE) == elf::SHT_RELA && r.sh_info(LE) as usize == idx);
        let Some(rela) = rela else {
            return Ok(Cow::Borrowed(bytes));
        };
        let (relas, _) = rela
            .rela(LE, data)
            .map_err(|e| e.to_string())?
            .ok_or("relocation section without content")?;
        let mut out = bytes.to_vec();
        for r in relas {
            let sym_index = object::SymbolIndex(r.r_sym(LE, false) as usize);
            let sym = symtab.symbol(sym_index).map_err(|e| e.to_string())?;
            let s = if sym.st_shndx(LE) == elf::SHN_ABS {
                sym.st_value(LE)
            } else {
                match symtab.symbol_section(LE, sym, sym_index) {
                    Ok(Some(sec)) => section_addr(sec.0)
                        .unwrap_or(0)
                        .wrapping_add(sym.st_value(LE)),
                    _ => 0,
                }
            };
            let value = s.wrapping_add(r.r_addend(LE) as u64);
            let at = usize::try_from(r.r_offset(LE)).map_err(|e| e.to_string())?;
            // Offsets in a thread's TLS block: the symbol's offset in its section.
            let dtpoff = sym.st_value(LE).wrapping_add(r.r_addend(LE) as u64);
            let (width, v) = match r.r_type(LE, false) {
                t if t == elf::R_X86_64_64 => (8, value),
                t if t == elf::R_X86_64_32 || t == elf::R_X86_64_32S => (4, value),
                t if t == elf::R_X86_64_DTPOFF32 => (4, dtpoff),
                t if t == elf::R_X86_64_DTPOFF64 => (8, dtpoff),
                _ => continue,
            };
            let dst = at
                .checked_add(width)
                .and_then(|end| out.get_mut(at..end))
                .ok_or_else(|| format!("relocation at {at:#x} is outside {}", id.name()))?;
            dst.copy_from_slice(&v.to_le_bytes()[..width]);
        }
        Ok(Cow::Owned(out))
    };
    let owned = gimli::DwarfSections::load(load)?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let mut table = LineTable::default();
    let mut file_ids: rustc_hash::FxHashMap<String, u32> = Default::default();
    let mut units = dwarf.units();
    let err = |e: gimli::Error| e.to_string();
    while let Some(header) = units.next().map_err(err)? {
        let unit = dwarf.unit(header).map_err(err)?;
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let comp_dir = unit
            .comp_dir
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut rows = program.rows();
        // (file index in this program) → our file id
        let mut local: rustc_hash::FxHashMap<u64, u32> = Default::default();
        while let Some((h, row)) = rows.next_row().map_err(err)? {
            if row.end_sequence() {
                continue;
            }
            let Some(line) = row.line() else { continue };
            let fid = match local.get(&row.file_index()) {
                Some(f) => *f,
                None => {
                    let mut path = String::new();
                    if let Some(file) = row.file(h) {
                        let dir = file
                            .directory(h)
                            .and_then(|d| dwarf.attr_string(&unit, d).ok())
                            .map(|d| d.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let name = dwarf
                            .attr_string(&unit, file.path_name())
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let mut p = std::path::PathBuf::from(&comp_dir);
                        p.push(dir);
                        p.push(name);
                        path = p.to_string_lossy().into_owned();
                    }
                    let next = table.files.len() as u32;
                    let id = *file_ids.entry(path.clone()).or_insert_with(|| {
                        table.files.push(path);
                        next
                    });
                    local.insert(row.file_index(), id);
                    id
                }
            };
            table.rows.push(LineRow {
                addr: row.address(),
                line: u32::try_from(line.get()).unwrap_or(u32::MAX),
                file: fid,
            });
        }
    }
    table.rows.sort_by_key(|r| r.addr);
    Ok(table)
}

//! Line tables of an input object at the unit's final addresses, for jitdump.
//!
//! DWARF in a relocatable object is itself relocatable: addresses in `.debug_line` and
//! `.debug_info`, and offsets into the string sections, are relocations against section symbols.
//! Each debug section is copied and its `.rela` section applied with the final address of every
//! loaded section (0 for the rest), then gimli reads the result. (gimli's `RelocateReader` could
//! read through the relocations instead of a copy, but it needs them in a map by offset: a copy
//! patched in place is simpler and as fast for the few sections a line table needs.)

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, Rela, SectionHeader, SectionTable, Sym, SymbolTable};
use object::LittleEndian as LE;
use rustc_hash::FxHashMap;
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

    /// The id of `path` in [`LineTable::files`], added if it is new.
    fn file_id(&mut self, ids: &mut FxHashMap<String, u32>, path: String) -> u32 {
        let next = self.files.len() as u32;
        *ids.entry(path).or_insert_with_key(|path| {
            self.files.push(path.clone());
            next
        })
    }
}

/// An ELF input whose debug sections are read at final addresses.
struct Input<'d, 'f> {
    data: &'d [u8],
    sections: SectionTable<'d, FileHeader64<LE>>,
    symtab: SymbolTable<'d, FileHeader64<LE>>,
    /// Final address of each loaded section, by ELF index.
    section_addr: &'f dyn Fn(usize) -> Option<u64>,
}

impl<'d> Input<'d, '_> {
    fn section_index(&self, name: &str) -> Option<usize> {
        self.sections
            .enumerate()
            .find(|(_, sh)| self.sections.section_name(LE, sh).ok() == Some(name.as_bytes()))
            .map(|(i, _)| i.0)
    }

    /// The section `id` with its relocations applied (empty if the input has none).
    fn debug_section(&self, id: gimli::SectionId) -> Result<Cow<'d, [u8]>, String> {
        let Some(index) = self.section_index(id.name()) else {
            return Ok(Cow::Borrowed(&[][..]));
        };
        let sh = self
            .sections
            .section(object::SectionIndex(index))
            .map_err(|e| e.to_string())?;
        if sh.sh_flags(LE).0 & elf::SHF_COMPRESSED.0 != 0 {
            return Err(format!("{} is compressed", id.name()));
        }
        let bytes = sh.data(LE, self.data).map_err(|e| e.to_string())?;
        let rela = self
            .sections
            .iter()
            .find(|r| r.sh_type(LE) == elf::SHT_RELA && r.sh_info(LE) as usize == index);
        let Some(rela) = rela else {
            return Ok(Cow::Borrowed(bytes));
        };
        let (relas, _) = rela
            .rela(LE, self.data)
            .map_err(|e| e.to_string())?
            .ok_or("relocation section without content")?;
        let mut out = bytes.to_vec();
        for r in relas {
            self.apply(&mut out, r)
                .map_err(|why| format!("{}: {why}", id.name()))?;
        }
        Ok(Cow::Owned(out))
    }

    /// Apply `r` to `section` (the relocations DWARF uses; others are left alone).
    fn apply(&self, section: &mut [u8], r: &elf::Rela64<LE>) -> Result<(), String> {
        let at = r.r_offset(LE);
        let sym_index = object::SymbolIndex(r.r_sym(LE, false) as usize);
        let sym = self.symtab.symbol(sym_index).map_err(|e| e.to_string())?;
        let s = if sym.st_shndx(LE) == elf::SHN_ABS {
            sym.st_value(LE)
        } else {
            match self.symtab.symbol_section(LE, sym, sym_index) {
                Ok(Some(sec)) => (self.section_addr)(sec.0)
                    .unwrap_or(0)
                    .wrapping_add(sym.st_value(LE)),
                _ => 0,
            }
        };
        let addend = r.r_addend(LE) as u64;
        // Offsets in a thread's TLS block: the symbol's offset in its section.
        let dtpoff = sym.st_value(LE).wrapping_add(addend);
        let (width, value) = match r.r_type(LE, false) {
            t if t == elf::R_X86_64_64 => (8, s.wrapping_add(addend)),
            t if t == elf::R_X86_64_32 || t == elf::R_X86_64_32S => (4, s.wrapping_add(addend)),
            t if t == elf::R_X86_64_DTPOFF32 => (4, dtpoff),
            t if t == elf::R_X86_64_DTPOFF64 => (8, dtpoff),
            _ => return Ok(()),
        };
        let dst = usize::try_from(at)
            .ok()
            .and_then(|at| section.get_mut(at..at.checked_add(width)?))
            .ok_or_else(|| format!("relocation at {at:#x} is outside the section"))?;
        dst.copy_from_slice(&value.to_le_bytes()[..width]);
        Ok(())
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
    let input = Input {
        data,
        sections,
        symtab,
        section_addr,
    };
    if input.section_index(".debug_line").is_none() {
        return Ok(LineTable::default());
    }
    let owned = gimli::DwarfSections::load(|id| input.debug_section(id))?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    rows(&dwarf).map_err(|e| e.to_string())
}

type Dwarf<'d> = gimli::Dwarf<gimli::EndianSlice<'d, gimli::LittleEndian>>;
type Unit<'d> = gimli::Unit<gimli::EndianSlice<'d, gimli::LittleEndian>>;

/// The rows of every line program of `dwarf`, sorted by address.
fn rows(dwarf: &Dwarf) -> gimli::Result<LineTable> {
    let mut table = LineTable::default();
    let mut file_ids: FxHashMap<String, u32> = FxHashMap::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let mut rows = program.rows();
        // (file index in this program) → its id in `table`
        let mut local: FxHashMap<u64, u32> = FxHashMap::default();
        while let Some((h, row)) = rows.next_row()? {
            let Some(line) = row.line().filter(|_| !row.end_sequence()) else {
                continue;
            };
            let file = match local.get(&row.file_index()) {
                Some(f) => *f,
                None => {
                    let id = table.file_id(&mut file_ids, file_path(dwarf, &unit, h, row));
                    local.insert(row.file_index(), id);
                    id
                }
            };
            table.rows.push(LineRow {
                addr: row.address(),
                line: u32::try_from(line.get()).unwrap_or(u32::MAX),
                file,
            });
        }
    }
    table.rows.sort_by_key(|r| r.addr);
    Ok(table)
}

/// The path of the file of `row`: the unit's compilation directory, the file's directory and its
/// name (each left out when it cannot be read).
fn file_path(
    dwarf: &Dwarf,
    unit: &Unit,
    header: &gimli::LineProgramHeader<gimli::EndianSlice<gimli::LittleEndian>>,
    row: &gimli::LineRow,
) -> String {
    let Some(file) = row.file(header) else {
        return String::new();
    };
    let string = |attr| {
        dwarf
            .attr_string(unit, attr)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut path = std::path::PathBuf::new();
    if let Some(dir) = &unit.comp_dir {
        path.push(&*dir.to_string_lossy());
    }
    if let Some(dir) = file.directory(header) {
        path.push(string(dir));
    }
    path.push(string(file.path_name()));
    path.to_string_lossy().into_owned()
}

//! In-memory ELF objects for gdb's JIT interface.
//!
//! gdb reads each registered object as if it were a file loaded at the addresses its section
//! headers say (it takes `sh_addr` of every `SHF_ALLOC` section as absolute). So each input
//! object is rewritten, keeping its section indices, with:
//!
//! - `sh_addr` of every loaded section set to where kiln put it. Symbols of a relocatable object
//!   are section relative, so every function then has its final address — objects with only a
//!   symbol table (Debian's archives) included: gdb names their functions in `bt` and can break
//!   on them. gdb applies `.rela.debug_*` itself for relocatable objects (with the patched
//!   section addresses; checked with gdb 13 on DWARF 5 from gcc 12), so DWARF needs no
//!   rewriting: `bt` shows file:line where it exists.
//! - code and data sections turned into `SHT_NOBITS` (gdb reads code from the process) and
//!   their relocations dropped: a copy costs its symbol table and DWARF, not its code.
//! - sections kiln did not load (dead-stripped, discarded COMDAT copies) no longer `SHF_ALLOC`,
//!   and their named symbols undefined, so gdb does not place them at address 0.
//! - `.eh_frame` replaced by this input's final (relocated, dead-stripped) records at their final
//!   address: the input's own section no longer matches the code once FDEs of dead functions are
//!   gone, and gdb unwinds JIT'd frames with it.
//! - COMDAT groups removed (kiln already chose the copies; bfd rejects a group whose members'
//!   relocations are gone).
//!
//! What kiln synthesizes itself (stubs, GOT, `atexit` glue, COMMON symbols) has no input bytes;
//! it gets a small object of its own with `SHT_NOBITS` sections at their addresses and a symbol
//! table (stubs are named `TARGET@stub`).

use super::Unit;
use crate::graph::*;
use kiln_target::MemProt;
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::LittleEndian as LE;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;

/// One object per input that has live code or data, in input order.
pub(crate) fn unit_objects(u: &Unit) -> Vec<Vec<u8>> {
    let g = u.g;
    let ranges = u.section_ranges();
    let mut live = vec![false; g.inputs.len()];
    for b in g.blocks.iter().filter(|b| b.live) {
        if let Some(l) = live.get_mut(g.sections[b.section.idx()].input.idx()) {
            *l = true;
        }
    }
    let mut out = Vec::new();
    for (i, inp) in g.inputs.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let input = InputId(i as u32);
        let made = if inp.data.is_empty() {
            synthesize(u, input)
        } else {
            patched_copy(u, input, &ranges)
        };
        match made {
            Ok(o) => out.push(o),
            Err(why) => tracing::warn!("no debug object for gdb for {}: {why}", inp.name),
        }
    }
    out
}

fn is_eh_frame(name: &[u8], sh_type: elf::SectionType) -> bool {
    sh_type == elf::SHT_X86_64_UNWIND || name == b".eh_frame"
}

fn patched_copy(
    u: &Unit,
    input: InputId,
    ranges: &FxHashMap<(InputId, u32), (u64, u64)>,
) -> Result<Vec<u8>, String> {
    let data = u.g.inputs[input.idx()].data;
    let header = FileHeader64::<LE>::parse(data).map_err(|e| e.to_string())?;
    let sections = header.sections(LE, data).map_err(|e| e.to_string())?;
    let shoff = usize::try_from(header.e_shoff(LE)).map_err(|e| e.to_string())?;
    if usize::from(header.e_shentsize(LE)) != SHDR_SIZE {
        return Err("unexpected section header size".into());
    }
    let ehdr_size = usize::from(header.e_ehsize(LE)).max(64);
    let original_header = |i: usize| -> Result<[u8; SHDR_SIZE], String> {
        let at = i.checked_mul(SHDR_SIZE).and_then(|o| o.checked_add(shoff));
        at.and_then(|at| data.get(at..at.checked_add(SHDR_SIZE)?))
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("section header {i} lies outside the object"))
    };
    let n = sections.len();
    let mut headers = (0..n).map(original_header).collect::<Result<Vec<_>, _>>()?;
    // What each section becomes: its content is kept (`Some(bytes)`) or not.
    let mut content: Vec<Option<Cow<[u8]>>> = vec![None; n];
    let mut dropped = vec![false; n];
    let mut keep_relocs = vec![false; n];
    for (i, sh) in sections.enumerate() {
        let (i, flags, ty) = (i.0, sh.sh_flags(LE).0, sh.sh_type(LE));
        let h = &mut headers[i];
        let name = sections.section_name(LE, sh).unwrap_or(b"");
        // COMDAT groups are gone: kiln chose the copies (bfd rejects a group whose member
        // relocations were dropped).
        h[8..16].copy_from_slice(&(flags & !elf::SHF_GROUP.0).to_le_bytes());
        if ty == elf::SHT_GROUP {
            h[4..8].copy_from_slice(&elf::SHT_NULL.0.to_le_bytes());
            continue;
        }
        if flags & elf::SHF_ALLOC.0 == 0 {
            if ty == elf::SHT_RELA || ty == elf::SHT_REL {
                continue; // decided below, once the sections they relocate are known
            }
            // Symbols, strings, DWARF, notes: kept as they are.
            content[i] = (ty != elf::SHT_NOBITS && ty != elf::SHT_NULL)
                .then(|| sh.data(LE, data).map(Cow::Borrowed))
                .transpose()
                .map_err(|_| format!("section {i} lies outside the object"))?;
            keep_relocs[i] = true;
            continue;
        }
        let range = ranges.get(&(input, i as u32)).copied();
        if is_eh_frame(name, ty) {
            match range.and_then(|(lo, hi)| Some((lo, u.bytes(lo, hi - lo)?))) {
                Some((lo, bytes)) => {
                    // The final records: relocated, and only those of live functions.
                    h[16..24].copy_from_slice(&lo.to_le_bytes());
                    h[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
                    content[i] = Some(Cow::Borrowed(bytes));
                }
                None => {
                    h[4..8].copy_from_slice(&elf::SHT_NULL.0.to_le_bytes());
                    dropped[i] = true;
                }
            }
            continue;
        }
        // Code and data: gdb reads them from the process, so only the header stays.
        h[4..8].copy_from_slice(&elf::SHT_NOBITS.0.to_le_bytes());
        match range {
            Some((lo, _)) => h[16..24].copy_from_slice(&lo.to_le_bytes()),
            None => {
                let flags = flags & !(elf::SHF_ALLOC.0 | elf::SHF_GROUP.0);
                h[8..16].copy_from_slice(&flags.to_le_bytes());
                h[16..24].copy_from_slice(&0u64.to_le_bytes());
                dropped[i] = true;
            }
        }
    }
    // Relocations of DWARF stay (gdb applies them with the section addresses above); those of
    // code, data and `.eh_frame` are already applied in memory.
    for (i, sh) in sections.enumerate() {
        let (i, ty) = (i.0, sh.sh_type(LE));
        if ty != elf::SHT_RELA && ty != elf::SHT_REL {
            continue;
        }
        let target = sh.sh_info(LE) as usize;
        if keep_relocs.get(target).copied().unwrap_or(false)
            && sh.sh_flags(LE).0 & elf::SHF_ALLOC.0 == 0
        {
            content[i] =
                Some(Cow::Borrowed(sh.data(LE, data).map_err(|_| {
                    format!("section {i} lies outside the object")
                })?));
        } else {
            headers[i][4..8].copy_from_slice(&elf::SHT_NULL.0.to_le_bytes());
        }
    }
    // Named symbols of sections that were not loaded would otherwise sit near address 0.
    let any_dropped = dropped.iter().any(|d| *d);
    if let (true, Ok(symtab)) = (any_dropped, sections.symbols(LE, data, elf::SHT_SYMTAB)) {
        let si = symtab.section().0;
        let mut syms = content
            .get_mut(si)
            .and_then(Option::take)
            .ok_or("no symbol table content")?
            .into_owned();
        for (idx, sym) in symtab.enumerate() {
            if sym.st_type() == elf::STT_SECTION || sym.st_name(LE) == 0 {
                continue;
            }
            let Ok(Some(sec)) = symtab.symbol_section(LE, sym, idx) else {
                continue;
            };
            if dropped.get(sec.0).copied().unwrap_or(false) {
                let at = idx.0.saturating_mul(SYM_SIZE);
                let e = syms
                    .get_mut(at..at.saturating_add(SYM_SIZE))
                    .ok_or_else(|| format!("symbol {} is outside the symbol table", idx.0))?;
                e[4] = (sym.st_bind().0 << 4) | elf::STT_NOTYPE.0;
                e[6..8].copy_from_slice(&elf::SHN_UNDEF.0.to_le_bytes());
                e[8..24].fill(0);
            }
        }
        content[si] = Some(Cow::Owned(syms));
    }
    // Write: the ELF header, the kept contents, the section headers.
    let size: usize = content.iter().flatten().map(|c| c.len() + 8).sum();
    let mut out = Vec::with_capacity(ehdr_size + size + n * SHDR_SIZE);
    out.extend_from_slice(data.get(..ehdr_size).ok_or("truncated ELF header")?);
    for (i, c) in content.iter().enumerate() {
        let h = &mut headers[i];
        match c {
            Some(bytes) => {
                out.resize(out.len().next_multiple_of(8), 0);
                h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            None => h[24..32].copy_from_slice(&0u64.to_le_bytes()),
        }
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let new_shoff = out.len() as u64;
    out[0x28..0x30].copy_from_slice(&new_shoff.to_le_bytes()); // e_shoff
    for h in &headers {
        out.extend_from_slice(h);
    }
    Ok(out)
}

/// Builds strings for a string table (offset 0 is the empty name).
struct StrTab(Vec<u8>);

impl StrTab {
    fn new() -> Self {
        StrTab(vec![0])
    }
    fn add(&mut self, s: &[u8]) -> u32 {
        let at = self.0.len() as u32;
        self.0.extend_from_slice(s);
        self.0.push(0);
        at
    }
}

struct SynthSymbol {
    name: Vec<u8>,
    /// ELF section index.
    shndx: u16,
    value: u64,
    size: u64,
    func: bool,
    global: bool,
}

/// A relocatable object describing what kiln made for the unit: `SHT_NOBITS` sections at their
/// addresses and a symbol table.
fn synthesize(u: &Unit, input: InputId) -> Result<Vec<u8>, String> {
    let g = u.g;
    // Graph section → (lo, hi) of its live blocks.
    let mut secs: FxHashMap<SectionId, (u64, u64)> = FxHashMap::default();
    for b in g.blocks.iter().filter(|b| b.live) {
        let s = &g.sections[b.section.idx()];
        if s.input != input || (s.kind == SectionKind::Tls && b.is_zero_fill()) {
            continue;
        }
        let e = secs.entry(b.section).or_insert((u64::MAX, 0));
        e.0 = e.0.min(b.addr);
        e.1 = e.1.max(b.addr + b.size());
    }
    let mut order: Vec<(SectionId, u64, u64)> =
        secs.into_iter().map(|(s, (lo, hi))| (s, lo, hi)).collect();
    order.sort_unstable_by_key(|&(s, lo, _)| (lo, s));
    if order.len() > 0xff00 - 4 {
        return Err("too many sections".into());
    }
    let elf_index: FxHashMap<SectionId, (u16, u64)> = order
        .iter()
        .enumerate()
        .map(|(i, &(s, lo, _))| (s, (i as u16 + 1, lo)))
        .collect();
    let mut syms = Vec::new();
    for s in &g.symbols {
        let SymbolDef::Defined { block, offset } = s.def else {
            continue;
        };
        let b = &g.blocks[block.idx()];
        let Some(&(shndx, lo)) = elf_index.get(&b.section) else {
            continue;
        };
        if s.name.is_empty() || s.tls || !b.live {
            continue;
        }
        syms.push(SynthSymbol {
            name: s.name.to_vec(),
            shndx,
            value: b.addr + offset - lo,
            size: s.size,
            func: s.callable || g.sections[b.section.idx()].prot == MemProt::ReadExec,
            global: s.visibility != Visibility::Local,
        });
    }
    for &(target, stub) in u.stubs {
        let SymbolDef::Defined { block, offset } = g.symbols[stub.idx()].def else {
            continue;
        };
        let b = &g.blocks[block.idx()];
        let Some(&(shndx, lo)) = elf_index.get(&b.section) else {
            continue;
        };
        syms.push(SynthSymbol {
            name: format!("{}@stub", g.name_of(target)).into_bytes(),
            shndx,
            value: b.addr + offset - lo,
            size: g.arch.templates().stub_size,
            func: true,
            global: false,
        });
    }
    // ELF wants the local symbols first; `sh_info` of .symtab is the first global's index.
    syms.sort_by_key(|s| s.global);
    let first_global = 1 + syms.iter().take_while(|s| !s.global).count();

    let mut shstr = StrTab::new();
    let mut strtab = StrTab::new();
    let mut symtab = vec![0u8; SYM_SIZE];
    for s in &syms {
        let mut e = [0u8; SYM_SIZE];
        e[0..4].copy_from_slice(&strtab.add(&s.name).to_le_bytes());
        let bind = if s.global {
            elf::STB_GLOBAL
        } else {
            elf::STB_LOCAL
        };
        let ty = if s.func {
            elf::STT_FUNC
        } else {
            elf::STT_OBJECT
        };
        e[4] = (bind.0 << 4) | ty.0;
        e[6..8].copy_from_slice(&s.shndx.to_le_bytes());
        e[8..16].copy_from_slice(&s.value.to_le_bytes());
        e[16..24].copy_from_slice(&s.size.to_le_bytes());
        symtab.extend_from_slice(&e);
    }
    // Section headers: null, the unit's sections, .symtab, .strtab, .shstrtab.
    let mut headers: Vec<[u8; SHDR_SIZE]> = vec![[0; SHDR_SIZE]];
    let header = |name: u32,
                  ty: u32,
                  flags: u64,
                  addr: u64,
                  offset: u64,
                  size: u64,
                  link: u32,
                  info: u32,
                  align: u64,
                  entsize: u64| {
        let mut h = [0u8; SHDR_SIZE];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&offset.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[44..48].copy_from_slice(&info.to_le_bytes());
        h[48..56].copy_from_slice(&align.to_le_bytes());
        h[56..64].copy_from_slice(&entsize.to_le_bytes());
        h
    };
    for &(s, lo, hi) in &order {
        let sec = &g.sections[s.idx()];
        let flags = elf::SHF_ALLOC.0
            | match sec.prot {
                MemProt::ReadExec => elf::SHF_EXECINSTR.0,
                MemProt::ReadWrite => elf::SHF_WRITE.0,
                MemProt::Read => 0,
            };
        let name = shstr.add(sec.name);
        headers.push(header(
            name,
            elf::SHT_NOBITS.0,
            flags,
            lo,
            0,
            hi - lo,
            0,
            0,
            1,
            0,
        ));
    }
    let ehdr_size = 64usize;
    let symtab_off = ehdr_size;
    let strtab_off = symtab_off + symtab.len();
    let symtab_index = headers.len() as u32;
    let n = shstr.add(b".symtab");
    headers.push(header(
        n,
        elf::SHT_SYMTAB.0,
        0,
        0,
        symtab_off as u64,
        symtab.len() as u64,
        symtab_index + 1,
        first_global as u32,
        8,
        SYM_SIZE as u64,
    ));
    let n = shstr.add(b".strtab");
    headers.push(header(
        n,
        elf::SHT_STRTAB.0,
        0,
        0,
        strtab_off as u64,
        strtab.0.len() as u64,
        0,
        0,
        1,
        0,
    ));
    let n = shstr.add(b".shstrtab");
    let shstr_off = strtab_off + strtab.0.len();
    let shstrndx = headers.len() as u16;
    headers.push(header(
        n,
        elf::SHT_STRTAB.0,
        0,
        0,
        shstr_off as u64,
        (shstr.0.len()) as u64,
        0,
        0,
        1,
        0,
    ));
    // The last header's size is final only now that its own name is in the table.
    let last = headers.len() - 1;
    headers[last][32..40].copy_from_slice(&(shstr.0.len() as u64).to_le_bytes());
    let shoff = (shstr_off + shstr.0.len()).next_multiple_of(8);

    let mut out = Vec::with_capacity(shoff + headers.len() * SHDR_SIZE);
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&elf::ET_REL.0.to_le_bytes());
    out.extend_from_slice(&elf::EM_X86_64.0.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
    out.extend_from_slice(&(shoff as u64).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(ehdr_size as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // e_phentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    out.extend_from_slice(&shstrndx.to_le_bytes());
    debug_assert_eq!(out.len(), ehdr_size);
    out.extend_from_slice(&symtab);
    out.extend_from_slice(&strtab.0);
    out.extend_from_slice(&shstr.0);
    out.resize(shoff, 0);
    for h in &headers {
        out.extend_from_slice(h);
    }
    Ok(out)
}

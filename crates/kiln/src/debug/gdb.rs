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
//!
//! How: an input's copy starts from its own headers (`object::elf` structures, changed field by
//! field and written with `object::pod`), laid out first and written second: it keeps the input's
//! section indices and string tables, which `object::write::elf::Writer` would build anew. Kiln's
//! own object has neither, and is written the same way (see [`write_synthesized`] for why not
//! with that writer).

use super::Unit;
use crate::graph::*;
use kiln_target::MemProt;
use object::elf::{self, FileHeader64, SectionHeader64, Sym64};
use object::pod;
use object::read::elf::{FileHeader, SectionHeader, SectionTable, Sym};
use object::LittleEndian as LE;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

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

/// One section of an input as its gdb copy has it.
struct CopiedSection<'d> {
    /// The input's header, changed; `sh_offset` (and `sh_size` of kept content) is set when the
    /// copy is laid out.
    header: SectionHeader64<LE>,
    /// The bytes the copy holds for it; None for a header alone.
    content: Option<Cow<'d, [u8]>>,
    /// An allocated section kiln did not load: its named symbols become undefined.
    unloaded: bool,
    /// A section whose relocations the copy keeps (one gdb reads but kiln did not load: DWARF).
    keeps_relocations: bool,
}

fn outside(index: usize) -> String {
    format!("section {index} lies outside the object")
}

/// A copy of `input` with its sections at their final addresses (see the module documentation).
fn patched_copy(
    u: &Unit,
    input: InputId,
    ranges: &FxHashMap<(InputId, u32), (u64, u64)>,
) -> Result<Vec<u8>, String> {
    let data = u.g.inputs[input.idx()].data;
    let header = FileHeader64::<LE>::parse(data).map_err(|e| e.to_string())?;
    let sections = header.sections(LE, data).map_err(|e| e.to_string())?;
    let mut copied = Vec::with_capacity(sections.len());
    for (index, sh) in sections.enumerate() {
        let name = sections.section_name(LE, sh).unwrap_or(b"");
        let at = ranges.get(&(input, index.0 as u32)).copied();
        copied.push(copy_section(u, data, index.0, name, sh, at)?);
    }
    keep_debug_relocations(&sections, data, &mut copied)?;
    undefine_unloaded_symbols(&sections, data, &mut copied)?;
    Ok(write_copy(header, &mut copied))
}

/// What the copy makes of section `index` (`sh`, named `name`), loaded at `at` (its lowest
/// address and end) if kiln loaded it. Relocation sections are decided later, by
/// [`keep_debug_relocations`].
fn copy_section<'d>(
    u: &'d Unit,
    data: &'d [u8],
    index: usize,
    name: &[u8],
    sh: &SectionHeader64<LE>,
    at: Option<(u64, u64)>,
) -> Result<CopiedSection<'d>, String> {
    let (flags, ty) = (sh.sh_flags(LE).0, sh.sh_type(LE));
    let mut c = CopiedSection {
        header: *sh,
        content: None,
        unloaded: false,
        keeps_relocations: false,
    };
    let h = &mut c.header;
    // COMDAT groups are gone: kiln chose the copies (bfd rejects a group whose member
    // relocations were dropped).
    h.sh_flags
        .set(LE, elf::SectionFlags(flags & !elf::SHF_GROUP.0));
    if ty == elf::SHT_GROUP {
        h.sh_type.set(LE, elf::SHT_NULL);
        return Ok(c);
    }
    if flags & elf::SHF_ALLOC.0 == 0 {
        if ty != elf::SHT_RELA && ty != elf::SHT_REL {
            // Symbols, strings, DWARF, notes: kept as they are.
            if ty != elf::SHT_NOBITS && ty != elf::SHT_NULL {
                let bytes = sh.data(LE, data).map_err(|_| outside(index))?;
                c.content = Some(Cow::Borrowed(bytes));
            }
            c.keeps_relocations = true;
        }
        return Ok(c);
    }
    if is_eh_frame(name, ty) {
        // The final records: relocated, and only those of live functions.
        match at.and_then(|(lo, hi)| Some((lo, u.bytes(lo, hi - lo)?))) {
            Some((lo, bytes)) => {
                h.sh_addr.set(LE, lo);
                c.content = Some(Cow::Borrowed(bytes));
            }
            None => {
                h.sh_type.set(LE, elf::SHT_NULL);
                c.unloaded = true;
            }
        }
        return Ok(c);
    }
    // Code and data: gdb reads them from the process, so only the header stays.
    h.sh_type.set(LE, elf::SHT_NOBITS);
    match at {
        Some((lo, _)) => h.sh_addr.set(LE, lo),
        None => {
            let flags = flags & !(elf::SHF_ALLOC.0 | elf::SHF_GROUP.0);
            h.sh_flags.set(LE, elf::SectionFlags(flags));
            h.sh_addr.set(LE, 0);
            c.unloaded = true;
        }
    }
    Ok(c)
}

/// Relocations of DWARF stay (gdb applies them with the section addresses of the copy); those
/// of code, data and `.eh_frame` are already applied in memory, so their sections become
/// `SHT_NULL`.
fn keep_debug_relocations<'d>(
    sections: &SectionTable<'d, FileHeader64<LE>>,
    data: &'d [u8],
    copied: &mut [CopiedSection<'d>],
) -> Result<(), String> {
    for (index, sh) in sections.enumerate() {
        let ty = sh.sh_type(LE);
        if ty != elf::SHT_RELA && ty != elf::SHT_REL {
            continue;
        }
        let target = sh.sh_info(LE) as usize;
        let keep = copied.get(target).is_some_and(|t| t.keeps_relocations)
            && sh.sh_flags(LE).0 & elf::SHF_ALLOC.0 == 0;
        let c = &mut copied[index.0];
        if keep {
            let bytes = sh.data(LE, data).map_err(|_| outside(index.0))?;
            c.content = Some(Cow::Borrowed(bytes));
        } else {
            c.header.sh_type.set(LE, elf::SHT_NULL);
        }
    }
    Ok(())
}

/// Named symbols of sections kiln did not load would otherwise sit near address 0: they become
/// undefined (binding kept, no type, no value).
fn undefine_unloaded_symbols<'d>(
    sections: &SectionTable<'d, FileHeader64<LE>>,
    data: &'d [u8],
    copied: &mut [CopiedSection<'d>],
) -> Result<(), String> {
    if !copied.iter().any(|c| c.unloaded) {
        return Ok(());
    }
    let Ok(symtab) = sections.symbols(LE, data, elf::SHT_SYMTAB) else {
        return Ok(());
    };
    let mut symbols: Vec<Sym64<LE>> = symtab.symbols().to_vec();
    for (index, sym) in symtab.enumerate() {
        if sym.st_type() == elf::STT_SECTION || sym.st_name(LE) == 0 {
            continue;
        }
        let Ok(Some(section)) = symtab.symbol_section(LE, sym, index) else {
            continue;
        };
        if copied.get(section.0).is_some_and(|c| c.unloaded) {
            let s = &mut symbols[index.0];
            s.st_info = elf::SymbolInfo::new(sym.st_bind(), elf::STT_NOTYPE);
            s.st_shndx.set(LE, elf::SHN_UNDEF);
            s.st_value.set(LE, 0);
            s.st_size.set(LE, 0);
        }
    }
    let c = copied
        .get_mut(symtab.section().0)
        .ok_or("no symbol table section")?;
    c.content = Some(Cow::Owned(pod::bytes_of_slice(&symbols).to_vec()));
    Ok(())
}

/// Lay out and write the copy: the input's file header, the kept contents (8-aligned), the
/// section headers.
fn write_copy(input_header: &FileHeader64<LE>, copied: &mut [CopiedSection]) -> Vec<u8> {
    let header_size = size_of::<FileHeader64<LE>>();
    let mut end = header_size;
    for c in copied.iter_mut() {
        let offset = match &c.content {
            Some(bytes) => {
                let at = end.next_multiple_of(8);
                end = at + bytes.len();
                c.header.sh_size.set(LE, bytes.len() as u64);
                at
            }
            None => 0,
        };
        c.header.sh_offset.set(LE, offset as u64);
    }
    let shoff = end.next_multiple_of(8);
    let mut header = *input_header;
    header.e_shoff.set(LE, shoff as u64);
    header.e_ehsize.set(LE, header_size as u16);
    // Program headers, if the input had any, are not copied.
    header.e_phoff.set(LE, 0);
    header.e_phnum.set(LE, 0);

    let mut out = Vec::with_capacity(shoff + copied.len() * size_of::<SectionHeader64<LE>>());
    out.extend_from_slice(pod::bytes_of(&header));
    for c in copied.iter() {
        if let Some(bytes) = &c.content {
            out.resize(c.header.sh_offset.get(LE) as usize, 0);
            out.extend_from_slice(bytes);
        }
    }
    out.resize(shoff, 0);
    for c in copied.iter() {
        out.extend_from_slice(pod::bytes_of(&c.header));
    }
    out
}

/// A section kiln made for the unit (stubs, GOT, ...): in its object, `SHT_NOBITS` at its
/// address.
struct SynthSection {
    id: SectionId,
    addr: u64,
    size: u64,
}

/// A symbol of kiln's object.
struct SynthSymbol<'g> {
    name: Cow<'g, [u8]>,
    /// Index into the object's [`SynthSection`]s.
    section: usize,
    /// Offset from the start of its section.
    value: u64,
    size: u64,
    func: bool,
    global: bool,
}

/// A relocatable object describing what kiln made for the unit: `SHT_NOBITS` sections at their
/// addresses and a symbol table.
fn synthesize(u: &Unit, input: InputId) -> Result<Vec<u8>, String> {
    let sections = synthesized_sections(u, input);
    // Section indices from 0xff00 on would need extended numbering; kiln makes a handful.
    if sections.len() > 0xff00 - 4 {
        return Err("too many sections".into());
    }
    let symbols = synthesized_symbols(u, &sections);
    write_synthesized(u.g, &sections, &symbols)
}

/// The sections of `input` (one of kiln's) with live blocks, by address: each spans its blocks.
/// (A unit has a handful of sections: a list searched in order, not a map.)
fn synthesized_sections(u: &Unit, input: InputId) -> Vec<SynthSection> {
    let g = u.g;
    let mut sections: Vec<SynthSection> = Vec::new();
    for b in g.blocks.iter().filter(|b| b.live) {
        let s = &g.sections[b.section.idx()];
        // `.tbss` blocks have no address (each thread has its own copy).
        if s.input != input || (s.kind == SectionKind::Tls && b.is_zero_fill()) {
            continue;
        }
        let (lo, hi) = (b.addr, b.addr + b.size());
        match sections.iter_mut().find(|x| x.id == b.section) {
            Some(x) => {
                let end = (x.addr + x.size).max(hi);
                x.addr = x.addr.min(lo);
                x.size = end - x.addr;
            }
            None => sections.push(SynthSection {
                id: b.section,
                addr: lo,
                size: hi - lo,
            }),
        }
    }
    sections.sort_unstable_by_key(|s| (s.addr, s.id));
    sections
}

/// The named symbols defined in `sections`, and every stub as `TARGET@stub`; locals first (ELF
/// wants them before the globals).
fn synthesized_symbols<'g>(u: &Unit<'g, '_>, sections: &[SynthSection]) -> Vec<SynthSymbol<'g>> {
    let g = u.g;
    // (section index, offset in it) of a live defined symbol in one of `sections`.
    let place = |def: SymbolDef| {
        let SymbolDef::Defined { block, offset } = def else {
            return None;
        };
        let b = &g.blocks[block.idx()];
        let section = sections
            .iter()
            .position(|s| s.id == b.section)
            .filter(|_| b.live)?;
        Some((section, b.addr + offset - sections[section].addr))
    };
    let mut symbols = Vec::new();
    for s in g.symbols.iter().filter(|s| !s.name.is_empty() && !s.tls) {
        let Some((section, value)) = place(s.def) else {
            continue;
        };
        let prot = g.sections[sections[section].id.idx()].prot;
        symbols.push(SynthSymbol {
            name: Cow::Borrowed(s.name),
            section,
            value,
            size: s.size,
            func: s.callable || prot == MemProt::ReadExec,
            global: s.visibility != Visibility::Local,
        });
    }
    for &(target, stub) in u.stubs {
        let Some((section, value)) = place(g.symbols[stub.idx()].def) else {
            continue;
        };
        symbols.push(SynthSymbol {
            name: Cow::Owned(format!("{}@stub", g.name_of(target)).into_bytes()),
            section,
            value,
            size: g.arch.templates().stub_size,
            func: true,
            global: false,
        });
    }
    symbols.sort_by_key(|s| s.global);
    symbols
}

/// The object: file header, `.symtab`, `.strtab`, `.shstrtab`, then the section headers (null,
/// the unit's sections, the three tables).
///
/// Written field by field with `object::elf`'s structures rather than with
/// `object::write::elf::Writer`: the writer sorts and deduplicates its string tables and indexes
/// section names in a map, which for the one or two sections and symbols of a JIT's unit cost
/// three times what the rest of the object does (12,000 instructions a unit, measured with
/// callgrind on `link_speed 20000 gdb`). Here names are appended as they come.
fn write_synthesized(
    g: &LinkGraph,
    sections: &[SynthSection],
    symbols: &[SynthSymbol],
) -> Result<Vec<u8>, String> {
    const SYM: usize = size_of::<Sym64<LE>>();
    const SHDR: usize = size_of::<SectionHeader64<LE>>();
    const TABLE_NAMES: [&[u8]; 3] = [b".symtab", b".strtab", b".shstrtab"];
    let (strtab, sym_names) = string_table(symbols.iter().map(|s| &*s.name));
    let section_name = |s: &SynthSection| g.sections[s.id.idx()].name;
    let (shstrtab, shstr_names) =
        string_table(sections.iter().map(section_name).chain(TABLE_NAMES));
    let (section_names, table_names) = shstr_names.split_at(sections.len());
    let [symtab_name, strtab_name, shstrtab_name] =
        [table_names[0], table_names[1], table_names[2]];

    let symtab_at = size_of::<FileHeader64<LE>>().next_multiple_of(8);
    let strtab_at = symtab_at + (1 + symbols.len()) * SYM;
    let shstrtab_at = strtab_at + strtab.len();
    let shoff = (shstrtab_at + shstrtab.len()).next_multiple_of(8);
    // Null, the unit's sections, .symtab, .strtab, .shstrtab.
    let shnum = 1 + sections.len() + 3;
    let symtab_index = (1 + sections.len()) as u32;
    let too_big = |what| format!("{what} does not fit an ELF field");
    let u16_of = |n: usize, what| u16::try_from(n).map_err(|_| too_big(what));

    let mut out = Vec::with_capacity(shoff + shnum * SHDR);
    let header = file_header(shoff, u16_of(shnum, "section count")?);
    out.extend_from_slice(pod::bytes_of(&header));
    out.resize(symtab_at, 0);

    out.extend_from_slice(pod::bytes_of(&zeroed::<Sym64<LE>>()));
    for (s, &name) in symbols.iter().zip(&sym_names) {
        let sym = symbol(s, name, u16_of(1 + s.section, "section index")?);
        out.extend_from_slice(pod::bytes_of(&sym));
    }
    out.extend_from_slice(&strtab);
    out.extend_from_slice(&shstrtab);
    out.resize(shoff, 0);

    let section_header = |name: u32, sh_type, flags: u64, addr: u64, offset: usize, size: u64| {
        let mut h = zeroed::<SectionHeader64<LE>>();
        h.sh_name.set(LE, name);
        h.sh_type.set(LE, sh_type);
        h.sh_flags.set(LE, elf::SectionFlags(flags));
        h.sh_addr.set(LE, addr);
        h.sh_offset.set(LE, offset as u64);
        h.sh_size.set(LE, size);
        h.sh_addralign.set(LE, 1);
        h
    };
    out.extend_from_slice(pod::bytes_of(&zeroed::<SectionHeader64<LE>>()));
    for (s, &name) in sections.iter().zip(section_names) {
        let flags = elf::SHF_ALLOC.0
            | match g.sections[s.id.idx()].prot {
                MemProt::ReadExec => elf::SHF_EXECINSTR.0,
                MemProt::ReadWrite => elf::SHF_WRITE.0,
                MemProt::Read => 0,
            };
        let h = section_header(name, elf::SHT_NOBITS, flags, s.addr, 0, s.size);
        out.extend_from_slice(pod::bytes_of(&h));
    }
    let symtab_size = ((1 + symbols.len()) * SYM) as u64;
    let mut symtab = section_header(symtab_name, elf::SHT_SYMTAB, 0, 0, symtab_at, symtab_size);
    // sh_link: the string table; sh_info: one past the last local symbol.
    let first_global = 1 + symbols.iter().take_while(|s| !s.global).count() as u32;
    symtab.sh_link.set(LE, symtab_index + 1);
    symtab.sh_info.set(LE, first_global);
    symtab.sh_entsize.set(LE, SYM as u64);
    symtab.sh_addralign.set(LE, 8);
    out.extend_from_slice(pod::bytes_of(&symtab));
    let strtab_size = strtab.len() as u64;
    let h = section_header(strtab_name, elf::SHT_STRTAB, 0, 0, strtab_at, strtab_size);
    out.extend_from_slice(pod::bytes_of(&h));
    let shstrtab_size = shstrtab.len() as u64;
    let h = section_header(
        shstrtab_name,
        elf::SHT_STRTAB,
        0,
        0,
        shstrtab_at,
        shstrtab_size,
    );
    out.extend_from_slice(pod::bytes_of(&h));
    Ok(out)
}

/// The file header of a relocatable x86-64 object whose `shnum` section headers start at `shoff`,
/// the last of them the section name table.
fn file_header(shoff: usize, shnum: u16) -> FileHeader64<LE> {
    let mut header = zeroed::<FileHeader64<LE>>();
    header.e_ident = elf::Ident {
        magic: elf::ELFMAG,
        class: elf::ELFCLASS64,
        data: elf::ELFDATA2LSB,
        version: elf::EV_CURRENT,
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        padding: [0; 7],
    };
    header.e_type.set(LE, elf::ET_REL);
    header.e_machine.set(LE, elf::EM_X86_64);
    header.e_version.set(LE, u32::from(elf::EV_CURRENT.0));
    header.e_shoff.set(LE, shoff as u64);
    header
        .e_ehsize
        .set(LE, size_of::<FileHeader64<LE>>() as u16);
    header
        .e_shentsize
        .set(LE, size_of::<SectionHeader64<LE>>() as u16);
    header.e_shnum.set(LE, shnum);
    header.e_shstrndx.set(LE, elf::SymbolSection(shnum - 1));
    header
}

/// The symbol table entry of `s`, named at `name` in the string table, in section `shndx`.
fn symbol(s: &SynthSymbol, name: u32, shndx: u16) -> Sym64<LE> {
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
    let mut sym = zeroed::<Sym64<LE>>();
    sym.st_name.set(LE, name);
    sym.st_info = elf::SymbolInfo::new(bind, ty);
    sym.st_shndx.set(LE, elf::SymbolSection(shndx));
    sym.st_value.set(LE, s.value);
    sym.st_size.set(LE, s.size);
    sym
}

/// A string table of `names` (the empty name first, then each name and its NUL as they come,
/// without sharing suffixes) and each name's offset in it.
fn string_table<'n>(names: impl Iterator<Item = &'n [u8]> + Clone) -> (Vec<u8>, Vec<u32>) {
    let len: usize = names.clone().map(|n| n.len() + 1).sum();
    let mut table = Vec::with_capacity(1 + len);
    table.push(0);
    let offsets = names
        .map(|n| {
            let at = table.len() as u32;
            table.extend_from_slice(n);
            table.push(0);
            at
        })
        .collect();
    (table, offsets)
}

/// An ELF structure with every field 0. (object's ELF structures are byte arrays: alignment 1,
/// and the largest, the file and section headers, are 64 bytes.)
fn zeroed<T: pod::Pod>() -> T {
    const ZEROS: [u8; 64] = [0; 64];
    pod::from_bytes::<T>(&ZEROS)
        .map(|(t, _)| *t)
        .expect("an ELF header of at most 64 bytes, alignment 1")
}

/// A registered gdb object after the code it describes moved: every allocated section's address
/// (`sh_addr`) translated. (The objects are relocatable: symbol values and DWARF are relative to
/// their sections, so the section addresses are all that names where code is.) `None` if the
/// bytes are not such an object.
pub(crate) fn relocate_object(bytes: &[u8], translate: &dyn Fn(u64) -> u64) -> Option<Vec<u8>> {
    let header = FileHeader64::<LE>::parse(bytes).ok()?;
    let sections = header.sections(LE, bytes).ok()?;
    let shoff = usize::try_from(header.e_shoff(LE)).ok()?;
    let mut out = bytes.to_vec();
    for (i, sh) in sections.enumerate() {
        if sh.sh_flags(LE).0 & elf::SHF_ALLOC.0 == 0 || sh.sh_addr(LE) == 0 {
            continue;
        }
        let at = shoff.checked_add(i.0.checked_mul(std::mem::size_of::<SectionHeader64<LE>>())?)?;
        let end = at.checked_add(std::mem::size_of::<SectionHeader64<LE>>())?;
        let (moved, _) = pod::from_bytes_mut::<SectionHeader64<LE>>(out.get_mut(at..end)?).ok()?;
        moved.sh_addr.set(LE, translate(sh.sh_addr(LE)));
    }
    Some(out)
}

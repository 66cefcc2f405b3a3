//! Relocatable ELF x86-64 objects → LinkGraph.
//!
//! Same order as JITLink's ELFLinkGraphBuilder: sections (after COMDAT groups decide which are
//! kept), then symbols, then relocations, then `.eh_frame` is split into CIE/FDE blocks. Every
//! read is checked: malformed input gives an error with file, section and offset.

use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;
use object::elf::{self, FileHeader64, SectionHeader64};
use object::read::elf::{FileHeader, Rela, SectionHeader, SectionTable, Sym, SymbolTable};
use object::LittleEndian as LE;
use std::borrow::Cow;

type Sections<'a> = SectionTable<'a, FileHeader64<LE>, &'a [u8]>;
type Symbols<'a> = SymbolTable<'a, FileHeader64<LE>, &'a [u8]>;

const SHF_GNU_RETAIN: u64 = 0x20_0000;

/// Parse one relocatable object into `g`. `name` is used in messages (e.g. `libz.a(crc32.o)`).
pub fn parse_object<'a>(
    g: &mut LinkGraph<'a>,
    name: &str,
    data: &'a [u8],
    explicit: bool,
) -> Result<InputId> {
    let bad = |what: String| Error::malformed(name, None, None, what);
    let header = FileHeader64::<LE>::parse(data).map_err(|e| bad(format!("ELF header: {e}")))?;
    let endian = header
        .endian()
        .map_err(|e| bad(format!("ELF header: {e}")))?;
    if header.e_type(endian) != elf::ET_REL {
        return Err(bad("not a relocatable object (e_type is not ET_REL)".into()));
    }
    let machine = header.e_machine(endian).0;
    if machine != g.arch.elf_machine() {
        let what = match crate::arch::for_elf_machine(machine) {
            Some(a) => format!("a {} object in a {} link", a.name(), g.arch.name()),
            None => format!("machine {machine} (only x86-64 is supported)"),
        };
        return Err(Error::unsupported(name, None, None, what));
    }
    let sections = header
        .sections(endian, data)
        .map_err(|e| bad(format!("section headers: {e}")))?;
    let symtab = sections
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(|e| bad(format!("symbol table: {e}")))?;
    let input = g.add_input(name.to_string(), explicit);
    g.inputs[input.idx()].data = data;
    let mut p = ObjectParser {
        g,
        name,
        data,
        sections,
        symtab,
        input,
        discarded: Vec::new(),
        blocks: Vec::new(),
        syms: Vec::new(),
        eh_frames: Vec::new(),
    };
    p.groups()?;
    p.sections()?;
    p.symbols()?;
    p.relocations()?;
    Ok(input)
}

struct ObjectParser<'g, 'a> {
    g: &'g mut LinkGraph<'a>,
    name: &'g str,
    data: &'a [u8],
    sections: Sections<'a>,
    symtab: Symbols<'a>,
    input: InputId,
    /// Per section index: dropped because its COMDAT group lost.
    discarded: Vec<bool>,
    /// Per section index: its block.
    blocks: Vec<Option<BlockId>>,
    /// Per symbol index: its graph symbol.
    syms: Vec<Option<SymbolId>>,
    /// `.eh_frame` sections, split after relocations are read.
    eh_frames: Vec<usize>,
}

impl<'a> ObjectParser<'_, 'a> {
    fn section_name(&self, sh: &SectionHeader64<LE>) -> &'a [u8] {
        self.sections.section_name(LE, sh).unwrap_or(b"<bad name>")
    }

    fn sec_name_str(&self, index: usize) -> String {
        match self.sections.section(object::SectionIndex(index)) {
            Ok(sh) => String::from_utf8_lossy(self.section_name(sh)).into_owned(),
            Err(_) => format!("#{index}"),
        }
    }

    fn err_at(&self, section: usize, offset: Option<u64>, what: impl Into<String>) -> Error {
        Error::malformed(self.name, Some(&self.sec_name_str(section)), offset, what)
    }

    fn groups(&mut self) -> Result<()> {
        self.discarded = vec![false; self.sections.len()];
        for (i, sh) in self.sections.enumerate() {
            if sh.sh_type(LE) != elf::SHT_GROUP {
                continue;
            }
            let (flags, members) = sh
                .group(LE, self.data)
                .map_err(|e| self.err_at(i.0, None, format!("group: {e}")))?
                .ok_or_else(|| self.err_at(i.0, None, "group section has no content"))?;
            if flags.0 & elf::GRP_COMDAT.0 == 0 {
                continue;
            }
            let sig_sym = self
                .symtab
                .symbol(object::SymbolIndex(sh.sh_info(LE) as usize))
                .map_err(|e| self.err_at(i.0, None, format!("group signature symbol: {e}")))?;
            let sig = self
                .symtab
                .symbol_name(LE, sig_sym)
                .map_err(|e| self.err_at(i.0, None, format!("group signature name: {e}")))?;
            if self.g.comdats.contains_key(sig) {
                for m in members {
                    let m = m.get(LE) as usize;
                    match self.discarded.get_mut(m) {
                        Some(d) => *d = true,
                        None => {
                            return Err(self.err_at(
                                i.0,
                                None,
                                format!("group member {m} out of range"),
                            ))
                        }
                    }
                }
            } else {
                self.g.comdats.insert(sig, self.input);
            }
        }
        Ok(())
    }

    fn sections(&mut self) -> Result<()> {
        self.blocks = vec![None; self.sections.len()];
        for (i, sh) in self.sections.enumerate() {
            let i = i.0;
            let flags = sh.sh_flags(LE).0;
            if flags & elf::SHF_ALLOC.0 == 0 || self.discarded[i] {
                continue;
            }
            let ty = sh.sh_type(LE);
            let name = self.section_name(sh);
            if ty == elf::SHT_X86_64_UNWIND || name == b".eh_frame" {
                self.eh_frames.push(i);
                continue;
            }
            let kind = match ty {
                elf::SHT_PROGBITS
                | elf::SHT_NOBITS
                | elf::SHT_INIT_ARRAY
                | elf::SHT_FINI_ARRAY
                | elf::SHT_PREINIT_ARRAY => section_kind(name, flags),
                elf::SHT_NOTE => continue,
                elf::SHT_REL => {
                    return Err(Error::unsupported(
                        self.name,
                        Some(&String::from_utf8_lossy(name)),
                        None,
                        "SHT_REL relocations (x86-64 uses SHT_RELA)",
                    ))
                }
                _ => SectionKind::Regular,
            };
            if flags & elf::SHF_COMPRESSED.0 != 0 {
                return Err(Error::unsupported(
                    self.name,
                    Some(&String::from_utf8_lossy(name)),
                    None,
                    "compressed allocated section",
                ));
            }
            let align = sh.sh_addralign(LE).max(1);
            if !align.is_power_of_two() || align > (1 << 30) {
                return Err(self.err_at(
                    i,
                    None,
                    format!("alignment {align} is not a power of two"),
                ));
            }
            let content = if ty == elf::SHT_NOBITS {
                Content::Zero(sh.sh_size(LE))
            } else {
                let d = sh
                    .data(LE, self.data)
                    .map_err(|_| self.err_at(i, None, "section data lies outside the file"))?;
                Content::Bytes(Cow::Borrowed(d))
            };
            if matches!(content, Content::Zero(n) if n > (1 << 40)) {
                return Err(self.err_at(i, None, "section size is implausibly large"));
            }
            let prot = if kind == SectionKind::Tls {
                MemProt::Read
            } else if flags & elf::SHF_EXECINSTR.0 != 0 {
                MemProt::ReadExec
            } else if flags & elf::SHF_WRITE.0 != 0
                && !name.starts_with(b".data.rel.ro")
                && !is_init_fini(kind)
            {
                MemProt::ReadWrite
            } else {
                MemProt::Read
            };
            let retain = flags & SHF_GNU_RETAIN != 0 || is_init_fini(kind) || is_c_identifier(name);
            let sec = self.g.add_section(Section {
                name,
                prot,
                kind,
                input: self.input,
                retain,
                elf_index: i as u32,
            });
            self.blocks[i] = Some(self.g.add_block(sec, content, align));
        }
        Ok(())
    }

    fn symbols(&mut self) -> Result<()> {
        let n = self.symtab.len();
        self.syms = vec![None; n];
        let symtab_sec = self.symtab.section().0;
        for (idx, sym) in self.symtab.enumerate() {
            let idx = idx.0;
            if idx == 0 {
                continue;
            }
            let at = |what: String| {
                Error::malformed(
                    self.name,
                    Some(".symtab"),
                    Some((idx * std::mem::size_of::<elf::Sym64<LE>>()) as u64),
                    format!("symbol {idx}: {what}"),
                )
            };
            let _ = symtab_sec;
            let name = self
                .symtab
                .symbol_name(LE, sym)
                .map_err(|e| at(format!("name: {e}")))?;
            let ty = sym.st_type();
            let bind = sym.st_bind();
            if ty == elf::STT_FILE {
                continue;
            }
            let local = bind == elf::STB_LOCAL;
            // STB_GNU_UNIQUE (one copy per process of a template's static) merges like a weak
            // definition: every object that has it carries the same definition.
            let weak = bind == elf::STB_WEAK || bind == elf::STB_GNU_UNIQUE;
            let visibility = if local {
                Visibility::Local
            } else if matches!(sym.st_visibility(), elf::STV_HIDDEN | elf::STV_INTERNAL) {
                Visibility::Hidden
            } else {
                Visibility::Default
            };
            let callable = ty == elf::STT_FUNC;
            let tls = ty == elf::STT_TLS;
            let value = sym.st_value(LE);
            let size = sym.st_size(LE);
            let shndx = sym.st_shndx(LE);
            let def = if shndx == elf::SHN_UNDEF {
                None
            } else if shndx == elf::SHN_ABS {
                Some(SymbolDef::Absolute(value))
            } else if shndx == elf::SHN_COMMON {
                if (!value.is_power_of_two() && value != 0) || value > (1 << 30) {
                    return Err(at(format!(
                        "COMMON alignment {value} is not a power of two"
                    )));
                }
                Some(SymbolDef::Common {
                    size,
                    align: value.max(1),
                })
            } else {
                let sec = self
                    .symtab
                    .symbol_section(LE, sym, object::SymbolIndex(idx))
                    .map_err(|e| at(e.to_string()))?
                    .ok_or_else(|| at(format!("unsupported section index {shndx:#x}")))?
                    .0;
                if sec >= self.sections.len() {
                    return Err(at(format!("section index {sec} out of range")));
                }
                if self.discarded[sec] {
                    Some(SymbolDef::Discarded)
                } else if let Some(b) = self.blocks[sec] {
                    let bsize = self.g.blocks[b.idx()].size();
                    if value > bsize {
                        return Err(at(format!(
                            "value {value:#x} lies beyond the end of its section ({bsize:#x} bytes)"
                        )));
                    }
                    Some(SymbolDef::Defined {
                        block: b,
                        offset: value,
                    })
                } else {
                    // A symbol in a section kiln does not load (debug info, notes, eh_frame).
                    Some(SymbolDef::Discarded)
                }
            };
            let id =
                match (def, local) {
                    (Some(SymbolDef::Defined { block, .. }), true) if ty == elf::STT_SECTION => {
                        Some(self.g.add_anon(block, 0, self.input))
                    }
                    (None, true) => None,
                    (Some(def), true) => Some(self.g.add_symbol(Symbol {
                        name,
                        def,
                        size,
                        weak: false,
                        visibility,
                        callable,
                        tls,
                        input: self.input,
                        only_weak_refs: false,
                        ifunc: false,
                    })),
                    (None, false) => {
                        let id = self.g.global_ref(name, self.input, weak);
                        if visibility == Visibility::Hidden {
                            self.g.symbols[id.idx()].visibility = Visibility::Hidden;
                        }
                        Some(id)
                    }
                    // A definition in a losing COMDAT group: bind to the winner's copy.
                    (Some(SymbolDef::Discarded), false) => {
                        Some(self.g.global_ref(name, self.input, false))
                    }
                    (Some(def), false) => Some(self.g.define_global(
                        name, def, size, weak, visibility, callable, tls, self.input,
                    )),
                };
            if let (Some(id), true) = (id, ty == elf::STT_GNU_IFUNC) {
                // Only a definition makes a symbol an IFUNC (the winning one, for globals).
                let s = &mut self.g.symbols[id.idx()];
                if matches!(s.def, SymbolDef::Defined { .. }) && s.input == self.input {
                    s.ifunc = true;
                }
            }
            self.syms[idx] = id;
        }
        Ok(())
    }

    fn relocations(&mut self) -> Result<()> {
        let mut eh_relocs: Vec<(usize, Vec<Edge>)> = Vec::new();
        for (ri, sh) in self.sections.enumerate() {
            let ty = sh.sh_type(LE);
            if ty != elf::SHT_RELA && ty != elf::SHT_REL {
                continue;
            }
            let target = sh.sh_info(LE) as usize;
            if target >= self.sections.len() {
                return Err(self.err_at(
                    ri.0,
                    None,
                    format!("relocated section {target} out of range"),
                ));
            }
            let is_eh = self.eh_frames.contains(&target);
            let block = self.blocks[target];
            if block.is_none() && !is_eh {
                continue; // relocations of debug info, or of a discarded group member
            }
            if ty == elf::SHT_REL {
                return Err(Error::unsupported(
                    self.name,
                    Some(&self.sec_name_str(ri.0)),
                    None,
                    "SHT_REL relocations (x86-64 objects use SHT_RELA)",
                ));
            }
            let (relas, _) = sh
                .rela(LE, self.data)
                .map_err(|e| self.err_at(ri.0, None, format!("relocations: {e}")))?
                .ok_or_else(|| self.err_at(ri.0, None, "relocation section has no content"))?;
            if let Some(b) = block {
                if self.g.blocks[b.idx()].is_zero_fill() && !relas_empty(sh) {
                    return Err(self.err_at(
                        target,
                        None,
                        "relocations apply to a section without content (SHT_NOBITS)",
                    ));
                }
            }
            let target_size = match block {
                Some(b) => self.g.blocks[b.idx()].size(),
                None => self
                    .sections
                    .section(object::SectionIndex(target))
                    .map_or(0, |s| s.sh_size(LE)),
            };
            let mut edges = Vec::with_capacity(relas.len());
            for r in relas {
                let r_type = r.r_type(LE, false);
                let offset = r.r_offset(LE);
                let at = |what: String| self.err_at(target, Some(offset), what);
                let arch = self.g.arch;
                let kind = match arch.edge_for_relocation(r_type.0) {
                    Ok(Some(kind)) => kind,
                    Ok(None) => continue,
                    Err(what) => {
                        return Err(Error::unsupported(
                            self.name,
                            Some(&self.sec_name_str(target)),
                            Some(offset),
                            what,
                        ))
                    }
                };
                let reloc_name = |t: elf::RelocationType| arch.relocation_name(t.0);
                let end = offset.checked_add(u64::from(self.g.edge_info(kind).width));
                if end.is_none_or(|e| e > target_size) || offset > u32::MAX as u64 {
                    return Err(at(format!(
                        "{} relocation lies outside its section ({target_size:#x} bytes)",
                        reloc_name(r_type)
                    )));
                }
                let sym_idx = r.r_sym(LE, false) as usize;
                let target_sym = if sym_idx == 0 {
                    self.absolute_zero()
                } else {
                    match self.syms.get(sym_idx) {
                        None => {
                            return Err(at(format!(
                                "{} relocation names symbol {sym_idx}, beyond the symbol table ({} symbols)",
                                reloc_name(r_type),
                                self.syms.len()
                            )))
                        }
                        Some(None) => {
                            return Err(at(format!(
                                "{} relocation names symbol {sym_idx}, which is not in a loaded section",
                                reloc_name(r_type)
                            )))
                        }
                        Some(Some(s)) => *s,
                    }
                };
                edges.push(Edge {
                    offset: offset as u32,
                    kind,
                    target: target_sym,
                    addend: r.r_addend(LE),
                });
            }
            match block {
                Some(b) => {
                    let dst = &mut self.g.blocks[b.idx()].edges;
                    if dst.is_empty() {
                        *dst = edges;
                    } else {
                        dst.extend(edges);
                    }
                }
                None => eh_relocs.push((target, edges)),
            }
        }
        for &sec in &self.eh_frames.clone() {
            let edges = eh_relocs
                .iter_mut()
                .find(|(t, _)| *t == sec)
                .map(|(_, e)| std::mem::take(e))
                .unwrap_or_default();
            let sh = self
                .sections
                .section(object::SectionIndex(sec))
                .map_err(|e| self.err_at(sec, None, e.to_string()))?;
            let data = sh
                .data(LE, self.data)
                .map_err(|_| self.err_at(sec, None, "section data lies outside the file"))?;
            let name = self.section_name(sh);
            super::eh_frame::split(self.g, self.name, name, sec as u32, self.input, data, edges)?;
        }
        Ok(())
    }

    fn absolute_zero(&mut self) -> SymbolId {
        self.g.add_local(SymbolDef::Absolute(0), self.input)
    }
}

fn is_init_fini(k: SectionKind) -> bool {
    matches!(
        k,
        SectionKind::InitArray(_)
            | SectionKind::FiniArray(_)
            | SectionKind::PreInitArray
            | SectionKind::Ctors(_)
            | SectionKind::Dtors(_)
            | SectionKind::Init
            | SectionKind::Fini
    )
}

/// Section names that `__start_NAME`/`__stop_NAME` can refer to are kept, as ld keeps them.
fn is_c_identifier(name: &[u8]) -> bool {
    !name.is_empty()
        && !name[0].is_ascii_digit()
        && name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn priority(name: &[u8], prefix: &[u8]) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() {
        return Some(NO_PRIORITY);
    }
    let digits = rest.strip_prefix(b".")?;
    std::str::from_utf8(digits)
        .ok()?
        .parse::<u32>()
        .ok()
        .map(|p| p.min(NO_PRIORITY - 1))
}

fn section_kind(name: &[u8], flags: u64) -> SectionKind {
    if flags & elf::SHF_TLS.0 != 0 {
        return SectionKind::Tls;
    }
    if let Some(p) = priority(name, b".init_array") {
        return SectionKind::InitArray(p);
    }
    if let Some(p) = priority(name, b".fini_array") {
        return SectionKind::FiniArray(p);
    }
    // `.ctors.N` has priority 65535 - N on init_array's scale.
    if let Some(p) = priority(name, b".ctors") {
        return SectionKind::Ctors(if p == NO_PRIORITY {
            p
        } else {
            65535u32.saturating_sub(p)
        });
    }
    if let Some(p) = priority(name, b".dtors") {
        return SectionKind::Dtors(if p == NO_PRIORITY {
            p
        } else {
            65535u32.saturating_sub(p)
        });
    }
    match name {
        b".preinit_array" => SectionKind::PreInitArray,
        b".init" => SectionKind::Init,
        b".fini" => SectionKind::Fini,
        _ => SectionKind::Regular,
    }
}

fn relas_empty(sh: &SectionHeader64<LE>) -> bool {
    sh.sh_size(LE) == 0
}

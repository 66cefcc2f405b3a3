//! One kiln unit: the definitions of one group (see `group.rs`) as a relocatable ELF object.
//!
//! Why an ELF object and not a `kiln::graph::InMemoryGraph`: when this was written, graphs could
//! not carry an `.eh_frame` section or thread-local sections and symbols, which Cranelift code
//! needs. They can now (`GraphSectionKind::EhFrame`, `Tls`); what keeps the object is that host
//! symbols and libcalls are written as local absolute symbols (so that they never clash with
//! the module's names), which a graph has no way to say. Nothing else depends on the format.
//!
//! Symbols: each definition is a global symbol under its linkage name (default visibility for
//! `Export` and `Preemptible`, weak for `Preemptible`; hidden for `Local` and `Hidden`, which
//! kiln still publishes to the module's own scope). References to definitions linked earlier
//! are undefined globals, bound by kiln to the unit that defines them (which makes kiln record
//! the dependency that `free_function` checks). Host symbols and libcalls are resolved by the
//! module itself and written as local absolute symbols, so that they never clash with the
//! module's own names.

use crate::error::{Error, Result};
use crate::relocs;
use crate::unwind;
use cranelift_codegen::isa::unwind::systemv::UnwindInfo;
use cranelift_codegen::isa::TargetIsa;
use cranelift_module::{FuncOrDataId, Linkage, ModuleReloc, ModuleRelocTarget};
use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};
use rustc_hash::FxHashMap;

/// A definition waiting for `finalize_definitions`.
pub(crate) struct Pending {
    pub id: FuncOrDataId,
    /// Its linkage name: the symbol.
    pub name: String,
    pub linkage: Linkage,
    pub body: Body,
    pub relocs: Vec<ModuleReloc>,
}

pub(crate) enum Body {
    Code {
        bytes: Vec<u8>,
        align: u64,
        unwind: Option<UnwindInfo>,
    },
    Data {
        init: DataInit,
        align: u64,
        writable: bool,
        tls: bool,
    },
}

pub(crate) enum DataInit {
    Bytes(Vec<u8>),
    Zeros(u64),
}

impl Pending {
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::Code { bytes, .. } => bytes.len() as u64,
            Body::Data {
                init: DataInit::Bytes(b),
                ..
            } => b.len() as u64,
            Body::Data {
                init: DataInit::Zeros(n),
                ..
            } => *n,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Code { bytes, .. } => Some(bytes),
            Body::Data {
                init: DataInit::Bytes(b),
                ..
            } => Some(b),
            Body::Data { .. } => None,
        }
    }
}

/// What a relocation of a unit refers to.
pub(crate) enum Target {
    /// The definition at this index of the unit's members.
    Member(usize),
    /// A definition of the module linked in an earlier unit: bound by kiln, by name.
    Linked { name: String, kind: SymbolKind },
    /// A host symbol or libcall, resolved by the module.
    Absolute { name: String, addr: u64 },
    /// A symbol the linker makes (`_GLOBAL_OFFSET_TABLE_`).
    Linker(&'static str),
}

/// A unit ready for kiln.
pub(crate) struct UnitObject {
    /// How kiln, gdb and errors name it.
    pub name: String,
    pub bytes: Vec<u8>,
    /// Hidden symbols: kiln keeps only default-visibility symbols of an object without being
    /// told, so these are given as roots.
    pub hidden: Vec<String>,
}

impl UnitObject {
    /// The kiln inputs of the unit (its object, its hidden symbols as roots), and its name.
    pub fn into_inputs(self) -> (kiln::Inputs, String) {
        let mut inputs = kiln::Inputs::new();
        for name in self.hidden {
            inputs.add_root(name);
        }
        inputs.add_object(self.name.clone(), self.bytes);
        (inputs, self.name)
    }
}

/// The ELF object of `members`; `resolve` says what each relocation target is (and an extra
/// addend).
pub(crate) fn build(
    isa: &dyn TargetIsa,
    members: &[&Pending],
    mut resolve: impl FnMut(&Pending, &ModuleRelocTarget) -> Result<(Target, i64)>,
) -> Result<UnitObject> {
    let name = unit_name(members);
    let emit = |what: String| Error::Emit {
        unit: name.clone(),
        what,
    };
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let mut sections = Vec::with_capacity(members.len());
    let mut symbols = Vec::with_capacity(members.len());
    let mut hidden = Vec::new();
    for p in members {
        let (section, symbol) = add_definition(&mut obj, p);
        if matches!(p.linkage, Linkage::Local | Linkage::Hidden) {
            hidden.push(p.name.clone());
        }
        sections.push(section);
        symbols.push(symbol);
    }
    let mut outside: FxHashMap<String, SymbolId> = FxHashMap::default();
    for (p, section) in members.iter().zip(&sections) {
        let bytes = p.bytes();
        let len = p.size();
        for r in &p.relocs {
            let unsupported = |why| Error::UnsupportedRelocation {
                definition: p.name.clone(),
                reloc: r.kind,
                offset: r.offset,
                why,
            };
            let kind =
                relocs::edge_kind(r.kind, bytes.unwrap_or(&[]), r.offset).map_err(unsupported)?;
            let (r_type, width) = relocs::elf_relocation(kind)
                .ok_or_else(|| unsupported("kiln has no ELF relocation for its edge kind"))?;
            if bytes.is_none() || u64::from(r.offset) + u64::from(width) > len {
                return Err(unsupported("the field lies outside the definition"));
            }
            let (target, extra) = resolve(p, &r.name)?;
            let symbol = match target {
                Target::Member(i) => symbols[i],
                Target::Linked { name, kind } => {
                    outside_symbol(&mut obj, &mut outside, name, kind, None)
                }
                Target::Absolute { name, addr } => {
                    outside_symbol(&mut obj, &mut outside, name, SymbolKind::Label, Some(addr))
                }
                Target::Linker(name) => outside_symbol(
                    &mut obj,
                    &mut outside,
                    name.into(),
                    SymbolKind::Unknown,
                    None,
                ),
            };
            let addend = r
                .addend
                .checked_add(extra)
                .ok_or_else(|| unsupported("the addend overflows"))?;
            obj.add_relocation(
                *section,
                Relocation {
                    offset: r.offset.into(),
                    symbol,
                    addend,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .map_err(|e| emit(e.to_string()))?;
        }
    }
    add_eh_frame(&mut obj, isa, members, &symbols).map_err(emit)?;
    let bytes = obj.write().map_err(|e| emit(e.to_string()))?;
    Ok(UnitObject {
        name,
        bytes,
        hidden,
    })
}

/// "cranelift:NAME", with how many more definitions the unit holds.
fn unit_name(members: &[&Pending]) -> String {
    match members {
        [] => "cranelift:(empty)".into(),
        [one] => format!("cranelift:{}", one.name),
        [first, rest @ ..] => format!("cranelift:{} (+{} more)", first.name, rest.len()),
    }
}

/// A section holding `p` and its symbol.
fn add_definition<'a>(obj: &mut Object<'a>, p: &'a Pending) -> (SectionId, SymbolId) {
    let (name, kind, symbol_kind): (&[u8], SectionKind, SymbolKind) = match &p.body {
        Body::Code { .. } => (b".text", SectionKind::Text, SymbolKind::Text),
        Body::Data {
            tls: true, init, ..
        } => match init {
            DataInit::Bytes(_) => (b".tdata", SectionKind::Tls, SymbolKind::Tls),
            DataInit::Zeros(_) => (b".tbss", SectionKind::UninitializedTls, SymbolKind::Tls),
        },
        Body::Data {
            writable: true,
            init,
            ..
        } => match init {
            DataInit::Bytes(_) => (b".data", SectionKind::Data, SymbolKind::Data),
            DataInit::Zeros(_) => (b".bss", SectionKind::UninitializedData, SymbolKind::Data),
        },
        Body::Data { .. } => (b".rodata", SectionKind::ReadOnlyData, SymbolKind::Data),
    };
    let section = obj.add_section(Vec::new(), name.to_vec(), kind);
    match &p.body {
        Body::Code { bytes, align, .. } => obj.set_section_data(section, bytes.as_slice(), *align),
        Body::Data {
            init: DataInit::Bytes(b),
            align,
            ..
        } => obj.set_section_data(section, b.as_slice(), *align),
        // Read-only zeros have no NOBITS section of their own: they are written out.
        Body::Data {
            init: DataInit::Zeros(n),
            align,
            writable: false,
            tls: false,
        } => obj.set_section_data(section, vec![0u8; *n as usize], *align),
        Body::Data {
            init: DataInit::Zeros(n),
            align,
            ..
        } => {
            obj.append_section_bss(section, *n, *align);
        }
    }
    let symbol = obj.add_symbol(Symbol {
        name: p.name.as_bytes().to_vec(),
        value: 0,
        size: p.size(),
        kind: symbol_kind,
        scope: match p.linkage {
            Linkage::Export | Linkage::Preemptible | Linkage::Import => SymbolScope::Dynamic,
            Linkage::Local | Linkage::Hidden => SymbolScope::Linkage,
        },
        weak: p.linkage == Linkage::Preemptible,
        section: SymbolSection::Section(section),
        flags: SymbolFlags::None,
    });
    (section, symbol)
}

/// The symbol for something outside the unit, made once per name: undefined (bound by kiln)
/// or, with an address, local and absolute.
fn outside_symbol(
    obj: &mut Object,
    made: &mut FxHashMap<String, SymbolId>,
    name: String,
    kind: SymbolKind,
    addr: Option<u64>,
) -> SymbolId {
    if let Some(&id) = made.get(&name) {
        return id;
    }
    let id = obj.add_symbol(Symbol {
        name: name.as_bytes().to_vec(),
        value: addr.unwrap_or(0),
        size: 0,
        kind,
        scope: if addr.is_some() {
            SymbolScope::Compilation
        } else {
            SymbolScope::Dynamic
        },
        weak: false,
        section: if addr.is_some() {
            SymbolSection::Absolute
        } else {
            SymbolSection::Undefined
        },
        flags: SymbolFlags::None,
    });
    made.insert(name, id);
    id
}

/// `.eh_frame` for the members Cranelift made unwind information for.
fn add_eh_frame(
    obj: &mut Object,
    isa: &dyn TargetIsa,
    members: &[&Pending],
    symbols: &[SymbolId],
) -> Result<(), String> {
    let functions: Vec<(usize, &UnwindInfo)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.body {
            Body::Code {
                unwind: Some(u), ..
            } => Some((i, u)),
            _ => None,
        })
        .collect();
    if functions.is_empty() {
        return Ok(());
    }
    let Some(unwind::EhFrameSection { bytes, relocs }) = unwind::eh_frame(isa, &functions)? else {
        return Ok(());
    };
    let section = obj.add_section(Vec::new(), b".eh_frame".to_vec(), SectionKind::ReadOnlyData);
    obj.set_section_data(section, bytes, 8);
    for r in relocs {
        let r_type = if r.pc_relative {
            object::elf::R_X86_64_PC32
        } else {
            object::elf::R_X86_64_64
        };
        obj.add_relocation(
            section,
            Relocation {
                offset: r.offset,
                symbol: symbols[r.symbol],
                addend: r.addend,
                flags: RelocationFlags::Elf { r_type },
            },
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

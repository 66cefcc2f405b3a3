//! One kiln unit: the definitions of one group (see `group.rs`) as a `kiln::InMemoryGraph`:
//! a section per definition, Cranelift's relocations as edges, Cranelift's unwind information as
//! an `.eh_frame` section (`GraphSectionKind::EhFrame`), thread-local data in `Tls` sections.
//!
//! Symbols: each definition is a global symbol under its linkage name (default visibility for
//! `Export` and `Preemptible`, weak for `Preemptible`; hidden for `Local` and `Hidden`, given to
//! kiln as roots so that they are kept and published to the module's own scope). Edges to
//! definitions linked earlier name them, and kiln binds them to the unit that defines them
//! (recording the dependency that `free_function` checks). Edges to host symbols and libcalls
//! name `[host]NAME`, which the module resolves itself and defines in the session (see
//! `resolve.rs`): a name no module definition may take, so a host symbol never clashes with the
//! module's own names.
//!
//! Until graphs had `.eh_frame` and TLS sections, units were relocatable ELF objects written
//! with `object::write` and parsed again by kiln: 2.5–3.3 µs per function, gone now.

use crate::error::{Error, Result};
use crate::relocs;
use crate::unwind;
use cranelift_codegen::isa::unwind::systemv::UnwindInfo;
use cranelift_codegen::isa::TargetIsa;
use cranelift_module::{FuncOrDataId, Linkage, ModuleReloc, ModuleRelocTarget};
use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{
    BlockContent, GraphSectionKind, InMemoryBlock, InMemoryEdge, InMemoryGraph, InMemorySection,
    InMemorySymbol, Visibility,
};
use kiln_target::MemProt;

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
    Linked(String),
    /// A host symbol or libcall the module resolved: the name it is defined under in the
    /// session (`[host]NAME`).
    Host(String),
    /// A symbol the linker makes (`_GLOBAL_OFFSET_TABLE_`).
    Linker(&'static str),
}

/// A unit ready for kiln.
pub(crate) struct UnitGraph {
    pub graph: InMemoryGraph,
    /// Hidden symbols: kiln keeps only default-visibility symbols of an input without being
    /// told, so these are given as roots.
    pub hidden: Vec<String>,
}

impl UnitGraph {
    /// The kiln inputs of the unit (its graph, its hidden symbols as roots), and its name.
    pub fn into_inputs(self) -> (kiln::Inputs, String) {
        let mut inputs = kiln::Inputs::new();
        for name in self.hidden {
            inputs.add_root(name);
        }
        let name = self.graph.name.clone();
        inputs.add_graph(self.graph);
        (inputs, name)
    }
}

/// The graph of `members`; `resolve` says what each relocation target is (and an extra addend).
pub(crate) fn build(
    isa: &dyn TargetIsa,
    members: &[&Pending],
    mut resolve: impl FnMut(&Pending, &ModuleRelocTarget) -> Result<(Target, i64)>,
) -> Result<UnitGraph> {
    let name = unit_name(members);
    let mut sections = Vec::with_capacity(members.len() + 1);
    let mut hidden = Vec::new();
    for p in members {
        let edges = edges(p, members, &mut resolve)?;
        sections.push(definition_section(p, edges));
        if matches!(p.linkage, Linkage::Local | Linkage::Hidden) {
            hidden.push(p.name.clone());
        }
    }
    if let Some(eh) = eh_frame_section(isa, members).map_err(|what| Error::Emit {
        unit: name.clone(),
        what,
    })? {
        sections.push(eh);
    }
    Ok(UnitGraph {
        graph: InMemoryGraph { name, sections },
        hidden,
    })
}

/// The edges of `p`: one per Cranelift relocation, each checked to lie inside the definition.
fn edges(
    p: &Pending,
    members: &[&Pending],
    resolve: &mut impl FnMut(&Pending, &ModuleRelocTarget) -> Result<(Target, i64)>,
) -> Result<Vec<InMemoryEdge>> {
    let bytes = p.bytes();
    let len = p.size();
    let mut edges = Vec::with_capacity(p.relocs.len());
    for r in &p.relocs {
        let unsupported = |why| Error::UnsupportedRelocation {
            definition: p.name.clone(),
            reloc: r.kind,
            offset: r.offset,
            why,
        };
        let kind =
            relocs::edge_kind(r.kind, bytes.unwrap_or(&[]), r.offset).map_err(unsupported)?;
        let width = relocs::width(kind);
        if bytes.is_none() || u64::from(r.offset) + u64::from(width) > len {
            return Err(unsupported("the field lies outside the definition"));
        }
        let (target, extra) = resolve(p, &r.name)?;
        let target = match target {
            Target::Member(i) => members[i].name.clone(),
            Target::Linked(name) | Target::Host(name) => name,
            Target::Linker(name) => name.into(),
        };
        let addend = r
            .addend
            .checked_add(extra)
            .ok_or_else(|| unsupported("the addend overflows"))?;
        edges.push(InMemoryEdge {
            offset: r.offset,
            kind: kind.into(),
            target,
            addend,
        });
    }
    Ok(edges)
}

/// "cranelift:NAME", with how many more definitions the unit holds.
fn unit_name(members: &[&Pending]) -> String {
    match members {
        [] => "cranelift:(empty)".into(),
        [one] => format!("cranelift:{}", one.name),
        [first, rest @ ..] => format!("cranelift:{} (+{} more)", first.name, rest.len()),
    }
}

/// A section holding `p` (one block, its symbol at 0) with its edges.
fn definition_section(p: &Pending, edges: Vec<InMemoryEdge>) -> InMemorySection {
    let (name, prot, kind) = match &p.body {
        Body::Code { .. } => (".text", MemProt::ReadExec, GraphSectionKind::Regular),
        Body::Data {
            tls: true, init, ..
        } => (
            match init {
                DataInit::Bytes(_) => ".tdata",
                DataInit::Zeros(_) => ".tbss",
            },
            MemProt::Read,
            GraphSectionKind::Tls,
        ),
        Body::Data {
            writable: true,
            init,
            ..
        } => (
            match init {
                DataInit::Bytes(_) => ".data",
                DataInit::Zeros(_) => ".bss",
            },
            MemProt::ReadWrite,
            GraphSectionKind::Regular,
        ),
        Body::Data { .. } => (".rodata", MemProt::Read, GraphSectionKind::Regular),
    };
    let (content, align) = match &p.body {
        Body::Code { bytes, align, .. } => (BlockContent::Bytes(bytes.clone()), *align),
        Body::Data {
            init: DataInit::Bytes(b),
            align,
            ..
        } => (BlockContent::Bytes(b.clone()), *align),
        // Read-only zeros get no zero-fill block of their own: they are written out.
        Body::Data {
            init: DataInit::Zeros(n),
            align,
            writable: false,
            tls: false,
        } => (BlockContent::Bytes(vec![0u8; *n as usize]), *align),
        Body::Data {
            init: DataInit::Zeros(n),
            align,
            ..
        } => (BlockContent::Zero(*n), *align),
    };
    let symbol = InMemorySymbol {
        name: p.name.clone(),
        offset: 0,
        size: p.size(),
        visibility: match p.linkage {
            Linkage::Export | Linkage::Preemptible | Linkage::Import => Visibility::Default,
            Linkage::Local | Linkage::Hidden => Visibility::Hidden,
        },
        weak: p.linkage == Linkage::Preemptible,
        callable: matches!(p.body, Body::Code { .. }),
    };
    InMemorySection {
        name: name.into(),
        prot,
        kind,
        blocks: vec![InMemoryBlock {
            content,
            align,
            symbols: vec![symbol],
            edges,
            frame: None,
        }],
    }
}

/// `.eh_frame` for the members Cranelift made unwind information for, its `pc_begin` fields
/// edges to their functions.
fn eh_frame_section(
    isa: &dyn TargetIsa,
    members: &[&Pending],
) -> Result<Option<InMemorySection>, String> {
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
        return Ok(None);
    }
    let Some(unwind::EhFrameSection { bytes, relocs }) = unwind::eh_frame(isa, &functions)? else {
        return Ok(None);
    };
    let edges = relocs
        .into_iter()
        .map(|r| InMemoryEdge {
            offset: r.offset as u32,
            kind: if r.pc_relative {
                EdgeKind::Delta32.into()
            } else {
                EdgeKind::Pointer64.into()
            },
            target: members[r.symbol].name.clone(),
            addend: r.addend,
        })
        .collect();
    Ok(Some(InMemorySection {
        name: ".eh_frame".into(),
        prot: MemProt::Read,
        kind: GraphSectionKind::EhFrame,
        blocks: vec![InMemoryBlock {
            content: BlockContent::Bytes(bytes),
            align: 8,
            symbols: Vec::new(),
            edges,
            frame: None,
        }],
    }))
}

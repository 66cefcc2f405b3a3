//! Graphs a JIT compiler builds in memory: sections of blocks (code bytes or zero fill), symbols
//! in them, and edges to other symbols by name — the same model as an object file, without ELF.
//! Linked like an object: [`crate::Session::add_graph`].
//!
//! Code without `.eh_frame` is invisible to the unwinder (C++ exceptions, Rust panics and
//! `backtrace()` stop at it). A producer whose functions begin with the standard frame-pointer
//! prologue (`push %rbp; mov %rsp, %rbp`) can attach [`FrameDescription::FramePointer`] and
//! kiln writes the CIE and FDE for it.

use crate::arch::EdgeKind;
use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// A graph a JIT compiler builds: sections of blocks with symbols and edges (relocations) by
/// name, linked like an object file.
///
/// ```
/// use kiln::arch::x86_64::EdgeKind;
/// use kiln::graph::{InMemoryEdge, InMemoryGraph};
/// use kiln_target::MemProt;
///
/// let mut g = InMemoryGraph::new("module-7");
/// // A counter in data, and `int bump(void) { return ++counter; }` reaching it PC-relatively:
/// // mov counter(%rip),%eax; inc %eax; mov %eax,counter(%rip); ret
/// g.add_data("counter", vec![0; 4], 4, MemProt::ReadWrite);
/// let code = vec![0x8b, 0x05, 0, 0, 0, 0, 0xff, 0xc0, 0x89, 0x05, 0, 0, 0, 0, 0xc3];
/// g.add_function(
///     "bump",
///     code,
///     vec![
///         InMemoryEdge::new(2, EdgeKind::Delta32, "counter", -4),
///         InMemoryEdge::new(10, EdgeKind::Delta32, "counter", -4),
///     ],
///     None,
/// );
/// let s = kiln::Session::in_process();
/// s.link_graph(&g)?;
/// let bump = s.lookup("bump").unwrap();
/// assert_eq!(s.executor().call(bump, &[])?, 1);
/// assert_eq!(s.executor().call(bump, &[])?, 2);
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryGraph {
    pub name: String,
    pub sections: Vec<InMemorySection>,
}

#[derive(Debug, Clone)]
pub struct InMemorySection {
    pub name: String,
    pub prot: MemProt,
    pub blocks: Vec<InMemoryBlock>,
    /// What the section is to the linker (default: ordinary code or data).
    pub kind: GraphSectionKind,
}

/// What a graph's section is to the linker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GraphSectionKind {
    /// Code or data, as its protection says.
    #[default]
    Regular,
    /// `.eh_frame` records (CIEs and FDEs, e.g. from a code generator's unwind info): split per
    /// record, each FDE kept as long as the function its `pc_begin` edge names, registered with
    /// the unwinder. The `pc_begin` fields need edges (`Delta32` for `pcrel|sdata4`); CIE
    /// pointers are section-relative and need none (kiln makes their edges).
    EhFrame,
    /// Thread-local data (`.tdata`, or `.tbss` with zero fill): its symbols are thread-local,
    /// each thread gets a copy, code reaches them through the TLS edge kinds.
    Tls,
}

#[derive(Debug, Clone)]
pub enum BlockContent {
    Bytes(Vec<u8>),
    Zero(u64),
}

#[derive(Debug, Clone)]
pub struct InMemoryBlock {
    pub content: BlockContent,
    pub align: u64,
    pub symbols: Vec<InMemorySymbol>,
    pub edges: Vec<InMemoryEdge>,
    /// How the unwinder gets through this block's code (only for code blocks).
    pub frame: Option<FrameDescription>,
}

#[derive(Debug, Clone)]
pub struct InMemorySymbol {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// `Visibility::Local` symbols are visible only to edges of this graph.
    pub visibility: Visibility,
    pub weak: bool,
    pub callable: bool,
}

#[derive(Debug, Clone)]
pub struct InMemoryEdge {
    pub offset: u32,
    pub kind: EdgeKind,
    /// A symbol of this graph, of another input of the link, of an earlier unit, or of the host.
    pub target: String,
    pub addend: i64,
}

/// Unwind information the producer vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDescription {
    /// The block is one function that starts with `push %rbp` (1 byte) then `mov %rsp, %rbp`
    /// (3 bytes) and keeps %rbp as its frame pointer until it returns.
    FramePointer,
}

impl InMemoryGraph {
    pub fn new(name: impl Into<String>) -> Self {
        InMemoryGraph {
            name: name.into(),
            sections: Vec::new(),
        }
    }

    /// Add a function: one code block in its own executable section, with a global symbol.
    pub fn add_function(
        &mut self,
        name: &str,
        code: Vec<u8>,
        edges: Vec<InMemoryEdge>,
        frame: Option<FrameDescription>,
    ) -> &mut Self {
        let size = code.len() as u64;
        self.sections.push(InMemorySection {
            kind: GraphSectionKind::Regular,
            // One section name for all: names cost an allocation per function, and debuggers
            // and profilers go by the symbols.
            name: ".text".into(),
            prot: MemProt::ReadExec,
            blocks: vec![InMemoryBlock {
                content: BlockContent::Bytes(code),
                align: 16,
                symbols: vec![InMemorySymbol {
                    name: name.into(),
                    offset: 0,
                    size,
                    visibility: Visibility::Default,
                    weak: false,
                    callable: true,
                }],
                edges,
                frame,
            }],
        });
        self
    }

    /// Add a data object (read-write, or read-only with `prot`).
    pub fn add_data(&mut self, name: &str, bytes: Vec<u8>, align: u64, prot: MemProt) -> &mut Self {
        let size = bytes.len() as u64;
        self.sections.push(InMemorySection {
            kind: GraphSectionKind::Regular,
            name: match prot {
                MemProt::ReadWrite => ".data".into(),
                _ => ".rodata".into(),
            },
            prot,
            blocks: vec![InMemoryBlock {
                content: BlockContent::Bytes(bytes),
                align,
                symbols: vec![InMemorySymbol {
                    name: name.into(),
                    offset: 0,
                    size,
                    visibility: Visibility::Default,
                    weak: false,
                    callable: false,
                }],
                edges: Vec::new(),
                frame: None,
            }],
        });
        self
    }
}

impl InMemoryEdge {
    pub fn new(offset: u32, kind: impl Into<EdgeKind>, target: &str, addend: i64) -> Self {
        InMemoryEdge {
            offset,
            kind: kind.into(),
            target: target.into(),
            addend,
        }
    }
}

/// Add an in-memory graph to the link unit, as an explicitly given input.
pub(crate) fn add_graph<'a>(g: &mut LinkGraph<'a>, graph: &'a InMemoryGraph) -> Result<InputId> {
    let input = g.add_input(graph.name.as_str(), true);
    let bad = |section: &str, offset: Option<u64>, what: String| {
        Error::malformed(&graph.name, Some(section), offset, what)
    };
    // Local symbols by name, for edges of this graph (globals are found in the graph's table).
    let mut locals: FxHashMap<&'a str, SymbolId> = FxHashMap::default();
    let first_block = g.blocks.len() as u32;
    for sec in &graph.sections {
        add_section(g, sec, input, &mut locals)
            .map_err(|(offset, what)| bad(&sec.name, offset, what))?;
    }
    // Blocks were added in this order: the second walk finds them by counting.
    let mut next = first_block;
    let mut cie: Option<SymbolId> = None;
    for sec in &graph.sections {
        for blk in &sec.blocks {
            let b = BlockId(next);
            next += 1;
            let edges = graph_edges(g, &locals, b, blk, input)
                .map_err(|(offset, what)| bad(&sec.name, offset, what))?;
            g.blocks[b.idx()].edges = edges;
            if blk.frame == Some(FrameDescription::FramePointer) {
                add_frame_pointer_unwind(g, b, input, &mut cie)
                    .map_err(|what| bad(&sec.name, None, what))?;
            }
        }
    }
    for sec in graph
        .sections
        .iter()
        .filter(|s| s.kind == GraphSectionKind::EhFrame)
    {
        add_eh_frame(g, sec, input, &locals)
            .map_err(|(offset, what)| bad(&sec.name, offset, what))?;
    }
    Ok(input)
}

/// An `.eh_frame` section of a graph: each block is split into its CIE and FDE records.
fn add_eh_frame<'a>(
    g: &mut LinkGraph<'a>,
    sec: &'a InMemorySection,
    input: InputId,
    locals: &FxHashMap<&'a str, SymbolId>,
) -> std::result::Result<(), (Option<u64>, String)> {
    for blk in &sec.blocks {
        let BlockContent::Bytes(data) = &blk.content else {
            return Err((None, "an .eh_frame block needs bytes".into()));
        };
        let mut edges = Vec::with_capacity(blk.edges.len());
        for e in &blk.edges {
            let width = g.arch.edge_info(e.kind).map_or(0, |i| u64::from(i.width));
            if u64::from(e.offset) + width > data.len() as u64 {
                return Err((
                    Some(e.offset.into()),
                    format!("edge to {} lies outside its block", e.target),
                ));
            }
            let target = match locals.get(e.target.as_str()) {
                Some(id) => *id,
                None => g.global_ref(e.target.as_bytes(), input, false),
            };
            edges.push(Edge {
                offset: e.offset,
                kind: e.kind,
                target,
                addend: e.addend,
            });
        }
        let name = g.input_name(input).to_string();
        crate::elf::split_eh_frame(g, &name, sec.name.as_bytes(), 0, input, data, edges)
            .map_err(|e| (None, e.to_string()))?;
    }
    Ok(())
}

/// One section of a graph: its blocks and their symbols.
fn add_section<'a>(
    g: &mut LinkGraph<'a>,
    sec: &'a InMemorySection,
    input: InputId,
    locals: &mut FxHashMap<&'a str, SymbolId>,
) -> std::result::Result<(), (Option<u64>, String)> {
    let tls = sec.kind == GraphSectionKind::Tls;
    let sid = g.add_section(Section {
        name: sec.name.as_bytes(),
        prot: if tls { MemProt::Read } else { sec.prot },
        kind: if tls {
            SectionKind::Tls
        } else {
            SectionKind::Regular
        },
        input,
        retain: false,
        elf_index: 0,
    });
    for blk in &sec.blocks {
        if !blk.align.is_power_of_two() || blk.align > (1 << 30) {
            return Err((
                None,
                format!("alignment {} is not a power of two", blk.align),
            ));
        }
        let content = match &blk.content {
            BlockContent::Bytes(b) => Content::Bytes(Cow::Borrowed(b.as_slice())),
            BlockContent::Zero(n) if *n <= (1 << 40) => Content::Zero(*n),
            BlockContent::Zero(n) => return Err((None, format!("zero fill of {n} bytes"))),
        };
        let b = g.add_block(sid, content, blk.align);
        let size = g.blocks[b.idx()].size();
        for s in &blk.symbols {
            if s.offset > size {
                return Err((
                    Some(s.offset),
                    format!("symbol {} lies past its block", s.name),
                ));
            }
            let def = SymbolDef::Defined {
                block: b,
                offset: s.offset,
            };
            if s.visibility == Visibility::Local {
                let id = g.add_local(def, input);
                let sym = &mut g.symbols[id.idx()];
                sym.name = s.name.as_bytes();
                sym.size = s.size;
                sym.callable = s.callable;
                sym.tls = tls;
                locals.insert(s.name.as_str(), id);
            } else {
                g.define_global(
                    s.name.as_bytes(),
                    def,
                    s.size,
                    s.weak,
                    s.visibility,
                    s.callable,
                    tls,
                    input,
                );
            }
        }
    }
    Ok(())
}

/// The edges of one block, their targets bound to the graph's own symbols first.
fn graph_edges<'a>(
    g: &mut LinkGraph<'a>,
    locals: &FxHashMap<&'a str, SymbolId>,
    b: BlockId,
    blk: &'a InMemoryBlock,
    input: InputId,
) -> std::result::Result<Vec<Edge>, (Option<u64>, String)> {
    let room = bytes_of(g, b);
    let mut edges = g.edge_list(blk.edges.len());
    for e in &blk.edges {
        let edge = (e.offset, e.kind, e.target.as_str(), e.addend);
        edges.push(bind_edge(g, locals, input, room, edge)?);
    }
    Ok(edges)
}

/// The bytes an edge of block `b` may lie in: its size, or 0 for zero fill (no edge fits).
fn bytes_of(g: &LinkGraph, b: BlockId) -> u64 {
    let block = &g.blocks[b.idx()];
    if block.is_zero_fill() {
        0
    } else {
        block.size()
    }
}

/// One edge of a block with `room` bytes ([`bytes_of`]; of any front end: a graph's block, a
/// borrowed function), checked — a kind of the graph's architecture, a field inside the
/// block's bytes — and its target bound to a local of the input first, else to the unit's
/// global of that name (created undefined, referenced by `input`, which defines the block).
/// `edge` is (offset, kind, target, addend).
/// (Inlined into both front ends' loops: called, it cost about 50 instructions an edge. The
/// kind's architecture and row are read off the kind, which is what `Arch::edge_info` answers,
/// without its call through `dyn Arch` an edge.)
#[inline(always)]
pub(super) fn bind_edge<'a>(
    g: &mut LinkGraph<'a>,
    locals: &FxHashMap<&'a str, SymbolId>,
    input: InputId,
    room: u64,
    (offset, kind, target, addend): (u32, EdgeKind, &'a str, i64),
) -> std::result::Result<Edge, (Option<u64>, String)> {
    if kind.elf_machine().is_some_and(|m| m != g.machine) {
        return Err(not_of_the_arch(g, offset, kind));
    }
    if u64::from(offset) + u64::from(field_width(kind)) > room {
        return Err((
            Some(offset.into()),
            format!("edge to {target} lies outside its block"),
        ));
    }
    let target = match locals.get(target) {
        Some(id) => *id,
        None => g.global_ref(target.as_bytes(), input, false),
    };
    Ok(Edge {
        offset,
        kind,
        target,
        addend,
    })
}

/// The width of an edge's field: its row's, read off the kind; a JIT's calls and data
/// references (plain 32-bit PC-relative kinds, 4 bytes) without the row's look-up, whose match
/// over every kind, inlined into the edge loop, cost more than the call through `dyn Arch` it
/// replaced.
#[inline(always)]
fn field_width(kind: EdgeKind) -> u8 {
    if kind.is_plain_pc_relative_32() {
        4
    } else {
        row_width(kind)
    }
}

/// [`field_width`] of any kind, from its row.
#[inline(never)]
fn row_width(kind: EdgeKind) -> u8 {
    kind.info().width
}

/// [`bind_edge`]'s error for a kind of another architecture than the graph's.
#[cold]
fn not_of_the_arch(g: &LinkGraph, offset: u32, kind: EdgeKind) -> (Option<u64>, String) {
    (
        Some(offset.into()),
        format!("edge kind {:?} is not a {} kind", kind, g.arch.name()),
    )
}

/// The CIE (one per graph, made on first use) and an FDE for a function block that begins
/// with the architecture's frame-pointer prologue.
pub(super) fn add_frame_pointer_unwind(
    g: &mut LinkGraph,
    b: BlockId,
    input: InputId,
    cie: &mut Option<SymbolId>,
) -> std::result::Result<(), String> {
    let unwind = g.arch.frame_pointer_unwind();
    let kinds = g.arch.eh_frame_kinds();
    let size = g.blocks[b.idx()].size();
    if size < unwind.min_function_size
        || size > u64::from(u32::MAX)
        || g.blocks[b.idx()].is_zero_fill()
    {
        return Err(format!(
            "a frame-pointer frame needs a code block of at least {} bytes",
            unwind.min_function_size
        ));
    }
    let eh = g.add_section(Section {
        name: b".eh_frame",
        prot: MemProt::Read,
        kind: SectionKind::EhFrame,
        input,
        retain: false,
        elf_index: 0,
    });
    let cie = *cie.get_or_insert_with(|| {
        let cb = g.add_block(eh, Content::Bytes(Cow::Borrowed(unwind.cie)), 4);
        g.add_anon(cb, 0, input)
    });
    let fde = g.add_block(eh, Content::Bytes(Cow::Owned((unwind.fde)(size as u32))), 4);
    let func = g.add_anon(b, 0, input);
    g.blocks[fde.idx()].edges = vec![
        Edge {
            offset: unwind.cie_pointer_offset,
            kind: kinds.cie_pointer,
            target: cie,
            addend: 0,
        },
        Edge {
            offset: unwind.pc_begin_offset,
            kind: kinds.pc_relative_32,
            target: func,
            addend: 0,
        },
    ];
    g.keep_alive.push((b, fde));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The width [`bind_edge`] checks a field with is its kind's row's, for every kind: the
    /// plain 32-bit PC-relative ones taken without the row, and the rest through it.
    #[test]
    fn field_width_is_the_rows_width() {
        let mut plain = 0;
        for kind in crate::arch::every_kind() {
            plain += usize::from(kind.is_plain_pc_relative_32());
            assert_eq!(field_width(kind), kind.info().width, "{kind:?}");
        }
        assert_eq!(plain, 2);
    }
}

//! Graphs a JIT compiler builds in memory: sections of blocks (code bytes or zero fill), symbols
//! in them, and edges to other symbols by name — the same model as an object file, without ELF.
//! Linked like an object: [`crate::Session::add_graph`].
//!
//! Code without `.eh_frame` is invisible to the unwinder (C++ exceptions, Rust panics and
//! `backtrace()` stop at it). A producer whose functions begin with the standard frame-pointer
//! prologue (`push %rbp; mov %rsp, %rbp`) can attach [`FrameDescription::FramePointer`] and
//! kiln writes the CIE and FDE for it.

use crate::arch::x86_64::EdgeKind;
use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

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
    /// `Scope::Local` symbols are visible only to edges of this graph.
    pub scope: Scope,
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
            name: format!(".text.{name}"),
            prot: MemProt::ReadExec,
            blocks: vec![InMemoryBlock {
                content: BlockContent::Bytes(code),
                align: 16,
                symbols: vec![InMemorySymbol {
                    name: name.into(),
                    offset: 0,
                    size,
                    scope: Scope::Default,
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
            name: format!(".data.{name}"),
            prot,
            blocks: vec![InMemoryBlock {
                content: BlockContent::Bytes(bytes),
                align,
                symbols: vec![InMemorySymbol {
                    name: name.into(),
                    offset: 0,
                    size,
                    scope: Scope::Default,
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
    pub fn new(offset: u32, kind: EdgeKind, target: &str, addend: i64) -> Self {
        InMemoryEdge {
            offset,
            kind,
            target: target.into(),
            addend,
        }
    }
}

/// x86-64 CIE: version 1, augmentation "zR", code alignment 1, data alignment -8, return address
/// column 16 (%rip), FDE pointers pc-relative sdata4; CFA = %rsp + 8, return address at CFA - 8.
const CIE: [u8; 24] = [
    20, 0, 0, 0, // length
    0, 0, 0, 0, // CIE id
    1, b'z', b'R', 0, // version, augmentation
    1, 0x78, 16, // code align 1, data align -8 (sleb), RA column 16
    1, 0x1b, // augmentation data: FDE encoding pcrel|sdata4
    0x0c, 7, 8, // DW_CFA_def_cfa rsp, 8
    0x90, 1, // DW_CFA_offset rip, 1 * -8
    0, 0, // padding (DW_CFA_nop)
];

/// FDE for the frame-pointer prologue; pc_begin (offset 8) and the CIE pointer (offset 4) are
/// edges, pc_range (offset 12) is the block size.
fn frame_pointer_fde(range: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&28u32.to_le_bytes()); // length
    v.extend_from_slice(&[0; 4]); // CIE pointer
    v.extend_from_slice(&[0; 4]); // pc_begin
    v.extend_from_slice(&range.to_le_bytes()); // pc_range
    v.push(0); // augmentation data length
    v.extend_from_slice(&[
        0x41, // DW_CFA_advance_loc 1 (after push %rbp)
        0x0e, 16, // DW_CFA_def_cfa_offset 16
        0x86, 2,    // DW_CFA_offset rbp, 2 * -8
        0x43, // DW_CFA_advance_loc 3 (after mov %rsp, %rbp)
        0x0d, 6, // DW_CFA_def_cfa_register rbp
    ]);
    v.resize(32, 0); // DW_CFA_nop padding
    v
}

/// Add an in-memory graph to the link unit, as an explicitly given input.
pub fn add_graph<'a>(g: &mut LinkGraph<'a>, graph: &'a InMemoryGraph) -> Result<InputId> {
    let input = g.add_input(graph.name.clone(), true);
    let bad = |section: &str, offset: Option<u64>, what: String| {
        Error::malformed(&graph.name, Some(section), offset, what)
    };
    let mut locals: FxHashMap<&'a str, SymbolId> = FxHashMap::default();
    let mut blocks: Vec<(BlockId, &'a InMemoryBlock, &'a str)> = Vec::new();
    for sec in &graph.sections {
        let sid = g.add_section(Section {
            name: sec.name.as_bytes(),
            prot: sec.prot,
            kind: SectionKind::Regular,
            input,
            retain: false,
            elf_index: 0,
        });
        for blk in &sec.blocks {
            if !blk.align.is_power_of_two() || blk.align > (1 << 30) {
                return Err(bad(
                    &sec.name,
                    None,
                    format!("alignment {} is not a power of two", blk.align),
                ));
            }
            let content = match &blk.content {
                BlockContent::Bytes(b) => Content::Bytes(Cow::Borrowed(b.as_slice())),
                BlockContent::Zero(n) if *n <= (1 << 40) => Content::Zero(*n),
                BlockContent::Zero(n) => {
                    return Err(bad(&sec.name, None, format!("zero fill of {n} bytes")))
                }
            };
            let b = g.add_block(sid, content, blk.align);
            let size = g.blocks[b.idx()].size();
            for s in &blk.symbols {
                if s.offset > size {
                    return Err(bad(
                        &sec.name,
                        Some(s.offset),
                        format!("symbol {} lies past its block", s.name),
                    ));
                }
                let def = SymbolDef::Defined {
                    block: b,
                    offset: s.offset,
                };
                let id = if s.scope == Scope::Local {
                    let id = g.add_local(def, input);
                    let sym = &mut g.symbols[id.idx()];
                    sym.name = s.name.as_bytes();
                    sym.size = s.size;
                    sym.callable = s.callable;
                    id
                } else {
                    g.define_global(
                        s.name.as_bytes(),
                        def,
                        s.size,
                        s.weak,
                        s.scope,
                        s.callable,
                        false,
                        input,
                    )
                };
                locals.insert(s.name.as_str(), id);
            }
            blocks.push((b, blk, sec.name.as_str()));
        }
    }
    let mut cie: Option<SymbolId> = None;
    for (b, blk, sec_name) in blocks {
        let size = g.blocks[b.idx()].size();
        let zero = g.blocks[b.idx()].is_zero_fill();
        let mut edges = Vec::with_capacity(blk.edges.len());
        for e in &blk.edges {
            if zero || u64::from(e.offset) + e.kind.size() as u64 > size {
                return Err(bad(
                    sec_name,
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
        g.blocks[b.idx()].edges = edges;
        if blk.frame == Some(FrameDescription::FramePointer) {
            if size < 4 || size > u32::MAX as u64 || zero {
                return Err(bad(
                    sec_name,
                    None,
                    "a frame-pointer frame needs a code block of at least 4 bytes".into(),
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
                let cb = g.add_block(eh, Content::Bytes(Cow::Borrowed(&CIE)), 4);
                g.add_anon(cb, 0, input)
            });
            let fde = g.add_block(
                eh,
                Content::Bytes(Cow::Owned(frame_pointer_fde(size as u32))),
                4,
            );
            let func = g.add_anon(b, 0, input);
            g.blocks[fde.idx()].edges = vec![
                Edge {
                    offset: 4,
                    kind: EdgeKind::NegDelta32,
                    target: cie,
                    addend: 0,
                },
                Edge {
                    offset: 8,
                    kind: EdgeKind::Delta32,
                    target: func,
                    addend: 0,
                },
            ];
            g.keep_alive.push((b, fde));
        }
    }
    Ok(input)
}

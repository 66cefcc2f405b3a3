//! `kiln_graph_t`: an [`InMemoryGraph`] built piece by piece from C, sections and blocks named
//! by small numbers.
//!
//! Offsets, sizes and alignments are checked by kiln when the graph is linked (with messages
//! naming graph, section and offset); what is checked here is only what C's numbering adds:
//! that a section or block number is one this graph handed out.

use crate::error::CError;
use crate::ffi::types::*;
use kiln_core::arch::EdgeKind;
use kiln_core::graph::{
    BlockContent, FrameDescription, InMemoryBlock, InMemoryEdge, InMemoryGraph, InMemorySection,
    InMemorySymbol, Visibility,
};
use kiln_jit::{HeapRefDecl, JitGraph, SiteDecl, SiteKind};
use kiln_target::MemProt;

pub(crate) struct GraphBuilder {
    graph: InMemoryGraph,
    /// Patchable places and heap references, for kiln-jit (a session link ignores them).
    sites: Vec<SiteDecl>,
    heap_refs: Vec<HeapRefDecl>,
    /// Block number → (section index, block index in the section).
    blocks: Vec<(usize, usize)>,
}

impl GraphBuilder {
    pub(crate) fn new(name: &str) -> Self {
        GraphBuilder {
            graph: InMemoryGraph::new(name),
            sites: Vec::new(),
            heap_refs: Vec::new(),
            blocks: Vec::new(),
        }
    }

    pub(crate) fn graph(&self) -> &InMemoryGraph {
        &self.graph
    }

    /// The graph with its sites and heap references, as kiln-jit links it.
    pub(crate) fn jit_graph(&self) -> JitGraph {
        JitGraph {
            graph: self.graph.clone(),
            sites: self.sites.clone(),
            heap_refs: self.heap_refs.clone(),
        }
    }

    /// A patchable place `offset` bytes after `symbol` (checked by kiln-jit when linked).
    pub(crate) fn add_site(&mut self, symbol: &str, offset: u64, kind: SiteKind) {
        self.sites.push(SiteDecl {
            symbol: symbol.to_string(),
            offset,
            kind,
        });
    }

    /// A heap reference `offset` bytes after `symbol`, 4 or 8 bytes wide.
    pub(crate) fn add_heap_ref(
        &mut self,
        symbol: &str,
        offset: u64,
        width: u32,
    ) -> Result<(), CError> {
        let width = match width {
            4 | 8 => width as u8,
            _ => {
                return Err(CError::invalid_argument(format!(
                    "a heap reference is 4 or 8 bytes wide, not {width}"
                )))
            }
        };
        self.heap_refs.push(HeapRefDecl {
            symbol: symbol.to_string(),
            offset,
            width,
        });
        Ok(())
    }

    pub(crate) fn add_section(&mut self, name: &str, prot: MemProt) -> kiln_section_t {
        self.graph.sections.push(InMemorySection {
            kind: kiln_core::graph::GraphSectionKind::Regular,
            name: name.to_string(),
            prot,
            blocks: Vec::new(),
        });
        (self.graph.sections.len() - 1) as kiln_section_t
    }

    pub(crate) fn add_block(
        &mut self,
        section: kiln_section_t,
        content: BlockContent,
        align: u64,
    ) -> Result<kiln_block_t, CError> {
        let s = section as usize;
        let Some(sec) = self.graph.sections.get_mut(s) else {
            return Err(CError::invalid_argument(format!(
                "section {section} is not a section of graph {:?} (it has {})",
                self.graph.name,
                self.graph.sections.len()
            )));
        };
        sec.blocks.push(InMemoryBlock {
            content,
            align,
            symbols: Vec::new(),
            edges: Vec::new(),
            frame: None,
        });
        self.blocks.push((s, sec.blocks.len() - 1));
        Ok((self.blocks.len() - 1) as kiln_block_t)
    }

    pub(crate) fn add_symbol(
        &mut self,
        block: kiln_block_t,
        symbol: InMemorySymbol,
    ) -> Result<(), CError> {
        self.block(block)?.symbols.push(symbol);
        Ok(())
    }

    pub(crate) fn add_edge(
        &mut self,
        block: kiln_block_t,
        edge: InMemoryEdge,
    ) -> Result<(), CError> {
        self.block(block)?.edges.push(edge);
        Ok(())
    }

    pub(crate) fn set_frame_pointer(&mut self, block: kiln_block_t) -> Result<(), CError> {
        self.block(block)?.frame = Some(FrameDescription::FramePointer);
        Ok(())
    }

    /// A function in a section of its own (`.text.NAME`), as [`InMemoryGraph::add_function`].
    pub(crate) fn add_function(&mut self, name: &str, code: Vec<u8>) -> kiln_block_t {
        self.graph.add_function(name, code, Vec::new(), None);
        self.last_section_block()
    }

    /// A data object in a section of its own, as [`InMemoryGraph::add_data`].
    pub(crate) fn add_data(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
        align: u64,
        prot: MemProt,
    ) -> kiln_block_t {
        self.graph.add_data(name, bytes, align, prot);
        self.last_section_block()
    }

    /// Number the one block of the section just added.
    fn last_section_block(&mut self) -> kiln_block_t {
        self.blocks.push((self.graph.sections.len() - 1, 0));
        (self.blocks.len() - 1) as kiln_block_t
    }

    fn block(&mut self, block: kiln_block_t) -> Result<&mut InMemoryBlock, CError> {
        let known = self.blocks.len();
        let name = &self.graph.name;
        match self.blocks.get(block as usize) {
            Some(&(s, b)) => Ok(&mut self.graph.sections[s].blocks[b]),
            None => Err(CError::invalid_argument(format!(
                "block {block} is not a block of graph {name:?} (it has {known})"
            ))),
        }
    }
}

pub(crate) fn prot(p: kiln_prot_t) -> Result<MemProt, CError> {
    match p {
        KILN_PROT_READ => Ok(MemProt::Read),
        KILN_PROT_READ_WRITE => Ok(MemProt::ReadWrite),
        KILN_PROT_READ_EXEC => Ok(MemProt::ReadExec),
        _ => Err(CError::invalid_argument(format!(
            "{p} is not a kiln_prot_t (KILN_PROT_READ, KILN_PROT_READ_WRITE or KILN_PROT_READ_EXEC)"
        ))),
    }
}

pub(crate) fn visibility(v: kiln_visibility_t) -> Result<Visibility, CError> {
    match v {
        KILN_VISIBILITY_DEFAULT => Ok(Visibility::Default),
        KILN_VISIBILITY_HIDDEN => Ok(Visibility::Hidden),
        KILN_VISIBILITY_LOCAL => Ok(Visibility::Local),
        _ => Err(CError::invalid_argument(format!(
            "{v} is not a kiln_visibility_t"
        ))),
    }
}

/// A symbol of a block, from the C arguments.
pub(crate) fn symbol(
    name: &str,
    offset: u64,
    size: u64,
    vis: kiln_visibility_t,
    flags: u32,
) -> Result<InMemorySymbol, CError> {
    let known = KILN_SYMBOL_CALLABLE | KILN_SYMBOL_WEAK;
    if flags & !known != 0 {
        return Err(CError::invalid_argument(format!(
            "symbol flags {flags:#x}: only KILN_SYMBOL_CALLABLE and KILN_SYMBOL_WEAK exist"
        )));
    }
    Ok(InMemorySymbol {
        name: name.to_string(),
        offset,
        size,
        visibility: visibility(vis)?,
        weak: flags & KILN_SYMBOL_WEAK != 0,
        callable: flags & KILN_SYMBOL_CALLABLE != 0,
    })
}

pub(crate) fn edge_kind(kind: kiln_edge_kind_t) -> Result<EdgeKind, CError> {
    crate::edge_kind::from_c(kind)
        .ok_or_else(|| CError::invalid_argument(format!("{kind} is not a kiln_edge_kind_t")))
}

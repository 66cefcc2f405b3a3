//! What a JIT compiler hands to kiln-jit: an in-memory graph and where in its code the places
//! are that will change after linking — call sites and slots to retarget, inline-cache guards,
//! references to objects of the VM's heap.

use kiln::graph::InMemoryGraph;

/// A graph with its patchable places.
#[derive(Debug, Clone)]
pub struct JitGraph {
    pub graph: InMemoryGraph,
    pub sites: Vec<SiteDecl>,
    pub heap_refs: Vec<HeapRefDecl>,
}

impl JitGraph {
    pub fn new(graph: InMemoryGraph) -> Self {
        JitGraph {
            graph,
            sites: Vec::new(),
            heap_refs: Vec::new(),
        }
    }

    /// Declare a patchable place `offset` bytes after symbol `symbol` of the graph.
    pub fn site(&mut self, symbol: &str, offset: u64, kind: SiteKind) -> &mut Self {
        self.sites.push(SiteDecl {
            symbol: symbol.into(),
            offset,
            kind,
        });
        self
    }

    /// Declare a reference to a heap object embedded in the code, `offset` bytes after
    /// `symbol`: `width` 8 (an absolute 64-bit pointer, e.g. `movabs $obj, %reg`) or 4 (a
    /// 32-bit one, for heaps the VM keeps in the low 4 GiB or compressed).
    pub fn heap_ref(&mut self, symbol: &str, offset: u64, width: u8) -> &mut Self {
        self.heap_refs.push(HeapRefDecl {
            symbol: symbol.into(),
            offset,
            width,
        });
        self
    }
}

/// What kind of place a site is; the field's address must be aligned to its width, so that one
/// atomic store changes it (threads executing the code see the old or the new value, never a
/// mix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteKind {
    /// The rel32 of a `call` (`e8`) or `jmp` (`e9`): the field is 4 bytes at `offset`, the
    /// instruction ends right after it.
    Rel32,
    /// An absolute 64-bit slot (a pointer in data, or the imm64 of `movabs`).
    Abs64,
    /// A 32-bit immediate (a guard's key compared with `cmp $imm32`).
    Imm32,
}

impl SiteKind {
    pub fn width(self) -> u64 {
        match self {
            SiteKind::Rel32 | SiteKind::Imm32 => 4,
            SiteKind::Abs64 => 8,
        }
    }
}

/// A patchable place in a graph, before linking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteDecl {
    pub symbol: String,
    pub offset: u64,
    pub kind: SiteKind,
}

/// A heap reference in a graph, before linking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapRefDecl {
    pub symbol: String,
    pub offset: u64,
    pub width: u8,
}

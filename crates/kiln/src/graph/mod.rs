//! Graphs: what a JIT compiler hands to kiln instead of an object file ([`InMemoryGraph`]:
//! sections of blocks, with symbols, and edges that are relocations by name), and, inside the
//! crate, the linker's model of one link unit (the LinkGraph every input becomes).
//!
//! A link unit is everything that is linked together into one allocation: the objects given
//! explicitly, the archive members they pull in, the graphs, and what the linker synthesizes
//! (GOT, stubs, `.init` glue). Each input section becomes a section with (usually) one block;
//! `.eh_frame` is split into one block per CIE/FDE. Symbols name offsets in blocks (or are
//! undefined, absolute, or common); edges are relocations. Everything is addressed by index
//! newtypes; input bytes are borrowed for the link.

pub(crate) mod builder;
pub(crate) mod function;
mod spare;

pub use builder::{
    BlockContent, FrameDescription, GraphSectionKind, InMemoryBlock, InMemoryEdge, InMemoryGraph,
    InMemorySection, InMemorySymbol,
};
pub use function::{EdgeRef, FunctionRef};

use crate::arch::{Arch, EdgeKind};
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::hash::BuildHasher;

macro_rules! id {
    ($name:ident) => {
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) struct $name(pub u32);
        impl $name {
            #[inline]
            pub(crate) fn idx(self) -> usize {
                self.0 as usize
            }
        }
    };
}
id!(InputId);
id!(SectionId);
id!(BlockId);
id!(SymbolId);

/// The hash of a global's name in [`LinkGraph::globals`].
fn name_hash(name: &[u8]) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(name)
}

/// Whether two names are the same: as `a == b`, with their last bytes compared before the
/// call that compares the rest. A JIT numbers the functions it names (`f122`, `f123`), so names
/// of one length mostly differ at their end, and a name scanned past costs no call.
#[inline(always)]
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.last() == b.last() && a == b
}

/// A graph of at most this many symbols finds its globals by comparing names, one symbol after
/// another, rather than through a hash table: a JIT's one-function graph (the function, the
/// two or three names it reaches) then hashes no name and fills and clears no table. (Eight
/// short comparisons cost about what hashing a name and one probe do.)
pub(crate) const SCAN_AT_MOST: usize = 8;

/// [`LinkGraph::global_ids`]: the table's entries, or (a graph not indexed) the symbols that
/// are not local. (One loop over whichever it is: a chain of two iterators cost a small
/// graph's passes a dozen instructions a global.)
pub(crate) struct GlobalIds<'g, 'a> {
    indexed: bool,
    table: hashbrown::hash_table::Iter<'g, SymbolId>,
    /// The symbols not yet looked at (when not indexed).
    scan: std::iter::Enumerate<std::slice::Iter<'g, Symbol<'a>>>,
}

impl Iterator for GlobalIds<'_, '_> {
    type Item = SymbolId;

    #[inline]
    fn next(&mut self) -> Option<SymbolId> {
        if self.indexed {
            return self.table.next().copied();
        }
        self.scan
            .find(|(_, s)| s.visibility != Visibility::Local)
            .map(|(i, _)| SymbolId(i as u32))
    }
}

/// No init/fini priority given: runs after all prioritised ones.
pub(crate) const NO_PRIORITY: u32 = 65536;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SectionKind {
    Regular,
    /// `.tdata` (content) or `.tbss` (zero fill): laid out in the TLS template.
    Tls,
    EhFrame,
    /// The zero word that ends the unit's `.eh_frame`.
    EhFrameTerminator,
    PreInitArray,
    InitArray(u32),
    FiniArray(u32),
    /// `.ctors[.N]`, with the priority converted to init_array's scale.
    Ctors(u32),
    Dtors(u32),
    /// `.init` / `.fini` fragments (merged into one function each by a pass).
    Init,
    Fini,
    Got,
    Stubs,
}

impl SectionKind {
    /// The kind's bit in [`LinkGraph::section_kinds`] (one per variant, whatever its priority).
    pub(crate) fn bit(self) -> u32 {
        use SectionKind::*;
        1 << match self {
            Regular => 0,
            Tls => 1,
            EhFrame => 2,
            EhFrameTerminator => 3,
            PreInitArray => 4,
            InitArray(_) => 5,
            FiniArray(_) => 6,
            Ctors(_) => 7,
            Dtors(_) => 8,
            Init => 9,
            Fini => 10,
            Got => 11,
            Stubs => 12,
        }
    }

    /// The bits of the kinds whose blocks hold initializers or finalizers.
    pub(crate) fn init_fini_bits() -> u32 {
        use SectionKind::*;
        [
            PreInitArray,
            InitArray(0),
            FiniArray(0),
            Ctors(0),
            Dtors(0),
            Init,
            Fini,
        ]
        .iter()
        .fold(0, |m, k| m | k.bit())
    }
}

#[derive(Debug)]
pub(crate) struct Section<'a> {
    pub name: &'a [u8],
    pub prot: MemProt,
    pub kind: SectionKind,
    pub input: InputId,
    /// A root of dead-stripping (SHF_GNU_RETAIN, init/fini arrays, `__start_`-able names).
    pub retain: bool,
    /// Index of the section in its ELF input (0 for sections kiln makes).
    pub elf_index: u32,
}

#[derive(Debug)]
pub(crate) enum Content<'a> {
    Bytes(Cow<'a, [u8]>),
    Zero(u64),
}

#[derive(Debug)]
pub(crate) struct Block<'a> {
    pub section: SectionId,
    pub content: Content<'a>,
    pub align: u64,
    pub edges: Vec<Edge>,
    pub live: bool,
    /// Executor address, set by layout (for `.tbss` blocks: unset).
    pub addr: u64,
    /// Offset in the unit's TLS block, for blocks of TLS sections.
    pub tls_offset: u64,
}

impl Block<'_> {
    pub(crate) fn size(&self) -> u64 {
        match &self.content {
            Content::Bytes(b) => b.len() as u64,
            Content::Zero(n) => *n,
        }
    }
    pub(crate) fn is_zero_fill(&self) -> bool {
        matches!(self.content, Content::Zero(_))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Visible to other units and to lookups (STV_DEFAULT, STV_PROTECTED).
    Default,
    /// Global within this unit only (STV_HIDDEN, STV_INTERNAL).
    Hidden,
    /// Local to its object (STB_LOCAL).
    Local,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SymbolDef {
    /// Referenced, not (yet) defined.
    Undefined,
    Defined {
        block: BlockId,
        offset: u64,
    },
    /// An absolute address: `SHN_ABS`, a host symbol, a `--define`.
    Absolute(u64),
    /// A COMMON symbol, turned into zero-fill by a pass.
    Common {
        size: u64,
        align: u64,
    },
    /// Defined in a COMDAT group that lost to another copy, or a section kiln drops.
    Discarded,
}

#[derive(Debug)]
pub(crate) struct Symbol<'a> {
    pub name: &'a [u8],
    pub def: SymbolDef,
    pub size: u64,
    pub weak: bool,
    pub visibility: Visibility,
    pub callable: bool,
    pub tls: bool,
    /// The input that defines it (or first referenced it).
    pub input: InputId,
    /// A global that every reference so far is weak: resolves to 0 if found nowhere.
    pub only_weak_refs: bool,
    /// STT_GNU_IFUNC: the symbol is a resolver; references reach the implementation it picks.
    pub ifunc: bool,
}

#[derive(Copy, Clone, Debug)]
pub(crate) struct Edge {
    pub offset: u32,
    pub kind: EdgeKind,
    pub target: SymbolId,
    pub addend: i64,
}

#[derive(Debug)]
pub(crate) struct InputInfo<'a> {
    pub name: Cow<'a, str>,
    /// Given explicitly (its default-visibility globals are exported roots), rather than an
    /// archive member pulled in on demand.
    pub explicit: bool,
    /// The input's bytes (the whole ELF object; empty for what kiln synthesizes): debug objects
    /// for gdb and line tables for jitdump are made from them.
    pub data: &'a [u8],
}

#[derive(Debug)]
pub(crate) struct LinkGraph<'a> {
    /// The instruction set of every input of the unit.
    pub arch: &'static dyn Arch,
    /// `arch`'s [`Arch::elf_machine`], asked once: what the graph builders check each edge's
    /// kind against ([`crate::arch::EdgeKind::elf_machine`]) without a call through `arch`.
    pub machine: u16,
    /// (Inline for two inputs, a JIT's function and the linker's own input: a table kept
    /// for the next graph costs its drop more than two entries cost the graph.)
    pub inputs: smallvec::SmallVec<[InputInfo<'a>; 2]>,
    pub sections: Vec<Section<'a>>,
    pub blocks: Vec<Block<'a>>,
    pub symbols: Vec<Symbol<'a>>,
    /// The global symbols, hashed by name (their names are in `symbols`: the table borrows
    /// nothing, so that it can be kept for the thread's next link, see `spare`), once the
    /// graph has more than [`SCAN_AT_MOST`] symbols (`indexed`); until then empty, and a global
    /// is found by a scan of the few symbols. Looked up with [`LinkGraph::global`], listed with
    /// [`LinkGraph::global_ids`].
    pub globals: hashbrown::HashTable<SymbolId>,
    /// `globals` holds every global symbol. Without it, the globals are the symbols whose
    /// visibility is not `Local` (every global is made by `global_ref`, every other symbol is
    /// local), and there are at most [`SCAN_AT_MOST`] symbols.
    pub indexed: bool,
    /// The box this graph's tables came in (`spare`), holding the empty edge lists the
    /// thread's last small graph left, for this graph's blocks ([`LinkGraph::edge_list`]).
    /// (`None` only while the graph is dropped.)
    pub spare: Option<Box<spare::Spare>>,
    /// COMDAT group signatures seen: the first group of each wins.
    pub comdats: FxHashMap<&'a [u8], InputId>,
    /// Strong definitions that clashed: (symbol, first definer, second definer).
    pub duplicates: Vec<(SymbolId, InputId, InputId)>,
    /// (function block, FDE block): the FDE is live while the function is. Kept beside the
    /// edges rather than as `KeepAlive` edges on the function, whose (often large) edge vectors
    /// would otherwise grow once per FDE.
    pub keep_alive: Vec<(BlockId, BlockId)>,
    /// Every kind a section was added with ([`SectionKind::bit`]): a pass for kinds the unit
    /// has no section of (`.init`, init arrays, `.eh_frame`, TLS) knows so without a scan, and
    /// does nothing — a JIT's function has none of them.
    pub section_kinds: u32,
    /// A COMMON symbol was added or defined (`add_symbol`, `define_global`; only ELF objects
    /// have them): without one, the pass that turns them into zero fill has nothing to scan.
    pub has_commons: bool,
}

/// Whether the linker may define a global of this name when nothing else does: its own
/// symbols and the Rust allocator shim all start with `_`; glibc's libc_nonshared functions
/// do not.
///
/// (Always inline: the first byte decides for most names, the length for most others, and a
/// call cost a JIT's link more than that test; the names compared are out of line.)
#[inline(always)]
pub(crate) fn may_name_linker_glue(name: &[u8]) -> bool {
    match name.first() {
        Some(b'_') => true,
        Some(b'a' | b'p') if name.len() >= 6 => names_libc_glue(name),
        _ => false,
    }
}

/// Whether `name` is one of glibc's libc_nonshared functions the linker may define.
#[inline(never)]
fn names_libc_glue(name: &[u8]) -> bool {
    matches!(name, b"atexit" | b"at_quick_exit" | b"pthread_atfork")
}

impl<'a> LinkGraph<'a> {
    pub(crate) fn new(arch: &'static dyn Arch) -> Self {
        Self::with_capacity(arch, 0, 0, 0)
    }

    /// A graph with room for this many sections, blocks and symbols (and as many globals), so
    /// that building a small graph allocates each table once. Its tables are the ones the
    /// thread's last small graph left (`spare`), when there are: a JIT linking one function
    /// after another then allocates none.
    ///
    /// (Inline: the graph, about 250 bytes, is then built where the caller keeps it, not copied.)
    #[inline]
    pub(crate) fn with_capacity(
        arch: &'static dyn Arch,
        sections: usize,
        blocks: usize,
        symbols: usize,
    ) -> Self {
        spare::take(arch, sections, blocks, symbols)
    }

    /// Hash every global into `globals` (with room for `more` more), from now on the way
    /// globals are found.
    #[cold]
    #[inline(never)]
    fn index_globals(&mut self, more: usize) {
        self.take_spare_globals();
        let names = &self.symbols;
        self.globals
            .reserve(more, |id| name_hash(names[id.idx()].name));
        for (i, s) in self.symbols.iter().enumerate() {
            if s.visibility != Visibility::Local {
                self.globals
                    .insert_unique(name_hash(s.name), SymbolId(i as u32), |id| {
                        name_hash(names[id.idx()].name)
                    });
            }
        }
        self.indexed = true;
    }

    /// In a graph not yet indexed: the global `name`, by a scan of the symbols.
    #[inline]
    fn scan_global(&self, name: &[u8]) -> Option<SymbolId> {
        self.symbols
            .iter()
            .position(|s| s.visibility != Visibility::Local && same_name(s.name, name))
            .map(|i| SymbolId(i as u32))
    }

    /// Whether a section of one of the kinds in `bits` ([`SectionKind::bit`]) may exist (a pass
    /// may have changed a section's kind since: then this says yes, and the pass that asks
    /// scans the sections).
    pub(crate) fn may_have(&self, bits: u32) -> bool {
        self.section_kinds & bits != 0
    }

    /// The global symbol `name`, if the graph has one (defined or not).
    pub(crate) fn global(&self, name: &[u8]) -> Option<SymbolId> {
        if !self.indexed {
            return self.scan_global(name);
        }
        let symbols = &self.symbols;
        self.globals
            .find(name_hash(name), |id| symbols[id.idx()].name == name)
            .copied()
    }

    /// The global symbols, in no particular order.
    #[inline]
    pub(crate) fn global_ids(&self) -> GlobalIds<'_, 'a> {
        GlobalIds {
            indexed: self.indexed,
            table: self.globals.iter(),
            scan: self.symbols.iter().enumerate(),
        }
    }

    /// At least as many as there are global symbols (exactly as many, once indexed).
    pub(crate) fn globals_at_most(&self) -> usize {
        if self.indexed {
            self.globals.len()
        } else {
            self.symbols.len()
        }
    }

    /// The table row of an edge kind (every edge of a graph has one: graphs are built with
    /// kinds of their own architecture, checked as each edge is added). Read off the kind, not
    /// asked of the architecture through `dyn Arch`: passes ask it for every edge.
    #[inline]
    pub(crate) fn edge_info(&self, kind: EdgeKind) -> &'static crate::arch::EdgeInfo {
        kind.info()
    }

    /// An empty list for a block's edges, with room for `capacity`: in a small graph, one the
    /// thread's last small graph left when there is one (a JIT linking one function after
    /// another then allocates and frees no edge list per block). (A large graph's blocks take
    /// the few there are, and keep their own: they are freed with it.)
    #[inline]
    pub(crate) fn edge_list(&mut self, capacity: usize) -> Vec<Edge> {
        match self.spare.as_mut().and_then(|s| s.edge_lists.pop()) {
            Some(mut list) => {
                list.reserve(capacity);
                list
            }
            // (Not `reserve` on an empty list: allocating through it costs a hundred
            // instructions more.)
            None => Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn add_input(&mut self, name: impl Into<Cow<'a, str>>, explicit: bool) -> InputId {
        self.inputs.push(InputInfo {
            name: name.into(),
            explicit,
            data: &[],
        });
        InputId(self.inputs.len() as u32 - 1)
    }

    pub(crate) fn input_name(&self, id: InputId) -> &str {
        self.inputs.get(id.idx()).map_or("<kiln>", |i| &i.name)
    }

    pub(crate) fn add_section(&mut self, s: Section<'a>) -> SectionId {
        self.section_kinds |= s.kind.bit();
        self.sections.push(s);
        SectionId(self.sections.len() as u32 - 1)
    }

    pub(crate) fn add_block(
        &mut self,
        section: SectionId,
        content: Content<'a>,
        align: u64,
    ) -> BlockId {
        self.blocks.push(Block {
            section,
            content,
            align: align.max(1),
            edges: Vec::new(),
            live: false,
            addr: 0,
            tls_offset: 0,
        });
        BlockId(self.blocks.len() as u32 - 1)
    }

    pub(crate) fn add_symbol(&mut self, s: Symbol<'a>) -> SymbolId {
        self.has_commons |= matches!(s.def, SymbolDef::Common { .. });
        self.symbols.push(s);
        if !self.indexed && self.symbols.len() > SCAN_AT_MOST {
            self.index_globals(0);
        }
        SymbolId(self.symbols.len() as u32 - 1)
    }

    pub(crate) fn section_of(&self, b: BlockId) -> &Section<'a> {
        &self.sections[self.blocks[b.idx()].section.idx()]
    }

    pub(crate) fn block_input(&self, b: BlockId) -> InputId {
        self.section_of(b).input
    }

    /// A local, anonymous symbol at `offset` in `block`.
    pub(crate) fn add_anon(&mut self, block: BlockId, offset: u64, input: InputId) -> SymbolId {
        self.add_local(SymbolDef::Defined { block, offset }, input)
    }

    /// A local, anonymous symbol with the given definition (e.g. `Absolute(0)` for a relocation
    /// that names no symbol).
    pub(crate) fn add_local(&mut self, def: SymbolDef, input: InputId) -> SymbolId {
        self.add_symbol(Symbol {
            name: b"",
            def,
            size: 0,
            weak: false,
            visibility: Visibility::Local,
            callable: false,
            tls: false,
            input,
            only_weak_refs: false,
            ifunc: false,
        })
    }

    /// The global symbol `name`, created undefined if it does not exist yet. (Always inline:
    /// a small graph's scan is short, and as a call its prologue and epilogue cost a JIT's
    /// function about 20 instructions an edge; the hashed path is out of line.)
    #[inline(always)]
    pub(crate) fn global_ref(
        &mut self,
        name: &'a [u8],
        input: InputId,
        weak_ref: bool,
    ) -> SymbolId {
        if !self.indexed {
            if let Some(id) = self.scan_global(name) {
                if !weak_ref {
                    self.symbols[id.idx()].only_weak_refs = false;
                }
                return id;
            }
            if self.symbols.len() < SCAN_AT_MOST {
                return self.add_global(name, input, weak_ref);
            }
            self.index_globals(1);
        }
        self.hashed_global_ref(name, input, weak_ref)
    }

    /// [`LinkGraph::global_ref`] in an indexed graph (out of line: a small graph's
    /// references, the usual JIT's, then cost no more than their scan).
    #[inline(never)]
    fn hashed_global_ref(&mut self, name: &'a [u8], input: InputId, weak_ref: bool) -> SymbolId {
        let hash = name_hash(name);
        let symbols = &self.symbols;
        // One probe finds the name or the slot it goes into (a new name is the usual case: a
        // JIT's function and the names its edges reach).
        let entry = self.globals.entry(
            hash,
            |id| symbols[id.idx()].name == name,
            |id| name_hash(symbols[id.idx()].name),
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => {
                let id = *found.get();
                if !weak_ref {
                    self.symbols[id.idx()].only_weak_refs = false;
                }
                return id;
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        vacant.insert(SymbolId(self.symbols.len() as u32));
        self.add_global(name, input, weak_ref)
    }

    /// A new undefined global `name` (in `globals` already, if the graph is indexed).
    fn add_global(&mut self, name: &'a [u8], input: InputId, weak_ref: bool) -> SymbolId {
        self.add_symbol(Symbol {
            name,
            def: SymbolDef::Undefined,
            size: 0,
            weak: false,
            visibility: Visibility::Default,
            callable: false,
            tls: false,
            input,
            only_weak_refs: weak_ref,
            ifunc: false,
        })
    }

    /// Define global `name` (strong or weak), following ld's rules: a strong definition beats a
    /// weak one and a COMMON one, the first weak definition is kept, two strong definitions are an
    /// error (recorded in `duplicates`), the largest COMMON wins.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn define_global(
        &mut self,
        name: &'a [u8],
        def: SymbolDef,
        size: u64,
        weak: bool,
        visibility: Visibility,
        callable: bool,
        tls: bool,
        input: InputId,
    ) -> SymbolId {
        self.has_commons |= matches!(def, SymbolDef::Common { .. });
        let id = self.global_ref(name, input, true);
        let (odef, oweak, oinput) = {
            let s = &self.symbols[id.idx()];
            (s.def, s.weak, s.input)
        };
        let replace = match (odef, def) {
            (SymbolDef::Undefined, _) | (SymbolDef::Discarded, _) => true,
            (
                SymbolDef::Common {
                    size: os,
                    align: oa,
                },
                SymbolDef::Common {
                    size: ns,
                    align: na,
                },
            ) => {
                let s = &mut self.symbols[id.idx()];
                s.def = SymbolDef::Common {
                    size: os.max(ns),
                    align: oa.max(na),
                };
                s.size = os.max(ns);
                false
            }
            (SymbolDef::Common { .. }, _) => !weak,
            (_, SymbolDef::Common { .. }) => oweak,
            (_, _) if oweak && !weak => true,
            (_, _) if !oweak && !weak => {
                self.duplicates.push((id, oinput, input));
                false
            }
            _ => false,
        };
        let s = &mut self.symbols[id.idx()];
        if replace {
            s.def = def;
            s.size = size;
            s.weak = weak;
            s.callable = callable;
            s.tls = tls;
            s.input = input;
        }
        // The most restrictive visibility wins (as in ld).
        if visibility == Visibility::Hidden {
            s.visibility = Visibility::Hidden;
        }
        id
    }

    /// Address of a defined symbol (after layout).
    pub(crate) fn symbol_addr(&self, id: SymbolId) -> Option<u64> {
        match self.symbols[id.idx()].def {
            SymbolDef::Defined { block, offset } => Some(self.blocks[block.idx()].addr + offset),
            SymbolDef::Absolute(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn name_of(&self, id: SymbolId) -> String {
        let s = &self.symbols[id.idx()];
        if s.name.is_empty() {
            match s.def {
                SymbolDef::Defined { block, offset } => {
                    let sec = self.section_of(block);
                    format!("{}+{offset:#x}", String::from_utf8_lossy(sec.name))
                }
                _ => "<anonymous>".into(),
            }
        } else {
            String::from_utf8_lossy(s.name).into_owned()
        }
    }
}

/// Graphs for the link passes' unit tests, built as the front ends build them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// An x86-64 graph with one input (`explicit` or not) and its `.text` section (`retain`ed
    /// or not), still without blocks.
    pub(crate) fn graph_with_text(
        input: &'static str,
        explicit: bool,
        retain: bool,
    ) -> (LinkGraph<'static>, InputId, SectionId) {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let mut g = LinkGraph::new(arch);
        let (input, section) = add_text(&mut g, input, explicit, retain);
        (g, input, section)
    }

    /// An input (`explicit` or not) and its `.text` section (`retain`ed or not), added to `g`.
    pub(crate) fn add_text(
        g: &mut LinkGraph<'_>,
        input: &'static str,
        explicit: bool,
        retain: bool,
    ) -> (InputId, SectionId) {
        let input = g.add_input(input, explicit);
        let section = g.add_section(Section {
            name: b".text",
            prot: MemProt::ReadExec,
            kind: SectionKind::Regular,
            input,
            retain,
            elf_index: 0,
        });
        (input, section)
    }

    /// A strong, callable, default-visibility symbol of `input`.
    pub(crate) fn function_symbol<'a>(
        name: &'a [u8],
        def: SymbolDef,
        input: InputId,
    ) -> Symbol<'a> {
        Symbol {
            name,
            def,
            size: 0,
            weak: false,
            visibility: Visibility::Default,
            callable: true,
            tls: false,
            input,
            only_weak_refs: false,
            ifunc: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same calls on a graph that finds its globals by scanning (few symbols, until it
    /// grows past [`SCAN_AT_MOST`]) and on one indexed from the start give the same symbols,
    /// the same answers to `global` and the same globals listed.
    #[test]
    fn scanned_globals_agree_with_the_table() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let names: Vec<Vec<u8>> = (0..7).map(|i| format!("n{i}").into_bytes()).collect();
        for steps in 0..24 {
            let mut scan = LinkGraph::with_capacity(arch, 1, 1, 2);
            let mut table = LinkGraph::with_capacity(arch, 1, 1, SCAN_AT_MOST + 1);
            assert!(!scan.indexed && table.indexed);
            for g in [&mut scan, &mut table] {
                let (input, section) = fixtures::add_text(g, "a", true, false);
                let block = g.add_block(section, Content::Zero(8), 8);
                for step in 0..steps {
                    let name = &names[(step * 5) % names.len()];
                    match step % 4 {
                        0 => {
                            g.global_ref(name, input, step % 3 == 0);
                        }
                        1 => {
                            g.define_global(
                                name,
                                SymbolDef::Defined { block, offset: 0 },
                                8,
                                step % 3 == 0,
                                Visibility::Default,
                                true,
                                false,
                                input,
                            );
                        }
                        // A local of the same name as a global: never found as one.
                        2 => {
                            let id = g.add_anon(block, 0, input);
                            g.symbols[id.idx()].name = name;
                        }
                        _ => {
                            g.add_local(SymbolDef::Absolute(0), input);
                        }
                    }
                }
            }
            assert_eq!(scan.indexed, scan.symbols.len() > SCAN_AT_MOST);
            assert_eq!(scan.symbols.len(), table.symbols.len());
            for (a, b) in scan.symbols.iter().zip(&table.symbols) {
                assert_eq!(
                    (a.name, a.def, a.weak, a.only_weak_refs, a.visibility),
                    (b.name, b.def, b.weak, b.only_weak_refs, b.visibility)
                );
            }
            for name in names
                .iter()
                .map(|n| n.as_slice())
                .chain([b"none".as_slice()])
            {
                assert_eq!(scan.global(name), table.global(name));
            }
            let mut listed: Vec<_> = scan.global_ids().collect();
            let mut indexed: Vec<_> = table.global_ids().collect();
            listed.sort();
            indexed.sort();
            assert_eq!(listed, indexed);
            assert!(scan.globals_at_most() >= listed.len());
        }
    }
}

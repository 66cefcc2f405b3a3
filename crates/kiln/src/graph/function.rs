//! A function a JIT hands over borrowed: its name, code and edges stay the JIT's, and linking it
//! allocates none of them ([`crate::Session::link_function`]). It is read into the same link
//! graph an [`InMemoryGraph`] with one [`InMemoryGraph::add_function`] becomes, through the same
//! checks (`builder::bind_edge`, `builder::add_frame_pointer_unwind`): another front end, one pipeline.

use super::builder::{add_frame_pointer_unwind, bind_edge};
use crate::arch::EdgeKind;
use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;

/// One function, borrowed from the JIT that compiled it: a code block in an executable section
/// named `.text`, a global symbol `name` (default visibility, strong, callable) at its start,
/// and the edges (relocations) its code needs. Linked as an [`InMemoryGraph`] holding one
/// [`InMemoryGraph::add_function`] of the same name, code and edges is — the same unit, the same
/// errors — without building one: nothing is copied or allocated for the input.
///
/// ```
/// use kiln::arch::x86_64::EdgeKind;
/// use kiln::graph::{EdgeRef, FunctionRef};
///
/// let session = kiln::Session::in_process();
/// // `answer` returns 42; `twice` calls it and doubles the result:
/// // call answer; add eax, eax; ret
/// let answer = [0xb8, 42, 0, 0, 0, 0xc3];
/// session.link_function(&FunctionRef::new("answer", &answer, &[]))?;
/// let twice = [0xe8, 0, 0, 0, 0, 0x01, 0xc0, 0xc3];
/// let edges = [EdgeRef::new(1, EdgeKind::BranchPCRel32, "answer", -4)];
/// session.link_function(&FunctionRef::new("twice", &twice, &edges))?;
/// let f = session.lookup("twice").expect("twice is defined");
/// assert_eq!(session.executor().call(f, &[])? as u32, 84);
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FunctionRef<'a> {
    /// The function's symbol; also what messages call the input.
    pub name: &'a str,
    pub code: &'a [u8],
    pub edges: &'a [EdgeRef<'a>],
    /// How the unwinder gets through the function (see [`FrameDescription`]).
    pub frame: Option<FrameDescription>,
}

/// An edge of a [`FunctionRef`]: an [`InMemoryEdge`] whose target name is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EdgeRef<'a> {
    /// Where in the code the edge's field is.
    pub offset: u32,
    pub kind: EdgeKind,
    /// A symbol of another input of the link, of an earlier unit, or of the host (or the
    /// function itself).
    pub target: &'a str,
    pub addend: i64,
}

impl<'a> FunctionRef<'a> {
    /// A function without unwind information.
    pub fn new(name: &'a str, code: &'a [u8], edges: &'a [EdgeRef<'a>]) -> Self {
        FunctionRef {
            name,
            code,
            edges,
            frame: None,
        }
    }

    /// The same function as an [`InMemoryGraph`] of its own, owning copies (what a link that
    /// must ask the session's definition generators is made from).
    pub fn to_graph(&self) -> InMemoryGraph {
        let mut g = InMemoryGraph::new(self.name);
        let edges = self
            .edges
            .iter()
            .map(|e| InMemoryEdge::new(e.offset, e.kind, e.target, e.addend))
            .collect();
        g.add_function(self.name, self.code.to_vec(), edges, self.frame);
        g
    }
}

impl<'a> EdgeRef<'a> {
    pub fn new(offset: u32, kind: impl Into<EdgeKind>, target: &'a str, addend: i64) -> Self {
        EdgeRef {
            offset,
            kind: kind.into(),
            target,
            addend,
        }
    }
}

/// Define the function's symbol `name` at the start of `block`, as `define_global` does: in a
/// graph with no symbol yet (a link of one function, a JIT's usual), nothing can clash with it
/// and what `define_global` makes of a new name is pushed as it is, without its look-up and
/// its rules (about 60 instructions).
#[inline(always)]
fn define_function<'a>(
    g: &mut LinkGraph<'a>,
    name: &'a [u8],
    block: BlockId,
    size: u64,
    input: InputId,
) -> SymbolId {
    if g.symbols.is_empty() && !g.indexed {
        return g.add_symbol(Symbol {
            name,
            def: SymbolDef::Defined { block, offset: 0 },
            size,
            weak: false,
            visibility: Visibility::Default,
            callable: true,
            tls: false,
            input,
            // (A definition is no reference: `define_global` leaves a new name's mark set, as
            // `global_ref` made it for a weak reference, until a strong reference clears it.)
            only_weak_refs: true,
            ifunc: false,
        });
    }
    define_function_in_general(g, name, block, size, input)
}

/// [`define_function`] in a graph that has symbols already: `define_global`'s rules.
fn define_function_in_general<'a>(
    g: &mut LinkGraph<'a>,
    name: &'a [u8],
    block: BlockId,
    size: u64,
    input: InputId,
) -> SymbolId {
    g.define_global(
        name,
        SymbolDef::Defined { block, offset: 0 },
        size,
        false,
        Visibility::Default,
        true,
        false,
        input,
    )
}

/// The section name every function gets (as [`InMemoryGraph::add_function`] gives).
const TEXT: &str = ".text";

/// Add a borrowed function to the link unit, as an explicitly given input: what
/// `builder::add_graph` does for a graph holding one `add_function`, in one pass.
pub(crate) fn add_function<'a>(g: &mut LinkGraph<'a>, f: &FunctionRef<'a>) -> Result<InputId> {
    let bad =
        |offset: Option<u64>, what: String| Error::malformed(f.name, Some(TEXT), offset, what);
    let input = g.add_input(f.name, true);
    let section = g.add_section(Section {
        name: TEXT.as_bytes(),
        prot: MemProt::ReadExec,
        kind: SectionKind::Regular,
        input,
        retain: false,
        elf_index: 0,
    });
    let block = g.add_block(
        section,
        Content::Bytes(std::borrow::Cow::Borrowed(f.code)),
        16,
    );
    let size = f.code.len() as u64;
    define_function(g, f.name.as_bytes(), block, size, input);
    // No locals: every target is a global of the unit (the function itself included).
    let locals = FxHashMap::default();
    let mut edges = g.edge_list(f.edges.len());
    for e in f.edges {
        let edge = bind_edge(
            g,
            &locals,
            input,
            size,
            (e.offset, e.kind, e.target, e.addend),
        )
        .map_err(|(offset, what)| bad(offset, what))?;
        edges.push(edge);
    }
    g.blocks[block.idx()].edges = edges;
    if f.frame == Some(FrameDescription::FramePointer) {
        add_frame_pointer_unwind(g, block, input, &mut None).map_err(|what| bad(None, what))?;
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first function's symbol pushed straight is the one `define_global`'s rules make of it
    /// in a graph just as empty; and a graph with symbols takes the rules (a second function of
    /// the same name is a duplicate, one an earlier edge referenced is defined in place).
    #[test]
    fn a_first_functions_symbol_is_what_define_global_makes() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let key = |s: &Symbol| {
            (
                s.name.to_vec(),
                s.def,
                s.size,
                s.weak,
                s.visibility,
                s.callable,
                s.tls,
                s.input,
                s.only_weak_refs,
                s.ifunc,
            )
        };
        for size in [0u64, 1, 160] {
            let mut fast = LinkGraph::with_capacity(arch, 1, 1, 2);
            let mut general = LinkGraph::with_capacity(arch, 1, 1, 2);
            let mut ids = Vec::new();
            for (g, straight) in [(&mut fast, true), (&mut general, false)] {
                let (input, section) = fixtures::add_text(g, "f", true, false);
                let block = g.add_block(section, Content::Zero(size), 16);
                assert!(g.symbols.is_empty());
                ids.push(if straight {
                    define_function(g, b"f", block, size, input)
                } else {
                    define_function_in_general(g, b"f", block, size, input)
                });
            }
            assert_eq!(ids[0], ids[1]);
            assert_eq!(fast.symbols.len(), 1);
            assert_eq!(key(&fast.symbols[0]), key(&general.symbols[0]));
            assert_eq!(fast.global(b"f"), general.global(b"f"));
            assert!(fast.duplicates.is_empty() && !fast.has_commons);
        }
        // Not the first symbol: the rules decide.
        let mut g = LinkGraph::with_capacity(arch, 2, 2, 4);
        let (input, section) = fixtures::add_text(&mut g, "f", true, false);
        let block = g.add_block(section, Content::Zero(4), 16);
        let referenced = g.global_ref(b"g", input, false);
        assert_eq!(define_function(&mut g, b"g", block, 4, input), referenced);
        assert!(matches!(
            g.symbols[referenced.idx()].def,
            SymbolDef::Defined { .. }
        ));
        assert!(!g.symbols[referenced.idx()].only_weak_refs);
        define_function(&mut g, b"g", block, 4, input);
        assert_eq!(g.duplicates.len(), 1);
        assert_eq!(g.symbols.len(), 1);
    }

    /// Linking a borrowed function through the straight path gives the graph a graph of one
    /// `add_function` gives (the general builder).
    #[test]
    fn a_lent_function_reads_as_its_graph() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let code = [0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xc3];
        let edges = [
            EdgeRef::new(
                1,
                EdgeKind::X86_64(crate::arch::x86_64::EdgeKind::BranchPCRel32),
                "abs",
                -4,
            ),
            EdgeRef::new(
                6,
                EdgeKind::X86_64(crate::arch::x86_64::EdgeKind::BranchPCRel32),
                "f",
                -4,
            ),
        ];
        let f = FunctionRef::new("f", &code, &edges);
        let owned = f.to_graph();
        let mut lent = LinkGraph::with_capacity(arch, 1, 1, 3);
        let mut built = LinkGraph::with_capacity(arch, 1, 1, 3);
        add_function(&mut lent, &f).expect("lent");
        super::super::builder::add_graph(&mut built, &owned).expect("built");
        assert_eq!(lent.symbols.len(), built.symbols.len());
        for (a, b) in lent.symbols.iter().zip(&built.symbols) {
            assert_eq!(
                (
                    a.name,
                    a.def,
                    a.size,
                    a.weak,
                    a.visibility,
                    a.callable,
                    a.only_weak_refs
                ),
                (
                    b.name,
                    b.def,
                    b.size,
                    b.weak,
                    b.visibility,
                    b.callable,
                    b.only_weak_refs
                )
            );
        }
        let edges = |g: &LinkGraph| {
            g.blocks
                .iter()
                .flat_map(|b| &b.edges)
                .map(|e| (e.offset, e.kind, e.target, e.addend))
                .collect::<Vec<_>>()
        };
        assert_eq!(edges(&lent), edges(&built));
    }
}

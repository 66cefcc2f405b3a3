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
    g.define_global(
        f.name.as_bytes(),
        SymbolDef::Defined { block, offset: 0 },
        size,
        false,
        Visibility::Default,
        true,
        false,
        input,
    );
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

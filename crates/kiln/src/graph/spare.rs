//! The tables of the thread's last small link graph, kept for its next one: a JIT that links
//! one small unit after another builds every graph in the same memory rather than allocating
//! and freeing five tables each time (about a tenth of what linking a one-function graph
//! costs).
//!
//! A graph's tables hold data borrowed for its link (`LinkGraph<'a>`). They are kept empty, as
//! vectors of the same element types at `'static`: [`relabel`] turns a graph's emptied vector
//! into one, keeping its allocation, and a `'static` vector is an `'a` one as it is.

use super::*;
use std::cell::Cell;

/// Tables with room for more elements than this are freed with their graph rather than kept:
/// a thread that linked a large program once should not hold its tables for good.
pub(super) const KEEP_AT_MOST: usize = 256;

#[derive(Default)]
struct Spare {
    inputs: Vec<InputInfo<'static>>,
    sections: Vec<Section<'static>>,
    blocks: Vec<Block<'static>>,
    symbols: Vec<Symbol<'static>>,
    globals: hashbrown::HashTable<SymbolId>,
    /// Blocks' edge lists, emptied: a graph takes one per block while it is built
    /// ([`LinkGraph::edge_list`]).
    edge_lists: Vec<Vec<Edge>>,
}

thread_local! {
    /// (An `Option`: the graph that takes the spare leaves `None`, whose drop when the next
    /// spare is put back is one test.)
    static SPARE: Cell<Option<Spare>> = const { Cell::new(None) };
}

/// An empty graph, in the tables the thread's last small graph left (if any: a graph built
/// while another is alive, or on a new thread, starts with none).
#[inline]
pub(super) fn take<'a>(arch: &'static dyn Arch) -> LinkGraph<'a> {
    // (A thread that is exiting has no spare tables. Every field is moved out: nothing of the
    // spare is left to drop.)
    let spare = SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    LinkGraph {
        arch,
        // `'static` tables serve as `'a` ones as they are (a graph's types are covariant).
        inputs: spare.inputs,
        sections: spare.sections,
        blocks: spare.blocks,
        symbols: spare.symbols,
        globals: spare.globals,
        spare_edge_lists: spare.edge_lists,
        comdats: FxHashMap::default(),
        duplicates: Vec::new(),
        keep_alive: Vec::new(),
        section_kinds: 0,
        has_commons: false,
        linker_names: false,
        indexed: false,
    }
}

impl Drop for LinkGraph<'_> {
    /// The graph's tables, emptied, become the thread's spare ones (if they are small).
    fn drop(&mut self) {
        let mut globals = std::mem::take(&mut self.globals);
        // (Clearing an empty table still rewrites its control bytes: a small graph never
        // filled it.)
        if !globals.is_empty() {
            globals.clear();
        }
        let spare = Spare {
            edge_lists: self.keep_edge_lists(),
            inputs: keep(&mut self.inputs),
            sections: keep(&mut self.sections),
            blocks: keep(&mut self.blocks),
            symbols: keep(&mut self.symbols),
            globals: if globals.capacity() <= KEEP_AT_MOST {
                globals
            } else {
                hashbrown::HashTable::new()
            },
        };
        // During the thread's exit the spare may be gone already: the tables are freed then.
        let _ = SPARE.try_with(|s| s.set(Some(spare)));
    }
}

impl LinkGraph<'_> {
    /// The spare edge lists the graph took and did not use, with the (small) blocks' edge
    /// lists, emptied: at most [`KEEP_AT_MOST`] lists of at most as many edges each. A large
    /// graph's blocks keep theirs (they are freed with it).
    fn keep_edge_lists(&mut self) -> Vec<Vec<Edge>> {
        let mut lists = std::mem::take(&mut self.spare_edge_lists);
        if self.blocks.capacity() > KEEP_AT_MOST {
            return lists;
        }
        for b in &mut self.blocks {
            let cap = b.edges.capacity();
            if cap == 0 || cap > KEEP_AT_MOST || lists.len() >= KEEP_AT_MOST {
                continue;
            }
            let mut list = std::mem::take(&mut b.edges);
            list.clear();
            lists.push(list);
        }
        lists
    }
}

/// `v` emptied, at `'static`, if it is small enough to keep; an unallocated vector otherwise.
#[inline]
fn keep<T, U>(v: &mut Vec<T>) -> Vec<U> {
    let v = std::mem::take(v);
    if v.capacity() > KEEP_AT_MOST {
        return Vec::new();
    }
    relabel(v)
}

/// `v` emptied, as a vector of `U`: `T` and `U` are one type at two lifetimes here, and
/// collecting a vector's own iterator into a vector of an element type of the same size and
/// alignment reuses its allocation (std's in-place collection; were it not to, this would
/// allocate, never misbehave). No element is converted: the vector is empty.
#[inline]
fn relabel<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_keeps_the_allocation() {
        let name = String::from("f");
        let mut v: Vec<Symbol> = Vec::with_capacity(10);
        v.push(Symbol {
            name: name.as_bytes(),
            def: SymbolDef::Undefined,
            size: 0,
            weak: false,
            visibility: Visibility::Default,
            callable: false,
            tls: false,
            input: InputId(0),
            only_weak_refs: false,
            ifunc: false,
        });
        let at = v.as_ptr() as usize;
        let w: Vec<Symbol<'static>> = relabel(v);
        assert!(w.is_empty());
        assert_eq!(w.capacity(), 10);
        assert_eq!(w.as_ptr() as usize, at);
    }

    #[test]
    fn a_graph_reuses_the_last_graphs_tables() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let name = String::from("f");
        let (sections, symbols) = {
            let mut g = LinkGraph::with_capacity(arch, 3, 3, 3);
            let input = g.add_input("a", true);
            g.global_ref(name.as_bytes(), input, false);
            (g.sections.as_ptr() as usize, g.symbols.as_ptr() as usize)
        };
        let g = LinkGraph::with_capacity(arch, 2, 2, 2);
        assert_eq!(g.sections.as_ptr() as usize, sections);
        assert_eq!(g.symbols.as_ptr() as usize, symbols);
        assert!(g.symbols.is_empty() && g.globals.is_empty() && g.inputs.is_empty());
        assert_eq!(g.global(name.as_bytes()), None);
    }
}

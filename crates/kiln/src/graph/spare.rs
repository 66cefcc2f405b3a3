//! The tables of the thread's last small link graph, kept for its next one: a JIT that links
//! one small unit after another builds every graph in the same memory rather than allocating
//! and freeing four tables (the inputs are inline) each time (about a tenth of what linking a one-function graph
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

/// The tables a graph is built in, emptied. It stays in one box for the thread's life: a
/// graph takes the tables out of it (a move of a few words each, not of the whole struct) and
/// keeps the box, with the spare edge lists in it, until its drop puts the tables back.
#[derive(Default, Debug)]
pub(crate) struct Spare {
    sections: Vec<Section<'static>>,
    blocks: Vec<Block<'static>>,
    symbols: Vec<Symbol<'static>>,
    globals: hashbrown::HashTable<SymbolId>,
    /// Blocks' edge lists, emptied: a graph takes one per block while it is built
    /// ([`LinkGraph::edge_list`]).
    pub(super) edge_lists: Vec<Vec<Edge>>,
}

thread_local! {
    /// (An `Option`: the graph that takes the spare leaves `None`, whose drop when the next
    /// spare is put back is one test. A box: taking it and putting it back move a pointer.)
    static SPARE: Cell<Option<Box<Spare>>> = const { Cell::new(None) };
}

/// An empty graph, in the tables the thread's last small graph left (if any: a graph built
/// while another is alive, or on a new thread, starts with none), with room for this many
/// sections, blocks and symbols (indexed if they are more than [`SCAN_AT_MOST`]).
///
/// (The tables get their room before the graph is made, so that the graph is made where its
/// caller keeps it: made first and then grown, it was built aside and copied, 256 bytes.)
#[inline]
pub(super) fn take<'a>(
    arch: &'static dyn Arch,
    sections: usize,
    blocks: usize,
    symbols: usize,
) -> LinkGraph<'a> {
    // (A thread that is exiting has no spare tables.)
    let mut spare = SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    spare.sections.reserve(sections);
    spare.blocks.reserve(blocks);
    spare.symbols.reserve(symbols);
    let indexed = symbols > SCAN_AT_MOST;
    if indexed {
        // (No symbol yet: `LinkGraph::index_globals` would add none.)
        spare.globals.reserve(symbols, |_| unreachable_hash());
    }
    LinkGraph {
        arch,
        machine: arch.elf_machine(),
        // (Inline, for two: a JIT's function and the linker's own input.)
        inputs: smallvec::SmallVec::new(),
        // `'static` tables serve as `'a` ones as they are (a vector is covariant in its
        // elements, and they in their lifetime; the graph itself is not: its inline `inputs`
        // are a `SmallVec`, which is invariant).
        sections: std::mem::take(&mut spare.sections),
        blocks: std::mem::take(&mut spare.blocks),
        symbols: std::mem::take(&mut spare.symbols),
        // (A small graph's table is never filled: it gets none, and the spare keeps its own,
        // which `LinkGraph::index_globals` takes should the graph grow.)
        globals: if indexed {
            std::mem::take(&mut spare.globals)
        } else {
            hashbrown::HashTable::new()
        },
        spare: Some(spare),
        comdats: FxHashMap::default(),
        duplicates: Vec::new(),
        keep_alive: Vec::new(),
        section_kinds: 0,
        has_commons: false,
        indexed,
    }
}

/// The hasher of an empty table's entries, which there are none of: growing an empty table
/// rehashes nothing.
#[cold]
fn unreachable_hash() -> u64 {
    unreachable!("an empty table has no entry to rehash")
}

impl Drop for LinkGraph<'_> {
    /// The graph's tables, emptied, go back into its spare box (if they are small), and the box
    /// becomes the thread's spare.
    fn drop(&mut self) {
        let Some(mut spare) = self.spare.take() else {
            return;
        };
        // (A small graph has no table of its own: the spare kept its table, nothing to put back.)
        if self.globals.capacity() > 0 {
            self.keep_globals(&mut spare);
        }
        self.keep_edge_lists(&mut spare.edge_lists);
        // (The box's tables are the empty ones `take` left: replacing them frees nothing.)
        spare.sections = keep(&mut self.sections);
        spare.blocks = keep(&mut self.blocks);
        spare.symbols = keep(&mut self.symbols);
        // During the thread's exit the spare may be gone already: the tables are freed then.
        let _ = SPARE.try_with(|s| s.set(Some(spare)));
    }
}

impl LinkGraph<'_> {
    /// The graph's table of globals, emptied, into `spare` (if it is small).
    fn keep_globals(&mut self, spare: &mut Spare) {
        let mut globals = std::mem::take(&mut self.globals);
        // (Clearing an empty table still rewrites its control bytes.)
        if !globals.is_empty() {
            globals.clear();
        }
        if globals.capacity() <= KEEP_AT_MOST {
            spare.globals = globals;
        }
    }

    /// The spare's table of globals, for a graph made small that grows past [`SCAN_AT_MOST`]
    /// symbols (`LinkGraph::index_globals`), if it has none of its own yet.
    pub(super) fn take_spare_globals(&mut self) {
        if self.globals.capacity() == 0 {
            if let Some(spare) = self.spare.as_mut() {
                self.globals = std::mem::take(&mut spare.globals);
            }
        }
    }

    /// The (small) blocks' edge lists, emptied, added to the spare ones in `lists`: at most
    /// [`KEEP_AT_MOST`] lists of at most as many edges each. A large graph's blocks keep theirs
    /// (they are freed with it).
    fn keep_edge_lists(&mut self, lists: &mut Vec<Vec<Edge>>) {
        if self.blocks.capacity() > KEEP_AT_MOST {
            return;
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

    /// An indexed graph's table of globals is kept for the thread's next graphs: a small graph
    /// leaves it in the spare (and has none), a small graph that grows past [`SCAN_AT_MOST`]
    /// takes it, as a graph made indexed does; either finds its globals in it.
    #[test]
    fn the_table_of_globals_is_kept_across_small_graphs() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let names: Vec<Vec<u8>> = (0..100).map(|i| format!("n{i}").into_bytes()).collect();
        let kept = {
            let mut g = LinkGraph::with_capacity(arch, 1, 1, names.len());
            assert!(g.indexed);
            let input = g.add_input("a", true);
            for n in &names {
                g.global_ref(n, input, false);
            }
            g.globals.capacity()
        };
        assert!(kept >= names.len());
        for grown in [false, true, false] {
            let mut g = LinkGraph::with_capacity(arch, 1, 1, 2);
            assert!(!g.indexed);
            assert_eq!(g.globals.capacity(), 0);
            if grown {
                let input = g.add_input("a", true);
                for n in &names[..SCAN_AT_MOST + 1] {
                    g.global_ref(n, input, false);
                }
                assert!(g.indexed);
                assert_eq!(g.globals.capacity(), kept);
                assert_eq!(g.global(&names[3]), Some(SymbolId(3)));
                assert_eq!(g.global(&names[SCAN_AT_MOST + 1]), None);
            }
        }
        let g = LinkGraph::with_capacity(arch, 1, 1, SCAN_AT_MOST + 1);
        assert!(g.indexed && g.globals.is_empty());
        assert_eq!(g.globals.capacity(), kept);
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

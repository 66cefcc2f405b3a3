//! The link pipeline, one fixed order of named passes:
//!
//! parse → archive members → duplicates → runtime symbols, commons, `.init`/`.fini` glue →
//! dead-strip → external symbols → reserve → GOT/stubs/relaxation → layout → fixups →
//! init/fini/eh_frame/TLS actions → finalize.
//!
//! [`link`] reads as that list; each pass is a function of its own (here, or in `passes`,
//! `resolve`, `layout`, `fixup`, `actions`, or the architecture's `build_tables`).

mod actions;
pub mod fixup;
pub mod layout;
mod link_map;
pub mod passes;
mod placement;
pub mod relink;
pub mod resolve;
mod stats;
mod unit_memory;

pub use link_map::{LinkMap, MappedBytes, MappedSection, MappedSymbol, TableEntry};
pub use resolve::{NoSession, SessionSymbols};
pub use stats::LinkStats;

use crate::arch::{TableContext, Tables, TargetValue};
use crate::elf::archive::Archive;
use crate::elf::object::parse_object;
use crate::error::{Error, Result, SymbolReference, Unresolved};
use crate::graph::*;
use crate::session::SymbolKind;
use fixup::FixupContext;
use kiln_target::{AllocId, Executor, LibraryId, Placement, TLS_MODULE_TAG};
use rustc_hash::{FxHashMap, FxHashSet};
use stats::Timer;
use std::borrow::Cow;
use std::sync::Arc;
use unit_memory::UnitMemory;

/// What goes into one link.
pub struct LinkInput<'s> {
    /// Objects given explicitly: (name for messages, bytes).
    pub objects: Vec<(String, &'s [u8])>,
    /// Archives: members are loaded on demand.
    pub archives: Vec<(String, &'s [u8])>,
    /// Graphs a JIT compiler built in memory (a slice the caller holds: no list to allocate
    /// and free for each link).
    pub graphs: &'s [&'s crate::graph::InMemoryGraph],
    /// Functions a JIT lends ([`crate::graph::FunctionRef`]): each an input of its own, as a
    /// graph of one function would be.
    pub functions: &'s [crate::graph::FunctionRef<'s>],
    pub libraries: &'s [LibraryId],
    pub defines: &'s FxHashMap<String, u64>,
    /// Symbols of the session's live units (`&NoSession` for none).
    pub session: &'s dyn SessionSymbols,
    pub process_symbols: bool,
    /// Symbols that must be kept (and defined): the entry point, symbols to look up.
    pub roots: &'s [String],
    pub allow: Option<&'s FxHashSet<String>>,
    /// Place the unit at exactly this address.
    pub fixed_address: Option<u64>,
    /// Record a [`LinkMap`] (addresses of every symbol, GOT entry, stub and section, and the
    /// final bytes) in the linked unit: for check tests and inspection.
    pub want_map: bool,
    /// Count what the link did and time each phase ([`LinkedUnit::stats`]).
    pub collect_stats: bool,
    /// Keep the unit's edges ([`LinkedUnit::relink`]) so they can be applied again after its
    /// code or its targets move.
    pub relink: bool,
    /// Which debugger and profiler sinks learn about the unit.
    pub debug: &'s crate::debug::DebugOptions,
    /// Place the unit in slabs from this memory (sub-page allocations, written through a
    /// writable alias) rather than in a reservation of its own. Used when the executor supports
    /// slabs and no fixed address is asked for.
    pub memory: Option<&'s dyn crate::memory::CodeMemory>,
}

/// A unit's slab ranges: one per slab region at most, inline.
pub type SlabRanges = smallvec::SmallVec<[crate::memory::SlabRange; 3]>;
/// (address, size) of a unit's segments: a JIT's unit has one to three, inline.
pub type Segments = smallvec::SmallVec<[(u64, u64); 3]>;
/// A unit's exports: a JIT's unit usually defines one, inline.
pub type Exports<'g> = smallvec::SmallVec<[Export<'g>; 1]>;

/// A linked, finalized unit in the executor. Its lists are inline for a JIT's small unit, and
/// (from `link_then`) its exports' names are borrowed from the link's inputs, so that
/// handing it over allocates nothing. What few units have (stats, map, relink record) is
/// boxed as the session keeps it: the unit is moved a few times on its way into the
/// session, and is 288 bytes.
#[derive(Debug)]
pub struct LinkedUnit<'g> {
    pub alloc: AllocId,
    /// Global symbols it defines (default and hidden visibility, not thread-local).
    pub exports: Exports<'g>,
    pub has_initializers: bool,
    /// Present when [`LinkInput::collect_stats`] was set.
    pub stats: Option<Box<LinkStats>>,
    /// Present when [`LinkInput::want_map`] was set.
    pub map: Option<Arc<LinkMap>>,
    /// Ranges the unit holds in slabs (empty for a unit in a reservation of its own).
    pub slab_ranges: SlabRanges,
    /// Present when [`LinkInput::relink`] was set.
    pub relink: Option<Arc<relink::RelinkRecord>>,
    /// (address, size) of each segment.
    pub segments: Segments,
    /// The finalize request's actions, when [`LinkInput::relink`] was set: what moving the unit
    /// registers again at its new place.
    pub actions: Option<Arc<Vec<kiln_target::ActionPair>>>,
}

impl LinkedUnit<'_> {
    /// The unit with its exports' names copied out of the link's inputs.
    pub fn into_owned(self) -> LinkedUnit<'static> {
        let exports = self
            .exports
            .into_iter()
            .map(|e| Export {
                name: Cow::Owned(e.name.into_owned()),
                ..e
            })
            .collect();
        LinkedUnit {
            alloc: self.alloc,
            exports,
            has_initializers: self.has_initializers,
            stats: self.stats,
            map: self.map,
            slab_ranges: self.slab_ranges,
            relink: self.relink,
            segments: self.segments,
            actions: self.actions,
        }
    }
}

/// Link `input` into executor memory and finalize it (initializers are not run).
pub fn link(ex: &dyn Executor, input: LinkInput) -> Result<LinkedUnit<'static>> {
    link_then(ex, input, |unit| Ok(unit.into_owned()))
}

/// Link `input` into executor memory, finalize it (initializers are not run), and hand the
/// unit to `then` while the link's graph lives: its exports' names are borrowed from it (from
/// the input graphs and objects), not copied one allocation each. A session copies them into
/// its tables in `then`.
///
/// If `then` fails the unit stays finalized: `then` owns it (and must release it).
pub fn link_then<R>(
    ex: &dyn Executor,
    input: LinkInput,
    then: impl for<'g> FnOnce(LinkedUnit<'g>) -> Result<R>,
) -> Result<R> {
    // (Asked once: a call through `dyn Executor`.)
    let info = ex.info();
    let arch = crate::arch::for_triple(&info.triple).ok_or_else(|| Error::Unsupported {
        at: Default::default(),
        what: format!("executor architecture {}", info.triple).into(),
    })?;
    let mut t = Timer::new(input.collect_stats);
    let names = bumpalo::Bump::new();
    let mut g = graph_for(arch, &input);
    let (linker, roots) = parse_inputs(&mut g, &input, &names)?;
    t.lap("parse");
    // (A JIT's link has no archive: no list of them made, returned and dropped.)
    let archive_members = if input.archives.is_empty() {
        0
    } else {
        load_archives(&mut g, &input)?
    };
    resolve::check_duplicates(&g)?;
    t.lap("archive members");
    let outside = passes::Outside {
        defines: input.defines,
        allow: input.allow,
        all_linker_symbols: input.want_map
            || !input.objects.is_empty()
            || !input.archives.is_empty(),
    };
    let runtime = passes::synthesize_runtime(&mut g, linker, &outside, &names);
    // (The checks inline: a JIT's function has no commons, no `.init`/`.fini`, no `.eh_frame`
    // frame and no archive; a call out of line costs it a dozen instructions each.)
    if g.has_commons {
        passes::allocate_commons(&mut g, linker);
    }
    passes::merge_init_fragments(&mut g, SectionKind::Init, linker);
    passes::merge_init_fragments(&mut g, SectionKind::Fini, linker);
    let live = passes::dead_strip(&mut g, &roots, runtime.dso);
    if g.may_have(SectionKind::EhFrame.bit()) {
        passes::add_eh_frame_terminator(&mut g, linker);
    }
    t.lap("dead-strip");
    let external = resolve_externals(&mut g, ex, &input, &roots)?;
    t.lap("resolve externals");
    // (Placed where it is kept: returned, the 168-byte value was moved out of the result.)
    let mut memory = UnitMemory::unplaced(ex);
    reserve(ex, &g, &input, &mut memory)?;
    t.lap("reserve");
    let (lo, hi) = memory.range();
    let tables = arch.build_tables(
        &mut g,
        &TableContext {
            got: runtime.got,
            linker_input: linker,
            lo,
            hi,
        },
    );
    // (Filled in place: returned, the 208-byte layout was copied out.)
    let mut layout = layout::Layout::default();
    memory.layout(&mut g, info.page_size, &mut layout)?;
    t.lap("GOT, stubs, layout");
    let ctx = fixup_context(ex, &g, &layout, tables.got_block)?;
    let mut has_initializers = false;
    let mut kept_actions = None;
    let (map, alloc) = memory.write_and_finalize(&g, &layout, &ctx, |work| {
        // IFUNC slots first (initializers and other actions may call the functions), then
        // unwind info and TLS, then the debug sinks (read off the final bytes). (Listed here,
        // in the writer, which runs once: listed before it, the list was moved in and what was
        // left of it dropped after, a call.)
        let mut pairs = Vec::new();
        if !tables.ifunc_slots.is_empty() {
            pairs = actions::ifunc_actions(&g, &tables);
        }
        actions::collect_actions(&g, &layout, &ctx, &mut pairs);
        let mut unit = kiln_target::UnitActions {
            actions: pairs,
            initializers: Vec::new(),
            deinitializers: Vec::new(),
        };
        let map = if has_read_back(&g, runtime.dso, &input) {
            read_back(&g, &layout, work, &tables, runtime.dso, &input, &mut unit)
        } else {
            None
        };
        has_initializers = !unit.initializers.is_empty();
        kept_actions = input.relink.then(|| Arc::new(unit.actions.clone()));
        t.lap("fixups, debug info");
        (map, unit)
    })?;
    t.lap("finalize");
    let segments_stat: Vec<_> = if input.collect_stats {
        layout
            .segments
            .iter()
            .map(|s| (s.prot.as_str(), s.addr, s.content_size + s.zero_size))
            .collect()
    } else {
        Vec::new()
    };
    let relink = input.relink.then(|| {
        Arc::new(relink::record(&g, &layout, tables.got_block, &|e| {
            fixup::target_value_of(&g, e, &ctx)
        }))
    });
    // (The lists filled in place, where they are moved into the unit from: returned, each
    // was copied once more. The unit is built in `then`'s argument: built in a local first,
    // it was copied there whole, 288 bytes.)
    let mut exported = Exports::new();
    if one_function(&input) {
        function_exports(&g, linker, input.functions[0].name, &mut exported);
    } else {
        exports(&g, linker, &mut exported);
    }
    let mut segments = Segments::new();
    segment_ranges(&layout, &mut segments);
    then(LinkedUnit {
        alloc,
        exports: exported,
        has_initializers,
        map,
        relink,
        actions: kept_actions,
        segments,
        slab_ranges: memory.keep(),
        stats: input.collect_stats.then(|| {
            Box::new(LinkStats {
                inputs: g.inputs.len() - 1,
                archive_members,
                sections: g.sections.len(),
                blocks: g.blocks.len(),
                live_blocks: live,
                symbols: g.symbols.len(),
                external_symbols: external,
                edges_by_kind: edges_by_kind(&g),
                tables: tables.stats,
                segments: segments_stat,
                phases: t.phases,
            })
        }),
    })
}

/// (address, size) of each of the unit's segments, into `out` (empty). (Pushed one by one:
/// collected from an iterator, smallvec's `extend` cost a one-segment unit about 60
/// instructions more.)
#[inline(always)]
fn segment_ranges(layout: &layout::Layout, out: &mut Segments) {
    for s in &layout.segments {
        out.push((s.addr, s.content_size + s.zero_size));
    }
}

/// An empty link graph; for input made only of in-memory graphs (a JIT's units), with room
/// for all they hold and what the linker adds, so that its tables are allocated once rather
/// than grown push by push.
fn graph_for<'a>(arch: &'static dyn crate::arch::Arch, input: &LinkInput) -> LinkGraph<'a> {
    if !input.objects.is_empty() || !input.archives.is_empty() {
        return LinkGraph::new(arch);
    }
    let (mut sections, mut blocks, mut symbols) = (0, 0, input.roots.len());
    for f in input.functions {
        // Its section and block (and, with a frame, an `.eh_frame` section, CIE and FDE, and
        // two anonymous symbols); its symbol and one per edge target.
        let frame = usize::from(f.frame.is_some());
        sections += 1 + frame;
        blocks += 1 + 2 * frame;
        symbols += 1 + f.edges.len() + 2 * frame;
    }
    // (A JIT's `link_function` lends functions and no graph: no nested loop set up.)
    if input.graphs.is_empty() {
        return LinkGraph::with_capacity(arch, sections + 2, blocks + 2, symbols + 4);
    }
    for sec in input.graphs.iter().flat_map(|g| &g.sections) {
        sections += 1;
        blocks += sec.blocks.len();
        for b in &sec.blocks {
            // Each edge may name a symbol no block defines.
            symbols += b.symbols.len() + b.edges.len();
        }
    }
    // The linker's own input adds a section or two and a few symbols (runtime symbols,
    // `__dso_handle`, a GOT) when something uses them.
    LinkGraph::with_capacity(arch, sections + 2, blocks + 2, symbols + 4)
}

/// Parse the objects and graphs into `g`, add the input that owns what the linker makes, and
/// make the roots (which must be defined: an undefined root pulls its archive member like
/// `ld -u`, [`load_archives`]). (Inline: called, its result went through memory.)
#[inline(always)]
fn parse_inputs<'a>(
    g: &mut LinkGraph<'a>,
    input: &LinkInput<'a>,
    names: &'a bumpalo::Bump,
) -> Result<(InputId, Vec<SymbolId>)> {
    for (name, data) in &input.objects {
        parse_object(g, name, data, true)?;
    }
    for graph in input.graphs {
        crate::graph::builder::add_graph(g, graph)?;
    }
    for f in input.functions {
        crate::graph::function::add_function(g, f)?;
    }
    // (No roots, a JIT's usual link: no collecting from an empty list, which costs a few
    // dozen instructions.)
    let linker = passes::linker_input(g);
    let roots = if input.roots.is_empty() {
        Vec::new()
    } else {
        input
            .roots
            .iter()
            .map(|r| g.global_ref(names.alloc_slice_copy(r.as_bytes()), linker, false))
            .collect()
    };
    Ok((linker, roots))
}

/// Index the archives and load the members that define what the unit references (its roots
/// included); the number of members loaded. (Out of line: a JIT's link has no archive.)
#[inline(never)]
fn load_archives<'a>(g: &mut LinkGraph<'a>, input: &LinkInput<'a>) -> Result<usize> {
    let mut archives = input
        .archives
        .iter()
        .map(|(n, d)| Archive::parse(n, d))
        .collect::<Result<Vec<_>>>()?;
    resolve::load_archive_members(g, &mut archives, input.session)?;
    Ok(archives.iter().map(|a| a.members_loaded()).sum())
}

/// Bind every undefined symbol live code references, and check that the roots are defined.
fn resolve_externals(
    g: &mut LinkGraph,
    ex: &dyn Executor,
    input: &LinkInput,
    roots: &[SymbolId],
) -> Result<usize> {
    let scopes = resolve::ExternalScopes {
        defines: input.defines,
        session: input.session,
        libraries: input.libraries,
        process: input.process_symbols,
        allow: input.allow,
    };
    let external = resolve::resolve_externals(g, ex, &scopes)?;
    // (A JIT's link names no roots: no list collected from none.)
    if roots.is_empty() {
        return Ok(external);
    }
    let undefined: Vec<SymbolReference> = input
        .roots
        .iter()
        .zip(roots)
        .filter(|(_, id)| matches!(g.symbols[id.idx()].def, SymbolDef::Undefined))
        .map(|(name, _)| SymbolReference {
            name: name.clone(),
            referenced_by: vec!["(requested as entry point or root)".into()],
        })
        .collect();
    if !undefined.is_empty() {
        return Err(Error::Unresolved(Box::new(Unresolved {
            undefined,
            ..Default::default()
        })));
    }
    Ok(external)
}

/// Memory for the unit: in a slab within reach of what it references, or (with a fixed address,
/// or an executor without slabs) a reservation of its own, sized for the worst case (every GOT
/// entry and stub needed). Into `memory`, unplaced.
fn reserve<'x>(
    ex: &'x dyn Executor,
    g: &LinkGraph,
    input: &LinkInput<'x>,
    memory: &mut UnitMemory<'x>,
) -> Result<()> {
    let page = ex.info().page_size;
    let bounds = placement::bounds(g, page);
    let bound = bounds
        .size
        .checked_next_multiple_of(page)
        .filter(|b| *b < (1 << 40))
        .ok_or_else(|| Error::Usage("the unit is too large (over 1 TiB)".into()))?;
    let slabs = input
        .memory
        .filter(|_| input.fixed_address.is_none() && ex.supports_slabs());
    match (slabs, input.fixed_address) {
        (Some(slabs), _) => {
            let placement = placement::placement_window(g, &bounds, bound)?;
            memory.in_slab(slabs, placement, bounds.sizes, bounds.aligns)
        }
        (None, Some(addr)) => memory.reserve(bound, Placement::Fixed(addr)),
        (None, None) => {
            let placement = placement::placement_window(g, &bounds, bound)?;
            memory.reserve(bound, placement)
        }
    }
}

/// The values fixups need besides symbols: the GOT, the unit's TLS module value, and (for units
/// using the static TLS models) its block in static TLS, reserved now. (Always inline: called,
/// it cost a JIT's link about 15 instructions more; its rare path is out of line.)
#[inline(always)]
fn fixup_context(
    ex: &dyn Executor,
    g: &LinkGraph,
    layout: &layout::Layout,
    got: Option<BlockId>,
) -> Result<FixupContext> {
    // The unit's identity in the executor (TLS module, debugger registrations): its lowest
    // address, unique among live units.
    let base = unit_base(layout);
    let mut ctx = FixupContext {
        got_base: got.map_or(0, |b| g.blocks[b.idx()].addr),
        tls_module: TLS_MODULE_TAG | (base & 0xffff_ffff_ffff),
        tp_offset: None,
    };
    // A unit without TLS (no layout of it) needs no static TLS block: no edge scan.
    if let Some(t) = layout.tls.as_ref() {
        ctx.tp_offset = static_tls(ex, g, layout, &ctx, t)?;
    }
    Ok(ctx)
}

/// The unit's block in static TLS, if live code needs one (out of line: a JIT's unit has no
/// TLS).
#[cold]
#[inline(never)]
fn static_tls(
    ex: &dyn Executor,
    g: &LinkGraph,
    layout: &layout::Layout,
    ctx: &FixupContext,
    t: &layout::TlsLayout,
) -> Result<Option<i64>> {
    if !needs_static_tls(g) {
        return Ok(None);
    }
    let image = fixup::tls_image(g, layout, ctx)?;
    let off = ex.allocate_static_tls(&image, t.block_size, t.align)?;
    tracing::debug!(
        "static TLS: {} bytes at thread pointer {off:+#x}",
        t.block_size
    );
    Ok(Some(off))
}

fn unit_base(layout: &layout::Layout) -> u64 {
    layout.segments.iter().map(|s| s.addr).min().unwrap_or(0)
}

/// Whether live code uses the local-exec or initial-exec model (directly, or through a relaxed
/// TLS descriptor): then the unit's whole TLS block lives in static TLS.
fn needs_static_tls(g: &LinkGraph) -> bool {
    g.blocks
        .iter()
        .filter(|b| b.live)
        .flat_map(|b| &b.edges)
        .any(|e| g.edge_info(e.kind).value == TargetValue::ThreadPointerOffset)
}

/// Whether anything is read off the final bytes of the unit: not for a JIT's unit (no
/// init/fini sections, no `__dso_handle`, no debug sink, no map).
#[inline]
fn has_read_back(g: &LinkGraph, dso: Option<SymbolId>, input: &LinkInput) -> bool {
    // (Destructured, so that a new sink cannot be missed.)
    let crate::debug::DebugOptions {
        gdb,
        perf_map,
        jitdump,
        valgrind,
    } = input.debug;
    let any_sink = *gdb || *perf_map || *valgrind || jitdump.is_some();
    any_sink || dso.is_some() || input.want_map || g.may_have(SectionKind::init_fini_bits())
}

/// Read the final bytes: initializer and finalizer arrays and debug objects (into `unit`,
/// the debug sinks' actions after the actions it has), the link map (returned). (Out of line:
/// a JIT's unit has nothing to read, [`has_read_back`].)
#[inline(never)]
fn read_back(
    g: &LinkGraph,
    layout: &layout::Layout,
    work: &[&[u8]],
    tables: &Tables,
    dso: Option<SymbolId>,
    input: &LinkInput,
    unit: &mut kiln_target::UnitActions,
) -> Option<Arc<LinkMap>> {
    let (initializers, deinitializers) = actions::collect_init_fini(g, layout, work, dso);
    unit.initializers = initializers;
    unit.deinitializers = deinitializers;
    let mut debug = crate::debug::actions(
        &crate::debug::Unit {
            g,
            layout,
            work,
            stubs: &tables.stubs,
        },
        input.debug,
        unit_base(layout),
    );
    unit.actions.append(&mut debug);
    // (Shared already: the map is large, and the closure that reads it back returns it.)
    input
        .want_map
        .then(|| Arc::new(link_map::link_map(g, tables, layout, work)))
}

/// Edges counted by kind, named once per kind (a unit has a handful of kinds: a linear scan
/// beats hashing).
fn edges_by_kind(g: &LinkGraph) -> Vec<(&'static str, usize)> {
    let mut kinds: Vec<(&'static str, usize)> = Vec::new();
    for e in g.blocks.iter().filter(|b| b.live).flat_map(|b| &b.edges) {
        let name = g.edge_info(e.kind).name;
        match kinds.iter_mut().find(|(k, _)| *k == name) {
            Some((_, n)) => *n += 1,
            None => kinds.push((name, 1)),
        }
    }
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    kinds
}

/// A global symbol a unit defines.
#[derive(Debug, Clone)]
pub struct Export<'g> {
    /// UTF-8: borrowed from the link's inputs when it is (else made so, lossily). Bytes, as
    /// the session's tables take names: an ASCII name (most are) is not checked twice.
    pub name: Cow<'g, [u8]>,
    pub addr: u64,
    pub size: u64,
    pub kind: SymbolKind,
    /// Default (or protected) visibility: seen by other scopes.
    pub exported: bool,
    pub weak: bool,
}

/// The unit's global definitions in live blocks. Thread-local symbols have no address a lookup
/// could use, absolute symbols are host symbols the unit binds to, and what the linker made
/// (`__dso_handle`, the GOT, libc_nonshared's helpers) belongs to the unit alone: none of them is
/// exported. Into `out` (empty).
fn exports<'g>(g: &LinkGraph<'g>, linker: InputId, out: &mut Exports<'g>) {
    if !g.indexed {
        // A small graph (a JIT's function, the few it calls): its globals are its symbols that
        // are not local (what `global_ids` lists, without its iterator), and its exports fit
        // the inline list.
        for s in &g.symbols {
            if s.visibility != Visibility::Local {
                if let Some(e) = export(g, s, linker) {
                    out.push(e);
                }
            }
        }
        return;
    }
    // A larger one gets room for every global (its undefined ones are few): one allocation,
    // no growing.
    if g.globals_at_most() > 8 {
        out.reserve_exact(g.globals_at_most());
    }
    for id in g.global_ids() {
        if let Some(e) = export(g, &g.symbols[id.idx()], linker) {
            out.push(e);
        }
    }
}

/// Whether the link's only input is one lent function (a JIT's `link_function`): then
/// [`function_exports`] lists its exports.
#[inline]
fn one_function(input: &LinkInput) -> bool {
    input.functions.len() == 1
        && input.graphs.is_empty()
        && input.objects.is_empty()
        && input.archives.is_empty()
}

/// [`exports`] of a link whose only input is one lent function ([`one_function`]), `name`: its
/// symbol, the graph's first (`add_function` defines it before anything else is in the graph),
/// is the only global its input defines; every other symbol is a local of its frame, defined
/// by the linker's own input, or bound outside the unit (none of them an export). So the one
/// symbol is read, not every symbol scanned, and its name, the function's, is UTF-8 already
/// (a `str`): not checked again. (Always inline: called, about 15 instructions more.)
#[inline(always)]
fn function_exports<'g>(g: &LinkGraph<'g>, linker: InputId, name: &'g str, out: &mut Exports<'g>) {
    let Some(s) = g.symbols.first() else {
        return;
    };
    debug_assert_eq!(s.name, name.as_bytes());
    if let Some(e) = export_named(g, s, linker, || Cow::Borrowed(name.as_bytes())) {
        out.push(e);
    }
}

/// The global `s` as an export, if it is one ([`exports`]). (Always inline: called, its
/// prologue and the `Option` it returns cost a small graph's exports a third more.)
#[inline(always)]
fn export<'g>(g: &LinkGraph<'g>, s: &Symbol<'g>, linker: InputId) -> Option<Export<'g>> {
    let name = s.name;
    // (ASCII checked first, a word at a time: `from_utf8` goes byte by byte through a short
    // name. The lossy conversion costs more when there is nothing to replace.)
    export_named(g, s, linker, || {
        if name.is_ascii() || std::str::from_utf8(name).is_ok() {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(String::from_utf8_lossy(name).into_owned().into_bytes())
        }
    })
}

/// [`export`], the export's name (`s`'s, as UTF-8) made by `utf8_name` once `s` is known to be
/// one.
#[inline(always)]
fn export_named<'g>(
    g: &LinkGraph<'g>,
    s: &Symbol<'g>,
    linker: InputId,
    utf8_name: impl FnOnce() -> Cow<'g, [u8]>,
) -> Option<Export<'g>> {
    let SymbolDef::Defined { block, offset } = s.def else {
        return None;
    };
    let skip = s.tls
        || !g.blocks[block.idx()].live
        || s.visibility == Visibility::Local
        || g.block_input(block) == linker;
    if skip {
        return None;
    }
    Some(Export {
        name: utf8_name(),
        addr: g.blocks[block.idx()].addr + offset,
        size: s.size,
        kind: if s.callable {
            SymbolKind::Function
        } else {
            SymbolKind::Data
        },
        exported: s.visibility == Visibility::Default,
        weak: s.weak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit is moved a few times on its way into the session: what few units have is
    /// boxed, so that it stays small.
    #[test]
    fn linked_unit_is_small() {
        let size = std::mem::size_of::<LinkedUnit>();
        eprintln!(
            "LinkedUnit: {size} bytes, Export: {}",
            std::mem::size_of::<Export>()
        );
        assert!(size <= 288, "LinkedUnit is {size} bytes");
    }

    /// A lent function's exports ([`function_exports`], its one symbol read) are what the
    /// general path lists for the same function as a graph of its own: with and without a
    /// frame, a call to itself, to a defined name, to a host symbol, roots, the map (which
    /// makes the linker's own symbols), in a slab and in a reservation.
    #[test]
    fn a_functions_exports_agree_with_the_general_path() {
        use crate::arch::x86_64::EdgeKind as X86;
        use crate::graph::{EdgeRef, FrameDescription, FunctionRef};
        use crate::memory::CodeMemory;
        use kiln_target::InProcessExecutor;
        let ex = InProcessExecutor::new();
        let slabs = crate::memory::SlabMemory::new();
        let code = [0xc3u8; 48];
        let mut defines = FxHashMap::default();
        defines.insert("defined_value".to_string(), 0x1234u64);
        let debug = crate::debug::DebugOptions::default();
        let edge_sets: [&[EdgeRef]; 3] = [
            &[],
            &[EdgeRef::new(1, X86::BranchPCRel32, "f", -4)],
            &[
                EdgeRef::new(1, X86::BranchPCRel32, "f", -4),
                EdgeRef::new(8, X86::Pointer64, "defined_value", 0),
                EdgeRef::new(20, X86::BranchPCRel32, "host_function", -4),
            ],
        ];
        let mut host = FxHashMap::default();
        host.insert("host_function".to_string(), 0x1000u64);
        let defines_and_host: FxHashMap<String, u64> = defines
            .iter()
            .chain(&host)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let roots_sets = [vec![], vec!["f".to_string()]];
        let mut cases = 0;
        for edges in edge_sets {
            for frame in [None, Some(FrameDescription::FramePointer)] {
                for roots in &roots_sets {
                    for (want_map, in_slab) in [(false, true), (true, true), (false, false)] {
                        let f = FunctionRef {
                            frame,
                            ..FunctionRef::new("f", &code, edges)
                        };
                        let as_graph = f.to_graph();
                        let graphs = [&as_graph];
                        let functions = [f];
                        let mut listed = Vec::new();
                        for lent in [true, false] {
                            let input = LinkInput {
                                objects: Vec::new(),
                                archives: Vec::new(),
                                graphs: if lent { &[] } else { &graphs },
                                functions: if lent { &functions } else { &[] },
                                libraries: &[],
                                defines: &defines_and_host,
                                session: &NoSession,
                                process_symbols: false,
                                roots,
                                allow: None,
                                fixed_address: None,
                                want_map,
                                collect_stats: false,
                                relink: false,
                                debug: &debug,
                                memory: in_slab.then_some(&slabs as &dyn crate::memory::CodeMemory),
                            };
                            assert_eq!(one_function(&input), lent);
                            let unit = link(&ex, input).expect("links");
                            let base = unit.segments.iter().map(|s| s.0).min().unwrap();
                            let mut key: Vec<_> = unit
                                .exports
                                .iter()
                                .map(|e| {
                                    (
                                        e.name.to_vec(),
                                        e.addr - base,
                                        e.size,
                                        e.kind == SymbolKind::Function,
                                        e.exported,
                                        e.weak,
                                    )
                                })
                                .collect();
                            key.sort();
                            listed.push(key);
                            if in_slab {
                                slabs.free(&ex, &unit.slab_ranges);
                            }
                            ex.deallocate(unit.alloc).unwrap();
                        }
                        assert_eq!(listed[0], listed[1], "{edges:?} {frame:?} {roots:?}");
                        assert_eq!(listed[0].len(), 1);
                        assert_eq!(listed[0][0].0, b"f");
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 36);
        slabs.release_all(&ex);
    }

    /// A small graph's exports (its symbols scanned) are the ones the general path lists from
    /// the globals' table: defined or not, live or not, local, hidden, thread-local, weak,
    /// data, and what the linker made.
    #[test]
    fn small_graphs_exports_agree_with_the_table() {
        use kiln_target::MemProt;
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let names: Vec<Vec<u8>> = (0..8).map(|i| format!("s{i}").into_bytes()).collect();
        for case in 0..64usize {
            let mut small = LinkGraph::with_capacity(arch, 2, 2, 2);
            let mut table = LinkGraph::with_capacity(arch, 2, 2, crate::graph::SCAN_AT_MOST + 1);
            for g in [&mut small, &mut table] {
                let input = g.add_input("a", true);
                let linker = passes::linker_input(g);
                let mut blocks = Vec::new();
                for (i, owner) in [input, linker].into_iter().enumerate() {
                    let section = g.add_section(Section {
                        name: b".text",
                        prot: MemProt::ReadExec,
                        kind: SectionKind::Regular,
                        input: owner,
                        retain: false,
                        elf_index: 0,
                    });
                    let b = g.add_block(section, Content::Zero(32), 16);
                    g.blocks[b.idx()].live = i == 1 || case % 5 != 0;
                    g.blocks[b.idx()].addr = 0x1000 * (i as u64 + 1);
                    blocks.push(b);
                }
                // Up to six symbols, chosen by the case's bits: small stays under the scan's bound.
                for (k, name) in names.iter().enumerate().take(6) {
                    let bit = (case >> (k % 6)) & 1 == 1;
                    let block = blocks[usize::from(k == 5)];
                    let def = SymbolDef::Defined {
                        block,
                        offset: k as u64,
                    };
                    match (k, bit) {
                        (0, _) => {
                            g.global_ref(name, input, false);
                        }
                        (1, true) => {
                            let id = g.add_anon(block, 0, input);
                            g.symbols[id.idx()].name = name;
                        }
                        _ => {
                            let visibility = if k == 2 && bit {
                                Visibility::Hidden
                            } else {
                                Visibility::Default
                            };
                            g.define_global(
                                name,
                                def,
                                8,
                                k == 3 && bit,
                                visibility,
                                k != 4,
                                k == 4 && bit,
                                if k == 5 { linker } else { input },
                            );
                        }
                    }
                }
            }
            assert!(!small.indexed && table.indexed);
            let key = |g: &LinkGraph| {
                let linker = InputId(1);
                let mut listed = Exports::new();
                exports(g, linker, &mut listed);
                let mut out: Vec<_> = listed
                    .into_iter()
                    .map(|e| {
                        (
                            e.name.into_owned(),
                            e.addr,
                            e.size,
                            e.kind == SymbolKind::Function,
                            e.exported,
                            e.weak,
                        )
                    })
                    .collect();
                out.sort();
                out
            };
            let listed = key(&small);
            assert_eq!(listed, key(&table), "case {case}");
            assert!(listed.iter().all(|e| e.0 != b"s0" && e.0 != b"s5"));
            // (`s3` is a default-visibility definition: exported whenever its block is live.)
            assert_eq!(listed.is_empty(), case % 5 == 0, "case {case}");
        }
    }
}

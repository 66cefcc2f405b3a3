//! The link pipeline, one fixed order of named passes:
//!
//! parse → archive members → duplicates → runtime symbols, commons, `.init`/`.fini` glue →
//! dead-strip → external symbols → reserve → GOT/stubs/relaxation → layout → fixups →
//! init/fini/eh_frame/TLS actions → finalize.

pub mod layout;
pub mod passes;
pub mod resolve;

use crate::elf::archive::Archive;
use crate::elf::object::parse_object;
use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::{
    Action, ActionPair, AllocId, Executor, ExecutorAddr, FinalizeRequest, LibraryId, Placement,
    Segment, TLS_MODULE_TAG,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// What goes into one link.
pub struct LinkInput<'s> {
    /// Objects given explicitly: (name for messages, bytes).
    pub objects: Vec<(String, &'s [u8])>,
    /// Archives: members are loaded on demand.
    pub archives: Vec<(String, &'s [u8])>,
    /// Graphs a JIT compiler built in memory.
    pub graphs: Vec<&'s crate::graph::builder::InMemoryGraph>,
    pub libraries: &'s [LibraryId],
    pub defines: &'s FxHashMap<String, u64>,
    /// Symbols of earlier units (newest definition first); `&|_| None` for none.
    pub prior: &'s dyn Fn(&str) -> Option<ExecutorAddr>,
    pub process_symbols: bool,
    /// Symbols that must be kept (and defined): the entry point, symbols to look up.
    pub roots: &'s [String],
    pub allow: Option<&'s FxHashSet<String>>,
    /// Place the unit at exactly this address.
    pub fixed_address: Option<u64>,
    /// Record a [`LinkMap`] (addresses of every symbol, GOT entry, stub and section, and the
    /// final bytes) in the linked unit: for check tests and inspection.
    pub want_map: bool,
    /// Which debugger and profiler sinks learn about the unit.
    pub debug: &'s crate::debug::DebugOptions,
    /// Place the unit in shared slabs (sub-page allocations, written through a writable alias)
    /// rather than in a reservation of its own. Used when the executor supports slabs and no
    /// fixed address is asked for.
    pub slabs: Option<&'s mut crate::memory::SlabAllocator>,
}

/// Where everything of a unit ended up, for check expressions (`llvm-jitlink -check` style) and
/// inspection. Files are named as their inputs were (`dir/x.o`, `libz.a(crc32.o)`).
#[derive(Debug, Default, Clone)]
pub struct LinkMap {
    /// (file, symbol, address, size) of every named symbol defined in a live block.
    pub symbols: Vec<(String, String, u64, u64)>,
    /// (file that references the target, target name, GOT entry address).
    pub got_entries: Vec<(String, String, u64)>,
    /// (file that references the target, target name, stub address).
    pub stubs: Vec<(String, String, u64)>,
    /// (file, section name, address of its first live byte, size).
    pub sections: Vec<(String, String, u64, u64)>,
    /// Final content: (address, bytes) per segment (zero fill not included).
    pub memory: Vec<(u64, Vec<u8>)>,
}

impl LinkMap {
    /// Read `len` bytes at `addr` from the unit's final content (zero fill reads as zeros only
    /// if it was recorded; otherwise `None`).
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.memory.iter().find_map(|(a, bytes)| {
            let off = addr.checked_sub(*a)? as usize;
            bytes.get(off..off.checked_add(len)?)
        })
    }
}

/// Counts and times of one link, for `--show-stats`.
#[derive(Debug, Default, Clone)]
pub struct LinkStats {
    pub inputs: usize,
    pub archive_members: usize,
    pub sections: usize,
    pub blocks: usize,
    pub live_blocks: usize,
    pub symbols: usize,
    pub external_symbols: usize,
    pub edges_by_kind: Vec<(String, usize)>,
    pub got: passes::GotStats,
    pub segments: Vec<(String, u64, u64)>,
    pub phases: Vec<(&'static str, Duration)>,
}

impl std::fmt::Display for LinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kiln link statistics")?;
        writeln!(
            f,
            "  inputs: {} ({} archive members loaded)",
            self.inputs, self.archive_members
        )?;
        writeln!(
            f,
            "  sections: {}, blocks: {} ({} live after dead-stripping)",
            self.sections, self.blocks, self.live_blocks
        )?;
        writeln!(
            f,
            "  symbols: {} ({} resolved outside the unit)",
            self.symbols, self.external_symbols
        )?;
        writeln!(f, "  segments:")?;
        for (prot, addr, size) in &self.segments {
            writeln!(f, "    {prot} {addr:#014x} {size:>10} bytes")?;
        }
        writeln!(f, "  edges by kind:")?;
        for (k, n) in &self.edges_by_kind {
            writeln!(f, "    {k:<32} {n:>8}")?;
        }
        let g = &self.got;
        writeln!(
            f,
            "  GOT entries: {}, stubs: {}, TLS pairs: {}",
            g.got_entries, g.stubs, g.tls_pairs
        )?;
        writeln!(
            f,
            "  relaxed: {} GOT loads, {} calls to host functions made direct",
            g.loads_relaxed, g.calls_direct
        )?;
        writeln!(f, "  phases:")?;
        let mut total = Duration::ZERO;
        for (p, d) in &self.phases {
            total += *d;
            writeln!(f, "    {p:<20} {:>9.3} ms", d.as_secs_f64() * 1e3)?;
        }
        write!(
            f,
            "    {:<20} {:>9.3} ms",
            "total",
            total.as_secs_f64() * 1e3
        )
    }
}

/// A linked, finalized unit in the executor.
#[derive(Debug)]
pub struct LinkedUnit {
    pub alloc: AllocId,
    /// Global symbols it defines (any visibility): name → address.
    pub exports: FxHashMap<String, ExecutorAddr>,
    pub has_initializers: bool,
    pub stats: LinkStats,
    /// Present when [`LinkInput::want_map`] was set.
    pub map: Option<LinkMap>,
    /// Ranges the unit holds in slabs (empty for a unit in a reservation of its own).
    pub slab_ranges: Vec<crate::memory::SlabRange>,
}

struct Timer {
    at: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timer {
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.at));
        self.at = now;
    }
}

/// Link `input` into executor memory and finalize it (initializers are not run).
pub fn link(ex: &dyn Executor, mut input: LinkInput) -> Result<LinkedUnit> {
    let mut t = Timer {
        at: Instant::now(),
        phases: Vec::new(),
    };
    let mut g = LinkGraph::default();
    for (name, data) in &input.objects {
        parse_object(&mut g, name, data, true)?;
    }
    for graph in &input.graphs {
        crate::graph::builder::add_graph(&mut g, graph)?;
    }
    let mut archives = input
        .archives
        .iter()
        .map(|(n, d)| Archive::parse(n, d))
        .collect::<Result<Vec<_>>>()?;
    // Roots must be defined: an undefined root pulls its archive member like `ld -u`.
    let kiln = passes::kiln_input(&mut g);
    let root_ids: Vec<SymbolId> = input
        .roots
        .iter()
        .map(|r| g.global_ref(leak_name(r), kiln, false))
        .collect();
    t.lap("parse");
    resolve::load_archive_members(&mut g, &mut archives)?;
    resolve::check_duplicates(&g)?;
    let archive_members = archives.iter().map(|a| a.members_loaded()).sum();
    t.lap("archive members");

    let (dso, got) = passes::synthesize_runtime(&mut g, kiln, input.allow);
    passes::allocate_commons(&mut g, kiln);
    passes::merge_init_fragments(&mut g, SectionKind::Init, kiln);
    passes::merge_init_fragments(&mut g, SectionKind::Fini, kiln);
    let mut roots = root_ids.clone();
    roots.push(dso);
    let live = passes::dead_strip(&mut g, &roots);
    add_eh_frame_terminator(&mut g, kiln);
    t.lap("dead-strip");

    let scopes = resolve::ExternalScopes {
        defines: input.defines,
        prior: input.prior,
        libraries: input.libraries,
        process: input.process_symbols,
        allow: input.allow,
    };
    let external = resolve::resolve_externals(&mut g, ex, &scopes)?;
    for (r, id) in input.roots.iter().zip(&root_ids) {
        if matches!(g.symbols[id.idx()].def, SymbolDef::Undefined) {
            return Err(Error::Resolve(format!(
                "undefined symbols:\n  {r} (requested as entry point or root)"
            )));
        }
    }
    t.lap("resolve externals");

    // Reserve with an upper bound of the size (GOT and stubs may all be needed), near what the
    // code reaches with 32-bit displacements.
    let page = ex.info().page_size;
    let bound = size_upper_bound(&g, page)
        .checked_add(passes::got_upper_bound(&g))
        .filter(|b| *b < (1 << 40))
        .ok_or_else(|| Error::Usage("the unit is too large (over 1 TiB)".into()))?
        .div_ceil(page)
        * page;
    let mut slabs = input
        .slabs
        .take()
        .filter(|_| input.fixed_address.is_none() && ex.supports_slabs());
    // (low, high) of where the unit can end up, for reach decisions; the dedicated reservation.
    let (lo, hi, dedicated, slab) = match slabs.as_deref_mut() {
        Some(alloc) => {
            let placement = placement_window(&g, bound)?;
            let (sizes, aligns) = class_upper_bounds(&g, page);
            let i = alloc.slab_for(ex, placement, sizes, aligns)?;
            let (lo, hi) = alloc.range(i);
            (lo, hi, None, Some(i))
        }
        None => {
            let placement = match input.fixed_address {
                Some(a) => Placement::Fixed(a),
                None => placement_window(&g, bound)?,
            };
            let base = ex.reserve(bound, placement)?.0;
            tracing::debug!("reserved {bound:#x} bytes at {base:#x} ({placement:?})");
            (base, base + bound, Some(base), None)
        }
    };
    t.lap("reserve");
    let mut slab_ranges: Vec<crate::memory::SlabRange> = Vec::new();
    let unit = (|| {
        let (got_stats, tables) = passes::build_got_and_stubs(&mut g, got, kiln, lo, hi);
        let layout = match (slab, slabs.as_deref_mut()) {
            (Some(i), Some(alloc)) => {
                layout::layout_with(&mut g, page, &mut |slot, size, align| {
                    let r = alloc.allocate(i, slot, size, align)?;
                    slab_ranges.push(r);
                    Ok(r.addr.0)
                })?
            }
            _ => {
                let base = dedicated.unwrap_or(lo);
                let layout = layout::layout(&mut g, base, page)?;
                if layout.size > bound {
                    return Err(Error::Usage(format!(
                        "internal: layout {:#x} exceeds reservation {bound:#x}",
                        layout.size
                    )));
                }
                layout
            }
        };
        // The unit's identity in the executor (TLS module, debugger registrations): its lowest
        // address, unique among live units.
        let base = layout.segments.iter().map(|s| s.addr).min().unwrap_or(lo);
        t.lap("GOT, stubs, layout");
        let mut ctx = layout::FixupContext {
            got_base: g.blocks[got.idx()].addr,
            tls_module: TLS_MODULE_TAG | (base & 0xffff_ffff_ffff),
            tp_offset: None,
        };
        if let (true, Some(t)) = (needs_static_tls(&g), &layout.tls) {
            let image = layout::tls_image(&g, &layout, &ctx)?;
            let off = ex.allocate_static_tls(&image, t.block_size, t.align)?;
            tracing::debug!(
                "static TLS: {} bytes at thread pointer {off:+#x}",
                t.block_size
            );
            ctx.tp_offset = Some(off);
        }
        // Fixups, then what reads the final bytes (init/fini arrays, debug objects, the link
        // map): in a slab, straight in the slab's writable alias; else in buffers sent along.
        let post = |work: &[&[u8]]| -> Post {
            let (initializers, deinitializers) = collect_init_fini(&g, &layout, work, dso);
            let debug = crate::debug::actions(
                &crate::debug::Unit {
                    g: &g,
                    layout: &layout,
                    work,
                    stubs: &tables.stubs,
                },
                input.debug,
                base,
            );
            let map = input.want_map.then(|| link_map(&g, &tables, &layout, work));
            Post {
                initializers,
                deinitializers,
                debug,
                map,
            }
        };
        let in_slab = slab.is_some();
        let (post, segments) = if let Some(i) = slab {
            let id = slabs
                .as_deref()
                .map(|a| a.id(i))
                .ok_or_else(|| Error::Usage("internal: slab lost".into()))?;
            let ranges: Vec<(ExecutorAddr, u64)> = layout
                .segments
                .iter()
                .map(|s| (ExecutorAddr(s.addr), s.content_size + s.zero_size))
                .collect();
            let mut result: Option<Result<Post>> = None;
            ex.with_slab_memory(id, &ranges, &mut |bufs| {
                // The range may hold a removed unit's bytes: zero fill is written, not assumed.
                for (buf, seg) in bufs.iter_mut().zip(&layout.segments) {
                    if let Some(tail) = buf.get_mut(seg.content_size as usize..) {
                        tail.fill(0);
                    }
                }
                result = Some(
                    layout::apply_fixups_into(&g, &layout, &ctx, bufs).map(|()| {
                        let refs: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
                        post(&refs)
                    }),
                );
            })?;
            let post = result
                .ok_or_else(|| Error::Usage("internal: slab memory not provided".into()))??;
            let segments: Vec<Segment> = layout
                .segments
                .iter()
                .map(|s| Segment {
                    addr: ExecutorAddr(s.addr),
                    prot: s.prot,
                    content: Vec::new(),
                    zero_fill: s.content_size + s.zero_size,
                })
                .collect();
            (post, segments)
        } else {
            let work = layout::apply_fixups(&g, &layout, &ctx)?;
            let refs: Vec<&[u8]> = work.iter().map(|w| w.as_slice()).collect();
            let post = post(&refs);
            let segments: Vec<Segment> = layout
                .segments
                .iter()
                .zip(work)
                .map(|(s, content)| Segment {
                    addr: ExecutorAddr(s.addr),
                    prot: s.prot,
                    content,
                    zero_fill: s.zero_size,
                })
                .collect();
            (post, segments)
        };
        t.lap("fixups, debug info");
        let Post {
            initializers,
            deinitializers,
            debug,
            map,
        } = post;
        let mut actions = collect_actions(&g, &layout, &ctx);
        // IFUNC slots are filled first: initializers and other actions may call them.
        let ifuncs = tables.ifunc_slots.iter().filter_map(|(resolver, slot)| {
            Some(ActionPair {
                finalize: Some(Action::ResolveIfunc {
                    resolver: ExecutorAddr(g.symbol_addr(*resolver)?),
                    slot: ExecutorAddr(g.symbol_addr(*slot)?),
                }),
                dealloc: None,
            })
        });
        actions.splice(0..0, ifuncs);
        actions.extend(debug);
        let segments_stat: Vec<(String, u64, u64)> = segments
            .iter()
            .map(|s| (s.prot.as_str().to_string(), s.addr.0, s.size()))
            .collect();
        let has_initializers = !initializers.is_empty();
        let exports = exports(&g);
        let alloc = ex.finalize(FinalizeRequest {
            reservation: (
                ExecutorAddr(dedicated.unwrap_or(0)),
                if in_slab { 0 } else { bound },
            ),
            segments,
            actions,
            initializers,
            deinitializers,
            in_slab,
        })?;
        t.lap("finalize");
        // Counted by kind, named only once per kind (this runs on every link, and a unit has
        // only a handful of kinds: a linear scan beats hashing).
        let mut kinds: Vec<(crate::arch::x86_64::EdgeKind, usize)> = Vec::new();
        for b in g.blocks.iter().filter(|b| b.live) {
            for e in &b.edges {
                match kinds.iter_mut().find(|(k, _)| *k == e.kind) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((e.kind, 1)),
                }
            }
        }
        let mut edges_by_kind: Vec<(String, usize)> = kinds
            .into_iter()
            .map(|(k, n)| (format!("{k:?}"), n))
            .collect();
        edges_by_kind.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(LinkedUnit {
            alloc,
            exports,
            has_initializers,
            map,
            slab_ranges: slab_ranges.clone(),
            stats: LinkStats {
                inputs: g.inputs.len() - 1,
                archive_members,
                sections: g.sections.len(),
                blocks: g.blocks.len(),
                live_blocks: live,
                symbols: g.symbols.len(),
                external_symbols: external,
                edges_by_kind,
                got: got_stats,
                segments: segments_stat,
                phases: std::mem::take(&mut t.phases),
            },
        })
    })();
    if unit.is_err() {
        match (dedicated, slabs) {
            (Some(base), _) => {
                let _ = ex.release(ExecutorAddr(base), bound);
            }
            (None, Some(alloc)) => alloc.free(ex, &slab_ranges),
            (None, None) => {}
        }
    }
    unit
}

/// Root names live as long as the graph; they are few, so a leak-free copy is kept in a
/// thread-local arena would be overkill: they are interned once per distinct name.
fn leak_name(s: &str) -> &'static [u8] {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<FxHashSet<&'static [u8]>>> = OnceLock::new();
    let mut set = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = set.get(s.as_bytes()) {
        return n;
    }
    let n: &'static [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
    set.insert(n);
    n
}

/// Whether live code uses the local-exec or initial-exec model (directly, or through a relaxed
/// TLS descriptor): then the unit's whole TLS block lives in static TLS.
fn needs_static_tls(g: &LinkGraph) -> bool {
    use crate::arch::x86_64::EdgeKind::*;
    g.blocks
        .iter()
        .filter(|b| b.live)
        .flat_map(|b| &b.edges)
        .any(|e| matches!(e.kind, TpOff32 | TpOff64 | TlsDescToLocalExec))
}

fn add_eh_frame_terminator(g: &mut LinkGraph, input: InputId) {
    let any = g
        .blocks
        .iter()
        .any(|b| b.live && g.sections[b.section.idx()].kind == SectionKind::EhFrame);
    if any {
        let s = g.add_section(Section {
            name: b".eh_frame",
            prot: kiln_target::MemProt::Read,
            kind: SectionKind::EhFrameTerminator,
            input,
            retain: true,
            elf_index: 0,
        });
        let b = g.add_block(s, Content::Bytes(Cow::Borrowed(&[0, 0, 0, 0])), 4);
        g.blocks[b.idx()].live = true;
    }
}

/// What is read off the final bytes of a unit.
struct Post {
    initializers: Vec<ExecutorAddr>,
    deinitializers: Vec<Action>,
    debug: Vec<ActionPair>,
    map: Option<LinkMap>,
}

/// Upper bounds of the bytes (and the alignments) each protection class of the unit needs, GOT
/// entries and stubs included as if none could be relaxed.
fn class_upper_bounds(g: &LinkGraph, page: u64) -> ([u64; 3], [u64; 3]) {
    let mut sizes = [0u64; 3];
    let mut aligns = [1u64; 3];
    for b in g.blocks.iter().filter(|b| b.live) {
        let sec = &g.sections[b.section.idx()];
        if sec.kind == SectionKind::Tls && b.is_zero_fill() {
            continue;
        }
        let r = layout::PROTS
            .iter()
            .position(|p| *p == sec.prot)
            .unwrap_or(1);
        sizes[r] = sizes[r].saturating_add(b.size()).saturating_add(b.align);
        aligns[r] = aligns[r].max(b.align);
        if sec.kind == SectionKind::Tls {
            aligns[r] = aligns[r].max(4096.min(page));
            sizes[r] = sizes[r].saturating_add(4096.min(page));
        }
    }
    let got = passes::got_upper_bound(g);
    sizes[0] = sizes[0].saturating_add(got);
    sizes[1] = sizes[1].saturating_add(got);
    (sizes, aligns)
}

fn size_upper_bound(g: &LinkGraph, page: u64) -> u64 {
    let mut n = 0u64;
    for b in g.blocks.iter().filter(|b| b.live) {
        n = n.saturating_add(b.size()).saturating_add(b.align);
    }
    n.saturating_add(4 * page + 4096)
}

/// The window the unit must lie in so that 32-bit PC-relative references to host symbols reach.
/// Calls can fall back to stubs and GOT loads to the GOT, so when host targets are spread too
/// widely, only the references that have no fallback (PC32 to data) constrain the placement.
fn placement_window(g: &LinkGraph, size: u64) -> Result<Placement> {
    const REACH: u64 = (1 << 31) - (1 << 21);
    let mut must: (u64, u64) = (u64::MAX, 0);
    let mut nice: (u64, u64) = (u64::MAX, 0);
    for b in g.blocks.iter().filter(|b| b.live) {
        for e in &b.edges {
            let SymbolDef::Absolute(a) = g.symbols[e.target.idx()].def else {
                continue;
            };
            if a == 0 {
                continue;
            }
            use crate::arch::x86_64::EdgeKind::*;
            match e.kind {
                Delta32 | Pointer32Signed | Delta16 | Delta8 => {
                    must = (must.0.min(a), must.1.max(a));
                }
                BranchPCRel32 | GotDelta32Relaxable { .. } => {
                    nice = (nice.0.min(a), nice.1.max(a));
                }
                _ => {}
            }
        }
    }
    // Non-PIE code (R_X86_64_32/32S to the unit's own symbols) must sit in the low 2 GiB.
    let low32 = g
        .blocks
        .iter()
        .filter(|b| b.live)
        .flat_map(|b| &b.edges)
        .any(|e| {
            matches!(
                e.kind,
                crate::arch::x86_64::EdgeKind::Pointer32
                    | crate::arch::x86_64::EdgeKind::Pointer32Signed
            ) && matches!(g.symbols[e.target.idx()].def, SymbolDef::Defined { .. })
        });
    if low32 {
        const LOW: (u64, u64) = (0x10000, 0x8000_0000);
        if must.0 != u64::MAX {
            let (lo, hi) = (
                must.1.saturating_sub(REACH).max(LOW.0),
                must.0.saturating_add(REACH).min(LOW.1),
            );
            if hi > lo && hi - lo >= size {
                return Ok(Placement::Within { lo, hi });
            }
            return Err(Error::Fixup(format!(
                "non-PIE code (R_X86_64_32/32S) must be placed in the low 2 GiB, but it also \
                 reaches host data at {:#x} with 32-bit PC-relative relocations, which is out of \
                 reach from there (a native link would make a copy relocation): compile with -fPIE",
                must.0
            )));
        }
        tracing::debug!("non-PIE code: placing the unit in the low 2 GiB");
        return Ok(Placement::Within {
            lo: LOW.0,
            hi: LOW.1,
        });
    }
    let window = |lo: u64, hi: u64| -> Option<Placement> {
        let wlo = hi.saturating_sub(REACH);
        let whi = lo.saturating_add(REACH).min(0x7fff_ffff_f000);
        (whi > wlo && whi - wlo >= size).then_some(Placement::Within { lo: wlo, hi: whi })
    };
    let both = (must.0.min(nice.0), must.1.max(nice.1));
    if both.0 == u64::MAX {
        return Ok(Placement::Anywhere);
    }
    if let Some(p) = window(both.0, both.1) {
        return Ok(p);
    }
    if must.0 == u64::MAX {
        return Ok(Placement::Anywhere);
    }
    window(must.0, must.1).ok_or_else(|| {
        Error::Fixup(format!(
            "the code references host data at {:#x} and {:#x} with 32-bit PC-relative relocations; \
             no placement reaches both (they are more than 2 GiB apart)",
            must.0, must.1
        ))
    })
}

/// Initializers in the order a native program runs them: `.preinit_array`, `.init`, then
/// `.init_array` and `.ctors` by priority (`.ctors` entries run last to first), unprioritised
/// last. Finalizers: exit handlers of this unit (`__cxa_finalize`), then `.fini_array` and
/// `.dtors` in reverse priority order, then `.fini`.
fn collect_init_fini(
    g: &LinkGraph,
    layout: &layout::Layout,
    work: &[&[u8]],
    dso: SymbolId,
) -> (Vec<ExecutorAddr>, Vec<Action>) {
    let words = |b: &Block| -> Vec<u64> {
        let Some((si, seg)) = layout
            .segments
            .iter()
            .enumerate()
            .find(|(_, s)| s.addr <= b.addr && b.addr < s.addr + s.content_size)
        else {
            return Vec::new();
        };
        let start = (b.addr - seg.addr) as usize;
        let end = start + b.size() as usize;
        work[si]
            .get(start..end)
            .unwrap_or(&[])
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .filter(|&v| v != 0 && v != u64::MAX)
            .collect()
    };
    let mut pre = Vec::new();
    let mut init_fn = None;
    let mut fini_fn = None;
    let mut inits: Vec<(u32, u32, Vec<u64>)> = Vec::new(); // (priority, order, fns)
    let mut finis: Vec<(u32, u32, Vec<u64>)> = Vec::new();
    for (i, b) in g.blocks.iter().enumerate() {
        if !b.live {
            continue;
        }
        let order = i as u32;
        match g.sections[b.section.idx()].kind {
            SectionKind::PreInitArray => pre.extend(words(b)),
            SectionKind::Init => init_fn = Some(b.addr),
            SectionKind::Fini => fini_fn = Some(b.addr),
            SectionKind::InitArray(p) => inits.push((p, order, words(b))),
            SectionKind::Ctors(p) => {
                let mut w = words(b);
                w.reverse();
                // ld merges .ctors into .init_array in input order, each section reversed
                // (crtstuff used to run them backwards).
                inits.push((p, order, w));
            }
            SectionKind::FiniArray(p) => finis.push((p, order, words(b))),
            SectionKind::Dtors(p) => finis.push((p, order, words(b).into_iter().rev().collect())),
            _ => {}
        }
    }
    inits.sort_by_key(|(p, o, _)| (*p, *o));
    finis.sort_by_key(|(p, o, _)| (*p, *o));
    let mut init: Vec<ExecutorAddr> = pre.into_iter().map(ExecutorAddr).collect();
    init.extend(init_fn.map(ExecutorAddr));
    for (_, _, fns) in inits {
        init.extend(fns.into_iter().map(ExecutorAddr));
    }
    let mut fini = Vec::new();
    if let Some(d) = g.symbol_addr(dso) {
        fini.push(Action::CxaFinalize {
            dso: ExecutorAddr(d),
        });
    }
    let all: Vec<u64> = finis.into_iter().flat_map(|(_, _, f)| f).collect();
    fini.extend(
        all.into_iter()
            .rev()
            .map(|f| Action::CallVoid(ExecutorAddr(f))),
    );
    fini.extend(fini_fn.map(|f| Action::CallVoid(ExecutorAddr(f))));
    (init, fini)
}

fn collect_actions(
    g: &LinkGraph,
    layout: &layout::Layout,
    ctx: &layout::FixupContext,
) -> Vec<ActionPair> {
    let mut actions = Vec::new();
    let eh: Vec<&Block> = g
        .blocks
        .iter()
        .filter(|b| {
            b.live
                && matches!(
                    g.sections[b.section.idx()].kind,
                    SectionKind::EhFrame | SectionKind::EhFrameTerminator
                )
        })
        .collect();
    if let (Some(lo), Some(hi)) = (
        eh.iter().map(|b| b.addr).min(),
        eh.iter().map(|b| b.addr + b.size()).max(),
    ) {
        let (addr, size) = (ExecutorAddr(lo), hi - lo);
        actions.push(ActionPair {
            finalize: Some(Action::RegisterEhFrame { addr, size }),
            dealloc: Some(Action::DeregisterEhFrame { addr, size }),
        });
    }
    if let Some(t) = &layout.tls {
        actions.push(ActionPair {
            finalize: Some(Action::RegisterTls {
                module: ctx.tls_module,
                image: ExecutorAddr(t.image_addr),
                image_size: t.image_size,
                block_size: t.block_size,
                align: t.align,
                static_offset: ctx.tp_offset,
            }),
            dealloc: Some(Action::DeregisterTls {
                module: ctx.tls_module,
            }),
        });
    }
    actions
}

fn link_map(
    g: &LinkGraph,
    tables: &passes::GotTables,
    layout: &layout::Layout,
    work: &[&[u8]],
) -> LinkMap {
    let file_of_block = |b: BlockId| g.input_name(g.block_input(b)).to_string();
    let mut m = LinkMap::default();
    for (i, s) in g.symbols.iter().enumerate() {
        if s.name.is_empty() {
            continue;
        }
        if let SymbolDef::Defined { block, .. } = s.def {
            if g.blocks[block.idx()].live {
                if let Some(a) = g.symbol_addr(SymbolId(i as u32)) {
                    m.symbols.push((
                        file_of_block(block),
                        String::from_utf8_lossy(s.name).into_owned(),
                        a,
                        s.size,
                    ));
                }
            }
        }
    }
    // A GOT entry or stub serves every file that references its target.
    let referencing_files = |target: SymbolId| -> Vec<String> {
        let mut files: Vec<String> = Vec::new();
        for b in g.blocks.iter().filter(|b| b.live) {
            let f = g.input_name(g.sections[b.section.idx()].input);
            if f != "<kiln>"
                && b.edges.iter().any(|e| e.target == target)
                && !files.iter().any(|x| x == f)
            {
                files.push(f.to_string());
            }
        }
        files
    };
    let stub_of: FxHashMap<SymbolId, SymbolId> = tables.stubs.iter().copied().collect();
    for (list, out) in [
        (&tables.got, &mut m.got_entries),
        (&tables.stubs, &mut m.stubs),
    ] {
        for (target, entry) in list {
            let Some(addr) = g.symbol_addr(*entry) else {
                continue;
            };
            let name = g.name_of(*target);
            // Edges were rewritten to point at the entry (or at the stub that jumps through
            // it); find the files through any of them.
            let mut files = referencing_files(*entry);
            files.extend(referencing_files(*target));
            if let Some(stub) = stub_of.get(target) {
                files.extend(referencing_files(*stub));
            }
            files.sort();
            files.dedup();
            for f in files {
                out.push((f, name.clone(), addr));
            }
        }
    }
    let mut secs: FxHashMap<(InputId, u32), (u64, u64)> = FxHashMap::default();
    for b in g.blocks.iter().filter(|b| b.live) {
        let sec = &g.sections[b.section.idx()];
        let e = secs
            .entry((sec.input, b.section.0))
            .or_insert((u64::MAX, 0));
        e.0 = e.0.min(b.addr);
        e.1 = e.1.max(b.addr + b.size());
    }
    for ((input, sid), (lo, hi)) in secs {
        let name = String::from_utf8_lossy(g.sections[sid as usize].name).into_owned();
        m.sections
            .push((g.input_name(input).to_string(), name, lo, hi - lo));
    }
    m.memory = layout
        .segments
        .iter()
        .zip(work)
        .map(|(s, w)| {
            (
                s.addr,
                w.get(..s.content_size as usize).unwrap_or(w).to_vec(),
            )
        })
        .collect();
    m
}

fn exports(g: &LinkGraph) -> FxHashMap<String, ExecutorAddr> {
    let mut out = FxHashMap::default();
    for (name, id) in &g.globals {
        let s = &g.symbols[id.idx()];
        if s.tls {
            continue;
        }
        // Absolute symbols are host symbols this unit binds to, not its own definitions.
        let addr = match s.def {
            SymbolDef::Defined { block, offset } if g.blocks[block.idx()].live => {
                g.blocks[block.idx()].addr + offset
            }
            _ => continue,
        };
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            ExecutorAddr(addr),
        );
    }
    out
}

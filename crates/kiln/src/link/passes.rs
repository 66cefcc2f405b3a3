//! Passes over the graph, in the order `link::link` runs them.

use crate::arch::{Template, TemplateTarget};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::borrow::Cow;

/// The name of the input that owns what the linker makes itself.
pub const LINKER_INPUT: &str = "<kiln>";

/// A synthetic input for what the linker makes itself.
pub fn linker_input(g: &mut LinkGraph) -> InputId {
    g.add_input(LINKER_INPUT, false)
}

fn synth_section<'a>(
    g: &mut LinkGraph<'a>,
    name: &'a [u8],
    prot: MemProt,
    kind: SectionKind,
    input: InputId,
) -> SectionId {
    g.add_section(Section {
        name,
        prot,
        kind,
        input,
        retain: false,
        elf_index: 0,
    })
}

fn define_hidden<'a>(
    g: &mut LinkGraph<'a>,
    name: &'a [u8],
    block: BlockId,
    input: InputId,
    callable: bool,
) -> SymbolId {
    g.define_global(
        name,
        SymbolDef::Defined { block, offset: 0 },
        0,
        false,
        Visibility::Hidden,
        callable,
        false,
        input,
    )
}

/// Whether an undefined name is one the linker may define ([`may_name_linker_glue`]).
#[inline]
fn may_need_glue(g: &LinkGraph, name: &[u8], id: SymbolId) -> bool {
    matches!(g.symbols[id.idx()].def, SymbolDef::Undefined) && may_name_linker_glue(name)
}

fn is_undefined(g: &LinkGraph, name: &[u8]) -> bool {
    g.global(name)
        .is_some_and(|id| g.symbols[id.idx()].def == SymbolDef::Undefined)
}

/// What the unit gets from the linker rather than from an input, each only when something
/// needs it or [`Outside::all_linker_symbols`] asks for it (a one-function graph from a JIT
/// gets none of it):
/// - `__dso_handle`: this unit's identity for `__cxa_atexit` (so its exit handlers run when the
///   unit is removed, via `__cxa_finalize`);
/// - `atexit`, `at_quick_exit`, `pthread_atfork`: glibc keeps these in libc_nonshared.a, not in
///   libc.so.6; as there, each passes the unit's `__dso_handle` on;
/// - rustc's allocator shim, when Rust objects need it;
/// - `_TLS_MODULE_BASE_`;
/// - `_GLOBAL_OFFSET_TABLE_`: the start of the unit's GOT.
///
/// Names the linker makes up live in `names`, which lives as long as the graph.
///
/// (Always inline, as are the other passes' checks a JIT's one-function link runs: each called
/// cost that link a dozen to twenty instructions of prologue, epilogue and call.)
#[inline(always)]
pub fn synthesize_runtime<'a>(
    g: &mut LinkGraph<'a>,
    input: InputId,
    outside: &Outside,
    names: &'a bumpalo::Bump,
) -> Runtime {
    if !outside.all_linker_symbols && !any_may_need_glue(g) {
        return Runtime {
            dso: None,
            got: None,
        };
    }
    synthesize(g, input, outside, names)
}

/// Whether some undefined global is a name the linker may define.
#[inline]
fn any_may_need_glue(g: &LinkGraph) -> bool {
    if !g.indexed {
        // A small graph's globals are its symbols that are not local (what `global_ids` lists,
        // without its iterator: a JIT's function runs only this loop, over three symbols).
        // (A flag kept as each global is added measured no cheaper: the check then runs for
        // every new global.)
        return g.symbols.iter().any(|s| {
            s.visibility != Visibility::Local
                && s.def == SymbolDef::Undefined
                && may_name_linker_glue(s.name)
        });
    }
    g.global_ids()
        .any(|id| may_need_glue(g, g.symbols[id.idx()].name, id))
}

/// [`synthesize_runtime`] when some name may need the linker (out of line: the check above is
/// all a JIT's function runs).
#[inline(never)]
fn synthesize<'a>(
    g: &mut LinkGraph<'a>,
    input: InputId,
    outside: &Outside,
    names: &'a bumpalo::Bump,
) -> Runtime {
    let eager = outside.all_linker_symbols;
    let templates = g.arch.templates();
    let tail_calls: [(&'static [u8], &'static [u8], &Template); 3] = [
        (b"atexit", b"__cxa_atexit", &templates.atexit),
        (b"at_quick_exit", b"__cxa_at_quick_exit", &templates.atexit),
        (b"pthread_atfork", b"__register_atfork", &templates.atfork),
    ];
    let glue: Vec<_> = tail_calls
        .into_iter()
        .filter(|(name, _, _)| is_undefined(g, name) && outside.wants_glue(name))
        .collect();
    // The unit's handle exists when something hands it to the C runtime: code that names it
    // (C++ static destructors registered with `__cxa_atexit`), or the glue above.
    let dso_defined = g
        .global(b"__dso_handle")
        .is_some_and(|id| matches!(g.symbols[id.idx()].def, SymbolDef::Defined { .. }));
    let dso = if is_undefined(g, b"__dso_handle") || !glue.is_empty() || (eager && !dso_defined) {
        let data = synth_section(
            g,
            b".data.kiln.dso_handle",
            MemProt::Read,
            SectionKind::Regular,
            input,
        );
        let block = g.add_block(data, Content::Zero(8), 8);
        Some(define_hidden(g, b"__dso_handle", block, input, false))
    } else {
        g.global(b"__dso_handle")
            .filter(|id| matches!(g.symbols[id.idx()].def, SymbolDef::Defined { .. }))
    };
    for (name, callee, template) in glue {
        let dso = dso.unwrap_or(SymbolId(0));
        let b = instantiate(g, template, b".text.kiln", dso, callee, input);
        define_hidden(g, name, b, input, true);
    }
    synthesize_rust_allocator_shim(g, input, outside, names);
    // The start of the unit's TLS block, for local-dynamic code using TLS descriptors.
    let tls_module_base = g
        .global(b"_TLS_MODULE_BASE_")
        .filter(|id| g.symbols[id.idx()].def == SymbolDef::Undefined);
    if let Some(id) = tls_module_base {
        let s = &mut g.symbols[id.idx()];
        s.def = SymbolDef::Absolute(0);
        s.tls = true;
        s.visibility = Visibility::Hidden;
    }
    // The GOT is made by the table pass when an edge needs it; code that names it gets it now.
    let got_defined = g
        .global(b"_GLOBAL_OFFSET_TABLE_")
        .is_some_and(|id| g.symbols[id.idx()].def != SymbolDef::Undefined);
    let got = (is_undefined(g, b"_GLOBAL_OFFSET_TABLE_") || (eager && !got_defined)).then(|| {
        let got = add_got(g, input);
        define_hidden(g, b"_GLOBAL_OFFSET_TABLE_", got, input, false);
        got
    });
    Runtime { dso, got }
}

/// The unit's GOT: an empty block the table pass fills.
pub fn add_got(g: &mut LinkGraph, input: InputId) -> BlockId {
    let got_sec = synth_section(g, b".got", MemProt::Read, SectionKind::Got, input);
    g.add_block(got_sec, Content::Bytes(Cow::Owned(Vec::new())), 8)
}

/// What the link's settings say about names the linker could write glue for.
pub struct Outside<'s> {
    /// `--define`s: a definition given by the user wins over the linker's glue.
    pub defines: &'s rustc_hash::FxHashMap<String, u64>,
    /// The allow-list: glue is only written for names it allows.
    pub allow: Option<&'s rustc_hash::FxHashSet<String>>,
    /// Define `__dso_handle` and `_GLOBAL_OFFSET_TABLE_` even when nothing references them, as
    /// a static linker does: for links of ELF objects, and links whose map is asked for (check
    /// expressions name them). A graph from a JIT gets them only when it uses them.
    pub all_linker_symbols: bool,
}

impl Outside<'_> {
    fn wants_glue(&self, name: &[u8]) -> bool {
        let name = std::str::from_utf8(name).unwrap_or("");
        !self.defines.contains_key(name) && self.allow.is_none_or(|a| a.contains(name))
    }
}

/// What [`synthesize_runtime`] made that later passes need.
pub struct Runtime {
    /// The unit's `__dso_handle`, if anything hands it to the C runtime.
    pub dso: Option<SymbolId>,
    /// The unit's GOT block, if code names `_GLOBAL_OFFSET_TABLE_` (the table pass makes it
    /// otherwise, when an edge needs it).
    pub got: Option<BlockId>,
}

/// A block of `template`'s code in a new executable section, its edges bound to the unit's
/// `__dso_handle` and to `callee`.
fn instantiate<'a>(
    g: &mut LinkGraph<'a>,
    template: &Template,
    section: &'static [u8],
    dso: SymbolId,
    callee: &'a [u8],
    input: InputId,
) -> BlockId {
    let text = synth_section(g, section, MemProt::ReadExec, SectionKind::Regular, input);
    let b = g.add_block(
        text,
        Content::Bytes(Cow::Borrowed(template.code)),
        template.align,
    );
    let callee = g.global_ref(callee, input, false);
    g.blocks[b.idx()].edges = template
        .edges
        .iter()
        .map(|e| Edge {
            offset: e.offset,
            kind: e.kind,
            target: match e.target {
                TemplateTarget::DsoHandle => dso,
                TemplateTarget::Callee => callee,
            },
            addend: e.addend,
        })
        .collect();
    b
}

/// rustc writes the global allocator's shim (`__rust_alloc` → `__rdl_alloc`, …) only when it
/// links a binary, a cdylib or a staticlib; objects from `rustc --emit=obj` linked against the
/// sysroot's rlibs reference it without a definition. Kiln writes it as a native link would for
/// the default (System) allocator: each `__rust_X` tail-calls `__rdl_X` under the same mangling
/// prefix, and `__rust_no_alloc_shim_is_unstable_v2` is an empty function.
fn synthesize_rust_allocator_shim<'a>(
    g: &mut LinkGraph<'a>,
    input: InputId,
    outside: &Outside,
    names: &'a bumpalo::Bump,
) {
    let undefined: Vec<SymbolId> = g
        .global_ids()
        .filter(|id| g.symbols[id.idx()].def == SymbolDef::Undefined)
        .collect();
    for id in undefined {
        let Some(text) = std::str::from_utf8(g.symbols[id.idx()].name).ok() else {
            continue;
        };
        let Some((prefix, base)) = rust_allocator_symbol(text) else {
            continue;
        };
        if !outside.wants_glue(g.symbols[id.idx()].name) {
            continue;
        }
        let b = if base == "__rust_no_alloc_shim_is_unstable_v2" {
            let sec = synth_section(
                g,
                b".text.kiln.rust_alloc",
                MemProt::ReadExec,
                SectionKind::Regular,
                input,
            );
            g.add_block(
                sec,
                Content::Bytes(Cow::Borrowed(g.arch.templates().ret)),
                16,
            )
        } else {
            let Some(what) = base
                .strip_prefix("__rust_")
                .filter(|w| matches!(*w, "alloc" | "dealloc" | "realloc" | "alloc_zeroed"))
            else {
                continue;
            };
            let target = format!("__rdl_{what}");
            let target = if prefix.is_empty() {
                target
            } else {
                format!("{prefix}{}_{target}", target.len())
            };
            let target: &'a [u8] = names.alloc_slice_copy(target.as_bytes());
            let jump = &g.arch.templates().jump;
            instantiate(g, jump, b".text.kiln.rust_alloc", id, target, input)
        };
        g.symbols[id.idx()].def = SymbolDef::Defined {
            block: b,
            offset: 0,
        };
        g.symbols[id.idx()].visibility = Visibility::Hidden;
    }
}

/// `(mangling prefix, __rust_X)` of an allocator shim symbol: `_RNv<crate>7___rustc<N>___rust_alloc`,
/// or plain `__rust_alloc` (older rustc).
fn rust_allocator_symbol(text: &str) -> Option<(&str, &str)> {
    match text.rfind("___rust_") {
        Some(i) if text.starts_with("_RNv") => {
            let digits = text[..i].trim_end_matches(|c: char| c.is_ascii_digit());
            Some((digits, &text[i + 1..]))
        }
        _ if text.starts_with("__rust_") => Some(("", text)),
        _ => None,
    }
}

/// COMMON symbols become zero-filled blocks.
pub fn allocate_commons(g: &mut LinkGraph, input: InputId) {
    if !g.has_commons {
        return;
    }
    for i in 0..g.symbols.len() {
        if let SymbolDef::Common { size, align } = g.symbols[i].def {
            let sec = synth_section(
                g,
                b".bss.common",
                MemProt::ReadWrite,
                SectionKind::Regular,
                input,
            );
            let b = g.add_block(sec, Content::Zero(size), align);
            g.symbols[i].def = SymbolDef::Defined {
                block: b,
                offset: 0,
            };
        }
    }
}

/// `.init` (or `.fini`) fragments are pieces of one function, concatenated in input order between
/// a prologue and an epilogue, as crti.o and crtn.o frame them in a native link.
/// (Only the test is inlined, always: most units have no fragments.)
#[inline(always)]
pub fn merge_init_fragments(g: &mut LinkGraph, kind: SectionKind, input: InputId) {
    if g.may_have(kind.bit()) {
        merge_fragments(g, kind, input);
    }
}

#[inline(never)]
fn merge_fragments(g: &mut LinkGraph, kind: SectionKind, input: InputId) {
    let frags: Vec<BlockId> = (0..g.blocks.len() as u32)
        .map(BlockId)
        .filter(|b| g.section_of(*b).kind == kind && !g.blocks[b.idx()].is_zero_fill())
        .collect();
    if frags.is_empty() {
        return;
    }
    let templates = g.arch.templates();
    let mut code = templates.init_prologue.to_vec();
    let mut edges = Vec::new();
    let mut moved: FxHashMap<BlockId, u64> = FxHashMap::default();
    for &b in &frags {
        let shift = code.len() as u64;
        moved.insert(b, shift);
        if let Content::Bytes(bytes) = &g.blocks[b.idx()].content {
            code.extend_from_slice(bytes);
        }
        for e in std::mem::take(&mut g.blocks[b.idx()].edges) {
            edges.push(Edge {
                offset: e.offset + shift as u32,
                ..e
            });
        }
        let s = g.blocks[b.idx()].section.idx();
        g.sections[s].retain = false;
        g.sections[s].kind = SectionKind::Regular;
    }
    code.extend_from_slice(templates.init_epilogue);
    let name: &'static [u8] = if kind == SectionKind::Init {
        b".init"
    } else {
        b".fini"
    };
    let sec = g.add_section(Section {
        name,
        prot: MemProt::ReadExec,
        kind,
        input,
        retain: true,
        elf_index: 0,
    });
    let nb = g.add_block(sec, Content::Bytes(Cow::Owned(code)), 16);
    g.blocks[nb.idx()].edges = edges;
    for s in g.symbols.iter_mut() {
        if let SymbolDef::Defined { block, offset } = s.def {
            if let Some(shift) = moved.get(&block) {
                s.def = SymbolDef::Defined {
                    block: nb,
                    offset: offset + shift,
                };
            }
        }
    }
}

/// Mark live everything reachable from the roots: retained sections (init/fini arrays,
/// SHF_GNU_RETAIN, `__start_`-able names), the extra roots given, the unit's `__dso_handle`, and
/// the default-visibility globals of inputs given explicitly (they can be looked up after
/// linking). FDEs stay alive through `LinkGraph::keep_alive`. Returns the number of live blocks.
/// (Always inline: a JIT's function takes the one block's short path.)
#[inline(always)]
pub fn dead_strip(g: &mut LinkGraph, extra_roots: &[SymbolId], dso: Option<SymbolId>) -> usize {
    if g.blocks.len() == 1 {
        return dead_strip_one_block(g, extra_roots, dso);
    }
    dead_strip_graph(g, extra_roots, dso)
}

/// [`dead_strip`] by following edges from the roots.
#[inline(never)]
fn dead_strip_graph(g: &mut LinkGraph, extra_roots: &[SymbolId], dso: Option<SymbolId>) -> usize {
    let mut work: WorkList = SmallVec::new();
    let mark = |g: &mut LinkGraph, b: BlockId, work: &mut WorkList| {
        let blk = &mut g.blocks[b.idx()];
        if !blk.live {
            blk.live = true;
            work.push(b);
        }
    };
    for i in 0..g.blocks.len() {
        if g.sections[g.blocks[i].section.idx()].retain {
            mark(g, BlockId(i as u32), &mut work);
        }
    }
    // The roots are marked as they are found (no list of them is made).
    for i in 0..g.symbols.len() {
        let r = SymbolId(i as u32);
        let s = &g.symbols[i];
        if !is_root(g, r, extra_roots, dso) {
            continue;
        }
        if let SymbolDef::Defined { block, .. } = s.def {
            mark(g, block, &mut work);
        }
    }
    let fdes = FdesOf::new(g);
    let mut live = 0;
    while let Some(b) = work.pop() {
        live += 1;
        for &fde in fdes.of(b) {
            mark(g, fde, &mut work);
        }
        for k in 0..g.blocks[b.idx()].edges.len() {
            let t = g.blocks[b.idx()].edges[k].target;
            if let SymbolDef::Defined { block, .. } = g.symbols[t.idx()].def {
                mark(g, block, &mut work);
            }
        }
    }
    live
}

/// Blocks found live whose edges are still to follow (a small unit's list stays inline).
type WorkList = SmallVec<[BlockId; 16]>;

/// The FDEs of each function block, by a counting sort of `LinkGraph::keep_alive`:
/// `fdes[start[b]..start[b + 1]]`. Empty (and free) when the unit has no FDEs.
struct FdesOf {
    start: Vec<u32>,
    fdes: Vec<BlockId>,
}

impl FdesOf {
    fn new(g: &LinkGraph) -> Self {
        if g.keep_alive.is_empty() {
            return FdesOf {
                start: Vec::new(),
                fdes: Vec::new(),
            };
        }
        let mut start = vec![0u32; g.blocks.len() + 1];
        for (f, _) in &g.keep_alive {
            start[f.idx() + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut fill = start.clone();
        let mut fdes = vec![BlockId(0); g.keep_alive.len()];
        for (f, fde) in &g.keep_alive {
            fdes[fill[f.idx()] as usize] = *fde;
            fill[f.idx()] += 1;
        }
        FdesOf { start, fdes }
    }

    fn of(&self, b: BlockId) -> &[BlockId] {
        match (self.start.get(b.idx()), self.start.get(b.idx() + 1)) {
            (Some(&s), Some(&e)) => &self.fdes[s as usize..e as usize],
            _ => &[],
        }
    }
}

/// Whether symbol `r` is a root of dead-stripping (the extra roots, the unit's `__dso_handle`,
/// the default-visibility globals of explicit inputs).
#[inline]
fn is_root(g: &LinkGraph, r: SymbolId, extra_roots: &[SymbolId], dso: Option<SymbolId>) -> bool {
    let s = &g.symbols[r.idx()];
    let explicit_global = s.visibility == Visibility::Default
        && !s.name.is_empty()
        && g.inputs.get(s.input.idx()).is_some_and(|inp| inp.explicit);
    explicit_global || extra_roots.contains(&r) || Some(r) == dso
}

/// [`dead_strip`] for a graph of one block (a JIT's function): every edge that reaches a block
/// reaches this one, and no FDE can hang off it (that would be a second block), so the block
/// is live exactly when its section is retained or a root is defined in it. The scan stops
/// at the first root (the function's own symbol, usually the first).
#[inline(always)]
fn dead_strip_one_block(
    g: &mut LinkGraph,
    extra_roots: &[SymbolId],
    dso: Option<SymbolId>,
) -> usize {
    let live = g.sections[g.blocks[0].section.idx()].retain
        || (0..g.symbols.len()).any(|i| {
            let r = SymbolId(i as u32);
            matches!(g.symbols[i].def, SymbolDef::Defined { .. }) && is_root(g, r, extra_roots, dso)
        });
    // (As the general pass counts: the blocks it marks.)
    let marked = live && !g.blocks[0].live;
    g.blocks[0].live |= live;
    usize::from(marked)
}

/// The zero word that ends the unit's `.eh_frame`, if it has one.
pub fn add_eh_frame_terminator(g: &mut LinkGraph, input: InputId) {
    let any = g.may_have(SectionKind::EhFrame.bit())
        && g.blocks
            .iter()
            .any(|b| b.live && g.sections[b.section.idx()].kind == SectionKind::EhFrame);
    if any {
        let s = g.add_section(Section {
            name: b".eh_frame",
            prot: MemProt::Read,
            kind: SectionKind::EhFrameTerminator,
            input,
            retain: true,
            elf_index: 0,
        });
        let b = g.add_block(s, Content::Bytes(Cow::Borrowed(&[0, 0, 0, 0])), 4);
        g.blocks[b.idx()].live = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph of one code block defining `f`, from an input given explicitly or not, in a
    /// section retained or not (and, with `edges`, calling `g` and itself).
    fn one_block(
        explicit: bool,
        retain: bool,
        visibility: Visibility,
        edges: bool,
    ) -> (LinkGraph<'static>, SymbolId) {
        let (mut g, input, section) =
            crate::graph::fixtures::graph_with_text("f", explicit, retain);
        let block = g.add_block(section, Content::Zero(16), 16);
        let f = g.define_global(
            b"f",
            SymbolDef::Defined { block, offset: 0 },
            16,
            false,
            visibility,
            true,
            false,
            input,
        );
        if edges {
            for target in [b"g".as_slice(), b"f"] {
                let target = g.global_ref(target, input, false);
                g.blocks[block.idx()].edges.push(Edge {
                    offset: 1,
                    kind: crate::arch::x86_64::EdgeKind::BranchPCRel32.into(),
                    target,
                    addend: -4,
                });
            }
        }
        (g, f)
    }

    /// The one-block shortcut marks and counts what following the edges does, root or not.
    #[test]
    fn one_block_dead_strip_agrees_with_the_general_pass() {
        let mut cases = 0;
        for explicit in [false, true] {
            for retain in [false, true] {
                for visibility in [Visibility::Default, Visibility::Hidden] {
                    for edges in [false, true] {
                        for root in [false, true] {
                            let (mut a, f) = one_block(explicit, retain, visibility, edges);
                            let (mut b, _) = one_block(explicit, retain, visibility, edges);
                            let roots = if root { vec![f] } else { vec![] };
                            let short = dead_strip(&mut a, &roots, None);
                            let general = dead_strip_graph(&mut b, &roots, None);
                            assert_eq!(short, general);
                            assert_eq!(a.blocks[0].live, b.blocks[0].live);
                            let expect =
                                explicit && visibility == Visibility::Default || retain || root;
                            assert_eq!(a.blocks[0].live, expect);
                            // The unit's handle as the only root.
                            let (mut a, f) = one_block(false, false, Visibility::Hidden, edges);
                            let (mut b, _) = one_block(false, false, Visibility::Hidden, edges);
                            assert_eq!(dead_strip(&mut a, &[], Some(f)), 1);
                            assert_eq!(dead_strip_graph(&mut b, &[], Some(f)), 1);
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 32);
    }

    /// The small graph's check for names the linker may write glue for answers as the scan of
    /// the globals' table does: for names it may define and names it may not, defined or not,
    /// and locals named like them (never glue).
    #[test]
    fn small_graphs_glue_check_agrees_with_the_table() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let names: [&[u8]; 9] = [
            b"abs",
            b"f",
            b"_start",
            b"atexit",
            b"at_quick_exit",
            b"pthread_atfork",
            b"atexits",
            b"pthread",
            b"__rust_alloc",
        ];
        let mut found = 0;
        for (i, name) in names.iter().enumerate() {
            for how in 0..3 {
                let mut small = LinkGraph::with_capacity(arch, 1, 1, 2);
                let mut table =
                    LinkGraph::with_capacity(arch, 1, 1, crate::graph::SCAN_AT_MOST + 1);
                for g in [&mut small, &mut table] {
                    let input = g.add_input("a", true);
                    let section =
                        synth_section(g, b".text", MemProt::ReadExec, SectionKind::Regular, input);
                    let block = g.add_block(section, Content::Zero(8), 8);
                    // A name the linker never defines, beside the one tried.
                    g.global_ref(names[(i + 1) % 2], input, false);
                    match how {
                        0 => {
                            g.global_ref(name, input, false);
                        }
                        1 => {
                            define_hidden(g, name, block, input, true);
                        }
                        _ => {
                            let id = g.add_anon(block, 0, input);
                            g.symbols[id.idx()].name = name;
                        }
                    }
                }
                assert!(!small.indexed && table.indexed);
                let scanned = any_may_need_glue(&small);
                assert_eq!(scanned, any_may_need_glue(&table), "{name:?}, case {how}");
                assert_eq!(
                    scanned,
                    how == 0
                        && may_name_linker_glue(name)
                        && *name != b"atexits".as_slice()
                        && *name != b"pthread".as_slice()
                );
                found += usize::from(scanned);
            }
        }
        assert_eq!(found, 5);
    }
}

//! Passes over the graph, in the order `link::link` runs them.

use crate::arch::x86_64::{self as arch, EdgeKind};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// A synthetic input for what the linker makes itself.
pub fn kiln_input(g: &mut LinkGraph) -> InputId {
    g.add_input("<kiln>".into(), false)
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
        Scope::Hidden,
        callable,
        false,
        input,
    )
}

fn is_undefined(g: &LinkGraph, name: &[u8]) -> bool {
    g.globals
        .get(name)
        .is_some_and(|id| g.symbols[id.idx()].def == SymbolDef::Undefined)
}

/// What the unit gets from the linker rather than from an input:
/// - `__dso_handle`: this unit's identity for `__cxa_atexit` (so its exit handlers run when the
///   unit is removed, via `__cxa_finalize`);
/// - `atexit`, `at_quick_exit`, `pthread_atfork`: glibc keeps these in libc_nonshared.a, not in
///   libc.so.6; as there, each passes the unit's `__dso_handle` on;
/// - `_GLOBAL_OFFSET_TABLE_`: the start of the unit's GOT.
///
/// Returns (the `__dso_handle` symbol, the GOT block).
pub fn synthesize_runtime<'a>(
    g: &mut LinkGraph<'a>,
    input: InputId,
    allow: Option<&rustc_hash::FxHashSet<String>>,
) -> (SymbolId, BlockId) {
    let data = synth_section(
        g,
        b".data.kiln.dso_handle",
        MemProt::Read,
        SectionKind::Regular,
        input,
    );
    let dso_block = g.add_block(data, Content::Zero(8), 8);
    let dso = if is_undefined(g, b"__dso_handle") || !g.globals.contains_key(&b"__dso_handle"[..]) {
        define_hidden(g, b"__dso_handle", dso_block, input, false)
    } else {
        g.add_anon(dso_block, 0, input)
    };
    // (symbol, callee, code, offset of the call's displacement)
    type TailCall = (&'static [u8], &'static [u8], &'static [u8], u32);
    let tail_calls: [TailCall; 3] = [
        (b"atexit", b"__cxa_atexit", &arch::DSO_TAIL_CALL, 10),
        (
            b"at_quick_exit",
            b"__cxa_at_quick_exit",
            &arch::DSO_TAIL_CALL,
            10,
        ),
        (
            b"pthread_atfork",
            b"__register_atfork",
            &arch::ATFORK_TAIL_CALL,
            8,
        ),
    ];
    for (name, callee, code, call_at) in tail_calls {
        let allowed = allow.is_none_or(|a| a.contains(std::str::from_utf8(name).unwrap_or("")));
        if !is_undefined(g, name) || !allowed {
            continue;
        }
        let text = synth_section(
            g,
            b".text.kiln",
            MemProt::ReadExec,
            SectionKind::Regular,
            input,
        );
        let b = g.add_block(text, Content::Bytes(Cow::Borrowed(code)), 16);
        let callee = g.global_ref(callee, input, false);
        g.blocks[b.idx()].edges = vec![
            Edge {
                offset: 3,
                kind: EdgeKind::Delta32,
                target: dso,
                addend: -4,
            },
            Edge {
                offset: call_at,
                kind: EdgeKind::BranchPCRel32,
                target: callee,
                addend: -4,
            },
        ];
        define_hidden(g, name, b, input, true);
    }
    synthesize_rust_allocator_shim(g, input);
    // The start of the unit's TLS block, for local-dynamic code using TLS descriptors.
    if is_undefined(g, b"_TLS_MODULE_BASE_") {
        let id = g.globals[&b"_TLS_MODULE_BASE_"[..]];
        let s = &mut g.symbols[id.idx()];
        s.def = SymbolDef::Absolute(0);
        s.tls = true;
        s.scope = Scope::Hidden;
    }
    let got_sec = synth_section(g, b".got", MemProt::Read, SectionKind::Got, input);
    let got = g.add_block(got_sec, Content::Bytes(Cow::Owned(Vec::new())), 8);
    if is_undefined(g, b"_GLOBAL_OFFSET_TABLE_") {
        define_hidden(g, b"_GLOBAL_OFFSET_TABLE_", got, input, false);
    }
    (dso, got)
}

/// rustc writes the global allocator's shim (`__rust_alloc` → `__rdl_alloc`, …) only when it
/// links a binary, a cdylib or a staticlib; objects from `rustc --emit=obj` linked against the
/// sysroot's rlibs reference it without a definition. Kiln writes it as a native link would for
/// the default (System) allocator: each `__rust_X` tail-calls `__rdl_X` under the same mangling
/// prefix, and `__rust_no_alloc_shim_is_unstable_v2` is an empty function.
fn synthesize_rust_allocator_shim(g: &mut LinkGraph, input: InputId) {
    let undefined: Vec<SymbolId> = g
        .globals
        .values()
        .copied()
        .filter(|id| g.symbols[id.idx()].def == SymbolDef::Undefined)
        .collect();
    for id in undefined {
        let name = g.symbols[id.idx()].name;
        let Some(text) = std::str::from_utf8(name).ok() else {
            continue;
        };
        // `_RNv<crate>7___rustc<N>___rust_alloc`, or plain `__rust_alloc` (older rustc).
        let (prefix, base) = match text.rfind("___rust_") {
            Some(i) if text.starts_with("_RNv") => {
                let digits = text[..i].trim_end_matches(|c: char| c.is_ascii_digit());
                (digits, &text[i + 1..])
            }
            _ if text.starts_with("__rust_") => ("", text),
            _ => continue,
        };
        let code: Vec<u8>;
        let mut edges = Vec::new();
        if base == "__rust_no_alloc_shim_is_unstable_v2" {
            code = vec![0xc3]; // ret
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
            let target: &'static [u8] = Box::leak(target.into_bytes().into_boxed_slice());
            let t = g.global_ref(target, input, false);
            code = vec![0xe9, 0, 0, 0, 0]; // jmp __rdl_X
            edges.push(Edge {
                offset: 1,
                kind: EdgeKind::BranchPCRel32,
                target: t,
                addend: -4,
            });
        }
        let sec = synth_section(
            g,
            b".text.kiln.rust_alloc",
            MemProt::ReadExec,
            SectionKind::Regular,
            input,
        );
        let b = g.add_block(sec, Content::Bytes(Cow::Owned(code)), 16);
        g.blocks[b.idx()].edges = edges;
        g.symbols[id.idx()].def = SymbolDef::Defined {
            block: b,
            offset: 0,
        };
        g.symbols[id.idx()].scope = Scope::Hidden;
    }
}

/// COMMON symbols become zero-filled blocks.
pub fn allocate_commons(g: &mut LinkGraph, input: InputId) {
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
pub fn merge_init_fragments(g: &mut LinkGraph, kind: SectionKind, input: InputId) {
    let frags: Vec<BlockId> = (0..g.blocks.len() as u32)
        .map(BlockId)
        .filter(|b| g.section_of(*b).kind == kind && !g.blocks[b.idx()].is_zero_fill())
        .collect();
    if frags.is_empty() {
        return;
    }
    let mut code = arch::INIT_PROLOGUE.to_vec();
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
    code.extend_from_slice(&arch::INIT_EPILOGUE);
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
/// SHF_GNU_RETAIN, `__start_`-able names), the extra roots given, and the default-visibility
/// globals of inputs given explicitly (they can be looked up after linking). FDEs stay alive
/// through `LinkGraph::keep_alive` (and `KeepAlive` edges). Returns the number of live blocks.
pub fn dead_strip(g: &mut LinkGraph, extra_roots: &[SymbolId]) -> usize {
    let mut work: Vec<BlockId> = Vec::new();
    let mark = |g: &mut LinkGraph, b: BlockId, work: &mut Vec<BlockId>| {
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
    let mut roots: Vec<SymbolId> = extra_roots.to_vec();
    for (i, s) in g.symbols.iter().enumerate() {
        if s.scope == Scope::Default
            && !s.name.is_empty()
            && g.inputs.get(s.input.idx()).is_some_and(|inp| inp.explicit)
        {
            roots.push(SymbolId(i as u32));
        }
    }
    for r in roots {
        if let SymbolDef::Defined { block, .. } = g.symbols[r.idx()].def {
            mark(g, block, &mut work);
        }
    }
    // FDEs by function block (a counting sort: `fdes[start[b]..start[b + 1]]`).
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
    let mut live = 0;
    while let Some(b) = work.pop() {
        live += 1;
        for &fde in &fdes[start[b.idx()] as usize..start[b.idx() + 1] as usize] {
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

/// Counts for `--show-stats`.
#[derive(Debug, Default, Clone)]
pub struct GotStats {
    pub got_entries: usize,
    pub stubs: usize,
    pub loads_relaxed: usize,
    pub calls_direct: usize,
    pub tls_pairs: usize,
}

/// Which GOT entry and which stub serve which target symbol: (target, entry or stub symbol).
#[derive(Debug, Default, Clone)]
pub struct GotTables {
    pub got: Vec<(SymbolId, SymbolId)>,
    pub stubs: Vec<(SymbolId, SymbolId)>,
    /// (resolver, writable slot its result goes to) for each IFUNC.
    pub ifunc_slots: Vec<(SymbolId, SymbolId)>,
}

/// Whether every address of `[lo, hi)` reaches `t` with a signed 32-bit displacement (with a
/// margin for addends).
pub fn reaches(lo: u64, hi: u64, t: u64) -> bool {
    const LIMIT: i128 = (1 << 31) - (1 << 20);
    let d1 = t as i128 - lo as i128;
    let d2 = t as i128 - hi as i128;
    d1.abs() < LIMIT && d2.abs() < LIMIT
}

/// An upper bound of the bytes the GOT and stubs can take, before addresses are known.
pub fn got_upper_bound(g: &LinkGraph) -> u64 {
    let mut n = 0u64;
    for b in g.blocks.iter().filter(|b| b.live) {
        for e in &b.edges {
            n += match e.kind {
                EdgeKind::GotDelta32
                | EdgeKind::GotDelta32Relaxable { .. }
                | EdgeKind::GotDelta64
                | EdgeKind::GotOffset64 => 8,
                EdgeKind::BranchPCRel32 => 16,
                EdgeKind::TlsGdDelta32 | EdgeKind::TlsLdDelta32 => 16,
                EdgeKind::GotTpOffDelta32 => 8,
                _ => 0,
            };
        }
    }
    n
}

/// Build GOT entries, stubs and TLS pairs now that the unit's address range `[lo, hi)` is known,
/// and rewrite edges to them. A call whose target is in range goes direct (no stub); a
/// relaxable GOT load of an in-range target becomes a `lea` (no GOT entry). Out-of-range targets
/// always keep the indirection: relaxing those would be a miscompile.
pub fn build_got_and_stubs(
    g: &mut LinkGraph,
    got: BlockId,
    input: InputId,
    lo: u64,
    hi: u64,
) -> (GotStats, GotTables) {
    let mut st = GotStats::default();
    let mut entries: Vec<(Option<SymbolId>, EdgeKind)> = Vec::new(); // (target, kind of word)
    let mut got_of: FxHashMap<SymbolId, SymbolId> = FxHashMap::default();
    let mut gd_of: FxHashMap<SymbolId, SymbolId> = FxHashMap::default();
    let mut ld_pair: Option<SymbolId> = None;
    let mut tpoff_of: FxHashMap<SymbolId, SymbolId> = FxHashMap::default();
    let mut stub_of: FxHashMap<SymbolId, SymbolId> = FxHashMap::default();
    let mut stub_targets: Vec<SymbolId> = Vec::new();
    let stub_sec = g.add_section(Section {
        name: b".kiln.stubs",
        prot: MemProt::ReadExec,
        kind: SectionKind::Stubs,
        input,
        retain: false,
        elf_index: 0,
    });
    let stub_block = g.add_block(stub_sec, Content::Bytes(Cow::Owned(Vec::new())), 16);

    let in_range = |g: &LinkGraph, t: SymbolId| -> bool {
        match g.symbols[t.idx()].def {
            SymbolDef::Defined { .. } => true,
            SymbolDef::Absolute(a) => reaches(lo, hi, a),
            _ => false,
        }
    };
    let mut got_entry = |g: &mut LinkGraph,
                         entries: &mut Vec<(Option<SymbolId>, EdgeKind)>,
                         t: SymbolId|
     -> SymbolId {
        *got_of.entry(t).or_insert_with(|| {
            entries.push((Some(t), EdgeKind::Pointer64));
            g.add_anon(got, (entries.len() as u64 - 1) * 8, input)
        })
    };
    // IFUNCs: every reference goes through a writable slot that the resolver's result fills at
    // finalize, and the stub that jumps through it is the function's canonical address.
    let mut ifunc_slot_of: FxHashMap<SymbolId, SymbolId> = FxHashMap::default();
    let mut ifunc_slots: Vec<(SymbolId, SymbolId)> = Vec::new();
    let ifunc_sec = g.add_section(Section {
        name: b".got.ifunc",
        prot: MemProt::ReadWrite,
        kind: SectionKind::Regular,
        input,
        retain: false,
        elf_index: 0,
    });
    for bi in 0..g.blocks.len() {
        if !g.blocks[bi].live {
            continue;
        }
        for ei in 0..g.blocks[bi].edges.len() {
            let e = g.blocks[bi].edges[ei];
            let t = e.target;
            if g.symbols[t.idx()].ifunc && e.kind != EdgeKind::KeepAlive {
                let slot = *ifunc_slot_of.entry(t).or_insert_with(|| {
                    let b = g.add_block(ifunc_sec, Content::Zero(8), 8);
                    g.blocks[b.idx()].live = true;
                    let slot = g.add_anon(b, 0, input);
                    ifunc_slots.push((t, slot));
                    slot
                });
                let stub = *stub_of.entry(t).or_insert_with(|| {
                    stub_targets.push(slot);
                    g.add_anon(stub_block, (stub_targets.len() as u64 - 1) * 8, input)
                });
                let (kind, target) = match e.kind {
                    EdgeKind::GotDelta32 | EdgeKind::GotDelta32Relaxable { .. } => {
                        (EdgeKind::Delta32, slot)
                    }
                    EdgeKind::GotDelta64 => (EdgeKind::Delta64, slot),
                    EdgeKind::GotOffset64 => (EdgeKind::DeltaFromGot64, slot),
                    k => (k, stub),
                };
                let e = &mut g.blocks[bi].edges[ei];
                e.kind = kind;
                e.target = target;
                continue;
            }
            let new = match e.kind {
                EdgeKind::GotDelta32 => Some((EdgeKind::Delta32, got_entry(g, &mut entries, t))),
                EdgeKind::GotDelta64 => Some((EdgeKind::Delta64, got_entry(g, &mut entries, t))),
                EdgeKind::GotOffset64 => {
                    Some((EdgeKind::DeltaFromGot64, got_entry(g, &mut entries, t)))
                }
                EdgeKind::GotDelta32Relaxable { rex } => {
                    let relaxable = in_range(g, t)
                        && !g.symbols[t.idx()].tls
                        && match &g.blocks[bi].content {
                            Content::Bytes(c) => {
                                arch::can_relax_got_load(c, e.offset as usize, rex)
                            }
                            Content::Zero(_) => false,
                        };
                    if relaxable {
                        st.loads_relaxed += 1;
                        Some((EdgeKind::GotLoadRelaxed { rex }, t))
                    } else {
                        Some((EdgeKind::Delta32, got_entry(g, &mut entries, t)))
                    }
                }
                EdgeKind::BranchPCRel32 => {
                    if in_range(g, t) {
                        if matches!(g.symbols[t.idx()].def, SymbolDef::Absolute(_)) {
                            st.calls_direct += 1;
                        }
                        None
                    } else {
                        tracing::debug!("call to {} is out of range: through a stub", g.name_of(t));
                        let ge = got_entry(g, &mut entries, t);
                        let stub = *stub_of.entry(t).or_insert_with(|| {
                            stub_targets.push(ge);
                            g.add_anon(stub_block, (stub_targets.len() as u64 - 1) * 8, input)
                        });
                        Some((EdgeKind::BranchPCRel32, stub))
                    }
                }
                EdgeKind::TlsGdDelta32 => {
                    let pair = *gd_of.entry(t).or_insert_with(|| {
                        entries.push((None, EdgeKind::TlsModule64));
                        entries.push((Some(t), EdgeKind::DtpOff64));
                        g.add_anon(got, (entries.len() as u64 - 2) * 8, input)
                    });
                    Some((EdgeKind::Delta32, pair))
                }
                EdgeKind::GotTpOffDelta32 => {
                    let entry = *tpoff_of.entry(t).or_insert_with(|| {
                        entries.push((Some(t), EdgeKind::TpOff64));
                        g.add_anon(got, (entries.len() as u64 - 1) * 8, input)
                    });
                    Some((EdgeKind::Delta32, entry))
                }
                EdgeKind::TlsLdDelta32 => {
                    let pair = *ld_pair.get_or_insert_with(|| {
                        entries.push((None, EdgeKind::TlsModule64));
                        entries.push((None, EdgeKind::KeepAlive));
                        g.add_anon(got, (entries.len() as u64 - 2) * 8, input)
                    });
                    Some((EdgeKind::Delta32, pair))
                }
                _ => None,
            };
            if let Some((kind, target)) = new {
                let e = &mut g.blocks[bi].edges[ei];
                e.kind = kind;
                e.target = target;
            }
        }
    }
    let tables = GotTables {
        got: got_of.iter().map(|(t, e)| (*t, *e)).collect(),
        stubs: stub_of.iter().map(|(t, s)| (*t, *s)).collect(),
        ifunc_slots,
    };
    st.got_entries = got_of.len();
    st.tls_pairs = gd_of.len() + usize::from(ld_pair.is_some());
    st.got_entries += tpoff_of.len();
    st.stubs = stub_targets.len();
    let zero = g.add_local(SymbolDef::Absolute(0), input);
    let got_edges: Vec<Edge> = entries
        .iter()
        .enumerate()
        .filter(|(_, (_, k))| *k != EdgeKind::KeepAlive)
        .map(|(i, (t, k))| Edge {
            offset: (i * 8) as u32,
            kind: *k,
            target: t.unwrap_or(zero),
            addend: 0,
        })
        .collect();
    let gb = &mut g.blocks[got.idx()];
    gb.content = Content::Bytes(Cow::Owned(vec![0; entries.len() * 8]));
    gb.edges = got_edges;
    gb.live = true;
    let mut stub_bytes = Vec::with_capacity(stub_targets.len() * 8);
    let mut stub_edges = Vec::with_capacity(stub_targets.len());
    for (i, ge) in stub_targets.iter().enumerate() {
        stub_bytes.extend_from_slice(&arch::STUB);
        stub_edges.push(Edge {
            offset: (i * 8) as u32 + arch::STUB_FIXUP_OFFSET,
            kind: EdgeKind::Delta32,
            target: *ge,
            addend: -4,
        });
    }
    let sb = &mut g.blocks[stub_block.idx()];
    sb.content = Content::Bytes(Cow::Owned(stub_bytes));
    sb.edges = stub_edges;
    sb.live = !stub_targets.is_empty();
    (st, tables)
}

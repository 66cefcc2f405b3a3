//! GOT entries, stubs and TLS pairs, built once the unit's address range is known.
//!
//! A call whose target is in range goes direct (no stub); a relaxable GOT load of an in-range
//! target becomes a `lea` (no GOT entry). Out-of-range targets always keep the indirection:
//! relaxing those would be a miscompile. IFUNCs: every reference goes through a writable slot
//! that the resolver's result fills at finalize, and the stub that jumps through it is the
//! function's canonical address.

use super::templates::STUB;
use super::EdgeKind::{self, *};
use crate::arch::{Formula, TableContext, TableStats, Tables};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// An upper bound of the bytes of GOT entries and stubs an edge of this kind can need (in its
/// table row: [`crate::arch::EdgeInfo::table_bytes`]).
pub(super) const fn bytes_upper_bound(kind: EdgeKind) -> u64 {
    match kind {
        GotDelta32 | GotDelta32Relaxable { .. } | GotDelta64 | GotOffset64 | GotTpOffDelta32 => 8,
        // A GOT entry and a stub.
        BranchPCRel32 => 8 + STUB.len() as u64,
        // A `{module, offset}` pair.
        TlsGdDelta32 | TlsLdDelta32 => 16,
        _ => 0,
    }
}

/// Build the tables for every live edge of `g` that needs one, and rewrite those edges. Nothing
/// is made (no section, block or symbol) for a unit whose edges need no table.
pub(super) fn build(g: &mut LinkGraph, cx: &TableContext) -> Tables {
    if let Some(calls_direct) = direct_only(g, cx) {
        return Tables {
            stats: TableStats {
                calls_direct,
                ..Default::default()
            },
            ..Default::default()
        };
    }
    build_with_builder(g, cx)
}

/// [`build`] when some edge needs a table (out of line: a JIT's function that calls others
/// runs only the check above).
#[inline(never)]
fn build_with_builder(g: &mut LinkGraph, cx: &TableContext) -> Tables {
    let mut b = Builder::new(g, cx);
    if b.g
        .blocks
        .iter()
        .filter(|b| b.live)
        .flat_map(|b| &b.edges)
        .any(|e| {
            let f = b.g.edge_info(e.kind).formula;
            matches!(f, Formula::GotRelative | Formula::GotBasePcRelative)
        })
    {
        b.got_block();
    }
    for bi in 0..b.g.blocks.len() {
        if !b.g.blocks[bi].live {
            continue;
        }
        for ei in 0..b.g.blocks[bi].edges.len() {
            let e = b.g.blocks[bi].edges[ei];
            let crate::arch::EdgeKind::X86_64(kind) = e.kind else {
                continue;
            };
            let rewritten = if b.g.symbols[e.target.idx()].ifunc {
                Some(b.through_ifunc_slot(kind, e.target))
            } else {
                b.rewrite(BlockId(bi as u32), &e, kind)
            };
            if let Some((kind, target)) = rewritten {
                let edge = &mut b.g.blocks[bi].edges[ei];
                edge.kind = kind.into();
                edge.target = target;
            }
        }
    }
    b.finish()
}

/// When no live edge needs a table — none uses the GOT or a TLS pair, none targets an IFUNC,
/// every call reaches its target directly — and the unit has no GOT: the number of direct
/// calls to host symbols, all [`build`] would do (a JIT's function that calls others takes
/// this one scan instead of the builder's).
#[inline]
fn direct_only(g: &LinkGraph, cx: &TableContext) -> Option<usize> {
    if cx.got.is_some() {
        return None;
    }
    let mut calls_direct = 0;
    // (Two plain loops, and the kind's row read here rather than through the architecture:
    // a one-function unit's whole table pass is this scan.)
    for b in g.blocks.iter().filter(|b| b.live) {
        for e in &b.edges {
            let crate::arch::EdgeKind::X86_64(kind) = e.kind else {
                continue;
            };
            let target = &g.symbols[e.target.idx()];
            if target.ifunc {
                return None;
            }
            // (A JIT's edges, calls and PC-relative data references, decided without their
            // row: neither uses the GOT, and a data reference needs no table.)
            match kind {
                BranchPCRel32 => {
                    if !in_range(g, cx, e.target) {
                        return None;
                    }
                    calls_direct += usize::from(matches!(target.def, SymbolDef::Absolute(_)));
                }
                Delta32 => {}
                k if may_need_table(k) => return None,
                _ => {}
            }
        }
    }
    Some(calls_direct)
}

/// Whether an edge of this kind may need a GOT entry, a stub or a TLS pair: it uses the GOT,
/// or [`bytes_upper_bound`] allows it table bytes.
fn may_need_table(kind: EdgeKind) -> bool {
    let formula = super::relocs::row(kind).info.formula;
    matches!(formula, Formula::GotRelative | Formula::GotBasePcRelative)
        || bytes_upper_bound(kind) > 0
}

/// Whether every byte of the unit reaches `t` with a 32-bit displacement.
fn in_range(g: &LinkGraph, cx: &TableContext, t: SymbolId) -> bool {
    match g.symbols[t.idx()].def {
        SymbolDef::Defined { .. } => true,
        // (`abs_diff` is the exact distance, as a subtraction in 128 bits would give.)
        SymbolDef::Absolute(a) => {
            let reach = super::PC_RELATIVE_32_REACH;
            a.abs_diff(cx.lo) < reach && a.abs_diff(cx.hi) < reach
        }
        _ => false,
    }
}

/// What a GOT word holds.
#[derive(Copy, Clone)]
enum GotWord {
    /// An edge of this kind to the target fills it.
    Value(EdgeKind, SymbolId),
    /// The unit's TLS module value.
    TlsModule,
    /// Zero (the offset half of the local-dynamic pair).
    Zero,
}

struct Builder<'g, 'a> {
    g: &'g mut LinkGraph<'a>,
    cx: &'g TableContext,
    got_words: Vec<GotWord>,
    /// Target → its GOT entry (holding its address).
    got_of: FxHashMap<SymbolId, SymbolId>,
    /// Target → its `{module, offset}` pair.
    gd_of: FxHashMap<SymbolId, SymbolId>,
    /// The unit's `{module, 0}` pair.
    ld_pair: Option<SymbolId>,
    /// Target → its GOT entry holding `S - TP`.
    tpoff_of: FxHashMap<SymbolId, SymbolId>,
    /// Target → its stub.
    stub_of: FxHashMap<SymbolId, SymbolId>,
    /// Per stub, the GOT entry (or IFUNC slot) it jumps through.
    stub_slots: Vec<SymbolId>,
    /// Made when the first stub, IFUNC slot or GOT word is.
    stub_block: Option<BlockId>,
    ifunc_section: Option<SectionId>,
    got: Option<BlockId>,
    /// IFUNC resolver → its slot.
    ifunc_slot_of: FxHashMap<SymbolId, SymbolId>,
    ifunc_slots: Vec<(SymbolId, SymbolId)>,
    stats: TableStats,
}

impl<'g, 'a> Builder<'g, 'a> {
    fn new(g: &'g mut LinkGraph<'a>, cx: &'g TableContext) -> Self {
        Builder {
            g,
            cx,
            got_words: Vec::new(),
            got_of: FxHashMap::default(),
            gd_of: FxHashMap::default(),
            ld_pair: None,
            tpoff_of: FxHashMap::default(),
            stub_of: FxHashMap::default(),
            stub_slots: Vec::new(),
            stub_block: None,
            ifunc_section: None,
            got: cx.got,
            ifunc_slot_of: FxHashMap::default(),
            ifunc_slots: Vec::new(),
            stats: TableStats::default(),
        }
    }

    fn section(&mut self, name: &'static [u8], prot: MemProt, kind: SectionKind) -> SectionId {
        self.g.add_section(Section {
            name,
            prot,
            kind,
            input: self.cx.linker_input,
            retain: false,
            elf_index: 0,
        })
    }

    /// The unit's GOT block, made on first use.
    fn got_block(&mut self) -> BlockId {
        match self.got {
            Some(b) => b,
            None => {
                let b = crate::link::passes::add_got(self.g, self.cx.linker_input);
                self.got = Some(b);
                b
            }
        }
    }

    /// Whether every byte of the unit reaches `t` with a 32-bit displacement.
    fn in_range(&self, t: SymbolId) -> bool {
        in_range(self.g, self.cx, t)
    }

    /// Append words to the GOT; returns a symbol at the first.
    fn push_got(&mut self, words: &[GotWord]) -> SymbolId {
        let at = self.got_words.len() as u64 * 8;
        self.got_words.extend_from_slice(words);
        let got = self.got_block();
        self.g.add_anon(got, at, self.cx.linker_input)
    }

    fn got_entry(&mut self, t: SymbolId) -> SymbolId {
        if let Some(&e) = self.got_of.get(&t) {
            return e;
        }
        let e = self.push_got(&[GotWord::Value(Pointer64, t)]);
        self.got_of.insert(t, e);
        e
    }

    /// A stub for `target`, jumping through `slot`.
    fn stub(&mut self, target: SymbolId, slot: SymbolId) -> SymbolId {
        if let Some(&s) = self.stub_of.get(&target) {
            return s;
        }
        let at = self.stub_slots.len() as u64 * STUB.len() as u64;
        self.stub_slots.push(slot);
        let block = match self.stub_block {
            Some(b) => b,
            None => {
                let sec = self.section(b".kiln.stubs", MemProt::ReadExec, SectionKind::Stubs);
                let b = self
                    .g
                    .add_block(sec, Content::Bytes(Cow::Owned(Vec::new())), 16);
                self.stub_block = Some(b);
                b
            }
        };
        let s = self.g.add_anon(block, at, self.cx.linker_input);
        self.stub_of.insert(target, s);
        s
    }

    /// Every reference to an IFUNC goes through its slot (data references) or the stub that
    /// jumps through it (calls and address-taken code references).
    fn through_ifunc_slot(&mut self, kind: EdgeKind, resolver: SymbolId) -> (EdgeKind, SymbolId) {
        let slot = match self.ifunc_slot_of.get(&resolver) {
            Some(&s) => s,
            None => {
                let sec = match self.ifunc_section {
                    Some(s) => s,
                    None => {
                        let s =
                            self.section(b".got.ifunc", MemProt::ReadWrite, SectionKind::Regular);
                        self.ifunc_section = Some(s);
                        s
                    }
                };
                let b = self.g.add_block(sec, Content::Zero(8), 8);
                self.g.blocks[b.idx()].live = true;
                let slot = self.g.add_anon(b, 0, self.cx.linker_input);
                self.ifunc_slots.push((resolver, slot));
                self.ifunc_slot_of.insert(resolver, slot);
                slot
            }
        };
        let stub = self.stub(resolver, slot);
        match kind {
            GotDelta32 | GotDelta32Relaxable { .. } => (Delta32, slot),
            GotDelta64 => (Delta64, slot),
            GotOffset64 => (DeltaFromGot64, slot),
            k => (k, stub),
        }
    }

    /// The edge's new kind and target, if it goes through a table.
    fn rewrite(
        &mut self,
        block: BlockId,
        e: &Edge,
        kind: EdgeKind,
    ) -> Option<(EdgeKind, SymbolId)> {
        let t = e.target;
        match kind {
            GotDelta32 => Some((Delta32, self.got_entry(t))),
            GotDelta64 => Some((Delta64, self.got_entry(t))),
            GotOffset64 => Some((DeltaFromGot64, self.got_entry(t))),
            GotDelta32Relaxable { rex } => Some(self.relax_or_got(block, e.offset, t, rex)),
            BranchPCRel32 => self.call(t),
            TlsGdDelta32 => Some((Delta32, self.gd_pair(t))),
            GotTpOffDelta32 => Some((Delta32, self.tpoff_entry(t))),
            TlsLdDelta32 => Some((Delta32, self.ld_pair())),
            _ => None,
        }
    }

    fn relax_or_got(
        &mut self,
        block: BlockId,
        off: u32,
        t: SymbolId,
        rex: bool,
    ) -> (EdgeKind, SymbolId) {
        let shape_ok = match &self.g.blocks[block.idx()].content {
            Content::Bytes(c) => super::relocs::can_relax_got_load(c, off as usize, rex),
            Content::Zero(_) => false,
        };
        if self.in_range(t) && !self.g.symbols[t.idx()].tls && shape_ok {
            self.stats.loads_relaxed += 1;
            (GotLoadRelaxed { rex }, t)
        } else {
            (Delta32, self.got_entry(t))
        }
    }

    /// A call: direct in range, else through a stub and a GOT entry.
    fn call(&mut self, t: SymbolId) -> Option<(EdgeKind, SymbolId)> {
        if self.in_range(t) {
            if matches!(self.g.symbols[t.idx()].def, SymbolDef::Absolute(_)) {
                self.stats.calls_direct += 1;
            }
            return None;
        }
        tracing::debug!(
            "call to {} is out of range: through a stub",
            self.g.name_of(t)
        );
        let entry = self.got_entry(t);
        Some((BranchPCRel32, self.stub(t, entry)))
    }

    fn gd_pair(&mut self, t: SymbolId) -> SymbolId {
        if let Some(&p) = self.gd_of.get(&t) {
            return p;
        }
        let p = self.push_got(&[GotWord::TlsModule, GotWord::Value(DtpOff64, t)]);
        self.gd_of.insert(t, p);
        p
    }

    fn ld_pair(&mut self) -> SymbolId {
        if let Some(p) = self.ld_pair {
            return p;
        }
        let p = self.push_got(&[GotWord::TlsModule, GotWord::Zero]);
        self.ld_pair = Some(p);
        p
    }

    fn tpoff_entry(&mut self, t: SymbolId) -> SymbolId {
        if let Some(&e) = self.tpoff_of.get(&t) {
            return e;
        }
        let e = self.push_got(&[GotWord::Value(TpOff64, t)]);
        self.tpoff_of.insert(t, e);
        e
    }

    /// Fill the GOT and stub blocks with their bytes and edges.
    fn finish(self) -> Tables {
        let Builder { g, cx, .. } = self;
        if let Some(got) = self.got {
            let zero = g.add_local(SymbolDef::Absolute(0), cx.linker_input);
            let got_edges: Vec<Edge> = self
                .got_words
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    let (kind, target) = match *w {
                        GotWord::Value(k, t) => (k, t),
                        GotWord::TlsModule => (TlsModule64, zero),
                        GotWord::Zero => return None,
                    };
                    Some(Edge {
                        offset: (i * 8) as u32,
                        kind: kind.into(),
                        target,
                        addend: 0,
                    })
                })
                .collect();
            let block = &mut g.blocks[got.idx()];
            block.content = Content::Bytes(Cow::Owned(vec![0; self.got_words.len() * 8]));
            block.edges = got_edges;
            block.live = true;
        }
        if let Some(stubs) = self.stub_block {
            let mut stub_bytes = Vec::with_capacity(self.stub_slots.len() * STUB.len());
            let mut stub_edges = Vec::with_capacity(self.stub_slots.len());
            for slot in &self.stub_slots {
                stub_edges.push(Edge {
                    offset: stub_bytes.len() as u32 + super::templates::STUB_FIXUP_OFFSET,
                    kind: Delta32.into(),
                    target: *slot,
                    addend: -4,
                });
                stub_bytes.extend_from_slice(&STUB);
            }
            let block = &mut g.blocks[stubs.idx()];
            block.content = Content::Bytes(Cow::Owned(stub_bytes));
            block.edges = stub_edges;
            block.live = true;
        }
        let stats = TableStats {
            got_entries: self.got_of.len() + self.tpoff_of.len(),
            stubs: self.stub_slots.len(),
            tls_pairs: self.gd_of.len() + usize::from(self.ld_pair.is_some()),
            ..self.stats
        };
        Tables {
            got: self.got_of.into_iter().collect(),
            stubs: self.stub_of.into_iter().collect(),
            ifunc_slots: self.ifunc_slots,
            got_block: self.got,
            stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::fixtures::{function_symbol, graph_with_text};

    /// [`direct_only`] as it was before calls and PC-relative data references were decided
    /// without their row: every kind's row read, the GOT formulas and table bytes refused.
    fn direct_only_by_rows(g: &LinkGraph, cx: &TableContext) -> Option<usize> {
        if cx.got.is_some() {
            return None;
        }
        let mut calls_direct = 0;
        for b in g.blocks.iter().filter(|b| b.live) {
            for e in &b.edges {
                let crate::arch::EdgeKind::X86_64(kind) = e.kind else {
                    continue;
                };
                let formula = super::super::relocs::row(kind).info.formula;
                let target = &g.symbols[e.target.idx()];
                if target.ifunc
                    || matches!(formula, Formula::GotRelative | Formula::GotBasePcRelative)
                {
                    return None;
                }
                match kind {
                    BranchPCRel32 if in_range(g, cx, e.target) => {
                        calls_direct += usize::from(matches!(target.def, SymbolDef::Absolute(_)));
                    }
                    k if bytes_upper_bound(k) > 0 => return None,
                    _ => {}
                }
            }
        }
        Some(calls_direct)
    }

    /// Every kind of edge, to a target defined in the unit, a host symbol in reach and one out
    /// of it, an undefined one and an IFUNC, alone or after a call: the table pass's check
    /// answers as reading every kind's row does.
    #[test]
    fn direct_only_agrees_with_the_rows() {
        let kinds: Vec<EdgeKind> = super::super::relocs::ROWS
            .iter()
            .map(|r| r.kind)
            .chain([TlsDescCallToNop])
            .collect();
        let lo = 0x7000_0000_0000u64;
        let targets = [
            SymbolDef::Absolute(lo + 0x1000),
            SymbolDef::Absolute(lo + (1 << 40)),
            SymbolDef::Undefined,
        ];
        let mut cases = 0;
        for &kind in &kinds {
            for target in 0..5 {
                for after_call in [false, true] {
                    let (mut g, input, section) = graph_with_text("a", true, false);
                    let block = g.add_block(section, Content::Zero(64), 16);
                    g.blocks[block.idx()].live = true;
                    let own = g.add_symbol(function_symbol(
                        b"f",
                        SymbolDef::Defined { block, offset: 0 },
                        input,
                    ));
                    let host = g.add_symbol(function_symbol(
                        b"abs",
                        SymbolDef::Absolute(lo + 0x2000),
                        input,
                    ));
                    let id = match target {
                        0 => own,
                        4 => {
                            g.symbols[host.idx()].ifunc = true;
                            host
                        }
                        t => g.add_symbol(function_symbol(b"t", targets[t - 1], input)),
                    };
                    let mut edges = Vec::new();
                    if after_call {
                        edges.push(Edge {
                            offset: 0,
                            kind: BranchPCRel32.into(),
                            target: host,
                            addend: -4,
                        });
                    }
                    edges.push(Edge {
                        offset: 8,
                        kind: kind.into(),
                        target: id,
                        addend: 0,
                    });
                    g.blocks[block.idx()].edges = edges;
                    let cx = TableContext {
                        got: None,
                        linker_input: input,
                        lo,
                        hi: lo + 0x1000,
                    };
                    assert_eq!(
                        direct_only(&g, &cx),
                        direct_only_by_rows(&g, &cx),
                        "{kind:?} to target {target}, after a call: {after_call}"
                    );
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, kinds.len() * 10);
        // The fast path's premise: neither kind uses the GOT; a data reference has no table
        // bytes.
        assert!(!may_need_table(Delta32));
        let call = super::super::relocs::row(BranchPCRel32).info.formula;
        assert!(!matches!(
            call,
            Formula::GotRelative | Formula::GotBasePcRelative
        ));
    }
}

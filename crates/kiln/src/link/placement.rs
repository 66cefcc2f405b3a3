//! Where a unit may be placed, and how much room it needs, before addresses are known.
//!
//! Code reaches host symbols with 32-bit PC-relative displacements (gcc's default PIE code
//! reaches `stderr` with PC32), so the unit must lie within reach of them. References with a
//! fallback (calls through a stub, loads through the GOT) only make a placement nicer; those
//! without one constrain it.

use super::layout::{prot_slot, PROTS};
use crate::arch::{EdgeInfo, Reach};
use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::Placement;

/// What placing the unit needs to know, from one scan of its live blocks and their edges.
pub struct Bounds {
    /// An upper bound of the bytes of the whole unit, in one reservation of its own.
    pub size: u64,
    /// Upper bounds of the bytes (and the alignments) each protection class needs, GOT entries
    /// and stubs included as if none could be relaxed.
    pub sizes: [u64; 3],
    pub aligns: [u64; 3],
    reaches: Reaches,
}

/// What live edges ask of the unit's placement.
struct Reaches {
    /// The lowest and highest host symbol (absolute, non-zero target) reached with a 32-bit
    /// PC-relative reference that has no fallback...
    must: Span,
    /// ...and with one that has (a call through a stub, a load through the GOT).
    nice: Span,
    /// Live code addresses the unit's own symbols with 32-bit absolute relocations (non-PIE
    /// code): the unit must sit in the low 2 GiB.
    low_2g: bool,
}

impl Default for Reaches {
    fn default() -> Self {
        Reaches {
            must: Span::EMPTY,
            nice: Span::EMPTY,
            low_2g: false,
        }
    }
}

/// The lowest and the highest of some addresses; none when `lo > hi`. (Widened with a `min`
/// and a `max`, no branch: an `Option` of the pair cost a test and a branch an edge, and a
/// bigger [`Bounds`] to write out.)
#[derive(Copy, Clone)]
struct Span {
    lo: u64,
    hi: u64,
}

impl Span {
    const EMPTY: Span = Span {
        lo: u64::MAX,
        hi: 0,
    };

    #[inline(always)]
    fn widen(&mut self, a: u64) {
        self.lo = self.lo.min(a);
        self.hi = self.hi.max(a);
    }

    #[inline(always)]
    fn get(self) -> Option<(u64, u64)> {
        (self.lo <= self.hi).then_some((self.lo, self.hi))
    }
}

impl Reaches {
    /// Add edge `e`, whose table row is `info`.
    #[inline(always)]
    fn add(&mut self, g: &LinkGraph, e: &Edge, info: &EdgeInfo) {
        match (&g.symbols[e.target.idx()].def, info.reach) {
            (&SymbolDef::Absolute(a), Reach::PcRelative32) if a != 0 => self.must.widen(a),
            (&SymbolDef::Absolute(a), Reach::PcRelative32WithFallback) if a != 0 => {
                self.nice.widen(a)
            }
            (SymbolDef::Defined { .. }, Reach::Absolute32) => self.low_2g = true,
            _ => {}
        }
    }
}

/// The unit's [`Bounds`]. (Inlined into its one caller: returned from a call, the struct is
/// written out and read back, about 30 instructions a unit.)
#[inline]
pub fn bounds(g: &LinkGraph, page: u64) -> Bounds {
    let mut size = 0u64;
    let mut sizes = [0u64; 3];
    let mut aligns = [1u64; 3];
    // An upper bound of the bytes GOT entries and stubs can take, before addresses are known.
    let mut tables = 0u64;
    let mut reaches = Reaches::default();
    for b in g.blocks.iter().filter(|b| b.live) {
        size = size.saturating_add(b.size()).saturating_add(b.align);
        for e in &b.edges {
            let info = e.kind.info();
            tables = tables.saturating_add(u64::from(info.table_bytes));
            reaches.add(g, e, info);
        }
        let sec = &g.sections[b.section.idx()];
        if sec.kind == SectionKind::Tls && b.is_zero_fill() {
            continue;
        }
        let r = prot_slot(sec.prot);
        sizes[r] = sizes[r].saturating_add(b.size()).saturating_add(b.align);
        aligns[r] = aligns[r].max(b.align);
        if sec.kind == SectionKind::Tls {
            aligns[r] = aligns[r].max(4096.min(page));
            sizes[r] = sizes[r].saturating_add(4096.min(page));
        }
    }
    // Stubs go with the code, GOT entries with read-only data.
    sizes[prot_slot(PROTS[0])] = sizes[0].saturating_add(tables);
    sizes[prot_slot(PROTS[1])] = sizes[1].saturating_add(tables);
    Bounds {
        // Each segment starts on a page; the TLS image on a page of its own.
        size: size.saturating_add(4 * page + 4096).saturating_add(tables),
        sizes,
        aligns,
        reaches,
    }
}

/// The window the unit (of `size` bytes) must lie in so that its 32-bit PC-relative references
/// to host symbols reach. (Inlined into the link's reserve, its errors out of line.)
#[inline]
pub fn placement_window(g: &LinkGraph, bounds: &Bounds, size: u64) -> Result<Placement> {
    let reach = g.arch.pc_relative_32_reach();
    let Reaches { must, nice, low_2g } = bounds.reaches;
    let (must, nice) = (must.get(), nice.get());
    if low_2g {
        return low_2g_window(must, size, reach);
    }
    // The unit lies in [wlo, whi): every byte within `reach` of every target.
    let window = |(lo, hi): (u64, u64)| -> Option<Placement> {
        let wlo = hi.saturating_sub(reach);
        let whi = lo.saturating_add(reach).min(0x7fff_ffff_f000);
        (whi > wlo && whi - wlo >= size).then_some(Placement::Within { lo: wlo, hi: whi })
    };
    let both = match (must, nice) {
        (Some(m), Some(n)) => Some((m.0.min(n.0), m.1.max(n.1))),
        (m, n) => m.or(n),
    };
    let Some(both) = both else {
        return Ok(Placement::Anywhere);
    };
    if let Some(p) = window(both) {
        return Ok(p);
    }
    // Too spread out for every reference: only those without a fallback must reach.
    let Some(must) = must else {
        return Ok(Placement::Anywhere);
    };
    window(must).ok_or_else(|| too_far_apart(must))
}

/// Host data reached without a fallback lies too far apart for any placement.
#[cold]
#[inline(never)]
fn too_far_apart(must: (u64, u64)) -> Error {
    Error::Unsupported {
        at: Default::default(),
        what: format!(
            "the code references host data at {:#x} and {:#x} with 32-bit PC-relative \
                 relocations; no placement reaches both (they are more than 2 GiB apart)",
            must.0, must.1
        )
        .into(),
    }
}

/// Non-PIE code (R_X86_64_32/32S to the unit's own symbols) must sit in the low 2 GiB, and
/// still reach the host data it addresses PC-relatively. (Out of line: a JIT's code is PIE.)
#[cold]
#[inline(never)]
fn low_2g_window(must: Option<(u64, u64)>, size: u64, reach: u64) -> Result<Placement> {
    const LOW: (u64, u64) = (0x10000, 0x8000_0000);
    let Some(must) = must else {
        tracing::debug!("non-PIE code: placing the unit in the low 2 GiB");
        return Ok(Placement::Within {
            lo: LOW.0,
            hi: LOW.1,
        });
    };
    let lo = must.1.saturating_sub(reach).max(LOW.0);
    let hi = must.0.saturating_add(reach).min(LOW.1);
    if hi > lo && hi - lo >= size {
        return Ok(Placement::Within { lo, hi });
    }
    Err(Error::Unsupported {
        at: Default::default(),
        what: format!(
            "non-PIE code (32-bit absolute relocations) must be placed in the low 2 GiB, but it \
             also reaches host data at {:#x} with 32-bit PC-relative relocations, which is out \
             of reach from there (a native link would make a copy relocation): compile with -fPIE",
            must.0
        )
        .into(),
    })
}

//! What one link did and how long each phase took, for `--show-stats`.

use crate::arch::TableStats;
use std::time::{Duration, Instant};

/// Counts and times of one link.
#[derive(Debug, Default, Clone)]
pub struct LinkStats {
    pub inputs: usize,
    pub archive_members: usize,
    pub sections: usize,
    pub blocks: usize,
    pub live_blocks: usize,
    pub symbols: usize,
    pub external_symbols: usize,
    /// (edge kind, count), most frequent first.
    pub edges_by_kind: Vec<(&'static str, usize)>,
    pub tables: TableStats,
    /// (protection, address, size) of each segment.
    pub segments: Vec<(&'static str, u64, u64)>,
    /// Time per phase, in pipeline order (empty unless the session collects timings).
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
        let t = &self.tables;
        writeln!(
            f,
            "  GOT entries: {}, stubs: {}, TLS pairs: {}",
            t.got_entries, t.stubs, t.tls_pairs
        )?;
        writeln!(
            f,
            "  relaxed: {} GOT loads, {} calls to host functions made direct",
            t.loads_relaxed, t.calls_direct
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

/// Times the phases of a link, when asked to (reading the clock costs tens of nanoseconds a
/// phase: noticeable when a link takes a microsecond).
pub(crate) struct Timer {
    at: Option<Instant>,
    pub phases: Vec<(&'static str, Duration)>,
}

impl Timer {
    pub fn new(on: bool) -> Self {
        Timer {
            at: on.then(Instant::now),
            phases: Vec::new(),
        }
    }

    /// The phase `name` ended now. Only the test is inlined: a link without stats pays a
    /// branch a phase.
    #[inline]
    pub fn lap(&mut self, name: &'static str) {
        if let Some(at) = self.at {
            self.record(name, at);
        }
    }

    #[inline(never)]
    fn record(&mut self, name: &'static str, at: Instant) {
        let now = Instant::now();
        self.phases.push((name, now - at));
        self.at = Some(now);
    }
}

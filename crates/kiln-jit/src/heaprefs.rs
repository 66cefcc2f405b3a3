//! References from compiled code to objects of the VM's heap (Cog's `mapMachineCode:`): the GC
//! reads them while marking, and a moving GC rewrites them.
//!
//! A compiler declares them per graph ([`crate::JitGraph::heap_ref`]): an absolute 64-bit
//! field (the imm64 of `movabs $obj, %reg`, a pointer in data) or a 32-bit one (for a heap the
//! VM keeps in the low 4 GiB, or compressed references: an offset from a heap base). Reading
//! goes through the executor's `read_memory`, which copies bytes with aligned loads and needs no
//! write or execute permission; writing goes through one write window ([`Jit::write`]'s: the
//! writable alias, one `write_live` call): every changed field of the zone, the cores serialized
//! once. A
//! 32-bit field is written as the aligned 8-byte word holding it when that word lies inside its
//! unit, so that each field changes with one atomic store. The references move with their code
//! ([`Jit::compact`]).

use crate::error::{Error, Result};
use crate::jit::{Jit, Written, WrittenValue};
use crate::{HeapRef, SiteKind};
use kiln::UnitId;
use kiln_target::ExecutorAddr;
use rustc_hash::FxHashMap;

/// References farther apart than this are read with separate calls.
const READ_GAP: u64 = 4096;

impl Jit {
    /// Every heap reference of the zone's units, by address, with the value it holds now.
    /// Nothing is written and no code runs: a GC's marking phase may call this while compiled
    /// code runs (a reference being rewritten meanwhile reads as its old or its new value).
    pub fn heap_refs(&self) -> Result<Vec<(HeapRef, u64)>> {
        let _stays = self.code_stays();
        let refs = self.all_heap_refs();
        let words = self.read_words(&refs)?;
        Ok(refs
            .into_iter()
            .map(|r| {
                let v = words.value(&r);
                (r, v)
            })
            .collect())
    }

    /// After a moving GC: `forward(reference, value)` gives each reference's new value, and
    /// those that change are written in one write window. Returns how many changed.
    pub fn update_heap_refs(&self, mut forward: impl FnMut(&HeapRef, u64) -> u64) -> Result<usize> {
        let _stays = self.code_stays();
        let refs = self.all_heap_refs();
        let mut words = self.read_words(&refs)?;
        let changes: Vec<(HeapRef, u64)> = refs
            .iter()
            .filter_map(|r| {
                let old = words.value(r);
                let new = forward(r, old);
                (new != old).then_some((*r, new))
            })
            .collect();
        self.write_refs(&mut words, &changes)?;
        Ok(changes.len())
    }

    /// Write `values` into these references (e.g. a list the GC built), in one write window.
    /// Every reference must be a live one of this zone and every value must fit its width;
    /// otherwise nothing is written.
    pub fn write_heap_refs(&self, values: &[(HeapRef, u64)]) -> Result<()> {
        let _stays = self.code_stays();
        {
            let units = self.units();
            if let Some((r, _)) = values
                .iter()
                .find(|(r, _)| !units.get(&r.unit).is_some_and(|u| u.heap_refs.contains(r)))
            {
                return Err(Error::Stale(format!(
                    "the heap reference at {} belongs to no live unit of this zone (handles \
                     taken before a compaction are stale: see CompactionReport::heap_ref)",
                    r.addr
                )));
            }
        }
        let refs: Vec<HeapRef> = values.iter().map(|(r, _)| *r).collect();
        let mut words = self.read_words(&refs)?;
        self.write_refs(&mut words, values)
    }

    /// The heap references of every zone unit, by address.
    fn all_heap_refs(&self) -> Vec<HeapRef> {
        let mut refs: Vec<HeapRef> = self
            .units()
            .values()
            .flat_map(|u| u.heap_refs.iter().copied())
            .collect();
        refs.sort_unstable_by_key(|r| r.addr.0);
        refs
    }

    /// The aligned words holding `refs`, read with as few calls as the layout allows.
    fn read_words(&self, refs: &[HeapRef]) -> Result<Words> {
        let mut addrs: Vec<u64> = refs.iter().map(|r| r.addr.0 & !7).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let ex = self.session().executor();
        let mut words = Words::default();
        let mut i = 0;
        while i < addrs.len() {
            // A run of words close together, inside one region of the zone's slab.
            let region = self.slab_region(addrs[i]);
            let mut j = i + 1;
            while j < addrs.len()
                && addrs[j] - addrs[j - 1] <= READ_GAP
                && self.slab_region(addrs[j]) == region
            {
                j += 1;
            }
            let (start, end) = (addrs[i], addrs[j - 1] + 8);
            match ex.read_memory(ExecutorAddr(start), end - start) {
                Ok(bytes) => {
                    for &a in &addrs[i..j] {
                        let at = (a - start) as usize;
                        words.insert(a, &bytes[at..at + 8]);
                    }
                }
                // Part of the run is busy (a unit being linked there): word by word.
                Err(_) => {
                    for &a in &addrs[i..j] {
                        words.insert(a, &ex.read_memory(ExecutorAddr(a), 8)?);
                    }
                }
            }
            i = j;
        }
        Ok(words)
    }

    /// Which of the slab's three regions (code, read-only, data) holds `addr`.
    fn slab_region(&self, addr: u64) -> Option<usize> {
        let (fixed, method) = (self.zone().fixed(), self.zone().method());
        (0..3).find(|&r| {
            let start = fixed.info.regions[r].0 .0;
            let (m, n) = method.info.regions[r];
            start <= addr && addr < m.0 + n
        })
    }

    /// Write `changes` (references with their new values) in one write window, and remember
    /// them (compaction writes them again if an edge of their unit is applied again).
    fn write_refs(&self, words: &mut Words, changes: &[(HeapRef, u64)]) -> Result<()> {
        let mut fields: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut segments: FxHashMap<UnitId, Vec<(ExecutorAddr, u64)>> = FxHashMap::default();
        for (r, v) in changes {
            let bytes = field_bytes(r, *v)?;
            words.set(r.addr.0, &bytes);
            if r.width == 8 {
                fields.push((r.addr.0, bytes));
                continue;
            }
            // The aligned word holding a 32-bit field, if it lies inside the field's unit: one
            // atomic store; otherwise the field's 4 bytes alone.
            let word = r.addr.0 & !7;
            let segs = segments
                .entry(r.unit)
                .or_insert_with(|| self.session().unit_segments(r.unit).unwrap_or_default());
            let inside = segs
                .iter()
                .any(|&(a, n)| a.0 <= word && word + 8 <= a.0 + n);
            if inside {
                fields.push((word, Vec::new()));
            } else {
                fields.push((r.addr.0, bytes));
            }
        }
        // Whole words after every change to them is applied (two fields may share one).
        for (at, bytes) in fields.iter_mut() {
            if bytes.is_empty() {
                *bytes = words.word(*at).to_vec();
            }
        }
        fields.sort_unstable_by_key(|f| f.0);
        fields.dedup_by_key(|f| f.0);
        if fields.is_empty() {
            return Ok(());
        }
        // One window: each field checked to lie inside a segment of a live unit (nothing is
        // written otherwise), then one `write_live`, the cores serialized once.
        self.write_while_code_stays(|w| {
            for (a, b) in &fields {
                w.write(ExecutorAddr(*a), b)?;
            }
            Ok(())
        })?;
        let mut units = self.units();
        for (r, v) in changes {
            if let Some(u) = units.get_mut(&r.unit) {
                let kind = if r.width == 8 {
                    SiteKind::Abs64
                } else {
                    SiteKind::Imm32
                };
                u.written.insert(
                    r.addr.0,
                    Written {
                        kind,
                        value: WrittenValue::Value(*v),
                    },
                );
            }
        }
        Ok(())
    }
}

/// The bytes of reference `r` holding `value`.
fn field_bytes(r: &HeapRef, value: u64) -> Result<Vec<u8>> {
    if r.width == 8 {
        return Ok(value.to_le_bytes().to_vec());
    }
    let v = u32::try_from(value).map_err(|_| {
        Error::Stale(format!(
            "{value:#x} does not fit the 32-bit heap reference at {}",
            r.addr
        ))
    })?;
    Ok(v.to_le_bytes().to_vec())
}

/// Aligned 8-byte words of code read back, by address.
#[derive(Default)]
struct Words(FxHashMap<u64, [u8; 8]>);

impl Words {
    fn insert(&mut self, addr: u64, bytes: &[u8]) {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[..8]);
        self.0.insert(addr, w);
    }

    fn word(&self, addr: u64) -> [u8; 8] {
        self.0.get(&addr).copied().unwrap_or_default()
    }

    /// The value of reference `r`.
    fn value(&self, r: &HeapRef) -> u64 {
        let w = self.word(r.addr.0 & !7);
        let at = (r.addr.0 & 7) as usize;
        let mut v = [0u8; 8];
        let n = usize::from(r.width);
        v[..n].copy_from_slice(&w[at..at + n]);
        u64::from_le_bytes(v)
    }

    /// Put `bytes` at `addr` into the word holding it.
    fn set(&mut self, addr: u64, bytes: &[u8]) {
        let w = self.0.entry(addr & !7).or_default();
        let at = (addr & 7) as usize;
        w[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

//! What the controller knows of its executor's slabs: their regions, and where live units lie
//! in them. Writes outside a region or over a live unit are refused here, at once, in both
//! memory modes, as the in-process executor refuses them. The executor checks every request
//! again with its own table (in copy mode, writes reach it only with the next request; in
//! shared mode, they go straight into the shared pages and this book is the only check).

use kiln_target::{AllocId, Error, ExecutorAddr, Result, SlabId, SlabInfo};
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub(crate) struct SlabBook {
    slabs: HashMap<u32, SlabInfo>,
    /// Live units' segments in slabs: start → (end, unit).
    live: BTreeMap<u64, (u64, u64)>,
    /// Each unit's starts in `live`.
    units: HashMap<u64, Vec<u64>>,
}

impl SlabBook {
    pub(crate) fn add_slab(&mut self, info: SlabInfo) {
        self.slabs.insert(info.id.0, info);
    }

    pub(crate) fn remove_slab(&mut self, id: SlabId) {
        self.slabs.remove(&id.0);
    }

    /// The live unit overlapping `[start, end)`, if any.
    fn live_in(&self, start: u64, end: u64) -> Option<u64> {
        let (_, &(e, unit)) = self.live.range(..end).next_back()?;
        (start < end && e > start).then_some(unit)
    }

    /// May the controller write `[addr, addr + len)` of slab `slab`: inside one region, over
    /// no live unit.
    pub(crate) fn check_write(&self, slab: SlabId, addr: ExecutorAddr, len: u64) -> Result<()> {
        let info = self.slabs.get(&slab.0).ok_or(Error::UnknownSlab(slab.0))?;
        let end = addr
            .0
            .checked_add(len)
            .ok_or(Error::RangeWraps { addr, size: len })?;
        let inside = info
            .regions
            .iter()
            .any(|(a, n)| a.0 <= addr.0 && a.0.checked_add(*n).is_some_and(|e| end <= e));
        if !inside {
            return Err(Error::NotOwned {
                addr,
                size: len,
                what: "inside one region of that slab of this executor",
            });
        }
        if let Some(unit) = self.live_in(addr.0, end) {
            return Err(Error::Busy(format!(
                "{addr}..+{len:#x} overlaps allocation {unit}: a live unit's bytes change only \
                 through patch"
            )));
        }
        Ok(())
    }

    /// A unit finalized in slabs, with its segments (address, size).
    pub(crate) fn add_unit(&mut self, id: AllocId, segments: &[(u64, u64)]) {
        let mut starts = Vec::with_capacity(segments.len());
        for &(s, n) in segments {
            if let Some(e) = s.checked_add(n).filter(|&e| e > s) {
                if self.live_in(s, e).is_none() {
                    self.live.insert(s, (e, id.0));
                    starts.push(s);
                }
            }
        }
        self.units.insert(id.0, starts);
    }

    pub(crate) fn remove_unit(&mut self, id: AllocId) {
        for s in self.units.remove(&id.0).unwrap_or_default() {
            self.live.remove(&s);
        }
    }
}
